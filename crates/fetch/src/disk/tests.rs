//! Tests of the disk cache against [`MemorySource`]: persistence across instances, verification
//! of every block served, eviction, two stores on one directory.

use std::sync::Arc;

use super::*;
use std::os::unix::fs::FileExt;

use crate::mock::MemorySource;
use crate::{FetchError, RangeSource};

const MIB: u64 = 1 << 20;

fn data() -> Bytes {
    MemorySource::random_bytes((5 * MIB + 1234) as usize, 11)
}

fn layer(dir: &Path, src: MemorySource, budget: DiskBudget) -> DiskCache<MemorySource> {
    DiskCache::new(src, Some(DiskStore::open(dir, budget).unwrap()))
}

/// A layer whose store keeps a product in its partial file even once every block is held, for
/// the tests of partial files themselves.
fn blocks_layer(dir: &Path, src: MemorySource, budget: DiskBudget) -> DiskCache<MemorySource> {
    let store = DiskStore::open(dir, budget).unwrap();
    store.set_auto_assemble(false);
    DiskCache::new(src, Some(store))
}

const BIG: DiskBudget = DiskBudget::Bytes(1 << 40);

#[tokio::test]
async fn a_product_read_once_reads_again_with_zero_requests() {
    let dir = tempfile::tempdir().unwrap();
    let d = data();
    let first = layer(
        dir.path(),
        MemorySource::new().with_product("p", d.clone()),
        BIG,
    );
    let size = d.len() as u64;
    // Unaligned reads, one crossing blocks, then the rest.
    assert_eq!(
        first.get_range("p", 100..MIB + 5).await.unwrap(),
        d.slice(100..(MIB + 5) as usize)
    );
    assert_eq!(first.get_range("p", 0..size + 10).await.unwrap(), d.clone());
    // Only the missing blocks were fetched the second time: 2 blocks, then 4 more.
    let log = first.source().log();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[1].range, 2 * MIB..size);

    // A new process: nothing below knows the product (any request would fail).
    let second = layer(dir.path(), MemorySource::new(), BIG);
    assert_eq!(second.info("p").await.unwrap().size, size);
    assert_eq!(second.get_range("p", 0..size).await.unwrap(), d);
    assert_eq!(
        second.get_range("p", size - 7..size).await.unwrap(),
        d.slice((size - 7) as usize..)
    );
    assert_eq!(second.source().stats().requests, 0);
    assert_eq!(second.source().info_calls(), 0);
    assert_eq!(second.store().unwrap().stats().corrupt, 0);
}

#[tokio::test]
async fn corrupt_torn_and_misplaced_blocks_are_refetched_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let d = data();
    let size = d.len() as u64;
    let first = blocks_layer(
        dir.path(),
        MemorySource::new().with_product("p", d.clone()),
        BIG,
    );
    first.get_range("p", 0..size).await.unwrap();
    let store = first.store().unwrap();
    // In the partial file: block 1 with one bit flipped, block 2 zeroed (its bytes never
    // reached the disk), block 3 holding block 4's bytes, the short last block 5 cut short.
    let path = store.product_dir("p").join(partial::DATA);
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&[d[(MIB + 777) as usize] ^ 0x10], MIB + 777)
        .unwrap();
    f.write_all_at(&vec![0u8; MIB as usize], 2 * MIB).unwrap();
    f.write_all_at(&d[(4 * MIB) as usize..(5 * MIB) as usize], 3 * MIB)
        .unwrap();
    f.write_all_at(&[0u8; 7], size - 7).unwrap();
    drop(f);

    let second = blocks_layer(
        dir.path(),
        MemorySource::new().with_product("p", d.clone()),
        BIG,
    );
    assert_eq!(second.get_range("p", 0..size).await.unwrap(), d);
    let stats = second.store().unwrap().stats();
    assert_eq!(stats.corrupt, 4, "{stats:?}");
    let fetched: Vec<_> = second.source().log().into_iter().map(|r| r.range).collect();
    assert_eq!(
        fetched,
        vec![MIB..4 * MIB, 5 * MIB..size],
        "only the bad blocks are fetched again"
    );
    // Rewritten good: a third reader needs nothing.
    let third = layer(dir.path(), MemorySource::new(), BIG);
    assert_eq!(third.get_range("p", 0..size).await.unwrap(), d);
    assert_eq!(third.source().stats().requests, 0);
}

