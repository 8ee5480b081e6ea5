//! The product store: a directory holding `index.json` and the products' zip files.
//!
//! `index.json` is `{"products": [ {...}, ... ]}`; each entry holds the OData catalogue fields
//! exactly as served (`Id`, `Name`, `ContentLength`, `ContentDate`, `Checksum`, ...), plus
//! `Collection` (e.g. `"SENTINEL-2"`) and the non-OData key `file` (the zip's name relative to the
//! directory; absent for catalogue-only entries), which is stripped when serving. The contract is
//! shared with `generate.rs`, which writes such directories.
//!
//! Only the index is held in memory. Zips are read by range from disk when served (products can
//! weigh 1 GiB). The index is re-read when its modification time changes, so a generator may
//! (re)write the directory while a double serves it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::Context as _;
use serde_json::{Map, Value};

/// One product of the index.
#[derive(Debug)]
pub(crate) struct Product {
    pub id: String,
    pub name: String,
    /// The catalogue entity as served (without `file`).
    pub entity: Map<String, Value>,
    /// The zip on disk, if this product can be downloaded.
    pub file: Option<PathBuf>,
}

impl Product {
    /// The name a download is saved under: `<Name>.zip`, like the zipper's Content-Disposition.
    pub(crate) fn zip_name(&self) -> String {
        format!("{}.zip", self.name)
    }

    /// The zip's own file name in the store.
    pub(crate) fn file_name(&self) -> Option<String> {
        self.file
            .as_ref()
            .and_then(|f| f.file_name())
            .map(|n| n.to_string_lossy().into_owned())
    }
}

type Products = Arc<Vec<Arc<Product>>>;

pub(crate) struct Store {
    dir: Option<PathBuf>,
    loaded: Mutex<(Option<SystemTime>, Products)>,
}

impl Store {
    /// An empty store when `dir` is None. A directory without `index.json` serves nothing until
    /// one appears.
    pub(crate) fn open(dir: Option<&Path>) -> anyhow::Result<Store> {
        if let Some(d) = dir {
            anyhow::ensure!(
                d.is_dir(),
                "products directory {} does not exist",
                d.display()
            );
        }
        let store = Store {
            dir: dir.map(Path::to_path_buf),
            loaded: Mutex::new((None, Arc::new(Vec::new()))),
        };
        store.refresh()?;
        Ok(store)
    }

    fn refresh(&self) -> anyhow::Result<()> {
        let Some(dir) = &self.dir else { return Ok(()) };
        let index = dir.join("index.json");
        let mtime = std::fs::metadata(&index).and_then(|m| m.modified()).ok();
        let mut loaded = self.loaded.lock().unwrap();
        if mtime.is_none() || mtime == loaded.0 {
            return Ok(());
        }
        let text = std::fs::read(&index).with_context(|| format!("reading {}", index.display()))?;
        let products =
            parse_index(dir, &text).with_context(|| format!("parsing {}", index.display()))?;
        *loaded = (mtime, Arc::new(products));
        Ok(())
    }

    /// All products, re-reading the index if it changed. A broken rewrite keeps the last good
    /// index (a generator may be halfway through writing it).
    pub(crate) fn products(&self) -> Products {
        if let Err(e) = self.refresh() {
            tracing::warn!("product index not reloaded: {e:#}");
        }
        self.loaded.lock().unwrap().1.clone()
    }

    /// By id, case-insensitively (UUIDs are case-insensitive).
    pub(crate) fn by_id(&self, id: &str) -> Option<Arc<Product>> {
        self.products()
            .iter()
            .find(|p| p.id.eq_ignore_ascii_case(id))
            .cloned()
    }

    /// A downloadable product by `<Name>.zip` (what `/files/` lists) or by its zip's own file
    /// name (for `/files/NAME.zip`).
    pub(crate) fn by_download_name(&self, name: &str) -> Option<Arc<Product>> {
        let products = self.products();
        let downloadable = || products.iter().filter(|p| p.file.is_some());
        downloadable()
            .find(|p| p.zip_name() == name)
            .or_else(|| downloadable().find(|p| p.file_name().as_deref() == Some(name)))
            .cloned()
    }
}

fn parse_index(dir: &Path, text: &[u8]) -> anyhow::Result<Vec<Arc<Product>>> {
    let v: Value = serde_json::from_slice(text)?;
    let list = v
        .get("products")
        .and_then(Value::as_array)
        .context("no \"products\" list")?;
    let mut out = Vec::with_capacity(list.len());
    for (i, p) in list.iter().enumerate() {
        let mut entity = p
            .as_object()
            .with_context(|| format!("product {i} is not an object"))?
            .clone();
        let file = entity
            .remove("file")
            .and_then(|f| f.as_str().map(|f| dir.join(f)));
        let id = entity
            .get("Id")
            .and_then(Value::as_str)
            .with_context(|| format!("product {i} has no Id"))?
            .to_string();
        let name = entity
            .get("Name")
            .and_then(Value::as_str)
            .with_context(|| format!("product {i} has no Name"))?
            .to_string();
        out.push(Arc::new(Product {
            id,
            name,
            entity,
            file,
        }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_is_stripped_and_resolved() {
        let dir = Path::new("/data");
        let ps = parse_index(
            dir,
            br#"{"products":[{"Id":"a","Name":"N","file":"n.zip","Online":true},{"Id":"b","Name":"M"}]}"#,
        )
        .unwrap();
        assert_eq!(ps[0].file.as_deref(), Some(Path::new("/data/n.zip")));
        assert!(!ps[0].entity.contains_key("file"));
        assert_eq!(ps[0].zip_name(), "N.zip");
        assert!(ps[1].file.is_none());
        assert!(parse_index(dir, br#"{"products":[{"Name":"x"}]}"#).is_err());
    }
}
