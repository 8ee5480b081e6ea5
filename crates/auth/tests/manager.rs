//! The token manager against the miniature Keycloak of `support`, on a test clock: every rule of
//! the manager (single flight, step never reused, one retry then latch, refresh first, backoff,
//! shared cache, clock offset) checked by counting what reached the server.

mod support;

use std::sync::Arc;
use std::time::Duration;

use eodata_auth::{AuthError, Clock, RetryPolicy, Secret, TokenSource};
use support::{cache_dir, Canned, Mini};

#[tokio::test]
async fn concurrent_callers_share_one_login() {
    let mini = Mini::start().await;
    let m = Arc::new(mini.manager(None));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let m = m.clone();
            tokio::spawn(async move { m.token().await })
        })
        .collect();
    let mut values = vec![];
    for t in tasks {
        values.push(t.await.unwrap().unwrap().value);
    }
    let status = m.status();
    assert!(status.access_expires_at.is_some() && status.refused.is_none());
    assert!(status.refresh_expires_at.is_some_and(|e| e.is_some()));
    assert_eq!(status.last_totp_step, mini.grants("password")[0].step);
    assert!(values.iter().all(|v| *v == values[0]));
    assert_eq!(mini.grants("password").len(), 1);
    // The fast path: no further request while the token is fresh.
    m.token().await.unwrap();
    assert_eq!(mini.seen().iter().filter(|s| s.method == "POST").count(), 1);
}

#[tokio::test]
async fn form_fields_are_encoded_and_the_code_is_six_digits() {
    let mini = Mini::start().await;
    let m = mini.manager(None);
    // The server compares the decoded user ("+" in it) and password ("&", " ", "+", "%").
    m.token().await.unwrap();
    let login = &mini.grants("password")[0];
    assert_eq!(login.outcome, "ok");
    assert!(
        login.body.contains("username=first%2Blast%40example.com"),
        "form not shown"
    );
    let code: String = url::form_urlencoded::parse(login.body.as_bytes())
        .find(|(k, _)| k == "totp")
        .unwrap()
        .1
        .into_owned();
    assert_eq!(code.len(), 6);
    assert!(code.bytes().all(|b| b.is_ascii_digit()));
}

#[tokio::test]
async fn a_totp_step_is_never_used_twice() {
    let mini = Mini::start().await;
    mini.with(|s| s.refuse_refresh = true);
    let m = mini.manager(None);
    for _ in 0..4 {
        m.token().await.unwrap();
        // Forces the next call to log in again, at once (same step, unless the manager waits).
        m.invalidate_all();
    }
    let logins = mini.grants("password");
    assert_eq!(logins.len(), 4, "{logins:?}");
    assert!(logins.iter().all(|l| l.outcome == "ok"), "{logins:?}");
    let steps: Vec<u64> = logins.iter().map(|l| l.step.unwrap()).collect();
    assert!(steps.windows(2).all(|w| w[1] > w[0]), "{steps:?}");
}

#[tokio::test]
async fn renewal_uses_the_refresh_token_then_password_when_it_is_refused() {
    let mini = Mini::start().await;
    mini.with(|s| s.access_lifetime = 60);
    let m = mini.manager(None);
    let first = m.token().await.unwrap();
    // 60 s lifetime: margin 20 s. At +39 s still fresh, at +41 s renewed.
    mini.clock.advance(Duration::from_secs(39));
    assert_eq!(m.token().await.unwrap(), first);
    mini.clock.advance(Duration::from_secs(2));
    let second = m.token().await.unwrap();
    assert_ne!(second, first);
    assert_eq!(mini.grants("refresh_token").len(), 1);
    assert_eq!(mini.grants("password").len(), 1);

    mini.with(|s| s.refuse_refresh = true);
    mini.clock.advance(Duration::from_secs(45));
    let third = m.token().await.unwrap();
    assert_ne!(third, second);
    let refreshes = mini.grants("refresh_token");
    assert_eq!(refreshes.len(), 2);
    assert_eq!(refreshes[1].outcome, "refresh_refused");
    assert_eq!(mini.grants("password").len(), 2);
}

