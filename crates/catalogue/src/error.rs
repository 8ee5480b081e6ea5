//! Why a catalogue lookup failed. `Clone`, because one failed lookup is handed to every caller
//! that waited on it (single flight) and kept briefly in the negative cache.

/// A failed lookup or query. `Display` is one line saying what went wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogueError {
    /// No product has this name or id.
    #[error("no product {0:?} in the catalogue; check the name (e.g. ending in .SAFE or .SEN3) or use the product's UUID")]
    NotFound(String),
    /// The catalogue could not be reached or kept failing (network, timeout, 5xx, 429) after
    /// retries.
    #[error("catalogue unavailable at {url}: {reason}; check the network or try again later")]
    Unavailable { url: String, reason: String },
    /// The catalogue answered something that is not the OData this client reads.
    #[error("unexpected answer from the catalogue at {url}: {reason}; is the catalogue URL an OData endpoint such as https://datahub.creodias.eu/odata/v1?")]
    Protocol { url: String, reason: String },
    /// The catalogue refused the request (a 4xx other than 404), typically a filter it cannot
    /// read. Not retried.
    #[error("the catalogue at {url} refused the request (HTTP {status}): {message}")]
    Rejected {
        url: String,
        status: u16,
        message: String,
    },
}
