//! The download client: product bytes from zipper (CREODIAS) or the CDSE download service.
//!
//! [`Zipper`] implements [`RangeSource`]: `info` (size, file name, whether Range is honoured) and
//! `get_range` (exactly the bytes asked for, or an error; never bytes from another offset), plus
//! [`Zipper::stream_from`] for one sequential stream, for servers that ignore Range and for the
//! download command. What it takes care of, so that the layers above need not:
//! - the token, in the query (`?token=`, CREODIAS) or a bearer header (CDSE), renewed through
//!   the [`TokenSource`] when the service refuses it (401, or 403 "Token not found"), but not
//!   for a token seconds old (a passing fault) nor for a wrong audience (final);
//! - the zipper's error codes, each to its own [`FetchError`] (docs/protocol.md);
//! - redirects, followed by hand so the credential only reaches trusted hosts;
//! - retries of 5xx and stalls with backoff, bounded by `max_retries` and a deadline; an
//!   unreachable service fails within seconds, once per outage; bodies cut mid-way are resumed
//!   from the last byte received;
//! - 429: `Retry-After` honoured, backoff up to a minute without it, and fewer parallel
//!   connections (the [`budget`]);
//! - servers that answer 200 to a ranged request: remembered per product, and reported as
//!   [`FetchError::RangeIgnored`] so the layer above switches to a stream.
//!
//! HTTP itself (the client, backoff, `Retry-After`, redirects, the 206/200/416 triage) is
//! `eodata_http`'s. Files: `request` (one exchange with all policies), `parse` (error bodies
//! and `Content-Disposition`), `budget` (the adaptive connection limit), `stream` (the
//! sequential stream).

mod budget;
mod learned;
mod parse;
mod request;
mod stream;
#[cfg(test)]
mod tests;

pub use learned::PARK_FOR;
pub use stream::{ZipperStream, MAX_SPLICE_MISMATCHES, SPLICE_CHECK};

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use eodata_auth::TokenSource;
use eodata_http::answer::{content_length, header_str, triage, Answer};
use reqwest::header::{ACCEPT_RANGES, CONTENT_DISPOSITION, CONTENT_RANGE};
use reqwest::{Method, StatusCode};

use crate::{FetchError, ObjectInfo, RangeSource, RangeSupport};
use budget::Budget;
pub use budget::{AccountSlot, AccountSlots};
use parse::parse_content_disposition;
use request::{RangeSpec, RetryState};

/// How the access token travels with a download request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenPassing {
    /// `?token=<access_token>` in the URL (CREODIAS zipper). Survives redirects as a URL does;
    /// the URL is only ever logged through [`eodata_http::redact_url`].
    Query,
    /// `Authorization: Bearer <access_token>` (CDSE).
    Bearer,
}

/// Parallel connections by default: CDSE allows 4 per user (about 20 MB/s each); more are
/// refused with 429 or throttled to 1 MB/s.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4;
/// No byte for this long means the connection is dead. Long, because zipper builds some zips on
/// the fly before the first byte; a stall is retried like any failure.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(120);
/// Failures in a row (without a byte of progress) before a request gives up: with backoff
/// doubling from 0.2 s to 5 s this rides out about 20 s of a failing backend.
pub const DEFAULT_MAX_RETRIES: u32 = 8;
/// No new try is started after this long without a byte of progress: a reader blocked longer
/// than this is better told. It also bounds waiting on 429s, which the service asks for in
/// seconds to minutes.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(300);

/// What the download client needs to know about the service.
#[derive(Clone, Debug)]
pub struct ZipperConfig {
    /// The product's download URL with `{id}` where the product's UUID goes, e.g.
    /// `https://zipper.creodias.eu/odata/v1/Products({id})/$value`.
    pub url_template: String,
    pub token_passing: TokenPassing,
    /// Hosts besides the template's own that may receive the credential on a redirect (exact
    /// names, or `.example.eu` for every subdomain).
    pub trusted_hosts: Vec<String>,
    /// Most parallel connections; fewer while the service answers 429.
    pub max_connections: usize,
    /// No progress for this long -> the try fails (retried; finally [`FetchError::Timeout`]).
    pub read_timeout: Duration,
    /// Consecutive failures without progress before giving up.
    pub max_retries: u32,
    /// No new try after this long since the request began or last received a byte.
    pub deadline: Duration,
    /// Allow plain-http download URLs to hosts other than this machine (the token then
    /// travels in clear). Off: such a URL fails with [`FetchError::Insecure`].
    pub insecure_http: bool,
    /// The account-wide connection cap shared with other machines (a cluster coordinator);
    /// `None`: this machine's `max_connections` only.
    pub account_slots: Option<Arc<dyn AccountSlots>>,
}

