//! `eodata-mount cache list|clear`: the disk cache seen and emptied from the command line.
//!
//! Safe while mounts run: a mount serves only blocks it verifies, and fetches again whatever
//! it no longer finds (see `eodata_fetch::disk`). Names come from the cache's offline memory of
//! the catalogue (`catalogue.json`), so no request is made.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use eodata_fetch::disk::{DiskBudget, DiskStore, KEEP_FREE};

use crate::cache_dir;
use crate::cli::{CacheAction, CacheArgs};

pub fn run(args: &CacheArgs) -> anyhow::Result<ExitCode> {
    let Some(dir) = args.cache_dir.clone().or_else(cache_dir::default_dir) else {
        bail!("no disk cache: neither XDG_CACHE_HOME nor HOME is set; give --cache-dir DIR");
    };
    if !dir.is_dir() {
        bail!(
            "{} is not a directory: there is no disk cache there",
            dir.display()
        );
    }
    let store = DiskStore::open(&dir, DiskBudget::KeepFree(KEEP_FREE))
        .with_context(|| format!("cannot open the disk cache {}", dir.display()))?;
    let names = names(&dir);
    match &args.action {
        CacheAction::List => {
            let mut out = String::new();
            let (mut total, mut count) = (0u64, 0usize);
            for p in store.products() {
                let name = names.get(&p.id).map(String::as_str).unwrap_or("-");
                let size = p.size.map_or("?".to_string(), mib);
                let state = if p.whole { "whole" } else { "partial" };
                out.push_str(&format!(
                    "{}  {} of {} MiB  {state}  {name}\n",
                    p.id,
                    mib(p.held),
                    size
                ));
                total += p.held;
                count += 1;
            }
            out.push_str(&format!(
                "{count} products, {} MiB in {}\n",
                mib(total),
                store.root().display()
            ));
            print!("{out}");
        }
        CacheAction::Clear { products } => {
            let held = store.products();
            let ids: Vec<String> = if products.is_empty() {
                held.iter().map(|p| p.id.clone()).collect()
            } else {
                products
                    .iter()
                    .map(|want| find(want, &held, &names))
                    .collect::<anyhow::Result<_>>()?
            };
            for id in &ids {
                store.remove_product(id);
            }
            eprintln!(
                "eodata-mount: dropped {} products from {}",
                ids.len(),
                dir.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn mib(n: u64) -> String {
    format!("{:.1}", n as f64 / (1u64 << 20) as f64)
}

/// Product id -> Name, from the offline catalogue memory.
fn names(dir: &Path) -> HashMap<String, String> {
    let file: PathBuf = dir.join("catalogue.json");
    let v: serde_json::Value = std::fs::read_to_string(file)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    v.as_object()
        .into_iter()
        .flat_map(|m| m.values())
        .filter_map(|e| {
            Some((
                e["id"].as_str()?.to_string(),
                e["name"].as_str()?.to_string(),
            ))
        })
        .collect()
}

/// The id of a product named by UUID, Name, Name without `.SAFE`, or `<Name>.zip`, or by an
/// `/eodata/...` path ending in one of these.
fn find(
    want: &str,
    held: &[eodata_fetch::disk::CachedProduct],
    names: &HashMap<String, String>,
) -> anyhow::Result<String> {
    let key = eodata_catalogue::product_of(want);
    let bare = key.trim_end_matches(".zip").trim_end_matches(".SAFE");
    let hit = held.iter().find(|p| {
        p.id.eq_ignore_ascii_case(key.trim_end_matches(".zip"))
            || names
                .get(&p.id)
                .is_some_and(|n| n.trim_end_matches(".SAFE") == bare)
    });
    match hit {
        Some(p) => Ok(p.id.clone()),
        None => bail!("{want} is not in the disk cache (see eodata-mount cache list)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_are_found_by_uuid_name_or_eodata_path() {
        let id = "db0c8ef3-8ec0-5185-a537-812dad3c58f8";
        let name = "S2A_MSIL1C_20180927T051221_N0206_R033_T42FXL_20180927T073143.SAFE";
        let held = [eodata_fetch::disk::CachedProduct {
            id: id.into(),
            size: None,
            held: 0,
            whole: false,
        }];
        let names = HashMap::from([(id.to_string(), name.to_string())]);
        for want in [
            id.to_string(),
            format!("{}.zip", id.to_uppercase()),
            name.to_string(),
            format!("{name}.zip"),
            name.trim_end_matches(".SAFE").to_string(),
            format!("/eodata/Sentinel-2/MSI/L1C/2018/09/27/{name}"),
            format!("/mnt/eodata/Sentinel-2/MSI/L1C/2018/09/27/{name}.zip"),
        ] {
            assert_eq!(find(&want, &held, &names).unwrap(), id, "{want}");
        }
        assert!(find(
            "/eodata/Sentinel-2/MSI/L1C/2018/09/27/S2B_OTHER.SAFE",
            &held,
            &names
        )
        .is_err());
    }
}
