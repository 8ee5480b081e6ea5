//! Tests of read-ahead against [`MemorySource`]: what is fetched, how often, how many at once.
//! Nothing asserts on time; delays only make fetches overlap so bounds can be observed.

use std::time::Duration;

use futures::FutureExt as _;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::cache::CacheConfig;
use crate::mock::MemorySource;

const MIB: u64 = 1 << 20;
const KIB: u64 = 1 << 10;

type Cache = BlockCache<Arc<MemorySource>>;

fn setup(size: u64, config: CacheConfig) -> (Arc<MemorySource>, Arc<Cache>, Bytes) {
    let data = MemorySource::random_bytes(size as usize, size);
    let src = Arc::new(MemorySource::new().with_product("p", data.clone()));
    let cache = Arc::new(BlockCache::new(src.clone(), config));
    (src, cache, data)
}

/// Reads the whole product the way the kernel does: 16 KiB first, then `step` at a time.
async fn read_like_kernel(reader: &Prefetcher<Arc<MemorySource>>, step: u64, data: &Bytes) -> u64 {
    let size = reader.size();
    let mut offset = 0;
    let mut reads = 0;
    let mut len = 16 * KIB;
    while offset < size {
        let got = reader.read(offset, len).await.unwrap();
        let end = (offset + len).min(size);
        assert_eq!(
            got,
            data.slice(offset as usize..end as usize),
            "read at {offset}"
        );
        offset = end;
        len = step;
        reads += 1;
    }
    assert!(reader.read(size, step).await.unwrap().is_empty());
    reads
}

/// Once the window has ramped up to full-size requests, read-ahead does not trickle smaller ones
/// as the window slides (save the last, at the end of the product); none is above the cap.
fn assert_full_requests_once_ramped(src: &MemorySource, size: u64) {
    let log = src.log();
    let lens: Vec<u64> = log.iter().map(|r| r.range.end - r.range.start).collect();
    assert!(
        lens.iter().all(|&len| len <= DEFAULT_MAX_REQUEST),
        "{lens:?}"
    );
    let first_full = lens
        .iter()
        .position(|&len| len == DEFAULT_MAX_REQUEST)
        .expect("the window reached full-size requests");
    for r in &log[first_full..] {
        let len = r.range.end - r.range.start;
        assert!(
            len == DEFAULT_MAX_REQUEST || r.range.end == size,
            "{lens:?}"
        );
    }
}

#[tokio::test]
async fn prefetch_sequential_reader_fetches_each_byte_once_in_few_requests() {
    let size = 64 * MIB;
    let (src, cache, data) = setup(size, CacheConfig::default());
    let reader = Prefetcher::new(cache.clone(), "p", size, PrefetchConfig::default());
    let reads = read_like_kernel(&reader, 128 * KIB, &data).await;
    let served = src.stats();
    assert_eq!(reads, 513);
    assert_eq!(served.bytes, size, "no byte fetched twice, none missing");
    // A ramp of small requests while the window grows, then 8 MiB ones (17 when written).
    assert!(
        served.requests <= 20,
        "far fewer requests than reads: {served:?}"
    );
    assert_full_requests_once_ramped(&src, size);
    assert_eq!(
        reader.window_bytes(),
        DEFAULT_MAX_WINDOW,
        "window grew to its cap"
    );
    assert!(cache.stats().hits > 0);
}

