//! The world as the real zipper most likely is (docs/protocol.md): it ignores Range and sends
//! the whole product, and a product's bytes may differ between two answers. With default flags
//! (the disk cache on, under `$XDG_CACHE_HOME`, here the workspace's HOME):
//! - a fresh product is fetched once, whatever reads it (GDAL's member open, `unzip -l`);
//! - a remount reads it with no download, and two mounts sharing the cache fetch it once
//!   between them (one streams, the other reads its blocks as they land);
//! - an answer with other bytes is never spliced onto what was received: what is served is
//!   exact, or the read fails.

mod support;

use std::path::Path;
use std::process::Command;

use fake_creodias::{Double, LogEntry};
use support::*;

const SIZE_MIB: u64 = 48;

/// Body bytes the double's zipper sent after log entry `mark`.
fn bytes_sent(log: &[LogEntry], mark: usize) -> u64 {
    log[mark..]
        .iter()
        .filter(|e| e.service == "zipper")
        .map(|e| e.bytes_sent)
        .sum()
}

fn zipper_requests(log: &[LogEntry], mark: usize) -> usize {
    log[mark..].iter().filter(|e| e.service == "zipper").count()
}

fn zip_of(m: &Mount) -> std::path::PathBuf {
    m.path(&format!("{TUTORIAL_NAME}.zip"))
}

/// No-Range double (its default) with a cap so that a product takes seconds to stream.
fn slow_double(products: &Path) -> Double {
    let mut cfg = double_config(Some(products));
    assert!(!cfg.faults.range, "the double ignores Range by default");
    cfg.faults.bandwidth_per_conn = Some(24 << 20);
    start_double(cfg)
}

#[test]
fn a_fresh_product_is_fetched_once_and_a_remount_fetches_nothing() {
    if !support::fuse_or_skip() {
        return;
    }
    let products = products(2, SIZE_MIB);
    let local = product_file(&products, 0);
    let size = std::fs::metadata(&local).unwrap().len();
    let double = slow_double(&products);
    let ws = Workspace::new();

    let m = Mount::start(&ws, &double, &["--product", TUTORIAL_ID]);
    let member = tif_member(&local);
    assert_eq!(
        gdal_checksums(&zip_of(&m), &member),
        gdal_checksums(&local, &member)
    );
    let listing = sh(Command::new("unzip").arg("-l").arg(zip_of(&m)));
    assert!(String::from_utf8_lossy(&listing.stdout).contains(&member));
    let sent = bytes_sent(&double.log(), 0);
    eprintln!("first mount: {sent} bytes sent for a product of {size}");
    assert!(sent >= size, "the product was read whole ({sent} < {size})");
    assert!(
        sent <= size + (1 << 20),
        "fetched {sent} bytes for a product of {size}: more than once"
    );
    m.stop();
    assert!(
        ws.path().join(".cache/eodata-mount").is_dir(),
        "the default disk cache is under $HOME/.cache"
    );

    let mark = double.log().len();
    let again = Mount::start(&ws, &double, &["--product", TUTORIAL_ID]);
    let copy = ws.path().join("copy.zip");
    sh(Command::new("cp").arg(zip_of(&again)).arg(&copy));
    assert_eq!(file_sha256(&copy), file_sha256(&local));
    assert_eq!(
        gdal_checksums(&zip_of(&again), &member),
        gdal_checksums(&local, &member)
    );
    let log = double.log();
    assert_eq!(
        zipper_requests(&log, mark),
        0,
        "a remount downloaded again: {:?}",
        &log[mark..]
    );
    again.stop();
}

#[test]
fn two_mounts_sharing_the_default_cache_fetch_a_product_once_between_them() {
    if !support::fuse_or_skip() {
        return;
    }
    let products = products(2, SIZE_MIB);
    let local = product_file(&products, 0);
    let size = std::fs::metadata(&local).unwrap().len();
    let want = file_sha256(&local);
    let double = slow_double(&products);
    let ws = Workspace::new();
    let a = Mount::start(&ws, &double, &["--product", TUTORIAL_ID]);
    let b = Mount::start(&ws, &double, &["--product", TUTORIAL_ID]);

    // Both read at once while the one stream runs (about 2 s at the double's cap).
    let (ca, cb) = (ws.path().join("a.zip"), ws.path().join("b.zip"));
    std::thread::scope(|s| {
        let ta = s.spawn(|| sh(Command::new("cp").arg(zip_of(&a)).arg(&ca)));
        std::thread::sleep(std::time::Duration::from_millis(300));
        let tb = s.spawn(|| sh(Command::new("cp").arg(zip_of(&b)).arg(&cb)));
        ta.join().unwrap();
        tb.join().unwrap();
    });
    assert_eq!(file_sha256(&ca), want);
    assert_eq!(file_sha256(&cb), want);
    let sent = bytes_sent(&double.log(), 0);
    eprintln!("two mounts: {sent} bytes sent for a product of {size}");
    assert!(
        sent <= size + (1 << 20),
        "two mounts fetched {sent} bytes for a product of {size}: a second stream"
    );
    let logs = format!("{}\n{}", a.log_text(), b.log_text());
    assert!(
        logs.contains("another process on this machine is streaming this product"),
        "one mount followed the other's stream"
    );
    a.stop();
    b.stop();
}

