//! Serving ranges of products whose server ignores `Range`: one stream from byte 0, spooled.
//!
//! Some zipper deployments answer a ranged GET with `200` and the whole product
//! (`docs/protocol.md`, "Download (zipper)", Range). The zipper client reports that as
//! [`FetchError::RangeIgnored`] (or `info().ranges == Ignored`) and never hands out bytes from
//! the wrong offset. [`StreamFallback`] sits right above it and turns that into working reads:
//! - the first read of such a product starts ONE stream from byte 0 ([`StreamSource`]), shared
//!   by every reader, written to a spool file (anonymous, under the spool dir or `$TMPDIR`,
//!   gone when the layer drops it);
//! - a read behind the stream's frontier is served from the spool at once; a read ahead of it
//!   waits for the bytes, for as long as the stream makes progress (the stream's own stall
//!   timeout and retries bound that): GDAL reads the zip's central directory at the end first,
//!   and that read must wait for the whole product, not fail;
//! - a stream that fails for good (retries exhausted) fails the readers waiting on it; the next
//!   read starts a new stream *from the frontier*: the client reconnects from byte 0 and skips
//!   what is already spooled (see [`crate::zipper::ZipperStream`]), so spooled bytes are
//!   re-used and never re-served from another offset;
//! - with a [`BlockSink`] (the disk cache), every completed aligned block is also handed to it
//!   as the stream passes, so a product streamed once is in the disk cache whole, even the
//!   parts nobody read; once complete, the spool is dropped and later reads come from the sink;
//! - without a sink, complete spools are kept for later reads, at most [`MAX_IDLE_SPOOLS`] of
//!   them (least recently used dropped first).
//!
//! Products whose server honours Range pass straight through to the source below.
//!
//! This is a layer under the block cache, so nothing above it changes: the block cache still
//! asks for aligned blocks and caches them in memory.

use std::collections::HashMap;
use std::future::Future;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use eodata_auth::TokenSource;
use tokio::sync::watch;

use crate::zipper::{Zipper, ZipperStream};
use crate::{FetchError, ObjectInfo, RangeSource};

/// A product's bytes in order from an offset.
pub trait ChunkStream: Send + 'static {
    /// The next bytes; `None` at the end of the product.
    fn next_chunk(&mut self) -> impl Future<Output = Result<Option<Bytes>, FetchError>> + Send;
}

/// A [`RangeSource`] that can also deliver a product as one sequential stream.
pub trait StreamSource: RangeSource {
    type Stream: ChunkStream;
    /// The product from `offset` to its end. Where the server cannot start at `offset`, the
    /// implementation reads from 0 and drops the bytes before it. `tail` holds the caller's
    /// bytes just before `offset`; an implementation that can check them against its source
    /// (the zipper does) refuses to continue a product whose bytes changed.
    fn stream_from(
        &self,
        id: &str,
        offset: u64,
        tail: Bytes,
    ) -> impl Future<Output = Result<Self::Stream, FetchError>> + Send;
}

impl<T: TokenSource> ChunkStream for ZipperStream<T> {
    fn next_chunk(&mut self) -> impl Future<Output = Result<Option<Bytes>, FetchError>> + Send {
        ZipperStream::next_chunk(self)
    }
}

impl<T: TokenSource> StreamSource for Zipper<T> {
    type Stream = ZipperStream<T>;
    fn stream_from(
        &self,
        id: &str,
        offset: u64,
        tail: Bytes,
    ) -> impl Future<Output = Result<Self::Stream, FetchError>> + Send {
        Zipper::stream_after(self, id, offset, tail)
    }
}

impl<S: StreamSource> StreamSource for Arc<S> {
    type Stream = S::Stream;
    fn stream_from(
        &self,
        id: &str,
        offset: u64,
        tail: Bytes,
    ) -> impl Future<Output = Result<Self::Stream, FetchError>> + Send {
        (**self).stream_from(id, offset, tail)
    }
}

