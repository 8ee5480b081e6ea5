//! The persistent disk cache: product blocks and product info kept across mounts.
//!
//! Two pieces:
//! - [`DiskStore`], the directory: one file per block, `<dir>/v1/<id>/<index>.blk`, until the
//!   product is whole, then one file (`whole`); the product's info (size, file name, Range
//!   support) in `<dir>/v1/<id>/info.json`;
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
//! Safety of what is served: each block file starts with a header holding the block's length
//! and CRC-32; a block is served only when the file's length, the header's length, the length
//! the product's size implies and the CRC all agree. Anything else (torn write, bit rot, a
//! foreign file) is deleted and fetched again. Writes go to a temp file renamed into place, so
//! a reader sees a whole old file or a whole new one; no fsync: after a power loss a renamed
//! but empty or garbled file fails the check like any corrupt one.
//!
//! Two mounts sharing one directory need no lock for blocks: renames are atomic, readers
//! verify, both write identical bytes for one block, and eviction by either only deletes whole
//! files (a reader that loses the race finds the file gone and fetches the block). Two locks
//! exist, both `flock`s released whichever way a process ends: `stream.lock` (one stream per
//! product) and `assemble.lock` (one assembly of a whole product, and a deletion waits for it). Each process keeps
//! its own estimate of the bytes used and rescans the directory when it evicts.
//!
//! Files of a product (node ids, see [`crate::nodes`]) are served from the product's own zip
//! blocks when the cache holds them (`members`): a product whose zip was read once needs no
//! download for its folder view's files.
//!
//! A product whose every block is held is assembled into one file (`whole`, in the background
//! once its last block lands, or at the next open): its blocks are then read from that file,
//! still checked block by block, and [`DiskStore::whole_file`] hands it to the FUSE adapter for
//! the kernel to read directly (passthrough).
//!
//! Eviction: least recently used by file mtime (touched when a block is served, at most once
//! per [`TOUCH_INTERVAL`]), down to [`EVICT_TO`] of the budget: the budget is
//! `--cache-dir-size`, or by default whatever keeps [`KEEP_FREE`] of the filesystem free.

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
mod whole;
pub use layer::DiskCache;
use whole::WholeIndex;

/// Block size on disk: the block cache's (1 MiB), so its aligned requests map onto whole
/// files; per-file overhead (inode, header, rename) stays under 1%, and a product read in
/// part caches only about what was read.
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

const MAGIC: &[u8; 8] = b"EOBLK01\n";
/// In a product's directory: held (`flock`) by the process streaming the product whole, so
/// every other process sharing the cache reads the blocks it lands instead of a second stream.
const STREAM_LOCK: &str = "stream.lock";
const HEADER: usize = 24;
/// Layout version: a changed format goes to a new directory instead of misreading old files.
const LAYOUT: &str = "v1";

/// How much the disk cache may hold.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DiskBudget {
    /// At most this many bytes of block files.
    Bytes(u64),
    /// As much as leaves this fraction of the filesystem free.
    KeepFree(f64),
}

