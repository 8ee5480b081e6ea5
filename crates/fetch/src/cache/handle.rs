//! What a caller of the cache holds while bytes are on their way: a [`BlockHandle`] per block,
//! a [`PendingRead`] per read. Both only wait; the fetches themselves belong to the cache's
//! tasks, so dropping a handle cancels nothing.

use std::ops::Range;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::watch;

use crate::FetchError;

/// The outcome of one fetch, shared by every block it covers: `None` while running.
pub(super) type Outcome = Option<Result<Arc<[Bytes]>, FetchError>>;

/// The outcome of a tail fetch: `None` while running.
pub(super) type TailOutcome = Option<Result<Bytes, FetchError>>;

/// One block of a [`BlockCache::start`](super::BlockCache::start) call: already there, or on its way.
/// Holding a handle keeps no fetch alive and costs no budget while pending; drop it when done.
#[derive(Clone)]
pub struct BlockHandle {
    pub(super) index: u64,
    pub(super) state: HandleState,
}

#[derive(Clone)]
pub(super) enum HandleState {
    Ready(Bytes),
    Pending {
        fetch: u64,
        slot: usize,
        rx: watch::Receiver<Outcome>,
    },
}

impl BlockHandle {
    pub fn index(&self) -> u64 {
        self.index
    }

    /// True once the bytes (or an error) are there: `wait` will not block.
    pub fn is_ready(&self) -> bool {
        match &self.state {
            HandleState::Ready(_) => true,
            // `has_changed` errs once the fetch task is gone, which also ends the wait.
            HandleState::Pending { rx, .. } => rx.borrow().is_some() || rx.has_changed().is_err(),
        }
    }

    /// The fetch this block waits on, if any: blocks of one run share it.
    pub(crate) fn fetch_id(&self) -> Option<u64> {
        match &self.state {
            HandleState::Ready(_) => None,
            HandleState::Pending { fetch, .. } => Some(*fetch),
        }
    }

    /// The block's bytes, once its fetch is done. Cancel-safe: dropping this future leaves the
    /// fetch running for the other waiters and the cache.
    pub async fn wait(self) -> Result<Bytes, FetchError> {
        match self.state {
            HandleState::Ready(bytes) => Ok(bytes),
            HandleState::Pending { slot, mut rx, .. } => {
                let outcome = match rx.wait_for(Option::is_some).await {
                    Ok(outcome) => outcome.clone(),
                    Err(_) => None,
                };
                match outcome {
                    Some(Ok(blocks)) => Ok(blocks[slot].clone()),
                    Some(Err(e)) => Err(e),
                    None => Err(FetchError::Server(format!(
                        "the fetch of block {} ended without an answer",
                        self.index
                    ))),
                }
            }
        }
    }
}

/// A read whose fetches have been started: [`PendingRead::wait`] assembles the bytes.
pub struct PendingRead {
    state: ReadState,
}

enum ReadState {
    Ready(Bytes),
    /// Inside a tail being fetched from `fetch_start` to the product's end.
    Tail {
        id: Arc<str>,
        rx: watch::Receiver<TailOutcome>,
        fetch_start: u64,
        range: Range<u64>,
    },
    Blocks {
        id: Arc<str>,
        range: Range<u64>,
        block_size: u64,
        handles: Vec<BlockHandle>,
    },
}

impl PendingRead {
    pub(super) fn ready(bytes: Bytes) -> Self {
        Self {
            state: ReadState::Ready(bytes),
        }
    }

    pub(super) fn tail(
        id: Arc<str>,
        rx: watch::Receiver<TailOutcome>,
        fetch_start: u64,
        range: Range<u64>,
    ) -> Self {
        Self {
            state: ReadState::Tail {
                id,
                rx,
                fetch_start,
                range,
            },
        }
    }

    pub(super) fn blocks(
        id: Arc<str>,
        range: Range<u64>,
        block_size: u64,
        handles: Vec<BlockHandle>,
    ) -> Self {
        Self {
            state: ReadState::Blocks {
                id,
                range,
                block_size,
                handles,
            },
        }
    }

    /// The bytes, once every block they need has arrived: a slice of the block when the read
    /// lies within one, a copy into one buffer otherwise. Cancel-safe, like
    /// [`BlockHandle::wait`].
    pub async fn wait(self) -> Result<Bytes, FetchError> {
        let (id, range, bs, handles) = match self.state {
            ReadState::Ready(bytes) => return Ok(bytes),
            ReadState::Tail {
                id,
                mut rx,
                fetch_start,
                range,
            } => {
                let outcome = match rx.wait_for(Option::is_some).await {
                    Ok(outcome) => outcome.clone(),
                    Err(_) => None,
                };
                let tail = match outcome {
                    Some(result) => result?,
                    None => {
                        return Err(FetchError::Server(format!(
                            "the fetch of the tail of {id} ended without an answer"
                        )))
                    }
                };
                let (from, to) = (range.start - fetch_start, range.end - fetch_start);
                if to > tail.len() as u64 {
                    return Err(FetchError::Protocol(format!(
                        "the tail of {id} holds {} bytes, expected at least {to}",
                        tail.len()
                    )));
                }
                return Ok(tail.slice(from as usize..to as usize));
            }
            ReadState::Blocks {
                id,
                range,
                block_size,
                handles,
            } => (id, range, block_size, handles),
        };
        let single = handles.len() == 1;
        let mut out: Option<BytesMut> = None;
        for handle in handles {
            let index = handle.index();
            let block = handle.wait().await?;
            let block_start = index * bs;
            let from = range.start.max(block_start) - block_start;
            let to = range.end.min(block_start + bs) - block_start;
            if to > block.len() as u64 {
                return Err(FetchError::Protocol(format!(
                    "block {index} of product {id} holds {} bytes, expected at least {to}; \
                     was the product opened with two different sizes?",
                    block.len()
                )));
            }
            let piece = block.slice(from as usize..to as usize);
            if single {
                return Ok(piece);
            }
            out.get_or_insert_with(|| BytesMut::with_capacity((range.end - range.start) as usize))
                .extend_from_slice(&piece);
        }
        Ok(out.map(BytesMut::freeze).unwrap_or_default())
    }
}
