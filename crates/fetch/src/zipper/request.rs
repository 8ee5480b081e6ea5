//! One exchange with the download service, with every policy that does not depend on what the
//! caller does with the body: the token (query or bearer), redirects followed by hand so the
//! credential only goes to trusted hosts, the connection budget, and what each error answer
//! means (see [`Meaning`] and `docs/protocol.md`, "Download errors"): 401 -> renew, or back off
//! when the token is seconds old, or stop for good (wrong audience); 429 -> back off and shrink
//! the budget; 5xx and stalls -> retry with backoff; an unreachable service -> a few quick
//! retries, then one error for the whole outage. All within the bounds of one [`RetryState`].

use std::hash::{Hash as _, Hasher as _};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use eodata_auth::{AccessToken, TokenSource};
use eodata_http::redirect::{self, Hop};
use eodata_http::{backoff, error_chain, is_unreachable, redact_url, retry_after_header};
use reqwest::header::{AUTHORIZATION, RANGE};
use reqwest::{Method, Response, StatusCode};
use url::Url;

use super::budget::Permit;
use super::parse::{ErrorBody, Meaning};
use super::{Inner, TokenPassing};
use crate::FetchError;

pub(crate) use eodata_http::answer::Asked as RangeSpec;

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
/// First wait after a 429 that says no `Retry-After` (the real zipper's "Max session number 4
/// exceeded" is not known to send one): a connection of the user's usually ends within
/// seconds, and the budget has already shrunk, so a second is enough to start with.
const THROTTLE_BASE: Duration = Duration::from_secs(1);
/// Longest such wait: the service's quota window is not published; a minute is what public
/// clients that meet this 429 wait (`docs/protocol.md`, "Download errors"), and it keeps the
/// user's other sessions from being hammered.
const THROTTLE_MAX: Duration = Duration::from_secs(60);
/// A 401 for a token obtained less than this long after a renewal is not the token's fault:
/// the real service answers such spurious 401s for minutes at a time (docs/protocol.md), and
/// renewing again would only log in again and open more sessions.
const FRESH_TOKEN: Duration = Duration::from_secs(60);
/// First and longest wait after such a spurious 401.
const SPURIOUS_401_BASE: Duration = Duration::from_secs(2);
const SPURIOUS_401_MAX: Duration = Duration::from_secs(30);
/// How long a request keeps retrying a service that nothing answers for (connection refused,
/// no route, DNS failure) before it says so: a restart or a blip passes within seconds, and a
/// reader should not hang for the whole read timeout on an outage. With the backoff below
/// that is four or five tries.
const UNREACHABLE_BUDGET: Duration = Duration::from_secs(15);
/// Backoff between tries at an unreachable service.
const UNREACHABLE_BASE: Duration = Duration::from_secs(1);
const UNREACHABLE_MAX: Duration = Duration::from_secs(5);
/// Bytes of an error body read for its message: zipper's JSON is ~150 bytes; an HTML error
/// page's start is enough to quote.
const ERROR_BODY_LIMIT: usize = 16 * 1024;

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
    spurious: u32,
    /// The first of the failures in a row that found nothing answering.
    unreachable_since: Option<Instant>,
    unreachable: u32,
}

