//! Time as the token manager sees it: a [`Clock`] seam, and the server clock's offset.
//!
//! Two clocks matter here. The *local* clock is what `SystemTime::now()` says; every expiry this
//! crate hands out ([`crate::AccessToken::expires_at`]) and every time stored in the shared cache
//! file is in local time, because readers and the other processes of the machine compare them
//! with their own `now()`. The *server* clock is what Keycloak believes: TOTP steps must be
//! computed on it (a local clock 40 s off makes every code wrong), and the JWT `exp` claim is
//! written in it. [`ServerOffset`] converts between the two, estimated from the `Date` header of
//! token-endpoint answers.
//!
//! The [`Clock`] trait lets tests run a fake clock whose sleeps return at once, so that waiting
//! for the next TOTP step or backing off after a 503 costs no wall time in unit tests.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

/// A boxed sleep, so that `Clock` can be used as a trait object.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Where the token manager gets the time and how it waits.
pub trait Clock: Send + Sync + 'static {
    /// The local wall-clock time.
    fn now(&self) -> SystemTime;
    /// Waits `duration` of this clock's time.
    fn sleep(&self, duration: Duration) -> Sleep;
}

/// The real clock: `SystemTime::now()` and `tokio::time::sleep`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
    fn sleep(&self, duration: Duration) -> Sleep {
        Box::pin(tokio::time::sleep(duration))
    }
}

/// A clock for tests (behind the `testing` feature): time stands still until
/// [`TestClock::advance`] moves it, and [`Clock::sleep`] advances it by the duration and returns
/// at once (after yielding once, so other tasks still get to run). Clones share one time.
#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Clone)]
pub struct TestClock {
    now: std::sync::Arc<std::sync::Mutex<SystemTime>>,
}

#[cfg(any(test, feature = "testing"))]
impl TestClock {
    /// A clock that starts at `start`.
    pub fn new(start: SystemTime) -> Self {
        TestClock {
            now: std::sync::Arc::new(std::sync::Mutex::new(start)),
        }
    }

    /// Moves the time forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        *now += by;
    }

    /// Sets the time.
    pub fn set(&self, to: SystemTime) {
        *self.now.lock().unwrap_or_else(|e| e.into_inner()) = to;
    }
}

#[cfg(any(test, feature = "testing"))]
impl Clock for TestClock {
    fn now(&self) -> SystemTime {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn sleep(&self, duration: Duration) -> Sleep {
        self.advance(duration);
        Box::pin(tokio::task::yield_now())
    }
}

/// An offset smaller than this is not trusted and counts as zero. `Date` has a resolution of
/// one second and the request's round trip blurs the midpoint further, so a measured offset of
/// a second or two is noise; TOTP tolerates it anyway (Keycloak accepts the previous and the
/// next step). Larger offsets are real clock skew and must be applied, or every code is wrong.
pub const OFFSET_TRUST_THRESHOLD: Duration = Duration::from_secs(2);

/// How far the server's clock is ahead of the local one (negative: behind), in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerOffset {
    millis: i64,
}

impl ServerOffset {
    /// No known offset.
    pub const ZERO: ServerOffset = ServerOffset { millis: 0 };

    /// An offset of `millis` milliseconds (server minus local).
    pub fn from_millis(millis: i64) -> Self {
        ServerOffset { millis }
    }

    pub fn as_millis(self) -> i64 {
        self.millis
    }

    /// This offset bounded to `max` either way.
    pub fn clamp(self, max: Duration) -> Self {
        let max = i64::try_from(max.as_millis()).unwrap_or(i64::MAX);
        ServerOffset {
            millis: self.millis.clamp(-max, max),
        }
    }

    /// Measures the offset from an answer's `Date` header. `sent` and `received` are local
    /// times around the request. `Date` is truncated to the second, so the server's time when it
    /// answered lies in `[date, date + 1 s)`: its middle, `date + 0.5 s`, is compared with the
    /// local midpoint of the round trip. Returns `None` when the header is unparseable.
    pub fn measure(date_header: &str, sent: SystemTime, received: SystemTime) -> Option<Self> {
        let server =
            httpdate::parse_http_date(date_header.trim()).ok()? + Duration::from_millis(500);
        let local_mid = midpoint(sent, received);
        Some(ServerOffset {
            millis: signed_millis(server, local_mid),
        })
    }