/// Where complete blocks of a streamed product go besides the spool (the disk cache).
pub trait BlockSink: Send + Sync + 'static {
    /// The sink's block size; blocks handed over are aligned to it.
    fn block_size(&self) -> u64;
    /// Block `index` of product `id` (of `size` bytes) is `data`. Called from a blocking
    /// thread. Failures are the sink's to log: the spool still serves the bytes.
    fn put_block(&self, id: &str, size: u64, index: u64, data: &[u8]);
    /// Whether block `index` is held (unverified: used only to drop the spool early).
    fn has_block(&self, id: &str, size: u64, index: u64) -> bool;
    /// Whether every block of `id` (of `size` bytes) is held (unverified).
    fn has_all(&self, id: &str, size: u64) -> bool {
        (0..size.div_ceil(self.block_size())).all(|i| self.has_block(id, size, i))
    }
    /// Block `index` of `id` (of `size` bytes), verified, if held. Blocking.
    fn get_block(&self, _id: &str, _size: u64, _index: u64) -> Option<Bytes> {
        None
    }
    /// The right to stream `id` among every process sharing this sink: `None` while another
    /// process holds it (that one streams; this one reads its blocks as they land). The claim
    /// ends when the returned value is dropped, or with its process. Blocking.
    fn claim_stream(&self, _id: &str) -> Option<StreamClaim> {
        Some(StreamClaim::default())
    }
    /// Drops every block of `id`: its bytes changed at the source. Blocking.
    fn forget(&self, _id: &str) {}
}

/// Held while this process streams a product for every process sharing the sink (see
/// [`BlockSink::claim_stream`]); for the disk cache, an open file with an exclusive `flock`,
/// which the kernel releases whichever way the process ends.
#[derive(Default)]
pub struct StreamClaim(pub Option<std::fs::File>);

/// How often a process waiting on another's stream looks for new blocks: each look is a few
/// `stat`s, and a reader waits at most this long behind the bytes on disk.
pub const FOLLOW_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Where spool files go and where blocks are handed.
#[derive(Clone, Default)]
pub struct SpoolConfig {
    /// Directory for spool files; `None`: `$TMPDIR`.
    pub dir: Option<PathBuf>,
    /// The disk cache, when one is configured.
    pub sink: Option<Arc<dyn BlockSink>>,
    /// The MD5 the catalogue publishes for a product id, when it does (see [`ExpectedMd5`]).
    pub expected_md5: Option<ExpectedMd5>,
}

/// The catalogue's MD5 of a product (hex), when it has one. A product streamed whole is checked
/// against it before its last block is served: until then the readers of its end (GDAL and
/// unzip read the zip's directory there) wait, and on a mismatch they get an error and the
/// product's cached bytes are dropped, so no tool ever opens a wrong product as complete.
pub type ExpectedMd5 = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// See the module doc: Range where the server honours it, one spooled stream where not.
pub struct StreamFallback<S> {
    inner: Arc<S>,
    config: SpoolConfig,
    spools: Arc<Mutex<HashMap<String, Arc<Spool>>>>,
    /// Orders spools by last use.
    clock: AtomicU64,
}

/// What the stream of one product has done so far.
#[derive(Clone, Debug, Default)]
struct Progress {
    /// Bytes `0..frontier` are in the spool file.
    frontier: u64,
    /// A stream task is running.
    running: bool,
    /// Why the last stream ended early.
    error: Option<FetchError>,
    /// Streams started (the first one included).
    streams: u64,
    /// Bytes come from another process's stream, through the sink.
    following: bool,
}

struct Spool {
    size: u64,
    file: Arc<std::fs::File>,
    progress: watch::Sender<Progress>,
    /// Ticks of the layer's clock at the last read, for dropping the least recently used.
    last_used: AtomicU64,
}

