//! Helpers shared by the double's integration tests: a tiny product store written to a temp dir
//! (no dependence on the generator), TOTP codes for chosen steps, and a login.
#![allow(dead_code)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fake_creodias::{totp_code, Config, Double};
use serde_json::{json, Value};

/// The tutorial's user (an e-mail, sent unencoded by the tutorial).
pub const USER: &str = "person@example.com";
/// Has characters that only survive when percent-encoded, as the tutorial does.
pub const PASSWORD: &str = "qw&er+%= 1/é";
pub const SECRET: &str = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";
/// The tutorial's product.
pub const ID: &str = "db0c8ef3-8ec0-5185-a537-812dad3c58f8";
pub const NAME: &str = "S2A_MSIL1C_20180927T051221_N0206_R033_T42FXL_20180927T073143.SAFE";
/// Size of the tutorial product's file: several 64 KiB chunks, not a multiple of one.
pub const SIZE: usize = 300_001;
/// Catalogue-only entries added for paging tests.
pub const EXTRA: usize = 45;

pub struct Store {
    pub dir: tempfile::TempDir,
    pub bytes: Vec<u8>,
}

/// Deterministic bytes where every offset differs from its neighbours (a wrong offset shows).
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 7 + i / 251) % 256) as u8).collect()
}

/// The tutorial product (downloadable) plus `EXTRA` catalogue-only products, half S2, half S1,
/// with ContentDate/Start one day apart from 2018-01-01.
pub fn store() -> Store {
    let dir = tempfile::tempdir().unwrap();
    let bytes = pattern(SIZE);
    std::fs::write(dir.path().join("tutorial.zip"), &bytes).unwrap();
    std::fs::write(dir.path().join("small.zip"), b"0123456789").unwrap();
    let mut products = vec![
        entry(
            ID,
            NAME,
            "SENTINEL-2",
            "2018-09-27T05:12:21.024Z",
            Some("tutorial.zip"),
        ),
        entry(
            "11111111-2222-4333-8444-555555555555",
            "S1A_IW_GRDH_1SDV_20180101T000000_SMALL.SAFE",
            "SENTINEL-1",
            "2017-06-01T00:00:00.000Z",
            Some("small.zip"),
        ),
    ];
    for i in 0..EXTRA {
        let (mission, prefix) = if i % 2 == 0 {
            ("SENTINEL-2", "S2B_MSIL2A")
        } else {
            ("SENTINEL-1", "S1B_IW_SLC_")
        };
        let day = 1 + i % 28;
        let month = 1 + i / 28;
        products.push(entry(
            &format!("00000000-0000-4000-8000-{i:012}"),
            &format!("{prefix}_2018{month:02}{day:02}T000000_N{i:04}.SAFE"),
            mission,
            &format!("2018-{month:02}-{day:02}T00:00:00.000Z"),
            None,
        ));
    }
    std::fs::write(
        dir.path().join("index.json"),
        serde_json::to_vec_pretty(&json!({ "products": products })).unwrap(),
    )
    .unwrap();
    Store { dir, bytes }
}

fn entry(id: &str, name: &str, collection: &str, start: &str, file: Option<&str>) -> Value {
    let mut v = json!({
        "@odata.mediaContentType": "application/octet-stream",
        "Id": id, "Name": name, "ContentType": "application/octet-stream",
        "ContentLength": 0, "OriginDate": start, "PublicationDate": start,
        "ModificationDate": start, "Online": true,
        "S3Path": format!("/eodata/Sentinel-2/MSI/L1C/2018/09/27/{name}"),
        "ContentDate": {"Start": start, "End": start},
        "Footprint": "geography'SRID=4326;POLYGON ((1 1, 2 1, 2 2, 1 1))'",
        "Checksum": [{"Value": "d41d8cd98f00b204e9800998ecf8427e", "Algorithm": "MD5", "ChecksumDate": start}],
        "Collection": collection,
    });
    if let Some(f) = file {
        v["file"] = json!(f);
    }
    v
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Waits, if needed, so that at least `need` seconds remain in the current TOTP step: codes
/// computed now then stay in the same relation to the server's current step.
pub async fn fresh_step(need: u64) {
    let into = now() % 30;
    if into + need >= 30 {
        tokio::time::sleep(Duration::from_millis((30 - into) * 1000 + 200)).await;
    }
}

/// The code for the current step plus `offset` steps.
pub fn code(offset: i64) -> String {
    code_for(SECRET, offset)
}

pub fn code_for(secret: &str, offset: i64) -> String {
    let step = (now() / 30) as i64 + offset;
    totp_code(secret, step as u64 * 30).unwrap()
}

pub fn config() -> Config {
    Config::with_user(USER, PASSWORD, SECRET)
}

pub async fn start(config: Config) -> (Double, reqwest::Client) {
    let d = Double::start(config).await.unwrap();
    (d, reqwest::Client::new())
}

/// POSTs a password grant with the given fields (reqwest encodes them).
pub async fn password_grant(
    c: &reqwest::Client,
    d: &Double,
    user: &str,
    password: &str,
    code: &str,
) -> (u16, Value) {
    let r = c
        .post(d.token_url())
        .form(&[
            ("client_id", "CLOUDFERRO_PUBLIC"),
            ("username", user),
            ("password", password),
            ("grant_type", "password"),
            ("totp", code),
        ])
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// A fresh access token for the default user (uses the current step's code).
pub async fn login(c: &reqwest::Client, d: &Double) -> Value {
    let (status, body) = password_grant(c, d, USER, PASSWORD, &code(0)).await;
    assert_eq!(status, 200, "{body}");
    body
}

pub fn access(body: &Value) -> String {
    body["access_token"].as_str().unwrap().to_string()
}

pub fn url_for(d: &Double, id: &str) -> String {
    d.download_template().replace("{id}", id)
}
