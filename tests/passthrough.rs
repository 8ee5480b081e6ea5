//! FUSE passthrough through real mounts (as root, on this Linux 6.9+ kernel): a product whole in
//! the disk cache is read by the kernel straight from its cache file (the status file counts
//! the opens, and the daemon sees no read at all), with the same bytes as through the daemon
//! (`--no-passthrough`); a product evicted from the cache while open this way reads on to its
//! end. The fallback for a mount without the privilege is tested in tests/lifecycle.rs.

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

/// 48 blocks: large enough that a kernel read-ahead cannot hide a missing passthrough.
const SIZE_MIB: u64 = 48;

fn zip_name() -> String {
    format!("{TUTORIAL_NAME}.zip")
}

fn mount_cached(
    ws: &Workspace,
    double: &fake_creodias::Double,
    cache: &Path,
    extra: &[&str],
) -> Mount {
    let mut args = vec![
        "--product",
        TUTORIAL_ID,
        "--cache-dir",
        cache.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Mount::start(ws, double, &args)
}

/// `key: value` of the mount's status file.
fn status(m: &Mount, key: &str) -> String {
    let text = std::fs::read_to_string(m.path(".eodata-status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}: ")).map(String::from))
        .unwrap_or_else(|| panic!("no {key} in\n{text}"))
}

/// A product streamed once through a first mount, so that the disk cache holds it whole
/// (the mount finishes assembling it before it exits).
fn cached_product() -> (PathBuf, fake_creodias::Double, Workspace, PathBuf, String) {
    let products = products(2, SIZE_MIB);
    let double = start_double(double_config(Some(&products)));
    let ws = Workspace::new();
    let cache = ws.path().join("cache");
    let want = file_sha256(&product_file(&products, 0));
    let first = mount_cached(&ws, &double, &cache, &[]);
    let out = ws.path().join("first.zip");
    sh(Command::new("cp").arg(first.path(&zip_name())).arg(&out));
    assert_eq!(file_sha256(&out), want);
    first.stop();
    let whole = cache.join("v1").join(TUTORIAL_ID).join("whole.data");
    assert!(whole.is_file(), "the product is one file in the cache");
    (products, double, ws, cache, want)
}

#[test]
fn a_product_whole_in_the_disk_cache_is_read_by_the_kernel_from_its_cache_file() {
    if !support::fuse_or_skip() {
        return;
    }
    let (_products, double, ws, cache, want) = cached_product();
    let mark = double.log().len();
    let m = mount_cached(&ws, &double, &cache, &[]);
    assert_eq!(status(&m, "passthrough"), "on");
    let out = ws.path().join("second.zip");
    sh(Command::new("cp").arg(m.path(&zip_name())).arg(&out));
    assert_eq!(file_sha256(&out), want, "exact bytes by passthrough");
    sh(Command::new("unzip").arg("-tq").arg(m.path(&zip_name())));
    let opens: u64 = status(&m, "fs.passthrough_opens").parse().unwrap();
    assert!(opens >= 2, "cp and unzip opened it by passthrough: {opens}");
    // Every read went to the kernel: the daemon served none.
    assert_eq!(status(&m, "fs.reads"), "0");
    assert!(zipper_gets(&double.log()[mark..]).is_empty());
    m.stop();
}

#[test]
fn without_passthrough_the_same_bytes_come_through_the_daemon() {
    if !support::fuse_or_skip() {
        return;
    }
    let (_products, double, ws, cache, want) = cached_product();
    let m = mount_cached(&ws, &double, &cache, &["--no-passthrough"]);
    assert_eq!(status(&m, "passthrough"), "off (--no-passthrough)");
    let out = ws.path().join("second.zip");
    sh(Command::new("cp").arg(m.path(&zip_name())).arg(&out));
    assert_eq!(file_sha256(&out), want);
    assert_eq!(status(&m, "fs.passthrough_opens"), "0");
    let reads: u64 = status(&m, "fs.reads").parse().unwrap();
    assert!(reads > 0, "read through the daemon");
    m.stop();
}

