//! `/_double/...`: control endpoints for scripts that run the double as a process
//! (`fake-creodias serve --control`) and cannot call [`crate::Double`]'s methods. Off unless
//! enabled, since the real services have nothing like it; control requests are not logged, so
//! reading the log does not change it.
//!
//! - `GET /_double/log`: every log entry so far, as a JSON array.
//! - `GET /_double/faults`, `PUT /_double/faults`: the fault switches as JSON (see
//!   [`FaultsDoc`]; fields left out take their default, so `{}` clears every fault).
//! - `POST /_double/outage?ms=N`, `POST /_double/revoke`, `POST /_double/unlock?user=U`,
//!   `POST /_double/clock-skew?secs=N`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{Method, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::server::json_response;
use crate::state::Shared;
use crate::Faults;

/// [`Faults`] as JSON: the same field names, `latency` as `latency_ms`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultsDoc {
    pub fail_rate: f64,
    pub cut_rate: f64,
    pub latency_ms: u64,
    pub bandwidth_per_conn: Option<u64>,
    pub max_connections_per_user: Option<usize>,
    pub no_range: bool,
    pub rate_limit_burst: u32,
    pub refuse_refresh: bool,
    pub tamper: bool,
    pub garbage_token: bool,
    pub garbage_catalogue: bool,
    pub garbage_zipper_errors: bool,
    pub no_auth: bool,
    pub redirect_downloads: bool,
}

impl From<&Faults> for FaultsDoc {
    fn from(f: &Faults) -> FaultsDoc {
        FaultsDoc {
            fail_rate: f.fail_rate,
            cut_rate: f.cut_rate,
            latency_ms: f.latency.as_millis() as u64,
            bandwidth_per_conn: f.bandwidth_per_conn,
            max_connections_per_user: f.max_connections_per_user,
            no_range: f.no_range,
            rate_limit_burst: f.rate_limit_burst,
            refuse_refresh: f.refuse_refresh,
            tamper: f.tamper,
            garbage_token: f.garbage_token,
            garbage_catalogue: f.garbage_catalogue,
            garbage_zipper_errors: f.garbage_zipper_errors,
            no_auth: f.no_auth,
            redirect_downloads: f.redirect_downloads,
        }
    }
}

impl From<FaultsDoc> for Faults {
    fn from(f: FaultsDoc) -> Faults {
        Faults {
            fail_rate: f.fail_rate,
            cut_rate: f.cut_rate,
            latency: Duration::from_millis(f.latency_ms),
            bandwidth_per_conn: f.bandwidth_per_conn,
            max_connections_per_user: f.max_connections_per_user,
            no_range: f.no_range,
            rate_limit_burst: f.rate_limit_burst,
            refuse_refresh: f.refuse_refresh,
            tamper: f.tamper,
            garbage_token: f.garbage_token,
            garbage_catalogue: f.garbage_catalogue,
            garbage_zipper_errors: f.garbage_zipper_errors,
            no_auth: f.no_auth,
            redirect_downloads: f.redirect_downloads,
        }
    }
}

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
        ("GET", "faults") => {
            json_response(StatusCode::OK, &json!(FaultsDoc::from(&shared.faults())))
        }
        ("PUT" | "POST", "faults") => match serde_json::from_slice::<FaultsDoc>(body) {
            Ok(doc) => {
                *shared.faults.lock().unwrap() = doc.into();
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
