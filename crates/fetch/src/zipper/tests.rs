//! Tests of the download client against the real double (`fake-creodias`) for the service's
//! behaviour and faults, and against a small scripted HTTP server for what the double does not
//! do (redirects, 403, stalls, lying Content-Range, HEAD refused).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use eodata_auth::{AccessToken, AuthError, Secret, TokenSource};
use fake_creodias::{Config, Double, Faults};
use futures::StreamExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

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
    let dir = tempfile::tempdir().unwrap();
    let data = write_products(dir.path());
    let mut config = Config::with_user(USER, PASSWORD, TOTP_SECRET).products(dir.path());
    config.faults = faults;
    config.seed = 7;
    let double = Double::start(config).await.unwrap();
    let tokens = Arc::new(DoubleTokens::new(&double));
    let mut cfg = ZipperConfig::new(double.download_template(), TokenPassing::Query);
    // Short enough that a test of retries stays quick; the limits themselves are the defaults.
    cfg.read_timeout = Duration::from_secs(10);
    tweak(&mut cfg, &double);
    let zipper = Zipper::new(cfg, Arc::clone(&tokens), http_client().unwrap());
    Setup {
        double,
        zipper,
        tokens,
        data,
        _dir: dir,
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

#[tokio::test]
async fn zipper_info_and_byte_exact_ranges() {
    let s = setup(Faults::default()).await;
    let (id, name, size) = BIG;
    let want = &s.data[id];

    let info = s.zipper.info(id).await.unwrap();
    assert_eq!(
        info,
        ObjectInfo {
            size: size as u64,
            filename: Some(format!("{name}.zip")),
            ranges: RangeSupport::Honoured
        }
    );
    let requests = s.zipper.stats().requests;
    assert_eq!(s.zipper.info(id).await.unwrap(), info, "cached");
    assert_eq!(
        s.zipper.stats().requests,
        requests,
        "info is asked once per product"
    );

    let size = size as u64;
    for r in [0..1, 0..size, 1..2, 12345..1_048_576 + 7, size - 1..size] {
        let got = s.zipper.get_range(id, r.clone()).await.unwrap();
        assert_eq!(&got[..], &want[r.start as usize..r.end as usize], "{r:?}");
    }
    // Past the end: shorter, never padded.
    let got = s.zipper.get_range(id, size - 10..size + 100).await.unwrap();
    assert_eq!(&got[..], &want[size as usize - 10..]);
    assert!(s.zipper.get_range(id, 5..5).await.unwrap().is_empty());
    assert!(matches!(
        s.zipper.get_range(id, size..size + 1).await,
        Err(FetchError::OutOfRange { size: s2, .. }) if s2 == size
    ));
    assert_eq!(
        read_all(&s.zipper, id, size, 256 << 10, 4).await.unwrap(),
        *want
    );

    // The server's 416 when the size is not known yet.
    let (small, _, small_size) = SMALL;
    assert!(matches!(
        s.zipper.get_range(small, 5000..6000).await,
        Err(FetchError::OutOfRange { size: 1000, .. })
    ));
    let got = s.zipper.get_range(small, 990..2000).await.unwrap();
    assert_eq!(&got[..], &s.data[small][990..small_size]);

    // An empty product.
    let info = s.zipper.info(EMPTY.0).await.unwrap();
    assert_eq!(info.size, 0);
    assert!(matches!(
        s.zipper.get_range(EMPTY.0, 0..10).await,
        Err(FetchError::OutOfRange { size: 0, .. })
    ));

    // Every 206 the server sent was for exactly what was asked.
    for e in zipper_log(&s.double) {
        assert!(
            e.status == 200 || e.status == 206 || e.status == 416,
            "{e:?}"
        );
    }
    let stats = s.zipper.stats();
    assert_eq!(
        (stats.retries, stats.unauthorized, stats.throttled),
        (0, 0, 0)
    );
    assert_eq!(stats.connection_limit, DEFAULT_MAX_CONNECTIONS);
}

#[tokio::test]
async fn zipper_concurrent_info_asks_once() {
    let s = setup(Faults::default()).await;
    let (id, _, size) = SMALL;
    let infos = futures::future::join_all((0..8).map(|_| s.zipper.info(id))).await;
    for i in infos {
        assert_eq!(i.unwrap().size, size as u64);
    }
    assert_eq!(s.zipper.stats().requests, 2, "one HEAD and one probe");
    assert!(s.zipper.inner.describing.lock().unwrap().is_empty());
}

#[tokio::test]
async fn zipper_rides_out_an_outage() {
    let s = setup(Faults {
        bandwidth_per_conn: Some(4 << 20),
        ..Faults::default()
    })
    .await;
    let (id, _, size) = BIG;
    let double = s.double.clone();
    let outage = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        double.outage(Duration::from_millis(1500));
    });
    let got = read_all(&s.zipper, id, size as u64, 256 << 10, 2)
        .await
        .unwrap();
    outage.await.unwrap();
    assert!(got == s.data[id]);
    assert!(s.zipper.stats().retries > 0, "{:?}", s.zipper.stats());
}

