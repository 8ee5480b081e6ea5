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
) -> Result<Answer, CatalogueError> {
    let mut attempt = 1;
    loop {
        let wait = match once(http, url, opts).await {
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

async fn once(http: &reqwest::Client, start: &url::Url, opts: &Options) -> Result<Answer, Failure> {
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
        let body = response.bytes().await.map_err(|e| Failure::Transient {
            reason: format!("body cut: {}", eodata_http::error_chain(&e)),
            retry_after: None,
        })?;
        if status.as_u16() == 404 {
            return Ok(Answer::NotFound);
        }
        if !status.is_success() {
            return Err(Failure::Final(CatalogueError::Rejected {
                url: url.to_string(),
                status: status.as_u16(),
                message: quote_body(&body),
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
