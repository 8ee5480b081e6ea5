//! No secret in any output: the mount, `token` and `download`, at the highest verbosity and with
//! `RUST_LOG` asking for trace from the HTTP crates too, through renewals, revocations, cut
//! bodies, 503s and refused logins. Every line of stdout, stderr and the log files is searched
//! for the password, the TOTP secret (with and without spaces), the TOTP code of every step
//! around the run, and every token the double issued.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fake_creodias::Faults;
use support::*;

/// Asks for everything, including the HTTP stack's own trace output, which prints URLs and
/// headers: the binary must cap it.
const RUST_LOG: &str = "trace,hyper=trace,hyper_util=trace,reqwest=trace,h2=trace";

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Runs the binary at trace level; its stderr is appended to `out`, its stdout returned (only
/// `token` prints a secret there, by design).
fn run(
    ws: &Workspace,
    double: &fake_creodias::Double,
    args: &[&str],
    out: &mut String,
) -> (bool, String) {
    let o = ws
        .command(double)
        .env("RUST_LOG", RUST_LOG)
        .args(args)
        .arg("-vvv")
        .stdin(Stdio::null())
        .output()
        .expect("run eodata-mount");
    out.push_str(&String::from_utf8_lossy(&o.stderr));
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

/// Maximal runs of exactly six digits in `line`, after its leading timestamp (whose
/// microseconds are six digits too).
fn six_digit_runs(line: &str) -> Vec<String> {
    let plain = strip_ansi(line);
    let line = match plain.split_once(' ') {
        Some((first, rest)) if first.starts_with("20") && first.ends_with('Z') => rest,
        _ => line,
    };
    let b = line.as_bytes();
    let mut runs = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() {
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            if i - start == 6 {
                runs.push(line[start..i].to_string());
            }
        } else {
            i += 1;
        }
    }
    runs
}

#[test]
fn no_secret_in_any_output_at_any_verbosity() {
    if !support::fuse_or_skip() {
        return;
    }
    let products = products(2, 48);
    let mut cfg = double_config(Some(&products));
    cfg.access_lifetime = Duration::from_secs(3);
    cfg.refresh_lifetime = Duration::from_secs(8);
    let double = start_double(cfg);
    let ws = Workspace::new();
    let first_step = unix_now() / 30;
    let mut out = String::new();
    let mut printed = Vec::new();

    // `token`, across expiries (refresh) and after a revocation.
    for _ in 0..3 {
        let (ok, stdout) = run(&ws, &double, &["token"], &mut out);
        assert!(ok, "{out}");
        printed.push(stdout.trim().to_string());
        std::thread::sleep(Duration::from_millis(2500));
    }
    assert!(!printed.is_empty(), "token printed a token");

    // `download` of a product, slow enough to span renewals, with cut bodies, 503s and a
    // revocation on the way.
    double.set_faults(Faults {
        bandwidth_per_conn: Some(6_000_000),
        cut_rate: 0.2,
        fail_rate: 0.1,
        ..Faults::default()
    });
    let id = index(&products)[1]["Id"].as_str().unwrap().to_string();
    let d2 = double.clone();
    let revoker = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(3));
        d2.revoke_tokens();
    });
    let dl = ws.path().join("dl");
    std::fs::create_dir(&dl).unwrap();
    let (ok, stdout) = run(
        &ws,
        &double,
        &["download", &id, "-o", dl.to_str().unwrap()],
        &mut out,
    );
    assert!(ok, "{out}");
    out.push_str(&stdout);
    let before_mount = out.lines().count();
    revoker.join().unwrap();

    // The mount, through renewals and a revocation, then refused logins.
    let dir = ws.path().join("mnt");
    std::fs::create_dir(&dir).unwrap();
    let log = ws.path().join("mount.log");
    let child = ws
        .command(&double)
        .env("RUST_LOG", RUST_LOG)
        .arg(&dir)
        .args(["--foreground", "-vvv", "--log-file"])
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mount = Mount {
        dir: dir.clone(),
        child,
        log: log.clone(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(is_mounted(&dir) && std::fs::read_dir(&dir).is_ok()) {
        assert!(Instant::now() < deadline, "mounted within 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let name = index(&products)[0]["Name"].as_str().unwrap().to_string();
    let file = mount.path(&format!("{name}.zip"));
    let d2 = double.clone();
    let revoker = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2));
        d2.revoke_tokens();
    });
    let want = file_sha256(&products.join(index(&products)[0]["file"].as_str().unwrap()));
    assert_eq!(file_sha256(&file), want);
    revoker.join().unwrap();
    // Now every login is refused: the mount's next renewal fails.
    double
        .update_user(fake_creodias::User::new(USER, "changed", TOTP_SECRET))
        .unwrap();
    double.set_faults(Faults {
        refuse_refresh: true,
        ..Faults::default()
    });
    double.revoke_tokens();
    let name1 = index(&products)[1]["Name"].as_str().unwrap().to_string();
    let _ = std::fs::read(mount.path(&format!("{name1}.zip")));
    let mut mount = mount;
    let child_stdout = mount.child.stdout.take();
    out.push_str(&mount.stop());
    let mut stdout = String::new();
    if let Some(mut o) = child_stdout {
        let _ = std::io::Read::read_to_string(&mut o, &mut stdout);
    }
    out.push_str(&stdout);
    let mount_log = std::fs::read_to_string(&log).unwrap();
    eprintln!(
        "{before_mount} lines from token and download, {} in the mount's log",
        mount_log.lines().count()
    );
    assert!(
        mount_log.contains("refused"),
        "the mount met the refusal:\n{mount_log}"
    );
    out.push_str(&mount_log);

    // `token` with garbage from the token endpoint.
    double.set_faults(Faults {
        garbage_token: true,
        ..Faults::default()
    });
    let (ok, stdout) = run(&ws, &double, &["token", "--no-token-cache"], &mut out);
    assert!(!ok);
    out.push_str(&stdout);
    let last_step = unix_now() / 30;

    // Now search.
    let mut tokens = double.issued_tokens();
    tokens.extend(printed);
    assert!(
        tokens.len() >= 6,
        "renewals happened: {} tokens",
        tokens.len()
    );
    let codes: Vec<String> = (first_step.saturating_sub(2)..=last_step + 2)
        .map(|s| fake_creodias::totp_code(TOTP_SECRET, s * 30).unwrap())
        .collect();
    let secret_plain: String = TOTP_SECRET.split_whitespace().collect();
    let mut needles: Vec<(String, &str)> = vec![
        (PASSWORD.to_lowercase(), "the password"),
        (
            url::form_urlencoded::byte_serialize(PASSWORD.as_bytes())
                .collect::<String>()
                .to_lowercase(),
            "the url-encoded password",
        ),
        (TOTP_SECRET.to_lowercase(), "the TOTP secret"),
        (
            secret_plain.to_lowercase(),
            "the TOTP secret without spaces",
        ),
    ];
    for t in &tokens {
        needles.push((t.to_lowercase(), "a token"));
        // The signature alone, should a token be cut or wrapped.
        let sig = t.rsplit('.').next().unwrap();
        if sig.len() >= 16 {
            needles.push((sig.to_lowercase(), "a token's signature"));
        }
    }
    let lines = out.lines().count();
    let mut hits = Vec::new();
    for line in out.lines() {
        let lower = line.to_lowercase();
        for (n, what) in &needles {
            if lower.contains(n.as_str()) {
                hits.push(format!("{what}: {line}"));
            }
        }
        for run in six_digit_runs(line) {
            if codes.contains(&run) {
                hits.push(format!("a TOTP code: {line}"));
            }
        }
    }
    eprintln!(
        "searched {lines} lines for {} needles and {} codes",
        needles.len(),
        codes.len()
    );
    assert!(lines > 100, "the run logged at trace level ({lines} lines)");
    assert!(
        hits.is_empty(),
        "{} leaks:\n{}",
        hits.len(),
        hits.join("\n")
    );
}

/// `line` without ANSI colour sequences (`ESC [ ... m`), as a terminal shows it.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn the_search_finds_what_it_looks_for() {
    assert_eq!(
        six_digit_runs(
            "\u{1b}[2m2026-11-28T19:23:17.313743Z\u{1b}[0m \u{1b}[34mDEBUG\u{1b}[0m 999999"
        ),
        vec!["999999"]
    );
    assert_eq!(
        six_digit_runs("2026-11-28T19:04:30.043352Z DEBUG code 123456 at 1234567 x 654321y"),
        vec!["123456", "654321"]
    );
}