#[tokio::test]
async fn expired_refresh_token_is_not_even_tried() {
    let mini = Mini::start().await;
    mini.with(|s| {
        s.access_lifetime = 60;
        s.refresh_lifetime = 30;
    });
    let m = mini.manager(None);
    m.token().await.unwrap();
    mini.clock.advance(Duration::from_secs(50));
    m.token().await.unwrap();
    assert_eq!(mini.grants("refresh_token").len(), 0);
    assert_eq!(mini.grants("password").len(), 2);
}

#[tokio::test]
async fn wrong_password_gets_one_more_step_then_latches() {
    let mini = Mini::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = mini.config(Some(cache_dir(&tmp)));
    cfg.password = Secret::new("wrong");
    let m = mini.manager_for(cfg.clone());
    let e = m.token().await.unwrap_err();
    assert!(matches!(e, AuthError::Refused { .. }), "{e}");
    let logins = mini.grants("password");
    assert_eq!(logins.len(), 2, "{logins:?}");
    assert!(
        logins[1].step > logins[0].step,
        "the retry must use the next step"
    );

    // Latched: same error, nothing sent, however often asked.
    for _ in 0..5 {
        let again = m.token().await.unwrap_err();
        assert_eq!(again.to_string(), e.to_string());
    }
    let total = mini.seen().len();

    // Another process with the same credentials fails fast from the shared file.
    let other = mini.manager_for(cfg.clone());
    let e2 = other.token().await.unwrap_err();
    assert!(matches!(e2, AuthError::Refused { .. }), "{e2}");
    assert!(e2.to_string().contains("another process"), "{e2}");
    assert_eq!(
        mini.seen().len(),
        total,
        "no request for known-refused credentials"
    );

    // After the refusal memory, the same credentials may try once more (two attempts).
    mini.clock.advance(Duration::from_secs(11 * 60));
    let late = mini.manager_for(cfg);
    late.token().await.unwrap_err();
    assert_eq!(mini.grants("password").len(), 4);

    // Fixed credentials try at once, succeed, and clear the record.
    let fixed = mini.manager(Some(cache_dir(&tmp)));
    fixed.token().await.unwrap();
    assert_eq!(mini.grants("password").last().unwrap().outcome, "ok");
}

