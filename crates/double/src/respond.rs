//! Answers as the handlers build them: plain JSON and HTML responses, and what a download
//! handler hands back. A leaf: every service module (keycloak, zipper, catalogue, nodes,
//! control) uses it, and it uses none of them nor the server, so the server's routing depends
//! on the services and not the other way round.

use hyper::http::{header, HeaderValue, Response, StatusCode};

use crate::body::Body;
use crate::log::LogEntry;

/// What a download handler hands back: either a complete answer still to be logged, or a
/// streaming response whose body logs itself when it ends.
pub(crate) enum Answer {
    Done(Response<Body>, Box<LogEntry>),
    Streaming(Response<Body>),
}

impl Answer {
    pub(crate) fn done(resp: Response<Body>, entry: LogEntry) -> Answer {
        Answer::Done(resp, Box::new(entry))
    }
}

pub(crate) fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    bytes_response(status, "application/json", value.to_string().into_bytes())
}

pub(crate) fn html_response(status: StatusCode, html: &str) -> Response<Body> {
    bytes_response(status, "text/html; charset=utf-8", html.as_bytes().to_vec())
}

pub(crate) fn bytes_response(
    status: StatusCode,
    content_type: &'static str,
    body: Vec<u8>,
) -> Response<Body> {
    let len = body.len();
    let mut resp = Response::new(crate::body::full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    resp
}
