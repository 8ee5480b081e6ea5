//! The folder view: beside every `<Name>.zip`, the product's own files as a read-only tree
//! `<Name>/` (the catalogue's Name ends in `.SAFE`, so `X.SAFE.zip` sits beside `X.SAFE/`).
//!
//! Why: where the download service ignores Range, opening one band through the zip costs the
//! whole product (hundreds of MB to GB); through the view it costs that one file. The tree comes
//! from OData Nodes ([`NodeLister`], one request per folder, made the first time the folder is
//! listed or looked into, then kept for the mount's life: published products do not change).
//! Sizes are the listing's `ContentLength`. A file's bytes come through the same block cache,
//! disk cache, spool and download client as a zip's, addressed by a node id
//! (`eodata_fetch::nodes`), so a file read once is not fetched again.
//!
//! Read-ahead across files: when files of one folder are opened one after another in listing
//! order (`cp -r`, GDAL opening bands in turn), the start of the next few files is fetched
//! while the current one is read, on the connections the current file leaves free. A tree walk
//! (`cp -r`, `rsync`) is recognised already at its first file: the folder was just listed, and
//! so was the folder above it, so the next files start with the first one instead of waiting
//! for the second (with 8 files on 4 connections: 2 rounds of fetches instead of 3). One tool
//! opening one file of a folder it listed (GDAL lists the folder of what it opens) does not
//! look like that, and fetches that file only.
//!
//! This file owns the view's inodes and listings ([`SafeView`]) and the `Fs` methods that serve
//! them; `Fs` calls in through a few hooks (lookup, getattr, opendir, open, xattrs).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use eodata_fetch::prefetch::{PrefetchConfig, Prefetcher};
use eodata_fetch::RangeSource;

use super::inodes::ProductNode;
use super::{Attr, Fs, FsError, Kind, Open, Resolver, ROOT_INO};

/// Files after the current one whose start is fetched ahead: one connection stays with the
/// file being read, the others (default 4 in all) fetch the next files.
fn files_ahead(max_connections: usize) -> usize {
    max_connections.saturating_sub(1).max(1)
}

/// Bytes fetched ahead at the start of each next file: 16 MiB covers most files of a product
/// whole (XMLs, QI reports, 10-60 m bands of tens of MB start there), and three of them stay
/// well inside the default 256 MiB block cache. Where the server ignores Range, the first
/// block starts the whole file's stream anyway.
const AHEAD_BYTES: u64 = 16 << 20;

/// A folder listed at most this long before its first file is opened, below a view folder
/// listed before it, is being walked (so never the top folder, whose files are small
/// metadata) (`cp -r` lists each folder right before copying its files). 10 s
/// covers a walk slowed by a busy machine; a listing older than that says nothing of now.
const WALK_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

/// One entry of a folder as the Nodes listing gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeEntry {
    pub name: String,
    /// A file's size in bytes (`ContentLength`).
    pub size: u64,
    pub is_dir: bool,
}

/// A listing in flight, boxed so that [`NodeLister`] can be shared as a trait object.
pub type ListFuture = Pin<Box<dyn Future<Output = Result<Vec<NodeEntry>, FsError>> + Send>>;

/// Lists one folder inside a product: `path` from the product's top folder (`[Name]`,
/// `[Name, "GRANULE"]`, ...). Implemented over the catalogue's Nodes; tests use a map.
pub trait NodeLister: Send + Sync + 'static {
    fn list(&self, product_id: &str, path: &[String]) -> ListFuture;
}

/// The Nodes of the OData catalogue.
pub struct CatalogueNodes(pub Arc<eodata_catalogue::Catalogue>);

impl NodeLister for CatalogueNodes {
    fn list(&self, product_id: &str, path: &[String]) -> ListFuture {
        let catalogue = self.0.clone();
        let id = product_id.to_string();
        let path = path.to_vec();
        Box::pin(async move {
            match catalogue.list_nodes(&id, &path).await {
                Ok(nodes) => Ok(nodes
                    .into_iter()
                    .map(|n| NodeEntry {
                        name: n.name,
                        size: n.size,
                        is_dir: n.is_dir,
                    })
                    .collect()),
                Err(e) => Err(FsError::Catalogue(e.to_string())),
            }
        })
    }
}

