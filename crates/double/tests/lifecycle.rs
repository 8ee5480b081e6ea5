//! Starting and stopping: `start_in_thread` from plain `#[test]` fns, `stop()`, dropping the
//! last handle, and the `fake-creodias serve` binary's first line and signal handling.

mod common;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fake_creodias::{Config, Double};

/// A bare HTTP/1.1 GET, so these tests need no async runtime.
fn get(base: &str, path: &str) -> std::io::Result<String> {
    let addr = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

fn refused_soon(base: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if get(base, "/odata/v1/Products").is_err() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn start_in_thread_serves_sync_tests_and_stop_ends_it() {
    let store = store();
    let d = Double::start_in_thread(config().products(store.dir.path())).unwrap();
    let answer = get(&d.base_url(), &format!("/odata/v1/Products({ID})")).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(NAME));
    assert_eq!(d.catalogue_url(), format!("{}/odata/v1", d.base_url()));
    assert_eq!(
        d.token_url(),
        format!(
            "{}/auth/realms/Creodias-new/protocol/openid-connect/token",
            d.base_url()
        )
    );
    assert_eq!(
        d.download_template(),
        format!("{}/odata/v1/Products({{id}})/$value", d.base_url())
    );
    assert_eq!(
        d.legacy_download_template(),
        format!("{}/download/{{id}}", d.base_url())
    );
    let base = d.base_url();
    let clone = d.clone();
    clone.stop();
    assert!(refused_soon(&base));
}

#[test]
fn dropping_the_last_handle_stops_the_server() {
    let d = Double::start_in_thread(Config::default()).unwrap();
    let base = d.base_url();
    let other = d.clone();
    drop(d);
    assert!(
        get(&base, "/odata/v1/Products")
            .unwrap()
            .starts_with("HTTP/1.1 200"),
        "a handle remains"
    );
    drop(other);
    assert!(refused_soon(&base));
}

#[test]
fn bad_totp_secret_is_a_start_error() {
    let err = Double::start_in_thread(Config::with_user("u", "p", "not base32 !"))
        .err()
        .unwrap();
    assert!(format!("{err:#}").contains("base32"), "{err:#}");
}

#[tokio::test]
async fn binary_prints_its_url_first_and_stops_on_sigterm() {
    fresh_step(5).await;
    let store = store();
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fake-creodias"))
        .args([
            "serve",
            "--port",
            "0",
            "--user",
            USER,
            "--password",
            PASSWORD,
            "--totp-secret",
            SECRET,
            "--range",
        ])
        .arg("--products")
        .arg(store.dir.path())
        .arg("--log")
        .arg(log.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let base = first
        .trim_end()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("first line: {first:?}"))
        .to_string();
    assert!(base.starts_with("http://127.0.0.1:"));
    let c = reqwest::Client::new();
    let r = c
        .post(format!(
            "{base}/auth/realms/Creodias-new/protocol/openid-connect/token"
        ))
        .form(&[
            ("client_id", "CLOUDFERRO_PUBLIC"),
            ("username", USER),
            ("password", PASSWORD),
            ("grant_type", "password"),
            ("totp", &code(0)),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let token: serde_json::Value = r.json().await.unwrap();
    let r = c
        .get(format!("{base}/download/{ID}"))
        .query(&[("token", token["access_token"].as_str().unwrap())])
        .header("range", "bytes=0-99")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &store.bytes[..100]);
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    let lines = std::fs::read_to_string(log.path()).unwrap();
    assert_eq!(lines.lines().count(), 2, "{lines}");
}

#[test]
fn binary_refuses_mismatched_accounts() {
    let out = Command::new(env!("CARGO_BIN_EXE_fake-creodias"))
        .args(["serve", "--user", "a", "--password", "b"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--totp-secret"));
}

#[tokio::test]
async fn control_endpoints_flip_faults_of_a_running_process() {
    let store = store();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fake-creodias"))
        .args(["serve", "--control", "--no-auth", "--products"])
        .arg(store.dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let base = first
        .trim_end()
        .trim_start_matches("listening on ")
        .to_string();
    let c = reqwest::Client::new();
    let faults: serde_json::Value = c
        .get(format!("{base}/_double/faults"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(faults["no_auth"], true);
    let r = c
        .put(format!("{base}/_double/faults"))
        .body(r#"{"no_auth": true, "fail_rate": 1.0}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c.get(format!("{base}/download/{ID}")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    // Latency travels as whole milliseconds under `latency_ms`.
    let r = c
        .put(format!("{base}/_double/faults"))
        .body(r#"{"latency_ms": 250}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let faults: serde_json::Value = c
        .get(format!("{base}/_double/faults"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(faults["latency_ms"], 250);
    assert_eq!(faults["fail_rate"], 0.0, "absent switches are off");
    let r = c
        .put(format!("{base}/_double/faults"))
        .body(r#"{"bogus": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "unknown switches are refused, not ignored");
    c.post(format!("{base}/_double/outage?ms=300"))
        .send()
        .await
        .unwrap();
    assert!(c
        .get(format!("{base}/odata/v1/Products"))
        .send()
        .await
        .is_err());
    tokio::time::sleep(Duration::from_millis(400)).await;
    let log: Vec<fake_creodias::LogEntry> = c
        .get(format!("{base}/_double/log"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let outcomes: Vec<&str> = log.iter().map(|e| e.outcome.as_str()).collect();
    // The dropped request is logged when it arrived on a kept-alive connection; a new
    // connection is closed before any request is read.
    assert!(
        outcomes == ["fault_503", "outage"] || outcomes == ["fault_503"],
        "{outcomes:?}"
    );
    child.kill().unwrap();
    child.wait().unwrap();

    // Without --control the paths do not exist.
    let d = Double::start(Config::default()).await.unwrap();
    let r = c
        .get(format!("{}/_double/log", d.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}
