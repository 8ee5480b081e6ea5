//! The Copernicus Data Space Ecosystem profile against the double in CDSE mode (realm `CDSE`,
//! client `cdse-public`, downloads redirected from the "catalogue host" 127.0.0.1 to the
//! "download host" localhost): the mount and `download` paths with the token in
//! `Authorization: Bearer`, carried across the redirect only to a trusted host; `provider =` in
//! secrets.conf's `[endpoints]`, and flags winning over it.

mod support;

use std::process::Command;

use fake_creodias::LogEntry;
use support::*;

const SIZE_MIB: u64 = 48;

fn cdse_double() -> (std::path::PathBuf, fake_creodias::Double) {
    let products = products(2, SIZE_MIB);
    let double = start_double(double_config(Some(&products)).cdse());
    assert!(double.token_url().contains("/auth/realms/CDSE/"));
    (products, double)
}

/// Every download went through the redirect and was answered with a Bearer token.
fn assert_bearer_through_redirect(log: &[LogEntry]) {
    let gets = zipper_gets(log);
    assert!(
        gets.iter().any(|e| e.outcome == "redirect"),
        "no redirect met"
    );
    let served: Vec<_> = gets.iter().filter(|e| e.outcome == "ok").collect();
    assert!(!served.is_empty(), "nothing served");
    for e in &served {
        assert_eq!(e.token_via.as_deref(), Some("bearer"), "{e:?}");
    }
    assert!(
        gets.iter()
            .all(|e| e.outcome == "ok" || e.outcome == "redirect"),
        "{:?}",
        gets.iter().map(|e| &e.outcome).collect::<Vec<_>>()
    );
}

#[test]
fn a_cdse_mount_reads_exact_bytes_with_bearer_through_the_redirect() {
    if !support::fuse_or_skip() {
        return;
    }
    let (products, double) = cdse_double();
    let ws = Workspace::new();
    let mount = Mount::start(
        &ws,
        &double,
        &[
            "--provider",
            "cdse",
            "--trusted-host",
            "localhost",
            "--product",
            TUTORIAL_ID,
        ],
    );
    let file = mount.path(&format!("{TUTORIAL_NAME}.zip"));
    let copy = ws.path().join("copy.zip");
    sh(Command::new("cp").arg(&file).arg(&copy));
    assert_eq!(file_sha256(&copy), file_sha256(&product_file(&products, 0)));
    let listing = sh(Command::new("unzip").arg("-l").arg(&file));
    assert!(String::from_utf8_lossy(&listing.stdout).contains("MTD_MSIL1C.xml"));
    drop(mount);
    let log = double.log();
    assert_bearer_through_redirect(&log);
    assert_eq!(password_logins(&log).len(), 1);
}

#[test]
fn download_takes_the_provider_from_secrets_conf() {
    let (products, double) = cdse_double();
    let ws = Workspace::new();
    let secrets = std::fs::read_to_string(ws.secrets()).unwrap();
    ws.write_secrets(&format!("{secrets}\n[endpoints]\nprovider = cdse\n"));
    let other = index(&products)[1]["Id"].as_str().unwrap().to_string();
    let out = ws.run(
        &double,
        &[
            "download",
            TUTORIAL_ID,
            &other,
            "-o",
            "out",
            "-q",
            "--trusted-host",
            "localhost",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_all_saved(&ws.path().join("out"), &products);
    assert_bearer_through_redirect(&double.log());

    // A flag wins over the file: CREODIAS's client id, which the CDSE realm refuses.
    let out = ws.run(
        &double,
        &["token", "--provider", "creodias", "--no-token-cache"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("client"), "{err}");
    assert!(double
        .log()
        .iter()
        .any(|e| e.service == "token" && e.outcome == "invalid_client"));
}

#[test]
fn the_bearer_token_is_not_carried_to_an_untrusted_host() {
    let (_, double) = cdse_double();
    let ws = Workspace::new();
    let out = ws.run(
        &double,
        &[
            "download",
            TUTORIAL_ID,
            "-o",
            "out",
            "-q",
            "--provider",
            "cdse",
        ],
    );
    assert!(!out.status.success(), "localhost is not a CDSE host");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not trusted"), "the error says why: {err}");
    let log = double.log();
    let gets: Vec<_> = log.iter().filter(|e| e.service == "zipper").collect();
    assert!(gets.iter().any(|e| e.outcome == "redirect"));
    // At the other host the request arrived without the token.
    assert!(
        gets.iter()
            .filter(|e| e.outcome != "redirect")
            .all(|e| e.outcome == "no_token" && e.token_via.is_none()),
        "{gets:?}"
    );
}
