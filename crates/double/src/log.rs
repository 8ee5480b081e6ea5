//! The request log: one [`LogEntry`] per request, kept in memory for tests and optionally
//! appended as JSON lines to a file for scripts and benchmarks.
//!
//! Entries are written when the answer finishes (for streamed bodies: when the body ends, is cut
//! or is dropped), so `bytes_sent` is the number of body bytes really handed to the connection.
//! Secrets never reach it: paths have their `token=` values replaced by `***`, and no password,
//! code, secret or token value is recorded (tokens are named by their `jti`).

use std::fs::File;
use std::io::Write as _;
use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// What the double did with one request.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LogEntry {
    /// Milliseconds since the double started, when the answer finished.
    pub t_ms: u64,
    /// `"token"`, `"zipper"`, `"catalogue"`, `"files"` or `"other"`.
    pub service: String,
    pub method: String,
    /// Path and query, with query `token` values replaced by `***`.
    pub path: String,
    /// HTTP status sent; 0 when the request was dropped unanswered (outage).
    pub status: u16,
    pub grant_type: Option<String>,
    pub username: Option<String>,
    /// The TOTP step the submitted code matched, if any.
    pub totp_step: Option<u64>,
    /// What happened. Token endpoint: `"ok"`, `"bad_password"`, `"unknown_user"`, `"bad_code"`,
    /// `"missing_code"`, `"reused_code"`, `"locked"`, `"disabled"`, `"invalid_client"`,
    /// `"invalid_request"`, `"unsupported_grant_type"`, `"invalid_refresh"`,
    /// `"expired_refresh"`, `"refresh_refused"`, `"garbage"`. Zipper and files: `"ok"`,
    /// `"no_token"`, `"unknown_token"`, `"expired_token"`, `"revoked_token"`, `"not_found"`,
    /// `"fault_503"`, `"429"` (rate-limit burst), `"max_connections"`,
    /// `"range_not_satisfiable"`, `"tampered"`, `"cut"`, `"aborted"` (the client went away),
    /// `"io_error"`; Nodes downloads also `"malformed"` (a quoted key, 400). Catalogue: `"ok"`, `"not_found"`, `"bad_filter"`, `"garbage"`. Any
    /// service: `"outage"` (dropped unanswered, status 0), `"method_not_allowed"`, `"bad_body"`.
    pub outcome: String,
    pub product: Option<String>,
    /// Inclusive first and last byte actually served.
    pub range: Option<(u64, u64)>,
    /// Body bytes actually written.
    pub bytes_sent: u64,
    /// `jti` of the token used (zipper) or issued (token endpoint).
    pub token_id: Option<String>,
    /// How a zipper request carried its token: `"query"` (`?token=`) or `"bearer"`.
    #[serde(default)]
    pub token_via: Option<String>,
}

/// The in-memory log plus the optional JSON-lines file.
pub(crate) struct Log {
    entries: Mutex<Vec<LogEntry>>,
    file: Option<Mutex<File>>,
}

impl Log {
    pub(crate) fn new(path: Option<&Path>) -> anyhow::Result<Log> {
        let file = match path {
            Some(p) => Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| anyhow::anyhow!("opening log file {}: {e}", p.display()))?,
            )),
            None => None,
        };
        Ok(Log {
            entries: Mutex::new(Vec::new()),
            file,
        })
    }

    pub(crate) fn push(&self, entry: LogEntry) {
        tracing::debug!(
            service = %entry.service,
            path = %entry.path,
            status = entry.status,
            outcome = %entry.outcome,
            bytes = entry.bytes_sent,
            "request"
        );
        if let Some(f) = &self.file {
            if let Ok(mut line) = serde_json::to_vec(&entry) {
                line.push(b'\n');
                // One write per line so concurrent writers (and readers tailing it) see whole lines.
                let _ = f.lock().unwrap().write_all(&line);
            }
        }
        self.entries.lock().unwrap().push(entry);
    }

    pub(crate) fn entries(&self) -> Vec<LogEntry> {
        self.entries.lock().unwrap().clone()
    }
}

/// `path?query` with the values of `token` (and `access_token`) replaced by `***`.
pub(crate) fn redact_path(path: &str, query: Option<&str>) -> String {
    let Some(q) = query else {
        return path.to_string();
    };
    let redacted: Vec<String> = q
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if k == "token" || k == "access_token" => format!("{k}=***"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{path}?{}", redacted.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_values_are_redacted() {
        assert_eq!(
            redact_path("/download/x", Some("a=1&token=eyJ.abc.def&b=2")),
            "/download/x?a=1&token=***&b=2"
        );
        assert_eq!(redact_path("/download/x", None), "/download/x");
        assert_eq!(redact_path("/t", Some("")), "/t?");
    }
}
