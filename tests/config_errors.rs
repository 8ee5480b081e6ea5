//! Bad input through the real binary: one clear line naming the file and key, a non-zero exit,
//! and nothing mounted.

mod support;

use support::*;

fn fails_with(ws: &Workspace, double: &fake_creodias::Double, args: &[&str], needles: &[&str]) {
    fails_in_lines(ws, double, args, needles, 1);
}

/// `download` says what failed per product, then sums up: two lines for one product.
fn download_fails_with(
    ws: &Workspace,
    double: &fake_creodias::Double,
    args: &[&str],
    needles: &[&str],
) {
    fails_in_lines(ws, double, args, needles, 2);
}

fn fails_in_lines(
    ws: &Workspace,
    double: &fake_creodias::Double,
    args: &[&str],
    needles: &[&str],
    lines: usize,
) {
    let out = ws.run(double, args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} should fail");
    assert!(
        (1..=lines).contains(&err.trim().lines().count()),
        "at most {lines} lines for {args:?}: {err}"
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

#[test]
fn unreadable_config_and_empty_password() {
    let double = start_double(double_config(None));
    let ws = Workspace::new();
    // Root reads any file whatever its mode; a directory cannot be read by anyone.
    let dir = ws.path().join("conf.d");
    std::fs::create_dir(&dir).unwrap();
    fails_with(
        &ws,
        &double,
        &["token", "--config", dir.to_str().unwrap()],
        &[dir.to_str().unwrap()],
    );
    ws.write_secrets(&format!(
        "[login]\nuser = {USER}\npassword =\ntotp_secret = {TOTP_SECRET}\n"
    ));
    fails_with(
        &ws,
        &double,
        &["token"],
        &[ws.secrets().to_str().unwrap(), "password"],
    );
    assert!(password_logins(&double.log()).is_empty());
}

#[test]
fn unknown_products_and_garbage_from_each_service() {
    let products = products(1, 1);
    let double = start_double(double_config(Some(&products)));
    let ws = Workspace::new();
    let out = ws.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let out = out.to_str().unwrap();
    let unknown = "S2B_MSIL1C_20990101T000000_N0000_R000_T00AAA_20990101T000000.SAFE";
    download_fails_with(
        &ws,
        &double,
        &["download", unknown, "-q", "-o", out],
        &[unknown],
    );

    // The token endpoint answers an HTML page.
    double.set_faults(fake_creodias::Faults {
        garbage_token: true,
        ..Default::default()
    });
    fails_with(&ws, &double, &["token", "--no-token-cache"], &["token"]);

    // The catalogue answers an HTML page.
    double.set_faults(fake_creodias::Faults {
        garbage_catalogue: true,
        ..Default::default()
    });
    download_fails_with(
        &ws,
        &double,
        &["download", TUTORIAL_NAME, "-q", "-o", out],
        &["catalogue"],
    );

    // Every download fails with an HTML error page instead of zipper's JSON.
    double.set_faults(fake_creodias::Faults {
        garbage_zipper_errors: true,
        fail_rate: 1.0,
        ..Default::default()
    });
    download_fails_with(
        &ws,
        &double,
        &[
            "download",
            TUTORIAL_ID,
            "-q",
            "-o",
            out,
            "--read-timeout",
            "2",
        ],
        &["503"],
    );
}

#[test]
fn misspellings_and_command_words_get_a_suggestion() {
    let double = start_double(double_config(None));
    let ws = Workspace::new();
    // clap's "did you mean", kept on our one line.
    fails_with(&ws, &double, &["mnt", "--foregound"], &["--foreground"]);
    // Words that look like commands are not "mountpoint does not exist".
    fails_with(&ws, &double, &["status"], &[".eodata-status"]);
    fails_with(&ws, &double, &["ls"], &["ls MOUNTPOINT"]);
    fails_with(&ws, &double, &["unmout"], &["eodata-mount unmount"]);
    fails_with(
        &ws,
        &double,
        &["frobnicate"],
        &["neither a command", "download"],
    );
    // A path stays a path.
    fails_with(&ws, &double, &["./status"], &["does not exist", "mkdir"]);
    assert!(password_logins(&double.log()).is_empty());
}

#[test]
fn a_non_empty_mountpoint_is_refused_without_consent() {
    let double = start_double(double_config(None));
    let ws = Workspace::new();
    let dir = ws.path().join("full");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("mine.txt"), b"x").unwrap();
    // Not --foreground: a regression that mounts anyway returns (and is unmounted below)
    // instead of hanging the test.
    let out = ws.run(&double, &[dir.to_str().unwrap()]);
    let mounted = is_mounted(&dir);
    if mounted {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&dir)
            .status();
    }
    assert!(!mounted, "mounted over a non-empty directory");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not empty") && err.contains("-o nonempty"),
        "{err}"
    );
    assert!(password_logins(&double.log()).is_empty());
}
