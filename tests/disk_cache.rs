//! Real mounts with `--cache-dir`: blocks persist across mounts (a product read once reads
//! again with zero download requests), every block the daemon serves is verified (a corrupt
//! one is re-fetched), and mounts sharing one directory read identical bytes.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use fake_creodias::LogEntry;
use support::*;

/// Small products keep the test fast; 48 MiB is still 48 block files.
const SIZE_MIB: u64 = 48;

fn local_file(products: &Path) -> PathBuf {
    products.join(index(products)[0]["file"].as_str().unwrap())
}

/// Zipper requests (any method) in `log` after entry `mark`.
fn zipper_requests(log: &[LogEntry], mark: usize) -> Vec<&LogEntry> {
    log[mark..]
        .iter()
        .filter(|e| e.service == "zipper")
        .collect()
}

fn copy_sha(mount: &Mount, ws: &Workspace, to: &str) -> String {
    let out = ws.path().join(to);
    sh(Command::new("cp")
        .arg(mount.path(&format!("{TUTORIAL_NAME}.zip")))
        .arg(&out));
    file_sha256(&out)
}

fn mount_cached(ws: &Workspace, double: &fake_creodias::Double, cache: &Path) -> Mount {
    Mount::start(
        ws,
        double,
        &[
            "--product",
            TUTORIAL_ID,
            "--cache-dir",
            cache.to_str().unwrap(),
        ],
    )
}

#[test]
fn a_product_read_once_reads_again_after_a_remount_with_zero_requests() {
    if !support::fuse_or_skip() {
        return;
    }
    let products = products(2, SIZE_MIB);
    let double = start_double(double_config(Some(&products)));
    let ws = Workspace::new();
    let cache = ws.path().join("cache");
    let want = file_sha256(&local_file(&products));

    let first = mount_cached(&ws, &double, &cache);
    assert_eq!(copy_sha(&first, &ws, "a.zip"), want);
    first.stop();
    let first_requests = zipper_requests(&double.log(), 0).len();

    let mark = double.log().len();
    let second = mount_cached(&ws, &double, &cache);
    assert_eq!(copy_sha(&second, &ws, "b.zip"), want);
    sh(Command::new("unzip")
        .arg("-tq")
        .arg(second.path(&format!("{TUTORIAL_NAME}.zip"))));
    let log = double.log();
    let again = zipper_requests(&log, mark);
    eprintln!(
        "first mount: {first_requests} zipper requests; remount: {} requests",
        again.len()
    );
    assert!(again.is_empty(), "remount made requests: {again:?}");
    second.stop();
}

#[test]
fn a_corrupt_block_is_detected_and_fetched_again() {
    if !support::fuse_or_skip() {
        return;
    }
    let products = products(2, SIZE_MIB);
    let double = start_double(ranged_config(Some(&products)));
    let ws = Workspace::new();
    let cache = ws.path().join("cache");
    let want = file_sha256(&local_file(&products));

    let first = mount_cached(&ws, &double, &cache);
    assert_eq!(copy_sha(&first, &ws, "a.zip"), want);
    first.stop();

    // Read whole, the product is one file in the cache: one bit of block 3 and one of block 7
    // flipped in place (bit rot).
    const MIB: u64 = 1 << 20;
    let whole = cache.join("v1").join(TUTORIAL_ID).join("whole.data");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&whole)
        .unwrap();
    for at in [3 * MIB + 5000, 7 * MIB + 123] {
        use std::os::unix::fs::FileExt;
        let mut b = [0u8];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x01], at).unwrap();
    }
    drop(f);

    // Through the daemon, which checks every block (the kernel's passthrough reads the file as
    // it is, as it reads any local file).
    let mark = double.log().len();
    let second = Mount::start(
        &ws,
        &double,
        &[
            "--product",
            TUTORIAL_ID,
            "--cache-dir",
            cache.to_str().unwrap(),
            "--no-passthrough",
        ],
    );
    assert_eq!(
        copy_sha(&second, &ws, "b.zip"),
        want,
        "never a corrupt byte"
    );
    let log = double.log();
    let mut again: Vec<_> = zipper_requests(&log, mark)
        .into_iter()
        .filter(|e| e.method == "GET")
        .map(|e| e.range)
        .collect();
    again.sort();
    assert_eq!(
        again,
        vec![Some((3 * MIB, 4 * MIB - 1)), Some((7 * MIB, 8 * MIB - 1))],
        "exactly the two bad blocks are fetched again"
    );
    let text = second.log_text();
    assert!(text.contains("corrupt block"), "{text}");
    second.stop();
    // Whole again, right this time: a passthrough mount reads it exact with no request.
    let mark = double.log().len();
    let third = mount_cached(&ws, &double, &cache);
    assert_eq!(copy_sha(&third, &ws, "c.zip"), want);
    assert!(zipper_requests(&double.log(), mark).is_empty());
    third.stop();
}

