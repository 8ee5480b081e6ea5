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

use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use crate::{FetchError, RangeSource};

mod handle;
mod state;
mod task;

pub use handle::{BlockHandle, PendingRead};
use handle::{Outcome, TailOutcome};
use state::{NewRun, State};
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
    /// Blocks a streaming reader had passed, dropped ([`BlockCache::release`]).
    pub released: u64,
    /// Bytes held now (blocks + pinned tails).
    pub resident_bytes: u64,
    /// The most bytes ever held at once; never above the budget.
    pub peak_resident_bytes: u64,
    /// Bytes held in pinned tails now.
    pub pinned_bytes: u64,
}

struct Core<S> {
    source: S,
    config: CacheConfig,
    inner: Mutex<State>,
}

/// Blocks of products in memory under a byte budget, with one fetch per missing block.
/// Share it between handles in an `Arc`.
pub struct BlockCache<S: RangeSource> {
    core: Arc<Core<S>>,
}

impl<S: RangeSource> Core<S> {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The maps stay consistent between statements; a panic elsewhere must not wedge reads.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<S: RangeSource> BlockCache<S> {
    pub fn new(source: S, config: CacheConfig) -> Self {
        let config = config.normalised();
        Self {
            core: Arc::new(Core {
                source,
                config,
                inner: Mutex::new(State::new(config.budget_bytes)),
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
        self.core.lock().contains(id, index)
    }

    pub fn stats(&self) -> CacheStats {
        self.core.lock().stats
    }

    /// Drops block `index` of `id` from memory now, if held and the source keeps it locally
    /// ([`RangeSource::holds_locally`]: the disk cache has it), so reading it again costs no
    /// request (a streaming reader is past it).
    pub fn release(&self, id: &str, index: u64) {
        if !self.core.lock().contains(id, index) {
            return;
        }
        let bs = self.block_size();
        if self
            .core
            .source
            .holds_locally(id, index * bs..(index + 1) * bs)
        {
            self.core.lock().release(id, index);
        }
    }

    /// Makes sure every block of `blocks` (clipped to the product) is there or on its way, and
    /// returns a handle per block, in order. Never waits: missing blocks are fetched by spawned
    /// tasks, one ranged request per run of consecutive missing blocks (split at
    /// [`MAX_REQUEST_BYTES`]); blocks already in flight are joined, not fetched again.
    pub fn start(&self, id: &str, blocks: Range<u64>, size: u64) -> Vec<BlockHandle> {
        let end = blocks.end.min(self.block_count(size));
        let blocks = blocks.start.min(end)..end;
        let id: Arc<str> = Arc::from(id);
        let max_run = (MAX_REQUEST_BYTES / self.block_size()).max(1);
        let (handles, runs) = self.core.lock().plan(&id, blocks, max_run);
        for NewRun { blocks, fetch, tx } in runs {
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
    /// as possible (one per run of consecutive missing blocks). Tests' view of [`Self::start`].
    #[cfg(test)]
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
        if let Some(read) = self.core.lock().read_tail(id, offset..end) {
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
        let mut state = self.core.lock();
        if let Some(read) = state.read_tail(id, start..size) {
            return read;
        }
        let owned_id: Arc<str> = Arc::from(id);
        let tx = state.start_tail(&owned_id, start);
        let rx = tx.subscribe();
        drop(state);
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
        self.core.lock().tail(id)
    }

    /// Drops the pinned tail of a product (e.g. when its last handle is closed).
    pub fn unpin(&self, id: &str) {
        self.core.lock().unpin(id);
    }
}

#[cfg(test)]
mod tests;
