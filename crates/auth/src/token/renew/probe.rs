//! The login as `eodata-mount doctor` asks for it: one attempt, and what the server said.
//!
//! A mount's renewal ([`TokenManager::token`]) may try a refused login once more with the next
//! TOTP step, waits out outages, and reports lifetimes only as local expiry times. A diagnosis
//! wants the opposite: the shared cached token when it is still good (no new server session),
//! else exactly one password + TOTP login (a refusal is final and shown in Keycloak's own
//! words), then exactly one refresh; and the lifetimes as the server wrote them
//! (`expires_in`, `refresh_expires_in`). Both still follow the account's rules: the TOTP step is
//! never one another process used, the step is recorded before it is sent, a refusal is
//! published to the other processes, and the tokens obtained are kept for them.

use std::time::Duration;

use serde::Deserialize;

use super::super::endpoint::{self, Failure, Grant};
use super::super::{Inner, TokenManager};
use super::Disk;
use crate::clock::ServerOffset;
use crate::{AccessToken, AuthError, Secret};

/// Where the token of a [`LoginProbe`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginSource {
    /// A still-valid token in the shared cache, obtained by another process (or an earlier
    /// run): no request was sent.
    SharedCache,
    /// One password + TOTP login made now.
    Password,
}

/// What one diagnostic login learned. No secret is printed by its `Debug`.
#[derive(Debug, Clone)]
pub struct LoginProbe {
    pub source: LoginSource,
    /// The access token, for the caller's requests and for reading its public claims.
    pub access: AccessToken,
    /// `expires_in` as the server wrote it (seconds); `None` for a cached token.
    pub expires_in: Option<f64>,
    /// `refresh_expires_in` as the server wrote it (seconds; Keycloak's 0 means no expiry).
    pub refresh_expires_in: Option<f64>,
    /// What is left of the refresh token's life, if one is held and its expiry is known.
    pub refresh_left: Option<Duration>,
    /// The TOTP step whose code was sent, for a password login.
    pub totp_step: Option<u64>,
    /// The server clock's offset as measured on the way.
    pub server_offset: Option<ServerOffset>,
}

/// What one diagnostic refresh learned.
#[derive(Debug, Clone)]
pub struct RefreshProbe {
    pub access: AccessToken,
    pub expires_in: Option<f64>,
    pub refresh_expires_in: Option<f64>,
    /// Whether the answer carried a new refresh token (Keycloak rotates them by default).
    pub new_refresh_token: bool,
}

/// The lifetime fields of a successful answer, read apart from the tokens themselves.
#[derive(Deserialize)]
struct Lifetimes {
    #[serde(default)]
    expires_in: Option<f64>,
    #[serde(default)]
    refresh_expires_in: Option<f64>,
    #[serde(default)]
    refresh_token: Option<String>,
}

impl Inner {
    /// The shared cached token when it is still fresh, else one password + TOTP login. A
    /// refusal is returned as [`AuthError::Refused`] with the server's `error_description` and
    /// `error`, and counts as the only attempt; transient failures are not retried either (a
    /// diagnosis reports them). A refusal another process recorded for these credentials within
    /// the last minutes is returned without any request.
    pub(crate) async fn probe_login(&self) -> Result<LoginProbe, AuthError> {
        self.with_shared(async |disk| self.probe_login_locked(disk).await)
            .await
    }

    async fn probe_login_locked(&self, disk: &mut Disk<'_>) -> Result<LoginProbe, AuthError> {
        if let Some(access) = self.merge_disk(disk) {
            let refresh_left = self.lock_state().tokens.as_ref().and_then(|t| {
                t.refresh.as_ref()?;
                t.refresh_expires_at?.duration_since(self.clock.now()).ok()
            });
            return Ok(LoginProbe {
                source: LoginSource::SharedCache,
                access,
                expires_in: None,
                refresh_expires_in: None,
                refresh_left,
                totp_step: None,
                server_offset: self.lock_state().offset,
            });
        }
        if let Some(e) = self.refused_elsewhere(disk) {
            return Err(e);
        }
        // Always measure the server's clock first: the diagnosis reports it, and a skewed
        // local clock must not spend the one attempt on a code for the wrong step.
        self.probe_clock().await;
        let step = match &self.totp {
            Some(_) => Some(self.next_step(false).await),
            None => None,
        };
        if step.is_some() && disk.last_totp_step < step {
            disk.last_totp_step = step;
        }
        let now = self.clock.now();
        self.lock_state().last_password_at = Some(now);
        disk.last_password_at = Some(super::super::cache::to_millis(now));
        disk.save().await;
        let code = match (&self.totp, step) {
            (Some(totp), Some(step)) => Some(totp.code(step)),
            _ => None,
        };
        let grant = Grant::Password {
            user: &self.user,
            password: &self.password,
            code: code.as_ref(),
        };
        match self.probe_exchange(grant).await {
            Ok((granted, lifetimes)) => {
                let refresh_left = granted
                    .refresh_expires_at
                    .and_then(|t| t.duration_since(self.clock.now()).ok());
                let access = self.store(granted, disk, true).await;
                Ok(LoginProbe {
                    source: LoginSource::Password,
                    access,
                    expires_in: lifetimes.expires_in,
                    refresh_expires_in: lifetimes.refresh_expires_in,
                    refresh_left,
                    totp_step: step,
                    server_offset: self.lock_state().offset,
                })
            }
            Err(Failure::Refused { error, description }) => {
                let e = self.refused(&error, &description);
                if let AuthError::Refused { reason, .. } = &e {
                    self.lock_state().refused = Some(e.clone());
                    disk.refusal = Some(super::super::cache::Refusal {
                        fingerprint: self.fingerprint(disk),
                        at: super::super::cache::to_millis(self.clock.now()),
                        reason: reason.clone(),
                    });
                    disk.save().await;
                }
                Err(e)
            }
            Err(Failure::Protocol(reason)) => Err(self.protocol(reason)),
            Err(Failure::Transient { reason, .. }) => Err(self.unavailable(reason)),
        }
    }

