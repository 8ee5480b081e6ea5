//! The token manager: one access token for every reader of the process, and, through a locked
//! cache file, for every process of the user.
//!
//! [`TokenManager::token`] returns the held token at once while it has more than a margin of
//! its life left ([`renewal_margin`]; a cheap mutex, nothing awaited). When it does not,
//! exactly one renewal runs (single flight) and every caller waiting meanwhile gets its result;
//! callers whose held token still has a comfortable while to live are not even made to wait.
//! A renewal, under the cross-process lock, tries in order:
//!
//! 1. the shared state file: another process may have renewed already; adopt its tokens;
//! 2. the refresh token (no TOTP, no new server session);
//! 3. a password login with a TOTP code for a step never used before by any process of this
//!    user (waiting for the next 30 s step if need be). A refused login gets one more attempt
//!    with the next step (the first may have been a timing miss), then the manager *latches*:
//!    every later call fails at once without contacting the server, and the refusal is written
//!    to the state file so other processes with the same credentials fail fast too. Keycloak
//!    locks accounts after repeated failures, so nothing here ever retries a refusal in a loop.
//!
//! Network trouble, 5xx and 429 are retried with exponential backoff and jitter within a
//! bounded budget ([`RetryPolicy`]), then reported as [`AuthError::Unavailable`]; while the held
//! token has not expired, it keeps being served through such an outage.
//!
//! Files: this one owns the held state and the fast path; `renew.rs` the renewal and the rules
//! that protect the account; `endpoint.rs` speaks HTTP and reads answers; `cache.rs` owns the
//! shared state file and its lock; `retry.rs` the backoff.

mod cache;
mod endpoint;
mod renew;
mod retry;

pub use cache::default_cache_dir;
pub use renew::probe::{public_claims, LoginProbe, LoginSource, RefreshProbe};
pub use retry::RetryPolicy;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use crate::clock::{Clock, ServerOffset, SystemClock};
use crate::totp::{self, Totp, TotpSecretProblem};
use crate::{redact_url, AccessToken, AuthError, Secret, TokenSource};
use cache::{sha256_hex, SharedFile};

/// Renew when less than this is left of a token's life, at the least. Covers a slow token
/// request plus a download request started just before expiry (zipper checks the token when
/// the request arrives; a 30 s margin keeps a request from racing the expiry).
const MIN_MARGIN: Duration = Duration::from_secs(30);

/// After a renewal failed (its retries spent, up to ~30 s), callers within this time share its
/// outcome (the still-valid token, or the error) instead of each starting another 30 s of
/// retries: a burst of readers fails, or carries on, together.
const FAILURE_COOLDOWN: Duration = Duration::from_secs(5);

/// While another caller renews, a held token with more than this left is handed out at once
/// instead of waiting for the renewal (which may wait up to 30 s for a TOTP step). A reader's
/// request reaches the server within a second or two, so 10 s is ample; shorter-lived tokens
/// (tests) wait for the renewal, which by refresh takes milliseconds.
const SERVE_DURING_RENEWAL: Duration = Duration::from_secs(10);

/// How long before its expiry a token is renewed, given its total lifetime.
///
/// A quarter of the lifetime, at least 30 s (600 s CDSE tokens renew with 150 s
/// left). But never more than a third of the lifetime: for tokens of 90 s or less, 30 s would
/// be a large share of (or more than) the whole life, and a token that is "stale" as soon as it
/// is issued would make every call renew. With the cap every token serves at least two thirds
/// of its life (a 3 s test token renews with 1 s left).
pub fn renewal_margin(lifetime: Duration) -> Duration {
    (lifetime / 4).max(MIN_MARGIN).min(lifetime / 3)
}

/// What the manager needs to log in.
#[derive(Debug, Clone)]
pub struct LoginConfig {
    /// The Keycloak token endpoint (`.../protocol/openid-connect/token`).
    pub token_url: String,
    pub client_id: String,
    /// The account's user name (the e-mail address on CREODIAS).
    pub user: String,
    pub password: Secret,
    /// The TOTP secret in base32 (spaces, case and padding do not matter).
    pub totp_secret: Secret,
    /// Directory of the cross-process token cache; `None` (`--no-token-cache`) keeps tokens in
    /// this process only. See [`default_cache_dir`].
    pub cache_dir: Option<PathBuf>,
}

