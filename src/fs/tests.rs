//! The filesystem without a kernel: lookups, aliases, listings and reads over the in-memory
//! source, checked byte for byte.

use std::ffi::OsStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use eodata_fetch::cache::{BlockCache, CacheConfig};
use eodata_fetch::mock::MemorySource;

use super::*;

const ID: &str = "db0c8ef3-8ec0-5185-a537-812dad3c58f8";
const NAME: &str = "S2A_MSIL1C_20180927T051221_N0206_R033_T42FXL_20180927T073143.SAFE";

/// Resolves the names of the products it holds, counting lookups.
#[derive(Default)]
struct MapResolver {
    products: Vec<ProductMeta>,
    calls: AtomicUsize,
}

impl Resolver for MapResolver {
    async fn resolve(&self, name: &str) -> Result<Option<ProductMeta>, FsError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(self
            .products
            .iter()
            .find(|p| p.id == name || p.name == name || p.name.strip_suffix(".SAFE") == Some(name))
            .cloned())
    }

    /// Filter `all` finds every product; anything else nothing.
    async fn query(&self, filter: &str, max: usize) -> Result<Vec<ProductMeta>, FsError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(match filter {
            "all" => self.products.iter().take(max).cloned().collect(),
            _ => Vec::new(),
        })
    }
}

/// The names `readdir` lists in `ino`, `.` and `..` included: for every kernel-free test of the
/// fs (this file, the folder view's, the tree's).
pub(super) async fn entry_names<R: Resolver, S: RangeSource>(
    fs: &Fs<R, S>,
    ino: u64,
) -> Vec<String> {
    fs.readdir(ino)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect()
}

fn meta(id: &str, name: &str, online: bool) -> ProductMeta {
    ProductMeta {
        id: id.into(),
        name: name.into(),
        mtime: UNIX_EPOCH + std::time::Duration::from_secs(1_538_000_000),
        online,
        size_hint: None,
        xattrs: vec![("user.eodata.checksum.md5".into(), "abc".into())],
    }
}

/// The filesystem under test, its byte source, its resolver and the product's bytes.
type Fixture = (
    Arc<Fs<Arc<MapResolver>, Arc<MemorySource>>>,
    Arc<MemorySource>,
    Arc<MapResolver>,
    Bytes,
);

fn fs_with(size: usize) -> Fixture {
    let data = MemorySource::random_bytes(size, 9);
    let source = Arc::new(MemorySource::new().with_product(ID, data.clone()));
    let resolver = Arc::new(MapResolver {
        products: vec![meta(ID, NAME, true), meta("cold-1", "S2B_COLD.SAFE", false)],
        calls: AtomicUsize::new(0),
    });
    let cache = Arc::new(BlockCache::new(
        source.clone(),
        CacheConfig {
            budget_bytes: 64 << 20,
            ..CacheConfig::default()
        },
    ));
    let fs = Arc::new(Fs::new(resolver.clone(), cache, FsConfig::default()));
    (fs, source, resolver, data)
}

#[tokio::test]
async fn all_names_of_a_product_are_one_inode_and_listed_once() {
    let (fs, _, resolver, data) = fs_with(3 << 20);
    let a = fs
        .lookup(ROOT_INO, OsStr::new(&format!("{NAME}.zip")))
        .await
        .unwrap();
    let b = fs
        .lookup(ROOT_INO, OsStr::new(&format!("{ID}.zip")))
        .await
        .unwrap();
    let stem = NAME.strip_suffix(".SAFE").unwrap();
    let c = fs
        .lookup(ROOT_INO, OsStr::new(&format!("{stem}.zip")))
        .await
        .unwrap();
    assert_eq!(a.ino, b.ino);
    assert_eq!(a.ino, c.ino);
    assert_eq!(
        a.size,
        data.len() as u64,
        "size from the download, not the catalogue"
    );
    assert_eq!(a.perm, 0o444);
    let names = entry_names(&fs, ROOT_INO).await;
    assert_eq!(names, vec![".", "..", &format!("{NAME}.zip")]);
    // Once known, further lookups of any alias ask the catalogue nothing.
    let before = resolver.calls.load(Ordering::SeqCst);
    fs.lookup(ROOT_INO, OsStr::new(&format!("{ID}.zip")))
        .await
        .unwrap();
    assert_eq!(resolver.calls.load(Ordering::SeqCst), before);
}

#[tokio::test]
async fn names_that_cannot_be_products_never_reach_the_catalogue() {
    let (fs, _, resolver, _) = fs_with(1 << 20);
    for name in [
        ".git",
        "x.zip.aux.xml",
        ".zip",
        "autorun.inf",
        ".hidden.zip",
    ] {
        assert!(matches!(
            fs.lookup(ROOT_INO, OsStr::new(name)).await,
            Err(FsError::NotFound)
        ));
    }
    assert_eq!(resolver.calls.load(Ordering::SeqCst), 0);
    assert!(matches!(
        fs.lookup(ROOT_INO, OsStr::new("S2B_NOPE.zip")).await,
        Err(FsError::NotFound)
    ));
}

