//! Tests of the block cache against [`MemorySource`]: exact bytes, request counts, dedupe,
//! budget, errors. Nothing here asserts on time; delays only make overlaps happen.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::mock::MemorySource;

/// Small blocks keep the products small while exercising many blocks.
const BS: u64 = 4096;

fn setup(
    size: u64,
    budget_blocks: u64,
) -> (Arc<MemorySource>, BlockCache<Arc<MemorySource>>, Bytes) {
    let data = MemorySource::random_bytes(size as usize, 42);
    let src = Arc::new(MemorySource::new().with_product("p", data.clone()));
    let cache = BlockCache::new(
        src.clone(),
        CacheConfig {
            block_size: BS,
            budget_bytes: budget_blocks * BS,
        },
    );
    (src, cache, data)
}

#[tokio::test]
async fn cache_random_reads_are_byte_exact() {
    // Odd size: the last block is short. Budget of 16 blocks: evictions happen too.
    let size = 300 * BS + 123;
    let (_src, cache, data) = setup(size, 16);
    let mut rng = StdRng::seed_from_u64(1);
    for _ in 0..2000 {
        let offset = rng.random_range(0..size + 2 * BS);
        let len = rng.random_range(0..4 * BS);
        let got = cache.read("p", offset, len, size).await.unwrap();
        let start = offset.min(size) as usize;
        let end = offset.saturating_add(len).min(size) as usize;
        assert_eq!(
            got,
            data.slice(start..end.max(start)),
            "read {offset}+{len}"
        );
    }
    let stats = cache.stats();
    assert!(stats.evictions > 0);
    assert!(stats.peak_resident_bytes <= 16 * BS);
}

#[tokio::test]
async fn cache_concurrent_readers_share_one_fetch() {
    let size = 64 * BS;
    let (src, cache, data) = setup(size, 64);
    let cache = Arc::new(cache);
    src.set_delay(Some(Duration::from_millis(20)));
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.read("p", 10 + i, 100, size).await })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap().unwrap(), data.slice(10 + i..110 + i));
    }
    assert_eq!(src.stats().requests, 1);
    let stats = cache.stats();
    assert_eq!((stats.misses, stats.joins), (1, 7));
}

#[tokio::test]
async fn cache_error_reaches_all_waiters_and_is_not_cached() {
    let size = 8 * BS;
    let (src, cache, data) = setup(size, 8);
    let cache = Arc::new(cache);
    src.set_delay(Some(Duration::from_millis(20)));
    src.fail_next(1);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.block("p", 0, size).await })
        })
        .collect();
    for t in tasks {
        assert!(matches!(t.await.unwrap(), Err(FetchError::Server(_))));
    }
    assert_eq!(src.stats().requests, 1, "one failed fetch for all eight");
    assert!(!cache.contains("p", 0));
    assert_eq!(
        cache.block("p", 0, size).await.unwrap(),
        data.slice(0..BS as usize)
    );
    assert_eq!(src.stats().requests, 2);
    assert_eq!(cache.stats().failed_requests, 1);
}

#[tokio::test]
async fn cache_budget_is_respected() {
    let size = 100 * BS;
    let (src, cache, _) = setup(size, 8);
    for offset in (0..size).step_by(1000) {
        cache.read("p", offset, 3000, size).await.unwrap();
        assert!(cache.stats().resident_bytes <= 8 * BS);
    }
    let stats = cache.stats();
    assert!(stats.peak_resident_bytes <= 8 * BS);
    assert_eq!(stats.evictions, 100 - 8);
    assert!(!cache.contains("p", 0) && cache.contains("p", 99));
    assert_eq!(
        src.stats().bytes,
        size,
        "sequential reads fetch each block once"
    );
}

#[tokio::test]
async fn cache_fetch_blocks_uses_one_request_per_missing_run() {
    let size = 32 * BS + 7;
    let (src, cache, data) = setup(size, 64);
    let blocks = cache.fetch_blocks("p", 0..8, size).await.unwrap();
    assert_eq!(blocks.len(), 8);
    assert_eq!(blocks[3], data.slice(3 * BS as usize..4 * BS as usize));
    cache.block("p", 12, size).await.unwrap();
    src.reset_stats();
    // 0..8 cached, 12 cached: 8..12 and 13..33 are the runs (clipped at the 33rd, short block).
    let blocks = cache.fetch_blocks("p", 4..40, size).await.unwrap();
    assert_eq!(blocks.len(), 29);
    assert_eq!(blocks.last().unwrap().len(), 7);
    let ranges: Vec<_> = src.log().into_iter().map(|r| r.range).collect();
    assert_eq!(ranges, vec![8 * BS..12 * BS, 13 * BS..size]);
    assert_eq!(cache.read("p", 0, size, size).await.unwrap(), data);
}

