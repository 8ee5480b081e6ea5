//! The filesystem, without FUSE: inodes, names, attributes, open handles and reads, as plain
//! async methods that tests call directly (no kernel, no mount).
//!
//! Layout: the root directory holds one read-only file per product, `<Name>.zip`. Products named
//! on the command line are listed from the start; any other is resolved through the catalogue
//! on the first lookup of `<Name>.zip`, `<Name without .SAFE>.zip` or `<uuid>.zip`, and listed from
//! then on. All names of one product lead to the same inode, so they are the same file.
//! Under `--listed-only` no lookup resolves anything (an `--allow-other` mount must not let
//! every local user spend the owner's account), and lookups add at most
//! [`FsConfig::max_looked_up`] products, so the root cannot grow without bound.
//! `--query` adds query directories (`query`), and the root holds an unlisted `.eodata-status`
//! file (`status`). Beside every `<Name>.zip`, `<Name>/` shows the product's own files
//! (`safe_view`).
//!
//! Only names ending in `.zip` are looked up in the catalogue: tools probe many names next to a
//! file they open (`x.zip.aux.xml`, `.ovr`, `.git`), and each probe would otherwise cost a
//! catalogue request.
//!
//! Sizes: a product resolved by name gets the download's own size at once (one request, worth
//! it for one file). A product listed by a query gets the catalogue's `ContentLength` as a
//! *hint*, so listing thousands costs no request per file; its attributes then carry
//! `exact: false`, which the adapter turns into a zero attribute TTL, and `open` asks the
//! download service for the true size before the first read. The kernel, seeing stale
//! attributes when a read reaches the hinted end, asks `getattr` again and gets the true size:
//! a hint that is too small never truncates a copy, one that is too large ends in a short read.
//!
//! Bytes come from `eodata_fetch`: the block cache shared by all handles, and one read-ahead
//! state per open handle. The adapter in `crate::fuse` turns [`FsError`] into errno.

mod inodes;
mod layout;
pub mod passthrough;
mod query;
#[cfg(test)]
mod reftests;
mod safe_view;
mod status;
#[cfg(test)]
mod tests;
mod tree;

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use eodata_fetch::cache::BlockCache;
use eodata_fetch::prefetch::{PrefetchConfig, Prefetcher};
use eodata_fetch::{FetchError, RangeSource};

use inodes::{InodeTable, ProductNode};
pub use inodes::{ROOT_INO, STATUS_INO};
pub use query::QuerySpec;
use query::{Listing, QueryDir};
pub use safe_view::CatalogueNodes;
pub use status::{StatusSource, STATUS_FILE};

/// What the filesystem needs to know of a product, wherever it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct ProductMeta {
    /// The catalogue's UUID; the download service's key.
    pub id: String,
    /// The catalogue's Name, e.g. `S2A_..._20180927T073143.SAFE`.
    pub name: String,
    /// The file's mtime: the catalogue's modification (else publication) date.
    pub mtime: SystemTime,
    /// `false` for products in cold storage: visible, but reads fail with a clear log line.
    pub online: bool,
    /// The catalogue's `ContentLength`: the size listings show until the file is opened.
    pub size_hint: Option<u64>,
    /// Extra facts exposed as `user.eodata.*` extended attributes.
    pub xattrs: Vec<(String, String)>,
}

/// The extended attribute that holds the catalogue's `S3Path`.
pub const S3PATH_XATTR: &str = "user.eodata.s3path";
/// The extended attribute that holds the sensing start (ISO 8601, UTC).
pub const CONTENT_START_XATTR: &str = "user.eodata.content_start";

impl ProductMeta {
    /// The catalogue's `S3Path` (`/eodata/Sentinel-2/MSI/L1C/2018/09/27/<Name>`), if it gave one.
    pub fn s3_path(&self) -> Option<&str> {
        self.xattrs
            .iter()
            .find(|(k, _)| k == S3PATH_XATTR)
            .map(|(_, v)| v.as_str())
    }
}

