//! Acceptance of the token manager against the real double (`fake-creodias`), on the real
//! clock: the double checks TOTP codes like Keycloak (window of one step, codes single-use,
//! lockout), so these tests prove the manager's rules hold against an independent
//! implementation, not only against the mini server of `support`.
//!
//! The scenarios need real time (a 20 s herd; refused or repeated logins wait for the next 30 s
//! step), so they run concurrently inside one test, each against its own double: the whole
//! takes about 30 s instead of the sum.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use eodata_auth::{AuthError, LoginConfig, Secret, TokenManager, TokenSource};
use fake_creodias::{Config, Double, Faults, LogEntry};

const USER: &str = "first+last@example.com";
const PASSWORD: &str = "p&ss w+rd%";
const SECRET: &str = "JBSW Y3DP EHPK 3PXP JBSW Y3DP EHPK 3PXP";

fn login(double: &Double, password: &str, cache_dir: Option<std::path::PathBuf>) -> LoginConfig {
    LoginConfig {
        token_url: double.token_url(),
        client_id: fake_creodias::CREODIAS_CLIENT_ID.into(),
        user: USER.into(),
        password: Secret::new(password),
        totp_secret: Secret::new(SECRET),
        cache_dir,
    }
}

fn manager(cfg: LoginConfig) -> Arc<TokenManager> {
    Arc::new(TokenManager::new(cfg, reqwest::Client::new()).unwrap())
}

fn grants<'a>(log: &'a [LogEntry], grant_type: &str) -> Vec<&'a LogEntry> {
    log.iter()
        .filter(|e| e.service == "token" && e.grant_type.as_deref() == Some(grant_type))
        .collect()
}

fn reused_codes(log: &[LogEntry]) -> usize {
    log.iter().filter(|e| e.outcome == "reused_code").count()
}

async fn double(access: u64, refresh: u64) -> Double {
    let mut config = Config::with_user(USER, PASSWORD, SECRET);
    config.access_lifetime = Duration::from_secs(access);
    config.refresh_lifetime = Duration::from_secs(refresh);
    Double::start(config).await.unwrap()
}

/// 16 readers asking for tokens for 20 s, access tokens of 3 s, refresh tokens of 5 s: one
/// password login, then one refresh per token lifetime (renewal with 1 s left, so every ~2 s),
/// never a herd, never a reused code, and every token handed out still valid.
async fn herd_of_sixteen_readers() {
    let double = double(3, 5).await;
    let m = manager(login(&double, PASSWORD, None));
    let started = Instant::now();
    let run_for = Duration::from_secs(20);
    let tasks: Vec<_> = (0..16u64)
        .map(|i| {
            let m = m.clone();
            tokio::spawn(async move {
                let mut calls = 0;
                while started.elapsed() < run_for {
                    let t = m.token().await.expect("token");
                    assert!(
                        t.expires_at > SystemTime::now(),
                        "an expired token was handed out"
                    );
                    calls += 1;
                    // Readers at different paces: 40..190 ms between requests.
                    tokio::time::sleep(Duration::from_millis(40 + (i * 10) % 150)).await;
                }
                calls
            })
        })
        .collect();
    let mut calls = 0;
    for t in tasks {
        calls += t.await.unwrap();
    }
    let log = double.log();
    let logins = grants(&log, "password");
    let refreshes = grants(&log, "refresh_token");
    eprintln!(
        "herd: {calls} token() calls in {:?}: {} password login(s), {} refreshes",
        started.elapsed(),
        logins.len(),
        refreshes.len()
    );
    assert_eq!(logins.len(), 1, "herd: {logins:?}");
    assert_eq!(logins[0].outcome, "ok");
    assert!(
        refreshes.iter().all(|e| e.outcome == "ok"),
        "herd: {refreshes:?}"
    );
    // 20 s / ~2 s per token: about 10. A herd would give hundreds.
    assert!(
        (7..=13).contains(&refreshes.len()),
        "herd: {} refreshes for {calls} calls",
        refreshes.len()
    );
    assert_eq!(reused_codes(&log), 0);
}

/// A wrong password: two attempts (the second at the next step), then the same error at once
/// for every later call, with no request.
async fn wrong_password_fails_fast_after_two_attempts() {
    let double = double(300, 1800).await;
    let m = manager(login(&double, "not the password", None));
    let started = Instant::now();
    let e = m.token().await.unwrap_err();
    // The second attempt waited for the next 30 s step.
    eprintln!("wrong password: refused after {:?}", started.elapsed());
    assert!(
        matches!(e, AuthError::Refused { .. }),
        "wrong password: {e}"
    );
    let n = double.log().len();
    let t = Instant::now();
    for _ in 0..10 {
        assert!(matches!(m.token().await, Err(AuthError::Refused { .. })));
    }
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "latched refusal must be immediate"
    );
    let log = double.log();
    assert_eq!(log.len(), n, "no request after the refusal");
    let logins = grants(&log, "password");
    assert_eq!(logins.len(), 2, "wrong password: {logins:?}");
    assert!(
        logins.iter().all(|e| e.outcome == "bad_password"),
        "{logins:?}"
    );
}

/// Two managers (two processes) on one cache directory: one login between them; then, refresh
/// refused, a second password login at a fresh step (no reused code).
async fn two_processes_share_the_cache() {
    let double = double(300, 1800).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    let a = manager(login(&double, PASSWORD, Some(dir.clone())));
    let b = manager(login(&double, PASSWORD, Some(dir)));
    let (ta, tb) = tokio::join!(a.token(), b.token());
    let (ta, tb) = (ta.unwrap(), tb.unwrap());
    assert_eq!(ta, tb, "b adopts a's token or a adopts b's");
    assert_eq!(
        grants(&double.log(), "password").len(),
        1,
        "one login for two processes"
    );

    double.set_faults(Faults {
        refuse_refresh: true,
        ..Faults::default()
    });
    a.rejected(&ta).await;
    let ta2 = a.token().await.unwrap();
    assert_ne!(ta2, ta);
    // b's token is rejected too; it adopts a's new one without a request.
    b.rejected(&tb).await;
    assert_eq!(b.token().await.unwrap(), ta2);
    let log = double.log();
    let logins = grants(&log, "password");
    assert_eq!(logins.len(), 2, "{logins:?}");
    assert!(logins.iter().all(|e| e.outcome == "ok"), "{logins:?}");
    assert_ne!(logins[0].totp_step, logins[1].totp_step);
    assert_eq!(reused_codes(&log), 0);
    assert_eq!(grants(&log, "refresh_token").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acceptance_against_the_double() {
    tokio::join!(
        herd_of_sixteen_readers(),
        wrong_password_fails_fast_after_two_attempts(),
        two_processes_share_the_cache(),
    );
}
