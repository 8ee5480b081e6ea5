//! fake-creodias: a local double of CREODIAS (Keycloak token endpoint, zipper, OData catalogue).
//!
//! Every test and benchmark of the project talks to this double instead of the real services
//! (there is no internet where they run). It follows `docs/protocol.md`: the same paths,
//! the same status codes and error bodies, real TOTP, JWT-shaped tokens that expire, HTTP ranges
//! served from product files on disk, and fault switches ([`Faults`]) that a test flips at run time.
//!
//! This file owns the public face: the configuration types and the [`Double`] handle. The services
//! live in rooms of their own: `keycloak` (the token endpoint's HTTP) with `realm` (accounts, TOTP,
//! sessions, issued tokens: a leaf the shared state holds), `zipper` (downloads, and the `/files/`
//! index for peers), `catalogue` with `filter` (OData search), `nodes` (a product's own files,
//! OData Nodes), `server` (accept loop, routing, latency, outage), `state` (what the services
//! share), `store` (the product directory), `body` (streamed, throttled, cuttable response bodies),
//! `log` (the request log), `jwt` (token strings). `generate` writes product directories for the
//! store. Beside the double, [`scripted`] is a raw scripted HTTP server for the answers no service
//! gives (clients' tests).

mod body;
mod catalogue;
mod control;
mod filter;
pub mod generate;
mod jwt;
mod keycloak;
mod log;
mod nodes;
mod realm;
mod reorder;
mod respond;
pub mod scripted;
mod server;
mod state;
mod store;
mod zipper;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;

pub use log::LogEntry;
pub use realm::{SessionLimit, TokenFault};

/// The client id of CREODIAS's public OpenID client (docs/protocol.md, "Identity").
pub const CREODIAS_CLIENT_ID: &str = "CLOUDFERRO_PUBLIC";
/// Keycloak realm path of CREODIAS; the CDSE realm (`CDSE`) is served too.
pub const TOKEN_PATH: &str = "/auth/realms/Creodias-new/protocol/openid-connect/token";
/// The client id of CDSE's public OpenID client (docs/protocol.md, "Identity").
pub const CDSE_CLIENT_ID: &str = "cdse-public";
/// Keycloak realm path of CDSE.
pub const CDSE_TOKEN_PATH: &str = "/auth/realms/CDSE/protocol/openid-connect/token";

/// CDSE's access token lifetime ("A token stays active for 10 minutes").
pub const CDSE_ACCESS_LIFETIME: Duration = Duration::from_secs(600);
/// CDSE's refresh token lifetime ("can be refreshed in 60 minutes").
pub const CDSE_REFRESH_LIFETIME: Duration = Duration::from_secs(3600);
/// CDSE's session maximum: refresh works only within about an hour of the login.
pub const CDSE_SESSION_MAX: Duration = Duration::from_secs(3600);
/// CDSE's cap on a user's active sessions.
pub const CDSE_MAX_SESSIONS: usize = 100;

/// Which service the double plays. Both serve every path; the mode decides what a client
/// meets on the way, so one client can be tested against each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// CREODIAS: realm `Creodias-new`, client `CLOUDFERRO_PUBLIC`, downloads answered where
    /// they are asked.
    #[default]
    Creodias,
    /// Copernicus Data Space Ecosystem: realm `CDSE`, client `cdse-public` (set by
    /// [`Config::cdse`]), and every OData download asked at 127.0.0.1 (playing the catalogue
    /// host) is redirected to `localhost` (playing the download host), as CDSE redirects from
    /// its catalogue host to its download host. A client passing `Authorization: Bearer` must
    /// carry it across that hop itself (HTTP clients drop it), or meet 401 "Token not found".
    Cdse,
}

/// One account of the fake Keycloak realm.
#[derive(Clone, Debug)]
pub struct User {
    pub username: String,
    pub password: String,
    /// Base32 TOTP secret (spaces, lower case and `=` padding are tolerated, like pyotp).
    /// Empty: the account has no two-factor login and a password alone logs in.
    pub totp_secret: String,
    /// A disabled account is refused with 400 "Account disabled".
    pub disabled: bool,
}

impl User {
    pub fn new(username: &str, password: &str, totp_secret: &str) -> User {
        User {
            username: username.to_string(),
            password: password.to_string(),
            totp_secret: totp_secret.to_string(),
            disabled: false,
        }
    }
}

