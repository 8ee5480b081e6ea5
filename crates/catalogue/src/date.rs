//! ISO 8601 timestamps as the catalogue writes them, to `SystemTime`, and the calendar
//! arithmetic every room of the client uses (search filters, the /eodata tree's days): one copy
//! of it in the tree. (The double keeps its own on purpose: it is an independent
//! implementation of the service.)
//!
//! The OData services write `2018-09-27T05:12:21.024000Z` (CREODIAS, microseconds) and
//! `2018-09-27T05:12:21.024Z` (CDSE, milliseconds); offsets such as `+00:00` and a missing
//! fraction occur in other OData services. Ten lines of arithmetic read all of these, so no date
//! crate is pulled in for it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction][Z|±HH:MM|±HHMM]` (a space may replace the `T`; no zone
/// means UTC). `None` for anything else.
pub fn parse_iso8601(text: &str) -> Option<SystemTime> {
    let s = text.trim().as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(range)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    if s.len() < 19
        || s[4] != b'-'
        || s[7] != b'-'
        || !matches!(s[10], b'T' | b't' | b' ')
        || s[13] != b':'
        || s[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // 60 admits a leap second, which then counts as the next second's start.
    if !(1..=12).contains(&month)
        || !(1..=i64::from(days_in_month(year as i32, month as u32))).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &s[19..];
    let mut nanos: u32 = 0;
    if let Some(frac) = rest.strip_prefix(b".") {
        let digits = frac.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        // Digits past nanoseconds are dropped (truncation, not rounding).
        for (i, d) in frac[..digits].iter().enumerate().take(9) {
            nanos += u32::from(d - b'0') * 10u32.pow(8 - i as u32);
        }
        rest = &frac[digits..];
    }
    let offset_secs: i64 = match rest {
        [] | [b'Z'] | [b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] | [sign @ (b'+' | b'-'), h1, h2, m1, m2] => {
            let two = |a: u8, b: u8| -> Option<i64> {
                (a.is_ascii_digit() && b.is_ascii_digit())
                    .then(|| i64::from((a - b'0') * 10 + (b - b'0')))
            };
            let (h, m) = (two(*h1, *h2)?, two(*m1, *m2)?);
            if h > 23 || m > 59 {
                return None;
            }
            let v = h * 3600 + m * 60;
            if *sign == b'+' {
                v
            } else {
                -v
            }
        }
        _ => return None,
    };
    let secs = days_from_civil(year as i32, month as u32, day as u32) * 86_400
        + hour * 3600
        + minute * 60
        + second
        - offset_secs;
    if secs >= 0 {
        Some(UNIX_EPOCH + Duration::new(secs as u64, nanos))
    } else {
        // Before 1970 (sentinel dates do occur): whole seconds back, then the fraction forward.
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(secs.unsigned_abs()))?
            .checked_add(Duration::from_nanos(nanos.into()))
    }
}

/// A date of the proleptic Gregorian calendar: (year, month 1-12, day 1-31).
pub type Date = (i32, u32, u32);

fn is_leap(y: i32) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

/// Days in a month.
pub fn days_in_month(y: i32, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a date (Howard Hinnant's `days_from_civil`).
pub fn days_from_civil(y: i32, m: u32, d: u32) -> i64 {
    let y = i64::from(y) - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number since 1970-01-01 (Howard Hinnant's `civil_from_days`).
pub fn civil_from_days(z: i64) -> Date {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    ((yoe + era * 400 + i64::from(m <= 2)) as i32, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    #[test]
    fn catalogue_forms() {
        // 2018-09-27T05:12:21Z is 1538025141 (date -u -d ... +%s).
        assert_eq!(
            parse_iso8601("2018-09-27T05:12:21.024000Z"),
            Some(at(1_538_025_141, 24_000_000))
        );
        assert_eq!(
            parse_iso8601("2018-09-27T05:12:21.024Z"),
            Some(at(1_538_025_141, 24_000_000))
        );
        assert_eq!(
            parse_iso8601("2018-09-27T05:12:21Z"),
            Some(at(1_538_025_141, 0))
        );
        assert_eq!(
            parse_iso8601("2018-09-27T05:12:21"),
            Some(at(1_538_025_141, 0))
        );
        assert_eq!(
            parse_iso8601("2018-09-27T07:12:21.5+02:00"),
            Some(at(1_538_025_141, 500_000_000))
        );
        assert_eq!(
            parse_iso8601("2018-09-27T04:12:21-0100"),
            Some(at(1_538_025_141, 0))
        );
        assert_eq!(
            parse_iso8601("2018-09-27T05:12:21.1234567891Z"),
            Some(at(1_538_025_141, 123_456_789))
        );
    }

    #[test]
    fn calendar_edges() {
        assert_eq!(parse_iso8601("1970-01-01T00:00:00Z"), Some(UNIX_EPOCH));
        assert_eq!(
            parse_iso8601("2024-02-29T00:00:00Z"),
            Some(at(1_709_164_800, 0))
        );
        assert_eq!(
            parse_iso8601("2000-03-01T00:00:00Z"),
            Some(at(951_868_800, 0))
        );
        assert_eq!(
            parse_iso8601("1969-12-31T23:59:59.5Z"),
            UNIX_EPOCH.checked_sub(Duration::from_millis(500))
        );
    }

    #[test]
    fn garbage_is_none() {
        for bad in [
            "",
            "2018-09-27",
            "2018-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2018-09-27T24:00:00Z",
            "2018-09-27T05:12:21.Z",
            "2018-09-27T05:12:21ZZ",
            "2018-09-27T05:12:21+2:00",
            "yyyy-09-27T05:12:21Z",
            "２０18-09-27T05:12:21Z",
        ] {
            assert_eq!(parse_iso8601(bad), None, "{bad}");
        }
    }
}
