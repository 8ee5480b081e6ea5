//! The SAFE zip: member paths of a product ([`layout`]) and the bytes of its zip.
//!
//! A product is a real zip with a SAFE-like tree: directory entries, small XMLs
//! (manifest, product and tile metadata, QI reports), the stored GeoTIFF when asked for, and one
//! stored incompressible filler last, sized so the whole zip lands on the requested size (zip64
//! only when the filler needs it). The filler may be split into several equal band files
//! ([`filler_members`]), as a real product's `IMG_DATA` holds a dozen bands. Timestamps and filler come from the product, so the bytes are
//! deterministic.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{Seek, Write};
use std::path::Path;

use anyhow::Result;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipWriter};

use super::geotiff::make_geotiff;
use super::index::CONTENT_DATE_MS;
use super::names::{iso, split_secs, ParsedName};
use super::rng::Xoshiro;
use super::{ProductSpec, CHUNK};

/// Stored zip members above this need a zip64 header; below it we keep the classic format that
/// every reader knows (zip64 is used "only when needed").
const ZIP64_THRESHOLD: u64 = 0xFFFF_FFFF;

/// Member paths inside a product's zip (for tests that open a member through a mount).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// `<Name>/`
    pub top: String,
    pub manifest: String,
    pub mtd: String,
    pub granule: String,
    pub tile_mtd: String,
    pub qi: Vec<String>,
    /// The GeoTIFF band (present when generated with `geotiff`).
    pub tif: String,
    /// The incompressible filler, stored last.
    pub filler: String,
}

/// The member paths of product `name` (a Sentinel-2 L1C name).
pub fn layout(name: &str) -> Result<Layout> {
    let p = ParsedName::parse(name)?;
    let top = format!("{name}/");
    let granule = format!(
        "{top}GRANULE/L1C_T{}_A{:06}_{}/",
        p.tile,
        p.absolute_orbit(),
        p.sensing_str
    );
    let band =
        |b: &str, ext: &str| format!("{granule}IMG_DATA/T{}_{}_{b}.{ext}", p.tile, p.sensing_str);
    Ok(Layout {
        manifest: format!("{top}manifest.safe"),
        mtd: format!("{top}MTD_MSIL1C.xml"),
        tile_mtd: format!("{granule}MTD_TL.xml"),
        qi: vec![
            format!("{granule}QI_DATA/FORMAT_CORRECTNESS.xml"),
            format!("{granule}QI_DATA/GENERAL_QUALITY.xml"),
        ],
        tif: band("B01", "tif"),
        filler: band("B02", "dat"),
        granule,
        top,
    })
}
/// The filler's members when split into `bands` files: [`Layout::filler`] (band B02) alone for
/// one, else bands B02, B03, ... in `IMG_DATA` (at most [`super::MAX_BANDS`]).
pub fn filler_members(l: &Layout, bands: usize) -> Vec<String> {
    const NAMES: [&str; super::MAX_BANDS] = [
        "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12",
    ];
    let stem = l.filler.strip_suffix("B02.dat").unwrap_or(&l.filler);
    NAMES
        .iter()
        .take(bands.clamp(1, super::MAX_BANDS))
        .map(|b| format!("{stem}{b}.dat"))
        .collect()
}

