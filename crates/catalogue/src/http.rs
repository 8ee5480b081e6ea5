//! One GET of catalogue JSON, with what it takes to make it dependable: a timeout, retries with
//! backoff for the failures that pass (network, 5xx, 429), redirects followed by hand (the
//! shared HTTP client follows none, so that the download client decides where tokens go; the
//! catalogue needs no token, so any redirect is safe to follow), and an error that names the URL.

use std::time::Duration;

use crate::{CatalogueError, Options};

/// Redirects followed per request before giving up; real services use one or two.
const MAX_REDIRECTS: usize = 5;

/// Longest `Retry-After` honoured; a longer one is treated as this, so that a lookup from a
/// shell fails in bounded time rather than hanging.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

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
                    .unwrap_or(opts.backoff * 2u32.pow(attempt - 1))
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
                reason: error_chain(&e),
                retry_after: None,
            })?;
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| url.join(l).ok());
            match location {
                Some(next) => {
                    url = next;
                    continue;
                }
                None => {
                    return Err(Failure::Final(CatalogueError::Protocol {
                        url: url.to_string(),
                        reason: format!("HTTP {} without a usable Location", status.as_u16()),
                    }))
                }
            }
        }
        if status.as_u16() == 429 || status.is_server_error() {
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            return Err(Failure::Transient {
                reason: format!("HTTP {}", status.as_u16()),
                retry_after,
            });
        }
        let body = response.bytes().await.map_err(|e| Failure::Transient {
            reason: format!("body cut: {}", error_chain(&e)),
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

/// A reqwest error with its causes ("error sending request: connection refused").
fn error_chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
