//! Friendly search criteria turned into one OData `$filter`, for `search`, `download --query`
//! and query directories alike, so they all speak the catalogue's dialect the same way.
//!
//! The dialect (docs/protocol.md, "Catalogue"): `Collection/Name eq '...'` (the services ask
//! for it in every filter: without it searches are slow), `ContentDate/Start ge|lt <bare ISO
//! instant>` (a `datetime'...'` literal is refused), `OData.CSC.Intersects(area=geography'...')`
//! with a WKT polygon in lon/lat order, `Attributes/OData.CSC.DoubleAttribute/any(...)` for cloud
//! cover, `contains(Name,'...')`, `Online eq true`. Input is checked here, so a bad date or box
//! is one clear error before any request.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::date::{civil_from_days, parse_iso8601};
use crate::odata::quote;

/// Why criteria cannot become a filter; the text is meant for the user as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FilterError(pub String);

fn bad(text: impl Into<String>) -> FilterError {
    FilterError(text.into())
}

/// An area on the ground: a closed ring of (longitude, latitude) points, WGS 84.
#[derive(Debug, Clone, PartialEq)]
pub struct Area {
    pub ring: Vec<(f64, f64)>,
}

impl Area {
    /// `W,S,E,N` in degrees, as `--bbox` takes it.
    pub fn from_bbox(text: &str) -> Result<Area, FilterError> {
        let parts: Vec<&str> = text.split(',').map(str::trim).collect();
        let nums: Vec<f64> = parts
            .iter()
            .map(|p| p.parse::<f64>().ok().filter(|v| v.is_finite()))
            .collect::<Option<_>>()
            .filter(|v: &Vec<f64>| v.len() == 4)
            .ok_or_else(|| {
                bad(format!(
                    "bad bounding box {text:?}: give four numbers W,S,E,N in degrees, e.g. 12.3,45.1,12.9,45.6"
                ))
            })?;
        let (w, s, e, n) = (nums[0], nums[1], nums[2], nums[3]);
        if !(-180.0..=180.0).contains(&w) || !(-180.0..=180.0).contains(&e) {
            return Err(bad(format!(
                "bad bounding box {text:?}: longitudes W and E must lie in -180..180"
            )));
        }
        if !(-90.0..=90.0).contains(&s) || !(-90.0..=90.0).contains(&n) {
            return Err(bad(format!(
                "bad bounding box {text:?}: latitudes S and N must lie in -90..90"
            )));
        }
        if w >= e || s >= n {
            return Err(bad(format!(
                "bad bounding box {text:?}: W must be less than E and S less than N (the order is W,S,E,N)"
            )));
        }
        Ok(Area {
            ring: vec![(w, s), (e, s), (e, n), (w, n), (w, s)],
        })
    }

    /// The first polygon of a GeoJSON text: a `Polygon` geometry, or a `Feature` or the first
    /// feature of a `FeatureCollection` holding one (its outer ring; holes are ignored).
    pub fn from_geojson(text: &str) -> Result<Area, FilterError> {
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| bad(format!("the GeoJSON does not parse: {e}")))?;
        let geometry = match v["type"].as_str() {
            Some("FeatureCollection") => &v["features"][0]["geometry"],
            Some("Feature") => &v["geometry"],
            _ => &v,
        };
        let ring = match geometry["type"].as_str() {
            Some("Polygon") => &geometry["coordinates"][0],
            Some("MultiPolygon") => &geometry["coordinates"][0][0],
            other => {
                return Err(bad(format!(
                    "the GeoJSON holds no Polygon (its geometry type is {})",
                    other.unwrap_or("missing")
                )))
            }
        };
        let ring: Vec<(f64, f64)> = ring
            .as_array()
            .and_then(|pts| {
                pts.iter()
                    .map(|p| Some((p[0].as_f64()?, p[1].as_f64()?)))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| bad("the GeoJSON polygon's coordinates are not [lon, lat] pairs"))?;
        if ring.len() < 4 || ring.first() != ring.last() {
            return Err(bad(
                "the GeoJSON polygon's ring must have at least four points and end where it starts",
            ));
        }
        if ring
            .iter()
            .any(|(x, y)| !(-180.0..=180.0).contains(x) || !(-90.0..=90.0).contains(y))
        {
            return Err(bad(
                "the GeoJSON polygon has a point outside -180..180 / -90..90 (is it in WGS 84 lon/lat?)",
            ));
        }
        Ok(Area { ring })
    }