/// A file or folder of the view.
pub(super) struct ViewNode {
    pub ino: u64,
    pub parent: u64,
    pub product: Arc<ProductNode>,
    /// From the product's top folder: `[Name, "GRANULE", ...]`.
    pub path: Vec<String>,
    pub is_dir: bool,
    pub size: u64,
    /// A folder's entries (name, inode) once listed.
    listing: tokio::sync::OnceCell<Arc<Vec<(String, u64)>>>,
}

impl ViewNode {
    /// The node id the fetch layers know this file by.
    pub fn node_id(&self) -> String {
        eodata_fetch::nodes::node_id(&self.product.meta.id, &self.path)
    }

    fn display(&self) -> String {
        self.path.join("/")
    }
}

/// The view's inodes and listings.
#[derive(Default)]
pub(super) struct SafeView {
    lister: Mutex<Option<Arc<dyn NodeLister>>>,
    nodes: Mutex<HashMap<u64, Arc<ViewNode>>>,
    /// The top folder of each product, by the product's inode.
    tops: Mutex<HashMap<u64, u64>>,
    /// Per folder, the listing index of the file opened last (read-ahead follows walks).
    last_open: Mutex<HashMap<u64, usize>>,
    /// Per folder, when it was last opened as a directory (`opendir`: `ls`, `cp -r`, GDAL).
    opened_dir: Mutex<HashMap<u64, std::time::Instant>>,
}

impl SafeView {
    pub fn set_lister(&self, lister: Arc<dyn NodeLister>) {
        *self.lister.lock().unwrap() = Some(lister);
    }

    fn lister(&self) -> Option<Arc<dyn NodeLister>> {
        self.lister.lock().unwrap().clone()
    }

    pub fn node(&self, ino: u64) -> Option<Arc<ViewNode>> {
        self.nodes.lock().unwrap().get(&ino).cloned()
    }
}

impl<R: Resolver, S: RangeSource> Fs<R, S> {
    /// Installs the Nodes source; the view shows only with one and with `FsConfig::safe_view`.
    pub fn set_node_lister(&self, lister: Arc<dyn NodeLister>) {
        self.view.set_lister(lister);
    }

    fn view_on(&self) -> bool {
        self.config.safe_view && self.view.lister().is_some()
    }

    /// The top folder `<Name>/` of a product (made on first use).
    pub(super) fn view_top(&self, product: &Arc<ProductNode>) -> u64 {
        let mut tops = self.view.tops.lock().unwrap();
        if let Some(ino) = tops.get(&product.ino) {
            return *ino;
        }
        let ino = self.inodes.lock().unwrap().alloc();
        let node = Arc::new(ViewNode {
            ino,
            parent: ROOT_INO,
            product: product.clone(),
            path: vec![product.meta.name.clone()],
            is_dir: true,
            size: 0,
            listing: tokio::sync::OnceCell::new(),
        });
        self.view.nodes.lock().unwrap().insert(ino, node);
        tops.insert(product.ino, ino);
        ino
    }

    /// Adds `<Name>` beside every `<Name>.zip` of a directory being listed (root or query).
    pub(super) fn view_add_tops(&self, names: &mut std::collections::BTreeMap<String, u64>) {
        if !self.view_on() {
            return;
        }
        let products: Vec<Arc<ProductNode>> = names
            .iter()
            .filter(|(n, _)| n.ends_with(".zip"))
            .filter_map(|(_, ino)| self.node(*ino))
            .collect();
        for p in products {
            let top = self.view_top(&p);
            names.entry(p.meta.name.clone()).or_insert(top);
        }
    }

