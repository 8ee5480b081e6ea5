//! Authentication against CREODIAS/CDSE Keycloak with two-factor TOTP.
//!
//! This crate owns everything that touches credentials:
//! - [`secret`]: the [`Secret`] wrapper and [`redact_url`], so nothing secret reaches a log;
//! - [`totp`]: reading the base32 TOTP secret ([`parse_totp_secret`]) and RFC 6238 codes for a
//!   given 30 s step;
//! - [`clock`]: the [`Clock`] seam (a `TestClock`, behind the `testing` feature, makes waits
//!   instant in tests) and the
//!   server clock's offset, learned from `Date` headers and applied to TOTP steps and expiries;
//! - [`token`]: the [`TokenManager`], which keeps one access token for every reader of the
//!   process and, through a locked cache file, for every process of the user.
//!
//! Readers see only the [`TokenSource`] trait: ask for a token, and report one the server refused.

pub mod clock;
pub mod secret;
pub mod token;
pub mod totp;

#[cfg(any(test, feature = "testing"))]
pub use clock::TestClock;
pub use clock::{Clock, ServerOffset, SystemClock};
/// One redaction for every crate: the HTTP room's (tokens, passwords, codes, signatures).
pub use eodata_http::redact_url;
pub use secret::Secret;
pub use token::{
    default_cache_dir, public_claims, renewal_margin, LoginConfig, LoginProbe, LoginSource,
    RefreshProbe, RetryPolicy, TokenManager, TokenStatus,
};
pub use totp::{parse_totp_secret, Totp, TotpSecretError, TotpSecretProblem};

use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

/// An access token and when it stops being usable.
#[derive(Clone, Debug)]
pub struct AccessToken {
    /// The bearer token itself; `Debug` prints `***`.
    pub value: Secret,
    /// When the server will stop accepting it, in *local* wall-clock time (compare it with
    /// `SystemTime::now()`): `expires_in` counted from when the request was sent, or the JWT's
    /// `exp` converted from the server's clock by its measured offset, whichever is earlier.
    pub expires_at: SystemTime,
}

impl PartialEq for AccessToken {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

/// Where readers get tokens. Implemented by the token manager; tests implement it with fixed
/// tokens.
pub trait TokenSource: Send + Sync + 'static {
    /// A token that is valid now and for a useful while yet. Concurrent callers share one renewal.
    fn token(&self) -> impl Future<Output = Result<AccessToken, AuthError>> + Send;

    /// The server refused `token` (401/403) although it had not expired: forget it, so that the
    /// next [`TokenSource::token`] renews. Callers that report the same token concurrently cause
    /// one renewal between them.
    fn rejected(&self, token: &AccessToken) -> impl Future<Output = ()> + Send;
}

impl<T: TokenSource> TokenSource for Arc<T> {
    fn token(&self) -> impl Future<Output = Result<AccessToken, AuthError>> + Send {
        (**self).token()
    }
    fn rejected(&self, token: &AccessToken) -> impl Future<Output = ()> + Send {
        (**self).rejected(token)
    }
}

/// Why no token could be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    /// The server refused the credentials definitively (wrong password, user or TOTP secret,
    /// disabled account, locked account). Not retried: Keycloak locks accounts after repeated
    /// failures.
    #[error("login refused by {server}: {reason}. Check user, password and totp_secret in your secrets.conf; no further attempts are made, to avoid locking the account")]
    Refused { server: String, reason: String },
    /// The token endpoint could not be reached or kept failing (network, 5xx) after retries.
    #[error("token endpoint {server} unavailable: {reason}")]
    Unavailable { server: String, reason: String },
    /// The server answered something this client cannot understand.
    #[error("unexpected answer from token endpoint {server}: {reason}")]
    Protocol { server: String, reason: String },
    /// The login settings cannot work (empty field, TOTP secret not base32, URL not a URL).
    /// Found before any request is sent.
    #[error("login settings: {reason}")]
    Config { reason: String },
    /// The shared token cache could not be used.
    #[error("token cache {path}: {reason}")]
    Cache { path: String, reason: String },
}
