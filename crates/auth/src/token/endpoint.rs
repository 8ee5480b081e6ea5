//! One request to the Keycloak token endpoint, and what its answer means.
//!
//! This file owns the wire format: the form body (every field encoded by a real form encoder;
//! the tutorial encoded only the password and broke on a `+` in an e-mail address), the
//! classification of answers into success, refusal, transient failure or protocol error, and the
//! reading of a success into local-time expiries. It does not retry and does not choose TOTP
//! steps: the manager in `mod.rs` does that.
//!
//! Keycloak's errors are told apart by the JSON `error` field, never by the status code: a wrong
//! password is 401 in older versions and 400 from 26.6 on. A 4xx without a JSON error (the
//! HTML page of Keycloak's session limiter, a WAF or a proxy) is a refusal too, except 408 and
//! 429: sending the same password again would only be refused again, and spend a TOTP step.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use crate::clock::{Clock, ServerOffset};
use crate::Secret;

/// How long one token request may take before it counts as a transient failure. Keycloak
/// answers in well under a second; 15 s leaves room for a slow link without letting a stalled
/// connection hold every reader for long.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// A `Retry-After` longer than this is read as this: a sanity bound on a server-given number,
/// tighter than [`eodata_http::MAX_RETRY_AFTER`] because a login waits on it. The retry policy
/// caps the wait further (to its longest backoff).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// The most of an answer's body that is read. A token answer is a few KB (three JWTs); a
/// server sending more is not a token endpoint, and must not fill the memory.
pub(crate) const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// The text of Keycloak's session limiter page (`sessionLimitExceeded`), looked for
/// case-insensitively in a 403 HTML body.
const TOO_MANY_SESSIONS: &str = "too many sessions";

/// The `error` given to a refusal read from the session limiter's page.
pub(crate) const TOO_MANY_SESSIONS_ERROR: &str = "too_many_sessions";

/// What a grant request asks for.
pub(crate) enum Grant<'a> {
    Password {
        user: &'a str,
        password: &'a Secret,
        /// `None` for an account without two-factor login: no `totp` field is sent.
        code: Option<&'a Secret>,
    },
    Refresh {
        refresh_token: &'a Secret,
    },
}

impl Grant<'_> {
    /// The `application/x-www-form-urlencoded` body. It holds secrets: never log it.
    pub(crate) fn form(&self, client_id: &str, client_secret: Option<&Secret>) -> String {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        match self {
            Grant::Password {
                user,
                password,
                code,
            } => {
                form.append_pair("grant_type", "password")
                    .append_pair("client_id", client_id);
                if let Some(secret) = client_secret {
                    form.append_pair("client_secret", secret.expose());
                }
                form.append_pair("username", user)
                    .append_pair("password", password.expose());
                if let Some(code) = code {
                    form.append_pair("totp", code.expose());
                }
            }
            Grant::Refresh { refresh_token } => {
                form.append_pair("grant_type", "refresh_token")
                    .append_pair("client_id", client_id);
                if let Some(secret) = client_secret {
                    form.append_pair("client_secret", secret.expose());
                }
                form.append_pair("refresh_token", refresh_token.expose());
            }
        }
        form.finish()
    }
}

/// Tokens from a successful grant, with expiries in local time.
#[derive(Clone, Debug)]
pub(crate) struct Granted {
    pub access: Secret,
    /// Local time at which the request was sent: lifetimes count from here.
    pub obtained_at: SystemTime,
    pub access_expires_at: SystemTime,
    pub refresh: Option<Secret>,
    /// `None` when the server gave no refresh lifetime (or 0, Keycloak's "no expiry" for
    /// offline tokens): the server will say when it stops working.
    pub refresh_expires_at: Option<SystemTime>,
}

/// Why a request produced no tokens.
#[derive(Clone, Debug)]
pub(crate) enum Failure {
    /// An OAuth error answer (`{"error": ...}`) that is not a server fault: the grant itself was
    /// refused.
    Refused { error: String, description: String },
    /// Worth retrying: network trouble, a timeout, 5xx, 429, 408.
    Transient {
        reason: String,
        /// False only when the request certainly never reached the server (connect error), so a
        /// TOTP code it carried is still unspent.
        may_have_arrived: bool,
        retry_after: Option<Duration>,
    },
    /// An answer this client does not understand.
    Protocol(String),
}

