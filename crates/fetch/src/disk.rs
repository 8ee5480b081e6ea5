//! The persistent disk cache: product blocks and product info kept across mounts.
//!
//! Two pieces:
//! - [`DiskStore`], the directory: per product `<dir>/v1/<id>/`, its blocks at their own
//!   offsets in one sparse file with a log of the blocks held (`part.data`, `part.log`, see
//!   `partial`) until the product is whole, then that same file renamed `whole.data` beside an
//!   index (`whole`); the product's info (size, file name, Range support) in `info.json`;
//! - [`DiskCache`] (`layer`), a [`crate::RangeSource`] layer: `get_range` serves the blocks it
//!   holds and fetches only the missing runs from below (then stores them); `info` is answered
//!   from `info.json`, so a product read whole once reads again with zero requests, even with
//!   the server down.
//!
//! Why a layer under the block cache, not a tier inside it: the block cache already asks for
//! aligned runs of blocks and shares one fetch among concurrent readers, so a disk read gets the
//! same dedupe for free; the layer composes with [`crate::spool::StreamFallback`] (which hands
//! every block of a streamed product to the store through [`crate::spool::BlockSink`]); and the
//! memory cache (tuned elsewhere) stays unaware of files. Without a directory the layer passes
//! everything through, so the mount has one type either way.
//!
//! Safety of what is served: every block has a CRC-32 (in the log, or the whole file's index),
//! and a block is served only when the bytes read match it. Anything else (torn write, bit rot,
//! a foreign file, a log that does not pair with its data file) is dropped and fetched again.
//! No fsync while blocks arrive: after a power loss a logged block whose bytes did not reach
//! the disk fails its check like any corrupt one. A whole file is checked and `fsync`ed before
//! it takes its final name, since the kernel reads it without a check (passthrough).
//!
//! Two mounts sharing one directory: both may write any block (identical bytes) without a
//! lock, and readers verify. Two `flock`s, released whichever way a process ends:
//! `stream.lock` (one stream per product) and `assemble.lock` (creating, trimming, deleting or
//! making whole a product's files). Each process keeps its own estimate of the bytes used and
//! rescans the directory when it evicts.
//!
//! Files of a product (node ids, see [`crate::nodes`]) are served from the product's own zip
//! blocks when the cache holds them (`members`): a product whose zip was read once needs no
//! download for its folder view's files.
//!
//! Eviction: least recently used product first, by its data file's mtime (touched when a block
//! is served, at most once per [`TOUCH_INTERVAL`]), down to [`EVICT_TO`] of the budget; a
//! product held in part loses its lowest blocks first, so one bigger than the budget keeps its
//! latest part. The budget is `--cache-dir-size`, or by default whatever keeps [`KEEP_FREE`]
//! of the filesystem free.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::spool::{BlockSink, StreamClaim};
use crate::{ObjectInfo, RangeSupport};

mod layer;
mod members;
mod partial;
mod whole;
pub use layer::DiskCache;
use partial::Partial;
use whole::WholeIndex;

/// Block size on disk: the block cache's (1 MiB), so its aligned requests map onto whole
/// blocks; a log record is 16 bytes a block, and a product read in part caches only about what
/// was read.
pub const DISK_BLOCK_SIZE: u64 = crate::cache::DEFAULT_BLOCK_SIZE;
/// Default budget: leave this fraction of the cache's filesystem free (5%), so a
/// cache that fills the disk never starves the user's own files.
pub const KEEP_FREE: f64 = 0.05;
/// Eviction frees down to this fraction of the budget, so one scan of the directory pays for
/// many blocks written rather than running on every write at the limit.
pub const EVICT_TO: f64 = 0.9;
/// A served block's mtime is refreshed only when older than this: LRU order to the minute is
/// plenty, and it saves a metadata write per read.
pub const TOUCH_INTERVAL: Duration = Duration::from_secs(60);
/// Temp files older than this are left-overs of a crash and are removed at open; younger ones
/// may be another mount's write in progress.
const STALE_TEMP: Duration = Duration::from_secs(3600);

