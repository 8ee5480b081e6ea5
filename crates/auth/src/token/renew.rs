//! One renewal, run by one caller at a time under the cross-process lock: what the shared
//! file knows, then the refresh token, then password + TOTP; and where the result is kept.
//!
//! The rules that protect the account live here: a TOTP step is never used twice (by this
//! process or, through the shared file, any other), two password attempts are never closer
//! than [`PASSWORD_SPACING`] (Keycloak's quick-login check locks an account for a minute after
//! two failures within a second), a refused login gets exactly one more attempt at the next
//! step, and a refusal latches and is published to the other processes. So is the rule of
//! sessions: a session near its maximum age is replaced by a password login early, while the
//! held token still serves readers, rather than once refresh is refused and readers wait.

pub(super) mod probe;

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use super::cache::{from_millis, new_salt, sha256_hex, to_millis, Refusal, StateFile};
use super::endpoint::{self, Failure, Grant, Granted, TOO_MANY_SESSIONS_ERROR};
use super::retry::Backoff;
use super::store::{SharedStore, StoreLock};
use super::{is_fresh, session_margin, Inner, Tokens};
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

/// The least time between two password grants, by any process of the user. Keycloak's
/// quick-login check (when brute-force protection is on) locks an account for 60 s after two
/// failures within 1 s (docs/protocol.md, "Identity"); 5 s keeps well clear of it and still
/// lets a refused login's second attempt end within seconds.
pub const PASSWORD_SPACING: Duration = Duration::from_secs(5);

/// A code of the next TOTP step may be sent at once (Keycloak accepts one step ahead) only
/// this far into the current step: near the start of a step a server whose clock is a second
/// behind ours would still be in the previous step, and the next one would be two ahead.
const AHEAD_GUARD: Duration = Duration::from_secs(3);

/// Past this difference between the server's clock and ours, a warning says so once.
const OFFSET_WARN: Duration = Duration::from_secs(30);

/// The server clock's offset is bounded to this: a `Date` further off is not believed (a
/// broken proxy's header must not push TOTP steps, recorded for every process, hours into the
/// future). A quarter of an hour still covers a laptop whose clock drifted or sits in the wrong
/// zone setting by minutes (`eodata-mount doctor` is tested with a 10-minute skew), and keeps a
/// bogus step within 30 steps of the truth; past 30 s a warning asks to fix the clock.
const OFFSET_MAX: Duration = Duration::from_secs(15 * 60);

/// While the held token lives, a refresh retry never waits longer than half of what is left
/// of it, nor less than this: the refresh should land before the token dies.
const REFRESH_MIN_WAIT: Duration = Duration::from_millis(500);

/// The shared state as read at the start of a renewal, and the store to save it to (`None`
/// without a shared cache, or when its lock could not be taken: then nothing is written).
pub(super) struct Disk<'a> {
    state: StateFile,
    file: Option<&'a dyn SharedStore>,
}

