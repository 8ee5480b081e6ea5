//! That the token never reaches a log line or an error message, on every path that logs or
//! reports a URL (redirects, echoed error bodies, renewals, unreachable hosts), at TRACE.

use std::sync::Mutex;

use fake_creodias::scripted::{Reply, Request, Scripted};

use super::scripted::scripted;
use super::*;

/// Log lines, as the fmt subscriber writes them.
#[derive(Clone, Default)]
pub(super) struct Captured(pub(super) Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// A subscriber at `level` writing here, without colour codes.
    pub(super) fn subscriber(&self, level: tracing::Level) -> impl tracing::Subscriber {
        tracing_subscriber::fmt()
            .with_max_level(level)
            .with_ansi(false)
            .with_writer(self.clone())
            .finish()
    }

    pub(super) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// Every path that logs or reports a URL, at TRACE, with the token in the query: redirects
/// that forward it, error bodies that echo it, renewals, unreachable hosts. It appears nowhere.
#[tokio::test]
async fn zipper_never_logs_or_reports_the_token() {
    let cap = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(cap.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let script = Scripted::start(|req: &Request| match req.path() {
        "/dl/hop" => Reply::new(
            302,
            &[("Location", &format!("/dl/echo?token={FIXED_TOKEN}"))],
            b"",
        ),
        "/dl/echo" => Reply::new(
            401,
            &[],
            format!("no such token: {}", req.target).as_bytes(),
        ),
        _ => Reply::new(503, &[], req.target.as_bytes()),
    })
    .await;
    let z = scripted(&script, TokenPassing::Query, |c| c.max_retries = 1);
    let mut messages = Vec::new();
    for id in ["hop", "fail"] {
        messages.push(z.get_range(id, 0..1).await.unwrap_err().to_string());
        messages.push(z.info(id).await.unwrap_err().to_string());
    }
    // Nothing listens on port 9 (discard): a connect error, whose reqwest text names the URL.
    let dead = Zipper::new(
        ZipperConfig {
            max_retries: 0,
            ..ZipperConfig::new("http://127.0.0.1:9/dl/{id}", TokenPassing::Query)
        },
        Fixed(AtomicU32::new(0)),
        eodata_http::client(None).unwrap(),
    );
    messages.push(dead.get_range("x", 0..1).await.unwrap_err().to_string());

    let logs = String::from_utf8(cap.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("token=***"),
        "the test logged no URL:\n{logs}"
    );
    assert!(!logs.contains(FIXED_TOKEN), "{logs}");
    for m in &messages {
        assert!(!m.contains(FIXED_TOKEN), "{m}");
    }
    assert!(
        messages.last().unwrap().contains("cannot reach 127.0.0.1"),
        "{messages:?}"
    );
}
