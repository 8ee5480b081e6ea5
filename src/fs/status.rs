//! The `.eodata-status` file in the root: what the mount is doing, as `key: value` lines that
//! `cat` shows and scripts can grep. It is rendered when opened (one consistent snapshot per
//! open) and served with direct I/O, so every `cat` sees fresh numbers whatever size a previous
//! `stat` reported.
//!
//! It is not listed by `readdir`: `rsync -a /mnt/eodata/` or `find` must not copy or walk it;
//! open it by name.
//!
//! The filesystem writes its own counters and the block cache's; what lies outside it (token
//! manager, download client) comes from a closure the mount command installs
//! ([`super::Fs::set_status_source`]), so this file knows nothing of those layers' types.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use eodata_fetch::cache::CacheStats;
use eodata_fetch::RangeSource;

use super::{Attr, Fs, FsStats, Kind, Open, Resolver, STATUS_INO};

/// The file's name in the root.
pub const STATUS_FILE: &str = ".eodata-status";

/// Extra lines from the layers above the filesystem.
pub type StatusSource = Box<dyn Fn() -> String + Send + Sync>;

/// Seconds since the epoch, for times in the report.
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The filesystem's part of the report.
pub fn render(
    started: SystemTime,
    stats: &FsStats,
    open_files: usize,
    cache: CacheStats,
    last_error: Option<&(SystemTime, String)>,
    extra: &str,
) -> String {
    let now = SystemTime::now();
    let mut s = String::new();
    let _ = writeln!(s, "now: {}", unix(now));
    let _ = writeln!(
        s,
        "mounted_for_secs: {}",
        now.duration_since(started).unwrap_or_default().as_secs()
    );
    s.push_str(extra);
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let _ = writeln!(s, "fs.open_files: {open_files}");
    let _ = writeln!(s, "fs.opens: {}", get(&stats.opens));
    let _ = writeln!(s, "fs.reads: {}", get(&stats.reads));
    let _ = writeln!(s, "fs.reads_in_flight: {}", get(&stats.reads_in_flight));
    let _ = writeln!(s, "fs.bytes_read: {}", get(&stats.bytes_read));
    let _ = writeln!(s, "fs.read_errors: {}", get(&stats.read_errors));
    let _ = writeln!(s, "cache.hits: {}", cache.hits);
    let _ = writeln!(s, "cache.joins: {}", cache.joins);
    let _ = writeln!(s, "cache.misses: {}", cache.misses);
    let _ = writeln!(s, "cache.requests: {}", cache.requests);
    let _ = writeln!(s, "cache.failed_requests: {}", cache.failed_requests);
    let _ = writeln!(s, "cache.bytes_fetched: {}", cache.bytes_fetched);
    let _ = writeln!(s, "cache.resident_bytes: {}", cache.resident_bytes);
    let _ = writeln!(s, "cache.evictions: {}", cache.evictions);
    let _ = writeln!(s, "cache.released: {}", cache.released);
    let (reused, fresh) = eodata_fetch::buffers::counts();
    let _ = writeln!(s, "buffers.reused: {reused}");
    let _ = writeln!(s, "buffers.fresh: {fresh}");
    let _ = writeln!(
        s,
        "buffers.pooled_bytes: {}",
        eodata_fetch::buffers::pooled_bytes()
    );
    match last_error {
        Some((t, msg)) => {
            let _ = writeln!(s, "last_error: {} {msg}", unix(*t));
        }
        None => s.push_str("last_error: none\n"),
    }
    s
}

impl<R: Resolver, S: RangeSource> Fs<R, S> {
    /// The status report now.
    pub fn status_text(&self) -> String {
        let extra = match &*self.status_source.lock().unwrap() {
            Some(f) => f(),
            None => String::new(),
        };
        let open_files = self
            .handles
            .lock()
            .unwrap()
            .values()
            .filter(|h| matches!(***h, Open::Product { .. }))
            .count();
        let last_error = self.last_error.lock().unwrap().clone();
        let mut text = render(
            self.created,
            &self.stats,
            open_files,
            self.cache.stats(),
            last_error.as_ref(),
            &extra,
        );
        // Query directories, by name (`/` for the root's): what they list and how old it is.
        let mut queries: Vec<_> = self.queries.values().collect();
        queries.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        for dir in queries {
            let name = dir.spec.name.as_deref().unwrap_or("/");
            // A listing being refetched right now is reported on the next read.
            if let Ok(l) = dir.listing.try_lock() {
                let _ = writeln!(text, "query.{name}.products: {}", l.entries.len());
                if let Some(t) = l.fetched_at {
                    let _ = writeln!(text, "query.{name}.age_secs: {}", t.elapsed().as_secs());
                }
            }
        }
        text.push_str(&self.passthrough.lines());
        text.push_str(&self.tree_status());
        text
    }

    /// The status file's attributes: the size of a report rendered now (read with direct I/O,
    /// so a later, longer report is still read to its end).
    pub(super) fn status_attr(&self) -> Attr {
        Attr {
            ino: STATUS_INO,
            kind: Kind::File,
            size: self.status_text().len() as u64,
            mtime: SystemTime::now(),
            perm: 0o444,
            exact: false,
        }
    }
}
