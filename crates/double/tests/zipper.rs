//! The zipper: whole and ranged GETs, HEAD, 416, tokens (missing, expired, revoked), faults,
//! the connection cap, outage, the log's byte counts, and `/files/` for peers without auth.

mod common;

use std::time::Duration;

use common::*;
use fake_creodias::{Config, Double, Faults};
use serde_json::Value;

/// A zipper that honours Range (the double ignores it by default, as the real one does).
fn ranged(mut c: Config) -> Config {
    c.faults.range = true;
    c
}

async fn setup(cfg: impl FnOnce(Config) -> Config) -> (Double, reqwest::Client, Store, String) {
    fresh_step(5).await;
    let store = store();
    let (d, c) = start(cfg(config().products(store.dir.path()))).await;
    let token = access(&login(&c, &d).await);
    (d, c, store, token)
}

fn zipper_log(d: &Double) -> Vec<fake_creodias::LogEntry> {
    d.log()
        .into_iter()
        .filter(|e| e.service == "zipper")
        .collect()
}

#[tokio::test]
async fn whole_body_with_download_headers() {
    let (d, c, store, token) = setup(ranged).await;
    let r = c
        .get(url_for(&d, ID))
        .query(&[("token", &token)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["content-length"], SIZE.to_string().as_str());
    assert_eq!(h["accept-ranges"], "bytes");
    assert_eq!(h["content-type"], "application/zip");
    assert_eq!(
        h["content-disposition"],
        format!("attachment; filename=\"{NAME}.zip\"").as_str()
    );
    assert!(h.contains_key("last-modified"));
    assert_eq!(r.bytes().await.unwrap().as_ref(), store.bytes.as_slice());
    let e = zipper_log(&d).pop().unwrap();
    assert_eq!(
        (e.status, e.outcome.as_str(), e.bytes_sent),
        (200, "ok", SIZE as u64)
    );
    assert_eq!(e.range, Some((0, SIZE as u64 - 1)));
    assert_eq!(e.product.as_deref(), Some(ID));
    assert!(e.path.ends_with("?token=***"), "{}", e.path);
    assert!(e.token_id.is_some());
}

#[tokio::test]
async fn ranges_give_206_with_content_range() {
    let (d, c, store, token) = setup(ranged).await;
    let get = |range: &'static str| {
        let (c, url, token) = (c.clone(), url_for(&d, ID), token.clone());
        async move {
            c.get(url)
                .bearer_auth(token)
                .header("range", range)
                .send()
                .await
                .unwrap()
        }
    };
    let size = SIZE as u64;
    for (range, first, last) in [
        ("bytes=0-0", 0, 0),
        ("bytes=100000-200000", 100_000, 200_000),
        ("bytes=299990-", 299_990, size - 1),
        ("bytes=-5", size - 5, size - 1),
        ("bytes=299000-999999999", 299_000, size - 1),
    ] {
        let r = get(range).await;
        assert_eq!(r.status(), 206, "{range}");
        assert_eq!(
            r.headers()["content-range"],
            format!("bytes {first}-{last}/{size}").as_str()
        );
        assert_eq!(r.headers()["accept-ranges"], "bytes");
        assert_eq!(
            r.headers()["content-length"],
            (last - first + 1).to_string().as_str()
        );
        let body = r.bytes().await.unwrap();
        assert_eq!(
            body.as_ref(),
            &store.bytes[first as usize..=last as usize],
            "{range}"
        );
        let e = zipper_log(&d).pop().unwrap();
        assert_eq!(e.range, Some((first, last)));
        assert_eq!(e.bytes_sent, last - first + 1);
    }
    let r = get("bytes=400000-").await;
    assert_eq!(r.status(), 416);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes */{size}").as_str()
    );
}

#[tokio::test]
async fn head_answers_headers_only() {
    let (d, c, _store, token) = setup(ranged).await;
    let legacy = d.legacy_download_template().replace("{id}", ID);
    let r = c
        .head(&legacy)
        .query(&[("token", &token)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], SIZE.to_string().as_str());
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    let r = c
        .head(&legacy)
        .query(&[("token", &token)])
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-length"], "10");
    assert!(r.bytes().await.unwrap().is_empty());
    assert!(zipper_log(&d).iter().all(|e| e.bytes_sent == 0));
}

