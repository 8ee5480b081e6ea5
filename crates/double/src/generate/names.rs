//! Product names, ids and dates: what a Sentinel-2 L1C name says and what follows from it.
//!
//! [`specs`] draws plausible, distinct names and UUIDs from a seed (the tutorial's product
//! first); [`ParsedName`] reads a name back (sensing and generation times, tile, UTM zone) for
//! the zip layout, the catalogue dates and the footprint. Dates are done by hand (H. Hinnant's
//! civil-from-days) so the generator needs no date crate and stays byte-for-byte deterministic.

use anyhow::Result;

use super::rng::Xoshiro;
use super::{ProductSpec, TUTORIAL_ID, TUTORIAL_NAME};

/// Deterministic specs: the tutorial's product first, then distinct plausible Sentinel-2 L1C
/// names with UUIDs drawn from `seed`. `specs(n)` is a prefix of `specs(n + k)`.
pub fn specs(count: usize, size: u64, seed: u64) -> Vec<ProductSpec> {
    let mut rng = Xoshiro::new(seed ^ 0x5EC5_5EC5);
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(count);
    if count > 0 {
        seen.insert(TUTORIAL_NAME.to_string());
        out.push(ProductSpec {
            id: TUTORIAL_ID.into(),
            name: TUTORIAL_NAME.into(),
            size,
            online: true,
        });
    }
    while out.len() < count {
        let name = random_name(&mut rng, None);
        let id = random_uuid(&mut rng);
        if seen.insert(name.clone()) && seen.insert(id.clone()) {
            out.push(ProductSpec {
                id,
                name,
                size,
                online: true,
            });
        }
    }
    out
}

/// `count` more specs like [`specs`]' but all sensed on `day` (days since 1970-01-01), none
/// with a name or id among `taken`: a crowded day for listings of the `/eodata` tree.
pub fn specs_on_day(
    count: usize,
    size: u64,
    seed: u64,
    day: i64,
    taken: &[ProductSpec],
) -> Vec<ProductSpec> {
    let mut rng = Xoshiro::new(seed ^ 0xDA7_DA7 ^ day as u64);
    let mut seen: std::collections::HashSet<String> = taken
        .iter()
        .flat_map(|s| [s.name.clone(), s.id.clone()])
        .collect();
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let name = random_name(&mut rng, Some(day));
        let id = random_uuid(&mut rng);
        if seen.insert(name.clone()) && seen.insert(id.clone()) {
            out.push(ProductSpec {
                id,
                name,
                size,
                online: true,
            });
        }
    }
    out
}

/// Fields of a Sentinel-2 product name
/// `S2A_MSIL1C_<sensing>_N<baseline>_R<rel orbit>_T<tile>_<generation>.SAFE`.
pub(super) struct ParsedName {
    pub(super) mission: String,
    pub(super) sensing_str: String,
    pub(super) sensing: i64,
    pub(super) generation: i64,
    pub(super) tile: String,
}

impl ParsedName {
    pub(super) fn parse(name: &str) -> Result<ParsedName> {
        let parts: Vec<&str> = name.trim_end_matches(".SAFE").split('_').collect();
        let bad = || anyhow::anyhow!("not a Sentinel-2 L1C product name: {name}");
        if parts.len() != 7 || !parts[5].starts_with('T') || parts[5].len() != 6 {
            return Err(bad());
        }
        Ok(ParsedName {
            mission: parts[0].to_string(),
            sensing_str: parts[2].to_string(),
            sensing: parse_compact(parts[2]).ok_or_else(bad)?,
            generation: parse_compact(parts[6]).ok_or_else(bad)?,
            tile: parts[5][1..].to_string(),
        })
    }

    /// Plausible absolute orbit: the tutorial's A016999, plus 14.3 orbits a day (143 per 10-day
    /// cycle) from its date.
    pub(super) fn absolute_orbit(&self) -> i64 {
        let tutorial = 1_538_025_141; // 2018-09-27T05:12:21Z
        (16999 + (self.sensing - tutorial) * 143 / (10 * 86400)).max(1)
    }

    fn zone(&self) -> u32 {
        self.tile[..2].parse().unwrap_or(42)
    }
    fn band(&self) -> u8 {
        self.tile.as_bytes()[2]
    }
    fn south(&self) -> bool {
        self.band() < b'N'
    }
    pub(super) fn epsg(&self) -> u32 {
        (if self.south() { 32700 } else { 32600 }) + self.zone()
    }

    /// Upper-left corner (UTM metres) and side of the tile: the column letter gives the 100 km
    /// easting, the latitude band's northern edge (rounded down to 100 km) the northing.
    pub(super) fn utm_box(&self) -> (f64, f64, f64) {
        const SETS: [&str; 3] = ["STUVWXYZ", "ABCDEFGH", "JKLMNPQR"];
        let col = self.tile.as_bytes()[3] as char;
        let idx = SETS[(self.zone() % 3) as usize].find(col).unwrap_or(0);
        let ulx = (idx as f64 + 1.0) * 100_000.0;
        let top_lat = band_south_lat(self.band()) + 8.0;
        let northing = top_lat * 110_946.0 + if self.south() { 10_000_000.0 } else { 0.0 };
        let uly = (northing / 100_000.0).floor() * 100_000.0 + 20.0;
        (ulx, uly, 109_800.0)
    }

