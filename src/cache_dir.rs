//! The disk cache directory (`--cache-dir`, on by default under `$XDG_CACHE_HOME`): opening the
//! persistent disk cache the mount's layers share, so mount.rs only stacks them: the block
//! store ([`DiskStore`]) under the memory cache, and the spool of products whose server ignores
//! Range, which goes into the same directory and hands every block it streams to the store;
//! and the offline memory of the catalogue ([`OfflineResolver`]), so a cached product opens
//! with the services unreachable.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{bail, Context};
use eodata_fetch::disk::{DiskBudget, DiskStore, KEEP_FREE};
use eodata_fetch::spool::{BlockSink, SpoolConfig};

use crate::cli::MountArgs;
use crate::fs::{FsError, ProductMeta, Resolver};

/// Below `$XDG_CACHE_HOME` (else `~/.cache`): the disk cache when no `--cache-dir` is given.
const DEFAULT_SUBDIR: &str = "eodata-mount";

/// The default disk cache directory: `$XDG_CACHE_HOME/eodata-mount` when that is an absolute
/// path (the XDG rule), else `$HOME/.cache/eodata-mount`; `None` without either.
pub fn default_dir() -> Option<PathBuf> {
    let xdg = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    let base = xdg.or_else(|| {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .map(|h| h.join(".cache"))
    })?;
    Some(base.join(DEFAULT_SUBDIR))
}

/// The disk cache directory this mount uses: `--cache-dir`, else the default one, unless
/// `--no-cache-dir`.
pub fn resolve(args: &MountArgs) -> Option<PathBuf> {
    if args.no_cache_dir {
        return None;
    }
    args.cache_dir.clone().or_else(default_dir)
}

/// The store of the cache dir, with the budget of `--cache-dir-size`; `None` without one. A
/// default directory that cannot be made is not fatal (said once, then no disk cache); a
/// `--cache-dir` given by the user is.
pub fn open_store(args: &MountArgs) -> anyhow::Result<Option<Arc<DiskStore>>> {
    let Some(dir) = &resolve(args) else {
        if !args.no_cache_dir {
            tracing::warn!("no disk cache: neither XDG_CACHE_HOME nor HOME is set; give --cache-dir DIR to keep products across mounts");
        }
        return Ok(None);
    };
    if args.cache_dir.is_none() {
        if let Err(e) = std::fs::create_dir_all(dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot make the default disk cache; going on without one (see --cache-dir)");
            return Ok(None);
        }
    }
    let budget = match args.cache_dir_size {
        None => DiskBudget::KeepFree(KEEP_FREE),
        Some(gib) if gib.is_finite() && gib > 0.0 => {
            DiskBudget::Bytes((gib * (1u64 << 30) as f64) as u64)
        }
        Some(gib) => bail!("--cache-dir-size must be a positive number of GiB, not {gib}"),
    };
    let store = DiskStore::open(dir, budget).with_context(|| {
        format!(
            "cannot use {} as the disk cache (--cache-dir): is it a writable directory?",
            dir.display()
        )
    })?;
    tracing::info!(dir = %dir.display(), ?budget, used = store.used_bytes(), "disk cache");
    Ok(Some(store))
}

/// Where the zipper client remembers whether the download host honours Range, beside the
/// store, so the next mount asks nothing it knows the answer to.
pub fn ranges_file(store: &DiskStore) -> PathBuf {
    store.root().join("ranges.json")
}

/// Where the spool of a no-Range product goes: into the cache dir (and its blocks into the
/// store) when there is one, else `$TMPDIR`.
pub fn spool_config(args: &MountArgs, store: &Option<Arc<DiskStore>>) -> SpoolConfig {
    SpoolConfig {
        dir: store.as_ref().and(resolve(args)).map(|d| d.join("spool")),
        sink: store.clone().map(|s| s as Arc<dyn BlockSink>),
        expected_md5: None,
    }
}

/// File in the cache dir holding every product the catalogue resolved, by the names asked.
const CATALOGUE_FILE: &str = "catalogue.json";

/// The catalogue with an offline memory: every product it resolves is written to
/// `<cache-dir>/catalogue.json`, and when the catalogue cannot be reached (an error, not "no
/// such product") a name resolved before is answered from there, so cached products open
/// offline. Without a cache dir it is the catalogue alone. Two mounts on one dir merge their
/// entries (read, add, rename); a lost race loses an entry, which the next lookup restores.
pub struct OfflineResolver<R> {
    inner: R,
    file: Option<PathBuf>,
}

impl<R: Resolver> OfflineResolver<R> {
    pub fn new(inner: R, args: &MountArgs) -> Self {
        OfflineResolver {
            inner,
            file: resolve(args).map(|d| d.join(CATALOGUE_FILE)),
        }
    }