#[tokio::test]
async fn zipper_not_found_and_bearer_and_legacy_urls() {
    let s = setup_with(Faults::default(), |cfg, d| {
        cfg.url_template = d.legacy_download_template();
        cfg.token_passing = TokenPassing::Bearer;
    })
    .await;
    let (id, _, size) = SMALL;
    let got = s.zipper.get_range(id, 100..size as u64).await.unwrap();
    assert_eq!(&got[..], &s.data[id][100..]);
    assert!(matches!(
        s.zipper.info("44444444-0000-0000-0000-000000000000").await,
        Err(FetchError::NotFound(_))
    ));
    assert!(matches!(
        s.zipper.get_range("no such id/../x", 0..10).await,
        Err(FetchError::NotFound(_))
    ));
    // Bearer: no token in any URL the double saw.
    for e in zipper_log(&s.double) {
        assert!(!e.path.contains("token="), "{}", e.path);
    }
}

#[tokio::test]
async fn zipper_resumes_cut_bodies() {
    let s = setup(Faults {
        cut_rate: 0.3,
        ..Faults::default()
    })
    .await;
    let (id, _, size) = BIG;
    let got = read_all(&s.zipper, id, size as u64, 512 << 10, 3)
        .await
        .unwrap();
    assert!(got == s.data[id], "bytes differ after resumes");
    let whole = s.zipper.get_range(id, 0..size as u64).await.unwrap();
    assert!(whole[..] == s.data[id][..]);
    let stats = s.zipper.stats();
    assert!(stats.resumes > 0, "the double cut nothing? {stats:?}");
    assert!(zipper_log(&s.double).iter().any(|e| e.outcome == "cut"));
}

#[tokio::test]
async fn zipper_retries_503() {
    let s = setup(Faults {
        fail_rate: 0.1,
        ..Faults::default()
    })
    .await;
    let (id, _, size) = BIG;
    let got = read_all(&s.zipper, id, size as u64, 64 << 10, 4)
        .await
        .unwrap();
    assert!(got == s.data[id]);
    assert!(s.zipper.stats().retries > 0);
    assert!(zipper_log(&s.double)
        .iter()
        .any(|e| e.outcome == "fault_503"));
}

#[tokio::test]
async fn zipper_gives_up_on_a_failing_service_with_a_clear_error() {
    let s = setup_with(
        Faults {
            fail_rate: 1.0,
            garbage_zipper_errors: true,
            ..Faults::default()
        },
        |cfg, _| cfg.max_retries = 2,
    )
    .await;
    let started = Instant::now();
    let err = s.zipper.get_range(SMALL.0, 0..10).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, FetchError::Server(_)), "{err:?}");
    assert!(msg.contains("503"), "{msg}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(zipper_log(&s.double).len(), 3, "one try and two retries");

    // JSON error bodies give code and message.
    s.double.set_faults(Faults {
        fail_rate: 1.0,
        ..Faults::default()
    });
    let msg = s
        .zipper
        .get_range(SMALL.0, 0..10)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("DAT-ZIP-503") && msg.contains("temporarily"),
        "{msg}"
    );
}

