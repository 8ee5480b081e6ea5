//! System integration: an `/etc/fstab`-style line mounts through util-linux `mount` and
//! fuse3's `mount.fuse3` helper (a temporary fstab via `mount -T`), options and all; the
//! shipped systemd units pass `systemd-analyze verify`; completions and the man page are
//! generated.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

/// Unmounts on drop, so a failed assertion leaves no mount behind.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// The secrets.conf of `ws` plus the double's endpoints: `mount` runs the helper with a
/// cleaned environment, so everything must come from the file named by `config=`.
fn secrets_with_endpoints(ws: &Workspace, double: &fake_creodias::Double) -> PathBuf {
    let secrets = std::fs::read_to_string(ws.secrets()).unwrap();
    ws.write_secrets(&format!(
        "{secrets}\n[endpoints]\ntoken_url = {}\ndownload_url = {}\ncatalogue_url = {}\n",
        double.token_url(),
        double.download_template(),
        double.catalogue_url()
    ));
    ws.secrets()
}

#[test]
fn an_fstab_line_mounts_with_mount_and_unmounts_with_umount() {
    if !support::fuse_or_skip() {
        return;
    }
    assert!(
        Path::new("/sbin/mount.fuse3").exists(),
        "fuse3's mount helper is missing (scripts/install-deps installs fuse3)"
    );
    let products = products(2, 48);
    let double = start_double(double_config(Some(&products)));
    let ws = Workspace::new();
    let secrets = secrets_with_endpoints(&ws, &double);
    let mnt = ws.path().join("eodata");
    std::fs::create_dir_all(&mnt).unwrap();
    let _guard = Unmount(mnt.clone());
    // The `PROGRAM#SOURCE` form names the binary by path (the `fuse.eodata-mount` type form
    // needs it on mount.fuse3's fixed PATH, i.e. installed); options as an admin would write
    // them, including ones only mount and systemd read.
    let fstab = ws.path().join("fstab");
    std::fs::write(
        &fstab,
        format!(
            "# eodata-mount test fstab\n{}#eodata {} fuse \
             _netdev,nofail,x-systemd.automount,noexec,config={},product={TUTORIAL_ID},cache_size=64,allow_other 0 0\n",
            env!("CARGO_BIN_EXE_eodata-mount"),
            mnt.display(),
            secrets.display()
        ),
    )
    .unwrap();
    let out = Command::new("mount")
        .arg("-T")
        .arg(&fstab)
        .arg(&mnt)
        .current_dir(ws.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mount failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // mount returns once the mount is live (the helper waits for our background start).
    assert!(is_mounted(&mnt));
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = mountinfo
        .lines()
        .find(|l| l.contains(&*mnt.to_string_lossy()))
        .unwrap()
        .to_string();
    assert!(line.contains(" - fuse eodata-mount "), "{line}");
    assert!(
        line.contains("allow_other"),
        "allow_other reached the kernel: {line}"
    );
    assert!(line.contains("noexec"), "{line}");

    let file = mnt.join(format!("{TUTORIAL_NAME}.zip"));
    let copy = ws.path().join("copy.zip");
    sh(Command::new("cp").arg(&file).arg(&copy));
    let local = products.join(index(&products)[0]["file"].as_str().unwrap());
    assert_eq!(file_sha256(&copy), file_sha256(&local));

    sh(Command::new("umount").arg(&mnt));
    assert!(!is_mounted(&mnt));
}

#[test]
fn the_systemd_units_verify() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/systemd");
    for unit in ["eodata-mount.service", "user/eodata-mount.service"] {
        let path = dir.join(unit);
        assert!(path.exists(), "{} missing", path.display());
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg("--man=no")
            .arg(&path)
            .output()
            .expect("systemd-analyze");
        let err = String::from_utf8_lossy(&out.stderr);
        // Only what concerns our unit: verify also reports on the host's own units.
        let ours: Vec<&str> = err
            .lines()
            .filter(|l| l.contains("eodata-mount.service"))
            // The binary is not installed where the units expect it on a build machine.
            .filter(|l| !l.contains("eodata-mount is not executable"))
            .collect();
        assert!(ours.is_empty(), "{unit}: {err}");
    }
}

#[test]
fn completions_and_the_man_page_are_generated() {
    let ws = Workspace::new();
    let double = start_double(double_config(None));
    for shell in ["bash", "zsh", "fish"] {
        let out = ws.run(&double, &["completions", shell]);
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("listing-ttl"), "{shell}: {text}");
    }
    let out = ws.run(&double, &["man"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(".TH eodata-mount 1"), "{text}");
    assert!(text.contains("query"));
    for section in [
        "NAME",
        "SYNOPSIS",
        "OPTIONS",
        "EXAMPLES",
        "FILES",
        "ENVIRONMENT",
        "EXIT STATUS",
        "SEE ALSO",
    ] {
        assert!(text.contains(&format!(".SH {section}")), "no {section}");
    }
    // SEE ALSO names pages that exist here (install-deps installs their packages).
    let see_also = text.split(".SH SEE ALSO").nth(1).unwrap();
    let see_also = see_also.split(".SH").next().unwrap();
    let mut named = 0;
    for part in see_also.split("\\fB").skip(1) {
        let (page, rest) = part.split_once("\\fR(").unwrap();
        let section = &rest[..1];
        let path = format!("/usr/share/man/man{section}/{page}.{section}.gz");
        assert!(
            std::path::Path::new(&path).exists(),
            "SEE ALSO {page}({section}): no {path}"
        );
        named += 1;
    }
    assert!(named >= 4, "{see_also}");
}
