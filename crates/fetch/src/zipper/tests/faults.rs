//! Against the double with faults injected: outages, cut bodies, 503s, a service that keeps
//! failing, 429 with Retry-After, a per-user connection cap, and Range ignored (ranges refused,
//! streams exact and resumed).

use std::time::Instant;

use super::*;

#[tokio::test]
async fn zipper_rides_out_an_outage() {
    let s = setup(Faults {
        bandwidth_per_conn: Some(4 << 20),
        ..ranged()
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
async fn zipper_resumes_cut_bodies() {
    let s = setup(Faults {
        cut_rate: 0.3,
        ..ranged()
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
        ..ranged()
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
            ..ranged()
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
        ..ranged()
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
async fn zipper_honours_429_retry_after() {
    let s = setup(Faults {
        rate_limit_burst: 2,
        retry_after_secs: Some(1),
        ..ranged()
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
            ..ranged()
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
        eodata_http::client(None).unwrap(),
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
