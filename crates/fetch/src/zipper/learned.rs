//! What the client learns about the download service beyond one product, so that what the
//! real zipper does (ignore Range: docs/protocol.md) costs one request per product, not three:
//! - [`HostMemory`]: whether the service's host honours Range, learned from the first product
//!   and remembered in a file (the disk cache's `ranges.json`), so later products and later
//!   mounts ask for nothing they know will be refused;
//! - [`Parked`]: an answer that came with the whole product (200) while the client only asked
//!   about it, kept for a few seconds for the stream that will want exactly those bytes, instead
//!   of being dropped and asked for again.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::request::Exchange;
use crate::RangeSupport;

/// How long a parked answer waits for its stream: the layer above opens the stream right after
/// it asked for the product's info (milliseconds); a parked answer holds a connection of the
/// budget and the server's send buffer, so it must not linger.
pub const PARK_FOR: Duration = Duration::from_secs(10);

/// Whether the download host honours Range, for every product of it. See the module doc.
pub(crate) struct HostMemory {
    host: String,
    learned: Mutex<Option<RangeSupport>>,
    file: Mutex<Option<PathBuf>>,
}

impl HostMemory {
    pub(crate) fn new(host: String) -> Self {
        HostMemory {
            host,
            learned: Mutex::new(None),
            file: Mutex::new(None),
        }
    }

    /// Reads and from now on keeps what is learned in `file` (JSON: host -> "honoured" or
    /// "ignored"); several mounts may share it (read, add, rename).
    pub(crate) fn remember_in(&self, file: PathBuf) {
        let known = read(&file).get(&self.host).and_then(|v| match v.as_str() {
            Some("ignored") => Some(RangeSupport::Ignored),
            Some("honoured") => Some(RangeSupport::Honoured),
            _ => None,
        });
        if let Some(r) = known {
            tracing::debug!(host = %self.host, ?r, "Range support of the download host, as remembered");
            *lock(&self.learned) = Some(r);
        }
        *lock(&self.file) = Some(file);
    }

    pub(crate) fn ranges(&self) -> Option<RangeSupport> {
        *lock(&self.learned)
    }

    /// Records what an answer showed; says so at info the first time (or when it changes).
    pub(crate) fn learn(&self, ranges: RangeSupport) {
        {
            let mut l = lock(&self.learned);
            if *l == Some(ranges) {
                return;
            }
            *l = Some(ranges);
        }
        match ranges {
            RangeSupport::Ignored => {
                tracing::info!(host = %self.host, "the download service ignores Range: each product streams whole once, into the disk cache")
            }
            RangeSupport::Honoured => {
                tracing::info!(host = %self.host, "the download service honours Range: reads fetch only the bytes asked for")
            }
        }
        let Some(file) = lock(&self.file).clone() else {
            return;
        };
        let mut all = read(&file);
        let word = match ranges {
            RangeSupport::Ignored => "ignored",
            RangeSupport::Honoured => "honoured",
        };
        all.insert(self.host.clone(), serde_json::Value::from(word));
        let tmp = file.with_extension(format!("tmp{}", std::process::id()));
        let text = serde_json::Value::Object(all).to_string();
        if let Err(e) = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, &file)) {
            tracing::debug!(file = %file.display(), error = %e, "cannot remember Range support");
            let _ = std::fs::remove_file(&tmp);
        }
    }
}

fn read(file: &std::path::Path) -> serde_json::Map<String, serde_json::Value> {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whole-product answers waiting for their stream. See the module doc.
#[derive(Default)]
pub(crate) struct Parked {
    map: Mutex<HashMap<String, (Instant, Exchange)>>,
}

impl Parked {
    /// Keeps `ex` (a 200 with the product from byte 0) for [`PARK_FOR`].
    pub(crate) fn park(self: &Arc<Self>, id: &str, ex: Exchange) {
        lock(&self.map).insert(id.to_string(), (Instant::now(), ex));
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(PARK_FOR).await;
            if let Some(me) = me.upgrade() {
                lock(&me.map).retain(|_, (at, _)| at.elapsed() < PARK_FOR);
            }
        });
    }

    /// The parked answer for `id`, if one is fresh.
    pub(crate) fn take(&self, id: &str) -> Option<Exchange> {
        let (at, ex) = lock(&self.map).remove(id)?;
        (at.elapsed() < PARK_FOR).then_some(ex)
    }
}