#[tokio::test]
async fn bad_tokens_get_401_token_not_found_and_expired_ones_109() {
    let (d, c, _store, token) = setup(|c| Config {
        access_lifetime: Duration::from_millis(800),
        ..c
    })
    .await;
    let check_as = |r: reqwest::Response, code: &'static str, message: &'static str| async move {
        assert_eq!(r.status(), 401);
        let b: Value = r.json().await.unwrap();
        assert_eq!(b["code"], code);
        assert_eq!(b["message"], message);
        assert!(b["trace-id"].is_string());
    };
    let check = |r| check_as(r, "DAT-ZIP-604", "Token not found");
    check(c.get(url_for(&d, ID)).send().await.unwrap()).await;
    check(
        c.get(url_for(&d, ID))
            .bearer_auth("eyJ.forged.x")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        c.head(url_for(&d, ID))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    check_as(
        c.get(url_for(&d, ID))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
        "DAT-ZIP-109",
        "Token is expired",
    )
    .await;
    let outcomes: Vec<String> = zipper_log(&d).into_iter().map(|e| e.outcome).collect();
    assert_eq!(
        outcomes,
        ["no_token", "unknown_token", "ok", "expired_token"]
    );
}

#[tokio::test]
async fn revoked_tokens_get_401_and_refresh_still_works() {
    let (d, c, _store, _) = setup(|c| c).await;
    let grant = login_with_code(&c, &d, 1).await;
    let token = access(&grant);
    assert_eq!(
        c.head(url_for(&d, ID))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    d.revoke_tokens();
    assert_eq!(
        c.head(url_for(&d, ID))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(zipper_log(&d).pop().unwrap().outcome, "revoked_token");
    let renewed: Value = c
        .post(d.token_url())
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", grant["refresh_token"].as_str().unwrap()),
            ("client_id", "CLOUDFERRO_PUBLIC"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = c
        .head(url_for(&d, ID))
        .bearer_auth(access(&renewed))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

async fn login_with_code(c: &reqwest::Client, d: &Double, offset: i64) -> Value {
    let (s, b) = password_grant(c, d, USER, PASSWORD, &code(offset)).await;
    assert_eq!(s, 200, "{b}");
    b
}

#[tokio::test]
async fn unknown_or_catalogue_only_products_are_404() {
    let (d, c, _store, token) = setup(|c| c).await;
    for id in [
        "99999999-0000-4000-8000-000000000000",
        "00000000-0000-4000-8000-000000000001",
    ] {
        let r = c
            .get(url_for(&d, id))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        assert!(r.json::<Value>().await.unwrap()["code"].is_string());
    }
}

#[tokio::test]
async fn no_range_fault_sends_200_and_everything() {
    let (d, c, store, token) = setup(|c| c).await;
    d.set_faults(Faults {
        ..Faults::default()
    });
    let r = c
        .get(url_for(&d, ID))
        .bearer_auth(&token)
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(!r.headers().contains_key("content-range"));
    assert_eq!(r.bytes().await.unwrap().as_ref(), store.bytes.as_slice());
}

#[tokio::test]
async fn fail_rate_gives_503_and_garbage_errors_are_html() {
    let (d, c, _store, token) = setup(|c| c).await;
    d.set_faults(Faults {
        fail_rate: 1.0,
        ..Faults::default()
    });
    let r = c
        .get(url_for(&d, ID))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.json::<Value>().await.unwrap()["code"].is_string());
    d.set_faults(Faults {
        fail_rate: 1.0,
        garbage_zipper_errors: true,
        ..Faults::default()
    });
    let r = c
        .get(url_for(&d, ID))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).is_err());
    assert_eq!(zipper_log(&d).pop().unwrap().outcome, "fault_503");
}

#[tokio::test]
async fn cut_bodies_end_short() {
    let (d, c, store, token) = setup(|c| c).await;
    d.set_faults(Faults {
        cut_rate: 1.0,
        ..Faults::default()
    });
    let mut r = c
        .get(url_for(&d, ID))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut got = Vec::new();
    let err = loop {
        match r.chunk().await {
            Ok(Some(b)) => got.extend_from_slice(&b),
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    assert!(err.is_some(), "a cut body must fail, not end cleanly");
    assert!(got.len() < SIZE && !got.is_empty(), "got {}", got.len());
    assert_eq!(
        got.as_slice(),
        &store.bytes[..got.len()],
        "what arrived is right"
    );
    let e = zipper_log(&d).pop().unwrap();
    assert_eq!(e.outcome, "cut");
    assert_eq!(e.bytes_sent, (SIZE / 2) as u64);
}

#[tokio::test]
async fn tamper_alters_exactly_one_byte() {
    let (d, c, store, token) = setup(|c| c).await;
    d.set_faults(Faults {
        tamper: true,
        ..Faults::default()
    });
    let body = c
        .get(url_for(&d, ID))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(body.len(), SIZE);
    let diffs = body
        .iter()
        .zip(&store.bytes)
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(diffs, 1);
    assert_eq!(zipper_log(&d).pop().unwrap().outcome, "tampered");
}

#[tokio::test]
async fn rate_limit_burst_then_service() {
    let (d, c, _store, token) = setup(|c| c).await;
    d.set_faults(Faults {
        rate_limit_burst: 2,
        retry_after_secs: Some(1),
        ..Faults::default()
    });
    for _ in 0..2 {
        let r = c
            .get(url_for(&d, ID))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "1");
    }
    assert_eq!(d.faults().rate_limit_burst, 0);
    let r = c
        .get(url_for(&d, ID))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn connection_cap_per_user_and_bandwidth() {
    let (d, c, store, token) = setup(|c| c).await;
    // 300 KB at 600 KB/s: the first body streams for about half a second.
    d.set_faults(Faults {
        max_connections_per_user: Some(1),
        bandwidth_per_conn: Some(600_000),
        ..Faults::default()
    });
    let started = std::time::Instant::now();
    let first = c
        .get(url_for(&d, ID))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(d.active_downloads(USER), 1);
    let second = c
        .get(url_for(&d, ID))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 429);
    assert!(
        !second.headers().contains_key("retry-after"),
        "absent unless asked for"
    );
    let b: Value = second.json().await.unwrap();
    assert_eq!(b["code"], "DAT-ZIP-100");
    assert_eq!(b["message"], "Max session number 1 exceeded");
    assert_eq!(
        first.bytes().await.unwrap().as_ref(),
        store.bytes.as_slice()
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400),
        "bandwidth cap not applied: {took:?}"
    );
    assert_eq!(d.active_downloads(USER), 0);
    let third = c
        .get(url_for(&d, ID))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        third.status(),
        200,
        "the slot is free once the body has been sent"
    );
    let outcomes: Vec<String> = zipper_log(&d).into_iter().map(|e| e.outcome).collect();
    assert_eq!(&outcomes[..2], ["max_connections", "ok"]);
}

#[tokio::test]
async fn latency_delays_every_answer() {
    let (d, c, _store, _token) = setup(|c| c).await;
    d.set_faults(Faults {
        latency: Duration::from_millis(300),
        ..Faults::default()
    });
    let t = std::time::Instant::now();
    c.get(format!("{}/Products", d.catalogue_url()))
        .send()
        .await
        .unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn outage_drops_requests_then_service_resumes() {
    let (d, c, store, token) = setup(|c| c).await;
    d.set_faults(Faults {
        bandwidth_per_conn: Some(300_000),
        ..Faults::default()
    });
    let mut inflight = c
        .get(url_for(&d, ID))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    inflight.chunk().await.unwrap();
    d.outage(Duration::from_millis(500));
    let mut cut = false;
    loop {
        match inflight.chunk().await {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => {
                cut = true;
                break;
            }
        }
    }
    assert!(cut, "bodies in flight are cut by an outage");
    assert!(c
        .head(url_for(&d, ID))
        .bearer_auth(&token)
        .send()
        .await
        .is_err());
    tokio::time::sleep(Duration::from_millis(600)).await;
    d.set_faults(Faults::default());
    let r = c
        .get(url_for(&d, ID))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), store.bytes.as_slice());
    assert!(d.log().iter().any(|e| e.outcome == "outage"));
}