/// What a manager holds, for a `status` command or a log line; no secret in it.
#[derive(Debug, Clone)]
pub struct TokenStatus {
    /// When the held access token expires (local time), if one is held.
    pub access_expires_at: Option<SystemTime>,
    /// Whether a refresh token is held, and when it expires (`None` inside: not told).
    pub refresh_expires_at: Option<Option<SystemTime>>,
    /// The latched refusal, if the credentials were refused.
    pub refused: Option<AuthError>,
    /// The server clock's offset, once measured.
    pub server_offset: Option<ServerOffset>,
    /// The last TOTP step used, by this process or (as last read) another.
    pub last_totp_step: Option<u64>,
}

/// Tokens held in memory, all times local.
#[derive(Clone, Debug)]
struct Tokens {
    /// `None` once a server rejected it.
    access: Option<AccessToken>,
    obtained_at: SystemTime,
    refresh: Option<Secret>,
    refresh_expires_at: Option<SystemTime>,
}

#[derive(Default)]
struct State {
    tokens: Option<Tokens>,
    /// The last TOTP step used by this process or, as far as it read, by any other.
    last_step: Option<u64>,
    /// The server clock's offset; `None` until an answer carried a `Date`.
    offset: Option<ServerOffset>,
    /// The server's clock was probed (once per manager, before the first login).
    probed: bool,
    /// Set on a definitive refusal; returned by every later call.
    refused: Option<AuthError>,
    /// sha256 of the last access token a server rejected, so it is not adopted back from the
    /// shared file.
    rejected: Option<String>,
    /// Counts finished renewals, so that callers who waited for one take its outcome.
    generation: u64,
    /// The error of the last finished renewal, if it failed, and when.
    last_error: Option<(AuthError, SystemTime)>,
    /// Tokens obtained at or before this time are not adopted from the shared file.
    invalidated_at: Option<SystemTime>,
}

impl State {
    /// The held access token if it has more than its renewal margin left.
    fn fresh_access(&self, now: SystemTime) -> Option<AccessToken> {
        let t = self.tokens.as_ref()?;
        let access = t.access.as_ref()?;
        is_fresh(access, t.obtained_at, now).then(|| access.clone())
    }

    /// The held access token if it has more than `left` of its life left.
    fn access_with(&self, now: SystemTime, left: Duration) -> Option<AccessToken> {
        let access = self.tokens.as_ref()?.access.as_ref()?;
        let remaining = access.expires_at.duration_since(now).ok()?;
        (remaining > left).then(|| access.clone())
    }

    /// The held access token if it has not expired yet.
    fn unexpired_access(&self, now: SystemTime) -> Option<AccessToken> {
        let access = self.tokens.as_ref()?.access.as_ref()?;
        (access.expires_at > now).then(|| access.clone())
    }

    /// The outcome of the last renewal, for callers that share it: the held token while it is
    /// unexpired (a failed renewal does not stop a token that still works), else the error.
    fn shared_outcome(&self, now: SystemTime) -> Option<Result<AccessToken, AuthError>> {
        if let Some(t) = self.unexpired_access(now) {
            return Some(Ok(t));
        }
        self.last_error.as_ref().map(|(e, _)| Err(e.clone()))
    }

    /// Within [`FAILURE_COOLDOWN`] of a failed renewal: its shared outcome.
    fn cooling_down(&self, now: SystemTime) -> Option<Result<AccessToken, AuthError>> {
        let (_, failed_at) = self.last_error.as_ref()?;
        let since = now.duration_since(*failed_at).unwrap_or_default();
        (since < FAILURE_COOLDOWN)
            .then(|| self.shared_outcome(now))
            .flatten()
    }

    fn server_now(&self, local: SystemTime) -> SystemTime {
        self.offset.unwrap_or(ServerOffset::ZERO).to_server(local)
    }
}

fn is_fresh(access: &AccessToken, obtained_at: SystemTime, now: SystemTime) -> bool {
    let lifetime = access
        .expires_at
        .duration_since(obtained_at)
        .unwrap_or_default();
    match access.expires_at.duration_since(now) {
        Ok(remaining) => remaining > renewal_margin(lifetime),
        Err(_) => false,
    }
}

