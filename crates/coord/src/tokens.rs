//! The token manager's shared state in Redis: one renewal at a time across every machine of the
//! account, and every machine reuses its result.
//!
//! Two keys per account: `...:tokens`, the state document the token manager writes (access and
//! refresh tokens with their expiries, the last TOTP step used, the refusal record, salted
//! credential fingerprints; never the password or the TOTP secret: `eodata_auth`'s `cache`
//! module), and `...:renewal`, the lock. The lock is `SET NX PX` with a random value and a
//! lease of [`LOCK_LEASE`], which its holder renews while it works (a renewal may wait for a
//! TOTP step or ride out a Keycloak outage) and deletes when done; a holder that dies lets go
//! when the lease lapses. The token manager re-reads the state under the lock before it logs in,
//! so the machines that waited adopt the first one's tokens.
//!
//! While Redis is away the store is the machine's own (the local state file and its `flock`),
//! chosen at each lock; every write made through Redis also goes to the local file, so a machine
//! that loses Redis carries on from the newest tokens it saw.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eodata_auth::token::{SharedStore, StoreFuture, StoreLock};
use eodata_auth::AuthError;
use redis::AsyncCommands;

use crate::Coordinator;

/// The renewal lock's lease: long enough that a holder renewing it every third of it never
/// loses it to a slow round trip; short enough that a machine that died holding it delays the
/// others' renewals by at most this (their held tokens serve meanwhile).
pub const LOCK_LEASE: Duration = Duration::from_secs(30);

/// The longest wait for another machine's renewal, as for the local lock (`eodata_auth`'s
/// `LOCK_WAIT`): a renewal that rides out a Keycloak outage holds the lock for minutes.
const LOCK_WAIT: Duration = Duration::from_secs(5 * 60);

/// How often a waiting machine tries the lock again. A renewal by refresh takes tens of
/// milliseconds; 50 ms keeps the wait short and the load on Redis trivial.
const LOCK_POLL: Duration = Duration::from_millis(50);

/// The state document is dropped by Redis this long after its last write: no token in it lives
/// that long (CDSE's session ends within an hour), and the TOTP step and refusal records matter
/// for minutes. A day keeps a cluster idle overnight from leaving tokens behind for ever.
const STATE_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Renews the lease of a lock this holder still owns (its random value matches).
const RENEW_LEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Deletes a lock this holder still owns: never another holder's, taken after a lapsed lease.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Which store the current renewal uses: decided when it takes the lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Redis,
    Local,
}

/// The token state of one account in Redis, with the machine's own store as fallback.
pub struct RedisStore {
    coord: Coordinator,
    local: Option<Arc<dyn SharedStore>>,
    backend: Mutex<Backend>,
}

impl RedisStore {
    pub(crate) fn new(coord: Coordinator, local: Option<Arc<dyn SharedStore>>) -> Self {
        RedisStore {
            coord,
            local,
            backend: Mutex::new(Backend::Redis),
        }
    }

    fn backend(&self) -> Backend {
        *self.backend.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_backend(&self, b: Backend) {
        *self.backend.lock().unwrap_or_else(|p| p.into_inner()) = b;
    }

    /// The machine's own lock (or none, without a local store).
    async fn local_lock(&self) -> Result<StoreLock, AuthError> {
        self.set_backend(Backend::Local);
        match &self.local {
            Some(local) => local.lock().await,
            None => Ok(Box::new(())),
        }
    }

    async fn lock_inner(&self) -> Result<StoreLock, AuthError> {
        let key = self.coord.key("renewal");
        let nonce = format!("{:032x}", rand::random::<u128>());
        let started = Instant::now();
        loop {
            let Some(mut conn) = self.coord.link.get().await else {
                return self.local_lock().await;
            };
            let taken: redis::RedisResult<Option<String>> = redis::cmd("SET")
                .arg(&key)
                .arg(&nonce)
                .arg("NX")
                .arg("PX")
                .arg(LOCK_LEASE.as_millis() as u64)
                .query_async(&mut conn)
                .await;
            match taken {
                Ok(Some(_)) => {
                    self.set_backend(Backend::Redis);
                    return Ok(Box::new(RenewalLock::hold(self.coord.clone(), key, nonce)));
                }
                Ok(None) if started.elapsed() < LOCK_WAIT => tokio::time::sleep(LOCK_POLL).await,
                Ok(None) => {
                    return Err(AuthError::Cache {
                        path: self.coord.link.shown().to_string(),
                        reason: format!(
                            "another machine has held the renewal lock for {} s",
                            started.elapsed().as_secs()
                        ),
                    })
                }
                Err(e) => {
                    self.coord.link.failed(&e).await;
                    return self.local_lock().await;
                }
            }
        }
    }
}

impl SharedStore for RedisStore {
    fn lock(&self) -> StoreFuture<'_, Result<StoreLock, AuthError>> {
        Box::pin(self.lock_inner())
    }