impl Disk<'_> {
    /// Writes the state. A failure is logged, not returned: the tokens are good, and the worst
    /// outcome is that another process logs in by itself.
    async fn save(&self) {
        if let Some(file) = self.file {
            if let Err(e) = file.write(self.state.encode()).await {
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

impl Inner {
    /// The shared state file read under its cross-process lock (held while the guard lives);
    /// without a shared file, or when its lock cannot be had (e.g. the runtime directory was
    /// removed at logout under a running mount), an empty state: this process carries on as
    /// a lone one rather than stop serving tokens.
    async fn open_shared(&self) -> (Disk<'_>, Option<StoreLock>) {
        let (file, lock) = match &self.shared {
            Some(shared) => match shared.lock().await {
                Ok(guard) => (Some(shared.as_ref()), Some(guard)),
                Err(e) => {
                    tracing::warn!("{e}; going on without the shared token cache this time");
                    (None, None)
                }
            },
            None => (None, None),
        };
        let state = match file {
            Some(f) => f.read().await.and_then(|b| StateFile::parse(&b)),
            None => None,
        };
        let disk = Disk {
            state: state.unwrap_or_default(),
            file,
        };
        (disk, lock)
    }

    /// Lets go of the shared store's lock, waiting until it is released.
    async fn close_shared(&self, lock: Option<StoreLock>) {
        if let (Some(store), Some(lock)) = (&self.shared, lock) {
            store.unlock(lock).await;
        }
    }

    /// Runs `f` on the shared state under the cross-process lock, then lets the lock go (the
    /// state is written by `f` where it changes it, before the lock is released).
    pub(super) async fn with_shared<R>(&self, f: impl AsyncFnOnce(&mut Disk<'_>) -> R) -> R {
        let (mut disk, lock) = self.open_shared().await;
        let out = f(&mut disk).await;
        drop(disk);
        self.close_shared(lock).await;
        out
    }

    /// One renewal, under the cross-process lock.
    pub(super) async fn renew(&self) -> Result<AccessToken, AuthError> {
        self.with_shared(async |disk| self.renew_locked(disk).await)
            .await
    }

    async fn renew_locked(&self, disk: &mut Disk<'_>) -> Result<AccessToken, AuthError> {
        if disk.salt.is_none() {
            disk.salt = Some(new_salt());
        }
        self.forget_rejected_in_file(disk).await;
        if let Some(token) = self.merge_disk(disk) {
            return Ok(token);
        }
        let ending = self.session_ending();
        if let Some(left) = ending {
            tracing::info!("session ends in {}s; logging in again", left.as_secs());
        } else if let Some(refresh) = self.usable_refresh() {
            tracing::debug!("renewing by refresh");
            match self.refresh(&refresh).await {
                Ok(granted) => return Ok(self.store(granted, disk, false).await),
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
                        disk.save().await;
                    }
                }
                Err(Outcome::Failed(e)) => return Err(e),
            }
        }
        if let Some(e) = self.refused_elsewhere(disk) {
            self.lock_state().refused = Some(e.clone());
            return Err(e);
        }
        match self.password_login(disk, ending.is_some()).await {
            Ok(granted) => Ok(self.store(granted, disk, true).await),
            Err(e) => {
                if let AuthError::Refused { reason, .. } = &e {
                    // The caller reports the error itself (once); this records it for `-v`.
                    tracing::info!("{e}");
                    self.lock_state().refused = Some(e.clone());
                    disk.refusal = Some(Refusal {
                        fingerprint: self.fingerprint(disk),
                        at: to_millis(self.clock.now()),
                        reason: reason.clone(),
                    });
                    disk.save().await;
                }
                Err(e)
            }
        }
    }

    /// The salted fingerprint of this manager's credentials (user, client id and secret,
    /// password, TOTP secret) under the file's salt: see the `cache` module.
    fn fingerprint(&self, disk: &StateFile) -> String {
        let user = self.user.to_lowercase();
        sha256_hex(&[
            "eodata-auth credentials v2",
            disk.salt.as_deref().unwrap_or(""),
            &user,
            &self.client_id,
            self.client_secret.as_ref().map_or("", |s| s.expose()),
            self.password.expose(),
            self.totp_normalised.expose(),
        ])
    }

    /// When the held session nears its end: how long is left of it. The session's end is
    /// known from its refresh token, which the server caps by the session's maximum age.
    fn session_ending(&self) -> Option<Duration> {
        let now = self.clock.now();
        let st = self.lock_state();
        let t = st.tokens.as_ref()?;
        t.refresh.as_ref()?;
        let (ends, lifetime) = (t.refresh_expires_at?, t.session_lifetime?);
        let left = ends.duration_since(now).unwrap_or_default();
        (left <= session_margin(lifetime)).then_some(left)
    }

    /// A server rejected the token the shared file holds: blank it there, so that no other
    /// process adopts it while this one renews.
    async fn forget_rejected_in_file(&self, disk: &mut Disk<'_>) {
        let rejected = self.lock_state().rejected.clone();
        let held_rejected = match (&disk.access_token, rejected) {
            (Some(value), Some(rejected)) => sha256_hex(&[value]) == rejected,
            _ => false,
        };
        if held_rejected {
            disk.access_token = None;
            disk.access_expires_at = None;
            disk.save().await;
        }
    }

    /// A refusal of these very credentials recorded by another process less than
    /// [`REFUSAL_MEMORY`] ago. Only password logins heed it: adopting or refreshing tokens
    /// cannot lock an account.
    fn refused_elsewhere(&self, disk: &StateFile) -> Option<AuthError> {
        let refusal = disk.refusal.as_ref()?;
        if refusal.fingerprint != self.fingerprint(disk) {
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
        if let Some(at) = disk.last_password_at.map(from_millis) {
            st.last_password_at = st.last_password_at.max(Some(at));
        }
        let obtained_at = disk.obtained_at.map(from_millis)?;
        if disk.credentials.as_deref() != Some(self.fingerprint(disk).as_str()) {
            // Obtained with other credentials (or by an older version): if the password was
            // changed since, adopting them would hide it until they expire.
            tracing::debug!("the cached tokens came from other credentials; not using them");
            return None;
        }
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
            session_lifetime: disk.session_lifetime_ms.map(Duration::from_millis),
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
    async fn store(&self, granted: Granted, disk: &mut Disk<'_>, by_password: bool) -> AccessToken {
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
            // A password login opens a session: its refresh lifetime is the session's length.
            let session_lifetime = if by_password {
                refresh_expires_at.and_then(|e| e.duration_since(granted.obtained_at).ok())
            } else {
                st.tokens.as_ref().and_then(|t| t.session_lifetime)
            };
            let tokens = Tokens {
                access: Some(access.clone()),
                obtained_at: granted.obtained_at,
                refresh,
                refresh_expires_at,
                session_lifetime,
            };
            st.tokens = Some(tokens.clone());
            disk.last_totp_step = disk.last_totp_step.max(st.last_step);
            tokens
        };
        disk.access_token = Some(access.value.expose().to_owned());
        disk.obtained_at = Some(to_millis(tokens.obtained_at));
        disk.access_expires_at = Some(to_millis(access.expires_at));
        disk.refresh_token = tokens.refresh.as_ref().map(|r| r.expose().to_owned());
        disk.refresh_expires_at = tokens.refresh_expires_at.map(to_millis);
        disk.session_lifetime_ms = tokens
            .session_lifetime
            .map(|d| d.as_millis().min(u64::MAX as u128) as u64);
        let fingerprint = self.fingerprint(disk);
        if by_password
            && disk
                .refusal
                .as_ref()
                .is_some_and(|r| r.fingerprint == fingerprint)
        {
            disk.refusal = None;
        }
        disk.credentials = Some(fingerprint);
        disk.save().await;
        access
    }

    /// One request: send, learn the server's clock from `Date`, read the answer.
    async fn exchange(&self, grant: Grant<'_>) -> Result<Granted, Failure> {
        let (answer, offset) = self.send_grant(grant).await?;
        endpoint::classify(&answer, offset)
    }

    /// Sends one grant and learns the server's clock from the answer's `Date`: the raw answer,
    /// and the offset known now.
    pub(super) async fn send_grant(
        &self,
        grant: Grant<'_>,
    ) -> Result<(endpoint::RawAnswer, Option<ServerOffset>), Failure> {
        let answer = endpoint::send(
            &self.client,
            &self.token_url,
            grant.form(&self.client_id, self.client_secret.as_ref()),
            self.clock.as_ref(),
        )
        .await?;
        if let Some(date) = &answer.date {
            if let Some(o) = ServerOffset::estimate(date, answer.sent, answer.received) {
                self.learn_offset(o);
            }
        }
        let offset = self.lock_state().offset;
        Ok((answer, offset))
    }

    /// Takes a measured server clock offset, bounded to [`OFFSET_MAX`]; warns once when it is
    /// past [`OFFSET_WARN`].
    fn learn_offset(&self, measured: ServerOffset) {
        let bounded = measured.clamp(OFFSET_MAX);
        let mut st = self.lock_state();
        let off = Duration::from_millis(measured.as_millis().unsigned_abs());
        if off > OFFSET_WARN && !st.offset_warned {
            st.offset_warned = true;
            let (secs, way) = (
                off.as_secs(),
                if measured.as_millis() > 0 {
                    "behind"
                } else {
                    "ahead of"
                },
            );
            if bounded != measured {
                tracing::warn!(
                    "this machine's clock is {secs} s {way} the token server's (as its Date header says); more than {} s is not believed: fix the clock (NTP) or TOTP codes will be refused",
                    OFFSET_MAX.as_secs()
                );
            } else {
                tracing::warn!(
                    "this machine's clock is {secs} s {way} the token server's; TOTP codes follow the server's clock, but fix this one (NTP)"
                );
            }
        }
        if st.offset != Some(bounded) && bounded != ServerOffset::ZERO {
            tracing::debug!(
                offset_ms = bounded.as_millis(),
                "server clock differs from ours; TOTP steps and expiries follow the server"
            );
        }
        st.offset = Some(bounded);
    }

    /// The refresh grant, retried on transient failures for as long as the refresh policy
    /// allows, and faster while the held token is about to expire.
    async fn refresh(&self, refresh_token: &Secret) -> Result<Granted, Outcome> {
        let mut backoff = Backoff::new(&self.refresh_retry, self.clock.now());
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
                        let now = self.clock.now();
                        let held_left = self
                            .lock_state()
                            .unexpired_access(now)
                            .and_then(|t| t.expires_at.duration_since(now).ok());
                        let wait = match held_left {
                            Some(left) => wait.min((left / 2).max(REFRESH_MIN_WAIT)),
                            None => wait,
                        };
                        tracing::debug!("token refresh failed ({reason}); retrying in {wait:?}");
                        self.clock.sleep(wait).await;
                    }
                    None => return Err(Outcome::Failed(self.unavailable(reason))),
                },
            }
        }
    }

    /// Password and TOTP login: at most [`MAX_PASSWORD_ATTEMPTS`] refused attempts, each with a
    /// fresh step, never two within [`PASSWORD_SPACING`]; transient failures retried within the
    /// [`super::RetryPolicy`]. `early`: the session is about to end and the login must land before it
    /// does, so the next step's code may be used at once.
    async fn password_login(&self, disk: &mut Disk<'_>, early: bool) -> Result<Granted, AuthError> {
        self.probe_clock_before_first_login().await;
        let mut backoff = Backoff::new(&self.retry, self.clock.now());
        let mut refusals = 0;
        // A step whose request certainly never reached the server may be sent again.
        let mut unspent: Option<u64> = None;
        loop {
            self.space_password_attempt(disk).await;
            let step = self
                .password_step(unspent.take(), early || refusals > 0)
                .await;
            self.record_password_attempt(disk, step).await;
            let code = self.password_code(step);
            let grant = Grant::Password {
                user: &self.user,
                password: &self.password,
                code: code.as_ref(),
            };
            match self.exchange(grant).await {
                Ok(granted) => {
                    tracing::debug!("logged in");
                    return Ok(granted);
                }
                Err(Failure::Refused { error, description }) => {
                    refusals += 1;
                    if self.refusal_is_final(&error, &description)
                        || refusals >= MAX_PASSWORD_ATTEMPTS
                    {
                        return Err(self.refused(&error, &description));
                    }
                    tracing::info!(
                        "password login refused ({error}: {description}); one more attempt in {} s with the next TOTP code",
                        PASSWORD_SPACING.as_secs()
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
                            unspent = step;
                        }
                        self.clock.sleep(wait).await;
                    }
                    None => return Err(self.unavailable(reason)),
                },
            }
        }
    }

    /// First login of this process and no answer seen yet: learns the server's clock before a
    /// step is chosen, so that a skewed local clock does not burn the attempt.
    async fn probe_clock_before_first_login(&self) {
        let probe = {
            let st = self.lock_state();
            self.totp.is_some() && st.offset.is_none() && !st.probed
        };
        if probe {
            self.probe_clock().await;
        }
    }

    /// The TOTP step of the next attempt (`None` without two-factor login): `unspent` when it
    /// is still the current step (its request never reached the server), else a step never
    /// used; `fresh`: the next one may be taken at once.
    async fn password_step(&self, unspent: Option<u64>, fresh: bool) -> Option<u64> {
        self.totp.as_ref()?;
        let current = {
            let st = self.lock_state();
            totp::step_at(st.server_now(self.clock.now()))
        };
        Some(match unspent {
            Some(step) if step == current => step,
            _ => self.next_step(fresh).await,
        })
    }

    /// Records the attempt before it is sent: once sent, the code may be spent even if the
    /// answer is lost, and no other process may use this step. A record found bogus (ahead of
    /// the server's clock) is corrected here too.
    async fn record_password_attempt(&self, disk: &mut Disk<'_>, step: Option<u64>) {
        let now = self.clock.now();
        self.lock_state().last_password_at = Some(now);
        disk.last_password_at = Some(to_millis(now));
        if step.is_some() {
            disk.last_totp_step = step;
        }
        disk.save().await;
    }

    /// The code of `step`, when the account has two-factor login.
    fn password_code(&self, step: Option<u64>) -> Option<Secret> {
        match (&self.totp, step) {
            (Some(totp), Some(step)) => {
                tracing::debug!(user = %self.user, "password login at TOTP step {step}");
                Some(totp.code(step))
            }
            _ => {
                tracing::debug!(user = %self.user, "password login (no two-factor)");
                None
            }
        }
    }

    /// Whether a refused password login must not be tried again with the next step. Without
    /// two-factor login there is no timing to miss: a refusal is final.
    fn refusal_is_final(&self, error: &str, description: &str) -> bool {
        error != "invalid_grant"
            || self.totp.is_none()
            || description.contains("disabled")
            || description.contains("not fully set up")
    }

    /// Waits until [`PASSWORD_SPACING`] has passed since the last password grant of any
    /// process (as far as this one knows).
    async fn space_password_attempt(&self, disk: &StateFile) {
        let last = {
            let st = self.lock_state();
            st.last_password_at
                .max(disk.last_password_at.map(from_millis))
        };
        let Some(last) = last else { return };
        let since = self.clock.now().duration_since(last).unwrap_or_default();
        // A record in the future (a clock stepped back) waits no longer than the spacing.
        if since < PASSWORD_SPACING {
            let wait = PASSWORD_SPACING - since;
            tracing::debug!("waiting {wait:?} before the next password attempt");
            self.clock.sleep(wait).await;
        }
    }

    /// Measures the server clock's offset from a `Date` header (see [`endpoint::probe_date`]).
    async fn probe_clock(&self) {
        self.lock_state().probed = true;
        if let Some(o) =
            endpoint::probe_date(&self.client, &self.token_url, self.clock.as_ref()).await
        {
            tracing::debug!(offset_ms = o.as_millis(), "server clock probed");
            self.learn_offset(o);
        }
    }

    /// The current TOTP step (server time) if no process used it yet, else waits for the step
    /// after the last one used; with `ahead`, the next step's code is used at once instead
    /// (Keycloak accepts one step ahead), unless the current step has only just begun
    /// ([`AHEAD_GUARD`]). Marks the step as used.
    ///
    /// A last step more than one ahead of the current one cannot have been accepted by a server
    /// whose clock reads the current step (Keycloak accepts one step either side). Either the
    /// offset is stale (the local clock jumped) or the record is bogus; rather than wait for
    /// minutes or hours, the server clock is probed again, and if the record is still ahead it
    /// is dropped: the codes of the steps around the server's time were then never sent.
    async fn next_step(&self, ahead: bool) -> u64 {
        let mut reprobed = false;
        loop {
            let (wait, step, last) = {
                let mut st = self.lock_state();
                let server_now = st.server_now(self.clock.now());
                let step = totp::step_at(server_now);
                match st.last_step {
                    Some(last) if ahead && last == step => {
                        let into = server_now
                            .duration_since(totp::step_start(step))
                            .unwrap_or_default();
                        if into >= AHEAD_GUARD {
                            st.last_step = Some(step + 1);
                            return step + 1;
                        }
                        (AHEAD_GUARD - into, step, last)
                    }
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
            ("invalid_client", _) => {
                return AuthError::Refused {
                    server: self.server.clone(),
                    reason: format!(
                        "client id/secret refused by the realm ({error}{}): check client_id and client_secret in the [endpoints] section of secrets.conf (or EODATA_CLIENT_SECRET)",
                        if description.is_empty() { String::new() } else { format!(": {description}") }
                    ),
                }
            }
            (TOO_MANY_SESSIONS_ERROR, _) => {
                return AuthError::Refused {
                    server: self.server.clone(),
                    reason: "too many sessions (the account's limit of active sessions); log out other sessions or wait".into(),
                }
            }
            ("unauthorized_client", _) => ": check the client id",
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