/// Finds products by any of their names, and lists the results of queries. Implemented over
/// the OData catalogue; tests use a map.
pub trait Resolver: Send + Sync + 'static {
    /// `Ok(None)` when no product has this name.
    fn resolve(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<ProductMeta>, FsError>> + Send;

    /// Products matching an OData `$filter`, at most `max_results`. No default: a wrapper
    /// that forgot to pass it on would show every query directory empty.
    fn query(
        &self,
        filter: &str,
        max_results: usize,
    ) -> impl Future<Output = Result<Vec<ProductMeta>, FsError>> + Send;
}

impl<T: Resolver> Resolver for Arc<T> {
    fn resolve(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<ProductMeta>, FsError>> + Send {
        (**self).resolve(name)
    }

    fn query(
        &self,
        filter: &str,
        max_results: usize,
    ) -> impl Future<Output = Result<Vec<ProductMeta>, FsError>> + Send {
        (**self).query(filter, max_results)
    }
}

/// What kind of node an inode is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Directory,
    File,
}

/// Attributes of a node, independent of FUSE's types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub mtime: SystemTime,
    pub perm: u16,
    /// `false` when `size` may change: a catalogue hint not yet checked against the download,
    /// or the status file. The kernel must not keep such attributes (see the module doc).
    pub exact: bool,
}

/// One entry of a directory listing.
#[derive(Clone, Debug, PartialEq)]
pub struct DirEntry {
    pub name: String,
    pub attr: Attr,
}

/// Why an operation failed; `crate::fuse` maps each to one errno.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FsError {
    #[error("no such file")]
    NotFound,
    #[error("not a directory")]
    NotADirectory,
    #[error("is a directory")]
    IsADirectory,
    #[error("read-only filesystem")]
    ReadOnly,
    #[error("bad file handle")]
    BadHandle,
    #[error("no such attribute")]
    NoAttribute,
    #[error("product {0} is offline (in cold storage): order it in the Data Workspace")]
    Offline(String),
    #[error("catalogue: {0}")]
    Catalogue(String),
    #[error(transparent)]
    Fetch(#[from] FetchError),
}

impl FsError {
    /// The errno a failed operation returns to the reader: what cannot be found is ENOENT,
    /// what the account may not read is EACCES, everything that failed on the way is EIO.
    pub fn errno(&self) -> libc::c_int {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::NotADirectory => libc::ENOTDIR,
            FsError::IsADirectory => libc::EISDIR,
            FsError::ReadOnly => libc::EROFS,
            FsError::BadHandle => libc::EBADF,
            FsError::NoAttribute => libc::ENODATA,
            FsError::Offline(_) | FsError::Catalogue(_) => libc::EIO,
            FsError::Fetch(FetchError::NotFound(_)) => libc::ENOENT,
            FsError::Fetch(e) if e.is_login_refused() => libc::EACCES,
            FsError::Fetch(FetchError::Forbidden(_) | FetchError::Audience(_)) => libc::EACCES,
            FsError::Fetch(_) => libc::EIO,
        }
    }
}

/// Tuning of the filesystem layer.
#[derive(Clone, Debug)]
pub struct FsConfig {
    /// Owner of every node (the mounting user, so `ls -l` shows something sensible).
    pub uid: u32,
    pub gid: u32,
    /// Bytes at the end of each zip fetched once on open and kept: the central directory lives
    /// there and `unzip -l` or GDAL's /vsizip/ read it first, often more than once. 1 MiB covers
    /// the directory of a Sentinel-2 product (~100-300 entries of ~150 bytes) many times over,
    /// for the price of one request.
    pub tail_bytes: u64,
    /// Concurrent HTTP requests a handle's read-ahead may use (the service caps them per user).
    pub max_connections: usize,
    /// Query directories (`--query`).
    pub queries: Vec<QuerySpec>,
    /// Most products one query directory lists (`--max-results`).
    pub max_results: usize,
    /// How long a query's listing is kept before the next `ls` refetches it (`--listing-ttl`).
    pub listing_ttl: Duration,
    /// Show `<Name>/` beside every `<Name>.zip` (off with `--no-safe-view`; the mount turns it
    /// on, and it needs a [`NodeLister`]).
    pub safe_view: bool,
    /// `--listed-only`: a lookup of an unlisted `<Name>.zip` or `<uuid>.zip` is ENOENT at
    /// once, with no request; only products given at mount time or listed by a query open.
    pub listed_only: bool,
    /// Most products that lookups of unlisted names may add to the root; past it such lookups
    /// are ENOENT (see [`DEFAULT_MAX_LOOKED_UP`]).
    pub max_looked_up: usize,
    /// The `/eodata` tree in the root (`tree`; the mount turns it on, `--no-tree` off). Never
    /// under `listed_only`: the tree would make every product of the archive openable.
    pub tree: bool,
    /// Why FUSE passthrough is off from the start (`--no-passthrough`, no disk cache); `None`:
    /// on, as far as the kernel allows ([`passthrough`]).
    pub passthrough_off: Option<String>,
}