    /// `POLYGON((lon lat,...))`
    pub fn wkt(&self) -> String {
        let pts: Vec<String> = self.ring.iter().map(|(x, y)| format!("{x} {y}")).collect();
        format!("POLYGON(({}))", pts.join(","))
    }
}

/// A date or instant given by the user, as the catalogue writes instants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instant {
    pub at: SystemTime,
    /// Given as a day (`2018-09-27`) rather than an instant: `--to` then means "before the
    /// day's start", as a range of days reads.
    pub day_only: bool,
}

impl Instant {
    /// `YYYY-MM-DD` (midnight UTC) or an ISO 8601 instant.
    pub fn parse(text: &str) -> Result<Instant, FilterError> {
        let t = text.trim();
        let day_only = t.len() == 10;
        let full = if day_only {
            format!("{t}T00:00:00Z")
        } else {
            t.to_string()
        };
        parse_iso8601(&full)
            .map(|at| Instant { at, day_only })
            .ok_or_else(|| {
                bad(format!(
                    "bad date {text:?}: give YYYY-MM-DD or an ISO 8601 instant such as 2018-09-27T05:12:21Z"
                ))
            })
    }

    /// `2018-09-27T00:00:00.000Z`: a bare literal, as the services want it.
    pub fn odata(&self) -> String {
        iso_millis(self.at)
    }
}

/// The instant as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC).
pub fn iso_millis(t: SystemTime) -> String {
    let ms = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    };
    let (days, rem) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let (y, m, d) = civil_from_days(days);
    let (h, mi, s, milli) = (
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000,
    );
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z")
}

/// The name test of a product level: the part of product names that tells it. Levels not in
/// the table are looked for as they are given.
pub fn level_name_test(level: &str) -> String {
    let token = match level.to_ascii_uppercase().as_str() {
        "L1C" => "MSIL1C".to_string(),
        "L2A" => "MSIL2A".to_string(),
        "GRD" => "_GRD".to_string(),
        "SLC" => "_SLC_".to_string(),
        "RAW" => "_RAW_".to_string(),
        "OCN" => "_OCN_".to_string(),
        other => other.to_string(),
    };
    format!("contains(Name,{})", quote(&token))
}

/// Search criteria; every field optional. [`Criteria::filter`] joins them with `and`.
#[derive(Debug, Clone, Default)]
pub struct Criteria {
    /// `SENTINEL-1`, `SENTINEL-2`, ... (upper-cased).
    pub collection: Option<String>,
    pub level: Option<String>,
    pub from: Option<Instant>,
    pub to: Option<Instant>,
    pub area: Option<Area>,
    /// Most cloud cover, percent (0..=100).
    pub cloud_max: Option<f64>,
    /// A part of the product name.
    pub name: Option<String>,
    pub online_only: bool,
    /// A raw OData filter, added as it is (in parentheses).
    pub raw: Option<String>,
}

impl Criteria {
    /// The `$filter`; empty when no criterion is given.
    pub fn filter(&self) -> Result<String, FilterError> {
        let mut parts = Vec::new();
        if let Some(c) = &self.collection {
            if c.trim().is_empty() {
                return Err(bad("the collection name is empty"));
            }
            parts.push(format!(
                "Collection/Name eq {}",
                quote(&c.trim().to_ascii_uppercase())
            ));
        }
        if let (Some(from), Some(to)) = (&self.from, &self.to) {
            if from.at >= to.at {
                return Err(bad(format!(
                    "--from {} is not before --to {}",
                    from.odata(),
                    to.odata()
                )));
            }
        }
        if let Some(from) = &self.from {
            parts.push(format!("ContentDate/Start ge {}", from.odata()));
        }
        if let Some(to) = &self.to {
            parts.push(format!("ContentDate/Start lt {}", to.odata()));
        }
        if let Some(level) = &self.level {
            if level.trim().is_empty() {
                return Err(bad("the product level is empty"));
            }
            parts.push(level_name_test(level.trim()));
        }
        if let Some(name) = &self.name {
            parts.push(format!("contains(Name,{})", quote(name)));
        }
        if let Some(area) = &self.area {
            parts.push(format!(
                "OData.CSC.Intersects(area=geography'SRID=4326;{}')",
                area.wkt()
            ));
        }
        if let Some(max) = self.cloud_max {
            if !(0.0..=100.0).contains(&max) {
                return Err(bad(format!(
                    "bad cloud cover {max}: give a percentage from 0 to 100"
                )));
            }
            parts.push(format!(
                "Attributes/OData.CSC.DoubleAttribute/any(att:att/Name eq 'cloudCover' and att/OData.CSC.DoubleAttribute/Value le {max})"
            ));
        }
        if self.online_only {
            parts.push("Online eq true".into());
        }
        if let Some(raw) = &self.raw {
            if !raw.trim().is_empty() {
                parts.push(format!("({})", raw.trim()));
            }
        }
        Ok(parts.join(" and "))
    }
}

