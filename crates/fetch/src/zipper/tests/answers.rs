//! The real zipper's answers, one test each, against the double playing them: what the client
//! makes of each (the [`FetchError`] and so the reader's errno), what it logs, and whether it
//! renews the token. The codes and bodies are those of `docs/protocol.md`, "Download errors".

use super::logging::Captured;
use super::*;
use std::time::Instant;

/// Token grants the double answered (logins and refreshes).
fn token_requests(d: &Double) -> usize {
    d.log().iter().filter(|e| e.service == "token").count()
}

fn outcomes(d: &Double, outcome: &str) -> usize {
    zipper_log(d)
        .iter()
        .filter(|e| e.outcome == outcome)
        .count()
}

#[tokio::test]
async fn expired_token_is_109_and_renewed_once() {
    let s = setup_full(
        |c| {
            c.access_lifetime = Duration::from_secs(1);
            c.faults = ranged();
        },
        |_, _| {},
    )
    .await;
    let (id, _, _) = SMALL;
    s.zipper.get_range(id, 0..10).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let got = s.zipper.get_range(id, 0..100).await.unwrap();
    assert_eq!(&got[..], &s.data[id][..100]);
    assert_eq!(outcomes(&s.double, "expired_token"), 1);
    assert_eq!(s.tokens.renewals.load(Ordering::SeqCst), 1);
    assert_eq!(s.zipper.stats().unauthorized, 1);
}

#[tokio::test(flavor = "current_thread")]
async fn audience_609_is_final_no_renewal_one_clear_line() {
    let cap = Captured::default();
    let _guard = tracing::subscriber::set_default(cap.subscriber(tracing::Level::INFO));
    let s = setup(Faults {
        wrong_audience: true,
        ..ranged()
    })
    .await;
    let (id, _, _) = SMALL;
    let started = Instant::now();
    let err = s.zipper.get_range(id, 0..10).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(err, FetchError::Audience(_)), "{err:?}");
    assert!(err.is_logged_once());
    let msg = err.to_string();
    assert!(
        msg.contains("DAT-ZIP-609") && msg.contains("public client"),
        "{msg}"
    );
    // Later reads fail alike, without another token request or another log line.
    for _ in 0..3 {
        assert!(matches!(
            s.zipper.get_range(id, 0..10).await,
            Err(FetchError::Audience(_))
        ));
    }
    assert_eq!(s.tokens.renewals.load(Ordering::SeqCst), 0);
    assert_eq!(token_requests(&s.double), 1, "the one login, nothing after");
    let log = cap.text();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].contains("Token audience not allowed"), "{log}");
}

/// A 401 for a token obtained seconds ago is a passing fault: waited out, not a renewal loop.
#[tokio::test]
async fn spurious_401_is_waited_out_with_one_renewal() {
    let s = setup(Faults {
        spurious_401_ms: 5_000,
        ..ranged()
    })
    .await;
    let (id, _, _) = SMALL;
    let started = Instant::now();
    let got = s.zipper.get_range(id, 0..200).await.unwrap();
    assert_eq!(&got[..], &s.data[id][..200]);
    assert!(started.elapsed() >= Duration::from_secs(5));
    assert!(outcomes(&s.double, "spurious_401") >= 2);
    assert_eq!(
        s.tokens.renewals.load(Ordering::SeqCst),
        1,
        "one renewal, then waiting"
    );
}