impl Spool {
    /// The spooled bytes just before `pos` (up to [`crate::zipper::SPLICE_CHECK`]), for the
    /// source to check its next answer against.
    async fn tail(&self, pos: u64) -> Result<Bytes, FetchError> {
        let n = pos.min(crate::zipper::SPLICE_CHECK as u64) as usize;
        if n == 0 {
            return Ok(Bytes::new());
        }
        let file = Arc::clone(&self.file);
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; n];
            file.read_exact_at(&mut buf, pos - n as u64)
                .map(|_| Bytes::from(buf))
        })
        .await
        .map_err(|e| FetchError::Local(format!("spool task failed: {e}")))?
        .map_err(|e| FetchError::Local(format!("cannot read the spool: {e}")))
    }
}

/// Spools kept without a sink, besides ones still streaming: each is a whole product on disk
/// (often a GiB), and reads of a recent one are served from the memory cache above anyway;
/// four cover a user switching between a few products. A dropped spool costs a new stream
/// if its product is read again.
pub const MAX_IDLE_SPOOLS: usize = 4;

/// Counters for tests and `status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Products being (or having been) spooled and still held.
    pub spools: usize,
    /// Streams started, over the held spools.
    pub streams: u64,
}

/// Where one product's stream stands, for the status file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpoolProgress {
    pub id: String,
    /// Bytes `0..have` are here.
    pub have: u64,
    pub size: u64,
    /// A stream (ours, or another process's we follow) is running.
    pub running: bool,
    /// The bytes come from another process's stream, through the disk cache.
    pub following: bool,
}

/// A handle on the spools of a [`StreamFallback`], for reporting while the layer serves reads.
#[derive(Clone)]
pub struct SpoolMonitor(Arc<Mutex<HashMap<String, Arc<Spool>>>>);

impl SpoolMonitor {
    /// Every held spool, incomplete ones first.
    pub fn progress(&self) -> Vec<SpoolProgress> {
        let spools = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<SpoolProgress> = spools
            .iter()
            .map(|(id, s)| {
                let p = s.progress.borrow();
                SpoolProgress {
                    id: id.clone(),
                    have: p.frontier,
                    size: s.size,
                    running: p.running,
                    following: p.following,
                }
            })
            .collect();
        out.sort_by_key(|p| (p.have >= p.size, p.id.clone()));
        out
    }
}

impl<S: StreamSource> StreamFallback<S> {
    /// A handle for reporting progress (see [`SpoolMonitor`]).
    pub fn monitor(&self) -> SpoolMonitor {
        SpoolMonitor(Arc::clone(&self.spools))
    }

    pub fn new(inner: S, config: SpoolConfig) -> Self {
        StreamFallback {
            inner: Arc::new(inner),
            config,
            spools: Arc::default(),
            clock: AtomicU64::new(0),
        }
    }

    /// The source below.
    pub fn source(&self) -> &S {
        &self.inner
    }

    pub fn stats(&self) -> SpoolStats {
        let spools = self.spools.lock().unwrap_or_else(|p| p.into_inner());
        SpoolStats {
            spools: spools.len(),
            streams: spools.values().map(|s| s.progress.borrow().streams).sum(),
        }
    }

    fn spool(&self, id: &str) -> Option<Arc<Spool>> {
        let spools = self.spools.lock().unwrap_or_else(|p| p.into_inner());
        let spool = spools.get(id).cloned()?;
        spool.last_used.store(self.tick(), Ordering::Relaxed);
        Some(spool)
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    /// Drops the least recently used complete spools past [`MAX_IDLE_SPOOLS`] (their files go
    /// when the last reader holding one finishes).
    fn trim(spools: &mut HashMap<String, Arc<Spool>>) {
        let mut idle: Vec<(u64, String)> = spools
            .iter()
            .filter(|(_, s)| !s.progress.borrow().running)
            .map(|(id, s)| (s.last_used.load(Ordering::Relaxed), id.clone()))
            .collect();
        if idle.len() <= MAX_IDLE_SPOOLS {
            return;
        }
        idle.sort();
        for (_, id) in &idle[..idle.len() - MAX_IDLE_SPOOLS] {
            spools.remove(id);
        }
    }

    /// The product's spool, made if it does not exist yet.
    fn spool_for(&self, id: &str, size: u64) -> Result<Arc<Spool>, FetchError> {
        let mut spools = self.spools.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = spools.get(id) {
            return Ok(Arc::clone(s));
        }
        let dir = self.config.dir.clone().unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&dir).ok();
        // Anonymous (unlinked) file: nothing is left behind, whatever way the process ends.
        let file = tempfile::tempfile_in(&dir).map_err(|e| {
            FetchError::Local(format!(
                "cannot create a spool file in {} for a server that ignores Range: {e}",
                dir.display()
            ))
        })?;
        let spool = Arc::new(Spool {
            size,
            file: Arc::new(file),
            progress: watch::Sender::new(Progress::default()),
            last_used: AtomicU64::new(self.tick()),
        });
        Self::trim(&mut spools);
        spools.insert(id.to_string(), Arc::clone(&spool));
        Ok(spool)
    }

