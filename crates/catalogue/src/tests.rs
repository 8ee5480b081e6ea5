//! Resolve, cache, single flight, paging and failures against the double crate's scripted HTTP
//! server, answering like the OData catalogue (only the filters this crate sends) and counting
//! requests.

use super::*;
use fake_creodias::scripted;
use std::sync::atomic::{AtomicUsize, Ordering};

const SAFE_ID: &str = "db0c8ef3-8ec0-5185-a537-812dad3c58f8";
const SAFE: &str = "S2A_MSIL1C_20180927T051221_N0206_R033_T42FXL_20180927T073143.SAFE";
const SEN3_ID: &str = "11111111-2222-3333-4444-555555555555";
const SEN3: &str = "S3A_OL_1_EFR____20200101T101010_20200101T101310_20200101T120000_0179_053_179_2160_LN1_O_NR_002.SEN3";

/// What the server answers.
#[derive(Clone)]
struct Reply {
    status: u16,
    body: String,
    headers: Vec<(&'static str, String)>,
}

fn json(body: serde_json::Value) -> Reply {
    Reply {
        status: 200,
        body: body.to_string(),
        headers: Vec::new(),
    }
}

fn status(status: u16, body: &str) -> Reply {
    Reply {
        status,
        body: body.to_string(),
        headers: Vec::new(),
    }
}

/// A request as the server saw it: path and decoded query parameters.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    params: HashMap<String, String>,
}

impl Seen {
    fn filter(&self) -> Option<&str> {
        self.params.get("$filter").map(String::as_str)
    }
}

impl Reply {
    /// As the scripted server writes it: JSON, with the reply's own headers.
    fn written(&self) -> scripted::Reply {
        let mut headers = vec![("Content-Type", "application/json")];
        headers.extend(self.headers.iter().map(|(k, v)| (*k, v.as_str())));
        scripted::Reply::new(self.status, &headers, &self.body)
    }
}

impl Seen {
    fn of(req: &scripted::Request) -> Seen {
        Seen {
            path: req.path().to_string(),
            params: req.query(),
        }
    }
}

/// The double crate's scripted server, answering as `handler` says.
struct Server {
    base: url::Url,
    server: scripted::Scripted,
}

