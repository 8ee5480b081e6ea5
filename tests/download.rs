//! `eodata-mount download` against the double: parallel products through expiring tokens,
//! resume after SIGINT and SIGKILL, MD5 checks, and the same bytes as the tutorial's client.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use support::*;

const SIZE_MIB: u64 = 48;

#[test]
fn two_products_in_parallel_through_expiring_tokens() {
    let products = products(2, SIZE_MIB);
    let mut cfg = double_config(Some(&products));
    cfg.access_lifetime = Duration::from_secs(3);
    cfg.refresh_lifetime = Duration::from_secs(8);
    cfg.faults.bandwidth_per_conn = Some(4_000_000);
    let double = start_double(cfg);
    let ws = Workspace::new();
    let entries = index(&products);
    let stem = TUTORIAL_NAME.trim_end_matches(".SAFE");
    let other = entries[1]["Id"].as_str().unwrap();
    let out = ws.run(&double, &["download", stem, other, "-o", "out"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (i, e) in entries.iter().enumerate() {
        let saved = ws
            .path()
            .join("out")
            .join(format!("{}.zip", e["Name"].as_str().unwrap()));
        assert_eq!(
            file_sha256(&saved),
            file_sha256(&product_file(&products, i))
        );
    }
    let log = double.log();
    assert_eq!(password_logins(&log).len(), 1);
    assert!(reused_steps(&log).is_empty());
    // Nothing left behind but the two files.
    let left: Vec<_> = std::fs::read_dir(ws.path().join("out")).unwrap().collect();
    assert_eq!(left.len(), 2);
}

/// Start a slow download, stop it with `signal` once part of it is on disk, run it again, and
/// check that the second run resumed where the first stopped.
fn resume_after(signal: i32) {
    let products = products(2, SIZE_MIB);
    let mut cfg = double_config(Some(&products));
    cfg.faults.bandwidth_per_conn = Some(2_000_000);
    let double = start_double(cfg);
    let ws = Workspace::new();
    let dest = ws.path().join(format!("{TUTORIAL_NAME}.zip"));
    let part = ws.path().join(format!("{TUTORIAL_NAME}.zip.part"));
    let mut child = ws
        .command(&double)
        .args(["download", TUTORIAL_ID])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0) < (16 << 20) {
        assert!(Instant::now() < deadline, "download made no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, signal) };
    child.wait().unwrap();
    assert!(
        !dest.exists(),
        "an interrupted download never looks complete"
    );
    let had = std::fs::metadata(&part).unwrap().len();
    assert!(had > 0);
    let before = zipper_gets(&double.log()).len();

    let mut fast = double.faults();
    fast.bandwidth_per_conn = None;
    double.set_faults(fast);
    let out = ws.run(&double, &["download", TUTORIAL_ID]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(file_sha256(&dest), file_sha256(&product_file(&products, 0)));
    assert!(!part.exists());
    let log = double.log();
    // Where the second run started: its lowest data request (the 1-byte size probe at 0 asks
    // for no data; the log is in completion order, so take the minimum).
    let first = zipper_gets(&log)
        .into_iter()
        .skip(before)
        .filter(|e| e.range != Some((0, 0)))
        .filter_map(|e| e.range.map(|(a, _)| a))
        .min()
        .expect("the second run fetched something");
    assert_eq!(first, had, "resumed exactly where the .part ended");
}

#[test]
fn sigint_leaves_a_resumable_part() {
    resume_after(libc::SIGINT);
}

#[test]
fn sigkill_leaves_a_resumable_part() {
    resume_after(libc::SIGKILL);
}

#[test]
fn an_md5_mismatch_keeps_nothing() {
    let products = products(2, SIZE_MIB);
    let mut cfg = double_config(Some(&products));
    cfg.faults.tamper = true;
    let double = start_double(cfg);
    let ws = Workspace::new();
    let out = ws.run(&double, &["download", TUTORIAL_ID]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("MD5"), "{err}");
    assert!(!ws.path().join(format!("{TUTORIAL_NAME}.zip")).exists());
    assert!(!ws.path().join(format!("{TUTORIAL_NAME}.zip.part")).exists());
}

#[test]
fn complete_files_are_skipped_and_others_never_overwritten() {
    let products = products(2, SIZE_MIB);
    let double = start_double(double_config(Some(&products)));
    let ws = Workspace::new();
    let out = ws.run(&double, &["download", TUTORIAL_ID, "-o", "one.zip"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let served = |d: &fake_creodias::Double| -> u64 {
        zipper_gets(&d.log()).iter().map(|e| e.bytes_sent).sum()
    };
    let before = served(&double);
    let again = ws.run(&double, &["download", TUTORIAL_ID, "-o", "one.zip"]);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("skipped"));
    // Only the size probe (one byte) goes out: the product is not fetched again.
    assert!(served(&double) - before <= 1, "nothing fetched again");

    std::fs::write(ws.path().join("one.zip"), b"something else").unwrap();
    let refused = ws.run(&double, &["download", TUTORIAL_ID, "-o", "one.zip"]);
    assert!(!refused.status.success());
    assert_eq!(
        std::fs::read(ws.path().join("one.zip")).unwrap(),
        b"something else"
    );
    let forced = ws.run(
        &double,
        &["download", TUTORIAL_ID, "-o", "one.zip", "--force"],
    );
    assert!(forced.status.success());
    assert_eq!(
        file_sha256(&ws.path().join("one.zip")),
        file_sha256(&product_file(&products, 0))
    );

    let unknown = ws.run(&double, &["download", "S2B_MSIL1C_NOPE"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("S2B_MSIL1C_NOPE"));
}

#[test]
fn same_bytes_as_the_tutorials_client() {
    let products = products(2, SIZE_MIB);
    let double = start_double(double_config(Some(&products)));
    let ws = Workspace::new();
    let out = ws.run(&double, &["download", TUTORIAL_ID, "-o", "ours.zip"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tutorial = Workspace::for_tutorial();
    let py = tutorial.run_tutorial(&double, TUTORIAL_ID, "theirs.zip");
    assert!(
        py.status.success(),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    assert_eq!(
        file_sha256(&ws.path().join("ours.zip")),
        file_sha256(&tutorial.path().join("theirs.zip"))
    );
}
