//! One exchange with the download service, with every policy that does not depend on what the
//! caller does with the body: the token (query or bearer), redirects followed by hand so the
//! credential only goes to trusted hosts, the connection budget, 401 -> renew, 429 -> back off
//! and shrink the budget, 5xx and transport errors -> retry with backoff, all within the bounds
//! of one [`RetryState`].

use std::time::{Duration, Instant, SystemTime};

use eodata_auth::{redact_url, AccessToken, TokenSource};
use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_LENGTH, LOCATION, RANGE, RETRY_AFTER};
use reqwest::{Method, Response, StatusCode};
use url::Url;

use super::budget::Permit;
use super::parse::{parse_retry_after, ErrorBody};
use super::{Inner, TokenPassing};
use crate::FetchError;

/// Redirect hops followed before giving up: browsers and reqwest use 10; the real services
/// use one (catalogue host -> download host).
const MAX_REDIRECTS: usize = 10;

/// Token renewals within one request: the first 401 is usually an expired token; a second can
/// follow a renewal racing a server-side revocation; a third refusal of a fresh token means the
/// service will not take any, and more logins would only open more sessions.
const MAX_RENEWALS: u32 = 3;

/// First retry delay: long enough for a restarting backend or a load balancer to move on.
const BACKOFF_BASE: Duration = Duration::from_millis(200);
/// Longest delay between retries: beyond it a reader waits noticeably with nothing to show.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Shortest wait after a 429, even when the server says `Retry-After: 0`, so that a burst of
/// throttled readers cannot spin.
const MIN_THROTTLE_DELAY: Duration = Duration::from_millis(50);
/// Bytes of an error body read for its message: zipper's JSON is ~150 bytes; an HTML error
/// page's start is enough to quote.
const ERROR_BODY_LIMIT: usize = 16 * 1024;

/// The byte range asked for: `bytes=first-last` or, with no last, `bytes=first-`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RangeSpec {
    pub first: u64,
    pub last: Option<u64>,
}

impl RangeSpec {
    fn header(&self) -> String {
        match self.last {
            Some(last) => format!("bytes={}-{last}", self.first),
            None => format!("bytes={}-", self.first),
        }
    }
}

/// A response worth reading (2xx, 416, or for HEAD 405/501), with the connection it holds.
pub(crate) struct Exchange {
    pub resp: Response,
    pub permit: Permit,
    /// The URL that answered, redacted, for log lines.
    pub url: String,
}

/// The bounds on one logical request (a `get_range`, an `info`, a stream): consecutive failures
/// without progress, token renewals, and the deadline for starting another try, counted from
/// the request's start or its last progress (a stream of a large product may rightly run for
/// far longer than the deadline).
pub(crate) struct RetryState {
    since_progress: Instant,
    failures: u32,
    throttles: u32,
    renewals: u32,
}

impl RetryState {
    pub(crate) fn new() -> Self {
        RetryState {
            since_progress: Instant::now(),
            failures: 0,
            throttles: 0,
            renewals: 0,
        }
    }

    /// Bytes arrived: the failures before were transient, the count starts again.
    pub(crate) fn progressed(&mut self) {
        self.failures = 0;
        self.since_progress = Instant::now();
    }

    /// A failure worth retrying: waits (backoff or `retry_after`) and returns, or returns `err`
    /// when the retries or the deadline are spent.
    pub(crate) async fn failed<T: TokenSource>(
        &mut self,
        z: &Inner<T>,
        err: FetchError,
        retry_after: Option<Duration>,
    ) -> Result<(), FetchError> {
        self.failures += 1;
        if self.failures > z.cfg.max_retries {
            return Err(err);
        }
        let delay = retry_after.unwrap_or_else(|| backoff(self.failures));
        self.wait(z, delay, err).await
    }

    /// A cut connection after some bytes arrived: resume at once (the server was answering a
    /// moment ago), still within the deadline.
    pub(crate) async fn resume<T: TokenSource>(
        &mut self,
        z: &Inner<T>,
        err: FetchError,
    ) -> Result<(), FetchError> {
        z.stats.resumes.inc();
        self.wait(z, Duration::ZERO, err).await
    }

