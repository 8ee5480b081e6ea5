//! `eodata-mount doctor`: asks the services and this machine the questions a first run with a
//! real account needs answered, and says what it found, read-only and quickly.
//!
//! Much of what the real services do is not known from public sources (whether the zipper
//! honours Range, the token lifetimes, HEAD support; see docs/protocol.md). The first user
//! with an account meets those answers; this command makes the program ask them itself, so its
//! output, pasted into a bug report, tells us too. Hence its rules: no secret anywhere in the
//! output (password, TOTP secret and codes, tokens, signed URLs), at most one password login
//! (a refusal is the only attempt: Keycloak locks accounts that keep failing), one refresh,
//! and connections to the download service dropped as soon as the headers are in.
//!
//! Areas, in order: configuration (this file), login (this file), download service and
//! catalogue (`service`), this machine (`machine`); `report` prints them.

mod machine;
mod report;
mod service;

use std::os::unix::fs::PermissionsExt;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use eodata_auth::{AuthError, LoginSource, ServerOffset, TokenManager};
use eodata_config::Settings;

use crate::cli::{CommonArgs, DoctorArgs};
use report::{Level, Report, Section};

/// The product probed without `--product`: the tutorial's, small and long published.
const DEFAULT_PRODUCT: &str = "db0c8ef3-8ec0-5185-a537-812dad3c58f8";

/// A server clock further off than this is worth a warning. TOTP codes and expiries follow the
/// server's clock once measured, so a skew does not break logins, but other tools on this
/// machine (and `Date` checks) suffer; Keycloak itself tolerates one 30 s step either way.
const SKEW_WARN_SECS: f64 = 5.0;

/// Every request of the doctor gives up after this: the whole run should take seconds on a
/// healthy service, and a hung service is a finding, not something to wait out.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