/// Default bound on products resolved by lookup: 10,000 is far beyond a person's or a script's
/// working set, and keeps the root listing (and its memory, about a kilobyte a product) bounded
/// however many names other users of an `--allow-other` mount try.
pub const DEFAULT_MAX_LOOKED_UP: usize = 10_000;

/// Default `--max-results`: one page of the catalogue at its largest `$top`, a listing `ls`
/// shows in well under a second; more is a deliberate choice.
pub const DEFAULT_MAX_RESULTS: usize = 1000;

/// Default `--listing-ttl`: ten minutes. Published products do not change, but new ones are
/// published all the time; a user watching a query for new acquisitions sees them within
/// minutes, and a tool walking the tree does not refetch on every `ls`.
pub const DEFAULT_LISTING_TTL: Duration = Duration::from_secs(600);

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            // SAFETY: geteuid/getegid cannot fail.
            uid: unsafe { libc::geteuid() },
            gid: unsafe { libc::getegid() },
            tail_bytes: 1 << 20,
            max_connections: eodata_fetch::zipper::DEFAULT_MAX_CONNECTIONS,
            queries: Vec::new(),
            max_results: DEFAULT_MAX_RESULTS,
            listing_ttl: DEFAULT_LISTING_TTL,
            safe_view: false,
            listed_only: false,
            max_looked_up: DEFAULT_MAX_LOOKED_UP,
            tree: false,
            passthrough_off: Some("no disk cache".to_string()),
        }
    }
}

/// Counters for the status report.
#[derive(Debug, Default)]
pub struct FsStats {
    pub opens: AtomicU64,
    pub reads: AtomicU64,
    /// Reads waiting for bytes right now.
    pub reads_in_flight: AtomicU64,
    pub bytes_read: AtomicU64,
    pub read_errors: AtomicU64,
}

/// The filesystem over a resolver (names) and a byte source (the block cache over zipper).
pub struct Fs<R: Resolver, S: RangeSource> {
    resolver: R,
    cache: Arc<BlockCache<S>>,
    config: FsConfig,
    inodes: Mutex<InodeTable>,
    /// Query directories by inode; the unnamed query, if any, is the root's.
    queries: HashMap<u64, Arc<QueryDir>>,
    /// Named query directories in the root, by name.
    query_names: BTreeMap<String, u64>,
    handles: Mutex<HashMap<u64, Arc<Open<S>>>>,
    /// Open directories: the entries (name, inode) each `opendir` saw, so that the kernel's
    /// paged readdir calls walk one consistent list even if a refresh happens meanwhile.
    dir_handles: Mutex<HashMap<u64, Snapshot>>,
    next_fh: AtomicU64,
    created: SystemTime,
    pub stats: FsStats,
    last_error: Mutex<Option<(SystemTime, String)>>,
    status_source: Mutex<Option<StatusSource>>,
    view: safe_view::SafeView,
    /// The directories of the `/eodata` tree met so far.
    tree: tree::Tree,
    /// Products added to the root by lookups of names not listed before.
    looked_up: AtomicU64,
    passthrough: passthrough::Status,
    /// Ids whose bytes changed at the download service while this mount read them (a failed
    /// splice or checksum): the memory cache and the kernel's page cache may still hold the
    /// first build's pages, so every later open and read fails until a remount, rather than
    /// serve a mix. Their disk-cache blocks are gone already (see `eodata_fetch::spool`).
    changed: Mutex<std::collections::HashSet<String>>,
}