/// Gets, keeps and renews access tokens. Share it (in an `Arc`) between all readers.
pub struct TokenManager {
    token_url: String,
    /// The token URL as shown in errors and logs.
    server: String,
    client_id: String,
    user: String,
    password: Secret,
    totp: Totp,
    /// sha256 over client id, password and TOTP secret, to match refusals in the shared file.
    fingerprint: String,
    client: reqwest::Client,
    clock: Arc<dyn Clock>,
    retry: RetryPolicy,
    shared: Option<SharedFile>,
    state: Mutex<State>,
    /// Held for the whole of a renewal: the single flight.
    renewal: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for TokenManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenManager")
            .field("server", &self.server)
            .field("user", &self.user)
            .field("state_file", &self.state_file())
            .finish_non_exhaustive()
    }
}

impl TokenManager {
    /// A manager for `cfg`, sending its requests with `client`. Checks the settings and, when a
    /// cache directory is given, creates it (0700) and checks that it is private. Contacts no
    /// server: the first [`TokenManager::token`] logs in (or adopts another process's tokens).
    pub fn new(cfg: LoginConfig, client: reqwest::Client) -> Result<Self, AuthError> {
        let bad = |reason: String| AuthError::Config { reason };
        let url = url::Url::parse(&cfg.token_url).map_err(|e| {
            bad(format!(
                "token URL {:?} is not a URL: {e}",
                redact_url(&cfg.token_url)
            ))
        })?;
        // The password travels in this request: never in clear text over a network. Plain
        // http is for a double on this machine only.
        let loopback = match url.host() {
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        };
        if !(url.scheme() == "https" || (url.scheme() == "http" && loopback)) {
            return Err(bad(format!(
                "token URL {} must be https (plain http only for a server on this machine)",
                redact_url(&cfg.token_url)
            )));
        }
        if cfg.client_id.is_empty() {
            return Err(bad("the client id is empty".into()));
        }
        if cfg.user.is_empty() {
            return Err(bad("the user name is empty".into()));
        }
        if cfg.password.is_empty() {
            return Err(bad("the password is empty".into()));
        }
        // The character itself is not repeated here: it is part of a secret.
        let key = totp::parse_totp_secret(cfg.totp_secret.expose()).map_err(|e| {
            bad(match e.problem {
                TotpSecretProblem::NotBase32 => format!(
                    "the TOTP secret is not base32: character {} is not a letter A-Z or a digit 2-7",
                    e.position
                ),
                TotpSecretProblem::Truncated => format!(
                    "the TOTP secret ends in the middle of a byte at character {}: a character is missing or one too many",
                    e.position
                ),
                TotpSecretProblem::Empty => "the TOTP secret is empty".to_string(),
            })
        })?;
        let shared = match &cfg.cache_dir {
            Some(dir) => {
                cache::prepare_dir(dir)?;
                Some(SharedFile::new(dir, &cfg.user, &cfg.token_url))
            }
            None => None,
        };
        let normalised_secret: String = cfg
            .totp_secret
            .expose()
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '=')
            .map(|c| c.to_ascii_uppercase())
            .collect();
        let fingerprint = sha256_hex(&[
            "eodata-auth refusal fingerprint v1",
            &cfg.client_id,
            cfg.password.expose(),
            &normalised_secret,
        ]);
        Ok(TokenManager {
            server: redact_url(&cfg.token_url),
            token_url: cfg.token_url,
            client_id: cfg.client_id,
            user: cfg.user,
            password: cfg.password,
            totp: Totp::new(key),
            fingerprint,
            client,
            clock: Arc::new(SystemClock),
            retry: RetryPolicy::default(),
            shared,
            state: Mutex::new(State::default()),
            renewal: tokio::sync::Mutex::new(()),
        })
    }

    /// Uses `clock` instead of the system clock (tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Uses `retry` for transient failures instead of [`RetryPolicy::default`].
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The shared state file, when there is a cache directory.
    pub fn state_file(&self) -> Option<&Path> {
        self.shared.as_ref().map(|s| s.state_path())
    }

    /// The server clock's offset (server minus local) as last measured, if any.
    pub fn server_offset(&self) -> Option<ServerOffset> {
        self.lock_state().offset
    }

    /// What the manager holds now. Contacts nobody.
    pub fn status(&self) -> TokenStatus {
        let st = self.lock_state();
        let tokens = st.tokens.as_ref();
        TokenStatus {
            access_expires_at: tokens.and_then(|t| t.access.as_ref()).map(|a| a.expires_at),
            refresh_expires_at: tokens
                .filter(|t| t.refresh.is_some())
                .map(|t| t.refresh_expires_at),
            refused: st.refused.clone(),
            server_offset: st.offset,
            last_totp_step: st.last_step,
        }
    }

    /// Forgets every token this process holds, the refresh token included, and ignores the
    /// tokens now in the shared file: the next [`TokenManager::token`] logs in with password
    /// and TOTP. A latched refusal stays latched (only new credentials, i.e. a new manager,
    /// may try again).
    pub fn invalidate_all(&self) {
        let now = self.clock.now();
        let mut st = self.lock_state();
        st.tokens = None;
        st.invalidated_at = Some(now);
        tracing::debug!("all tokens invalidated");
    }

    /// A token valid now and for a useful while; see the module documentation.
    pub async fn token(&self) -> Result<AccessToken, AuthError> {
        let seen_generation = {
            let st = self.lock_state();
            if let Some(e) = &st.refused {
                return Err(e.clone());
            }
            let now = self.clock.now();
            if let Some(t) = st.fresh_access(now) {
                return Ok(t);
            }
            if let Some(outcome) = st.cooling_down(now) {
                return outcome;
            }
            st.generation
        };
        let _renewing = match self.renewal.try_lock() {
            Ok(guard) => guard,
            Err(_) => {
                // Another caller is renewing: no need to wait for it while the held token
                // still has a comfortable while to live.
                let now = self.clock.now();
                if let Some(t) = self.lock_state().access_with(now, SERVE_DURING_RENEWAL) {
                    return Ok(t);
                }
                self.renewal.lock().await
            }
        };
        {
            let st = self.lock_state();
            if let Some(e) = &st.refused {
                return Err(e.clone());
            }
            let now = self.clock.now();
            if let Some(t) = st.fresh_access(now) {
                return Ok(t);
            }
            if st.generation != seen_generation {
                // A renewal finished while this caller waited: it shares that outcome rather
                // than starting another (a failed renewal is not retried by every waiter).
                if let Some(outcome) = st.shared_outcome(now) {
                    return outcome;
                }
            }
        }
        let result = self.renew().await;
        let now = self.clock.now();
        let mut st = self.lock_state();
        st.generation += 1;
        match result {
            Ok(token) => {
                st.last_error = None;
                Ok(token)
            }
            Err(e) => {
                st.last_error = Some((e.clone(), now));
                if st.refused.is_none() {
                    if let Some(t) = st.unexpired_access(now) {
                        tracing::debug!("renewal failed ({e}); the current token is still valid");
                        return Ok(t);
                    }
                }
                Err(e)
            }
        }
    }

    /// The server refused `token`: drop it if it is the one held, so that the next
    /// [`TokenManager::token`] renews (by refresh when possible). A token already replaced is
    /// ignored, so concurrent reports of one token cause one renewal.
    pub fn reject(&self, token: &AccessToken) {
        let mut st = self.lock_state();
        let Some(tokens) = st.tokens.as_mut() else {
            return;
        };
        if tokens.access.as_ref() == Some(token) {
            tokens.access = None;
            st.rejected = Some(sha256_hex(&[token.value.expose()]));
            tracing::debug!("access token rejected by a server; the next request renews it");
        }
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent between statements, so a panic elsewhere does not poison
        // it in any way that matters.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl TokenSource for TokenManager {
    async fn token(&self) -> Result<AccessToken, AuthError> {
        TokenManager::token(self).await
    }

    async fn rejected(&self, token: &AccessToken) {
        self.reject(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margin_is_a_quarter_at_least_30s_at_most_a_third() {
        assert_eq!(
            renewal_margin(Duration::from_secs(600)),
            Duration::from_secs(150)
        );
        assert_eq!(
            renewal_margin(Duration::from_secs(3600)),
            Duration::from_secs(900)
        );
        assert_eq!(
            renewal_margin(Duration::from_secs(120)),
            Duration::from_secs(30)
        );
        assert_eq!(
            renewal_margin(Duration::from_secs(60)),
            Duration::from_secs(20)
        );
        assert_eq!(
            renewal_margin(Duration::from_secs(3)),
            Duration::from_secs(1)
        );
        assert_eq!(renewal_margin(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn freshness_follows_the_margin() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let token = AccessToken {
            value: Secret::new("x"),
            expires_at: t0 + Duration::from_secs(3),
        };
        assert!(is_fresh(&token, t0, t0));
        assert!(is_fresh(&token, t0, t0 + Duration::from_millis(1_900)));
        assert!(!is_fresh(&token, t0, t0 + Duration::from_secs(2)));
        assert!(!is_fresh(&token, t0, t0 + Duration::from_secs(5)));
    }
}