/// In a product's directory: held (`flock`) by the process streaming the product whole, so
/// every other process sharing the cache reads the blocks it lands instead of a second stream.
const STREAM_LOCK: &str = "stream.lock";
/// Open pairs kept per process; more are closed (and opened again when next used).
const MAX_OPEN_PARTIALS: usize = 64;
/// Layout version: a changed format goes to a new directory instead of misreading old files.
const LAYOUT: &str = "v1";

/// How much the disk cache may hold.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DiskBudget {
    /// At most this many bytes of product files.
    Bytes(u64),
    /// As much as leaves this fraction of the filesystem free.
    KeepFree(f64),
}

/// Counters since the store was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskStats {
    pub hits: u64,
    pub misses: u64,
    /// Blocks found torn or corrupt (or, making a product whole, a block's bytes not the ones
    /// logged), dropped.
    pub corrupt: u64,
    pub writes: u64,
    pub evicted: u64,
    /// Products made whole (`whole`).
    pub assembled: u64,
}

/// The cache directory. See the module doc.
pub struct DiskStore {
    root: PathBuf,
    budget: DiskBudget,
    used: AtomicU64,
    evicting: Mutex<()>,
    hits: AtomicU64,
    misses: AtomicU64,
    corrupt: AtomicU64,
    writes: AtomicU64,
    evicted: AtomicU64,
    temp_counter: AtomicU64,
    /// Products dropped by [`DiskStore::remove_product`] in this process: what was read from
    /// their blocks before (a zip's directory) is read again.
    dropped: AtomicU64,
    assembled: AtomicU64,
    /// Whole files' indexes read in this process, by product id; each use checks that the
    /// data file is still the one the index pairs with (one `stat`).
    wholes: Mutex<HashMap<String, Arc<WholeIndex>>>,
    /// Products held in part, open in this process, by product id.
    partials: Mutex<HashMap<String, Arc<Partial>>>,
    /// Products being made whole by a thread of this process.
    assembling: Mutex<HashSet<String>>,
    /// Make a product whole once its last block is stored (on; tests of products held in part
    /// turn it off).
    auto_assemble: AtomicBool,
    /// This store, for the assembling threads it starts.
    me: Weak<DiskStore>,
    /// Said once that the filesystem is too full for the cache to keep anything.
    warned_full: AtomicBool,
}