impl Server {
    /// Serves `handler` on a free local port; each answer is delayed by `delay`.
    async fn start(
        delay: Duration,
        handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> Server {
        let handler = Arc::new(handler);
        let server = scripted::Scripted::start(move |req| {
            let (seen, handler) = (Seen::of(req), Arc::clone(&handler));
            scripted::Reply::later(delay, move || handler(&seen).written())
        })
        .await;
        let base = url::Url::parse(&format!("{}/odata/v1", server.base())).unwrap();
        Server { base, server }
    }

    fn requests(&self) -> Vec<Seen> {
        self.server.requests().iter().map(Seen::of).collect()
    }

    fn count(&self) -> usize {
        self.server.count()
    }

    fn catalogue(&self, opts: Options) -> Catalogue {
        Catalogue::with_options(self.base.clone(), reqwest::Client::new(), opts)
    }
}

/// Options for tests: fast retries, short negative TTL.
fn fast() -> Options {
    Options {
        negative_ttl: Duration::from_millis(300),
        backoff: Duration::from_millis(1),
        request_timeout: Duration::from_secs(5),
        ..Options::default()
    }
}

fn entry(id: &str, name: &str) -> serde_json::Value {
    serde_json::json!({
        "Id": id, "Name": name, "ContentLength": 1234, "Online": true,
        "ContentDate": {"Start": "2018-09-27T05:12:21.024000Z", "End": "2018-09-27T05:12:21.024Z"},
        "Checksum": [{"Value": "0a2e4b3f6c8d9e1f2a3b4c5d6e7f8091", "Algorithm": "MD5"}]
    })
}

/// The products the fake catalogue holds. `X_COG.SAFE` sorts before `X.SAFE` to check that the
/// stem match picks the exact one.
fn store() -> Vec<serde_json::Value> {
    let stem = SAFE.trim_end_matches(".SAFE");
    vec![
        entry(
            "22222222-0000-0000-0000-000000000000",
            &format!("{stem}_COG.SAFE"),
        ),
        entry(SAFE_ID, SAFE),
        entry(SEN3_ID, SEN3),
        entry("33333333-0000-0000-0000-000000000000", "it's.SAFE"),
    ]
}

/// Answers entity paths and the three filters the crate sends, as the real service would.
fn odata(seen: &Seen) -> Reply {
    let all = store();
    let name = |p: &serde_json::Value| p["Name"].as_str().unwrap().to_string();
    if let Some(id) = seen
        .path
        .strip_prefix("/odata/v1/Products(")
        .and_then(|r| r.strip_suffix(')'))
    {
        return match all.into_iter().find(|p| p["Id"] == id) {
            Some(p) => json(p),
            None => status(404, r#"{"detail":"Not found"}"#),
        };
    }
    let unquote = |s: &str| s.trim_matches('\'').replace("''", "'");
    let filter = seen.filter().unwrap_or("");
    let hits: Vec<_> = if let Some(v) = filter.strip_prefix("Name eq ") {
        all.into_iter().filter(|p| name(p) == unquote(v)).collect()
    } else if let Some(v) = filter.strip_prefix("Id eq ") {
        all.into_iter()
            .filter(|p| p["Id"] == unquote(v).as_str())
            .collect()
    } else if let Some(v) = filter
        .strip_prefix("startswith(Name,")
        .and_then(|r| r.strip_suffix(')'))
    {
        all.into_iter()
            .filter(|p| name(p).starts_with(&unquote(v)))
            .collect()
    } else {
        return status(400, r#"{"detail":"Invalid filter"}"#);
    };
    json(serde_json::json!({"@odata.context": "$metadata#Products", "value": hits}))
}

#[tokio::test]
async fn resolve_name_with_extension_asks_name_eq() {
    let server = Server::start(Duration::ZERO, odata).await;
    let cat = server.catalogue(fast());
    let p = cat.resolve(SAFE).await.unwrap();
    assert_eq!((p.id.as_str(), p.size_hint), (SAFE_ID, Some(1234)));
    assert_eq!(p.md5.as_deref(), Some("0a2e4b3f6c8d9e1f2a3b4c5d6e7f8091"));
    let p = cat.resolve(SEN3).await.unwrap();
    assert_eq!(p.id, SEN3_ID);
    let filters: Vec<_> = server
        .requests()
        .iter()
        .map(|r| r.filter().unwrap().to_string())
        .collect();
    assert_eq!(
        filters,
        [format!("Name eq '{SAFE}'"), format!("Name eq '{SEN3}'")]
    );
}

#[tokio::test]
async fn resolve_stem_and_zip_pick_the_exact_product() {
    let server = Server::start(Duration::ZERO, odata).await;
    let cat = server.catalogue(fast());
    let stem = SAFE.trim_end_matches(".SAFE");
    assert_eq!(cat.resolve(stem).await.unwrap().name, SAFE);
    assert_eq!(
        server.requests()[0].filter().unwrap(),
        format!("startswith(Name,'{stem}')")
    );
    // The download's file name: `.zip` dropped, then as above (cached: no new request).
    let p = cat.resolve(&format!("{SAFE}.zip")).await.unwrap();
    assert_eq!(p.id, SAFE_ID);
    assert_eq!(server.count(), 1);
    let p = cat.resolve(&format!("{stem}.ZIP")).await.unwrap();
    assert_eq!(p.id, SAFE_ID);
    assert_eq!(server.count(), 1);
}

#[tokio::test]
async fn resolve_uuid_uses_entity_path_any_case() {
    let server = Server::start(Duration::ZERO, odata).await;
    let cat = server.catalogue(fast());
    let p = cat.resolve(&SAFE_ID.to_uppercase()).await.unwrap();
    assert_eq!(p.name, SAFE);
    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].path, format!("/odata/v1/Products({SAFE_ID})"));
    // Cached under id and name.
    cat.resolve(SAFE_ID).await.unwrap();
    cat.resolve(SAFE).await.unwrap();
    assert_eq!(server.count(), 1);
}

#[tokio::test]
async fn resolve_uuid_falls_back_to_filter_without_entity_paths() {
    let server = Server::start(Duration::ZERO, |seen: &Seen| {
        if seen.path != "/odata/v1/Products" {
            return status(404, "no such route");
        }
        odata(seen)
    })
    .await;
    let cat = server.catalogue(fast());
    assert_eq!(cat.resolve(SEN3_ID).await.unwrap().name, SEN3);
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1].filter().unwrap(), format!("Id eq '{SEN3_ID}'"));
    // An id nobody has: NotFound after both tries.
    let missing = "99999999-0000-0000-0000-000000000000";
    assert_eq!(
        cat.resolve(missing).await.unwrap_err(),
        CatalogueError::NotFound(missing.to_string())
    );
}

