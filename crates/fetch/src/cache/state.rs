//! The block cache's state behind its one lock: the blocks in memory (least recently used first
//! out, under the byte budget), the pinned tails, the fetches in flight and the counters. Every
//! change to the maps goes through a method here, so the cache's front (`cache.rs`) and its fetch
//! tasks (`task`) never reach into them:
//! - [`State::plan`]: what a read of some blocks needs: each block ready, joined to a fetch in
//!   flight, or part of a new run to fetch (registered in flight at once);
//! - [`State::complete_run`] / [`State::complete_tail`]: a fetch's answer stored and its
//!   in-flight entries gone; [`State::forget_run`]: a dead fetch's entries gone;
//! - [`State::read_tail`], [`State::start_tail`], [`State::unpin`]: the pinned tails;
//! - [`State::evict`]: back under the budget.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use lru::LruCache;
use tokio::sync::watch;

use super::handle::{BlockHandle, HandleState, Outcome, PendingRead, TailOutcome};
use super::{CacheStats, PINNED_SHARE_DIVISOR};
use crate::FetchError;

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

/// How one block was found by [`State::plan`].
enum Found {
    Ready(Bytes),
    Joined(u64, usize, watch::Receiver<Outcome>),
    Missing,
}

/// A run of blocks [`State::plan`] registered in flight: the caller spawns its fetch.
pub(super) struct NewRun {
    pub blocks: Range<u64>,
    pub fetch: u64,
    pub tx: watch::Sender<Outcome>,
}

/// See the module doc.
pub(super) struct State {
    blocks: LruCache<BlockKey, Bytes>,
    block_bytes: u64,
    tails: LruCache<Arc<str>, Tail>,
    tails_in_flight: HashMap<Arc<str>, TailFetch>,
    in_flight: HashMap<BlockKey, InFlight>,
    next_fetch: u64,
    pub stats: CacheStats,
    /// Most bytes held at once (blocks + pinned tails).
    budget: u64,
}

impl State {
    pub fn new(budget: u64) -> Self {
        State {
            blocks: LruCache::unbounded(),
            block_bytes: 0,
            tails: LruCache::unbounded(),
            tails_in_flight: HashMap::new(),
            in_flight: HashMap::new(),
            next_fetch: 0,
            stats: CacheStats::default(),
            budget,
        }
    }

    /// Whether the block is in memory now (in-flight blocks are not); does not touch LRU order.
    pub fn contains(&self, id: &str, index: u64) -> bool {
        self.blocks.contains(&BlockKey {
            id: Arc::from(id),
            index,
        })
    }

    /// Evicts least recently used blocks until blocks + tails fit the budget.
    pub fn evict(&mut self) {
        let pinned = self.stats.pinned_bytes;
        while self.block_bytes + pinned > self.budget {
            let Some((_, old)) = self.blocks.pop_lru() else {
                break;
            };
            self.block_bytes -= old.len() as u64;
            self.stats.evictions += 1;
        }
        let resident = self.block_bytes + pinned;
        self.stats.resident_bytes = resident;
        self.stats.peak_resident_bytes = self.stats.peak_resident_bytes.max(resident);
    }

    /// Drops block `index` of `id`, if held.
    pub fn release(&mut self, id: &str, index: u64) {
        let key = BlockKey {
            id: Arc::from(id),
            index,
        };
        if let Some(old) = self.blocks.pop(&key) {
            self.block_bytes -= old.len() as u64;
            self.stats.released += 1;
            self.stats.resident_bytes = self.block_bytes + self.stats.pinned_bytes;
        }
    }

    fn insert_block(&mut self, key: BlockKey, data: Bytes) {
        let len = data.len() as u64;
        if let Some(old) = self.blocks.put(key, data) {
            self.block_bytes -= old.len() as u64;
        }
        self.block_bytes += len;
        self.evict();
    }

