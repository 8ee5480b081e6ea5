//! The token state shared by every process of one user: a private directory, a JSON state file
//! and a lock file.
//!
//! Several mounts, `download` commands and `token` commands may run at once for the same
//! account. Each password login opens a server session (CDSE caps them at 100) and consumes a
//! TOTP step, which no second login may reuse; so the processes agree through
//! `<dir>/<id>.json`, where `<id>` is the first 16 hex digits of sha256(user "\n" token_url):
//!
//! - the current tokens (short-lived; adopted by a process whose own are stale),
//! - the last TOTP step used (so no process reuses it),
//! - the last refusal, with a fingerprint of the credentials that were refused (so that other
//!   processes with the same credentials fail fast instead of hammering a locked account);
//! - the fingerprint of the credentials the tokens were obtained with, so that a process with
//!   other credentials (the password was changed) does not adopt them and logs in itself.
//!
//! The file never holds the password or the TOTP secret. Fingerprints are SHA-256 over a
//! random salt kept in the file, the user, the client id, the password and the TOTP secret:
//! the salt makes a precomputed table useless against an account without two-factor login.
//!
//! `<dir>/<id>.lock` is held exclusively (`flock`, through `File::try_lock`) for the whole of a
//! renewal, so sixteen processes renewing at once produce one login and fifteen adoptions. A
//! process waits for it at most [`LOCK_WAIT`], then renews without the shared cache.
//! The state file is replaced atomically (temporary file + rename), so a reader never sees half
//! a file; a file that does not parse is ignored and overwritten.
//!
//! Security: the directory must belong to the user and be closed to everybody else (mode 0700),
//! files are created 0600 and opened without following symlinks, so another local user can
//! neither read the tokens nor plant a file for us to trust.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::AuthError;

/// Format version of the state file. A file with another version is ignored and overwritten.
const STATE_VERSION: u32 = 1;

/// The longest wait for another process's renewal to release the lock. A renewal holds it
/// while it rides out a Keycloak outage (the refresh budget, 4 min) or waits for a TOTP step;
/// 5 min covers that, and a process stuck longer (a hung NFS home, a stopped process) does not
/// stop this one: it renews alone.
pub(crate) const LOCK_WAIT: Duration = Duration::from_secs(5 * 60);

/// How often a waiting process tries the lock again. A renewal by refresh takes milliseconds;
/// 50 ms keeps the wait short without spinning.
const LOCK_POLL: Duration = Duration::from_millis(50);

/// Root's cache directory when there is no `XDG_RUNTIME_DIR` (cron, system units): under
/// `/run`, which only root can write, so nobody can create it first. The system units declare
/// `RuntimeDirectory=eodata-mount` for it.
const ROOT_RUNTIME_DIR: &str = "/run/eodata-mount";

/// The cache directory used when none is configured: `$XDG_RUNTIME_DIR/eodata-mount` (a
/// per-user tmpfs, emptied at logout: the right home for short-lived tokens); else, for root,
/// `/run/eodata-mount`; else `<temp dir>/eodata-mount-<uid>`, which a user's cron jobs and login
/// shells find alike. [`crate::TokenManager::new`] creates it with mode 0700; if somebody else
/// owns it or can enter it (another user created it first), the manager warns and works
/// without the shared cache.
pub fn default_cache_dir() -> PathBuf {
    cache_dir_from(
        std::env::var_os("XDG_RUNTIME_DIR"),
        &std::env::temp_dir(),
        euid(),
    )
}