    /// Starts a stream from the frontier unless one runs or all is spooled.
    fn ensure_running(&self, id: &str, spool: &Arc<Spool>) {
        let mut start = None;
        spool.progress.send_if_modified(|p| {
            if p.running || p.frontier >= spool.size {
                return false;
            }
            p.running = true;
            p.error = None;
            p.streams += 1;
            start = Some(p.frontier);
            true
        });
        let Some(from) = start else { return };
        tracing::info!(
            id,
            from,
            size = spool.size,
            "streaming a product whose server ignores Range"
        );
        let task = StreamTask {
            inner: Arc::clone(&self.inner),
            id: id.to_string(),
            spool: Arc::clone(spool),
            sink: self.config.sink.clone(),
            spools: Arc::clone(&self.spools),
            md5: self.config.expected_md5.as_ref().and_then(|f| f(id)),
        };
        tokio::spawn(task.run(from));
    }

    /// Bytes `range` of a spooled product, waiting for the stream where they have not arrived.
    async fn read_spooled(
        &self,
        id: &str,
        spool: Arc<Spool>,
        range: Range<u64>,
    ) -> Result<Bytes, FetchError> {
        let end = range.end.min(spool.size);
        if range.start >= spool.size && range.start < range.end {
            return Err(FetchError::OutOfRange {
                id: id.to_string(),
                start: range.start,
                end: range.end,
                size: spool.size,
            });
        }
        if range.start >= end {
            return Ok(Bytes::new());
        }
        let mut rx = spool.progress.subscribe();
        if rx.borrow().frontier < end {
            self.ensure_running(id, &spool);
        }
        loop {
            {
                let p = rx.borrow_and_update();
                if p.frontier >= end {
                    break;
                }
                if !p.running {
                    return Err(p.error.clone().unwrap_or_else(|| {
                        FetchError::Server(format!("the stream of {id} ended early"))
                    }));
                }
            }
            if rx.changed().await.is_err() {
                return Err(FetchError::Server(format!(
                    "the stream of {id} was dropped"
                )));
            }
        }
        let file = Arc::clone(&spool.file);
        let start = range.start;
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; (end - start) as usize];
            file.read_exact_at(&mut buf, start)?;
            Ok::<_, std::io::Error>(Bytes::from(buf))
        })
        .await
        .map_err(|e| FetchError::Local(format!("spool read task failed: {e}")))?
        .map_err(|e| FetchError::Local(format!("cannot read the spool of {id}: {e}")))
    }
}

/// The one stream of a product, writing the spool and the sink.
struct StreamTask<S> {
    inner: Arc<S>,
    id: String,
    spool: Arc<Spool>,
    sink: Option<Arc<dyn BlockSink>>,
    spools: Arc<Mutex<HashMap<String, Arc<Spool>>>>,
    /// The catalogue's MD5 of the product, checked before its last byte is served.
    md5: Option<String>,
}

/// Cuts a stream into the sink's aligned blocks (the last one short).
struct BlockCutter {
    bs: u64,
    size: u64,
    /// The block being filled; starts at its aligned offset.
    block: BytesMut,
    /// Keep the product's last block back ([`BlockCutter::held`]) instead of handing it out.
    hold_last: bool,
    held: Option<(u64, Bytes)>,
}