/// Writes the zip of one product. Small XMLs and the stored GeoTIFF come first, the
/// stored filler last, sized so that the whole zip lands on `spec.size`.
pub(super) fn write_product(
    path: &Path,
    spec: &ProductSpec,
    seed: u64,
    geotiff: bool,
    bands: usize,
) -> Result<()> {
    let p = ParsedName::parse(&spec.name)?;
    let l = layout(&spec.name)?;
    let fillers = filler_members(&l, bands);
    let tif = if geotiff {
        Some(make_geotiff(&p, seed)?)
    } else {
        None
    };

    let file = File::create(path)?;
    // A second handle on the same open file shares its offset: it tells where the writer is.
    let mut position = file.try_clone()?;
    let mut zip = ZipWriter::new(file);
    let (y, mo, d, h, mi, s) = split_secs(p.generation);
    // Fixed timestamps (the product's generation time) keep the bytes deterministic.
    let time =
        DateTime::from_date_and_time(y as u16, mo as u8, d as u8, h as u8, mi as u8, s as u8)
            .map_err(|e| anyhow::anyhow!("zip timestamp for {}: {e}", spec.name))?;
    // Every member stored, as the real zipper serves its zips ("zero compression",
    // docs/protocol.md): a member's bytes sit in the zip as they are in the product.
    let stored = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Stored)
        .last_modified_time(time);

    // Directory entries too, as archivers write them: some readers list folders only from these.
    let dirs = [
        l.top.clone(),
        format!("{}GRANULE/", l.top),
        l.granule.clone(),
        format!("{}IMG_DATA/", l.granule),
        format!("{}QI_DATA/", l.granule),
    ];
    let mut members: Vec<&str> = Vec::new();
    for dir in &dirs {
        zip.add_directory(dir.as_str(), stored)?;
        members.push(dir);
    }
    let texts = [
        (&l.manifest, manifest_xml(spec, &l, &fillers)),
        (&l.mtd, mtd_xml(spec, &p)),
        (&l.tile_mtd, tile_mtd_xml(&p)),
        (&l.qi[0], qi_xml(spec, "FORMAT_CORRECTNESS")),
        (&l.qi[1], qi_xml(spec, "GENERAL_QUALITY")),
    ];
    for (name, text) in &texts {
        zip.start_file(name.as_str(), stored)?;
        zip.write_all(text.as_bytes())?;
        members.push(name);
    }
    if let Some(tif) = &tif {
        zip.start_file(l.tif.as_str(), stored)?;
        zip.write_all(tif)?;
        members.push(&l.tif);
    }
    members.extend(fillers.iter().map(String::as_str));

    // Bytes still to come besides the filler's data: its local headers (with room for a zip64
    // extra), then the central directory (46 bytes + name per member, plus room for zip64
    // extras) and the end records.
    let headers: u64 = fillers.iter().map(|f| 30 + f.len() as u64 + 20).sum();
    let after_header = position.stream_position()? + headers;
    let central: u64 = members
        .iter()
        .map(|m| 46 + m.len() as u64 + 28)
        .sum::<u64>()
        + 22
        + 76;
    let filler_len = spec.size.saturating_sub(after_header + central);
    // Equal bands; the few bytes of the division's remainder are left out (within tolerance).
    let band_len = filler_len / fillers.len() as u64;
    let large = band_len >= ZIP64_THRESHOLD;
    // One stream of random bytes across the bands: the one-filler product is unchanged.
    let mut rng = Xoshiro::new(seed);
    let mut buf = vec![0u8; CHUNK];
    for filler in &fillers {
        zip.start_file(filler.as_str(), stored.large_file(large))?;
        let mut left = band_len;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            rng.fill(&mut buf[..n]);
            zip.write_all(&buf[..n])?;
            left -= n as u64;
        }
    }
    zip.finish()?.sync_data().ok();
    Ok(())
}
fn manifest_xml(spec: &ProductSpec, l: &Layout, fillers: &[String]) -> String {
    let mut objects = String::new();
    let listed = [&l.mtd, &l.tile_mtd, &l.tif].into_iter().chain(fillers);
    for (i, m) in listed.enumerate() {
        let href = m.strip_prefix(&l.top).unwrap_or(m);
        let _ = writeln!(
            objects,
            "    <dataObject ID=\"obj_{i}\"><byteStream mimeType=\"application/octet-stream\">\
             <fileLocation locatorType=\"URL\" href=\"./{href}\"/></byteStream></dataObject>"
        );
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <xfdu:XFDU xmlns:xfdu=\"urn:ccsds:schema:xfdu:1\" version=\"esa/safe/sentinel/1.1/sentinel-2/msi/archive_l1c_user_product\">\n\
         <!-- generated by fake-creodias for {name} ({id}) -->\n\
         <dataObjectSection>\n{objects}</dataObjectSection>\n</xfdu:XFDU>\n",
        name = spec.name,
        id = spec.id
    )
}

fn mtd_xml(spec: &ProductSpec, p: &ParsedName) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <n1:Level-1C_User_Product xmlns:n1=\"https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-1C.xsd\">\n\
         <n1:General_Info><Product_Info>\n\
         <PRODUCT_START_TIME>{start}</PRODUCT_START_TIME>\n\
         <PRODUCT_STOP_TIME>{start}</PRODUCT_STOP_TIME>\n\
         <PRODUCT_URI>{name}</PRODUCT_URI>\n\
         <PROCESSING_LEVEL>Level-1C</PROCESSING_LEVEL>\n\
         <PRODUCT_TYPE>S2MSI1C</PRODUCT_TYPE>\n\
         <GENERATION_TIME>{gen}</GENERATION_TIME>\n\
         <Datatake><SPACECRAFT_NAME>Sentinel-{sat}</SPACECRAFT_NAME></Datatake>\n\
         </Product_Info></n1:General_Info>\n</n1:Level-1C_User_Product>\n",
        start = iso(p.sensing, CONTENT_DATE_MS),
        gen = iso(p.generation, 0),
        name = spec.name,
        sat = &p.mission[1..],
    )
}

fn tile_mtd_xml(p: &ParsedName) -> String {
    let (ulx, uly, _) = p.utm_box();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <n1:Level-1C_Tile_ID xmlns:n1=\"https://psd-14.sentinel2.eo.esa.int/PSD/S2_PDI_Level-1C_Tile_Metadata.xsd\">\n\
         <n1:Geometric_Info><Tile_Geocoding>\n\
         <HORIZONTAL_CS_CODE>EPSG:{epsg}</HORIZONTAL_CS_CODE>\n\
         <Geoposition resolution=\"60\"><ULX>{ulx}</ULX><ULY>{uly}</ULY></Geoposition>\n\
         </Tile_Geocoding></n1:Geometric_Info>\n</n1:Level-1C_Tile_ID>\n",
        epsg = p.epsg()
    )
}

