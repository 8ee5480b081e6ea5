//! The fault suite: real mounts of the real binary against the double with its fault switches
//! on. A copy through the mount must give the product's exact bytes and no error under every
//! fault the service can recover from, and an error (never a hang, never a wrong byte) under
//! the ones it cannot. Refused credentials must not turn into a loop of logins.
//!
//! Every read is compared with the product file at the same offset as it arrives, so a wrong
//! byte is caught even when a later read fails.
//!
//! Most of these faults strike per request, so they run against a double that honours Range
//! (many requests per copy); against a server that ignores Range a product is one stream, and
//! its faults (cuts, other bytes, checksums) are in tests/no_range.rs and tests/real_zipper.rs.

mod support;

use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fake_creodias::{Double, Faults, User};
use support::*;

/// The acceptance size for copies that must survive a fault.
const BIG_MIB: u64 = 200;

/// What one copy through the mount saw.
#[derive(Debug)]
struct Copy {
    /// Bytes read (and found identical) before the end or the error.
    bytes: u64,
    /// Offset of the first read whose bytes differ from the product file.
    mismatch: Option<u64>,
    /// The error that ended the copy, if any.
    error: Option<std::io::Error>,
    took: Duration,
}

impl Copy {
    fn errno(&self) -> Option<i32> {
        self.error.as_ref().and_then(|e| e.raw_os_error())
    }

    /// The whole product, identical, no error.
    fn assert_complete(&self, size: u64, what: &str) {
        assert_eq!(self.mismatch, None, "{what}: wrong bytes");
        assert!(
            self.error.is_none(),
            "{what}: {:?} after {} bytes",
            self.error,
            self.bytes
        );
        assert_eq!(self.bytes, size, "{what}: short copy");
    }
}

/// Reads `mounted` to its end in 1 MiB reads (the kernel splits them into its own), comparing
/// each with `local`. Panics if the copy has not ended within `limit`: a hang is a failure.
fn copy_compare(mounted: &Path, local: &Path, limit: Duration) -> Copy {
    let (tx, rx) = mpsc::channel();
    let (mounted, local): (PathBuf, PathBuf) = (mounted.into(), local.into());
    std::thread::spawn(move || {
        let _ = tx.send(copy_inner(&mounted, &local));
    });
    match rx.recv_timeout(limit) {
        Ok(c) => c,
        // The mount is unmounted by the caller's Mount drop, which ends the blocked read.
        Err(_) => panic!("the copy did not end within {limit:?}: a hang"),
    }
}

