//! The block cache: product bytes in memory, in fixed-size aligned blocks, bounded in bytes.
//!
//! It owns three things:
//! - **Blocks**: `(product id, block index)` -> `Bytes`, in an LRU whose *byte* total (not entry
//!   count) is kept under the budget (`--cache-size`). Aligned blocks make every reader of the
//!   same region share the same entries, whatever offsets and lengths the kernel sends.
//! - **Fetches in flight**: a map from block to the one fetch that is getting it, so that eight
//!   readers of a block cause one request. A fetch runs as its own Tokio task: a reader that goes
//!   away (a FUSE read interrupted by the kernel) does not cancel it, and the bytes still land in
//!   the cache. Its outcome, error included, goes to every waiter through a `watch` channel; an
//!   error is not cached, so the next reader tries again.
//! - **Pinned tails**: the last bytes of a product, where a zip keeps its central directory.
//!   GDAL's `/vsizip/` and `unzip` read it first and come back to it, so it is fetched once per
//!   product and kept apart from the block LRU, which sequential reads would otherwise flush.
//!
//! Several consecutive missing blocks are fetched with one ranged request and split, which is how
//! read-ahead (see `prefetch`) saves requests. The cache never decides *what* to fetch ahead; it
//! only answers for blocks.
//!
//! Errors are the source's, passed on unchanged. A server that ignores Range is the zipper
//! client's to work around (one spooled stream from byte 0); if it cannot, its
//! [`FetchError::RangeIgnored`] reaches the readers like any other error, and nothing is cached.
//!
//! Locking: one `std::sync::Mutex` around the maps, held for map operations only, never across an
//! `.await`. All methods that start fetches must be called inside a Tokio runtime.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use lru::LruCache;
use tokio::sync::watch;

use crate::{FetchError, RangeSource};

mod handle;
mod task;

pub use handle::{BlockHandle, PendingRead};
use handle::{HandleState, Outcome, TailOutcome};
use task::{fetch_tail, run_fetch, FetchGuard};

/// 1 MiB. Large enough that a request's fixed cost (a round trip of 50-300 ms to zipper, token
/// check, redirect) is small next to its transfer at ~20 MB/s per connection (1 MiB = 50 ms);
/// small enough that a random 64 KiB read (a GDAL tile, a zip local header) costs at most ~1 MiB of
/// download. It also equals the largest read the kernel sends with `read_ahead_kb` raised, so
/// such a read touches at most two blocks.
pub const DEFAULT_BLOCK_SIZE: u64 = 1 << 20;

/// 256 MiB: the `--cache-size` default. Holds a 32 MiB read-ahead window for a handful of
/// concurrent sequential readers plus the tails and tiles a GDAL session re-reads, while staying
/// modest on a laptop.
pub const DEFAULT_BUDGET_BYTES: u64 = 256 << 20;

/// 8 MiB: the most one request asks for; a longer run of missing blocks becomes several
/// requests. Big reads (a `download`, a 1 MiB kernel read over many small blocks) then spread over
/// several connections, and a request that fails costs at most this much again. At ~20 MB/s it
/// is ~0.4 s of transfer, long enough to amortise a request's start-up.
pub const MAX_REQUEST_BYTES: u64 = 8 << 20;

/// Pinned tails take at most 1/4 of the budget (oldest product's tail dropped first): they are
/// few and small, and must never crowd out the blocks that readers are consuming.
const PINNED_SHARE_DIVISOR: u64 = 4;

/// Sizes of the cache. See the constants for why the defaults are what they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// Size of an aligned block; the unit of fetching and eviction.
    pub block_size: u64,
    /// Most bytes held at once (blocks + pinned tails), the `--cache-size` option.
    pub budget_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            block_size: DEFAULT_BLOCK_SIZE,
            budget_bytes: DEFAULT_BUDGET_BYTES,
        }
    }
}

impl CacheConfig {
    /// The config actually used: a block of at least 1 byte and a budget of at least two blocks,
    /// because a cache must hold the block being read while the next one arrives (and with the
    /// pinned share capped at a quarter, a new block can then never evict itself).
    pub fn normalised(self) -> Self {
        let block_size = self.block_size.max(1);
        Self {
            block_size,
            budget_bytes: self.budget_bytes.max(2 * block_size),
        }
    }
}

