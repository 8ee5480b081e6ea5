//! Where the token state is shared: the [`SharedStore`] seam.
//!
//! A renewal reads the shared state under an exclusive lock, decides (adopt another process's
//! tokens, refresh, or log in with a TOTP step nobody used), and writes the state back before
//! it lets go of the lock. On one machine the store is a private directory with a state file and
//! an `flock` ([`FileStore`], module `cache`). On a cluster the same state and the same lock
//! live in Redis (crate `eodata-coord`), so one renewal runs at a time across every node of the
//! account and every node reuses its result. The manager does not know which: the state is an
//! opaque JSON document to the store (it never holds the password or the TOTP secret), and
//! all the account's rules stay in this crate.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use crate::AuthError;

use super::cache::SharedFile;

/// A boxed future, as the store's methods return (the trait is used as `dyn`).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Held while a renewal runs; [`SharedStore::unlock`] releases it, and so does dropping it
/// (also when the process dies: the file lock closes with the process, a Redis lock's lease
/// lapses).
pub type StoreLock = Box<dyn std::any::Any + Send + Sync>;

/// The token state shared by every process (and, with a coordinator, every machine) of one
/// account, and the lock that makes their renewals one at a time.
pub trait SharedStore: Send + Sync + 'static {
    /// Takes the exclusive lock, waiting for another holder's renewal to finish (bounded: a
    /// holder stuck for minutes must not stop this process, which then renews alone).
    fn lock(&self) -> StoreFuture<'_, Result<StoreLock, AuthError>>;

    /// The state document as last written, or `None` when there is none or it cannot be read
    /// (the next write replaces it).
    fn read(&self) -> StoreFuture<'_, Option<Vec<u8>>>;

    /// Replaces the state document, whole (a reader never sees half of one).
    fn write(&self, state: Vec<u8>) -> StoreFuture<'_, Result<(), AuthError>>;

    /// Releases `lock` and returns once it is released, so that a process which exits right
    /// after its renewal (the `token` command) does not leave the others waiting for a lease.
    fn unlock(&self, lock: StoreLock) -> StoreFuture<'_, ()> {
        drop(lock);
        Box::pin(async {})
    }
}

/// The key of one account in any store: the first 16 hex digits of sha256(user "\n" token URL),
/// the user in lower case (Keycloak compares user names case-insensitively). Neither the user
/// nor the URL can be read back from it.
pub fn account_key(user: &str, token_url: &str) -> String {
    super::cache::sha256_hex(&[&user.to_lowercase(), token_url])[..16].to_string()
}

/// The store of one machine: `<dir>/<key>.json` and `<dir>/<key>.lock` in a private directory
/// (see the `cache` module for its rules).
#[derive(Debug)]
pub struct FileStore {
    file: SharedFile,
}

impl FileStore {
    /// The store of `user` at `token_url` in `dir`, which must exist and be private
    /// (`TokenManager::new` prepares it).
    pub(crate) fn new(dir: &Path, user: &str, token_url: &str) -> Self {
        FileStore {
            file: SharedFile::new(dir, &account_key(user, token_url)),
        }
    }

    /// The state file's path, for `status` and `doctor`.
    pub fn state_path(&self) -> PathBuf {
        self.file.state_path().to_owned()
    }
}

impl SharedStore for FileStore {
    fn lock(&self) -> StoreFuture<'_, Result<StoreLock, AuthError>> {
        Box::pin(async move { Ok(Box::new(self.file.lock().await?) as StoreLock) })
    }

    fn read(&self) -> StoreFuture<'_, Option<Vec<u8>>> {
        // A small file on a local disk, read under the lock: inline.
        Box::pin(async move { self.file.read_bytes() })
    }

    fn write(&self, state: Vec<u8>) -> StoreFuture<'_, Result<(), AuthError>> {
        Box::pin(async move { self.file.write_bytes(&state) })
    }
}
