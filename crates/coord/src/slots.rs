//! The account's connection cap, shared by every machine: a fair semaphore in Redis whose slots
//! are leased.
//!
//! Three keys per account:
//! - `...:slots`, a sorted set of the slots held, each member a holder's id, scored by when its
//!   lease ends (Redis server time, ms);
//! - `...:queue`, a sorted set of the waiting holders scored by a ticket (`...:tickets`, a
//!   counter), so slots go first come, first served: no machine starves however fast another
//!   asks;
//! - `...:waiting`, the same waiters scored by when their wait lapses (a waiter polls and so
//!   renews it; one that died leaves the queue within [`WAIT_LEASE`]).
//!
//! One Lua script ([`TAKE`]) does a whole step atomically on the server's clock: drop lapsed
//! slots and waiters, queue the caller if new, and grant it a slot when the slots held plus the
//! waiters ahead of it are fewer than the cap. A holder renews the leases of all its slots every
//! third of [`SLOT_LEASE`] from one task, and gives a slot back when its request ends; a machine
//! killed while holding slots gets them back for the others when their lease lapses.
//!
//! When Redis is away, [`RedisSlots::acquire`] lets the request through at once (the machine's
//! own budget still bounds it) and the link says so once: reads never fail for the coordinator.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use eodata_fetch::zipper::{AccountSlot, AccountSlots};

use crate::Coordinator;

/// A slot's lease: a holder renews it every third of this, so a slow round trip never loses it;
/// a machine that dies holding slots returns them within this.
pub const SLOT_LEASE: Duration = Duration::from_secs(10);

/// A waiter not heard from for this long (it polls every [`POLL_MAX`] at most) has died: it
/// leaves the queue, so the ones behind it are not held up.
const WAIT_LEASE: Duration = Duration::from_secs(3);

/// A waiter's first poll comes after this, then the gap doubles up to [`POLL_MAX`]: slots come
/// free when a request ends (seconds to minutes for a product's body), and a few nodes polling
/// a few times a second cost Redis nothing.
const POLL_MIN: Duration = Duration::from_millis(20);
const POLL_MAX: Duration = Duration::from_millis(250);

/// One step of the fair semaphore. KEYS: slots, queue, waiting, tickets. ARGV: cap, holder id,
/// slot lease (ms), wait lease (ms). Returns 1 when the slot is granted, else 0 (queued).
pub(crate) const TAKE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cap = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local dead = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
for _, m in ipairs(dead) do
  redis.call('ZREM', KEYS[2], m)
  redis.call('ZREM', KEYS[3], m)
end
if not redis.call('ZSCORE', KEYS[2], ARGV[2]) then
  redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[4]), ARGV[2])
end
local held = redis.call('ZCARD', KEYS[1])
local ahead = redis.call('ZRANK', KEYS[2], ARGV[2])
if held + ahead < cap then
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('ZREM', KEYS[3], ARGV[2])
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
  return 1
end
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[4]), ARGV[2])
return 0
";

/// Renews the leases of the slots named in ARGV[2..] that are still held (XX: a slot that
/// lapsed meanwhile is not taken back behind the others' backs), and drops every lapsed slot
/// (a dead machine's), so the set shows the truth even while nobody waits. KEYS: slots.
/// ARGV: lease (ms), holder ids.
const RENEW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local n = 0
for i = 2, #ARGV do
  n = n + redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[1]), ARGV[i])
end
return n
";

/// The account-wide connection cap through Redis.
pub struct RedisSlots {
    coord: Coordinator,
    cap: usize,
    /// This process's part of every holder id: host, pid and a random tag (a restarted
    /// process never takes over a dead one's ids).
    node: String,
    next: AtomicU64,
    /// Slots this process holds (ids), whose leases the keeper renews.
    held: Mutex<HashSet<String>>,
    keeper: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for RedisSlots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSlots")
            .field("coordinator", &self.coord.link.shown())
            .field("cap", &self.cap)
            .finish()
    }
}

impl Drop for RedisSlots {
    fn drop(&mut self) {
        if let Some(k) = self.keeper.lock().unwrap_or_else(|p| p.into_inner()).take() {
            k.abort();
        }
    }
}

