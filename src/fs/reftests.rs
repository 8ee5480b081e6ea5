//! Reference-model test of the filesystem core, in the style of mountpoint-s3's reftests:
//! `proptest` generates random sequences of lookups (every alias of a product, and names that
//! are no product), paged readdirs of the root and of a query directory, getattrs, opens,
//! reads of random ranges and releases; after each step `Fs` must agree with a plain model
//! (which names resolve to which product, what each directory lists, each product's bytes).
//! A failure shrinks to the shortest sequence of operations that still disagrees.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use eodata_fetch::cache::{BlockCache, CacheConfig};
use eodata_fetch::mock::MemorySource;
use proptest::prelude::*;

use super::*;

/// The query directory's name in the root; its filter `all` lists every product.
const QUERY_DIR: &str = "q";

/// Product sizes in bytes: one byte, under a block, a few blocks, past the 1 MiB tail pinned on
/// open, so that reads cross block and tail boundaries.
const SIZES: [usize; 4] = [1, 70_001, (1 << 20) + 17, (3 << 20) + 5];

/// Largest read asked for, in bytes: a few of the kernel's 128 KiB requests.
const MAX_READ: u32 = 600 << 10;

/// Catalogue of the test: (id, Name) of each product, sizes from [`SIZES`].
fn catalogue() -> Vec<ProductMeta> {
    (0..SIZES.len())
        .map(|i| ProductMeta {
            id: format!("0000000{i}-8ec0-5185-a537-812dad3c58f8"),
            name: format!("S2A_MSIL1C_2018092{i}T051221_N0206_R033_T42FXL_2018092{i}T073143.SAFE"),
            mtime: UNIX_EPOCH + std::time::Duration::from_secs(1_538_000_000),
            online: true,
            // The catalogue's hint is right: the model's sizes hold before and after open.
            size_hint: Some(SIZES[i] as u64),
            xattrs: Vec::new(),
        })
        .collect()
}

/// Resolves any alias of the catalogue's products; filter `all` lists them all.
struct ListResolver(Vec<ProductMeta>);

impl Resolver for ListResolver {
    async fn resolve(&self, name: &str) -> Result<Option<ProductMeta>, FsError> {
        Ok(self
            .0
            .iter()
            .find(|p| p.id == name || p.name == name || p.name.strip_suffix(".SAFE") == Some(name))
            .cloned())
    }

    async fn query(&self, filter: &str, max: usize) -> Result<Vec<ProductMeta>, FsError> {
        Ok(match filter {
            "all" => self.0.iter().take(max).cloned().collect(),
            _ => Vec::new(),
        })
    }
}

/// How a lookup names a product.
#[derive(Clone, Copy, Debug)]
enum Alias {
    /// `<Name>.zip` (Name ends in `.SAFE`).
    Name,
    /// `<Name without .SAFE>.zip`.
    Stem,
    /// `<uuid>.zip`.
    Id,
    /// A name of the same shape that no product has.
    Missing,
}

#[derive(Clone, Copy, Debug)]
enum Dir {
    Root,
    Query,
}