#[tokio::test]
async fn cache_past_end() {
    let size = 4 * BS;
    let (src, cache, _) = setup(size, 8);
    assert!(cache.read("p", size, 10, size).await.unwrap().is_empty());
    assert!(cache
        .read("p", size + 5, 10, size)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(cache.read("p", size - 3, 10, size).await.unwrap().len(), 3);
    assert!(matches!(
        cache.block("p", 4, size).await,
        Err(FetchError::OutOfRange { .. })
    ));
    assert!(cache.start("p", 3..10, size).len() == 1);
    #[allow(clippy::reversed_empty_ranges)]
    let reversed = 3..1;
    assert!(cache.start("p", reversed, size).is_empty());
    assert!(cache
        .fetch_blocks("p", 9..20, size)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(src.stats().requests, 1);
}

#[tokio::test]
async fn cache_never_serves_short_bytes() {
    // The caller believes the product is larger than it is: the source answers short, and the
    // cache must refuse rather than shift offsets.
    let (_src, cache, _) = setup(4 * BS, 8);
    let err = cache.read("p", 3 * BS, 2 * BS, 6 * BS).await.unwrap_err();
    assert!(matches!(err, FetchError::Protocol(_)), "{err}");
    assert!(!cache.contains("p", 3));
}

#[tokio::test]
async fn cache_fetch_survives_a_reader_that_goes_away() {
    let size = 4 * BS;
    let (src, cache, data) = setup(size, 8);
    src.set_delay(Some(Duration::from_millis(10)));
    // Polled once, then dropped: like a FUSE read interrupted by the kernel.
    assert!(cache.read("p", 0, 100, size).now_or_never().is_none());
    assert_eq!(
        cache.read("p", 0, 100, size).await.unwrap(),
        data.slice(0..100)
    );
    assert_eq!(src.stats().requests, 1);
}

#[tokio::test]
async fn cache_pinned_tail_survives_sequential_reading() {
    let size = 100 * BS;
    let (src, cache, data) = setup(size, 8);
    let tail = cache.pin_tail("p", size, 1000).await.unwrap();
    assert_eq!(tail, data.slice((size - 1000) as usize..));
    assert_eq!(cache.stats().pinned_bytes, 1000);
    // Re-pinning and reading inside the tail cost nothing.
    cache.pin_tail("p", size, 500).await.unwrap();
    assert_eq!(
        cache.read("p", size - 22, 22, size).await.unwrap(),
        data.slice((size - 22) as usize..)
    );
    assert_eq!(src.stats().requests, 1);
    for offset in (0..size).step_by(BS as usize) {
        cache.read("p", offset, BS, size).await.unwrap();
    }
    let stats = cache.stats();
    assert!(stats.peak_resident_bytes <= 8 * BS);
    src.reset_stats();
    cache.read("p", size - 900, 800, size).await.unwrap();
    assert_eq!(src.stats().requests, 0, "tail still pinned");
    cache.unpin("p");
    assert_eq!(cache.stats().pinned_bytes, 0);
    assert!(cache.tail("p").is_none());
}

#[tokio::test]
async fn cache_pinned_tails_are_capped() {
    let size = 100 * BS;
    let (_src, cache, _) = setup(size, 8);
    let data_q = MemorySource::random_bytes(size as usize, 9);
    cache.source().insert("q", data_q.clone());
    // A quarter of 8 blocks is 2 blocks: a longer tail is cut, a second tail drops the first.
    let tail = cache.pin_tail("p", size, 10 * BS).await.unwrap();
    assert_eq!(tail.len() as u64, 2 * BS);
    let tail_q = cache.pin_tail("q", size, 2 * BS).await.unwrap();
    assert_eq!(tail_q, data_q.slice((size - 2 * BS) as usize..));
    assert!(cache.tail("p").is_none());
    assert_eq!(cache.stats().pinned_bytes, 2 * BS);
}

/// A source whose first request panics, as a buggy client might.
struct PanicOnce {
    inner: MemorySource,
    panicked: std::sync::atomic::AtomicBool,
}

impl RangeSource for PanicOnce {
    async fn info(&self, id: &str) -> Result<crate::ObjectInfo, FetchError> {
        self.inner.info(id).await
    }
    async fn get_range(&self, id: &str, range: Range<u64>) -> Result<Bytes, FetchError> {
        if !self
            .panicked
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            panic!("injected panic");
        }
        self.inner.get_range(id, range).await
    }
}

#[tokio::test]
async fn cache_a_panicking_fetch_does_not_wedge_the_block() {
    let data = MemorySource::random_bytes(BS as usize, 3);
    let src = PanicOnce {
        inner: MemorySource::new().with_product("p", data.clone()),
        panicked: false.into(),
    };
    let cache = BlockCache::new(
        src,
        CacheConfig {
            block_size: BS,
            budget_bytes: 4 * BS,
        },
    );
    assert!(cache.block("p", 0, BS).await.is_err());
    assert_eq!(cache.block("p", 0, BS).await.unwrap(), data);
}

#[tokio::test]
async fn cache_long_runs_are_split_into_capped_requests() {
    let blocks = 2 * MAX_REQUEST_BYTES / BS + 10;
    let size = blocks * BS;
    let (src, cache, data) = setup(size, blocks);
    assert_eq!(cache.read("p", 0, size, size).await.unwrap(), data);
    let ranges: Vec<_> = src.log().into_iter().map(|r| r.range).collect();
    let cap = MAX_REQUEST_BYTES;
    assert_eq!(ranges, vec![0..cap, cap..2 * cap, 2 * cap..size]);
}

#[tokio::test]
async fn cache_concurrent_opens_share_one_tail_fetch() {
    let size = 100 * BS;
    let (src, cache, data) = setup(size, 16);
    let cache = Arc::new(cache);
    src.set_delay(Some(Duration::from_millis(20)));
    // The first asks for the most; the others ask for less and join it.
    let lens = [3000, 1000, 22, 3000, 500];
    let mut tasks = Vec::new();
    for len in lens {
        let cache = cache.clone();
        tasks.push(tokio::spawn(
            async move { cache.pin_tail("p", size, len).await },
        ));
        // Let the first one start its fetch before the others look.
        tokio::task::yield_now().await;
    }
    for (t, len) in tasks.into_iter().zip(lens) {
        let tail = t.await.unwrap().unwrap();
        assert_eq!(tail, data.slice((size - len) as usize..));
    }
    assert_eq!(src.stats().requests, 1);
}

#[tokio::test]
async fn cache_failed_tail_fetch_is_retried() {
    let size = 100 * BS;
    let (src, cache, data) = setup(size, 16);
    src.fail_next(1);
    assert!(cache.pin_tail("p", size, 100).await.is_err());
    assert_eq!(cache.stats().pinned_bytes, 0);
    let tail = cache.pin_tail("p", size, 100).await.unwrap();
    assert_eq!(tail, data.slice((size - 100) as usize..));
    assert_eq!(src.stats().requests, 2);
}

#[tokio::test]
async fn cache_reads_inside_a_tail_being_fetched_join_it() {
    let size = 100 * BS;
    let (src, cache, data) = setup(size, 16);
    src.set_delay(Some(Duration::from_millis(20)));
    // The open starts the tail fetch and returns; GDAL reads the end record at once.
    cache.prefetch_tail("p", size, 3000);
    let eocd = cache.read("p", size - 22, 22, size).await.unwrap();
    assert_eq!(eocd, data.slice((size - 22) as usize..));
    let dir = cache.read("p", size - 3000, 1000, size).await.unwrap();
    assert_eq!(
        dir,
        data.slice((size - 3000) as usize..(size - 2000) as usize)
    );
    assert_eq!(src.stats().requests, 1, "both reads joined the tail fetch");
    // A read reaching before the tail goes to blocks.
    cache.read("p", size - 3001, 10, size).await.unwrap();
    assert_eq!(src.stats().requests, 2);
}

#[tokio::test]
async fn cache_a_failed_tail_fetch_fails_its_readers_once() {
    let size = 100 * BS;
    let (src, cache, data) = setup(size, 16);
    src.set_delay(Some(Duration::from_millis(20)));
    src.fail_next(1);
    cache.prefetch_tail("p", size, 3000);
    assert!(cache.read("p", size - 22, 22, size).await.is_err());
    let eocd = cache.read("p", size - 22, 22, size).await.unwrap();
    assert_eq!(eocd, data.slice((size - 22) as usize..));
    assert!(cache.tail("p").is_none());
}