fn copy_inner(mounted: &Path, local: &Path) -> Copy {
    let start = Instant::now();
    let mut want = File::open(local).expect("product file");
    let mut got = match File::open(mounted) {
        Ok(f) => f,
        Err(e) => {
            return Copy {
                bytes: 0,
                mismatch: None,
                error: Some(e),
                took: start.elapsed(),
            }
        }
    };
    let (mut a, mut b) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut off = 0u64;
    let mut mismatch = None;
    let error = loop {
        match got.read(&mut a) {
            Ok(0) => break None,
            Ok(n) => {
                want.seek(SeekFrom::Start(off)).unwrap();
                want.read_exact(&mut b[..n]).unwrap_or_else(|_| {
                    mismatch.get_or_insert(off);
                });
                if a[..n] != b[..n] {
                    mismatch.get_or_insert(off);
                }
                off += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => break Some(e),
        }
    };
    Copy {
        bytes: off,
        mismatch,
        error,
        took: start.elapsed(),
    }
}

fn product(products: &Path, i: usize) -> (String, PathBuf, u64) {
    let entry = &index(products)[i];
    let file = products.join(entry["file"].as_str().unwrap());
    let size = std::fs::metadata(&file).unwrap().len();
    (entry["Name"].as_str().unwrap().to_string(), file, size)
}

fn outcomes(double: &Double, outcome: &str) -> usize {
    double.log().iter().filter(|e| e.outcome == outcome).count()
}

/// Mounts the first product of `products` under `faults`, copies it, and checks the copy.
fn copy_under(
    products: &Path,
    cfg: fake_creodias::Config,
    extra: &[&str],
    during: impl FnOnce(&Double) + Send,
) -> (Double, Copy, String) {
    let double = start_double(cfg);
    let ws = Workspace::new();
    let mount = Mount::start(&ws, &double, extra);
    let (name, local, size) = product(products, 0);
    let copy = std::thread::scope(|s| {
        let c = s.spawn(|| {
            copy_compare(
                &mount.path(&format!("{name}.zip")),
                &local,
                Duration::from_secs(240),
            )
        });
        during(&double);
        c.join().unwrap()
    });
    eprintln!("{copy:?}");
    copy.assert_complete(size, "copy");
    let log = mount.log_text();
    let stderr = mount.stop();
    assert!(!stderr.contains("panicked"), "{stderr}");
    let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert!(errors.is_empty(), "no read failed:\n{}", errors.join("\n"));
    (double, copy, log)
}

#[test]
fn refused_refreshes_and_40_s_tokens_renew_by_password_with_fresh_steps() {
    if !support::fuse_or_skip() {
        return;
    }
    let products = products(2, BIG_MIB);
    let mut cfg = ranged_config(Some(&products));
    cfg.access_lifetime = Duration::from_secs(40);
    cfg.faults.refuse_refresh = true;
    // 4 x 1.5 MB/s: about 35 s, past the renewal point of a 40 s token (27 s) at least once.
    cfg.faults.bandwidth_per_conn = Some(1_500_000);
    let (double, copy, _) = copy_under(&products, cfg, &[], |_| {});
    let log = double.log();
    assert!(
        copy.took > Duration::from_secs(27),
        "the copy spanned a renewal"
    );
    assert!(password_logins(&log).len() >= 2, "renewed by password");
    assert!(reused_steps(&log).is_empty(), "no TOTP step used twice");
    let token: Vec<&str> = log
        .iter()
        .filter(|e| e.service == "token" && e.method == "POST")
        .map(|e| e.outcome.as_str())
        .collect();
    assert!(
        token.iter().all(|o| *o == "ok" || *o == "refresh_refused"),
        "{token:?}"
    );
}

#[test]
fn tokens_revoked_mid_copy_are_renewed() {
    if !support::fuse_or_skip() {
        return;
    }
    let products = products(2, BIG_MIB);
    let mut cfg = ranged_config(Some(&products));
    cfg.faults.bandwidth_per_conn = Some(6_000_000);
    let (double, _, _) = copy_under(&products, cfg, &[], |d| {
        std::thread::sleep(Duration::from_secs(3));
        d.revoke_tokens();
    });
    assert!(
        outcomes(&double, "revoked_token") >= 1,
        "the revocation was met"
    );
    // Renewed by refresh: no second password login.
    assert_eq!(password_logins(&double.log()).len(), 1);
}

#[test]
fn one_in_ten_requests_failing_with_503_costs_nothing() {
    if !support::fuse_or_skip() {
        return;
    }
    let products = products(2, BIG_MIB);
    let mut cfg = ranged_config(Some(&products));
    cfg.faults.fail_rate = 0.1;
    let (double, _, _) = copy_under(&products, cfg, &[], |_| {});
    assert!(outcomes(&double, "fault_503") >= 1);
}

#[test]
fn one_in_ten_bodies_cut_is_resumed() {
    if !support::fuse_or_skip() {
        return;
    }
    let products = products(2, BIG_MIB);
    let mut cfg = ranged_config(Some(&products));
    cfg.faults.cut_rate = 0.1;
    let (double, _, _) = copy_under(&products, cfg, &[], |_| {});
    assert!(outcomes(&double, "cut") >= 1);
}

#[test]
fn bursts_of_429_with_retry_after_are_waited_out() {
    if !support::fuse_or_skip() {
        return;
    }
    let products = products(2, BIG_MIB);
    let mut cfg = ranged_config(Some(&products));
    cfg.faults.bandwidth_per_conn = Some(16_000_000);
    cfg.faults.rate_limit_burst = 10;
    cfg.faults.retry_after_secs = Some(1);
    let (double, _, _) = copy_under(&products, cfg, &[], |d| {
        // A second burst while the copy runs.
        std::thread::sleep(Duration::from_millis(1500));
        let f = d.faults();
        d.set_faults(Faults {
            rate_limit_burst: f.rate_limit_burst + 10,
            ..f
        });
    });
    let n = outcomes(&double, "429");
    eprintln!("{n} answers 429");
    assert!(n >= 15, "{n} answers 429");
}

#[test]
fn a_server_cap_of_two_connections_under_max_connections_8() {
    if !support::fuse_or_skip() {
        return;
    }
    let products = products(2, BIG_MIB);
    let mut cfg = ranged_config(Some(&products));
    cfg.faults.max_connections_per_user = Some(2);
    cfg.faults.bandwidth_per_conn = Some(12_000_000);
    let (double, _, _) = copy_under(&products, cfg, &["--max-connections", "8"], |_| {});
    let refused = outcomes(&double, "max_connections");
    let ok = zipper_gets(&double.log()).len();
    eprintln!("{refused} refused of {ok} GETs");
    // The mount adapts: a few 429s while it learns the cap, not one per request.
    assert!(refused <= ok / 4 + 8, "{refused} of {ok} refused");
}

#[test]
fn a_20_s_outage_mid_copy_is_waited_out() {
    if !support::fuse_or_skip() {
        return;
    }
    let products = products(2, BIG_MIB);
    let mut cfg = ranged_config(Some(&products));
    cfg.faults.bandwidth_per_conn = Some(8_000_000);
    let (double, copy, _) = copy_under(&products, cfg, &[], |d| {
        std::thread::sleep(Duration::from_secs(2));
        d.outage(Duration::from_secs(20));
    });
    assert!(outcomes(&double, "outage") >= 1);
    assert!(copy.took >= Duration::from_secs(20));
}

#[test]
fn a_long_outage_with_a_short_read_timeout_is_eio_with_a_log_line() {
    if !support::fuse_or_skip() {
        return;
    }
    let products = products(2, 48);
    let mut cfg = ranged_config(Some(&products));
    cfg.faults.bandwidth_per_conn = Some(4_000_000);
    let double = start_double(cfg);
    let ws = Workspace::new();
    let mount = Mount::start(&ws, &double, &["--read-timeout", "4"]);
    let (name, local, _) = product(&products, 0);
    let copy = std::thread::scope(|s| {
        let c = s.spawn(|| {
            copy_compare(
                &mount.path(&format!("{name}.zip")),
                &local,
                Duration::from_secs(90),
            )
        });
        std::thread::sleep(Duration::from_secs(2));
        double.outage(Duration::from_secs(600));
        c.join().unwrap()
    });
    double.outage(Duration::ZERO);
    eprintln!("{copy:?}");
    assert_eq!(copy.mismatch, None, "wrong bytes");
    assert_eq!(copy.errno(), Some(libc::EIO), "{copy:?}");
    // Bounded by the read timeout plus backoff, far below the outage.
    assert!(copy.took < Duration::from_secs(60), "{copy:?}");
    let log = mount.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains(&name)),
        "a log line says which read failed:\n{log}"
    );
}

