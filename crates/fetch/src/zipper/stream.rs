//! One sequential stream of a product from an offset to its end: for servers that ignore Range
//! (the layer above spools it) and for the download command's single-stream mode.
//!
//! A cut connection is resumed with `Range: bytes=pos-`; if the server answers that with the
//! whole product (200), the bytes before `pos` are read and dropped, so the stream stays exact
//! either way.

use bytes::Bytes;
use eodata_auth::TokenSource;
use eodata_http::answer::{triage, Answer};
use futures::Stream;
use reqwest::{Method, Response};

use super::budget::Permit;
use super::request::{RangeSpec, RetryState};
use super::Zipper;
use crate::{FetchError, RangeSupport};

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
}

struct Conn {
    resp: Response,
    _permit: Permit,
    url: String,
    /// Bytes still to drop before `pos` (a 200 answer starts at 0).
    skip: u64,
    /// Bytes this connection delivered: a cut after some is resumed at once.
    received: u64,
}

impl<T: TokenSource> ZipperStream<T> {
    pub(super) async fn open(zipper: Zipper<T>, id: &str, offset: u64) -> Result<Self, FetchError> {
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
        };
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
        let z = &self.zipper.inner;
        let range = (self.pos > 0).then_some(RangeSpec {
            first: self.pos,
            last: None,
        });
        let ex = z
            .exchange(&self.id, Method::GET, range, &mut self.retry)
            .await?;
        let answer = triage(ex.resp.status(), ex.resp.headers(), range)
            .map_err(|why| FetchError::Protocol(format!("{why} (from {})", ex.url)))?;
        let skip = match answer {
            Answer::Partial { total, .. } => {
                if let Some(t) = total {
                    self.size = Some(t);
                    z.learn_size(&self.id, t);
                }
                z.learn_ranges(&self.id, RangeSupport::Honoured);
                0
            }
            Answer::Whole { len } => {
                if let Some(len) = len {
                    self.size = Some(len);
                    z.learn_size(&self.id, len);
                }
                if range.is_some() {
                    z.learn_ranges(&self.id, RangeSupport::Ignored);
                }
                self.pos
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
        self.conn = Some(Conn {
            resp: ex.resp,
            _permit: ex.permit,
            url: ex.url,
            skip,
            received: 0,
        });
        Ok(())
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
                Ok(Ok(Some(mut chunk))) => {
                    z.stats.bytes.add(chunk.len() as u64);
                    conn.received += chunk.len() as u64;
                    let skip = conn.skip.min(chunk.len() as u64) as usize;
                    conn.skip -= skip as u64;
                    let _ = chunk.split_to(skip);
                    if let Some(size) = self.size {
                        chunk.truncate(chunk.len().min((size - self.pos) as usize));
                    }
                    if chunk.is_empty() {
                        continue;
                    }
                    self.pos += chunk.len() as u64;
                    self.retry.progressed();
                    return Ok(Some(chunk));
                }
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

    /// The rest of the product as a [`Stream`].
    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, FetchError>> + Send {
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