impl BlockCutter {
    /// The blocks `chunk` (the stream's bytes from `pos`) completes, as `(index, bytes)`.
    fn feed(&mut self, pos: u64, chunk: &[u8]) -> Vec<(u64, Bytes)> {
        let bs = self.bs;
        self.block.extend_from_slice(chunk);
        let mut block_start = pos + chunk.len() as u64 - self.block.len() as u64;
        let mut done = Vec::new();
        while self.block.len() as u64 >= bs
            || (!self.block.is_empty() && block_start + self.block.len() as u64 >= self.size)
        {
            let n = (bs as usize).min(self.block.len());
            let index = block_start / bs;
            let data = self.block.split_to(n).freeze();
            if self.hold_last && index == (self.size - 1) / bs {
                self.held = Some((index, data));
            } else {
                done.push((index, data));
            }
            block_start += n as u64;
        }
        done
    }
}

impl<S: StreamSource> StreamTask<S> {
    async fn run(self, from: u64) {
        let result = self.stream_or_follow(from).await;
        let complete = self.spool.progress.borrow().frontier >= self.spool.size;
        self.spool.progress.send_modify(|p| {
            p.running = false;
            if let Err(e) = &result {
                p.error = Some(e.clone());
            }
        });
        match result {
            Err(FetchError::Changed(why)) => {
                tracing::error!(id = %self.id, why, "the product's bytes changed at the download service; dropping its cached bytes, reads fail until it is opened again");
                self.forget();
            }
            Err(e) => tracing::warn!(id = %self.id, error = %e, "stream of a product failed"),
            Ok(()) if complete => {
                tracing::info!(id = %self.id, size = self.spool.size, "product spooled whole");
                self.drop_spool_if_sunk();
            }
            Ok(()) => {}
        }
    }

    /// The product's bytes are not to be trusted: the spool goes (readers holding it get the
    /// stream's error), and so do the sink's blocks.
    fn forget(&self) {
        {
            let mut spools = self.spools.lock().unwrap_or_else(|p| p.into_inner());
            if spools
                .get(&self.id)
                .is_some_and(|s| Arc::ptr_eq(s, &self.spool))
            {
                spools.remove(&self.id);
            }
        }
        if let Some(sink) = self.sink.clone() {
            let id = self.id.clone();
            tokio::task::spawn_blocking(move || sink.forget(&id));
        }
    }

    /// Streams from the frontier, unless another process sharing the sink streams the product
    /// already: then follows that stream through the sink's blocks, and takes over (from the
    /// frontier) if the other stream ends before the product is whole.
    async fn stream_or_follow(&self, mut from: u64) -> Result<(), FetchError> {
        let size = self.spool.size;
        let Some(sink) = self.sink.clone() else {
            return self.stream(from).await;
        };
        let mut following = false;
        loop {
            from = self.catch_up(&sink, from).await?;
            if from >= size {
                return Ok(());
            }
            let (s, id) = (Arc::clone(&sink), self.id.clone());
            let claim = tokio::task::spawn_blocking(move || s.claim_stream(&id))
                .await
                .map_err(|e| FetchError::Local(format!("stream claim task failed: {e}")))?;
            if let Some(claim) = claim {
                // The other process may have finished between our look and the claim.
                from = self.catch_up(&sink, from).await?;
                if from >= size {
                    return Ok(());
                }
                if following {
                    tracing::info!(id = %self.id, from, "the other process's stream ended; streaming the rest here");
                }
                let result = self.stream(from).await;
                if matches!(result, Err(FetchError::Changed(_))) {
                    // The blocks of a build that failed its check go before the claim does:
                    // a process taking over must not find them and complete the product.
                    if let Some(sink) = self.sink.clone() {
                        let id = self.id.clone();
                        let _ = tokio::task::spawn_blocking(move || sink.forget(&id)).await;
                    }
                }
                drop(claim);
                return result;
            }
            if !following {
                following = true;
                tracing::info!(id = %self.id, "another process on this machine is streaming this product; reading its blocks from the disk cache as they land");
                self.spool.progress.send_modify(|p| p.following = true);
            }
            tokio::time::sleep(FOLLOW_POLL).await;
        }
    }

