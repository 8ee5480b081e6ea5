//! The realm the fake Keycloak keeps: accounts with real TOTP (HMAC-SHA1, 6 digits, 30 s,
//! window 1), the codes each account used in the last 90 s (a reused code is refused like a
//! wrong one), brute-force lockout, sessions, and the table of tokens it issued (the zipper asks
//! it whether a token is good). [`Realm::grant`] decides a token request; `keycloak` turns the
//! decision into HTTP. A leaf: it knows nothing of the server or the shared state, which holds it.
//!
//! Answers follow docs/protocol.md: wrong user/password/code and locks all give 401
//! `invalid_grant` "Invalid user credentials"; a disabled account 400 "Account disabled"; refresh
//! failures 400 `invalid_grant` "Invalid refresh token" / "Token is not active" / "Session not
//! active".
//!
//! Sessions as Keycloak keeps them (docs/protocol.md, "Identity"): each password login opens
//! one; its refresh tokens work until the session's maximum age (`session_max`), and tokens
//! issued near the end are capped by it (`exp`, `refresh_expires_in`). A cap on the sessions
//! a user may hold either refuses a new login with a 403 HTML page or drops the oldest session
//! ([`SessionLimit`]). Brute-force protection, when on, is checked before "disabled", and two
//! failures within a second lock the account for a minute (Keycloak's quick-login rule).
//! [`TokenFault`] makes the endpoint answer an error status (503, 429, an HTML 403) for a while.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hyper::http::StatusCode;
use serde_json::{json, Value};
use totp_rs::{Algorithm, Builder, Secret, Totp};

use crate::jwt;
use crate::{Config, User};

/// RFC 6238 / Keycloak default period.
pub(crate) const TOTP_PERIOD_SECS: u64 = 30;
/// Keycloak's default look-around: the previous, current and next step are accepted.
const TOTP_WINDOW_STEPS: u64 = 1;
/// Keycloak remembers used codes this long (`docs/protocol.md`, "Identity"); long enough to
/// cover the window.
const USED_CODE_MEMORY: Duration = Duration::from_secs(90);
/// Expired tokens are kept this long, so a late use is told "expired", not "unknown".
const EXPIRED_TOKEN_MEMORY: Duration = Duration::from_secs(3600);
/// Past this many tokens the table drops the long-expired ones (a benchmark logs in often).
const TOKEN_TABLE_SOFT_CAP: usize = 10_000;

const INVALID_CREDENTIALS: &str = "Invalid user credentials";

/// Keycloak's quick-login check (realm default `quickLoginCheckMilliSeconds`): two failures
/// closer than this...
const QUICK_LOGIN_CHECK: Duration = Duration::from_millis(1000);
/// ...lock the account for this long (`minimumQuickLoginWaitSeconds`).
const QUICK_LOGIN_WAIT: Duration = Duration::from_secs(60);

/// The page Keycloak's session limiter renders when it denies a login (status 403).
const TOO_MANY_SESSIONS_PAGE: &str = "<!DOCTYPE html><html><head><title>Sign in</title></head><body><div id=\"kc-error-message\"><p class=\"instruction\">There are too many sessions</p></div></body></html>";

/// What a login over the session cap does (Keycloak's `UserSessionLimitsAuthenticator`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SessionLimit {
    /// The login is refused: 403 with an HTML error page.
    #[default]
    Deny,
    /// The oldest session is logged out (its refresh tokens answer "Session not active") and the
    /// login goes through.
    DropOldest,
}

/// A fault of the token endpoint: every POST answers `status` until `until` (or for good).
#[derive(Clone, Debug)]
pub struct TokenFault {
    /// 503, 429, 403...
    pub status: u16,
    /// Sent as `Retry-After` (seconds) when set.
    pub retry_after: Option<u64>,
    /// An HTML page (a proxy's or a WAF's) instead of a JSON error body.
    pub html: bool,
    /// When the fault ends; `None`: never.
    pub until: Option<Instant>,
}

impl TokenFault {
    /// `status` with a JSON body for `d` (`None`: until cleared).
    pub fn new(status: u16, d: Option<Duration>) -> TokenFault {
        TokenFault {
            status,
            retry_after: None,
            html: false,
            until: d.map(|d| Instant::now() + d),
        }
    }
}

