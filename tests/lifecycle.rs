//! The mount's lifecycle as a user would run it: a non-root mount (through the setuid
//! fusermount3) stopped by SIGTERM or `eodata-mount unmount` leaves nothing mounted; a closed
//! /dev/fuse is said before logging in; a background mount keeps its log.
//!
//! Non-root mounts run in a private mount namespace whose /dev/fuse is a node of the mode the
//! test wants: distributions make it 0666 (udev), some containers 0600, under which no user can
//! mount FUSE (fusermount3 opens it with the user's rights). The machine's own /dev/fuse and
//! mount table are left alone.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// A scratch tree the user `nobody` can use (its own home, runtime dir, secrets.conf 0600 and
/// mountpoint, a copy of the binary it can execute) and a private mount namespace (held by a
/// `sleep`) whose /dev/fuse has mode `fuse_mode`.
struct NobodyTree {
    dir: tempfile::TempDir,
    ns: Child,
}

const NOBODY: u32 = 65534;

impl NobodyTree {
    fn new(fuse_mode: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        for d in ["home", "run", "mnt"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
            std::os::unix::fs::chown(dir.path().join(d), Some(NOBODY), Some(NOBODY)).unwrap();
        }
        std::fs::set_permissions(
            dir.path().join("run"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        let secrets = dir.path().join("secrets.conf");
        std::fs::write(
            &secrets,
            format!(
                "[login]\nuser = {USER}\npassword = {}\ntotp_secret = {TOTP_SECRET}\n",
                PASSWORD.replace('%', "%%")
            ),
        )
        .unwrap();
        std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(&secrets, Some(NOBODY), Some(NOBODY)).unwrap();
        let bin = dir.path().join("eodata-mount");
        std::fs::copy(env!("CARGO_BIN_EXE_eodata-mount"), &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let node = dir.path().join("fuse-node");
        let script = format!(
            "mknod {n} c 10 229 && chmod {fuse_mode} {n} && mount --bind {n} /dev/fuse && echo ready && exec sleep 600",
            n = node.display()
        );
        let mut ns = Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                &script,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(ns.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "ready", "private mount namespace");
        NobodyTree { dir, ns }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn mnt(&self) -> PathBuf {
        self.path().join("mnt")
    }

    /// Whether `mnt` is mounted in the private namespace.
    fn mounted(&self) -> bool {
        let text = std::fs::read_to_string(format!("/proc/{}/mountinfo", self.ns.id())).unwrap();
        let mnt = self.mnt();
        text.lines()
            .any(|l| l.split(' ').nth(4).is_some_and(|m| Path::new(m) == mnt))
    }

    /// `PROGRAM ARGS` as nobody in the private namespace.
    fn as_nobody(&self, program: &Path) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--target={}", self.ns.id()))
            .args([
                "--mount",
                "--",
                "setpriv",
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                "--",
            ])
            .arg(program)
            .current_dir(self.path())
            .stdin(Stdio::null());
        cmd
    }

    /// `eodata-mount ARGS` as nobody, against `double`.
    fn command(&self, double: &fake_creodias::Double) -> Command {
        let mut cmd = self.as_nobody(&self.path().join("eodata-mount"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.path().join("home"))
            .env("XDG_RUNTIME_DIR", self.path().join("run"))
            .env("EODATA_CONFIG", self.path().join("secrets.conf"))
            .env("EODATA_TOKEN_URL", double.token_url())
            .env("EODATA_DOWNLOAD_URL", double.download_template())
            .env("EODATA_CATALOGUE_URL", double.catalogue_url());
        cmd
    }

    /// A foreground mount as nobody, live and serving its user.
    fn mount(&self, double: &fake_creodias::Double) -> Guard {
        let child = self
            .command(double)
            .arg(self.mnt())
            .args(["--foreground", "-v", "--product", TUTORIAL_ID])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut g = Guard { child };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.mounted() {
            if let Some(status) = g.child.try_wait().unwrap() {
                let err = lines(g.child.stderr.take().unwrap()).join("\n");
                panic!("the mount exited with {status} before mounting: {err}");
            }
            assert!(Instant::now() < deadline, "no mount within 60 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        let listing = self
            .as_nobody(Path::new("ls"))
            .arg(self.mnt())
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&listing.stdout).contains(TUTORIAL_NAME),
            "{listing:?}"
        );
        g
    }
}

impl Drop for NobodyTree {
    fn drop(&mut self) {
        // The namespace, and any mount left in it, goes with its last process.
        let _ = self.ns.kill();
        let _ = self.ns.wait();
    }
}

/// The mount's process (nsenter execs setpriv, which execs the mount), killed if a test
/// fails.
struct Guard {
    child: Child,
}

impl Guard {
    /// Waits up to 20 s for the process to end; its exit status and stderr.
    fn wait(&mut self) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let err = lines(self.child.stderr.take().unwrap()).join("\n");
                return (status, err);
            }
            assert!(
                Instant::now() < deadline,
                "the mount did not end within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_users_mount_stopped_by_sigterm_leaves_nothing_mounted() {
    if !support::fuse_or_skip() {
        return;
    }
    let products = products(1, 1);
    let double = start_double(double_config(Some(&products)));
    let tree = NobodyTree::new("666");
    let mut mount = tree.mount(&double);
    // SAFETY: kill(2) on our own child (nsenter and setpriv exec the mount in its place).
    unsafe { libc::kill(mount.child.id() as i32, libc::SIGTERM) };
    let (status, err) = mount.wait();
    assert!(status.success(), "{status}: {err}");
    assert!(!tree.mounted(), "nothing left mounted: {err}");
}

#[test]
fn eodata_mount_unmount_as_the_user() {
    if !support::fuse_or_skip() {
        return;
    }
    let products = products(1, 1);
    let double = start_double(double_config(Some(&products)));
    let tree = NobodyTree::new("666");
    let mut mount = tree.mount(&double);
    let out = tree
        .command(&double)
        .arg("unmount")
        .arg(tree.mnt())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!tree.mounted());
    let (status, err) = mount.wait();
    assert!(status.success(), "{status}: {err}");
    // Not mounted any more: one clear line.
    let again = tree
        .command(&double)
        .arg("unmount")
        .arg(tree.mnt())
        .output()
        .unwrap();
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("not mounted"), "{err}");
}

/// A user's mount may not register a backing file (the kernel wants CAP_SYS_ADMIN): a product
/// whole in its disk cache is read through the daemon, exact, and passthrough turns off, said
/// once in the log and in the status file.
#[test]
fn a_users_mount_reads_a_cached_product_through_the_daemon_saying_once_that_passthrough_is_off() {
    if !support::fuse_or_skip() {
        return;
    }
    let products = products(1, 4);
    let double = start_double(double_config(Some(&products)));
    let want = file_sha256(&product_file(&products, 0));
    let tree = NobodyTree::new("666");
    let mut mount = tree.mount(&double);
    let zip = tree.mnt().join(format!("{TUTORIAL_NAME}.zip"));
    let read = || {
        let out = tree
            .as_nobody(Path::new("sha256sum"))
            .arg(&zip)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert_eq!(text.split_whitespace().next(), Some(want.as_str()));
    };
    let status = || {
        let out = tree
            .as_nobody(Path::new("cat"))
            .arg(tree.mnt().join(".eodata-status"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    // Streamed and cached by the first read, whole on disk once assembled; passthrough is
    // off from the start (said once), and every read goes through the daemon.
    let deadline = Instant::now() + Duration::from_secs(30);
    read();
    while !status().contains("passthrough: off") {
        assert!(
            Instant::now() < deadline,
            "passthrough never tried:\n{}",
            status()
        );
        std::thread::sleep(Duration::from_millis(100));
        read();
    }
    read();
    read();
    let text = status();
    assert!(
        text.contains("passthrough: off (registering a backing file needs CAP_SYS_ADMIN"),
        "{text}"
    );
    assert!(text.contains("fs.passthrough_opens: 0"), "{text}");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(mount.child.id() as i32, libc::SIGTERM) };
    let (exit, err) = mount.wait();
    assert!(exit.success(), "{exit}: {err}");
    assert_eq!(err.matches("FUSE passthrough off").count(), 1, "{err}");
}

/// A background mount without --log-file keeps its log, 0600, under
/// $XDG_STATE_HOME/eodata-mount/, says so in `.eodata-status`, and never writes through a
/// symlink planted where its log goes.
#[test]
fn a_background_mount_keeps_its_log_in_the_state_dir() {
    if !support::fuse_or_skip() {
        return;
    }
    let products = products(1, 1);
    let double = start_double(double_config(Some(&products)));
    let ws = Workspace::new();
    let mnt = ws.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let state = ws.path().join("state");
    let out = ws
        .command(&double)
        .env("XDG_STATE_HOME", &state)
        .arg(&mnt)
        .args(["-v", "--product", TUTORIAL_ID])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            if is_mounted(self.0) {
                let _ = Command::new("umount").arg("-l").arg(self.0).status();
            }
        }
    }
    let _guard = Unmount(&mnt);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = state.join("eodata-mount");
    let logs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(logs.len(), 1, "{logs:?}");
    let log = &logs[0];
    let mode = std::fs::metadata(log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", log.display());
    let dir_mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700);
    let text = std::fs::read_to_string(log).unwrap();
    assert!(text.contains("mounted on"), "{text}");
    assert!(!text.contains('\x1b'), "no colour codes: {text}");
    let status = std::fs::read_to_string(mnt.join(".eodata-status")).unwrap();
    assert!(
        status.contains(&format!("log: {}", log.display())),
        "{status}"
    );
    let un = ws.run(&double, &["unmount", mnt.to_str().unwrap()]);
    assert!(un.status.success(), "{un:?}");
    assert!(!is_mounted(&mnt));

    // A symlink where the log goes: refused, its target untouched, nothing mounted.
    let target = ws.path().join("target");
    std::fs::write(&target, b"keep").unwrap();
    std::fs::remove_file(log).unwrap();
    std::os::unix::fs::symlink(&target, log).unwrap();
    let out = ws
        .command(&double)
        .env("XDG_STATE_HOME", &state)
        .arg(&mnt)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    assert!(!is_mounted(&mnt));
}

/// A /dev/fuse closed to the user is said as such, before any login.
#[test]
fn a_closed_dev_fuse_is_said_before_logging_in() {
    if !support::fuse_or_skip() {
        return;
    }
    let products = products(1, 1);
    let double = start_double(double_config(Some(&products)));
    let tree = NobodyTree::new("600");
    let out = tree
        .command(&double)
        .arg(tree.mnt())
        .arg("--foreground")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/dev/fuse is not open to this user"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(password_logins(&double.log()).is_empty(), "no login");
    assert!(!tree.mounted());
}

/// A session as a user runs it (default verbosity, a copy, an unmount from outside) leaves no
/// warning in its log: fuser's "[Not Implemented] flush" at the first close and its false
/// "Failed to umount filesystem" after an outside unmount are gone.
#[test]
fn a_plain_session_logs_no_warning() {
    if !support::fuse_or_skip() {
        return;
    }
    let products = products(1, 1);
    let double = start_double(double_config(Some(&products)));
    let ws = Workspace::new();
    let dir = ws.path().join("mnt");
    std::fs::create_dir_all(&dir).unwrap();
    let log = ws.path().join("session.log");
    let mut child = ws
        .command(&double)
        .arg(&dir)
        .args(["--foreground", "--no-tree", "--log-file"])
        .arg(&log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !(is_mounted(&dir) && std::fs::read_dir(&dir).is_ok()) {
        assert!(started.elapsed() < Duration::from_secs(30), "not mounted");
        std::thread::sleep(Duration::from_millis(50));
    }
    let name = index(&products)[0]["Name"].as_str().unwrap().to_string();
    let copy = ws.path().join("copy.zip");
    sh(Command::new("cp")
        .arg(dir.join(format!("{name}.zip")))
        .arg(&copy));
    assert_eq!(file_sha256(&copy), file_sha256(&product_file(&products, 0)));
    sh(Command::new("fusermount3").arg("-u").arg(&dir));
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !text.contains("WARN") && !text.contains("ERROR"),
        "warnings in a plain session's log:\n{text}"
    );
}