/// A directory name for a product id: ids are UUIDs, anything else is hex-encoded so no id can
/// name a path outside the cache.
fn dir_name(id: &str) -> String {
    let plain = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    // A directory name may hold 255 bytes; file ids inside a product (`<uuid>/<path>`, see
    // `nodes`) hex-encode to more, so longer ones are named by their SHA-256 instead.
    const MAX_HEX: usize = 200;
    if plain {
        id.to_string()
    } else if id.len() * 2 <= MAX_HEX {
        let hex: String = id.bytes().map(|b| format!("{b:02x}")).collect();
        format!("_{hex}")
    } else {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(id.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("_h{hex}")
    }
}

impl DiskStore {
    /// Opens (creating) the cache in `dir`, removes stale temp files and the block files of the
    /// layout before this one (`<index>.blk`, whole products are kept), and counts what it
    /// holds.
    pub fn open(dir: &Path, budget: DiskBudget) -> std::io::Result<Arc<DiskStore>> {
        let root = dir.join(LAYOUT);
        std::fs::create_dir_all(&root)?;
        let store = Arc::new_cyclic(|me| DiskStore {
            root,
            budget,
            used: AtomicU64::new(0),
            evicting: Mutex::new(()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            corrupt: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            temp_counter: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            assembled: AtomicU64::new(0),
            wholes: Mutex::default(),
            partials: Mutex::default(),
            assembling: Mutex::default(),
            auto_assemble: AtomicBool::new(true),
            me: me.clone(),
            warned_full: AtomicBool::new(false),
        });
        let now = SystemTime::now();
        let mut used = 0;
        for (path, meta) in store.scan_files() {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.ends_with(".blk") {
                let _ = std::fs::remove_file(&path);
            } else if name.ends_with(".tmp") {
                let age = meta
                    .modified()
                    .ok()
                    .and_then(|m| now.duration_since(m).ok());
                if age.is_some_and(|a| a > STALE_TEMP) {
                    let _ = std::fs::remove_file(&path);
                }
            } else if counts(&path) {
                used += disk_len(&meta);
            }
        }
        store.used.store(used, Ordering::Relaxed);
        Ok(store)
    }

    /// Whether products are made whole once every block is held (the default).
    #[cfg(test)]
    pub(crate) fn set_auto_assemble(&self, on: bool) {
        self.auto_assemble.store(on, Ordering::Relaxed);
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn block_size(&self) -> u64 {
        DISK_BLOCK_SIZE
    }

    /// Bytes of product files on disk, as this process counts them.
    pub fn used_bytes(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn stats(&self) -> DiskStats {
        DiskStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            corrupt: self.corrupt.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
            assembled: self.assembled.load(Ordering::Relaxed),
        }
    }

    fn product_dir(&self, id: &str) -> PathBuf {
        self.root.join(dir_name(id))
    }

    /// Every file under the product directories, with its metadata.
    fn scan_files(&self) -> Vec<(PathBuf, std::fs::Metadata)> {
        let mut out = Vec::new();
        let Ok(products) = std::fs::read_dir(&self.root) else {
            return out;
        };
        for p in products.flatten() {
            let Ok(files) = std::fs::read_dir(p.path()) else {
                continue;
            };
            for f in files.flatten() {
                if let Ok(meta) = f.metadata() {
                    if meta.is_file() {
                        out.push((f.path(), meta));
                    }
                }
            }
        }
        out
    }

    /// Block `index` of `id` (a download of `size` bytes), if held and intact: from its whole
    /// file, else from its partial one. A block that fails its check is dropped. Blocking.
    pub fn get(&self, id: &str, size: u64, index: u64) -> Option<Bytes> {
        let got = self.read_run(id, size, index, index);
        if got.is_none() {
            self.misses.fetch_add(1, Ordering::Relaxed);
        }
        got
    }

    /// Bytes `range` of `id` (a download of `size` bytes) from the blocks held, fetching
    /// nothing: `None` when a block is missing or fails its check. Blocking.
    pub fn read_held(&self, id: &str, size: u64, range: Range<u64>) -> Option<Vec<u8>> {
        let (start, end) = (range.start, range.end.min(size));
        if start >= end {
            return (start == end).then(Vec::new);
        }
        let bs = DISK_BLOCK_SIZE;
        let (first, last) = (start / bs, (end - 1) / bs);
        // Reads nothing unless every block is held (the log or the index says so first).
        let run = self.read_run(id, size, first, last)?;
        let from = (start - first * bs) as usize;
        Some(run[from..from + (end - start) as usize].to_vec())
    }

    /// Blocks `first..=last` of `id` (a download of `size` bytes), all held and checked: from
    /// its whole file, else its partial one, else the whole file again (made whole between the
    /// two looks). Blocking.
    pub fn read_run(&self, id: &str, size: u64, first: u64, last: u64) -> Option<Bytes> {
        self.read_whole_run(id, size, first, last)
            .or_else(|| self.read_partial_run(id, size, first, last))
            .or_else(|| self.read_whole_run(id, size, first, last))
    }

    /// Each block of `first..=last` of `id` (a download of `size` bytes) held in its partial
    /// file and intact, `None` where not: one look at the log, and no read at all for a
    /// product with no partial file (a cold read). Blocking.
    pub fn held_blocks(&self, id: &str, size: u64, first: u64, last: u64) -> Vec<Option<Bytes>> {
        let n = (last + 1 - first) as usize;
        let held = self
            .partial(id, size, false)
            .map_or_else(|| vec![false; n], |p| p.held_of(first, last));
        let out: Vec<Option<Bytes>> = (first..=last)
            .zip(held)
            .map(|(i, h)| h.then(|| self.read_partial_run(id, size, i, i)).flatten())
            .collect();
        let missed = out.iter().filter(|b| b.is_none()).count() as u64;
        self.misses.fetch_add(missed, Ordering::Relaxed);
        out
    }

    /// Whether block `index` of `id` (a download of `size` bytes) is held (not verified): in
    /// the product's whole file or its partial one.
    pub fn has(&self, id: &str, size: u64, index: u64) -> bool {
        self.whole(id)
            .is_some_and(|w| w.size == size && index < w.crcs.len() as u64)
            || self
                .partial(id, size, false)
                .is_some_and(|p| p.crc(index).is_some())
    }

    /// Stores block `index` of `id`, a download of `size` bytes, in the product's partial
    /// file, then evicts if over budget; the product's last block starts making it whole.
    /// Blocking. Failures are logged, not returned: the cache is an optimisation.
    pub fn put(&self, id: &str, size: u64, index: u64, data: &[u8]) {
        if self.whole(id).is_some_and(|w| w.size == size) {
            return;
        }
        // Once the filesystem was found too full to keep anything, a block that would not fit
        // is not written at all (it would be dropped at once), until there is room again.
        if self.warned_full.load(Ordering::Relaxed) && self.excess_with(data.len() as u64) > 0 {
            return;
        }
        let Some(p) = self.partial(id, size, true) else {
            return;
        };
        if p.crc(index).is_some() {
            return;
        }
        if let Err(e) = p.write(index, data) {
            tracing::warn!(id, index, error = %e, "cannot write to the disk cache");
            return;
        }
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.used.fetch_add(data.len() as u64, Ordering::Relaxed);
        if self.over_budget() {
            self.evict();
        }
        // The write just read the log: its count is fresh.
        if p.held_now() == p.blocks() {
            self.assemble_soon(id, size, false);
        }
    }

    /// `id`'s partial file for a download of `size` bytes, open: the one this process has if
    /// it is still current, else the one on disk, else (with `create`, and no whole file) a
    /// new one, made under the product's lock.
    pub(crate) fn partial(&self, id: &str, size: u64, create: bool) -> Option<Arc<Partial>> {
        let dir = self.product_dir(id);
        let known = self.partials_map().get(id).cloned();
        if let Some(p) = known {
            if p.size == size && p.current() {
                return Some(p);
            }
            self.partials_map().remove(id);
        }
        let opened = match Partial::open(&dir, size, DISK_BLOCK_SIZE) {
            Some(p) => p,
            None if !create || self.whole(id).is_some() => return None,
            None => self.create_partial(id, &dir, size)?,
        };
        let p = Arc::new(opened);
        let mut map = self.partials_map();
        if map.len() >= MAX_OPEN_PARTIALS {
            map.clear();
        }
        map.insert(id.to_string(), Arc::clone(&p));
        Some(p)
    }

    /// A new partial file for `id`, under the product's lock (or the one another process made
    /// meanwhile). A pair of another size or that does not pair up is replaced.
    fn create_partial(&self, id: &str, dir: &Path, size: u64) -> Option<Partial> {
        let made = std::fs::create_dir_all(dir).and_then(|_| {
            let _lock = whole::lock_wait(dir);
            if let Some(p) = Partial::open(dir, size, DISK_BLOCK_SIZE) {
                return Ok(Some(p));
            }
            if WholeIndex::read(dir).is_some() {
                return Ok(None);
            }
            let old = partial::disk_bytes(dir);
            let p = Partial::create(dir, size, DISK_BLOCK_SIZE, &|name| self.temp_name(name))?;
            self.sub_used(old);
            Ok(Some(p))
        });
        made.unwrap_or_else(|e| {
            tracing::warn!(id, error = %e, "cannot write to the disk cache");
            None
        })
    }

    /// Blocks `first..=last` of `id` (a download of `size` bytes) from its partial file, all
    /// held: one read, each block checked against its logged CRC. A block that fails is dropped
    /// from the log (fetched and written again). Blocking.
    fn read_partial_run(&self, id: &str, size: u64, first: u64, last: u64) -> Option<Bytes> {
        let p = self.partial(id, size, false)?;
        let crcs = p.crcs(first, last)?;
        let start = first * DISK_BLOCK_SIZE;
        let len = ((last + 1) * DISK_BLOCK_SIZE).min(size) - start;
        let buf = whole::pread_run(&p.data()?, start, len)?;
        if let Some(k) = whole::first_bad(&buf, DISK_BLOCK_SIZE, &crcs) {
            let index = first + k as u64;
            tracing::warn!(
                id,
                index,
                "corrupt block in the disk cache; dropping it and fetching it again"
            );
            self.corrupt.fetch_add(1, Ordering::Relaxed);
            p.forget(index);
            return None;
        }
        self.hits.fetch_add(last - first + 1, Ordering::Relaxed);
        touch(&self.product_dir(id).join(partial::DATA));
        Some(buf)
    }

    fn partials_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Partial>>> {
        self.partials.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A temp file name for `name`, unique to this process and call (`.tmp` at the end, so a
    /// crash's leftovers are swept at open).
    fn temp_name(&self, name: &str) -> String {
        let n = self.temp_counter.fetch_add(1, Ordering::Relaxed);
        format!(".{name}.{}.{n}.tmp", std::process::id())
    }

    /// Writes `parts` to `dir/name` through a temp file unique to this process and write.
    fn write_atomic(&self, dir: &Path, name: &str, parts: &[&[u8]]) -> std::io::Result<()> {
        let tmp = dir.join(self.temp_name(name));
        let result = (|| {
            let mut f = whole::create_new(&tmp)?;
            for p in parts {
                f.write_all(p)?;
            }
            drop(f);
            std::fs::rename(&tmp, dir.join(name))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    fn sub_used(&self, n: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(n))
            });
    }

    /// Bytes to free now to be within budget (0: within).
    fn excess(&self, target: f64) -> u64 {
        match self.budget {
            DiskBudget::Bytes(b) => self.used_bytes().saturating_sub((b as f64 * target) as u64),
            DiskBudget::KeepFree(frac) => match fs_space(&self.root) {
                Some((total, free)) => {
                    // At the limit: free exactly `frac`; evicting: free a bit more.
                    let want_free = total as f64 * (frac + (1.0 - target) * frac);
                    (want_free as u64).saturating_sub(free)
                }
                None => 0,
            },
        }
    }

    /// Bytes over budget once `more` bytes are written (0: they fit).
    fn excess_with(&self, more: u64) -> u64 {
        match self.budget {
            DiskBudget::Bytes(b) => (self.used_bytes() + more).saturating_sub(b),
            DiskBudget::KeepFree(frac) => match fs_space(&self.root) {
                Some((total, free)) => ((total as f64 * frac) as u64 + more).saturating_sub(free),
                None => 0,
            },
        }
    }

    fn over_budget(&self) -> bool {
        self.excess(1.0) > 0
    }

    /// Frees the least recently used products (oldest data file first) until within
    /// [`EVICT_TO`] of the budget: a whole product goes at once, one held in part loses its
    /// lowest blocks first. One eviction at a time per process; others skip. A product whose
    /// lock another process holds (making it whole, deleting it) is skipped this time.
    pub fn evict(&self) {
        let Ok(_turn) = self.evicting.try_lock() else {
            return;
        };
        let mut files: Vec<(SystemTime, PathBuf, u64)> = self
            .scan_files()
            .into_iter()
            .filter(|(p, _)| counts(p))
            .map(|(p, m)| {
                (
                    m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    p,
                    disk_len(&m),
                )
            })
            .collect();
        // The scan is the truth (another mount may have written or evicted).
        self.used
            .store(files.iter().map(|f| f.2).sum(), Ordering::Relaxed);
        let mut to_free = self.excess(EVICT_TO);
        if to_free == 0 {
            return;
        }
        if to_free >= self.used_bytes() && !self.warned_full.swap(true, Ordering::Relaxed) {
            if let DiskBudget::KeepFree(frac) = self.budget {
                tracing::warn!(
                    dir = %self.root.display(),
                    "the disk cache's filesystem has less than {:.0}% free: the cache keeps \
                     nothing, and every product is downloaded again; free some room, or give \
                     --cache-dir-size",
                    frac * 100.0
                );
            }
        }
        files.sort();
        for (_, path, len) in files {
            if to_free == 0 {
                break;
            }
            let Some(dir) = path.parent() else { continue };
            let Some(_lock) = whole::try_lock(dir) else {
                continue;
            };
            let freed = if path.file_name().is_some_and(|n| n == whole::DATA) {
                // A whole product goes at once; its index with it.
                let gone = std::fs::remove_file(&path).is_ok();
                let _ = std::fs::remove_file(dir.join(whole::INDEX));
                if gone {
                    len
                } else {
                    0
                }
            } else {
                self.trim_partial(dir, to_free)
            };
            if freed > 0 {
                self.sub_used(freed);
                self.evicted.fetch_add(1, Ordering::Relaxed);
                to_free = to_free.saturating_sub(freed);
            }
        }
        tracing::debug!(used = self.used_bytes(), "disk cache evicted");
    }

    /// Frees at least `want` bytes of the partial file in `dir` (its lowest blocks first), or
    /// all of it (its files deleted): the bytes freed. The caller holds the product's lock.
    fn trim_partial(&self, dir: &Path, want: u64) -> u64 {
        let all = partial::disk_bytes(dir);
        let Some(p) = Partial::open_any(dir) else {
            // Not a pair (a crash between creating its two files): nothing in it is served.
            let _ = std::fs::remove_file(dir.join(partial::LOG));
            return if std::fs::remove_file(dir.join(partial::DATA)).is_ok() {
                all
            } else {
                0
            };
        };
        let held = p.held_indices();
        let held_bytes: u64 = held.iter().map(|&i| p.block_len(i)).sum();
        if held_bytes <= want {
            let _ = std::fs::remove_file(dir.join(partial::LOG));
            return if std::fs::remove_file(dir.join(partial::DATA)).is_ok() {
                all
            } else {
                0
            };
        }
        let mut drop = Vec::new();
        let mut freed = 0;
        for i in held {
            if freed >= want {
                break;
            }
            freed += p.block_len(i);
            drop.push(i);
        }
        p.drop_blocks(&drop);
        all.saturating_sub(partial::disk_bytes(dir))
    }

    /// The product's info as stored by [`DiskStore::save_info`].
    pub fn load_info(&self, id: &str) -> Option<ObjectInfo> {
        let text = std::fs::read_to_string(self.product_dir(id).join("info.json")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        if v["id"].as_str() != Some(id) {
            return None;
        }
        Some(ObjectInfo {
            size: v["size"].as_u64()?,
            filename: v["filename"].as_str().map(String::from),
            ranges: match v["ranges"].as_str()? {
                "ignored" => RangeSupport::Ignored,
                _ => RangeSupport::Honoured,
            },
        })
    }

    pub fn save_info(&self, id: &str, info: &ObjectInfo) {
        let v = serde_json::json!({
            "id": id,
            "size": info.size,
            "filename": info.filename,
            "ranges": match info.ranges {
                RangeSupport::Honoured => "honoured",
                RangeSupport::Ignored => "ignored",
            },
        });
        let dir = self.product_dir(id);
        let result = std::fs::create_dir_all(&dir)
            .and_then(|_| self.write_atomic(&dir, "info.json", &[v.to_string().as_bytes()]));
        if let Err(e) = result {
            tracing::warn!(id, error = %e, "cannot save product info in the disk cache");
        }
    }
}

/// Whether a file of the store counts against its budget: the products' data files.
fn counts(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n == whole::DATA || n == partial::DATA)
}

/// The disk a file takes: its allocated blocks (a partial file's holes take none).
fn disk_len(meta: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    meta.blocks() * 512
}

fn touch(path: &Path) {
    let now = SystemTime::now();
    let stale = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .map(|m| now.duration_since(m).unwrap_or_default() > TOUCH_INTERVAL)
        .unwrap_or(false);
    if stale {
        if let Ok(f) = std::fs::OpenOptions::new().append(true).open(path) {
            let _ = f.set_modified(now);
        }
    }
}

/// (total, available to us) bytes of the filesystem holding `path`.
fn fs_space(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills the struct we own; the path is a valid C string.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    let frsize = s.f_frsize as u64;
    Some((s.f_blocks as u64 * frsize, s.f_bavail as u64 * frsize))
}

impl BlockSink for DiskStore {
    fn block_size(&self) -> u64 {
        DISK_BLOCK_SIZE
    }
    fn put_block(&self, id: &str, size: u64, index: u64, data: &[u8]) {
        self.put(id, size, index, data);
    }
    fn has_block(&self, id: &str, size: u64, index: u64) -> bool {
        self.has(id, size, index)
    }
    fn has_all(&self, id: &str, size: u64) -> bool {
        self.whole(id).is_some_and(|w| w.size == size)
            || self
                .partial(id, size, false)
                .is_some_and(|p| p.held() == p.blocks())
    }
    fn get_block(&self, id: &str, size: u64, index: u64) -> Option<Bytes> {
        self.get(id, size, index)
    }
    fn claim_stream(&self, id: &str) -> Option<StreamClaim> {
        self.claim(id)
    }
    fn forget(&self, id: &str) {
        self.remove_product(id);
    }
}

/// A product held (wholly or in part) in the disk cache, for `eodata-mount cache list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedProduct {
    pub id: String,
    /// The download's size, when its info was saved.
    pub size: Option<u64>,
    /// Bytes of the product held (block payloads).
    pub held: u64,
    /// Every block is held.
    pub whole: bool,
}

impl DiskStore {
    /// Every product with a directory in the cache.
    pub fn products(&self) -> Vec<CachedProduct> {
        let mut out = Vec::new();
        let Ok(dirs) = std::fs::read_dir(&self.root) else {
            return out;
        };
        for d in dirs.flatten() {
            let dir = d.path();
            if !dir.is_dir() {
                continue;
            }
            let info = std::fs::read_to_string(dir.join("info.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
            let id = info
                .as_ref()
                .and_then(|v| v["id"].as_str().map(String::from))
                .unwrap_or_else(|| d.file_name().to_string_lossy().into_owned());
            let size = info.as_ref().and_then(|v| v["size"].as_u64());
            if let Some(w) = WholeIndex::read(&dir) {
                out.push(CachedProduct {
                    id,
                    size: Some(w.size),
                    held: w.size,
                    whole: true,
                });
                continue;
            }
            let part = Partial::open_any(&dir);
            if part.is_none() && info.is_none() {
                // Only a stream lock left behind by `remove_product` or an empty start.
                continue;
            }
            let size = size.or(part.as_ref().map(|p| p.size));
            let held = part.as_ref().map_or(0, |p| {
                p.held_indices().iter().map(|&i| p.block_len(i)).sum()
            });
            let whole = part
                .as_ref()
                .is_some_and(|p| Some(p.size) == size && p.held() == p.blocks());
            out.push(CachedProduct {
                id,
                size,
                held,
                whole,
            });
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// `flock(LOCK_EX | LOCK_NB)` on `<product>/stream.lock`: `None` while another process
    /// (or another claim here) holds it. When the lock cannot be had for another reason (a
    /// filesystem without locks), streaming here is still right: a claim without a file.
    fn claim(&self, id: &str) -> Option<StreamClaim> {
        use std::os::fd::AsRawFd;
        let dir = self.product_dir(id);
        let file = std::fs::create_dir_all(&dir).and_then(|_| {
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join(STREAM_LOCK))
        });
        let file = match file {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(id, error = %e, "no stream lock in the disk cache; streaming here");
                return Some(StreamClaim(None));
            }
        };
        // SAFETY: flock on a descriptor we own; released with it.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Some(StreamClaim(Some(file)));
        }
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EWOULDBLOCK) => None,
            _ => Some(StreamClaim(None)),
        }
    }

    /// Deletes the product's files and info (its bytes changed at the source).
    pub fn remove_product(&self, id: &str) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        let dir = self.product_dir(id);
        // Making it whole, in progress, finishes first, then is deleted too.
        let _lock = whole::lock_wait(&dir);
        for name in [whole::DATA, partial::DATA] {
            let path = dir.join(name);
            if let Ok(meta) = std::fs::symlink_metadata(&path) {
                if std::fs::remove_file(&path).is_ok() {
                    self.sub_used(disk_len(&meta));
                }
            }
        }
        for name in [whole::INDEX, partial::LOG, "info.json"] {
            let _ = std::fs::remove_file(dir.join(name));
        }
        self.wholes_map().remove(id);
        self.partials_map().remove(id);
        tracing::info!(id, "dropped the product's blocks from the disk cache");
    }
}

#[cfg(test)]
mod tests;
