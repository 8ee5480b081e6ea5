//! Everything about the mountpoint that is not FUSE itself: checking it before mounting,
//! recognising a stale mount left by a killed process, unmounting on a signal (as a user
//! through the setuid `fusermount3`), and raising the kernel's read-ahead on the mount.
//!
//! The rule is "nothing mounted half-way, no stale mountpoint left": every check happens before
//! mount(2), and a mount of ours whose process died is cleaned (it cannot be in use by anyone:
//! every access to it fails with ENOTCONN).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The source name our mounts carry in /proc/mounts, by which a stale mount is recognised as
/// ours and so safe to clean. (The type is `fuse` when root mounts with mount(2) directly and
/// `fuse.eodata-mount` through fusermount3; the source is the same either way.)
pub const FS_NAME: &str = "eodata-mount";

/// Why a mountpoint cannot be used. Each message is one line that says what to do.
#[derive(Debug, thiserror::Error)]
pub enum MountpointError {
    #[error("mountpoint {0} does not exist; create it with: mkdir -p {0}")]
    Missing(String),
    #[error("mountpoint {0} is not a directory")]
    NotADirectory(String),
    #[error("mountpoint {path} is already mounted ({fstype}); unmount it first: umount {path}")]
    AlreadyMounted { path: String, fstype: String },
    #[error("mountpoint {0} is a stale FUSE mount left by a process that died (Transport endpoint is not connected); clean it with: fusermount3 -u {0}  (or: umount -l {0})")]
    Stale(String),
    #[error("mountpoint {path}: {source}")]
    Io { path: String, source: io::Error },
}

/// One line of /proc/self/mountinfo that matters here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// `major:minor` of the mount's device (field 3), which names its bdi in sysfs.
    pub device: String,
    pub mount_point: PathBuf,
    pub fstype: String,
    /// The mount source (for FUSE: the FSName option).
    pub source: String,
}

/// Undo the octal escapes (`\040` for a space) the kernel writes in mountinfo paths.
fn unescape_mountinfo(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            if let Some(v) = std::str::from_utf8(&bytes[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    PathBuf::from(std::ffi::OsStr::from_bytes(&out))
}

/// Parse mountinfo text: field 5 is the mount point, the first field after ` - ` the type.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fields: Vec<&str> = left.split(' ').collect();
            let mut right = right.split(' ');
            let fstype = right.next()?;
            let source = right.next().unwrap_or("");
            Some(MountEntry {
                device: fields.get(2)?.to_string(),
                mount_point: unescape_mountinfo(fields.get(4)?),
                fstype: fstype.to_string(),
                source: unescape_mountinfo(source).to_string_lossy().into_owned(),
            })
        })
        .collect()
}

/// The mount at exactly `path`, if any (the last one wins, as the kernel stacks them).
pub fn mount_at(path: &Path) -> Option<MountEntry> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_mountinfo(&text)
        .into_iter()
        .rfind(|m| m.mount_point == path)
}

/// Check `path` before mounting and return it absolute. Cleans a stale mount of ours.
pub fn prepare(path: &Path) -> Result<PathBuf, MountpointError> {
    let shown = path.display().to_string();
    let io = |source| MountpointError::Io {
        path: shown.clone(),
        source,
    };
    let abs = std::path::absolute(path).map_err(io)?;
    match std::fs::metadata(&abs) {
        Ok(meta) if !meta.is_dir() => return Err(MountpointError::NotADirectory(shown)),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(MountpointError::Missing(shown))
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            clean_stale(&abs, &shown)?;
            return prepare(path);
        }
        Err(source) => return Err(io(source)),
    }
    let abs = abs.canonicalize().map_err(io)?;
    if let Some(m) = mount_at(&abs) {
        // stat(2) of a dead FUSE mount can still succeed from the kernel's attribute cache;
        // opening the directory always asks the daemon, and fails when it is gone.
        if std::fs::read_dir(&abs).is_err_and(|e| e.raw_os_error() == Some(libc::ENOTCONN)) {
            clean_stale(&abs, &shown)?;
            return prepare(path);
        }
        return Err(MountpointError::AlreadyMounted {
            path: abs.display().to_string(),
            fstype: m.fstype,
        });
    }
    Ok(abs)
}

