//! An in-memory [`RangeSource`] for tests of the layers above zipper (cache, prefetch, fs).
//!
//! It owns nothing but bookkeeping: products are `Bytes` in a map, and every request is counted
//! and logged so that tests can assert *how* bytes were fetched (how many requests, which
//! ranges, how many at once), not only *what* came back. Faults are injected on purpose:
//! a fixed number of failures, a seeded failure rate (reproducible), a per-request delay (to make
//! concurrency observable without timing asserts) and a mode in which the "server" ignores
//! Range, as some zipper deployments are reported to do (`docs/protocol.md`, "Download").
//!
//! All knobs take `&self` so that a test can turn them while readers hold the source in an `Arc`.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{FetchError, ObjectInfo, RangeSource, RangeSupport};

/// How the mock answers ranged requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RangeMode {
    /// Like a server answering 206: every slice is served on its own.
    #[default]
    Honour,
    /// Like a server answering 200 to a ranged request: `info` reports
    /// [`RangeSupport::Ignored`] and every `get_range` fails with [`FetchError::RangeIgnored`],
    /// which is how the zipper client reports a server it cannot slice.
    Ignore,
    /// Like the reported zipper that serves a Range only when it starts at byte 0: `info`
    /// reports [`RangeSupport::Ignored`]; ranges from 0 are served, others fail with
    /// [`FetchError::RangeIgnored`].
    FromZeroOnly,
}

/// One request as the mock saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    pub id: String,
    pub range: Range<u64>,
    /// Whether it was answered with bytes (false: an injected fault or an error).
    pub ok: bool,
}

/// Counters of what the mock served, for one product or in total.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServedStats {
    /// `get_range` calls, failed ones included.
    pub requests: u64,
    /// Bytes returned by successful calls.
    pub bytes: u64,
    /// Calls that returned an error.
    pub failures: u64,
}

#[derive(Default)]
struct State {
    products: HashMap<String, Bytes>,
    range_mode: RangeMode,
    delay: Option<Duration>,
    fail_next: u32,
    fail_rate: Option<(f64, StdRng)>,
    fault: Option<FetchError>,
    total: ServedStats,
    per_id: HashMap<String, ServedStats>,
    log: Vec<RequestRecord>,
    info_calls: u64,
    in_flight: usize,
    max_in_flight: usize,
    /// Answer `holds_locally` yes (as a disk cache would for what it holds).
    local: bool,
}

/// In-memory products behind the [`RangeSource`] seam, with counters and fault injection.
#[derive(Default)]
pub struct MemorySource {
    state: Mutex<State>,
}

/// Decrements the in-flight count even when the request future is dropped mid-delay.
struct InFlight<'a>(&'a MemorySource);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.lock().in_flight -= 1;
    }
}

impl MemorySource {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builder form of [`MemorySource::insert`].
    pub fn with_product(self, id: impl Into<String>, data: impl Into<Bytes>) -> Self {
        self.insert(id, data);
        self
    }

    /// Says it keeps every product locally ([`RangeSource::holds_locally`]), as a disk cache
    /// does for what it holds.
    pub fn keeping_locally(self) -> Self {
        self.lock().local = true;
        self
    }

    /// Adds or replaces a product.
    pub fn insert(&self, id: impl Into<String>, data: impl Into<Bytes>) {
        self.lock().products.insert(id.into(), data.into());
    }