#[tokio::test]
async fn zipper_renews_a_revoked_token() {
    let s = setup(Faults::default()).await;
    let (id, _, size) = BIG;
    let got = s.zipper.get_range(id, 0..1000).await.unwrap();
    assert_eq!(&got[..], &s.data[id][..1000]);
    s.double.revoke_tokens();
    // Concurrent readers all hit 401 and share the renewal.
    let got = read_all(&s.zipper, id, size as u64, 512 << 10, 4)
        .await
        .unwrap();
    assert!(got == s.data[id]);
    let stats = s.zipper.stats();
    assert!(stats.unauthorized >= 1, "{stats:?}");
    assert_eq!(s.tokens.renewals.load(Ordering::SeqCst), 1);
    assert!(zipper_log(&s.double)
        .iter()
        .any(|e| e.outcome == "revoked_token"));
}

/// A token source whose login is refused.
struct Refused(AtomicU32);

impl TokenSource for Refused {
    async fn token(&self) -> Result<AccessToken, AuthError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Err(AuthError::Refused {
            server: "keycloak".into(),
            reason: "Invalid user credentials".into(),
        })
    }
    async fn rejected(&self, _: &AccessToken) {}
}

#[tokio::test]
async fn zipper_refused_login_fails_at_once() {
    let z = Zipper::new(
        ZipperConfig::new("http://127.0.0.1:9/x/{id}", TokenPassing::Query),
        Refused(AtomicU32::new(0)),
        http_client().unwrap(),
    );
    assert!(matches!(
        z.get_range("a", 0..10).await,
        Err(FetchError::Auth(_))
    ));
    assert!(matches!(z.info("a").await, Err(FetchError::Auth(_))));
    assert_eq!(z.inner.tokens.0.load(Ordering::SeqCst), 2);
    assert_eq!(z.stats().requests, 0);
}

#[tokio::test]
async fn zipper_honours_429_retry_after() {
    let s = setup(Faults {
        rate_limit_burst: 2,
        ..Faults::default()
    })
    .await;
    let (id, _, _) = SMALL;
    let started = Instant::now();
    let got = s.zipper.get_range(id, 0..500).await.unwrap();
    assert_eq!(&got[..], &s.data[id][..500]);
    // Two 429s with Retry-After: 1 each.
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let stats = s.zipper.stats();
    assert_eq!(stats.throttled, 2);
    assert!(stats.connection_limit < DEFAULT_MAX_CONNECTIONS);
}

#[tokio::test]
async fn zipper_adapts_to_a_connection_cap() {
    let s = setup_with(
        Faults {
            max_connections_per_user: Some(2),
            // Slow enough that bodies overlap and the cap is really hit.
            bandwidth_per_conn: Some(8 << 20),
            ..Faults::default()
        },
        |cfg, _| cfg.max_connections = 8,
    )
    .await;
    let (id, _, size) = BIG;
    let got = read_all(&s.zipper, id, size as u64, 128 << 10, 8)
        .await
        .unwrap();
    assert!(got == s.data[id]);
    let stats = s.zipper.stats();
    assert!(stats.throttled > 0, "the cap was never hit: {stats:?}");
    assert!(stats.connection_limit < 8, "{stats:?}");
    assert!(zipper_log(&s.double)
        .iter()
        .any(|e| e.outcome == "max_connections"));
}

