//! Getting product bytes from zipper, as few and as fast as possible.
//!
//! The layers, each knowing only the one below:
//! - `zipper`: the HTTP client: ranged GETs with the token from [`eodata_auth::TokenSource`],
//!   retries, resume of cut bodies, 401 -> renew once and retry, 429 -> back off; a shared
//!   connection budget. Implements [`RangeSource`].
//! - `spool`: for products whose server ignores Range, one stream from byte 0 shared by all
//!   readers, spooled to a file; reads are served as the bytes arrive. Passes Range through.
//! - `disk`: the persistent disk cache (`--cache-dir`): verified block files and product info
//!   across mounts; passes everything through without a directory.
//! - `cache`: fixed-size aligned blocks in an LRU bounded in bytes; concurrent readers of one
//!   block share one fetch.
//! - `prefetch`: one per open file; detects sequential reading and reads ahead in parallel.
//! - `nodes`: files inside a product (OData Nodes) addressed as objects of their own.
//! - `mock`: an in-memory [`RangeSource`] with fault injection, for tests of the layers above.

pub mod cache;
pub mod disk;
pub mod mock;
pub mod nodes;
pub mod prefetch;
pub mod spool;
pub mod zipper;

use std::future::Future;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

/// What the download service says about a product before its bytes are read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The download's true size (Content-Length / Content-Range), not the catalogue's hint.
    pub size: u64,
    /// `filename=` of Content-Disposition, when the server sends one.
    pub filename: Option<String>,
    /// Whether the server honours `Range` for this product.
    pub ranges: RangeSupport,
}

/// How a server answered a ranged request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeSupport {
    /// 206 with a matching Content-Range: any slice can be fetched on its own.
    Honoured,
    /// 200 with the whole body: only a stream from byte 0 can be had.
    Ignored,
}

/// A source of product bytes addressed by product id (the catalogue's UUID).
pub trait RangeSource: Send + Sync + 'static {
    /// Size and properties of the product's download.
    fn info(&self, id: &str) -> impl Future<Output = Result<ObjectInfo, FetchError>> + Send;

    /// Exactly the bytes `range` of the product; shorter only where the range passes the end.
    /// Never returns bytes from another offset.
    fn get_range(
        &self,
        id: &str,
        range: Range<u64>,
    ) -> impl Future<Output = Result<Bytes, FetchError>> + Send;
}

impl<T: RangeSource> RangeSource for Arc<T> {
    fn info(&self, id: &str) -> impl Future<Output = Result<ObjectInfo, FetchError>> + Send {
        (**self).info(id)
    }
    fn get_range(
        &self,
        id: &str,
        range: Range<u64>,
    ) -> impl Future<Output = Result<Bytes, FetchError>> + Send {
        (**self).get_range(id, range)
    }
}

/// Why bytes could not be had. Cloneable, because one failed fetch answers every reader that
/// waited on it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error("product {0} not found on the download service")]
    NotFound(String),
    #[error(transparent)]
    Auth(#[from] eodata_auth::AuthError),
    #[error("access denied by the download service ({0}); has the account accepted the terms of service?")]
    Forbidden(String),
    #[error("no answer from the download service within {0:?}")]
    Timeout(std::time::Duration),
    #[error("download service error: {0}")]
    Server(String),
    #[error("the download service ignores Range requests for product {0}")]
    RangeIgnored(String),
    #[error("range {start}..{end} is outside product {id} of {size} bytes")]
    OutOfRange {
        id: String,
        start: u64,
        end: u64,
        size: u64,
    },
    #[error("unexpected answer from the download service: {0}")]
    Protocol(String),
}