#[tokio::test]
async fn definitive_refusals_get_no_second_attempt() {
    for (status, error, description, hint) in [
        (400, "invalid_grant", "Account disabled", "support"),
        (
            400,
            "invalid_grant",
            "Account is not fully set up",
            "web site",
        ),
        (
            401,
            "invalid_client",
            "Invalid client credentials",
            "client id",
        ),
    ] {
        let mini = Mini::start().await;
        let body = format!(r#"{{"error":"{error}","error_description":"{description}"}}"#);
        mini.with(|s| s.canned.push_back(Canned::new(status, &body)));
        let m = mini.manager(None);
        let e = m.token().await.unwrap_err();
        assert!(matches!(e, AuthError::Refused { .. }), "{e}");
        assert!(e.to_string().contains(description), "{e}");
        assert!(e.to_string().contains(hint), "{e}");
        assert_eq!(mini.grants("password").len(), 1, "{description}");
    }
}

#[tokio::test]
async fn transient_failures_are_retried_with_backoff() {
    let mini = Mini::start().await;
    mini.with(|s| {
        s.canned.push_back(Canned::new(503, "<html>busy</html>"));
        let mut c = Canned::new(429, "");
        c.headers.push(("Retry-After".into(), "3".into()));
        s.canned.push_back(c);
    });
    let m = mini.manager(None);
    let t0 = mini.clock.now();
    m.token().await.unwrap();
    let logins = mini.grants("password");
    assert_eq!(logins.len(), 3, "{logins:?}");
    // Waited at least 0.25 s (jittered 0.5 s) and the 3 s Retry-After.
    let waited = mini.clock.now().duration_since(t0).unwrap();
    assert!(waited >= Duration::from_millis(3_250), "{waited:?}");
    // A code that may have reached the server is not sent again: three distinct steps.
    let mut steps: Vec<u64> = logins.iter().map(|l| l.step.unwrap()).collect();
    steps.dedup();
    assert_eq!(steps.len(), 3, "{steps:?}");
}

#[tokio::test]
async fn persistent_failure_ends_as_unavailable_within_the_budget() {
    let mini = Mini::start().await;
    mini.with(|s| {
        for _ in 0..20 {
            s.canned.push_back(Canned::new(502, "bad gateway"));
        }
    });
    let m = mini.manager(None);
    let t0 = mini.clock.now();
    let e = m.token().await.unwrap_err();
    assert!(matches!(e, AuthError::Unavailable { .. }), "{e}");
    assert!(e.to_string().contains("502"), "{e}");
    // Every retry of a password login needs a fresh step (the failed request may have spent
    // its code), and the 30 s budget counts those waits: from 10 s into a step, attempts at
    // +0, +20 s (next step), +50 s; then the budget is spent.
    assert_eq!(mini.grants("password").len(), 3);
    let spent = mini.clock.now().duration_since(t0).unwrap();
    assert!(spent <= Duration::from_secs(60), "{spent:?}");
    // Within the cooldown the error is shared at once; later, a call tries again (not latched).
    mini.with(|s| s.canned.clear());
    let n = mini.seen().len();
    assert!(matches!(
        m.token().await,
        Err(AuthError::Unavailable { .. })
    ));
    assert_eq!(mini.seen().len(), n);
    mini.clock.advance(Duration::from_secs(6));
    m.token().await.unwrap();
}

#[tokio::test]
async fn unreachable_server_is_unavailable() {
    // A port nobody listens on: connect errors, retried, then Unavailable.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    drop(listener);
    let mini = Mini::start().await;
    let mut cfg = mini.config(None);
    cfg.token_url = url;
    let m = mini.manager_for(cfg);
    let e = m.token().await.unwrap_err();
    assert!(matches!(e, AuthError::Unavailable { .. }), "{e}");
    assert!(e.to_string().contains("connect"), "{e}");
}

#[tokio::test]
async fn garbage_is_a_protocol_error() {
    let mini = Mini::start().await;
    mini.with(|s| {
        s.canned
            .push_back(Canned::new(200, "<html><body>Welcome</body></html>"))
    });
    let m = mini.manager(None);
    let e = m.token().await.unwrap_err();
    assert!(matches!(e, AuthError::Protocol { .. }), "{e}");
    assert!(e.to_string().contains("not JSON"), "{e}");
}

#[tokio::test]
async fn concurrent_rejections_of_one_token_cause_one_renewal() {
    let mini = Mini::start().await;
    let m = Arc::new(mini.manager(None));
    let bad = m.token().await.unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (m, bad) = (m.clone(), bad.clone());
            tokio::spawn(async move {
                m.rejected(&bad).await;
                m.token().await.unwrap()
            })
        })
        .collect();
    for t in tasks {
        assert_ne!(t.await.unwrap(), bad);
    }
    assert_eq!(mini.grants("refresh_token").len(), 1);
    assert_eq!(mini.grants("password").len(), 1);
    // An old token reported late changes nothing.
    m.rejected(&bad).await;
    m.token().await.unwrap();
    assert_eq!(mini.grants("refresh_token").len(), 1);
}

#[tokio::test]
async fn server_clock_offset_is_learned_before_the_first_code() {
    let mini = Mini::start().await;
    // Server 5 minutes ahead: a code from the local clock would be 10 steps off.
    mini.with(|s| s.skew = Duration::from_secs(300));
    let m = mini.manager(None);
    let token = m.token().await.unwrap();
    let logins = mini.grants("password");
    assert_eq!(logins.len(), 1);
    assert_eq!(logins[0].outcome, "ok");
    let offset = m.server_offset().unwrap().as_millis();
    assert!((299_000..=301_000).contains(&offset), "{offset}");
    // Expiry stays in local time: 300 s from now, not 600.
    let left = token.expires_at.duration_since(mini.clock.now()).unwrap();
    assert_eq!(left, Duration::from_secs(300));
}