#[tokio::test]
async fn reads_return_exact_bytes_and_short_only_at_eof() {
    let size = (5 << 20) + 12345;
    let (fs, _, _, data) = fs_with(size);
    let attr = fs
        .lookup(ROOT_INO, OsStr::new(&format!("{ID}.zip")))
        .await
        .unwrap();
    let fh = fs.open(attr.ino, false).await.unwrap();
    let mut rng = 0x9e3779b97f4a7c15u64;
    for _ in 0..200 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let off = rng % size as u64;
        let len = (rng >> 40) as u32 % (256 << 10) + 1;
        let got = fs.read(fh, off, len).await.unwrap();
        let end = (off + len as u64).min(size as u64);
        assert_eq!(
            &got[..],
            &data[off as usize..end as usize],
            "read {off}+{len}"
        );
    }
    assert!(fs.read(fh, size as u64, 100).await.unwrap().is_empty());
    fs.release(fh);
    assert!(matches!(fs.read(fh, 0, 1).await, Err(FsError::BadHandle)));
}

#[tokio::test]
async fn a_sequential_copy_fetches_every_byte_once() {
    let size = 24 << 20;
    let (fs, source, _, data) = fs_with(size);
    let attr = fs
        .lookup(ROOT_INO, OsStr::new(&format!("{ID}.zip")))
        .await
        .unwrap();
    let fh = fs.open(attr.ino, false).await.unwrap();
    let mut off = 0u64;
    let mut out = Vec::with_capacity(size);
    while off < size as u64 {
        let b = fs.read(fh, off, 128 << 10).await.unwrap();
        off += b.len() as u64;
        out.extend_from_slice(&b);
    }
    assert_eq!(out, data);
    let stats = source.stats();
    // The tail pinned on open may overlap the last block once; nothing else is fetched twice.
    assert!(
        stats.bytes <= size as u64 + FsConfig::default().tail_bytes,
        "{} bytes fetched for {size}",
        stats.bytes
    );
    assert!(
        stats.requests < (size as u64 / (128 << 10)),
        "read-ahead batches requests"
    );
}

#[tokio::test]
async fn writes_are_refused_and_offline_products_fail_clearly() {
    let (fs, _, _, _) = fs_with(1 << 20);
    let attr = fs
        .lookup(ROOT_INO, OsStr::new(&format!("{ID}.zip")))
        .await
        .unwrap();
    assert!(matches!(
        fs.open(attr.ino, true).await,
        Err(FsError::ReadOnly)
    ));
    assert!(matches!(
        fs.open(ROOT_INO, false).await,
        Err(FsError::IsADirectory)
    ));
    let cold = fs
        .lookup(ROOT_INO, OsStr::new("S2B_COLD.SAFE.zip"))
        .await
        .unwrap();
    assert!(matches!(
        fs.open(cold.ino, false).await,
        Err(FsError::Offline(_))
    ));
}

#[tokio::test]
async fn xattrs_expose_catalogue_facts() {
    let (fs, _, _, _) = fs_with(1 << 20);
    let attr = fs
        .lookup(ROOT_INO, OsStr::new(&format!("{ID}.zip")))
        .await
        .unwrap();
    let names = fs.listxattr(attr.ino).unwrap();
    assert!(names.contains(&"user.eodata.id".to_string()));
    assert_eq!(
        fs.getxattr(attr.ino, "user.eodata.id").unwrap(),
        ID.as_bytes()
    );
    assert_eq!(
        fs.getxattr(attr.ino, "user.eodata.checksum.md5").unwrap(),
        b"abc"
    );
    assert!(matches!(
        fs.getxattr(attr.ino, "user.other"),
        Err(FsError::NoAttribute)
    ));
}

/// A filesystem whose root is the query `all`, over products whose catalogue size is `hint`.
fn query_fs(size: usize, hint: Option<u64>) -> Fixture {
    let (_, source, _, data) = fs_with(size);
    let mut hot = meta(ID, NAME, true);
    hot.size_hint = hint;
    let resolver = Arc::new(MapResolver {
        products: vec![hot, meta("cold-1", "S2B_COLD.SAFE", false)],
        calls: AtomicUsize::new(0),
    });
    let cache = Arc::new(BlockCache::new(source.clone(), CacheConfig::default()));
    let config = FsConfig {
        queries: vec![QuerySpec::parse("all").unwrap()],
        ..FsConfig::default()
    };
    let fs = Arc::new(Fs::new(resolver.clone(), cache, config));
    (fs, source, resolver, data)
}

