//! Real processes sharing one cache directory: this test binary runs itself four times at once
//! (the ignored `child` test below, pointed at a double by environment variables). Together they
//! must log in once: the others wait on the lock file and adopt the winner's token.

use std::process::Command;
use std::time::Duration;

use eodata_auth::{LoginConfig, Secret, TokenManager};
use fake_creodias::{Config, Double};
use sha2::{Digest, Sha256};

const USER: &str = "proc@example.com";
const PASSWORD: &str = "pa55+word";
const SECRET: &str = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";
const URL_VAR: &str = "EODATA_AUTH_TEST_TOKEN_URL";
const DIR_VAR: &str = "EODATA_AUTH_TEST_CACHE_DIR";
/// A file the children wait for, so that they all ask at the same moment.
const GO_VAR: &str = "EODATA_AUTH_TEST_GO";

/// The child: one token, its hash on stdout. Does nothing when not started by the parent.
#[tokio::test]
#[ignore = "run by processes_share_one_login as a child process"]
async fn child() {
    let (Ok(url), Ok(dir)) = (std::env::var(URL_VAR), std::env::var(DIR_VAR)) else {
        return;
    };
    let cfg = LoginConfig {
        token_url: url,
        client_id: fake_creodias::CREODIAS_CLIENT_ID.into(),
        user: USER.into(),
        password: Secret::new(PASSWORD),
        totp_secret: Secret::new(SECRET),
        cache_dir: Some(dir.into()),
    };
    let m = TokenManager::new(cfg, reqwest::Client::new()).unwrap();
    let go = std::env::var(GO_VAR).unwrap();
    while !std::path::Path::new(&go).exists() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let token = m.token().await.unwrap();
    let hash: String = Sha256::digest(token.value.expose().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    println!("TOKEN_HASH={hash}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_share_one_login() {
    let double = Double::start(Config::with_user(USER, PASSWORD, SECRET))
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    let go = tmp.path().join("go");
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..4)
        .map(|_| {
            Command::new(&exe)
                .args([
                    "--ignored",
                    "--exact",
                    "child",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(URL_VAR, double.token_url())
                .env(DIR_VAR, &dir)
                .env(GO_VAR, &go)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // Let every child reach its wait loop (a test binary starts in well under a second).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    std::fs::write(&go, b"").unwrap();
    let mut hashes = vec![];
    for child in children {
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::task::spawn_blocking(move || child.wait_with_output().unwrap()),
        )
        .await
        .expect("child hung")
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "child failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The harness prints "test child ... " on the same line, before the marker.
        let hash = stdout
            .split_once("TOKEN_HASH=")
            .map(|(_, rest)| rest.chars().take(64).collect::<String>())
            .unwrap_or_else(|| panic!("no token from child: {stdout}"));
        hashes.push(hash);
    }
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
    let logins = double
        .log()
        .into_iter()
        .filter(|e| e.grant_type.as_deref() == Some("password"))
        .count();
    assert_eq!(logins, 1, "four processes, one login");
}
