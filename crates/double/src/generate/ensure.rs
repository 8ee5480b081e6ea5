//! [`ensure`]: reuse a generated directory, or generate it once, safely for concurrent callers.
//!
//! Many test binaries (threads and processes) ask for the same products at once. A stamp of the
//! options, written last, says whether a directory can be reused; a lock file avoids duplicate
//! work; generation goes to a temp dir that is renamed into place, so no reader ever sees a
//! half-written directory, and a directory not made by the generator is never replaced.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{generate, GenerateOptions};

/// Bumped whenever the bytes generated for given options change, so that [`ensure`] regenerates
/// directories stamped by an older generator instead of serving stale products.
const GENERATOR_VERSION: u32 = 3;
/// Written last into a generated directory: the options it was made with (see [`ensure`]).
pub(super) const STAMP_FILE: &str = ".generate-stamp.json";
/// How long [`ensure`] waits for another generator holding the lock before generating anyway
/// (the temp-dir-and-rename keeps that correct; the lock only avoids duplicate work).
const LOCK_WAIT: Duration = Duration::from_secs(600);

/// Returns `opts.out`, generating it first unless it already holds a directory generated with the
/// same options. Safe against concurrent callers (threads and processes): a lock file avoids
/// duplicate work, and generation goes to a temp dir beside `out` that is renamed into place, so
/// a reader never sees a half-written directory.
pub fn ensure(opts: &GenerateOptions) -> Result<PathBuf> {
    let out = opts.out.clone();
    if stamp_matches(opts) {
        return Ok(out);
    }
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let base = out
        .file_name()
        .context("--out has no file name")?
        .to_string_lossy()
        .into_owned();
    let _lock = Lock::acquire(&parent.join(format!("{base}.lock")), || stamp_matches(opts))?;
    if stamp_matches(opts) {
        return Ok(out);
    }
    remove_dead_siblings(parent, &base);
    let tmp = parent.join(format!("{base}.tmp-{}", unique_suffix()));
    let result = generate(&GenerateOptions {
        out: tmp.clone(),
        ..opts.clone()
    })
    .and_then(|_| swap_into_place(&tmp, opts, parent, &base));
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result.map(|()| out)
}
pub(super) fn stamp_text(opts: &GenerateOptions) -> String {
    let mut stamp = serde_json::json!({
        "generator": GENERATOR_VERSION,
        "count": opts.count,
        "size": opts.size,
        "seed": opts.seed,
        "geotiff": opts.geotiff,
        "catalogue_only": opts.catalogue_only,
    });
    // Only when asked for, so that directories stamped before the option existed stay valid.
    if opts.same_day > 0 {
        stamp["same_day"] = opts.same_day.into();
    }
    // Only when split: one filler makes the same bytes as before the option existed, so
    // directories stamped then stay valid.
    if opts.bands != 1 {
        stamp["bands"] = opts.bands.into();
    }
    stamp.to_string()
}

fn stamp_matches_in(dir: &Path, opts: &GenerateOptions) -> bool {
    dir.join("index.json").is_file()
        && fs::read_to_string(dir.join(STAMP_FILE)).is_ok_and(|s| s == stamp_text(opts))
}

pub(super) fn stamp_matches(opts: &GenerateOptions) -> bool {
    stamp_matches_in(&opts.out, opts)
}

/// Renames the finished `tmp` to `opts.out`. If `out` exists: when a concurrent caller already
/// put the same products there, drop ours; otherwise move the stale one aside and retry.
fn swap_into_place(tmp: &Path, opts: &GenerateOptions, parent: &Path, base: &str) -> Result<()> {
    for _ in 0..10 {
        match fs::rename(tmp, &opts.out) {
            Ok(()) => return Ok(()),
            Err(_) if stamp_matches(opts) => {
                let _ = fs::remove_dir_all(tmp);
                return Ok(());
            }
            Err(_) if opts.out.exists() => {
                if !replaceable(&opts.out) {
                    bail!(
                        "{} exists and was not made by the generator (no index.json): \
                         remove it or choose another --out",
                        opts.out.display()
                    );
                }
                let old = parent.join(format!("{base}.old-{}", unique_suffix()));
                if fs::rename(&opts.out, &old).is_ok() {
                    let _ = fs::remove_dir_all(&old);
                }
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("renaming {} to {}", tmp.display(), opts.out.display())
                })
            }
        }
    }
    bail!(
        "could not move {} into place at {}",
        tmp.display(),
        opts.out.display()
    )
}

/// Only a directory that looks generated (stamp or index.json) or is empty may be replaced:
/// a mistaken `out` must never cost someone their files.
fn replaceable(dir: &Path) -> bool {
    dir.join(STAMP_FILE).exists()
        || dir.join("index.json").exists()
        || fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none())
}

/// `<pid>-<counter>-<nanos>`: unique across threads and processes.
pub(super) fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes `<base>.tmp-<pid>-…` and `<base>.old-<pid>-…` left by processes that died.
fn remove_dead_siblings(parent: &Path, base: &str) {
    let Ok(dir) = fs::read_dir(parent) else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(base) else {
            continue;
        };
        let Some(rest) = rest
            .strip_prefix(".tmp-")
            .or_else(|| rest.strip_prefix(".old-"))
        else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| !pid_alive(p)) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// An exclusive lock file holding the owner's pid; removed on drop (also on panic).
struct Lock(Option<PathBuf>);

impl Lock {
    /// Waits for the lock, or until `done()` (another holder produced what we need), or until
    /// [`LOCK_WAIT`] passed; a lock whose owner process is gone is broken.
    fn acquire(path: &Path, done: impl Fn() -> bool) -> Result<Lock> {
        let started = Instant::now();
        loop {
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
            {
                Ok(mut f) => {
                    let _ = write!(f, "{}", std::process::id());
                    return Ok(Lock(Some(path.to_path_buf())));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if done() || started.elapsed() > LOCK_WAIT {
                        return Ok(Lock(None));
                    }
                    let owner = fs::read_to_string(path)
                        .ok()
                        .and_then(|s| s.trim().parse().ok());
                    if owner.is_some_and(|pid| !pid_alive(pid)) {
                        let _ = fs::remove_file(path);
                        continue;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
            }
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}
#[cfg(test)]
mod tests {
    use super::super::read_index;
    use super::super::testing::*;
    use super::*;

    #[test]
    fn ensure_is_idempotent_and_safe_for_concurrent_callers() {
        let dir = TempDir::new("ensure");
        let o = opts(dir.0.join("shared"), 2, MIB, false);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let o = o.clone();
                std::thread::spawn(move || ensure(&o).unwrap())
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), o.out);
        }
        let index = read_index(&o.out).unwrap();
        let stamp = o.out.join(STAMP_FILE);
        let before = fs::metadata(&stamp).unwrap().modified().unwrap();
        ensure(&o).unwrap();
        assert_eq!(
            fs::metadata(&stamp).unwrap().modified().unwrap(),
            before,
            "not regenerated"
        );
        // Other options replace the directory.
        let mut bigger = o.clone();
        bigger.count = 3;
        ensure(&bigger).unwrap();
        assert_eq!(read_index(&o.out).unwrap().len(), 3);
        assert_eq!(read_index(&o.out).unwrap()[..2], index[..]);
        let leftovers: Vec<_> = fs::read_dir(&dir.0)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("shared")]);
    }
}
