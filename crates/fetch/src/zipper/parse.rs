//! Parsers for what the download service sends back: `Content-Range`, `Retry-After`,
//! `Content-Disposition` and zipper's JSON error bodies.
//!
//! Everything here reads untrusted server input, so every function is total: any input gives
//! `None` or a best-effort description, never a panic. They are pure, and tested by tables and by
//! random input.

use std::time::{Duration, SystemTime};

/// The parts of a `Content-Range: bytes first-last/total` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ContentRange {
    /// `(first, last)`, inclusive; `None` for the `bytes */total` form a 416 carries.
    pub range: Option<(u64, u64)>,
    /// The complete length; `None` when the server wrote `*`.
    pub total: Option<u64>,
}

/// Only ASCII digits (`u64::from_str` would also take a leading `+`).
fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses `bytes 0-99/1000`, `bytes 0-99/*` and `bytes */1000`. Rejects anything inconsistent
/// (last before first, a range past the total), since bytes described by it cannot be trusted.
pub(crate) fn parse_content_range(value: &str) -> Option<ContentRange> {
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

/// The longest wait a `Retry-After` may ask for before it is treated as this long: past it the
/// request's overall deadline has expired anyway, and it keeps the arithmetic far from overflow.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// `Retry-After` as a wait from `now`: delta-seconds or an HTTP date (a date in the past means
/// "now"). `None` when absent or unreadable, so the caller falls back to its own backoff.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Some(secs) = parse_u64(value) {
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

/// Splits header parameters on `;`, leaving `;` inside quoted strings alone.
fn split_params(value: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in value.char_indices() {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == ';' && !quoted {
            parts.push(&value[start..i]);
            start = i + 1;
        }
    }
    parts.push(&value[start..]);
    parts
}

/// A parameter value: a quoted-string (with `\` escapes) or a bare token.
fn unquote(value: &str) -> String {
    let value = value.trim();
    let Some(inner) = value.strip_prefix('"') else {
        return value.to_string();
    };
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    out.push(n)
                }
            }
            '"' => break,
            c => out.push(c),
        }
    }
    out
}

/// Percent-decodes bytes; `None` on a malformed escape.
fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// RFC 5987 `charset'lang'percent-encoded` (the value of `filename*=`).
fn decode_ext_value(value: &str) -> Option<String> {
    let mut parts = value.trim().splitn(3, '\'');
    let (charset, _lang, encoded) = (parts.next()?, parts.next()?, parts.next()?);
    let bytes = percent_decode(encoded)?;
    if charset.eq_ignore_ascii_case("utf-8") {
        String::from_utf8(bytes).ok()
    } else if charset.eq_ignore_ascii_case("iso-8859-1") {
        Some(bytes.into_iter().map(char::from).collect())
    } else {
        None
    }
}

/// Makes a server-chosen name safe to use as one file name: the last path component only, no
/// NUL or control characters, not empty, `.` or `..`. A hostile or buggy server must not be
/// able to name a file outside the directory it is put in.
fn sanitize_filename(name: &str) -> Option<String> {
    let last = name.rsplit(['/', '\\']).next().unwrap_or("").trim();
    if last.is_empty() || last == "." || last == ".." || last.chars().any(char::is_control) {
        return None;
    }
    Some(last.to_string())
}

/// `filename*=` (preferred, RFC 6266) or `filename=` of a `Content-Disposition` value, quoted or
/// not, reduced to a safe single file name.
pub(crate) fn parse_content_disposition(value: &str) -> Option<String> {
    let mut plain = None;
    let mut extended = None;
    for param in split_params(value).into_iter().skip(1) {
        let Some((name, val)) = param.split_once('=') else {
            continue;
        };
        match name.trim().to_ascii_lowercase().as_str() {
            "filename*" => extended = extended.or_else(|| decode_ext_value(&unquote(val))),
            "filename" => plain = plain.or_else(|| Some(unquote(val))),
            _ => {}
        }
    }
    extended
        .and_then(|n| sanitize_filename(&n))
        .or_else(|| plain.and_then(|n| sanitize_filename(&n)))
}

