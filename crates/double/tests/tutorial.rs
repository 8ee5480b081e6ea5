//! The CREODIAS tutorial's Python script (scripts/tutorial_download.py), verbatim but for its hosts, run against
//! the double: it must log in with TOTP and download the product. Needs python3 with `requests`
//! and `pyotp`; when they are missing the test says so and passes (set
//! `FAKE_CREODIAS_REQUIRE_PYTHON=1` to make that a failure, e.g. in CI where they are installed).

mod common;

use std::process::Command;

use common::*;

/// Debian's Python, where `scripts/install-deps` puts requests and pyotp (python3-requests,
/// python3-pyotp); a python3 earlier on PATH (pyenv, venv) may have neither.
const PYTHON: &str = "/usr/bin/python3";

/// The project's one copy of the tutorial's download.py: verbatim but for its hosts, product id
/// and output file, which come from the environment and arguments.
const TUTORIAL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../scripts/tutorial_download.py"
);

fn python_ready() -> bool {
    Command::new(PYTHON)
        .args(["-c", "import pyotp, requests"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test]
async fn the_tutorial_script_logs_in_and_downloads() {
    if !python_ready() {
        assert!(
            std::env::var_os("FAKE_CREODIAS_REQUIRE_PYTHON").is_none(),
            "python3 with pyotp and requests is required"
        );
        eprintln!("SKIPPED: python3 with pyotp and requests not available");
        return;
    }
    fresh_step(10).await;
    let store = store();
    let (d, _) = start(config().products(store.dir.path())).await;
    let work = tempfile::tempdir().unwrap();
    // configparser interpolation: `%` is written `%%` in secrets.conf
    // (`docs/protocol.md`, "The tutorial's secrets.conf").
    let conf = format!(
        "[login]\nuser = {USER}\npassword = {}\ntotp_secret = {}\n",
        PASSWORD.replace('%', "%%"),
        "JBSW Y3DP EHPK 3PXP JBSW Y3DP EHPK 3PXP"
    );
    assert_eq!(SECRET, "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP");
    std::fs::write(work.path().join("secrets.conf"), conf).unwrap();
    let out = tokio::process::Command::new(PYTHON)
        .arg(TUTORIAL)
        .current_dir(work.path())
        // The tutorial posts to the token URL with a trailing `?`; keep that shape.
        .env("EODATA_TOKEN_URL", format!("{}?", d.token_url()))
        .env("EODATA_DOWNLOAD_BASE", format!("{}/download", d.base_url()))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = std::fs::read(work.path().join("my-file.zip")).unwrap();
    assert_eq!(got, store.bytes);
    let outcomes: Vec<(String, String)> = d
        .log()
        .into_iter()
        .map(|e| (e.service, e.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("token".to_string(), "ok".to_string()),
            ("zipper".into(), "ok".into())
        ]
    );
}
