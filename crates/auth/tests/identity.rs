//! The token manager against the real double (`fake-creodias`) playing Keycloak as the real
//! services behave (docs/protocol.md, "Identity"): a session maximum with capped tokens, a cap
//! on sessions (refused with a 403 page, or the oldest dropped), 503s and 429s for a while,
//! brute-force rules, accounts without two-factor login and confidential clients.
//!
//! Real time, real TOTP: the scenarios run concurrently inside one test, each against its own
//! double, so the whole takes about as long as the longest (the session one waits for a good
//! moment in the 30 s TOTP step, then runs 17 s).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use eodata_auth::{AuthError, LoginConfig, Secret, TokenManager};
use fake_creodias::{Config, Double, LogEntry, SessionLimit, TokenFault, User};

const USER: &str = "first+last@example.com";
const PASSWORD: &str = "p&ss w+rd%";
const SECRET: &str = "JBSW Y3DP EHPK 3PXP JBSW Y3DP EHPK 3PXP";

/// Every log line of the process, as text (the manager's info lines are checked).
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned()
}

fn login(double: &Double, secret: &str) -> LoginConfig {
    LoginConfig {
        token_url: double.token_url(),
        client_id: fake_creodias::CREODIAS_CLIENT_ID.into(),
        user: USER.into(),
        password: Secret::new(PASSWORD),
        totp_secret: Secret::new(secret),
        cache_dir: None,
    }
}

fn manager(double: &Double) -> Arc<TokenManager> {
    Arc::new(TokenManager::new(login(double, SECRET), reqwest::Client::new()).unwrap())
}

fn grants<'a>(log: &'a [LogEntry], grant_type: &str) -> Vec<&'a LogEntry> {
    log.iter()
        .filter(|e| e.service == "token" && e.grant_type.as_deref() == Some(grant_type))
        .collect()
}

/// POSTs `fields` as a form to the double's token endpoint; the HTTP status.
async fn post_form(double: &Double, fields: &[(&str, &str)]) -> u16 {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    reqwest::Client::new()
        .post(double.token_url())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Readers asking for a token every 50 ms for `run_for`: every call must succeed at once with
/// a token that has not expired. Returns the slowest call.
async fn read_continuously(m: &Arc<TokenManager>, run_for: Duration) -> Duration {
    let started = Instant::now();
    let mut readers = Vec::new();
    for _ in 0..4 {
        let m = m.clone();
        readers.push(tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            while started.elapsed() < run_for {
                let t = Instant::now();
                let token = m.token().await.expect("every token() call succeeds");
                slowest = slowest.max(t.elapsed());
                assert!(
                    token.expires_at > SystemTime::now(),
                    "an expired token was handed out at {:?}",
                    started.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            slowest
        }));
    }
    let mut slowest = Duration::ZERO;
    for r in readers {
        slowest = slowest.max(r.await.unwrap());
    }
    slowest
}

/// Session max 8 s, access tokens of 3 s: 17 s of continuous use never waits or fails; the
/// session is replaced by a password login before it ends (refresh is never refused), and no
/// TOTP step is used twice.
async fn session_max_is_met_by_early_logins() {
    // Start 22 s into a TOTP step, so that the three logins of the run (at about 0, 6 and
    // 12 s) find an unused code at once: this step, the next (one ahead is accepted), and,
    // after the step boundary at 8 s, the one after it.
    while unix_now() % 30 != 22 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut config = Config::with_user(USER, PASSWORD, SECRET).cdse();
    config.client_id = fake_creodias::CREODIAS_CLIENT_ID.into();
    config.access_lifetime = Duration::from_secs(3);
    config.session_max = Some(Duration::from_secs(8));
    let double = Double::start(config).await.unwrap();
    let m = manager(&double);
    let slowest = read_continuously(&m, Duration::from_secs(17)).await;
    let log = double.log();
    let logins = grants(&log, "password");
    let refreshes = grants(&log, "refresh_token");
    eprintln!(
        "session: {} logins, {} refreshes, slowest token() {slowest:?}",
        logins.len(),
        refreshes.len()
    );
    assert!(
        slowest < Duration::from_secs(1),
        "a token() call waited {slowest:?}"
    );
    assert!(logins.len() >= 3, "{logins:?}");
    assert!(logins.iter().all(|e| e.outcome == "ok"), "{logins:?}");
    let mut steps: Vec<u64> = logins.iter().filter_map(|e| e.totp_step).collect();
    steps.dedup();
    assert_eq!(steps.len(), logins.len(), "a TOTP step was used twice");
    assert!(
        refreshes.iter().all(|e| e.outcome == "ok"),
        "a refresh was refused: the session ended before the next login: {refreshes:?}"
    );
    assert!(!refreshes.is_empty());
    assert!(logs().contains("session ends in"), "{}", logs());
}

/// Keycloak answers `status` (with `retry_after`) to every token request for 5 s, starting 2 s
/// before the refresh is due: readers go on with the held token, then the refresh succeeds;
/// no password login is spent. (A 60 s outage of a 10 min token, scaled to a 12 s token.)
async fn keycloak_outage_during_refresh(status: u16, retry_after: Option<u64>) {
    let mut config = Config::with_user(USER, PASSWORD, SECRET);
    config.access_lifetime = Duration::from_secs(12);
    config.refresh_lifetime = Duration::from_secs(600);
    let double = Double::start(config).await.unwrap();
    let m = manager(&double);
    m.token().await.unwrap();
    let started = Instant::now();
    // 12 s tokens renew with 4 s left, at 8 s: the fault covers 6..11 s.
    let fault_at = {
        let double = double.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(6)).await;
            let mut fault = TokenFault::new(status, Some(Duration::from_secs(5)));
            fault.retry_after = retry_after;
            double.set_token_fault(Some(fault));
        })
    };
    let slowest = read_continuously(&m, Duration::from_secs(15)).await;
    fault_at.await.unwrap();
    let log = double.log();
    let refreshes = grants(&log, "refresh_token");
    let failed = refreshes
        .iter()
        .filter(|e| e.outcome.starts_with("fault"))
        .count();
    eprintln!(
        "outage {status} {retry_after:?}: {} refreshes ({failed} failed) in {:?}, slowest token() {slowest:?}",
        refreshes.len(),
        started.elapsed()
    );
    assert!(failed >= 2, "the outage was met: {refreshes:?}");
    assert_eq!(refreshes.last().unwrap().outcome, "ok", "{refreshes:?}");
    assert_eq!(grants(&log, "password").len(), 1, "no password login spent");
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
}