/// Fault switches. All of them can be changed while the double runs ([`Double::set_faults`]);
/// each request reads the switches current when it starts. The control endpoint reads and writes
/// them as JSON with these field names (`latency` as `latency_ms`); absent fields are off (so
/// Range is ignored, as by the real zipper, unless `range` is set).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Fraction (0..=1) of zipper GETs answered 503 with a DAT-ZIP error body.
    pub fail_rate: f64,
    /// Fraction (0..=1) of zipper bodies cut mid-way: about half the body is sent, then the
    /// connection is aborted, so the client sees a short body.
    pub cut_rate: f64,
    /// The next N zipper bodies are cut half-way, like `cut_rate` but certain (counts down).
    pub cut_next: u32,
    /// Added before every answer, on all services.
    #[serde(rename = "latency_ms", with = "millis")]
    pub latency: Duration,
    /// Bytes per second per response body (zipper and files).
    pub bandwidth_per_conn: Option<u64>,
    /// Zipper bodies streaming at once per user; over it: 429 DAT-ZIP-100 "Max session number
    /// N exceeded" (with `Retry-After` only if `retry_after_secs` is set).
    pub max_connections_per_user: Option<usize>,
    /// `Retry-After` seconds sent with the zipper's 429s. Absent by default: whether the real
    /// zipper sends one is not known (docs/protocol.md), so clients must cope without.
    pub retry_after_secs: Option<u64>,
    /// Honour Range headers (206 and the bytes asked for). Off by default: every public report
    /// says the real zipper ignores Range and sends 200 with the whole product
    /// (docs/protocol.md), so that is what every test meets unless it asks for this.
    pub range: bool,
    /// Serve each product's members in another order every other GET (same size, same
    /// members, other bytes at most offsets): a zipper that builds its zips afresh per request
    /// without stable bytes, so a client splicing two answers would serve a mix.
    pub reorder_members: bool,
    /// The next N zipper requests get 429 (counts down as they are served).
    pub rate_limit_burst: u32,
    /// Every access token is taken as issued to a client the zipper does not serve (as a
    /// Sentinel Hub client's token would be): 401 DAT-ZIP-609 "Token audience not allowed".
    pub wrong_audience: bool,
    /// For this many milliseconds after the switches are set, every zipper request with a
    /// valid token is refused 401 DAT-ZIP-604, as the real service is reported to do now and
    /// then for minutes during long runs (`docs/protocol.md`, "Download errors").
    pub spurious_401_ms: u64,
    /// Every zipper download of a valid token is refused 403 DAT-ZIP-608 "Access forbidden"
    /// (an account not entitled, or terms not accepted).
    pub forbidden: bool,
    /// Every refresh_token grant is refused ("Token is not active"), forcing password logins.
    pub refuse_refresh: bool,
    /// Alter one byte of every zipper/files body, for checksum tests.
    pub tamper: bool,
    /// The token endpoint answers 200 with an HTML body instead of JSON.
    pub garbage_token: bool,
    /// The catalogue answers 200 with an HTML body instead of JSON.
    pub garbage_catalogue: bool,
    /// Zipper error bodies are HTML instead of DAT-ZIP JSON (status codes unchanged).
    pub garbage_zipper_errors: bool,
    /// The zipper needs no token, and `/files/` serves an HTML index (for peers such as rclone
    /// and httpdirfs that cannot log in).
    pub no_auth: bool,
    /// Downloads asked on the OData form (`/odata/v1/Products(<id>)/$value`) at 127.0.0.1 get a
    /// 301 to the same URL at `localhost`: another host name for the same server, like the real
    /// catalogue host redirecting to the download host. Clients that drop `Authorization` on a
    /// cross-host redirect then meet 401 "Token not found", as in the field; `?token=` survives.
    pub redirect_downloads: bool,
}

/// How to start a double. `Config::default()` has no users and no products.
#[derive(Clone, Debug)]
pub struct Config {
    pub users: Vec<User>,
    /// Default `CLOUDFERRO_PUBLIC`.
    pub client_id: String,
    /// A confidential client's secret: token requests without it get 401 `invalid_client`.
    pub client_secret: Option<String>,
    /// Access token lifetime; default 300 s ("CREODIAS: not published; treat as short"); CDSE
    /// 600 s.
    pub access_lifetime: Duration,
    /// Refresh token lifetime; default 1800 s; CDSE 3600 s.
    pub refresh_lifetime: Duration,
    /// A session's maximum age from its password login: refresh is refused after it ("Session
    /// not active") and tokens issued near it are capped by it. Default none; CDSE 3600 s.
    pub session_max: Option<Duration>,
    /// Active sessions per user (CDSE: 100); `None`: no cap.
    pub max_sessions: Option<usize>,
    /// What a login over [`Config::max_sessions`] does.
    pub session_limit: SessionLimit,
    /// Failed logins before the account locks (Keycloak's default 30); 0 never locks.
    pub lockout_after: u32,
    /// Product store: a directory with `index.json` (see `store`).
    pub products_dir: Option<PathBuf>,
    pub faults: Faults,
    /// Seed of the RNG that decides faults (and token ids), so runs repeat.
    pub seed: u64,
    /// When set, every request is appended there as one JSON line.
    pub log_path: Option<PathBuf>,
    /// 0 picks any free port.
    pub port: u16,
    /// Which service the double plays.
    pub mode: Mode,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            users: Vec::new(),
            client_id: CREODIAS_CLIENT_ID.to_string(),
            client_secret: None,
            access_lifetime: Duration::from_secs(300),
            refresh_lifetime: Duration::from_secs(1800),
            session_max: None,
            max_sessions: None,
            session_limit: SessionLimit::Deny,
            lockout_after: 30,
            products_dir: None,
            faults: Faults::default(),
            seed: 0,
            log_path: None,
            port: 0,
            mode: Mode::Creodias,
        }
    }
}