/// Why a product is being resolved: named at mount time, or looked up in the root.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    MountTime,
    Lookup,
}

/// The entries (name, inode) of one open directory.
type Snapshot = Arc<Vec<(String, u64)>>;

/// An open file.
enum Open<S: RangeSource> {
    /// A product and its read-ahead state. The kernel may send several reads of one handle at
    /// once; the prefetcher takes them in parallel.
    Product {
        node: Arc<ProductNode>,
        reader: Prefetcher<S>,
    },
    /// The status report as rendered when opened.
    Status(Bytes),
    /// A file of the folder view.
    Node {
        node: Arc<safe_view::ViewNode>,
        reader: Prefetcher<S>,
    },
}

impl<R: Resolver, S: RangeSource> Fs<R, S> {
    pub fn new(resolver: R, cache: Arc<BlockCache<S>>, config: FsConfig) -> Self {
        let mut inodes = InodeTable::default();
        let mut queries = HashMap::new();
        let mut query_names = BTreeMap::new();
        for spec in &config.queries {
            let ino = match &spec.name {
                None => ROOT_INO,
                Some(name) => {
                    let ino = inodes.alloc();
                    query_names.insert(name.clone(), ino);
                    ino
                }
            };
            queries.insert(
                ino,
                Arc::new(QueryDir {
                    spec: spec.clone(),
                    listing: tokio::sync::Mutex::new(Listing::default()),
                    max_results: config.max_results,
                    place: None,
                }),
            );
        }
        Fs {
            resolver,
            cache,
            inodes: Mutex::new(inodes),
            queries,
            query_names,
            handles: Mutex::new(HashMap::new()),
            dir_handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            created: SystemTime::now(),
            stats: FsStats::default(),
            last_error: Mutex::new(None),
            status_source: Mutex::new(None),
            view: safe_view::SafeView::default(),
            tree: tree::Tree::default(),
            looked_up: AtomicU64::new(0),
            changed: Mutex::default(),
            passthrough: passthrough::Status::new(config.passthrough_off.clone()),
            config,
        }
    }

    /// The block cache the filesystem reads through.
    pub fn cache(&self) -> &Arc<BlockCache<S>> {
        &self.cache
    }

    /// Installs the lines the status file shows about layers outside the filesystem.
    pub fn set_status_source(&self, source: StatusSource) {
        *self.status_source.lock().unwrap() = Some(source);
    }

    /// Resolve a product and list it in the root (used for `--product` at start-up). An
    /// `/eodata/...` path names the product of its last component.
    pub async fn add_product(&self, name: &str) -> Result<Attr, FsError> {
        let name = eodata_catalogue::product_of(name);
        match self.find_or_resolve(name, Via::MountTime).await? {
            Some(node) => Ok(self.file_attr(&node)),
            None => Err(FsError::NotFound),
        }
    }

    /// The product at inode `ino`, if it is one.
    fn node(&self, ino: u64) -> Option<Arc<ProductNode>> {
        self.inodes.lock().unwrap().product(ino)
    }

    /// The error for using `ino` as a directory when it is not the root or a query directory.
    fn not_a_directory(&self, ino: u64) -> FsError {
        if self.node(ino).is_some() || self.view.node(ino).is_some() {
            FsError::NotADirectory
        } else {
            FsError::NotFound
        }
    }