#[tokio::test]
async fn zipper_never_serves_wrong_bytes_when_range_is_ignored() {
    let s = setup(Faults {
        no_range: true,
        ..Faults::default()
    })
    .await;
    let (id, _, size) = BIG;
    let want = &s.data[id];
    // get_range before info: learns it from the 200.
    assert!(matches!(
        s.zipper.get_range(id, 1000..2000).await,
        Err(FetchError::RangeIgnored(_))
    ));
    let info = s.zipper.info(id).await.unwrap();
    assert_eq!(
        (info.size, info.ranges),
        (size as u64, RangeSupport::Ignored)
    );
    assert!(matches!(
        s.zipper.get_range(id, 0..10).await,
        Err(FetchError::RangeIgnored(_))
    ));

    // A fresh client learns it from info.
    let z2 = Zipper::new(
        s.zipper.config().clone(),
        Arc::clone(&s.tokens),
        http_client().unwrap(),
    );
    assert_eq!(z2.info(id).await.unwrap().ranges, RangeSupport::Ignored);

    // The stream fallback: exact from 0 and from an offset.
    let mut st = s.zipper.stream_from(id, 0).await.unwrap();
    assert_eq!(st.size(), Some(size as u64));
    let mut got = Vec::new();
    while let Some(c) = st.next_chunk().await.unwrap() {
        got.extend_from_slice(&c);
    }
    assert!(got == *want);
    let off = 1_500_000u64;
    let st = s.zipper.stream_from(id, off).await.unwrap();
    let chunks: Vec<Bytes> = st.into_stream().map(|c| c.unwrap()).collect().await;
    assert!(chunks.concat() == want[off as usize..]);
}

#[tokio::test]
async fn zipper_stream_resumes_cuts() {
    let s = setup(Faults {
        cut_rate: 0.7,
        ..Faults::default()
    })
    .await;
    let (id, _, _) = BIG;
    for off in [0u64, 777_777, 1_500_000, 3_000_000] {
        let chunks: Vec<Bytes> = s
            .zipper
            .stream_from(id, off)
            .await
            .unwrap()
            .into_stream()
            .map(|c| c.unwrap())
            .collect()
            .await;
        assert!(
            chunks.concat() == s.data[id][off as usize..],
            "offset {off}"
        );
    }
    assert!(s.zipper.stats().resumes > 0, "{:?}", s.zipper.stats());

    // Same through a server that ignores Range: resumed by skipping.
    s.double.set_faults(Faults {
        cut_rate: 0.5,
        no_range: true,
        ..Faults::default()
    });
    let chunks: Vec<Bytes> = s
        .zipper
        .stream_from(id, 123)
        .await
        .unwrap()
        .into_stream()
        .map(|c| c.unwrap())
        .collect()
        .await;
    assert!(chunks.concat() == s.data[id][123..]);
}

// ---- A scripted server, for what the double does not do ----

#[derive(Clone, Debug)]
struct Req {
    method: String,
    target: String,
    /// Lower-case names.
    headers: HashMap<String, String>,
}

enum Reply {
    /// Written, then the connection is closed.
    Raw(Vec<u8>),
    /// Written, then the connection is held open without a byte more.
    Stall(Vec<u8>),
}

fn reply(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut s = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        s.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (k, v) in headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str("\r\n");
    let mut out = s.into_bytes();
    out.extend_from_slice(body);
    Reply::Raw(out)
}

struct Script {
    port: u16,
    reqs: Arc<Mutex<Vec<Req>>>,
}

impl Script {
    async fn start(handler: impl Fn(&Req, u16) -> Reply + Send + Sync + 'static) -> Script {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let reqs = Arc::new(Mutex::new(Vec::new()));
        let handler = Arc::new(handler);
        let log = Arc::clone(&reqs);
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let (handler, log) = (Arc::clone(&handler), Arc::clone(&log));
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    let mut lines = text.split("\r\n");
                    let mut first = lines.next().unwrap_or("").split(' ');
                    let req = Req {
                        method: first.next().unwrap_or("").to_string(),
                        target: first.next().unwrap_or("").to_string(),
                        headers: lines
                            .filter_map(|l| l.split_once(':'))
                            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                            .collect(),
                    };
                    log.lock().unwrap().push(req.clone());
                    match handler(&req, port) {
                        Reply::Raw(b) => {
                            let _ = sock.write_all(&b).await;
                            let _ = sock.shutdown().await;
                        }
                        Reply::Stall(b) => {
                            let _ = sock.write_all(&b).await;
                            tokio::time::sleep(Duration::from_secs(30)).await;
                        }
                    }
                });
            }
        });
        Script { port, reqs }
    }

    fn reqs(&self) -> Vec<Req> {
        self.reqs.lock().unwrap().clone()
    }
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

