//! How a download server answered a request for bytes: the 206 / 200 / 416 triage, once.
//!
//! A ranged GET can be answered with the part asked for (206 + `Content-Range`), the whole
//! object from byte 0 (200: the server ignores `Range`, as the real zipper is reported to do,
//! see `docs/protocol.md`), or "nothing there" (416 + `Content-Range: bytes */total`). Every
//! caller (the size probe, a ranged read, a stream) needs the same reading of those headers
//! and the same checks, so that no caller ever takes bytes from an offset it did not ask for:
//! [`triage`] does both. Server-given numbers are untrusted: parsing is total (no panic on any
//! input) and all arithmetic on them is checked.

use reqwest::header::{HeaderMap, HeaderName, CONTENT_LENGTH, CONTENT_RANGE};
use reqwest::StatusCode;

/// The parts of a `Content-Range: bytes first-last/total` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContentRange {
    /// `(first, last)`, inclusive; `None` for the `bytes */total` form a 416 carries.
    pub range: Option<(u64, u64)>,
    /// The complete length; `None` when the server wrote `*`.
    pub total: Option<u64>,
}

/// Only ASCII digits (`u64::from_str` would also take a leading `+`); `None` on overflow.
pub(crate) fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses `bytes 0-99/1000`, `bytes 0-99/*` and `bytes */1000`. Rejects anything inconsistent
/// (last before first, a range past the total), since bytes described by it cannot be trusted.
pub fn parse_content_range(value: &str) -> Option<ContentRange> {
    let value = value.trim();
    let (unit, rest) = value.split_once([' ', '\t'])?;
    if !unit.eq_ignore_ascii_case("bytes") {
        return None;
    }
    let (range, total) = rest.trim().split_once('/')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(parse_u64(t)?),
    };
    let range = match range.trim() {
        "*" => {
            total?;
            None
        }
        r => {
            let (first, last) = r.split_once('-')?;
            let (first, last) = (parse_u64(first.trim())?, parse_u64(last.trim())?);
            if last < first || total.is_some_and(|t| last >= t) {
                return None;
            }
            Some((first, last))
        }
    };
    Some(ContentRange { range, total })
}

/// A header as text, when it is text.
pub fn header_str(headers: &HeaderMap, name: HeaderName) -> Option<&str> {
    headers.get(name)?.to_str().ok()
}

/// The `Content-Length` header itself (digits only). `Response::content_length` is the body's
/// size hint, which for HEAD answers is 0.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    parse_u64(header_str(headers, CONTENT_LENGTH)?.trim())
}

/// The bytes a request asked for: `Range: bytes=first-last`, or `bytes=first-` without a last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Asked {
    pub first: u64,
    pub last: Option<u64>,
}

impl Asked {
    /// The `Range` header's value.
    pub fn header(&self) -> String {
        match self.last {
            Some(last) => format!("bytes={}-{last}", self.first),
            None => format!("bytes={}-", self.first),
        }
    }
}

/// What a 2xx or 416 answer to a request for bytes means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// 206: bytes `first..=last` of an object of `total` bytes (when said), `first` being the
    /// first byte asked for and `last` the last asked for, or earlier where the object ends.
    Partial {
        first: u64,
        last: u64,
        total: Option<u64>,
    },
    /// 200: the whole object from byte 0, `len` bytes when `Content-Length` says. For a ranged
    /// request this means the server ignores `Range`.
    Whole { len: Option<u64> },
    /// 416: nothing at the first byte asked for; the object's size when the server says.
    Unsatisfiable { total: Option<u64> },
}

impl Answer {
    /// The object's complete size, as far as this answer tells it.
    pub fn total(&self) -> Option<u64> {
        match *self {
            Answer::Partial { total, .. } => total,
            Answer::Whole { len } => len,
            Answer::Unsatisfiable { total } => total,
        }
    }
}

