//! The folder view `<Name>/` beside `<Name>.zip` (OData Nodes), on real mounts read by real
//! tools: ls, stat, cat, cp -r, gdalinfo. Every byte is compared with `unzip -p` of the zip the
//! double serves; the double's log shows what was fetched.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use fake_creodias::LogEntry;
use support::*;

/// Big enough that fetching the whole product stands out against one file (the filler member
/// is most of it), small enough to stay quick.
const SIZE_MIB: u64 = 24;

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The file members of a zip (no directory entries).
fn members(zip: &Path) -> Vec<String> {
    let out = sh(Command::new("unzip").arg("-Z1").arg(zip));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.ends_with('/'))
        .map(String::from)
        .collect()
}

fn unzip_p(zip: &Path, member: &str) -> Vec<u8> {
    sh(Command::new("unzip").arg("-p").arg(zip).arg(member)).stdout
}

/// Zipper GETs for the whole product (not one of its files).
fn whole_product_gets(log: &[LogEntry]) -> Vec<&LogEntry> {
    zipper_gets(log)
        .into_iter()
        .filter(|e| !e.path.contains("/Nodes("))
        .collect()
}

fn node_gets(log: &[LogEntry]) -> Vec<&LogEntry> {
    zipper_gets(log)
        .into_iter()
        .filter(|e| e.path.contains("/Nodes("))
        .collect()
}

fn setup(
    cfg: impl FnOnce(&mut fake_creodias::Config),
    extra: &[&str],
) -> (PathBuf, fake_creodias::Double, Workspace, Mount) {
    let products = products(1, SIZE_MIB);
    let mut config = double_config(Some(&products));
    cfg(&mut config);
    let double = start_double(config);
    let ws = Workspace::new();
    // Listed by a query, the product costs no download request at mount time (`--product`
    // would ask the zip's size), so the log shows only what the folder view fetched.
    let query = format!("Name eq '{TUTORIAL_NAME}'");
    let mut args = vec!["--query", query.as_str(), "--no-tree"];
    args.extend_from_slice(extra);
    let mount = Mount::start(&ws, &double, &args);
    (product_file(&products, 0), double, ws, mount)
}

#[test]
fn the_folder_lists_the_products_files_with_their_sizes_and_bytes() {
    if !support::fuse_or_skip() {
        return;
    }
    let (zip, double, _ws, mount) = setup(|_| {}, &[]);
    let root = names_in(&mount.dir);
    assert_eq!(
        root,
        vec![TUTORIAL_NAME.to_string(), format!("{TUTORIAL_NAME}.zip")]
    );
    let top = mount.path(TUTORIAL_NAME);
    assert!(std::fs::metadata(&top).unwrap().is_dir());
    let listed = names_in(&top);
    for want in ["manifest.safe", "MTD_MSIL1C.xml", "GRANULE"] {
        assert!(listed.contains(&want.to_string()), "{listed:?}");
    }
    assert!(std::fs::metadata(top.join("GRANULE")).unwrap().is_dir());

    // Every file: the same size as the member, the same bytes as `unzip -p`.
    let all = members(&zip);
    assert!(all.len() >= 7, "{all:?}");
    for member in &all {
        let path = mount.dir.join(member);
        let want = unzip_p(&zip, member);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            want.len() as u64,
            "size of {member}"
        );
        let got = std::fs::read(&path).unwrap_or_else(|e| panic!("{member}: {e}"));
        assert!(got == want, "bytes of {member} differ from unzip -p");
    }
    // Read-only, and a name that is not in the product is not there.
    assert!(std::fs::OpenOptions::new()
        .write(true)
        .open(top.join("manifest.safe"))
        .is_err());
    assert!(!top.join("nothing.xml").exists());

    let log = double.log();
    assert!(
        whole_product_gets(&log).is_empty(),
        "the folder view fetched the whole product"
    );
    // One listing request per folder, however often it was looked into.
    let listings: Vec<&LogEntry> = log
        .iter()
        .filter(|e| e.service == "catalogue" && e.path.ends_with("/Nodes"))
        .collect();
    let folders = 1 + sh(Command::new("unzip").arg("-Z1").arg(&zip))
        .stdout
        .split(|b| *b == b'\n')
        .filter(|l| l.ends_with(b"/") && l.iter().filter(|b| **b == b'/').count() > 1)
        .count();
    assert_eq!(listings.len(), folders, "{listings:#?}");

    // The xattrs name the product and the file's place in it.
    let file = top.join("manifest.safe");
    assert_eq!(
        getxattr(&file, "user.eodata.id").as_deref(),
        Some(TUTORIAL_ID)
    );
    assert_eq!(
        getxattr(&file, "user.eodata.node"),
        Some(format!("{TUTORIAL_NAME}/manifest.safe"))
    );
}