#[derive(Clone, Debug)]
enum Op {
    /// Look up product `p` in the root under `alias`.
    Lookup { p: usize, alias: Alias },
    /// Look up product `p`'s `<Name>.zip` in the query directory.
    LookupInQuery { p: usize },
    /// List `dir` `page` entries at a time; then continue from `from` (an index into the
    /// listing, wrapped) and compare with the rest of the full listing.
    Readdir { dir: Dir, page: usize, from: usize },
    /// getattr of product `p`'s inode, when the model has seen it.
    Getattr { p: usize },
    /// Look up `<Name>.zip` of product `p` in the root and open it.
    Open { p: usize },
    /// Read `len` bytes at `off` (wrapped to within 64 bytes past the end) from open handle
    /// `h` (wrapped).
    Read { h: usize, off: u64, len: u32 },
    /// Release open handle `h` (wrapped); a read of it must then fail.
    Release { h: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let p = 0..SIZES.len();
    let alias = prop_oneof![
        Just(Alias::Name),
        Just(Alias::Stem),
        Just(Alias::Id),
        Just(Alias::Missing)
    ];
    let dir = prop_oneof![Just(Dir::Root), Just(Dir::Query)];
    prop_oneof![
        3 => (p.clone(), alias).prop_map(|(p, alias)| Op::Lookup { p, alias }),
        1 => p.clone().prop_map(|p| Op::LookupInQuery { p }),
        2 => (dir, 1..6usize, 0..10usize).prop_map(|(dir, page, from)| Op::Readdir { dir, page, from }),
        1 => p.clone().prop_map(|p| Op::Getattr { p }),
        2 => p.prop_map(|p| Op::Open { p }),
        4 => (any::<usize>(), any::<u64>(), 1..=MAX_READ).prop_map(|(h, off, len)| Op::Read { h, off, len }),
        1 => any::<usize>().prop_map(|h| Op::Release { h }),
    ]
}

/// What `Fs` should show.
#[derive(Default)]
struct Model {
    /// Products listed in the root (looked up there by an existing alias).
    in_root: BTreeSet<usize>,
    /// Inode of each product once seen; every later answer must give the same.
    ino: BTreeMap<usize, u64>,
    /// Products opened at least once: their size is the download's (exact) from then on.
    opened: BTreeSet<usize>,
    /// Open handles: (fh, product).
    handles: Vec<(u64, usize)>,
}

fn file_name(meta: &ProductMeta) -> String {
    format!("{}.zip", meta.name)
}

type TestFs = Fs<Arc<ListResolver>, Arc<MemorySource>>;

struct Harness {
    fs: TestFs,
    metas: Vec<ProductMeta>,
    data: Vec<Bytes>,
    model: Model,
    query_ino: u64,
}

impl Harness {
    async fn new() -> Harness {
        let metas = catalogue();
        let mut source = MemorySource::new();
        let mut data = Vec::new();
        for (i, m) in metas.iter().enumerate() {
            let bytes = MemorySource::random_bytes(SIZES[i], i as u64 + 1);
            source = source.with_product(m.id.clone(), bytes.clone());
            data.push(bytes);
        }
        let cache = Arc::new(BlockCache::new(Arc::new(source), CacheConfig::default()));
        let config = FsConfig {
            queries: vec![QuerySpec::parse(&format!("{QUERY_DIR}=all")).unwrap()],
            ..FsConfig::default()
        };
        let fs = Fs::new(Arc::new(ListResolver(metas.clone())), cache, config);
        let q = fs.lookup(ROOT_INO, OsStr::new(QUERY_DIR)).await.unwrap();
        assert_eq!(q.kind, Kind::Directory);
        Harness {
            fs,
            metas,
            data,
            model: Model::default(),
            query_ino: q.ino,
        }
    }

    /// A product's attributes as the model has them; records its inode the first time.
    fn check_attr(&mut self, p: usize, attr: &Attr, what: &str) {
        assert_eq!(attr.kind, Kind::File, "{what}");
        assert_eq!(attr.size, SIZES[p] as u64, "{what}: size");
        assert_eq!(attr.perm, 0o444, "{what}");
        let ino = *self.model.ino.entry(p).or_insert(attr.ino);
        assert_eq!(
            attr.ino, ino,
            "{what}: one inode for every name of product {p}"
        );
        // The catalogue's size is a hint until an open asks the download.
        assert_eq!(
            attr.exact,
            self.model.opened.contains(&p),
            "{what}: exact only once opened"
        );
    }

    /// The names `dir` should list, `.` and `..` first, then sorted.
    fn expected_listing(&self, dir: Dir) -> Vec<String> {
        let mut names: BTreeSet<String> = BTreeSet::new();
        match dir {
            Dir::Root => {
                names.insert(QUERY_DIR.to_string());
                names.extend(
                    self.model
                        .in_root
                        .iter()
                        .map(|p| file_name(&self.metas[*p])),
                );
            }
            Dir::Query => names.extend(self.metas.iter().map(file_name)),
        }
        let mut out = vec![".".to_string(), "..".to_string()];
        out.extend(names);
        out
    }

    async fn lookup_root(&mut self, p: usize, name: &str) -> Attr {
        let attr = self
            .fs
            .lookup(ROOT_INO, OsStr::new(name))
            .await
            .unwrap_or_else(|e| panic!("lookup {name}: {e:?}"));
        self.model.in_root.insert(p);
        self.check_attr(p, &attr, &format!("lookup {name}"));
        attr
    }