/// [`default_cache_dir`] without the environment, for tests. A relative `XDG_RUNTIME_DIR` is
/// invalid by the XDG spec and ignored.
fn cache_dir_from(xdg_runtime_dir: Option<std::ffi::OsString>, temp: &Path, uid: u32) -> PathBuf {
    match xdg_runtime_dir {
        Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir).join("eodata-mount"),
        _ if uid == 0 => PathBuf::from(ROOT_RUNTIME_DIR),
        _ => temp.join(format!("eodata-mount-{uid}")),
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn cache_error(path: &Path, reason: impl Into<String>) -> AuthError {
    AuthError::Cache {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Creates `dir` (mode 0700) if needed and checks that it is a real directory (not a symlink)
/// owned by this user and closed to group and others.
pub(crate) fn prepare_dir(dir: &Path) -> Result<(), AuthError> {
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) => {
            return Err(cache_error(
                dir,
                format!("cannot create the directory: {e}"),
            ))
        }
    }
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| cache_error(dir, format!("cannot inspect the directory: {e}")))?;
    if !meta.file_type().is_dir() {
        return Err(cache_error(
            dir,
            "is not a directory (a symlink?); remove it, choose another cache directory, or run with --no-token-cache",
        ));
    }
    if meta.uid() != euid() {
        return Err(cache_error(
            dir,
            format!(
                "belongs to uid {}, not to you (uid {}): another user could read or plant tokens; choose another cache directory or run with --no-token-cache",
                meta.uid(),
                euid()
            ),
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(cache_error(
            dir,
            format!(
                "has mode {:o}; tokens must not be readable by others: run `chmod 700 {}` or run with --no-token-cache",
                meta.mode() & 0o777,
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// Unix time in milliseconds, as stored in the file.
pub(crate) fn to_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis().min(u64::MAX as u128) as u64)
        .unwrap_or(0)
}

pub(crate) fn from_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// sha256 of `parts` joined by newlines, in hex.
pub(crate) fn sha256_hex(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h.update(b"\n");
        }
        h.update(p.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh random salt for the file's fingerprints, in hex.
pub(crate) fn new_salt() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A refusal remembered for other processes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct Refusal {
    /// The salted fingerprint of the refused credentials: see the module doc.
    pub fingerprint: String,
    /// When (Unix ms).
    pub at: u64,
    /// The server's words, shown to the user.
    pub reason: String,
}

/// The shared state file. All times are local Unix milliseconds (every process of the machine
/// shares the local clock).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct StateFile {
    pub version: u32,
    #[serde(default)]
    pub access_token: Option<String>,
    /// When the tokens were requested; lets a reader compute the token's lifetime (and so its
    /// renewal margin), and tells which of two refresh tokens is newer.
    #[serde(default)]
    pub obtained_at: Option<u64>,
    #[serde(default)]
    pub access_expires_at: Option<u64>,
    #[serde(default)]
    pub refresh_token: Option<String>,
    #[serde(default)]
    pub refresh_expires_at: Option<u64>,
    #[serde(default)]
    pub last_totp_step: Option<u64>,
    #[serde(default)]
    pub refusal: Option<Refusal>,
    /// Salt of the fingerprints in this file (hex); made at the first write.
    #[serde(default)]
    pub salt: Option<String>,
    /// Salted fingerprint of the credentials the tokens were obtained with.
    #[serde(default)]
    pub credentials: Option<String>,
    /// The refresh lifetime given at the login that opened the tokens' session (ms).
    #[serde(default)]
    pub session_lifetime_ms: Option<u64>,
    /// When the last password grant was sent by any process (Unix ms).
    #[serde(default)]
    pub last_password_at: Option<u64>,
}

impl Default for StateFile {
    /// An empty state of the current version.
    fn default() -> Self {
        StateFile {
            version: STATE_VERSION,
            access_token: None,
            obtained_at: None,
            access_expires_at: None,
            refresh_token: None,
            refresh_expires_at: None,
            last_totp_step: None,
            refusal: None,
            salt: None,
            credentials: None,
            session_lifetime_ms: None,
            last_password_at: None,
        }
    }
}

/// The state and lock files of one user at one token endpoint.
#[derive(Debug)]
pub(crate) struct SharedFile {
    state_path: PathBuf,
    lock_path: PathBuf,
}

/// Held while renewing; dropping it (closing the file) releases the lock, also when the process
/// dies.
#[derive(Debug)]
pub(crate) struct LockGuard {
    _file: File,
}

/// Makes temporary file names unique between the managers of one process (the pid separates
/// processes).
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl SharedFile {
    /// The files of the account `key` ([`super::store::account_key`]) in `dir`.
    pub(crate) fn new(dir: &Path, key: &str) -> Self {
        let id = key;
        SharedFile {
            state_path: dir.join(format!("{id}.json")),
            lock_path: dir.join(format!("{id}.lock")),
        }
    }

    pub(crate) fn state_path(&self) -> &Path {
        &self.state_path
    }

    /// Takes the exclusive lock, waiting (at most [`LOCK_WAIT`]) for another process's renewal
    /// to finish. The wait runs on the blocking pool. If the caller is cancelled meanwhile, the
    /// lock is taken and released at once by the blocking task.
    pub(crate) async fn lock(&self) -> Result<LockGuard, AuthError> {
        self.lock_within(LOCK_WAIT).await
    }

    pub(crate) async fn lock_within(&self, wait: Duration) -> Result<LockGuard, AuthError> {
        let path = self.lock_path.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let file = match open_private(&path, false) {
                // The directory vanished (a runtime directory removed at logout): make it
                // again, private, and retry once.
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    let dir = path.parent().unwrap_or(Path::new("."));
                    prepare_dir(dir).map_err(std::io::Error::other)?;
                    open_private(&path, false)?
                }
                other => other?,
            };
            let started = std::time::Instant::now();
            loop {
                match file.try_lock() {
                    Ok(()) => break,
                    Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < wait => {
                        std::thread::sleep(LOCK_POLL)
                    }
                    Err(std::fs::TryLockError::WouldBlock) => {
                        return Err(std::io::Error::new(
                            ErrorKind::TimedOut,
                            format!(
                                "another process has held it for {} s",
                                started.elapsed().as_secs()
                            ),
                        ))
                    }
                    Err(std::fs::TryLockError::Error(e)) => return Err(e),
                }
            }
            Ok::<_, std::io::Error>(file)
        })
        .await;
        match joined {
            Ok(Ok(file)) => Ok(LockGuard { _file: file }),
            Ok(Err(e)) => Err(cache_error(
                &self.lock_path,
                format!(
                    "cannot lock: {e}; run with --no-token-cache to work without the shared cache"
                ),
            )),
            Err(e) => Err(cache_error(
                &self.lock_path,
                format!("lock task failed: {e}"),
            )),
        }
    }

    /// The state file's bytes as another process left them, or `None` when there is none or
    /// it cannot be read (then it is overwritten by the next write).
    pub(crate) fn read_bytes(&self) -> Option<Vec<u8>> {
        match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&self.state_path)
        {
            Ok(mut file) => {
                let mut bytes = Vec::new();
                match std::io::Read::read_to_end(&mut file, &mut bytes) {
                    Ok(_) => Some(bytes),
                    Err(e) => {
                        tracing::debug!(path = %self.state_path.display(), "ignoring unreadable token cache: {e}");
                        None
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => {
                tracing::debug!(path = %self.state_path.display(), "ignoring unreadable token cache: {e}");
                None
            }
        }
    }

    /// The state, parsed ([`StateFile::parse`]).
    #[cfg(test)]
    pub(crate) fn read(&self) -> Option<StateFile> {
        StateFile::parse(&self.read_bytes()?)
    }

    #[cfg(test)]
    pub(crate) fn write(&self, state: &StateFile) -> Result<(), AuthError> {
        self.write_bytes(&state.encode())
    }

    /// Replaces the state file atomically: a 0600 temporary file beside it, then rename.
    pub(crate) fn write_bytes(&self, json: &[u8]) -> Result<(), AuthError> {
        let dir = self.state_path.parent().unwrap_or(Path::new("."));
        let name = self
            .state_path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("state");
        let tmp = dir.join(format!(
            ".{name}.{}.{}.tmp",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| {
            let mut file = open_private(&tmp, true)?;
            file.write_all(json)?;
            std::fs::rename(&tmp, &self.state_path)
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(cache_error(&self.state_path, format!("cannot write: {e}")));
        }
        Ok(())
    }
}

impl StateFile {
    /// The state in a document a store keeps, or `None` when it does not parse or is of
    /// another version (then it is ignored, and overwritten by the next write).
    pub(crate) fn parse(bytes: &[u8]) -> Option<StateFile> {
        match serde_json::from_slice::<StateFile>(bytes) {
            Ok(state) if state.version == STATE_VERSION => Some(state),
            Ok(state) => {
                tracing::debug!(
                    version = state.version,
                    "ignoring token state of another version"
                );
                None
            }
            Err(e) => {
                // Line and column only: serde's message could quote a token.
                tracing::debug!(
                    line = e.line(),
                    column = e.column(),
                    "ignoring corrupt token state"
                );
                None
            }
        }
    }

    /// The document a store keeps.
    pub(crate) fn encode(&self) -> Vec<u8> {
        // A struct of strings and numbers always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Opens (creating if needed) a file readable only by us, refusing symlinks. `new` demands that
/// the file not exist yet.
fn open_private(path: &Path, new: bool) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    if new {
        options.create_new(true);
    } else {
        options.create(true).truncate(false);
    }
    let file = options.open(path)?;
    // A file that existed before may have been created with a looser mode.
    let meta = file.metadata()?;
    if meta.permissions().mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_dir_prefers_the_runtime_dir() {
        let tmp = Path::new("/tmp");
        assert_eq!(
            cache_dir_from(Some("/run/user/1000".into()), tmp, 1000),
            Path::new("/run/user/1000/eodata-mount")
        );
        for bad in [None, Some("".into()), Some("relative".into())] {
            assert_eq!(
                cache_dir_from(bad.clone(), tmp, 1000),
                Path::new("/tmp/eodata-mount-1000")
            );
            // Root, from cron or a system unit: a directory nobody else can create first.
            assert_eq!(cache_dir_from(bad, tmp, 0), Path::new("/run/eodata-mount"));
        }
    }

    #[test]
    fn dir_is_created_private_and_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        prepare_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = prepare_dir(&dir).unwrap_err();
        assert!(e.to_string().contains("chmod 700"), "{e}");
        // A symlink to a good directory is refused: it could be swapped.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(prepare_dir(&link).is_err());
    }

    #[test]
    fn state_round_trips_with_private_mode_and_corruption_is_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cache");
        prepare_dir(&dir).unwrap();
        let shared = SharedFile::new(
            &dir,
            &super::super::store::account_key("user@example.com", "https://id.example/token"),
        );
        assert!(shared.read().is_none());
        let state = StateFile {
            access_token: Some("tok".into()),
            last_totp_step: Some(42),
            ..StateFile::default()
        };
        shared.write(&state).unwrap();
        assert_eq!(shared.read(), Some(state.clone()));
        let meta = std::fs::metadata(shared.state_path()).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        let name = shared.state_path().file_name().unwrap().to_str().unwrap();
        assert_eq!(name.len(), 16 + ".json".len());
        // No temporary files left behind.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);

        std::fs::write(shared.state_path(), b"{\"version\":1,\"access_token\":").unwrap();
        assert!(shared.read().is_none());
        shared.write(&state).unwrap();
        assert_eq!(shared.read(), Some(state.clone()));
        std::fs::write(shared.state_path(), br#"{"version":99}"#).unwrap();
        assert!(shared.read().is_none());
    }

    #[test]
    fn state_file_name_depends_on_user_and_url() {
        let d = Path::new("/x");
        let a = SharedFile::new(d, &super::super::store::account_key("u", "https://a/token"));
        let b = SharedFile::new(d, &super::super::store::account_key("u", "https://b/token"));
        let c = SharedFile::new(d, &super::super::store::account_key("v", "https://a/token"));
        assert_ne!(a.state_path, b.state_path);
        assert_ne!(a.state_path, c.state_path);
        assert_eq!(
            a.state_path,
            SharedFile::new(d, &super::super::store::account_key("u", "https://a/token"))
                .state_path
        );
    }

    #[tokio::test]
    async fn a_removed_directory_is_made_again() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        prepare_dir(&dir).unwrap();
        let shared = SharedFile::new(&dir, &super::super::store::account_key("u", "t"));
        std::fs::remove_dir_all(&dir).unwrap();
        drop(shared.lock().await.unwrap());
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
    }

    #[tokio::test]
    async fn lock_is_exclusive_between_handles() {
        let tmp = tempfile::tempdir().unwrap();
        let a = SharedFile::new(tmp.path(), &super::super::store::account_key("u", "t"));
        let b = SharedFile::new(tmp.path(), &super::super::store::account_key("u", "t"));
        let guard = a.lock().await.unwrap();
        let waiting = tokio::spawn(async move { b.lock().await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !waiting.is_finished(),
            "second lock must wait for the first"
        );
        drop(guard);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn the_lock_wait_has_a_timeout() {
        let tmp = tempfile::tempdir().unwrap();
        let a = SharedFile::new(tmp.path(), &super::super::store::account_key("u", "t"));
        let b = SharedFile::new(tmp.path(), &super::super::store::account_key("u", "t"));
        let _held = a.lock().await.unwrap();
        let t = std::time::Instant::now();
        let e = b.lock_within(Duration::from_millis(300)).await.unwrap_err();
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        assert!(e.to_string().contains("another process has held it"), "{e}");
    }
}
