//! Streamed response bodies for the zipper and `/files/`: read by range from the product file in
//! 64 KiB chunks, throttled to a bandwidth, cut mid-way or tampered with on demand, aborted by an
//! outage, and logged with the number of bytes really sent.
//!
//! A cut or an outage makes the stream yield an error: hyper then aborts the connection, and
//! the client sees a body shorter than its Content-Length, as with a real network failure.
//!
//! The log entry is written (and the user's connection slot released) as the last chunk is
//! handed over, before the client can have the whole body: a test that has read a body to its
//! end finds its entry in the log. Bodies that stop early are logged when dropped.

use std::io::SeekFrom;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::TryStreamExt as _;
use http_body_util::BodyExt as _;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};

use crate::log::LogEntry;
use crate::state::{Shared, Slot};

/// Chunk size read from disk and written to the connection: large enough for throughput,
/// small enough that a cut, an outage or a bandwidth cap acts promptly.
const CHUNK: u64 = 64 * 1024;
/// With a bandwidth cap, chunks shrink to this many per second so the throttled rate is smooth
/// (a 10 KB/s cap would otherwise send 64 KiB bursts every 6 s).
const THROTTLED_CHUNKS_PER_SEC: u64 = 10;
/// A body whose reader paused (its TCP window full) resumes at the cap, with at most this much
/// ahead of the schedule: a link does not bank the bandwidth of a pause. Without the bound a
/// body parked for seconds then read arrived at loopback speed (scripts/bench CL: a product
/// whose answer the mount kept for 7 s came at ~74 MB/s through a 20 MB/s cap).
const MAX_BURST: Duration = Duration::from_millis(100);

/// Pause before aborting a cut body: hyper writes buffered chunks while the body is pending,
/// so the client really receives the first half before the connection drops.
const CUT_FLUSH_PAUSE: Duration = Duration::from_millis(30);

/// What to send.
pub(crate) struct Plan {
    pub file: PathBuf,
    /// First byte of the file to send.
    pub start: u64,
    /// Bytes to send if nothing goes wrong.
    pub len: u64,
    /// Abort the connection after this many bytes.
    pub cut_after: Option<u64>,
    /// Flip this byte (offset within the body).
    pub tamper_at: Option<u64>,
    pub bandwidth: Option<u64>,
}

struct Streamer {
    shared: Arc<Shared>,
    plan: Plan,
    file: Option<tokio::fs::File>,
    sent: u64,
    /// When the bytes sent so far were due at the cap (see [`MAX_BURST`]).
    due: Instant,
    /// None once logged.
    entry: Option<LogEntry>,
    slot: Option<Slot>,
}

impl Streamer {
    fn finish(&mut self, outcome: Option<&str>) {
        self.slot.take();
        let Some(mut entry) = self.entry.take() else {
            return;
        };
        entry.bytes_sent = self.sent;
        if self.sent > 0 {
            entry.range = Some((self.plan.start, self.plan.start + self.sent - 1));
        }
        match outcome {
            Some(o) => entry.outcome = o.to_string(),
            None if entry.outcome.is_empty() => entry.outcome = "ok".into(),
            None => {}
        }
        entry.t_ms = self.shared.t_ms();
        self.shared.log.push(entry);
    }

    fn fail(&mut self, outcome: &str) -> std::io::Error {
        self.finish(Some(outcome));
        std::io::Error::new(std::io::ErrorKind::ConnectionAborted, outcome.to_string())
    }

    async fn next_chunk(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        if self.sent >= self.plan.len || self.entry.is_none() {
            self.finish(None);
            return None;
        }
        if self.shared.in_outage() {
            return Some(Err(self.fail("outage")));
        }
        let mut n = (self.plan.len - self.sent).min(CHUNK);
        if let Some(cut) = self.plan.cut_after {
            if self.sent >= cut {
                // Let hyper flush what was sent, or the client might see nothing at all.
                tokio::time::sleep(CUT_FLUSH_PAUSE).await;
                return Some(Err(self.fail("cut")));
            }
            n = n.min(cut - self.sent);
        }
        if let Some(bw) = self.plan.bandwidth {
            n = n.min((bw / THROTTLED_CHUNKS_PER_SEC).max(1));
        }
        if self.file.is_none() {
            let opened = async {
                let mut f = tokio::fs::File::open(&self.plan.file).await?;
                f.seek(SeekFrom::Start(self.plan.start)).await?;
                Ok::<_, std::io::Error>(f)
            }
            .await;
            match opened {
                Ok(f) => self.file = Some(f),
                Err(e) => {
                    self.finish(Some("io_error"));
                    return Some(Err(e));
                }
            }
        }
        let mut buf = vec![0u8; n as usize];
        if let Err(e) = self.file.as_mut().unwrap().read_exact(&mut buf).await {
            // The file shrank under us (a generator rewrote it): end like a broken connection.
            self.finish(Some("io_error"));
            return Some(Err(e));
        }
        if let Some(t) = self.plan.tamper_at {
            if (self.sent..self.sent + n).contains(&t) {
                buf[(t - self.sent) as usize] ^= 0xff;
            }
        }
        if let Some(bw) = self.plan.bandwidth.filter(|b| *b > 0) {
            let now = Instant::now();
            let due = self.due.max(now.checked_sub(MAX_BURST).unwrap_or(now))
                + Duration::from_secs_f64(n as f64 / bw as f64);
            self.due = due;
            tokio::time::sleep_until(due.into()).await;
            if self.shared.in_outage() {
                return Some(Err(self.fail("outage")));
            }
        }
        self.sent += n;
        if self.sent >= self.plan.len {
            self.finish(None);
        }
        Some(Ok(Bytes::from(buf)))
    }
}

impl Drop for Streamer {
    fn drop(&mut self) {
        if self.entry.is_some() {
            let outcome = if self.sent >= self.plan.len {
                None
            } else {
                Some("aborted")
            };
            self.finish(outcome);
        }
    }
}

/// A body that streams `plan` and logs `entry` (status already set) when it ends.
pub(crate) fn stream(shared: Arc<Shared>, plan: Plan, entry: LogEntry, slot: Option<Slot>) -> Body {
    let streamer = Streamer {
        shared,
        plan,
        file: None,
        sent: 0,
        due: Instant::now(),
        entry: Some(entry),
        slot,
    };
    let s = futures::stream::unfold(Some(streamer), |state| async move {
        let mut s = state?;
        match s.next_chunk().await {
            Some(Ok(b)) => Some((Ok(b), Some(s))),
            // After an error the stream ends; dropping the streamer here is harmless (logged).
            Some(Err(e)) => Some((Err(e), None)),
            None => None,
        }
    });
    http_body_util::StreamBody::new(s.map_ok(hyper::body::Frame::data)).boxed_unsync()
}

/// Every answer's body: whole, empty, or streamed (a product), boxed so that one type serves
/// all (hyper's own body types, no web framework: only the body type of one was used).
pub(crate) type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

/// An empty body.
pub(crate) fn empty() -> Body {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body of these bytes.
pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}