/// The start of the day after `t`'s day (UTC): the end of a one-day window.
pub fn next_day(t: SystemTime) -> SystemTime {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    UNIX_EPOCH + Duration::from_secs((secs / 86_400 + 1) * 86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criteria_become_the_services_dialect() {
        let c = Criteria {
            collection: Some("sentinel-2".into()),
            level: Some("L1C".into()),
            from: Some(Instant::parse("2018-09-27").unwrap()),
            to: Some(Instant::parse("2018-09-28T12:00:00Z").unwrap()),
            area: Some(Area::from_bbox("12.5,45,13,45.5").unwrap()),
            cloud_max: Some(40.0),
            name: Some("T42F'X".into()),
            online_only: true,
            raw: Some("ContentLength gt 0".into()),
        };
        assert_eq!(
            c.filter().unwrap(),
            "Collection/Name eq 'SENTINEL-2' and ContentDate/Start ge 2018-09-27T00:00:00.000Z \
             and ContentDate/Start lt 2018-09-28T12:00:00.000Z and contains(Name,'MSIL1C') \
             and contains(Name,'T42F''X') \
             and OData.CSC.Intersects(area=geography'SRID=4326;POLYGON((12.5 45,13 45,13 45.5,12.5 45.5,12.5 45))') \
             and Attributes/OData.CSC.DoubleAttribute/any(att:att/Name eq 'cloudCover' and att/OData.CSC.DoubleAttribute/Value le 40) \
             and Online eq true and (ContentLength gt 0)"
        );
        assert_eq!(Criteria::default().filter().unwrap(), "");
    }

    #[test]
    fn bad_input_is_one_clear_error() {
        for d in ["2018-13-01", "27/09/2018", "2018-09-27T25:00:00Z", ""] {
            assert!(
                Instant::parse(d).unwrap_err().0.starts_with("bad date"),
                "{d}"
            );
        }
        for b in [
            "1,2,3",
            "a,b,c,d",
            "10,50,5,60",
            "0,95,1,96",
            "-200,0,0,1",
            "1,2,3,4,5",
        ] {
            assert!(
                Area::from_bbox(b)
                    .unwrap_err()
                    .0
                    .starts_with("bad bounding box"),
                "{b}"
            );
        }
        let c = Criteria {
            from: Some(Instant::parse("2018-09-28").unwrap()),
            to: Some(Instant::parse("2018-09-27").unwrap()),
            ..Criteria::default()
        };
        assert!(c.filter().unwrap_err().0.contains("is not before"));
        let c = Criteria {
            cloud_max: Some(120.0),
            ..Criteria::default()
        };
        assert!(c.filter().is_err());
    }

    #[test]
    fn geojson_polygons_are_read_from_features_too() {
        let poly = r#"{"type":"Polygon","coordinates":[[[1,2],[3,2],[3,4],[1,2]]]}"#;
        let feature = format!(r#"{{"type":"Feature","properties":{{}},"geometry":{poly}}}"#);
        let collection = format!(r#"{{"type":"FeatureCollection","features":[{feature}]}}"#);
        for text in [poly.to_string(), feature, collection] {
            assert_eq!(
                Area::from_geojson(&text).unwrap().wkt(),
                "POLYGON((1 2,3 2,3 4,1 2))"
            );
        }
        assert!(Area::from_geojson(r#"{"type":"Point","coordinates":[1,2]}"#).is_err());
        assert!(Area::from_geojson("not json").is_err());
    }

    #[test]
    fn instants_print_as_the_catalogue_writes_them() {
        let t = parse_iso8601("2018-09-27T05:12:21.024Z").unwrap();
        assert_eq!(iso_millis(t), "2018-09-27T05:12:21.024Z");
        assert_eq!(iso_millis(next_day(t)), "2018-09-28T00:00:00.000Z");
        assert_eq!(iso_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }
}
