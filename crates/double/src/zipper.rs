//! The zipper: product downloads on `/download/<uuid>` and `/odata/v1/Products(<uuid>)/$value`,
//! and, for peers that cannot log in (rclone, httpdirfs), the `/files/` index and files when the
//! `no_auth` fault is on.
//!
//! A request passes, in order: the id (422 DAT-ZIP-111 unless a bare UUID), the token check
//! (`?token=` or `Authorization: Bearer`; 401 DAT-ZIP-109 "Token is expired" for an expired
//! token, DAT-ZIP-604 "Token not found" for a missing, unknown or revoked one, DAT-ZIP-609
//! "Token audience not allowed" with `wrong_audience`, a spurious 604 with `spurious_401_ms`),
//! 403 DAT-ZIP-608 with `forbidden`, the rate-limit burst (429), product lookup (404; DAT-ZIP-915
//! "No objects to stream" for a product the catalogue knows but that has no file), the random
//! 503, Range parsing (206 / 416 / 200), the per-user connection cap (429 DAT-ZIP-100 "Max
//! session number N exceeded", `Retry-After` only when `retry_after_secs` is set), then the
//! streamed body (see `body`). The codes and the `{"trace-id","code","message"}` shape are the
//! real zipper's as public sources report them (docs/protocol.md); 404/405/416/503 codes are
//! stand-ins.

use std::sync::Arc;

use crate::body::Body;
use hyper::http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode, Uri};
use rand::Rng as _;
use serde_json::json;

use crate::body::{self, Plan};
use crate::log::LogEntry;
use crate::respond::{html_response, json_response, Answer};
use crate::state::Shared;
use crate::store::Product;

/// Connection-cap accounting name for requests made without a token (`no_auth`).
const ANONYMOUS: &str = "anonymous";

/// What the Range header asks for, against a body of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RangeAsk {
    /// No usable Range header (absent, malformed or multi-range): the whole body, 200.
    Whole,
    /// Inclusive first and last byte, 206.
    Part(u64, u64),
    /// 416.
    Unsatisfiable,
}

pub(crate) fn parse_range(header: Option<&str>, size: u64) -> RangeAsk {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeAsk::Whole;
    };
    let spec = spec.trim();
    if spec.contains(',') {
        // RFC 9110 lets a server ignore a multi-range request; the zipper answers one body.
        return RangeAsk::Whole;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return RangeAsk::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    match (a.is_empty(), b.is_empty()) {
        (true, true) => RangeAsk::Whole,
        (true, false) => match b.parse::<u64>() {
            Ok(0) => RangeAsk::Unsatisfiable,
            Ok(_) if size == 0 => RangeAsk::Unsatisfiable,
            Ok(n) => RangeAsk::Part(size.saturating_sub(n), size - 1),
            Err(_) => RangeAsk::Whole,
        },
        (false, _) => {
            let Ok(first) = a.parse::<u64>() else {
                return RangeAsk::Whole;
            };
            let last = if b.is_empty() {
                u64::MAX
            } else {
                match b.parse::<u64>() {
                    Ok(l) if l >= first => l,
                    _ => return RangeAsk::Whole,
                }
            };
            if first >= size {
                RangeAsk::Unsatisfiable
            } else {
                RangeAsk::Part(first, last.min(size - 1))
            }
        }
    }
}

