//! A product's footprint as GIS tools take it: WKT without the OData wrapping, and GeoJSON.
//!
//! The catalogue writes `Footprint` as an OData geography literal,
//! `geography'SRID=4326;POLYGON ((lon lat, ...))'` (docs/protocol.md), and CDSE adds
//! `GeoFootprint`, the same shape as a GeoJSON geometry. Tools want plain WKT (`ogr2ogr`,
//! shapely's `wkt.loads`) or GeoJSON; where the catalogue gives no `GeoFootprint` (CREODIAS,
//! the double), the GeoJSON is made from the WKT, for the shapes the catalogue uses: `POLYGON`
//! and `MULTIPOLYGON` (footprints crossing the antimeridian), and `POINT`.

/// The WKT inside an OData geography literal (`geography'SRID=4326;POLYGON (...)'`), or the
/// text itself when it is not wrapped.
pub fn wkt(footprint: &str) -> &str {
    let mut s = footprint.trim();
    if let Some(rest) = s.strip_prefix("geography'") {
        s = rest.strip_suffix('\'').unwrap_or(rest);
    }
    if s.len() >= 5 && s[..5].eq_ignore_ascii_case("SRID=") {
        s = s.split_once(';').map_or(s, |(_, w)| w);
    }
    s.trim()
}

/// A GeoJSON geometry (compact JSON) of a WKT `POINT`, `POLYGON` or `MULTIPOLYGON`, or `None`
/// for another shape or text that does not parse.
pub fn geojson_from_wkt(wkt: &str) -> Option<String> {
    let (kind, body) = wkt.trim().split_once('(')?;
    let body = format!("({body}");
    let (value, rest) = nested(body.trim())?;
    if !rest.trim().is_empty() {
        return None;
    }
    let (name, depth) = match kind.trim().to_ascii_uppercase().as_str() {
        "POINT" => ("Point", 1),
        "POLYGON" => ("Polygon", 3),
        "MULTIPOLYGON" => ("MultiPolygon", 4),
        _ => return None,
    };
    // POINT (x y) is one level of parentheses around a position; GeoJSON wants the position.
    let coordinates = match (depth, value) {
        (1, Nested::List(mut l)) if l.len() == 1 => l.pop()?,
        (1, _) => return None,
        (_, v) if v.depth() == depth => v,
        _ => return None,
    };
    Some(format!(
        r#"{{"type":"{name}","coordinates":{}}}"#,
        coordinates.json()
    ))
}

/// Parenthesised lists of positions, as WKT nests them.
enum Nested {
    Position(Vec<f64>),
    List(Vec<Nested>),
}

impl Nested {
    fn depth(&self) -> usize {
        match self {
            Nested::Position(_) => 1,
            Nested::List(l) => 1 + l.first().map_or(0, Nested::depth),
        }
    }

    fn json(&self) -> String {
        match self {
            Nested::Position(p) => format!(
                "[{}]",
                p.iter().map(f64::to_string).collect::<Vec<_>>().join(",")
            ),
            Nested::List(l) => format!(
                "[{}]",
                l.iter().map(Nested::json).collect::<Vec<_>>().join(",")
            ),
        }
    }
}

/// Parses `( item, item, ... )` where an item is a nested list or a position `x y [z]`;
/// returns it and the text after the closing parenthesis.
fn nested(s: &str) -> Option<(Nested, &str)> {
    let mut s = s.strip_prefix('(')?.trim_start();
    let mut items = Vec::new();
    loop {
        if s.starts_with('(') {
            let (item, rest) = nested(s)?;
            items.push(item);
            s = rest.trim_start();
        } else {
            let end = s.find([',', ')'])?;
            let numbers: Option<Vec<f64>> = s[..end]
                .split_whitespace()
                .map(|n| n.parse().ok())
                .collect();
            let numbers = numbers?;
            if !(2..=3).contains(&numbers.len()) {
                return None;
            }
            items.push(Nested::Position(numbers));
            s = s[end..].trim_start();
        }
        match s.as_bytes().first()? {
            b',' => s = s[1..].trim_start(),
            b')' => return Some((Nested::List(items), &s[1..])),
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_odata_wrapping_goes() {
        let raw = "geography'SRID=4326;POLYGON ((69.0 -48.7, 70.5 -48.7, 69.0 -48.7))'";
        assert_eq!(wkt(raw), "POLYGON ((69.0 -48.7, 70.5 -48.7, 69.0 -48.7))");
        assert_eq!(wkt("POINT (1 2)"), "POINT (1 2)");
        assert_eq!(wkt("srid=4326;POINT (1 2)"), "POINT (1 2)");
    }

    #[test]
    fn polygons_multipolygons_and_points_become_geojson() {
        assert_eq!(
            geojson_from_wkt("POLYGON ((69 -48.7, 70.5 -48.7, 70.5 -49.7, 69 -48.7))").unwrap(),
            r#"{"type":"Polygon","coordinates":[[[69,-48.7],[70.5,-48.7],[70.5,-49.7],[69,-48.7]]]}"#
        );
        assert_eq!(
            geojson_from_wkt(
                "MULTIPOLYGON(((179 1,180 1,180 2,179 1)),((-180 1,-179 1,-180 2,-180 1)))"
            )
            .unwrap(),
            r#"{"type":"MultiPolygon","coordinates":[[[[179,1],[180,1],[180,2],[179,1]]],[[[-180,1],[-179,1],[-180,2],[-180,1]]]]}"#
        );
        assert_eq!(
            geojson_from_wkt("POINT (12.5 41.9)").unwrap(),
            r#"{"type":"Point","coordinates":[12.5,41.9]}"#
        );
        // Whatever it makes is JSON.
        let v: serde_json::Value =
            serde_json::from_str(&geojson_from_wkt("POLYGON ((1 2 3, 4 5 6, 1 2 3))").unwrap())
                .unwrap();
        assert_eq!(v["coordinates"][0][1][2], 6.0);
    }

    #[test]
    fn other_shapes_and_garbage_give_none() {
        for bad in [
            "LINESTRING (1 2, 3 4)",
            "POLYGON ((1 2, 3 4)",
            "POLYGON ((1 2, 3 x))",
            "POLYGON (1 2, 3 4)",
            "POLYGON ((1, 2))",
            "",
            "POLYGON ((1 2)) trailing",
        ] {
            assert_eq!(geojson_from_wkt(bad), None, "{bad}");
        }
    }
}