    /// Moves the frontier over the sink's blocks that follow it, copying them into the spool.
    async fn catch_up(&self, sink: &Arc<dyn BlockSink>, from: u64) -> Result<u64, FetchError> {
        let size = self.spool.size;
        let bs = sink.block_size();
        let (sink, id, file) = (
            Arc::clone(sink),
            self.id.clone(),
            Arc::clone(&self.spool.file),
        );
        let progress = self.spool.progress.clone();
        tokio::task::spawn_blocking(move || {
            let mut pos = from;
            while pos < size {
                let index = pos / bs;
                if !sink.has_block(&id, size, index) {
                    break;
                }
                let Some(block) = sink.get_block(&id, size, index) else {
                    break;
                };
                let skip = (pos - index * bs) as usize;
                file.write_all_at(&block[skip.min(block.len())..], pos)
                    .map_err(|e| FetchError::Local(format!("cannot write the spool: {e}")))?;
                pos = index * bs + block.len() as u64;
                progress.send_modify(|p| p.frontier = pos);
            }
            Ok(pos)
        })
        .await
        .map_err(|e| FetchError::Local(format!("spool task failed: {e}")))?
    }

    /// With every block in the sink, the spool is a second copy: drop it (readers holding it
    /// finish their reads; later reads come from the sink above, or start a new spool).
    fn drop_spool_if_sunk(&self) {
        let Some(sink) = &self.sink else { return };
        if sink.has_all(&self.id, self.spool.size) {
            let mut spools = self.spools.lock().unwrap_or_else(|p| p.into_inner());
            if spools
                .get(&self.id)
                .is_some_and(|s| Arc::ptr_eq(s, &self.spool))
            {
                spools.remove(&self.id);
            }
        }
    }

    async fn stream(&self, from: u64) -> Result<(), FetchError> {
        let size = self.spool.size;
        let tail = self.spool.tail(from).await?;
        let mut stream = self.inner.stream_from(&self.id, from, tail).await?;
        let mut pos = from;
        let mut cutter = match self.sink.as_ref().map(|s| s.block_size()) {
            Some(bs) => Some(BlockCutter {
                bs,
                size,
                block: self.block_head(pos, bs).await?,
                // With a checksum to verify, the sink's last block waits for the verdict too:
                // other processes read the sink, and it keeps the product whole only once it
                // holds every block.
                hold_last: self.md5.is_some(),
                held: None,
            }),
            None => None,
        };
        while pos < size {
            let Some(mut chunk) = stream.next_chunk().await? else {
                return Err(FetchError::Protocol(format!(
                    "the stream of {} ended at byte {pos} of {size}",
                    self.id
                )));
            };
            chunk.truncate(chunk.len().min((size - pos) as usize));
            let done = cutter
                .as_mut()
                .map(|c| c.feed(pos, &chunk))
                .unwrap_or_default();
            let (file, sink, id, at) = (
                Arc::clone(&self.spool.file),
                self.sink.clone(),
                self.id.clone(),
                pos,
            );
            let len = chunk.len() as u64;
            tokio::task::spawn_blocking(move || {
                file.write_all_at(&chunk, at)?;
                if let Some(sink) = sink {
                    for (index, data) in done {
                        sink.put_block(&id, size, index, &data);
                    }
                }
                Ok::<_, std::io::Error>(())
            })
            .await
            .map_err(|e| FetchError::Local(format!("spool task failed: {e}")))?
            .map_err(|e| FetchError::Local(format!("cannot write the spool: {e}")))?;
            self.advance(pos, len);
            pos += len;
        }
        self.verify().await?;
        let held = cutter.and_then(|c| c.held);
        if let (Some(sink), Some((index, data))) = (self.sink.clone(), held) {
            let id = self.id.clone();
            tokio::task::spawn_blocking(move || sink.put_block(&id, size, index, &data))
                .await
                .map_err(|e| FetchError::Local(format!("spool task failed: {e}")))?;
        }
        self.spool.progress.send_modify(|p| p.frontier = size);
        Ok(())
    }