    /// A handle per block of `blocks` of product `id`, in order: ready, joined to a fetch in
    /// flight, or part of a new run (of at most `max_run` consecutive missing blocks) that is
    /// registered in flight now and returned for the caller to fetch.
    pub fn plan(
        &mut self,
        id: &Arc<str>,
        blocks: Range<u64>,
        max_run: u64,
    ) -> (Vec<BlockHandle>, Vec<NewRun>) {
        let found = self.look_up(id, blocks.clone());
        let mut handles = Vec::with_capacity(found.len());
        let mut runs = Vec::new();
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
                    let len = found[i..]
                        .iter()
                        .take(max_run as usize)
                        .take_while(|(_, f)| matches!(f, Found::Missing))
                        .count();
                    let run = *index..*index + len as u64;
                    runs.push(self.register_run(id, run, &mut handles));
                    i += len;
                    continue;
                }
            };
            handles.push(BlockHandle {
                index: *index,
                state,
            });
            i += 1;
        }
        (handles, runs)
    }

    /// Each block of `blocks`: in memory, in flight, or missing (counted as hit, join, miss).
    fn look_up(&mut self, id: &Arc<str>, blocks: Range<u64>) -> Vec<(u64, Found)> {
        let mut found = Vec::with_capacity((blocks.end - blocks.start) as usize);
        for index in blocks {
            let key = BlockKey {
                id: id.clone(),
                index,
            };
            let f = if let Some(data) = self.blocks.get(&key) {
                self.stats.hits += 1;
                Found::Ready(data.clone())
            } else if let Some(f) = self.in_flight.get(&key) {
                self.stats.joins += 1;
                Found::Joined(f.fetch, f.slot, f.rx.clone())
            } else {
                self.stats.misses += 1;
                Found::Missing
            };
            found.push((index, f));
        }
        found
    }

    /// A new fetch of `run`, its blocks registered in flight and their handles pushed.
    fn register_run(
        &mut self,
        id: &Arc<str>,
        run: Range<u64>,
        handles: &mut Vec<BlockHandle>,
    ) -> NewRun {
        let fetch = self.next_fetch;
        self.next_fetch += 1;
        self.stats.requests += 1;
        let (tx, rx) = watch::channel(None);
        for (slot, index) in run.clone().enumerate() {
            let key = BlockKey {
                id: id.clone(),
                index,
            };
            let entry = InFlight {
                fetch,
                slot,
                rx: rx.clone(),
            };
            self.in_flight.insert(key, entry);
            handles.push(BlockHandle {
                index,
                state: HandleState::Pending {
                    fetch,
                    slot,
                    rx: rx.clone(),
                },
            });
        }
        NewRun {
            blocks: run,
            fetch,
            tx,
        }
    }

    /// Removes fetch `fetch`'s in-flight entries for `blocks` (a later fetch's are kept).
    pub fn forget_run(&mut self, id: &Arc<str>, blocks: Range<u64>, fetch: u64) {
        for index in blocks {
            let key = BlockKey {
                id: id.clone(),
                index,
            };
            if self.in_flight.get(&key).is_some_and(|f| f.fetch == fetch) {
                self.in_flight.remove(&key);
            }
        }
    }

    /// Fetch `fetch` of `blocks` answered `result` (`bytes` long when it succeeded): its
    /// entries leave the in-flight map and its blocks, if any, join the cache.
    pub fn complete_run(
        &mut self,
        id: &Arc<str>,
        blocks: Range<u64>,
        fetch: u64,
        result: &Result<Arc<[Bytes]>, FetchError>,
        bytes: u64,
    ) {
        self.forget_run(id, blocks.clone(), fetch);
        match result {
            Ok(parts) => {
                self.stats.bytes_fetched += bytes;
                for (index, part) in blocks.zip(parts.iter()) {
                    let key = BlockKey {
                        id: id.clone(),
                        index,
                    };
                    self.insert_block(key, part.clone());
                }
            }
            Err(_) => self.stats.failed_requests += 1,
        }
    }

    /// A read of `range` served by the product's tail, pinned (a slice) or on its way
    /// (joined), if the tail covers it. Tails run to the product's end, so only the start
    /// needs checking.
    pub fn read_tail(&mut self, id: &str, range: Range<u64>) -> Option<PendingRead> {
        if let Some(tail) = self.tails.get(id) {
            if tail.offset <= range.start {
                let from = (range.start - tail.offset) as usize;
                let to = (range.end - tail.offset) as usize;
                let bytes = tail.data.get(from..to).map(|_| tail.data.slice(from..to))?;
                self.stats.hits += 1;
                return Some(PendingRead::ready(bytes));
            }
        }
        let fetch = self.tails_in_flight.get(id).filter(|f| {
            // A fetch whose task died without an answer is not worth joining.
            f.start <= range.start && (f.rx.borrow().is_some() || f.rx.has_changed().is_ok())
        })?;
        let read = PendingRead::tail(Arc::from(id), fetch.rx.clone(), fetch.start, range);
        self.stats.joins += 1;
        Some(read)
    }

    /// Registers a fetch of `id`'s tail from `start` in flight; the caller spawns it.
    pub fn start_tail(&mut self, id: &Arc<str>, start: u64) -> watch::Sender<TailOutcome> {
        let (tx, rx) = watch::channel(None);
        self.tails_in_flight
            .insert(id.clone(), TailFetch { start, rx });
        self.stats.requests += 1;
        self.stats.misses += 1;
        tx
    }

    /// The tail fetch of `id` from `start` answered `result`: pinned (the oldest tails dropped
    /// past their share of the budget), and no longer in flight.
    pub fn complete_tail(&mut self, id: Arc<str>, start: u64, result: &Result<Bytes, FetchError>) {
        self.tails_in_flight.remove(&id);
        let data = match result {
            Ok(data) => data,
            Err(_) => {
                self.stats.failed_requests += 1;
                return;
            }
        };
        let len = data.len() as u64;
        self.stats.bytes_fetched += len;
        let tail = Tail {
            offset: start,
            data: data.clone(),
        };
        if let Some(old) = self.tails.put(id, tail) {
            self.stats.pinned_bytes -= old.data.len() as u64;
        }
        self.stats.pinned_bytes += len;
        let cap = self.budget / PINNED_SHARE_DIVISOR;
        while self.stats.pinned_bytes > cap {
            let Some((_, old)) = self.tails.pop_lru() else {
                break;
            };
            self.stats.pinned_bytes -= old.data.len() as u64;
        }
        self.evict();
    }

    /// The pinned tail of a product, as `(offset, bytes)`, if there is one.
    pub fn tail(&self, id: &str) -> Option<(u64, Bytes)> {
        self.tails.peek(id).map(|t| (t.offset, t.data.clone()))
    }

    /// Drops the pinned tail of a product.
    pub fn unpin(&mut self, id: &str) {
        if let Some(old) = self.tails.pop(id) {
            self.stats.pinned_bytes -= old.data.len() as u64;
            self.evict();
        }
    }
}
