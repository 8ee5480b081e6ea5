//! Tests of [`StreamFallback`] against a [`MemorySource`] that ignores Range, with a stream
//! that behaves like a no-Range server: every stream starts at byte 0 on the wire (what is
//! before the asked offset is sent and dropped), and can be cut.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::*;
use crate::mock::{MemorySource, RangeMode};

const MIB: u64 = 1 << 20;

/// [`MemorySource`] for `info`/`get_range`, plus streams from 0 with cut injection.
struct NoRangeServer {
    mem: MemorySource,
    data: HashMap<String, Bytes>,
    /// Each stream started takes the next entry: fail after this many bytes of the product.
    cuts: Mutex<VecDeque<u64>>,
    /// Pause per chunk, so readers ahead of the stream really wait.
    chunk_delay: Option<Duration>,
    streams: AtomicU64,
    /// Bytes "on the wire": from 0 for every stream, as a server that cannot resume sends.
    wire_bytes: Arc<AtomicU64>,
}

impl NoRangeServer {
    fn new(mode: RangeMode, products: &[(&str, Bytes)]) -> Self {
        let mem = MemorySource::new();
        mem.set_range_mode(mode);
        let mut data = HashMap::new();
        for (id, bytes) in products {
            mem.insert(*id, bytes.clone());
            data.insert(id.to_string(), bytes.clone());
        }
        NoRangeServer {
            mem,
            data,
            cuts: Mutex::default(),
            chunk_delay: None,
            streams: AtomicU64::new(0),
            wire_bytes: Arc::default(),
        }
    }
}

/// 64 KiB: the size of the chunks a real body arrives in, roughly.
const CHUNK: usize = 64 << 10;

struct MemStream {
    data: Bytes,
    pos: usize,
    skip: usize,
    cut_at: Option<u64>,
    delay: Option<Duration>,
    wire: Arc<AtomicU64>,
}

impl ChunkStream for MemStream {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, FetchError> {
        loop {
            if self.pos >= self.data.len() {
                return Ok(None);
            }
            if let Some(d) = self.delay {
                tokio::time::sleep(d).await;
            }
            let mut end = (self.pos + CHUNK).min(self.data.len());
            if let Some(cut) = self.cut_at {
                if self.pos as u64 >= cut {
                    return Err(FetchError::Server("injected cut".into()));
                }
                end = end.min(cut as usize);
            }
            let chunk = self.data.slice(self.pos..end);
            self.wire.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            self.pos = end;
            let skip = self.skip.min(chunk.len());
            self.skip -= skip;
            if skip < chunk.len() {
                return Ok(Some(chunk.slice(skip..)));
            }
        }
    }
}

impl RangeSource for NoRangeServer {
    async fn info(&self, id: &str) -> Result<ObjectInfo, FetchError> {
        self.mem.info(id).await
    }
    async fn get_range(&self, id: &str, range: Range<u64>) -> Result<Bytes, FetchError> {
        self.mem.get_range(id, range).await
    }
}

impl StreamSource for NoRangeServer {
    type Stream = MemStream;
    async fn stream_from(
        &self,
        id: &str,
        offset: u64,
        _tail: Bytes,
    ) -> Result<MemStream, FetchError> {
        let data = self
            .data
            .get(id)
            .cloned()
            .ok_or_else(|| FetchError::NotFound(id.into()))?;
        self.streams.fetch_add(1, Ordering::Relaxed);
        Ok(MemStream {
            data,
            pos: 0,
            skip: offset as usize,
            cut_at: self.cuts.lock().unwrap().pop_front(),
            delay: self.chunk_delay,
            wire: Arc::clone(&self.wire_bytes),
        })
    }
}

/// Remembers every block handed over.
#[derive(Default)]
struct RecordingSink {
    blocks: Mutex<HashMap<(String, u64), Vec<u8>>>,
    puts: AtomicU64,
}

impl BlockSink for RecordingSink {
    fn block_size(&self) -> u64 {
        MIB
    }
    fn put_block(&self, id: &str, _size: u64, index: u64, data: &[u8]) {
        self.puts.fetch_add(1, Ordering::Relaxed);
        self.blocks
            .lock()
            .unwrap()
            .insert((id.to_string(), index), data.to_vec());
    }
    fn has_block(&self, id: &str, _size: u64, index: u64) -> bool {
        self.blocks
            .lock()
            .unwrap()
            .contains_key(&(id.to_string(), index))
    }
}

fn product(len: u64, seed: u64) -> Bytes {
    MemorySource::random_bytes(len as usize, seed)
}

