//! The inode table: which inode number is which product, and every name that leads to it.
//!
//! Inode numbers are never reused while mounted (products are immutable), so the kernel may
//! cache them for as long as it likes. A product listed by several query directories is one
//! inode, whichever directory it was found through.
//!
//! A product's size is either *exact* (the download said so) or a *hint* (the catalogue's
//! `ContentLength`, which docs/protocol.md warns may differ, or 0 when unknown). Listings use hints
//! so that `ls -l` of thousands of products costs no request per file; `open` makes the size
//! exact before the first read (see `Fs::open`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::ProductMeta;

/// The root directory's inode, as FUSE requires.
pub const ROOT_INO: u64 = 1;

/// The read-only `.eodata-status` file in the root (see `status`).
pub const STATUS_INO: u64 = 2;

/// A product known to the mount.
#[derive(Debug)]
pub struct ProductNode {
    pub ino: u64,
    pub meta: ProductMeta,
    size: AtomicU64,
    exact: AtomicBool,
}

impl ProductNode {
    /// The name it is listed under: the catalogue's Name plus `.zip`.
    pub fn file_name(&self) -> String {
        format!("{}.zip", self.meta.name)
    }

    /// The download's size once known, else the catalogue's hint (0 when it gave none).
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    /// Whether [`ProductNode::size`] is the download's own size.
    pub fn is_exact(&self) -> bool {
        self.exact.load(Ordering::Acquire)
    }

    /// Records the download's own size, replacing the hint.
    pub fn set_exact(&self, size: u64) {
        self.size.store(size, Ordering::Release);
        self.exact.store(true, Ordering::Release);
    }

    /// The `user.eodata.*` extended attributes, in a stable order.
    pub fn xattrs(&self) -> Vec<(String, String)> {
        let mut out = vec![
            ("user.eodata.id".to_string(), self.meta.id.clone()),
            ("user.eodata.name".to_string(), self.meta.name.clone()),
            (
                "user.eodata.online".to_string(),
                self.meta.online.to_string(),
            ),
        ];
        out.extend(self.meta.xattrs.iter().cloned());
        out
    }
}

#[derive(Default)]
pub struct InodeTable {
    next: u64,
    nodes: HashMap<u64, Arc<ProductNode>>,
    by_id: HashMap<String, u64>,
    /// Every name a product was looked up by (Name, stem, UUID), without `.zip`.
    aliases: HashMap<String, u64>,
    /// The products listed in the root (named on the command line or looked up there), by
    /// file name. Products found only through a query directory are not in it.
    listing: BTreeMap<String, u64>,
}

impl InodeTable {
    /// A fresh inode number (products and query directories share the space).
    pub fn alloc(&mut self) -> u64 {
        if self.next <= STATUS_INO {
            self.next = STATUS_INO + 1;
        }
        let ino = self.next;
        self.next += 1;
        ino
    }

    pub fn product(&self, ino: u64) -> Option<Arc<ProductNode>> {
        self.nodes.get(&ino).cloned()
    }

    pub fn by_id(&self, id: &str) -> Option<Arc<ProductNode>> {
        self.by_id.get(id).and_then(|ino| self.product(*ino))
    }

    pub fn by_alias(&self, name: &str) -> Option<Arc<ProductNode>> {
        self.aliases.get(name).and_then(|ino| self.product(*ino))
    }

    pub fn add_alias(&mut self, name: &str, ino: u64) {
        self.aliases.insert(name.to_string(), ino);
    }

    /// Lists a known product in the root.
    pub fn list_in_root(&mut self, node: &ProductNode) {
        self.listing.insert(node.file_name(), node.ino);
    }

    /// Add a product (or return the one already there with that id: two lookups may race) and
    /// remember `looked_up_as` as one of its names. `size` is the download's size when known;
    /// `None` keeps the catalogue's hint until the file is opened.
    pub fn insert(
        &mut self,
        meta: ProductMeta,
        size: Option<u64>,
        looked_up_as: &str,
    ) -> Arc<ProductNode> {
        if let Some(existing) = self.by_id(&meta.id) {
            self.add_alias(looked_up_as, existing.ino);
            if let Some(size) = size {
                existing.set_exact(size);
            }
            return existing;
        }
        let ino = self.alloc();
        let node = Arc::new(ProductNode {
            ino,
            size: AtomicU64::new(size.or(meta.size_hint).unwrap_or(0)),
            exact: AtomicBool::new(size.is_some()),
            meta,
        });
        self.by_id.insert(node.meta.id.clone(), ino);
        for alias in [
            looked_up_as.to_string(),
            node.meta.id.clone(),
            node.meta.name.clone(),
            node.meta
                .name
                .strip_suffix(".SAFE")
                .unwrap_or(&node.meta.name)
                .to_string(),
        ] {
            self.aliases.insert(alias, ino);
        }
        self.nodes.insert(ino, node.clone());
        node
    }

    /// The product listed in the root under `file_name` (`<Name>.zip`), if any.
    pub fn listed_as(&self, file_name: &str) -> Option<Arc<ProductNode>> {
        self.listing
            .get(file_name)
            .and_then(|ino| self.product(*ino))
    }

    /// The products listed in the root, by file name.
    pub fn listed(&self) -> Vec<Arc<ProductNode>> {
        self.listing
            .values()
            .filter_map(|ino| self.product(*ino))
            .collect()
    }
}