/// A raw password login as another tool of the same user would make, with the code of `step`.
async fn raw_login(double: &Double, step: u64) -> u16 {
    let code = fake_creodias::totp_code(SECRET, step * 30).unwrap();
    post_form(
        double,
        &[
            ("grant_type", "password"),
            ("client_id", fake_creodias::CREODIAS_CLIENT_ID),
            ("username", USER),
            ("password", PASSWORD),
            ("totp", &code),
        ],
    )
    .await
}

/// The session cap refuses the login with a 403 page: one clear final error, one attempt.
async fn session_cap_denied() {
    let mut config = Config::with_user(USER, PASSWORD, SECRET);
    config.max_sessions = Some(2);
    config.session_limit = SessionLimit::Deny;
    let double = Double::start(config).await.unwrap();
    // Two other sessions (previous and next step: the manager will take the current one).
    let step = unix_now() / 30;
    assert_eq!(raw_login(&double, step - 1).await, 200);
    assert_eq!(raw_login(&double, step + 1).await, 200);
    let m = manager(&double);
    let e = m.token().await.unwrap_err();
    assert!(matches!(e, AuthError::Refused { .. }), "{e}");
    assert!(
        e.to_string().contains(
            "too many sessions (the account's limit of active sessions); log out other sessions or wait"
        ),
        "{e}"
    );
    m.token().await.unwrap_err();
    let log = double.log();
    let ours = grants(&log, "password")
        .into_iter()
        .filter(|e| e.outcome == "too_many_sessions")
        .count();
    assert_eq!(ours, 1, "no retry loop");
    assert_eq!(grants(&log, "password").len(), 3);
}