/// Counters since the store was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskStats {
    pub hits: u64,
    pub misses: u64,
    /// Block files found torn or corrupt, deleted.
    pub corrupt: u64,
    pub writes: u64,
    pub evicted: u64,
    /// Products assembled into one file (`whole`).
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
    /// Products being assembled by a thread of this process.
    assembling: Mutex<HashSet<String>>,
    /// Assemble a product once its last block is stored (on; tests of the block files turn
    /// it off).
    auto_assemble: AtomicBool,
    /// This store, for the assembling threads it starts.
    me: Weak<DiskStore>,
    /// Said once that the filesystem is too full for the cache to keep anything.
    warned_full: AtomicBool,
    /// Per product: blocks this process must still store before its completeness is counted
    /// again (`whole`: one directory read per product instead of one per block).
    assemble_waits: Mutex<HashMap<String, u64>>,
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
    /// Opens (creating) the cache in `dir`, removes stale temp files and counts what it holds.
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
            assembling: Mutex::default(),
            auto_assemble: AtomicBool::new(true),
            me: me.clone(),
            warned_full: AtomicBool::new(false),
            assemble_waits: Mutex::default(),
        });
        let now = SystemTime::now();
        let mut used = 0;
        for (path, meta) in store.scan_files() {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.ends_with(".tmp") {
                let age = meta
                    .modified()
                    .ok()
                    .and_then(|m| now.duration_since(m).ok());
                if age.is_some_and(|a| a > STALE_TEMP) {
                    let _ = std::fs::remove_file(&path);
                }
            } else if counts(&path) {
                used += meta.len();
            }
        }
        store.used.store(used, Ordering::Relaxed);
        Ok(store)
    }

    /// Whether products are assembled into one file once whole (the default).
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

    /// Bytes of block files, as this process counts them.
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

    /// The file of block `index` of `id`.
    pub fn block_path(&self, id: &str, index: u64) -> PathBuf {
        self.product_dir(id).join(format!("{index}.blk"))
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

    /// Block `index` of `id`, which must be `len` bytes long, if held and intact. A file that
    /// fails the check is deleted. Blocking.
    pub fn get(&self, id: &str, index: u64, len: u64) -> Option<Bytes> {
        if let Some(block) = self.get_from_whole(id, index, len) {
            return Some(block);
        }
        let path = self.block_path(id, index);
        let raw = match std::fs::read(&path) {
            Ok(raw) => raw,
            // Assembled since the look above (and its blocks deleted)?
            Err(_) => match self.get_from_whole(id, index, len) {
                Some(block) => return Some(block),
                None => {
                    self.misses.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
            },
        };
        match verify(&raw, len) {
            Ok(()) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                touch(&path);
                Some(Bytes::from(raw).slice(HEADER..))
            }
            Err(why) => {
                tracing::warn!(path = %path.display(), why, "corrupt block in the disk cache; deleting it and fetching again");
                self.corrupt.fetch_add(1, Ordering::Relaxed);
                self.misses.fetch_add(1, Ordering::Relaxed);
                if std::fs::remove_file(&path).is_ok() {
                    self.sub_used(raw.len() as u64);
                }
                None
            }
        }
    }

    /// Bytes `range` of `id` (a download of `size` bytes) from the blocks held, fetching
    /// nothing: `None` when a block is missing or fails its check. Blocking.
    pub fn read_held(&self, id: &str, size: u64, range: Range<u64>) -> Option<Vec<u8>> {
        let (start, end) = (range.start, range.end.min(size));
        if start >= end {
            return (start == end).then(Vec::new);
        }
        let bs = DISK_BLOCK_SIZE;
        let blocks = (start / bs)..=((end - 1) / bs);
        let len = |i: u64| bs.min(size - i * bs);
        // Every file present first (a stat each), so a product held in part costs no reads.
        if !blocks.clone().all(|i| self.has(id, i, len(i))) {
            return None;
        }
        let mut out = Vec::with_capacity((end - start) as usize);
        for i in blocks {
            let block = self.get(id, i, len(i))?;
            let from = start.max(i * bs) - i * bs;
            let to = end.min(i * bs + block.len() as u64) - i * bs;
            out.extend_from_slice(&block[from as usize..to as usize]);
        }
        Some(out)
    }

    /// Whether block `index` of `id` is held with the right length (not verified): in the
    /// product's whole file or as a block file.
    pub fn has(&self, id: &str, index: u64, len: u64) -> bool {
        self.whole(id)
            .is_some_and(|w| index < w.crcs.len() as u64 && w.block_len(index) == len)
            || self.has_block_file(id, index, len)
    }

    fn has_block_file(&self, id: &str, index: u64, len: u64) -> bool {
        std::fs::metadata(self.block_path(id, index)).is_ok_and(|m| m.len() == HEADER as u64 + len)
    }

    /// Stores block `index` of `id`, a download of `size` bytes (temp file + rename), then
    /// evicts if over budget; the product's last block starts its assembly into one file.
    /// Blocking. Failures are logged, not returned: the cache is an optimisation.
    pub fn put(&self, id: &str, size: u64, index: u64, data: &[u8]) {
        if self.has(id, index, data.len() as u64) {
            return;
        }
        // Once the filesystem was found too full to keep anything, a block that would not fit
        // is not written at all (it would be deleted at once), until there is room again.
        if self.warned_full.load(Ordering::Relaxed)
            && self.excess_with(HEADER as u64 + data.len() as u64) > 0
        {
            return;
        }
        if let Err(e) = self.write_block(id, index, data) {
            tracing::warn!(id, index, error = %e, "cannot write to the disk cache");
            return;
        }
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.used
            .fetch_add((HEADER + data.len()) as u64, Ordering::Relaxed);
        if self.over_budget() {
            self.evict();
        }
        self.assemble_soon(id, size, false);
    }

    fn write_block(&self, id: &str, index: u64, data: &[u8]) -> std::io::Result<()> {
        let dir = self.product_dir(id);
        std::fs::create_dir_all(&dir)?;
        let mut header = [0u8; HEADER];
        header[..8].copy_from_slice(MAGIC);
        header[8..16].copy_from_slice(&(data.len() as u64).to_le_bytes());
        header[16..20].copy_from_slice(&crc32fast::hash(data).to_le_bytes());
        self.write_atomic(&dir, &format!("{index}.blk"), &[&header, data])
    }

    /// Writes `parts` to `dir/name` through a temp file unique to this process and write.
    fn write_atomic(&self, dir: &Path, name: &str, parts: &[&[u8]]) -> std::io::Result<()> {
        let n = self.temp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
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

    /// Deletes least recently used blocks (oldest mtime first) until within [`EVICT_TO`] of
    /// the budget. One eviction at a time per process; others skip.
    pub fn evict(&self) {
        let Ok(_turn) = self.evicting.try_lock() else {
            return;
        };
        let mut blocks: Vec<(SystemTime, PathBuf, u64)> = self
            .scan_files()
            .into_iter()
            .filter(|(p, _)| counts(p))
            .map(|(p, m)| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), p, m.len()))
            .collect();
        // The scan is the truth (another mount may have written or evicted).
        self.used
            .store(blocks.iter().map(|b| b.2).sum(), Ordering::Relaxed);
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
        blocks.sort();
        for (_, path, len) in blocks {
            if to_free == 0 {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                if path.file_name().is_some_and(|n| n == whole::DATA) {
                    // A whole product goes at once; its index with it.
                    let _ = std::fs::remove_file(path.with_file_name(whole::INDEX));
                }
                self.sub_used(len);
                self.evicted.fetch_add(1, Ordering::Relaxed);
                to_free = to_free.saturating_sub(len);
            }
        }
        tracing::debug!(used = self.used_bytes(), "disk cache evicted");
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

/// Whether a file of the store counts against its budget: block files and whole products.
fn counts(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "blk")
        || path.file_name().is_some_and(|n| n == whole::DATA)
}