/// Counters since the cache was made (and two gauges: resident and pinned bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Block lookups answered from memory (reads served from a pinned tail count too).
    pub hits: u64,
    /// Block lookups that joined a fetch already in flight (the dedupe at work).
    pub joins: u64,
    /// Block lookups that had to start a fetch.
    pub misses: u64,
    /// Ranged requests sent to the source (a run of consecutive blocks is one).
    pub requests: u64,
    /// Requests that ended in an error.
    pub failed_requests: u64,
    /// Bytes received from the source.
    pub bytes_fetched: u64,
    /// Blocks dropped to stay under the budget.
    pub evictions: u64,
    /// Bytes held now (blocks + pinned tails).
    pub resident_bytes: u64,
    /// The most bytes ever held at once; never above the budget.
    pub peak_resident_bytes: u64,
    /// Bytes held in pinned tails now.
    pub pinned_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct BlockKey {
    id: Arc<str>,
    index: u64,
}

/// A block being fetched: which fetch, and where in its run the block sits.
struct InFlight {
    fetch: u64,
    slot: usize,
    rx: watch::Receiver<Outcome>,
}

/// A tail being fetched from `start` to the product's end.
struct TailFetch {
    start: u64,
    rx: watch::Receiver<TailOutcome>,
}

/// The last bytes of a product, `offset..offset + data.len()` (ends at the product's end).
struct Tail {
    offset: u64,
    data: Bytes,
}

struct Inner {
    blocks: LruCache<BlockKey, Bytes>,
    block_bytes: u64,
    tails: LruCache<Arc<str>, Tail>,
    tails_in_flight: HashMap<Arc<str>, TailFetch>,
    in_flight: HashMap<BlockKey, InFlight>,
    next_fetch: u64,
    stats: CacheStats,
}

struct Core<S> {
    source: S,
    config: CacheConfig,
    inner: Mutex<Inner>,
}

/// Blocks of products in memory under a byte budget, with one fetch per missing block.
/// Share it between handles in an `Arc`.
pub struct BlockCache<S: RangeSource> {
    core: Arc<Core<S>>,
}

impl<S: RangeSource> Core<S> {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The maps stay consistent between statements; a panic elsewhere must not wedge reads.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Evicts least recently used blocks until blocks + tails fit the budget.
    fn evict(&self, inner: &mut Inner) {
        let pinned = inner.stats.pinned_bytes;
        while inner.block_bytes + pinned > self.config.budget_bytes {
            let Some((_, old)) = inner.blocks.pop_lru() else {
                break;
            };
            inner.block_bytes -= old.len() as u64;
            inner.stats.evictions += 1;
        }
        let resident = inner.block_bytes + pinned;
        inner.stats.resident_bytes = resident;
        inner.stats.peak_resident_bytes = inner.stats.peak_resident_bytes.max(resident);
    }

    fn insert_block(&self, inner: &mut Inner, key: BlockKey, data: Bytes) {
        let len = data.len() as u64;
        if let Some(old) = inner.blocks.put(key, data) {
            inner.block_bytes -= old.len() as u64;
        }
        inner.block_bytes += len;
        self.evict(inner);
    }
}

/// A read of `range` served by the product's tail, pinned (a slice) or on its way (joined), if
/// the tail covers it. Tails run to the product's end, so only the start needs checking.
fn read_tail(inner: &mut Inner, id: &str, range: Range<u64>) -> Option<PendingRead> {
    if let Some(tail) = inner.tails.get(id) {
        if tail.offset <= range.start {
            let from = (range.start - tail.offset) as usize;
            let to = (range.end - tail.offset) as usize;
            let bytes = tail.data.get(from..to).map(|_| tail.data.slice(from..to))?;
            inner.stats.hits += 1;
            return Some(PendingRead::ready(bytes));
        }
    }
    let fetch = inner.tails_in_flight.get(id).filter(|f| {
        // A fetch whose task died without an answer is not worth joining.
        f.start <= range.start && (f.rx.borrow().is_some() || f.rx.has_changed().is_ok())
    })?;
    let read = PendingRead::tail(Arc::from(id), fetch.rx.clone(), fetch.start, range);
    inner.stats.joins += 1;
    Some(read)
}

/// How one block was found by [`BlockCache::start`].
enum Found {
    Ready(Bytes),
    Joined(u64, usize, watch::Receiver<Outcome>),
    Missing,
}

impl<S: RangeSource> BlockCache<S> {
    pub fn new(source: S, config: CacheConfig) -> Self {
        let config = config.normalised();
        Self {
            core: Arc::new(Core {
                source,
                config,
                inner: Mutex::new(Inner {
                    blocks: LruCache::unbounded(),
                    block_bytes: 0,
                    tails: LruCache::unbounded(),
                    tails_in_flight: HashMap::new(),
                    in_flight: HashMap::new(),
                    next_fetch: 0,
                    stats: CacheStats::default(),
                }),
            }),
        }
    }

    /// The config in use (after [`CacheConfig::normalised`]).
    pub fn config(&self) -> CacheConfig {
        self.core.config
    }

