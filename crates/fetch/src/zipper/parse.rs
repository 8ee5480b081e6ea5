//! Parsers for what the download service sends back: `Content-Disposition` and zipper's JSON
//! error bodies. (`Content-Range` and `Retry-After` are HTTP's, read in `eodata_http`.)
//!
//! Everything here reads untrusted server input, so every function is total: any input gives
//! `None` or a best-effort description, never a panic. They are pure, and tested by tables and by
//! random input.

use reqwest::StatusCode;

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

/// Percent-decodes bytes; `None` on a malformed escape. Not the `percent-encoding` crate: its
/// decoder keeps a malformed escape as text, where RFC 6266 wants a malformed `filename*`
/// ignored (and the plain `filename` used).
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

/// What the client does about an error answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Meaning {
    /// 401 (DAT-ZIP-604 "Token not found", DAT-ZIP-109 expired, or no code): renew the token,
    /// unless it is seconds old. `expired` when the server says so: always worth a renewal.
    TokenRefused { expired: bool },
    /// 401 DAT-ZIP-609 "Token audience not allowed": the token comes from a client the service
    /// does not take. Final: no renewal can change the audience.
    Audience,
    /// 403 (DAT-ZIP-608 "Access forbidden", or terms not accepted): final, the user must act.
    Forbidden,
    /// 404 DAT-ZIP-915 "No objects to stream": the product exists but has no data online.
    NoData,
    /// 404 / 410 otherwise.
    NotFound,
    /// 422 (DAT-ZIP-111: the id in our URL is not a UUID it reads) or 400 DAT-ZIP-104: our
    /// request is malformed, a bug of ours.
    BadRequest,
    /// 429 (DAT-ZIP-100 "Max session number 4 exceeded", or a WAF's rate limit).
    Throttled,
    /// 5xx: passing.
    Server,
    /// Anything else: not understood, not retried.
    Other,
}

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

    /// The server says the token itself was not accepted (some answers of this kind come as
    /// 403 rather than 401): worth a renewal, unlike a 403 for terms not accepted.
    pub(crate) fn says_token_refused(&self) -> bool {
        if matches!(self.code.as_deref(), Some("DAT-ZIP-604" | "DAT-ZIP-109")) {
            return true;
        }
        let text = self.text();
        text.contains("token")
            && ["not found", "expired", "invalid", "not active", "missing"]
                .iter()
                .any(|w| text.contains(w))
    }

    /// Message and excerpt, lower case, for looking for words.
    fn text(&self) -> String {
        [&self.message, &self.excerpt]
            .into_iter()
            .flatten()
            .map(|s| s.to_ascii_lowercase())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// What an error answer means for the client. The codes are the real zipper's, as far as
    /// public sources know them (docs/protocol.md, "Download errors"); where the code is
    /// missing (an HTML page from a proxy), the status decides.
    pub(crate) fn meaning(&self, status: StatusCode) -> Meaning {
        let code = self.code.as_deref().unwrap_or("");
        match status {
            _ if code == "DAT-ZIP-609" => Meaning::Audience,
            StatusCode::UNAUTHORIZED => Meaning::TokenRefused {
                expired: code == "DAT-ZIP-109" || self.text().contains("expired"),
            },
            StatusCode::FORBIDDEN if code != "DAT-ZIP-608" && self.says_token_refused() => {
                Meaning::TokenRefused {
                    expired: code == "DAT-ZIP-109",
                }
            }
            StatusCode::FORBIDDEN => Meaning::Forbidden,
            StatusCode::NOT_FOUND if code == "DAT-ZIP-915" => Meaning::NoData,
            StatusCode::NOT_FOUND | StatusCode::GONE => Meaning::NotFound,
            StatusCode::UNPROCESSABLE_ENTITY => Meaning::BadRequest,
            StatusCode::BAD_REQUEST if code == "DAT-ZIP-104" || code == "DAT-ZIP-111" => {
                Meaning::BadRequest
            }
            StatusCode::TOO_MANY_REQUESTS => Meaning::Throttled,
            s if s.is_server_error() => Meaning::Server,
            _ => Meaning::Other,
        }
    }

    /// `HTTP 401 Unauthorized: DAT-ZIP-604 Token not found (trace-id abc)`.
    pub(crate) fn describe(&self, status: StatusCode) -> String {
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

    const ALPHABET: &[u8] = b"bytes */-0123456789;=\"'\\%fFilenamE*UTF8 \t,.\xc3\xa9\x00\xff";
    const SEEDS: [&str; 5] = [
        "",
        "bytes 0-99/1000",
        "attachment; filename*=UTF-8''%C3%A9.zip",
        "Sun, 06 Nov 1994 08:49:37 GMT",
        "{\"code\":\"DAT-ZIP-604\",\"message\":\"x\"}",
    ];

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]

        /// Header values mutated by up to 12 edits (inserts or overwrites of characters these
        /// parsers look at): none may panic, and whatever parses is consistent. A failure
        /// shrinks to the fewest edits.
        #[test]
        fn parsers_never_panic_on_random_input(
            seed in proptest::sample::select(SEEDS.to_vec()),
            edits in proptest::collection::vec(
                (proptest::prelude::any::<bool>(), 0usize..64, proptest::sample::select(ALPHABET.to_vec())),
                0..12,
            ),
        ) {
            let mut bytes = seed.as_bytes().to_vec();
            for (insert, at, c) in edits {
                if insert || bytes.is_empty() {
                    bytes.insert(at.min(bytes.len()), c);
                } else {
                    let at = at % bytes.len();
                    bytes[at] = c;
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            if let Some(name) = parse_content_disposition(&text) {
                proptest::prop_assert!(
                    !name.is_empty() && !name.contains('/') && name != "..",
                    "{:?}", text
                );
            }
            let _ = ErrorBody::parse(&bytes).describe(reqwest::StatusCode::BAD_REQUEST);
        }
    }
}
