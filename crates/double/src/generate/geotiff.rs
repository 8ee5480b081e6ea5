//! The GDAL part: a real GeoTIFF band, made by `gdal_translate`, for the product's zip.
//!
//! Readers of the mount open bands with GDAL (`/vsizip/`), so the band must be a genuine
//! georeferenced raster of the tile, not bytes that merely look like one; shelling out to
//! `gdal_translate` gives exactly what GDAL writes without linking GDAL into the double. It is
//! optional (`geotiff: false` / `--no-geotiff`) for machines without GDAL.

use std::fs;
use std::io;
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::ensure::unique_suffix;
use super::names::ParsedName;
use super::rng::Xoshiro;
use super::write_file;

/// Side of the GeoTIFF band: big enough to be a real raster with several strips, small enough
/// that the zip stays a few MiB when a test asks for that.
const TIF_SIDE: usize = 512;

/// A real GeoTIFF of the tile (UInt16, DEFLATE, UTM) made by `gdal_translate` from a raw ENVI
/// image of deterministic pixels: a crosshatch pattern plus noise from `seed`.
pub(super) fn make_geotiff(p: &ParsedName, seed: u64) -> Result<Vec<u8>> {
    let dir = std::env::temp_dir().join(format!("fake-creodias-tif-{}", unique_suffix()));
    fs::create_dir_all(&dir)?;
    let result = (|| {
        let mut rng = Xoshiro::new(seed ^ 0x71F);
        let mut raw = Vec::with_capacity(TIF_SIDE * TIF_SIDE * 2);
        for y in 0..TIF_SIDE {
            for x in 0..TIF_SIDE {
                let v = 800 + ((x ^ y) * 7 % 1024) as u16 + (rng.next_u64() % 128) as u16;
                raw.extend_from_slice(&v.to_le_bytes());
            }
        }
        write_file(&dir.join("band.img"), &raw)?;
        let hdr = format!(
            "ENVI\nsamples = {TIF_SIDE}\nlines = {TIF_SIDE}\nbands = 1\nheader offset = 0\n\
             file type = ENVI Standard\ndata type = 12\ninterleave = bsq\nbyte order = 0\n"
        );
        write_file(&dir.join("band.hdr"), hdr.as_bytes())?;
        let (ulx, uly, side) = p.utm_box();
        let out = dir.join("band.tif");
        let status = Command::new("gdal_translate")
            .args(["-q", "-of", "GTiff", "-co", "COMPRESS=DEFLATE", "-a_srs"])
            .arg(format!("EPSG:{}", p.epsg()))
            .arg("-a_ullr")
            .args([ulx, uly, ulx + side, uly - side].map(|v| v.to_string()))
            .arg(dir.join("band.img"))
            .arg(&out)
            .status();
        match status {
            Err(e) if e.kind() == io::ErrorKind::NotFound => bail!(
                "gdal_translate not found: install GDAL (apt-get install gdal-bin), \
                 or generate without the GeoTIFF (--no-geotiff / geotiff: false)"
            ),
            Err(e) => return Err(e).context("running gdal_translate"),
            Ok(s) if !s.success() => bail!("gdal_translate failed ({s}) making the test GeoTIFF"),
            Ok(_) => {}
        }
        fs::read(&out).context("reading gdal_translate's output")
    })();
    let _ = fs::remove_dir_all(&dir);
    result
}
#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::io::Read;

    use super::super::testing::*;
    use super::super::{generate, layout};
    use super::*;

    #[test]
    fn geotiff_is_real() {
        if !have("gdal_translate") || !have("gdalinfo") {
            eprintln!("NOTE: gdal_translate/gdalinfo absent: geotiff_is_real skipped (apt-get install gdal-bin)");
            return;
        }
        let dir = TempDir::new("tif");
        let o = opts(dir.0.join("p"), 1, 2 * MIB, true);
        let e = &generate(&o).unwrap()[0];
        let zip_path = o.out.join(e.file.as_ref().unwrap());
        let l = layout(&e.name).unwrap();
        let mut zip = zip::ZipArchive::new(File::open(&zip_path).unwrap()).unwrap();
        let mut tif = Vec::new();
        zip.by_name(&l.tif).unwrap().read_to_end(&mut tif).unwrap();
        let tif_path = dir.0.join("b01.tif");
        fs::write(&tif_path, &tif).unwrap();
        for target in [
            tif_path.display().to_string(),
            format!("/vsizip/{}/{}", zip_path.display(), l.tif),
        ] {
            let out = Command::new("gdalinfo").arg(&target).output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "gdalinfo {target}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(text.contains("Driver: GTiff"), "{text}");
            assert!(text.contains("Size is 512, 512"), "{text}");
            assert!(text.contains("UTM zone 42S"), "{text}");
            assert!(text.contains("Type=UInt16"), "{text}");
        }
    }
}