/// One server session (a password login and the refreshes that follow it).
struct Session {
    username: String,
    started: Instant,
    /// Until when its latest refresh token works (idle timeout); the session max caps it.
    refresh_until: Instant,
    /// Logged out (dropped for the session cap).
    ended: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokenKind {
    Access,
    Refresh,
}

/// What the realm remembers about a token it issued (the token string is the key).
pub(crate) struct TokenRecord {
    pub jti: String,
    pub kind: TokenKind,
    pub username: String,
    pub sid: String,
    pub expires: Instant,
    pub revoked: bool,
}

struct Account {
    user: User,
    /// `None`: the account has no two-factor login; a password alone logs in.
    secret: Option<Totp>,
    failures: u32,
    locked: bool,
    /// A temporary lock (the quick-login rule) ends then.
    locked_until: Option<Instant>,
    last_failure: Option<Instant>,
    used_codes: Vec<(String, Instant)>,
}

impl Account {
    fn new(user: &User, secret: Option<Totp>) -> Account {
        Account {
            user: user.clone(),
            secret,
            failures: 0,
            locked: false,
            locked_until: None,
            last_failure: None,
            used_codes: Vec::new(),
        }
    }

    fn is_locked(&self, now: Instant) -> bool {
        self.locked || self.locked_until.is_some_and(|t| now < t)
    }
}

/// Users, sessions and issued tokens.
pub(crate) struct Realm {
    client_id: String,
    issuer: String,
    /// A confidential client: logins and refreshes must send it as `client_secret`.
    client_secret: Option<String>,
    access_lifetime: Duration,
    refresh_lifetime: Duration,
    /// A session's maximum age from its login (Keycloak's SSO Session Max); `None`: unlimited.
    session_max: Option<Duration>,
    /// Active sessions a user may hold, and what a login over it does.
    max_sessions: Option<(usize, SessionLimit)>,
    lockout_after: u32,
    /// Keyed by lower-cased username: Keycloak usernames are case-insensitive.
    accounts: HashMap<String, Account>,
    tokens: HashMap<String, TokenRecord>,
    /// Keyed by session id (`sid`).
    sessions: HashMap<String, Session>,
    fault: Option<TokenFault>,
}

/// The TOTP of an account; an empty secret means the account has no two-factor login.
fn account_totp(user: &User) -> anyhow::Result<Option<Totp>> {
    if user.totp_secret.trim().is_empty() {
        return Ok(None);
    }
    totp_of(&user.totp_secret)
        .map(Some)
        .map_err(|e| anyhow::anyhow!("user {}: {e}", user.username))
}

/// `secret` as pyotp reads it: spaces dropped, case and `=` padding ignored.
fn totp_of(secret: &str) -> anyhow::Result<Totp> {
    let clean: String = secret
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '=')
        .collect::<String>()
        .to_ascii_uppercase();
    let bytes = Secret::try_from_base32(&clean)
        .map_err(|_| anyhow::anyhow!("TOTP secret is not base32 (A-Z, 2-7)"))?;
    Ok(Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(6)
        .with_skew(TOTP_WINDOW_STEPS as u16)
        .with_step_duration(TOTP_PERIOD_SECS)
        .with_secret(bytes)
        // Short secrets are accepted, as by pyotp and Keycloak.
        .build_noncompliant())
}

/// The 6-digit code of `secret` for TOTP step `step`.
pub(crate) fn totp_for_step(secret: &str, step: u64) -> anyhow::Result<String> {
    Ok(totp_of(secret)?
        .generate(step * TOTP_PERIOD_SECS)
        .to_string())
}

/// The answer of one grant, before it becomes an HTTP response.
pub(crate) struct Grant {
    pub status: StatusCode,
    pub body: Value,
    pub outcome: &'static str,
    pub username: Option<String>,
    pub totp_step: Option<u64>,
    pub token_id: Option<String>,
}

fn refused(status: StatusCode, error: &str, description: &str, outcome: &'static str) -> Grant {
    Grant {
        status,
        body: json!({"error": error, "error_description": description}),
        outcome,
        username: None,
        totp_step: None,
        token_id: None,
    }
}

impl Realm {
    pub(crate) fn new(config: &Config, base_url: &str) -> anyhow::Result<Realm> {
        let mut accounts = HashMap::new();
        for u in &config.users {
            accounts.insert(u.username.to_lowercase(), Account::new(u, account_totp(u)?));
        }
        Ok(Realm {
            client_id: config.client_id.clone(),
            issuer: match config.mode {
                crate::Mode::Creodias => format!("{base_url}/auth/realms/Creodias-new"),
                crate::Mode::Cdse => format!("{base_url}/auth/realms/CDSE"),
            },
            client_secret: config.client_secret.clone(),
            access_lifetime: config.access_lifetime,
            refresh_lifetime: config.refresh_lifetime,
            session_max: config.session_max,
            max_sessions: config.max_sessions.map(|n| (n, config.session_limit)),
            lockout_after: config.lockout_after,
            accounts,
            tokens: HashMap::new(),
            sessions: HashMap::new(),
            fault: None,
        })
    }