    /// `lookup` of `name` in `parent` where the view answers: inside a view folder, or a top
    /// folder `<Name>` in a directory that lists `<Name>.zip`. `None`: not the view's business.
    pub(super) async fn view_lookup(
        &self,
        parent: u64,
        name: &str,
        zip_here: Option<Arc<ProductNode>>,
    ) -> Option<Result<Attr, FsError>> {
        if let Some(dir) = self.view.node(parent) {
            if !dir.is_dir {
                return Some(Err(FsError::NotADirectory));
            }
            return Some(match self.view_listing(&dir).await {
                Err(e) => Err(e),
                Ok(entries) => match entries.iter().find(|(n, _)| n == name) {
                    Some((_, ino)) => self.view_attr(*ino).ok_or(FsError::NotFound),
                    None => Err(FsError::NotFound),
                },
            });
        }
        if !self.view_on() {
            return None;
        }
        let product = zip_here.filter(|p| p.meta.name == name)?;
        let top = self.view_top(&product);
        self.view_attr(top).map(Ok)
    }

    /// Attributes of a view inode; `None` when `ino` is not the view's.
    pub(super) fn view_attr(&self, ino: u64) -> Option<Attr> {
        let node = self.view.node(ino)?;
        Some(Attr {
            ino,
            kind: if node.is_dir {
                Kind::Directory
            } else {
                Kind::File
            },
            size: node.size,
            mtime: node.product.meta.mtime,
            perm: if node.is_dir { 0o555 } else { 0o444 },
            exact: true,
        })
    }

    /// A folder's entries, listed through Nodes the first time (concurrent callers share the
    /// request; a failure is not kept, so the next call asks again).
    pub(super) async fn view_listing(
        &self,
        dir: &Arc<ViewNode>,
    ) -> Result<Arc<Vec<(String, u64)>>, FsError> {
        let lister = self.view.lister().ok_or(FsError::NotFound)?;
        dir.listing
            .get_or_try_init(|| async {
                let entries = match lister.list(&dir.product.meta.id, &dir.path).await {
                    Ok(e) => e,
                    Err(e) => {
                        let msg = format!("listing {} through Nodes failed: {e}", dir.display());
                        tracing::error!("{msg}");
                        self.note_error(&msg);
                        return Err(e);
                    }
                };
                let mut sorted = entries;
                sorted.sort_by(|a, b| a.name.cmp(&b.name));
                sorted.dedup_by(|a, b| a.name == b.name);
                let mut out = Vec::with_capacity(sorted.len());
                let mut table = self.inodes.lock().unwrap();
                let mut nodes = self.view.nodes.lock().unwrap();
                for e in sorted {
                    let ino = table.alloc();
                    let mut path = dir.path.clone();
                    path.push(e.name.clone());
                    nodes.insert(
                        ino,
                        Arc::new(ViewNode {
                            ino,
                            parent: dir.ino,
                            product: dir.product.clone(),
                            path,
                            is_dir: e.is_dir,
                            size: if e.is_dir { 0 } else { e.size },
                            listing: tokio::sync::OnceCell::new(),
                        }),
                    );
                    out.push((e.name, ino));
                }
                Ok(Arc::new(out))
            })
            .await
            .cloned()
    }

    /// The snapshot `opendir` keeps for a view folder, `.` and `..` first.
    pub(super) async fn view_opendir(
        &self,
        dir: &Arc<ViewNode>,
    ) -> Result<Vec<(String, u64)>, FsError> {
        if !dir.is_dir {
            return Err(FsError::NotADirectory);
        }
        let entries = self.view_listing(dir).await?;
        self.view
            .opened_dir
            .lock()
            .unwrap()
            .insert(dir.ino, std::time::Instant::now());
        let mut out = vec![(".".to_string(), dir.ino), ("..".to_string(), dir.parent)];
        out.extend(entries.iter().cloned());
        Ok(out)
    }

    /// Opens a file of the view: its own read-ahead state over its node id, and read-ahead of
    /// the next files of its folder when files are being opened in order.
    pub(super) fn view_open(&self, node: Arc<ViewNode>) -> Result<Open<S>, FsError> {
        if node.is_dir {
            return Err(FsError::IsADirectory);
        }
        if !node.product.meta.online {
            let msg = format!(
                "{} is offline (cold storage); {} cannot be read until the provider restores it",
                node.product.meta.name,
                node.display()
            );
            tracing::warn!("{msg}");
            self.note_error(&msg);
            return Err(FsError::Offline(node.product.meta.name.clone()));
        }
        self.view_read_ahead(&node);
        let reader = Prefetcher::new(
            self.cache.clone(),
            node.node_id(),
            node.size,
            PrefetchConfig {
                max_in_flight: self.config.max_connections,
                ..PrefetchConfig::default()
            },
        );
        self.stats.opens.fetch_add(1, Ordering::Relaxed);
        Ok(Open::Node { node, reader })
    }

