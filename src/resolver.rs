//! Product names to products, for the mount: the OData catalogue behind the filesystem's
//! [`Resolver`] (with each product's MD5 noted for the spool's check, and its catalogue facts
//! made extended attributes), and the one reader of names files (`--products-file`,
//! `download --from-file`).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use eodata_catalogue::Catalogue;

use crate::fs::{FsError, ProductMeta, Resolver};

/// The names in a names file, one a line, blank lines and `#` comments skipped; `-` is standard
/// input (`eodata-mount search ... | eodata-mount download --from-file -`).
pub fn names_file(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("cannot read standard input")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?
    };
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect())
}

/// Product id -> the catalogue's MD5, filled as products are resolved or listed; the spool
/// checks a product it streamed whole against it (`eodata_fetch::spool::ExpectedMd5`).
#[derive(Clone, Default)]
pub struct Checksums(Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>);

impl Checksums {
    fn note(&self, p: &eodata_catalogue::Product) {
        if let Some(md5) = &p.md5 {
            let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
            m.insert(p.id.clone(), md5.clone());
        }
    }

    /// The lookup the spool asks.
    pub fn lookup(&self) -> eodata_fetch::spool::ExpectedMd5 {
        let map = Arc::clone(&self.0);
        Arc::new(move |id: &str| {
            map.lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(id)
                .cloned()
        })
    }
}

/// Names to products through the OData catalogue; remembers each product's MD5.
pub struct CatalogueResolver(pub Arc<Catalogue>, pub Checksums);

impl Resolver for CatalogueResolver {
    async fn resolve(&self, name: &str) -> Result<Option<ProductMeta>, FsError> {
        match self.0.resolve(name).await {
            Ok(p) => {
                self.1.note(&p);
                Ok(Some(product_meta(&p)))
            }
            Err(eodata_catalogue::CatalogueError::NotFound(_)) => Ok(None),
            Err(e) => {
                tracing::warn!("catalogue lookup of {name} failed: {e}");
                Err(FsError::Catalogue(e.to_string()))
            }
        }
    }

    async fn query(&self, filter: &str, max_results: usize) -> Result<Vec<ProductMeta>, FsError> {
        match self.0.query(filter, max_results).await {
            Ok(products) => {
                products.iter().for_each(|p| self.1.note(p));
                Ok(products.iter().map(product_meta).collect())
            }
            Err(e) => {
                tracing::warn!("catalogue query {filter:?} failed: {e}");
                Err(FsError::Catalogue(e.to_string()))
            }
        }
    }
}

fn product_meta(p: &eodata_catalogue::Product) -> ProductMeta {
    let mut xattrs = Vec::new();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            xattrs.push((format!("user.eodata.{k}"), v));
        }
    };
    // What GIS tools take: WKT (ogr2ogr, shapely's wkt.loads) and a GeoJSON geometry.
    put("footprint", p.footprint_wkt().map(str::to_string));
    put("geojson", p.footprint_geojson());
    put("checksum.md5", p.md5.clone());
    put("s3path", p.s3_path.clone());
    put("size_hint", p.size_hint.map(|s| s.to_string()));
    put("content_start", p.content_start.map(iso8601));
    put("content_end", p.content_end.map(iso8601));
    put("publication_date", p.publication_date.map(iso8601));
    ProductMeta {
        id: p.id.clone(),
        name: p.name.clone(),
        mtime: p
            .modification_date
            .or(p.publication_date)
            .unwrap_or(std::time::UNIX_EPOCH),
        online: p.online,
        size_hint: p.size_hint,
        xattrs,
    }
}

/// A time as ISO 8601 in UTC to the millisecond (`2018-09-27T05:12:21.024Z`), as the catalogue
/// writes its dates and `date -d`, Python's `fromisoformat` and GDAL read them.
fn iso8601(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}