    /// [`ServerOffset::measure`], taken as [`ServerOffset::ZERO`] when within
    /// [`OFFSET_TRUST_THRESHOLD`] (noise, not skew): the offset the token manager applies.
    pub fn estimate(date_header: &str, sent: SystemTime, received: SystemTime) -> Option<Self> {
        let millis = Self::measure(date_header, sent, received)?.millis;
        if millis.unsigned_abs() <= OFFSET_TRUST_THRESHOLD.as_millis() as u64 {
            Some(ServerOffset::ZERO)
        } else {
            Some(ServerOffset { millis })
        }
    }

    /// The server's time at local time `local`.
    pub fn to_server(self, local: SystemTime) -> SystemTime {
        shift(local, self.millis)
    }

    /// The local time at server time `server`.
    pub fn to_local(self, server: SystemTime) -> SystemTime {
        shift(server, -self.millis)
    }
}

fn midpoint(a: SystemTime, b: SystemTime) -> SystemTime {
    match b.duration_since(a) {
        Ok(d) => a + d / 2,
        Err(e) => b + e.duration() / 2,
    }
}

/// `a - b` in milliseconds, saturating.
fn signed_millis(a: SystemTime, b: SystemTime) -> i64 {
    match a.duration_since(b) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

fn shift(t: SystemTime, millis: i64) -> SystemTime {
    let d = Duration::from_millis(millis.unsigned_abs());
    if millis >= 0 {
        t.checked_add(d).unwrap_or(t)
    } else {
        t.checked_sub(d).unwrap_or(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn at(secs: u64, millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis)
    }

    #[test]
    fn small_offsets_are_noise() {
        let date = httpdate::fmt_http_date(at(1_700_000_000, 0));
        // Local midpoint 1_700_000_000.3: measured +0.2 s -> zero.
        let o = ServerOffset::estimate(&date, at(1_700_000_000, 200), at(1_700_000_000, 400));
        assert_eq!(o, Some(ServerOffset::ZERO));
        // Local clock 1.8 s ahead: still within the threshold.
        let o = ServerOffset::estimate(&date, at(1_700_000_002, 200), at(1_700_000_002, 400));
        assert_eq!(o, Some(ServerOffset::ZERO));
    }

    #[test]
    fn large_offsets_are_applied_both_ways() {
        let date = httpdate::fmt_http_date(at(1_700_000_100, 0));
        // Server 100 s ahead of a local midpoint of ..000.5: offset 100 s.
        let o =
            ServerOffset::estimate(&date, at(1_700_000_000, 400), at(1_700_000_000, 600)).unwrap();
        assert_eq!(o.as_millis(), 100_000);
        assert_eq!(o.to_server(at(10, 0)), at(110, 0));
        assert_eq!(o.to_local(at(110, 0)), at(10, 0));
        // Server behind.
        let o =
            ServerOffset::estimate(&date, at(1_700_000_200, 400), at(1_700_000_200, 600)).unwrap();
        assert_eq!(o.as_millis(), -100_000);
        assert_eq!(o.to_server(at(200, 0)), at(100, 0));
    }

    #[test]
    fn offsets_are_clamped_both_ways() {
        let max = Duration::from_secs(300);
        assert_eq!(
            ServerOffset::from_millis(10_000_000).clamp(max).as_millis(),
            300_000
        );
        assert_eq!(
            ServerOffset::from_millis(-10_000_000)
                .clamp(max)
                .as_millis(),
            -300_000
        );
        assert_eq!(
            ServerOffset::from_millis(-1_000).clamp(max).as_millis(),
            -1_000
        );
    }

    #[test]
    fn bad_date_is_ignored() {
        assert_eq!(
            ServerOffset::estimate("yesterday", at(1, 0), at(2, 0)),
            None
        );
    }

    #[tokio::test]
    async fn test_clock_sleep_advances_at_once() {
        let c = TestClock::new(at(100, 0));
        let before = std::time::Instant::now();
        c.sleep(Duration::from_secs(30)).await;
        assert_eq!(c.now(), at(130, 0));
        assert!(before.elapsed() < Duration::from_secs(1));
    }
}
