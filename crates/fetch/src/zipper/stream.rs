//! One sequential stream of a product from an offset to its end: for servers that ignore Range
//! (the layer above spools it) and for the download command's single-stream mode.
//!
//! A cut connection is resumed with `Range: bytes=pos-`; if the server answers that with the
//! whole product (200), the bytes before `pos` are read and dropped, so the stream stays exact
//! either way.
//!
//! Splicing two answers is safe only if they carry the same bytes, and whether the zipper builds
//! a product's zip byte-identically for every request is not known (docs/protocol.md). So every
//! splice is checked: the new answer must report the same size and, where both answers carry
//! them, the same `ETag` and `Last-Modified`; and the [`SPLICE_CHECK`] bytes before the splice
//! point must come again identically (a 200 delivers them among the skipped bytes; a ranged
//! resume asks for them). A mismatch drops that answer and tries again (a server alternating
//! between builds may return the first one); after [`MAX_SPLICE_MISMATCHES`] the stream fails
//! with [`FetchError::Changed`], and nothing of the new answer is ever handed out.

use bytes::{Bytes, BytesMut};
use eodata_auth::TokenSource;
use eodata_http::answer::header_str;
use eodata_http::answer::{triage, Answer};
use reqwest::header::{HeaderMap, ETAG, LAST_MODIFIED};
use reqwest::{Method, Response};

use super::budget::Permit;
use super::request::{RangeSpec, RetryState};
use super::Zipper;
use crate::{FetchError, RangeSupport};

/// Bytes before a splice point that a new answer must repeat exactly: 64 KiB holds several
/// zip local headers of a product's small files and costs a ranged resume about nothing;
/// a reordered or rebuilt zip differs there with near certainty.
pub const SPLICE_CHECK: usize = 64 << 10;
/// Answers in a row that disagree with the bytes already delivered before the stream gives
/// up: a server alternating between two builds of a zip matches again on the next answer; one
/// that rebuilt the product for good never will.
pub const MAX_SPLICE_MISMATCHES: u32 = 4;

/// A product's bytes from an offset, in order. Holds one connection of the budget while a
/// connection is open.
pub struct ZipperStream<T: TokenSource> {
    zipper: Zipper<T>,
    id: String,
    /// Offset of the next byte handed out.
    pos: u64,
    /// The product's size, once a response said it.
    size: Option<u64>,
    conn: Option<Conn>,
    retry: RetryState,
    /// The last (up to [`SPLICE_CHECK`]) bytes before `pos`, as delivered (or as the caller
    /// had them, for a stream opened mid-product).
    tail: BytesMut,
    /// What the first answer said of the product's build, for comparing later answers.
    validators: Option<Validators>,
    /// Answers dropped in a row for disagreeing with what was delivered.
    mismatches: u32,
}

struct Conn {
    resp: Response,
    _permit: Permit,
    url: String,
    /// Product offset of this answer's next body byte (0 for a 200).
    at: u64,
    /// Bytes `check_at..pos` as delivered before: the answer must repeat them.
    check: Bytes,
    check_at: u64,
    /// Bytes this connection delivered: a cut after some is resumed at once.
    received: u64,
}

/// `ETag` and `Last-Modified` of an answer: equal values mean the same build of the product.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Validators {
    etag: Option<String>,
    last_modified: Option<String>,
}

impl Validators {
    fn of(h: &HeaderMap) -> Self {
        Validators {
            etag: header_str(h, ETAG).map(str::to_string),
            last_modified: header_str(h, LAST_MODIFIED).map(str::to_string),
        }
    }

    /// Whether two answers may be spliced: a validator both carry must agree.
    fn compatible(&self, other: &Validators) -> bool {
        let same = |a: &Option<String>, b: &Option<String>| match (a, b) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        same(&self.etag, &other.etag) && same(&self.last_modified, &other.last_modified)
    }
}