#[test]
fn an_answer_with_reordered_members_is_never_spliced() {
    if !support::fuse_or_skip() {
        return;
    }
    let products = products(2, SIZE_MIB);
    let local = product_file(&products, 0);
    let want = file_sha256(&local);
    let mut cfg = double_config(Some(&products));
    // Every other answer has the members in reverse order; bodies are cut half-way, so the
    // stream must splice a second answer onto the first.
    cfg.faults.reorder_members = true;
    cfg.faults.cut_next = 1;
    let double = start_double(cfg);
    let ws = Workspace::new();
    let m = Mount::start(
        &ws,
        &double,
        &["--product", TUTORIAL_ID, "--read-timeout", "20"],
    );
    let copy = ws.path().join("copy.zip");
    let ok = Command::new("cp")
        .arg(zip_of(&m))
        .arg(&copy)
        .status()
        .unwrap()
        .success();
    let log = double.log();
    let reordered = log.iter().filter(|e| e.outcome == "reordered").count();
    let cuts = log.iter().filter(|e| e.outcome == "cut").count();
    eprintln!("cp ok: {ok}; answers reordered: {reordered}; cut: {cuts}");
    assert!(
        cuts > 0,
        "the double cut an answer, so the stream had to splice"
    );
    if ok {
        assert_eq!(file_sha256(&copy), want, "a copy that succeeds is exact");
    }
    let text = m.log_text();
    assert!(
        text.contains("differs from the bytes already received"),
        "the mismatch was seen and logged:\n{text}"
    );
    m.stop();
}

#[test]
fn cache_list_shows_a_product_and_cache_clear_drops_it_while_mounted() {
    if !support::fuse_or_skip() {
        return;
    }
    let products = products(2, SIZE_MIB);
    let local = product_file(&products, 0);
    let size = std::fs::metadata(&local).unwrap().len();
    let double = start_double(double_config(Some(&products)));
    let ws = Workspace::new();
    let m = Mount::start(&ws, &double, &["--product", TUTORIAL_ID]);
    let copy = ws.path().join("copy.zip");
    sh(Command::new("cp").arg(zip_of(&m)).arg(&copy));

    let list = sh(ws.command(&double).args(["cache", "list"]));
    let text = String::from_utf8_lossy(&list.stdout).into_owned();
    eprintln!("{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with(TUTORIAL_ID))
        .expect("the product is listed");
    assert!(
        line.contains("whole") && line.contains(TUTORIAL_NAME),
        "{line}"
    );
    assert!(line.contains(&format!(
        "{:.1} of {:.1} MiB",
        size as f64 / 1048576.0,
        size as f64 / 1048576.0
    )));

    sh(ws.command(&double).args(["cache", "clear", TUTORIAL_NAME]));
    let list = sh(ws.command(&double).args(["cache", "list"]));
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(TUTORIAL_ID),
        "cleared"
    );
    let bad = ws
        .command(&double)
        .args(["cache", "clear", "S2B_NOT_THERE"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert_eq!(String::from_utf8_lossy(&bad.stderr).lines().count(), 1);
    m.stop();

    // The next mount downloads it again, exactly.
    let mark = double.log().len();
    let again = Mount::start(&ws, &double, &["--product", TUTORIAL_ID]);
    let copy2 = ws.path().join("copy2.zip");
    sh(Command::new("cp").arg(zip_of(&again)).arg(&copy2));
    assert_eq!(file_sha256(&copy2), file_sha256(&local));
    assert!(
        zipper_requests(&double.log(), mark) > 0,
        "downloaded again after clear"
    );
    again.stop();
}

#[test]
fn a_product_streamed_whole_is_checked_against_the_catalogue_md5_before_its_end_is_served() {
    if !support::fuse_or_skip() {
        return;
    }
    let products = products(2, SIZE_MIB);
    let local = product_file(&products, 0);
    let mut cfg = double_config(Some(&products));
    // One byte of every body altered: the stream completes, its MD5 does not match.
    cfg.faults.tamper = true;
    let double = start_double(cfg);
    let ws = Workspace::new();
    let m = Mount::start(&ws, &double, &["--product", TUTORIAL_ID]);
    let copy = ws.path().join("copy.zip");
    let cp = Command::new("cp")
        .arg(zip_of(&m))
        .arg(&copy)
        .output()
        .unwrap();
    assert!(
        !cp.status.success(),
        "a tampered product does not read to its end"
    );
    let text = m.log_text();
    assert!(
        text.contains("the catalogue says"),
        "the mismatch is logged:\n{text}"
    );
    let list = sh(ws.command(&double).args(["cache", "list"]));
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains("whole"),
        "a product that failed its checksum is not kept whole"
    );

    // This mount may still hold the wrong build's pages in memory: it refuses the product
    // rather than serve a mix, and says how to read it afresh.
    let again = Command::new("cp")
        .arg(zip_of(&m))
        .arg(&copy)
        .output()
        .unwrap();
    assert!(
        !again.status.success(),
        "no second read of a product that changed"
    );
    m.stop();

    // Once the service sends the right bytes, a new mount reads them exactly.
    let mut faults = double.faults();
    faults.tamper = false;
    double.set_faults(faults);
    let m = Mount::start(&ws, &double, &["--product", TUTORIAL_ID]);
    sh(Command::new("cp").arg(zip_of(&m)).arg(&copy));
    assert_eq!(file_sha256(&copy), file_sha256(&local));
    m.stop();
}
