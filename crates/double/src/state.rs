//! What the three services share while the double runs: configuration, fault switches, the
//! seeded RNG, the realm (users, tokens), the product store, the log, the outage clock and the
//! count of bodies streaming per user.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::log::Log;
use crate::realm::Realm;
use crate::store::Store;
use crate::{Config, Faults};

pub(crate) struct Shared {
    pub base_url: String,
    pub mode: crate::Mode,
    pub port: u16,
    pub faults: Mutex<Faults>,
    pub rng: Mutex<StdRng>,
    pub auth: Mutex<Realm>,
    pub store: Store,
    pub log: Log,
    started: Instant,
    /// When the fault switches were last set (time-limited faults count from it).
    faults_set: Mutex<Instant>,
    outage_until: Mutex<Option<Instant>>,
    active: Mutex<HashMap<String, usize>>,
    /// Seconds the double's clock runs ahead of the machine's (negative: behind).
    clock_skew: AtomicI64,
    /// Whether `/_double/` control endpoints answer.
    control: AtomicBool,
    /// Zipper GETs served so far, for `reorder_members` (odd ones get the reordered zip).
    pub gets: std::sync::atomic::AtomicU64,
}

impl Shared {
    pub(crate) fn new(config: Config, port: u16) -> anyhow::Result<Shared> {
        let base_url = format!("http://127.0.0.1:{port}");
        let store = Store::open(config.products_dir.as_deref())?;
        let log = Log::new(config.log_path.as_deref())?;
        let realm = Realm::new(&config, &base_url)?;
        Ok(Shared {
            mode: config.mode,
            base_url,
            port,
            faults: Mutex::new(config.faults.clone()),
            rng: Mutex::new(StdRng::seed_from_u64(config.seed)),
            auth: Mutex::new(realm),
            store,
            log,
            started: Instant::now(),
            faults_set: Mutex::new(Instant::now()),
            outage_until: Mutex::new(None),
            active: Mutex::new(HashMap::new()),
            clock_skew: AtomicI64::new(0),
            control: AtomicBool::new(false),
            gets: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Sets the fault switches, and starts the clock of the time-limited ones.
    pub(crate) fn set_faults(&self, f: Faults) {
        *self.faults.lock().unwrap() = f;
        *self.faults_set.lock().unwrap() = Instant::now();
    }

    /// How long ago the fault switches were set.
    pub(crate) fn faults_age(&self) -> Duration {
        self.faults_set.lock().unwrap().elapsed()
    }

    pub(crate) fn faults(&self) -> Faults {
        self.faults.lock().unwrap().clone()
    }

    /// Milliseconds since start, for log entries.
    pub(crate) fn t_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// True with probability `p`, drawn from the seeded RNG.
    pub(crate) fn roll(&self, p: f64) -> bool {
        p > 0.0 && self.rng.lock().unwrap().random::<f64>() < p
    }

    pub(crate) fn enable_control(&self) {
        self.control.store(true, Ordering::Relaxed);
    }

    pub(crate) fn control_enabled(&self) -> bool {
        self.control.load(Ordering::Relaxed)
    }

    pub(crate) fn set_clock_skew(&self, secs: i64) {
        self.clock_skew.store(secs, Ordering::Relaxed);
    }

    pub(crate) fn clock_skew(&self) -> i64 {
        self.clock_skew.load(Ordering::Relaxed)
    }

    /// The double's wall clock: the machine's plus the skew.
    pub(crate) fn now(&self) -> SystemTime {
        let skew = self.clock_skew();
        let now = SystemTime::now();
        if skew >= 0 {
            now + Duration::from_secs(skew as u64)
        } else {
            now - Duration::from_secs(skew.unsigned_abs())
        }
    }

    /// Unix seconds on the double's clock (TOTP steps, token `iat`/`exp`).
    pub(crate) fn unix_now(&self) -> u64 {
        self.now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    pub(crate) fn start_outage(&self, d: Duration) {
        *self.outage_until.lock().unwrap() = Some(Instant::now() + d);
    }

    pub(crate) fn in_outage(&self) -> bool {
        matches!(*self.outage_until.lock().unwrap(), Some(t) if Instant::now() < t)
    }

    pub(crate) fn active_for(&self, user: &str) -> usize {
        self.active.lock().unwrap().get(user).copied().unwrap_or(0)
    }

    /// Takes one of `user`'s streaming slots, or None when `cap` are already taken.
    pub(crate) fn acquire_slot(self: &Arc<Self>, user: &str, cap: Option<usize>) -> Option<Slot> {
        let mut active = self.active.lock().unwrap();
        let n = active.entry(user.to_string()).or_insert(0);
        if cap.is_some_and(|c| *n >= c) {
            return None;
        }
        *n += 1;
        Some(Slot {
            shared: self.clone(),
            user: user.to_string(),
        })
    }
}

/// One streaming body counted against its user's connection cap; released on drop.
pub(crate) struct Slot {
    shared: Arc<Shared>,
    user: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut active = self.shared.active.lock().unwrap();
        if let Some(n) = active.get_mut(&self.user) {
            *n = n.saturating_sub(1);
        }
    }
}