#[tokio::test]
async fn left_over_temp_files_and_old_block_files_are_never_read() {
    let dir = tempfile::tempdir().unwrap();
    let d = data();
    let pdir = dir.path().join(LAYOUT).join("p");
    std::fs::create_dir_all(&pdir).unwrap();
    // A crash mid-create leaves a temp file; the layout before this one, a file per block.
    std::fs::write(pdir.join(".part.data.1.0.tmp"), b"junk").unwrap();
    std::fs::write(pdir.join("0.blk"), b"an old block file").unwrap();
    let store = DiskStore::open(dir.path(), BIG).unwrap();
    assert!(
        !pdir.join("0.blk").exists(),
        "the old layout's blocks are removed"
    );
    let c = DiskCache::new(
        MemorySource::new().with_product("p", d.clone()),
        Some(store),
    );
    assert_eq!(c.get_range("p", 0..10).await.unwrap(), d.slice(0..10));
    assert_eq!(c.source().stats().requests, 1);
}

#[tokio::test]
async fn eviction_drops_the_least_recently_used_product_first_and_a_big_one_keeps_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let d = data();
    let size = d.len() as u64;
    // Room for 3 blocks and a bit.
    let budget = DiskBudget::Bytes(3 * MIB + 1000);
    let c = blocks_layer(
        dir.path(),
        MemorySource::new()
            .with_product("p", d.clone())
            .with_product("q", MemorySource::random_bytes(MIB as usize, 3)),
        budget,
    );
    let store = Arc::clone(c.store().unwrap());
    c.get_range("q", 0..1).await.unwrap();
    let q_data = store.product_dir("q").join(partial::DATA);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&q_data)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(3000))
        .unwrap();
    for i in 0..3 {
        c.get_range("p", i * MIB..i * MIB + 1).await.unwrap();
    }
    assert!(
        store.used_bytes() <= 3 * MIB + 1000,
        "{}",
        store.used_bytes()
    );
    assert!(
        !q_data.exists(),
        "the product used longest ago is evicted whole"
    );
    // p, bigger than what is left, loses its first block and keeps its latest ones.
    assert!(!store.has("p", size, 0));
    assert!(store.has("p", size, 1) && store.has("p", size, 2));
    assert!(store.stats().evicted >= 2);
    // What is left reads back right, with no request.
    let again = layer(dir.path(), MemorySource::new(), BIG);
    assert_eq!(
        again.get_range("p", MIB..3 * MIB).await.unwrap(),
        d.slice(MIB as usize..(3 * MIB) as usize)
    );
}