fn trace_id(shared: &Shared) -> String {
    let b: [u8; 16] = shared.rng.lock().unwrap().random();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A zipper error in its JSON shape, or HTML when `garbage_zipper_errors` is on.
pub(crate) fn error(
    shared: &Shared,
    status: StatusCode,
    code: &str,
    message: &str,
) -> Response<Body> {
    if shared.faults().garbage_zipper_errors {
        return html_response(
            status,
            &format!("<html><body><h1>{}</h1><p>nginx</p></body></html>", status),
        );
    }
    json_response(
        status,
        &json!({"trace-id": trace_id(shared), "code": code, "message": message}),
    )
}

/// 429 DAT-ZIP-100, worded as the real one ("Max session number 4 exceeded").
fn too_many(shared: &Shared, cap: Option<usize>) -> Response<Body> {
    let faults = shared.faults();
    let mut r = error(
        shared,
        StatusCode::TOO_MANY_REQUESTS,
        "DAT-ZIP-100",
        &format!("Max session number {} exceeded", cap.unwrap_or(4)),
    );
    if let Some(secs) = faults.retry_after_secs {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

/// Whether `id` is a bare UUID (8-4-4-4-12 hex), the only key form the zipper reads.
fn is_uuid(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// The access token of a request: `?token=` first, then `Authorization: Bearer`.
#[cfg(test)]
fn token_of(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    token_and_way(headers, query).map(|(t, _)| t)
}

/// The access token and how it came: `"query"` or `"bearer"` (logged as `token_via`).
fn token_and_way(headers: &HeaderMap, query: Option<&str>) -> Option<(String, &'static str)> {
    if let Some(q) = query {
        for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
            if k == "token" && !v.is_empty() {
                return Some((v.into_owned(), "query"));
            }
        }
    }
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = auth.trim().split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty())
        .then(|| (token.trim().to_string(), "bearer"))
}

/// Where `redirect_downloads` (and CDSE mode) sends an OData-form download asked at 127.0.0.1:
/// the same path and query at `localhost` (the "download host").
fn redirect_target(shared: &Shared, headers: &HeaderMap, uri: &Uri) -> Option<HeaderValue> {
    let redirect = shared.faults().redirect_downloads || shared.mode == crate::Mode::Cdse;
    if !redirect || !uri.path().starts_with("/odata/") {
        return None;
    }
    let host = headers.get(header::HOST)?.to_str().ok()?;
    if host.starts_with("localhost") {
        return None;
    }
    let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    HeaderValue::from_str(&format!("http://localhost:{}{path_and_query}", shared.port)).ok()
}

/// GET/HEAD of a product through the zipper.
pub(crate) async fn download(
    shared: &Arc<Shared>,
    method: &Method,
    headers: &HeaderMap,
    uri: &Uri,
    id: &str,
    mut entry: LogEntry,
) -> Answer {
    entry.product = Some(id.to_string());
    if !is_uuid(id) {
        entry.outcome = "bad_uuid".into();
        let r = error(
            shared,
            StatusCode::UNPROCESSABLE_ENTITY,
            "DAT-ZIP-111",
            "Invalid UUID format",
        );
        return Answer::done(r, entry);
    }
    let user = match admit(shared, method, headers, uri, &mut entry) {
        Ok(user) => user,
        Err(resp) => return Answer::done(*resp, entry),
    };
    let Some(product) = shared.store.by_id(id) else {
        entry.outcome = "not_found".into();
        let r = error(
            shared,
            StatusCode::NOT_FOUND,
            "DAT-ZIP-404",
            "Product not found",
        );
        return Answer::done(r, entry);
    };
    if product.file.is_none() {
        // Known to the catalogue, nothing to send (offline, or no data behind it).
        entry.outcome = "no_objects".into();
        let r = error(
            shared,
            StatusCode::NOT_FOUND,
            "DAT-ZIP-915",
            "No objects to stream",
        );
        return Answer::done(r, entry);
    }
    serve_product(
        shared,
        method,
        headers,
        &Served::zip(&product),
        &user,
        entry,
    )
    .await
}

/// What a download serves: a whole product zip, or (for OData Nodes) one member's bytes inside
/// a file, from `offset` for `len` bytes.
pub(crate) struct Served {
    pub file: std::path::PathBuf,
    pub offset: u64,
    /// `None`: the rest of the file.
    pub len: Option<u64>,
    pub content_type: &'static str,
    /// Content-Disposition's `filename=`.
    pub filename: String,
}

impl Served {
    fn zip(product: &Product) -> Served {
        Served {
            file: product.file.clone().expect("checked by caller"),
            offset: 0,
            len: None,
            content_type: "application/zip",
            filename: product.zip_name(),
        }
    }

    /// The whole of a product's zip (not one member of it).
    fn is_whole_zip(&self) -> bool {
        self.offset == 0 && self.len.is_none()
    }
}

/// The checks every zipper download passes before its product is looked up: the method, the
/// CDSE-style redirect, the token, and the refusals of a valid token the fault switches ask
/// for. Returns the user to account connections to, or the answer.
pub(crate) fn admit(
    shared: &Arc<Shared>,
    method: &Method,
    headers: &HeaderMap,
    uri: &Uri,
    entry: &mut LogEntry,
) -> Result<String, Box<Response<Body>>> {
    let query = uri.query();
    if method != Method::GET && method != Method::HEAD {
        entry.outcome = "method_not_allowed".into();
        let r = error(
            shared,
            StatusCode::METHOD_NOT_ALLOWED,
            "DAT-ZIP-405",
            "Method not allowed",
        );
        return Err(Box::new(r));
    }
    if let Some(to) = redirect_target(shared, headers, uri) {
        entry.outcome = "redirect".into();
        let mut r = Response::new(crate::body::empty());
        *r.status_mut() = StatusCode::MOVED_PERMANENTLY;
        r.headers_mut().insert(header::LOCATION, to);
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(0));
        return Err(Box::new(r));
    }
    if shared.faults().no_auth {
        return Ok(ANONYMOUS.to_string());
    }
    let checked = match token_and_way(headers, query) {
        None => Err("no_token"),
        Some((t, way)) => {
            entry.token_via = Some(way.to_string());
            shared.auth.lock().unwrap().check_access(&t)
        }
    };
    match checked {
        Ok((user, jti)) => {
            entry.username = Some(user.clone());
            entry.token_id = Some(jti);
            if let Some(r) = refusal(shared, entry) {
                return Err(Box::new(r));
            }
            Ok(user)
        }
        Err(outcome) => {
            entry.outcome = outcome.into();
            let (code, message) = if outcome == "expired_token" {
                ("DAT-ZIP-109", "Token is expired")
            } else {
                ("DAT-ZIP-604", "Token not found")
            };
            Err(Box::new(error(
                shared,
                StatusCode::UNAUTHORIZED,
                code,
                message,
            )))
        }
    }
}

/// The refusals of a valid token that the fault switches ask for: a wrong audience (final),
/// a spurious 401 (passing), or 403 forbidden.
fn refusal(shared: &Shared, entry: &mut LogEntry) -> Option<Response<Body>> {
    let faults = shared.faults();
    if faults.no_auth {
        return None;
    }
    let (status, code, message, outcome) = if faults.wrong_audience {
        (
            StatusCode::UNAUTHORIZED,
            "DAT-ZIP-609",
            "Token audience not allowed",
            "wrong_audience",
        )
    } else if shared.faults_age().as_millis() < u128::from(faults.spurious_401_ms) {
        (
            StatusCode::UNAUTHORIZED,
            "DAT-ZIP-604",
            "Token not found",
            "spurious_401",
        )
    } else if faults.forbidden {
        (
            StatusCode::FORBIDDEN,
            "DAT-ZIP-608",
            "Access forbidden",
            "forbidden",
        )
    } else {
        return None;
    };
    entry.outcome = outcome.into();
    Some(error(shared, status, code, message))
}

/// The rest of a download, shared by the zipper, `/files/` and node downloads: faults, Range,
/// headers, body.
pub(crate) async fn serve_product(
    shared: &Arc<Shared>,
    method: &Method,
    headers: &HeaderMap,
    served: &Served,
    user: &str,
    mut entry: LogEntry,
) -> Answer {
    let burst = {
        let mut f = shared.faults.lock().unwrap();
        let hit = f.rate_limit_burst > 0;
        f.rate_limit_burst = f.rate_limit_burst.saturating_sub(1);
        hit
    };
    if burst {
        entry.outcome = "429".into();
        return Answer::done(too_many(shared, None), entry);
    }
    let faults = shared.faults();
    if *method == Method::GET && shared.roll(faults.fail_rate) {
        entry.outcome = "fault_503".into();
        let r = error(
            shared,
            StatusCode::SERVICE_UNAVAILABLE,
            "DAT-ZIP-503",
            "Service temporarily unavailable",
        );
        return Answer::done(r, entry);
    }
    let mut path = served.file.clone();
    if faults.reorder_members && *method == Method::GET && served.is_whole_zip() {
        let n = shared
            .gets
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n % 2 == 1 {
            match crate::reorder::reordered(&path) {
                Ok(twin) => {
                    entry.outcome = "reordered".into();
                    path = twin;
                }
                Err(e) => tracing::warn!("cannot reorder {}: {e:#}", path.display()),
            }
        }
    }
    let meta = match tokio::fs::metadata(&path).await {
        Ok(m) => m,
        Err(_) => {
            entry.outcome = "not_found".into();
            let r = error(
                shared,
                StatusCode::NOT_FOUND,
                "DAT-ZIP-404",
                "Product not found",
            );
            return Answer::done(r, entry);
        }
    };
    let size = served
        .len
        .unwrap_or_else(|| meta.len().saturating_sub(served.offset));
    let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let ask = if !faults.range {
        RangeAsk::Whole
    } else {
        parse_range(range_header, size)
    };
    let mut resp = Response::new(crate::body::empty());
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(served.content_type),
    );
    if faults.range {
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{}\"", served.filename)) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Ok(m) = meta.modified() {
        if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(m)) {
            h.insert(header::LAST_MODIFIED, v);
        }
    }
    let (status, first, len) = match ask {
        RangeAsk::Whole => (StatusCode::OK, 0, size),
        RangeAsk::Part(a, b) => {
            h.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {a}-{b}/{size}")).unwrap(),
            );
            (StatusCode::PARTIAL_CONTENT, a, b - a + 1)
        }
        RangeAsk::Unsatisfiable => {
            entry.outcome = "range_not_satisfiable".into();
            let mut r = error(
                shared,
                StatusCode::RANGE_NOT_SATISFIABLE,
                "DAT-ZIP-416",
                "Requested range not satisfiable",
            );
            r.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{size}")).unwrap(),
            );
            return Answer::done(r, entry);
        }
    };
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    *resp.status_mut() = status;
    if *method == Method::HEAD {
        return Answer::done(resp, entry);
    }
    let Some(slot) = shared.acquire_slot(user, faults.max_connections_per_user) else {
        entry.outcome = "max_connections".into();
        return Answer::done(too_many(shared, faults.max_connections_per_user), entry);
    };
    let cut_next = {
        let mut f = shared.faults.lock().unwrap();
        let hit = f.cut_next > 0;
        f.cut_next = f.cut_next.saturating_sub(1);
        hit
    };
    let cut_after = (shared.roll(faults.cut_rate) || cut_next).then_some(len / 2);
    let tamper_at =
        (faults.tamper && len > 0).then(|| shared.rng.lock().unwrap().random_range(0..len));
    if tamper_at.is_some() {
        entry.outcome = "tampered".into();
    }
    entry.status = status.as_u16();
    let plan = Plan {
        file: path,
        start: served.offset + first,
        len,
        cut_after,
        tamper_at,
        bandwidth: faults.bandwidth_per_conn,
    };
    *resp.body_mut() = body::stream(shared.clone(), plan, entry, Some(slot));
    Answer::Streaming(resp)
}