#[tokio::test]
async fn no_objects_915_is_no_data_not_not_found() {
    let s = setup(ranged()).await;
    let err = s.zipper.get_range(NO_DATA.0, 0..10).await.unwrap_err();
    assert!(matches!(err, FetchError::NoData(..)), "{err:?}");
    assert!(err.to_string().contains("has no data online"), "{err}");
    assert!(err.to_string().contains("DAT-ZIP-915"), "{err}");
    assert_eq!(outcomes(&s.double, "no_objects"), 1, "not retried");
    assert_eq!(s.tokens.renewals.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn unreadable_uuid_422_is_our_bug() {
    let s = setup(ranged()).await;
    let quoted = format!("'{}'", SMALL.0);
    let err = s.zipper.get_range(&quoted, 0..10).await.unwrap_err();
    assert!(matches!(err, FetchError::Bug(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("DAT-ZIP-111") && msg.contains("UUID encoding"),
        "{msg}"
    );
    assert_eq!(outcomes(&s.double, "bad_uuid"), 1, "not retried");
}

#[tokio::test(flavor = "current_thread")]
async fn forbidden_608_asks_to_accept_the_terms_with_the_trace_id() {
    let cap = Captured::default();
    let _guard = tracing::subscriber::set_default(cap.subscriber(tracing::Level::INFO));
    let s = setup(Faults {
        forbidden: true,
        ..ranged()
    })
    .await;
    let err = s.zipper.get_range(SMALL.0, 0..10).await.unwrap_err();
    assert!(matches!(err, FetchError::Forbidden(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("DAT-ZIP-608") && msg.contains("accept the terms") && msg.contains("trace-id"),
        "{msg}"
    );
    assert_eq!(s.tokens.renewals.load(Ordering::SeqCst), 0);
    assert!(cap.text().contains("accept the terms"), "{}", cap.text());
}

/// 429 DAT-ZIP-100 without Retry-After (the double's default, as the real one is not known to
/// send it) under a server cap of 2: exact bytes, no ERROR line, and the budget grows back once
/// the cap is lifted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_without_retry_after_backs_off_and_regrows() {
    let cap = Captured::default();
    let _guard = tracing::subscriber::set_global_default(cap.subscriber(tracing::Level::INFO));
    let s = setup_with(
        Faults {
            max_connections_per_user: Some(2),
            bandwidth_per_conn: Some(8 << 20),
            ..ranged()
        },
        |cfg, _| cfg.max_connections = 4,
    )
    .await;
    assert_eq!(s.double.faults().retry_after_secs, None);
    let (id, _, size) = BIG;
    let got = read_all(&s.zipper, id, size as u64, 128 << 10, 8)
        .await
        .unwrap();
    assert!(got == s.data[id], "bytes differ");
    let stats = s.zipper.stats();
    assert!(stats.throttled >= 1, "{stats:?}");
    assert!(stats.connection_limit < 4, "{stats:?}");
    let refused = outcomes(&s.double, "max_connections");
    assert!(refused >= 1);

    // The cap goes: parallelism comes back to the configured 4.
    s.double.set_faults(ranged());
    for _ in 0..4 {
        let got = read_all(&s.zipper, id, size as u64, 256 << 10, 4)
            .await
            .unwrap();
        assert!(got == s.data[id]);
    }
    assert_eq!(s.zipper.stats().connection_limit, 4);
    // Only this test's own lines can fail it: others may share the global subscriber.
    let log = cap.text();
    assert!(
        !log.lines()
            .any(|l| l.contains("ERROR") && l.contains("Max session")),
        "{log}"
    );
}

/// Bodies shorter than their Content-Length (cut) on a server that ignores Range: resumed
/// from byte 0 and skipped, never served short.
#[tokio::test]
async fn short_bodies_are_resumed_never_served_short() {
    let s = setup(Faults {
        cut_rate: 0.5,
        ..Faults::default()
    })
    .await;
    let (id, _, size) = BIG;
    // Several streams, so that the seeded coin falls on "cut" at least once.
    for _ in 0..4 {
        let mut stream = s.zipper.stream_from(id, 0).await.unwrap();
        let mut got = Vec::new();
        while let Some(chunk) = stream.next_chunk().await.unwrap() {
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got.len(), size);
        assert!(got == s.data[id]);
    }
    assert!(outcomes(&s.double, "cut") >= 1, "the fault was met");
    assert!(s.zipper.stats().resumes >= 1);
}

/// Nothing listening: a few quick retries, then [`FetchError::Unreachable`] well within
/// 30 s; one ERROR line for the outage, and later requests fail at once.
#[tokio::test(flavor = "current_thread")]
async fn unreachable_service_fails_fast_once_per_outage() {
    let cap = Captured::default();
    let _guard = tracing::subscriber::set_default(cap.subscriber(tracing::Level::INFO));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = ZipperConfig::new(
        format!("http://127.0.0.1:{port}/dl/{{id}}"),
        TokenPassing::Query,
    );
    // As the mount configures it: retries bounded by the read timeout only.
    cfg.max_retries = u32::MAX;
    cfg.deadline = DEFAULT_READ_TIMEOUT;
    let z = Zipper::new(
        cfg,
        Fixed(AtomicU32::new(0)),
        eodata_http::client(None).unwrap(),
    );
    let started = Instant::now();
    let err = z.get_range(SMALL.0, 0..10).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, FetchError::Unreachable(_)), "{err:?}");
    assert!(err.is_logged_once());
    assert!(took <= Duration::from_secs(20), "{took:?}");
    assert!(
        took >= Duration::from_secs(5),
        "retried a few times first: {took:?}"
    );
    let started = Instant::now();
    for _ in 0..3 {
        assert!(matches!(
            z.get_range(SMALL.0, 0..10).await,
            Err(FetchError::Unreachable(_))
        ));
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let log = cap.text();
    assert_eq!(
        log.lines().filter(|l| l.contains("ERROR")).count(),
        1,
        "{log}"
    );
    assert!(
        log.lines().filter(|l| l.contains("WARN")).count() >= 2,
        "{log}"
    );
}