#[tokio::test]
async fn quotes_in_names_are_doubled() {
    let server = Server::start(Duration::ZERO, odata).await;
    let cat = server.catalogue(fast());
    assert_eq!(
        cat.resolve("it's.SAFE").await.unwrap().id,
        "33333333-0000-0000-0000-000000000000"
    );
    assert_eq!(
        server.requests()[0].filter().unwrap(),
        "Name eq 'it''s.SAFE'"
    );
}

#[tokio::test]
async fn misses_are_cached_briefly() {
    let server = Server::start(Duration::ZERO, odata).await;
    let cat = server.catalogue(fast());
    for _ in 0..5 {
        let e = cat.resolve("Desktop.ini").await.unwrap_err();
        assert_eq!(e, CatalogueError::NotFound("Desktop.ini".into()));
    }
    assert_eq!(server.count(), 1);
    tokio::time::sleep(fast().negative_ttl + Duration::from_millis(50)).await;
    cat.resolve("Desktop.ini").await.unwrap_err();
    assert_eq!(server.count(), 2);
    // The message says what to do.
    let msg = CatalogueError::NotFound("x".into()).to_string();
    assert!(msg.contains("UUID"), "{msg}");
}

#[tokio::test]
async fn products_are_cached_until_their_ttl() {
    let server = Server::start(Duration::ZERO, odata).await;
    let cat = server.catalogue(Options {
        positive_ttl: Duration::from_millis(200),
        ..fast()
    });
    cat.resolve(SAFE).await.unwrap();
    cat.resolve(SAFE).await.unwrap();
    assert_eq!(server.count(), 1);
    tokio::time::sleep(Duration::from_millis(250)).await;
    cat.resolve(SAFE).await.unwrap();
    assert_eq!(server.count(), 2);
}

#[tokio::test]
async fn concurrent_resolves_share_one_request() {
    let server = Server::start(Duration::from_millis(200), odata).await;
    let cat = Arc::new(server.catalogue(fast()));
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let cat = cat.clone();
            let name = if i % 2 == 0 { "nope.SAFE" } else { SAFE };
            tokio::spawn(async move { cat.resolve(name).await })
        })
        .collect();
    let mut found = 0;
    for t in tasks {
        found += usize::from(t.await.unwrap().is_ok());
    }
    assert_eq!(found, 4);
    assert_eq!(server.count(), 2, "one request per distinct name");
    assert!(cat.state.lock().unwrap().in_flight.is_empty());
}

#[tokio::test]
async fn garbage_json_is_a_protocol_error_and_not_cached() {
    let server = Server::start(Duration::ZERO, |_: &Seen| {
        status(200, "<html>maintenance</html>")
    })
    .await;
    let cat = server.catalogue(fast());
    let e = cat.resolve(SAFE).await.unwrap_err();
    let CatalogueError::Protocol { url, reason } = &e else {
        panic!("{e:?}")
    };
    assert!(url.starts_with(server.base.as_str()), "{url}");
    assert!(
        reason.contains("not JSON") && reason.contains("maintenance"),
        "{reason}"
    );
    assert!(!e.to_string().contains('\n'));
    cat.resolve(SAFE).await.unwrap_err();
    assert_eq!(server.count(), 2, "failures are not cached");

    // JSON, but not OData.
    let server = Server::start(Duration::ZERO, |_: &Seen| {
        json(serde_json::json!({"value": [{"Id": 5}]}))
    })
    .await;
    let e = server.catalogue(fast()).resolve(SAFE).await.unwrap_err();
    assert!(
        matches!(&e, CatalogueError::Protocol { reason, .. } if reason.contains("not a product entry")),
        "{e:?}"
    );
    let server = Server::start(Duration::ZERO, |_: &Seen| json(serde_json::json!([1, 2]))).await;
    let e = server.catalogue(fast()).query("", 10).await.unwrap_err();
    assert!(
        matches!(&e, CatalogueError::Protocol { reason, .. } if reason.contains("not an OData result list")),
        "{e:?}"
    );
}

