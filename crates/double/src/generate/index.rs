//! The `index.json` contract with the double's server, and the entry written for each product.
//!
//! The double's catalogue and zipper read `{"products":[{OData fields..., "file": "<Id>.zip"}]}`
//! ([`IndexEntry`], spelled as the real catalogue spells its fields); [`index_entry`] fills an
//! entry from a product's name (dates, S3 path, footprint) and, for products with a zip, its
//! length and MD5 ([`md5_file`]). Kept apart from the bytes so the contract reads in one place.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

use super::names::{civil_from_days, iso, ParsedName};
use super::{ProductSpec, CHUNK};

/// Real catalogue `ContentDate`s carry milliseconds the name does not: a fixed, plausible value.
pub(super) const CONTENT_DATE_MS: u32 = 24;
/// `OriginDate` lags the product's generation time (the name's last timestamp); this lag makes
/// the tutorial product's OriginDate 2018-09-27T09:34:59.000Z.
const ORIGIN_LAG_S: i64 = 2 * 3600 + 3 * 60 + 16;
/// `PublicationDate` (and `ModificationDate`, `ChecksumDate`) lag `OriginDate` by this much.
const PUBLICATION_LAG_S: i64 = 9 * 60 + 26;

/// `ContentDate` of an index entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContentDate {
    pub start: String,
    pub end: String,
}

/// One element of `Checksum`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Checksum {
    pub value: String,
    pub algorithm: String,
    pub checksum_date: String,
}

/// One product of `index.json`: the OData fields spelled as the real catalogue spells them, plus
/// `file` (the zip's name in the directory; absent for catalogue-only entries, whose `Checksum`
/// is empty and whose `ContentLength` is the spec size).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IndexEntry {
    pub id: String,
    pub name: String,
    pub content_type: String,
    pub content_length: u64,
    pub origin_date: String,
    pub publication_date: String,
    pub modification_date: String,
    pub online: bool,
    pub s3_path: String,
    pub content_date: ContentDate,
    pub footprint: String,
    pub checksum: Vec<Checksum>,
    pub collection: String,
    #[serde(rename = "file", default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct Index {
    pub(super) products: Vec<IndexEntry>,
}

/// Reads `<dir>/index.json`.
pub fn read_index(dir: &Path) -> Result<Vec<IndexEntry>> {
    let path = dir.join("index.json");
    let text = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let index: Index =
        serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok(index.products)
}

pub(super) fn index_entry(
    spec: &ProductSpec,
    length: u64,
    md5: Option<String>,
    file: Option<String>,
) -> Result<IndexEntry> {
    let p = ParsedName::parse(&spec.name)?;
    let origin = p.generation + ORIGIN_LAG_S;
    let publication = iso(origin + PUBLICATION_LAG_S, 0);
    let (y, m, d) = civil_from_days(p.sensing.div_euclid(86400));
    Ok(IndexEntry {
        id: spec.id.clone(),
        name: spec.name.clone(),
        content_type: "application/octet-stream".into(),
        content_length: length,
        origin_date: iso(origin, 0),
        publication_date: publication.clone(),
        modification_date: publication.clone(),
        online: spec.online,
        s3_path: format!(
            "/eodata/Sentinel-2/MSI/L1C/{y:04}/{m:02}/{d:02}/{}",
            spec.name
        ),
        content_date: ContentDate {
            start: iso(p.sensing, CONTENT_DATE_MS),
            end: iso(p.sensing, CONTENT_DATE_MS),
        },
        footprint: p.footprint(),
        checksum: md5
            .into_iter()
            .map(|value| Checksum {
                value,
                algorithm: "MD5".into(),
                checksum_date: publication.clone(),
            })
            .collect(),
        collection: "SENTINEL-2".into(),
        file,
    })
}
/// Length and MD5 (lower-case hex) of a file, read in [`CHUNK`]s.
pub(super) fn md5_file(path: &Path) -> Result<(u64, String)> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; CHUNK];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    let hex = hasher.finalize().iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    });
    Ok((len, hex))
}

