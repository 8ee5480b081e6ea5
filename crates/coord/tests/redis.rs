//! The coordinator against a real `redis-server` (Debian's, started on 127.0.0.1 by the test)
//! and, for tokens, the double's Keycloak: the account's cap is never exceeded and nobody
//! starves, a dead holder's slots come back within the lease, Redis going away lets reads on,
//! and sixteen token managers on four "machines" log in once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eodata_auth::{LoginConfig, Secret, TokenManager, TokenSource};
use eodata_coord::slots::SLOT_LEASE;
use eodata_coord::testing::RedisServer;
use eodata_coord::{Address, Coordinator};
use fake_creodias::{Config, Double};

const USER: &str = "first.last@example.com";
const PASSWORD: &str = "pw";
const SECRET: &str = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";
const TOKEN_URL: &str = "https://id.example/token";

fn coordinator(redis: &RedisServer) -> Coordinator {
    let address = Address::parse(&redis.url(), false).unwrap();
    Coordinator::new(&address, USER, TOKEN_URL).unwrap()
}

fn held(redis: &RedisServer) -> usize {
    let key = format!(
        "eodata-mount:v1:{}:slots",
        eodata_auth::token::account_key(USER, TOKEN_URL)
    );
    redis.cli(&["ZCARD", &key]).parse().unwrap()
}

async fn until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_holds_across_machines_and_nobody_starves() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    const CAP: usize = 3;
    // Two "machines": separate coordinators, one account.
    let nodes = [
        coordinator(&redis).account_slots(CAP),
        coordinator(&redis).account_slots(CAP),
    ];
    let in_use = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let served = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let mut tasks = Vec::new();
    for (n, slots) in nodes.iter().enumerate() {
        // The first machine asks twice as hard as the second.
        for _ in 0..(6 - 2 * n) {
            let (slots, in_use, most, served) =
                (slots.clone(), in_use.clone(), most.clone(), served.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..5 {
                    let slot = slots.acquire().await;
                    let now = in_use.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    in_use.fetch_sub(1, Ordering::SeqCst);
                    served[n].fetch_add(1, Ordering::SeqCst);
                    drop(slot);
                }
            }));
        }
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("every request is served")
            .unwrap();
    }
    assert!(most.load(Ordering::SeqCst) <= CAP, "{most:?} at once");
    assert_eq!(most.load(Ordering::SeqCst), CAP, "the cap is used whole");
    assert_eq!(served[0].load(Ordering::SeqCst), 30);
    assert_eq!(served[1].load(Ordering::SeqCst), 20);
    until("slots given back", Duration::from_secs(5), || {
        held(&redis) == 0
    })
    .await;
}

#[test]
fn a_dead_machines_slots_come_back_within_the_lease() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // The machine that dies: its own runtime, shut down with its slots held (no release, no
    // lease renewal), as a process killed by SIGKILL.
    let doomed = tokio::runtime::Runtime::new().unwrap();
    doomed.block_on(async {
        let slots = coordinator(&redis).account_slots(2);
        for _ in 0..2 {
            std::mem::forget(slots.acquire().await);
        }
    });
    doomed.shutdown_background();
    assert_eq!(held(&redis), 2);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let slots = coordinator(&redis).account_slots(2);
        let started = Instant::now();
        let _slot = tokio::time::timeout(SLOT_LEASE + Duration::from_secs(5), slots.acquire())
            .await
            .expect("a slot within the lease");
        let waited = started.elapsed();
        assert!(
            waited > SLOT_LEASE / 3,
            "the dead machine's slots were not held: waited {waited:?}"
        );
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_away_lets_requests_through_and_it_is_used_again_when_back() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let port = redis.port();
    let coord = coordinator(&redis);
    let slots = coord.account_slots(1);
    let first = slots.acquire().await;
    assert_eq!(held(&redis), 1);
    redis.stop();
    // The cap of 1 is held, but Redis is away: requests go ahead, quickly.
    let started = Instant::now();
    let mut through = Vec::new();
    for _ in 0..10 {
        through.push(slots.acquire().await);
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(coord.link().is_down());
    drop((first, through));
    let redis = RedisServer::start_on(port).unwrap();
    tokio::time::sleep(eodata_coord::link::RECONNECT_EVERY + Duration::from_millis(200)).await;
    let again = slots.acquire().await;
    assert!(!coord.link().is_down());
    assert_eq!(held(&redis), 1, "the slot is counted in Redis again");
    drop(again);
}

