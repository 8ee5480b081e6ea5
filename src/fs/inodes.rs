//! The inode table: which inode number is which product, and every name that leads to it.
//!
//! Inode numbers are never reused while mounted (products are immutable and few), so the kernel
//! may cache them for as long as it likes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::ProductMeta;

/// The root directory's inode, as FUSE requires.
pub const ROOT_INO: u64 = 1;

/// A product known to the mount.
#[derive(Debug)]
pub struct ProductNode {
    pub ino: u64,
    pub meta: ProductMeta,
    /// The download's size in bytes (0 for offline products, whose size cannot be asked).
    pub size: u64,
}

impl ProductNode {
    /// The name it is listed under: the catalogue's Name plus `.zip`.
    pub fn file_name(&self) -> String {
        format!("{}.zip", self.meta.name)
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
    /// The root listing, sorted by file name.
    listing: BTreeMap<String, u64>,
}

impl InodeTable {
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

    /// Add a product (or return the one already there with that id: two lookups may race) and
    /// remember `looked_up_as` as one of its names.
    pub fn insert(&mut self, meta: ProductMeta, size: u64, looked_up_as: &str) -> Arc<ProductNode> {
        if let Some(existing) = self.by_id(&meta.id) {
            self.add_alias(looked_up_as, existing.ino);
            return existing;
        }
        if self.next <= ROOT_INO {
            self.next = ROOT_INO + 1;
        }
        let ino = self.next;
        self.next += 1;
        let node = Arc::new(ProductNode { ino, meta, size });
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
        self.listing.insert(node.file_name(), ino);
        self.nodes.insert(ino, node.clone());
        node
    }

    /// The products listed in the root, by file name.
    pub fn listed(&self) -> Vec<Arc<ProductNode>> {
        self.listing
            .values()
            .filter_map(|ino| self.product(*ino))
            .collect()
    }
}
