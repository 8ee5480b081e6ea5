//! Tests of the download client, by theme: against the real double (`fake-creodias`) for the
//! service's behaviour (`double`) and its faults (`faults`), against a small scripted HTTP server
//! for what the double does not do (`scripted`: redirects, 403, stalls, lying Content-Range, HEAD
//! refused), that no token reaches a log or an error (`logging`), and what needs no server at all
//! (`no_server`: URL template, trusted hosts, refused login).
//!
//! This file holds what several of them share: the double's test store and its token source
//! ([`setup`], [`read_all`], [`zipper_log`]), and a fixed token source ([`Fixed`]).

mod answers;
mod double;
mod faults;
mod logging;
mod no_server;
mod scripted;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eodata_auth::{AccessToken, AuthError, Secret, TokenSource};
use fake_creodias::{Config, Double, Faults};
use futures::StreamExt as _;

use super::*;

const USER: &str = "alice";
const PASSWORD: &str = "correct horse";
const TOTP_SECRET: &str = "JBSWY3DPEHPK3PXP";

/// Products of the test store: (id, name, size). Sizes are odd so that no block lines up.
const SMALL: (&str, &str, usize) = ("11111111-1111-1111-1111-111111111111", "S2A_SMALL", 1000);
const BIG: (&str, &str, usize) = (
    "22222222-2222-2222-2222-222222222222",
    "S2B_BIG",
    3 * 1024 * 1024 + 12345,
);
const EMPTY: (&str, &str, usize) = ("33333333-3333-3333-3333-333333333333", "S1A_EMPTY", 0);
/// In the catalogue, but without a file: the zipper has nothing to stream.
const NO_DATA: (&str, &str) = ("44444444-4444-4444-4444-444444444444", "EN1_NO_DATA");

/// Deterministic bytes that differ at every offset pattern a bug could confuse.
fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A products directory per the contract of `fake_creodias` `store.rs`.
fn write_products(dir: &std::path::Path) -> HashMap<&'static str, Vec<u8>> {
    let mut data = HashMap::new();
    let mut entries = Vec::new();
    // Known to the catalogue, no data behind it.
    entries.push(serde_json::json!({
        "Id": NO_DATA.0, "Name": NO_DATA.1, "ContentLength": 0, "Online": false,
    }));
    for (i, (id, name, size)) in [SMALL, BIG, EMPTY].into_iter().enumerate() {
        let bytes = content(i as u64 + 1, size);
        std::fs::write(dir.join(format!("{name}.zip")), &bytes).unwrap();
        entries.push(serde_json::json!({
            "Id": id, "Name": name, "ContentLength": size, "Online": true,
            "file": format!("{name}.zip"),
        }));
        data.insert(id, bytes);
    }
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({ "products": entries })).unwrap(),
    )
    .unwrap();
    data
}

/// Tokens from the double's Keycloak: one password+TOTP login, then refresh grants on each
/// rejection (a second login in the same 30 s step would be refused as a reused code).
struct DoubleTokens {
    http: reqwest::Client,
    url: String,
    state: tokio::sync::Mutex<Option<(AccessToken, String)>>,
    renewals: AtomicU32,
}

impl DoubleTokens {
    fn new(double: &Double) -> Self {
        DoubleTokens {
            http: reqwest::Client::new(),
            url: double.token_url(),
            state: tokio::sync::Mutex::new(None),
            renewals: AtomicU32::new(0),
        }
    }

    async fn grant(&self, form: &[(&str, &str)]) -> Result<(AccessToken, String), AuthError> {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let fail = |reason: String| AuthError::Protocol {
            server: "double".into(),
            reason,
        };
        let resp = self
            .http
            .post(&self.url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?;
        let status = resp.status();
        let v: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap())
            .map_err(|e| fail(format!("{status}: {e}")))?;
        let access = v["access_token"]
            .as_str()
            .ok_or_else(|| fail(v.to_string()))?;
        let secs = v["expires_in"].as_u64().unwrap_or(60);
        Ok((
            AccessToken {
                value: Secret::new(access),
                expires_at: SystemTime::now() + Duration::from_secs(secs),
            },
            v["refresh_token"].as_str().unwrap_or_default().to_string(),
        ))
    }
}