#[test]
fn two_mounts_sharing_one_cache_dir_read_identical_bytes() {
    if !support::fuse_or_skip() {
        return;
    }
    let products = products(2, SIZE_MIB);
    let double = start_double(double_config(Some(&products)));
    let ws = Workspace::new();
    let cache = ws.path().join("cache");
    let want = file_sha256(&local_file(&products));

    let a = mount_cached(&ws, &double, &cache);
    let b = mount_cached(&ws, &double, &cache);
    let (pa, pb) = (
        a.path(&format!("{TUTORIAL_NAME}.zip")),
        b.path(&format!("{TUTORIAL_NAME}.zip")),
    );
    let (oa, ob) = (ws.path().join("a.zip"), ws.path().join("b.zip"));
    std::thread::scope(|s| {
        let ta = s.spawn(|| sh(Command::new("cp").arg(&pa).arg(&oa)));
        let tb = s.spawn(|| sh(Command::new("cp").arg(&pb).arg(&ob)));
        ta.join().unwrap();
        tb.join().unwrap();
    });
    assert_eq!(file_sha256(&oa), want);
    assert_eq!(file_sha256(&ob), want);
    a.stop();
    b.stop();

    // What they left is whole and valid: a third mount reads it with zero requests.
    let mark = double.log().len();
    let c = mount_cached(&ws, &double, &cache);
    assert_eq!(copy_sha(&c, &ws, "c.zip"), want);
    let log = double.log();
    assert!(zipper_requests(&log, mark).is_empty());
    assert!(!c.log_text().contains("corrupt block"));
    c.stop();
}

#[test]
fn a_cached_product_reads_with_the_services_down() {
    if !support::fuse_or_skip() {
        return;
    }
    let products = products(2, SIZE_MIB);
    let double = start_double(double_config(Some(&products)));
    let ws = Workspace::new();
    let cache = ws.path().join("cache");
    let want = file_sha256(&local_file(&products));

    let first = mount_cached(&ws, &double, &cache);
    assert_eq!(copy_sha(&first, &ws, "a.zip"), want);
    first.stop();

    // Catalogue, zipper and token endpoint all gone (the token is still in the token cache).
    double.stop();
    let second = mount_cached(&ws, &double, &cache);
    assert_eq!(copy_sha(&second, &ws, "b.zip"), want);
    sh(Command::new("unzip")
        .arg("-tq")
        .arg(second.path(&format!("{TUTORIAL_ID}.zip"))));
    let text = second.log_text();
    assert!(text.contains("answered from the disk cache"), "{text}");
    second.stop();
}

#[test]
fn a_cached_product_mounts_and_reads_offline_after_the_token_expired() {
    if !support::fuse_or_skip() {
        return;
    }
    let products = products(2, SIZE_MIB);
    let mut cfg = double_config(Some(&products));
    cfg.access_lifetime = std::time::Duration::from_secs(2);
    cfg.refresh_lifetime = std::time::Duration::from_secs(3);
    let double = start_double(cfg);
    let ws = Workspace::new();
    let cache = ws.path().join("cache");
    let want = file_sha256(&local_file(&products));

    let first = mount_cached(&ws, &double, &cache);
    assert_eq!(copy_sha(&first, &ws, "a.zip"), want);
    first.stop();
    // Every token in the token cache has expired, and nothing answers.
    std::thread::sleep(std::time::Duration::from_secs(4));
    double.stop();
    let second = mount_cached(&ws, &double, &cache);
    assert_eq!(copy_sha(&second, &ws, "b.zip"), want);
    let text = second.log_text();
    assert!(text.contains("mounting anyway"), "{text}");
    second.stop();
}