#[tokio::test]
async fn prefetch_random_reader_fetches_only_touched_blocks() {
    let size = 64 * MIB;
    let (src, cache, data) = setup(size, CacheConfig::default());
    let reader = Prefetcher::new(cache.clone(), "p", size, PrefetchConfig::default());
    let mut rng = StdRng::seed_from_u64(5);
    let mut touched = std::collections::HashSet::new();
    for _ in 0..100 {
        let offset = rng.random_range(1..size);
        let len = 64 * KIB;
        let got = reader.read(offset, len).await.unwrap();
        let end = (offset + len).min(size);
        assert_eq!(got, data.slice(offset as usize..end as usize));
        assert_eq!(reader.window_bytes(), 0);
        touched.extend(offset / MIB..=(end - 1) / MIB);
    }
    let served = src.stats();
    assert!(
        served.bytes <= touched.len() as u64 * MIB,
        "{} bytes fetched for {} blocks touched",
        served.bytes,
        touched.len()
    );
    assert!(served.requests <= touched.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_concurrent_readers_share_every_block() {
    let size = 24 * MIB + 5;
    let (src, cache, data) = setup(size, CacheConfig::default());
    src.set_delay(Some(Duration::from_millis(2)));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let cache = cache.clone();
            let data = data.clone();
            tokio::spawn(async move {
                let reader = Prefetcher::new(cache, "p", size, PrefetchConfig::default());
                read_like_kernel(&reader, 128 * KIB, &data).await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(src.stats().bytes, size, "each block fetched once");
    let mut ranges: Vec<_> = src.log().into_iter().map(|r| r.range).collect();
    ranges.sort_by_key(|r| r.start);
    for pair in ranges.windows(2) {
        assert!(pair[0].end <= pair[1].start, "overlapping fetches {pair:?}");
    }
}

#[tokio::test]
async fn prefetch_in_flight_requests_are_bounded() {
    let size = 48 * MIB;
    let (src, cache, data) = setup(size, CacheConfig::default());
    src.set_delay(Some(Duration::from_millis(3)));
    let config = PrefetchConfig {
        max_in_flight: 2,
        ..PrefetchConfig::default()
    };
    let reader = Prefetcher::new(cache, "p", size, config);
    read_like_kernel(&reader, 128 * KIB, &data).await;
    // Two read-ahead requests, plus the reader's own when it overtakes them.
    assert!(src.max_in_flight() <= 3, "{} at once", src.max_in_flight());
    assert!(src.max_in_flight() >= 2, "read-ahead did run in parallel");
    assert_eq!(src.stats().bytes, size);
    assert_full_requests_once_ramped(&src, size);
}

#[tokio::test]
async fn prefetch_window_fits_a_quarter_of_a_small_cache() {
    // 16 blocks of budget: the window may not pass 4, and read-ahead must not evict what the
    // reader is about to consume, so nothing is fetched twice.
    let bs = 64 * KIB;
    let size = 200 * bs;
    let config = CacheConfig {
        block_size: bs,
        budget_bytes: 16 * bs,
    };
    let (src, cache, data) = setup(size, config);
    src.set_delay(Some(Duration::from_millis(1)));
    let reader = Prefetcher::new(cache.clone(), "p", size, PrefetchConfig::default());
    read_like_kernel(&reader, 16 * KIB, &data).await;
    assert_eq!(reader.window_bytes(), 4 * bs);
    assert_eq!(src.stats().bytes, size);
    assert!(cache.stats().peak_resident_bytes <= 16 * bs);
}

#[tokio::test]
async fn prefetch_classifies_accesses() {
    let size = 64 * MIB;
    let (_src, cache, _) = setup(size, CacheConfig::default());
    let reader = Prefetcher::new(cache, "p", size, PrefetchConfig::default());
    let steps: [(u64, u64, Access, u64); 8] = [
        (0, 16 * KIB, Access::Sequential, MIB),
        (16 * KIB, 128 * KIB, Access::Sequential, MIB),
        // Out-of-order async read: keep, don't grow.
        (400 * KIB, 128 * KIB, Access::NearSequential, MIB),
        (272 * KIB, 128 * KIB, Access::NearSequential, MIB),
        (400 * KIB, 624 * KIB, Access::Sequential, MIB),
        // Entering block 1 doubles the window.
        (MIB, 128 * KIB, Access::Sequential, 2 * MIB),
        (40 * MIB, 128 * KIB, Access::Random, 0),
        (40 * MIB + 128 * KIB, 128 * KIB, Access::Sequential, MIB),
    ];
    for (offset, len, access, window) in steps {
        reader.read(offset, len).await.unwrap();
        assert_eq!(reader.last_access(), Some(access), "read at {offset}");
        assert_eq!(reader.window_bytes(), window, "read at {offset}");
    }
    // A first read elsewhere than 0 is not a stream yet.
    let (_src, cache, _) = setup(size, CacheConfig::default());
    let reader = Prefetcher::new(cache, "p", size, PrefetchConfig::default());
    reader.read(size - 64 * KIB, 64 * KIB).await.unwrap();
    assert_eq!(reader.last_access(), Some(Access::Random));
}

#[tokio::test]
async fn prefetch_swapped_kernel_reads_keep_the_window() {
    // The kernel's async read-ahead sends 1 MiB reads that can arrive swapped: the late one
    // starts 2 MiB before where the other ended. That is still the stream, not a seek.
    let size = 64 * MIB;
    let (_src, cache, _) = setup(size, CacheConfig::default());
    let reader = Prefetcher::new(cache, "p", size, PrefetchConfig::default());
    reader.read(0, MIB).await.unwrap();
    reader.read(MIB, MIB).await.unwrap();
    let window = reader.window_bytes();
    assert!(window > 0);
    reader.read(3 * MIB, MIB).await.unwrap();
    reader.read(2 * MIB, MIB).await.unwrap();
    assert_eq!(reader.last_access(), Some(Access::NearSequential));
    assert!(reader.window_bytes() >= window);
}

#[tokio::test]
async fn prefetch_small_member_inside_one_block_fetches_only_that_block() {
    // GDAL reading a 400 KiB GeoTIFF stored near the start of a zip, through the kernel's
    // growing reads (which run past the member's end): one block, no read-ahead after it.
    let size = 64 * MIB;
    let (src, cache, data) = setup(size, CacheConfig::default());
    let reader = Prefetcher::new(cache, "p", size, PrefetchConfig::default());
    for (offset, len) in [(0, 32 * KIB), (32 * KIB, 128 * KIB), (160 * KIB, 256 * KIB)] {
        let got = reader.read(offset, len).await.unwrap();
        assert_eq!(got, data.slice(offset as usize..(offset + len) as usize));
    }
    reader.read(416 * KIB, 512 * KIB).await.unwrap();
    assert_eq!(src.stats().bytes, MIB, "{:?}", src.log());
}

#[tokio::test]
async fn prefetch_off_fetches_only_what_is_read() {
    let size = 8 * MIB;
    let (src, cache, data) = setup(size, CacheConfig::default());
    let config = PrefetchConfig {
        read_ahead: ReadAhead::Off,
        ..PrefetchConfig::default()
    };
    let reader = Prefetcher::new(cache, "p", size, config);
    assert_eq!(
        reader.read(0, 3 * MIB).await.unwrap(),
        data.slice(..3 * MIB as usize)
    );
    assert_eq!(src.stats().bytes, 3 * MIB);
    assert_eq!(reader.window_bytes(), 0);
}

#[tokio::test]
async fn prefetch_mixed_reads_are_byte_exact_despite_faults() {
    // Small blocks, a small cache (evictions) and one request in five failing: every read that
    // succeeds must be exact, and retries must get through.
    let bs = 4 * KIB;
    let size = 500 * bs + 77;
    let config = CacheConfig {
        block_size: bs,
        budget_bytes: 64 * bs,
    };
    let (src, cache, data) = setup(size, config);
    src.set_fail_rate(0.2, 11);
    let reader = Prefetcher::new(cache, "p", size, PrefetchConfig::default());
    let mut rng = StdRng::seed_from_u64(3);
    let mut offset = 0u64;
    let mut failures = 0;
    for _ in 0..3000 {
        // Mostly streaming, with hops back, forward and far.
        offset = match rng.random_range(0..10) {
            0 => rng.random_range(0..size + bs),
            1 => offset.saturating_sub(rng.random_range(0..3 * bs)),
            2 => offset + rng.random_range(0..3 * bs),
            _ => offset,
        };
        let len = rng.random_range(0..3 * bs);
        let mut attempts = 0;
        let got = loop {
            match reader.read(offset, len).await {
                Ok(bytes) => break bytes,
                Err(_) => failures += 1,
            }
            attempts += 1;
            assert!(
                attempts < 50,
                "a failed fetch must not be cached: read {offset}+{len}"
            );
        };
        let start = offset.min(size) as usize;
        let end = offset.saturating_add(len).min(size) as usize;
        assert_eq!(
            got,
            data.slice(start..end.max(start)),
            "read {offset}+{len}"
        );
        offset = end as u64;
    }
    assert!(failures > 0, "faults were injected");
}

/// A reader that streams into its second block and then stops reading: its window (4 blocks
/// past the block read, 1 block per request, 2 read-ahead requests at once) has room for
/// blocks 2..6, but only 2 fit in flight when the read comes.
fn paused_reader_setup() -> (Arc<MemorySource>, Prefetcher<Arc<MemorySource>>) {
    let size = 16 * MIB;
    let (src, cache, _) = setup(size, CacheConfig::default());
    // Fetches overlap, so the in-flight bound is what holds the later blocks back.
    src.set_delay(Some(Duration::from_millis(20)));
    let config = PrefetchConfig {
        initial_window: 4 * MIB,
        max_window: 4 * MIB,
        max_in_flight: 2,
        max_request: MIB,
        ..PrefetchConfig::default()
    };
    (src.clone(), Prefetcher::new(cache, "p", size, config))
}

/// Waits until the source has answered every request it got and none has come for a while
/// (the top-up happens in spawned tasks), then returns the blocks requested, in order.
async fn blocks_requested_when_quiet(src: &MemorySource) -> Vec<u64> {
    let mut quiet = 0;
    let mut seen = usize::MAX;
    for _ in 0..1000 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let n = src.log().len();
        if src.in_flight() == 0 && n == seen {
            quiet += 1;
            if quiet == 10 {
                break;
            }
        } else {
            quiet = 0;
        }
        seen = n;
    }
    let mut blocks: Vec<u64> = src.log().iter().map(|r| r.range.start / MIB).collect();
    blocks.sort_unstable();
    blocks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_a_freed_connection_reads_ahead_without_waiting_for_the_next_read() {
    let (src, reader) = paused_reader_setup();
    reader.read(0, MIB).await.unwrap();
    reader.read(MIB, MIB).await.unwrap();
    // At the second read: its own block 1, then read-ahead of blocks 2 and 3 (2 in flight).
    // No more reads come; blocks 4 and 5 are requested as blocks 2 and 3 arrive, and nothing
    // past the window (block 6 on).
    assert_eq!(
        blocks_requested_when_quiet(&src).await,
        vec![0, 1, 2, 3, 4, 5]
    );
    assert!(src.max_in_flight() <= 3, "{} at once", src.max_in_flight());
    assert_eq!(src.stats().bytes, 6 * MIB, "each block fetched once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_a_closed_handle_starts_no_more_read_ahead() {
    let (src, reader) = paused_reader_setup();
    reader.read(0, MIB).await.unwrap();
    // Polled once: the read starts its fetch and read-ahead, then the handle is closed while
    // they are in flight (a reader interrupted mid-read, then its file closed).
    assert!(reader.read(MIB, MIB).now_or_never().is_none());
    drop(reader);
    // The fetches in flight finish (and stay in the cache); none follows them.
    assert_eq!(blocks_requested_when_quiet(&src).await, vec![0, 1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_a_failed_read_ahead_fetch_starts_no_other() {
    let (src, reader) = paused_reader_setup();
    reader.read(0, MIB).await.unwrap();
    assert!(reader.read(MIB, MIB).now_or_never().is_none());
    // Blocks 1, 2 and 3 are on their way; all three fail (an outage): the failures do not
    // start blocks 4 and 5, as successes would.
    src.fail_next(3);
    assert_eq!(blocks_requested_when_quiet(&src).await, vec![0, 1, 2, 3]);
    assert_eq!(src.stats().failures, 3);
    drop(reader);
}

/// With drop-behind, a streaming reader's blocks leave memory once it is past them by more than
/// a backward seek, if the source keeps them locally (they would be read from the disk cache
/// again); without it, or when the source would have to download them again, they stay.
#[tokio::test]
async fn prefetch_drop_behind_frees_what_a_streaming_reader_has_passed() {
    let size = 32 * MIB;
    for (drop_behind, local) in [(false, true), (true, false), (true, true)] {
        let data = MemorySource::random_bytes(size as usize, 5);
        let mut src = MemorySource::new().with_product("p", data.clone());
        if local {
            src = src.keeping_locally();
        }
        let cache = Arc::new(BlockCache::new(Arc::new(src), CacheConfig::default()));
        let config = PrefetchConfig {
            drop_behind,
            ..PrefetchConfig::default()
        };
        let reader = Prefetcher::new(cache.clone(), "p", size, config);
        read_like_kernel(&reader, MIB, &data).await;
        let behind = DEFAULT_BACKWARD_SEEK / MIB + 1;
        let kept: Vec<u64> = (0..32).filter(|&i| cache.contains("p", i)).collect();
        if drop_behind && local {
            assert_eq!(kept, (32 - behind..32).collect::<Vec<_>>());
            assert_eq!(cache.stats().released, 32 - behind);
        } else {
            assert_eq!(kept, (0..32).collect::<Vec<_>>());
            assert_eq!(cache.stats().released, 0);
        }
    }
}