impl TokenSource for DoubleTokens {
    async fn token(&self) -> Result<AccessToken, AuthError> {
        let mut state = self.state.lock().await;
        if let Some((t, _)) = &*state {
            return Ok(t.clone());
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let code = fake_creodias::totp_code(TOTP_SECRET, now).unwrap();
        let got = self
            .grant(&[
                ("grant_type", "password"),
                ("client_id", fake_creodias::CREODIAS_CLIENT_ID),
                ("username", USER),
                ("password", PASSWORD),
                ("totp", &code),
            ])
            .await?;
        *state = Some(got.clone());
        Ok(got.0)
    }

    async fn rejected(&self, token: &AccessToken) {
        let mut state = self.state.lock().await;
        let Some((current, refresh)) = state.clone() else {
            return;
        };
        if current != *token {
            return; // Already renewed by another reader.
        }
        self.renewals.fetch_add(1, Ordering::SeqCst);
        *state = self
            .grant(&[
                ("grant_type", "refresh_token"),
                ("client_id", fake_creodias::CREODIAS_CLIENT_ID),
                ("refresh_token", &refresh),
            ])
            .await
            .ok();
    }
}

struct Setup {
    double: Double,
    zipper: Zipper<Arc<DoubleTokens>>,
    tokens: Arc<DoubleTokens>,
    data: HashMap<&'static str, Vec<u8>>,
    _dir: tempfile::TempDir,
}

async fn setup_with(faults: Faults, tweak: impl FnOnce(&mut ZipperConfig, &Double)) -> Setup {
    setup_full(|config| config.faults = faults, tweak).await
}

/// [`setup_with`], with a say over the double's configuration too.
async fn setup_full(
    double_tweak: impl FnOnce(&mut Config),
    tweak: impl FnOnce(&mut ZipperConfig, &Double),
) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let data = write_products(dir.path());
    let mut config = Config::with_user(USER, PASSWORD, TOTP_SECRET).products(dir.path());
    config.seed = 7;
    double_tweak(&mut config);
    let double = Double::start(config).await.unwrap();
    let tokens = Arc::new(DoubleTokens::new(&double));
    let mut cfg = ZipperConfig::new(double.download_template(), TokenPassing::Query);
    // Short enough that a test of retries stays quick; the limits themselves are the defaults.
    cfg.read_timeout = Duration::from_secs(10);
    tweak(&mut cfg, &double);
    let zipper = Zipper::new(cfg, Arc::clone(&tokens), eodata_http::client(None).unwrap());
    Setup {
        double,
        zipper,
        tokens,
        data,
        _dir: dir,
    }
}

/// A double that honours Range: the zipper's ranged fast path, as a server offering Range
/// would serve it (the double ignores Range by default, as the real zipper does).
fn ranged() -> Faults {
    Faults {
        range: true,
        ..Faults::default()
    }
}

async fn setup(faults: Faults) -> Setup {
    setup_with(faults, |_, _| {}).await
}

/// Reads `id` whole in `block`-sized ranges, `parallel` at a time.
async fn read_all<T: TokenSource>(
    z: &Zipper<T>,
    id: &str,
    size: u64,
    block: u64,
    parallel: usize,
) -> Result<Vec<u8>, FetchError> {
    let ranges: Vec<Range<u64>> = (0..size.div_ceil(block))
        .map(|i| i * block..((i + 1) * block).min(size))
        .collect();
    let parts: Vec<Result<Bytes, FetchError>> = futures::stream::iter(ranges)
        .map(|r| z.get_range(id, r))
        .buffered(parallel)
        .collect()
        .await;
    let mut out = Vec::with_capacity(size as usize);
    for p in parts {
        out.extend_from_slice(&p?);
    }
    Ok(out)
}

fn zipper_log(d: &Double) -> Vec<fake_creodias::LogEntry> {
    d.log()
        .into_iter()
        .filter(|e| e.service == "zipper")
        .collect()
}

const FIXED_TOKEN: &str = "tok-S3CRET";

/// One fixed token; counts rejections.
struct Fixed(AtomicU32);

impl TokenSource for Fixed {
    async fn token(&self) -> Result<AccessToken, AuthError> {
        Ok(AccessToken {
            value: Secret::new(FIXED_TOKEN),
            expires_at: SystemTime::now() + Duration::from_secs(600),
        })
    }
    async fn rejected(&self, _: &AccessToken) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}