#[tokio::test]
async fn server_errors_are_retried_then_unavailable() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let server = Server::start(Duration::ZERO, move |seen: &Seen| {
        if c.fetch_add(1, Ordering::SeqCst) < 2 {
            Reply {
                headers: vec![("Retry-After", "0".into())],
                ..status(503, "busy")
            }
        } else {
            odata(seen)
        }
    })
    .await;
    assert_eq!(
        server.catalogue(fast()).resolve(SAFE).await.unwrap().id,
        SAFE_ID
    );
    assert_eq!(server.count(), 3);

    let server = Server::start(Duration::ZERO, |_: &Seen| status(502, "bad gateway")).await;
    let e = server.catalogue(fast()).resolve(SAFE).await.unwrap_err();
    assert!(
        matches!(&e, CatalogueError::Unavailable { reason, .. } if reason.contains("HTTP 502") && reason.contains("3 attempts")),
        "{e:?}"
    );
    assert_eq!(server.count(), 3);
}

#[tokio::test]
async fn unreachable_catalogue_is_unavailable() {
    // A port that was free a moment ago: connection refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = url::Url::parse(&format!("http://127.0.0.1:{port}/odata/v1")).unwrap();
    let cat = Catalogue::with_options(base, reqwest::Client::new(), fast());
    let e = cat.resolve(SAFE).await.unwrap_err();
    assert!(matches!(e, CatalogueError::Unavailable { .. }), "{e:?}");
}

#[tokio::test]
async fn bad_filter_is_rejected_without_retry() {
    let server = Server::start(Duration::ZERO, odata).await;
    let e = server
        .catalogue(fast())
        .query("Nonsense gt", 5)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, CatalogueError::Rejected { status: 400, message, .. } if message.contains("Invalid filter")),
        "{e:?}"
    );
    assert_eq!(server.count(), 1);
}

#[tokio::test]
async fn redirects_are_followed() {
    let server = Server::start(Duration::ZERO, |seen: &Seen| {
        if seen.path.starts_with("/old") {
            let target = format!(
                "/odata/v1/Products?$filter={}",
                odata::encode(seen.filter().unwrap())
            );
            Reply {
                headers: vec![("Location", target)],
                ..status(301, "")
            }
        } else {
            odata(seen)
        }
    })
    .await;
    let base = server.base.join("/old/v1").unwrap();
    let cat = Catalogue::with_options(
        base,
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        fast(),
    );
    assert_eq!(cat.resolve(SAFE).await.unwrap().id, SAFE_ID);
    assert_eq!(server.count(), 2);
}

/// `n` products named P000.SAFE, P001.SAFE, ...
fn numbered(n: usize) -> Vec<serde_json::Value> {
    (0..n)
        .map(|i| {
            entry(
                &format!("00000000-0000-0000-0000-{i:012}"),
                &format!("P{i:03}.SAFE"),
            )
        })
        .collect()
}

#[tokio::test]
async fn query_pages_by_top_and_skip() {
    let server = Server::start(Duration::ZERO, |seen: &Seen| {
        let top: usize = seen.params["$top"].parse().unwrap();
        let skip: usize = seen.params.get("$skip").map_or(0, |s| s.parse().unwrap());
        let page: Vec<_> = numbered(25).into_iter().skip(skip).take(top).collect();
        json(serde_json::json!({ "value": page }))
    })
    .await;
    let cat = server.catalogue(Options {
        page_size: 10,
        ..fast()
    });
    let all = cat.query("startswith(Name,'P')", 100).await.unwrap();
    assert_eq!(all.len(), 25);
    assert_eq!(all[24].name, "P024.SAFE");
    let reqs = server.requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[0].filter().unwrap(), "startswith(Name,'P')");
    assert_eq!(
        (
            reqs[2].params["$top"].as_str(),
            reqs[2].params["$skip"].as_str()
        ),
        ("10", "20")
    );
    // Listed products are cached for resolve.
    cat.resolve("P007.SAFE").await.unwrap();
    assert_eq!(server.count(), 3);
    // max_results stops early and shrinks the last $top.
    let some = cat.query("", 15).await.unwrap();
    assert_eq!(some.len(), 15);
    let reqs = server.requests();
    assert_eq!(reqs.len(), 5);
    assert_eq!(reqs[4].params["$top"], "5");
    assert!(reqs[4].filter().is_none(), "an empty filter is not sent");
}