/// Why a block file is not to be served, if it is not.
fn verify(raw: &[u8], len: u64) -> Result<(), &'static str> {
    if raw.len() < HEADER || &raw[..8] != MAGIC {
        return Err("no header");
    }
    let stored_len = u64::from_le_bytes(raw[8..16].try_into().expect("8 bytes"));
    if stored_len != len || raw.len() as u64 != HEADER as u64 + len {
        return Err("wrong length");
    }
    let crc = u32::from_le_bytes(raw[16..20].try_into().expect("4 bytes"));
    if crc32fast::hash(&raw[HEADER..]) != crc {
        return Err("checksum mismatch");
    }
    Ok(())
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
    fn has_block(&self, id: &str, index: u64) -> bool {
        self.whole(id).is_some_and(|w| index < w.crcs.len() as u64)
            || self.block_path(id, index).exists()
    }
    fn get_block(&self, id: &str, size: u64, index: u64) -> Option<Bytes> {
        let bs = DISK_BLOCK_SIZE;
        let len = bs.min(size.checked_sub(index.checked_mul(bs)?)?);
        self.get(id, index, len)
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
            let (mut held, mut blocks) = (0, 0);
            for f in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if f.path().extension().is_some_and(|e| e == "blk") {
                    held += f
                        .metadata()
                        .map(|m| m.len())
                        .unwrap_or(0)
                        .saturating_sub(HEADER as u64);
                    blocks += 1;
                }
            }
            if blocks == 0 && info.is_none() {
                // Only a stream lock left behind by `remove_product` or an empty start.
                continue;
            }
            let whole = size.is_some_and(|s| blocks == s.div_ceil(DISK_BLOCK_SIZE) && held == s);
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

    /// Deletes the product's blocks, whole file and info (its bytes changed at the source).
    pub fn remove_product(&self, id: &str) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        let dir = self.product_dir(id);
        // An assembly of the old blocks in progress finishes first, then is deleted too.
        let _lock = whole::lock_wait(&dir);
        let Ok(files) = std::fs::read_dir(&dir) else {
            return;
        };
        for f in files.flatten() {
            let path = f.path();
            let counted = counts(&path);
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let is_info = path
                .file_name()
                .is_some_and(|n| n == "info.json" || n == whole::INDEX);
            if !(counted || is_info) {
                continue;
            }
            let removed = std::fs::remove_file(&path).is_ok();
            if removed && counted {
                self.sub_used(len);
            }
        }
        self.wholes_map().remove(id);
        tracing::info!(id, "dropped the product's blocks from the disk cache");
    }
}

#[cfg(test)]
mod tests;
