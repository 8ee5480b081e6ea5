//! Getting product bytes from zipper, as few and as fast as possible.
//!
//! The layers, each knowing only the one below:
//! - `zipper`: the HTTP client: ranged GETs with the token from [`eodata_auth::TokenSource`],
//!   retries, resume of cut bodies, 401 -> renew once and retry, 429 -> back off; a shared
//!   connection budget. Implements [`RangeSource`].
//! - `spool`: for products whose server ignores Range, one stream from byte 0 shared by all
//!   readers, spooled to a file; reads are served as the bytes arrive. Passes Range through.
//! - `disk`: the persistent disk cache (`--cache-dir`): verified blocks (one sparse file per
//!   product, made whole in place) and product info across mounts; serves a product's files (node ids) from its zip's blocks when it holds
//!   them; passes everything through without a directory.
//! - `buffers`: big buffers reused instead of freed (fresh ones cost page faults and zeroing).
//! - `cache`: fixed-size aligned blocks in an LRU bounded in bytes; concurrent readers of one
//!   block share one fetch.
//! - `prefetch`: one per open file; detects sequential reading and reads ahead in parallel.
//! - `nodes`: files inside a product (OData Nodes) addressed as objects of their own.
//! - `mock`: an in-memory [`RangeSource`] with fault injection, for tests of the layers above;
//!   built for this crate's tests and behind the `mock` feature for other crates' tests.

pub mod buffers;
pub mod cache;
pub mod disk;
#[cfg(any(test, feature = "mock"))]
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

/// `range` of product `id` cut to its `size` where that is known: `None` for an empty range
/// (nothing to fetch), [`FetchError::OutOfRange`] for one that starts at or past the end.
pub(crate) fn clamp_range(
    id: &str,
    range: Range<u64>,
    size: Option<u64>,
) -> Result<Option<Range<u64>>, FetchError> {
    if range.start >= range.end {
        return Ok(None);
    }
    let Some(size) = size else {
        return Ok(Some(range));
    };
    if range.start >= size {
        return Err(FetchError::OutOfRange {
            id: id.to_string(),
            start: range.start,
            end: range.end,
            size,
        });
    }
    Ok(Some(range.start..range.end.min(size)))
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

    /// A local file holding exactly the product's bytes, when this layer keeps one (the disk
    /// cache, for a product it holds whole), for the kernel to read directly (FUSE
    /// passthrough). `None` unless a layer has one.
    fn backing_file(&self, _id: &str) -> impl Future<Output = Option<std::fs::File>> + Send {
        std::future::ready(None)
    }

    /// Whether this layer keeps bytes `range` of the product locally (the disk cache), so a
    /// layer above may let them go from memory. Cheap and blocking (a few syscalls).
    fn holds_locally(&self, _id: &str, _range: Range<u64>) -> bool {
        false
    }
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
    fn backing_file(&self, id: &str) -> impl Future<Output = Option<std::fs::File>> + Send {
        (**self).backing_file(id)
    }
    fn holds_locally(&self, id: &str, range: Range<u64>) -> bool {
        (**self).holds_locally(id, range)
    }
}

/// Why bytes could not be had. Cloneable, because one failed fetch answers every reader that
/// waited on it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error("product {0} not found on the download service")]
    NotFound(String),
    /// The product exists but the service has nothing to send (zipper DAT-ZIP-915 "No objects
    /// to stream").
    #[error("product {0} has no data online ({1}); it cannot be downloaded now")]
    NoData(String, String),
    #[error(transparent)]
    Auth(#[from] eodata_auth::AuthError),
    /// The service takes no token of this client (zipper DAT-ZIP-609): a configuration error,
    /// final, no renewal helps.
    #[error("the download service refuses this login's tokens ({0}): they were issued to a client it does not accept; log in with the provider's public client (CLOUDFERRO_PUBLIC on CREODIAS, cdse-public on CDSE) and your password + TOTP, not a Sentinel Hub or other OAuth client")]
    Audience(String),
    #[error("access denied by the download service ({0}); accept the terms in your account (log in once on the provider's web site), or send the trace-id to the provider's support")]
    Forbidden(String),
    #[error("no answer from the download service within {0:?}")]
    Timeout(std::time::Duration),
    /// Nothing answers at the service's address (connection refused, no route, DNS failure),
    /// after a few quick retries.
    #[error("the download service is unreachable ({0}); check the network, or whether the service is down")]
    Unreachable(String),
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
    /// The service says our request is malformed (zipper 422 DAT-ZIP-111): a bug of ours.
    #[error("the download service cannot read our request ({0}); our UUID encoding is wrong: this is a bug in eodata-mount, please report it")]
    Bug(String),
    /// A plain-http download URL to another machine: the token would travel in clear.
    #[error("refusing plain http to {0}: the token would travel in clear; use https, or pass --insecure-http if this is really wanted")]
    Insecure(String),
    /// This machine failed: the spool or the disk cache could not be written or read (a full
    /// or read-only `$TMPDIR` or cache directory), not the service.
    #[error("local storage error: {0}")]
    Local(String),
    /// Two answers for one product carried different bytes (another build of its zip): what
    /// was received cannot be continued with the new answer.
    #[error("the download service sent other bytes for the same product: {0}")]
    Changed(String),
}

impl FetchError {
    /// The login itself was refused (wrong password, user or TOTP secret): every read fails
    /// alike until the configuration changes.
    pub fn is_login_refused(&self) -> bool {
        matches!(
            self,
            FetchError::Auth(eodata_auth::AuthError::Refused { .. })
        )
    }

    /// The download layer has already said this in the log, once for every read it fails
    /// (a refused login, a refused audience, an outage): the layers above log each read's
    /// failure at debug only, so one cause is not buried under a line per read.
    pub fn is_logged_once(&self) -> bool {
        self.is_login_refused()
            || matches!(self, FetchError::Audience(_) | FetchError::Unreachable(_))
    }
}
