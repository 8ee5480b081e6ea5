//! Real FUSE mounts of the real binary against the double, read by real tools: cp, rsync, cat,
//! unzip, Python's zipfile and GDAL. Every comparison is against the product file itself.

mod support;

use std::process::Command;
use std::time::Duration;

use support::*;

/// Size of the products the mount tests read: big enough that a copy spans many blocks,
/// read-ahead windows and token renewals.
const SIZE_MIB: u64 = 200;

fn name(products: &std::path::Path, i: usize) -> String {
    index(products)[i]["Name"].as_str().unwrap().to_string()
}

#[test]
fn tools_read_identical_bytes_through_the_mount() {
    if !support::fuse_or_skip() {
        return;
    }
    let products = products(2, SIZE_MIB);
    let double = start_double(double_config(Some(&products)));
    let ws = Workspace::new();
    // Without the /eodata tree (tests/eodata_tree.rs), the root is the product alone.
    let mount = Mount::start(&ws, &double, &["--product", TUTORIAL_ID, "--no-tree"]);
    let local = product_file(&products, 0);
    let want = file_sha256(&local);
    let file = mount.path(&format!("{TUTORIAL_NAME}.zip"));

    // Listed under its Name (beside its folder view); the UUID and the stem are the same file.
    let mut listing: Vec<String> = std::fs::read_dir(&mount.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    listing.sort();
    assert_eq!(
        listing,
        vec![TUTORIAL_NAME.to_string(), format!("{TUTORIAL_NAME}.zip")]
    );
    use std::os::unix::fs::MetadataExt;
    let by_name = std::fs::metadata(&file).unwrap();
    let by_id = std::fs::metadata(mount.path(&format!("{TUTORIAL_ID}.zip"))).unwrap();
    let stem = TUTORIAL_NAME.trim_end_matches(".SAFE");
    let by_stem = std::fs::metadata(mount.path(&format!("{stem}.zip"))).unwrap();
    assert_eq!(by_name.ino(), by_id.ino());
    assert_eq!(by_name.ino(), by_stem.ino());
    assert_eq!(by_name.len(), std::fs::metadata(&local).unwrap().len());
    assert_eq!(by_name.mode() & 0o777, 0o444);
    // Tools size their reads by st_blksize and statfs: one block of the cache.
    let block = eodata_fetch::cache::DEFAULT_BLOCK_SIZE;
    assert_eq!(by_name.blksize(), block);
    let statfs = sh(Command::new("stat")
        .args(["-f", "-c", "%s %S"])
        .arg(&mount.dir));
    assert_eq!(
        String::from_utf8_lossy(&statfs.stdout).trim(),
        format!("{block} {block}")
    );
    // Read-only: writes are refused.
    assert!(std::fs::OpenOptions::new().write(true).open(&file).is_err());
    assert!(std::fs::write(mount.path("new.zip"), b"x").is_err());

    // Unknown products are ENOENT.
    assert!(std::fs::metadata(
        mount.path("S2B_MSIL1C_20990101T000000_N0000_R000_T00AAA_20990101T000000.SAFE.zip")
    )
    .is_err());

    let out = ws.path().join("copy.zip");
    sh(Command::new("cp").arg(&file).arg(&out));
    assert_eq!(file_sha256(&out), want, "cp");

    let out2 = ws.path().join("rsync.zip");
    sh(Command::new("rsync").arg(&file).arg(&out2));
    assert_eq!(file_sha256(&out2), want, "rsync");

    let cat = sh(Command::new("sh")
        .arg("-c")
        .arg(format!("cat '{}' | sha256sum", file.display())));
    assert!(
        String::from_utf8_lossy(&cat.stdout).starts_with(&want),
        "cat"
    );

    sh(Command::new("unzip").arg("-tq").arg(&file));
    sh(Command::new("/usr/bin/python3").arg("-c").arg(format!(
        "import zipfile,sys; z=zipfile.ZipFile('{}'); bad=z.testzip(); sys.exit(1 if bad else 0)",
        file.display()
    )));

    let member = tif_member(&local);
    let through_mount = gdal_checksums(&file, &member);
    assert!(!through_mount.is_empty());
    assert_eq!(
        through_mount,
        gdal_checksums(&local, &member),
        "gdalinfo -checksum"
    );
    let stderr = mount.stop();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn expiring_tokens_during_a_slow_copy_cost_no_error_and_no_herd() {
    if !support::fuse_or_skip() {
        return;
    }
    let products = products(2, SIZE_MIB);
    // Many requests over the copy (ranged reads), so that tokens expire between them.
    let mut cfg = ranged_config(Some(&products));
    cfg.access_lifetime = Duration::from_secs(3);
    cfg.refresh_lifetime = Duration::from_secs(8);
    // 4 connections x 3.5 MB/s: the copy takes about 15 s, so the token expires ~5 times.
    cfg.faults.bandwidth_per_conn = Some(3_500_000);
    let double = start_double(cfg);
    let ws = Workspace::new();
    let mount = Mount::start(&ws, &double, &["--product", TUTORIAL_ID]);
    let out = ws.path().join("copy.zip");
    let start = std::time::Instant::now();
    sh(Command::new("cp")
        .arg(mount.path(&format!("{TUTORIAL_NAME}.zip")))
        .arg(&out));
    let took = start.elapsed();
    assert_eq!(file_sha256(&out), file_sha256(&product_file(&products, 0)));
    let log = double.log();
    let refreshes = log
        .iter()
        .filter(|e| e.service == "token" && e.grant_type.as_deref() == Some("refresh_token"))
        .count();
    eprintln!("copy took {took:?}; {refreshes} refreshes");
    assert!(took >= Duration::from_secs(10), "the copy spanned expiries");
    assert_eq!(password_logins(&log).len(), 1);
    assert!(reused_steps(&log).is_empty());
    let expiries = (took.as_secs_f64() / 3.0).ceil() as usize;
    assert!(
        refreshes >= 2 && refreshes <= expiries * 2 + 2,
        "{refreshes} refreshes for ~{expiries} expiries"
    );
    assert!(
        !mount.log_text().contains(" ERROR "),
        "{}",
        mount.log_text()
    );
}

#[test]
fn concurrent_readers_share_fetches_and_warm_rereads_are_free() {
    if !support::fuse_or_skip() {
        return;
    }
    let products = products(2, SIZE_MIB);
    let double = start_double(double_config(Some(&products)));
    let ws = Workspace::new();
    let mount = Mount::start(&ws, &double, &["--cache-size", "1024"]);
    let names = [name(&products, 0), name(&products, 1)];
    let wants = [
        file_sha256(&product_file(&products, 0)),
        file_sha256(&product_file(&products, 1)),
    ];
    std::thread::scope(|s| {
        for i in 0..8 {
            let (mount, names, wants) = (&mount, &names, &wants);
            s.spawn(move || {
                let f = mount.path(&format!("{}.zip", names[i % 2]));
                assert_eq!(file_sha256(&f), wants[i % 2], "reader {i}");
            });
        }
    });
    let log = double.log();
    let gets = zipper_gets(&log);
    // No byte of a product was served twice: the readers shared every block.
    for (i, n) in names.iter().enumerate() {
        let id = index(&products)[i]["Id"].as_str().unwrap().to_string();
        let served: u64 = gets
            .iter()
            .filter(|e| e.product.as_deref() == Some(id.as_str()))
            .map(|e| e.bytes_sent)
            .sum();
        let size = std::fs::metadata(product_file(&products, i)).unwrap().len();
        // Each byte once, plus: the 1-byte size probe, and the zip's tail (1 MiB) pinned on open,
        // which the sequential readers also read as blocks.
        assert!(
            served <= size + (1 << 20) + 1,
            "{n}: {served} bytes served for a {size}-byte product"
        );
    }
    // A warm re-read makes no request at all.
    let before = zipper_gets(&double.log()).len();
    assert_eq!(
        file_sha256(&mount.path(&format!("{}.zip", names[0]))),
        wants[0]
    );
    assert_eq!(zipper_gets(&double.log()).len(), before, "warm re-read");
}

#[test]
fn random_reads_fetch_only_the_blocks_they_touch() {
    if !support::fuse_or_skip() {
        return;
    }
    let products = products(2, SIZE_MIB);
    let double = start_double(ranged_config(Some(&products)));
    let ws = Workspace::new();
    let mount = Mount::start(&ws, &double, &["--product", TUTORIAL_ID]);
    let script = format!(
        r#"
import os, random, sys
random.seed(7)
m = open('{mounted}', 'rb', buffering=0)
l = open('{local}', 'rb')
size = os.fstat(l.fileno()).st_size
touched = set()
for _ in range(100):
    off = random.randrange(0, size - 65536)
    m.seek(off); l.seek(off)
    if m.read(65536) != l.read(65536):
        sys.exit('mismatch at %d' % off)
    for b in range(off >> 20, ((off + 65535) >> 20) + 1):
        touched.add(b)
print(len(touched))
"#,
        mounted = mount.path(&format!("{TUTORIAL_NAME}.zip")).display(),
        local = product_file(&products, 0).display()
    );
    let out = sh(Command::new("/usr/bin/python3").arg("-c").arg(script));
    let touched: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let served: u64 = zipper_gets(&double.log())
        .iter()
        .map(|e| e.bytes_sent)
        .sum();
    // Blocks touched x 1 MiB, plus the zip's tail fetched once on open (1 MiB), plus the kernel's
    // own read-ahead around each read (at most one more block per read).
    let limit = (touched * 2 + 1) << 20;
    eprintln!("{touched} blocks touched, {served} bytes served, limit {limit}");
    assert!(served <= limit, "{served} > {limit}");
}

#[test]
fn background_mount_returns_when_live_and_sigterm_unmounts() {
    if !support::fuse_or_skip() {
        return;
    }
    let products = products(2, SIZE_MIB);
    let double = start_double(double_config(Some(&products)));
    let ws = Workspace::new();
    let dir = ws.path().join("bg");
    std::fs::create_dir(&dir).unwrap();
    let log = ws.path().join("bg.log");
    let out = ws
        .command(&double)
        .arg(&dir)
        .arg("--log-file")
        .arg(&log)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_mounted(&dir), "mounted when the command returns");
    assert!(std::fs::metadata(dir.join(format!("{TUTORIAL_ID}.zip"))).is_ok());
    // Find the daemon and stop it with SIGTERM.
    let pids = sh(Command::new("pgrep").arg("-f").arg(dir.to_str().unwrap()));
    for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
        sh(Command::new("kill").arg("-TERM").arg(pid));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while is_mounted(&dir) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let still = is_mounted(&dir);
    if still {
        let _ = Command::new("umount").arg("-l").arg(&dir).status();
    }
    assert!(!still, "SIGTERM unmounts");
}

#[test]
fn wrong_credentials_fail_before_mounting() {
    if !support::fuse_or_skip() {
        return;
    }
    let double = start_double(double_config(None));
    let ws = Workspace::new();
    ws.write_secrets(&format!(
        "[login]\nuser = {USER}\npassword = nope\ntotp_secret = {TOTP_SECRET}\n"
    ));
    let dir = ws.path().join("m");
    std::fs::create_dir(&dir).unwrap();
    let out = ws.command(&double).arg(&dir).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused"), "{err}");
    assert!(!is_mounted(&dir));
    assert!(password_logins(&double.log()).len() <= 2);
}

#[test]
fn a_stale_mount_of_ours_is_cleaned_and_remounted() {
    if !support::fuse_or_skip() {
        return;
    }
    let products = products(2, SIZE_MIB);
    let double = start_double(double_config(Some(&products)));
    let ws = Workspace::new();
    let mut mount = Mount::start(&ws, &double, &[]);
    mount.child.kill().unwrap(); // SIGKILL: leaves "Transport endpoint is not connected"
    mount.child.wait().unwrap();
    let err = std::fs::read_dir(&mount.dir).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::ENOTCONN),
        "stale as expected"
    );
    let again = Mount::start_at(&ws, &double, &mount.dir.clone(), &[]);
    assert!(std::fs::metadata(again.path(&format!("{TUTORIAL_ID}.zip"))).is_ok());
    drop(again);
    drop(mount);
}

