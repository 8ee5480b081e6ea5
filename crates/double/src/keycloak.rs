//! The fake Keycloak's token endpoint (`Creodias-new` and `CDSE` realms) as HTTP: the method,
//! the form, the endpoint's faults (garbage, an error status for a while), then the realm's
//! decision ([`crate::realm::Realm::grant`]) as a JSON or HTML answer with Keycloak's no-store headers.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use hyper::http::{HeaderMap, Response, StatusCode};
use serde_json::{json, Value};

use crate::body::Body;
use crate::log::LogEntry;
use crate::respond::{html_response, json_response};
use crate::state::Shared;

/// Decodes an `application/x-www-form-urlencoded` body (`+` is a space, `%XX` a byte; the first
/// of repeated keys wins, like Keycloak's `getFirst`). Any other content type reads as empty,
/// which Keycloak then reports as a missing `grant_type`.
fn parse_form(headers: &HeaderMap, body: &[u8]) -> HashMap<String, String> {
    let is_form = headers
        .get(hyper::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    let mut form = HashMap::new();
    if is_form {
        for (k, v) in url::form_urlencoded::parse(body) {
            form.entry(k.into_owned()).or_insert_with(|| v.into_owned());
        }
    }
    form
}

/// POST on the token endpoint. Fills `entry` (grant, user, step, outcome, token id).
pub(crate) fn handle(
    shared: &Arc<Shared>,
    method: &hyper::http::Method,
    headers: &HeaderMap,
    body: &Bytes,
    entry: &mut LogEntry,
) -> Response<Body> {
    if method != hyper::http::Method::POST {
        entry.outcome = "method_not_allowed".into();
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": "RESTEASY003650: No resource method found for GET, return 405 with Allow header"}),
        );
    }
    let faults = shared.faults();
    if faults.garbage_token {
        entry.outcome = "garbage".into();
        return html_response(
            StatusCode::OK,
            "<html><head><title>Maintenance</title></head><body><h1>We'll be back soon</h1></body></html>",
        );
    }
    let form = parse_form(headers, body);
    let now_unix = shared.unix_now();
    entry.grant_type = form.get("grant_type").cloned();
    let fault = shared.auth.lock().unwrap().current_fault();
    if let Some(f) = fault {
        entry.outcome = format!("fault_{}", f.status);
        let status = StatusCode::from_u16(f.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let mut resp = if f.html {
            html_response(
                status,
                "<html><head><title>Request blocked</title></head><body><h1>Access denied</h1><p>Your request was blocked.</p></body></html>",
            )
        } else {
            json_response(
                status,
                &json!({"error": "temporarily_unavailable", "error_description": "Service Unavailable"}),
            )
        };
        if let Some(secs) = f.retry_after {
            resp.headers_mut()
                .insert("retry-after", secs.to_string().parse().unwrap());
        }
        return resp;
    }
    let grant = {
        let mut realm = shared.auth.lock().unwrap();
        let mut rng = shared.rng.lock().unwrap();
        realm.grant(&form, faults.refuse_refresh, now_unix, &mut *rng)
    };
    entry.outcome = grant.outcome.into();
    entry.username = grant.username;
    entry.totp_step = grant.totp_step;
    entry.token_id = grant.token_id;
    let mut resp = match &grant.body {
        Value::String(page) => html_response(grant.status, page),
        body => json_response(grant.status, body),
    };
    let h = resp.headers_mut();
    h.insert("cache-control", "no-store".parse().unwrap());
    h.insert("pragma", "no-cache".parse().unwrap());
    resp
}