pub async fn run(common: &CommonArgs, args: &DoctorArgs) -> anyhow::Result<ExitCode> {
    let report = diagnose(common, args).await;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    Ok(if report.mount_would_work {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn diagnose(common: &CommonArgs, args: &DoctorArgs) -> Report {
    let product = args.product.as_deref().unwrap_or(DEFAULT_PRODUCT);
    let http = match http_client() {
        Ok(c) => c,
        Err(e) => {
            let mut s = Section::new("configuration");
            s.fail("http client", format!("{e:#}"));
            return Report::new(vec![s, machine::check()]);
        }
    };
    let mut config = Section::new("configuration");
    let settings = configuration(common, &http, &mut config).await;
    let Some(settings) = settings else {
        let mut login = Section::new("login");
        login.fail("login", "not tried: the configuration failed");
        return Report::new(vec![config, login, machine::check()]);
    };
    coordinator(common, &settings, &mut config).await;
    let mut login = Section::new("login");
    let tokens = login_checks(common, &settings, &mut login).await;
    let mut catalogue = Section::new("catalogue");
    let entry = service::catalogue(&settings, &http, product, &mut catalogue).await;
    let mut download = Section::new("download service");
    match (&tokens, &entry) {
        (Some((_, token)), Some(entry)) => {
            service::download(common, &settings, &http, token, entry, &mut download).await
        }
        (None, _) => download.fail("download", "not tried: no token (the login failed)"),
        (_, None) => download.fail(
            "download",
            format!("not tried: the catalogue did not give the product {product}'s UUID"),
        ),
    }
    Report::new(vec![config, login, download, catalogue, machine::check()])
}

/// The cluster's coordinator, when one is configured: its address is usable and it answers.
async fn coordinator(common: &CommonArgs, settings: &Settings, s: &mut Section) {
    if settings.endpoints.coordinator.is_none() {
        return;
    }
    match crate::stack::coordinator(common, settings) {
        Ok(Some(c)) => match c.probe().await {
            Ok(text) => s.ok("coordinator", text),
            Err(text) => s.warn("coordinator", text),
        },
        Ok(None) => {}
        Err(e) => s.fail("coordinator", format!("{e:#}")),
    }
}

/// The doctor's own HTTP client: no redirects followed (the download check follows them
/// itself, to decide where a token may go) and a short whole-request timeout.
fn http_client() -> anyhow::Result<reqwest::Client> {
    use anyhow::Context;
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .timeout(REQUEST_TIMEOUT)
        .user_agent(concat!(
            "eodata-mount/",
            env!("CARGO_PKG_VERSION"),
            " doctor"
        ))
        .build()
        .context("cannot build the HTTP client")
}

/// Settings, secrets file, endpoints, TOTP secret, and the server clock against ours.
async fn configuration(
    common: &CommonArgs,
    http: &reqwest::Client,
    s: &mut Section,
) -> Option<Settings> {
    let overrides = crate::stack::overrides(common);
    let settings = match eodata_config::load(&overrides, &|k| std::env::var(k).ok()) {
        Ok(settings) => settings,
        Err(e) => {
            s.fail("settings", format!("{e}"));
            return None;
        }
    };
    let ep = &settings.endpoints;
    match &ep.config_path {
        Some(path) => {
            let mode = std::fs::metadata(path)
                .map(|m| format!("mode {:04o}", m.permissions().mode() & 0o7777))
                .unwrap_or_else(|e| format!("mode unknown: {e}"));
            s.ok("secrets file", format!("{} ({mode})", path.display()));
        }
        None => s.ok(
            "secrets file",
            "none; the credentials come from the environment",
        ),
    }
    for w in &ep.warnings {
        s.warn("warning", w.clone());
    }
    s.ok("provider", ep.provider.name());
    s.ok(
        "token endpoint",
        eodata_auth::redact_url(ep.token_url.as_str()),
    );
    s.ok("client id", ep.client_id.clone());
    let passing = match ep.token_passing {
        eodata_config::TokenPassing::Query => "token in the query",
        eodata_config::TokenPassing::Bearer => "token in an Authorization header",
    };
    // The template as written ({id} unencoded); a query, were there one, is not shown.
    let template = ep.download_url.split('?').next().unwrap_or("");
    s.ok("download URL", format!("{template} ({passing})"));
    s.ok(
        "catalogue",
        eodata_auth::redact_url(ep.catalogue_url.as_str()),
    );
    s.ok(
        "user",
        "set (not shown: the report may be pasted in public)",
    );
    match eodata_auth::parse_totp_secret(settings.totp_secret.expose()) {
        Ok(key) => s.ok(
            "TOTP secret",
            format!("decodes as base32 ({} bytes)", key.len()),
        ),
        Err(e) => s.fail(
            "TOTP secret",
            format!(
                "does not decode as base32 ({:?} at character {})",
                e.problem, e.position
            ),
        ),
    }
    clock(http, ep.token_url.as_str(), s).await;
    Some(settings)
}

/// A GET on the token endpoint, for its `Date` (Keycloak answers 405 at once).
async fn clock(http: &reqwest::Client, token_url: &str, s: &mut Section) {
    let sent = SystemTime::now();
    let answer = http.get(token_url).send().await;
    let received = SystemTime::now();
    let response = match answer {
        Ok(r) => r,
        Err(e) => {
            s.fail(
                "clock",
                format!(
                    "the token endpoint cannot be reached: {}",
                    service::error_text(&e)
                ),
            );
            return;
        }
    };
    let date = response
        .headers()
        .get(reqwest::header::DATE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let offset = date
        .as_deref()
        .and_then(|d| ServerOffset::measure(d, sent, received))
        // Not `estimate`, which rounds small offsets to zero: the report wants the number.
        .map(|o| o.as_millis() as f64 / 1000.0);
    match offset {
        None => s.warn(
            "clock",
            "the token endpoint sent no readable Date header; the clock skew is unknown",
        ),
        Some(skew) => {
            let text = if skew.abs() <= SKEW_WARN_SECS {
                format!("this machine's clock agrees with the token endpoint's Date (skew {skew:+.0} s)")
            } else {
                format!(
                    "the token endpoint's clock is {:.0} s {} this machine's (skew {skew:+.0} s); TOTP codes and token expiries follow the server's clock, but set this machine's clock right (timedatectl set-ntp true)",
                    skew.abs(),
                    if skew > 0.0 { "ahead of" } else { "behind" }
                )
            };
            let level = if skew.abs() <= SKEW_WARN_SECS {
                Level::Ok
            } else {
                Level::Warn
            };
            s.add_value(
                "clock",
                level,
                text,
                serde_json::json!({ "skew_seconds": skew.round() }),
            );
        }
    }
}

/// One login (or the shared cached token), its lifetimes and claims, and one refresh. Returns
/// the manager and a token for the download check.
async fn login_checks(
    common: &CommonArgs,
    settings: &Settings,
    s: &mut Section,
) -> Option<(Arc<TokenManager>, eodata_auth::AccessToken)> {
    let tokens = match crate::stack::token_manager(common, settings) {
        Ok(t) => t,
        Err(e) => {
            s.fail("login", format!("{e:#}"));
            return None;
        }
    };
    let probe = match tokens.probe_login().await {
        Ok(p) => p,
        Err(e) => {
            let text = match &e {
                AuthError::Refused { .. } => format!("{e} (this was the only attempt)"),
                _ => e.to_string(),
            };
            s.fail("login", text);
            return None;
        }
    };
    report_login(s, &tokens, &probe);
    claims(s, &probe.access);
    let token = refresh_check(s, &tokens)
        .await
        .unwrap_or_else(|| probe.access.clone());
    Some((tokens, token))
}

/// How the login went: from the shared cache or by password, the server's clock as TOTP saw
/// it, and the lifetimes the server gave.
fn report_login(s: &mut Section, tokens: &TokenManager, probe: &eodata_auth::LoginProbe) {
    match probe.source {
        LoginSource::SharedCache => {
            let left = probe
                .access
                .expires_at
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            let file = tokens
                .state_file()
                .map(|p| format!(" ({})", p.display()))
                .unwrap_or_default();
            s.add_value(
                "login",
                Level::Ok,
                format!(
                    "used the shared cached token{file}, valid for another {} s; no new login was made (run with --no-token-cache to test the password and TOTP)",
                    left.as_secs()
                ),
                serde_json::json!({"source": "shared-cache", "access_left_seconds": left.as_secs()}),
            );
        }
        LoginSource::Password => s.add_value(
            "login",
            Level::Ok,
            "password + TOTP login accepted (one attempt)",
            serde_json::json!({"source": "password"}),
        ),
    }
    if let Some(offset) = probe.server_offset.filter(|o| *o != ServerOffset::ZERO) {
        s.ok(
            "TOTP",
            format!(
                "codes computed on the server's clock ({:+.1} s from ours)",
                offset.as_millis() as f64 / 1000.0
            ),
        );
    }
    lifetimes(s, probe.expires_in, probe.refresh_expires_in, "login");
    if probe.source == LoginSource::SharedCache {
        if let Some(left) = probe.refresh_left {
            s.ok(
                "refresh token",
                format!("valid for another {} s", left.as_secs()),
            );
        }
    }
}

/// One refresh: whether it worked and what it gave; its token, when it did.
async fn refresh_check(s: &mut Section, tokens: &TokenManager) -> Option<eodata_auth::AccessToken> {
    match tokens.probe_refresh().await {
        Ok(r) => {
            s.add_value(
                "refresh",
                Level::Ok,
                format!(
                    "one refresh worked{}",
                    if r.new_refresh_token {
                        " and gave a new refresh token"
                    } else {
                        " (no new refresh token: the old one stays)"
                    }
                ),
                serde_json::json!({"new_refresh_token": r.new_refresh_token}),
            );
            lifetimes(s, r.expires_in, r.refresh_expires_in, "refresh");
            Some(r.access)
        }
        Err(e) => {
            s.warn(
                "refresh",
                format!("{e}; a mount then logs in with password and TOTP at every renewal"),
            );
            None
        }
    }
}

/// `expires_in` and `refresh_expires_in` as the server wrote them.
fn lifetimes(s: &mut Section, access: Option<f64>, refresh: Option<f64>, after: &str) {
    if access.is_none() && refresh.is_none() {
        return;
    }
    let show = |v: Option<f64>| match v {
        Some(0.0) => "0 (no expiry)".to_string(),
        Some(v) => format!("{v} s"),
        None => "not given".to_string(),
    };
    let name = if after == "login" {
        "lifetimes"
    } else {
        "lifetimes after refresh"
    };
    s.add_value(
        name,
        Level::Ok,
        format!(
            "expires_in {}, refresh_expires_in {}",
            show(access),
            show(refresh)
        ),
        serde_json::json!({"expires_in": access, "refresh_expires_in": refresh}),
    );
}

/// The access token's public claims: audience, client, scope, session; never the token.
fn claims(s: &mut Section, token: &eodata_auth::AccessToken) {
    let Some(c) = eodata_auth::public_claims(&token.value) else {
        s.warn(
            "token claims",
            "the access token is not a readable JWT; expiries follow expires_in only",
        );
        return;
    };
    let text_of = |k: &str| {
        c.get(k).map(|v| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    };
    let mut parts = Vec::new();
    for (k, label) in [
        ("aud", "audience"),
        ("azp", "client"),
        ("typ", "type"),
        ("scope", "scope"),
        ("iss", "issuer"),
    ] {
        if let Some(v) = text_of(k) {
            parts.push(format!("{label} {v}"));
        }
    }
    let num = |k: &str| c.get(k).and_then(serde_json::Value::as_f64);
    if let (Some(iat), Some(exp)) = (num("iat"), num("exp")) {
        parts.push(format!("exp - iat = {:.0} s", exp - iat));
    }
    if let (Some(auth), Some(iat)) = (num("auth_time"), num("iat")) {
        parts.push(format!("session started {:.0} s before issue", iat - auth));
    }
    let session = c.get("session").and_then(serde_json::Value::as_bool) == Some(true);
    parts.push(if session {
        "bound to a server session".to_string()
    } else {
        "no session id".to_string()
    });
    s.add_value(
        "token claims",
        Level::Ok,
        parts.join("; "),
        serde_json::Value::Object(c),
    );
}
