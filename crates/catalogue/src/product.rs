//! What the catalogue says about a product, and how it says it.
//!
//! [`Product`] is this crate's answer: plain Rust types, no OData. The `Wire*` types mirror the
//! JSON of the OData `Products` entity (fields listed in docs/protocol.md) and are converted here,
//! leniently: a date or checksum this client cannot read is dropped with a debug log rather than
//! failing the lookup, since the product can still be downloaded without it. Only a missing
//! `Id` or `Name` makes an entry unusable.

use std::time::SystemTime;

use serde::Deserialize;

use crate::date::parse_iso8601;

/// One product as the catalogue describes it. Products are immutable once published, which is
/// why lookups may be cached for long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    /// The UUID the zipper downloads by.
    pub id: String,
    /// E.g. `S2A_MSIL1C_20180927T051221_N0206_R033_T42FXL_20180927T073143.SAFE`.
    pub name: String,
    /// `ContentLength`, `None` when absent or 0. Only a hint: the download's own length is the
    /// truth (docs/protocol.md: the two may differ).
    pub size_hint: Option<u64>,
    pub origin_date: Option<SystemTime>,
    pub publication_date: Option<SystemTime>,
    pub modification_date: Option<SystemTime>,
    /// `ContentDate.Start`: when the sensor started acquiring.
    pub content_start: Option<SystemTime>,
    /// `ContentDate.End`.
    pub content_end: Option<SystemTime>,
    /// Whether the product can be downloaded now (not only from tape). `true` when the service
    /// does not say: CREODIAS keeps EODATA online and may omit the field.
    pub online: bool,
    /// The MD5 checksum from `Checksum`, lower-case hex, when listed.
    pub md5: Option<String>,
    /// `Footprint` as the service writes it, e.g. `geography'SRID=4326;POLYGON((...))'`.
    pub footprint: Option<String>,
    /// `GeoFootprint` (CDSE), a GeoJSON geometry, as compact JSON.
    pub geo_footprint: Option<String>,
    /// `S3Path`, e.g. `/eodata/Sentinel-2/MSI/L1C/2018/09/27/<name>`.
    pub s3_path: Option<String>,
}

impl Product {
    /// The footprint as plain WKT (`POLYGON ((lon lat, ...))`), without the OData wrapping.
    pub fn footprint_wkt(&self) -> Option<&str> {
        self.footprint.as_deref().map(crate::footprint::wkt)
    }

    /// The footprint as a GeoJSON geometry: the catalogue's `GeoFootprint`, else made from the
    /// WKT (see [`crate::footprint`]).
    pub fn footprint_geojson(&self) -> Option<String> {
        self.geo_footprint
            .clone()
            .or_else(|| crate::footprint::geojson_from_wkt(self.footprint_wkt()?))
    }
}

