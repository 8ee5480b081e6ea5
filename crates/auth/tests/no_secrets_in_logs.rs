//! No secret in any log line at any level: runs logins, refreshes, refusals and failures with
//! every tracing event captured (this crate's and its dependencies', down to TRACE), then looks
//! for the password, the TOTP secret, every code sent and every token issued in the text.

mod support;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eodata_auth::{Secret, TokenSource};
use support::{cache_dir, Canned, Mini};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// A subscriber that keeps every field of every event and span as text.
struct Capture {
    text: Arc<Mutex<String>>,
    next_id: AtomicU64,
}

struct Fields<'a>(&'a mut String);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        let _ = write!(self.0, "{}={} ", field.name(), value);
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut text = self.text.lock().unwrap();
        span.record(&mut Fields(&mut text));
        text.push('\n');
        Id::from_u64(self.next_id.fetch_add(1, Ordering::Relaxed) + 1)
    }
    fn record(&self, _: &Id, values: &Record<'_>) {
        let mut text = self.text.lock().unwrap();
        values.record(&mut Fields(&mut text));
        text.push('\n');
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut text = self.text.lock().unwrap();
        let _ = write!(
            text,
            "{} {}: ",
            event.metadata().level(),
            event.metadata().target()
        );
        event.record(&mut Fields(&mut text));
        text.push('\n');
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[test]
fn no_secret_reaches_a_log_line() {
    let text = Arc::new(Mutex::new(String::new()));
    let subscriber = Capture {
        text: text.clone(),
        next_id: AtomicU64::new(0),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mini = tracing::subscriber::with_default(subscriber, || {
        rt.block_on(async {
            let mini = Mini::start().await;
            let tmp = tempfile::tempdir().unwrap();
            let m = mini.manager(Some(cache_dir(&tmp)));
            // Login, refresh, rejection, refused refresh then login, garbage, outage.
            let t = m.token().await.unwrap();
            mini.clock.advance(Duration::from_secs(240));
            m.token().await.unwrap();
            m.rejected(&t).await;
            let t2 = m.token().await.unwrap();
            m.rejected(&t2).await;
            mini.with(|s| s.refuse_refresh = true);
            m.token().await.unwrap();
            mini.with(|s| {
                s.canned.push_back(Canned::new(503, ""));
                s.canned
                    .push_back(Canned::new(200, "{\"access_token\": 5}"));
            });
            m.invalidate_all();
            let _ = m.token().await;
            // A wrong password, refused twice.
            let mut cfg = mini.config(None);
            cfg.password = Secret::new("Wrong-Passw0rd!");
            let _ = mini.manager_for(cfg).token().await;
            mini
        })
    });
    let text = text.lock().unwrap().clone();
    assert!(
        text.contains("password login at TOTP step"),
        "nothing captured:\n{text}"
    );
    let mut secrets: Vec<String> = vec![
        support::PASSWORD.into(),
        "Wrong-Passw0rd!".into(),
        "GEZDGNBVGY3TQOJQ".into(),
        "gezd gnbv".into(),
        "12345678901234567890".into(),
    ];
    for seen in mini.seen() {
        for (k, v) in url::form_urlencoded::parse(seen.body.as_bytes()) {
            if matches!(&*k, "totp" | "refresh_token" | "password") {
                secrets.push(v.into_owned());
            }
        }
    }
    // Every issued token: access-N / refresh-N.
    for n in 1..=20 {
        secrets.push(format!("access-{n}\""));
        secrets.push(format!("refresh-{n}\""));
        secrets.push(format!("access-{n} "));
        secrets.push(format!("refresh-{n} "));
    }
    assert!(secrets.iter().any(|s| s.len() == 6), "no code collected");
    for secret in &secrets {
        assert!(
            !contains_word(&text, secret),
            "{secret:?} in the logs:\n{text}"
        );
    }
}

/// `needle` in `text` not as part of a longer run of digits (a 6-digit code may occur by
/// chance inside a timestamp or a port number; that is not a leak).
fn contains_word(text: &str, needle: &str) -> bool {
    text.match_indices(needle).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + needle.len()..].chars().next();
        let digit = |c: Option<char>| c.is_some_and(|c| c.is_ascii_digit());
        !(needle.bytes().all(|b| b.is_ascii_digit()) && (digit(before) || digit(after)))
    })
}
