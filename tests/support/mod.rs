//! Shared pieces of the integration tests: the CREODIAS double on a free port, generated
//! products (made once, reused by every test binary), a secrets.conf for the double's user, the
//! real `eodata-mount` binary, and real FUSE mounts that are always unmounted (in `Drop`).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use fake_creodias::generate::{ensure, GenerateOptions};
use fake_creodias::{Config, Double, LogEntry, User};
use sha2::{Digest, Sha256};

/// The double's test user. The TOTP secret is a valid base32 string written the tutorial's way
/// (groups of four, lower case allowed).
pub const USER: &str = "person+eo@example.com";
pub const PASSWORD: &str = "s3cr%t pa#ss+word";
pub const TOTP_SECRET: &str = "JBSW Y3DP EHPK 3PXP JBSW Y3DP EHPK 3PXP";
/// A second user for the tutorial's own client, which does not url-encode the e-mail and so
/// cannot log in as [`USER`] (its `+` would arrive as a space).
pub const TUTORIAL_USER: &str = "tutorial@example.com";

/// The tutorial's product.
pub const TUTORIAL_ID: &str = "db0c8ef3-8ec0-5185-a537-812dad3c58f8";
pub const TUTORIAL_NAME: &str = "S2A_MSIL1C_20180927T051221_N0206_R033_T42FXL_20180927T073143.SAFE";

/// Products generated for tests: `count` products of `size_mib` MiB, made once under
/// target/test-products and shared by every test binary and run.
pub fn products(count: usize, size_mib: u64) -> PathBuf {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("products")
        .join(format!("{count}x{size_mib}m"));
    ensure(&GenerateOptions {
        out: out.clone(),
        count,
        size: size_mib << 20,
        seed: 42,
        geotiff: true,
        catalogue_only: 0,
        same_day: 0,
        bands: 1,
    })
    .expect("generate test products")
}

/// The product entries of a generated store (its index.json).
pub fn index(dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("index.json")).expect("index.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("index.json parses");
    v["products"].as_array().expect("products").clone()
}

/// The zip of product `i` in a generated store.
pub fn product_file(products: &Path, i: usize) -> PathBuf {
    products.join(index(products)[i]["file"].as_str().unwrap())
}

/// The GeoTIFF member inside a generated product.
pub fn tif_member(zip: &Path) -> String {
    let out = sh(Command::new("unzip").arg("-Z1").arg(zip));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .find(|l| l.ends_with(".tif"))
        .expect("a .tif in the product")
        .to_string()
}

/// The `Checksum=` lines of `gdalinfo -checksum /vsizip/ZIP/MEMBER`.
pub fn gdal_checksums(zip: &Path, member: &str) -> String {
    let out = sh(Command::new("gdalinfo")
        .arg("-checksum")
        .arg(format!("/vsizip/{}/{member}", zip.display())));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| l.contains("Checksum="))
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn file_sha256(path: &Path) -> String {
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    format!("{:x}", h.finalize())
}

/// A double configured for tests, with our user.
pub fn double_config(products: Option<&Path>) -> Config {
    let mut cfg = Config::with_user(USER, PASSWORD, TOTP_SECRET);
    cfg.users.push(User {
        username: TUTORIAL_USER.into(),
        password: PASSWORD.into(),
        totp_secret: TOTP_SECRET.into(),
        disabled: false,
    });
    cfg.products_dir = products.map(Path::to_path_buf);
    cfg
}

/// [`double_config`] for a server that honours Range: for tests of the ranged fast path (the
/// double, like the real zipper, ignores Range by default).
pub fn ranged_config(products: Option<&Path>) -> Config {
    let mut cfg = double_config(products);
    cfg.faults.range = true;
    cfg
}

pub fn start_double(cfg: Config) -> Double {
    Double::start_in_thread(cfg).expect("start the double")
}

