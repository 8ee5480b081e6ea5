//! The connection budget: how many requests this client has open against the download service.
//!
//! The real service caps parallel connections per user (CDSE: 4) and answers 429 past the cap,
//! and other processes of the same user share that cap without telling us. So the limit adapts,
//! AIMD like TCP: a 429 halves the number of connections in use (floor 1), a run of successes
//! gives one back, up to the configured maximum. Every request of one `Zipper` (mount reads,
//! read-ahead, the download command) draws from the same budget.
//!
//! On a cluster the cap belongs to the account, not to a machine: a connection then also takes
//! a slot of the account-wide [`AccountSlots`] (a leased semaphore in Redis, crate
//! `eodata-coord`), after this machine's own budget has let it through, so a machine never
//! queues for account slots it could not use.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// A slot of the account's connections, held while a request is open; dropping it gives the
/// slot back.
pub type AccountSlot = Box<dyn Send + Sync>;

/// The account-wide connection cap, shared by every machine of the account.
pub trait AccountSlots: std::fmt::Debug + Send + Sync + 'static {
    /// Waits for a free slot of the account. Never fails: when the shared cap cannot be
    /// reached, the implementation says so and lets the request through (the machine's own
    /// budget still bounds it), so reads go on.
    fn acquire(&self) -> Pin<Box<dyn Future<Output = AccountSlot> + Send + '_>>;
}

/// Successes in a row after which one more connection is tried again. Small enough that the
/// budget recovers within seconds once a competing session ends; large enough that a server
/// whose cap is below our maximum costs one 429 per this many requests at most.
const GROW_AFTER_SUCCESSES: u32 = 8;

#[derive(Debug)]
struct State {
    /// Connections currently allowed, `1..=max`.
    limit: usize,
    in_use: usize,
    successes: u32,
    /// Bumped on every decrease: one burst of 429s (all answering requests that started under
    /// the same limit) halves the limit once, not once per 429.
    epoch: u64,
}

#[derive(Debug)]
pub(crate) struct Budget {
    max: usize,
    state: Mutex<State>,
    changed: Notify,
    account: Option<Arc<dyn AccountSlots>>,
}

/// One open connection's share of the budget; given back on drop.
pub(crate) struct Permit {
    budget: Arc<Budget>,
    epoch: u64,
    /// The account-wide slot, when there is a shared cap; dropped with the permit.
    _slot: Option<AccountSlot>,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("epoch", &self.epoch)
            .finish()
    }
}

impl Budget {
    #[cfg(test)]
    pub(crate) fn new(max: usize) -> Arc<Budget> {
        Self::with_account(max, None)
    }

    /// A budget of `max` connections on this machine, each also taking a slot of `account`.
    pub(crate) fn with_account(max: usize, account: Option<Arc<dyn AccountSlots>>) -> Arc<Budget> {
        let max = max.max(1);
        Arc::new(Budget {
            account,
            max,
            state: Mutex::new(State {
                limit: max,
                in_use: 0,
                successes: 0,
                epoch: 0,
            }),
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: every update is one assignment.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a free connection: this machine's, then the account's.
    pub(crate) async fn acquire(self: &Arc<Self>) -> Permit {
        let mut permit = self.acquire_local().await;
        if let Some(account) = &self.account {
            permit._slot = Some(account.acquire().await);
        }
        permit
    }

    async fn acquire_local(self: &Arc<Self>) -> Permit {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Registered before the check, so a release between check and await is not missed.
            notified.as_mut().enable();
            {
                let mut s = self.lock();
                if s.in_use < s.limit {
                    s.in_use += 1;
                    return Permit {
                        budget: Arc::clone(self),
                        epoch: s.epoch,
                        _slot: None,
                    };
                }
            }
            notified.await;
        }
    }

    /// The request holding `permit` was refused for too many connections.
    pub(crate) fn overloaded(&self, permit: &Permit) {
        let mut s = self.lock();
        s.successes = 0;
        if permit.epoch == s.epoch {
            let before = s.limit;
            s.limit = (s.in_use / 2).max(1);
            s.epoch += 1;
            tracing::info!(
                before,
                after = s.limit,
                "download service refused a connection (429): fewer parallel connections"
            );
        }
    }

    /// A request completed: after a run of these, allow one more connection.
    pub(crate) fn succeeded(&self) {
        let mut s = self.lock();
        s.successes += 1;
        if s.successes >= GROW_AFTER_SUCCESSES && s.limit < self.max {
            s.limit += 1;
            s.successes = 0;
            tracing::debug!(limit = s.limit, "one more parallel connection");
            drop(s);
            self.changed.notify_waiters();
        }
    }

    pub(crate) fn limit(&self) -> usize {
        self.lock().limit
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.budget.lock().in_use -= 1;
        self.budget.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn caps_halves_once_per_burst_and_grows_back() {
        let b = Budget::new(8);
        let mut held = Vec::new();
        for _ in 0..8 {
            held.push(b.acquire().await);
        }
        // A ninth waits.
        let more = tokio::time::timeout(Duration::from_millis(50), b.acquire()).await;
        assert!(more.is_err());

        // Eight 429s from the same burst: halved once, to 4.
        for p in &held {
            b.overloaded(p);
        }
        assert_eq!(b.limit(), 4);
        held.clear();

        // A 429 under the new limit halves again: in use 4 -> 2.
        for _ in 0..4 {
            held.push(b.acquire().await);
        }
        b.overloaded(&held[0]);
        b.overloaded(&held[1]);
        assert_eq!(b.limit(), 2);
        held.clear();

        // Floor 1.
        let p = b.acquire().await;
        b.overloaded(&p);
        assert_eq!(b.limit(), 1);
        drop(p);

        for _ in 0..GROW_AFTER_SUCCESSES {
            b.succeeded();
        }
        assert_eq!(b.limit(), 2);
        for _ in 0..100 * GROW_AFTER_SUCCESSES {
            b.succeeded();
        }
        assert_eq!(b.limit(), 8, "never above the configured maximum");
    }

    #[tokio::test]
    async fn waiters_wake_on_release_and_growth() {
        let b = Budget::new(1);
        let p = b.acquire().await;
        let b2 = Arc::clone(&b);
        let waiter = tokio::spawn(async move {
            let _p = b2.acquire().await;
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(p);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("released permit wakes the waiter")
            .unwrap();
        assert_eq!(Budget::new(0).limit(), 1, "a zero maximum still allows one");
    }
}