    fn load(file: &Path) -> serde_json::Map<String, serde_json::Value> {
        std::fs::read_to_string(file)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.as_object().cloned())
            .unwrap_or_default()
    }

    fn remember(file: &Path, name: &str, meta: &ProductMeta) {
        let mut all = Self::load(file);
        let entry = meta_to_json(meta);
        if all.get(name) == Some(&entry) {
            return;
        }
        all.insert(name.to_string(), entry);
        let tmp = file.with_extension(format!("json.{}.tmp", std::process::id()));
        let text = serde_json::Value::Object(all).to_string();
        if let Err(e) = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, file)) {
            let _ = std::fs::remove_file(&tmp);
            tracing::warn!(file = %file.display(), error = %e, "cannot save the offline catalogue");
        }
    }
}

fn meta_to_json(m: &ProductMeta) -> serde_json::Value {
    let secs = m
        .mtime
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    serde_json::json!({
        "id": m.id,
        "name": m.name,
        "mtime": secs,
        "online": m.online,
        "size_hint": m.size_hint,
        "xattrs": m.xattrs,
    })
}

fn meta_from_json(v: &serde_json::Value) -> Option<ProductMeta> {
    Some(ProductMeta {
        id: v["id"].as_str()?.to_string(),
        name: v["name"].as_str()?.to_string(),
        mtime: UNIX_EPOCH + Duration::from_secs(v["mtime"].as_u64()?),
        online: v["online"].as_bool()?,
        size_hint: v["size_hint"].as_u64(),
        xattrs: serde_json::from_value(v["xattrs"].clone()).ok()?,
    })
}

impl<R: Resolver> Resolver for OfflineResolver<R> {
    async fn resolve(&self, name: &str) -> Result<Option<ProductMeta>, FsError> {
        let Some(file) = &self.file else {
            return self.inner.resolve(name).await;
        };
        match self.inner.resolve(name).await {
            Ok(Some(meta)) => {
                let (file, name, m) = (file.clone(), name.to_string(), meta.clone());
                let _ = tokio::task::spawn_blocking(move || Self::remember(&file, &name, &m)).await;
                Ok(Some(meta))
            }
            Ok(None) => Ok(None),
            Err(e) => match Self::load(file).get(name).and_then(meta_from_json) {
                Some(meta) => {
                    tracing::warn!(
                        "catalogue unreachable ({e}); {name} answered from the disk cache"
                    );
                    Ok(Some(meta))
                }
                None => Err(e),
            },
        }
    }

    fn query(
        &self,
        filter: &str,
        max_results: usize,
    ) -> impl Future<Output = Result<Vec<ProductMeta>, FsError>> + Send {
        self.inner.query(filter, max_results)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn meta() -> ProductMeta {
        ProductMeta {
            id: "db0c8ef3-8ec0-5185-a537-812dad3c58f8".into(),
            name: "S2A_X.SAFE".into(),
            mtime: UNIX_EPOCH + Duration::from_secs(1_538_000_000),
            online: true,
            size_hint: Some(123),
            xattrs: vec![("user.eodata.checksum.md5".into(), "abc".into())],
        }
    }

    /// Answers from a switch: the product, or an unreachable catalogue.
    struct Flaky(std::sync::atomic::AtomicBool);

    impl Resolver for Flaky {
        async fn resolve(&self, name: &str) -> Result<Option<ProductMeta>, FsError> {
            if self.0.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(FsError::Catalogue("connection refused".into()));
            }
            Ok((name == "S2A_X").then(meta))
        }

        async fn query(&self, _: &str, _: usize) -> Result<Vec<ProductMeta>, FsError> {
            Ok(Vec::new())
        }
    }

    #[tokio::test]
    async fn names_resolved_once_resolve_again_with_the_catalogue_down() {
        let dir = tempfile::tempdir().unwrap();
        let args = crate::cli::Cli::parse_from([
            "eodata-mount",
            "/mnt",
            "--cache-dir",
            dir.path().to_str().unwrap(),
        ])
        .mount;
        let r = OfflineResolver::new(Flaky(false.into()), &args);
        assert_eq!(r.resolve("S2A_X").await.unwrap(), Some(meta()));
        assert_eq!(r.resolve("other").await.unwrap(), None);
        r.inner.0.store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(r.resolve("S2A_X").await.unwrap(), Some(meta()));
        assert!(
            r.resolve("other").await.is_err(),
            "never resolved: the error stands"
        );
        // A new mount on the same dir.
        let r2 = OfflineResolver::new(Flaky(true.into()), &args);
        assert_eq!(r2.resolve("S2A_X").await.unwrap(), Some(meta()));
    }
}
