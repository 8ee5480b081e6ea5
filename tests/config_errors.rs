//! Bad input through the real binary: one clear line naming the file and key, a non-zero exit,
//! and nothing mounted.

mod support;

use support::*;

fn fails_with(ws: &Workspace, double: &fake_creodias::Double, args: &[&str], needles: &[&str]) {
    let out = ws.run(double, args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} should fail");
    assert_eq!(
        err.trim().lines().count(),
        1,
        "one line for {args:?}: {err}"
    );
    for n in needles {
        assert!(err.contains(n), "{args:?}: {err:?} should mention {n:?}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn config_error_matrix() {
    let double = start_double(double_config(None));
    let ws = Workspace::new();
    let secrets = ws.secrets().display().to_string();

    ws.write_secrets("[other]\nuser = a\n");
    fails_with(&ws, &double, &["token"], &[&secrets, "login"]);

    ws.write_secrets(&format!(
        "[login]\nuser = {USER}\ntotp_secret = {TOTP_SECRET}\n"
    ));
    fails_with(&ws, &double, &["token"], &[&secrets, "password"]);

    ws.write_secrets(&format!(
        "[login]\nuser = {USER}\npassword = x\ntotp_secret = ABCD 1234\n"
    ));
    fails_with(&ws, &double, &["token"], &[&secrets, "totp_secret", "'1'"]);

    std::fs::remove_file(ws.secrets()).unwrap();
    fails_with(&ws, &double, &["token"], &[&secrets]);

    let ws = Workspace::new();
    fails_with(
        &ws,
        &double,
        &["token", "--token-url", "not a url"],
        &["token-url"],
    );
    fails_with(
        &ws,
        &double,
        &[
            "download",
            "x",
            "--download-url",
            "http://127.0.0.1:1/download/",
        ],
        &["{id}"],
    );
    fails_with(
        &ws,
        &double,
        &["mnt", "--cache-size", "lots"],
        &["cache-size"],
    );
}

#[test]
fn bad_mountpoints_fail_before_login_and_leave_nothing_mounted() {
    let double = start_double(double_config(None));
    let ws = Workspace::new();
    let missing = ws.path().join("nope");
    fails_with(
        &ws,
        &double,
        &[missing.to_str().unwrap()],
        &["does not exist", "mkdir"],
    );
    let file = ws.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    fails_with(
        &ws,
        &double,
        &[file.to_str().unwrap()],
        &["not a directory"],
    );
    fails_with(&ws, &double, &["/proc"], &["already mounted"]);
    assert!(password_logins(&double.log()).is_empty());
}
