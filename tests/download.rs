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
    assert_all_saved(&ws.path().join("out"), &products);
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
    // Resuming at the .part length is the Range path (a no-Range server is tested below).
    let mut cfg = ranged_config(Some(&products));
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
    let double = start_double(ranged_config(Some(&products)));
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

/// Overlapping cron runs, xargs: two downloads of one product at once. The `.part` is locked,
/// so one writes and the other waits, then finds the complete file: one exact file, both exit
/// 0, and the product crosses the wire once.
#[test]
fn two_downloads_of_one_product_at_once_give_one_exact_file() {
    let products = products(2, SIZE_MIB);
    let mut cfg = double_config(Some(&products));
    // Slow enough (about 3 s) that the two runs overlap.
    cfg.faults.bandwidth_per_conn = Some(4_000_000);
    let double = start_double(cfg);
    let ws = Workspace::new();
    let spawn = || {
        ws.command(&double)
            .args(["download", TUTORIAL_ID, "-o", "out/"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let (ea, eb) = (
        String::from_utf8_lossy(&a.stderr),
        String::from_utf8_lossy(&b.stderr),
    );
    assert!(a.status.success() && b.status.success(), "{ea}\n---\n{eb}");
    let dest = ws.path().join("out").join(format!("{TUTORIAL_NAME}.zip"));
    assert_eq!(file_sha256(&dest), file_sha256(&product_file(&products, 0)));
    let left: Vec<_> = std::fs::read_dir(ws.path().join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 1, "only the product is left: {left:?}");
    // One of the two says it found the work done.
    assert!(
        ea.contains("already complete") || eb.contains("already complete"),
        "{ea}\n---\n{eb}"
    );
    let size = std::fs::metadata(product_file(&products, 0)).unwrap().len();
    let served: u64 = zipper_gets(&double.log())
        .iter()
        .map(|e| e.bytes_sent)
        .sum();
    assert!(
        served <= size + (1 << 20),
        "the product was fetched once, not twice: {served} bytes for {size}"
    );
}

/// Several products from a server that ignores Range: each is one stream, and they run at the
/// same time (up to --max-connections). Shown from the double's log without timing the client:
/// the double caps each answer's rate, so a GET that sent `b` bytes and ended at `t` was
/// streaming at least over `[t - b / rate, t]`; the three such spans share a moment.
#[test]
fn several_products_stream_at_the_same_time() {
    const RATE: u64 = 2_000_000;
    let products = products(3, 8);
    let mut cfg = double_config(Some(&products));
    cfg.faults.bandwidth_per_conn = Some(RATE);
    let double = start_double(cfg);
    let ws = Workspace::new();
    let ids: Vec<String> = index(&products)
        .iter()
        .map(|e| e["Id"].as_str().unwrap().to_string())
        .collect();
    let mut args = vec!["download", "-o", "out", "--max-connections", "3"];
    args.extend(ids.iter().map(String::as_str));
    let out = ws.run(&double, &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_all_saved(&ws.path().join("out"), &products);
    let log = double.log();
    let whole: Vec<(f64, f64)> = zipper_gets(&log)
        .into_iter()
        .filter(|e| e.bytes_sent >= 4 << 20)
        .map(|e| {
            let end = e.t_ms as f64 / 1000.0;
            (end - e.bytes_sent as f64 / RATE as f64, end)
        })
        .collect();
    assert_eq!(whole.len(), 3, "one stream per product: {whole:?}");
    let latest_start = whole.iter().map(|s| s.0).fold(f64::MIN, f64::max);
    let earliest_end = whole.iter().map(|s| s.1).fold(f64::MAX, f64::min);
    assert!(
        latest_start < earliest_end,
        "the three streams overlap: {whole:?}"
    );
}

/// A store like `products`, with product 0's catalogue Name replaced by `name`.
fn store_with_name(products: &std::path::Path, name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut entries = index(products);
    let file = products.join(entries[0]["file"].as_str().unwrap());
    entries[0]["Name"] = name.into();
    entries[0]["file"] = file.to_str().unwrap().into();
    let doc = serde_json::json!({ "products": entries });
    std::fs::write(dir.path().join("index.json"), doc.to_string()).unwrap();
    dir
}

/// A catalogue Name is the server's word, not a path: `../../x` stays inside `-o DIR`.
#[test]
fn a_catalogue_name_never_leads_outside_the_output_directory() {
    let products = products(1, 1);
    let store = store_with_name(&products, "../../x");
    let double = start_double(double_config(Some(store.path())));
    let ws = Workspace::new();
    std::fs::create_dir_all(ws.path().join("a/b")).unwrap();
    let out = ws.run(&double, &["download", TUTORIAL_ID, "-o", "a/b/out"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let saved: Vec<_> = std::fs::read_dir(ws.path().join("a/b/out"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(saved.len(), 1, "{saved:?}");
    assert_eq!(
        file_sha256(&saved[0]),
        file_sha256(&product_file(&products, 0))
    );
    assert!(!ws.path().join("a/x.zip").exists());
    assert!(!ws.path().join("a/b/x.zip").exists());
    let name = saved[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(!name.starts_with('.'), "not hidden: {name}");
}

/// `search ... | download --from-file - -o newdir`: names on standard input, a new directory.
#[test]
fn names_from_standard_input_into_a_new_directory() {
    use std::io::Write;
    let products = products(2, SIZE_MIB);
    let double = start_double(double_config(Some(&products)));
    let ws = Workspace::new();
    let names: Vec<String> = index(&products)
        .iter()
        .map(|e| e["Name"].as_str().unwrap().to_string())
        .collect();
    let mut child = ws
        .command(&double)
        .args(["download", "--from-file", "-", "-o", "newdir"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "# from search\n{}\n\n{}", names[0], names[1]).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (i, name) in names.iter().enumerate() {
        let saved = ws.path().join("newdir").join(format!("{name}.zip"));
        assert_eq!(
            file_sha256(&saved),
            file_sha256(&product_file(&products, i))
        );
    }

    // One product and a name without .zip: still a directory.
    let one = ws.run(&double, &["download", &names[0], "-o", "single"]);
    assert!(one.status.success());
    assert!(ws
        .path()
        .join("single")
        .join(format!("{}.zip", names[0]))
        .is_file());

    // Two products and a .zip name: one clear line, nothing made.
    let two = ws.run(&double, &["download", &names[0], &names[1], "-o", "x.zip"]);
    assert!(!two.status.success());
    let err = String::from_utf8_lossy(&two.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("x.zip") && err.contains("one file"), "{err}");
    assert!(!ws.path().join("x.zip").exists());
}
