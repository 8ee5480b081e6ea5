//! The token manager: one access token for every reader of the process, and, through a locked
//! cache file, for every process of the user.
//!
//! [`TokenManager::token`] returns the held token at once while it has more than a margin of
//! its life left ([`renewal_margin`]; a cheap mutex, nothing awaited). When it does not,
//! exactly one renewal runs, as a task of its own (single flight, off the read path): callers
//! wait for it only while their held token would otherwise expire, and get the held token
//! while it still lives, however long the renewal takes (a TOTP step to wait for, minutes of
//! Keycloak 503s). A renewal, under the cross-process lock, tries in order:
//!
//! 1. the shared state file: another process may have renewed already; adopt its tokens (only
//!    when they were obtained with these very credentials: a changed password is not hidden
//!    by a cached token);
//! 2. the refresh token (no TOTP, no new server session), unless the server session is about
//!    to reach its maximum age (CDSE: an hour from the login, docs/protocol.md "Identity"):
//!    then a password login is made early, while the held token still serves readers;
//! 3. a password login with a TOTP code for a step never used before by any process of this
//!    user. A refused login gets one more attempt with the next step (the first may have been a
//!    timing miss), at least [`PASSWORD_SPACING`] later, then the manager *latches*: every later
//!    call fails at once without contacting the server, and the refusal is written to the state
//!    file so other processes with the same credentials fail fast too. Keycloak locks accounts
//!    after repeated failures, so nothing here ever retries a refusal in a loop.
//!
//! Network trouble, 5xx and 429 are retried with exponential backoff and jitter within a
//! bounded budget ([`RetryPolicy`]: minutes for the refresh grant, which spends nothing; less
//! for a password login, whose every attempt spends a TOTP step), then reported as
//! [`AuthError::Unavailable`]; while the held token has not expired, it keeps being served
//! through such an outage.
//!
//! Files: this one owns the held state and the fast path; `renew.rs` the renewal and the rules
//! that protect the account; `endpoint.rs` speaks HTTP and reads answers; `cache.rs` owns the
//! shared state file and its lock; `retry.rs` the backoff.

mod cache;
mod endpoint;
mod renew;
mod retry;
mod store;

pub use cache::default_cache_dir;
pub use renew::probe::{public_claims, LoginProbe, LoginSource, RefreshProbe};
pub use retry::RetryPolicy;
pub use store::{account_key, FileStore, SharedStore, StoreFuture, StoreLock};

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use crate::clock::{Clock, ServerOffset, SystemClock};
use crate::totp::{self, Totp, TotpSecretProblem};
use crate::{redact_url, AccessToken, AuthError, Secret, TokenSource};
use cache::sha256_hex;

pub use renew::PASSWORD_SPACING;

/// Renew when less than this is left of a token's life, at the least. Covers a slow token
/// request plus a download request started just before expiry (zipper checks the token when
/// the request arrives; a 30 s margin keeps a request from racing the expiry).
const MIN_MARGIN: Duration = Duration::from_secs(30);

/// After a renewal failed (its retries spent, up to ~30 s), callers within this time share its
/// outcome (the still-valid token, or the error) instead of each starting another 30 s of
/// retries: a burst of readers fails, or carries on, together.
const FAILURE_COOLDOWN: Duration = Duration::from_secs(5);

/// While a renewal runs, a caller holding an unexpired token waits for it at most until this
/// long before the token expires, then gets the held token: a renewal by refresh takes
/// milliseconds and its result is preferred, but one that waits for a TOTP step or rides out
/// a Keycloak outage must not stall readers while their token still works.
const SERVE_SAFETY: Duration = Duration::from_millis(500);

/// A caller waits this long at most for a renewal (while its held token lives): a refresh answers in tens of milliseconds, and its caller then gets the new token;
/// a renewal that takes longer (a TOTP step to wait for, an outage) carries on in the
/// background while the held token serves, so no read stalls for more than this.
const STARTER_PATIENCE: Duration = Duration::from_millis(500);

/// Callers that find a renewal already running get the held token at once when it has more
/// than this left (a reader's request reaches the server within a second or two); with less,
/// they wait for the renewal as briefly as its starter does.
const SERVE_DURING_RENEWAL: Duration = Duration::from_secs(10);