    pub async fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr, FsError> {
        let name = name.to_str().ok_or(FsError::NotFound)?;
        // The folder view: inside a view folder, or `<Name>` beside a listed `<Name>.zip`.
        let zip_here = match self
            .queries
            .get(&parent)
            .cloned()
            .or_else(|| self.tree_day(parent))
        {
            Some(dir) => {
                let entries = self.listing(&dir, false).await?;
                if let Some(node) = entries.get(name).and_then(|ino| self.node(*ino)) {
                    return Ok(self.file_attr(&node));
                }
                entries
                    .get(&format!("{name}.zip"))
                    .and_then(|ino| self.node(*ino))
            }
            None => None,
        };
        let zip_here = zip_here.or_else(|| {
            (parent == ROOT_INO)
                .then(|| {
                    self.inodes
                        .lock()
                        .unwrap()
                        .listed_as(&format!("{name}.zip"))
                })
                .flatten()
        });
        if let Some(found) = self.view_lookup(parent, name, zip_here).await {
            return found;
        }
        if parent != ROOT_INO {
            if self.queries.contains_key(&parent) || self.tree_day(parent).is_some() {
                return Err(FsError::NotFound);
            }
            if self.is_tree_dir(parent) {
                return self.tree_lookup(parent, name);
            }
            return Err(self.not_a_directory(parent));
        }
        if name == STATUS_FILE {
            return Ok(self.status_attr());
        }
        if let Some(ino) = self.query_names.get(name) {
            return self.getattr(*ino).await;
        }
        if let Some(attr) = self.tree_lookup_root(name) {
            return Ok(attr);
        }
        let Some(stem) = name.strip_suffix(".zip") else {
            return Err(FsError::NotFound);
        };
        if stem.is_empty() || stem.starts_with('.') {
            return Err(FsError::NotFound);
        }
        match self.find_or_resolve(stem, Via::Lookup).await? {
            Some(node) => Ok(self.file_attr(&node)),
            None => Err(FsError::NotFound),
        }
    }