    async fn apply(&mut self, op: &Op) {
        match *op {
            Op::Lookup { p, alias } => {
                let m = &self.metas[p];
                let stem = m.name.strip_suffix(".SAFE").unwrap();
                let name = match alias {
                    Alias::Name => format!("{}.zip", m.name),
                    Alias::Stem => format!("{stem}.zip"),
                    Alias::Id => format!("{}.zip", m.id),
                    Alias::Missing => format!("S2X_NOPE_{p}.SAFE.zip"),
                };
                if let Alias::Missing = alias {
                    let got = self.fs.lookup(ROOT_INO, OsStr::new(&name)).await;
                    assert!(matches!(got, Err(FsError::NotFound)), "{name}: {got:?}");
                } else {
                    self.lookup_root(p, &name).await;
                }
            }
            Op::LookupInQuery { p } => {
                let name = file_name(&self.metas[p]);
                let attr = self
                    .fs
                    .lookup(self.query_ino, OsStr::new(&name))
                    .await
                    .unwrap_or_else(|e| panic!("lookup {QUERY_DIR}/{name}: {e:?}"));
                self.check_attr(p, &attr, &format!("lookup {QUERY_DIR}/{name}"));
            }
            Op::Readdir { dir, page, from } => {
                let ino = match dir {
                    Dir::Root => ROOT_INO,
                    Dir::Query => self.query_ino,
                };
                let want = self.expected_listing(dir);
                let fh = self.fs.opendir(ino).await.unwrap();
                let mut paged = Vec::new();
                loop {
                    let got = self.fs.readdir_at(fh, paged.len(), page).await.unwrap();
                    assert!(got.len() <= page, "a page holds at most {page}");
                    if got.is_empty() {
                        break;
                    }
                    paged.extend(got);
                }
                let names: Vec<&str> = paged.iter().map(|e| e.name.as_str()).collect();
                assert_eq!(names, want, "{dir:?} listed {page} at a time");
                let full = self.fs.readdir_at(fh, 0, usize::MAX).await.unwrap();
                assert_eq!(full, paged, "one listing whatever the page size");
                let from = from % (full.len() + 1);
                let rest = self.fs.readdir_at(fh, from, usize::MAX).await.unwrap();
                assert_eq!(rest, full[from..], "listing continued from {from}");
                self.fs.releasedir(fh);
                for e in &paged[2..] {
                    if let Some(p) = self.metas.iter().position(|m| file_name(m) == e.name) {
                        self.check_attr(p, &e.attr, &format!("{dir:?} entry {}", e.name));
                    } else {
                        assert_eq!(e.attr.kind, Kind::Directory, "{}", e.name);
                    }
                }
            }
            Op::Getattr { p } => {
                if let Some(ino) = self.model.ino.get(&p).copied() {
                    let attr = self.fs.getattr(ino).await.unwrap();
                    self.check_attr(p, &attr, &format!("getattr of product {p}"));
                }
            }
            Op::Open { p } => {
                let name = file_name(&self.metas[p]);
                let attr = self.lookup_root(p, &name).await;
                let fh = self.fs.open(attr.ino, false).await.unwrap();
                self.model.opened.insert(p);
                self.model.handles.push((fh, p));
                let attr = self.fs.getattr(attr.ino).await.unwrap();
                self.check_attr(p, &attr, &format!("getattr after open of {name}"));
            }
            Op::Read { h, off, len } => {
                if self.model.handles.is_empty() {
                    return;
                }
                let (fh, p) = self.model.handles[h % self.model.handles.len()];
                let size = SIZES[p] as u64;
                let off = off % (size + 64);
                let got = self.fs.read(fh, off, len).await.unwrap();
                let start = off.min(size) as usize;
                let end = (off + len as u64).min(size) as usize;
                assert_eq!(got.len(), end - start, "read {off}+{len} of {size} bytes");
                assert!(
                    got[..] == self.data[p][start..end],
                    "bytes of read {off}+{len}"
                );
            }
            Op::Release { h } => {
                if self.model.handles.is_empty() {
                    return;
                }
                let (fh, _) = self.model.handles.remove(h % self.model.handles.len());
                self.fs.release(fh);
                assert!(matches!(
                    self.fs.read(fh, 0, 1).await,
                    Err(FsError::BadHandle)
                ));
            }
        }
    }
}

proptest! {
    // 256 sequences of up to 40 operations: well under a second in release on 2 cores.
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn fs_agrees_with_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut h = Harness::new().await;
            for op in &ops {
                h.apply(op).await;
            }
        });
    }
}