    /// Whether `folder` is being walked: listed within [`WALK_WINDOW`], and the view folder
    /// above it listed no later than it (see the module doc).
    fn view_walked(&self, folder: &ViewNode) -> bool {
        let opened = self.view.opened_dir.lock().unwrap();
        let (Some(this), Some(above)) = (opened.get(&folder.ino), opened.get(&folder.parent))
        else {
            return false;
        };
        this.elapsed() <= WALK_WINDOW && above <= this
    }

    /// When `node` is the file after the one opened last in its folder, or the first file of
    /// a folder being walked, starts fetching the beginning of the next few files (bounded in
    /// count and bytes; the fetches run in the block cache, which shares them with the reads
    /// that follow).
    fn view_read_ahead(&self, node: &Arc<ViewNode>) {
        let Some(folder) = self.view.node(node.parent) else {
            return;
        };
        let Some(entries) = folder.listing.get() else {
            return;
        };
        let files: Vec<Arc<ViewNode>> = entries
            .iter()
            .filter_map(|(_, ino)| self.view.node(*ino))
            .filter(|n| !n.is_dir)
            .collect();
        let Some(index) = files.iter().position(|f| f.ino == node.ino) else {
            return;
        };
        let previous = self
            .view
            .last_open
            .lock()
            .unwrap()
            .insert(folder.ino, index);
        let in_order = previous.is_some_and(|p| p + 1 == index);
        let walk_starts = index == 0 && self.view_walked(&folder);
        if !(in_order || walk_starts) {
            return;
        }
        let bs = self.cache.block_size();
        for next in files
            .iter()
            .skip(index + 1)
            .take(files_ahead(self.config.max_connections))
        {
            if next.size == 0 {
                continue;
            }
            let bytes = next.size.min(AHEAD_BYTES);
            let blocks = bytes.div_ceil(bs);
            tracing::debug!("read-ahead: the start of {}", next.display());
            drop(self.cache.start(&next.node_id(), 0..blocks, next.size));
        }
    }