#[tokio::test]
async fn server_clock_behind_is_applied_too() {
    let mini = Mini::start().await;
    mini.with(|s| {
        s.skew = Duration::from_secs(95);
        s.skew_ahead = false;
    });
    let m = mini.manager(None);
    m.token().await.unwrap();
    assert_eq!(mini.grants("password")[0].outcome, "ok");
}

#[tokio::test]
async fn jwt_exp_shortens_the_expiry() {
    let mini = Mini::start().await;
    mini.with(|s| s.jwt_exp_after = Some(120));
    let m = mini.manager(None);
    let token = m.token().await.unwrap();
    let left = token.expires_at.duration_since(mini.clock.now()).unwrap();
    // expires_in says 300, the JWT says 120 (the Date's half-second rounding aside).
    assert!(
        left <= Duration::from_secs(121) && left >= Duration::from_secs(119),
        "{left:?}"
    );
}

#[tokio::test]
async fn two_processes_share_one_login_and_the_used_step() {
    let mini = Mini::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = cache_dir(&tmp);
    let a = mini.manager(Some(dir.clone()));
    let b = mini.manager(Some(dir.clone()));
    let ta = a.token().await.unwrap();
    let tb = b.token().await.unwrap();
    assert_eq!(ta, tb, "b adopts a's token");
    assert_eq!(mini.grants("password").len(), 1);

    // b must log in anew: it must not reuse a's step (it learned it from the file).
    b.invalidate_all();
    b.token().await.unwrap();
    let logins = mini.grants("password");
    assert_eq!(logins.len(), 2);
    assert!(logins[1].step > logins[0].step, "{logins:?}");
    assert_eq!(logins[1].outcome, "ok");

    // The file holds tokens but no secret.
    let text = std::fs::read_to_string(a.state_file().unwrap()).unwrap();
    for secret in [
        support::PASSWORD,
        "GEZDGNBV",
        "gezd",
        "12345678901234567890",
    ] {
        assert!(!text.contains(secret), "{secret} in the cache file");
    }
    assert!(text.contains("access-"));
}

#[tokio::test]
async fn sixteen_processes_at_once_log_in_once() {
    let mini = Mini::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = cache_dir(&tmp);
    let managers: Vec<_> = (0..16)
        .map(|_| Arc::new(mini.manager(Some(dir.clone()))))
        .collect();
    let tasks: Vec<_> = managers
        .iter()
        .map(|m| {
            let m = m.clone();
            tokio::spawn(async move { m.token().await.unwrap() })
        })
        .collect();
    let mut tokens = vec![];
    for t in tasks {
        tokens.push(t.await.unwrap());
    }
    assert!(tokens.iter().all(|t| *t == tokens[0]));
    assert_eq!(mini.grants("password").len(), 1);
}

#[tokio::test]
async fn a_rejected_token_is_not_adopted_back_from_the_file() {
    let mini = Mini::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = cache_dir(&tmp);
    let a = mini.manager(Some(dir.clone()));
    let b = mini.manager(Some(dir));
    let t = a.token().await.unwrap();
    assert_eq!(b.token().await.unwrap(), t);
    a.rejected(&t).await;
    let ta = a.token().await.unwrap();
    assert_ne!(ta, t);
    assert_eq!(mini.grants("refresh_token").len(), 1);
    // b still holds the old token; when it is rejected there too, b adopts a's new one.
    b.rejected(&t).await;
    assert_eq!(b.token().await.unwrap(), ta);
    assert_eq!(mini.grants("refresh_token").len(), 1);
}

#[tokio::test]
async fn corrupt_cache_file_is_ignored_and_overwritten() {
    let mini = Mini::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let m = mini.manager(Some(cache_dir(&tmp)));
    let path = m.state_file().unwrap().to_owned();
    std::fs::write(&path, "{\"version\":1,\"access_tok").unwrap();
    m.token().await.unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        serde_json::from_str::<serde_json::Value>(&text).is_ok(),
        "{text}"
    );
}