    /// WKT polygon of the tile in lon/lat, from an equirectangular approximation of the inverse
    /// UTM projection: good to a few km, which is all a test of listings needs.
    pub(super) fn footprint(&self) -> String {
        let (ulx, uly, side) = self.utm_box();
        let central = self.zone() as f64 * 6.0 - 183.0;
        let lonlat = |e: f64, n: f64| {
            let lat = (n - if self.south() { 10_000_000.0 } else { 0.0 }) / 110_946.0;
            let lon = central + (e - 500_000.0) / (111_320.0 * lat.to_radians().cos());
            format!("{lon:.6} {lat:.6}")
        };
        let corners = [
            lonlat(ulx, uly),
            lonlat(ulx + side, uly),
            lonlat(ulx + side, uly - side),
            lonlat(ulx, uly - side),
            lonlat(ulx, uly),
        ];
        format!("geography'SRID=4326;POLYGON (({}))'", corners.join(", "))
    }
}

/// Southern edge of a UTM latitude band (C = 80°S, 8° each, I and O skipped).
fn band_south_lat(band: u8) -> f64 {
    let idx = b"CDEFGHJKLMNPQRSTUVWX"
        .iter()
        .position(|&b| b == band)
        .unwrap_or(0);
    -80.0 + 8.0 * idx as f64
}

/// A plausible name sensed on `on_day` (days since 1970-01-01), else on a day drawn between
/// 2017-01-01 and 2023-12-31 (drawn either way, so the sequence of [`specs`] stays the same).
fn random_name(rng: &mut Xoshiro, on_day: Option<i64>) -> String {
    // Baselines roughly follow the years.
    let start = days_from_civil(2017, 1, 1);
    let drawn = start + rng.below(7 * 365) as i64;
    let day = on_day.unwrap_or(drawn);
    let sensing = day * 86400 + rng.below(86400) as i64;
    let generation = sensing + 3600 + rng.below(3 * 3600) as i64;
    let (year, _, _) = civil_from_days(day);
    let baseline = match year {
        2017 => "N0205",
        2018 => "N0206",
        2019 => "N0208",
        2020 => "N0209",
        2021 => "N0300",
        2022 => "N0400",
        _ => "N0509",
    };
    const SETS: [&str; 3] = ["STUVWXYZ", "ABCDEFGH", "JKLMNPQR"];
    let zone = 1 + rng.below(60) as u32;
    let bands = b"CDEFGHJKLMNPQRSTUVWX";
    let band = bands[rng.below(bands.len() as u64) as usize] as char;
    let cols = SETS[(zone % 3) as usize].as_bytes();
    let col = cols[rng.below(cols.len() as u64) as usize] as char;
    let rows = b"ABCDEFGHJKLMNPQRSTUV";
    let row = rows[rng.below(rows.len() as u64) as usize] as char;
    format!(
        "S2{}_MSIL1C_{}_{baseline}_R{:03}_T{zone:02}{band}{col}{row}_{}.SAFE",
        if rng.below(2) == 0 { 'A' } else { 'B' },
        compact(sensing),
        1 + rng.below(143),
        compact(generation)
    )
}

/// A version-5-shaped UUID (like the catalogue's) from the PRNG.
fn random_uuid(rng: &mut Xoshiro) -> String {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&rng.next_u64().to_be_bytes());
    b[8..].copy_from_slice(&rng.next_u64().to_be_bytes());
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub(super) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

pub(super) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

pub(super) fn split_secs(t: i64) -> (i64, u32, u32, i64, i64, i64) {
    let (y, m, d) = civil_from_days(t.div_euclid(86400));
    let s = t.rem_euclid(86400);
    (y, m, d, s / 3600, s / 60 % 60, s % 60)
}

/// `2018-09-27T09:34:59.000Z`
pub(super) fn iso(t: i64, ms: u32) -> String {
    let (y, mo, d, h, mi, s) = split_secs(t);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
}

/// `20180927T051221`
pub(super) fn compact(t: i64) -> String {
    let (y, mo, d, h, mi, s) = split_secs(t);
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}")
}

pub(super) fn parse_compact(s: &str) -> Option<i64> {
    if s.len() != 15 || s.as_bytes()[8] != b'T' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<u32>().ok();
    let days = days_from_civil(n(0..4)? as i64, n(4..6)?, n(6..8)?);
    Some(days * 86400 + (n(9..11)? * 3600 + n(11..13)? * 60 + n(13..15)?) as i64)
}

#[cfg(test)]
mod tests {
    use super::super::layout;
    use super::super::testing::*;
    use super::*;

    #[test]
    fn first_spec_is_the_tutorials_and_others_are_distinct_and_stable() {
        let a = specs(50, MIB, 3);
        assert_eq!(a[0].name, TUTORIAL_NAME);
        assert_eq!(a[0].id, TUTORIAL_ID);
        let names: std::collections::HashSet<_> = a.iter().map(|s| &s.name).collect();
        let ids: std::collections::HashSet<_> = a.iter().map(|s| &s.id).collect();
        assert_eq!((names.len(), ids.len()), (50, 50));
        assert_eq!(
            specs(10, MIB, 3),
            a[..10].to_vec(),
            "a prefix of a longer list"
        );
        assert_ne!(specs(2, MIB, 4)[1], a[1], "the seed matters");
        for s in &a {
            let p = ParsedName::parse(&s.name).unwrap();
            assert!(p.generation > p.sensing, "{}", s.name);
            assert_eq!(s.id.len(), 36);
            assert_eq!(&s.id[14..15], "5");
            layout(&s.name).unwrap();
        }
    }
}
