//! The HTTP front: accept loop, routing, latency, outage, and logging of plain answers.
//!
//! The accept loop is ours (hyper directly, no web framework) because an outage must drop
//! connections and requests without any answer: a request refused during an outage makes the
//! service future fail, and hyper then closes the connection without writing a response.
//! Routing is done by hand on the raw path, since the zipper's
//! `/odata/v1/Products(<uuid>)/$value` has parentheses and a literal `$` that routers mangle.

use std::sync::Arc;

use bytes::Bytes;

use crate::body::Body;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::log::{redact_path, LogEntry};
use crate::respond::json_response;
pub(crate) use crate::respond::Answer;
use crate::state::Shared;

/// Biggest request body read (the token form is a few KB; this bounds a hostile client).
const MAX_REQUEST_BODY: usize = 1 << 20;

/// Why a request got no answer at all.
#[derive(Debug)]
pub(crate) struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("dropped by a simulated outage")
    }
}
impl std::error::Error for Dropped {}

/// Serves until `stop` turns true, then aborts every connection still open.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
            accepted = listener.accept() => {
                let Ok((sock, _)) = accepted else { continue };
                if shared.in_outage() {
                    drop(sock);
                    continue;
                }
                let _ = sock.set_nodelay(true);
                let shared = shared.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { dispatch(shared, req).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(sock), svc)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.abort_all();
}

/// Which service a path belongs to.
pub(crate) enum Route {
    Token,
    /// Download of the product with this id.
    Zipper(String),
    CatalogueSearch,
    CatalogueEntity(String),
    /// `Products(<id>)/Nodes...`: a product's own files (see `nodes`).
    Nodes(crate::nodes::NodePath),
    FilesIndex,
    File(String),
    /// `/_double/<what>` (only when control is enabled).
    Control(String),
    Unknown,
}

pub(crate) fn route(path: &str) -> Route {
    const TOKEN_SUFFIX: &str = "/protocol/openid-connect/token";
    if let Some(realm) = path
        .strip_prefix("/auth/realms/")
        .and_then(|r| r.strip_suffix(TOKEN_SUFFIX))
    {
        if realm == "Creodias-new" || realm == "CDSE" {
            return Route::Token;
        }
        return Route::Unknown;
    }
    if let Some(id) = path.strip_prefix("/download/") {
        if !id.is_empty() && !id.contains('/') {
            return Route::Zipper(id.to_string());
        }
    }
    if path == "/odata/v1/Products" || path == "/odata/v1/Products/" {
        return Route::CatalogueSearch;
    }
    if let Some(rest) = path.strip_prefix("/odata/v1/Products(") {
        // `$` may arrive percent-encoded (%24) from clients that escape it.
        let rest = rest.replace("%24", "$");
        if let Some(nodes) = crate::nodes::parse(&rest) {
            return Route::Nodes(nodes);
        }
        if let Some(id) = rest.strip_suffix(")/$value") {
            return Route::Zipper(id.trim_matches('\'').to_string());
        }
        if let Some(id) = rest.strip_suffix(')') {
            return Route::CatalogueEntity(id.trim_matches('\'').to_string());
        }
    }
    if let Some(what) = path.strip_prefix("/_double/") {
        return Route::Control(what.to_string());
    }
    if path == "/files" || path == "/files/" {
        return Route::FilesIndex;
    }
    if let Some(name) = path.strip_prefix("/files/") {
        let name = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
        return Route::File(name.into_owned());
    }
    Route::Unknown
}