impl Config {
    /// A default configuration with one enabled user.
    pub fn with_user(user: &str, password: &str, secret: &str) -> Config {
        Config {
            users: vec![User::new(user, password, secret)],
            ..Config::default()
        }
    }

    /// Builder-style helper: play CDSE ([`Mode::Cdse`], client id `cdse-public`, its token
    /// lifetimes 600 s / 3600 s, a session max of 3600 s and 100 sessions per user; see
    /// docs/protocol.md, "Identity").
    pub fn cdse(mut self) -> Config {
        self.mode = Mode::Cdse;
        self.client_id = CDSE_CLIENT_ID.to_string();
        self.access_lifetime = CDSE_ACCESS_LIFETIME;
        self.refresh_lifetime = CDSE_REFRESH_LIFETIME;
        self.session_max = Some(CDSE_SESSION_MAX);
        self.max_sessions = Some(CDSE_MAX_SESSIONS);
        self
    }

    /// Builder-style helper: serve products from `dir`.
    pub fn products(mut self, dir: impl Into<PathBuf>) -> Config {
        self.products_dir = Some(dir.into());
        self
    }
}

/// The TOTP code of `secret` (base32) at `unix_time` seconds: what pyotp's `TOTP(secret).at(t)`
/// gives. Tests use it to log in; the double uses the same function to check codes.
pub fn totp_code(secret: &str, unix_time: u64) -> anyhow::Result<String> {
    realm::totp_for_step(secret, unix_time / realm::TOTP_PERIOD_SECS)
}

/// A handle on a running double. Clones share the server; it stops on [`Double::stop`] or when
/// the last handle is dropped.
#[derive(Clone)]
pub struct Double {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<state::Shared>,
    stop_tx: watch::Sender<bool>,
    /// The serving thread of `start_in_thread`, kept only to name it; never joined.
    _thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The thread of `start_in_thread` ends by itself once the server loop sees the signal;
        // joining here could block inside a runtime, so its handle is dropped (detached).
        let _ = self.stop_tx.send(true);
    }
}

impl Double {
    /// Binds 127.0.0.1:`config.port` and serves on the current tokio runtime.
    pub async fn start(config: Config) -> anyhow::Result<Double> {
        let (listener, shared) = bind(config).await?;
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(server::serve(listener, shared.clone(), stop_rx));
        Ok(Double {
            inner: Arc::new(Inner {
                shared,
                stop_tx,
                _thread: None,
            }),
        })
    }

