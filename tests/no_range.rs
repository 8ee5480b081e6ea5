//! Real mounts against a double that ignores Range (200 and the whole body to every ranged GET,
//! as some zippers are reported to do: `docs/protocol.md`, "Download"): the tools must still
//! read exact bytes, through one stream per product from byte 0, spooled (`eodata_fetch::spool`).

mod support;

use std::path::Path;
use std::process::Command;

use fake_creodias::LogEntry;
use support::*;

/// Small products keep the test fast; 48 MiB is still many blocks and many chunks.
const SIZE_MIB: u64 = 48;

fn local_file(products: &Path) -> std::path::PathBuf {
    products.join(index(products)[0]["file"].as_str().unwrap())
}

/// Zipper GETs that delivered the whole product.
fn full_gets(log: &[LogEntry], size: u64) -> usize {
    zipper_gets(log)
        .iter()
        .filter(|e| e.bytes_sent >= size)
        .count()
}

#[test]
fn tools_read_exact_bytes_with_one_full_get_when_the_server_ignores_range() {
    if !support::fuse_or_skip() {
        return;
    }
    let products = products(2, SIZE_MIB);
    let mut cfg = double_config(Some(&products));
    // Slow enough (about 3 s for the product) that the tools below all read while the
    // stream runs: the ones ahead of it must wait for it, not start their own.
    cfg.faults.bandwidth_per_conn = Some(16 << 20);
    let double = start_double(cfg);
    let ws = Workspace::new();
    let mount = Mount::start(&ws, &double, &["--product", TUTORIAL_ID]);
    let local = local_file(&products);
    let size = std::fs::metadata(&local).unwrap().len();
    let file = mount.path(&format!("{TUTORIAL_NAME}.zip"));
    assert_eq!(std::fs::metadata(&file).unwrap().len(), size);

    // At once: GDAL reads the zip's directory at the end (waits for the whole stream), cp
    // reads from the start (follows the stream, its read-ahead ahead of it), unzip -t both.
    let member = tif_member(&local);
    let copy = ws.path().join("copy.zip");
    let through_mount = std::thread::scope(|s| {
        let gdal = s.spawn(|| gdal_checksums(&file, &member));
        let cp = s.spawn(|| sh(Command::new("cp").arg(&file).arg(&copy)));
        let unzip = s.spawn(|| sh(Command::new("unzip").arg("-tq").arg(&file)));
        cp.join().unwrap();
        unzip.join().unwrap();
        gdal.join().unwrap()
    });
    assert!(!through_mount.is_empty());
    assert_eq!(
        through_mount,
        gdal_checksums(&local, &member),
        "gdalinfo -checksum"
    );
    assert_eq!(file_sha256(&copy), file_sha256(&local), "cp");

    let log = double.log();
    let gets = zipper_gets(&log);
    let mine: Vec<_> = gets
        .iter()
        .filter(|e| e.product.as_deref() == Some(TUTORIAL_ID))
        .collect();
    let wire: u64 = mine.iter().map(|e| e.bytes_sent).sum();
    eprintln!(
        "no-Range: {} GETs for the product, {} full, {wire} bytes sent for a {size}-byte product",
        mine.len(),
        full_gets(&log, size)
    );
    for e in &mine {
        eprintln!(
            "  GET {:?} status {} outcome {} sent {}",
            e.range, e.status, e.outcome, e.bytes_sent
        );
    }
    assert_eq!(full_gets(&log, size), 1, "exactly one full GET");
    // Besides it, at most the 0-0 probe that learnt the server ignores Range (aborted).
    assert!(mine.len() <= 2, "{} GETs", mine.len());
    let stderr = mount.stop();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn cut_streams_restart_from_zero_and_bytes_stay_exact() {
    if !support::fuse_or_skip() {
        return;
    }
    let products = products(2, SIZE_MIB);
    let mut cfg = double_config(Some(&products));
    cfg.faults.cut_rate = 0.5;
    let double = start_double(cfg);
    let ws = Workspace::new();
    let mount = Mount::start(&ws, &double, &["--product", TUTORIAL_ID]);
    let local = local_file(&products);
    let file = mount.path(&format!("{TUTORIAL_NAME}.zip"));
    let copy = ws.path().join("copy.zip");
    sh(Command::new("cp").arg(&file).arg(&copy));
    assert_eq!(
        file_sha256(&copy),
        file_sha256(&local),
        "cp over cut streams"
    );
    sh(Command::new("unzip").arg("-tq").arg(&file));
    let log = double.log();
    let cuts = zipper_gets(&log)
        .iter()
        .filter(|e| e.outcome == "cut")
        .count();
    eprintln!("cut streams: {cuts} cuts, {} GETs", zipper_gets(&log).len());
    assert!(cuts >= 1, "the test must see a cut stream");
    drop(mount);
}

#[test]
fn one_stream_fills_the_disk_cache_so_a_remount_reads_with_zero_requests() {
    if !support::fuse_or_skip() {
        return;
    }
    let products = products(2, SIZE_MIB);
    let cfg = double_config(Some(&products));
    let double = start_double(cfg);
    let ws = Workspace::new();
    let cache = ws.path().join("cache");
    let args = [
        "--product",
        TUTORIAL_ID,
        "--cache-dir",
        cache.to_str().unwrap(),
    ];
    let local = local_file(&products);
    let size = std::fs::metadata(&local).unwrap().len();

    // Only the last bytes are read: they wait for the whole stream, which passes every block
    // to the disk cache on its way.
    let first = Mount::start(&ws, &double, &args);
    let tail = sh(Command::new("tail")
        .arg("-c")
        .arg("100")
        .arg(first.path(&format!("{TUTORIAL_NAME}.zip"))));
    let bytes = std::fs::read(&local).unwrap();
    assert_eq!(tail.stdout, &bytes[bytes.len() - 100..]);
    first.stop();
    assert_eq!(full_gets(&double.log(), size), 1);

    let mark = double.log().len();
    let second = Mount::start(&ws, &double, &args);
    let copy = ws.path().join("copy.zip");
    sh(Command::new("cp")
        .arg(second.path(&format!("{TUTORIAL_NAME}.zip")))
        .arg(&copy));
    assert_eq!(file_sha256(&copy), file_sha256(&local));
    let log = double.log();
    let again: Vec<_> = log[mark..]
        .iter()
        .filter(|e| e.service == "zipper")
        .collect();
    assert!(again.is_empty(), "remount made requests: {again:?}");
    // No spool file is left behind.
    let spool = cache.join("spool");
    let left = std::fs::read_dir(&spool).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "files left in {}", spool.display());
    second.stop();
}

#[test]
fn download_streams_once_and_resumes_a_part_from_a_server_that_ignores_range() {
    let products = products(2, SIZE_MIB);
    let cfg = double_config(Some(&products));
    let double = start_double(cfg);
    let ws = Workspace::new();
    let local = local_file(&products);
    let size = std::fs::metadata(&local).unwrap().len();
    // A .part from an earlier run holding the first 5 MiB: the stream skips them.
    std::fs::create_dir_all(ws.path().join("out")).unwrap();
    let bytes = std::fs::read(&local).unwrap();
    std::fs::write(
        ws.path()
            .join("out")
            .join(format!("{TUTORIAL_NAME}.zip.part")),
        &bytes[..5 << 20],
    )
    .unwrap();
    let out = ws.run(&double, &["download", TUTORIAL_ID, "-o", "out"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let saved = ws.path().join("out").join(format!("{TUTORIAL_NAME}.zip"));
    assert_eq!(file_sha256(&saved), file_sha256(&local));
    let log = double.log();
    assert_eq!(full_gets(&log, size), 1, "one stream");
}
