//! Log output: `-v` levels, `RUST_LOG`, where the lines go (standard error, `--log-file`, the
//! background mount's own file, or syslog), and a hard cap on the HTTP stack's own logging.
//!
//! Our code logs URLs only through `eodata_auth::redact_url` and secrets only as `***`. The HTTP
//! crates underneath do not know which query parameter is a token, and at debug/trace level they
//! print URLs and headers; so their level is capped at `warn` whatever the user asks for. This
//! is what lets us promise that no token appears in a log line at any verbosity.
//!
//! A background mount has no terminal, so without `--log-file` it keeps its log in
//! `$XDG_STATE_HOME/eodata-mount/` (else `~/.local/state/eodata-mount/`), one file per
//! mountpoint. Log files are created 0600 (a log may name the products a user reads), are never
//! opened through a symlink (another user could otherwise aim our writes at any file we may
//! write), carry no colour codes, and are rotated to `<file>.1` past [`LOG_MAX_BYTES`].

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use anyhow::Context;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// Crates that may print request URLs or headers (and so tokens) at debug or trace level.
const CAPPED_CRATES: &[&str] = &["hyper", "hyper_util", "reqwest", "h2", "rustls"];

/// Size in bytes past which a log file is moved to `<file>.1` (replacing the previous one) and
/// started afresh: 10 MiB holds days of a mount's warn/info lines, and two of them bound the
/// disk a forgotten `-vv` mount can take to 20 MiB.
const LOG_MAX_BYTES: u64 = 10 << 20;

/// Where log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Stderr,
    File(PathBuf),
    Syslog,
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Stderr => f.write_str("standard error"),
            Destination::File(p) => write!(f, "{}", p.display()),
            Destination::Syslog => f.write_str("syslog (journalctl -t eodata-mount)"),
        }
    }
}

static DESTINATION: OnceLock<Destination> = OnceLock::new();

/// Where this process logs (for `.eodata-status`); standard error before [`init`].
pub fn destination() -> Destination {
    DESTINATION.get().cloned().unwrap_or(Destination::Stderr)
}

/// The background mount's log file for `mountpoint` when no `--log-file` is given:
/// `$XDG_STATE_HOME/eodata-mount/<mountpoint as a name>.log`, e.g. `mnt-eodata.log` for
/// `/mnt/eodata`.
pub fn default_log_file(mountpoint: &Path) -> Option<PathBuf> {
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .map(|h| h.join(".local/state"))
        })?;
    let abs = std::path::absolute(mountpoint).ok()?;
    let abs = abs.canonicalize().unwrap_or(abs);
    Some(
        state
            .join("eodata-mount")
            .join(format!("{}.log", file_name_for(&abs))),
    )
}

/// A path as one file name: `/mnt/eodata` -> `mnt-eodata`; anything but letters, digits, `.`,
/// `_` and `-` becomes `_`.
fn file_name_for(path: &Path) -> String {
    let text = path.to_string_lossy();
    let name: String = text
        .trim_matches('/')
        .chars()
        .map(|c| match c {
            '/' => '-',
            c if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' => c,
            _ => '_',
        })
        .collect();
    match name.trim_start_matches('.') {
        "" => "root".to_string(),
        n => n.to_string(),
    }
}

/// Install the global subscriber. `verbose` counts `-v` flags.
pub fn init(verbose: u8, destination: Destination) -> anyhow::Result<()> {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let mut filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new(level));
    for krate in CAPPED_CRATES {
        filter = filter.add_directive(format!("{krate}=warn").parse().expect("static directive"));
    }
    // fuser's session warns "Failed to umount filesystem: Invalid argument" whenever the mount
    // was unmounted from outside (fusermount3 -u, `eodata-mount unmount`, umount: the normal way
    // to stop a mount), because it unmounts again on the way out; the warning is its only one,
    // and it is false. Its errors still show.
    filter = filter.add_directive("fuser::session=error".parse().expect("static directive"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match &destination {
        Destination::File(path) => {
            let file = RotatingFile::open(path)?;
            builder.with_ansi(false).with_writer(file).init();
        }
        Destination::Syslog => {
            // The journal stamps the time and the program; the level is the priority.
            builder
                .with_ansi(false)
                .without_time()
                .with_level(false)
                .with_writer(Syslog::open())
                .init();
        }
        Destination::Stderr => builder.with_writer(std::io::stderr).init(),
    }
    let _ = DESTINATION.set(destination);
    Ok(())
}

/// Opens a log file for appending: created 0600, never through a symlink.
fn open_log(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                anyhow::anyhow!(
                    "cannot open log file {}: it is a symbolic link, which is never followed",
                    path.display()
                )
            } else {
                anyhow::Error::new(e).context(format!("cannot open log file {}", path.display()))
            }
        })
}