/// A session is renewed by a password login, rather than by refresh, once its refresh token
/// has less than a quarter of the lifetime it had at the login left, and at most this much:
/// two minutes before the end of CDSE's one-hour session leave room for a TOTP step (up to
/// 30 s) and retries, while the held access token still serves readers.
const SESSION_MARGIN_MAX: Duration = Duration::from_secs(120);

/// How long before the end of the session, whose refresh token lived `lifetime` when the
/// session was opened by a password login, the next renewal logs in again.
pub(crate) fn session_margin(lifetime: Duration) -> Duration {
    (lifetime / 4).min(SESSION_MARGIN_MAX)
}

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
    /// The TOTP secret in base32 (spaces, case and padding do not matter). Empty: the account
    /// has no two-factor login, and logins send no `totp` field.
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
    /// The refresh lifetime the server gave at the password login that opened this session:
    /// how long the session lasts at most without another login (see [`session_margin`]).
    session_lifetime: Option<Duration>,
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
    /// A renewal task is running.
    renewing: bool,
    /// When this process last sent a password grant (local time).
    last_password_at: Option<SystemTime>,
    /// A large server clock offset was reported once.
    offset_warned: bool,
}

impl State {
    /// The held access token if it has more than its renewal margin left.
    fn fresh_access(&self, now: SystemTime) -> Option<AccessToken> {
        let t = self.tokens.as_ref()?;
        let access = t.access.as_ref()?;
        is_fresh(access, t.obtained_at, now).then(|| access.clone())
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
    inner: Arc<Inner>,
}

/// What the manager and its renewal tasks share.
pub(crate) struct Inner {
    token_url: String,
    /// The token URL as shown in errors and logs.
    server: String,
    client_id: String,
    /// A confidential client's secret, sent as `client_secret` when set.
    client_secret: Option<Secret>,
    user: String,
    password: Secret,
    /// `None`: the account has no two-factor login.
    totp: Option<Totp>,
    /// The TOTP secret normalised (upper case, no blanks or padding), for fingerprints.
    totp_normalised: Secret,
    client: reqwest::Client,
    clock: Arc<dyn Clock>,
    /// For password logins: each attempt may spend a TOTP step.
    retry: RetryPolicy,
    /// For the refresh grant: spends nothing, so it may retry for minutes.
    refresh_retry: RetryPolicy,
    /// Where the state is shared with other processes (and machines); `None`: this process
    /// alone.
    shared: Option<Arc<dyn SharedStore>>,
    /// The local state file, when there is a cache directory (for `status` and `doctor`).
    state_path: Option<PathBuf>,
    state: Mutex<State>,
    /// Carries the renewal generation each time a renewal task finishes.
    done: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for TokenManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenManager")
            .field("server", &self.inner.server)
            .field("user", &self.inner.user)
            .field("state_file", &self.state_file())
            .finish_non_exhaustive()
    }
}

/// The token URL (https, or plain http to this machine only: the password travels in the
/// request), and no empty client id, user or password.
fn check_login_config(cfg: &LoginConfig) -> Result<(), AuthError> {
    let bad = |reason: String| AuthError::Config { reason };
    let url = url::Url::parse(&cfg.token_url).map_err(|e| {
        bad(format!(
            "token URL {:?} is not a URL: {e}",
            redact_url(&cfg.token_url)
        ))
    })?;
    let loopback = eodata_http::redirect::is_loopback(&url);
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
    Ok(())
}

/// The TOTP key of `secret`; `None` for an account without two-factor login (no secret). The
/// error names the position of a bad character, never the character: it is part of a secret.
fn totp_key(secret: &Secret) -> Result<Option<Vec<u8>>, AuthError> {
    if secret.expose().trim().is_empty() {
        return Ok(None);
    }
    let reason = |e: totp::TotpSecretError| {
        match e.problem {
        TotpSecretProblem::NotBase32 => format!(
            "the TOTP secret is not base32: character {} is not a letter A-Z or a digit 2-7",
            e.position
        ),
        TotpSecretProblem::Truncated => format!(
            "the TOTP secret ends in the middle of a byte at character {}: a character is missing or one too many",
            e.position
        ),
        TotpSecretProblem::Empty => "the TOTP secret is empty".to_string(),
    }
    };
    totp::parse_totp_secret(secret.expose())
        .map(Some)
        .map_err(|e| AuthError::Config { reason: reason(e) })
}

