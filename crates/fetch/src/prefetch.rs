//! Read-ahead for one open file: guesses whether its reader streams, and if so fetches the
//! blocks it will want next before it asks, in parallel.
//!
//! A [`Prefetcher`] is made per open handle. Each read is classified ([`Access`]) against where
//! the previous read ended:
//! - **Sequential** (starts where the last one ended): the read-ahead window starts at one
//!   block and doubles each time the reader enters a new block, up to a cap; nothing is read
//!   ahead until the reader has left the block its stream began in. Growth is tied to bytes consumed, not to the number of reads, so the
//!   kernel's first 16 KiB + 128 KiB reads of a small zip member (a manifest, an XML, GDAL
//!   reading a 400 KiB GeoTIFF inside a 1 GiB zip) do not trigger a download of the blocks after
//!   it: a reader that stays inside one block costs that block and nothing more.
//! - **Near-sequential** (a short hop back or forward): the window is kept but does not grow.
//!   The kernel issues readahead reads concurrently (`FUSE_ASYNC_READ`) and they can arrive out of
//!   order, up to its readahead size (128 KiB by default, 1 MiB with `read_ahead_kb` raised);
//!   zip readers also step back to re-read a local header, or skip a small member they do not
//!   want. mountpoint-s3 tolerates such seeks for the same reasons rather than restarting.
//! - **Random** (anything else): the window is dropped. Only the blocks the read touches are
//!   fetched, because a GDAL tile reader hopping through a JP2 would waste every read-ahead byte.
//!
//! Read-ahead goes into the shared [`BlockCache`], so other handles on the same product benefit
//! and nothing is fetched twice. It is bounded three ways: the window is at most a quarter of
//! the cache budget (so read-ahead cannot evict the blocks its reader is about to consume), at
//! most `max_in_flight` read-ahead requests of this handle run at once (the zipper client has its
//! own connection budget underneath; this just keeps the queue in front of it short), and each
//! request covers at most `max_request` bytes so that several connections share the window.
//! Read-ahead fetches that are abandoned (the reader seeks away or closes) run to completion
//! and stay in the cache; they are counted against the handle until they finish, so seeking
//! back and forth cannot pile up unbounded requests.
//!
//! Request sizes: a read-ahead request covers `window / max_in_flight` blocks (1 while the
//! window is small, 8 MiB once it is full), so the window is spread over all connections. As the
//! reader advances, the window's end slides a block at a time; read-ahead waits until a full
//! request's worth is free rather than trickling one-block requests, as long as at least that
//! much is already requested ahead of the reader. A failed read drops the window; the next read
//! starts small again.
//!
//! When read-ahead happens: at each read, and also as soon as one of the handle's read-ahead
//! fetches ends well (after a failure, the next read decides), so a connection that frees up
//! takes the next request at once instead of idling until the reader's next read arrives (a
//! reader waiting on a later block, or the kernel's async reads held back, would otherwise
//! leave it idle). The window is measured from where the reader's latest read ended, as at a
//! read; a closed handle starts nothing more.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use crate::cache::{BlockCache, BlockHandle};
use crate::{FetchError, RangeSource};

/// 4 read-ahead requests at once: CDSE allows 4 connections per user at ~20 MB/s each, and
/// past the quota drops to 1 MB/s, so more would queue (or be refused with 429) rather than help.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 4;

/// 1 MiB (one block): enough to hide the next request's latency behind the first reads of a
/// stream, little to waste if the reader stops after a header (`file`, `unzip -l` on a member).
pub const DEFAULT_INITIAL_WINDOW: u64 = 1 << 20;

/// 32 MiB: the bandwidth-delay product of the service with margin: 4 connections x 20 MB/s =
/// 80 MB/s, times a 200-400 ms request latency (token, redirect, zipper start-up) is 16-32 MB in
/// flight to keep every connection busy. More only adds memory and waste.
pub const DEFAULT_MAX_WINDOW: u64 = 32 << 20;

/// 8 MiB per request: a full window split four ways, so all connections work on it (the
/// cache's own per-request cap, [`crate::cache::MAX_REQUEST_BYTES`], for the same reasons).
pub const DEFAULT_MAX_REQUEST: u64 = crate::cache::MAX_REQUEST_BYTES;

