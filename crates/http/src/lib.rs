//! HTTP policy, in one room: everything about *how* the project speaks HTTP that is not about
//! *what* one service means. The download client (`eodata-fetch`), the catalogue client and
//! (later) the token client call these instead of keeping their own copies:
//! - [`client`]: the one `reqwest::Client` builder, used by production and tests alike (no
//!   automatic redirects, a connect timeout, our user agent);
//! - [`backoff`]: exponential backoff with jitter, so that readers failing together do not
//!   retry together;
//! - [`retry_after`]: the one `Retry-After` parser (delta-seconds and HTTP-date);
//! - [`error_chain`] and [`is_unreachable`]: a reqwest error as one line without its URL, and
//!   whether it means "nothing answers there" (refused, DNS, no route) rather than "slow";
//! - [`redirect`]: where a redirect leads, and whether a credential may follow it;
//! - [`redact_url`]: the one way a URL reaches a log line;
//! - [`answer`]: how a download server answered a request for bytes (206 / 200 / 416), with
//!   `Content-Range` and `Content-Length` read and checked.

pub mod answer;
pub mod redirect;

use std::time::{Duration, SystemTime};

/// Connect timeout of [`client`]: a TCP + TLS handshake slower than this is a dead route, and
/// a dead route should fail fast (a few retries over seconds), while a slow but alive server
/// is given the read timeout instead. 10 s is far above any handshake to a live European
/// service (well under 1 s).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The `User-Agent` every request carries.
pub const USER_AGENT: &str = concat!("eodata-mount/", env!("CARGO_PKG_VERSION"));

/// The HTTP client every layer uses. It follows no redirects (callers follow them through
/// [`redirect`], deciding where a credential may go), has [`CONNECT_TIMEOUT`], and no overall
/// timeout: a whole product can take minutes. `read_timeout`, when given, fails a request
/// whose next bytes take longer than that.
pub fn client(read_timeout: Option<Duration>) -> reqwest::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(USER_AGENT);
    if let Some(t) = read_timeout {
        b = b.read_timeout(t);
    }
    b.build()
}

/// Exponential backoff with jitter for the `n`-th retry (from 1): `base * 2^(n-1)` capped at
/// `max`, then a random point in its upper half, so that clients failing together spread out.
pub fn backoff(n: u32, base: Duration, max: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << n.saturating_sub(1).min(16));
    exp.min(max).mul_f64(rand::random_range(0.5..=1.0))
}

/// `d` plus up to `fraction` more, at random: for waits a server prescribed (`Retry-After`),
/// so that clients told the same moment do not all come back at once.
pub fn jitter_up(d: Duration, fraction: f64) -> Duration {
    d.mul_f64(1.0 + rand::random_range(0.0..=fraction.max(0.0)))
}