#[test]
fn a_server_ignoring_range_gives_the_right_bytes_or_eio_never_wrong_ones() {
    if !support::fuse_or_skip() {
        return;
    }
    let products = products(2, 48);
    let cfg = double_config(Some(&products));
    let double = start_double(cfg);
    let ws = Workspace::new();
    let mount = Mount::start(&ws, &double, &[]);
    let (name, local, size) = product(&products, 0);
    let copy = copy_compare(
        &mount.path(&format!("{name}.zip")),
        &local,
        Duration::from_secs(120),
    );
    eprintln!("{copy:?}");
    assert_eq!(
        copy.mismatch, None,
        "wrong bytes from a server that ignores Range"
    );
    match copy.errno() {
        None => assert_eq!(copy.bytes, size),
        Some(e) => {
            assert_eq!(e, libc::EIO, "{copy:?}");
            let log = mount.log_text();
            assert!(
                log.contains("Range"),
                "the log says the server ignores Range:\n{log}"
            );
        }
    }
}

/// Mounts with good credentials, then makes the account refuse every login (`spoil` changes
/// it in the double), revokes the held tokens and refuses refreshes: readers retrying must
/// cost at most two login attempts, fail fast, and the mount log must say why once.
fn refusal_during_a_mount(spoil: impl FnOnce(&Double), outcome: &str) {
    let products = products(2, 48);
    let double = start_double(ranged_config(Some(&products)));
    let ws = Workspace::new();
    let mount = Mount::start(&ws, &double, &[]);
    let (name, local, _) = product(&products, 0);
    let file = mount.path(&format!("{name}.zip"));
    // A reader that opened the file before the refusal: its reads fail one by one.
    let mut held = File::open(&file).unwrap();
    let before = password_logins(&double.log()).len();
    spoil(&double);
    double.set_faults(Faults {
        refuse_refresh: true,
        range: true,
        ..Faults::default()
    });
    double.revoke_tokens();
    // Four readers, each retrying five times.
    let copies: Vec<Copy> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    (0..5)
                        .map(|_| copy_compare(&file, &local, Duration::from_secs(120)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    // The held handle, read at twenty places.
    let mut buf = vec![0u8; 65536];
    for i in 0..20u64 {
        held.seek(SeekFrom::Start(i * (1 << 20) + 4096)).unwrap();
        let e = held
            .read(&mut buf)
            .expect_err("a read after the refusal fails");
        assert!(
            matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EIO)),
            "{e}"
        );
    }
    let log = double.log();
    let attempts = password_logins(&log).len() - before;
    eprintln!(
        "{attempts} login attempts after the refusal; {:?}",
        copies[0]
    );
    assert!(attempts <= 2, "{attempts} login attempts");
    assert!(
        log.iter().any(|e| e.outcome == outcome),
        "the double refused with {outcome}"
    );
    for c in &copies {
        assert_eq!(c.mismatch, None);
        assert!(
            matches!(c.errno(), Some(libc::EACCES) | Some(libc::EIO)),
            "{c:?}"
        );
    }
    // Fast: all but the first few fail without waiting for anything.
    let slow = copies
        .iter()
        .filter(|c| c.took > Duration::from_secs(2))
        .count();
    assert!(slow <= 4, "{slow} reads waited more than 2 s");
    let text = mount.log_text();
    let why: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("refused") && (l.contains("WARN") || l.contains("ERROR")))
        .collect();
    assert!(!why.is_empty(), "the log says why:\n{text}");
    assert!(
        why.len() <= 3,
        "said once, not per read:\n{}",
        why.join("\n")
    );
    drop(mount);
}