/// 4 MiB back still counts as a stream: the kernel's async reads (1 MiB each with its readahead
/// raised) can arrive swapped, and this is measured from where the latest read *ended*, so the
/// late one starts a read size plus the gap back (2 MiB for two swapped reads; more when several
/// are in flight); zip readers also step back over a local header. At 1 MiB, swapped reads were
/// classified random and dropped the window mid-stream: scripts/bench P2 (1 GiB over the WAN
/// double) then fell back to 1 MiB requests while it regrew, 63-66 MB/s; at 4 MiB, 72 MB/s.
pub const DEFAULT_BACKWARD_SEEK: u64 = 4 << 20;

/// 2 MiB forward (or anywhere inside what read-ahead already requested) still counts as a
/// stream: out-of-order async reads reach up to 1 MiB ahead, and a reader skipping a small
/// member it does not need is still streaming through the zip.
pub const DEFAULT_FORWARD_SEEK: u64 = 2 << 20;

/// The window is at most 1/4 of the cache budget, so a few streaming handles and the blocks they
/// are consuming fit together, and read-ahead never evicts what its reader is about to read.
const WINDOW_SHARE_DIVISOR: u64 = 4;

/// Whether a handle reads ahead at all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadAhead {
    /// Read ahead of sequential readers with a growing window; the default.
    #[default]
    Adaptive,
    /// Fetch only the blocks each read touches (for workloads known to be random, and tests).
    Off,
}

/// How a read relates to the one before it on the same handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Starts where the previous read ended (or at byte 0 for the first read): the window grows.
    Sequential,
    /// A short hop back or forward from there: the window is kept.
    NearSequential,
    /// Anywhere else: the window is dropped.
    Random,
}

/// Tuning of read-ahead; see the constants for why the defaults are what they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefetchConfig {
    pub read_ahead: ReadAhead,
    /// Window when a stream is detected, in bytes (rounded up to whole blocks).
    pub initial_window: u64,
    /// Largest window, in bytes; also capped at a quarter of the cache budget.
    pub max_window: u64,
    /// Most read-ahead requests of one handle running at once.
    pub max_in_flight: usize,
    /// Most bytes in one read-ahead request (rounded up to whole blocks).
    pub max_request: u64,
    /// How far back a read may start and still count as [`Access::NearSequential`].
    pub backward_seek: u64,
    /// How far forward a read may start and still count as [`Access::NearSequential`] (at least:
    /// any start inside what read-ahead already requested counts too).
    pub forward_seek: u64,
    /// Drop a streaming reader's blocks from memory once it is [`Self::backward_seek`] past
    /// them, when the source keeps them locally (see [`BlockCache::release`]): for a cache
    /// over a disk cache, where such a block is a local read away; off by default.
    pub drop_behind: bool,
}

impl Default for PrefetchConfig {
    fn default() -> Self {
        Self {
            read_ahead: ReadAhead::Adaptive,
            initial_window: DEFAULT_INITIAL_WINDOW,
            max_window: DEFAULT_MAX_WINDOW,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_request: DEFAULT_MAX_REQUEST,
            backward_seek: DEFAULT_BACKWARD_SEEK,
            forward_seek: DEFAULT_FORWARD_SEEK,
            drop_behind: false,
        }
    }
}

/// The config in blocks of the cache it works on.
#[derive(Clone, Copy, Debug)]
struct Limits {
    initial_blocks: u64,
    max_blocks: u64,
    request_blocks: u64,
    max_in_flight: usize,
}

#[derive(Default)]
struct State {
    /// Where the previous read ended; `None` before the first read.
    next_offset: Option<u64>,
    /// Read-ahead window in blocks past the block being read; 0: no read-ahead.
    window: u64,
    /// The block the current stream began in: read-ahead waits until the reader has left it,
    /// so a reader that stays inside one block (a small zip member) costs that block only.
    stream_block: u64,
    /// First block this handle's read-ahead has not asked for yet.
    ahead_next: u64,
    /// Read-ahead blocks not yet arrived (the bound on requests in flight).
    pending: Vec<BlockHandle>,
    last_access: Option<Access>,
}

/// Reads of one open file, with read-ahead when they stream. Methods take `&self`: the
/// kernel may send several reads of one handle at once, and they proceed in parallel.
pub struct Prefetcher<S: RangeSource> {
    inner: Arc<Inner<S>>,
}