fn getxattr(path: &Path, name: &str) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: both strings are NUL-terminated and the buffer is as long as we say.
    let len = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (len >= 0).then(|| String::from_utf8_lossy(&buf[..len as usize]).into_owned())
}

/// A store holding one product of `bands` band files of `band_mib` MiB in one folder (plus
/// manifest and metadata), zipped stored as the real services do: the shape `cp -r` of a real
/// product meets (IMG_DATA holds 13 bands), which the generated products, with one band and a
/// filler, do not have.
fn many_band_store(ws: &Workspace, bands: usize, band_mib: usize) -> PathBuf {
    let src = products(1, SIZE_MIB);
    let dir = ws.path().join("store");
    std::fs::create_dir_all(&dir).unwrap();
    let zip = dir.join("bands.zip");
    let script = r#"
import os, sys, zipfile, random
path, name, bands, mib = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rnd = random.Random(7)
with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
    z.writestr(name + "/manifest.safe", "<xfdu/>")
    z.writestr(name + "/MTD_MSIL1C.xml", "<mtd/>")
    for b in range(1, bands + 1):
        data = bytes(rnd.getrandbits(8) for _ in range(1024)) * (mib * 1024)
        z.writestr(f"{name}/GRANULE/L1C_T42FXL/IMG_DATA/T42FXL_B{b:02}.jp2", data)
"#;
    sh(Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&zip)
        .arg(TUTORIAL_NAME)
        .arg(bands.to_string())
        .arg(band_mib.to_string()));
    let mut entry = index(&src)[0].clone();
    entry["file"] = "bands.zip".into();
    entry["ContentLength"] = std::fs::metadata(&zip).unwrap().len().into();
    entry["Checksum"] = serde_json::json!([]);
    std::fs::write(
        dir.join("index.json"),
        serde_json::json!({ "products": [entry] }).to_string(),
    )
    .unwrap();
    dir
}

#[test]
fn a_band_through_the_folder_costs_that_band_only_when_the_server_ignores_range() {
    if !support::fuse_or_skip() {
        return;
    }
    let (zip, double, _ws, mount) = setup(
        |c| {
            c.faults.latency = std::time::Duration::from_millis(30);
            c.faults.bandwidth_per_conn = Some(20_000_000);
        },
        &[],
    );
    let member = tif_member(&zip);
    let band_size = unzip_p(&zip, &member).len() as u64;
    let want = gdal_checksums(&zip, &member);
    assert!(!want.is_empty());
    let out = sh(Command::new("gdalinfo")
        .arg("-checksum")
        .arg(mount.dir.join(&member)));
    let got: Vec<&str> = std::str::from_utf8(&out.stdout)
        .unwrap()
        .lines()
        .filter(|l| l.contains("Checksum="))
        .collect();
    assert_eq!(
        got.join("\n"),
        want,
        "gdalinfo -checksum through the folder"
    );

    let log = double.log();
    assert!(
        whole_product_gets(&log).is_empty(),
        "a request for the whole product: {:#?}",
        whole_product_gets(&log)
    );
    let fetched: u64 = zipper_gets(&log).iter().map(|e| e.bytes_sent).sum();
    let zip_size = std::fs::metadata(&zip).unwrap().len();
    assert!(
        fetched <= band_size + (1 << 20),
        "fetched {fetched} bytes for a band of {band_size} (product {zip_size})"
    );
    // One request: the first read asks for a block from byte 0, which covers the whole band,
    // so the server's 200 with the whole file is that read's answer.
    let gets = node_gets(&log);
    assert_eq!(gets.len(), 1, "{gets:#?}");
    assert!(gets[0].path.contains(".tif"));
}

