//! How transient failures of the token endpoint are retried: exponential backoff with jitter,
//! bounded both in attempts and in total time. Two policies: a password login spends a TOTP
//! step per attempt that reached the server, so it gets ~30 s ([`RetryPolicy::default`]); the
//! refresh grant spends nothing and runs off the read path while the held token still serves,
//! so it rides out minutes of Keycloak 503s ([`RetryPolicy::refresh_default`]; CDSE's identity
//! service is reported to answer 503 for minutes, docs/protocol.md "Identity").

use std::time::{Duration, SystemTime};

/// How transient failures (network, timeouts, 5xx, 429) are retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Requests in all, the first included.
    pub attempts: u32,
    /// Wait after the first failure; doubles after each further one.
    pub first_backoff: Duration,
    /// The wait never grows beyond this (before jitter).
    pub max_backoff: Duration,
    /// No retry starts once this much time has passed since the first attempt. For password
    /// logins the time counts waits for a fresh TOTP step too (a failed request may have spent
    /// its code), so a login gets fewer attempts than a refresh within the same budget.
    pub budget: Duration,
}

impl Default for RetryPolicy {
    /// 0.5, 1, 2, 4, 8 s between six attempts (each wait jittered down by up to half, so that
    /// processes failing together do not retry together), within 30 s: long enough to ride out
    /// a Keycloak restart or a dropped Wi-Fi, short enough that a user sees the error while
    /// still watching.
    fn default() -> Self {
        RetryPolicy {
            attempts: 6,
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            budget: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// For the refresh grant: 1, 2, 4, ... 30 s between attempts (jittered), for up to 4 min
    /// (the identity service answers 503 for minutes at times: `docs/protocol.md`, "Identity"). The
    /// budget stays under the cross-process lock's wait (5 min), so a process waiting for this
    /// renewal is not timed out by it.
    pub fn refresh_default() -> Self {
        RetryPolicy {
            attempts: 40,
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            budget: Duration::from_secs(4 * 60),
        }
    }
}

/// Exponential backoff with jitter, bounded in attempts and total time.
pub(super) struct Backoff<'a> {
    policy: &'a RetryPolicy,
    failures: u32,
    started: SystemTime,
}

impl<'a> Backoff<'a> {
    pub(super) fn new(policy: &'a RetryPolicy, now: SystemTime) -> Self {
        Backoff {
            policy,
            failures: 0,
            started: now,
        }
    }

    /// After a failure: how long to wait before the next attempt, or `None` to give up.
    pub(super) fn next_delay(
        &mut self,
        retry_after: Option<Duration>,
        now: SystemTime,
    ) -> Option<Duration> {
        self.failures += 1;
        if self.failures >= self.policy.attempts {
            return None;
        }
        let doubling = 2u32.saturating_pow(self.failures - 1);
        let base = self
            .policy
            .first_backoff
            .saturating_mul(doubling)
            .min(self.policy.max_backoff);
        // A server's Retry-After is honoured up to the policy's longest wait.
        let asked = retry_after.unwrap_or_default().min(self.policy.max_backoff);
        let wait = jitter(base).max(asked);
        let elapsed = now.duration_since(self.started).unwrap_or_default();
        (elapsed + wait <= self.policy.budget).then_some(wait)
    }
}

/// A random duration in `[d/2, d]`: spreads retries of processes that failed together.
fn jitter(d: Duration) -> Duration {
    use std::hash::BuildHasher;
    // RandomState is seeded randomly per process and per instance: enough for jitter, and no
    // dependency for it.
    let r = std::collections::hash_map::RandomState::new().hash_one(0u8);
    let half = d / 2;
    half + half.mul_f64((r % 1_000) as f64 / 1_000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_is_jittered_and_bounded() {
        let policy = RetryPolicy::default();
        let t0 = SystemTime::UNIX_EPOCH;
        let mut b = Backoff::new(&policy, t0);
        let mut total = Duration::ZERO;
        let mut waits = vec![];
        while let Some(w) = b.next_delay(None, t0 + total) {
            waits.push(w);
            total += w;
        }
        assert_eq!(waits.len(), 5, "{waits:?}");
        for (w, base) in waits.iter().zip([0.5, 1.0, 2.0, 4.0, 8.0]) {
            let base = Duration::from_secs_f64(base);
            assert!(*w >= base / 2 && *w <= base, "{w:?} vs {base:?}");
        }
        // The budget stops retries even with attempts left.
        let mut b = Backoff::new(&policy, t0);
        assert!(b.next_delay(None, t0 + Duration::from_secs(30)).is_none());
        // Retry-After is honoured (capped by the endpoint module).
        let mut b = Backoff::new(&policy, t0);
        assert_eq!(
            b.next_delay(Some(Duration::from_secs(5)), t0),
            Some(Duration::from_secs(5))
        );
        // ...up to the longest backoff.
        let mut b = Backoff::new(&policy, t0);
        assert_eq!(
            b.next_delay(Some(Duration::from_secs(60)), t0),
            Some(Duration::from_secs(8))
        );
    }

    #[test]
    fn refresh_retries_for_minutes() {
        let policy = RetryPolicy::refresh_default();
        let t0 = SystemTime::UNIX_EPOCH;
        let mut b = Backoff::new(&policy, t0);
        let mut total = Duration::ZERO;
        while let Some(w) = b.next_delay(None, t0 + total) {
            total += w;
        }
        assert!(total >= Duration::from_secs(120), "{total:?}");
        assert!(total <= Duration::from_secs(240), "{total:?}");
    }
}
