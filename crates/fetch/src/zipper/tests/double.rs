//! Against the double (`fake-creodias`) behaving as the service does: info and byte-exact
//! ranges, one info request per product, not-found ids, bearer tokens and legacy URLs, and token
//! renewal (a revoked token, and the real token manager across expiry and revocation).

use std::time::Instant;

use super::*;

#[tokio::test]
async fn zipper_info_and_byte_exact_ranges() {
    let s = setup(ranged()).await;
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
    let s = setup(ranged()).await;
    let (id, _, size) = SMALL;
    let infos = futures::future::join_all((0..8).map(|_| s.zipper.info(id))).await;
    for i in infos {
        assert_eq!(i.unwrap().size, size as u64);
    }
    assert_eq!(s.zipper.stats().requests, 2, "one HEAD and one probe");
    assert!(s.zipper.inner.describing.lock().unwrap().is_empty());
}

#[tokio::test]
async fn zipper_not_found_and_bearer_and_legacy_urls() {
    let s = setup_with(ranged(), |cfg, d| {
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
    // Not a UUID: the zipper cannot read it (422 DAT-ZIP-111), which is a bug of ours.
    assert!(matches!(
        s.zipper.get_range("no such id/../x", 0..10).await,
        Err(FetchError::Bug(_))
    ));
    // Bearer: no token in any URL the double saw.
    for e in zipper_log(&s.double) {
        assert!(!e.path.contains("token="), "{}", e.path);
    }
}

#[tokio::test]
async fn zipper_renews_a_revoked_token() {
    let s = setup(ranged()).await;
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

/// End to end with the real token manager: 3 s tokens expire several times during the read,
/// and every token is revoked half-way; the bytes stay exact and the revocation costs one
/// renewal, not one per reader.
#[tokio::test]
async fn zipper_with_the_token_manager_across_expiry_and_revocation() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_products(dir.path());
    let mut config = Config::with_user(USER, PASSWORD, TOTP_SECRET).products(dir.path());
    config.access_lifetime = Duration::from_secs(3);
    config.faults = ranged();
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
        eodata_http::client(None).unwrap(),
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
