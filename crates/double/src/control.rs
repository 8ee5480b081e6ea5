//! `/_double/...`: control endpoints for scripts that run the double as a process
//! (`fake-creodias serve --control`) and cannot call [`crate::Double`]'s methods. Off unless
//! enabled, since the real services have nothing like it; control requests are not logged, so
//! reading the log does not change it.
//!
//! - `GET /_double/log`: every log entry so far, as a JSON array.
//! - `GET /_double/faults`, `PUT /_double/faults`: the fault switches as JSON (see
//!   [`Faults`] (`latency` written `latency_ms`); fields left out take their default, so `{}` clears every fault).
//! - `POST /_double/outage?ms=N`, `POST /_double/revoke`, `POST /_double/unlock?user=U`,
//!   `POST /_double/clock-skew?secs=N`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::body::Body;
use hyper::http::{Method, Response, StatusCode};
use serde_json::json;

use crate::respond::json_response;
use crate::state::Shared;
use crate::Faults;

fn query_value(query: Option<&str>, key: &str) -> Option<String> {
    url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

fn bad(message: &str) -> Response<Body> {
    json_response(StatusCode::BAD_REQUEST, &json!({"error": message}))
}

pub(crate) fn handle(
    shared: &Arc<Shared>,
    method: &Method,
    what: &str,
    query: Option<&str>,
    body: &Bytes,
) -> Response<Body> {
    let ok = || json_response(StatusCode::OK, &json!({"ok": true}));
    match (method.as_str(), what) {
        ("GET", "log") => json_response(StatusCode::OK, &json!(shared.log.entries())),
        ("GET", "faults") => json_response(StatusCode::OK, &json!(shared.faults())),
        ("PUT" | "POST", "faults") => match serde_json::from_slice::<Faults>(body) {
            Ok(doc) => {
                shared.set_faults(doc);
                ok()
            }
            Err(e) => bad(&format!("faults: {e}")),
        },
        ("POST", "outage") => match query_value(query, "ms").and_then(|v| v.parse().ok()) {
            Some(ms) => {
                shared.start_outage(Duration::from_millis(ms));
                ok()
            }
            None => bad("outage needs ?ms=N"),
        },
        ("POST", "revoke") => {
            shared.auth.lock().unwrap().revoke_access_tokens();
            ok()
        }
        ("POST", "unlock") => match query_value(query, "user") {
            Some(u) => {
                shared.auth.lock().unwrap().unlock(&u);
                ok()
            }
            None => bad("unlock needs ?user=NAME"),
        },
        ("POST", "clock-skew") => match query_value(query, "secs").and_then(|v| v.parse().ok()) {
            Some(s) => {
                shared.set_clock_skew(s);
                ok()
            }
            None => bad("clock-skew needs ?secs=N"),
        },
        _ => json_response(StatusCode::NOT_FOUND, &json!({"error": "unknown control"})),
    }
}