#[tokio::test]
async fn a_query_lists_with_hints_and_open_makes_the_size_exact() {
    let (fs, source, resolver, data) = query_fs(3 << 20, Some(1000));
    let entries = fs.readdir(ROOT_INO).await.unwrap();
    let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        vec![".", "..", &format!("{NAME}.zip"), "S2B_COLD.SAFE.zip"]
    );
    let hot = &entries[2].attr;
    assert_eq!((hot.size, hot.exact), (1000, false), "the catalogue's hint");
    assert_eq!(
        source.stats().requests,
        0,
        "listing asks the download service nothing"
    );
    // Lookups of listed names are answered from the listing.
    let calls = resolver.calls.load(Ordering::SeqCst);
    let looked = fs
        .lookup(ROOT_INO, OsStr::new(&format!("{NAME}.zip")))
        .await
        .unwrap();
    assert_eq!(looked, *hot);
    assert_eq!(resolver.calls.load(Ordering::SeqCst), calls);
    assert_eq!(ttl(hot), HINT_TTL);

    let fh = fs.open(hot.ino, false).await.unwrap();
    let attr = fs.getattr(hot.ino).await.unwrap();
    assert_eq!((attr.size, attr.exact), (data.len() as u64, true));
    assert_eq!(ttl(&attr), ATTR_TTL);
    let tail = fs.read(fh, data.len() as u64 - 10, 100).await.unwrap();
    assert_eq!(
        &tail[..],
        &data[data.len() - 10..],
        "reads reach the true end"
    );
}

#[tokio::test]
async fn a_listing_being_read_does_not_change_under_the_reader() {
    let (fs, _, _, _) = query_fs(1 << 20, None);
    let fh = fs.opendir(ROOT_INO).await.unwrap();
    let first = fs.readdir_at(fh, 0, 3).await.unwrap();
    assert_eq!(first.len(), 3);
    let rest = fs.readdir_at(fh, 3, 100).await.unwrap();
    assert_eq!(rest.len(), 1);
    fs.releasedir(fh);
    assert!(matches!(
        fs.readdir_at(fh, 0, 1).await,
        Err(FsError::BadHandle)
    ));
    let status = fs.lookup(ROOT_INO, OsStr::new(STATUS_FILE)).await.unwrap();
    let sfh = fs.open(status.ino, false).await.unwrap();
    let text = fs.read(sfh, 0, 1 << 16).await.unwrap();
    assert!(std::str::from_utf8(&text).unwrap().contains("fs.opens: "));
}

#[tokio::test]
async fn listed_only_resolves_no_unlisted_name() {
    let data = MemorySource::random_bytes(1 << 16, 9);
    let source = Arc::new(MemorySource::new().with_product(ID, data));
    let resolver = Arc::new(MapResolver {
        products: vec![
            meta(ID, NAME, true),
            meta("other-1", "S2B_OTHER.SAFE", true),
        ],
        calls: AtomicUsize::new(0),
    });
    let cache = Arc::new(BlockCache::new(source, CacheConfig::default()));
    let config = FsConfig {
        listed_only: true,
        ..FsConfig::default()
    };
    let fs = Fs::new(resolver.clone(), cache, config);
    fs.add_product(NAME).await.unwrap();
    let calls = resolver.calls.load(Ordering::SeqCst);
    // The listed product, by any of its names.
    for name in [format!("{NAME}.zip"), format!("{ID}.zip")] {
        fs.lookup(ROOT_INO, OsStr::new(&name)).await.unwrap();
    }
    // An unlisted one: ENOENT, and nothing asked of the resolver.
    for name in ["S2B_OTHER.SAFE.zip", "other-1.zip"] {
        assert!(matches!(
            fs.lookup(ROOT_INO, OsStr::new(name)).await,
            Err(FsError::NotFound)
        ));
    }
    assert_eq!(resolver.calls.load(Ordering::SeqCst), calls);
}

#[tokio::test]
async fn lookups_add_a_bounded_number_of_products() {
    let products: Vec<ProductMeta> = (0..5)
        .map(|i| meta(&format!("id-{i}"), &format!("P{i}.SAFE"), false))
        .collect();
    let resolver = Arc::new(MapResolver {
        products,
        calls: AtomicUsize::new(0),
    });
    let cache = Arc::new(BlockCache::new(
        Arc::new(MemorySource::new()),
        CacheConfig::default(),
    ));
    let config = FsConfig {
        max_looked_up: 3,
        ..FsConfig::default()
    };
    let fs = Fs::new(resolver.clone(), cache, config);
    for i in 0..3 {
        fs.lookup(ROOT_INO, OsStr::new(&format!("P{i}.SAFE.zip")))
            .await
            .unwrap();
    }
    let calls = resolver.calls.load(Ordering::SeqCst);
    assert!(matches!(
        fs.lookup(ROOT_INO, OsStr::new("P3.SAFE.zip")).await,
        Err(FsError::NotFound)
    ));
    assert_eq!(
        resolver.calls.load(Ordering::SeqCst),
        calls,
        "no request past the bound"
    );
    // The ones already there still open.
    fs.lookup(ROOT_INO, OsStr::new("P0.SAFE.zip"))
        .await
        .unwrap();
    assert_eq!(fs.readdir(ROOT_INO).await.unwrap().len(), 3 + 2);
}