impl<T: TokenSource> ZipperStream<T> {
    /// `tail`: the bytes just before `offset` as the caller has them (up to [`SPLICE_CHECK`]
    /// are checked against the server's answer; empty to check nothing).
    pub(super) async fn open(
        zipper: Zipper<T>,
        id: &str,
        offset: u64,
        tail: Bytes,
    ) -> Result<Self, FetchError> {
        let size = zipper.inner.known(id).size;
        if let Some(size) = size {
            if offset > size {
                return Err(FetchError::OutOfRange {
                    id: id.to_string(),
                    start: offset,
                    end: offset,
                    size,
                });
            }
        }
        let mut s = ZipperStream {
            zipper,
            id: id.to_string(),
            pos: offset,
            size,
            conn: None,
            retry: RetryState::new(),
            tail: BytesMut::new(),
            validators: None,
            mismatches: 0,
        };
        let keep = tail.len().min(SPLICE_CHECK).min(offset as usize);
        s.tail.extend_from_slice(&tail[tail.len() - keep..]);
        if s.size != Some(offset) {
            s.connect().await?;
        }
        Ok(s)
    }

    /// Offset of the next byte [`ZipperStream::next_chunk`] returns.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The product's size, when the server said it.
    pub fn size(&self) -> Option<u64> {
        self.size
    }

    /// Opens a connection that delivers bytes from `pos`; sets `size` and what to skip.
    async fn connect(&mut self) -> Result<(), FetchError> {
        let zipper = self.zipper.clone();
        let z = &zipper.inner;
        let check_at = self.pos - self.tail.len() as u64;
        let range = (check_at > 0).then_some(RangeSpec {
            first: check_at,
            last: None,
        });
        let parked = if check_at == 0 {
            z.take_parked(&self.id)
        } else {
            None
        };
        let ex = match parked {
            Some(ex) => ex,
            None => {
                z.exchange(&self.id, Method::GET, range, &mut self.retry)
                    .await?
            }
        };
        let answer = triage(ex.resp.status(), ex.resp.headers(), range)
            .map_err(|why| FetchError::Protocol(format!("{why} (from {})", ex.url)))?;
        let skip = match answer {
            Answer::Partial { first, total, .. } => {
                if let Some(t) = total {
                    self.same_size(t)?;
                }
                z.learn_ranges(&self.id, RangeSupport::Honoured);
                first
            }
            Answer::Whole { len } => {
                if let Some(len) = len {
                    self.same_size(len)?;
                }
                if range.is_some() {
                    z.learn_ranges(&self.id, RangeSupport::Ignored);
                }
                0
            }
            Answer::Unsatisfiable { total } => {
                let size = total.or(self.size).unwrap_or(0);
                if self.pos >= size {
                    // At (or, by a changed product, past) the end: nothing more.
                    self.size = Some(self.pos);
                    return Ok(());
                }
                return Err(FetchError::Protocol(format!(
                    "416 from {} for bytes from {} of a product of {size} bytes",
                    ex.url, self.pos
                )));
            }
        };
        let validators = Validators::of(ex.resp.headers());
        match &self.validators {
            None => self.validators = Some(validators),
            Some(first) if !first.compatible(&validators) => {
                return self.mismatch(&ex.url, format!("{first:?} before, {validators:?} now"));
            }
            Some(_) => {}
        }
        self.conn = Some(Conn {
            resp: ex.resp,
            _permit: ex.permit,
            url: ex.url,
            at: skip,
            check: Bytes::copy_from_slice(&self.tail),
            check_at,
            received: 0,
        });
        Ok(())
    }

    /// A size said by an answer: the first one is learned; a later different one means another
    /// build of the product.
    fn same_size(&mut self, size: u64) -> Result<(), FetchError> {
        match self.size {
            Some(known) if known != size => Err(FetchError::Changed(format!(
                "product {} was {known} bytes and is now {size}",
                self.id
            ))),
            _ => {
                self.size = Some(size);
                self.zipper.inner.learn_size(&self.id, size);
                Ok(())
            }
        }
    }

    /// An answer that cannot be spliced onto what was delivered: dropped; the caller connects
    /// again, until [`MAX_SPLICE_MISMATCHES`] in a row.
    fn mismatch(&mut self, url: &str, why: String) -> Result<(), FetchError> {
        self.conn = None;
        self.mismatches += 1;
        tracing::warn!(
            id = %self.id,
            pos = self.pos,
            url,
            why,
            "an answer of the download service differs from the bytes already received; not splicing it"
        );
        if self.mismatches >= MAX_SPLICE_MISMATCHES {
            return Err(FetchError::Changed(format!(
                "product {} came with other bytes in {} answers in a row ({why})",
                self.id, self.mismatches
            )));
        }
        Ok(())
    }