#[tokio::test]
async fn concurrent_readers_share_one_stream_and_get_exact_bytes() {
    let data = product(5 * MIB + 12345, 7);
    let mut server = NoRangeServer::new(RangeMode::Ignore, &[("p", data.clone())]);
    server.chunk_delay = Some(Duration::from_millis(1));
    let fb = Arc::new(StreamFallback::new(server, SpoolConfig::default()));
    // The end first (as GDAL reads a zip's directory), then the middle and the start, at once.
    let ranges = [
        data.len() as u64 - 65536..data.len() as u64 + 100,
        3 * MIB + 17..4 * MIB + 99,
        0..MIB,
        MIB - 1..MIB + 1,
        4 * MIB..5 * MIB,
    ];
    let mut tasks = Vec::new();
    for r in ranges.clone() {
        let fb = Arc::clone(&fb);
        tasks.push(tokio::spawn(async move { fb.get_range("p", r).await }));
    }
    for (r, t) in ranges.iter().zip(tasks) {
        let got = t.await.unwrap().unwrap();
        let end = r.end.min(data.len() as u64);
        assert_eq!(
            got,
            data.slice(r.start as usize..end as usize),
            "range {r:?}"
        );
    }
    // Behind the stream now: served from the spool, no new stream.
    assert_eq!(fb.get_range("p", 10..20).await.unwrap(), data.slice(10..20));
    assert_eq!(fb.source().streams.load(Ordering::Relaxed), 1);
    // The mock answers RangeIgnored without bytes: at most one try per reader that came
    // before the spool existed.
    let mem = fb.source().mem.stats();
    assert_eq!((mem.bytes, mem.failures), (0, mem.requests));
    assert!(mem.requests <= 5, "{mem:?}");
    assert_eq!(
        fb.source().wire_bytes.load(Ordering::Relaxed),
        data.len() as u64
    );
}

#[tokio::test]
async fn range_ignored_from_below_switches_to_the_stream() {
    // FromZeroOnly: `info` says Ignored; a source that said Honoured but answered
    // RangeIgnored is covered by the same path (see `get_range`).
    let data = product(2 * MIB + 5, 3);
    let server = NoRangeServer::new(RangeMode::FromZeroOnly, &[("p", data.clone())]);
    let fb = StreamFallback::new(server, SpoolConfig::default());
    assert_eq!(
        fb.get_range("p", MIB..2 * MIB).await.unwrap(),
        data.slice(MIB as usize..2 * MIB as usize)
    );
    assert_eq!(fb.stats().spools, 1);
}

#[tokio::test]
async fn honoured_ranges_pass_through_without_a_spool() {
    let data = product(3 * MIB, 4);
    let server = NoRangeServer::new(RangeMode::Honour, &[("p", data.clone())]);
    let fb = StreamFallback::new(server, SpoolConfig::default());
    assert_eq!(
        fb.get_range("p", MIB..MIB + 10).await.unwrap(),
        data.slice(MIB as usize..MIB as usize + 10)
    );
    assert_eq!(fb.stats(), SpoolStats::default());
    assert_eq!(fb.source().streams.load(Ordering::Relaxed), 0);
    assert_eq!(fb.source().mem.stats().requests, 1);
}

#[tokio::test]
async fn a_failed_stream_fails_its_waiters_and_the_next_read_resumes_from_the_frontier() {
    let data = product(4 * MIB + 3, 9);
    let server = NoRangeServer::new(RangeMode::Ignore, &[("p", data.clone())]);
    // The first stream dies at 1.5 MiB (mid-block), for good.
    server.cuts.lock().unwrap().push_back(3 * MIB / 2);
    let sink = Arc::new(RecordingSink::default());
    let fb = StreamFallback::new(
        server,
        SpoolConfig {
            dir: None,
            sink: Some(sink.clone()),
            expected_md5: None,
        },
    );
    let err = fb.get_range("p", 3 * MIB..3 * MIB + 1).await.unwrap_err();
    assert!(matches!(err, FetchError::Server(_)), "{err}");
    // What arrived is served without a new stream.
    assert_eq!(
        fb.get_range("p", 0..MIB).await.unwrap(),
        data.slice(0..MIB as usize)
    );
    assert_eq!(fb.source().streams.load(Ordering::Relaxed), 1);
    // Ahead of it: a new stream, from 0 on the wire, skipping what is spooled.
    let all = fb.get_range("p", 0..data.len() as u64).await.unwrap();
    assert_eq!(all, data);
    assert_eq!(fb.source().streams.load(Ordering::Relaxed), 2);
    // Every block reached the sink exactly right, the one cut in the middle included.
    let blocks = sink.blocks.lock().unwrap().clone();
    assert_eq!(blocks.len(), 5);
    for ((_, i), b) in blocks.iter() {
        let start = (i * MIB) as usize;
        let end = (start + MIB as usize).min(data.len());
        assert_eq!(&b[..], &data[start..end], "block {i}");
    }
    assert_eq!(
        sink.puts.load(Ordering::Relaxed),
        5,
        "each block handed over once"
    );
    // Complete and all in the sink: the spool is gone.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(fb.stats().spools, 0);
}