    /// Serves from a thread of its own with a multi-thread runtime: for plain `#[test]` fns and
    /// for callers that block (a FUSE mount, a subprocess).
    pub fn start_in_thread(config: Config) -> anyhow::Result<Double> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("fake-creodias".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    // Two workers: enough to stream several bodies while answering tokens,
                    // small enough for the 2-core machines the tests run on.
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow::Error::from(e)));
                        return;
                    }
                };
                rt.block_on(async move {
                    match bind(config).await {
                        Ok((listener, shared)) => {
                            let _ = ready_tx.send(Ok(shared.clone()));
                            server::serve(listener, shared, stop_rx).await;
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                });
            })
            .context("spawning the double's thread")?;
        let shared = ready_rx
            .recv()
            .context("the double's thread died before binding")??;
        Ok(Double {
            inner: Arc::new(Inner {
                shared,
                stop_tx,
                _thread: Some(thread),
            }),
        })
    }

    /// `http://127.0.0.1:PORT`
    pub fn base_url(&self) -> String {
        self.inner.shared.base_url.clone()
    }

    pub fn port(&self) -> u16 {
        self.inner.shared.port
    }

    /// `{base}/auth/realms/Creodias-new/protocol/openid-connect/token`, or the `CDSE` realm's in
    /// [`Mode::Cdse`].
    pub fn token_url(&self) -> String {
        let path = match self.inner.shared.mode {
            Mode::Creodias => TOKEN_PATH,
            Mode::Cdse => CDSE_TOKEN_PATH,
        };
        format!("{}{}", self.base_url(), path)
    }

    /// The mode the double was started in.
    pub fn mode(&self) -> Mode {
        self.inner.shared.mode
    }

    /// `{base}/odata/v1/Products({id})/$value`: `{id}` is left for the caller to fill.
    pub fn download_template(&self) -> String {
        format!("{}/odata/v1/Products({{id}})/$value", self.base_url())
    }

    /// `{base}/download/{id}`, the tutorial's form.
    pub fn legacy_download_template(&self) -> String {
        format!("{}/download/{{id}}", self.base_url())
    }

    /// `{base}/odata/v1`
    pub fn catalogue_url(&self) -> String {
        format!("{}/odata/v1", self.base_url())
    }

    /// `{base}/files/` (HTML index, only with `Faults::no_auth`).
    pub fn files_url(&self) -> String {
        format!("{}/files/", self.base_url())
    }

    /// Every request so far, in the order their answers finished.
    pub fn log(&self) -> Vec<LogEntry> {
        self.inner.shared.log.entries()
    }

    pub fn set_faults(&self, f: Faults) {
        self.inner.shared.set_faults(f);
    }

    pub fn faults(&self) -> Faults {
        self.inner.shared.faults.lock().unwrap().clone()
    }

    /// Every access token issued so far gets 401 at the zipper from now on.
    pub fn revoke_tokens(&self) {
        self.inner
            .shared
            .auth
            .lock()
            .unwrap()
            .revoke_access_tokens();
    }

    /// For `d`: new connections are closed unanswered, requests on open connections are dropped
    /// without an answer, bodies in flight are cut. Then service resumes.
    pub fn outage(&self, d: Duration) {
        self.inner.shared.start_outage(d);
    }

    /// Sets the double's clock `secs` seconds ahead of the machine's (negative: behind). TOTP
    /// codes are checked, tokens stamped (`iat`, `exp`) and `Date` headers written on that clock,
    /// as when a client's clock is off by `-secs`. Token expiry itself is measured on the
    /// monotonic clock, so a skew never expires tokens early.
    pub fn set_clock_skew(&self, secs: i64) {
        self.inner.shared.set_clock_skew(secs);
    }

    /// Makes `/_double/` control endpoints answer (faults, outage, revoke, unlock, clock skew,
    /// log): for scripts that run `fake-creodias serve --control` as a process.
    pub fn enable_control(&self) {
        self.inner.shared.enable_control();
    }

    /// Changes an account while the double runs: a new password or TOTP secret (the client's
    /// credentials become wrong), or `disabled`. Tokens already issued stay valid; pair with
    /// [`Double::revoke_tokens`] and `refuse_refresh` to force a new login.
    pub fn update_user(&self, user: User) -> anyhow::Result<()> {
        self.inner.shared.auth.lock().unwrap().update_user(&user)
    }

    /// Every access and refresh token issued so far (the log names tokens only by `jti`): for
    /// tests that check no token reaches a client's output.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.inner.shared.auth.lock().unwrap().issued_tokens()
    }

    /// Makes the token endpoint answer `fault` (until it ends), or clears it with `None`.
    pub fn set_token_fault(&self, fault: Option<TokenFault>) {
        self.inner.shared.auth.lock().unwrap().set_fault(fault);
    }

    /// Clears a brute-force lock and the failure count of `username`.
    pub fn unlock_user(&self, username: &str) {
        self.inner.shared.auth.lock().unwrap().unlock(username);
    }

    /// Zipper/files bodies streaming right now for `username` (what the connection cap counts).
    pub fn active_downloads(&self, username: &str) -> usize {
        self.inner.shared.active_for(username)
    }

    /// Stops accepting and aborts every open connection. Idempotent.
    pub fn stop(&self) {
        let _ = self.inner.stop_tx.send(true);
    }
}

async fn bind(config: Config) -> anyhow::Result<(tokio::net::TcpListener, Arc<state::Shared>)> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", config.port))
        .await
        .with_context(|| format!("binding 127.0.0.1:{}", config.port))?;
    let port = listener.local_addr()?.port();
    let shared = state::Shared::new(config, port)?;
    Ok((listener, Arc::new(shared)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn handles_can_cross_threads() {
        fn send_sync<T: Send + Sync + Clone + 'static>() {}
        send_sync::<super::Double>();
        send_sync::<super::Faults>();
    }
}

/// A [`Duration`] as whole milliseconds in JSON.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}
