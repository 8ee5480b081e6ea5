//! The doctor's questions to the catalogue (is it reachable, what does it say about the
//! product) and to the download service (does it honour Range, what headers does it send, does
//! HEAD work), each in as few requests as the answer needs.
//!
//! The download request asks for one byte (`Range: bytes=0-0`) and the connection is dropped
//! as soon as the headers are in: a server that ignores Range starts streaming the whole
//! product, which must not be read. The request URL may carry the token (`?token=`), so it is
//! never shown; errors are shown without their URL.

use std::time::Duration;

use eodata_auth::AccessToken;
use eodata_catalogue::{Catalogue, CatalogueError, Product};
use eodata_config::{Settings, TokenPassing};
use reqwest::header::{self, HeaderMap};
use reqwest::{Method, StatusCode};

use super::report::{Level, Section};
use crate::cli::CommonArgs;

/// Redirects followed before giving up; the real services use at most one (docs/protocol.md).
const MAX_REDIRECTS: usize = 5;

/// Bytes of an error body read to quote its message: zipper error bodies are a small JSON
/// object; the rest of a long body is not read.
const ERROR_BODY_BYTES: usize = 2048;

/// A reqwest error without its URL (which may carry a token), with its causes.
pub fn error_text(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "could not connect".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The product's catalogue entry: reachable, Online, ContentLength, Checksum.
pub async fn catalogue(
    settings: &Settings,
    http: &reqwest::Client,
    product: &str,
    s: &mut Section,
) -> Option<Product> {
    let opts = eodata_catalogue::Options {
        max_attempts: 1,
        request_timeout: super::REQUEST_TIMEOUT,
        ..Default::default()
    };
    let cat = Catalogue::with_options(settings.endpoints.catalogue_url.clone(), http.clone(), opts);
    match cat.resolve(product).await {
        Ok(p) => {
            s.ok("reachable", "answered the product's lookup");
            let online = if p.online {
                (Level::Ok, "Online true")
            } else {
                (
                    Level::Warn,
                    "Online false: the product is not downloadable now (ordered from tape in the provider's web interface)",
                )
            };
            let length = match p.size_hint {
                Some(n) => format!("ContentLength {n}"),
                None => "ContentLength 0 or absent (the download's own length is used)".into(),
            };
            let checksum = match &p.md5 {
                Some(_) => "Checksum MD5 present",
                None => "no MD5 in Checksum (downloads cannot be verified)",
            };
            s.add_value(
                "product",
                online.0,
                format!("{} ({}): {}; {length}; {checksum}", p.name, p.id, online.1),
                serde_json::json!({
                    "id": p.id, "name": p.name, "online": p.online,
                    "content_length": p.size_hint, "md5_present": p.md5.is_some(),
                }),
            );
            Some(p)
        }
        Err(CatalogueError::NotFound(_)) => {
            s.fail(
                "product",
                format!("the catalogue answered but knows no product {product:?}; give another with --product"),
            );
            None
        }
        Err(e) => {
            s.fail("reachable", format!("{e}"));
            None
        }
    }
}

/// The headers worth reporting, by name, in the order shown.
const SHOWN: [header::HeaderName; 6] = [
    header::ACCEPT_RANGES,
    header::CONTENT_RANGE,
    header::CONTENT_LENGTH,
    header::ETAG,
    header::CONTENT_DISPOSITION,
    header::CONTENT_TYPE,
];

fn shown_headers(h: &HeaderMap) -> (String, serde_json::Value) {
    let mut text = Vec::new();
    let mut json = serde_json::Map::new();
    for name in SHOWN {
        let value = h.get(&name).and_then(|v| v.to_str().ok());
        text.push(format!("{name}: {}", value.unwrap_or("-")));
        json.insert(name.to_string(), value.into());
    }
    (text.join(", "), serde_json::Value::Object(json))
}

/// One ranged GET and one HEAD of the product at the download service.
pub async fn download(
    common: &CommonArgs,
    settings: &Settings,
    http: &reqwest::Client,
    token: &AccessToken,
    product: &Product,
    s: &mut Section,
) {
    let url = settings.endpoints.download_url_for(&product.id);
    let get = request(common, settings, http, token, Method::GET, &url).await;
    let response = match get {
        Ok(r) => r,
        Err(text) => {
            s.fail("ranged GET", text);
            return;
        }
    };
    let status = response.status();
    let (headers, mut value) = shown_headers(response.headers());
    value["status"] = status.as_u16().into();
    if !status.is_success() {
        let body = error_body(response, token).await;
        let level = if status == StatusCode::TOO_MANY_REQUESTS {
            Level::Warn
        } else {
            Level::Fail
        };
        s.add_value(
            "ranged GET",
            level,
            format!("Range: bytes=0-0 answered {status}: {body}"),
            value,
        );
        return;
    }
    // Dropped unread: a server ignoring Range is streaming the whole product now.
    drop(response);
    s.add_value(
        "ranged GET",
        Level::Ok,
        format!("Range: bytes=0-0 answered {status}; {headers}; connection closed at once"),
        value.clone(),
    );
    range_support(s, status, &value);
    head(common, settings, http, token, &url, s).await;
}

/// Whether the ranged GET was answered as a slice (206 `bytes 0-0/...`) or not.
fn range_support(s: &mut Section, status: StatusCode, value: &serde_json::Value) {
    let content_range = value["content-range"].as_str().unwrap_or("");
    if status == StatusCode::PARTIAL_CONTENT && content_range.starts_with("bytes 0-0/") {
        s.add_value(
            "range",
            Level::Ok,
            "Range honoured: files are read block by block as they are asked",
            serde_json::json!({"honoured": true}),
        );
    } else {
        let cache = super::machine::default_cache_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_else(|| "--cache-dir".into());
        s.add_value(
            "range",
            Level::Warn,
            format!(
                "Range ignored: products stream whole; the disk cache at {cache} keeps each once"
            ),
            serde_json::json!({"honoured": false}),
        );
    }
}

/// One HEAD of the product: its headers (a server refusing HEAD is fine: the mount does not
/// need it).
async fn head(
    common: &CommonArgs,
    settings: &Settings,
    http: &reqwest::Client,
    token: &AccessToken,
    url: &str,
    s: &mut Section,
) {
    match request(common, settings, http, token, Method::HEAD, url).await {
        Ok(r) => {
            let (headers, mut value) = shown_headers(r.headers());
            value["status"] = r.status().as_u16().into();
            let text = if r.status().is_success() {
                format!("answered {}; {headers}", r.status())
            } else {
                format!(
                    "answered {} (HEAD not supported; the mount does not need it)",
                    r.status()
                )
            };
            s.add_value("HEAD", Level::Ok, text, value);
        }
        Err(text) => s.warn("HEAD", text),
    }
}

/// One request with the token as the provider wants it, following redirects to hosts the
/// token may go to (the template's host and the provider's domain, plus `--trusted-host`).
async fn request(
    common: &CommonArgs,
    settings: &Settings,
    http: &reqwest::Client,
    token: &AccessToken,
    method: Method,
    url: &str,
) -> Result<reqwest::Response, String> {
    let mut url =
        url::Url::parse(url).map_err(|e| format!("the download URL is not a URL: {e}"))?;
    let first_host = url.host_str().unwrap_or("").to_string();
    let passing = settings.endpoints.token_passing;
    if passing == TokenPassing::Query {
        url.query_pairs_mut()
            .append_pair("token", token.value.expose());
    }
    for _ in 0..=MAX_REDIRECTS {
        let mut req = http
            .request(method.clone(), url.clone())
            .timeout(super::REQUEST_TIMEOUT);
        if method == Method::GET {
            req = req.header(header::RANGE, "bytes=0-0");
        }
        if passing == TokenPassing::Bearer {
            req = req.bearer_auth(token.value.expose());
        }
        let r = req.send().await.map_err(|e| error_text(&e))?;
        if !r.status().is_redirection() {
            return Ok(r);
        }
        let location = r
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| format!("{} without a Location", r.status()))?;
        let next = url
            .join(location)
            .map_err(|e| format!("{} to a Location that is not a URL: {e}", r.status()))?;
        let host = next.host_str().unwrap_or("").to_string();
        if passing == TokenPassing::Bearer && !trusted(common, settings, &first_host, &host) {
            return Err(format!(
                "redirected to {host}, which is not trusted with the token (add --trusted-host {host} if it is the provider's)"
            ));
        }
        tracing::debug!(
            "download service redirected to {}",
            eodata_auth::redact_url(next.as_str())
        );
        url = next;
    }
    Err(format!("more than {MAX_REDIRECTS} redirects"))
}