/// The parts of an HTTP answer that matter here.
pub(crate) struct RawAnswer {
    pub status: u16,
    pub date: Option<String>,
    pub retry_after: Option<String>,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
    pub sent: SystemTime,
    pub received: SystemTime,
}

/// Sends one grant request. Never logs the body.
pub(crate) async fn send(
    client: &reqwest::Client,
    url: &str,
    form: String,
    clock: &dyn Clock,
) -> Result<RawAnswer, Failure> {
    let sent = clock.now();
    let response = client
        .post(url)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(reqwest::header::ACCEPT, "application/json")
        .timeout(REQUEST_TIMEOUT)
        .body(form)
        .send()
        .await
        .map_err(transport_failure)?;
    if url::Url::parse(url).ok().as_ref() != Some(response.url()) {
        // The client followed a redirect. reqwest re-sends a POST body (the password) on 307
        // and 308, so the caller should build its client without redirects for this endpoint;
        // here, at least, the answer of an address nobody configured is not trusted.
        return Err(Failure::Protocol(format!(
            "the token endpoint redirected to {}; set the token URL to the final address",
            crate::redact_url(response.url().as_str())
        )));
    }
    read_answer(response, sent, clock).await
}

/// A GET on the token endpoint, only for its `Date` header: Keycloak answers 405 at once,
/// without opening a session. Used before the first password login of a process, so that its
/// TOTP step is computed on the server's clock from the start.
pub(crate) async fn probe_date(
    client: &reqwest::Client,
    url: &str,
    clock: &dyn Clock,
) -> Option<ServerOffset> {
    let sent = clock.now();
    let response = client.get(url).timeout(REQUEST_TIMEOUT).send().await.ok()?;
    let received = clock.now();
    let date = response
        .headers()
        .get(reqwest::header::DATE)?
        .to_str()
        .ok()?;
    ServerOffset::estimate(date, sent, received)
}