/// The longest wait a `Retry-After` is read as; a longer one reads as this. Callers cap it
/// further to their own budgets; this keeps the arithmetic far from overflow.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// `Retry-After` as a wait from `now`: delta-seconds or an HTTP-date (a date in the past means
/// "now"). `None` when absent or unreadable, so the caller falls back to its own backoff.
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Some(secs) = answer::parse_u64(value) {
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    if value.is_empty() || value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

/// [`retry_after`] of a response's headers.
pub fn retry_after_header(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    retry_after(v, SystemTime::now())
}

/// A reqwest error and its causes on one line ("error sending request: ...: Connection
/// refused"), without the URL, which may carry a token.
pub fn error_chain(e: &reqwest::Error) -> String {
    let mut s = strip_url(e);
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// reqwest's own text of `e` ("error sending request for url (...)") without the URL part.
fn strip_url(e: &reqwest::Error) -> String {
    let text = e.to_string();
    match (e.url(), text.find(" for url (")) {
        (Some(_), Some(at)) => text[..at].to_string(),
        _ => text,
    }
}

/// Whether a failed request found nothing to talk to: connection refused, no route, a DNS
/// name that does not resolve, a handshake that never completed. Such an outage is told to
/// the user after a few quick retries; a server that answers, however slowly, is not one.
pub fn is_unreachable(e: &reqwest::Error) -> bool {
    if e.is_connect() {
        return true;
    }
    // Some resolver and socket errors surface without the connect flag; their causes say.
    let chain = error_chain(e).to_ascii_lowercase();
    [
        "connection refused",
        "no route to host",
        "network is unreachable",
        "failed to lookup address",
        "name or service not known",
        "dns error",
    ]
    .iter()
    .any(|w| chain.contains(w))
}

/// Query parameters whose values are secrets: tokens, passwords, one-time codes, and the
/// signatures of pre-signed URLs (S3 `X-Amz-*`, `Signature`, Azure-style `sig`).
fn is_secret_param(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "password",
        "totp",
        "otp",
        "client_secret",
        "signature",
        "sig",
    ];
    EXACT.iter().any(|p| name.eq_ignore_ascii_case(p))
        || name
            .get(..6)
            .is_some_and(|p| p.eq_ignore_ascii_case("x-amz-"))
}

/// A URL fit for a log line: the values of secret query parameters (see `is_secret_param`)
/// and any user info replaced by `***`. An unparseable URL is not echoed at all.
pub fn redact_url(raw: &str) -> String {
    let Ok(mut url) = url::Url::parse(raw) else {
        return "<unparseable url>".to_string();
    };
    if !url.username().is_empty() || url.password().is_some() {
        let _ = url.set_username("***");
        let _ = url.set_password(None);
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if is_secret_param(&k) {
                    "***".into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let (base, max) = (Duration::from_millis(200), Duration::from_secs(5));
        for n in 1..40 {
            let d = backoff(n, base, max);
            let full = base.saturating_mul(1 << (n - 1).min(16)).min(max);
            assert!(d >= full / 2 && d <= full, "n={n} d={d:?}");
        }
        assert!(backoff(0, base, max) <= base);
        let j = jitter_up(Duration::from_secs(10), 0.2);
        assert!(j >= Duration::from_secs(10) && j <= Duration::from_secs(12));
    }

    #[test]
    fn retry_after_table() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("99999999999999999999", now), None);
        assert_eq!(retry_after("9999999999", now), Some(MAX_RETRY_AFTER));
        for bad in ["", "-1", "+5", "soon", "1.5", "Sun, 06 Nov"] {
            assert_eq!(retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn redact_hides_tokens_and_signatures_and_keeps_the_rest() {
        let r = redact_url("https://zipper.example/download/abc?token=eyJsecret.part&x=1");
        assert!(!r.contains("eyJsecret"), "{r}");
        assert!(r.contains("/download/abc") && r.contains("x=1"), "{r}");
        let r = redact_url(
            "https://s3.example/b/k?X-Amz-Credential=AKIA1&X-Amz-Signature=abc123&\
             x-amz-security-token=tok9&Signature=sig1&sig=sig2&part=3",
        );
        for secret in ["AKIA1", "abc123", "tok9", "sig1", "sig2"] {
            assert!(!r.contains(secret), "{secret} in {r}");
        }
        assert!(r.contains("part=3"), "{r}");
        let r = redact_url("https://user:pw@host/p?Access_Token=zzz");
        assert!(!r.contains("pw") && !r.contains("zzz"), "{r}");
        assert_eq!(redact_url("not a url token=abc"), "<unparseable url>");
    }

    #[tokio::test]
    async fn refused_is_unreachable_and_slow_is_not() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let http = client(Some(Duration::from_millis(300))).unwrap();
        let e = http
            .get(format!("http://127.0.0.1:{port}/x?token=secret"))
            .send()
            .await
            .unwrap_err();
        assert!(is_unreachable(&e), "{}", error_chain(&e));
        assert!(!error_chain(&e).contains("secret"), "{}", error_chain(&e));

        // Accepts and never answers: alive but slow, not an outage.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let keep = tokio::spawn(async move {
            let (_s, _) = l.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let e = http
            .get(format!("http://127.0.0.1:{port}/x"))
            .send()
            .await
            .unwrap_err();
        assert!(!is_unreachable(&e), "{}", error_chain(&e));
        keep.abort();
    }
}