    pub fn block_size(&self) -> u64 {
        self.core.config.block_size
    }

    /// The source underneath, e.g. to ask it for `info`.
    pub fn source(&self) -> &S {
        &self.core.source
    }

    /// Number of blocks of a product of `size` bytes (the last one may be short).
    pub fn block_count(&self, size: u64) -> u64 {
        size.div_ceil(self.block_size())
    }

    /// Whether the block is in memory now (in-flight blocks are not); does not touch LRU order.
    pub fn contains(&self, id: &str, index: u64) -> bool {
        let key = BlockKey {
            id: Arc::from(id),
            index,
        };
        self.core.lock().blocks.contains(&key)
    }

    pub fn stats(&self) -> CacheStats {
        self.core.lock().stats
    }

    /// Makes sure every block of `blocks` (clipped to the product) is there or on its way, and
    /// returns a handle per block, in order. Never waits: missing blocks are fetched by spawned
    /// tasks, one ranged request per run of consecutive missing blocks (split at
    /// [`MAX_REQUEST_BYTES`]); blocks already in flight are joined, not fetched again.
    pub fn start(&self, id: &str, blocks: Range<u64>, size: u64) -> Vec<BlockHandle> {
        let end = blocks.end.min(self.block_count(size));
        let blocks = blocks.start.min(end)..end;
        let id: Arc<str> = Arc::from(id);
        let mut handles = Vec::with_capacity((blocks.end - blocks.start) as usize);
        let mut runs = Vec::new();
        let max_run = (MAX_REQUEST_BYTES / self.block_size()).max(1);
        {
            let mut inner = self.core.lock();
            let mut found: Vec<(u64, Found)> = Vec::with_capacity(handles.capacity());
            for index in blocks.clone() {
                let key = BlockKey {
                    id: id.clone(),
                    index,
                };
                let f = if let Some(data) = inner.blocks.get(&key) {
                    Found::Ready(data.clone())
                } else if let Some(f) = inner.in_flight.get(&key) {
                    Found::Joined(f.fetch, f.slot, f.rx.clone())
                } else {
                    Found::Missing
                };
                match f {
                    Found::Ready(_) => inner.stats.hits += 1,
                    Found::Joined(..) => inner.stats.joins += 1,
                    Found::Missing => inner.stats.misses += 1,
                }
                found.push((index, f));
            }
            let mut i = 0;
            while i < found.len() {
                let (index, f) = &found[i];
                let state = match f {
                    Found::Ready(data) => HandleState::Ready(data.clone()),
                    Found::Joined(fetch, slot, rx) => HandleState::Pending {
                        fetch: *fetch,
                        slot: *slot,
                        rx: rx.clone(),
                    },
                    Found::Missing => {
                        // A new fetch for this block and the missing ones right after it.
                        let run_start = *index;
                        let mut run_end = run_start + 1;
                        while run_end - run_start < max_run
                            && found
                                .get((run_end - blocks.start) as usize)
                                .is_some_and(|(_, f)| matches!(f, Found::Missing))
                        {
                            run_end += 1;
                        }
                        let fetch = inner.next_fetch;
                        inner.next_fetch += 1;
                        inner.stats.requests += 1;
                        let (tx, rx) = watch::channel(None);
                        for (slot, index) in (run_start..run_end).enumerate() {
                            let key = BlockKey {
                                id: id.clone(),
                                index,
                            };
                            let entry = InFlight {
                                fetch,
                                slot,
                                rx: rx.clone(),
                            };
                            inner.in_flight.insert(key, entry);
                            handles.push(BlockHandle {
                                index,
                                state: HandleState::Pending {
                                    fetch,
                                    slot,
                                    rx: rx.clone(),
                                },
                            });
                        }
                        runs.push((run_start..run_end, fetch, tx));
                        i += (run_end - run_start) as usize;
                        continue;
                    }
                };
                handles.push(BlockHandle {
                    index: *index,
                    state,
                });
                i += 1;
            }
        }
        for (blocks, fetch, tx) in runs {
            // Armed before the spawn: if spawning fails, dropping the guard clears the entries.
            let guard = FetchGuard {
                core: self.core.clone(),
                id: id.clone(),
                blocks,
                fetch,
                armed: true,
            };
            tokio::spawn(run_fetch(guard, size, tx));
        }
        handles
    }