fn scripted(
    script: &Script,
    passing: TokenPassing,
    tweak: impl FnOnce(&mut ZipperConfig),
) -> Zipper<Fixed> {
    let mut cfg = ZipperConfig::new(
        format!("http://127.0.0.1:{}/dl/{{id}}", script.port),
        passing,
    );
    cfg.read_timeout = Duration::from_secs(2);
    tweak(&mut cfg);
    Zipper::new(cfg, Fixed(AtomicU32::new(0)), http_client().unwrap())
}

/// Serves "0123456789" by range at /final; everything else redirects there on `localhost`
/// (another host name for the same server).
fn redirecting(req: &Req, port: u16) -> Reply {
    if req.target.starts_with("/dl/") {
        let loc = format!("http://localhost:{port}/final?token=forwarded&x=1");
        return reply("302 Found", &[("Location", &loc)], b"");
    }
    if req.target.starts_with("/same") {
        return reply("307 Temporary Redirect", &[("Location", "/dl/again")], b"");
    }
    reply(
        "206 Partial Content",
        &[("Content-Range", "bytes 2-4/10")],
        b"234",
    )
}

#[tokio::test]
async fn zipper_redirects_keep_credentials_only_for_trusted_hosts() {
    for passing in [TokenPassing::Bearer, TokenPassing::Query] {
        // Untrusted target host: no credential of any kind reaches it.
        let script = Script::start(redirecting).await;
        let z = scripted(&script, passing, |_| {});
        assert_eq!(&z.get_range("p", 2..5).await.unwrap()[..], b"234");
        let reqs = script.reqs();
        assert_eq!(reqs.len(), 2);
        let (first, hop) = (&reqs[0], &reqs[1]);
        assert_eq!(
            hop.headers.get("range").map(String::as_str),
            Some("bytes=2-4")
        );
        assert!(hop.target.starts_with("/final?x=1"), "{}", hop.target);
        assert!(!hop.target.contains("token"), "{}", hop.target);
        assert!(!hop.headers.contains_key("authorization"));
        match passing {
            TokenPassing::Bearer => {
                assert_eq!(
                    first.headers["authorization"],
                    format!("Bearer {FIXED_TOKEN}")
                );
                assert!(!first.target.contains("token="));
            }
            TokenPassing::Query => {
                assert!(first.target.ends_with(&format!("?token={FIXED_TOKEN}")));
                assert!(!first.headers.contains_key("authorization"));
            }
        }
        assert_eq!(z.stats().redirects, 1);

        // Trusted: ours replaces whatever token the Location carried.
        let script = Script::start(redirecting).await;
        let z = scripted(&script, passing, |c| {
            c.trusted_hosts = vec!["LOCALHOST".into()]
        });
        assert_eq!(&z.get_range("p", 2..5).await.unwrap()[..], b"234");
        let hop = &script.reqs()[1];
        assert!(!hop.target.contains("forwarded"), "{}", hop.target);
        match passing {
            TokenPassing::Bearer => {
                assert_eq!(
                    hop.headers["authorization"],
                    format!("Bearer {FIXED_TOKEN}")
                )
            }
            TokenPassing::Query => assert!(hop.target.contains(&format!("token={FIXED_TOKEN}"))),
        }
    }

    // A redirect loop ends.
    let script = Script::start(|req: &Req, _| {
        let next = format!("/dl/{}", req.target.len());
        reply("301 Moved Permanently", &[("Location", &next)], b"")
    })
    .await;
    let z = scripted(&script, TokenPassing::Bearer, |_| {});
    let err = z.get_range("p", 0..1).await.unwrap_err();
    assert!(
        matches!(err, FetchError::Protocol(ref m) if m.contains("redirects")),
        "{err:?}"
    );
    assert_eq!(script.reqs().len(), 11);
}