#[test]
fn a_product_dropped_from_the_cache_while_open_by_passthrough_reads_on_to_its_end() {
    if !support::fuse_or_skip() {
        return;
    }
    let (_products, double, ws, cache, want) = cached_product();
    let m = mount_cached(&ws, &double, &cache, &[]);
    let mut f = std::fs::File::open(m.path(&zip_name())).unwrap();
    let mut head = vec![0u8; ((SIZE_MIB << 20) / 3) as usize];
    f.read_exact(&mut head).unwrap();
    assert_eq!(status(&m, "fs.passthrough_opens"), "1");
    // Dropped from the cache (`cache clear`; eviction unlinks the same way, see the disk
    // cache's own tests) while the file is open.
    let out = ws.run(
        &double,
        &[
            "cache",
            "clear",
            TUTORIAL_ID,
            "--cache-dir",
            cache.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(!cache
        .join("v1")
        .join(TUTORIAL_ID)
        .join("whole.data")
        .exists());
    let mut rest = Vec::new();
    f.read_to_end(&mut rest).unwrap();
    head.extend_from_slice(&rest);
    let got = sha256_hex(&head);
    assert_eq!(got, want, "the open file reads on, exact");
    drop(f);
    // The next open finds nothing whole on disk and reads through the daemon, still exact.
    let out = ws.path().join("again.zip");
    sh(Command::new("cp").arg(m.path(&zip_name())).arg(&out));
    assert_eq!(file_sha256(&out), want);
    assert_eq!(status(&m, "fs.passthrough_opens"), "1");
    m.stop();
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The kernel's one mode per inode: a file opened through the daemon before the product was
/// whole keeps its inode in that mode, so a second open while it is open is read through the
/// daemon too (the kernel refuses to mix); once both are closed the next opens pass through and
/// share one registration; open and release racing in quick cycles stay exact.
#[test]
fn opens_of_one_file_keep_the_kernels_one_mode_per_inode() {
    if !support::fuse_or_skip() {
        return;
    }
    let products = products(2, SIZE_MIB);
    let double = start_double(double_config(Some(&products)));
    let ws = Workspace::new();
    let cache = ws.path().join("cache");
    let want = file_sha256(&product_file(&products, 0));
    let m = mount_cached(&ws, &double, &cache, &[]);
    let read_all = |f: &mut std::fs::File| {
        let mut all = Vec::new();
        f.read_to_end(&mut all).unwrap();
        all
    };
    let mut a = std::fs::File::open(m.path(&zip_name())).unwrap();
    let first = read_all(&mut a);
    assert_eq!(sha256_hex(&first), want);
    let whole = cache.join("v1").join(TUTORIAL_ID).join("whole.data");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !whole.is_file() {
        assert!(std::time::Instant::now() < deadline, "never whole");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Whole now, with `a` still open through the daemon: `b` goes the same way.
    let mut b = std::fs::File::open(m.path(&zip_name())).unwrap();
    assert_eq!(sha256_hex(&read_all(&mut b)), want);
    assert_eq!(status(&m, "fs.passthrough_opens"), "0");
    drop((a, b));
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut c = std::fs::File::open(m.path(&zip_name())).unwrap();
    let mut d = std::fs::File::open(m.path(&zip_name())).unwrap();
    assert_eq!(sha256_hex(&read_all(&mut c)), want);
    assert_eq!(sha256_hex(&read_all(&mut d)), want);
    assert_eq!(status(&m, "fs.passthrough_opens"), "2");
    drop(c);
    for keep_d in [true, false] {
        if !keep_d {
            drop(std::mem::replace(
                &mut d,
                std::fs::File::open("/dev/null").unwrap(),
            ));
        }
        for _ in 0..50 {
            let mut e = std::fs::File::open(m.path(&zip_name())).unwrap();
            let mut buf = vec![0u8; 4096];
            e.read_exact(&mut buf).unwrap();
            assert_eq!(&buf[..], &first[..4096]);
        }
    }
    m.stop();
}
