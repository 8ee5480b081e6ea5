//! Everything about the mountpoint that is not FUSE itself: checking it before mounting,
//! recognising a stale mount left by a killed process, unmounting on a signal, and raising the
//! kernel's read-ahead on the mount.
//!
//! The rule is "nothing mounted half-way, no stale mountpoint left": every check happens before
//! mount(2), and a mount of ours whose process died is cleaned (it cannot be in use by anyone:
//! every access to it fails with ENOTCONN).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The filesystem type our mounts carry in /proc/mounts (`fuse.` + the FUSE subtype), by which a
/// stale mount is recognised as ours and so safe to clean.
pub const FS_SUBTYPE: &str = "eodata-mount";

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
    pub mount_point: PathBuf,
    pub fstype: String,
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
            let mount_point = left.split(' ').nth(4)?;
            let fstype = right.split(' ').next()?;
            Some(MountEntry {
                mount_point: unescape_mountinfo(mount_point),
                fstype: fstype.to_string(),
            })
        })
        .collect()
}

/// The mount at exactly `path`, if any (the last one wins, as the kernel stacks them).
pub fn mount_at(path: &Path) -> Option<MountEntry> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_mountinfo(&text)
        .into_iter()
        .filter(|m| m.mount_point == path)
        .last()
}

/// Check `path` before mounting and return it absolute. Cleans a stale mount of ours.
pub fn prepare(path: &Path) -> Result<PathBuf, MountpointError> {
    let shown = path.display().to_string();
    let abs = std::path::absolute(path).map_err(|source| MountpointError::Io {
        path: shown.clone(),
        source,
    })?;
    match std::fs::metadata(&abs) {
        Ok(meta) if !meta.is_dir() => return Err(MountpointError::NotADirectory(shown)),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(MountpointError::Missing(shown))
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            let ours = mount_at(&abs).is_some_and(|m| m.fstype == format!("fuse.{FS_SUBTYPE}"));
            if !ours {
                return Err(MountpointError::Stale(shown));
            }
            // Ours and dead: nobody can be using it (every access fails), so detaching is safe.
            lazy_unmount(&abs).map_err(|_| MountpointError::Stale(shown.clone()))?;
            tracing::warn!(
                "cleaned a stale eodata-mount mount left on {shown} by a process that died"
            );
            return prepare(path);
        }
        Err(source) => {
            return Err(MountpointError::Io {
                path: shown,
                source,
            })
        }
    }
    let abs = abs.canonicalize().map_err(|source| MountpointError::Io {
        path: shown.clone(),
        source,
    })?;
    if let Some(m) = mount_at(&abs) {
        return Err(MountpointError::AlreadyMounted {
            path: abs.display().to_string(),
            fstype: m.fstype,
        });
    }
    Ok(abs)
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

/// Unmount on shutdown: a plain unmount when nothing is open, else detach (readers of open
/// files then get an error when this process exits, instead of hanging).
pub fn unmount(path: &Path) -> io::Result<()> {
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

/// The kernel's read-ahead for a FUSE mount defaults to 128 KiB, which caps each read request
/// at 128 KiB; 1 MiB (the FUSE max_pages cap of 256 pages) means 8x fewer round trips through
/// the FUSE loop for sequential readers. Only root may write it; elsewhere this is a no-op.
const READ_AHEAD_KB: u32 = 1024;

/// Raise the read-ahead of the mount at `path` (see [`READ_AHEAD_KB`]). Best effort.
pub fn raise_read_ahead(path: &Path) {
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    let dev = meta.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let knob = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
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
        let text = "36 35 98:0 / /mnt/a\\040b rw,noatime master:1 - fuse.eodata-mount eodata rw\n\
                    22 1 0:21 / /proc rw - proc proc rw\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, PathBuf::from("/mnt/a b"));
        assert_eq!(m[0].fstype, "fuse.eodata-mount");
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
