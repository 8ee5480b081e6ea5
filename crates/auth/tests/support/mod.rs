//! A miniature Keycloak token endpoint for the token manager's tests, on the double crate's
//! scripted HTTP server.
//!
//! Why not only the real double (`fake-creodias`)? The double keeps real time, so any test that
//! needs a second password login waits up to 30 s for the next TOTP step. This one runs on the
//! manager's [`TestClock`]: the manager's sleeps advance it, so "wait for the next step" costs
//! nothing, and the server can be told to be 300 s ahead, to fail, or to answer garbage. It
//! checks TOTP codes like Keycloak (window of one step either side, a code accepted once) and
//! records every request, so tests can count logins and see their steps.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eodata_auth::{Clock, LoginConfig, Secret, TestClock, TokenManager, Totp};
use fake_creodias::scripted::{Reply, Request, Scripted};

pub const USER: &str = "first+last@example.com";
pub const PASSWORD: &str = "p&ss w+rd%";
/// "12345678901234567890" in base32, as a user would paste it.
pub const SECRET: &str = "gezd gnbv gy3t qojq gezd gnbv gy3t qojq";
pub const CLIENT_ID: &str = "CLOUDFERRO_PUBLIC";

/// A canned answer, served before the Keycloak logic while any are queued.
#[derive(Clone, Debug)]
pub struct Canned {
    pub status: u16,
    pub body: String,
    pub headers: Vec<(String, String)>,
}

impl Canned {
    pub fn new(status: u16, body: &str) -> Self {
        Canned {
            status,
            body: body.into(),
            headers: vec![],
        }
    }
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub grant_type: Option<String>,
    /// For password grants: the step whose code matched (searched ±10 steps), if any.
    pub step: Option<u64>,
    /// "ok", "refused", "canned", "probe", "refresh_refused".
    pub outcome: String,
    /// The raw form body, for the tests that check encoding.
    pub body: String,
    /// The test clock's time when the request arrived.
    pub at: SystemTime,
}

pub struct MiniState {
    pub seen: Vec<Seen>,
    pub canned: VecDeque<Canned>,
    pub password: String,
    /// Server time = test clock + skew.
    pub skew: Duration,
    pub skew_ahead: bool,
    pub access_lifetime: u64,
    pub refresh_lifetime: u64,
    pub refuse_refresh: bool,
    /// Answer access tokens as JWTs with this `exp` offset from issue (server time), if set.
    pub jwt_exp_after: Option<u64>,
    /// Real time to wait before answering a POST.
    pub delay: Duration,
    used_codes: HashSet<String>,
    refresh_tokens: HashMap<String, SystemTime>,
    next_id: u64,
}

#[derive(Clone)]
pub struct Mini {
    pub url: String,
    pub clock: TestClock,
    pub state: Arc<Mutex<MiniState>>,
}

/// A start time 10 s into a TOTP step (1_700_000_010 begins step 56_666_667).
pub fn start_time() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_020)
}

impl Mini {
    pub async fn start() -> Mini {
        let mut mini = Mini {
            url: String::new(),
            clock: TestClock::new(start_time()),
            state: Arc::new(Mutex::new(MiniState {
                seen: vec![],
                canned: VecDeque::new(),
                password: PASSWORD.into(),
                skew: Duration::ZERO,
                skew_ahead: true,
                access_lifetime: 300,
                refresh_lifetime: 1800,
                refuse_refresh: false,
                jwt_exp_after: None,
                delay: Duration::ZERO,
                used_codes: HashSet::new(),
                refresh_tokens: HashMap::new(),
                next_id: 0,
            })),
        };
        let m = mini.clone();
        let server = Scripted::start(move |req| m.reply(req)).await;
        mini.url = format!(
            "{}/auth/realms/test/protocol/openid-connect/token",
            server.base()
        );
        mini
    }

    pub fn config(&self, cache_dir: Option<std::path::PathBuf>) -> LoginConfig {
        LoginConfig {
            token_url: self.url.clone(),
            client_id: CLIENT_ID.into(),
            user: USER.into(),
            password: Secret::new(PASSWORD),
            totp_secret: Secret::new(SECRET),
            cache_dir,
        }
    }

    /// A manager on this server's clock.
    pub fn manager(&self, cache_dir: Option<std::path::PathBuf>) -> TokenManager {
        self.manager_for(self.config(cache_dir))
    }