#[cfg(test)]
mod tests {
    use std::io;

    use zip::CompressionMethod;

    use super::super::names::{days_from_civil, parse_compact};
    use super::super::testing::*;
    use super::super::{generate, layout, specs, TUTORIAL_NAME};
    use super::*;

    #[test]
    fn dates_and_paths_follow_the_name() {
        let e = index_entry(
            &specs(1, 0, 0)[0],
            5,
            Some("ab".into()),
            Some("x.zip".into()),
        )
        .unwrap();
        assert_eq!(e.origin_date, "2018-09-27T09:34:59.000Z");
        assert_eq!(e.content_date.start, "2018-09-27T05:12:21.024Z");
        assert_eq!(
            e.s3_path,
            format!("/eodata/Sentinel-2/MSI/L1C/2018/09/27/{TUTORIAL_NAME}")
        );
        assert!(
            e.footprint.starts_with("geography'SRID=4326;POLYGON (("),
            "{}",
            e.footprint
        );
        let l = layout(TUTORIAL_NAME).unwrap();
        assert_eq!(
            l.tif,
            format!(
                "{TUTORIAL_NAME}/GRANULE/L1C_T42FXL_A016999_20180927T051221/IMG_DATA/\
                 T42FXL_20180927T051221_B01.tif"
            )
        );
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
        assert_eq!(parse_compact("19700102T000001"), Some(86401));
    }

    #[test]
    fn generates_zips_matching_the_index() {
        let dir = TempDir::new("index");
        let mut o = opts(dir.0.join("p"), 2, 3 * MIB, false);
        o.catalogue_only = 25;
        let returned = generate(&o).unwrap();
        let entries = read_index(&o.out).unwrap();
        assert_eq!(returned, entries);
        assert_eq!(entries.len(), 27);
        // The raw JSON spells the fields as the catalogue does.
        let raw: serde_json::Value =
            serde_json::from_slice(&fs::read(o.out.join("index.json")).unwrap()).unwrap();
        let first = &raw["products"][0];
        for field in [
            "Id",
            "Name",
            "ContentType",
            "ContentLength",
            "OriginDate",
            "PublicationDate",
            "ModificationDate",
            "Online",
            "S3Path",
            "Footprint",
            "Collection",
            "file",
        ] {
            assert!(!first[field].is_null(), "missing {field}");
        }
        assert_eq!(first["Checksum"][0]["Algorithm"], "MD5");
        assert!(first["ContentDate"]["Start"].is_string());
        assert!(raw["products"][5].get("file").is_none());

        for e in &entries[..2] {
            let path = o.out.join(e.file.as_ref().unwrap());
            let (len, md5) = md5_file(&path).unwrap();
            assert_eq!(e.content_length, len);
            assert_eq!(e.checksum[0].value, md5);
            assert!(
                len.abs_diff(o.size) <= TOLERANCE,
                "size {len} vs {}",
                o.size
            );
            let mut zip = zip::ZipArchive::new(File::open(&path).unwrap()).unwrap();
            let l = layout(&e.name).unwrap();
            for m in [
                &l.top,
                &l.manifest,
                &l.mtd,
                &l.tile_mtd,
                &l.qi[0],
                &l.qi[1],
                &l.filler,
            ] {
                zip.by_name(m).unwrap_or_else(|err| panic!("{m}: {err}"));
            }
            assert!(zip.by_name(&l.tif).is_err(), "no GeoTIFF without geotiff");
            let mut filler = zip.by_name(&l.filler).unwrap();
            assert_eq!(filler.compression(), CompressionMethod::Stored);
            io::copy(&mut filler, &mut io::sink()).unwrap(); // checks the CRC
        }
        let offline = entries[2..].iter().filter(|e| !e.online).count();
        assert_eq!(offline, 2);
        assert!(entries[2..]
            .iter()
            .all(|e| e.file.is_none() && e.checksum.is_empty()));
    }
}