/// A log file that moves itself to `<file>.1` past [`LOG_MAX_BYTES`].
struct RotatingFile {
    path: PathBuf,
    state: Mutex<(File, u64)>,
}

impl RotatingFile {
    fn open(path: &Path) -> anyhow::Result<RotatingFile> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .with_context(|| format!("cannot create log directory {}", dir.display()))?;
            }
        }
        let mut file = open_log(path)?;
        let mut len = file.metadata()?.len();
        if len > LOG_MAX_BYTES {
            file = rotate(path)?;
            len = 0;
        }
        Ok(RotatingFile {
            path: path.to_path_buf(),
            state: Mutex::new((file, len)),
        })
    }
}

/// `path` -> `path.1`, and a fresh `path`.
fn rotate(path: &Path) -> anyhow::Result<File> {
    let old = PathBuf::from(format!("{}.1", path.display()));
    std::fs::rename(path, &old)
        .with_context(|| format!("cannot rotate log file {}", path.display()))?;
    open_log(path)
}

/// One formatted event, written to the file in one `write` when dropped.
struct LogLine<'a> {
    file: &'a RotatingFile,
    buf: Vec<u8>,
}

impl Write for LogLine<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine<'_> {
    fn drop(&mut self) {
        let mut state = self.file.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.1 + self.buf.len() as u64 > LOG_MAX_BYTES {
            if let Ok(f) = rotate(&self.file.path) {
                *state = (f, 0);
            }
        }
        if state.0.write_all(&self.buf).is_ok() {
            state.1 += self.buf.len() as u64;
        }
    }
}

impl<'a> MakeWriter<'a> for RotatingFile {
    type Writer = LogLine<'a>;
    fn make_writer(&'a self) -> Self::Writer {
        LogLine {
            file: self,
            buf: Vec::with_capacity(256),
        }
    }
}

/// Lines to syslog(3) (the journal on systemd), with the event's level as the priority.
struct Syslog;

impl Syslog {
    fn open() -> Syslog {
        static IDENT: &std::ffi::CStr = c"eodata-mount";
        // SAFETY: openlog keeps the pointer; IDENT is a static that lives for the program.
        unsafe { libc::openlog(IDENT.as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
        Syslog
    }
}

/// One event for syslog, sent when dropped.
struct SyslogLine {
    priority: libc::c_int,
    buf: Vec<u8>,
}

impl Write for SyslogLine {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogLine {
    fn drop(&mut self) {
        let text: Vec<u8> = self
            .buf
            .iter()
            .copied()
            .filter(|&b| b != 0 && b != b'\n')
            .collect();
        if let Ok(c) = std::ffi::CString::new(text) {
            // SAFETY: a constant "%s" format with one NUL-terminated argument.
            unsafe { libc::syslog(self.priority, c"%s".as_ptr(), c.as_ptr()) };
        }
    }
}

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = SyslogLine;
    fn make_writer(&'a self) -> Self::Writer {
        SyslogLine {
            priority: libc::LOG_INFO,
            buf: Vec::new(),
        }
    }
    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        let priority = match *meta.level() {
            tracing::Level::ERROR => libc::LOG_ERR,
            tracing::Level::WARN => libc::LOG_WARNING,
            tracing::Level::INFO => libc::LOG_INFO,
            _ => libc::LOG_DEBUG,
        };
        SyslogLine {
            priority,
            buf: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn mountpoints_become_file_names() {
        assert_eq!(file_name_for(Path::new("/mnt/eodata")), "mnt-eodata");
        assert_eq!(file_name_for(Path::new("/home/a b/.x")), "home-a_b-.x");
        assert_eq!(file_name_for(Path::new("/")), "root");
    }

    #[test]
    fn log_files_are_private_rotated_and_never_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new/sub/x.log");
        let f = RotatingFile::open(&path).unwrap();
        f.make_writer().write_all(b"one\n").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        drop(f);

        std::fs::write(&path, vec![b'x'; LOG_MAX_BYTES as usize + 1]).unwrap();
        let f = RotatingFile::open(&path).unwrap();
        f.make_writer().write_all(b"fresh\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"fresh\n");
        assert!(PathBuf::from(format!("{}.1", path.display())).exists());

        let target = dir.path().join("target");
        std::fs::write(&target, b"keep").unwrap();
        let link = dir.path().join("link.log");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = RotatingFile::open(&link).err().unwrap().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    }
}