/// Whether the directory holds anything: mounting over it would hide its files, which FUSE
/// refuses without `-o nonempty`.
pub fn is_nonempty(dir: &Path) -> Result<bool, MountpointError> {
    let mut entries = std::fs::read_dir(dir).map_err(|source| MountpointError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    Ok(entries.next().is_some())
}

/// A mount at `abs` whose daemon died: detach it if it is ours (nobody can be using it, since
/// every access fails), else say how to clean it.
fn clean_stale(abs: &Path, shown: &str) -> Result<(), MountpointError> {
    let ours = mount_at(abs).is_some_and(|m| m.fstype.starts_with("fuse") && m.source == FS_NAME);
    if !ours || lazy_unmount(abs).is_err() {
        return Err(MountpointError::Stale(shown.to_string()));
    }
    tracing::warn!("cleaned a stale eodata-mount mount left on {shown} by a process that died");
    Ok(())
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Detach the mount now; the kernel finishes it when the last user lets go.
pub fn lazy_unmount(path: &Path) -> io::Result<()> {
    let c = c_path(path)?;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The FUSE device: a mount needs it open for reading and writing (as a user too, since
/// fusermount3 opens it with the user's rights).
const FUSE_DEVICE: &str = "/dev/fuse";

/// Check, before logging in, that this user can use FUSE at all, so that a closed /dev/fuse
/// reads as what it is rather than "cannot mount on MNT: Permission denied".
pub fn check_fuse_device() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(FUSE_DEVICE)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => anyhow::bail!(
            "{FUSE_DEVICE} does not exist: load the fuse module (modprobe fuse), or in a container pass the device (docker run --device /dev/fuse)"
        ),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            let mode = std::fs::metadata(FUSE_DEVICE)
                .map(|m| format!("{:o}", m.permissions().mode() & 0o777))
                .unwrap_or_else(|_| "unknown".into());
            anyhow::bail!(
                "{FUSE_DEVICE} is not open to this user (mode {mode}; distributions make it 0666): ask the administrator to allow FUSE for users, or mount as root"
            )
        }
        Err(e) => anyhow::bail!("cannot open {FUSE_DEVICE}: {e}"),
    }
}

/// Whether this process mounts and unmounts with mount(2)/umount2(2) itself. Any other user
/// goes through the setuid `fusermount3`, as libfuse does.
pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Unmount on shutdown: a plain unmount when nothing is open, else detach (readers of open
/// files then get an error when this process exits, instead of hanging). As a user, through
/// `fusermount3 -u` (and `-z` to detach): umount2(2) always refuses a non-root caller.
pub fn unmount(path: &Path) -> io::Result<()> {
    if !is_root() {
        return fusermount_unmount(path);
    }
    let c = c_path(path)?;
    // SAFETY: as above.
    if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOENT) => Ok(()), // already gone
        _ => lazy_unmount(path),
    }
}

/// `fusermount3 -u PATH`, then `-u -z` if the mount is busy. An error carries fusermount's
/// own words.
fn fusermount_unmount(path: &Path) -> io::Result<()> {
    let mut last = String::new();
    for lazy in [false, true] {
        let mut cmd = fusermount_command()?;
        cmd.arg("-u").arg("-q");
        if lazy {
            cmd.arg("-z");
        }
        let out = cmd.arg("--").arg(path).output()?;
        if out.status.success() {
            return Ok(());
        }
        if mount_at(path).is_none() {
            return Ok(()); // gone meanwhile
        }
        last = String::from_utf8_lossy(&out.stderr).trim().to_string();
    }
    Err(io::Error::other(if last.is_empty() {
        "fusermount3 -u failed".to_string()
    } else {
        last
    }))
}

/// The setuid helper that mounts and unmounts FUSE for users: `fusermount3`, or the older
/// `fusermount`, from PATH.
fn fusermount_command() -> io::Result<std::process::Command> {
    for name in ["fusermount3", "fusermount"] {
        let found = std::env::var_os("PATH")
            .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(name).is_file()));
        if found {
            let mut cmd = std::process::Command::new(name);
            cmd.stdin(std::process::Stdio::null());
            return Ok(cmd);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        "fusermount3 not found: install fuse3 (it provides the setuid fusermount3 that lets users mount FUSE)",
    ))
}

/// The kernel's read-ahead for a FUSE mount defaults to 128 KiB, which caps each read request
/// at 128 KiB; 1 MiB (the FUSE max_pages cap of 256 pages) means 8x fewer round trips through
/// the FUSE loop for sequential readers. Only root may write it; elsewhere this is a no-op.
const READ_AHEAD_KB: u32 = 1024;

/// Raise the read-ahead of the mount at `path` (see [`READ_AHEAD_KB`]). Best effort.
///
/// The device number comes from mountinfo, not from stat(2): stat of the mountpoint would be a
/// FUSE request to ourselves, and this runs before the session loop that would answer it.
pub fn raise_read_ahead(path: &Path) {
    let Some(entry) = mount_at(path) else {
        return;
    };
    let knob = format!("/sys/class/bdi/{}/read_ahead_kb", entry.device);
    match std::fs::write(&knob, READ_AHEAD_KB.to_string()) {
        Ok(()) => tracing::debug!(
            "read-ahead of {} raised to {READ_AHEAD_KB} KiB",
            path.display()
        ),
        Err(e) => tracing::debug!("could not raise read-ahead ({knob}): {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_are_parsed_with_escapes() {
        let text =
            "36 35 98:0 / /mnt/a\\040b rw,noatime master:1 - fuse.eodata-mount eodata-mount rw\n\
                    22 1 0:21 / /proc rw - proc proc rw\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, PathBuf::from("/mnt/a b"));
        assert_eq!(m[0].fstype, "fuse.eodata-mount");
        assert_eq!(m[0].device, "98:0");
        assert_eq!(m[0].source, "eodata-mount");
        assert_eq!(m[1].fstype, "proc");
    }

    #[test]
    fn prepare_rejects_missing_and_files_and_mounted() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        assert!(matches!(
            prepare(&missing),
            Err(MountpointError::Missing(_))
        ));
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(
            prepare(&file),
            Err(MountpointError::NotADirectory(_))
        ));
        assert!(matches!(
            prepare(Path::new("/proc")),
            Err(MountpointError::AlreadyMounted { .. })
        ));
        assert!(prepare(dir.path()).is_ok());
    }
}
