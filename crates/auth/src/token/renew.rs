//! One renewal, run by one caller at a time under the cross-process lock: what the shared
//! file knows, then the refresh token, then password + TOTP; and where the result is kept.
//!
//! The rules that protect the account live here: a TOTP step is never used twice (by this
//! process or, through the shared file, any other), a refused login gets exactly one more
//! attempt at the next step, and a refusal latches and is published to the other processes.

pub(super) mod probe;

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use super::cache::{from_millis, sha256_hex, to_millis, Refusal, SharedFile, StateFile};
use super::endpoint::{self, Failure, Grant, Granted};
use super::retry::Backoff;
use super::{is_fresh, TokenManager, Tokens};
use crate::clock::ServerOffset;
use crate::totp;
use crate::{AccessToken, AuthError, Secret};

/// Do not try a refresh token whose remaining life is shorter than this: the request would
/// likely arrive after it expired and earn an `invalid_grant` for nothing.
const REFRESH_MIN_REMAINING: Duration = Duration::from_secs(1);

/// How long a refusal recorded in the shared state file stops other processes with the same
/// credentials from trying. Long enough that a burst of processes (a script starting sixteen
/// downloads) makes no further attempt against a possibly locked account; short enough that a
/// user who fixed the account on the web site is not kept waiting long.
const REFUSAL_MEMORY: Duration = Duration::from_secs(10 * 60);

/// Password logins per renewal: the first, and one more with the next TOTP step when the first
/// was refused (it may have missed the step by a hair, or hit a code already used elsewhere).
/// Never more: Keycloak's brute-force protection counts every failure.
const MAX_PASSWORD_ATTEMPTS: u32 = 2;

/// The shared state as read at the start of a renewal, and the file to save it to (`None`
/// without a shared cache, or when its lock could not be taken: then nothing is written).
struct Disk<'a> {
    state: StateFile,
    file: Option<&'a SharedFile>,
}

impl Disk<'_> {
    /// Writes the state. A failure is logged, not returned: the tokens are good, and the worst
    /// outcome is that another process logs in by itself.
    fn save(&self) {
        if let Some(file) = self.file {
            if let Err(e) = file.write(&self.state) {
                tracing::warn!("{e}");
            }
        }
    }
}

impl Deref for Disk<'_> {
    type Target = StateFile;
    fn deref(&self) -> &StateFile {
        &self.state
    }
}

impl DerefMut for Disk<'_> {
    fn deref_mut(&mut self) -> &mut StateFile {
        &mut self.state
    }
}

/// How a grant attempt sequence ended without tokens.
enum Outcome {
    /// The server refused the grant (`error`, `error_description`).
    Refused(String, String),
    /// Anything else: give up this renewal with this error.
    Failed(AuthError),
}

impl TokenManager {
    /// One renewal, under the cross-process lock.
    pub(super) async fn renew(&self) -> Result<AccessToken, AuthError> {
        let (file, _lock) = match &self.shared {
            Some(shared) => match shared.lock().await {
                Ok(guard) => (Some(shared), Some(guard)),
                Err(e) => {
                    // E.g. the runtime directory was removed at logout under a running mount:
                    // carry on as a lone process rather than stop serving tokens.
                    tracing::warn!("{e}; renewing without the shared token cache this time");
                    (None, None)
                }
            },
            None => (None, None),
        };
        let mut disk = Disk {
            state: file.and_then(|f| f.read()).unwrap_or_default(),
            file,
        };
        self.forget_rejected_in_file(&mut disk);
        if let Some(token) = self.merge_disk(&disk) {
            return Ok(token);
        }
        if let Some(refresh) = self.usable_refresh() {
            tracing::debug!("renewing by refresh");
            match self.refresh(&refresh).await {
                Ok(granted) => return Ok(self.store(granted, &mut disk, false)),
                Err(Outcome::Refused(error, description)) => {
                    tracing::debug!(
                        "refresh refused ({error}: {description}); logging in with password and TOTP"
                    );
                    if let Some(t) = self.lock_state().tokens.as_mut() {
                        t.refresh = None;
                    }
                    // Nor may another process (or this one's next renewal) try it again.
                    if disk.refresh_token.as_deref() == Some(refresh.expose()) {
                        disk.refresh_token = None;
                        disk.refresh_expires_at = None;
                        disk.save();
                    }
                }
                Err(Outcome::Failed(e)) => return Err(e),
            }
        }
        if let Some(e) = self.refused_elsewhere(&disk) {
            self.lock_state().refused = Some(e.clone());
            return Err(e);
        }
        match self.password_login(&mut disk).await {
            Ok(granted) => Ok(self.store(granted, &mut disk, true)),
            Err(e) => {
                if let AuthError::Refused { reason, .. } = &e {
                    self.lock_state().refused = Some(e.clone());
                    disk.refusal = Some(Refusal {
                        fingerprint: self.fingerprint.clone(),
                        at: to_millis(self.clock.now()),
                        reason: reason.clone(),
                    });
                    disk.save();
                }
                Err(e)
            }
        }
    }

    /// A server rejected the token the shared file holds: blank it there, so that no other
    /// process adopts it while this one renews.
    fn forget_rejected_in_file(&self, disk: &mut Disk<'_>) {
        let rejected = self.lock_state().rejected.clone();
        let held_rejected = match (&disk.access_token, rejected) {
            (Some(value), Some(rejected)) => sha256_hex(&[value]) == rejected,
            _ => false,
        };
        if held_rejected {
            disk.access_token = None;
            disk.access_expires_at = None;
            disk.save();
        }
    }