#[tokio::test]
async fn out_of_range_and_empty_reads() {
    let data = product(MIB, 1);
    let server = NoRangeServer::new(RangeMode::Ignore, &[("p", data.clone())]);
    let fb = StreamFallback::new(server, SpoolConfig::default());
    assert!(matches!(
        fb.get_range("p", MIB + 1..MIB + 2).await,
        Err(FetchError::OutOfRange { .. })
    ));
    assert!(fb.get_range("p", 5..5).await.unwrap().is_empty());
    assert!(matches!(
        fb.get_range("q", 0..1).await,
        Err(FetchError::NotFound(_))
    ));
}

#[tokio::test]
async fn without_a_sink_only_the_most_recently_used_complete_spools_are_kept() {
    let products: Vec<(String, Bytes)> = (0..6)
        .map(|i| (format!("p{i}"), product(100_000, i)))
        .collect();
    let refs: Vec<(&str, Bytes)> = products
        .iter()
        .map(|(id, b)| (id.as_str(), b.clone()))
        .collect();
    let server = NoRangeServer::new(RangeMode::Ignore, &refs);
    let fb = StreamFallback::new(server, SpoolConfig::default());
    for (id, data) in &products {
        assert_eq!(fb.get_range(id, 0..10).await.unwrap(), data.slice(0..10));
        // p0 stays in use.
        fb.get_range("p0", 5..6).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Four idle spools at most, plus the one made last; p0, used throughout, is among them.
    assert_eq!(fb.stats().spools, MAX_IDLE_SPOOLS + 1);
    let streams = fb.source().streams.load(Ordering::Relaxed);
    fb.get_range("p0", 0..10).await.unwrap();
    fb.get_range("p5", 0..10).await.unwrap();
    assert_eq!(
        fb.source().streams.load(Ordering::Relaxed),
        streams,
        "kept ones need no stream"
    );
    // p1 was dropped: reading it again streams it again, still exact.
    assert_eq!(
        fb.get_range("p1", 7..9).await.unwrap(),
        products[1].1.slice(7..9)
    );
    assert_eq!(fb.source().streams.load(Ordering::Relaxed), streams + 1);
}

#[tokio::test]
async fn a_spool_that_cannot_be_made_is_a_local_error_not_the_service() {
    // A regular file where the spool directory should be: creating the spool fails on this
    // machine (as a full or read-only `$TMPDIR` does), and the reader is told so.
    let not_a_dir = tempfile::NamedTempFile::new().unwrap();
    let server = NoRangeServer::new(RangeMode::Ignore, &[("p", product(MIB, 2))]);
    let fb = StreamFallback::new(
        server,
        SpoolConfig {
            dir: Some(not_a_dir.path().to_path_buf()),
            ..SpoolConfig::default()
        },
    );
    let err = fb.get_range("p", 0..10).await.unwrap_err();
    assert!(matches!(err, FetchError::Local(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.starts_with("local storage error: "), "{msg}");
    assert!(
        msg.contains(&not_a_dir.path().display().to_string()),
        "{msg}"
    );
    assert!(!msg.contains("download service"), "{msg}");
    assert!(!err.is_logged_once() && !err.is_login_refused());
}

/// With the catalogue's MD5 to check, the sink (which other processes read, and which keeps a
/// product whole once it holds every block) gets the last block only once the whole stream
/// matched; a stream that does not match never completes the sink.
#[tokio::test]
async fn the_sinks_last_block_waits_for_the_checksum() {
    use md5::Digest as _;
    let data = product(3 * MIB + 17, 4);
    let good = format!("{:x}", md5::Md5::digest(&data));
    for (want, complete) in [(good, true), ("0".repeat(32), false)] {
        let server = NoRangeServer::new(RangeMode::Ignore, &[("p", data.clone())]);
        let sink = Arc::new(RecordingSink::default());
        let fb = StreamFallback::new(
            server,
            SpoolConfig {
                dir: None,
                sink: Some(sink.clone()),
                expected_md5: Some(Arc::new(move |_: &str| Some(want.clone()))),
            },
        );
        let got = fb.get_range("p", 0..data.len() as u64).await;
        assert_eq!(got.is_ok(), complete, "{got:?}");
        let mut held: Vec<u64> = sink.blocks.lock().unwrap().keys().map(|k| k.1).collect();
        held.sort();
        let want_held: Vec<u64> = if complete {
            vec![0, 1, 2, 3]
        } else {
            vec![0, 1, 2]
        };
        assert_eq!(held, want_held);
    }
}
