//! `eodata-mount doctor` against the double: what it reports for a healthy service, a zipper
//! that ignores Range, a wrong password, a skewed server clock and an unusable /dev/fuse; and
//! that its output holds no secret at any verbosity. The doctor checks /dev/fuse as the mount
//! would, so the tests expecting a clean report run only where a mount can (root).

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use fake_creodias::{Double, Faults};
use support::*;

/// Lifetimes unlike the double's defaults (300/1800), so a report of hard-coded numbers fails.
const ACCESS_SECS: u64 = 420;
const REFRESH_SECS: u64 = 2400;

fn healthy_double() -> Double {
    let products = products(1, 1);
    let mut cfg = double_config(Some(&products));
    cfg.access_lifetime = Duration::from_secs(ACCESS_SECS);
    cfg.refresh_lifetime = Duration::from_secs(REFRESH_SECS);
    // A server that honours Range: the one case where every area is plainly ok.
    cfg.faults.range = true;
    start_double(cfg)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The summary line of `area`: its status word.
fn summary(stdout: &str, area: &str) -> String {
    let tail = stdout.rsplit("\nsummary\n").next().unwrap();
    tail.lines()
        .find_map(|l| l.trim().strip_prefix(area))
        .map(|rest| rest.split_whitespace().next().unwrap_or("").to_string())
        .unwrap_or_else(|| panic!("no summary line for {area}:\n{stdout}"))
}

#[test]
fn a_healthy_service_is_all_ok_with_its_real_lifetimes() {
    if !support::fuse_or_skip() {
        return;
    }
    let double = healthy_double();
    let ws = Workspace::new();
    let out = ws.run(&double, &["doctor"]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", text(&out));
    for area in ["configuration", "login", "download service", "catalogue"] {
        assert_eq!(summary(&stdout, area), "ok", "{area}:\n{stdout}");
    }
    assert!(
        stdout.contains(&format!(
            "expires_in {ACCESS_SECS} s, refresh_expires_in {REFRESH_SECS} s"
        )),
        "{stdout}"
    );
    assert!(stdout.contains("Range honoured"), "{stdout}");
    assert!(
        stdout.contains("password + TOTP login accepted"),
        "{stdout}"
    );
    assert!(stdout.contains("audience account"), "{stdout}");
    assert!(stdout.contains(TUTORIAL_NAME), "{stdout}");
    assert!(stdout.contains("Checksum MD5 present"), "{stdout}");
    assert!(stdout.contains("content-range: bytes 0-0/"), "{stdout}");
    assert!(stdout.ends_with("a mount would work\n"), "{stdout}");
    let log = double.log();
    assert_eq!(password_logins(&log).len(), 1, "one login");
    let refreshes = log
        .iter()
        .filter(|e| e.grant_type.as_deref() == Some("refresh_token"))
        .count();
    assert_eq!(refreshes, 1, "one refresh");
    let ranged: Vec<_> = zipper_gets(&log);
    assert_eq!(ranged.len(), 1, "one GET: {log:#?}");
    assert!(ranged[0].bytes_sent <= 1, "{:?}", ranged[0]);

    // A second run finds the shared cached token and says so: no new login.
    let out = ws.run(&double, &["doctor", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(json["mount_would_work"], true);
    let login = &json["sections"][1];
    assert_eq!(login["name"], "login");
    assert_eq!(login["checks"][0]["value"]["source"], "shared-cache");
    assert!(login["checks"][0]["text"]
        .as_str()
        .unwrap()
        .contains("shared cached token"));
    assert_eq!(password_logins(&double.log()).len(), 1, "still one login");
    let refresh = login["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "lifetimes after refresh")
        .expect("the refresh's lifetimes");
    assert_eq!(refresh["value"]["expires_in"], ACCESS_SECS as f64);
    assert_eq!(refresh["value"]["refresh_expires_in"], REFRESH_SECS as f64);
}

#[test]
fn a_zipper_ignoring_range_is_a_warning_and_the_connection_is_dropped() {
    if !support::fuse_or_skip() {
        return;
    }
    let double = healthy_double();
    double.set_faults(Faults {
        // Slow enough that the product (1 MiB) cannot have been sent before the drop.
        bandwidth_per_conn: Some(128 << 10),
        ..Faults::default()
    });
    let ws = Workspace::new();
    let out = ws.run(&double, &["doctor"]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(summary(&stdout, "download service"), "warn", "{stdout}");
    assert!(
        stdout.contains("Range ignored: products stream whole; the disk cache at "),
        "{stdout}"
    );
    assert!(
        stdout.contains("/.cache/eodata-mount keeps each once"),
        "{stdout}"
    );
    // The whole-product answer was abandoned at once.
    std::thread::sleep(Duration::from_millis(300));
    let log = double.log();
    let get = zipper_gets(&log)[0].clone();
    let size = index(&products(1, 1))[0]["ContentLength"].as_u64().unwrap();
    assert!(
        get.bytes_sent < size / 2,
        "{} of {size} bytes sent",
        get.bytes_sent
    );
}

#[test]
fn a_wrong_password_is_one_attempt_reported_in_keycloaks_words() {
    let double = healthy_double();
    let ws = Workspace::new();
    ws.write_secrets(&format!(
        "[login]\nuser = {USER}\npassword = not the password\ntotp_secret = {TOTP_SECRET}\n"
    ));
    let out = ws.run(&double, &["doctor"]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!out.status.success(), "{}", text(&out));
    assert_eq!(summary(&stdout, "login"), "fail", "{stdout}");
    assert!(stdout.contains("Invalid user credentials"), "{stdout}");
    assert!(stdout.contains("only attempt"), "{stdout}");
    assert!(stdout.ends_with("a mount would not work: see the failed checks above\n"));
    assert_eq!(
        password_logins(&double.log()).len(),
        1,
        "exactly one attempt"
    );
}

#[test]
fn a_skewed_server_clock_is_reported_and_totp_still_works() {
    if !support::fuse_or_skip() {
        return;
    }
    let double = healthy_double();
    double.set_clock_skew(600);
    let ws = Workspace::new();
    let out = ws.run(&double, &["doctor", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let config = &json["sections"][0];
    let clock = config["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "clock")
        .expect("a clock check");
    let skew = clock["value"]["skew_seconds"].as_f64().unwrap();
    assert!((598.0..=602.0).contains(&skew), "skew {skew}");
    assert_eq!(clock["level"], "warn");
    assert!(
        clock["text"].as_str().unwrap().contains("600 s ahead of"),
        "{clock}"
    );
    assert_eq!(
        json["sections"][1]["status"], "ok",
        "{}",
        json["sections"][1]
    );
    let logins = password_logins(&double.log()).len();
    assert_eq!(logins, 1);
}

#[test]
fn an_unusable_fuse_device_is_the_reason_a_mount_would_fail() {
    if !support::fuse_or_skip() {
        return;
    }
    let double = healthy_double();
    let ws = Workspace::new();
    // The doctor runs as `nobody` in a mount namespace of its own, where /dev/fuse is a copy of
    // the device that only root may open (whatever the mode of the real one).
    let nobody = 65534;
    let chown = |p: &std::path::Path| std::os::unix::fs::chown(p, Some(nobody), Some(nobody));
    let run_dir = ws.path().join("run");
    std::fs::create_dir_all(&run_dir).unwrap();
    std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    for p in [ws.path(), &ws.secrets(), &run_dir] {
        chown(p).unwrap();
    }
    let device = tempfile::tempdir().unwrap();
    let script = format!(
        "mknod {dev}/fuse c 10 229 && chmod 600 {dev}/fuse && mount --bind {dev}/fuse /dev/fuse \
         && exec setpriv --reuid={nobody} --regid={nobody} --clear-groups \"$@\"",
        dev = device.path().display()
    );
    let cmd = ws.command(&double);
    let program = cmd.get_program().to_owned();
    let envs: Vec<_> = cmd
        .get_envs()
        .map(|(k, v)| (k.to_owned(), v.map(|v| v.to_owned())))
        .collect();
    let mut cmd = Command::new("unshare");
    cmd.arg("-m")
        .arg("sh")
        .arg("-c")
        .arg(&script)
        .arg("sh")
        .arg(&program)
        .arg("doctor")
        .current_dir(ws.path())
        .env_clear()
        .stdin(Stdio::null());
    for (k, v) in envs {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    let out = cmd.output().expect("run unshare");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!out.status.success(), "{}", text(&out));
    assert_eq!(summary(&stdout, "this machine"), "fail", "{}", text(&out));
    assert!(
        stdout.contains("/dev/fuse is not usable by this user"),
        "{stdout}"
    );
    for area in ["configuration", "login", "catalogue"] {
        assert_eq!(summary(&stdout, area), "ok", "{area}:\n{stdout}");
    }
    // Not root: fusermount3 is needed and must be setuid; this machine has it.
    assert!(
        stdout.contains("fusermount3: /usr/bin/fusermount3 (setuid root)"),
        "{stdout}"
    );
}

#[test]
fn no_secret_in_the_output_at_any_verbosity() {
    if !support::fuse_or_skip() {
        return;
    }
    let first_step = unix_now() / 30;
    let mut out = String::new();
    let mut tokens = Vec::new();
    for v in ["-v", "-vv", "-vvv"] {
        // A double each: two logins within one 30 s step would reuse its code, which a
        // double (like Keycloak) refuses.
        let double = healthy_double();
        let ws = Workspace::new();
        let o = ws.run(&double, &["doctor", v]);
        assert!(o.status.success(), "{}", text(&o));
        out.push_str(&text(&o));
        let o = ws.run(&double, &["doctor", "--json", v]);
        out.push_str(&text(&o));
        tokens.extend(double.issued_tokens());
    }
    let double = healthy_double();
    let ws = Workspace::new();
    ws.write_secrets(&format!(
        "[login]\nuser = {USER}\npassword = {}x\ntotp_secret = {TOTP_SECRET}\n",
        PASSWORD.replace('%', "%%")
    ));
    let o = ws.run(&double, &["doctor", "-vvv"]);
    assert!(!o.status.success());
    out.push_str(&text(&o));
    let last_step = unix_now() / 30;
    assert!(out.lines().count() > 100, "verbose output:\n{out}");

    assert!(tokens.len() >= 6, "{} tokens", tokens.len());
    let secret_plain: String = TOTP_SECRET.split_whitespace().collect();
    let mut needles = vec![
        PASSWORD.to_lowercase(),
        url::form_urlencoded::byte_serialize(PASSWORD.as_bytes())
            .collect::<String>()
            .to_lowercase(),
        TOTP_SECRET.to_lowercase(),
        secret_plain.to_lowercase(),
    ];
    for t in &tokens {
        needles.push(t.to_lowercase());
        needles.push(t.rsplit('.').next().unwrap().to_lowercase());
    }
    let lower = out.to_lowercase();
    for n in &needles {
        assert!(!lower.contains(n.as_str()), "a secret in the output: {n}");
    }
    // Codes: six digits standing alone (byte counts and times are longer numbers).
    for step in first_step.saturating_sub(2)..=last_step + 2 {
        let code = fake_creodias::totp_code(TOTP_SECRET, step * 30).unwrap();
        let alone = out
            .split(|c: char| !c.is_ascii_digit())
            .any(|word| word == code);
        assert!(!alone, "TOTP code {code} (step {step}) in the output");
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
