//! The doctor's look at this machine: what a FUSE mount needs from the kernel and the system
//! (`/dev/fuse` usable by this user, `fusermount3` for users other than root, `user_allow_other`
//! for `--allow-other`), the kernel's FUSE passthrough, and the disk cache's directory and room.

use std::ffi::CStr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::report::Section;

/// The FUSE device every mount opens.
const FUSE_DEVICE: &str = "/dev/fuse";

/// The first kernel whose FUSE can hand reads of a file to a backing file (passthrough).
const PASSTHROUGH_SINCE: (u32, u32) = (6, 9);

/// Less free room than this in the cache's filesystem is worth a warning: a few products of a
/// typical Sentinel-2 size (~800 MiB) would not fit.
const LOW_FREE_BYTES: u64 = 4 << 30;

pub fn check() -> Section {
    let mut s = Section::new("this machine");
    let root = unsafe { libc::geteuid() } == 0;
    fuse_device(&mut s);
    fusermount(&mut s, root);
    allow_other(&mut s, root);
    kernel(&mut s);
    cache_dir(&mut s);
    s
}

fn fuse_device(s: &mut Section) {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(FUSE_DEVICE)
    {
        Ok(_) => s.ok(
            "fuse device",
            format!("{FUSE_DEVICE} opens for reading and writing"),
        ),
        Err(e) => {
            let what = match e.kind() {
                std::io::ErrorKind::NotFound => format!(
                    "{FUSE_DEVICE} does not exist: load the module (modprobe fuse) or, in a container, pass the device (--device /dev/fuse)"
                ),
                std::io::ErrorKind::PermissionDenied => format!(
                    "{FUSE_DEVICE} is not usable by this user (permission denied): a mount would fail; ask the administrator to make it mode 0666 (the usual) or to add you to the group that owns it"
                ),
                _ => format!("{FUSE_DEVICE} cannot be opened: {e}"),
            };
            s.fail("fuse device", what);
        }
    }
}

fn fusermount(s: &mut Section, root: bool) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/bin")])
        .map(|d| d.join("fusermount3"))
        .find(|p| p.is_file());
    let Some(path) = found else {
        if root {
            s.ok(
                "fusermount3",
                "not found; not needed as root (root mounts directly)",
            );
        } else {
            s.fail(
                "fusermount3",
                "not found: users other than root mount through it; install fuse3",
            );
        }
        return;
    };
    let meta = std::fs::metadata(&path).ok();
    let setuid = meta
        .as_ref()
        .is_some_and(|m| m.uid() == 0 && m.permissions().mode() & 0o4000 != 0);
    match (setuid, root) {
        (true, _) => s.ok("fusermount3", format!("{} (setuid root)", path.display())),
        (false, true) => s.ok(
            "fusermount3",
            format!(
                "{} is not setuid root; not needed as root",
                path.display()
            ),
        ),
        (false, false) => s.fail(
            "fusermount3",
            format!(
                "{} is not setuid root, so it cannot mount for you: chmod u+s it (as root) or reinstall fuse3",
                path.display()
            ),
        ),
    }
}

fn allow_other(s: &mut Section, root: bool) {
    let text = std::fs::read_to_string("/etc/fuse.conf").unwrap_or_default();
    let set = text
        .lines()
        .any(|l| l.split('#').next().unwrap_or("").trim() == "user_allow_other");
    match (set, root) {
        (true, _) => s.ok("user_allow_other", "set in /etc/fuse.conf"),
        (false, true) => s.ok(
            "user_allow_other",
            "not set in /etc/fuse.conf; not needed as root",
        ),
        (false, false) => s.warn(
            "user_allow_other",
            "not set in /etc/fuse.conf: --allow-other (other users reading the mount) would fail; a plain mount works",
        ),
    }
}

fn kernel(s: &mut Section) {
    let release = kernel_release().unwrap_or_else(|| "unknown".into());
    let passthrough = parse_version(&release).is_some_and(|v| v >= PASSTHROUGH_SINCE);
    // Registering a backing file takes CAP_SYS_ADMIN; root has it.
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    s.add_value(
        "kernel",
        super::report::Level::Ok,
        format!(
            "{release}; FUSE passthrough {}",
            match (passthrough, root) {
                (true, true) => "available: products whole in the disk cache are read by the \
                                 kernel directly",
                (true, false) => "available in the kernel, but it needs root: a user's mount \
                                  reads cached products through itself",
                (false, _) => "not available (needs kernel 6.9 or later): cached products are \
                               read through the mount",
            }
        ),
        serde_json::json!({"release": release, "passthrough": passthrough, "passthrough_usable": passthrough && root}),
    );
}

fn kernel_release() -> Option<String> {
    // SAFETY: uname fills the struct it is given; the release is a NUL-terminated string in it.
    unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) != 0 {
            return None;
        }
        Some(
            CStr::from_ptr(u.release.as_ptr())
                .to_string_lossy()
                .into_owned(),
        )
    }
}

/// `6.18.44-fc` -> (6, 18).
fn parse_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The disk cache's default place: `$XDG_CACHE_HOME/eodata-mount`, else
/// `~/.cache/eodata-mount`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    match env("XDG_CACHE_HOME").filter(|p| p.is_absolute()) {
        Some(d) => Some(d.join("eodata-mount")),
        None => env("HOME").map(|h| h.join(".cache").join("eodata-mount")),
    }
}

fn cache_dir(s: &mut Section) {
    let Some(dir) = default_cache_dir() else {
        s.warn(
            "cache dir",
            "neither XDG_CACHE_HOME nor HOME is set: no default place for the disk cache; give --cache-dir",
        );
        return;
    };
    // The directory itself may not exist yet (the first mount creates it): measure the
    // filesystem it would be on.
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    let state = if dir.is_dir() {
        "exists"
    } else {
        "not created yet"
    };
    match statvfs(existing) {
        Some((free, total)) => {
            let keep = (total as f64 * eodata_fetch::disk::KEEP_FREE) as u64;
            let usable = free.saturating_sub(keep);
            let text = format!(
                "{} ({state}); {} free on its filesystem; by default the cache uses at most {} (it keeps {:.0}% of the filesystem free; --cache-dir-size sets a limit)",
                dir.display(),
                gib(free),
                gib(usable),
                eodata_fetch::disk::KEEP_FREE * 100.0
            );
            let value = serde_json::json!({
                "path": dir, "exists": dir.is_dir(), "free_bytes": free, "usable_bytes": usable
            });
            let level = if free < LOW_FREE_BYTES {
                super::report::Level::Warn
            } else {
                super::report::Level::Ok
            };
            s.add_value("cache dir", level, text, value);
        }
        None => s.warn(
            "cache dir",
            format!("{} ({state}); free space unknown", dir.display()),
        ),
    }
}

/// Free bytes (for this user) and total bytes of the filesystem holding `path`.
fn statvfs(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into the struct it is given; `c` is a valid C string.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return None;
        }
        let frsize = st.f_frsize as u64;
        Some((st.f_bavail as u64 * frsize, st.f_blocks as u64 * frsize))
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(parse_version("6.18.44-fc-v1045"), Some((6, 18)));
        assert_eq!(parse_version("5.15.0-91-generic"), Some((5, 15)));
        assert_eq!(parse_version("garbage"), None);
        assert!((6, 9) >= PASSTHROUGH_SINCE && (5, 15) < PASSTHROUGH_SINCE);
    }
}
