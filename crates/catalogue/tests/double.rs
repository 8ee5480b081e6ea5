//! Resolve, caching and paging against the workspace's CREODIAS double (`fake-creodias`), so
//! this client and the double's catalogue cannot drift apart: both follow docs/protocol.md.

use std::time::Duration;

use eodata_catalogue::{Catalogue, CatalogueError, Options};
use fake_creodias::{Config, Double, Faults};
use serde_json::json;

const ID: &str = "db0c8ef3-8ec0-5185-a537-812dad3c58f8";
const NAME: &str = "S2A_MSIL1C_20180927T051221_N0206_R033_T42FXL_20180927T073143.SAFE";
/// Catalogue-only entries, more than one default page (20) so paging shows.
const EXTRA: usize = 45;

fn entry(id: &str, name: &str) -> serde_json::Value {
    json!({
        "Id": id, "Name": name, "ContentType": "application/octet-stream",
        "ContentLength": 820675224, "OriginDate": "2018-09-27T08:23:56.024000Z",
        "PublicationDate": "2018-09-27T09:01:02.000Z", "ModificationDate": "2018-09-27T09:01:02.000Z",
        "Online": true, "S3Path": format!("/eodata/Sentinel-2/MSI/L1C/2018/09/27/{name}"),
        "ContentDate": {"Start": "2018-09-27T05:12:21.024Z", "End": "2018-09-27T05:12:21.024Z"},
        "Footprint": "geography'SRID=4326;POLYGON ((1 1, 2 1, 2 2, 1 1))'",
        "Checksum": [{"Value": "d41d8cd98f00b204e9800998ecf8427e", "Algorithm": "MD5", "ChecksumDate": "2018-09-27T09:01:02.000Z"}],
        "Collection": "SENTINEL-2",
    })
}

async fn start() -> (Double, Catalogue, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut products = vec![entry(ID, NAME)];
    for i in 0..EXTRA {
        products.push(entry(
            &format!("00000000-0000-4000-8000-{i:012}"),
            &format!("S2B_MSIL2A_20180101T000000_N{i:04}.SAFE"),
        ));
    }
    std::fs::write(
        dir.path().join("index.json"),
        json!({ "products": products }).to_string(),
    )
    .unwrap();
    let double = Double::start(Config::default().products(dir.path()))
        .await
        .unwrap();
    let base = url::Url::parse(&double.catalogue_url()).unwrap();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    (double, Catalogue::new(base, http), dir)
}

fn catalogue_requests(double: &Double) -> usize {
    double
        .log()
        .iter()
        .filter(|e| e.service == "catalogue")
        .count()
}

#[tokio::test]
async fn resolve_every_form_against_the_double() {
    let (double, cat, _dir) = start().await;
    let p = cat.resolve(NAME).await.unwrap();
    assert_eq!(p.id, ID);
    assert_eq!(p.size_hint, Some(820_675_224));
    assert_eq!(p.md5.as_deref(), Some("d41d8cd98f00b204e9800998ecf8427e"));
    assert!(p.content_start.is_some() && p.online);

    // Fresh catalogues, so that each form makes its own request.
    let base = url::Url::parse(&double.catalogue_url()).unwrap();
    let fresh = || Catalogue::new(base.clone(), reqwest::Client::new());
    assert_eq!(fresh().resolve(ID).await.unwrap().name, NAME);
    assert_eq!(
        fresh().resolve(&ID.to_uppercase()).await.unwrap().name,
        NAME
    );
    assert_eq!(
        fresh()
            .resolve(NAME.trim_end_matches(".SAFE"))
            .await
            .unwrap()
            .id,
        ID
    );
    assert_eq!(
        fresh().resolve(&format!("{NAME}.zip")).await.unwrap().id,
        ID
    );
    let e = fresh().resolve("nope's.SAFE").await.unwrap_err();
    assert_eq!(e, CatalogueError::NotFound("nope's.SAFE".into()));
    let e = fresh()
        .resolve("99999999-0000-4000-8000-000000000000")
        .await
        .unwrap_err();
    assert!(matches!(e, CatalogueError::NotFound(_)), "{e:?}");
    assert!(
        double.log().iter().all(|e| e.outcome != "bad_filter"),
        "{:?}",
        double.log()
    );
}

#[tokio::test]
async fn repeated_lookups_cost_one_request() {
    let (double, cat, _dir) = start().await;
    for _ in 0..5 {
        cat.resolve(NAME).await.unwrap();
        cat.resolve(ID).await.unwrap();
        cat.resolve("missing.SAFE").await.unwrap_err();
    }
    assert_eq!(catalogue_requests(&double), 2);
}

#[tokio::test]
async fn query_pages_through_the_double() {
    let (double, _, _dir) = start().await;
    let base = url::Url::parse(&double.catalogue_url()).unwrap();
    let opts = Options {
        page_size: 20,
        ..Options::default()
    };
    let cat = Catalogue::with_options(base, reqwest::Client::new(), opts);
    let all = cat.query("startswith(Name,'S2B_')", 1000).await.unwrap();
    assert_eq!(all.len(), EXTRA);
    assert_eq!(catalogue_requests(&double), 3, "pages of 20: 20 + 20 + 5");
    let some = cat
        .query("Collection/Name eq 'SENTINEL-2'", 30)
        .await
        .unwrap();
    assert_eq!(some.len(), 30);
    // Listed products resolve from the cache.
    let before = catalogue_requests(&double);
    cat.resolve("S2B_MSIL2A_20180101T000000_N0007.SAFE")
        .await
        .unwrap();
    assert_eq!(catalogue_requests(&double), before);
}

#[tokio::test]
async fn garbage_from_the_double_is_a_protocol_error() {
    let (double, cat, _dir) = start().await;
    double.set_faults(Faults {
        garbage_catalogue: true,
        ..Faults::default()
    });
    let e = cat.resolve(NAME).await.unwrap_err();
    assert!(
        matches!(&e, CatalogueError::Protocol { url, .. } if url.starts_with(&double.catalogue_url())),
        "{e:?}"
    );
    double.set_faults(Faults {
        latency: Duration::ZERO,
        ..Faults::default()
    });
    assert_eq!(
        cat.resolve(NAME).await.unwrap().id,
        ID,
        "failures are not cached"
    );
}