fn manager(double: &Double, redis: &RedisServer, cache: &std::path::Path) -> Arc<TokenManager> {
    let cfg = LoginConfig {
        token_url: double.token_url(),
        client_id: fake_creodias::CREODIAS_CLIENT_ID.into(),
        user: USER.into(),
        password: Secret::new(PASSWORD),
        totp_secret: Secret::new(SECRET),
        cache_dir: Some(cache.to_owned()),
    };
    let address = Address::parse(&redis.url(), false).unwrap();
    let coord = Coordinator::new(&address, USER, &double.token_url()).unwrap();
    Arc::new(
        TokenManager::new(cfg, eodata_http::client(None).unwrap())
            .unwrap()
            .with_shared_store(|local| coord.token_store(local)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_managers_on_four_machines_log_in_once() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let mut config = Config::with_user(USER, PASSWORD, SECRET);
    config.access_lifetime = Duration::from_secs(3);
    config.refresh_lifetime = Duration::from_secs(8);
    let double = Double::start(config).await.unwrap();
    // Four machines (their own token cache directories), four managers each.
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let managers: Vec<_> = (0..16)
        .map(|i| manager(&double, &redis, dirs[i % 4].path()))
        .collect();
    let run_for = Duration::from_secs(8);
    let started = Instant::now();
    let tasks: Vec<_> = managers
        .iter()
        .cloned()
        .map(|m| {
            tokio::spawn(async move {
                while started.elapsed() < run_for {
                    let t = m.token().await.unwrap();
                    assert!(t.expires_at > std::time::SystemTime::now());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let log = double.log();
    let count = |grant: &str| {
        log.iter()
            .filter(|e| e.service == "token" && e.grant_type.as_deref() == Some(grant))
            .count()
    };
    assert_eq!(count("password"), 1, "one password login for the cluster");
    assert_eq!(log.iter().filter(|e| e.outcome == "reused_code").count(), 0);
    // A 3 s token renewed with 1 s left: a refresh every ~2 s for the whole cluster, not one
    // per manager.
    let refreshes = count("refresh_token");
    assert!(
        (1..=8).contains(&refreshes),
        "{refreshes} refreshes in {run_for:?}"
    );
}

/// `rediss://`: a Redis serving TLS with a certificate of a private CA, trusted through
/// `SSL_CERT_FILE` (read by the system trust store loader, as on a cluster node whose CA is
/// installed): slots are taken over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_redis_works() {
    if !std::path::Path::new("/usr/bin/openssl").exists() {
        eprintln!("skipped: no openssl to make certificates");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = |f: &str| dir.path().join(f).to_str().unwrap().to_string();
    std::fs::write(d("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    for args in [
        vec![
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &d("ca.key"),
            "-out",
            &d("ca.pem"),
            "-days",
            "1",
            "-subj",
            "/CN=eodata test CA",
        ],
        vec![
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &d("server.key"),
            "-out",
            &d("server.csr"),
            "-subj",
            "/CN=127.0.0.1",
        ],
        vec![
            "x509",
            "-req",
            "-in",
            &d("server.csr"),
            "-CA",
            &d("ca.pem"),
            "-CAkey",
            &d("ca.key"),
            "-CAcreateserial",
            "-out",
            &d("server.pem"),
            "-days",
            "1",
            "-extfile",
            &d("san.ext"),
        ],
    ] {
        let out = std::process::Command::new("openssl")
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let plain = eodata_coord::testing::free_port();
    let tls = eodata_coord::testing::free_port();
    let Some(redis) = RedisServer::start_with(
        plain,
        &[
            "--tls-port",
            &tls.to_string(),
            "--tls-cert-file",
            &d("server.pem"),
            "--tls-key-file",
            &d("server.key"),
            "--tls-ca-cert-file",
            &d("ca.pem"),
            "--tls-auth-clients",
            "no",
        ],
    ) else {
        return;
    };
    std::env::set_var("SSL_CERT_FILE", d("ca.pem"));
    let address = Address::parse(&format!("rediss://127.0.0.1:{tls}"), false).unwrap();
    let coord = Coordinator::new(&address, USER, TOKEN_URL).unwrap();
    let slots = coord.account_slots(2);
    let slot = slots.acquire().await;
    assert!(!coord.link().is_down(), "TLS connection failed");
    assert_eq!(held(&redis), 1, "the slot was taken over TLS");
    drop(slot);
}

/// A Redis that stops answering without closing (a network partition): once it is known to be
/// away, one request at a time pays for the next reconnect try (the connect and response
/// timeouts); the others go ahead at once instead of queueing behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_redis_stalls_at_most_one_request_per_reconnect_try() {
    // Accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in silent.incoming() {
            held.push(s);
        }
    });
    let address = Address::parse(&format!("redis://127.0.0.1:{port}"), false).unwrap();
    let coord = Coordinator::new(&address, USER, TOKEN_URL).unwrap();
    let slots = coord.account_slots(1);
    // The first request finds Redis away (after the response timeout) and goes ahead.
    drop(slots.acquire().await);
    assert!(coord.link().is_down());
    tokio::time::sleep(eodata_coord::link::RECONNECT_EVERY + Duration::from_millis(100)).await;
    // Ten requests at once, when a reconnect try is due.
    let waits: Vec<_> = (0..10)
        .map(|_| {
            let slots = slots.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                drop(slots.acquire().await);
                t.elapsed()
            })
        })
        .collect();
    let mut slow = 0;
    for w in waits {
        if w.await.unwrap() > Duration::from_millis(500) {
            slow += 1;
        }
    }
    assert!(
        slow <= 1,
        "{slow} of 10 requests waited for the reconnect try"
    );
}
