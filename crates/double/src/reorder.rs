//! Zips whose bytes are not stable across requests: the `reorder_members` fault.
//!
//! Whether the real zipper builds byte-identical zips for every request of one product is not
//! known (docs/protocol.md, "Are a product's bytes stable"). A client that resumes a cut
//! stream by skipping bytes, or splices two connections, must notice when they are not. This
//! module makes the second kind of zip for a product: the same members, the same total size,
//! in reverse order, so nearly every offset past the first member holds other bytes. The
//! zipper serves it on every other GET.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use zip::{ZipArchive, ZipWriter};

/// The reordered twin of the zip at `path`, made beside it on first use (temp file renamed
/// into place, so concurrent requests see a whole file or none).
pub(crate) fn reordered(path: &Path) -> Result<PathBuf> {
    let mut name = path.as_os_str().to_owned();
    name.push(".reordered");
    let twin = PathBuf::from(name);
    if twin.exists() {
        return Ok(twin);
    }
    let mut archive =
        ZipArchive::new(File::open(path).with_context(|| path.display().to_string())?)?;
    let tmp = twin.with_extension(format!("tmp{}", std::process::id()));
    {
        let mut out = ZipWriter::new(File::create(&tmp)?);
        for i in (0..archive.len()).rev() {
            out.raw_copy_file(archive.by_index_raw(i)?)?;
        }
        out.finish()?;
    }
    let (a, b) = (
        std::fs::metadata(path)?.len(),
        std::fs::metadata(&tmp)?.len(),
    );
    ensure!(
        a == b,
        "the reordered zip of {} has {b} bytes, not {a}",
        path.display()
    );
    std::fs::rename(&tmp, &twin)?;
    Ok(twin)
}
