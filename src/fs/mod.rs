//! The filesystem, without FUSE: inodes, names, attributes, open handles and reads, as plain
//! async methods that tests call directly (no kernel, no mount).
//!
//! Layout: the root directory holds one read-only file per product, `<Name>.zip`. Products named
//! on the command line are listed from the start; any other is resolved through the catalogue
//! on the first lookup of `<Name>.zip`, `<Name without .SAFE>.zip` or `<uuid>.zip`, and listed from
//! then on. All names of one product lead to the same inode, so they are the same file.
//!
//! Only names ending in `.zip` are looked up in the catalogue: tools probe many names next to a
//! file they open (`x.zip.aux.xml`, `.ovr`, `.git`), and each probe would otherwise cost a
//! catalogue request.
//!
//! Bytes come from `eodata_fetch`: the block cache shared by all handles, and one read-ahead
//! state per open handle. The adapter in `crate::fuse` turns [`FsError`] into errno.

mod inodes;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use eodata_fetch::cache::BlockCache;
use eodata_fetch::prefetch::{PrefetchConfig, Prefetcher};
use eodata_fetch::{FetchError, RangeSource};

pub use inodes::ROOT_INO;
use inodes::{InodeTable, ProductNode};

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
    /// Extra facts exposed as `user.eodata.*` extended attributes.
    pub xattrs: Vec<(String, String)>,
}

/// Finds products by any of their names. Implemented over the OData catalogue; tests use a map.
pub trait Resolver: Send + Sync + 'static {
    /// `Ok(None)` when no product has this name.
    fn resolve(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<ProductMeta>, FsError>> + Send;
}

impl<T: Resolver> Resolver for Arc<T> {
    fn resolve(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<ProductMeta>, FsError>> + Send {
        (**self).resolve(name)
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
    #[error("product {0} is offline (in cold storage) and cannot be read now")]
    Offline(String),
    #[error("catalogue: {0}")]
    Catalogue(String),
    #[error(transparent)]
    Fetch(#[from] FetchError),
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
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            // SAFETY: geteuid/getegid cannot fail.
            uid: unsafe { libc::geteuid() },
            gid: unsafe { libc::getegid() },
            tail_bytes: 1 << 20,
            max_connections: 4,
        }
    }
}

/// Counters for the status report.
#[derive(Debug, Default)]
pub struct FsStats {
    pub opens: AtomicU64,
    pub reads: AtomicU64,
    pub bytes_read: AtomicU64,
    pub read_errors: AtomicU64,
}

/// The filesystem over a resolver (names) and a byte source (the block cache over zipper).
pub struct Fs<R: Resolver, S: RangeSource> {
    resolver: R,
    cache: Arc<BlockCache<S>>,
    config: FsConfig,
    inodes: Mutex<InodeTable>,
    handles: Mutex<HashMap<u64, Arc<Handle<S>>>>,
    next_fh: AtomicU64,
    created: SystemTime,
    pub stats: FsStats,
}

/// An open file: its product and its read-ahead state. The kernel may send several reads of
/// one handle at once; the prefetcher takes them in parallel.
struct Handle<S: RangeSource> {
    node: Arc<ProductNode>,
    reader: Prefetcher<S>,
}

impl<R: Resolver, S: RangeSource> Fs<R, S> {
    pub fn new(resolver: R, cache: Arc<BlockCache<S>>, config: FsConfig) -> Self {
        Fs {
            resolver,
            cache,
            config,
            inodes: Mutex::new(InodeTable::default()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            created: SystemTime::now(),
            stats: FsStats::default(),
        }
    }

    /// Resolve a product and list it in the root (used for `--product` at start-up).
    pub async fn add_product(&self, name: &str) -> Result<Attr, FsError> {
        match self.find_or_resolve(name).await? {
            Some(node) => Ok(self.file_attr(&node)),
            None => Err(FsError::NotFound),
        }
    }

    pub async fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr, FsError> {
        if parent != ROOT_INO {
            return Err(if self.inodes.lock().unwrap().product(parent).is_some() {
                FsError::NotADirectory
            } else {
                FsError::NotFound
            });
        }
        let name = name.to_str().ok_or(FsError::NotFound)?;
        let Some(stem) = name.strip_suffix(".zip") else {
            return Err(FsError::NotFound);
        };
        if stem.is_empty() || stem.starts_with('.') {
            return Err(FsError::NotFound);
        }
        match self.find_or_resolve(stem).await? {
            Some(node) => Ok(self.file_attr(&node)),
            None => Err(FsError::NotFound),
        }
    }

    /// A known product by any alias, or resolve it (catalogue, then the download's size).
    async fn find_or_resolve(&self, name: &str) -> Result<Option<Arc<ProductNode>>, FsError> {
        let name = name.strip_suffix(".zip").unwrap_or(name);
        if let Some(node) = self.inodes.lock().unwrap().by_alias(name) {
            return Ok(Some(node));
        }
        let Some(meta) = self.resolver.resolve(name).await? else {
            return Ok(None);
        };
        if let Some(node) = self.inodes.lock().unwrap().by_id(&meta.id) {
            self.inodes.lock().unwrap().add_alias(name, node.ino);
            return Ok(Some(node));
        }
        // The catalogue's ContentLength is only a hint: the download's own size is the truth.
        let size = if meta.online {
            self.cache.source().info(&meta.id).await?.size
        } else {
            0
        };
        let node = self.inodes.lock().unwrap().insert(meta, size, name);
        Ok(Some(node))
    }

    pub async fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        if ino == ROOT_INO {
            return Ok(self.root_attr());
        }
        let node = self.inodes.lock().unwrap().product(ino);
        node.map(|n| self.file_attr(&n)).ok_or(FsError::NotFound)
    }