/// `/files/<Name>.zip` (only with `no_auth`); the zip's own file name is accepted too.
pub(crate) async fn file(
    shared: &Arc<Shared>,
    method: &Method,
    headers: &HeaderMap,
    name: &str,
    mut entry: LogEntry,
) -> Answer {
    let product = shared.store.by_download_name(name);
    match product {
        Some(p)
            if shared.faults().no_auth && (*method == Method::GET || *method == Method::HEAD) =>
        {
            entry.product = Some(p.id.clone());
            serve_product(shared, method, headers, &Served::zip(&p), ANONYMOUS, entry).await
        }
        _ => {
            entry.outcome = "not_found".into();
            Answer::done(
                html_response(
                    StatusCode::NOT_FOUND,
                    "<html><body>404 Not Found</body></html>",
                ),
                entry,
            )
        }
    }
}

/// `/files/`: an HTML index with one `<Name>.zip` link per downloadable product, the name a
/// zipper download is saved under (only with `no_auth`).
pub(crate) fn files_index(
    shared: &Arc<Shared>,
    method: &Method,
    entry: &mut LogEntry,
) -> Response<Body> {
    if !shared.faults().no_auth || (*method != Method::GET && *method != Method::HEAD) {
        entry.outcome = "not_found".into();
        return html_response(
            StatusCode::NOT_FOUND,
            "<html><body>404 Not Found</body></html>",
        );
    }
    let mut html = String::from(
        "<html><head><title>Index of /files/</title></head><body>\n<h1>Index of /files/</h1>\n",
    );
    for p in shared.store.products().iter() {
        if p.file.is_some() {
            let n = p.zip_name();
            let href =
                percent_encoding::utf8_percent_encode(&n, percent_encoding::NON_ALPHANUMERIC)
                    .to_string()
                    // Keep the usual file-name characters readable in the link.
                    .replace("%2E", ".")
                    .replace("%5F", "_")
                    .replace("%2D", "-");
            let text = n.replace('&', "&amp;").replace('<', "&lt;");
            html.push_str(&format!("<a href=\"{href}\">{text}</a><br>\n"));
        }
    }
    html.push_str("</body></html>\n");
    html_response(StatusCode::OK, &html)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeAsk::*;
        assert_eq!(parse_range(None, 100), Whole);
        assert_eq!(parse_range(Some("bytes=0-9"), 100), Part(0, 9));
        assert_eq!(parse_range(Some("bytes=90-"), 100), Part(90, 99));
        assert_eq!(parse_range(Some("bytes=90-200"), 100), Part(90, 99));
        assert_eq!(parse_range(Some("bytes=-10"), 100), Part(90, 99));
        assert_eq!(parse_range(Some("bytes=-1000"), 100), Part(0, 99));
        assert_eq!(parse_range(Some("bytes=100-"), 100), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 100), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-"), 0), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=5-4"), 100), Whole);
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 100), Whole);
        assert_eq!(parse_range(Some("items=0-1"), 100), Whole);
    }

    #[test]
    fn token_from_query_then_header() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(token_of(&h, Some("token=q")).as_deref(), Some("q"));
        assert_eq!(token_of(&h, None).as_deref(), Some("abc"));
        assert_eq!(token_of(&HeaderMap::new(), Some("x=1")), None);
    }
}