#[test]
fn gdal_sentinel2_driver_reads_the_folder_as_it_reads_the_unzipped_product() {
    if !support::fuse_or_skip() {
        return;
    }
    let (zip, _double, ws, mount) = setup(|_| {}, &[]);
    let local = ws.path().join("unzipped");
    sh(Command::new("unzip")
        .arg("-q")
        .arg(&zip)
        .arg("-d")
        .arg(&local));
    let run = |path: PathBuf| {
        let out = Command::new("gdalinfo").arg(path).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.success(), text, err)
    };
    let mtd = format!("{TUTORIAL_NAME}/MTD_MSIL1C.xml");
    let (ok_local, text_local, err_local) = run(local.join(&mtd));
    let (ok_mount, text_mount, err_mount) = run(mount.dir.join(&mtd));
    // The generated MTD_MSIL1C.xml holds the product info but no granule list, so GDAL's
    // SENTINEL2 driver cannot open it even unzipped: the folder must behave exactly alike.
    assert_eq!(ok_mount, ok_local, "local: {err_local}\nmount: {err_mount}");
    let strip = |s: &str, p: &Path| s.replace(&p.display().to_string(), "<dir>");
    assert_eq!(
        strip(&text_mount, &mount.dir),
        strip(&text_local, &local),
        "gdalinfo output"
    );
    assert_eq!(
        strip(&err_mount, &mount.dir),
        strip(&err_local, &local),
        "gdalinfo errors"
    );
    if !ok_local {
        eprintln!(
            "NOTE: the generated product is not one GDAL's SENTINEL2 driver opens: {err_local}"
        );
    }
}