    /// A refusal of these very credentials recorded by another process less than
    /// [`REFUSAL_MEMORY`] ago. Only password logins heed it: adopting or refreshing tokens
    /// cannot lock an account.
    fn refused_elsewhere(&self, disk: &StateFile) -> Option<AuthError> {
        let refusal = disk.refusal.as_ref()?;
        if refusal.fingerprint != self.fingerprint {
            return None;
        }
        let age = self
            .clock
            .now()
            .duration_since(from_millis(refusal.at))
            .unwrap_or_default();
        (age < REFUSAL_MEMORY).then(|| AuthError::Refused {
            server: self.server.clone(),
            reason: format!(
                "{} (another process was refused {} s ago with these same credentials; no new attempt for {} minutes, or until the credentials change)",
                refusal.reason,
                age.as_secs(),
                REFUSAL_MEMORY.as_secs() / 60
            ),
        })
    }

    /// Folds in what the shared file knows: the last TOTP step used, and tokens at least as new
    /// as ours (another process may have renewed, or rotated the refresh token). Returns the
    /// file's access token when it is fresh.
    fn merge_disk(&self, disk: &StateFile) -> Option<AccessToken> {
        let now = self.clock.now();
        let mut st = self.lock_state();
        if let Some(step) = disk.last_totp_step {
            st.last_step = st.last_step.max(Some(step));
        }
        let obtained_at = disk.obtained_at.map(from_millis)?;
        if st.invalidated_at.is_some_and(|t| obtained_at <= t) {
            return None;
        }
        if st
            .tokens
            .as_ref()
            .is_some_and(|t| t.obtained_at > obtained_at)
        {
            return None;
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
        fresh
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

    /// Keeps new tokens in memory and in the shared file. After a password login (which proves
    /// the credentials good) a recorded refusal of these credentials is cleared; a refresh
    /// proves nothing about them and leaves it.
    fn store(&self, granted: Granted, disk: &mut Disk<'_>, by_password: bool) -> AccessToken {
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
        if by_password
            && disk
                .refusal
                .as_ref()
                .is_some_and(|r| r.fingerprint == self.fingerprint)
        {
            disk.refusal = None;
        }
        disk.save();
        access
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
    async fn password_login(&self, disk: &mut Disk<'_>) -> Result<Granted, AuthError> {
        let probe = {
            let st = self.lock_state();
            st.offset.is_none() && !st.probed
        };
        if probe {
            // First login of this process and no answer seen yet: learn the server's clock
            // before choosing a step, so that a skewed local clock does not burn the attempt.
            self.probe_clock().await;
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
                disk.save();
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

    /// Measures the server clock's offset from a `Date` header (see [`endpoint::probe_date`]).
    async fn probe_clock(&self) {
        self.lock_state().probed = true;
        if let Some(o) =
            endpoint::probe_date(&self.client, &self.token_url, self.clock.as_ref()).await
        {
            tracing::debug!(offset_ms = o.as_millis(), "server clock probed");
            self.lock_state().offset = Some(o);
        }
    }

    /// The current TOTP step (server time) if no process used it yet, else waits for the step
    /// after the last one used. Marks the step as used.
    ///
    /// A last step more than one ahead of the current one cannot have been accepted by a server
    /// whose clock reads the current step (Keycloak accepts one step either side). Either the
    /// offset is stale (the local clock jumped) or the record is bogus; rather than wait for
    /// minutes or hours, the server clock is probed again, and if the record is still ahead it
    /// is dropped: the codes of the steps around the server's time were then never sent.
    async fn next_step(&self) -> u64 {
        let mut reprobed = false;
        loop {
            let (wait, step, last) = {
                let mut st = self.lock_state();
                let server_now = st.server_now(self.clock.now());
                let step = totp::step_at(server_now);
                match st.last_step {
                    Some(last) if step <= last => {
                        let wait = totp::step_start(last + 1)
                            .duration_since(server_now)
                            .unwrap_or_default()
                            .max(Duration::from_millis(1));
                        (wait, step, last)
                    }
                    _ => {
                        st.last_step = Some(step);
                        return step;
                    }
                }
            };
            if last <= step + 1 {
                tracing::debug!("TOTP step {last} already used; waiting {wait:?} for the next one");
                self.clock.sleep(wait).await;
            } else if !reprobed {
                reprobed = true;
                self.probe_clock().await;
            } else {
                tracing::warn!(
                    "the last TOTP step recorded ({last}) is ahead of the server's clock (step {step}); ignoring the record"
                );
                self.lock_state().last_step = None;
            }
        }
    }

    fn refused(&self, error: &str, description: &str) -> AuthError {
        let hint = match (error, description) {
            ("invalid_grant", "Invalid user credentials") => {
                ": wrong user name, password or TOTP secret, a clock more than 30 s off, or an account locked after too many failures (log in on the web site to check)"
            }
            (_, d) if d.contains("not fully set up") => {
                ": the account has actions pending (terms to accept, password to change); log in on the web site once to finish them"
            }
            (_, d) if d.contains("disabled") => ": ask the provider's support to enable it",
            ("invalid_client" | "unauthorized_client", _) => ": check the client id",
            _ => "",
        };
        let reason = match description {
            "" => format!("{error}{hint}"),
            _ => format!("{description} ({error}){hint}"),
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