async fn read_answer(
    mut response: reqwest::Response,
    sent: SystemTime,
    clock: &dyn Clock,
) -> Result<RawAnswer, Failure> {
    let received = clock.now();
    let header = |name: reqwest::header::HeaderName| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let status = response.status().as_u16();
    let date = header(reqwest::header::DATE);
    let retry_after = header(reqwest::header::RETRY_AFTER);
    let content_type = header(reqwest::header::CONTENT_TYPE);
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport_failure)? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(Failure::Protocol(format!(
                "HTTP {status}: the answer is larger than {} KiB; is the token URL right?",
                MAX_ANSWER_BYTES / 1024
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(RawAnswer {
        status,
        date,
        retry_after,
        content_type,
        body,
        sent,
        received,
    })
}

/// A reqwest error as a failure. The error's text is safe to show: reqwest does not put the
/// body in it, and the URL is the token endpoint's, which carries no credentials.
fn transport_failure(e: reqwest::Error) -> Failure {
    let may_have_arrived = !e.is_connect();
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    // The source chain says why (DNS, refused, TLS), without the URL's query (there is none).
    let mut reason = what.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        reason.push_str(": ");
        reason.push_str(&s.to_string());
        source = s.source();
    }
    Failure::Transient {
        reason,
        may_have_arrived,
        retry_after: None,
    }
}

#[derive(Deserialize)]
struct TokenBody {
    access_token: String,
    #[serde(default)]
    expires_in: Option<f64>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    refresh_expires_in: Option<f64>,
    #[serde(default)]
    token_type: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// Describes a JSON error without quoting the input: serde's messages can quote values, and a
/// value in a token answer may be a token.
fn json_problem(e: &serde_json::Error) -> String {
    let kind = match e.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "not JSON",
        serde_json::error::Category::Data => {
            "JSON of the wrong shape (a field missing or of the wrong type)"
        }
        serde_json::error::Category::Eof => "truncated JSON",
    };
    format!("{kind} at line {} column {}", e.line(), e.column())
}

/// Reads an answer. `offset` is the server clock's offset as known after this answer (the
/// caller has already folded in its `Date`); it converts the JWT's `exp` to local time, and is
/// `None` when no `Date` was ever seen, in which case `exp` is not trusted (the local clock may
/// be off by any amount and `exp` could make a good token look expired).
pub(crate) fn classify(
    answer: &RawAnswer,
    offset: Option<ServerOffset>,
) -> Result<Granted, Failure> {
    let status = answer.status;
    if (200..300).contains(&status) {
        let body: TokenBody = serde_json::from_slice(&answer.body).map_err(|e| {
            Failure::Protocol(format!(
                "HTTP {status} but the body is not a token answer: {}",
                json_problem(&e)
            ))
        })?;
        return granted(body, answer, offset);
    }
    let oauth_error = serde_json::from_slice::<ErrorBody>(&answer.body).ok();
    if status >= 500 || status == 429 || status == 408 {
        let detail = oauth_error
            .map(|e| format!(" ({})", e.error))
            .unwrap_or_default();
        return Err(Failure::Transient {
            reason: format!("HTTP {status}{detail}"),
            may_have_arrived: true,
            retry_after: answer
                .retry_after
                .as_deref()
                .and_then(|v| eodata_http::retry_after(v, answer.received))
                .map(|d| d.min(MAX_RETRY_AFTER)),
        });
    }
    match oauth_error {
        Some(e) => Err(Failure::Refused {
            error: e.error,
            description: e.error_description.unwrap_or_default(),
        }),
        None if (400..500).contains(&status) => {
            let text = String::from_utf8_lossy(&answer.body).to_lowercase();
            if status == 403 && text.contains(TOO_MANY_SESSIONS) {
                return Err(Failure::Refused {
                    error: TOO_MANY_SESSIONS_ERROR.into(),
                    description: String::new(),
                });
            }
            Err(Failure::Refused {
                error: format!("HTTP {status}"),
                description: format!(
                    "a {} page instead of an OAuth answer: a proxy or firewall refused the request, or the token URL is wrong",
                    answer.content_type.as_deref().unwrap_or("untyped")
                ),
            })
        }
        None => Err(Failure::Protocol(format!(
            "HTTP {status} ({}) without an OAuth error body; is the token URL right?",
            answer.content_type.as_deref().unwrap_or("no content type")
        ))),
    }
}

fn granted(
    body: TokenBody,
    answer: &RawAnswer,
    offset: Option<ServerOffset>,
) -> Result<Granted, Failure> {
    if body.access_token.is_empty() {
        return Err(Failure::Protocol("the access_token is empty".into()));
    }
    if let Some(kind) = &body.token_type {
        if !kind.eq_ignore_ascii_case("bearer") {
            return Err(Failure::Protocol(format!(
                "token_type is {kind:?}, not Bearer"
            )));
        }
    }
    let sent = answer.sent;
    let from_expires_in = match body.expires_in {
        Some(s) if s.is_finite() && s > 0.0 => Some(sent + secs(s)),
        Some(_) => {
            return Err(Failure::Protocol(
                "expires_in is not a positive number".into(),
            ))
        }
        None => None,
    };
    let from_exp = offset.and_then(|offset| {
        let exp = jwt_exp(&body.access_token)?;
        let local = offset.to_local(exp);
        // An `exp` already past when the answer arrived contradicts the answer itself; believe
        // `expires_in` rather than renew in a loop.
        (local > answer.received).then_some(local)
    });
    let access_expires_at = match (from_expires_in, from_exp) {
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => {
            return Err(Failure::Protocol(
                "the answer says neither expires_in nor a readable JWT exp".into(),
            ))
        }
    };
    let refresh = body
        .refresh_token
        .filter(|t| !t.is_empty())
        .map(Secret::new);
    let refresh_expires_at = match body.refresh_expires_in {
        Some(s) if s.is_finite() && s > 0.0 => Some(sent + secs(s)),
        _ => None,
    };
    Ok(Granted {
        access: Secret::new(body.access_token),
        obtained_at: sent,
        access_expires_at,
        refresh,
        refresh_expires_at,
    })
}

fn secs(s: f64) -> Duration {
    // A century: anything longer is nonsense and must not overflow `SystemTime`.
    Duration::from_secs_f64(s.min(3.2e9))
}

/// The `exp` claim of a JWT (server time), if the token is a JWT that has one. The signature is
/// not checked: the server that issued it is the one that will judge it; `exp` only helps to
/// renew in time.
pub(crate) fn jwt_exp(token: &str) -> Option<SystemTime> {
    let mut parts = token.split('.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    let json = base64url_decode(payload)?;
    let claims: serde_json::Value = serde_json::from_slice(&json).ok()?;
    let exp = claims.get("exp")?.as_f64()?;
    (exp.is_finite() && exp > 0.0).then(|| UNIX_EPOCH + secs(exp))
}

/// Base64url, as JWTs write their parts (without padding; padding is accepted too).
pub(crate) fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    use base64::Engine as _;
    const JWT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    JWT.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> RawAnswer {
        RawAnswer {
            status,
            date: None,
            retry_after: None,
            content_type: Some("application/json".into()),
            body: body.as_bytes().to_vec(),
            sent: UNIX_EPOCH + Duration::from_secs(1_000),
            received: UNIX_EPOCH + Duration::from_secs(1_001),
        }
    }

    fn b64(s: &str) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let bytes = s.as_bytes();
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().fold(0u32, |a, &b| (a << 8) | b as u32) << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }

    pub(crate) fn jwt(exp: u64) -> String {
        format!(
            "{}.{}.sig",
            b64(r#"{"alg":"RS256"}"#),
            b64(&format!(r#"{{"exp":{exp},"iat":1}}"#))
        )
    }

    #[test]
    fn form_encodes_every_field() {
        let password = Secret::new("p&ss=w+rd %");
        let code = Secret::new("012345");
        let body = Grant::Password {
            user: "first+last@example.com",
            password: &password,
            code: Some(&code),
        }
        .form("CLOUDFERRO_PUBLIC", None);
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect();
        assert!(pairs.contains(&("username".into(), "first+last@example.com".into())));
        assert!(pairs.contains(&("password".into(), "p&ss=w+rd %".into())));
        assert!(pairs.contains(&("totp".into(), "012345".into())));
        assert!(pairs.contains(&("grant_type".into(), "password".into())));
        assert!(body.contains("first%2Blast%40example.com"), "{body}");
        assert!(!pairs.iter().any(|(k, _)| k == "client_secret"), "{body}");
    }

    #[test]
    fn no_totp_field_without_a_code_and_a_client_secret_when_set() {
        let password = Secret::new("pw");
        let secret = Secret::new("s3cr&t");
        let body = Grant::Password {
            user: "u",
            password: &password,
            code: None,
        }
        .form("c", Some(&secret));
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect();
        assert!(
            !pairs.iter().any(|(k, _)| k == "totp" || k == "otp"),
            "{body}"
        );
        assert!(pairs.contains(&("client_secret".into(), "s3cr&t".into())));
        let refresh = Secret::new("r");
        let body = Grant::Refresh {
            refresh_token: &refresh,
        }
        .form("c", Some(&secret));
        assert!(body.contains("client_secret=s3cr%26t"), "{body}");
    }

    #[test]
    fn a_4xx_page_is_a_refusal_and_the_session_limiter_is_named() {
        for status in [400, 401, 403, 404] {
            let mut a = answer(status, "<html><body>Request blocked</body></html>");
            a.content_type = Some("text/html".into());
            let e = classify(&a, None).unwrap_err();
            assert!(
                matches!(e, Failure::Refused { ref error, ref description }
                    if *error == format!("HTTP {status}") && description.contains("text/html")),
                "{status}: {e:?}"
            );
        }
        let e = classify(
            &answer(
                403,
                "<p class=\"instruction\">There are too many sessions</p>",
            ),
            None,
        )
        .unwrap_err();
        assert!(
            matches!(e, Failure::Refused { ref error, .. } if error == TOO_MANY_SESSIONS_ERROR)
        );
        // 408 and 429 stay transient whatever their body.
        for status in [408, 429] {
            let e = classify(&answer(status, "<html>"), None).unwrap_err();
            assert!(matches!(e, Failure::Transient { .. }), "{status}");
        }
    }

    #[test]
    fn success_uses_expires_in_from_send_time() {
        let g = classify(
            &answer(200, r#"{"access_token":"abc","expires_in":300,"refresh_token":"r","refresh_expires_in":1800,"token_type":"Bearer"}"#),
            None,
        )
        .unwrap();
        assert_eq!(g.access.expose(), "abc");
        assert_eq!(g.access_expires_at, UNIX_EPOCH + Duration::from_secs(1_300));
        assert_eq!(
            g.refresh_expires_at,
            Some(UNIX_EPOCH + Duration::from_secs(2_800))
        );
        assert_eq!(g.refresh.unwrap().expose(), "r");
    }

    #[test]
    fn jwt_exp_wins_when_earlier_and_a_date_was_seen() {
        let token = jwt(1_200);
        let body = format!(r#"{{"access_token":"{token}","expires_in":300}}"#);
        assert_eq!(
            jwt_exp(&token),
            Some(UNIX_EPOCH + Duration::from_secs(1_200))
        );
        let g = classify(&answer(200, &body), Some(ServerOffset::ZERO)).unwrap();
        assert_eq!(g.access_expires_at, UNIX_EPOCH + Duration::from_secs(1_200));
        // Server 100 s ahead: exp 1200 server time is 1100 local.
        let g = classify(
            &answer(200, &body),
            Some(ServerOffset::from_millis(100_000)),
        )
        .unwrap();
        assert_eq!(g.access_expires_at, UNIX_EPOCH + Duration::from_secs(1_100));
        // Without any Date, exp is not trusted.
        let g = classify(&answer(200, &body), None).unwrap();
        assert_eq!(g.access_expires_at, UNIX_EPOCH + Duration::from_secs(1_300));
        // An exp already past is a contradiction: expires_in wins.
        let body = format!(r#"{{"access_token":"{}","expires_in":300}}"#, jwt(900));
        let g = classify(&answer(200, &body), Some(ServerOffset::ZERO)).unwrap();
        assert_eq!(g.access_expires_at, UNIX_EPOCH + Duration::from_secs(1_300));
    }

    #[test]
    fn errors_are_told_apart_by_the_error_field() {
        for status in [400, 401] {
            let e = classify(
                &answer(
                    status,
                    r#"{"error":"invalid_grant","error_description":"Invalid user credentials"}"#,
                ),
                None,
            )
            .unwrap_err();
            assert!(matches!(e, Failure::Refused { ref error, ref description }
                if error == "invalid_grant" && description == "Invalid user credentials"));
        }
        let e = classify(&answer(503, "<html>down</html>"), None).unwrap_err();
        assert!(matches!(
            e,
            Failure::Transient {
                may_have_arrived: true,
                ..
            }
        ));
        let mut a = answer(429, "");
        a.retry_after = Some("120".into());
        let e = classify(&a, None).unwrap_err();
        assert!(
            matches!(e, Failure::Transient { retry_after: Some(d), .. } if d == Duration::from_secs(120))
        );
        a.retry_after = Some("999999".into());
        let e = classify(&a, None).unwrap_err();
        assert!(
            matches!(e, Failure::Transient { retry_after: Some(d), .. } if d == MAX_RETRY_AFTER)
        );
        // An HTTP-date counts from when the answer was received.
        a.retry_after = Some(httpdate::fmt_http_date(
            a.received + Duration::from_secs(60),
        ));
        let e = classify(&a, None).unwrap_err();
        assert!(
            matches!(e, Failure::Transient { retry_after: Some(d), .. } if d == Duration::from_secs(60))
        );
        a.retry_after = Some("soon".into());
        let e = classify(&a, None).unwrap_err();
        assert!(matches!(
            e,
            Failure::Transient {
                retry_after: None,
                ..
            }
        ));
        let e = classify(&answer(302, "<html>"), None).unwrap_err();
        assert!(matches!(e, Failure::Protocol(ref m) if m.contains("302")));
    }

    #[test]
    fn garbage_is_a_protocol_error_that_quotes_nothing() {
        for body in [
            "not json",
            r#"{"access_token": 12}"#,
            r#"{"access_token":"x","expires_in":"secret-looking-value"}"#,
            r#"{"access_token":"x"}"#,
            r#"{"access_token":"x","expires_in":-5}"#,
            r#"{"access_token":"x","expires_in":60,"token_type":"MAC"}"#,
            r#"{"access_token":"","expires_in":60}"#,
            "",
        ] {
            let e = classify(&answer(200, body), None).unwrap_err();
            let Failure::Protocol(m) = e else {
                panic!("{body}")
            };
            assert!(!m.contains("secret-looking-value"), "{m}");
        }
    }

    /// A seeded xorshift: the same 20,000 inputs on every run, no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// Random and mutated token-endpoint answers (valid ones with a byte changed, cut, a value
    /// swapped for an extreme one, JWTs with garbage payloads) never panic `classify` or
    /// `jwt_exp`; they give a grant or an error.
    #[test]
    fn token_answers_never_panic_on_random_or_mutated_json() {
        const VALUES: &[&str] = &[
            "0",
            "-1",
            "1e400",
            "-1e400",
            "1.5",
            "18446744073709551616",
            "null",
            "true",
            "\"\"",
            "\"Bearer\"",
            "[]",
            "{}",
            "\"\\u0000\"",
            "\"\u{e9}\u{1F600}\"",
            "3.2e9",
            "1e-300",
            "1e300",
        ];
        const PIECES: &[&str] = &[
            "{",
            "}",
            "[",
            "]",
            ":",
            ",",
            "\"",
            "\\",
            "access_token",
            "expires_in",
            "refresh_token",
            "refresh_expires_in",
            "token_type",
            "error",
            "error_description",
            ".",
            "eyJ",
            "=",
            "\u{0}",
            "\u{ff}",
        ];
        let mut rng = Rng(0x5eed_cafe_f00d_0001);
        let jwts = [
            jwt(1_000_000),
            jwt(0),
            "a.b.c".to_string(),
            format!("x.{}.y", b64("{\"exp\":1e999}")),
        ];
        for i in 0..20_000u32 {
            let access = &jwts[rng.below(jwts.len())];
            let valid = format!(
                r#"{{"access_token":"{access}","expires_in":300,"refresh_token":"r","refresh_expires_in":1800,"token_type":"Bearer"}}"#
            );
            let error =
                r#"{"error":"invalid_grant","error_description":"Invalid user credentials"}"#;
            let mut body: Vec<u8> = if i % 2 == 0 {
                valid.into_bytes()
            } else {
                error.as_bytes().to_vec()
            };
            for _ in 0..rng.below(4) + 1 {
                match rng.below(5) {
                    0 if !body.is_empty() => {
                        let at = rng.below(body.len());
                        body.truncate(at);
                    }
                    1 if !body.is_empty() => {
                        let at = rng.below(body.len());
                        body[at] = rng.next() as u8;
                    }
                    2 => {
                        let at = rng.below(body.len() + 1);
                        let piece = PIECES[rng.below(PIECES.len())].as_bytes();
                        body.splice(at..at, piece.iter().copied());
                    }
                    3 => {
                        // Swap the value after some ':' for an extreme one.
                        let colons: Vec<usize> =
                            (0..body.len()).filter(|&j| body[j] == b':').collect();
                        if let Some(&c) = colons.get(rng.below(colons.len().max(1))) {
                            let end = (c + 1..body.len())
                                .find(|&j| body[j] == b',' || body[j] == b'}')
                                .unwrap_or(body.len());
                            let v = VALUES[rng.below(VALUES.len())].as_bytes();
                            body.splice(c + 1..end, v.iter().copied());
                        }
                    }
                    _ => {
                        let n = rng.below(64);
                        body = (0..n).map(|_| rng.next() as u8).collect();
                    }
                }
            }
            let status = [200u16, 201, 400, 401, 403, 429, 500, 503][rng.below(8)];
            let mut a = answer(status, "");
            a.body = body.clone();
            if rng.below(2) == 0 {
                a.retry_after =
                    Some(String::from_utf8_lossy(&body[..body.len().min(8)]).into_owned());
            }
            let offset = (rng.below(2) == 0).then_some(crate::clock::ServerOffset::ZERO);
            let _ = classify(&a, offset);
            let _ = jwt_exp(&String::from_utf8_lossy(&body));
            let _ = jwt_exp(&format!("h.{}.s", b64(&String::from_utf8_lossy(&body))));
        }
    }
}