/// The session cap drops the oldest session: our refresh meets "Session not active" and one
/// password login follows.
async fn session_cap_drops_the_oldest() {
    let mut config = Config::with_user(USER, PASSWORD, SECRET);
    config.max_sessions = Some(1);
    config.session_limit = SessionLimit::DropOldest;
    config.access_lifetime = Duration::from_secs(3);
    let double = Double::start(config).await.unwrap();
    let m = manager(&double);
    m.token().await.unwrap();
    let our_step = grants(&double.log(), "password")[0].totp_step.unwrap();
    // Another tool logs in: our session is dropped.
    assert_eq!(raw_login(&double, our_step - 1).await, 200);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let token = m.token().await.unwrap();
    assert!(token.expires_at > SystemTime::now());
    let log = double.log();
    let refreshes = grants(&log, "refresh_token");
    assert_eq!(
        refreshes.first().map(|e| e.outcome.as_str()),
        Some("session_not_active"),
        "{refreshes:?}"
    );
    let logins = grants(&log, "password");
    assert_eq!(
        logins.len(),
        3,
        "ours, the other tool's, ours again: {logins:?}"
    );
    assert!(logins.iter().all(|e| e.outcome == "ok"), "{logins:?}");
}

/// Double rules: the brute-force lock is checked before "disabled", two failures within a
/// second lock the account, and an empty `otp` is a wrong code even with a good `totp`.
async fn brute_force_rules_and_empty_otp() {
    let double = Double::start(Config::with_user(USER, PASSWORD, SECRET))
        .await
        .unwrap();
    let post = |fields: Vec<(&'static str, String)>| {
        let double = double.clone();
        async move {
            let mut form = vec![
                ("grant_type", "password".to_string()),
                ("client_id", fake_creodias::CREODIAS_CLIENT_ID.to_string()),
                ("username", USER.to_string()),
            ];
            form.extend(fields);
            let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
            post_form(&double, &pairs).await
        }
    };
    let code = |offset: i64| {
        let step = (unix_now() / 30) as i64 + offset;
        fake_creodias::totp_code(SECRET, step as u64 * 30).unwrap()
    };
    // An empty otp is not "absent": the good totp beside it is not read.
    let status = post(vec![
        ("password", PASSWORD.into()),
        ("otp", String::new()),
        ("totp", code(0)),
    ])
    .await;
    assert_eq!(status, 401);
    assert_eq!(double.log().last().unwrap().outcome, "bad_code");
    // A second failure within a second locks the account for a minute (quick-login rule).
    post(vec![("password", "wrong".into()), ("totp", code(0))]).await;
    let status = post(vec![("password", PASSWORD.into()), ("totp", code(1))]).await;
    assert_eq!(status, 401);
    assert_eq!(double.log().last().unwrap().outcome, "locked");
    // Locked and disabled: the lock answers first, like a wrong password.
    let mut user = User::new(USER, PASSWORD, SECRET);
    user.disabled = true;
    double.update_user(user).unwrap();
    let status = post(vec![("password", PASSWORD.into()), ("totp", code(-1))]).await;
    assert_eq!(status, 401);
    assert_eq!(double.log().last().unwrap().outcome, "locked");
    double.unlock_user(USER);
    let status = post(vec![("password", PASSWORD.into()), ("totp", code(-1))]).await;
    assert_eq!(status, 400);
    assert_eq!(double.log().last().unwrap().outcome, "disabled");
}

/// An account without two-factor login logs in with its password alone; a confidential
/// client needs its secret, and without it gets its own message.
async fn no_two_factor_and_client_secret() {
    let mut config = Config::with_user(USER, PASSWORD, "");
    config.client_secret = Some("s3cret".into());
    let double = Double::start(config).await.unwrap();
    let without = TokenManager::new(login(&double, ""), reqwest::Client::new()).unwrap();
    let e = without.token().await.unwrap_err();
    assert!(
        e.to_string()
            .contains("client id/secret refused by the realm"),
        "{e}"
    );
    let with = TokenManager::new(login(&double, ""), reqwest::Client::new())
        .unwrap()
        .with_client_secret(Some(Secret::new("s3cret")));
    with.token().await.unwrap();
    let log = double.log();
    let logins = grants(&log, "password");
    assert_eq!(logins.len(), 2, "{logins:?}");
    assert_eq!(logins[1].outcome, "ok");
    assert_eq!(logins[1].totp_step, None, "no code was needed or read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_as_the_real_services_behave() {
    tracing_subscriber::fmt()
        .with_writer(|| LogWriter)
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .init();
    tokio::join!(
        session_max_is_met_by_early_logins(),
        keycloak_outage_during_refresh(503, None),
        keycloak_outage_during_refresh(503, Some(1)),
        keycloak_outage_during_refresh(429, Some(2)),
        session_cap_denied(),
        session_cap_drops_the_oldest(),
        brute_force_rules_and_empty_otp(),
        no_two_factor_and_client_secret(),
    );
}