fn trusted(common: &CommonArgs, settings: &Settings, first: &str, host: &str) -> bool {
    let domains: &[&str] = match settings.endpoints.provider {
        eodata_config::Provider::Creodias => &[".creodias.eu", ".cloudferro.com"],
        eodata_config::Provider::Cdse => &[".dataspace.copernicus.eu"],
    };
    let local = |h: &str| h == "localhost" || h == "127.0.0.1";
    host.eq_ignore_ascii_case(first)
        || (local(host) && local(first))
        || domains.iter().any(|d| host.ends_with(d))
        || common.trusted_hosts.iter().any(|t| {
            host.eq_ignore_ascii_case(t) || (t.starts_with('.') && host.ends_with(t.as_str()))
        })
}

/// The start of an error body, as one line, with the token blanked should the server echo it.
async fn error_body(mut r: reqwest::Response, token: &AccessToken) -> String {
    let mut body = Vec::new();
    let read = async {
        while let Ok(Some(chunk)) = r.chunk().await {
            body.extend_from_slice(&chunk);
            if body.len() >= ERROR_BODY_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
    body.truncate(ERROR_BODY_BYTES);
    let text = String::from_utf8_lossy(&body);
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let text = text.replace(token.value.expose(), "***");
    if text.is_empty() {
        "(empty body)".into()
    } else {
        text
    }
}