/// `--listed-only`: the listed product opens; an unlisted `<uuid>.zip` or `<Name>.zip` is
/// ENOENT and costs no request at all, neither to the catalogue nor to zipper.
#[test]
fn listed_only_makes_no_request_for_an_unlisted_name() {
    if !support::fuse_or_skip() {
        return;
    }
    let products = products(2, 48);
    let double = start_double(double_config(Some(&products)));
    let ws = Workspace::new();
    let m = Mount::start(&ws, &double, &["--listed-only", "--product", TUTORIAL_ID]);
    let other = index(&products)[1].clone();
    let requests = |d: &fake_creodias::Double| {
        d.log()
            .iter()
            .filter(|e| e.service == "zipper" || e.service == "catalogue")
            .count()
    };
    let before = requests(&double);
    for unlisted in [
        format!("{}.zip", other["Id"].as_str().unwrap()),
        format!("{}.zip", other["Name"].as_str().unwrap()),
    ] {
        let err = std::fs::metadata(m.path(&unlisted)).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{unlisted}");
    }
    assert_eq!(requests(&double), before, "no request for unlisted names");
    assert_eq!(
        file_sha256(&m.path(&format!("{TUTORIAL_NAME}.zip"))),
        file_sha256(&product_file(&products, 0))
    );
}