#[tokio::test]
async fn two_stores_on_one_directory_read_and_write_concurrently() {
    let dir = tempfile::tempdir().unwrap();
    let d = data();
    let size = d.len() as u64;
    let a = Arc::new(layer(
        dir.path(),
        MemorySource::new().with_product("p", d.clone()),
        BIG,
    ));
    let b = Arc::new(layer(
        dir.path(),
        MemorySource::new().with_product("p", d.clone()),
        BIG,
    ));
    let mut tasks = Vec::new();
    for n in 0..40u64 {
        let c = if n % 2 == 0 {
            Arc::clone(&a)
        } else {
            Arc::clone(&b)
        };
        let start = (n * 987_654) % size;
        let end = (start + 1 + (n * 333_333) % (3 * MIB)).min(size);
        let want = d.slice(start as usize..end as usize);
        tasks.push(tokio::spawn(async move {
            assert_eq!(c.get_range("p", start..end).await.unwrap(), want);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(a.store().unwrap().stats().corrupt, 0);
    assert_eq!(b.store().unwrap().stats().corrupt, 0);
    let c = layer(dir.path(), MemorySource::new(), BIG);
    assert_eq!(c.get_range("p", 0..size).await.unwrap(), d);
}

#[tokio::test]
async fn without_a_directory_everything_passes_through() {
    let d = data();
    let c = DiskCache::new(MemorySource::new().with_product("p", d.clone()), None);
    assert_eq!(c.get_range("p", 5..9).await.unwrap(), d.slice(5..9));
    assert_eq!(c.get_range("p", 5..9).await.unwrap(), d.slice(5..9));
    assert_eq!(c.source().stats().requests, 2);
}

#[test]
fn odd_ids_stay_inside_the_cache() {
    assert_eq!(
        dir_name("db0c8ef3-8ec0-5185-a537-812dad3c58f8"),
        "db0c8ef3-8ec0-5185-a537-812dad3c58f8"
    );
    assert_eq!(dir_name("../x"), "_2e2e2f78");
    assert_eq!(dir_name(".."), "_2e2e");
}

/// A generated product (a real zip, every member stored, one band split in four so that
/// members cross 1 MiB blocks) with its id, bytes and file members as `unzip` sees them.
fn product_zip(dir: &Path) -> (String, Bytes, Vec<(String, Vec<u8>)>) {
    product_zip_with(dir, 3, 4)
}

/// [`product_zip`] with another seed and number of bands (the first product's id is the same
/// whatever the seed: another build of the same product).
fn product_zip_with(
    dir: &Path,
    seed: u64,
    bands: usize,
) -> (String, Bytes, Vec<(String, Vec<u8>)>) {
    use fake_creodias::generate::{generate, GenerateOptions};
    let out = dir.join(format!("products-{seed}-{bands}"));
    let e = generate(&GenerateOptions {
        out: out.clone(),
        count: 1,
        size: 5 * MIB,
        seed,
        geotiff: false,
        catalogue_only: 0,
        same_day: 0,
        bands,
    })
    .unwrap()
    .remove(0);
    let path = out.join(e.file.unwrap());
    let unzip = |args: &[&str]| {
        let out = std::process::Command::new("unzip")
            .arg(args[0])
            .arg(&path)
            .args(&args[1..])
            .output()
            .expect("unzip");
        assert!(out.status.success());
        out.stdout
    };
    let names = String::from_utf8(unzip(&["-Z1"])).unwrap();
    let members = names
        .lines()
        .filter(|n| !n.ends_with('/'))
        .map(|n| (n.to_string(), unzip(&["-p", n])))
        .collect();
    (e.id, Bytes::from(std::fs::read(&path).unwrap()), members)
}

#[tokio::test]
async fn files_of_a_product_whose_zip_is_held_are_read_from_the_zip_with_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let (id, zip, members) = product_zip(dir.path());
    assert!(members.len() >= 8, "{members:?}");
    let size = zip.len() as u64;
    let cache = dir.path().join("cache");
    let first = layer(
        &cache,
        MemorySource::new().with_product(&id, zip.clone()),
        BIG,
    );
    first.get_range(&id, 0..size).await.unwrap();

    // A new process with nothing below: every file of the product, whole and in slices
    // crossing the zip's blocks, equals `unzip -p`, and nothing was asked of the network.
    let second = layer(&cache, MemorySource::new(), BIG);
    for (name, want) in &members {
        let node =
            crate::nodes::node_id(&id, &name.split('/').map(String::from).collect::<Vec<_>>());
        let len = want.len() as u64;
        assert_eq!(second.info(&node).await.unwrap().size, len, "{name}");
        let got = second.get_range(&node, 0..len + 100).await.unwrap();
        assert!(got[..] == want[..], "{name} differs from unzip -p");
        if len > MIB {
            let (a, b) = (MIB - 5, MIB + 7);
            let got = second.get_range(&node, a..b).await.unwrap();
            assert_eq!(&got[..], &want[a as usize..b as usize], "{name} {a}..{b}");
        }
        assert!(matches!(
            second.get_range(&node, len..len + 1).await,
            Err(FetchError::OutOfRange { .. })
        ));
    }
    assert_eq!(second.source().stats().requests, 0);
    assert_eq!(second.source().info_calls(), 0);

    // A name the product does not hold is not made up: it goes to the network.
    let missing = format!(
        "{id}/{}/nothing.xml",
        members[0].0.split('/').next().unwrap()
    );
    assert!(second.get_range(&missing, 0..1).await.is_err());
    assert_eq!(second.source().info_calls(), 1);
}

#[tokio::test]
async fn a_file_whose_zip_blocks_are_not_all_held_is_fetched_as_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let (id, zip, members) = product_zip(dir.path());
    let size = zip.len() as u64;
    let cache = dir.path().join("cache");
    // Only the zip's last block (its central directory): what a zip reader's first look reads.
    let first = layer(
        &cache,
        MemorySource::new().with_product(&id, zip.clone()),
        BIG,
    );
    first.get_range(&id, size - 100..size).await.unwrap();
    let (name, want) = members
        .iter()
        .find(|(_, b)| b.len() as u64 > MIB)
        .expect("a band of more than a block");
    let node = crate::nodes::node_id(&id, &name.split('/').map(String::from).collect::<Vec<_>>());
    let src = MemorySource::new().with_product(&node, want.clone());
    let second = layer(&cache, src, BIG);
    let got = second.get_range(&node, 0..want.len() as u64).await.unwrap();
    assert!(got[..] == want[..]);
    assert!(second.source().stats().requests >= 1, "fetched as a file");
    // The zip's blocks were not fetched for it: the product itself was not asked for.
    assert_eq!(second.source().stats_for(&id).requests, 0);
}

#[tokio::test]
async fn a_product_dropped_and_cached_again_is_read_from_its_new_zip() {
    let dir = tempfile::tempdir().unwrap();
    let (id, zip, members) = product_zip(dir.path());
    let (id2, zip2, members2) = product_zip_with(dir.path(), 9, 2);
    assert_eq!(id, id2, "one product, two builds");
    let cache = dir.path().join("cache");
    let node = |name: &str| {
        crate::nodes::node_id(&id, &name.split('/').map(String::from).collect::<Vec<_>>())
    };
    let c = layer(
        &cache,
        MemorySource::new().with_product(&id, zip.clone()),
        BIG,
    );
    c.get_range(&id, 0..zip.len() as u64).await.unwrap();
    let (name, want) = &members[0];
    assert_eq!(
        &c.get_range(&node(name), 0..want.len() as u64)
            .await
            .unwrap()[..],
        &want[..]
    );
    // Its bytes changed at the source: dropped, then the new build read whole.
    c.store().unwrap().remove_product(&id);
    let fresh = layer(
        &cache,
        MemorySource::new().with_product(&id, zip2.clone()),
        BIG,
    );
    fresh.get_range(&id, 0..zip2.len() as u64).await.unwrap();
    for (name, want) in &members2 {
        let got = c
            .get_range(&node(name), 0..want.len() as u64)
            .await
            .unwrap();
        assert!(
            got[..] == want[..],
            "{name}: the old build's directory was used"
        );
    }
}

/// The product's whole file, waited for (its assembly runs on a thread once the last block
/// lands).
fn wait_whole(store: &DiskStore, id: &str, size: u64) -> std::fs::File {
    for _ in 0..500 {
        if let Some(f) = store.whole_file(id, size) {
            return f;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{id} never became whole");
}

/// A store in `dir` (of `budget`) holding product `p` (`data()`) whole, as one file: the
/// layer, its store and the product's bytes.
async fn held_whole(
    dir: &Path,
    budget: DiskBudget,
) -> (DiskCache<MemorySource>, Arc<DiskStore>, Bytes) {
    let d = data();
    let c = layer(
        dir,
        MemorySource::new().with_product("p", d.clone()),
        budget,
    );
    c.get_range("p", 0..d.len() as u64).await.unwrap();
    let store = Arc::clone(c.store().unwrap());
    drop(wait_whole(&store, "p", d.len() as u64));
    (c, store, d)
}

fn read_all(f: &std::fs::File) -> Vec<u8> {
    use std::io::Read as _;
    let mut out = Vec::new();
    let mut f = f;
    f.read_to_end(&mut out).unwrap();
    out
}

#[tokio::test]
async fn a_product_held_whole_becomes_one_file_whose_blocks_still_read_with_zero_requests() {
    let dir = tempfile::tempdir().unwrap();
    let d = data();
    let size = d.len() as u64;
    let first = layer(
        dir.path(),
        MemorySource::new().with_product("p", d.clone()),
        BIG,
    );
    let store = Arc::clone(first.store().unwrap());
    // Read in part: nothing to assemble yet.
    first.get_range("p", 0..MIB).await.unwrap();
    assert!(store.whole_file("p", size).is_none());
    // The rest, the last block last.
    first.get_range("p", MIB..size).await.unwrap();
    let file = wait_whole(&store, "p", size);
    assert_eq!(read_all(&file), d.to_vec(), "the whole file is the product");
    assert_eq!(store.stats().assembled, 1);
    // The partial file became the whole one; the budget counts the product once.
    let pdir = store.product_dir("p");
    assert!(!pdir.join(partial::DATA).exists() && !pdir.join(partial::LOG).exists());
    assert_eq!(store.used_bytes(), size);
    assert_eq!(
        store.products(),
        vec![CachedProduct {
            id: "p".into(),
            size: Some(size),
            held: size,
            whole: true
        }]
    );
    // Another process reads every byte from it, unaligned too, with no request.
    let second = layer(dir.path(), MemorySource::new(), BIG);
    assert_eq!(second.get_range("p", 0..size).await.unwrap(), d);
    assert_eq!(
        second.get_range("p", MIB - 3..2 * MIB + 3).await.unwrap(),
        d.slice((MIB - 3) as usize..(2 * MIB + 3) as usize)
    );
    assert_eq!(second.source().stats().requests, 0);
    let counted = second.store().unwrap().used_bytes();
    assert!((size..size + 8192).contains(&counted), "{counted}");
    // The layer hands the file out (for passthrough) only for the product's own size.
    assert!(second.backing_file("p").await.is_some());
    assert!(store.whole_file("p", size + 1).is_none());
}

#[tokio::test]
async fn a_corrupt_whole_file_is_dropped_and_fetched_again_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let (_first, store, d) = held_whole(dir.path(), BIG).await;
    let size = d.len() as u64;
    // One bit of block 2 flipped in place (bit rot: same inode, same length).
    let path = store.product_dir("p").join(whole::DATA);
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    let byte = [d[(2 * MIB + 99) as usize] ^ 0x04];
    f.write_all_at(&byte, 2 * MIB + 99).unwrap();
    drop(f);

    let second = layer(
        dir.path(),
        MemorySource::new().with_product("p", d.clone()),
        BIG,
    );
    assert_eq!(second.get_range("p", 0..size).await.unwrap(), d);
    let s2 = second.store().unwrap();
    assert!(s2.stats().corrupt >= 1, "{:?}", s2.stats());
    assert!(second.source().stats().requests >= 1);
    // Fetched again and whole again, right this time.
    assert_eq!(read_all(&wait_whole(s2, "p", size)), d.to_vec());
}

#[tokio::test]
async fn a_whole_file_open_for_reading_reads_on_after_it_is_evicted() {
    let dir = tempfile::tempdir().unwrap();
    let d = data();
    let size = d.len() as u64;
    let c = layer(
        dir.path(),
        MemorySource::new()
            .with_product("p", d.clone())
            .with_product(
                "q",
                MemorySource::random_bytes((size + 2 * MIB) as usize, 12),
            ),
        // Room for p or q, not for both.
        DiskBudget::Bytes(2 * size + MIB),
    );
    c.get_range("p", 0..size).await.unwrap();
    let store = Arc::clone(c.store().unwrap());
    let open = wait_whole(&store, "p", size);
    // Back-date it, then fill the budget: the whole product is evicted at once, index too.
    open.set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    c.get_range("q", 0..size + 2 * MIB).await.unwrap();
    assert!(!store.product_dir("p").join(whole::DATA).exists());
    assert!(!store.product_dir("p").join(whole::INDEX).exists());
    assert!(store.whole_file("p", size).is_none());
    assert!(store.used_bytes() <= 2 * size + MIB);
    // The reader holding it open still reads every byte.
    assert_eq!(read_all(&open), d.to_vec());
}

#[test]
fn two_stores_assembling_one_product_at_once_leave_one_right_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = data();
    let size = d.len() as u64;
    let (a, b) = (
        DiskStore::open(dir.path(), BIG).unwrap(),
        DiskStore::open(dir.path(), BIG).unwrap(),
    );
    a.set_auto_assemble(false);
    b.set_auto_assemble(false);
    for i in 0..size.div_ceil(MIB) {
        let block = &d[(i * MIB) as usize..((i + 1) * MIB).min(size) as usize];
        a.put("p", size, i, block);
    }
    std::thread::scope(|s| {
        let ta = s.spawn(|| a.assemble("p", size));
        let tb = s.spawn(|| b.assemble("p", size));
        // The loser may find the winner's lock held and the file not yet there.
        let (ra, rb) = (ta.join().unwrap(), tb.join().unwrap());
        assert!(ra || rb);
    });
    assert_eq!(read_all(&a.whole_file("p", size).unwrap()), d.to_vec());
    assert_eq!(read_all(&b.whole_file("p", size).unwrap()), d.to_vec());
    let temps = std::fs::read_dir(a.product_dir("p"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".tmp")
        })
        .count();
    assert_eq!(temps, 0);
}

/// A filesystem with less free room than the budget keeps: nothing is kept, said once.
#[test]
fn a_cache_on_a_filesystem_too_full_to_keep_anything_says_so_once() {
    #[derive(Clone, Default)]
    struct Lines(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Lines {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let dir = tempfile::tempdir().unwrap();
    let d = data();
    tracing::subscriber::with_default(subscriber, || {
        // No filesystem has 99.99% of itself free.
        let store = DiskStore::open(dir.path(), DiskBudget::KeepFree(0.9999)).unwrap();
        for i in 0..3u64 {
            store.put(
                "p",
                d.len() as u64,
                i,
                &d[(i * MIB) as usize..((i + 1) * MIB) as usize],
            );
        }
        assert_eq!(store.used_bytes(), 0, "nothing kept");
        // After the first, no block is written only to be deleted.
        assert_eq!(store.stats().writes, 1);
    });
    let text = String::from_utf8_lossy(&lines.0.lock().unwrap()).into_owned();
    assert_eq!(text.matches("the cache keeps nothing").count(), 1, "{text}");
}

/// A whole file is served only for the size the reader knows (another process may have made
/// it for a different build), and never through a symlink planted in a shared cache directory.
#[tokio::test]
async fn a_whole_file_of_another_size_or_behind_a_symlink_is_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let (_c, store, d) = held_whole(dir.path(), BIG).await;
    let size = d.len() as u64;
    assert!(store.read_whole_run("p", size, 0, 5).is_some());
    assert!(store.read_whole_run("p", size - 1000, 0, 5).is_none());
    assert!(store.read_whole_run("p", size + 1, 0, 5).is_none());
    // whole.data replaced by a symlink to a file of the same bytes (an index that names the
    // target's inode, as someone planting it could write).
    let pdir = store.product_dir("p");
    let target = dir.path().join("elsewhere");
    std::fs::rename(pdir.join(whole::DATA), &target).unwrap();
    std::os::unix::fs::symlink(&target, pdir.join(whole::DATA)).unwrap();
    assert!(store.whole_file("p", size).is_none());
    assert!(store.read_whole_run("p", size, 0, 5).is_none());
}

/// A product is made whole in place: the partial file is renamed, not copied, so a budget
/// with room for the product alone is enough.
#[tokio::test]
async fn a_product_is_made_whole_in_place_with_no_room_for_a_copy() {
    let dir = tempfile::tempdir().unwrap();
    let d = data();
    let size = d.len() as u64;
    let c = blocks_layer(
        dir.path(),
        MemorySource::new().with_product("p", d.clone()),
        DiskBudget::Bytes(size + MIB),
    );
    c.get_range("p", 0..size).await.unwrap();
    let store = Arc::clone(c.store().unwrap());
    let ino = |name: &str| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(store.product_dir("p").join(name))
            .unwrap()
            .ino()
    };
    let before = ino(partial::DATA);
    assert!(store.assemble("p", size));
    assert_eq!(ino(whole::DATA), before, "the same file, renamed");
    assert_eq!(read_all(&store.whole_file("p", size).unwrap()), d.to_vec());
    let again = layer(dir.path(), MemorySource::new(), BIG);
    assert_eq!(again.get_range("p", 0..size).await.unwrap(), d);
}

/// A product removed by one store frees its room at once, though another store that wrote it
/// is still running: no store keeps a product's files open between calls.
#[tokio::test]
async fn a_product_removed_by_another_store_is_not_held_open() {
    let dir = tempfile::tempdir().unwrap();
    let d = data();
    let a = blocks_layer(
        dir.path(),
        MemorySource::new().with_product("p", d.clone()),
        BIG,
    );
    a.get_range("p", 0..3 * MIB).await.unwrap();
    let b = DiskStore::open(dir.path(), BIG).unwrap();
    b.remove_product("p");
    let held_deleted = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
        .filter(|t| {
            let t = t.to_string_lossy();
            t.starts_with(&*dir.path().to_string_lossy()) && t.ends_with("(deleted)")
        })
        .count();
    assert_eq!(held_deleted, 0);
    // The first store writes the product again, into a new pair.
    a.get_range("p", 0..MIB + 1).await.unwrap();
    assert!(a.store().unwrap().has("p", d.len() as u64, 0));
}