#[tokio::test]
async fn no_auth_serves_files_index_and_zipper_without_token() {
    let (d, c, store, _token) = setup(ranged).await;
    assert_eq!(
        c.get(d.files_url()).send().await.unwrap().status(),
        404,
        "only with no_auth"
    );
    d.set_faults(Faults {
        no_auth: true,
        range: true,
        ..Faults::default()
    });
    let index = c
        .get(d.files_url())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let link = format!("<a href=\"{NAME}.zip\">{NAME}.zip</a>");
    assert!(index.contains(&link), "{index}");
    assert!(index.contains("S1A_IW_GRDH_1SDV_20180101T000000_SMALL.SAFE.zip"));
    assert!(
        !index.contains("S2B_MSIL2A"),
        "catalogue-only products have nothing to serve"
    );
    let r = c
        .get(format!("{}{NAME}.zip", d.files_url()))
        .header("range", "bytes=5-9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    assert!(r.headers().contains_key("last-modified"));
    assert_eq!(r.bytes().await.unwrap().as_ref(), &store.bytes[5..10]);
    let head = c
        .head(format!("{}small.zip", d.files_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.headers()["content-length"],
        "10",
        "the zip's own file name works too"
    );
    let r = c.get(url_for(&d, ID)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), SIZE);
    let last = d.log().pop().unwrap();
    assert_eq!(
        (last.service.as_str(), last.username.as_deref()),
        ("zipper", None)
    );
}

#[tokio::test]
async fn redirects_to_another_host_lose_the_bearer_header_but_keep_query_tokens() {
    let (d, c, store, token) = setup(|c| c).await;
    d.set_faults(Faults {
        redirect_downloads: true,
        ..Faults::default()
    });
    let r = c
        .get(url_for(&d, ID))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        401,
        "reqwest drops Authorization on a cross-host redirect"
    );
    assert!(
        r.url().as_str().starts_with("http://localhost:"),
        "{}",
        r.url()
    );
    let r = c
        .get(url_for(&d, ID))
        .query(&[("token", &token)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), store.bytes.as_slice());
    let outcomes: Vec<String> = zipper_log(&d).into_iter().map(|e| e.outcome).collect();
    assert_eq!(outcomes, ["redirect", "no_token", "redirect", "ok"]);
    // The legacy form is the download host itself: no redirect.
    let legacy = d.legacy_download_template().replace("{id}", ID);
    let r = c.head(legacy).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 200);
}