/// How much of an unreadable error body is quoted in a message: enough for an HTML title or a
/// proxy's one-line reason, short enough for a log line.
const BODY_EXCERPT_CHARS: usize = 200;

/// What an error answer says: zipper's `{"trace-id", "code": "DAT-ZIP-nnn", "message"}` when the
/// body is that JSON, otherwise an excerpt of whatever it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ErrorBody {
    pub code: Option<String>,
    pub message: Option<String>,
    pub trace_id: Option<String>,
    /// The start of a body that is not zipper's JSON, control characters replaced.
    pub excerpt: Option<String>,
}

fn json_text(v: &serde_json::Value, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|k| match v.get(*k)? {
        serde_json::Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

impl ErrorBody {
    pub(crate) fn parse(body: &[u8]) -> ErrorBody {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
            if v.is_object() {
                let e = ErrorBody {
                    code: json_text(&v, &["code", "error"]),
                    message: json_text(&v, &["message", "detail", "error_description"]),
                    trace_id: json_text(&v, &["trace-id", "traceId", "trace_id"]),
                    excerpt: None,
                };
                if e.code.is_some() || e.message.is_some() {
                    return e;
                }
            }
        }
        let text = String::from_utf8_lossy(body);
        let text: String = text
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(BODY_EXCERPT_CHARS)
            .collect();
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        ErrorBody {
            excerpt: (!text.is_empty()).then_some(text),
            ..ErrorBody::default()
        }
    }

    /// The server says the token itself was not accepted (zipper answers some of these with
    /// 403 rather than 401): worth a renewal, unlike a 403 for terms not accepted.
    pub(crate) fn says_token_refused(&self) -> bool {
        if self.code.as_deref() == Some("DAT-ZIP-604") {
            return true;
        }
        let text = [&self.message, &self.excerpt]
            .into_iter()
            .flatten()
            .map(|s| s.to_ascii_lowercase())
            .collect::<Vec<_>>()
            .join(" ");
        text.contains("token")
            && ["not found", "expired", "invalid", "not active", "missing"]
                .iter()
                .any(|w| text.contains(w))
    }

    /// `HTTP 401 Unauthorized: DAT-ZIP-604 Token not found (trace-id abc)`.
    pub(crate) fn describe(&self, status: reqwest::StatusCode) -> String {
        let mut s = format!("HTTP {status}");
        let detail: Vec<&str> = [&self.code, &self.message, &self.excerpt]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
        if !detail.is_empty() {
            s.push_str(": ");
            s.push_str(&detail.join(" "));
        }
        if let Some(t) = &self.trace_id {
            s.push_str(&format!(" (trace-id {t})"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn retry_after_table() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("99999999999999999999", now), None);
        assert_eq!(parse_retry_after("9999999999", now), Some(MAX_RETRY_AFTER));
        for bad in ["", "-5", "1.5", "soon", "+3"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn content_disposition_table() {
        let cases: &[(&str, Option<&str>)] = &[
            (
                "attachment; filename=\"S2A_X.SAFE.zip\"",
                Some("S2A_X.SAFE.zip"),
            ),
            ("attachment; filename=S2A_X.zip", Some("S2A_X.zip")),
            (
                "attachment;filename = \"a;b.zip\" ; size=3",
                Some("a;b.zip"),
            ),
            (
                "attachment; filename=\"q\\\"uote.zip\"",
                Some("q\"uote.zip"),
            ),
            ("attachment; FILENAME=up.zip", Some("up.zip")),
            (
                "attachment; filename=\"plain.zip\"; filename*=UTF-8''%C3%A9t%C3%A9.zip",
                Some("été.zip"),
            ),
            (
                "attachment; filename*=utf-8'en'bad%ZZ; filename=ok.zip",
                Some("ok.zip"),
            ),
            ("attachment; filename*=iso-8859-1''%E9.zip", Some("é.zip")),
            ("attachment; filename=\"../../etc/passwd\"", Some("passwd")),
            (
                "attachment; filename=\"C:\\\\x\\\\evil.zip\"",
                Some("evil.zip"),
            ),
            ("attachment; filename=\"..\"", None),
            ("attachment; filename=\"a/\"", None),
            ("attachment; filename=\"nul\u{0}.zip\"", None),
            ("attachment; filename=", None),
            ("attachment", None),
            ("inline; name=x", None),
            ("", None),
            ("filename=first-param-is-the-type.zip", None),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse_content_disposition(input).as_deref(),
                *want,
                "{input:?}"
            );
        }
    }

    #[test]
    fn error_body_json_and_garbage() {
        let e = ErrorBody::parse(
            br#"{"trace-id":"t-1","code":"DAT-ZIP-604","message":"Token not found"}"#,
        );
        assert_eq!(e.code.as_deref(), Some("DAT-ZIP-604"));
        assert!(e.says_token_refused());
        assert_eq!(
            e.describe(reqwest::StatusCode::UNAUTHORIZED),
            "HTTP 401 Unauthorized: DAT-ZIP-604 Token not found (trace-id t-1)"
        );

        let e = ErrorBody::parse(br#"{"code":"DAT-ZIP-403","message":"Terms not accepted"}"#);
        assert!(!e.says_token_refused());

        let e = ErrorBody::parse(b"<html><title>502 Bad\r\nGateway</title></html>");
        assert!(!e.says_token_refused());
        let d = e.describe(reqwest::StatusCode::BAD_GATEWAY);
        assert!(d.starts_with("HTTP 502 Bad Gateway: <html>"), "{d}");
        assert!(!d.contains('\n'));

        assert_eq!(
            ErrorBody::parse(b"").describe(reqwest::StatusCode::SERVICE_UNAVAILABLE),
            "HTTP 503 Service Unavailable"
        );
        let e = ErrorBody::parse(&[0xff, 0xfe, b'{', b'"']);
        assert!(e.excerpt.is_some());
        let e = ErrorBody::parse(br#"[1,2]"#);
        assert_eq!(e.excerpt.as_deref(), Some("[1,2]"));
        let long = vec![b'x'; 10_000];
        assert_eq!(
            ErrorBody::parse(&long).excerpt.map(|s| s.len()),
            Some(BODY_EXCERPT_CHARS)
        );
    }

    /// Random and mutated header values: none may panic, and whatever parses is consistent.
    #[test]
    fn parsers_never_panic_on_random_input() {
        const ALPHABET: &[u8] = b"bytes */-0123456789;=\"'\\%fFilenamE*UTF8 \t,.\xc3\xa9\x00\xff";
        let seeds = [
            "bytes 0-99/1000",
            "attachment; filename*=UTF-8''%C3%A9.zip",
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "{\"code\":\"DAT-ZIP-604\",\"message\":\"x\"}",
        ];
        let now = SystemTime::now();
        for i in 0..20_000u32 {
            let mut bytes: Vec<u8> = if i % 2 == 0 {
                seeds[(i as usize / 2) % seeds.len()].as_bytes().to_vec()
            } else {
                Vec::new()
            };
            for _ in 0..rand::random_range(0..12) {
                let c = ALPHABET[rand::random_range(0..ALPHABET.len())];
                if bytes.is_empty() || rand::random_bool(0.5) {
                    let at = rand::random_range(0..=bytes.len());
                    bytes.insert(at, c);
                } else {
                    let at = rand::random_range(0..bytes.len());
                    bytes[at] = c;
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            if let Some(cr) = parse_content_range(&text) {
                if let (Some((a, b)), total) = (cr.range, cr.total) {
                    assert!(a <= b && total.is_none_or(|t| b < t), "{text:?}");
                }
            }
            let _ = parse_retry_after(&text, now);
            if let Some(name) = parse_content_disposition(&text) {
                assert!(
                    !name.is_empty() && !name.contains('/') && name != "..",
                    "{text:?}"
                );
            }
            let _ = ErrorBody::parse(&bytes).describe(reqwest::StatusCode::BAD_REQUEST);
        }
    }
}