impl RedisSlots {
    pub(crate) fn new(coord: Coordinator, cap: usize) -> Arc<Self> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        let node = format!(
            "{host}:{}:{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        Arc::new(RedisSlots {
            coord,
            cap: cap.max(1),
            node,
            next: AtomicU64::new(0),
            held: Mutex::new(HashSet::new()),
            keeper: Mutex::new(None),
        })
    }

    /// The cap.
    pub fn cap(&self) -> usize {
        self.cap
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the task that renews this process's leases, once.
    fn start_keeper(self: &Arc<Self>) {
        let mut keeper = self.keeper.lock().unwrap_or_else(|p| p.into_inner());
        if keeper.is_some() {
            return;
        }
        let me: Weak<Self> = Arc::downgrade(self);
        *keeper = Some(tokio::spawn(async move {
            let script = redis::Script::new(RENEW);
            loop {
                tokio::time::sleep(SLOT_LEASE / 3).await;
                let Some(me) = me.upgrade() else { return };
                let ids: Vec<String> = me.held().iter().cloned().collect();
                if ids.is_empty() {
                    continue;
                }
                let Some(mut conn) = me.coord.link.get().await else {
                    continue;
                };
                let mut call = script.key(me.coord.key("slots"));
                call.arg(SLOT_LEASE.as_millis() as u64);
                for id in &ids {
                    call.arg(id);
                }
                if let Err(e) = call.invoke_async::<i64>(&mut conn).await {
                    me.coord.link.failed(&e).await;
                }
            }
        }));
    }

    /// Waits for a slot; `None` when Redis is away (the request goes ahead uncounted).
    async fn take(self: &Arc<Self>) -> Option<String> {
        let id = format!(
            "{}:{}",
            self.node,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let keys = [
            self.coord.key("slots"),
            self.coord.key("queue"),
            self.coord.key("waiting"),
            self.coord.key("tickets"),
        ];
        let script = redis::Script::new(TAKE);
        let mut pause = POLL_MIN;
        // A wait given up (the read was cancelled) leaves the queue at once rather than hold up
        // the ones behind for a wait lease.
        let mut queued = Queued {
            slots: Arc::clone(self),
            id: Some(id.clone()),
        };
        loop {
            let mut conn = self.coord.link.get().await?;
            let granted: redis::RedisResult<i64> = script
                .key(&keys[0])
                .key(&keys[1])
                .key(&keys[2])
                .key(&keys[3])
                .arg(self.cap)
                .arg(&id)
                .arg(SLOT_LEASE.as_millis() as u64)
                .arg(WAIT_LEASE.as_millis() as u64)
                .invoke_async(&mut conn)
                .await;
            match granted {
                Ok(1) => {
                    queued.id = None;
                    self.held().insert(id.clone());
                    self.start_keeper();
                    return Some(id);
                }
                Ok(_) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(POLL_MAX);
                }
                Err(e) => {
                    queued.id = None;
                    self.coord.link.failed(&e).await;
                    return None;
                }
            }
        }
    }

    /// Gives slot `id` back (from a task: called on drop).
    fn give_back(self: &Arc<Self>, id: String) {
        self.held().remove(&id);
        let me = Arc::clone(self);
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return; // The lease lapses by itself.
        };
        rt.spawn(async move {
            let Some(mut conn) = me.coord.link.get().await else {
                return;
            };
            let removed: redis::RedisResult<i64> = redis::cmd("ZREM")
                .arg(me.coord.key("slots"))
                .arg(&id)
                .query_async(&mut conn)
                .await;
            if let Err(e) = removed {
                me.coord.link.failed(&e).await;
            }
        });
    }
}

/// A place in the queue; dropped while still set (the wait was given up), it leaves the queue.
struct Queued {
    slots: Arc<RedisSlots>,
    id: Option<String>,
}

impl Drop for Queued {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else { return };
        let me = Arc::clone(&self.slots);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Some(mut conn) = me.coord.link.get().await {
                    let _: redis::RedisResult<()> = redis::pipe()
                        .zrem(me.coord.key("queue"), &id)
                        .zrem(me.coord.key("waiting"), &id)
                        .query_async(&mut conn)
                        .await;
                }
            });
        }
    }
}

/// A slot held; dropping it gives the slot back.
struct Slot {
    slots: Arc<RedisSlots>,
    id: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.give_back(std::mem::take(&mut self.id));
    }
}

/// The handle the zipper holds: an `Arc` so slots can give themselves back.
#[derive(Debug, Clone)]
pub struct SharedSlots(pub Arc<RedisSlots>);

impl AccountSlots for SharedSlots {
    fn acquire(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = AccountSlot> + Send + '_>> {
        Box::pin(async move {
            match self.0.take().await {
                Some(id) => Box::new(Slot {
                    slots: Arc::clone(&self.0),
                    id,
                }) as AccountSlot,
                None => Box::new(()) as AccountSlot,
            }
        })
    }
}
