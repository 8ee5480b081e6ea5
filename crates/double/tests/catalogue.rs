//! The OData catalogue: filters, paging (`$top`, `$skip`, nextLink, `$count`), ordering, the
//! single entity, errors and the garbage fault.

mod common;

use common::*;
use fake_creodias::{Double, Faults};
use serde_json::Value;

async fn search(c: &reqwest::Client, d: &Double, query: &[(&str, &str)]) -> (u16, Value) {
    let r = c
        .get(format!("{}/Products", d.catalogue_url()))
        .query(query)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

fn names(v: &Value) -> Vec<String> {
    v["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["Name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn by_name_and_by_id() {
    let store = store();
    let (d, c) = start(config().products(store.dir.path())).await;
    let (s, v) = search(&c, &d, &[("$filter", &format!("Name eq '{NAME}'"))]).await;
    assert_eq!(s, 200);
    assert_eq!(v["@odata.context"], "$metadata#Products");
    assert_eq!(names(&v), [NAME]);
    let p = &v["value"][0];
    assert_eq!(p["Id"], ID);
    assert!(
        p.get("file").is_none(),
        "the store's private key is not served"
    );
    for field in [
        "ContentLength",
        "OriginDate",
        "S3Path",
        "Footprint",
        "Online",
        "ContentType",
    ] {
        assert!(p.get(field).is_some(), "{field}");
    }
    assert_eq!(p["ContentDate"]["Start"], "2018-09-27T05:12:21.024Z");
    assert_eq!(p["Checksum"][0]["Algorithm"], "MD5");
    let (_, v) = search(
        &c,
        &d,
        &[("$filter", &format!("Id eq '{}'", ID.to_uppercase()))],
    )
    .await;
    assert_eq!(names(&v), [NAME]);
    let (_, v) = search(&c, &d, &[("$filter", "Name eq 'nothing'")]).await;
    assert!(names(&v).is_empty());

    // The tutorial's spelling with spaces as %20, straight in the URL.
    let url = format!(
        "{}/Products?$filter=Name%20eq%20'{NAME}'",
        d.catalogue_url()
    );
    let v: Value = c.get(url).send().await.unwrap().json().await.unwrap();
    assert_eq!(names(&v), [NAME]);

    let r = c
        .get(format!("{}/Products({ID})", d.catalogue_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let e: Value = r.json().await.unwrap();
    assert_eq!(
        (e["Id"].as_str(), e["Name"].as_str()),
        (Some(ID), Some(NAME))
    );
    let r = c
        .get(format!(
            "{}/Products(99999999-0000-4000-8000-000000000000)",
            d.catalogue_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn functions_collections_dates_and_online() {
    let store = store();
    let (d, c) = start(config().products(store.dir.path())).await;
    let count = |f: &'static str| {
        let (c, d) = (c.clone(), d.clone());
        async move {
            let (s, v) = search(
                &c,
                &d,
                &[("$filter", f), ("$count", "True"), ("$top", "1000")],
            )
            .await;
            assert_eq!(s, 200, "{f}: {v}");
            let n = v["@odata.count"].as_u64().unwrap();
            assert_eq!(n as usize, v["value"].as_array().unwrap().len());
            n
        }
    };
    let total = (EXTRA + 2) as u64;
    assert_eq!(count("Online eq true").await, total);
    assert_eq!(count("contains(Name,'MSIL1C')").await, 1);
    assert_eq!(count("startswith(Name,'S2B_MSIL2A')").await, 23);
    assert_eq!(count("Collection/Name eq 'SENTINEL-2'").await, 24);
    assert_eq!(
        count("Collection/Name eq 'SENTINEL-1' and startswith(Name,'S1B')").await,
        22
    );
    assert_eq!(
        count("ContentDate/Start ge 2018-01-01T00:00:00.000Z and ContentDate/Start lt 2018-01-03T00:00:00.000Z").await,
        2
    );
    assert_eq!(count("ContentDate/Start gt 2018-09-01T00:00:00Z").await, 1);
    assert_eq!(count("ContentDate/Start le 2017-12-31T23:59:59Z").await, 1);
}

#[tokio::test]
async fn paging_follows_next_links_to_the_end() {
    let store = store();
    let (d, c) = start(config().products(store.dir.path())).await;
    // Ordered: unordered answers are shuffled, as the real catalogue's are not stable.
    let (_, first) = search(
        &c,
        &d,
        &[
            ("$filter", "Online eq true"),
            ("$orderby", "ContentDate/Start asc"),
        ],
    )
    .await;
    assert_eq!(names(&first).len(), 20, "default $top");
    let mut seen = names(&first);
    let mut next = first["@odata.nextLink"].as_str().map(str::to_string);
    while let Some(url) = next {
        assert!(url.starts_with(&d.catalogue_url()), "{url}");
        let v: Value = c.get(&url).send().await.unwrap().json().await.unwrap();
        seen.extend(names(&v));
        next = v["@odata.nextLink"].as_str().map(str::to_string);
    }
    assert_eq!(seen.len(), EXTRA + 2);
    let unique: std::collections::HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "pages do not overlap");

    let (_, v) = search(&c, &d, &[("$top", "5"), ("$skip", "44")]).await;
    assert_eq!(names(&v).len(), 3);
    assert!(
        v.get("@odata.nextLink").is_none(),
        "no link on the last page"
    );
    // Past the limits: 422 with a list-shaped detail, as the real catalogue answers.
    let (s, _) = search(&c, &d, &[("$top", "1001")]).await;
    assert_eq!(s, 422);
}

#[tokio::test]
async fn orderby_sorts() {
    let store = store();
    let (d, c) = start(config().products(store.dir.path())).await;
    let (_, v) = search(
        &c,
        &d,
        &[("$orderby", "ContentDate/Start desc"), ("$top", "2")],
    )
    .await;
    assert_eq!(names(&v)[0], NAME, "the latest product first");
    let (_, v) = search(
        &c,
        &d,
        &[("$orderby", "ContentDate/Start asc"), ("$top", "1")],
    )
    .await;
    assert!(names(&v)[0].starts_with("S1A_IW_GRDH"), "{v}");
    let (_, v) = search(&c, &d, &[("$orderby", "Name"), ("$top", "1000")]).await;
    let got = names(&v);
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(got, sorted);
}

#[tokio::test]
async fn bad_filters_are_400_and_garbage_fault_is_not_json() {
    let store = store();
    let (d, c) = start(config().products(store.dir.path())).await;
    let (s, v) = search(&c, &d, &[("$filter", "Name is 'x'")]).await;
    assert_eq!(s, 400);
    assert!(v["detail"]["message"].is_string());
    d.set_faults(Faults {
        garbage_catalogue: true,
        ..Faults::default()
    });
    let r = c
        .get(format!("{}/Products", d.catalogue_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).is_err());
    assert_eq!(d.log().last().unwrap().outcome, "garbage");
}

#[tokio::test]
async fn the_index_is_reread_when_it_changes() {
    let store = store();
    let (d, c) = start(config().products(store.dir.path())).await;
    let index = store.dir.path().join("index.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&index).unwrap()).unwrap();
    v["products"].as_array_mut().unwrap().truncate(1);
    // A different mtime even on coarse-grained filesystems.
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&index, serde_json::to_vec(&v).unwrap()).unwrap();
    let f = std::fs::File::options().write(true).open(&index).unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
        .unwrap();
    let (_, v) = search(&c, &d, &[("$count", "true")]).await;
    assert_eq!(v["@odata.count"], 1);
}