#[tokio::test]
async fn query_follows_next_link_and_stops_on_repeats() {
    let server = Server::start(Duration::ZERO, |seen: &Seen| {
        // Pages of 10 whatever $top says, linked by a relative nextLink.
        let skip: usize = seen.params.get("skip").map_or(0, |s| s.parse().unwrap());
        let page: Vec<_> = numbered(25).into_iter().skip(skip).take(10).collect();
        let mut body = serde_json::json!({ "value": page });
        if skip + 10 < 25 {
            body["@odata.nextLink"] = format!("Products?skip={}", skip + 10).into();
        }
        json(body)
    })
    .await;
    let cat = server.catalogue(fast());
    let all = cat.query("", 1000).await.unwrap();
    assert_eq!(all.len(), 25);
    assert_eq!(server.requests()[2].params["skip"], "20");

    // A service that ignores paging and links back to itself forever.
    let server = Server::start(Duration::ZERO, |_: &Seen| {
        json(serde_json::json!({ "value": numbered(3), "@odata.nextLink": "Products?again" }))
    })
    .await;
    assert_eq!(
        server
            .catalogue(fast())
            .query("", 1000)
            .await
            .unwrap()
            .len(),
        3
    );
    assert_eq!(server.count(), 2);
}

#[test]
fn normalise_drops_zip_and_lowercases_uuids() {
    assert_eq!(normalise(" X.SAFE.zip "), "X.SAFE");
    assert_eq!(normalise("X.SAFE.Zip"), "X.SAFE");
    assert_eq!(
        normalise(&format!("{}.zip", SAFE_ID.to_uppercase())),
        SAFE_ID
    );
    assert_eq!(normalise(".zip"), "");
    assert_eq!(normalise("é"), "é");
}

#[test]
fn eodata_paths_name_their_last_component() {
    let name = "S2A_MSIL1C_20180927T051221_N0206_R033_T42FXL_20180927T073143.SAFE";
    for path in [
        format!("/eodata/Sentinel-2/MSI/L1C/2018/09/27/{name}"),
        format!("/eodata/Sentinel-2/MSI/L1C/2018/09/27/{name}.zip"),
        format!("/eodata/Sentinel-2/MSI/L1C/2018/09/27/{name}/"),
        format!("/mnt/eodata/Sentinel-2/MSI/L1C/2018/09/27/{name}.zip"),
        format!(" {name} "),
    ] {
        assert_eq!(normalise(&path), name, "{path}");
    }
    assert_eq!(product_of("/"), "");
    assert_eq!(normalise("/eodata/x/"), "x");
}