/// A scratch directory with a secrets.conf (0600) for the double's user.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ws = Workspace { dir };
        // The password holds a `%`, written `%%` as configparser (and so the tutorial) needs.
        ws.write_secrets(&format!(
            "[login]\nuser = {USER}\npassword = {}\ntotp_secret = {}\n",
            PASSWORD.replace('%', "%%"),
            TOTP_SECRET.to_lowercase()
        ));
        ws
    }

    /// A workspace whose secrets.conf is for [`TUTORIAL_USER`], for the tutorial's client.
    pub fn for_tutorial() -> Self {
        let ws = Workspace::new();
        ws.write_secrets(&format!(
            "[login]\nuser = {TUTORIAL_USER}\npassword = {}\ntotp_secret = {TOTP_SECRET}\n",
            PASSWORD.replace('%', "%%")
        ));
        ws
    }

    /// Run the tutorial's Python client (scripts/tutorial_download.py) in this workspace.
    pub fn run_tutorial(&self, double: &Double, id: &str, out: &str) -> Output {
        Command::new("/usr/bin/python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/scripts/tutorial_download.py"
            ))
            .arg(id)
            .arg(out)
            .current_dir(self.path())
            .env("EODATA_TOKEN_URL", double.token_url())
            .env(
                "EODATA_DOWNLOAD_BASE",
                double.legacy_download_template().trim_end_matches("/{id}"),
            )
            .output()
            .expect("run python3")
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn secrets(&self) -> PathBuf {
        self.path().join("secrets.conf")
    }

    pub fn write_secrets(&self, text: &str) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(self.secrets(), text).unwrap();
        std::fs::set_permissions(self.secrets(), std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    /// A command running the real binary against `double`, with its own token cache.
    pub fn command(&self, double: &Double) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_eodata-mount"));
        cmd.current_dir(self.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.path())
            .env("XDG_RUNTIME_DIR", self.path().join("run"))
            .env("EODATA_CONFIG", self.secrets())
            .env("EODATA_TOKEN_URL", double.token_url())
            .env("EODATA_DOWNLOAD_URL", double.download_template())
            .env("EODATA_CATALOGUE_URL", double.catalogue_url());
        std::fs::create_dir_all(self.path().join("run")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            self.path().join("run"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        cmd
    }

    pub fn run(&self, double: &Double, args: &[&str]) -> Output {
        self.command(double)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run eodata-mount")
    }
}

/// A live FUSE mount of the real binary (run with `--foreground`), unmounted on drop.
pub struct Mount {
    pub dir: PathBuf,
    pub child: Child,
    pub log: PathBuf,
}

impl Mount {
    /// Mount on a fresh directory inside `ws` and wait until it is live.
    pub fn start(ws: &Workspace, double: &Double, extra: &[&str]) -> Mount {
        let dir = ws.path().join(format!("mnt{}", rand_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        Self::start_at(ws, double, &dir, extra)
    }

    /// Mount on `dir` (which must exist) and wait until it is live.
    pub fn start_at(ws: &Workspace, double: &Double, dir: &Path, extra: &[&str]) -> Mount {
        let dir = dir.to_path_buf();
        let log = ws.path().join(format!("mount{}.log", rand_suffix()));
        let child = ws
            .command(double)
            .arg(&dir)
            .arg("--foreground")
            .arg("-vv")
            .arg("--log-file")
            .arg(&log)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn eodata-mount");
        let mut m = Mount { dir, child, log };
        m.wait_live();
        m
    }

    fn wait_live(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            // Mounted and answering: a stale mount of a killed process is in mountinfo too,
            // but every access to it fails with ENOTCONN.
            if is_mounted(&self.dir) && std::fs::read_dir(&self.dir).is_ok() {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                if let Some(e) = self.child.stderr.as_mut() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("eodata-mount exited with {status} before mounting: {err}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("mount did not come up within 60 s");
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Stop with SIGTERM and wait; returns the process's stderr.
    pub fn stop(mut self) -> String {
        self.terminate();
        let mut err = String::new();
        if let Some(e) = self.child.stderr.as_mut() {
            let _ = e.read_to_string(&mut err);
        }
        err
    }

    fn terminate(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: plain kill(2) on our own child.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if self.child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if is_mounted(&self.dir) {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Every product of the generated store `products` was saved as `<dir>/<Name>.zip`, exact.
pub fn assert_all_saved(dir: &Path, products: &Path) {
    for (i, e) in index(products).iter().enumerate() {
        let saved = dir.join(format!("{}.zip", e["Name"].as_str().unwrap()));
        assert_eq!(
            file_sha256(&saved),
            file_sha256(&product_file(products, i)),
            "{}",
            saved.display()
        );
    }
}

/// Whether a test that mounts (or needs root for its namespaces and device nodes) can run here:
/// root and a `/dev/fuse`. Otherwise it prints one line and the test returns, so a plain
/// `cargo test` as a user passes; `EODATA_REQUIRE_FUSE=1` (set by `scripts/test` and CI, which
/// run as root) makes a missing one a failure instead. Every such test starts with
/// `if !support::fuse_or_skip() { return; }`.
pub fn fuse_or_skip() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let device = Path::new("/dev/fuse").exists();
    if root && device {
        return true;
    }
    let why = if root { "no /dev/fuse" } else { "not root" };
    if std::env::var("EODATA_REQUIRE_FUSE").as_deref() == Ok("1") {
        panic!("EODATA_REQUIRE_FUSE=1 but this test cannot mount: {why}");
    }
    eprintln!("skipped: needs root / /dev/fuse ({why})");
    false
}

/// Whether `dir` is a mount point now (from /proc/self/mountinfo).
pub fn is_mounted(dir: &Path) -> bool {
    let Ok(canon) = std::fs::canonicalize(dir).or_else(|_| std::path::absolute(dir)) else {
        return false;
    };
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .is_some_and(|mp| Path::new(&mp.replace("\\040", " ")) == canon)
    })
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Download requests (GETs to zipper) in the double's log.
pub fn zipper_gets(log: &[LogEntry]) -> Vec<&LogEntry> {
    log.iter()
        .filter(|e| e.service == "zipper" && e.method == "GET")
        .collect()
}

/// Password logins (grant_type=password) in the double's log.
pub fn password_logins(log: &[LogEntry]) -> Vec<&LogEntry> {
    log.iter()
        .filter(|e| e.service == "token" && e.grant_type.as_deref() == Some("password"))
        .collect()
}

/// TOTP steps used more than once by successful or failed logins.
pub fn reused_steps(log: &[LogEntry]) -> Vec<u64> {
    let mut seen = std::collections::HashSet::new();
    password_logins(log)
        .iter()
        .filter_map(|e| e.totp_step)
        .filter(|s| !seen.insert(*s))
        .collect()
}

/// Run a command, panic with its output when it fails.
pub fn sh(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Lines of a reader until EOF (for following a child's output).
pub fn lines(r: impl Read) -> Vec<String> {
    BufReader::new(r).lines().map_while(Result::ok).collect()
}