    fn read(&self) -> StoreFuture<'_, Option<Vec<u8>>> {
        Box::pin(async move {
            if self.backend() == Backend::Redis {
                if let Some(mut conn) = self.coord.link.get().await {
                    let key = self.coord.key("tokens");
                    match conn.get::<_, Option<Vec<u8>>>(&key).await {
                        Ok(state) => return state,
                        Err(e) => self.coord.link.failed(&e).await,
                    }
                }
            }
            match &self.local {
                Some(local) => local.read().await,
                None => None,
            }
        })
    }

    fn unlock(&self, lock: StoreLock) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            match lock.downcast::<RenewalLock>() {
                Ok(mut held) => held.release().await,
                Err(other) => match &self.local {
                    Some(local) => local.unlock(other).await,
                    None => drop(other),
                },
            }
        })
    }

    fn write(&self, state: Vec<u8>) -> StoreFuture<'_, Result<(), AuthError>> {
        Box::pin(async move {
            if self.backend() == Backend::Redis {
                if let Some(mut conn) = self.coord.link.get().await {
                    let key = self.coord.key("tokens");
                    let set: redis::RedisResult<()> = conn
                        .pset_ex(&key, state.as_slice(), STATE_TTL.as_millis() as u64)
                        .await;
                    match set {
                        Ok(()) => {
                            // The machine's own copy, for when Redis is away: best effort.
                            if let Some(local) = &self.local {
                                if let Err(e) = local.write(state).await {
                                    tracing::debug!("local copy of the shared token state: {e}");
                                }
                            }
                            return Ok(());
                        }
                        Err(e) => self.coord.link.failed(&e).await,
                    }
                }
            }
            match &self.local {
                Some(local) => local.write(state).await,
                None => Ok(()),
            }
        })
    }
}

/// The renewal lock in Redis, its lease renewed by a task while it is held; dropping it stops
/// the task and deletes the lock (if still ours).
struct RenewalLock {
    keeper: tokio::task::JoinHandle<()>,
    coord: Coordinator,
    key: String,
    /// Empty once released.
    nonce: String,
}

/// Deletes the lock `key` if it still holds `nonce`.
async fn release(coord: &Coordinator, key: &str, nonce: &str) {
    if let Some(mut conn) = coord.link.get().await {
        let released: redis::RedisResult<i64> = redis::Script::new(RELEASE)
            .key(key)
            .arg(nonce)
            .invoke_async(&mut conn)
            .await;
        if let Err(e) = released {
            coord.link.failed(&e).await;
        }
    }
}

impl RenewalLock {
    fn hold(coord: Coordinator, key: String, nonce: String) -> Self {
        let keeper = {
            let (coord, key, nonce) = (coord.clone(), key.clone(), nonce.clone());
            tokio::spawn(async move {
                let script = redis::Script::new(RENEW_LEASE);
                loop {
                    tokio::time::sleep(LOCK_LEASE / 3).await;
                    let Some(mut conn) = coord.link.get().await else {
                        return;
                    };
                    let renewed: redis::RedisResult<i64> = script
                        .key(&key)
                        .arg(&nonce)
                        .arg(LOCK_LEASE.as_millis() as u64)
                        .invoke_async(&mut conn)
                        .await;
                    match renewed {
                        Ok(1) => {}
                        Ok(_) => {
                            tracing::debug!("the renewal lock's lease lapsed while held");
                            return;
                        }
                        Err(e) => {
                            coord.link.failed(&e).await;
                            return;
                        }
                    }
                }
            })
        };
        RenewalLock {
            keeper,
            coord,
            key,
            nonce,
        }
    }
}

impl RenewalLock {
    /// Releases the lock now (the renewal is done).
    async fn release(&mut self) {
        self.keeper.abort();
        let nonce = std::mem::take(&mut self.nonce);
        release(&self.coord, &self.key, &nonce).await;
    }
}

impl Drop for RenewalLock {
    /// A lock dropped without [`RenewalLock::release`] (a cancelled renewal) is released by a
    /// task; without a runtime its lease lapses by itself.
    fn drop(&mut self) {
        self.keeper.abort();
        if self.nonce.is_empty() {
            return;
        }
        let (coord, key, nonce) = (
            self.coord.clone(),
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.nonce),
        );
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { release(&coord, &key, &nonce).await });
        }
    }
}
