//! The token manager: one access token for every reader of the process, and, through a locked
//! cache file, for every process of the user.
//!
//! [`TokenManager::token`] returns the held token at once while it has more than a margin of
//! its life left (a cheap mutex, nothing awaited). When it does not, exactly one renewal runs
//! (single flight) and every caller waiting meanwhile gets its result. A renewal, under the
//! cross-process lock, tries in order:
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
//! bounded budget ([`RetryPolicy`]), then reported as [`AuthError::Unavailable`].
//!
//! Files: `endpoint.rs` speaks HTTP and reads answers; `cache.rs` owns the shared state file and
//! its lock; this file owns the decisions.

mod cache;
mod endpoint;

pub use cache::default_cache_dir;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use crate::clock::{Clock, ServerOffset, SystemClock};
use crate::totp::{self, Totp};
use crate::{redact_url, AccessToken, AuthError, Secret, TokenSource};
use cache::{from_millis, sha256_hex, to_millis, Refusal, SharedFile, StateFile};
use endpoint::{Failure, Grant, Granted};

/// Renew when less than this is left of a token's life, at the least. Covers a slow token
/// request plus a download request started just before expiry (zipper checks the token when
/// the request arrives; a 30 s margin keeps a request from racing the expiry).
const MIN_MARGIN: Duration = Duration::from_secs(30);

/// Do not keep a refresh token whose remaining life is shorter than this: the request would
/// likely arrive after it expired and earn an `invalid_grant` for nothing.
const REFRESH_MIN_REMAINING: Duration = Duration::from_secs(1);

/// How long a refusal recorded in the shared state file stops other processes with the same
/// credentials from trying. Long enough that a burst of processes (a script starting sixteen
/// downloads) makes no further attempt against a possibly locked account; short enough that a
/// user who fixed the account on the web site is not kept waiting long.
const REFUSAL_MEMORY: Duration = Duration::from_secs(10 * 60);

/// After a renewal failed (its retries spent, up to ~30 s), callers within this time share its
/// outcome (the still-valid token, or the error) instead of each starting another 30 s of
/// retries: a burst of readers fails, or carries on, together.
const FAILURE_COOLDOWN: Duration = Duration::from_secs(5);

/// Password logins per renewal: the first, and one more with the next TOTP step when the first
/// was refused (it may have missed the step by a hair, or hit a code already used elsewhere).
/// Never more: Keycloak's brute-force protection counts every failure.
const MAX_PASSWORD_ATTEMPTS: u32 = 2;

/// How long before its expiry a token is renewed, given its total lifetime.
///
/// A quarter of the lifetime, at least [`MIN_MARGIN`] (600 s CDSE tokens renew with 150 s
/// left). But never more than a third of the lifetime: for tokens of 90 s or less, 30 s would
/// be a large share of (or more than) the whole life, and a token that is "stale" as soon as it
/// is issued would make every call renew. With the cap every token serves at least two thirds
/// of its life (a 3 s test token renews with 1 s left).
pub fn renewal_margin(lifetime: Duration) -> Duration {
    (lifetime / 4).max(MIN_MARGIN).min(lifetime / 3)
}

/// How transient failures (network, timeouts, 5xx, 429) are retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Requests in all, the first included.
    pub attempts: u32,
    /// Wait after the first failure; doubles after each further one.
    pub first_backoff: Duration,
    /// The wait never grows beyond this (before jitter).
    pub max_backoff: Duration,
    /// No retry starts once this much time has passed since the first attempt.
    pub budget: Duration,
}

