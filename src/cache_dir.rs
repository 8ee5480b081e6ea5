//! `--cache-dir`: opening the persistent disk cache the mount's layers share, so mount.rs only
//! stacks them: the block store ([`DiskStore`]) under the memory cache, and the spool of
//! products whose server ignores Range, which goes into the same directory and hands every
//! block it streams to the store.

use std::sync::Arc;

use anyhow::{bail, Context};
use eodata_fetch::disk::{DiskBudget, DiskStore, KEEP_FREE};
use eodata_fetch::spool::{BlockSink, SpoolConfig};

use crate::cli::MountArgs;

/// The store of `--cache-dir`, with the budget of `--cache-dir-size`; `None` without one.
pub fn open_store(args: &MountArgs) -> anyhow::Result<Option<Arc<DiskStore>>> {
    let Some(dir) = &args.cache_dir else {
        return Ok(None);
    };
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

/// Where the spool of a no-Range product goes: into the cache dir (and its blocks into the
/// store) when there is one, else `$TMPDIR`.
pub fn spool_config(args: &MountArgs, store: &Option<Arc<DiskStore>>) -> SpoolConfig {
    SpoolConfig {
        dir: args.cache_dir.as_ref().map(|d| d.join("spool")),
        sink: store.clone().map(|s| s as Arc<dyn BlockSink>),
    }
}