/// Reads `status` and the headers of an answer to a request for `asked` (`None`: no `Range`
/// was sent). `Err` says, in one line, why the answer cannot be used: a 206 that was not asked
/// for, without a usable `Content-Range`, for other bytes than asked, or whose `Content-Length`
/// disagrees with its range; or a status that is none of 200, 206, 416.
pub fn triage(
    status: StatusCode,
    headers: &HeaderMap,
    asked: Option<Asked>,
) -> Result<Answer, String> {
    let cr = header_str(headers, CONTENT_RANGE).and_then(parse_content_range);
    match status {
        StatusCode::PARTIAL_CONTENT => {
            let Some(asked) = asked else {
                return Err("206 to a request without Range".into());
            };
            let Some((first, last, total)) = cr.and_then(|c| c.range.map(|(f, l)| (f, l, c.total)))
            else {
                return Err("206 without a usable Content-Range".into());
            };
            // Exactly what was asked, or shorter only where the object ends.
            let ends_early_at_eof =
                |l: u64| last < l && total.is_some_and(|t| last.checked_add(1) == Some(t));
            let fits = first == asked.first
                && match asked.last {
                    Some(l) => last == l || ends_early_at_eof(l),
                    None => total.is_none_or(|t| last.checked_add(1) == Some(t)),
                };
            if !fits {
                let want = asked.last.map_or(String::new(), |l| l.to_string());
                return Err(format!(
                    "asked for bytes {}-{want} and got {first}-{last}",
                    asked.first
                ));
            }
            // `last >= first` (parse_content_range), so this never underflows; +1 can
            // overflow only for a range ending at u64::MAX.
            let len = (last - first).checked_add(1);
            if let Some(cl) = content_length(headers) {
                if Some(cl) != len {
                    return Err(format!(
                        "206 for bytes {first}-{last} with a Content-Length of {cl}"
                    ));
                }
            }
            Ok(Answer::Partial { first, last, total })
        }
        StatusCode::OK => Ok(Answer::Whole {
            len: content_length(headers),
        }),
        StatusCode::RANGE_NOT_SATISFIABLE => Ok(Answer::Unsatisfiable {
            total: cr.and_then(|c| c.total),
        }),
        s => Err(format!("HTTP {s} to a request for bytes")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn content_range_table() {
        let cr = |range, total| Some(ContentRange { range, total });
        let cases: &[(&str, Option<ContentRange>)] = &[
            ("bytes 0-99/1000", cr(Some((0, 99)), Some(1000))),
            ("BYTES 5-5/6", cr(Some((5, 5)), Some(6))),
            ("  bytes  10 - 19 / * ", cr(Some((10, 19)), None)),
            ("bytes */1000", cr(None, Some(1000))),
            ("bytes */*", None),
            ("bytes 0-1000/1000", None),
            ("bytes 9-3/100", None),
            ("bytes +1-3/100", None),
            ("bytes -1-3/100", None),
            ("items 0-1/2", None),
            ("bytes 0-1", None),
            ("bytes", None),
            ("", None),
            ("bytes 0-99999999999999999999999/1", None),
            (
                "bytes 0-18446744073709551614/18446744073709551615",
                cr(Some((0, u64::MAX - 1)), Some(u64::MAX)),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(parse_content_range(input), *want, "{input:?}");
        }
    }

    fn headers(pairs: &[(HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn triage_table() {
        let ask = |first, last| Some(Asked { first, last });
        assert_eq!(ask(0, Some(0)).unwrap().header(), "bytes=0-0");
        assert_eq!(ask(7, None).unwrap().header(), "bytes=7-");
        let part = |v: &str| headers(&[(CONTENT_RANGE, v)]);
        let p206 = StatusCode::PARTIAL_CONTENT;
        assert_eq!(
            triage(p206, &part("bytes 0-0/10"), ask(0, Some(0))),
            Ok(Answer::Partial {
                first: 0,
                last: 0,
                total: Some(10)
            })
        );
        // Short only where the object ends.
        assert_eq!(
            triage(p206, &part("bytes 5-9/10"), ask(5, Some(20))),
            Ok(Answer::Partial {
                first: 5,
                last: 9,
                total: Some(10)
            })
        );
        assert!(triage(p206, &part("bytes 5-8/10"), ask(5, Some(20))).is_err());
        assert!(triage(p206, &part("bytes 5-8/*"), ask(5, Some(20))).is_err());
        assert!(triage(p206, &part("bytes 4-9/10"), ask(5, Some(9))).is_err());
        // Open-ended: to the end.
        assert_eq!(
            triage(p206, &part("bytes 7-9/10"), ask(7, None)),
            Ok(Answer::Partial {
                first: 7,
                last: 9,
                total: Some(10)
            })
        );
        assert!(triage(p206, &part("bytes 7-8/10"), ask(7, None)).is_err());
        assert!(triage(p206, &HeaderMap::new(), ask(0, Some(0))).is_err());
        assert!(triage(p206, &part("bytes 0-0/10"), None).is_err());
        // Content-Length must agree with the range.
        let h = headers(&[(CONTENT_RANGE, "bytes 0-9/10"), (CONTENT_LENGTH, "11")]);
        assert!(triage(p206, &h, ask(0, Some(9))).is_err());
        let h = headers(&[
            (CONTENT_RANGE, "bytes 0-18446744073709551615/*"),
            (CONTENT_LENGTH, "5"),
        ]);
        assert!(
            triage(p206, &h, ask(0, None)).is_err(),
            "no overflow, no pass"
        );

        let h = headers(&[(CONTENT_LENGTH, "1234")]);
        assert_eq!(
            triage(StatusCode::OK, &h, ask(5, None)),
            Ok(Answer::Whole { len: Some(1234) })
        );
        assert_eq!(
            triage(StatusCode::OK, &headers(&[(CONTENT_LENGTH, "+5")]), None),
            Ok(Answer::Whole { len: None })
        );
        assert_eq!(
            triage(
                StatusCode::RANGE_NOT_SATISFIABLE,
                &part("bytes */10"),
                ask(10, None)
            ),
            Ok(Answer::Unsatisfiable { total: Some(10) })
        );
        assert!(triage(StatusCode::ACCEPTED, &HeaderMap::new(), None).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]

        /// Header values made of the characters these parsers look at, in any order: no
        /// panic, and a failure shrinks to the shortest such text.
        #[test]
        fn parsers_never_panic_on_random_input(text in "[bytes */0-9 ,;=\"\\\\+\t-]{0,32}") {
            let _ = parse_content_range(&text);
            let _ = crate::retry_after(&text, std::time::SystemTime::now());
            if let Ok(v) = HeaderValue::from_str(&text) {
                let mut h = HeaderMap::new();
                h.insert(CONTENT_RANGE, v.clone());
                h.insert(CONTENT_LENGTH, v);
                let _ = triage(
                    StatusCode::PARTIAL_CONTENT,
                    &h,
                    Some(Asked {
                        first: 0,
                        last: None,
                    }),
                );
            }
        }
    }
}