#[test]
fn a_password_changed_during_a_mount_is_not_retried_in_a_loop() {
    if !support::fuse_or_skip() {
        return;
    }
    refusal_during_a_mount(
        |d| {
            d.update_user(User::new(USER, "changed", TOTP_SECRET))
                .unwrap()
        },
        "bad_password",
    );
}

#[test]
fn a_totp_secret_changed_during_a_mount_is_not_retried_in_a_loop() {
    if !support::fuse_or_skip() {
        return;
    }
    refusal_during_a_mount(
        |d| {
            d.update_user(User::new(
                USER,
                PASSWORD,
                "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ",
            ))
            .unwrap()
        },
        "bad_code",
    );
}

#[test]
fn an_account_disabled_during_a_mount_is_not_retried_in_a_loop() {
    if !support::fuse_or_skip() {
        return;
    }
    refusal_during_a_mount(
        |d| {
            d.update_user(User {
                disabled: true,
                ..User::new(USER, PASSWORD, TOTP_SECRET)
            })
            .unwrap()
        },
        "disabled",
    );
}

/// SIGTERM or SIGINT while a copy runs: the reader gets an error, not a hang; the process
/// unmounts and exits; nothing stays mounted.
fn signal_during_a_copy(sig: i32) {
    let products = products(2, 48);
    let mut cfg = ranged_config(Some(&products));
    cfg.faults.bandwidth_per_conn = Some(1_000_000);
    let double = start_double(cfg);
    let ws = Workspace::new();
    let mut mount = Mount::start(&ws, &double, &[]);
    let (name, local, size) = product(&products, 0);
    let file = mount.path(&format!("{name}.zip"));
    let (tx, rx) = mpsc::channel();
    {
        let (file, local) = (file.clone(), local.clone());
        std::thread::spawn(move || {
            let _ = tx.send(copy_inner(&file, &local));
        });
    }
    std::thread::sleep(Duration::from_secs(3));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(mount.child.id() as i32, sig) };
    let copy = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the reader got an answer within 30 s of the signal, not a hang");
    eprintln!("{copy:?}");
    assert_eq!(copy.mismatch, None);
    assert!(
        copy.bytes < size && copy.error.is_some(),
        "the reader saw an error"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = mount.child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.is_some(), "the mount process exited");
    assert!(!is_mounted(&mount.dir), "unmounted");
    assert!(
        std::fs::read_dir(&mount.dir).is_ok(),
        "the directory is usable again"
    );
    assert!(!mount.log_text().contains("panicked"));
}

#[test]
fn sigterm_during_a_copy_unmounts_cleanly() {
    signal_during_a_copy(libc::SIGTERM);
}

#[test]
fn sigint_during_a_copy_unmounts_cleanly() {
    if !support::fuse_or_skip() {
        return;
    }
    signal_during_a_copy(libc::SIGINT);
}

/// Nothing listening where the service was (the double stopped: connections refused): a read
/// fails with EIO within 30 s at the default flags, not after the 120 s read timeout, and the
/// log says so in one ERROR line for the outage, not one per read.
#[test]
fn reads_with_the_service_down_fail_within_30_s_with_one_error_line() {
    if !support::fuse_or_skip() {
        return;
    }
    let products = products(2, 8);
    let double = start_double(double_config(Some(&products)));
    let ws = Workspace::new();
    let mount = Mount::start(&ws, &double, &[]);
    let (first, _, _) = product(&products, 0);
    let (second, _, _) = product(&products, 1);
    // The login and both lookups happen while the service is up.
    std::fs::read(mount.path(&format!("{first}.zip"))).unwrap();
    let path = mount.path(&format!("{second}.zip"));
    std::fs::metadata(&path).unwrap();
    double.stop();
    let started = Instant::now();
    let err = std::fs::read(&path).expect_err("the service is down");
    let took = started.elapsed();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err:?}");
    assert!(took <= Duration::from_secs(30), "{took:?}");
    // More reads during the same outage: each fails, none adds an ERROR line.
    for _ in 0..3 {
        assert!(std::fs::read(&path).is_err());
    }
    let log = mount.log_text();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert_eq!(errors.len(), 1, "one ERROR line per outage:\n{log}");
    assert!(errors[0].contains("unreachable"), "{log}");
}