impl ZipperConfig {
    /// A configuration with the defaults above.
    pub fn new(url_template: impl Into<String>, token_passing: TokenPassing) -> Self {
        ZipperConfig {
            url_template: url_template.into(),
            token_passing,
            trusted_hosts: Vec::new(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            read_timeout: DEFAULT_READ_TIMEOUT,
            max_retries: DEFAULT_MAX_RETRIES,
            deadline: DEFAULT_DEADLINE,
            insecure_http: false,
            account_slots: None,
        }
    }
}

/// Counters since the client was made: for `status`, benchmarks and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ZipperStats {
    /// HTTP requests sent (each redirect hop and each retry is one).
    pub requests: u64,
    /// Body bytes received for product data.
    pub bytes: u64,
    /// Tries after the first, of any cause.
    pub retries: u64,
    /// Of those, resumes of a body cut mid-way.
    pub resumes: u64,
    /// 401s (and 403 "token not found") answered by a renewal.
    pub unauthorized: u64,
    /// 429s.
    pub throttled: u64,
    pub redirects: u64,
    /// Parallel connections allowed now (at most `max_connections`).
    pub connection_limit: usize,
}

#[derive(Debug, Default)]
struct Counter(AtomicU64);

impl Counter {
    fn inc(&self) {
        self.add(1);
    }
    fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
struct Counters {
    requests: Counter,
    bytes: Counter,
    retries: Counter,
    resumes: Counter,
    unauthorized: Counter,
    throttled: Counter,
    redirects: Counter,
}

/// What has been learnt about one product. Products are immutable, so it is kept for the
/// client's life (a few dozen bytes per product opened).
#[derive(Clone, Debug, Default)]
struct Known {
    size: Option<u64>,
    filename: Option<String>,
    ranges: Option<RangeSupport>,
    /// `info` completed once: `filename` is as good as it gets.
    described: bool,
}

/// The download client. Cheap to clone: clones share the token source, the HTTP connections,
/// the connection budget, what is known of each product and the counters.
pub struct Zipper<T: TokenSource> {
    inner: Arc<Inner<T>>,
}

impl<T: TokenSource> Clone for Zipper<T> {
    fn clone(&self) -> Self {
        Zipper {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T: TokenSource> std::fmt::Debug for Zipper<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Zipper")
            .field("url_template", &self.inner.cfg.url_template)
            .field("token_passing", &self.inner.cfg.token_passing)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner<T: TokenSource> {
    cfg: ZipperConfig,
    tokens: T,
    http: reqwest::Client,
    budget: Arc<Budget>,
    stats: Counters,
    known: Mutex<HashMap<String, Known>>,
    /// One `info` at a time per product; entries live while someone is asking.
    describing: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    warned_auto_redirect: AtomicBool,
    /// The login or its tokens were refused for good: said once in the log, since every
    /// later read fails the same way.
    warned_refused: AtomicBool,
    /// Whether the download host honours Range (see `learned`).
    host: learned::HostMemory,
    /// Whole-product answers kept for the stream that will want them (see `learned`).
    parked: Arc<learned::Parked>,
    /// Nothing answers at the service's address: declared (and logged) once, cleared by the
    /// next answer. Requests meanwhile try once instead of retrying.
    outage: AtomicBool,
    /// When the last token was refused, and a hash of it (see `request`).
    last_rejection: Mutex<Option<request::Rejection>>,
}

impl<T: TokenSource> Zipper<T> {
    /// `http` must not follow redirects: build it with `redirect::Policy::none()`, or use
    /// [`eodata_http::client`]. (A client that follows them loses the bearer header on a cross-host hop
    /// and carries a query token to any host; a warning is logged if one is detected.)
    pub fn new(cfg: ZipperConfig, tokens: T, http: reqwest::Client) -> Self {
        let budget = Budget::with_account(cfg.max_connections, cfg.account_slots.clone());
        let host = url::Url::parse(&cfg.url_template.replace("{id}", "x"))
            .ok()
            .and_then(|u| u.host_str().map(str::to_string))
            .unwrap_or_default();
        Zipper {
            inner: Arc::new(Inner {
                cfg,
                tokens,
                http,
                budget,
                stats: Counters::default(),
                known: Mutex::new(HashMap::new()),
                describing: Mutex::new(HashMap::new()),
                warned_auto_redirect: AtomicBool::new(false),
                warned_refused: AtomicBool::new(false),
                host: learned::HostMemory::new(host),
                parked: Arc::default(),
                outage: AtomicBool::new(false),
                last_rejection: Mutex::new(None),
            }),
        }
    }

    /// Keeps what is learned of the host's Range support in `file` (and starts from what it
    /// says), so the next mount asks nothing it knows the answer to.
    pub fn remember_ranges_in(&self, file: std::path::PathBuf) {
        self.inner.host.remember_in(file);
    }

    /// Whether the download host honours Range, once an answer (or the remembered file) said.
    pub fn host_ranges(&self) -> Option<RangeSupport> {
        self.inner.host.ranges()
    }

    /// Checks the configuration before any read: the URL template gives an http(s) URL, and
    /// not a plain-http one to another machine unless `insecure_http` says so.
    pub fn check(&self) -> Result<(), FetchError> {
        self.inner
            .product_url("00000000-0000-0000-0000-000000000000")
            .map(|_| ())
    }

    pub fn config(&self) -> &ZipperConfig {
        &self.inner.cfg
    }

    pub fn stats(&self) -> ZipperStats {
        let s = &self.inner.stats;
        ZipperStats {
            requests: s.requests.get(),
            bytes: s.bytes.get(),
            retries: s.retries.get(),
            resumes: s.resumes.get(),
            unauthorized: s.unauthorized.get(),
            throttled: s.throttled.get(),
            redirects: s.redirects.get(),
            connection_limit: self.inner.budget.limit(),
        }
    }

    /// One sequential stream of the product from `offset` to its end, resumed across cut
    /// connections. Uses `Range: bytes=offset-` and, where the server ignores it, reads from 0
    /// and skips what is before `offset`. Holds one connection of the budget while connected.
    pub async fn stream_from(&self, id: &str, offset: u64) -> Result<ZipperStream<T>, FetchError> {
        ZipperStream::open(self.clone(), id, offset, Bytes::new()).await
    }

    /// [`Zipper::stream_from`] for a caller that holds the bytes before `offset`: `tail` (its
    /// last bytes, up to [`stream::SPLICE_CHECK`]) must come again identically in the server's
    /// answer, or the answer is not used (see [`ZipperStream`]).
    pub async fn stream_after(
        &self,
        id: &str,
        offset: u64,
        tail: Bytes,
    ) -> Result<ZipperStream<T>, FetchError> {
        ZipperStream::open(self.clone(), id, offset, tail).await
    }
}

impl<T: TokenSource> Inner<T> {
    fn known(&self, id: &str) -> Known {
        self.lock_known().get(id).cloned().unwrap_or_default()
    }

    fn lock_known(&self) -> std::sync::MutexGuard<'_, HashMap<String, Known>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn learn(&self, id: &str, f: impl FnOnce(&mut Known)) {
        f(self.lock_known().entry(id.to_string()).or_default());
    }

    /// Records what a response says about the product's size.
    fn learn_size(&self, id: &str, size: u64) {
        self.learn(id, |k| {
            if k.size.is_some_and(|s| s != size) {
                tracing::warn!(id, before = k.size, now = size, "product size changed");
            }
            k.size = Some(size);
        });
    }

    fn learn_ranges(&self, id: &str, ranges: RangeSupport) {
        self.host.learn(ranges);
        self.learn(id, |k| k.ranges = Some(ranges));
    }

    fn cached_info(&self, id: &str) -> Option<ObjectInfo> {
        let k = self.known(id);
        match (k.described, k.size, k.ranges) {
            (true, Some(size), Some(ranges)) => Some(ObjectInfo {
                size,
                filename: k.filename,
                ranges,
            }),
            _ => None,
        }
    }

    /// Cached, or asked of the service once: concurrent callers for one product wait for the
    /// first one's answer instead of each sending HEAD and a probe.
    async fn info(&self, id: &str) -> Result<ObjectInfo, FetchError> {
        if let Some(info) = self.cached_info(id) {
            return Ok(info);
        }
        let gate = {
            let mut d = self.describing.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(d.entry(id.to_string()).or_default())
        };
        let result = {
            let _turn = gate.lock().await;
            match self.cached_info(id) {
                Some(info) => Ok(info),
                None => self.describe(id).await,
            }
        };
        let mut d = self.describing.lock().unwrap_or_else(|p| p.into_inner());
        if d.get(id).is_some_and(|g| Arc::ptr_eq(g, &gate)) && Arc::strong_count(&gate) == 2 {
            d.remove(id);
        }
        result
    }

    /// HEAD for size and file name, then, unless already known, a ranged GET of byte 0 to learn
    /// whether Range is honoured (and the size, where HEAD gave none).
    async fn describe(&self, id: &str) -> Result<ObjectInfo, FetchError> {
        let mut retry = RetryState::new();
        let mut seen = Described {
            ranges: self.known(id).ranges.or(self.host.ranges()),
            ..Described::default()
        };
        if seen.ranges == Some(RangeSupport::Ignored) {
            return self.describe_by_stream(id, &mut retry).await;
        }
        self.describe_by_head(id, &mut retry, &mut seen).await?;
        if seen.size.is_none() || seen.ranges.is_none() {
            self.describe_by_byte_zero(id, &mut retry, &mut seen)
                .await?;
        }
        let Described {
            size,
            filename,
            ranges,
        } = seen;
        let size = size.ok_or_else(|| {
            FetchError::Protocol(format!(
                "the download service gives no size for product {id} (no Content-Length or Content-Range)"
            ))
        })?;
        let ranges = ranges.unwrap_or(RangeSupport::Honoured);
        self.learn_size(id, size);
        self.learn_ranges(id, ranges);
        self.learn(id, |k| {
            k.filename = filename.clone();
            k.described = true;
        });
        Ok(ObjectInfo {
            size,
            filename,
            ranges,
        })
    }

    /// What HEAD says: the size, the file name, and `Accept-Ranges: none`. A HEAD the server
    /// refuses says nothing (the byte-0 GET follows).
    async fn describe_by_head(
        &self,
        id: &str,
        retry: &mut RetryState,
        seen: &mut Described,
    ) -> Result<(), FetchError> {
        let head = self.exchange(id, Method::HEAD, None, retry).await?;
        let status = head.resp.status();
        if !status.is_success() {
            tracing::debug!(url = %head.url, %status, "HEAD not usable; asking for byte 0");
            return Ok(());
        }
        let h = head.resp.headers();
        seen.size = content_length(h);
        seen.filename = header_str(h, CONTENT_DISPOSITION).and_then(parse_content_disposition);
        if header_str(h, ACCEPT_RANGES).is_some_and(|v| v.trim().eq_ignore_ascii_case("none")) {
            seen.ranges = Some(RangeSupport::Ignored);
        }
        Ok(())
    }

    /// What a GET of byte 0 says: whether Range is honoured (206) or not (200: the whole
    /// product comes, and is parked for the stream that follows), and the size.
    async fn describe_by_byte_zero(
        &self,
        id: &str,
        retry: &mut RetryState,
        seen: &mut Described,
    ) -> Result<(), FetchError> {
        let asked = RangeSpec {
            first: 0,
            last: Some(0),
        };
        let probe = self.exchange(id, Method::GET, Some(asked), retry).await?;
        let h = probe.resp.headers();
        tracing::info!(
            url = %probe.url,
            status = %probe.resp.status(),
            accept_ranges = header_str(h, ACCEPT_RANGES),
            content_range = header_str(h, CONTENT_RANGE),
            content_length = header_str(h, reqwest::header::CONTENT_LENGTH),
            etag = header_str(h, reqwest::header::ETAG),
            "the download service's answer to a request for byte 0"
        );
        seen.filename = seen
            .filename
            .take()
            .or_else(|| header_str(h, CONTENT_DISPOSITION).and_then(parse_content_disposition));
        let answer = triage(probe.resp.status(), h, Some(asked))
            .map_err(|why| FetchError::Protocol(format!("{why} (from {})", probe.url)))?;
        match answer {
            Answer::Partial { total, .. } => {
                seen.ranges = Some(RangeSupport::Honoured);
                // The download's own Content-Range is the truth, over HEAD's length.
                seen.size = total.or(seen.size);
                // Read the one byte so the connection can be reused.
                let mut resp = probe.resp;
                let _ = tokio::time::timeout(self.cfg.read_timeout, resp.chunk()).await;
                self.budget.succeeded();
            }
            Answer::Unsatisfiable { total } => {
                // bytes=0-0 is unsatisfiable only for an empty product.
                seen.size = total.or(seen.size);
                seen.ranges = seen.ranges.or(Some(RangeSupport::Honoured));
            }
            Answer::Whole { len } => {
                seen.ranges = Some(RangeSupport::Ignored);
                seen.size = seen.size.or(len);
                // The whole product is on its way: the stream that follows takes it.
                self.parked.park(id, probe);
            }
        }
        Ok(())
    }

    /// `info` of a product on a host that ignores Range: one plain GET, whose headers say the
    /// size and file name, and whose body is parked for the stream that follows.
    async fn describe_by_stream(
        &self,
        id: &str,
        retry: &mut RetryState,
    ) -> Result<ObjectInfo, FetchError> {
        let ex = self.exchange(id, Method::GET, None, retry).await?;
        let h = ex.resp.headers();
        if ex.resp.status() != StatusCode::OK {
            return Err(FetchError::Protocol(format!(
                "HTTP {} from {} to a download",
                ex.resp.status(),
                ex.url
            )));
        }
        let size = content_length(h).ok_or_else(|| {
            FetchError::Protocol(format!(
                "the download service gives no size for product {id} (no Content-Length)"
            ))
        })?;
        let filename = header_str(h, CONTENT_DISPOSITION).and_then(parse_content_disposition);
        self.parked.park(id, ex);
        self.learn_size(id, size);
        self.learn(id, |k| {
            k.ranges = Some(RangeSupport::Ignored);
            k.filename = filename.clone();
            k.described = true;
        });
        Ok(ObjectInfo {
            size,
            filename,
            ranges: RangeSupport::Ignored,
        })
    }

    /// The parked whole-product answer for `id`, if one waits (see `learned`).
    pub(crate) fn take_parked(&self, id: &str) -> Option<request::Exchange> {
        self.parked.take(id)
    }

    async fn get_range(&self, id: &str, range: Range<u64>) -> Result<Bytes, FetchError> {
        let known = self.known(id);
        let Some(Range { start, mut end }) = crate::clamp_range(id, range.clone(), known.size)?
        else {
            return Ok(Bytes::new());
        };
        if known.ranges.or(self.host.ranges()) == Some(RangeSupport::Ignored) {
            return Err(FetchError::RangeIgnored(id.to_string()));
        }
        // Blocks are MiBs; a huge range grows the buffer as bytes come, not all up front.
        const MAX_PREALLOC: u64 = 64 << 20;
        let mut buf = crate::buffers::with_capacity((end - start).min(MAX_PREALLOC) as usize);
        let mut retry = RetryState::new();
        let mut pos = start;
        while pos < end {
            let asked = RangeSpec {
                first: pos,
                last: Some(end - 1),
            };
            let ex = self
                .exchange(id, Method::GET, Some(asked), &mut retry)
                .await?;
            let (ex, last) = self.part_answered(id, ex, asked, &range, known.size)?;
            end = last + 1;
            let request::Exchange {
                mut resp,
                permit,
                url,
            } = ex;
            // `pos <= last` (triage checked the first byte), so no underflow.
            let want = usize::try_from(last - pos + 1).map_err(|_| {
                FetchError::Protocol(format!(
                    "a range of {} bytes does not fit in memory",
                    last - pos
                ))
            })?;
            let (got, outcome) = self.read_part(&mut resp, &url, want, &mut buf).await;
            pos += got as u64;
            if got > 0 {
                retry.progressed();
            }
            match outcome {
                Ok(()) => {
                    self.budget.succeeded();
                    drop(permit);
                }
                Err(e) => {
                    drop(permit);
                    drop(resp);
                    tracing::debug!(error = %e, pos, end, "body incomplete; resuming");
                    if got > 0 {
                        retry.resume(self, e).await?;
                    } else {
                        retry.failed(self, e, None).await?;
                    }
                }
            }
        }
        Ok(crate::buffers::freeze(buf))
    }

    /// What the answer to `asked` brings: the exchange to read it from and the last byte it
    /// holds, learning the size and Range support it shows. A whole product where a slice was
    /// asked is [`FetchError::RangeIgnored`] (its body parked for the stream when it starts at
    /// byte 0), unless it is exactly what was asked; a 416 is `OutOfRange` of `range` (the
    /// caller's) or a protocol error.
    fn part_answered(
        &self,
        id: &str,
        ex: request::Exchange,
        asked: RangeSpec,
        range: &Range<u64>,
        known_size: Option<u64>,
    ) -> Result<(request::Exchange, u64), FetchError> {
        let (pos, end) = (asked.first, asked.last.map_or(range.end, |l| l + 1));
        let answer = triage(ex.resp.status(), ex.resp.headers(), Some(asked))
            .map_err(|why| FetchError::Protocol(format!("{why} (from {})", ex.url)))?;
        match answer {
            Answer::Partial { last, total, .. } => {
                if let Some(t) = total {
                    self.learn_size(id, t);
                }
                self.learn_ranges(id, RangeSupport::Honoured);
                Ok((ex, last))
            }
            Answer::Whole { len } => {
                if let Some(len) = len {
                    self.learn_size(id, len);
                }
                self.learn_ranges(id, RangeSupport::Ignored);
                match len {
                    // The whole body is exactly what was asked when the ask starts at 0
                    // and reaches past its end (the first read of a file smaller than a
                    // block, e.g. one file of a product): read it rather than ask again.
                    Some(len) if pos == 0 && len > 0 && len <= end => Ok((ex, len - 1)),
                    // Never the wrong bytes: the layer above switches to a stream, which
                    // takes this answer when it starts at byte 0.
                    _ => {
                        if pos == 0 {
                            self.parked.park(id, ex);
                        }
                        Err(FetchError::RangeIgnored(id.to_string()))
                    }
                }
            }
            Answer::Unsatisfiable { total } => {
                if let Some(t) = total {
                    self.learn_size(id, t);
                }
                let size = total.or(known_size).unwrap_or(0);
                if pos >= size {
                    return Err(FetchError::OutOfRange {
                        id: id.to_string(),
                        start: range.start,
                        end: range.end,
                        size,
                    });
                }
                Err(FetchError::Protocol(format!(
                    "416 from {} for bytes {pos}-{} of a product of {size} bytes",
                    ex.url,
                    end - 1
                )))
            }
        }
    }

    /// Reads `want` bytes of `resp`'s body into `buf`: how many came, and why they stopped
    /// short (a stall, a cut, an early end). Bytes past `want` are dropped with a warning.
    async fn read_part(
        &self,
        resp: &mut reqwest::Response,
        url: &str,
        want: usize,
        buf: &mut Vec<u8>,
    ) -> (usize, Result<(), FetchError>) {
        let mut got = 0usize;
        let outcome = loop {
            match tokio::time::timeout(self.cfg.read_timeout, resp.chunk()).await {
                Err(_) => break Err(FetchError::Timeout(self.cfg.read_timeout)),
                Ok(Err(e)) => {
                    break Err(FetchError::Server(format!(
                        "connection to {url} cut after {got} of {want} bytes: {}",
                        eodata_http::error_chain(&e)
                    )))
                }
                Ok(Ok(None)) if got < want => {
                    break Err(FetchError::Server(format!(
                        "{url} ended the body after {got} of {want} bytes"
                    )))
                }
                Ok(Ok(None)) => break Ok(()),
                Ok(Ok(Some(chunk))) => {
                    self.stats.bytes.add(chunk.len() as u64);
                    let take = chunk.len().min(want - got);
                    if take < chunk.len() {
                        tracing::warn!(%url, "more body than the Content-Range said; extra ignored");
                    }
                    buf.extend_from_slice(&chunk[..take]);
                    got += take;
                    if got == want {
                        break Ok(());
                    }
                }
            }
        };
        (got, outcome)
    }
}

impl<T: TokenSource> RangeSource for Zipper<T> {
    async fn info(&self, id: &str) -> Result<ObjectInfo, FetchError> {
        self.inner.info(id).await
    }

    async fn get_range(&self, id: &str, range: Range<u64>) -> Result<Bytes, FetchError> {
        self.inner.get_range(id, range).await
    }
}

/// What `describe` has learnt of a product so far.
#[derive(Default)]
struct Described {
    size: Option<u64>,
    filename: Option<String>,
    ranges: Option<RangeSupport>,
}