#[tokio::test]
async fn zipper_forbidden_and_token_refused_403() {
    let script = Script::start(|req: &Req, _| {
        if req.target.contains("terms") {
            reply(
                "403 Forbidden",
                &[],
                br#"{"trace-id":"x","code":"DAT-ZIP-111","message":"Terms and conditions not accepted"}"#,
            )
        } else {
            reply(
                "403 Forbidden",
                &[],
                br#"{"trace-id":"y","code":"DAT-ZIP-604","message":"Token not found"}"#,
            )
        }
    })
    .await;
    let z = scripted(&script, TokenPassing::Query, |_| {});
    let err = z.get_range("terms", 0..1).await.unwrap_err();
    match &err {
        FetchError::Forbidden(m) => assert!(m.contains("Terms and conditions"), "{m}"),
        e => panic!("{e:?}"),
    }
    assert_eq!(
        z.inner.tokens.0.load(Ordering::SeqCst),
        0,
        "a plain 403 renews nothing"
    );

    // 403 "Token not found": renewed, at most MAX_RENEWALS times, then a clear error.
    let err = z.get_range("other", 0..1).await.unwrap_err();
    assert!(
        matches!(err, FetchError::Forbidden(ref m) if m.contains("renewals")),
        "{err:?}"
    );
    assert_eq!(z.inner.tokens.0.load(Ordering::SeqCst), 3);
    assert!(!err.to_string().contains(FIXED_TOKEN));
}

#[tokio::test]
async fn zipper_rejects_lying_or_odd_answers() {
    let script = Script::start(|req: &Req, _| match req.target.split('?').next().unwrap() {
        // Content-Range other than what was asked.
        "/dl/shifted" => reply(
            "206 Partial Content",
            &[("Content-Range", "bytes 3-5/10")],
            b"345",
        ),
        // 206 with no Content-Range.
        "/dl/bare" => reply("206 Partial Content", &[], b"012"),
        // HEAD refused: info falls back to a ranged GET for byte 0.
        "/dl/nohead" if req.method == "HEAD" => reply("405 Method Not Allowed", &[], b""),
        "/dl/nohead" => reply(
            "206 Partial Content",
            &[
                ("Content-Range", "bytes 0-0/10"),
                ("Content-Disposition", "attachment; filename=\"N.zip\""),
            ],
            b"0",
        ),
        // Headers, then silence.
        "/dl/stall" => match reply(
            "206 Partial Content",
            &[("Content-Range", "bytes 0-9/10"), ("Content-Length", "10")],
            b"",
        ) {
            Reply::Raw(b) => Reply::Stall(b),
            s => s,
        },
        // A body with a token echoed in it, as garbage.
        "/dl/echo" => reply(
            "400 Bad Request",
            &[],
            format!("bad request {}", req.target).as_bytes(),
        ),
        _ => reply("418 I'm a teapot", &[], b"\x00\xff garbage"),
    })
    .await;
    let z = scripted(&script, TokenPassing::Query, |c| c.max_retries = 1);
    for id in ["shifted", "bare"] {
        let err = z.get_range(id, 0..3).await.unwrap_err();
        assert!(matches!(err, FetchError::Protocol(_)), "{id}: {err:?}");
    }
    let info = z.info("nohead").await.unwrap();
    assert_eq!(
        info,
        ObjectInfo {
            size: 10,
            filename: Some("N.zip".into()),
            ranges: RangeSupport::Honoured
        }
    );

    let started = Instant::now();
    let err = z.get_range("stall", 0..10).await.unwrap_err();
    assert!(matches!(err, FetchError::Timeout(_)), "{err:?}");
    // A 2 s stall, one retry, a 2 s stall again.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(10),
        "{took:?}"
    );

    let err = z.get_range("echo", 0..1).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("400") && !msg.contains(FIXED_TOKEN), "{msg}");
    let msg = z.get_range("teapot", 0..1).await.unwrap_err().to_string();
    assert!(msg.contains("418"), "{msg}");
}