async fn dispatch(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Dropped> {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let route = route(uri.path());
    let mut entry = LogEntry {
        service: match route {
            Route::Token => "token",
            Route::Zipper(_) => "zipper",
            Route::CatalogueSearch | Route::CatalogueEntity(_) => "catalogue",
            // Listing needs no token (a catalogue answer); a file is a zipper download.
            Route::Nodes(crate::nodes::NodePath::Value { .. }) => "zipper",
            Route::Nodes(_) => "catalogue",
            Route::FilesIndex | Route::File(_) => "files",
            Route::Unknown | Route::Control(_) => "other",
        }
        .to_string(),
        method: method.to_string(),
        path: redact_path(uri.path(), uri.query()),
        ..LogEntry::default()
    };
    if shared.in_outage() {
        return Err(log_dropped(&shared, entry));
    }
    let (parts, body) = req.into_parts();
    let body = match Limited::read(body).await {
        Ok(b) => b,
        Err(()) => {
            entry.outcome = "bad_body".into();
            let resp = json_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                &serde_json::json!({"error": "request body too large"}),
            );
            return Ok(finish(&shared, entry, resp));
        }
    };
    if let Route::Control(what) = &route {
        if shared.control_enabled() {
            let query = uri.query();
            return Ok(crate::control::handle(&shared, &method, what, query, &body));
        }
    }
    let latency = shared.faults().latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
        if shared.in_outage() {
            return Err(log_dropped(&shared, entry));
        }
    }
    let resp = match route {
        Route::Token => {
            crate::keycloak::handle(&shared, &method, &parts.headers, &body, &mut entry)
        }
        Route::Zipper(id) => {
            match crate::zipper::download(&shared, &method, &parts.headers, &uri, &id, entry).await
            {
                Answer::Done(resp, e) => {
                    entry = *e;
                    resp
                }
                Answer::Streaming(resp) => return Ok(dated(&shared, resp)),
            }
        }
        Route::Nodes(crate::nodes::NodePath::Value { id, keys }) => {
            match crate::nodes::value(&shared, &method, &parts.headers, &uri, &id, &keys, entry)
                .await
            {
                Answer::Done(resp, e) => {
                    entry = *e;
                    resp
                }
                Answer::Streaming(resp) => return Ok(dated(&shared, resp)),
            }
        }
        Route::Nodes(crate::nodes::NodePath::List { id, keys }) => {
            crate::nodes::list(&shared, &method, &id, &keys, &mut entry)
        }
        Route::Nodes(crate::nodes::NodePath::Malformed { id }) => {
            crate::nodes::malformed(&shared, &id, &mut entry)
        }
        Route::File(name) => {
            match crate::zipper::file(&shared, &method, &parts.headers, &name, entry).await {
                Answer::Done(resp, e) => {
                    entry = *e;
                    resp
                }
                Answer::Streaming(resp) => return Ok(dated(&shared, resp)),
            }
        }
        Route::FilesIndex => crate::zipper::files_index(&shared, &method, &mut entry),
        Route::CatalogueSearch => {
            crate::catalogue::search(&shared, &method, uri.query(), &mut entry)
        }
        Route::CatalogueEntity(id) => crate::catalogue::entity(&shared, &method, &id, &mut entry),
        Route::Unknown | Route::Control(_) => {
            entry.outcome = "not_found".into();
            json_response(
                StatusCode::NOT_FOUND,
                &serde_json::json!({"error": "Not Found"}),
            )
        }
    };
    let resp = if method == Method::HEAD {
        strip_body(resp)
    } else {
        resp
    };
    Ok(finish(&shared, entry, resp))
}

fn log_dropped(shared: &Shared, mut entry: LogEntry) -> Dropped {
    entry.status = 0;
    entry.outcome = "outage".into();
    entry.t_ms = shared.t_ms();
    shared.log.push(entry);
    Dropped
}

/// Logs a complete answer; its body is whole, so its length is what will be sent.
/// With a clock skew, the Date header tells the double's clock (hyper writes the machine's
/// only when the response has none), so clients can measure the skew as they would in the field.
fn dated(shared: &Shared, mut resp: Response<Body>) -> Response<Body> {
    if shared.clock_skew() != 0 {
        if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(shared.now())) {
            resp.headers_mut().insert(header::DATE, v);
        }
    }
    resp
}

fn finish(shared: &Shared, mut entry: LogEntry, resp: Response<Body>) -> Response<Body> {
    entry.status = resp.status().as_u16();
    entry.bytes_sent = if entry.method == "HEAD" {
        0
    } else {
        http_body::Body::size_hint(resp.body()).exact().unwrap_or(0)
    };
    if entry.outcome.is_empty() {
        entry.outcome = "ok".into();
    }
    entry.t_ms = shared.t_ms();
    shared.log.push(entry);
    dated(shared, resp)
}

/// HEAD: the same headers, no body (Content-Length kept as the GET would send it).
fn strip_body(resp: Response<Body>) -> Response<Body> {
    let (parts, _) = resp.into_parts();
    Response::from_parts(parts, crate::body::empty())
}

struct Limited;
impl Limited {
    async fn read(body: Incoming) -> Result<Bytes, ()> {
        let limited = http_body_util::Limited::new(body, MAX_REQUEST_BODY);
        limited
            .collect()
            .await
            .map(|c| c.to_bytes())
            .map_err(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_raw_path() {
        assert!(matches!(
            route("/auth/realms/Creodias-new/protocol/openid-connect/token"),
            Route::Token
        ));
        assert!(matches!(
            route("/auth/realms/CDSE/protocol/openid-connect/token"),
            Route::Token
        ));
        assert!(matches!(
            route("/auth/realms/Other/protocol/openid-connect/token"),
            Route::Unknown
        ));
        assert!(matches!(route("/download/abc"), Route::Zipper(id) if id == "abc"));
        assert!(
            matches!(route("/odata/v1/Products(abc)/$value"), Route::Zipper(id) if id == "abc")
        );
        assert!(
            matches!(route("/odata/v1/Products(abc)/%24value"), Route::Zipper(id) if id == "abc")
        );
        assert!(
            matches!(route("/odata/v1/Products(abc)"), Route::CatalogueEntity(id) if id == "abc")
        );
        assert!(matches!(
            route("/odata/v1/Products"),
            Route::CatalogueSearch
        ));
        assert!(matches!(
            route("/odata/v1/Products(abc)/Nodes(X.SAFE)/Nodes"),
            Route::Nodes(crate::nodes::NodePath::List { .. })
        ));
        assert!(matches!(
            route("/odata/v1/Products(abc)/Nodes(X.SAFE)/Nodes(a.xml)/%24value"),
            Route::Nodes(crate::nodes::NodePath::Value { .. })
        ));
        assert!(matches!(route("/files/"), Route::FilesIndex));
        assert!(matches!(route("/files/A%20B.zip"), Route::File(n) if n == "A B.zip"));
        assert!(matches!(route("/nothing"), Route::Unknown));
    }
}