impl Default for RetryPolicy {
    /// 0.5, 1, 2, 4, 8 s between six attempts (each wait jittered down by up to half, so that
    /// processes failing together do not retry together), within 30 s: long enough to ride out
    /// a Keycloak restart or a dropped Wi-Fi, short enough that a user sees the error while
    /// still watching.
    fn default() -> Self {
        RetryPolicy {
            attempts: 6,
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            budget: Duration::from_secs(30),
        }
    }
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

/// How a grant attempt sequence ended without tokens.
enum Outcome {
    /// The server refused the grant (`error`, `error_description`).
    Refused(String, String),
    /// Anything else: give up this renewal with this error.
    Failed(AuthError),
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
        if !matches!(url.scheme(), "https" | "http") {
            return Err(bad(format!(
                "token URL {} must be https (or http for a local test server)",
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
            bad(format!(
                "the TOTP secret is not valid base32 (problem at character {}): {:?}",
                e.position, e.problem
            ))
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
        let _renewing = self.renewal.lock().await;
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

    /// One renewal, under the cross-process lock.
    async fn renew(&self) -> Result<AccessToken, AuthError> {
        let _lock = match &self.shared {
            Some(shared) => Some(shared.lock().await?),
            None => None,
        };
        let mut disk = self
            .shared
            .as_ref()
            .and_then(|s| s.read())
            .unwrap_or_default();
        if let Some(token) = self.merge_disk(&disk)? {
            return Ok(token);
        }
        if let Some(refresh) = self.usable_refresh() {
            tracing::debug!("renewing by refresh");
            match self.refresh(&refresh).await {
                Ok(granted) => return Ok(self.store(granted, &mut disk)),
                Err(Outcome::Refused(error, description)) => {
                    tracing::debug!(
                        "refresh refused ({error}: {description}); logging in with password and TOTP"
                    );
                    if let Some(t) = self.lock_state().tokens.as_mut() {
                        t.refresh = None;
                    }
                }
                Err(Outcome::Failed(e)) => return Err(e),
            }
        }
        match self.password_login(&mut disk).await {
            Ok(granted) => Ok(self.store(granted, &mut disk)),
            Err(e) => {
                if let AuthError::Refused { reason, .. } = &e {
                    self.lock_state().refused = Some(e.clone());
                    disk.refusal = Some(Refusal {
                        fingerprint: self.fingerprint.clone(),
                        at: to_millis(self.clock.now()),
                        reason: reason.clone(),
                    });
                    self.write_disk(&disk);
                }
                Err(e)
            }
        }
    }

    /// Folds in what the shared file knows: used TOTP steps, a recent refusal of these
    /// credentials (which latches), and tokens newer than ours. Returns the file's access
    /// token when it is fresh and not one a server rejected.
    fn merge_disk(&self, disk: &StateFile) -> Result<Option<AccessToken>, AuthError> {
        let now = self.clock.now();
        let mut st = self.lock_state();
        if let Some(step) = disk.last_totp_step {
            st.last_step = st.last_step.max(Some(step));
        }
        if let Some(refusal) = &disk.refusal {
            let age = now
                .duration_since(from_millis(refusal.at))
                .unwrap_or_default();
            if refusal.fingerprint == self.fingerprint && age < REFUSAL_MEMORY {
                let e = AuthError::Refused {
                    server: self.server.clone(),
                    reason: format!(
                        "{} (another process was refused {} s ago with these same credentials; not trying again for {} minutes)",
                        refusal.reason,
                        age.as_secs(),
                        REFUSAL_MEMORY.as_secs() / 60
                    ),
                };
                st.refused = Some(e.clone());
                return Err(e);
            }
        }
        let Some(obtained_at) = disk.obtained_at.map(from_millis) else {
            return Ok(None);
        };
        if st.invalidated_at.is_some_and(|t| obtained_at <= t) {
            return Ok(None);
        }
        if st
            .tokens
            .as_ref()
            .is_some_and(|t| t.obtained_at > obtained_at)
        {
            return Ok(None);
        }
        let access = match (&disk.access_token, disk.access_expires_at) {
            (Some(value), Some(expires_at))
                if !value.is_empty()
                    && st.rejected.as_deref() != Some(sha256_hex(&[value]).as_str()) =>
            {
                Some(AccessToken {
                    value: Secret::new(value.clone()),
                    expires_at: from_millis(expires_at),
                })
            }
            _ => None,
        };
        let fresh = access
            .as_ref()
            .filter(|a| is_fresh(a, obtained_at, now))
            .cloned();
        st.tokens = Some(Tokens {
            access,
            obtained_at,
            refresh: disk.refresh_token.clone().map(Secret::new),
            refresh_expires_at: disk.refresh_expires_at.map(from_millis),
        });
        if fresh.is_some() {
            tracing::debug!("adopted the token another process renewed");
        }
        Ok(fresh)
    }

    fn usable_refresh(&self) -> Option<Secret> {
        let now = self.clock.now();
        let st = self.lock_state();
        let t = st.tokens.as_ref()?;
        let refresh = t.refresh.as_ref()?;
        let alive = t.refresh_expires_at.is_none_or(|exp| {
            exp.duration_since(now)
                .is_ok_and(|left| left > REFRESH_MIN_REMAINING)
        });
        alive.then(|| refresh.clone())
    }

    /// Keeps new tokens in memory and in the shared file.
    fn store(&self, granted: Granted, disk: &mut StateFile) -> AccessToken {
        let access = AccessToken {
            value: granted.access.clone(),
            expires_at: granted.access_expires_at,
        };
        let tokens = {
            let mut st = self.lock_state();
            // A refresh answer without a refresh token means: keep using the old one.
            let (refresh, refresh_expires_at) = match granted.refresh {
                Some(r) => (Some(r), granted.refresh_expires_at),
                None => st
                    .tokens
                    .as_ref()
                    .map(|t| (t.refresh.clone(), t.refresh_expires_at))
                    .unwrap_or_default(),
            };
            let tokens = Tokens {
                access: Some(access.clone()),
                obtained_at: granted.obtained_at,
                refresh,
                refresh_expires_at,
            };
            st.tokens = Some(tokens.clone());
            disk.last_totp_step = disk.last_totp_step.max(st.last_step);
            tokens
        };
        disk.access_token = Some(access.value.expose().to_owned());
        disk.obtained_at = Some(to_millis(tokens.obtained_at));
        disk.access_expires_at = Some(to_millis(access.expires_at));
        disk.refresh_token = tokens.refresh.map(|r| r.expose().to_owned());
        disk.refresh_expires_at = tokens.refresh_expires_at.map(to_millis);
        if disk
            .refusal
            .as_ref()
            .is_some_and(|r| r.fingerprint == self.fingerprint)
        {
            disk.refusal = None;
        }
        self.write_disk(disk);
        access
    }

    /// Writes the shared file if there is one. A failure is logged, not returned: the tokens
    /// are good, and the worst outcome is that another process logs in itself.
    fn write_disk(&self, disk: &StateFile) {
        if let Some(shared) = &self.shared {
            if let Err(e) = shared.write(disk) {
                tracing::warn!("{e}");
            }
        }
    }

    /// One request: send, learn the server's clock from `Date`, read the answer.
    async fn exchange(&self, grant: Grant<'_>) -> Result<Granted, Failure> {
        let answer = endpoint::send(
            &self.client,
            &self.token_url,
            grant.form(&self.client_id),
            self.clock.as_ref(),
        )
        .await?;
        let offset = {
            let mut st = self.lock_state();
            if let Some(date) = &answer.date {
                if let Some(o) = ServerOffset::estimate(date, answer.sent, answer.received) {
                    if st.offset != Some(o) && o != ServerOffset::ZERO {
                        tracing::debug!(
                            offset_ms = o.as_millis(),
                            "server clock differs from ours; TOTP steps and expiries follow the server"
                        );
                    }
                    st.offset = Some(o);
                }
            }
            st.offset
        };
        endpoint::classify(&answer, offset)
    }

    /// The refresh grant, retried on transient failures.
    async fn refresh(&self, refresh_token: &Secret) -> Result<Granted, Outcome> {
        let mut backoff = Backoff::new(&self.retry, self.clock.now());
        loop {
            match self.exchange(Grant::Refresh { refresh_token }).await {
                Ok(granted) => return Ok(granted),
                Err(Failure::Refused { error, description }) => {
                    return Err(Outcome::Refused(error, description))
                }
                Err(Failure::Protocol(reason)) => {
                    return Err(Outcome::Failed(self.protocol(reason)))
                }
                Err(Failure::Transient {
                    reason,
                    retry_after,
                    ..
                }) => match backoff.next_delay(retry_after, self.clock.now()) {
                    Some(wait) => {
                        tracing::debug!("token refresh failed ({reason}); retrying in {wait:?}");
                        self.clock.sleep(wait).await;
                    }
                    None => return Err(Outcome::Failed(self.unavailable(reason))),
                },
            }
        }
    }

    /// Password and TOTP login: at most [`MAX_PASSWORD_ATTEMPTS`] refused attempts, each with a
    /// fresh step; transient failures retried within the [`RetryPolicy`].
    async fn password_login(&self, disk: &mut StateFile) -> Result<Granted, AuthError> {
        if self.lock_state().offset.is_none() {
            // First login of this process: learn the server's clock before choosing a step.
            if let Some(o) =
                endpoint::probe_date(&self.client, &self.token_url, self.clock.as_ref()).await
            {
                self.lock_state().offset = Some(o);
            }
        }
        let mut backoff = Backoff::new(&self.retry, self.clock.now());
        let mut refusals = 0;
        // A step whose request certainly never reached the server may be sent again.
        let mut unspent: Option<u64> = None;
        loop {
            let current = {
                let st = self.lock_state();
                totp::step_at(st.server_now(self.clock.now()))
            };
            let step = match unspent.take() {
                Some(step) if step == current => step,
                _ => self.next_step().await,
            };
            // Recorded before sending: once sent, the code may be spent even if the answer is
            // lost, and no other process may use this step.
            if disk.last_totp_step < Some(step) {
                disk.last_totp_step = Some(step);
                self.write_disk(disk);
            }
            tracing::debug!(user = %self.user, "password login at TOTP step {step}");
            let code = self.totp.code(step);
            let grant = Grant::Password {
                user: &self.user,
                password: &self.password,
                code: &code,
            };
            match self.exchange(grant).await {
                Ok(granted) => {
                    tracing::debug!("logged in");
                    return Ok(granted);
                }
                Err(Failure::Refused { error, description }) => {
                    refusals += 1;
                    let definitive = error != "invalid_grant"
                        || description.contains("disabled")
                        || description.contains("not fully set up");
                    if definitive || refusals >= MAX_PASSWORD_ATTEMPTS {
                        return Err(self.refused(&error, &description));
                    }
                    tracing::debug!(
                        "password login refused ({error}: {description}); one more attempt with the next TOTP step"
                    );
                }
                Err(Failure::Protocol(reason)) => return Err(self.protocol(reason)),
                Err(Failure::Transient {
                    reason,
                    may_have_arrived,
                    retry_after,
                }) => match backoff.next_delay(retry_after, self.clock.now()) {
                    Some(wait) => {
                        tracing::debug!("password login failed ({reason}); retrying in {wait:?}");
                        if !may_have_arrived {
                            unspent = Some(step);
                        }
                        self.clock.sleep(wait).await;
                    }
                    None => return Err(self.unavailable(reason)),
                },
            }
        }
    }

    /// The current TOTP step (server time) if no process used it yet, else waits for the step
    /// after the last one used. Marks the step as used.
    async fn next_step(&self) -> u64 {
        loop {
            let wait = {
                let mut st = self.lock_state();
                let server_now = st.server_now(self.clock.now());
                let step = totp::step_at(server_now);
                match st.last_step {
                    Some(last) if step <= last => totp::step_start(last + 1)
                        .duration_since(server_now)
                        .unwrap_or_default()
                        .max(Duration::from_millis(1)),
                    _ => {
                        st.last_step = Some(step);
                        return step;
                    }
                }
            };
            tracing::debug!("TOTP step already used; waiting {wait:?} for the next one");
            self.clock.sleep(wait).await;
        }
    }

    fn refused(&self, error: &str, description: &str) -> AuthError {
        let reason = match (error, description) {
            ("invalid_grant", "Invalid user credentials") => "Invalid user credentials: wrong user name, password or TOTP secret, a clock more than 30 s off, or an account locked after too many failures (log in on the web site to check)".to_string(),
            (_, "") => error.to_string(),
            _ => format!("{description} ({error})"),
        };
        AuthError::Refused {
            server: self.server.clone(),
            reason,
        }
    }

    fn protocol(&self, reason: String) -> AuthError {
        AuthError::Protocol {
            server: self.server.clone(),
            reason,
        }
    }

    fn unavailable(&self, reason: String) -> AuthError {
        AuthError::Unavailable {
            server: self.server.clone(),
            reason,
        }
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

/// Exponential backoff with jitter, bounded in attempts and total time.
struct Backoff<'a> {
    policy: &'a RetryPolicy,
    failures: u32,
    started: SystemTime,
}

impl<'a> Backoff<'a> {
    fn new(policy: &'a RetryPolicy, now: SystemTime) -> Self {
        Backoff {
            policy,
            failures: 0,
            started: now,
        }
    }

    /// After a failure: how long to wait before the next attempt, or `None` to give up.
    fn next_delay(&mut self, retry_after: Option<Duration>, now: SystemTime) -> Option<Duration> {
        self.failures += 1;
        if self.failures >= self.policy.attempts {
            return None;
        }
        let doubling = 2u32.saturating_pow(self.failures - 1);
        let base = self
            .policy
            .first_backoff
            .saturating_mul(doubling)
            .min(self.policy.max_backoff);
        let wait = jitter(base).max(retry_after.unwrap_or_default());
        let elapsed = now.duration_since(self.started).unwrap_or_default();
        (elapsed + wait <= self.policy.budget).then_some(wait)
    }
}

/// A random duration in `[d/2, d]`: spreads retries of processes that failed together.
fn jitter(d: Duration) -> Duration {
    use std::hash::BuildHasher;
    // RandomState is seeded randomly per process and per instance: enough for jitter, and no
    // dependency for it.
    let r = std::collections::hash_map::RandomState::new().hash_one(0u8);
    let half = d / 2;
    half + half.mul_f64((r % 1_000) as f64 / 1_000.0)
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

    #[test]
    fn backoff_doubles_is_jittered_and_bounded() {
        let policy = RetryPolicy::default();
        let t0 = SystemTime::UNIX_EPOCH;
        let mut b = Backoff::new(&policy, t0);
        let mut total = Duration::ZERO;
        let mut waits = vec![];
        while let Some(w) = b.next_delay(None, t0 + total) {
            waits.push(w);
            total += w;
        }
        assert_eq!(waits.len(), 5, "{waits:?}");
        for (w, base) in waits.iter().zip([0.5, 1.0, 2.0, 4.0, 8.0]) {
            let base = Duration::from_secs_f64(base);
            assert!(*w >= base / 2 && *w <= base, "{w:?} vs {base:?}");
        }
        // The budget stops retries even with attempts left.
        let mut b = Backoff::new(&policy, t0);
        assert!(b.next_delay(None, t0 + Duration::from_secs(30)).is_none());
        // Retry-After is honoured (capped by the endpoint module).
        let mut b = Backoff::new(&policy, t0);
        assert_eq!(
            b.next_delay(Some(Duration::from_secs(5)), t0),
            Some(Duration::from_secs(5))
        );
    }
}