#[test]
fn zipper_url_template_encodes_the_id() {
    let z = Zipper::new(
        ZipperConfig::new(
            "https://h.example/odata/v1/Products({id})/$value",
            TokenPassing::Query,
        ),
        Fixed(AtomicU32::new(0)),
        reqwest::Client::new(),
    );
    let u = z.inner.product_url("a b/../c").unwrap();
    assert_eq!(
        u.as_str(),
        "https://h.example/odata/v1/Products(a%20b%2F..%2Fc)/$value"
    );
    let bad = Zipper::new(
        ZipperConfig::new("not a url {id}", TokenPassing::Query),
        Fixed(AtomicU32::new(0)),
        reqwest::Client::new(),
    );
    assert!(matches!(
        bad.inner.product_url("x"),
        Err(FetchError::Protocol(_))
    ));
}

#[tokio::test]
async fn zipper_401_from_an_untrusted_redirect_target_is_not_renewed() {
    let script = Script::start(|req: &Req, port| {
        if req.target.starts_with("/dl/") {
            let loc = format!("http://localhost:{port}/final");
            return reply("302 Found", &[("Location", &loc)], b"");
        }
        reply(
            "401 Unauthorized",
            &[],
            br#"{"trace-id":"z","code":"DAT-ZIP-604","message":"Token not found"}"#,
        )
    })
    .await;
    let z = scripted(&script, TokenPassing::Bearer, |_| {});
    let err = z.get_range("p", 0..1).await.unwrap_err();
    assert!(
        matches!(err, FetchError::Forbidden(ref m) if m.contains("not trusted")),
        "{err:?}"
    );
    assert_eq!(z.inner.tokens.0.load(Ordering::SeqCst), 0);
}