    /// `user.eodata.*` attributes of a view node: its product's, and its path in the product.
    pub(super) fn view_xattrs(&self, ino: u64) -> Option<Vec<(String, String)>> {
        let node = self.view.node(ino)?;
        let mut out = vec![
            ("user.eodata.id".to_string(), node.product.meta.id.clone()),
            (
                "user.eodata.name".to_string(),
                node.product.meta.name.clone(),
            ),
            ("user.eodata.node".to_string(), node.display()),
        ];
        if !node.is_dir {
            out.push(("user.eodata.size".to_string(), node.size.to_string()));
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::ffi::OsStr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, UNIX_EPOCH};

    use bytes::Bytes;
    use eodata_fetch::cache::{BlockCache, CacheConfig};
    use eodata_fetch::mock::MemorySource;

    use super::super::{FsConfig, ProductMeta};
    use super::*;

    const ID: &str = "db0c8ef3-8ec0-5185-a537-812dad3c58f8";
    const NAME: &str = "S2A_MSIL1C_20180927T051221_N0206_R033_T42FXL_20180927T073143.SAFE";

    struct OneProduct(ProductMeta);

    impl Resolver for OneProduct {
        async fn resolve(&self, name: &str) -> Result<Option<ProductMeta>, FsError> {
            Ok((name == self.0.name || name == self.0.id).then(|| self.0.clone()))
        }
        async fn query(&self, _: &str, _: usize) -> Result<Vec<ProductMeta>, FsError> {
            Ok(vec![self.0.clone()])
        }
    }

    /// Folders by path, counting listings.
    #[derive(Default)]
    struct MapLister {
        folders: HashMap<Vec<String>, Vec<NodeEntry>>,
        calls: AtomicUsize,
    }

    impl NodeLister for MapLister {
        fn list(&self, _id: &str, path: &[String]) -> ListFuture {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let found = self.folders.get(path).cloned().ok_or(FsError::NotFound);
            Box::pin(async move { found })
        }
    }

    fn file(name: &str, size: u64) -> NodeEntry {
        NodeEntry {
            name: name.into(),
            size,
            is_dir: false,
        }
    }

    /// A product with `IMG_DATA` holding four bands of `band` bytes, in the memory source.
    async fn fixture(
        online: bool,
        band: usize,
    ) -> (
        Arc<Fs<OneProduct, Arc<MemorySource>>>,
        Arc<MemorySource>,
        Arc<MapLister>,
    ) {
        let source = Arc::new(MemorySource::new().with_product(ID, Bytes::from_static(b"zip")));
        let mut lister = MapLister::default();
        let top = vec![NAME.to_string()];
        lister.folders.insert(
            top.clone(),
            vec![
                file("manifest.safe", 5),
                NodeEntry {
                    name: "IMG_DATA".into(),
                    size: 0,
                    is_dir: true,
                },
            ],
        );
        let mut img = top.clone();
        img.push("IMG_DATA".into());
        let bands: Vec<NodeEntry> = (1..=4)
            .map(|b| file(&format!("B0{b}.jp2"), band as u64))
            .collect();
        for (i, b) in bands.iter().enumerate() {
            let mut path = img.clone();
            path.push(b.name.clone());
            source.insert(
                eodata_fetch::nodes::node_id(ID, &path),
                MemorySource::random_bytes(band, i as u64),
            );
        }
        lister.folders.insert(img, bands);
        let mut manifest = top.clone();
        manifest.push("manifest.safe".into());
        source.insert(
            eodata_fetch::nodes::node_id(ID, &manifest),
            Bytes::from_static(b"<xml>"),
        );
        let cache = Arc::new(BlockCache::new(source.clone(), CacheConfig::default()));
        let meta = ProductMeta {
            id: ID.into(),
            name: NAME.into(),
            mtime: UNIX_EPOCH,
            online,
            size_hint: Some(3),
            xattrs: Vec::new(),
        };
        let fs = Arc::new(Fs::new(
            OneProduct(meta),
            cache,
            FsConfig {
                safe_view: true,
                ..FsConfig::default()
            },
        ));
        let lister = Arc::new(lister);
        fs.set_node_lister(lister.clone());
        fs.add_product(NAME).await.unwrap();
        (fs, source, lister)
    }

    async fn walk(fs: &Fs<OneProduct, Arc<MemorySource>>, path: &[&str]) -> Attr {
        let mut ino = ROOT_INO;
        let mut attr = fs.getattr(ino).await.unwrap();
        for p in path {
            attr = fs.lookup(ino, OsStr::new(p)).await.unwrap();
            ino = attr.ino;
        }
        attr
    }

    #[tokio::test]
    async fn the_folder_sits_beside_the_zip_lists_once_and_reads_its_files() {
        let (fs, source, lister) = fixture(true, 1000).await;
        let root = crate::fs::tests::entry_names(&fs, ROOT_INO).await;
        assert_eq!(root, vec![".", "..", NAME, &format!("{NAME}.zip")]);
        let top = walk(&fs, &[NAME]).await;
        assert_eq!(top.kind, Kind::Directory);
        let names = crate::fs::tests::entry_names(&fs, top.ino).await;
        assert_eq!(names, vec![".", "..", "IMG_DATA", "manifest.safe"]);
        let m = walk(&fs, &[NAME, "manifest.safe"]).await;
        assert_eq!((m.kind, m.size), (Kind::File, 5));
        let fh = fs.open(m.ino, false).await.unwrap();
        assert_eq!(&fs.read(fh, 0, 100).await.unwrap()[..], b"<xml>");
        fs.release(fh);
        // Looked into three times, listed once; the zip itself was never read.
        walk(&fs, &[NAME, "IMG_DATA", "B01.jp2"]).await;
        walk(&fs, &[NAME, "IMG_DATA", "B02.jp2"]).await;
        assert_eq!(lister.calls.load(Ordering::SeqCst), 2);
        assert_eq!(source.stats_for(ID).requests, 0);
        assert!(matches!(
            fs.lookup(top.ino, OsStr::new("nothing")).await,
            Err(FsError::NotFound)
        ));
        assert!(matches!(
            fs.opendir(m.ino).await,
            Err(FsError::NotADirectory)
        ));
    }

    #[tokio::test]
    async fn files_opened_in_order_read_the_next_ones_ahead_and_one_file_alone_does_not() {
        let (fs, source, _) = fixture(true, 3 << 20).await;
        let band = |b: u32| {
            eodata_fetch::nodes::node_id(
                ID,
                &[NAME.into(), "IMG_DATA".into(), format!("B0{b}.jp2")],
            )
        };
        // One file alone (a GDAL open): nothing else is fetched.
        let b2 = walk(&fs, &[NAME, "IMG_DATA", "B02.jp2"]).await;
        let fh = fs.open(b2.ino, false).await.unwrap();
        fs.read(fh, 0, 4096).await.unwrap();
        fs.release(fh);
        tokio::time::sleep(Duration::from_millis(50)).await;
        for b in [1, 3, 4] {
            assert_eq!(source.stats_for(&band(b)).requests, 0, "B0{b}");
        }
        // B03 right after B02: B04 is fetched ahead before anyone opens it.
        let b3 = walk(&fs, &[NAME, "IMG_DATA", "B03.jp2"]).await;
        let fh = fs.open(b3.ino, false).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while source.stats_for(&band(4)).requests == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "B04 was not read ahead"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        fs.release(fh);
        assert_eq!(source.stats_for(&band(1)).requests, 0, "nothing behind");
    }

    #[tokio::test]
    async fn a_walk_reads_ahead_from_its_first_file_and_one_open_in_a_listed_folder_does_not() {
        let (fs, source, _) = fixture(true, 3 << 20).await;
        let band = |b: u32| {
            eodata_fetch::nodes::node_id(
                ID,
                &[NAME.into(), "IMG_DATA".into(), format!("B0{b}.jp2")],
            )
        };
        // GDAL: lists the folder of the band it opens, then opens it: nothing else is fetched.
        let img = walk(&fs, &[NAME, "IMG_DATA"]).await;
        fs.readdir(img.ino).await.unwrap();
        let b1 = walk(&fs, &[NAME, "IMG_DATA", "B01.jp2"]).await;
        let fh = fs.open(b1.ino, false).await.unwrap();
        fs.read(fh, 0, 4096).await.unwrap();
        fs.release(fh);
        tokio::time::sleep(Duration::from_millis(50)).await;
        for b in [2, 3, 4] {
            assert_eq!(source.stats_for(&band(b)).requests, 0, "B0{b}");
        }
        // cp -r: lists the top folder, then IMG_DATA, then opens its first file: the next
        // three (4 connections: one for the file read) start with it.
        let top = walk(&fs, &[NAME]).await;
        fs.readdir(top.ino).await.unwrap();
        fs.readdir(img.ino).await.unwrap();
        let fh = fs.open(b1.ino, false).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        for b in [2, 3, 4] {
            while source.stats_for(&band(b)).requests == 0 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "B0{b} was not read ahead"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        fs.release(fh);
    }

    #[tokio::test]
    async fn offline_products_list_but_do_not_open_and_the_view_can_be_off() {
        let (fs, _, _) = fixture(false, 10).await;
        let m = walk(&fs, &[NAME, "manifest.safe"]).await;
        assert!(matches!(
            fs.open(m.ino, false).await,
            Err(FsError::Offline(_))
        ));

        let (fs, _, _) = fixture(true, 10).await;
        let fs_off = Fs::new(
            OneProduct(
                fs.node(
                    fs.lookup(ROOT_INO, OsStr::new(&format!("{NAME}.zip")))
                        .await
                        .unwrap()
                        .ino,
                )
                .unwrap()
                .meta
                .clone(),
            ),
            fs.cache.clone(),
            FsConfig::default(),
        );
        fs_off.add_product(NAME).await.unwrap();
        let root = crate::fs::tests::entry_names(&fs_off, ROOT_INO).await;
        assert_eq!(root, vec![".", "..", &format!("{NAME}.zip")]);
        assert!(matches!(
            fs_off.lookup(ROOT_INO, OsStr::new(NAME)).await,
            Err(FsError::NotFound)
        ));
    }
}