/// The token state file shared by the user's processes, in `cfg`'s cache directory (created
/// 0700 and checked private). A directory another local user may have created first: carry on
/// as a lone process rather than let them stop this one.
fn shared_file(cfg: &LoginConfig) -> Option<FileStore> {
    let dir = cfg.cache_dir.as_ref()?;
    match cache::prepare_dir(dir) {
        // Keyed by the user name as Keycloak compares it: case-insensitively.
        Ok(()) => Some(FileStore::new(dir, &cfg.user, &cfg.token_url)),
        Err(e) => {
            tracing::warn!("{e}; carrying on without the shared token cache");
            None
        }
    }
}

impl TokenManager {
    /// A manager for `cfg`, sending its requests with `client`. Checks the settings and, when a
    /// cache directory is given, creates it (0700) and checks that it is private. Contacts no
    /// server: the first [`TokenManager::token`] logs in (or adopts another process's tokens).
    pub fn new(cfg: LoginConfig, client: reqwest::Client) -> Result<Self, AuthError> {
        check_login_config(&cfg)?;
        let key = totp_key(&cfg.totp_secret)?;
        let shared = shared_file(&cfg);
        let normalised_secret: String = cfg
            .totp_secret
            .expose()
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '=')
            .map(|c| c.to_ascii_uppercase())
            .collect();
        let (done, _) = tokio::sync::watch::channel(0);
        Ok(TokenManager {
            inner: Arc::new(Inner {
                server: redact_url(&cfg.token_url),
                token_url: cfg.token_url,
                client_id: cfg.client_id,
                client_secret: None,
                user: cfg.user,
                password: cfg.password,
                totp: key.map(Totp::new),
                totp_normalised: Secret::new(normalised_secret),
                client,
                clock: Arc::new(SystemClock),
                retry: RetryPolicy::default(),
                refresh_retry: RetryPolicy::refresh_default(),
                state_path: shared.as_ref().map(FileStore::state_path),
                shared: shared.map(|s| Arc::new(s) as Arc<dyn SharedStore>),
                state: Mutex::new(State::default()),
                done,
            }),
        })
    }

    /// The inner state, before the manager is shared: the `with_*` builders run first.
    fn inner_mut(&mut self) -> &mut Inner {
        Arc::get_mut(&mut self.inner).expect("with_* builders run before the manager is used")
    }

    /// Uses `clock` instead of the system clock (tests).
    #[cfg(any(test, feature = "testing"))]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.inner_mut().clock = clock;
        self
    }

    /// Uses `retry` for transient failures of the refresh grant only (tests).
    #[cfg(any(test, feature = "testing"))]
    pub fn with_refresh_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.inner_mut().refresh_retry = retry;
        self
    }

    /// Sends `secret` as `client_secret` with every grant (a confidential client); `None` or an
    /// empty secret sends none (a public client, the providers' default).
    pub fn with_client_secret(mut self, secret: Option<Secret>) -> Self {
        self.inner_mut().client_secret = secret.filter(|s| !s.is_empty());
        self
    }

    /// Shares the state through the store `wrap` makes of the local one (`None` without a
    /// cache directory): a cluster coordinator keeps the state in Redis and falls back to the
    /// local store while Redis cannot be reached.
    pub fn with_shared_store(
        mut self,
        wrap: impl FnOnce(Option<Arc<dyn SharedStore>>) -> Arc<dyn SharedStore>,
    ) -> Self {
        let inner = self.inner_mut();
        inner.shared = Some(wrap(inner.shared.take()));
        self
    }

    /// The local shared state file, when there is a cache directory.
    pub fn state_file(&self) -> Option<&Path> {
        self.inner.state_path.as_deref()
    }

    /// The server clock's offset (server minus local) as last measured, if any.
    pub fn server_offset(&self) -> Option<ServerOffset> {
        self.inner.lock_state().offset
    }

    /// What the manager holds now. Contacts nobody.
    pub fn status(&self) -> TokenStatus {
        let st = self.inner.lock_state();
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
    /// may try again). For tests: they start a renewal on purpose.
    #[cfg(any(test, feature = "testing"))]
    pub fn invalidate_all(&self) {
        let now = self.inner.clock.now();
        let mut st = self.inner.lock_state();
        st.tokens = None;
        st.invalidated_at = Some(now);
        tracing::debug!("all tokens invalidated");
    }

    /// A token valid now and for a useful while; see the module documentation.
    pub async fn token(&self) -> Result<AccessToken, AuthError> {
        let inner = &self.inner;
        // A renewal whose token a server rejected at once is followed by another; a third in a
        // row means something is wrong that renewing will not fix.
        for _ in 0..3 {
            let (mut finished, seen_generation, held, started) = {
                let mut st = inner.lock_state();
                if let Some(e) = &st.refused {
                    return Err(e.clone());
                }
                let now = inner.clock.now();
                if let Some(t) = st.fresh_access(now) {
                    return Ok(t);
                }
                let started = !st.renewing;
                if started {
                    if let Some(outcome) = st.cooling_down(now) {
                        return outcome;
                    }
                    st.renewing = true;
                    let task = inner.clone();
                    tokio::spawn(async move { task.run_renewal().await });
                }
                (
                    inner.done.subscribe(),
                    st.generation,
                    st.unexpired_access(now),
                    started,
                )
            };
            let renewed = finished.wait_for(|g| *g != seen_generation);
            match held {
                Some(held) => {
                    let left = held
                        .expires_at
                        .duration_since(inner.clock.now())
                        .unwrap_or_default();
                    let patience = if !started && left > SERVE_DURING_RENEWAL {
                        Duration::ZERO
                    } else {
                        STARTER_PATIENCE
                    };
                    let patience = patience.min(left.saturating_sub(SERVE_SAFETY));
                    if tokio::time::timeout(patience, renewed).await.is_err() {
                        // The renewal is taking long; the held token still works.
                        let now = inner.clock.now();
                        if let Some(t) = inner.lock_state().unexpired_access(now) {
                            return Ok(t);
                        }
                        continue;
                    }
                }
                None => {
                    let _ = renewed.await;
                }
            }
            let st = inner.lock_state();
            if let Some(e) = &st.refused {
                return Err(e.clone());
            }
            if let Some(outcome) = st.shared_outcome(inner.clock.now()) {
                return outcome;
            }
        }
        Err(AuthError::Unavailable {
            server: inner.server.clone(),
            reason: "every new token was refused by the server at once".into(),
        })
    }

    /// The server refused `token`: drop it if it is the one held, so that the next
    /// [`TokenManager::token`] renews (by refresh when possible). A token already replaced is
    /// ignored, so concurrent reports of one token cause one renewal.
    pub fn reject(&self, token: &AccessToken) {
        let mut st = self.inner.lock_state();
        let Some(tokens) = st.tokens.as_mut() else {
            return;
        };
        if tokens.access.as_ref() == Some(token) {
            tokens.access = None;
            st.rejected = Some(sha256_hex(&[token.value.expose()]));
            tracing::debug!("access token rejected by a server; the next request renews it");
        }
    }
}