    /// One refresh grant with the refresh token held (after [`TokenManager::probe_login`]).
    /// Not retried; a refusal is returned in the server's words. The new tokens are kept.
    pub(crate) async fn probe_refresh(&self) -> Result<RefreshProbe, AuthError> {
        let Some(refresh) = self.usable_refresh() else {
            return Err(AuthError::Protocol {
                server: self.server.clone(),
                reason: "no usable refresh token is held (the login gave none, or it expired)"
                    .into(),
            });
        };
        self.with_shared(async |disk| self.probe_refresh_locked(&refresh, disk).await)
            .await
    }

    async fn probe_refresh_locked(
        &self,
        refresh: &Secret,
        disk: &mut Disk<'_>,
    ) -> Result<RefreshProbe, AuthError> {
        match self
            .probe_exchange(Grant::Refresh {
                refresh_token: refresh,
            })
            .await
        {
            Ok((granted, lifetimes)) => {
                let new_refresh_token = lifetimes.refresh_token.is_some_and(|t| !t.is_empty());
                let access = self.store(granted, disk, false).await;
                Ok(RefreshProbe {
                    access,
                    expires_in: lifetimes.expires_in,
                    refresh_expires_in: lifetimes.refresh_expires_in,
                    new_refresh_token,
                })
            }
            Err(Failure::Refused { error, description }) => {
                let reason = match description.as_str() {
                    "" => error,
                    d => format!("{d} ({error})"),
                };
                Err(AuthError::Refused {
                    server: self.server.clone(),
                    reason: format!("refresh refused: {reason}"),
                })
            }
            Err(Failure::Protocol(reason)) => Err(self.protocol(reason)),
            Err(Failure::Transient { reason, .. }) => Err(self.unavailable(reason)),
        }
    }

    /// One request, its `Date` folded into the server offset, and the lifetimes as written.
    async fn probe_exchange(
        &self,
        grant: Grant<'_>,
    ) -> Result<(super::super::endpoint::Granted, Lifetimes), Failure> {
        let (answer, offset) = self.send_grant(grant).await?;
        let granted = endpoint::classify(&answer, offset)?;
        let lifetimes = serde_json::from_slice(&answer.body).unwrap_or(Lifetimes {
            expires_in: None,
            refresh_expires_in: None,
            refresh_token: None,
        });
        Ok((granted, lifetimes))
    }
}

impl TokenManager {
    /// The shared cached token when it is still fresh, else one password + TOTP login, as
    /// `eodata-mount doctor` wants it (see the module doc).
    pub async fn probe_login(&self) -> Result<LoginProbe, AuthError> {
        self.inner.probe_login().await
    }

    /// One refresh grant, not retried, its refusal in the server's words.
    pub async fn probe_refresh(&self) -> Result<RefreshProbe, AuthError> {
        self.inner.probe_refresh().await
    }
}

/// The claims of a JWT's payload that say nothing secret and nothing about the person: who
/// issued it and for whom (`iss`, `aud`, `azp`), its kind and scope (`typ`, `scope`), and its
/// times (`iat`, `exp`, `auth_time`), plus whether it names a session (`sid` or
/// `session_state`, the value left out). The signature is not checked.
pub fn public_claims(token: &Secret) -> Option<serde_json::Map<String, serde_json::Value>> {
    let mut parts = token.expose().split('.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    let json = endpoint::base64url_decode(payload)?;
    let claims: serde_json::Value = serde_json::from_slice(&json).ok()?;
    let claims = claims.as_object()?;
    let mut out = serde_json::Map::new();
    for key in [
        "iss",
        "aud",
        "azp",
        "typ",
        "scope",
        "iat",
        "exp",
        "auth_time",
    ] {
        if let Some(v) = claims.get(key) {
            out.insert(key.to_string(), v.clone());
        }
    }
    let session = claims.get("sid").or_else(|| claims.get("session_state"));
    out.insert(
        "session".into(),
        serde_json::Value::Bool(session.is_some_and(|s| !s.is_null())),
    );
    Some(out)
}