#[tokio::test]
async fn settings_are_checked_before_any_request() {
    let mini = Mini::start().await;
    let mut cfg = mini.config(None);
    cfg.totp_secret = Secret::new("1234 ABCD 1234 ABCD 1234 ABCD 1234 ABCD");
    let e = eodata_auth::TokenManager::new(cfg, reqwest::Client::new()).unwrap_err();
    assert!(matches!(e, AuthError::Config { .. }), "{e}");
    assert!(e.to_string().contains("character 1"), "{e}");
    for url in [
        "ftp://x/token",
        "http://identity.example/token",
        "not a url",
    ] {
        let mut cfg = mini.config(None);
        cfg.token_url = url.into();
        assert!(
            eodata_auth::TokenManager::new(cfg, reqwest::Client::new()).is_err(),
            "{url}"
        );
    }
    for url in [
        "https://identity.example/token",
        "http://localhost:8080/t",
        "http://[::1]/t",
    ] {
        let mut cfg = mini.config(None);
        cfg.token_url = url.into();
        assert!(
            eodata_auth::TokenManager::new(cfg, reqwest::Client::new()).is_ok(),
            "{url}"
        );
    }
    assert!(mini.seen().is_empty());
}

#[tokio::test]
async fn refresh_outage_keeps_serving_the_valid_token_and_retries_later() {
    let mini = Mini::start().await;
    let m = mini.manager(None);
    let first = m.token().await.unwrap();
    // 300 s lifetime, 75 s margin: at +230 s renewal is due, 70 s of validity left.
    mini.clock.advance(Duration::from_secs(230));
    // Twelve 503s: twice what a password login would be allowed.
    mini.with(|s| {
        for _ in 0..12 {
            s.canned.push_back(Canned::new(503, ""));
        }
    });
    let t0 = mini.clock.now();
    let renewed = m.token().await.unwrap();
    assert_ne!(renewed, first, "the refresh got through in the end");
    let spent = mini.clock.now().duration_since(t0).unwrap();
    assert!(
        spent < Duration::from_secs(70),
        "retries land before the held token expires: {spent:?}"
    );
    let refreshes = mini.grants("refresh_token");
    assert_eq!(refreshes.len(), 13, "refresh needs no TOTP: every attempt");
    assert_eq!(refreshes.last().unwrap().outcome, "ok");
    assert_eq!(
        mini.grants("password").len(),
        1,
        "no password login during an outage"
    );
}

#[tokio::test]
async fn a_failed_refresh_outage_keeps_serving_the_valid_token() {
    let mini = Mini::start().await;
    let m = mini.manager(None).with_refresh_retry_policy(RetryPolicy {
        attempts: 6,
        first_backoff: Duration::from_millis(500),
        max_backoff: Duration::from_secs(8),
        budget: Duration::from_secs(30),
    });
    let first = m.token().await.unwrap();
    mini.clock.advance(Duration::from_secs(230));
    mini.with(|s| {
        for _ in 0..20 {
            s.canned.push_back(Canned::new(503, ""));
        }
    });
    assert_eq!(
        m.token().await.unwrap(),
        first,
        "still valid: keep serving it"
    );
    assert_eq!(mini.grants("refresh_token").len(), 6);
    assert_eq!(mini.grants("password").len(), 1);
    // Right after a failed renewal, callers get the outcome at once.
    let n = mini.seen().len();
    assert_eq!(m.token().await.unwrap(), first);
    assert_eq!(mini.seen().len(), n);
    // Later, the service is back: renewed by refresh.
    mini.with(|s| s.canned.clear());
    mini.clock.advance(Duration::from_secs(6));
    assert_ne!(m.token().await.unwrap(), first);
    assert_eq!(mini.grants("refresh_token").last().unwrap().outcome, "ok");
}