    /// A 429: bounded by the deadline only (the cap is shared with the user's other sessions and
    /// clears when they end), waiting what the server asked or backing off.
    async fn throttled<T: TokenSource>(
        &mut self,
        z: &Inner<T>,
        err: FetchError,
        retry_after: Option<Duration>,
    ) -> Result<(), FetchError> {
        self.throttles += 1;
        let delay = match retry_after {
            // Up to a fifth more, so readers told the same moment do not all come back at once.
            Some(d) => d
                .max(MIN_THROTTLE_DELAY)
                .mul_f64(1.0 + rand::random_range(0.0..0.2)),
            None => backoff(self.throttles),
        };
        self.wait(z, delay, err).await
    }

    async fn wait<T: TokenSource>(
        &mut self,
        z: &Inner<T>,
        delay: Duration,
        err: FetchError,
    ) -> Result<(), FetchError> {
        if self.since_progress.elapsed() + delay > z.cfg.deadline {
            return Err(err);
        }
        z.stats.retries.inc();
        tracing::debug!(?delay, error = %err, "retrying");
        tokio::time::sleep(delay).await;
        Ok(())
    }
}

/// Exponential backoff with jitter: `BACKOFF_BASE * 2^(n-1)`, capped, then a random point in
/// its upper half so that readers failing together do not retry together.
fn backoff(n: u32) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(1u32 << n.saturating_sub(1).min(16));
    let d = exp.min(BACKOFF_MAX);
    d.mul_f64(rand::random_range(0.5..=1.0))
}

/// What went wrong sending one request.
enum SendError {
    /// Worth retrying (connect error, no headers within `read_timeout`, connection reset).
    Transient(FetchError),
    Fatal(FetchError),
}

/// The `Content-Length` header itself. `Response::content_length` is the body's size hint,
/// which for HEAD answers is 0.
pub(crate) fn header_u64(headers: &HeaderMap, name: reqwest::header::HeaderName) -> Option<u64> {
    let v = headers.get(name)?.to_str().ok()?.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    header_u64(headers, CONTENT_LENGTH)
}

pub(crate) fn header_str(headers: &HeaderMap, name: reqwest::header::HeaderName) -> Option<&str> {
    headers.get(name)?.to_str().ok()
}