/// A seeded xorshift: the same inputs on every run, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// 20,000 mutations of a real-looking search answer (values swapped for other types and
/// extremes, strings cut or given odd characters, bytes changed, structure broken) go through
/// what a catalogue answer goes through, the page, each entry and its dates: an error or a
/// product, never a panic.
#[test]
fn catalogue_answers_never_panic_on_mutated_json() {
    use serde_json::Value;
    const ODD: &[&str] = &[
        "",
        "2018-09-27T05:12:21.024000Z",
        "2018-02-30T05:12:21Z",
        "9999-12-31T23:59:60.999999999999+23:59",
        "0000-01-01T00:00:00-99:99",
        "2018-09-27T05:12:21.\u{e9}Z",
        "2018-09-27\u{1F600}05:12:21Z",
        "2018-09-27T05:12:2",
        "S2A.SAFE.zip",
        "\u{0}",
        "db0c8ef3-8ec0-5185-a537-812dad3c58f8",
    ];
    let base = serde_json::json!({
        "@odata.context": "$metadata#Products",
        "value": [{
            "Id": SAFE_ID,
            "Name": SAFE,
            "ContentType": "application/octet-stream",
            "ContentLength": 123456789,
            "OriginDate": "2018-09-27T07:40:07.123Z",
            "PublicationDate": "2018-09-27T08:01:02.024000Z",
            "ModificationDate": "2018-09-27T08:01:02+00:00",
            "Online": true,
            "S3Path": "/eodata/Sentinel-2/MSI/L1C/2018/09/27/x.SAFE",
            "Checksum": [{"Value": "abc", "Algorithm": "MD5", "ChecksumDate": "2018-09-27T08:00:00Z"}],
            "ContentDate": {"Start": "2018-09-27T05:12:21.024Z", "End": "2018-09-27T05:12:21.024Z"},
            "Footprint": "geography'SRID=4326;POLYGON((1 2,3 4,1 2))'"
        }],
        "@odata.nextLink": "http://127.0.0.1:1/odata/v1/Products?$skip=1"
    });
    let url = url::Url::parse("http://127.0.0.1:1/odata/v1/Products").unwrap();
    let mut rng = Rng(0x0da7_a5ee_d000_0042);
    let odd_value = |rng: &mut Rng| -> Value {
        match rng.below(9) {
            0 => Value::Null,
            1 => Value::Bool(rng.below(2) == 0),
            2 => serde_json::json!(rng.next() as i64),
            3 => serde_json::json!(f64::MAX),
            4 => serde_json::json!(-1),
            5 => serde_json::json!([]),
            6 => serde_json::json!({}),
            7 => serde_json::json!(u64::MAX),
            _ => Value::String(ODD[rng.below(ODD.len())].to_string()),
        }
    };
    /// JSON pointers to every node of `v`.
    fn paths(v: &Value, at: String, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => m.iter().for_each(|(k, c)| {
                paths(
                    c,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                )
            }),
            Value::Array(a) => a
                .iter()
                .enumerate()
                .for_each(|(i, c)| paths(c, format!("{at}/{i}"), out)),
            _ => {}
        }
        out.push(at);
    }
    let (mut products, mut refused) = (0, 0);
    for i in 0..20_000u32 {
        let mut v = base.clone();
        for _ in 0..rng.below(4) + 1 {
            let mut all = Vec::new();
            paths(&v, String::new(), &mut all);
            let at = all[rng.below(all.len())].clone();
            let new = odd_value(&mut rng);
            if let Some(node) = v.pointer_mut(&at) {
                *node = new;
            }
        }
        let mut text = v.to_string().into_bytes();
        if i % 4 == 0 && !text.is_empty() {
            let at = rng.below(text.len());
            text[at] = rng.next() as u8;
        }
        let Ok(json) = serde_json::from_slice::<Value>(&text) else {
            continue;
        };
        if let Ok(page) = serde_json::from_value::<WirePage>(json.clone()) {
            for entry in page.value {
                match to_product(entry, &url) {
                    Ok(_) => products += 1,
                    Err(_) => refused += 1,
                }
            }
        }
        let _ = to_product(json.clone(), &url);
        if let Some(s) = json.as_str() {
            let _ = normalise(s);
        }
    }
    // Both outcomes were exercised, not only the first parse failing.
    assert!(
        products > 1000 && refused > 1000,
        "{products} products, {refused} refused"
    );
    for _ in 0..20_000 {
        let n = rng.below(40);
        let s: String = (0..n)
            .map(|_| {
                let c = b"0123456789-T:.Z+ \xc3"[rng.below(17)];
                c as char
            })
            .collect();
        let _ = parse_iso8601(&s);
        let _ = normalise(&s);
    }
}

/// The double shuffles answers asked without `$orderby`, as the real catalogue's order is
/// unstable: paging 2,500 products lists each exactly once only because every page asks for
/// `$orderby=ContentDate/Start asc`.
#[tokio::test]
async fn paging_2500_shuffled_products_lists_each_once() {
    let dir = tempfile::tempdir().unwrap();
    let products: Vec<serde_json::Value> = (0..2500)
        .map(|i| {
            serde_json::json!({
                "Id": format!("00000000-0000-0000-0000-{i:012}"),
                "Name": format!("S2A_MSIL1C_P{i:05}.SAFE"),
                "ContentLength": 0, "Online": true, "Checksum": [],
                "ContentDate": {
                    "Start": format!("2020-01-01T{:02}:{:02}:{:02}.000000Z", i / 3600, i / 60 % 60, i % 60),
                    "End": "2020-01-02T00:00:00.000000Z"
                },
            })
        })
        .collect();
    std::fs::write(
        dir.path().join("index.json"),
        serde_json::to_vec(&serde_json::json!({ "products": products })).unwrap(),
    )
    .unwrap();
    let mut config = fake_creodias::Config::default().products(dir.path());
    config.seed = 11;
    let double = fake_creodias::Double::start(config).await.unwrap();
    let cat = Catalogue::with_options(
        url::Url::parse(&double.catalogue_url()).unwrap(),
        reqwest::Client::new(),
        fast(),
    );
    let got = cat.query("startswith(Name,'S2A')", 5000).await.unwrap();
    let ids: HashSet<&str> = got.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(got.len(), 2500);
    assert_eq!(ids.len(), 2500, "each exactly once");
    // ContentLength 0 is "unknown", not an empty product.
    assert!(got.iter().all(|p| p.size_hint.is_none()), "{:?}", got[0]);
    for e in double.log().iter().filter(|e| e.service == "catalogue") {
        assert!(e.path.contains("orderby"), "{}", e.path);
    }
}