    pub fn manager_for(&self, cfg: LoginConfig) -> TokenManager {
        TokenManager::new(cfg, reqwest::Client::new())
            .unwrap()
            .with_clock(Arc::new(self.clock.clone()))
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// Requests carrying `grant_type`.
    pub fn grants(&self, grant_type: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.grant_type.as_deref() == Some(grant_type))
            .collect()
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut MiniState) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }

    fn server_now(&self, st: &MiniState) -> SystemTime {
        let now = self.clock.now();
        if st.skew_ahead {
            now + st.skew
        } else {
            now - st.skew
        }
    }

    /// A POST waits `delay` first (real time); the answer is made when it is sent.
    fn reply(&self, req: &Request) -> Reply {
        let method = req.method.clone();
        let body = String::from_utf8_lossy(&req.body).into_owned();
        let delay = match method.as_str() {
            "POST" => self.state.lock().unwrap().delay,
            _ => Duration::ZERO,
        };
        let m = self.clone();
        Reply::later(delay, move || {
            let (status, headers, body) = m.answer(&method, &body);
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            Reply::new(status, &headers, body)
        })
    }

    fn answer(&self, method: &str, body: &str) -> (u16, Vec<(String, String)>, String) {
        let st_clock_now = self.clock.now();
        let mut st = self.state.lock().unwrap();
        let server_now = self.server_now(&st);
        let mut headers = vec![("Date".to_string(), httpdate::fmt_http_date(server_now))];
        let form: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect();
        let grant_type = form.get("grant_type").cloned();
        let mut seen = Seen {
            method: method.into(),
            grant_type: grant_type.clone(),
            step: None,
            outcome: String::new(),
            body: body.into(),
            at: st_clock_now,
        };
        if method != "POST" {
            seen.outcome = "probe".into();
            st.seen.push(seen);
            return (405, headers, String::new());
        }
        let totp = Totp::from_base32(SECRET).unwrap();
        let step_now = server_now.duration_since(UNIX_EPOCH).unwrap().as_secs() / 30;
        if let Some(code) = form.get("totp") {
            seen.step = (step_now - 10..=step_now + 10).find(|&s| totp.code(s).expose() == code);
        }
        if let Some(c) = st.canned.pop_front() {
            seen.outcome = "canned".into();
            st.seen.push(seen);
            headers.extend(c.headers);
            return (c.status, headers, c.body);
        }
        headers.push(("Content-Type".into(), "application/json".into()));
        let refused =
            |st: &mut MiniState, mut seen: Seen, outcome: &str, status: u16, desc: &str| {
                seen.outcome = outcome.into();
                st.seen.push(seen);
                (
                    status,
                    headers.clone(),
                    format!(r#"{{"error":"invalid_grant","error_description":"{desc}"}}"#),
                )
            };
        if form.get("client_id").map(String::as_str) != Some(CLIENT_ID) {
            return refused(&mut st, seen, "bad_client", 401, "Invalid client");
        }
        match grant_type.as_deref() {
            Some("password") => {
                let code = form.get("totp").cloned().unwrap_or_default();
                let in_window = seen
                    .step
                    .is_some_and(|s| s + 1 >= step_now && s <= step_now + 1);
                if form.get("username").map(String::as_str) != Some(USER)
                    || form.get("password") != Some(&st.password)
                    || !in_window
                    || st.used_codes.contains(&code)
                {
                    return refused(&mut st, seen, "refused", 401, "Invalid user credentials");
                }
                st.used_codes.insert(code);
            }
            Some("refresh_token") => {
                let token = form.get("refresh_token").cloned().unwrap_or_default();
                let alive = st
                    .refresh_tokens
                    .get(&token)
                    .is_some_and(|&exp| exp > server_now);
                if st.refuse_refresh || !alive {
                    return refused(&mut st, seen, "refresh_refused", 400, "Token is not active");
                }
            }
            _ => return refused(&mut st, seen, "bad_grant", 400, "unsupported"),
        }
        st.next_id += 1;
        let id = st.next_id;
        let access = match st.jwt_exp_after {
            Some(after) => jwt(
                server_now.duration_since(UNIX_EPOCH).unwrap().as_secs() + after,
                id,
            ),
            None => format!("access-{id}"),
        };
        let refresh = format!("refresh-{id}");
        let refresh_exp = server_now + Duration::from_secs(st.refresh_lifetime);
        st.refresh_tokens.insert(refresh.clone(), refresh_exp);
        seen.outcome = "ok".into();
        st.seen.push(seen);
        let body = format!(
            r#"{{"access_token":"{access}","expires_in":{},"refresh_token":"{refresh}","refresh_expires_in":{},"token_type":"Bearer"}}"#,
            st.access_lifetime, st.refresh_lifetime
        );
        (200, headers, body)
    }
}

fn b64url(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |a, &b| (a << 8) | b as u32) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

pub fn jwt(exp: u64, id: u64) -> String {
    format!(
        "{}.{}.c2ln",
        b64url(br#"{"alg":"RS256","typ":"JWT"}"#),
        b64url(format!(r#"{{"exp":{exp},"jti":"{id}"}}"#).as_bytes())
    )
}

/// A private cache directory inside a temp dir (tempdirs themselves may be 0755 here).
pub fn cache_dir(tmp: &tempfile::TempDir) -> std::path::PathBuf {
    tmp.path().join("cache")
}