    /// One block (the last block of a product is short). Block indexes past the end are an error.
    pub async fn block(&self, id: &str, index: u64, size: u64) -> Result<Bytes, FetchError> {
        let bs = self.block_size();
        if index >= self.block_count(size) {
            return Err(FetchError::OutOfRange {
                id: id.to_owned(),
                start: index.saturating_mul(bs),
                end: index.saturating_add(1).saturating_mul(bs),
                size,
            });
        }
        match self.start(id, index..index + 1, size).pop() {
            Some(handle) => handle.wait().await,
            None => unreachable!("start returns one handle per block inside the product"),
        }
    }

    /// Blocks `blocks` (clipped to the product), fetching the missing ones with as few requests
    /// as possible (one per run of consecutive missing blocks).
    pub async fn fetch_blocks(
        &self,
        id: &str,
        blocks: Range<u64>,
        size: u64,
    ) -> Result<Vec<Bytes>, FetchError> {
        let mut out = Vec::with_capacity((blocks.end.saturating_sub(blocks.start)) as usize);
        for handle in self.start(id, blocks, size) {
            out.push(handle.wait().await?);
        }
        Ok(out)
    }

    /// Bytes `offset..offset + len` of a product of `size` bytes: short at the end, empty past
    /// it. Served from the pinned tail when it covers the range, otherwise from blocks
    /// (zero-copy when the range lies within one block).
    pub async fn read(
        &self,
        id: &str,
        offset: u64,
        len: u64,
        size: u64,
    ) -> Result<Bytes, FetchError> {
        self.start_read(id, offset, len, size).wait().await
    }

    /// The first half of [`BlockCache::read`]: starts the fetches the read needs and returns at
    /// once. Lets a caller queue its own fetches behind the read's (read-ahead does).
    pub fn start_read(&self, id: &str, offset: u64, len: u64, size: u64) -> PendingRead {
        if offset >= size || len == 0 {
            return PendingRead::ready(Bytes::new());
        }
        let end = offset.saturating_add(len).min(size);
        if let Some(read) = read_tail(&mut self.core.lock(), id, offset..end) {
            return read;
        }
        let bs = self.block_size();
        let handles = self.start(id, offset / bs..(end - 1) / bs + 1, size);
        PendingRead::blocks(Arc::from(id), offset..end, bs, handles)
    }

    /// Fetches the last `len` bytes of the product (capped by its size and by the pinned share
    /// of the budget) and keeps them outside the block LRU, so that the zip's central directory
    /// survives any amount of sequential reading. Returns the tail. Calls for a product whose
    /// tail is pinned, or being fetched, with at least these bytes share it, and so do reads
    /// inside it. The tail is dropped by [`BlockCache::unpin`], or when the tails of more
    /// recently opened products need the room.
    pub async fn pin_tail(&self, id: &str, size: u64, len: u64) -> Result<Bytes, FetchError> {
        self.start_tail(id, size, len).wait().await
    }

    /// [`BlockCache::pin_tail`] without waiting: the fetch starts now (so reads of the tail made
    /// right after join it instead of fetching blocks), and its result lands in the cache.
    pub fn prefetch_tail(&self, id: &str, size: u64, len: u64) {
        drop(self.start_tail(id, size, len));
    }

    fn start_tail(&self, id: &str, size: u64, len: u64) -> PendingRead {
        let cap = self.core.config.budget_bytes / PINNED_SHARE_DIVISOR;
        let len = len.min(size).min(cap);
        if len == 0 {
            return PendingRead::ready(Bytes::new());
        }
        let start = size - len;
        let mut inner = self.core.lock();
        if let Some(read) = read_tail(&mut inner, id, start..size) {
            return read;
        }
        let owned_id: Arc<str> = Arc::from(id);
        let (tx, rx) = watch::channel(None);
        let entry = TailFetch {
            start,
            rx: rx.clone(),
        };
        inner.tails_in_flight.insert(owned_id.clone(), entry);
        inner.stats.requests += 1;
        inner.stats.misses += 1;
        drop(inner);
        // Spawned like block fetches, so an interrupted open does not waste it.
        tokio::spawn(fetch_tail(
            self.core.clone(),
            owned_id.clone(),
            start..size,
            tx,
        ));
        PendingRead::tail(owned_id, rx, start, start..size)
    }

    /// The pinned tail of a product, as `(offset, bytes)`, if there is one.
    pub fn tail(&self, id: &str) -> Option<(u64, Bytes)> {
        let inner = self.core.lock();
        inner.tails.peek(id).map(|t| (t.offset, t.data.clone()))
    }

    /// Drops the pinned tail of a product (e.g. when its last handle is closed).
    pub fn unpin(&self, id: &str) {
        let mut inner = self.core.lock();
        if let Some(old) = inner.tails.pop(id) {
            inner.stats.pinned_bytes -= old.data.len() as u64;
            self.core.evict(&mut inner);
        }
    }
}

#[cfg(test)]
mod tests;