impl Inner {
    fn lock_state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent between statements, so a panic elsewhere does not poison
        // it in any way that matters.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The renewal task: renews, records the outcome for the callers, and wakes them. The
    /// outcome is recorded even if the task is dropped half-way (runtime shutdown) or panics,
    /// so no caller waits for a renewal that will never finish.
    async fn run_renewal(self: Arc<Self>) {
        struct Finish<'a> {
            inner: &'a Inner,
            result: Option<Result<AccessToken, AuthError>>,
        }
        impl Drop for Finish<'_> {
            fn drop(&mut self) {
                let result = self.result.take().unwrap_or_else(|| {
                    Err(AuthError::Unavailable {
                        server: self.inner.server.clone(),
                        reason: "the renewal was interrupted".into(),
                    })
                });
                let now = self.inner.clock.now();
                let mut st = self.inner.lock_state();
                st.generation += 1;
                st.renewing = false;
                match result {
                    Ok(_) => st.last_error = None,
                    Err(e) => {
                        if st.refused.is_none() && st.unexpired_access(now).is_some() {
                            tracing::debug!(
                                "renewal failed ({e}); the current token is still valid"
                            );
                        }
                        st.last_error = Some((e, now));
                    }
                }
                let generation = st.generation;
                drop(st);
                self.inner.done.send_replace(generation);
            }
        }
        let mut finish = Finish {
            inner: &self,
            result: None,
        };
        finish.result = Some(self.renew().await);
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