    pub(crate) fn set_fault(&mut self, fault: Option<TokenFault>) {
        self.fault = fault;
    }

    /// The fault in force now, if any.
    pub(crate) fn current_fault(&self) -> Option<TokenFault> {
        self.fault
            .clone()
            .filter(|f| f.until.is_none_or(|t| Instant::now() < t))
    }

    /// Sessions of `username` that are still active, oldest first.
    fn active_sessions(&self, username: &str, now: Instant) -> Vec<String> {
        let mut active: Vec<(&String, &Session)> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                s.username.eq_ignore_ascii_case(username) && self.session_alive(s, now)
            })
            .collect();
        active.sort_by_key(|(_, s)| s.started);
        active.into_iter().map(|(sid, _)| sid.clone()).collect()
    }

    fn session_alive(&self, s: &Session, now: Instant) -> bool {
        !s.ended
            && now < s.refresh_until
            && self.session_max.is_none_or(|max| now < s.started + max)
    }

    /// How long session `sid` has left before its maximum age; `None`: unlimited.
    fn session_remaining(&self, sid: &str, now: Instant) -> Option<Duration> {
        let max = self.session_max?;
        let s = self.sessions.get(sid)?;
        Some((s.started + max).saturating_duration_since(now))
    }

    pub(crate) fn revoke_access_tokens(&mut self) {
        for t in self.tokens.values_mut() {
            if t.kind == TokenKind::Access {
                t.revoked = true;
            }
        }
    }

    /// Replaces the account named `user.username` (password, TOTP secret, disabled), keeping
    /// the tokens already issued; adds it when there is none.
    pub(crate) fn update_user(&mut self, user: &User) -> anyhow::Result<()> {
        let secret = account_totp(user)?;
        let acct = self
            .accounts
            .entry(user.username.to_lowercase())
            .or_insert_with(|| Account::new(user, secret.clone()));
        acct.user = user.clone();
        acct.secret = secret;
        Ok(())
    }

    /// Every token string still in the table (access and refresh).
    pub(crate) fn issued_tokens(&self) -> Vec<String> {
        self.tokens.keys().cloned().collect()
    }

    pub(crate) fn unlock(&mut self, username: &str) {
        if let Some(a) = self.accounts.get_mut(&username.to_lowercase()) {
            a.locked = false;
            a.locked_until = None;
            a.failures = 0;
        }
    }

    /// The zipper's question: whose is this access token? Err holds the log outcome.
    pub(crate) fn check_access(&self, token: &str) -> Result<(String, String), &'static str> {
        match self.tokens.get(token) {
            Some(t) if t.kind == TokenKind::Access => {
                if t.revoked {
                    Err("revoked_token")
                } else if Instant::now() >= t.expires {
                    Err("expired_token")
                } else {
                    Ok((t.username.clone(), t.jti.clone()))
                }
            }
            _ => Err("unknown_token"),
        }
    }

    /// The answer to one token request's form: the client checked first, then the grant.
    /// `refuse_refresh`: the fault switch that makes every refresh fail.
    pub(crate) fn grant(
        &mut self,
        form: &HashMap<String, String>,
        refuse_refresh: bool,
        now_unix: u64,
        rng: &mut impl rand::Rng,
    ) -> Grant {
        let secret_ok = match &self.client_secret {
            Some(secret) => form.get("client_secret") == Some(secret),
            None => true,
        };
        match form.get("grant_type").map(String::as_str) {
            None | Some("") => refused(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Missing form parameter: grant_type",
                "invalid_request",
            ),
            Some(_) if form.get("client_id") != Some(&self.client_id) || !secret_ok => refused(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "Invalid client or Invalid client credentials",
                "invalid_client",
            ),
            Some("password") => self.password_grant(form, now_unix, rng),
            Some("refresh_token") => self.refresh_grant(form, refuse_refresh, now_unix, rng),
            Some(_) => refused(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "Unsupported grant_type",
                "unsupported_grant_type",
            ),
        }
    }

    fn password_grant(
        &mut self,
        form: &HashMap<String, String>,
        now_unix: u64,
        rng: &mut impl rand::Rng,
    ) -> Grant {
        // Keycloak trims the username it is given.
        let Some(username) = form
            .get("username")
            .map(|u| u.trim())
            .filter(|u| !u.is_empty())
        else {
            return refused(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Missing parameter: username",
                "invalid_request",
            );
        };
        let lockout_after = self.lockout_after;
        let Some(acct) = self.accounts.get_mut(&username.to_lowercase()) else {
            let mut g = refused(
                StatusCode::UNAUTHORIZED,
                "invalid_grant",
                INVALID_CREDENTIALS,
                "unknown_user",
            );
            g.username = Some(username.to_string());
            return g;
        };
        let canonical = acct.user.username.clone();
        let now = Instant::now();
        let fail = |acct: &mut Account, outcome: &'static str| {
            acct.failures += 1;
            if lockout_after > 0 {
                if acct.failures >= lockout_after {
                    acct.locked = true;
                }
                // The quick-login rule: a second failure within a second locks for a minute.
                if acct
                    .last_failure
                    .is_some_and(|t| now.duration_since(t) < QUICK_LOGIN_CHECK)
                {
                    acct.locked_until = Some(now + QUICK_LOGIN_WAIT);
                }
            }
            acct.last_failure = Some(now);
            let mut g = refused(
                StatusCode::UNAUTHORIZED,
                "invalid_grant",
                INVALID_CREDENTIALS,
                outcome,
            );
            g.username = Some(acct.user.username.clone());
            g
        };
        // Keycloak checks the brute-force lock first (ValidateUsername), then "enabled": a
        // locked account answers like a wrong password even when it is also disabled.
        if acct.is_locked(now) {
            let mut g = refused(
                StatusCode::UNAUTHORIZED,
                "invalid_grant",
                INVALID_CREDENTIALS,
                "locked",
            );
            g.username = Some(canonical);
            return g;
        }
        if acct.user.disabled {
            let mut g = refused(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "Account disabled",
                "disabled",
            );
            g.username = Some(canonical);
            return g;
        }
        if form.get("password") != Some(&acct.user.password) {
            return fail(acct, "bad_password");
        }
        let mut used_step = None;
        if let Some(secret) = &acct.secret {
            // Keycloak reads `otp` first and `totp` only when `otp` is absent: an empty `otp`
            // is a wrong code, not a missing one.
            let code = form.get("otp").or_else(|| form.get("totp"));
            let Some(code) = code.cloned() else {
                return fail(acct, "missing_code");
            };
            acct.used_codes
                .retain(|(_, at)| now.duration_since(*at) < USED_CODE_MEMORY);
            if !code.is_empty() && acct.used_codes.iter().any(|(c, _)| *c == code) {
                return fail(acct, "reused_code");
            }
            let current = now_unix / TOTP_PERIOD_SECS;
            let step = (current.saturating_sub(TOTP_WINDOW_STEPS)..=current + TOTP_WINDOW_STEPS)
                .find(|s| secret.generate(s * TOTP_PERIOD_SECS).to_string() == code);
            let Some(step) = step else {
                return fail(acct, "bad_code");
            };
            acct.used_codes.push((code, now));
            used_step = Some(step);
        }
        acct.failures = 0;
        acct.last_failure = None;
        if let Some((cap, limit)) = self.max_sessions {
            let active = self.active_sessions(&canonical, now);
            if active.len() >= cap {
                match limit {
                    SessionLimit::Deny => {
                        return Grant {
                            status: StatusCode::FORBIDDEN,
                            body: Value::String(TOO_MANY_SESSIONS_PAGE.into()),
                            outcome: "too_many_sessions",
                            username: Some(canonical),
                            totp_step: used_step,
                            token_id: None,
                        };
                    }
                    SessionLimit::DropOldest => {
                        for sid in &active[..=active.len() - cap] {
                            if let Some(s) = self.sessions.get_mut(sid) {
                                s.ended = true;
                            }
                        }
                    }
                }
            }
        }
        let sid = jwt::uuid(rng);
        self.sessions.insert(
            sid.clone(),
            Session {
                username: canonical.clone(),
                started: now,
                refresh_until: now,
                ended: false,
            },
        );
        let mut g = self.issue(&canonical, &sid, now_unix, rng);
        g.totp_step = used_step;
        g
    }

    fn refresh_grant(
        &mut self,
        form: &HashMap<String, String>,
        refuse: bool,
        now_unix: u64,
        rng: &mut impl rand::Rng,
    ) -> Grant {
        let Some(token) = form.get("refresh_token").filter(|t| !t.is_empty()) else {
            return refused(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Missing parameter: refresh_token",
                "invalid_request",
            );
        };
        let rec = self
            .tokens
            .get(token)
            .filter(|t| t.kind == TokenKind::Refresh);
        let Some(rec) = rec else {
            return refused(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "Invalid refresh token",
                "invalid_refresh",
            );
        };
        let (username, sid, jti) = (rec.username.clone(), rec.sid.clone(), rec.jti.clone());
        let now = Instant::now();
        let session_over = self
            .sessions
            .get(&sid)
            .is_some_and(|s| s.ended || self.session_max.is_some_and(|max| now >= s.started + max));
        let disabled = self
            .accounts
            .get(&username.to_lowercase())
            .is_some_and(|a| a.user.disabled);
        let mut g = if refuse {
            refused(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "Token is not active",
                "refresh_refused",
            )
        } else if session_over {
            refused(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "Session not active",
                "session_not_active",
            )
        } else if now >= rec.expires {
            refused(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "Token is not active",
                "expired_refresh",
            )
        } else if disabled {
            refused(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "User disabled",
                "disabled",
            )
        } else {
            return self.issue(&username, &sid, now_unix, rng);
        };
        g.username = Some(username);
        g.token_id = Some(jti);
        g
    }

    /// Mints an access + refresh pair for `username` in session `sid`.
    fn issue(
        &mut self,
        username: &str,
        sid: &str,
        now_unix: u64,
        rng: &mut impl rand::Rng,
    ) -> Grant {
        let now = Instant::now();
        if self.tokens.len() > TOKEN_TABLE_SOFT_CAP {
            self.tokens
                .retain(|_, t| t.expires + EXPIRED_TOKEN_MEMORY > now);
        }
        let iat = now_unix;
        // Near the session's end both tokens are cut to what is left of it.
        let left = self.session_remaining(sid, now);
        let cap = |d: Duration| left.map_or(d, |l| d.min(l));
        let (access_lifetime, refresh_lifetime) =
            (cap(self.access_lifetime), cap(self.refresh_lifetime));
        if let Some(s) = self.sessions.get_mut(sid) {
            s.refresh_until = now + refresh_lifetime;
        }
        let mut mint = |kind: TokenKind, lifetime: Duration| {
            let jti = jwt::uuid(rng);
            let token = jwt::mint(
                &jwt::Claims {
                    jti: &jti,
                    sub: username,
                    sid,
                    iat,
                    // Rounded up so a client reading `exp` never renews later than the server expects.
                    exp: iat + lifetime.as_secs() + u64::from(lifetime.subsec_nanos() > 0),
                    typ: if kind == TokenKind::Access {
                        "Bearer"
                    } else {
                        "Refresh"
                    },
                    issuer: &self.issuer,
                    client_id: &self.client_id,
                },
                rng,
            );
            self.tokens.insert(
                token.clone(),
                TokenRecord {
                    jti: jti.clone(),
                    kind,
                    username: username.to_string(),
                    sid: sid.to_string(),
                    expires: now + lifetime,
                    revoked: false,
                },
            );
            (token, jti)
        };
        let (access, access_jti) = mint(TokenKind::Access, access_lifetime);
        let (refresh, _) = mint(TokenKind::Refresh, refresh_lifetime);
        Grant {
            status: StatusCode::OK,
            body: json!({
                "access_token": access,
                "expires_in": access_lifetime.as_secs(),
                "refresh_expires_in": refresh_lifetime.as_secs(),
                "refresh_token": refresh,
                "token_type": "Bearer",
                "not-before-policy": 0,
                "session_state": sid,
                "scope": "profile email",
            }),
            outcome: "ok",
            username: Some(username.to_string()),
            totp_step: None,
            token_id: Some(access_jti),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6238_vector_for_sha1() {
        // RFC 6238 appendix B: secret "12345678901234567890", T=59 -> 94287082 (8 digits);
        // the 6-digit code is its last six digits.
        let b32 = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"; // base32 of "12345678901234567890"
        assert_eq!(totp_for_step(b32, 59 / 30).unwrap(), "287082");
    }

    #[test]
    fn secrets_are_read_like_pyotp() {
        let spaced = "JBSW Y3DP EHPK 3PXP";
        let plain = "JBSWY3DPEHPK3PXP";
        assert_eq!(
            totp_for_step(spaced, 1000).unwrap(),
            totp_for_step(&plain.to_lowercase(), 1000).unwrap()
        );
        assert!(totp_for_step("1234 ABCD", 1).is_err());
    }
}
