//! One GET of catalogue JSON, with what it takes to make it dependable: a timeout, retries with
//! backoff for the failures that pass (network, 5xx, 429), redirects followed by hand (the
//! shared HTTP client follows none, so that the download client decides where tokens go; the
//! catalogue needs no token, so any redirect but a downgrade to plain http is followed), and an
//! error that names the URL. HTTP policy itself (backoff, `Retry-After`, redirects, error text)
//! is `eodata_http`'s.

use std::time::Duration;

use eodata_http::redirect::Hop;

use crate::{CatalogueError, Options};

/// Redirects followed per request before giving up; real services use one or two.
const MAX_REDIRECTS: usize = 5;

/// Longest `Retry-After` honoured; a longer one is treated as this, so that a lookup from a
/// shell fails in bounded time rather than hanging.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

/// Longest wait between two tries of one request: a lookup from a shell should fail in
/// seconds, not minutes.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Bytes of an error body quoted in a message: enough for an OData error's text.
const ERROR_BODY_QUOTE: usize = 300;

/// Most bytes of a catalogue answer read: a page of 1000 products with their attributes is
/// a few MB; past this the answer is not a catalogue's, and memory is not spent on it.
const MAX_BODY: usize = 64 << 20;

/// What is asked: an entity (`Products(<uuid>)`), whose 404 means "no such product", or a
/// collection (`Products?$filter=`), whose 404 the real catalogue answers now and then for
/// queries that do match (docs/protocol.md): retried like a 5xx.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Entity,
    Collection,
}

/// What a successful exchange gave.
pub(crate) enum Answer {
    Json(serde_json::Value),
    /// 404: the entity does not exist (or the service has no such route).
    NotFound,
}

/// GETs `url` and parses the body as JSON, retrying transient failures per `opts`.
pub(crate) async fn get_json(
    http: &reqwest::Client,
    url: &url::Url,
    opts: &Options,
    kind: Kind,
) -> Result<Answer, CatalogueError> {
    let mut attempt = 1;
    loop {
        let wait = match once(http, url, opts, kind).await {
            Ok(answer) => return Ok(answer),
            Err(Failure::Final(e)) => return Err(e),
            Err(Failure::Transient {
                reason,
                retry_after,
            }) => {
                if attempt >= opts.max_attempts {
                    return Err(CatalogueError::Unavailable {
                        url: url.to_string(),
                        reason: format!("{reason} (after {attempt} attempts)"),
                    });
                }
                tracing::debug!(%url, attempt, "catalogue request failed, retrying: {reason}");
                retry_after
                    .map(|d| d.min(MAX_RETRY_AFTER))
                    .unwrap_or_else(|| eodata_http::backoff(attempt, opts.backoff, MAX_BACKOFF))
            }
        };
        tokio::time::sleep(wait).await;
        attempt += 1;
    }
}

enum Failure {
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    Final(CatalogueError),
}

async fn once(
    http: &reqwest::Client,
    start: &url::Url,
    opts: &Options,
    kind: Kind,
) -> Result<Answer, Failure> {
    let mut url = start.clone();
    for _ in 0..=MAX_REDIRECTS {
        tracing::trace!(%url, "catalogue GET");
        let response = http
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(opts.request_timeout)
            .send()
            .await
            .map_err(|e| Failure::Transient {
                reason: eodata_http::error_chain(&e),
                retry_after: None,
            })?;
        let status = response.status();
        match eodata_http::redirect::hop(&url, status, response.headers()) {
            Ok(Hop::Stay) => {}
            Ok(Hop::Follow { to, .. }) => {
                url = to;
                continue;
            }
            Err(reason) => {
                return Err(Failure::Final(CatalogueError::Protocol {
                    url: url.to_string(),
                    reason,
                }))
            }
        }
        if status.as_u16() == 429 || status.is_server_error() {
            let retry_after = eodata_http::retry_after_header(response.headers());
            return Err(Failure::Transient {
                reason: format!("HTTP {}", status.as_u16()),
                retry_after,
            });
        }
        let body = read_body(response, &url).await?;
        if status.as_u16() == 404 && kind == Kind::Collection {
            return Err(Failure::Transient {
                reason: "HTTP 404 to a search".into(),
                retry_after: None,
            });
        }
        if status.as_u16() == 404 {
            return Ok(Answer::NotFound);
        }
        if !status.is_success() {
            return Err(Failure::Final(CatalogueError::Rejected {
                url: url.to_string(),
                status: status.as_u16(),
                message: detail(&body).unwrap_or_else(|| quote_body(&body)),
            }));
        }
        return serde_json::from_slice(&body)
            .map(Answer::Json)
            .map_err(|e| {
                Failure::Final(CatalogueError::Protocol {
                    url: url.to_string(),
                    reason: format!("not JSON ({e}): {}", quote_body(&body)),
                })
            });
    }
    Err(Failure::Final(CatalogueError::Protocol {
        url: start.to_string(),
        reason: format!("more than {MAX_REDIRECTS} redirects"),
    }))
}

/// A body, at most [`MAX_BODY`] bytes of it.
async fn read_body(mut response: reqwest::Response, url: &url::Url) -> Result<Vec<u8>, Failure> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(c)) => {
                if body.len() + c.len() > MAX_BODY {
                    return Err(Failure::Final(CatalogueError::Protocol {
                        url: url.to_string(),
                        reason: format!("an answer larger than {} MiB", MAX_BODY >> 20),
                    }));
                }
                body.extend_from_slice(&c);
            }
            Ok(None) => return Ok(body),
            Err(e) => {
                return Err(Failure::Transient {
                    reason: format!("body cut: {}", eodata_http::error_chain(&e)),
                    retry_after: None,
                })
            }
        }
    }
}

/// The message of an OData error body: `{"detail": {"message": ...}}`, or the list FastAPI
/// answers a limit with (422: `{"detail": [{"loc": ["query", "$skip"], "msg": ...}]}`), as
/// "$skip: Input should be less than or equal to 10000".
fn detail(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let d = v.get("detail")?;
    if let Some(list) = d.as_array() {
        let parts: Vec<String> = list
            .iter()
            .filter_map(|e| {
                let msg = e.get("msg")?.as_str()?;
                let at = e
                    .get("loc")
                    .and_then(|l| l.as_array())
                    .and_then(|l| l.last())
                    .and_then(|l| l.as_str());
                Some(match at {
                    Some(at) => format!("{at}: {msg}"),
                    None => msg.to_string(),
                })
            })
            .collect();
        return (!parts.is_empty()).then(|| parts.join("; "));
    }
    d.get("message")
        .and_then(|m| m.as_str())
        .or_else(|| d.as_str())
        .map(str::to_string)
}

/// The start of a body, on one line, for an error message.
fn quote_body(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(ERROR_BODY_QUOTE)]);
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.is_empty() {
        "(empty body)".to_string()
    } else if body.len() > ERROR_BODY_QUOTE {
        format!("{one_line:?}...")
    } else {
        format!("{one_line:?}")
    }
}