/// A reqwest error as text without its URL (which may carry the token).
pub(crate) fn describe_reqwest(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut s = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

impl<T: TokenSource> Inner<T> {
    /// The product's download URL, without credentials.
    pub(crate) fn product_url(&self, id: &str) -> Result<Url, FetchError> {
        // A file inside a product (`<uuid>/<path>`) has a Nodes URL of its own.
        let raw = match crate::nodes::node_url(&self.cfg.url_template, id) {
            Some(url) => url?,
            None => {
                let encoded: String = id
                    .bytes()
                    .map(|b| {
                        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                            (b as char).to_string()
                        } else {
                            format!("%{b:02X}")
                        }
                    })
                    .collect();
                self.cfg.url_template.replace("{id}", &encoded)
            }
        };
        let url = Url::parse(&raw).map_err(|e| {
            FetchError::Protocol(format!(
                "download URL template {:?} does not give a URL: {e}",
                self.cfg.url_template
            ))
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(FetchError::Protocol(format!(
                "download URL template {:?} is not an http(s) URL",
                self.cfg.url_template
            )));
        }
        Ok(url)
    }

    /// Whether the credential may be sent to `url` when the request started at `origin`: the
    /// origin's host or a configured trusted host, and never over http once https was used.
    pub(super) fn trusted(&self, origin: &Url, url: &Url) -> bool {
        if origin.scheme() == "https" && url.scheme() != "https" {
            return false;
        }
        let Some(host) = url.host_str() else {
            return false;
        };
        let host = host.to_ascii_lowercase();
        if origin.host_str().map(str::to_ascii_lowercase).as_deref() == Some(host.as_str()) {
            return true;
        }
        self.cfg.trusted_hosts.iter().any(|t| {
            let t = t.trim().to_ascii_lowercase();
            match t.strip_prefix('.') {
                // ".example.eu" trusts every subdomain of example.eu.
                Some(suffix) => host.ends_with(&format!(".{suffix}")),
                None => host == t,
            }
        })
    }

    /// Sends one request, following redirects by hand. The caller's client must not follow
    /// redirects itself (see `http_client`): reqwest would drop a bearer header on a cross-host
    /// hop, and would carry a query token to any host.
    async fn send(
        &self,
        method: &Method,
        origin: &Url,
        range: Option<RangeSpec>,
        token: &AccessToken,
    ) -> Result<(Response, String, bool), SendError> {
        let mut url = origin.clone();
        let mut method = method.clone();
        for _hop in 0..=MAX_REDIRECTS {
            let trusted = self.trusted(origin, &url);
            // Whatever token the URL carries (a server may forward it) is replaced by ours or
            // removed: an untrusted host gets no credential at all.
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .filter(|(k, _)| k != "token")
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            let mut req_url = url.clone();
            req_url.set_query(None);
            if !pairs.is_empty() || (trusted && self.cfg.token_passing == TokenPassing::Query) {
                let mut q = req_url.query_pairs_mut();
                q.extend_pairs(pairs);
                if trusted && self.cfg.token_passing == TokenPassing::Query {
                    q.append_pair("token", token.value.expose());
                }
            }
            let logged = redact_url(req_url.as_str());
            let mut rb = self.http.request(method.clone(), req_url.clone());
            if trusted && self.cfg.token_passing == TokenPassing::Bearer {
                rb = rb.header(AUTHORIZATION, format!("Bearer {}", token.value.expose()));
            }
            if let Some(r) = range {
                rb = rb.header(RANGE, r.header());
            }
            self.stats.requests.inc();
            tracing::debug!(%method, url = %logged, range = ?range.map(|r| r.header()), trusted, "request");
            let resp = match tokio::time::timeout(self.cfg.read_timeout, rb.send()).await {
                Err(_) => {
                    return Err(SendError::Transient(FetchError::Timeout(
                        self.cfg.read_timeout,
                    )))
                }
                Ok(Err(e)) => {
                    let host = req_url.host_str().unwrap_or("?").to_string();
                    let msg = format!("cannot reach {host}: {}", describe_reqwest(e));
                    return Err(SendError::Transient(FetchError::Server(msg)));
                }
                Ok(Ok(resp)) => resp,
            };
            if resp.url() != &req_url
                && !self
                    .warned_auto_redirect
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                tracing::warn!(
                    "the HTTP client given to the zipper follows redirects itself; build it with \
                     redirect::Policy::none() (eodata_fetch::zipper::http_client does)"
                );
            }
            let status = resp.status();
            if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
                let Some(loc) = header_str(resp.headers(), LOCATION) else {
                    return Err(SendError::Fatal(FetchError::Protocol(format!(
                        "HTTP {status} without Location from {logged}"
                    ))));
                };
                let next = url.join(loc.trim()).map_err(|e| {
                    SendError::Fatal(FetchError::Protocol(format!(
                        "HTTP {status} from {logged} with an unreadable Location: {e}"
                    )))
                })?;
                if !matches!(next.scheme(), "http" | "https") {
                    return Err(SendError::Fatal(FetchError::Protocol(format!(
                        "redirect from {logged} to a non-http URL"
                    ))));
                }
                self.stats.redirects.inc();
                tracing::debug!(from = %logged, to = %redact_url(next.as_str()), %status, "redirect");
                if status == StatusCode::SEE_OTHER && method != Method::HEAD {
                    method = Method::GET;
                }
                url = next;
                continue;
            }
            return Ok((resp, logged, trusted));
        }
        Err(SendError::Fatal(FetchError::Protocol(format!(
            "more than {MAX_REDIRECTS} redirects from {}",
            redact_url(origin.as_str())
        ))))
    }

    /// Sends `method` for product `id` until it gets an answer worth reading: 2xx, 416, or for
    /// HEAD also 405/501 (the caller falls back to a ranged GET). Retries, renewals and backoff
    /// happen here; what comes back holds a connection of the budget.
    pub(crate) async fn exchange(
        &self,
        id: &str,
        method: Method,
        range: Option<RangeSpec>,
        retry: &mut RetryState,
    ) -> Result<Exchange, FetchError> {
        let origin = self.product_url(id)?;
        loop {
            // A refused login is final: FetchError::Auth at once, never a retry per read.
            let token = match self.tokens.token().await {
                Ok(t) => t,
                Err(e) => {
                    // Every read from now on fails with this same refusal: the log says why
                    // once (the reader's errno alone cannot), not once per read.
                    if matches!(e, eodata_auth::AuthError::Refused { .. })
                        && !self
                            .warned_refused
                            .swap(true, std::sync::atomic::Ordering::Relaxed)
                    {
                        tracing::error!("downloads stop: {e}");
                    }
                    return Err(e.into());
                }
            };
            let permit = self.budget.acquire().await;
            let (resp, url, credentialed) = match self.send(&method, &origin, range, &token).await {
                Ok(r) => r,
                Err(SendError::Fatal(e)) => return Err(e),
                Err(SendError::Transient(e)) => {
                    drop(permit);
                    retry.failed(self, e, None).await?;
                    continue;
                }
            };
            let status = resp.status();
            if status.is_success()
                || status == StatusCode::RANGE_NOT_SATISFIABLE
                || (method == Method::HEAD
                    && matches!(
                        status,
                        StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_IMPLEMENTED
                    ))
            {
                return Ok(Exchange { resp, permit, url });
            }
            let retry_after = header_str(resp.headers(), RETRY_AFTER)
                .and_then(|v| parse_retry_after(v, SystemTime::now()));
            let body = read_error_body(resp, self.cfg.read_timeout).await;
            let error = ErrorBody::parse(&body);
            let mut desc = error.describe(status);
            // A server that echoes the request must not put the token into our messages.
            let secret = token.value.expose();
            if !secret.is_empty() {
                desc = desc.replace(secret, "***");
            }
            tracing::debug!(%url, %desc, "error answer");
            let token_refused = status == StatusCode::UNAUTHORIZED
                || (status == StatusCode::FORBIDDEN && error.says_token_refused());
            match status {
                // A redirect led to a host that was not given the token: renewing cannot help.
                _ if token_refused && !credentialed => {
                    return Err(FetchError::Forbidden(format!(
                        "{desc} from {url}, which was not sent the token because its host is \
                         not trusted; add it to the trusted hosts if it belongs to the provider"
                    )));
                }
                _ if token_refused => {
                    drop(permit);
                    self.stats.unauthorized.inc();
                    retry.renewals += 1;
                    if retry.renewals > MAX_RENEWALS {
                        return Err(FetchError::Forbidden(format!(
                            "{desc}; the token was refused again after {MAX_RENEWALS} renewals"
                        )));
                    }
                    tracing::info!(%desc, "token refused by the download service; renewing");
                    self.tokens.rejected(&token).await;
                }
                StatusCode::FORBIDDEN => return Err(FetchError::Forbidden(desc)),
                StatusCode::NOT_FOUND | StatusCode::GONE => {
                    return Err(FetchError::NotFound(id.to_string()))
                }
                StatusCode::TOO_MANY_REQUESTS => {
                    self.stats.throttled.inc();
                    self.budget.overloaded(&permit);
                    drop(permit);
                    let err = FetchError::Server(format!(
                        "{desc}: too many parallel connections, still refused after waiting"
                    ));
                    retry.throttled(self, err, retry_after).await?;
                }
                s if s.is_server_error() => {
                    drop(permit);
                    retry
                        .failed(self, FetchError::Server(desc), retry_after)
                        .await?;
                }
                _ => return Err(FetchError::Protocol(desc)),
            }
        }
    }
}

/// The start of an error answer's body, within `read_timeout` per chunk; what could not be
/// read is left out (the status alone still makes a message).
async fn read_error_body(mut resp: Response, read_timeout: Duration) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < ERROR_BODY_LIMIT {
        match tokio::time::timeout(read_timeout, resp.chunk()).await {
            Ok(Ok(Some(c))) => {
                body.extend_from_slice(&c[..c.len().min(ERROR_BODY_LIMIT - body.len())])
            }
            _ => break,
        }
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        for n in 1..40 {
            let d = backoff(n);
            let full = BACKOFF_BASE
                .saturating_mul(1 << (n - 1).min(16))
                .min(BACKOFF_MAX);
            assert!(d >= full / 2 && d <= full, "n={n} d={d:?}");
        }
        assert!(backoff(0) <= BACKOFF_BASE);
    }

    #[test]
    fn range_header() {
        assert_eq!(
            RangeSpec {
                first: 0,
                last: Some(0)
            }
            .header(),
            "bytes=0-0"
        );
        assert_eq!(
            RangeSpec {
                first: 7,
                last: None
            }
            .header(),
            "bytes=7-"
        );
    }
}
