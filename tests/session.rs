//! A copy through a real mount that outlives the account's session (Keycloak's SSO Session Max,
//! about an hour on CDSE, docs/protocol.md): here 8 s, with 3 s access tokens and Range on (so
//! the copy makes requests all along). The password logins that the session's end forces
//! happen early, off the read path: the copy is exact, no read fails, no TOTP step is used
//! twice, and the log says when the session was due to end.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

#[test]
fn a_copy_longer_than_the_session_max_is_exact_and_logs_in_again_early() {
    if !support::fuse_or_skip() {
        return;
    }
    let products = products(2, 48);
    let local = product_file(&products, 0);
    let mut cfg = ranged_config(Some(&products));
    cfg.access_lifetime = Duration::from_secs(3);
    cfg.refresh_lifetime = Duration::from_secs(8);
    cfg.session_max = Some(Duration::from_secs(8));
    // About 16 s for the product at the mount's 4 connections.
    cfg.faults.bandwidth_per_conn = Some(800_000);
    let double = start_double(cfg);
    let ws = Workspace::new();
    let m = Mount::start(&ws, &double, &["--product", TUTORIAL_ID, "--no-cache-dir"]);
    let copy = ws.path().join("copy.zip");
    let t = Instant::now();
    sh(Command::new("cp")
        .arg(m.path(&format!("{TUTORIAL_NAME}.zip")))
        .arg(&copy));
    let took = t.elapsed();
    assert_eq!(file_sha256(&copy), file_sha256(&local), "exact");
    let log = double.log();
    let logins = password_logins(&log).len();
    eprintln!("copy took {took:?}; {logins} password logins");
    assert!(
        took > Duration::from_secs(9),
        "the copy outlived the session ({took:?})"
    );
    assert!(logins >= 2, "a new session was opened by password");
    assert!(
        reused_steps(&log).is_empty(),
        "no TOTP step twice: {:?}",
        reused_steps(&log)
    );
    let refused_reads = log
        .iter()
        .filter(|e| e.service == "zipper" && e.status == 401)
        .count();
    let text = m.log_text();
    assert!(
        text.contains("session ends in"),
        "the early login is logged:\n{text}"
    );
    assert!(!text.contains(" ERROR "), "no read failed:\n{text}");
    eprintln!("zipper 401s: {refused_reads}");
    m.stop();
}