/// `-o nonempty` is consent to mount over files (they come back after the unmount).
#[test]
fn nonempty_mounts_over_files_with_consent() {
    if !support::fuse_or_skip() {
        return;
    }
    let products = products(1, 1);
    let double = start_double(double_config(Some(&products)));
    let ws = Workspace::new();
    let dir = ws.path().join("full");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("mine.txt"), b"x").unwrap();
    let m = Mount::start_at(&ws, &double, &dir, &["-o", "nonempty"]);
    assert!(std::fs::metadata(m.path(&format!("{TUTORIAL_ID}.zip"))).is_ok());
    assert!(!m.path("mine.txt").exists(), "hidden while mounted");
    m.stop();
    assert_eq!(std::fs::read(dir.join("mine.txt")).unwrap(), b"x");
}

/// A products file is looked up several names at a time, and a name the catalogue does not
/// know is a warning, not a failed mount. Concurrency is read from the double's log: with a
/// fixed latency L per answer, a catalogue request that ended at t was in flight over at least
/// [t - L, t].
#[test]
fn a_products_file_is_looked_up_in_parallel_and_unknown_names_warn() {
    if !support::fuse_or_skip() {
        return;
    }
    const LATENCY_MS: u64 = 300;
    let products = products(2, 48);
    let mut cfg = double_config(Some(&products));
    cfg.faults.latency = Duration::from_millis(LATENCY_MS);
    let double = start_double(cfg);
    let ws = Workspace::new();
    let names: Vec<String> = (0..2).map(|i| name(&products, i)).collect();
    let mut file = format!("# wanted\n{}\n{}\n", names[0], names[1]);
    for i in 0..6 {
        file.push_str(&format!(
            "S2B_MSIL1C_2099010{i}T000000_N0000_R000_T00AAA_20990101T000000.SAFE\n"
        ));
    }
    let list = ws.path().join("products.txt");
    std::fs::write(&list, file).unwrap();
    let m = Mount::start(&ws, &double, &["--products-file", list.to_str().unwrap()]);
    // Each product shows as <Name>.zip and its folder view <Name>/.
    let listed: Vec<String> = std::fs::read_dir(&m.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".zip"))
        .collect();
    for n in &names {
        assert!(listed.contains(&format!("{n}.zip")), "{listed:?}");
    }
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(
        m.log_text()
            .contains("6 of the products file's names not found"),
        "{}",
        m.log_text()
    );
    let spans: Vec<(u64, u64)> = double
        .log()
        .iter()
        .filter(|e| e.service == "catalogue")
        .map(|e| (e.t_ms.saturating_sub(LATENCY_MS), e.t_ms))
        .collect();
    let most_at_once = spans
        .iter()
        .map(|&(_, end)| spans.iter().filter(|&&(a, b)| a < end && end <= b).count())
        .max()
        .unwrap_or(0);
    assert!(
        most_at_once >= 4,
        "at least 4 lookups at once, saw {most_at_once}: {spans:?}"
    );
}