    /// Remembers delivered bytes for checking the next splice.
    fn remember(&mut self, chunk: &[u8]) {
        if chunk.len() >= SPLICE_CHECK {
            self.tail.clear();
            self.tail
                .extend_from_slice(&chunk[chunk.len() - SPLICE_CHECK..]);
        } else {
            self.tail.extend_from_slice(chunk);
            if self.tail.len() > SPLICE_CHECK {
                let _ = self.tail.split_to(self.tail.len() - SPLICE_CHECK);
            }
        }
    }

    /// The next bytes, `None` at the end of the product.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, FetchError> {
        loop {
            if self.size.is_some_and(|s| self.pos >= s) {
                if self.conn.take().is_some() {
                    self.zipper.inner.budget.succeeded();
                }
                return Ok(None);
            }
            if self.conn.is_none() {
                self.connect().await?;
                if self.conn.is_none() && self.mismatches > 0 {
                    let z = &self.zipper.inner;
                    let why = FetchError::Changed(format!("answer for {} not spliceable", self.id));
                    self.retry.failed(z, why, None).await?;
                }
                continue;
            }
            let z = &self.zipper.inner;
            let conn = self.conn.as_mut().expect("connected above");
            let failure = match tokio::time::timeout(z.cfg.read_timeout, conn.resp.chunk()).await {
                Err(_) => FetchError::Timeout(z.cfg.read_timeout),
                Ok(Err(e)) => FetchError::Server(format!(
                    "connection to {} cut at byte {}: {}",
                    conn.url,
                    self.pos,
                    eodata_http::error_chain(&e)
                )),
                Ok(Ok(None)) => {
                    if self.size.is_none() {
                        // No length was announced: the end of the body is the end.
                        self.size = Some(self.pos);
                        continue;
                    }
                    FetchError::Server(format!("{} ended the body at byte {}", conn.url, self.pos))
                }
                Ok(Ok(Some(chunk))) => match self.splice(chunk)? {
                    Some(new) => return Ok(Some(new)),
                    None => continue,
                },
            };
            // Resume from `pos` on a new connection.
            let progressed_since_connect = conn.received > 0;
            self.conn = None;
            tracing::debug!(id = %self.id, pos = self.pos, error = %failure, "stream interrupted; resuming");
            let z = &self.zipper.inner;
            if progressed_since_connect {
                self.retry.resume(z, failure).await?;
            } else {
                self.retry.failed(z, failure, None).await?;
            }
        }
    }

    /// A chunk of the current connection's body, checked against the bytes already delivered
    /// where it repeats them (a resumed or restarted answer) and cut to what is new: `None`
    /// when nothing in it is new, or when it differs (the connection is then dropped).
    fn splice(&mut self, mut chunk: Bytes) -> Result<Option<Bytes>, FetchError> {
        let z = &self.zipper.inner;
        let conn = self.conn.as_mut().expect("a chunk comes from a connection");
        z.stats.bytes.add(chunk.len() as u64);
        conn.received += chunk.len() as u64;
        let at = conn.at;
        conn.at += chunk.len() as u64;
        // The part of the chunk that must repeat bytes already delivered.
        let (c0, c1) = (conn.check_at, conn.check_at + conn.check.len() as u64);
        let (o0, o1) = (at.max(c0), conn.at.min(c1));
        if o0 < o1 {
            let got = &chunk[(o0 - at) as usize..(o1 - at) as usize];
            let want = &conn.check[(o0 - c0) as usize..(o1 - c0) as usize];
            if got != want {
                let url = conn.url.clone();
                self.mismatch(&url, format!("bytes {o0}..{o1} differ"))?;
                return Ok(None);
            }
        }
        if conn.at <= self.pos {
            return Ok(None);
        }
        let _ = chunk.split_to(self.pos.saturating_sub(at) as usize);
        if let Some(size) = self.size {
            chunk.truncate(chunk.len().min((size - self.pos) as usize));
        }
        if chunk.is_empty() {
            return Ok(None);
        }
        self.mismatches = 0;
        self.pos += chunk.len() as u64;
        self.remember(&chunk);
        self.retry.progressed();
        Ok(Some(chunk))
    }

    /// The rest of the product as a [`futures::Stream`] (tests).
    #[cfg(test)]
    pub fn into_stream(self) -> impl futures::Stream<Item = Result<Bytes, FetchError>> + Send {
        futures::stream::unfold(Some(self), |state| async move {
            let mut s = state?;
            match s.next_chunk().await {
                Ok(Some(b)) => Some((Ok(b), Some(s))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        })
    }
}
