//! The OData catalogue: `GET /odata/v1/Products?$filter=...` and `GET /odata/v1/Products(<uuid>)`.
//!
//! Search needs no token (docs/protocol.md). Results are `{"@odata.context":
//! "$metadata#Products", "value": [...]}` with `$top` (default 20, at most 1000), `$skip` (at most
//! 10000; past either limit a 422 with FastAPI's list-shaped `detail`, as the real one),
//! `$orderby`, `$count=True` (`"@odata.count"`) and `"@odata.nextLink"` whenever a page is full
//! (even when nothing follows, as the real one; left out when the next `$skip` would pass the
//! limit). Without `$orderby` the order is not stable: each answer is shuffled (seeded), so that
//! a client paging without `$orderby` loses and repeats products, as against the real service.
//! Entities are served exactly as the store holds them, minus its private `file` key.

use std::sync::Arc;

use crate::body::Body;
use hyper::http::{Method, Response, StatusCode};
use serde_json::{json, Map, Value};

use crate::filter;
use crate::log::LogEntry;
use crate::respond::{html_response, json_response};
use crate::state::Shared;

/// The real catalogue's default page size.
const DEFAULT_TOP: usize = 20;
/// The real catalogue refuses larger pages.
const MAX_TOP: usize = 1000;
/// The real catalogue refuses deeper paging.
const MAX_SKIP: usize = 10_000;

fn bad_request(entry: &mut LogEntry, message: &str) -> Response<Body> {
    entry.outcome = "bad_filter".into();
    json_response(
        StatusCode::BAD_REQUEST,
        &json!({"detail": {"message": message}}),
    )
}

/// A limit refused as the real catalogue (FastAPI) does: 422 with a list of problems.
fn out_of_range(entry: &mut LogEntry, param: &str, input: &str, max: usize) -> Response<Body> {
    entry.outcome = "bad_paging".into();
    json_response(
        StatusCode::UNPROCESSABLE_ENTITY,
        &json!({"detail": [{
            "type": "less_than_equal",
            "loc": ["query", param],
            "msg": format!("Input should be less than or equal to {max}"),
            "input": input,
            "ctx": {"le": max},
        }]}),
    )
}

fn garbage(entry: &mut LogEntry) -> Response<Body> {
    entry.outcome = "garbage".into();
    html_response(
        StatusCode::OK,
        "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center></body></html>",
    )
}

fn method_ok(method: &Method) -> bool {
    *method == Method::GET || *method == Method::HEAD
}

/// One `$orderby` key.
struct OrderKey {
    field: String,
    desc: bool,
}

fn parse_orderby(s: &str) -> Result<Vec<OrderKey>, String> {
    s.split(',')
        .map(|k| {
            let mut words = k.split_whitespace();
            let field = words.next().ok_or("empty $orderby key")?.to_string();
            let desc = match words.next().map(str::to_ascii_lowercase).as_deref() {
                None | Some("asc") => false,
                Some("desc") => true,
                Some(o) => return Err(format!("unsupported $orderby direction: {o}")),
            };
            Ok(OrderKey { field, desc })
        })
        .collect()
}

fn order_value(v: Option<&Value>) -> (u8, f64, String) {
    match v {
        Some(Value::Number(n)) => (1, n.as_f64().unwrap_or(0.0), String::new()),
        Some(Value::Bool(b)) => (1, f64::from(u8::from(*b)), String::new()),
        Some(Value::String(s)) => match filter::parse_time(s) {
            Some(t) => (1, t as f64, String::new()),
            None => (2, 0.0, s.clone()),
        },
        _ => (0, 0.0, String::new()),
    }
}