    /// Every entry of directory `ino`, `.` and `..` first.
    pub async fn readdir(&self, ino: u64) -> Result<Vec<DirEntry>, FsError> {
        if ino != ROOT_INO {
            return Err(if self.inodes.lock().unwrap().product(ino).is_some() {
                FsError::NotADirectory
            } else {
                FsError::NotFound
            });
        }
        let root = self.root_attr();
        let mut entries = vec![
            DirEntry {
                name: ".".into(),
                attr: root,
            },
            DirEntry {
                name: "..".into(),
                attr: root,
            },
        ];
        let nodes = self.inodes.lock().unwrap().listed();
        entries.extend(nodes.iter().map(|n| DirEntry {
            name: n.file_name(),
            attr: self.file_attr(n),
        }));
        Ok(entries)
    }

    /// Open a product for reading. `write` is true for any open that asks to write.
    pub async fn open(&self, ino: u64, write: bool) -> Result<u64, FsError> {
        if ino == ROOT_INO {
            return Err(FsError::IsADirectory);
        }
        if write {
            return Err(FsError::ReadOnly);
        }
        let node = self
            .inodes
            .lock()
            .unwrap()
            .product(ino)
            .ok_or(FsError::NotFound)?;
        if !node.meta.online {
            tracing::warn!(
                "{} is offline (cold storage); it cannot be read until the provider restores it",
                node.meta.name
            );
            return Err(FsError::Offline(node.meta.name.clone()));
        }
        // The zip's central directory: fetched once per product in the background, so that
        // `cp` does not wait for it, while `unzip -l` and GDAL, which read it first, join the
        // fetch already registered when open returns.
        if node.size > 0 {
            self.cache
                .prefetch_tail(&node.meta.id, node.size, self.config.tail_bytes);
        }
        let reader = Prefetcher::new(
            self.cache.clone(),
            node.meta.id.clone(),
            node.size,
            PrefetchConfig {
                max_in_flight: self.config.max_connections,
                ..PrefetchConfig::default()
            },
        );
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles
            .lock()
            .unwrap()
            .insert(fh, Arc::new(Handle { node, reader }));
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
        let size = handle.node.size;
        if offset >= size {
            return Ok(Bytes::new());
        }
        let len = (len as u64).min(size - offset);
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        let result = handle.reader.read(offset, len).await;
        match result {
            Ok(bytes) => {
                self.stats
                    .bytes_read
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                Ok(bytes)
            }
            Err(e) => {
                self.stats.read_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    "read of {} at {offset} (+{len}) failed: {e}",
                    handle.node.meta.name
                );
                Err(e.into())
            }
        }
    }

    pub fn release(&self, fh: u64) {
        self.handles.lock().unwrap().remove(&fh);
    }

    /// Names of the `user.eodata.*` attributes of `ino`.
    pub fn listxattr(&self, ino: u64) -> Result<Vec<String>, FsError> {
        if ino == ROOT_INO {
            return Ok(Vec::new());
        }
        let node = self
            .inodes
            .lock()
            .unwrap()
            .product(ino)
            .ok_or(FsError::NotFound)?;
        Ok(node.xattrs().into_iter().map(|(k, _)| k).collect())
    }

    pub fn getxattr(&self, ino: u64, name: &str) -> Result<Vec<u8>, FsError> {
        let node = self
            .inodes
            .lock()
            .unwrap()
            .product(ino)
            .ok_or(FsError::NoAttribute)?;
        node.xattrs()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_bytes())
            .ok_or(FsError::NoAttribute)
    }

    fn root_attr(&self) -> Attr {
        Attr {
            ino: ROOT_INO,
            kind: Kind::Directory,
            size: 0,
            mtime: self.created,
            perm: 0o555,
        }
    }

    fn file_attr(&self, node: &ProductNode) -> Attr {
        Attr {
            ino: node.ino,
            kind: Kind::File,
            size: node.size,
            mtime: node.meta.mtime,
            perm: 0o444,
        }
    }

    pub fn config(&self) -> &FsConfig {
        &self.config
    }
}

/// How long the kernel may keep names and attributes: products never change once published,
/// so a day is safe, and long TTLs spare a FUSE round trip on every `stat`.
pub const ATTR_TTL: Duration = Duration::from_secs(24 * 3600);