/// The JSON of one `Products` entity. Field names as the service spells them.
#[derive(Debug, Deserialize)]
pub(crate) struct WireProduct {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "ContentLength", default)]
    content_length: Option<serde_json::Value>,
    #[serde(rename = "OriginDate", default)]
    origin_date: Option<String>,
    #[serde(rename = "PublicationDate", default)]
    publication_date: Option<String>,
    #[serde(rename = "ModificationDate", default)]
    modification_date: Option<String>,
    #[serde(rename = "ContentDate", default)]
    content_date: Option<WireContentDate>,
    #[serde(rename = "Online", default)]
    online: Option<bool>,
    #[serde(rename = "Checksum", default)]
    checksum: Option<Vec<WireChecksum>>,
    #[serde(rename = "Footprint", default)]
    footprint: Option<String>,
    #[serde(rename = "S3Path", default)]
    s3_path: Option<String>,
    #[serde(rename = "GeoFootprint", default)]
    geo_footprint: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct WireContentDate {
    #[serde(rename = "Start", default)]
    start: Option<String>,
    #[serde(rename = "End", default)]
    end: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireChecksum {
    #[serde(rename = "Value", default)]
    value: Option<String>,
    #[serde(rename = "Algorithm", default)]
    algorithm: Option<String>,
}

/// A page of search results.
#[derive(Debug, Deserialize)]
pub(crate) struct WirePage {
    pub value: Vec<serde_json::Value>,
    #[serde(rename = "@odata.nextLink", default)]
    pub next_link: Option<String>,
}

impl WireProduct {
    pub(crate) fn into_product(self) -> Product {
        let date = |field: &str, value: Option<String>| {
            let text = value?;
            let parsed = parse_iso8601(&text);
            if parsed.is_none() {
                tracing::debug!(product = %self.name, "unreadable {field} {text:?} ignored");
            }
            parsed
        };
        let (start, end) = match self.content_date {
            Some(c) => (c.start, c.end),
            None => (None, None),
        };
        let content_start = date("ContentDate.Start", start);
        let content_end = date("ContentDate.End", end);
        let origin_date = date("OriginDate", self.origin_date.clone());
        let publication_date = date("PublicationDate", self.publication_date.clone());
        let modification_date = date("ModificationDate", self.modification_date.clone());
        let md5 = self
            .checksum
            .iter()
            .flatten()
            .find(|c| {
                c.algorithm
                    .as_deref()
                    .is_some_and(|a| a.eq_ignore_ascii_case("MD5"))
            })
            .and_then(|c| c.value.as_deref())
            .map(str::trim)
            .filter(|v| v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(str::to_ascii_lowercase);
        Product {
            size_hint: size(self.content_length.as_ref()),
            online: self.online.unwrap_or(true),
            footprint: self.footprint.filter(|f| !f.is_empty()),
            geo_footprint: self
                .geo_footprint
                .filter(|g| g.is_object())
                .map(|g| g.to_string()),
            s3_path: self.s3_path.filter(|s| !s.is_empty()),
            id: self.id,
            name: self.name,
            origin_date,
            publication_date,
            modification_date,
            content_start,
            content_end,
            md5,
        }
    }
}

/// `ContentLength` as a positive integer; services have written it as a number, a numeric string
/// and 0 for unknown.
fn size(value: Option<&serde_json::Value>) -> Option<u64> {
    let n = match value? {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }?;
    (n > 0).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    /// One search answer in the shape the CREODIAS/CDSE catalogue gives (docs/protocol.md fields).
    pub(crate) const SEARCH_ANSWER: &str = r#"{
      "@odata.context": "$metadata#Products",
      "value": [
        {
          "@odata.mediaContentType": "application/octet-stream",
          "Id": "db0c8ef3-8ec0-5185-a537-812dad3c58f8",
          "Name": "S2A_MSIL1C_20180927T051221_N0206_R033_T42FXL_20180927T073143.SAFE",
          "ContentType": "application/octet-stream",
          "ContentLength": 820675224,
          "OriginDate": "2018-09-27T08:23:56.024000Z",
          "PublicationDate": "2018-09-27T09:01:02.000Z",
          "ModificationDate": "2018-09-27T05:12:21.024Z",
          "Online": true,
          "EvictionDate": "",
          "S3Path": "/eodata/Sentinel-2/MSI/L1C/2018/09/27/S2A_MSIL1C_20180927T051221_N0206_R033_T42FXL_20180927T073143.SAFE",
          "Checksum": [
            {"Value": "0A2E4B3F6C8D9E1F2A3B4C5D6E7F8091", "Algorithm": "MD5", "ChecksumDate": "2018-09-27T08:30:00.000Z"},
            {"Value": "b3b3b3", "Algorithm": "BLAKE3", "ChecksumDate": "2018-09-27T08:30:00.000Z"}
          ],
          "ContentDate": {"Start": "2018-09-27T05:12:21.024Z", "End": "2018-09-27T05:12:21.024Z"},
          "Footprint": "geography'SRID=4326;POLYGON ((69.0 -48.7, 70.5 -48.7, 70.5 -49.7, 69.0 -49.7, 69.0 -48.7))'",
          "GeoFootprint": {"type": "Polygon", "coordinates": [[[69.0, -48.7], [70.5, -48.7]]]}
        },
        {
          "Id": "11111111-2222-3333-4444-555555555555",
          "Name": "S3A_OL_1_EFR____20200101T101010_20200101T101310_20200101T120000_0179_053_179_2160_LN1_O_NR_002.SEN3",
          "ContentLength": 0,
          "Checksum": [],
          "ContentDate": null,
          "PublicationDate": "not a date"
        }
      ],
      "@odata.nextLink": "https://datahub.creodias.eu/odata/v1/Products?$skip=2"
    }"#;

    #[test]
    fn parses_a_real_looking_answer() {
        let page: WirePage = serde_json::from_str(SEARCH_ANSWER).unwrap();
        assert_eq!(
            page.next_link.as_deref(),
            Some("https://datahub.creodias.eu/odata/v1/Products?$skip=2")
        );
        let products: Vec<Product> = page
            .value
            .into_iter()
            .map(|v| {
                serde_json::from_value::<WireProduct>(v)
                    .unwrap()
                    .into_product()
            })
            .collect();
        let p = &products[0];
        assert_eq!(p.id, "db0c8ef3-8ec0-5185-a537-812dad3c58f8");
        assert_eq!(
            p.name,
            "S2A_MSIL1C_20180927T051221_N0206_R033_T42FXL_20180927T073143.SAFE"
        );
        assert_eq!(p.size_hint, Some(820_675_224));
        assert_eq!(
            p.content_start,
            Some(UNIX_EPOCH + Duration::new(1_538_025_141, 24_000_000))
        );
        assert_eq!(p.modification_date, p.content_start);
        assert!(p.origin_date.is_some() && p.publication_date.is_some());
        assert!(p.online);
        assert_eq!(p.md5.as_deref(), Some("0a2e4b3f6c8d9e1f2a3b4c5d6e7f8091"));
        assert!(p
            .footprint
            .as_deref()
            .unwrap()
            .starts_with("geography'SRID=4326;POLYGON"));
        assert!(p
            .s3_path
            .as_deref()
            .unwrap()
            .starts_with("/eodata/Sentinel-2/"));

        let q = &products[1];
        assert_eq!(q.size_hint, None, "ContentLength 0 means unknown");
        assert_eq!(
            (q.md5.as_deref(), q.content_start, q.publication_date),
            (None, None, None)
        );
        assert!(q.online, "absent Online means online");
        assert_eq!(q.footprint, None);
    }

    #[test]
    fn size_accepts_numbers_and_numeric_strings() {
        use serde_json::json;
        assert_eq!(size(Some(&json!(5))), Some(5));
        assert_eq!(size(Some(&json!("7"))), Some(7));
        assert_eq!(size(Some(&json!(-1))), None);
        assert_eq!(size(Some(&json!(null))), None);
        assert_eq!(size(None), None);
    }
}