    /// A known product by any alias, or resolve it (catalogue, then the download's size).
    /// Either way it is listed in the root from then on. A lookup of an unknown name resolves
    /// nothing under `--listed-only`, nor past [`FsConfig::max_looked_up`] such products.
    async fn find_or_resolve(
        &self,
        name: &str,
        via: Via,
    ) -> Result<Option<Arc<ProductNode>>, FsError> {
        let name = name.strip_suffix(".zip").unwrap_or(name);
        {
            let mut table = self.inodes.lock().unwrap();
            if let Some(node) = table.by_alias(name) {
                table.list_in_root(&node);
                return Ok(Some(node));
            }
        }
        if via == Via::Lookup {
            if self.config.listed_only {
                return Ok(None);
            }
            if self.looked_up.load(Ordering::Relaxed) >= self.config.max_looked_up as u64 {
                let msg = format!(
                    "{name}: not looked up: {} products were already added by lookups (remount to start afresh)",
                    self.config.max_looked_up
                );
                if self.looked_up.fetch_add(1, Ordering::Relaxed)
                    == self.config.max_looked_up as u64
                {
                    tracing::warn!("{msg}");
                }
                self.note_error(&msg);
                return Ok(None);
            }
        }
        let meta = match self.resolver.resolve(name).await {
            Ok(Some(meta)) => meta,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.note_error(&format!("catalogue lookup of {name}: {e}"));
                return Err(e);
            }
        };
        {
            let mut table = self.inodes.lock().unwrap();
            if let Some(node) = table.by_id(&meta.id) {
                table.add_alias(name, node.ino);
                table.list_in_root(&node);
                return Ok(Some(node));
            }
        }
        // The catalogue's ContentLength is only a hint: the download's own size is the truth,
        // made exact at open, as for listed products. Asked now only when the catalogue gives
        // none: on a server that ignores Range (the real zipper) the question is a GET of the
        // whole product, and a mount of --product names asked it for every product at start (3
        // products: 3 bodies started, parked 10 s holding a connection each, then dropped
        // unread). Offline products cannot be asked; they keep the hint.
        let size = if meta.online && meta.size_hint.unwrap_or(0) == 0 {
            Some(self.cache.source().info(&meta.id).await?.size)
        } else {
            None
        };
        let mut table = self.inodes.lock().unwrap();
        let node = table.insert(meta, size, name);
        table.list_in_root(&node);
        if via == Via::Lookup {
            self.looked_up.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Some(node))
    }

    pub async fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        if ino == ROOT_INO {
            return Ok(self.dir_attr(ROOT_INO));
        }
        if ino == STATUS_INO {
            return Ok(self.status_attr());
        }
        if self.queries.contains_key(&ino) || self.is_tree_dir(ino) {
            return Ok(self.dir_attr(ino));
        }
        if let Some(attr) = self.view_attr(ino) {
            return Ok(attr);
        }
        let node = self.node(ino);
        node.map(|n| self.file_attr(&n)).ok_or(FsError::NotFound)
    }

    /// Starts a listing of directory `ino`: refreshes a stale query listing and takes a
    /// snapshot of the entries for [`Fs::readdir_at`]. Returns the handle.
    pub async fn opendir(&self, ino: u64) -> Result<u64, FsError> {
        if let Some(dir) = self.view.node(ino) {
            let entries = self.view_opendir(&dir).await?;
            let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
            self.dir_handles
                .lock()
                .unwrap()
                .insert(fh, Arc::new(entries));
            return Ok(fh);
        }
        let mut names: BTreeMap<String, u64> = BTreeMap::new();
        if let Some(dir) = self
            .queries
            .get(&ino)
            .cloned()
            .or_else(|| self.tree_day(ino))
        {
            names.extend(
                self.listing(&dir, true)
                    .await?
                    .iter()
                    .map(|(k, v)| (k.clone(), *v)),
            );
        } else if let Some((_, children)) = self.tree_entries(ino) {
            names = children;
        } else if ino != ROOT_INO {
            return Err(self.not_a_directory(ino));
        }
        if ino == ROOT_INO {
            names.extend(self.query_names.iter().map(|(k, v)| (k.clone(), *v)));
            let nodes = self.inodes.lock().unwrap().listed();
            names.extend(nodes.iter().map(|n| (n.file_name(), n.ino)));
            self.tree_add_root(&mut names);
        }
        self.view_add_tops(&mut names);
        let parent = self.tree_parent(ino).unwrap_or(ROOT_INO);
        let mut entries = vec![(".".to_string(), ino), ("..".to_string(), parent)];
        entries.extend(names);
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dir_handles
            .lock()
            .unwrap()
            .insert(fh, Arc::new(entries));
        Ok(fh)
    }

    /// Entries of an open directory from index `offset` on, with their attributes as they
    /// are now. Never asks the network.
    /// At most `max` entries: the kernel takes a page's worth per call, so building thousands
    /// of attributes for each call would be wasted.
    pub async fn readdir_at(
        &self,
        fh: u64,
        offset: usize,
        max: usize,
    ) -> Result<Vec<DirEntry>, FsError> {
        let entries = self
            .dir_handles
            .lock()
            .unwrap()
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)?;
        let mut out = Vec::with_capacity(entries.len().saturating_sub(offset).min(max));
        for (name, ino) in entries.iter().skip(offset).take(max) {
            let attr =
                if *ino == ROOT_INO || self.queries.contains_key(ino) || self.is_tree_dir(*ino) {
                    self.dir_attr(*ino)
                } else if let Some(attr) = self.view_attr(*ino) {
                    attr
                } else {
                    match self.node(*ino) {
                        Some(node) => self.file_attr(&node),
                        None => continue,
                    }
                };
            out.push(DirEntry {
                name: name.clone(),
                attr,
            });
        }
        Ok(out)
    }

    pub fn releasedir(&self, fh: u64) {
        self.dir_handles.lock().unwrap().remove(&fh);
    }

    /// Every entry of directory `ino`, `.` and `..` first (opendir + readdir + releasedir).
    #[cfg(test)]
    pub async fn readdir(&self, ino: u64) -> Result<Vec<DirEntry>, FsError> {
        let fh = self.opendir(ino).await?;
        let entries = self.readdir_at(fh, 0, usize::MAX).await;
        self.releasedir(fh);
        entries
    }

    /// Open a product for reading. `write` is true for any open that asks to write.
    pub async fn open(&self, ino: u64, write: bool) -> Result<u64, FsError> {
        if ino == ROOT_INO || self.queries.contains_key(&ino) || self.is_tree_dir(ino) {
            return Err(FsError::IsADirectory);
        }
        if write {
            return Err(FsError::ReadOnly);
        }
        if ino == STATUS_INO {
            let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
            let text = Bytes::from(self.status_text());
            self.handles
                .lock()
                .unwrap()
                .insert(fh, Arc::new(Open::Status(text)));
            return Ok(fh);
        }
        if let Some(view) = self.view.node(ino) {
            let open = self.view_open(view)?;
            let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
            self.handles.lock().unwrap().insert(fh, Arc::new(open));
            return Ok(fh);
        }
        let node = self.node(ino).ok_or(FsError::NotFound)?;
        self.refuse_changed(&node.meta.id)?;
        if !node.meta.online {
            let msg = format!(
                "{} is offline (cold storage); offline: order it in the Data Workspace, then read \
                 it again once the provider has restored it",
                node.meta.name
            );
            tracing::warn!("{msg}");
            self.note_error(&msg);
            return Err(FsError::Offline(node.meta.name.clone()));
        }
        if !node.is_exact() {
            // A listed product: its size so far is the catalogue's hint. The first read must
            // know where the file really ends.
            match self.cache.source().info(&node.meta.id).await {
                Ok(info) => {
                    if info.size != node.size() {
                        tracing::info!(
                            "{}: the catalogue said {} bytes, the download has {}",
                            node.meta.name,
                            node.size(),
                            info.size
                        );
                    }
                    node.set_exact(info.size);
                }
                Err(e) => {
                    self.note_error(&format!("open of {}: {e}", node.meta.name));
                    return Err(e.into());
                }
            }
        }
        let size = node.size();
        // The zip's central directory: fetched once per product in the background, so that
        // `cp` does not wait for it, while `unzip -l` and GDAL, which read it first, join the
        // fetch already registered when open returns.
        if size > 0 {
            self.cache
                .prefetch_tail(&node.meta.id, size, self.config.tail_bytes);
        }
        let reader = Prefetcher::new(
            self.cache.clone(),
            node.meta.id.clone(),
            size,
            PrefetchConfig {
                max_in_flight: self.config.max_connections,
                // Only what the disk cache holds is let go (`holds_locally`): without one,
                // nothing is.
                drop_behind: true,
                ..PrefetchConfig::default()
            },
        );
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles
            .lock()
            .unwrap()
            .insert(fh, Arc::new(Open::Product { node, reader }));
        self.stats.opens.fetch_add(1, Ordering::Relaxed);
        Ok(fh)
    }

    /// Up to `len` bytes at `offset`; short only at the end of the file.
    pub async fn read(&self, fh: u64, offset: u64, len: u32) -> Result<Bytes, FsError> {
        let handle = self
            .handles
            .lock()
            .unwrap()
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)?;
        let (name, size, reader) = match &*handle {
            Open::Status(text) => {
                let start = (offset as usize).min(text.len());
                let end = (start + len as usize).min(text.len());
                return Ok(text.slice(start..end));
            }
            Open::Product { node, reader } => (node.meta.name.clone(), node.size(), reader),
            Open::Node { node, reader } => (node.path.join("/"), node.size, reader),
        };
        if offset >= size {
            return Ok(Bytes::new());
        }
        self.refuse_changed(reader.id())?;
        let len = (len as u64).min(size - offset);
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        self.stats.reads_in_flight.fetch_add(1, Ordering::Relaxed);
        let result = reader.read(offset, len).await;
        self.stats.reads_in_flight.fetch_sub(1, Ordering::Relaxed);
        match result {
            Ok(bytes) => {
                self.stats
                    .bytes_read
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                Ok(bytes)
            }
            Err(e) => {
                self.stats.read_errors.fetch_add(1, Ordering::Relaxed);
                let msg = format!("read of {name} at {offset} (+{len}) failed: {e}");
                // A refused login, a refused audience or an outage fails every read alike and
                // the zipper has said why once; a line per read would bury it (readers retry).
                if e.is_logged_once() {
                    tracing::debug!("{msg}");
                } else {
                    tracing::error!("{msg}");
                }
                self.note_error(&msg);
                if matches!(e, FetchError::Changed(_)) {
                    self.changed.lock().unwrap().insert(reader.id().to_string());
                }
                Err(e.into())
            }
        }
    }

    pub fn release(&self, fh: u64) {
        self.handles.lock().unwrap().remove(&fh);
    }

    /// Names of the `user.eodata.*` attributes of `ino`.
    pub fn listxattr(&self, ino: u64) -> Result<Vec<String>, FsError> {
        if self.tree_day(ino).is_some() {
            // A day says which query lists it, as a query directory does.
            return Ok(vec!["user.eodata.filter".to_string()]);
        }
        if ino == ROOT_INO
            || ino == STATUS_INO
            || self.queries.contains_key(&ino)
            || self.is_tree_dir(ino)
        {
            return Ok(Vec::new());
        }
        if let Some(x) = self.view_xattrs(ino) {
            return Ok(x.into_iter().map(|(k, _)| k).collect());
        }
        let node = self.node(ino).ok_or(FsError::NotFound)?;
        Ok(node.xattrs().into_iter().map(|(k, _)| k).collect())
    }

    pub fn getxattr(&self, ino: u64, name: &str) -> Result<Vec<u8>, FsError> {
        if self.is_tree_dir(ino) && self.tree_day(ino).is_none() {
            return Err(FsError::NoAttribute);
        }
        if let Some(dir) = self
            .queries
            .get(&ino)
            .cloned()
            .or_else(|| self.tree_day(ino))
        {
            // A query directory says what it shows.
            if name == "user.eodata.filter" {
                return Ok(dir.spec.filter.clone().into_bytes());
            }
            return Err(FsError::NoAttribute);
        }
        let xattrs = match self.view_xattrs(ino) {
            Some(x) => x,
            None => self.node(ino).ok_or(FsError::NoAttribute)?.xattrs(),
        };
        xattrs
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_bytes())
            .ok_or(FsError::NoAttribute)
    }

    /// EIO for a product whose bytes changed during this mount (see `changed`).
    fn refuse_changed(&self, id: &str) -> Result<(), FsError> {
        if self.changed.lock().unwrap().contains(id) {
            return Err(FsError::Fetch(FetchError::Changed(format!(
                "product {id} came with other bytes earlier in this mount; unmount and mount again to read it afresh"
            ))));
        }
        Ok(())
    }

    /// Remembers the last failure for the status file.
    fn note_error(&self, msg: &str) {
        *self.last_error.lock().unwrap() = Some((SystemTime::now(), msg.to_string()));
    }

    /// A directory's attributes; a query directory's mtime is when its listing was fetched.
    fn dir_attr(&self, ino: u64) -> Attr {
        let mtime = match self
            .queries
            .get(&ino)
            .cloned()
            .or_else(|| self.tree_day(ino))
        {
            Some(dir) => match dir.listing.try_lock() {
                Ok(l) => l.fetched_wall.unwrap_or(self.created),
                // Being refetched: the creation time will do for this one answer.
                Err(_) => self.created,
            },
            None => self.created,
        };
        Attr {
            ino,
            kind: Kind::Directory,
            size: 0,
            mtime,
            perm: 0o555,
            exact: true,
        }
    }

    fn file_attr(&self, node: &ProductNode) -> Attr {
        Attr {
            ino: node.ino,
            kind: Kind::File,
            size: node.size(),
            mtime: node.meta.mtime,
            perm: 0o444,
            exact: node.is_exact(),
        }
    }

    pub fn config(&self) -> &FsConfig {
        &self.config
    }
}

/// How long the kernel may keep names and attributes: products never change once published,
/// so a day is safe, and long TTLs spare a FUSE round trip on every `stat`.
pub const ATTR_TTL: Duration = Duration::from_secs(24 * 3600);

/// How long the kernel may keep attributes that are not exact (a catalogue size hint, the
/// status file): not at all, so that the true size reaches the kernel as soon as `open` learns
/// it. Such `getattr`s are answered from memory, so `ls -l` of thousands stays fast.
pub const HINT_TTL: Duration = Duration::ZERO;

/// The attribute TTL the kernel gets for `attr`.
pub fn ttl(attr: &Attr) -> Duration {
    if attr.exact {
        ATTR_TTL
    } else {
        HINT_TTL
    }
}