    /// The start of the block that byte `pos` falls in, up to `pos`, read back from the spool:
    /// after a restart mid-block, the sink's block is filled from its aligned offset.
    async fn block_head(&self, pos: u64, bs: u64) -> Result<BytesMut, FetchError> {
        let head = pos - pos % bs;
        let mut block = BytesMut::new();
        if head < pos {
            let file = Arc::clone(&self.spool.file);
            let mut buf = vec![0u8; (pos - head) as usize];
            let buf = tokio::task::spawn_blocking(move || {
                file.read_exact_at(&mut buf, head).map(|_| buf)
            })
            .await
            .map_err(|e| FetchError::Local(format!("spool task failed: {e}")))?
            .map_err(|e| FetchError::Local(format!("cannot read the spool: {e}")))?;
            block.extend_from_slice(&buf);
        }
        Ok(block)
    }

    /// `len` bytes from `pos` are spooled: readers see them (the last byte, with a checksum to
    /// verify, waits for the verdict), and the log says each quarter.
    fn advance(&self, pos: u64, len: u64) {
        let size = self.spool.size;
        let quarter = size.div_ceil(4).max(1);
        if pos / quarter != (pos + len) / quarter && pos + len < size {
            tracing::info!(
                id = %self.id,
                "streaming whole product (server ignores Range): {} of {} MiB",
                (pos + len) >> 20,
                size >> 20
            );
        }
        let end = pos + len;
        let shown = if self.md5.is_some() {
            end.min(size - 1)
        } else {
            end
        };
        self.spool.progress.send_modify(|p| p.frontier = shown);
    }

    /// The whole spool against the catalogue's MD5, when it has one.
    async fn verify(&self) -> Result<(), FetchError> {
        let Some(want) = self.md5.clone() else {
            return Ok(());
        };
        let (file, size) = (Arc::clone(&self.spool.file), self.spool.size);
        let got = tokio::task::spawn_blocking(move || {
            use md5::Digest;
            let mut h = md5::Md5::new();
            let mut buf = vec![0u8; 8 << 20];
            let mut at = 0;
            while at < size {
                let n = buf.len().min((size - at) as usize);
                file.read_exact_at(&mut buf[..n], at)?;
                h.update(&buf[..n]);
                at += n as u64;
            }
            Ok::<_, std::io::Error>(format!("{:x}", h.finalize()))
        })
        .await
        .map_err(|e| FetchError::Local(format!("checksum task failed: {e}")))?
        .map_err(|e| FetchError::Local(format!("cannot read the spool: {e}")))?;
        if got.eq_ignore_ascii_case(want.trim()) {
            tracing::info!(id = %self.id, "product verified against the catalogue's MD5");
            Ok(())
        } else {
            Err(FetchError::Changed(format!(
                "product {} streamed whole has MD5 {got}, the catalogue says {want}",
                self.id
            )))
        }
    }
}

impl<S: StreamSource> RangeSource for StreamFallback<S> {
    async fn info(&self, id: &str) -> Result<ObjectInfo, FetchError> {
        self.inner.info(id).await
    }

    async fn get_range(&self, id: &str, range: Range<u64>) -> Result<Bytes, FetchError> {
        if let Some(spool) = self.spool(id) {
            return self.read_spooled(id, spool, range).await;
        }
        // Range first, without asking `info`: a server that honours it costs nothing more,
        // and the zipper answers RangeIgnored at once (no request) for products it already
        // knows to ignore Range.
        match self.inner.get_range(id, range.clone()).await {
            Err(FetchError::RangeIgnored(_)) => {}
            other => return other,
        }
        let size = self.inner.info(id).await?.size;
        let spool = self.spool_for(id, size)?;
        self.read_spooled(id, spool, range).await
    }
}

#[cfg(test)]
mod tests;