#[tokio::test]
async fn callers_with_a_valid_token_do_not_wait_for_a_renewal() {
    let mini = Mini::start().await;
    let m = Arc::new(mini.manager(None));
    let first = m.token().await.unwrap();
    // Renewal due (75 s margin), 70 s of validity left; the server takes 300 ms to answer.
    mini.clock.advance(Duration::from_secs(230));
    mini.with(|s| s.delay = Duration::from_millis(300));
    let leader = {
        let m = m.clone();
        tokio::spawn(async move { m.token().await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = std::time::Instant::now();
    assert_eq!(m.token().await.unwrap(), first);
    assert!(
        t.elapsed() < Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    let renewed = leader.await.unwrap();
    assert_ne!(renewed, first);
    assert_eq!(m.token().await.unwrap(), renewed);
    assert_eq!(mini.grants("refresh_token").len(), 1);
}

#[tokio::test]
async fn a_refusal_elsewhere_does_not_stop_refreshing() {
    // A logged in; then the password changed on the web site. B, with the same (now stale)
    // credentials, is refused and records it. A's refresh token still works and is used.
    let mini = Mini::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let a = mini.manager(Some(cache_dir(&tmp)));
    let b = mini.manager(Some(cache_dir(&tmp)));
    let first = a.token().await.unwrap();
    mini.with(|s| s.password = "changed".into());
    b.invalidate_all();
    assert!(matches!(b.token().await, Err(AuthError::Refused { .. })));
    assert_eq!(mini.grants("password").len(), 3);
    mini.clock.advance(Duration::from_secs(240));
    let renewed = a.token().await.unwrap();
    assert_ne!(renewed, first);
    assert_eq!(mini.grants("refresh_token").last().unwrap().outcome, "ok");
    // But a password login by A would now be stopped without a request.
    a.invalidate_all();
    let n = mini.seen().len();
    let e = a.token().await.unwrap_err();
    assert!(e.to_string().contains("another process"), "{e}");
    assert_eq!(mini.seen().len(), n);
}

#[tokio::test]
async fn a_rejected_token_is_blanked_in_the_shared_file_even_if_renewal_fails() {
    let mini = Mini::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let a = mini.manager(Some(cache_dir(&tmp)));
    let t = a.token().await.unwrap();
    mini.with(|s| {
        for _ in 0..50 {
            s.canned.push_back(Canned::new(503, ""));
        }
    });
    a.rejected(&t).await;
    assert!(matches!(
        a.token().await,
        Err(AuthError::Unavailable { .. })
    ));
    let text = std::fs::read_to_string(a.state_file().unwrap()).unwrap();
    let state: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(state["access_token"].is_null(), "{state}");
    assert!(
        !state["refresh_token"].is_null(),
        "the refresh token stays usable"
    );
}

#[tokio::test]
async fn a_broken_cache_directory_degrades_to_a_lone_process() {
    let mini = Mini::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = cache_dir(&tmp);
    let m = mini.manager(Some(dir.clone()));
    // The directory is replaced by a file: no lock can be had, but tokens still flow.
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::write(&dir, b"not a directory").unwrap();
    m.token().await.unwrap();
    assert_eq!(mini.grants("password").len(), 1);
}

#[tokio::test]
async fn a_redirected_token_request_is_not_trusted() {
    let mini = Mini::start().await;
    let mut moved = Canned::new(308, "");
    moved
        .headers
        .push(("Location".into(), format!("{}-moved", mini.url)));
    mini.with(|s| s.canned.push_back(moved));
    let m = mini.manager(None);
    let e = m.token().await.unwrap_err();
    assert!(matches!(e, AuthError::Protocol { .. }), "{e}");
    assert!(e.to_string().contains("redirected to"), "{e}");
}

/// Writes a shared state file whose last TOTP step is 1,000 steps ahead of the test clock's
/// (as a broken clock or proxy could leave it).
fn plant_future_step(m: &eodata_auth::TokenManager) {
    let now_step = 1_700_000_020 / 30;
    std::fs::write(
        m.state_file().unwrap(),
        format!(r#"{{"version":1,"last_totp_step":{}}}"#, now_step + 1_000),
    )
    .unwrap();
}

#[tokio::test]
async fn a_bogus_future_step_in_the_file_does_not_block_logins() {
    let mini = Mini::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let m = mini.manager(Some(cache_dir(&tmp)));
    plant_future_step(&m);
    let t0 = mini.clock.now();
    m.token().await.unwrap();
    assert!(mini.clock.now().duration_since(t0).unwrap() < Duration::from_secs(1));
    assert_eq!(mini.grants("password").len(), 1);
}

#[tokio::test]
async fn a_local_clock_jump_is_caught_before_a_code_is_wasted() {
    let mini = Mini::start().await;
    let m = mini.manager(None);
    m.token().await.unwrap();
    // The local clock jumps back 5 minutes; the server's does not.
    mini.clock.set(mini.clock.now() - Duration::from_secs(300));
    mini.with(|s| s.skew = Duration::from_secs(300));
    m.invalidate_all();
    m.token().await.unwrap();
    let logins = mini.grants("password");
    assert_eq!(logins.len(), 2, "{logins:?}");
    assert!(logins.iter().all(|l| l.outcome == "ok"), "{logins:?}");
    assert!(logins[1].step > logins[0].step);
}

/// Readers hold a generic `TokenSource` and spawn its futures: they must be `Send`.
async fn via_trait<S: TokenSource>(source: Arc<S>) -> eodata_auth::AccessToken {
    tokio::spawn(async move {
        let t = source.token().await.unwrap();
        source.rejected(&t).await;
        source.token().await.unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn usable_through_the_token_source_trait() {
    let mini = Mini::start().await;
    let m = Arc::new(mini.manager(None));
    via_trait(m.clone()).await;
    assert_eq!(mini.grants("refresh_token").len(), 1);
}

#[tokio::test]
async fn password_attempts_are_spaced_and_the_second_follows_within_seconds() {
    let mini = Mini::start().await;
    let mut cfg = mini.config(None);
    cfg.password = Secret::new("wrong");
    let m = mini.manager_for(cfg);
    m.token().await.unwrap_err();
    let logins = mini.grants("password");
    assert_eq!(logins.len(), 2, "{logins:?}");
    let gap = logins[1].at.duration_since(logins[0].at).unwrap();
    assert!(
        gap >= eodata_auth::token::PASSWORD_SPACING,
        "two password attempts {gap:?} apart"
    );
    // The second attempt takes the next step's code at once instead of waiting up to 30 s.
    assert!(gap < Duration::from_secs(9), "{gap:?}");
    assert_eq!(logins[1].step, logins[0].step.map(|s| s + 1));
}

#[tokio::test]
async fn a_4xx_page_on_a_password_grant_latches_and_is_shared() {
    let mini = Mini::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut page = Canned::new(403, "<html><body>Request blocked by WAF</body></html>");
    page.headers
        .push(("Content-Type".into(), "text/html".into()));
    mini.with(|s| {
        for _ in 0..10 {
            s.canned.push_back(page.clone());
        }
    });
    let m = mini.manager(Some(cache_dir(&tmp)));
    let e = m.token().await.unwrap_err();
    assert!(matches!(e, AuthError::Refused { .. }), "{e}");
    assert!(e.to_string().contains("HTTP 403"), "{e}");
    assert!(e.to_string().contains("proxy or firewall"), "{e}");
    assert_eq!(mini.grants("password").len(), 1, "no second attempt");
    m.token().await.unwrap_err();
    // Another process, with the user name in another case: refused from the shared file.
    let mut cfg = mini.config(Some(cache_dir(&tmp)));
    cfg.user = cfg.user.to_uppercase();
    let other = mini.manager_for(cfg);
    let e2 = other.token().await.unwrap_err();
    assert!(e2.to_string().contains("another process"), "{e2}");
    assert_eq!(mini.grants("password").len(), 1);
}

#[tokio::test]
async fn too_many_sessions_is_final_with_its_own_message() {
    let mini = Mini::start().await;
    mini.with(|s| {
        s.canned.push_back(Canned::new(
            403,
            "<html><p class=\"instruction\">There are too many sessions</p></html>",
        ))
    });
    let m = mini.manager(None);
    let e = m.token().await.unwrap_err();
    assert!(
        e.to_string().contains(
            "too many sessions (the account's limit of active sessions); log out other sessions or wait"
        ),
        "{e}"
    );
    assert_eq!(mini.grants("password").len(), 1);
    m.token().await.unwrap_err();
    assert_eq!(mini.grants("password").len(), 1, "no retry loop");
}

#[tokio::test]
async fn invalid_client_names_the_client_id_and_secret() {
    let mini = Mini::start().await;
    mini.with(|s| {
        s.canned.push_back(Canned::new(
            401,
            r#"{"error":"invalid_client","error_description":"Invalid client or Invalid client credentials"}"#,
        ))
    });
    let m = mini
        .manager(None)
        .with_client_secret(Some(Secret::new("wrong-secret")));
    let e = m.token().await.unwrap_err();
    assert!(
        e.to_string()
            .contains("client id/secret refused by the realm"),
        "{e}"
    );
    assert!(!e.to_string().contains("wrong-secret"), "{e}");
    let body = &mini.grants("password")[0].body;
    assert!(body.contains("client_secret=wrong-secret"), "{body}");
}

#[tokio::test]
async fn a_cached_token_does_not_hide_a_changed_password() {
    let mini = Mini::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let a = mini.manager(Some(cache_dir(&tmp)));
    a.token().await.unwrap();
    // The same credentials adopt the cached token: no request.
    let same = mini.manager(Some(cache_dir(&tmp)));
    same.token().await.unwrap();
    assert_eq!(mini.grants("password").len(), 1);
    // The password in secrets.conf changed: the cached token is not used, a login is made.
    let mut cfg = mini.config(Some(cache_dir(&tmp)));
    cfg.password = Secret::new("a new, wrong password");
    let changed = mini.manager_for(cfg);
    let e = changed.token().await.unwrap_err();
    assert!(matches!(e, AuthError::Refused { .. }), "{e}");
    assert!(mini.grants("password").len() > 1);
    // Nothing of the password is in the file.
    let text = std::fs::read_to_string(a.state_file().unwrap()).unwrap();
    assert!(!text.contains(support::PASSWORD), "{text}");
    assert!(!text.contains("a new, wrong password"), "{text}");
    assert!(text.contains("\"credentials\""), "{text}");
}

#[tokio::test]
async fn a_bogus_future_step_is_corrected_in_the_file() {
    let mini = Mini::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let m = mini.manager(Some(cache_dir(&tmp)));
    plant_future_step(&m);
    m.token().await.unwrap();
    let used = mini.grants("password")[0].step.unwrap();
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(m.state_file().unwrap()).unwrap()).unwrap();
    assert_eq!(file["last_totp_step"], used, "{file}");
    // A second process is not misled by the old record either.
    m.invalidate_all();
    let other = mini.manager(Some(cache_dir(&tmp)));
    let t0 = mini.clock.now();
    other.token().await.unwrap();
    assert!(mini.clock.now().duration_since(t0).unwrap() < Duration::from_secs(60));
}

#[tokio::test]
async fn a_squatted_cache_directory_is_warned_about_and_skipped() {
    let mini = Mini::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = cache_dir(&tmp);
    std::fs::create_dir_all(&dir).unwrap();
    // Another user's directory (as root in tests: owned by nobody).
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    let m = mini.manager(Some(dir.clone()));
    assert!(
        m.state_file().is_none(),
        "no shared cache in a squatted dir"
    );
    m.token().await.unwrap();
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "nothing written there"
    );
}

#[tokio::test]
async fn an_oversized_answer_is_not_read_whole() {
    let mini = Mini::start().await;
    let huge = format!(
        r#"{{"access_token":"{}","expires_in":300}}"#,
        "x".repeat(2 * 1024 * 1024)
    );
    mini.with(|s| s.canned.push_back(Canned::new(200, &huge)));
    let m = mini.manager(None);
    let e = m.token().await.unwrap_err();
    assert!(matches!(e, AuthError::Protocol { .. }), "{e}");
    assert!(e.to_string().contains("larger than 1024 KiB"), "{e}");
}