pub(crate) fn search(
    shared: &Arc<Shared>,
    method: &Method,
    query: Option<&str>,
    entry: &mut LogEntry,
) -> Response<Body> {
    if !method_ok(method) {
        entry.outcome = "method_not_allowed".into();
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"detail": "Method Not Allowed"}),
        );
    }
    if shared.faults().garbage_catalogue {
        return garbage(entry);
    }
    let raw_pairs: Vec<&str> = query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .collect();
    let mut filter_expr = None;
    let (mut top, mut skip, mut count, mut orderby) = (DEFAULT_TOP, 0usize, false, Vec::new());
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "$filter" => match filter::parse(&v) {
                Ok(e) => filter_expr = Some(e),
                Err(msg) => return bad_request(entry, &format!("Invalid filter: {msg}")),
            },
            "$top" => match v.parse::<usize>() {
                Ok(t) if t <= MAX_TOP => top = t,
                _ => return out_of_range(entry, "$top", &v, MAX_TOP),
            },
            "$skip" => match v.parse::<usize>() {
                Ok(s) if s <= MAX_SKIP => skip = s,
                _ => return out_of_range(entry, "$skip", &v, MAX_SKIP),
            },
            "$count" => count = v.eq_ignore_ascii_case("true"),
            "$orderby" => match parse_orderby(&v) {
                Ok(o) => orderby = o,
                Err(msg) => return bad_request(entry, &msg),
            },
            // $expand, $format, $select...: accepted and ignored.
            _ => {}
        }
    }
    let products = shared.store.products();
    let mut hits: Vec<&Map<String, Value>> = products
        .iter()
        .map(|p| &p.entity)
        .filter(|e| filter_expr.as_ref().is_none_or(|f| filter::matches(f, e)))
        .collect();
    if orderby.is_empty() {
        // No order asked, none given: each answer in another order.
        use rand::seq::SliceRandom as _;
        hits.shuffle(&mut *shared.rng.lock().unwrap());
    } else {
        hits.sort_by(|a, b| {
            for k in &orderby {
                let (va, vb) = (
                    order_value(filter::field(a, &k.field)),
                    order_value(filter::field(b, &k.field)),
                );
                let o = va.partial_cmp(&vb).unwrap_or(std::cmp::Ordering::Equal);
                let o = if k.desc { o.reverse() } else { o };
                if o.is_ne() {
                    return o;
                }
            }
            std::cmp::Ordering::Equal
        });
    }
    let total = hits.len();
    let page: Vec<Value> = hits
        .iter()
        .skip(skip)
        .take(top)
        .map(|e| Value::Object((*e).clone()))
        .collect();
    let mut body = Map::new();
    body.insert("@odata.context".into(), json!("$metadata#Products"));
    if count {
        body.insert("@odata.count".into(), json!(total));
    }
    let full = page.len() == top;
    body.insert("value".into(), Value::Array(page));
    if top > 0 && full && skip + top <= MAX_SKIP {
        let mut pairs: Vec<String> = raw_pairs
            .iter()
            .filter(|p| !p.starts_with("$skip=") && !p.starts_with("%24skip="))
            .map(|p| p.to_string())
            .collect();
        pairs.push(format!("$skip={}", skip + top));
        body.insert(
            "@odata.nextLink".into(),
            json!(format!(
                "{}/odata/v1/Products?{}",
                shared.base_url,
                pairs.join("&")
            )),
        );
    }
    entry.outcome = "ok".into();
    json_response(StatusCode::OK, &Value::Object(body))
}

pub(crate) fn entity(
    shared: &Arc<Shared>,
    method: &Method,
    id: &str,
    entry: &mut LogEntry,
) -> Response<Body> {
    entry.product = Some(id.to_string());
    if !method_ok(method) {
        entry.outcome = "method_not_allowed".into();
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"detail": "Method Not Allowed"}),
        );
    }
    if shared.faults().garbage_catalogue {
        return garbage(entry);
    }
    match shared.store.by_id(id) {
        Some(p) => {
            let mut body = Map::new();
            body.insert("@odata.context".into(), json!("$metadata#Products/$entity"));
            body.extend(p.entity.clone());
            entry.outcome = "ok".into();
            json_response(StatusCode::OK, &Value::Object(body))
        }
        None => {
            entry.outcome = "not_found".into();
            json_response(
                StatusCode::NOT_FOUND,
                &json!({"detail": {"message": format!("Product {id} not found")}}),
            )
        }
    }
}
