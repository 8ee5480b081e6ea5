//! Fixtures shared by the generator's tests: temp dirs, options, size tolerance, tool checks.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use super::ensure::unique_suffix;
use super::GenerateOptions;

pub(super) const MIB: u64 = 1 << 20;
/// The tolerance the double's users were promised for `size`.
pub(super) const TOLERANCE: u64 = 64 * 1024;

/// A fresh directory under the system temp dir, removed on drop.
pub(super) struct TempDir(pub(super) PathBuf);
impl TempDir {
    pub(super) fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("fake-creodias-test-{tag}-{}", unique_suffix()));
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub(super) fn opts(out: PathBuf, count: usize, size: u64, geotiff: bool) -> GenerateOptions {
    GenerateOptions {
        out,
        count,
        size,
        seed: 7,
        geotiff,
        catalogue_only: 0,
        same_day: 0,
        bands: 1,
    }
}

pub(super) fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok()
}