#[test]
fn cp_r_of_the_folder_is_exact_and_reads_ahead_across_files() {
    if !support::fuse_or_skip() {
        return;
    }
    let ws = Workspace::new();
    let store = many_band_store(&ws, 8, 2);
    let zip = store.join("bands.zip");
    let mut cfg = double_config(Some(&store));
    cfg.faults.latency = std::time::Duration::from_millis(30);
    cfg.faults.bandwidth_per_conn = Some(20_000_000);
    cfg.faults.max_connections_per_user = Some(4);
    let double = start_double(cfg);
    let query = format!("Name eq '{TUTORIAL_NAME}'");
    let mount = Mount::start(&ws, &double, &["--query", &query]);
    let started = std::time::Instant::now();
    let dst = ws.path().join("copy");
    sh(Command::new("cp")
        .arg("-r")
        .arg(mount.path(TUTORIAL_NAME))
        .arg(&dst));
    eprintln!("cp -r of 8 bands of 2 MiB: {:?}", started.elapsed());
    let all = members(&zip);
    assert_eq!(all.len(), 10);
    for member in &all {
        let rel = member.strip_prefix(&format!("{TUTORIAL_NAME}/")).unwrap();
        let got = std::fs::read(dst.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert!(got == unzip_p(&zip, member), "{rel} differs from unzip -p");
    }
    // Nothing more in the copy than in the zip.
    let out = sh(Command::new("find").arg(&dst).arg("-type").arg("f"));
    let copied = String::from_utf8(out.stdout).unwrap().lines().count();
    assert_eq!(copied, all.len());
    let log = double.log();
    assert!(whole_product_gets(&log).is_empty());
    // Each file was delivered whole once: read-ahead and the copy's own reads shared the
    // fetches (a 200 to a ranged probe may have sent a little before it was dropped).
    let gets = node_gets(&log);
    for member in &all {
        let size = unzip_p(&zip, member).len() as u64;
        let name = member.rsplit('/').next().unwrap();
        let whole = gets
            .iter()
            .filter(|e| e.path.contains(&format!("Nodes({name})/")) && e.bytes_sent >= size)
            .count();
        assert!(whole <= 1, "{member} was fetched whole {whole} times");
    }
    // Several files in flight at once: at 20 MB/s a band of 2 MiB takes at least 104 ms on
    // its connection, so bands whose transfers ended less than that apart overlapped.
    let band = 2u64 << 20;
    let min_ms = band * 1000 / 20_000_000;
    let mut ends: Vec<u64> = gets
        .iter()
        .filter(|e| e.path.contains(".jp2") && e.bytes_sent >= band)
        .map(|e| e.t_ms)
        .collect();
    ends.sort_unstable();
    let at_once = (0..ends.len())
        .map(|i| {
            ends[i..]
                .iter()
                .take_while(|t| **t < ends[i] + min_ms)
                .count()
        })
        .max()
        .unwrap_or(0);
    assert!(
        at_once >= 3,
        "bands ended at {ends:?} ms: at most {at_once} were in flight at once"
    );
    // Files were opened in order, so the next ones were read ahead.
    let text = mount.log_text();
    drop(mount);
    assert!(
        text.contains("read-ahead: the start of"),
        "no read-ahead in the mount's log"
    );
}

/// Waits until `eodata-mount cache list` calls the product whole: the stream hands its
/// blocks to the disk cache as they arrive, a moment after the copy has them.
fn wait_whole(ws: &Workspace, double: &fake_creodias::Double, cache: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let out = ws.run(
            double,
            &["cache", "list", "--cache-dir", cache.to_str().unwrap()],
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text
            .lines()
            .any(|l| l.starts_with(TUTORIAL_ID) && l.contains(" whole "))
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the product never became whole in the disk cache: {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Every file of the folder equals `unzip -p` of its member, and reading them made no
/// download request (neither a node's `$value` nor the zip) since log entry `mark`.
fn folder_reads_from_the_cached_zip(
    mount: &Mount,
    double: &fake_creodias::Double,
    zip: &Path,
    mark: usize,
) {
    let all = members(zip);
    assert!(all.len() >= 7, "{all:?}");
    for member in &all {
        let got = std::fs::read(mount.dir.join(member)).unwrap_or_else(|e| panic!("{member}: {e}"));
        assert!(
            got == unzip_p(zip, member),
            "{member} differs from unzip -p"
        );
    }
    let log = double.log();
    let after = &log[mark..];
    assert!(
        node_gets(after).is_empty(),
        "the folder view downloaded files its cached zip holds: {:#?}",
        node_gets(after)
    );
    assert!(zipper_gets(after).is_empty(), "{:#?}", zipper_gets(after));
    assert!(
        mount.log_text().contains("its files are read from there"),
        "the mount did not say it reads the folder from the cached zip"
    );
}

#[test]
fn once_the_whole_zip_is_in_the_disk_cache_the_folder_reads_from_it_not_the_network() {
    if !support::fuse_or_skip() {
        return;
    }
    let products = products(1, SIZE_MIB);
    let double = start_double(double_config(Some(&products)));
    let zip = product_file(&products, 0);
    let ws = Workspace::new();
    let cache = ws.path().join("cache");
    let query = format!("Name eq '{TUTORIAL_NAME}'");
    let args = [
        "--query",
        query.as_str(),
        "--cache-dir",
        cache.to_str().unwrap(),
    ];
    let mount = Mount::start(&ws, &double, &args);
    // The whole zip, read once through the mount (the double ignores Range: one stream).
    let copy = ws.path().join("copy.zip");
    sh(Command::new("cp")
        .arg(mount.path(&format!("{TUTORIAL_NAME}.zip")))
        .arg(&copy));
    assert_eq!(file_sha256(&copy), file_sha256(&zip));
    wait_whole(&ws, &double, &cache);
    assert!(
        node_gets(&double.log()).is_empty(),
        "no file was read through the folder yet"
    );

    // The same mount: its folder view's files come from the zip's blocks on disk.
    let mark = double.log().len();
    folder_reads_from_the_cached_zip(&mount, &double, &zip, mark);
    mount.stop();

    // A remount on the same cache: the same, from the zip alone.
    let again = Mount::start(&ws, &double, &args);
    let mark = double.log().len();
    folder_reads_from_the_cached_zip(&again, &double, &zip, mark);
}

#[test]
fn no_safe_view_hides_the_folder() {
    if !support::fuse_or_skip() {
        return;
    }
    let (_zip, _double, _ws, mount) = setup(|_| {}, &["--no-safe-view"]);
    assert_eq!(names_in(&mount.dir), vec![format!("{TUTORIAL_NAME}.zip")]);
    assert!(!mount.path(TUTORIAL_NAME).exists());
}

#[test]
fn the_double_refuses_quoted_node_keys_and_lists_without_a_token() {
    let products = products(1, SIZE_MIB);
    let double = start_double(double_config(Some(&products)));
    let base = double.catalogue_url();
    let get = |url: String| {
        let out = sh(Command::new("curl")
            .arg("-s")
            .arg("-w")
            .arg("\n%{http_code}")
            .arg(url));
        let text = String::from_utf8(out.stdout).unwrap();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.to_string(), body.to_string())
    };
    let (code, body) = get(format!("{base}/Products({TUTORIAL_ID})/Nodes"));
    assert_eq!(code, "200", "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["result"][0]["Name"], TUTORIAL_NAME);
    assert!(v["result"][0]["ChildrenNumber"].as_u64().unwrap() >= 3);
    let uri = v["result"][0]["Nodes"]["uri"].as_str().unwrap().to_string();
    let (code, body) = get(uri);
    assert_eq!(code, "200", "{body}");
    assert!(body.contains("\"MTD_MSIL1C.xml\""), "{body}");
    let (code, body) = get(format!(
        "{base}/Products({TUTORIAL_ID})/Nodes('{TUTORIAL_NAME}')/Nodes"
    ));
    assert_eq!(code, "400");
    assert!(body.contains("DAT-ZIP-104"), "{body}");
    // A file needs the token, like any download.
    let (code, body) = get(format!(
        "{base}/Products({TUTORIAL_ID})/Nodes({TUTORIAL_NAME})/Nodes(manifest.safe)/$value"
    ));
    assert_eq!(code, "401", "{body}");
}