/// A handle's reader, shared with the tasks that watch its read-ahead fetches: when one ends
/// (a connection frees up), they start the next without waiting for the reader's next read.
/// They hold it weakly, so a closed handle starts nothing more.
struct Inner<S: RangeSource> {
    cache: Arc<BlockCache<S>>,
    id: String,
    size: u64,
    config: PrefetchConfig,
    limits: Limits,
    state: Mutex<State>,
}

impl<S: RangeSource> Prefetcher<S> {
    /// A reader of product `id` of `size` bytes (the download's true size).
    pub fn new(
        cache: Arc<BlockCache<S>>,
        id: impl Into<String>,
        size: u64,
        config: PrefetchConfig,
    ) -> Self {
        let bs = cache.block_size();
        let blocks = |bytes: u64| bytes.div_ceil(bs).max(1);
        let budget_blocks = cache.config().budget_bytes / WINDOW_SHARE_DIVISOR / bs;
        let max_blocks = blocks(config.max_window).min(budget_blocks).max(1);
        let limits = Limits {
            initial_blocks: blocks(config.initial_window).min(max_blocks),
            max_blocks,
            request_blocks: blocks(config.max_request),
            max_in_flight: config.max_in_flight.max(1),
        };
        let inner = Inner {
            cache,
            id: id.into(),
            size,
            config,
            limits,
            state: Mutex::new(State::default()),
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    pub fn id(&self) -> &str {
        &self.inner.id
    }

    pub fn size(&self) -> u64 {
        self.inner.size
    }

    /// The shared cache underneath (for its stats, or to pin the product's tail).
    pub fn cache(&self) -> &Arc<BlockCache<S>> {
        &self.inner.cache
    }

    /// The current read-ahead window in bytes (0 when the reader is not streaming).
    #[cfg(test)]
    pub fn window_bytes(&self) -> u64 {
        self.inner.lock().window * self.inner.cache.block_size()
    }

    /// How the last read was classified.
    pub fn last_access(&self) -> Option<Access> {
        self.inner.lock().last_access
    }

    /// Bytes `offset..offset + len`: exactly those, shorter only at the end of the product,
    /// empty past it. Starts read-ahead when the reader streams.
    pub async fn read(&self, offset: u64, len: u64) -> Result<Bytes, FetchError> {
        self.inner.read(offset, len).await
    }
}

impl<S: RangeSource> Inner<S> {
    async fn read(self: &Arc<Self>, offset: u64, len: u64) -> Result<Bytes, FetchError> {
        let pending = {
            let mut state = self.lock();
            let access = self.classify(&state, offset);
            state.last_access = Some(access);
            if offset >= self.size || len == 0 {
                return Ok(Bytes::new());
            }
            let end = offset.saturating_add(len).min(self.size);
            self.adjust_window(&mut state, access, offset, end);
            state.next_offset = Some(end);
            let bs = self.cache.block_size();
            let last_block = (end - 1) / bs;
            // The read's own fetches before read-ahead, so they are first in any queue below.
            let pending = self.cache.start_read(&self.id, offset, len, self.size);
            self.read_ahead(&mut state, last_block);
            pending
        };
        let result = pending.wait().await;
        if result.is_ok() {
            self.drop_behind(offset);
        }
        if result.is_err() {
            // Start again small: the source is failing, and a retry will likely come here.
            let mut state = self.lock();
            state.window = 0;
            state.ahead_next = 0;
            state.next_offset = Some(offset);
        }
        result
    }

    /// With [`PrefetchConfig::drop_behind`], a streaming reader at `offset` lets the block
    /// [`PrefetchConfig::backward_seek`] behind it go from memory: the kernel keeps what it read
    /// in its own page cache, the disk cache holds it too, and its buffer goes back to be
    /// reused (`crate::buffers`) instead of the memory cache filling with blocks no one reads
    /// again while fresh buffers are mapped for new ones.
    fn drop_behind(&self, offset: u64) {
        if !self.config.drop_behind {
            return;
        }
        let streaming = {
            let state = self.lock();
            state.window > 0
                && matches!(
                    state.last_access,
                    Some(Access::Sequential | Access::NearSequential)
                )
        };
        let bs = self.cache.block_size();
        let behind = self.config.backward_seek.div_ceil(bs) + 1;
        if let Some(block) = (offset / bs).checked_sub(behind).filter(|_| streaming) {
            self.cache.release(&self.id, block);
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn classify(&self, state: &State, offset: u64) -> Access {
        let Some(next) = state.next_offset else {
            return if offset == 0 {
                Access::Sequential
            } else {
                Access::Random
            };
        };
        if offset == next {
            return Access::Sequential;
        }
        let requested_end = state.ahead_next * self.cache.block_size();
        let forward = self
            .config
            .forward_seek
            .max(requested_end.saturating_sub(next));
        let near = if offset < next {
            next - offset <= self.config.backward_seek
        } else {
            offset - next <= forward
        };
        if near {
            Access::NearSequential
        } else {
            Access::Random
        }
    }

    fn adjust_window(&self, state: &mut State, access: Access, offset: u64, end: u64) {
        if self.config.read_ahead == ReadAhead::Off {
            return;
        }
        let bs = self.cache.block_size();
        match access {
            Access::Sequential if state.window == 0 => {
                state.window = self.limits.initial_blocks;
                state.stream_block = offset / bs;
            }
            Access::Sequential => {
                // Grow once per block entered, i.e. per block's worth of bytes consumed.
                let entered_new_block = offset == 0 || (end - 1) / bs > (offset - 1) / bs;
                if entered_new_block {
                    state.window = (state.window * 2).min(self.limits.max_blocks);
                }
            }
            Access::NearSequential => {}
            Access::Random => {
                state.window = 0;
                state.ahead_next = 0;
            }
        }
    }

    /// Blocks per read-ahead request: the window split between connections, within the cap.
    fn chunk(&self, window: u64) -> u64 {
        (window / self.limits.max_in_flight as u64).clamp(1, self.limits.request_blocks)
    }

    /// A read-ahead fetch of this handle ended, so a connection is free: reads ahead from
    /// where the reader is now, as its next read would, without waiting for that read.
    fn top_up(self: &Arc<Self>) {
        let mut state = self.lock();
        let Some(next) = state.next_offset.filter(|&n| n > 0 && state.window > 0) else {
            return;
        };
        let last_block = (next - 1) / self.cache.block_size();
        self.read_ahead(&mut state, last_block);
    }

    /// Starts read-ahead of the blocks after `last_block`, within the window and the bounds.
    fn read_ahead(self: &Arc<Self>, state: &mut State, last_block: u64) {
        state.pending.retain(|h| !h.is_ready());
        if state.window == 0 || last_block <= state.stream_block {
            return;
        }
        let total = self.cache.block_count(self.size);
        let mut next = state.ahead_next.max(last_block + 1);
        let end = (last_block + 1 + state.window).min(total);
        let chunk = self.chunk(state.window);
        while next < end {
            let in_flight: HashSet<u64> = state
                .pending
                .iter()
                .filter_map(BlockHandle::fetch_id)
                .collect();
            if in_flight.len() >= self.limits.max_in_flight {
                break;
            }
            let n = chunk.min(end - next);
            // Wait for a full chunk rather than trickle one-block requests as the window slides,
            // unless less than a chunk is requested ahead of the reader (it would soon starve)
            // or the product ends there.
            let requested_ahead = next - (last_block + 1);
            if n < chunk && end < total && requested_ahead >= chunk {
                break;
            }
            let handles = self.cache.start(&self.id, next..next + n, self.size);
            let waiting: Vec<BlockHandle> = handles.into_iter().filter(|h| !h.is_ready()).collect();
            // One watcher per fetch (its blocks arrive together): its end frees a connection.
            let mut watched = HashSet::new();
            for h in &waiting {
                if h.fetch_id().is_some_and(|f| watched.insert(f)) {
                    self.top_up_when_done(h.clone());
                }
            }
            state.pending.extend(waiting);
            next += n;
        }
        state.ahead_next = next;
    }

    /// Tops the window up once `handle`'s fetch has ended well, if the handle is still open.
    fn top_up_when_done(self: &Arc<Self>, handle: BlockHandle) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            // After a failure the source is likely failing: the reader's next read meets it
            // and drops the window, rather than each failed fetch starting another.
            if handle.wait().await.is_err() {
                return;
            }
            if let Some(me) = me.upgrade() {
                me.top_up();
            }
        });
    }
}

#[cfg(test)]
mod tests;