impl RetryState {
    pub(crate) fn new() -> Self {
        RetryState {
            since_progress: Instant::now(),
            failures: 0,
            throttles: 0,
            renewals: 0,
            spurious: 0,
            unreachable_since: None,
            unreachable: 0,
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
        let delay =
            retry_after.unwrap_or_else(|| backoff(self.failures, BACKOFF_BASE, BACKOFF_MAX));
        self.wait(z, delay, err).await
    }

    /// Nothing answers at the service's address: a few quick tries within
    /// [`UNREACHABLE_BUDGET`], each logged at warn, then the outage is the caller's error. While
    /// the client knows of an outage, a request tries once: readers fail at once instead of
    /// each waiting out the budget.
    async fn unreachable<T: TokenSource>(
        &mut self,
        z: &Inner<T>,
        err: FetchError,
    ) -> Result<(), FetchError> {
        if z.outage.load(Ordering::Relaxed) {
            return Err(err);
        }
        let since = *self.unreachable_since.get_or_insert_with(Instant::now);
        self.unreachable += 1;
        self.failures += 1;
        if self.failures > z.cfg.max_retries {
            return Err(err);
        }
        let delay = backoff(self.unreachable, UNREACHABLE_BASE, UNREACHABLE_MAX);
        if since.elapsed() + delay > UNREACHABLE_BUDGET.min(z.cfg.deadline) {
            if !z.outage.swap(true, Ordering::Relaxed) {
                tracing::error!("{err}; reads fail until it answers again (one line per outage)");
            }
            return Err(err);
        }
        tracing::warn!(error = %err, ?delay, "download service unreachable; retrying");
        self.wait(z, delay, err).await
    }

    /// A 401 for a token obtained seconds after a renewal: wait for the service to come
    /// round instead of renewing again.
    async fn spurious_401<T: TokenSource>(
        &mut self,
        z: &Inner<T>,
        err: FetchError,
    ) -> Result<(), FetchError> {
        self.spurious += 1;
        let delay = backoff(self.spurious, SPURIOUS_401_BASE, SPURIOUS_401_MAX);
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
            Some(d) => eodata_http::jitter_up(d.max(MIN_THROTTLE_DELAY), 0.2),
            None => backoff(self.throttles, THROTTLE_BASE, THROTTLE_MAX),
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

/// What went wrong sending one request.
enum SendError {
    /// Worth retrying (no headers within `read_timeout`, connection reset).
    Transient(FetchError),
    /// Nothing answers at that address (refused, no route, DNS): retried briefly.
    Unreachable(FetchError),
    Fatal(FetchError),
}

impl SendError {
    /// A request to `url` that got no answer: unreachable (refused, no route, DNS) or
    /// transient.
    fn of(e: &reqwest::Error, url: &Url) -> SendError {
        let host = url.host_str().unwrap_or("?");
        let msg = format!("cannot reach {host}: {}", error_chain(e));
        if is_unreachable(e) {
            SendError::Unreachable(FetchError::Unreachable(msg))
        } else {
            SendError::Transient(FetchError::Server(msg))
        }
    }
}

/// An answer that is not worth reading as bytes, with what judging it needs.
struct Refused {
    resp: Response,
    permit: Permit,
    /// The URL that answered, redacted.
    url: String,
    /// Whether that URL was sent the token.
    credentialed: bool,
    token: AccessToken,
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
        if url.scheme() == "http" && !redirect::is_loopback(&url) && !self.cfg.insecure_http {
            return Err(FetchError::Insecure(redact_url(url.as_str())));
        }
        Ok(url)
    }

    /// Whether the credential may be sent to `url` when the request started at `origin`: the
    /// origin's host or a configured trusted host, and never over http once https was used.
    pub(super) fn trusted(&self, origin: &Url, url: &Url) -> bool {
        redirect::trusted(origin, url, &self.cfg.trusted_hosts)
    }

    /// Sends one request, following redirects by hand. The caller's client must not follow
    /// redirects itself (see `eodata_http::client`): reqwest would drop a bearer header on a cross-host
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
            let req_url = self.with_query_token(&url, trusted, token);
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
                Ok(Err(e)) => return Err(SendError::of(&e, &req_url)),
                Ok(Ok(resp)) => resp,
            };
            self.warn_if_client_follows(&resp, &req_url);
            let status = resp.status();
            let next = match redirect::hop(&url, status, resp.headers()) {
                Ok(Hop::Stay) => return Ok((resp, logged, trusted)),
                Ok(Hop::Follow { to, see_other }) => {
                    if see_other && method != Method::HEAD {
                        method = Method::GET;
                    }
                    to
                }
                Err(why) => {
                    return Err(SendError::Fatal(FetchError::Protocol(format!(
                        "{why} (from {logged})"
                    ))))
                }
            };
            if next.scheme() == "http" && !redirect::is_loopback(&next) && !self.cfg.insecure_http {
                return Err(SendError::Fatal(FetchError::Insecure(redact_url(
                    next.as_str(),
                ))));
            }
            self.stats.redirects.inc();
            tracing::debug!(from = %logged, to = %redact_url(next.as_str()), %status, "redirect");
            url = next;
        }
        Err(SendError::Fatal(FetchError::Protocol(format!(
            "more than {MAX_REDIRECTS} redirects from {}",
            redact_url(origin.as_str())
        ))))
    }

    /// `url` as it is sent: whatever token it carries (a server may forward one) replaced by
    /// ours when the host is trusted and the token goes in the query, removed otherwise, so an
    /// untrusted host gets no credential at all.
    fn with_query_token(&self, url: &Url, trusted: bool, token: &AccessToken) -> Url {
        let in_query = trusted && self.cfg.token_passing == TokenPassing::Query;
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| k != "token")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let mut req_url = url.clone();
        req_url.set_query(None);
        if !pairs.is_empty() || in_query {
            let mut q = req_url.query_pairs_mut();
            q.extend_pairs(pairs);
            if in_query {
                q.append_pair("token", token.value.expose());
            }
        }
        req_url
    }

    /// Says once when the HTTP client followed a redirect itself (then the credential rules
    /// above were bypassed: the client was not built by `eodata_http::client`).
    fn warn_if_client_follows(&self, resp: &Response, sent: &Url) {
        if resp.url() != sent && !self.warned_auto_redirect.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "the HTTP client given to the zipper follows redirects itself; build it with \
                 redirect::Policy::none() (eodata_http::client does)"
            );
        }
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
            // The connection first, then the token: a wait for a connection (the account's
            // cap, shared with other machines) may outlast a short-lived token, and a token
            // taken before it would reach the server expired.
            let permit = self.budget.acquire().await;
            let token = self.token_or_stop().await?;
            self.note_token(&token);
            let (resp, url, credentialed) = match self.send(&method, &origin, range, &token).await {
                Ok(r) => r,
                Err(SendError::Fatal(e)) => return Err(e),
                Err(SendError::Transient(e)) => {
                    drop(permit);
                    self.reachable();
                    retry.failed(self, e, None).await?;
                    continue;
                }
                Err(SendError::Unreachable(e)) => {
                    drop(permit);
                    retry.unreachable(self, e).await?;
                    continue;
                }
            };
            self.reachable();
            retry.unreachable_since = None;
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
            let refused = Refused {
                resp,
                permit,
                url,
                credentialed,
                token,
            };
            self.error_answer(id, refused, retry).await?;
        }
    }

    /// A token for the next request. A refused login is final: [`FetchError::Auth`] at once,
    /// never a retry per read.
    async fn token_or_stop(&self) -> Result<AccessToken, FetchError> {
        self.tokens.token().await.map_err(|e| {
            // Every read from now on fails with this same refusal: the log says why once (the
            // reader's errno alone cannot), not once per read.
            if matches!(e, eodata_auth::AuthError::Refused { .. })
                && !self.warned_refused.swap(true, Ordering::Relaxed)
            {
                tracing::error!("downloads stop: {e}");
            }
            e.into()
        })
    }

    /// An error answer, by what it means (`docs/protocol.md`, "Download errors"): `Ok` when
    /// the request is to be sent again (after a renewal or a wait), the error when it is final
    /// or the retries are spent.
    async fn error_answer(
        &self,
        id: &str,
        answer: Refused,
        retry: &mut RetryState,
    ) -> Result<(), FetchError> {
        let Refused {
            resp,
            permit,
            url,
            credentialed,
            token,
        } = answer;
        let status = resp.status();
        let retry_after = retry_after_header(resp.headers());
        let body = read_error_body(resp, self.cfg.read_timeout).await;
        let error = ErrorBody::parse(&body);
        let mut desc = error.describe(status);
        // A server that echoes the request must not put the token into our messages.
        let secret = token.value.expose();
        if !secret.is_empty() {
            desc = desc.replace(secret, "***");
        }
        tracing::debug!(%url, %desc, "error answer");
        match error.meaning(status) {
            // A redirect led to a host that was not given the token: renewing cannot help.
            Meaning::TokenRefused { .. } if !credentialed => Err(FetchError::Forbidden(format!(
                "{desc} from {url}, which was not sent the token because its host is \
                 not trusted; add it to the trusted hosts if it belongs to the provider"
            ))),
            Meaning::TokenRefused { expired } => {
                drop(permit);
                self.token_refused(&token, expired, desc, retry).await
            }
            Meaning::Audience => {
                let e = FetchError::Audience(desc);
                if !self.warned_refused.swap(true, Ordering::Relaxed) {
                    tracing::error!("downloads stop: {e}");
                }
                Err(e)
            }
            Meaning::Forbidden => {
                let e = FetchError::Forbidden(desc);
                tracing::warn!("{e}");
                Err(e)
            }
            Meaning::NoData => Err(FetchError::NoData(id.to_string(), desc)),
            Meaning::NotFound => Err(FetchError::NotFound(id.to_string())),
            Meaning::BadRequest => Err(FetchError::Bug(format!("{desc} (from {url})"))),
            Meaning::Throttled => {
                self.stats.throttled.inc();
                self.budget.overloaded(&permit);
                drop(permit);
                let err = FetchError::Server(format!(
                    "{desc}: too many parallel connections, still refused after waiting"
                ));
                retry.throttled(self, err, retry_after).await
            }
            Meaning::Server => {
                drop(permit);
                retry
                    .failed(self, FetchError::Server(desc), retry_after)
                    .await
            }
            Meaning::Other => Err(FetchError::Protocol(desc)),
        }
    }

    /// The service refused `token`: a token obtained seconds ago is taken for a passing fault
    /// (wait, do not renew); otherwise renew, at most [`MAX_RENEWALS`] times per request.
    async fn token_refused(
        &self,
        token: &AccessToken,
        expired: bool,
        desc: String,
        retry: &mut RetryState,
    ) -> Result<(), FetchError> {
        self.stats.unauthorized.inc();
        if !expired && self.is_fresh(token) {
            tracing::info!(
                %desc,
                "the download service refused a token obtained seconds ago; \
                 taking it for a passing fault and waiting, not renewing"
            );
            return retry.spurious_401(self, FetchError::Forbidden(desc)).await;
        }
        retry.renewals += 1;
        if retry.renewals > MAX_RENEWALS {
            return Err(FetchError::Forbidden(format!(
                "{desc}; the token was refused again after {MAX_RENEWALS} renewals"
            )));
        }
        tracing::info!(%desc, "token refused by the download service; renewing");
        self.note_rejected(token);
        self.tokens.rejected(token).await;
        Ok(())
    }

    /// An answer came: whatever outage was declared is over.
    fn reachable(&self) {
        if self.outage.swap(false, Ordering::Relaxed) {
            tracing::info!("the download service answers again");
        }
    }

    /// Remembers that `token` was refused, so that a 401 for the token that replaces it can be
    /// told from one for a stale token. Only hashes are kept, never a token.
    fn note_rejected(&self, token: &AccessToken) {
        *self.lock_rejection() = Some(Rejection {
            at: Instant::now(),
            refused: fingerprint(token),
            successor: None,
        });
    }

    /// Called with every token handed out: the first one after a rejection that differs from
    /// the refused one is its successor.
    fn note_token(&self, token: &AccessToken) {
        if let Some(r) = self.lock_rejection().as_mut() {
            let fp = fingerprint(token);
            if r.successor.is_none() && r.refused != fp {
                r.successor = Some(fp);
            }
        }
    }

    /// Whether `token` replaced a refused one less than [`FRESH_TOKEN`] ago.
    fn is_fresh(&self, token: &AccessToken) -> bool {
        self.lock_rejection().as_ref().is_some_and(|r| {
            r.at.elapsed() < FRESH_TOKEN && r.successor == Some(fingerprint(token))
        })
    }

    fn lock_rejection(&self) -> std::sync::MutexGuard<'_, Option<Rejection>> {
        self.last_rejection
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

/// The last token refusal that led to a renewal.
#[derive(Debug)]
pub(crate) struct Rejection {
    at: Instant,
    /// Hash of the refused token.
    refused: u64,
    /// Hash of the first different token handed out after it.
    successor: Option<u64>,
}

/// A hash of a token's value, to tell tokens apart without keeping one.
fn fingerprint(token: &AccessToken) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    token.value.expose().hash(&mut h);
    h.finish()
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