    /// Deterministic pseudo-random bytes (seeded), so tests can compare slices byte for byte
    /// and a wrong offset cannot go unnoticed (unlike zeros or a short repeating pattern).
    /// SplitMix64 rather than `StdRng`: tests make products of 64 MiB in debug builds.
    pub fn random_bytes(len: usize, seed: u64) -> Bytes {
        let mut state = seed;
        let mut data = Vec::with_capacity(len + 8);
        while data.len() < len {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            data.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        data.truncate(len);
        Bytes::from(data)
    }

    /// Sleep this long before answering each request (`None`: answer at once).
    pub fn set_delay(&self, delay: Option<Duration>) {
        self.lock().delay = delay;
    }

    pub fn set_range_mode(&self, mode: RangeMode) {
        self.lock().range_mode = mode;
    }

    /// The next `n` requests fail with [`FetchError::Server`] (or the error of
    /// [`MemorySource::set_fault`]).
    pub fn fail_next(&self, n: u32) {
        self.lock().fail_next = n;
    }

    /// Each request fails with probability `rate`, drawn from an RNG seeded with `seed` so that
    /// a failing test fails the same way again. `rate <= 0` turns it off.
    pub fn set_fail_rate(&self, rate: f64, seed: u64) {
        self.lock().fail_rate = (rate > 0.0).then(|| (rate, StdRng::seed_from_u64(seed)));
    }

    /// The error injected faults return (default: [`FetchError::Server`]).
    pub fn set_fault(&self, error: FetchError) {
        self.lock().fault = Some(error);
    }

    /// Totals over all products.
    pub fn stats(&self) -> ServedStats {
        self.lock().total
    }

    /// Counters for one product (zeros if it was never requested).
    pub fn stats_for(&self, id: &str) -> ServedStats {
        self.lock().per_id.get(id).copied().unwrap_or_default()
    }

    /// Every `get_range` call so far, in the order they arrived.
    pub fn log(&self) -> Vec<RequestRecord> {
        self.lock().log.clone()
    }

    pub fn info_calls(&self) -> u64 {
        self.lock().info_calls
    }

    /// Requests being answered right now.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    /// The most requests that were ever being answered at once.
    pub fn max_in_flight(&self) -> usize {
        self.lock().max_in_flight
    }

    /// Forgets counters and the log (products, delay and faults stay).
    pub fn reset_stats(&self) {
        let mut s = self.lock();
        s.total = ServedStats::default();
        s.per_id.clear();
        s.log.clear();
        s.info_calls = 0;
        s.max_in_flight = s.in_flight;
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not hide the counters from the others.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Decides the fate of one request under the lock; the delay happens outside it.
    fn answer(&self, id: &str, range: &Range<u64>) -> Result<Bytes, FetchError> {
        let mut s = self.lock();
        let injected = if s.fail_next > 0 {
            s.fail_next -= 1;
            true
        } else if let Some((rate, rng)) = s.fail_rate.as_mut() {
            rng.random_bool(rate.min(1.0))
        } else {
            false
        };
        let result = if injected {
            Err(s
                .fault
                .clone()
                .unwrap_or_else(|| FetchError::Server(format!("injected fault for {id}"))))
        } else if s.range_mode == RangeMode::Ignore
            || (s.range_mode == RangeMode::FromZeroOnly && range.start != 0)
        {
            Err(FetchError::RangeIgnored(id.to_owned()))
        } else {
            match s.products.get(id) {
                None => Err(FetchError::NotFound(id.to_owned())),
                Some(data) => {
                    let size = data.len() as u64;
                    if range.start > size || range.start > range.end {
                        Err(FetchError::OutOfRange {
                            id: id.to_owned(),
                            start: range.start,
                            end: range.end,
                            size,
                        })
                    } else {
                        let end = range.end.min(size);
                        Ok(data.slice(range.start as usize..end as usize))
                    }
                }
            }
        };
        let ok = result.is_ok();
        let served = result.as_ref().map_or(0, |b| b.len() as u64);
        s.total.requests += 1;
        s.total.bytes += served;
        s.total.failures += u64::from(!ok);
        let per = s.per_id.entry(id.to_owned()).or_default();
        per.requests += 1;
        per.bytes += served;
        per.failures += u64::from(!ok);
        s.log.push(RequestRecord {
            id: id.to_owned(),
            range: range.clone(),
            ok,
        });
        result
    }
}

impl RangeSource for MemorySource {
    fn holds_locally(&self, id: &str, _range: Range<u64>) -> bool {
        let s = self.lock();
        s.local && s.products.contains_key(id)
    }

    async fn info(&self, id: &str) -> Result<ObjectInfo, FetchError> {
        let (delay, result) = {
            let mut s = self.lock();
            s.info_calls += 1;
            let ranges = match s.range_mode {
                RangeMode::Honour => RangeSupport::Honoured,
                RangeMode::Ignore | RangeMode::FromZeroOnly => RangeSupport::Ignored,
            };
            let result = s
                .products
                .get(id)
                .map(|data| ObjectInfo {
                    size: data.len() as u64,
                    filename: Some(format!("{id}.zip")),
                    ranges,
                })
                .ok_or_else(|| FetchError::NotFound(id.to_owned()));
            (s.delay, result)
        };
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        result
    }

    async fn get_range(&self, id: &str, range: Range<u64>) -> Result<Bytes, FetchError> {
        let delay = {
            let mut s = self.lock();
            s.in_flight += 1;
            s.max_in_flight = s.max_in_flight.max(s.in_flight);
            s.delay
        };
        let _guard = InFlight(self);
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        self.answer(id, &range)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> MemorySource {
        MemorySource::new().with_product("a", MemorySource::random_bytes(1000, 1))
    }

    #[tokio::test]
    async fn mock_serves_exact_ranges_and_counts_them() {
        let src = source();
        let all = src.get_range("a", 0..1000).await.unwrap();
        let part = src.get_range("a", 10..20).await.unwrap();
        assert_eq!(part, all.slice(10..20));
        // Past the end: shorter, never padded.
        assert_eq!(src.get_range("a", 990..2000).await.unwrap().len(), 10);
        assert_eq!(src.get_range("a", 1000..1010).await.unwrap().len(), 0);
        assert!(matches!(
            src.get_range("a", 1001..1010).await,
            Err(FetchError::OutOfRange { .. })
        ));
        assert!(matches!(
            src.get_range("b", 0..1).await,
            Err(FetchError::NotFound(_))
        ));
        let total = src.stats();
        assert_eq!(total.requests, 6);
        assert_eq!(total.bytes, 1000 + 10 + 10);
        assert_eq!(total.failures, 2);
        assert_eq!(src.stats_for("a").requests, 5);
        assert_eq!(src.log()[1].range, 10..20);
        assert_eq!(src.info("a").await.unwrap().size, 1000);
    }

    #[tokio::test]
    async fn mock_fail_next_then_recovers() {
        let src = source();
        src.fail_next(2);
        assert!(src.get_range("a", 0..1).await.is_err());
        assert!(src.get_range("a", 0..1).await.is_err());
        assert!(src.get_range("a", 0..1).await.is_ok());
        src.set_fault(FetchError::Timeout(Duration::from_secs(1)));
        src.fail_next(1);
        assert!(matches!(
            src.get_range("a", 0..1).await,
            Err(FetchError::Timeout(_))
        ));
    }

    #[tokio::test]
    async fn mock_fail_rate_is_reproducible() {
        let run = || async {
            let src = source();
            src.set_fail_rate(0.5, 7);
            let mut outcomes = Vec::new();
            for _ in 0..64 {
                outcomes.push(src.get_range("a", 0..1).await.is_ok());
            }
            outcomes
        };
        let first = run().await;
        assert_eq!(first, run().await);
        assert!(first.iter().any(|ok| *ok) && first.iter().any(|ok| !*ok));
    }

    #[tokio::test]
    async fn mock_ignore_range_mode() {
        let src = source();
        src.set_range_mode(RangeMode::Ignore);
        assert_eq!(src.info("a").await.unwrap().ranges, RangeSupport::Ignored);
        assert!(matches!(
            src.get_range("a", 5..10).await,
            Err(FetchError::RangeIgnored(_))
        ));
    }

    #[tokio::test]
    async fn mock_from_zero_only_mode() {
        let src = source();
        src.set_range_mode(RangeMode::FromZeroOnly);
        assert_eq!(src.get_range("a", 0..10).await.unwrap().len(), 10);
        assert!(matches!(
            src.get_range("a", 1..10).await,
            Err(FetchError::RangeIgnored(_))
        ));
    }

    #[tokio::test]
    async fn mock_counts_concurrent_requests() {
        let src = std::sync::Arc::new(source());
        src.set_delay(Some(Duration::from_millis(20)));
        let tasks: Vec<_> = (0..3)
            .map(|_| {
                let src = src.clone();
                tokio::spawn(async move { src.get_range("a", 0..1).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(src.in_flight(), 0);
        assert_eq!(src.max_in_flight(), 3, "delayed requests overlap");
    }
}