fn qi_xml(spec: &ProductSpec, check: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <Earth_Explorer_File><Data_Block><report><checkList>\n\
         <parentID>{name}</parentID><name>{check}</name><status>PASSED</status>\n\
         </checkList></report></Data_Block></Earth_Explorer_File>\n",
        name = spec.name
    )
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::super::generate;
    use super::super::testing::*;
    use super::*;

    #[test]
    fn sizes_from_tiny_to_tens_of_mib() {
        let dir = TempDir::new("sizes");
        for size in [0, 100 * 1024, MIB + 12345, 40 * MIB] {
            let o = opts(dir.0.join(size.to_string()), 1, size, false);
            let len = generate(&o).unwrap()[0].content_length;
            let minimum = 8 * 1024;
            assert!(
                len.abs_diff(size) <= TOLERANCE || (size < minimum && len < minimum),
                "{size}: {len}"
            );
        }
    }
    #[test]
    fn unzip_and_python_accept_the_zip() {
        let dir = TempDir::new("readers");
        let o = opts(dir.0.join("p"), 1, MIB, have("gdal_translate"));
        let e = &generate(&o).unwrap()[0];
        let path = o.out.join(e.file.as_ref().unwrap());
        if have("unzip") || Command::new("unzip").arg("-v").output().is_ok() {
            let out = Command::new("unzip").arg("-t").arg(&path).output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stdout)
            );
        } else {
            eprintln!("NOTE: unzip absent, skipped");
        }
        let script =
            "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); assert z.testzip() is None";
        match Command::new("python3")
            .args(["-c", script])
            .arg(&path)
            .output()
        {
            Ok(out) => assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(_) => eprintln!("NOTE: python3 absent, skipped"),
        }
    }
    #[test]
    fn the_filler_splits_into_equal_bands_and_the_zip_keeps_its_size() {
        let dir = TempDir::new("bands");
        let mut o = opts(dir.0.join("p"), 1, 8 * MIB, false);
        o.bands = 8;
        let e = &generate(&o).unwrap()[0];
        assert!(
            e.content_length.abs_diff(o.size) <= TOLERANCE,
            "{}",
            e.content_length
        );
        let path = o.out.join(e.file.as_ref().unwrap());
        let mut zip = zip::ZipArchive::new(File::open(&path).unwrap()).unwrap();
        let l = layout(&e.name).unwrap();
        let bands = filler_members(&l, 8);
        assert_eq!(bands.len(), 8);
        assert_eq!(bands[0], l.filler);
        assert!(bands[7].ends_with("_B8A.dat"), "{bands:?}");
        let sizes: Vec<u64> = bands
            .iter()
            .map(|b| zip.by_name(b).unwrap().size())
            .collect();
        assert!(sizes[0] > 900 * 1024, "{sizes:?}");
        assert!(sizes.iter().all(|s| *s == sizes[0]), "{sizes:?}");
        // Different bytes in each band (one random stream across them).
        let mut first = Vec::new();
        std::io::Read::read_to_end(&mut zip.by_name(&bands[0]).unwrap(), &mut first).unwrap();
        let mut second = Vec::new();
        std::io::Read::read_to_end(&mut zip.by_name(&bands[1]).unwrap(), &mut second).unwrap();
        assert_ne!(first, second);
        let mut manifest = String::new();
        std::io::Read::read_to_string(&mut zip.by_name(&l.manifest).unwrap(), &mut manifest)
            .unwrap();
        assert!(manifest.contains("_B8A.dat"), "{manifest}");
        o.bands = 0;
        assert!(generate(&o).is_err(), "0 bands");
        o.bands = 13;
        assert!(generate(&o).is_err(), "13 bands");
    }
    /// Zip64 is used only when a member passes 4 GiB; 4.1 GiB of disk: run by hand.
    #[test]
    #[ignore = "writes 4.1 GiB"]
    fn zip64_when_needed() {
        let dir = TempDir::new("zip64");
        let o = opts(dir.0.join("p"), 1, (4 << 30) + 100 * MIB, false);
        let e = &generate(&o).unwrap()[0];
        assert!(e.content_length.abs_diff(o.size) <= TOLERANCE);
        let path = o.out.join(e.file.as_ref().unwrap());
        let mut zip = zip::ZipArchive::new(File::open(&path).unwrap()).unwrap();
        let l = layout(&e.name).unwrap();
        assert!(zip.by_name(&l.filler).unwrap().size() > ZIP64_THRESHOLD);
        let out = Command::new("unzip").arg("-t").arg(&path).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