/// Log lines, as the fmt subscriber writes them.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// Every path that logs or reports a URL, at TRACE, with the token in the query: redirects
/// that forward it, error bodies that echo it, renewals, unreachable hosts. It appears nowhere.
#[tokio::test]
async fn zipper_never_logs_or_reports_the_token() {
    let cap = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(cap.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let script = Script::start(|req: &Req, _| match req.target.split('?').next().unwrap() {
        "/dl/hop" => reply(
            "302 Found",
            &[("Location", &format!("/dl/echo?token={FIXED_TOKEN}"))],
            b"",
        ),
        "/dl/echo" => reply(
            "401 Unauthorized",
            &[],
            format!("no such token: {}", req.target).as_bytes(),
        ),
        _ => reply("503 Service Unavailable", &[], req.target.as_bytes()),
    })
    .await;
    let z = scripted(&script, TokenPassing::Query, |c| c.max_retries = 1);
    let mut messages = Vec::new();
    for id in ["hop", "fail"] {
        messages.push(z.get_range(id, 0..1).await.unwrap_err().to_string());
        messages.push(z.info(id).await.unwrap_err().to_string());
    }
    // Nothing listens on port 9 (discard): a connect error, whose reqwest text names the URL.
    let dead = Zipper::new(
        ZipperConfig {
            max_retries: 0,
            ..ZipperConfig::new("http://127.0.0.1:9/dl/{id}", TokenPassing::Query)
        },
        Fixed(AtomicU32::new(0)),
        http_client().unwrap(),
    );
    messages.push(dead.get_range("x", 0..1).await.unwrap_err().to_string());

    let logs = String::from_utf8(cap.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("token=***"),
        "the test logged no URL:\n{logs}"
    );
    assert!(!logs.contains(FIXED_TOKEN), "{logs}");
    for m in &messages {
        assert!(!m.contains(FIXED_TOKEN), "{m}");
    }
    assert!(
        messages.last().unwrap().contains("cannot reach 127.0.0.1"),
        "{messages:?}"
    );
}

/// End to end with the real token manager: 3 s tokens expire several times during the read,
/// and every token is revoked half-way; the bytes stay exact and the revocation costs one
/// renewal, not one per reader.
#[tokio::test]
async fn zipper_with_the_token_manager_across_expiry_and_revocation() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_products(dir.path());
    let mut config = Config::with_user(USER, PASSWORD, TOTP_SECRET).products(dir.path());
    config.access_lifetime = Duration::from_secs(3);
    config.faults.bandwidth_per_conn = Some(1 << 20);
    let double = Double::start(config).await.unwrap();
    let tokens = eodata_auth::TokenManager::new(
        eodata_auth::LoginConfig {
            token_url: double.token_url(),
            client_id: fake_creodias::CREODIAS_CLIENT_ID.into(),
            user: USER.into(),
            password: Secret::new(PASSWORD),
            totp_secret: Secret::new(TOTP_SECRET),
            cache_dir: None,
        },
        reqwest::Client::new(),
    )
    .unwrap();
    let zipper = Zipper::new(
        ZipperConfig::new(double.download_template(), TokenPassing::Bearer),
        Arc::new(tokens),
        http_client().unwrap(),
    );
    let (id, _, size) = BIG;
    let revoker = {
        let double = double.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(4500)).await;
            double.revoke_tokens();
        })
    };
    // 4 connections at 1 MiB/s: about 0.8 s per pass; several passes span 3 s tokens.
    let started = Instant::now();
    let mut passes = 0;
    while started.elapsed() < Duration::from_secs(7) {
        let got = read_all(&zipper, id, size as u64, 256 << 10, 4)
            .await
            .unwrap();
        assert!(got == data[id], "pass {passes}");
        passes += 1;
    }
    revoker.await.unwrap();
    let log = double.log();
    let revoked = log.iter().filter(|e| e.outcome == "revoked_token").count();
    let refreshes = log
        .iter()
        .filter(|e| e.service == "token" && e.grant_type.as_deref() == Some("refresh_token"))
        .count();
    let stats = zipper.stats();
    assert!(stats.unauthorized as usize >= revoked.min(1), "{stats:?}");
    assert!(
        revoked <= 4,
        "at most one 401 per connection in flight: {revoked}"
    );
    assert!(refreshes >= 2, "tokens renewed across expiry: {refreshes}");
    eprintln!("passes {passes}, 401s {revoked}, refreshes {refreshes}, {stats:?}");
}

#[test]
fn zipper_trusted_hosts_rule() {
    let mut cfg = ZipperConfig::new("https://zipper.example.eu/d/{id}", TokenPassing::Bearer);
    cfg.trusted_hosts = vec![".dataspace.example.eu".into(), "Other.Example".into()];
    let z = Zipper::new(cfg, Fixed(AtomicU32::new(0)), reqwest::Client::new());
    let origin = url::Url::parse("https://zipper.example.eu/d/x").unwrap();
    let trusted = |u: &str| z.inner.trusted(&origin, &url::Url::parse(u).unwrap());
    assert!(trusted("https://ZIPPER.example.eu/other"));
    assert!(trusted("https://download.dataspace.example.eu/x"));
    assert!(trusted("https://other.example/x"));
    assert!(!trusted("https://dataspace.example.eu.evil.test/x"));
    assert!(!trusted("https://evildataspace.example.eu/x"));
    assert!(!trusted("https://example.eu/x"));
    assert!(
        !trusted("http://zipper.example.eu/d/x"),
        "never downgraded to http"
    );
    assert!(!trusted("https://127.0.0.1/x"));
}
