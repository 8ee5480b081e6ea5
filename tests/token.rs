//! `eodata-mount token` against the CREODIAS double: one token on stdout, one login shared by
//! many processes, no retry loop after a refusal, and the tutorial's own client accepted.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

/// HEAD the tutorial's product on the double's zipper with `token`; the HTTP status.
fn zipper_status(double: &fake_creodias::Double, token: &str) -> u16 {
    let url = format!(
        "{}?token={token}",
        double.download_template().replace("{id}", TUTORIAL_ID)
    );
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-I", &url])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

#[test]
fn token_prints_exactly_one_token_that_zipper_accepts() {
    let products = products(1, 1);
    let double = start_double(double_config(Some(&products)));
    let ws = Workspace::new();
    let out = ws.run(&double, &["token"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.ends_with('\n') && stdout.lines().count() == 1,
        "{stdout:?}"
    );
    let token = stdout.trim();
    assert_eq!(zipper_status(&double, token), 200);
    // A second call reuses the cached token: no second login, same token.
    let again = ws.run(&double, &["token"]);
    assert_eq!(String::from_utf8(again.stdout).unwrap().trim(), token);
    assert_eq!(password_logins(&double.log()).len(), 1);
}

#[test]
fn sixteen_processes_for_twenty_seconds_share_one_login() {
    let products = products(1, 1);
    let mut cfg = double_config(Some(&products));
    cfg.access_lifetime = Duration::from_secs(3);
    cfg.refresh_lifetime = Duration::from_secs(5);
    let double = start_double(cfg);
    let ws = Workspace::new();
    let run_for = Duration::from_secs(20);
    let start = Instant::now();
    let rejected = std::sync::atomic::AtomicUsize::new(0);
    let calls = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..16 {
            s.spawn(|| {
                while start.elapsed() < run_for {
                    let out = ws.run(&double, &["token"]);
                    assert!(
                        out.status.success(),
                        "token failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    let token = String::from_utf8(out.stdout).unwrap();
                    if zipper_status(&double, token.trim()) != 200 {
                        rejected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(200));
                }
            });
        }
    });
    let log = double.log();
    let refreshes = log
        .iter()
        .filter(|e| e.service == "token" && e.grant_type.as_deref() == Some("refresh_token"))
        .count();
    let calls = calls.into_inner();
    eprintln!(
        "{calls} token calls, {} password logins, {refreshes} refreshes",
        password_logins(&log).len()
    );
    assert_eq!(
        rejected.into_inner(),
        0,
        "every printed token must be accepted"
    );
    assert_eq!(password_logins(&log).len(), 1, "one password login for all");
    assert!(reused_steps(&log).is_empty());
    // About one renewal per 3 s lifetime; a herd would be one per caller per expiry.
    assert!(refreshes >= 3, "tokens were renewed ({refreshes})");
    assert!(
        refreshes <= 20,
        "no herd: {refreshes} refreshes for {calls} calls"
    );
}

#[test]
fn wrong_password_stops_after_at_most_two_attempts() {
    let double = start_double(double_config(None));
    let ws = Workspace::new();
    ws.write_secrets(&format!(
        "[login]\nuser = {USER}\npassword = wrong\ntotp_secret = {TOTP_SECRET}\n"
    ));
    let started = Instant::now();
    let out = ws.run(&double, &["token"]);
    // The second attempt follows the first within seconds (the next step's code, 5 s later),
    // not after a silent wait of up to 30 s for the next step to begin.
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "{:?}",
        started.elapsed()
    );
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("refused"), "{err}");
    let attempts = password_logins(&double.log()).len();
    assert!((1..=2).contains(&attempts), "{attempts} login attempts");
    // A second process learns of the refusal from the shared cache and does not try at all.
    let again = ws.run(&double, &["token"]);
    assert!(!again.status.success());
    assert_eq!(password_logins(&double.log()).len(), attempts);
}

#[test]
fn the_tutorials_python_client_is_accepted_by_the_double() {
    let products = products(1, 2);
    let double = start_double(double_config(Some(&products)));
    let ws = Workspace::for_tutorial();
    let out = ws.run_tutorial(&double, TUTORIAL_ID, "my-file.zip");
    assert!(
        out.status.success(),
        "tutorial client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = index(&products)[0]["file"].as_str().unwrap().to_string();
    assert_eq!(
        file_sha256(&ws.path().join("my-file.zip")),
        file_sha256(&products.join(want))
    );
    let log = double.log();
    assert_eq!(password_logins(&log).len(), 1);
    assert!(log.iter().any(|e| e.service == "zipper" && e.status == 200));
}

/// A WAF or proxy answering the password grant with an HTML 403: a refusal, latched and
/// shared, so that five runs of `token` make at most two password attempts (not one login a
/// run, or a loop).
#[test]
fn an_html_403_on_the_password_grant_is_a_shared_refusal() {
    let double = start_double(double_config(None));
    let mut page = fake_creodias::TokenFault::new(403, None);
    page.html = true;
    double.set_token_fault(Some(page));
    let ws = Workspace::new();
    for run in 0..5 {
        let started = Instant::now();
        let out = ws.run(&double, &["token"]);
        assert!(!out.status.success(), "run {run}");
        assert!(out.stdout.is_empty());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(err.contains("HTTP 403"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "run {run} took {:?}",
            started.elapsed()
        );
    }
    let attempts = password_logins(&double.log()).len();
    assert!((1..=2).contains(&attempts), "{attempts} password attempts");
}

/// Another local user created the runtime directory first: `token` warns and works without
/// the shared cache instead of failing.
#[test]
fn a_squatted_runtime_dir_does_not_stop_token() {
    let double = start_double(double_config(None));
    let ws = Workspace::new();
    let squatted = ws.path().join("run").join("eodata-mount");
    std::fs::create_dir_all(&squatted).unwrap();
    // uid/gid 65534: nobody, as `setpriv --reuid=nobody mkdir` would leave it.
    std::os::unix::fs::chown(&squatted, Some(65534), Some(65534)).unwrap();
    let out = ws.run(&double, &["token"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 1);
    assert!(err.contains("without the shared token cache"), "{err}");
    assert_eq!(std::fs::read_dir(&squatted).unwrap().count(), 0);
}
