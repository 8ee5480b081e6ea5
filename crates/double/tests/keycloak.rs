//! The fake Keycloak: TOTP, reuse, window, lockout, disabled accounts, refresh, client checks,
//! and the tutorial's hand-built request.

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::*;
use fake_creodias::{Config, Faults, User};
use serde_json::Value;

fn outcomes(d: &fake_creodias::Double) -> Vec<String> {
    d.log()
        .iter()
        .filter(|e| e.service == "token")
        .map(|e| e.outcome.clone())
        .collect()
}

/// The tutorial's request, byte for byte: form body by string concatenation, user not encoded,
/// password percent-encoded like `quote(password, safe='')`, URL ending in `?`.
#[tokio::test]
async fn tutorial_request_shape_is_accepted() {
    fresh_step(5).await;
    let (d, c) = start(config()).await;
    const QUOTE_SAFE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'_')
        .remove(b'.')
        .remove(b'-')
        .remove(b'~');
    let password_encoded = percent_encoding::utf8_percent_encode(PASSWORD, QUOTE_SAFE).to_string();
    let data = "client_id=CLOUDFERRO_PUBLIC&username=".to_string()
        + USER
        + "&password="
        + &password_encoded
        + "&grant_type=password&totp="
        + &code(0);
    let url = d.token_url() + "?";
    let r = c
        .post(&url)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(data)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers().contains_key("date"),
        "Date header is the client's reference clock"
    );
    let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    let token = access(&body);
    assert_eq!(token.split('.').count(), 3, "JWT-shaped");
    let payload: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert!(payload["exp"].as_u64().unwrap() >= payload["iat"].as_u64().unwrap() + 300);
    assert_eq!(body["expires_in"], 300);
    assert_eq!(body["refresh_expires_in"], 1800);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["not-before-policy"], 0);
    assert!(body["refresh_token"].as_str().unwrap().split('.').count() == 3);
    assert!(body["session_state"].is_string());

    // The tutorial then downloads with ?token=.
    let store = store();
    drop(d);
    let (d, c) = start(config().products(store.dir.path())).await;
    fresh_step(5).await;
    let data = format!(
        "client_id=CLOUDFERRO_PUBLIC&username={USER}&password={password_encoded}&grant_type=password&totp={}",
        code(1)
    );
    let body: Value = c
        .post(d.token_url() + "?")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(data)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = d.legacy_download_template().replace("{id}", ID) + "?token=" + &access(&body);
    let got = c.get(url).send().await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap().as_ref(), store.bytes.as_slice());
}

#[tokio::test]
async fn wrong_password_user_or_code_look_the_same() {
    fresh_step(5).await;
    // Brute-force protection off: with it, the quick-login rule would lock the account after
    // the second of these failures (brute_force_rules in crates/auth/tests/identity.rs).
    let (d, c) = start(Config {
        lockout_after: 0,
        ..config()
    })
    .await;
    let bad = |s: u16, b: &Value| {
        assert_eq!(s, 401);
        assert_eq!(b["error"], "invalid_grant");
        assert_eq!(b["error_description"], "Invalid user credentials");
    };
    let (s, b) = password_grant(&c, &d, USER, "nope", &code(0)).await;
    bad(s, &b);
    let (s, b) = password_grant(&c, &d, "nobody@example.com", PASSWORD, &code(0)).await;
    bad(s, &b);
    let wrong = format!("{:06}", (code(0).parse::<u32>().unwrap() + 1) % 1_000_000);
    let (s, b) = password_grant(&c, &d, USER, PASSWORD, &wrong).await;
    bad(s, &b);
    // An empty code is a wrong code, as Keycloak reads it (only an absent one is "missing").
    let (s, b) = password_grant(&c, &d, USER, PASSWORD, "").await;
    bad(s, &b);
    assert_eq!(
        outcomes(&d),
        ["bad_password", "unknown_user", "bad_code", "bad_code"]
    );
    // The good one still works, and usernames are case-insensitive.
    let (s, b) = password_grant(&c, &d, &USER.to_uppercase(), PASSWORD, &code(0)).await;
    assert_eq!(s, 200, "{b}");
}

#[tokio::test]
async fn a_code_is_single_use() {
    fresh_step(5).await;
    let (d, c) = start(config()).await;
    let now_code = code(0);
    let (s, _) = password_grant(&c, &d, USER, PASSWORD, &now_code).await;
    assert_eq!(s, 200);
    let (s, b) = password_grant(&c, &d, USER, PASSWORD, &now_code).await;
    assert_eq!(s, 401);
    assert_eq!(b["error_description"], "Invalid user credentials");
    assert_eq!(outcomes(&d), ["ok", "reused_code"]);
    let step = d.log()[0].totp_step.unwrap();
    assert_eq!(step, now() / 30);
}

#[tokio::test]
async fn window_is_previous_current_next() {
    fresh_step(5).await;
    let (d, c) = start(config()).await;
    for (offset, ok) in [(-2, false), (-1, true), (0, true), (1, true), (2, false)] {
        let (s, b) = password_grant(&c, &d, USER, PASSWORD, &code(offset)).await;
        assert_eq!(s == 200, ok, "offset {offset}: {b}");
    }
    let steps: Vec<Option<u64>> = d.log().iter().map(|e| e.totp_step).collect();
    let cur = now() / 30;
    assert_eq!(steps, [None, Some(cur - 1), Some(cur), Some(cur + 1), None]);
}

#[tokio::test]
async fn otp_is_read_before_totp() {
    fresh_step(5).await;
    let (d, c) = start(config()).await;
    let send = |otp: String, totp: String| {
        let c = c.clone();
        let url = d.token_url();
        async move {
            c.post(url)
                .form(&[
                    ("client_id", "CLOUDFERRO_PUBLIC"),
                    ("username", USER),
                    ("password", PASSWORD),
                    ("grant_type", "password"),
                    ("otp", &otp),
                    ("totp", &totp),
                ])
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(send("000000".into(), code(0)).await, 401);
    assert_eq!(send(code(0), "000000".into()).await, 200);
}

#[tokio::test]
async fn repeated_failures_lock_the_account() {
    fresh_step(5).await;
    let (d, c) = start(Config {
        lockout_after: 3,
        ..config()
    })
    .await;
    for _ in 0..3 {
        let (s, _) = password_grant(&c, &d, USER, "wrong", &code(0)).await;
        assert_eq!(s, 401);
    }
    let (s, b) = password_grant(&c, &d, USER, PASSWORD, &code(0)).await;
    assert_eq!(s, 401, "locked accounts are refused like bad credentials");
    assert_eq!(b["error"], "invalid_grant");
    assert_eq!(outcomes(&d).last().unwrap(), "locked");
    d.unlock_user(USER);
    let (s, _) = password_grant(&c, &d, USER, PASSWORD, &code(0)).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn a_success_resets_the_failure_count() {
    fresh_step(5).await;
    let (d, c) = start(Config {
        lockout_after: 2,
        ..config()
    })
    .await;
    password_grant(&c, &d, USER, "wrong", &code(0)).await;
    assert_eq!(
        password_grant(&c, &d, USER, PASSWORD, &code(0)).await.0,
        200
    );
    password_grant(&c, &d, USER, "wrong", &code(0)).await;
    assert_eq!(
        password_grant(&c, &d, USER, PASSWORD, &code(1)).await.0,
        200
    );
}

#[tokio::test]
async fn disabled_account_is_400() {
    fresh_step(5).await;
    let mut cfg = config();
    cfg.users.push(User {
        disabled: true,
        ..User::new("off@example.com", "pw", SECRET)
    });
    let (d, c) = start(cfg).await;
    let (s, b) = password_grant(&c, &d, "off@example.com", "pw", &code(0)).await;
    assert_eq!(s, 400);
    assert_eq!(b["error"], "invalid_grant");
    assert_eq!(b["error_description"], "Account disabled");
    assert_eq!(outcomes(&d), ["disabled"]);
}

#[tokio::test]
async fn accounts_change_while_the_double_runs() {
    fresh_step(5).await;
    let (d, c) = start(config()).await;
    // A new password: the old one is refused, the new one (with the same secret) accepted.
    d.update_user(User::new(USER, "new password", SECRET))
        .unwrap();
    let (s, _) = password_grant(&c, &d, USER, PASSWORD, &code(0)).await;
    assert_eq!(s, 401);
    let (s, b) = password_grant(&c, &d, USER, "new password", &code(-1)).await;
    assert_eq!(s, 200, "{b}");
    // A new TOTP secret: codes of the old one are refused.
    let other = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
    d.update_user(User::new(USER, PASSWORD, other)).unwrap();
    let (s, _) = password_grant(&c, &d, USER, PASSWORD, &code(1)).await;
    assert_eq!(s, 401);
    let (s, b_ok) = password_grant(&c, &d, USER, PASSWORD, &code_for(other, 1)).await;
    assert_eq!(s, 200, "{b_ok}");
    // Disabled.
    d.update_user(User {
        disabled: true,
        ..User::new(USER, PASSWORD, SECRET)
    })
    .unwrap();
    let (s, b) = password_grant(&c, &d, USER, PASSWORD, &code(0)).await;
    assert_eq!(
        (s, b["error_description"].as_str()),
        (400, Some("Account disabled"))
    );
    assert_eq!(
        outcomes(&d),
        ["bad_password", "ok", "bad_code", "ok", "disabled"]
    );
    assert!(d
        .update_user(User::new(USER, PASSWORD, "not base32!"))
        .is_err());
    // Two logins, an access and a refresh token each.
    assert_eq!(d.issued_tokens().len(), 4);
    assert!(d.issued_tokens().contains(&access(&b_ok)));
}

async fn refresh(c: &reqwest::Client, d: &fake_creodias::Double, token: &str) -> (u16, Value) {
    let r = c
        .post(d.token_url())
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", token),
            ("client_id", "CLOUDFERRO_PUBLIC"),
        ])
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn refresh_renews_without_totp() {
    fresh_step(5).await;
    let (d, c) = start(config()).await;
    let first = login(&c, &d).await;
    let (s, second) = refresh(&c, &d, first["refresh_token"].as_str().unwrap()).await;
    assert_eq!(s, 200, "{second}");
    assert_ne!(second["access_token"], first["access_token"]);
    assert_eq!(
        second["session_state"], first["session_state"],
        "same session"
    );
    let (s, b) = refresh(&c, &d, "not-a-token").await;
    assert_eq!(
        (s, b["error"].as_str(), b["error_description"].as_str()),
        (400, Some("invalid_grant"), Some("Invalid refresh token"))
    );
    // An access token is not a refresh token.
    let (s, _) = refresh(&c, &d, first["access_token"].as_str().unwrap()).await;
    assert_eq!(s, 400);
    d.set_faults(Faults {
        refuse_refresh: true,
        ..Faults::default()
    });
    let (s, b) = refresh(&c, &d, second["refresh_token"].as_str().unwrap()).await;
    assert_eq!(
        (s, b["error_description"].as_str()),
        (400, Some("Token is not active"))
    );
    assert_eq!(
        outcomes(&d),
        [
            "ok",
            "ok",
            "invalid_refresh",
            "invalid_refresh",
            "refresh_refused"
        ]
    );
}

#[tokio::test]
async fn refresh_tokens_expire() {
    fresh_step(5).await;
    let (d, c) = start(Config {
        refresh_lifetime: Duration::from_millis(500),
        ..config()
    })
    .await;
    let first = login(&c, &d).await;
    assert_eq!(first["refresh_expires_in"], 0);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (s, b) = refresh(&c, &d, first["refresh_token"].as_str().unwrap()).await;
    assert_eq!(
        (s, b["error_description"].as_str()),
        (400, Some("Token is not active"))
    );
    assert_eq!(outcomes(&d).last().unwrap(), "expired_refresh");
}

#[tokio::test]
async fn client_and_grant_are_checked() {
    let (d, c) = start(config()).await;
    let post = |body: &'static str| {
        let c = c.clone();
        let url = d.token_url();
        async move {
            let r = c
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (s, b) = post("client_id=other&grant_type=password&username=a&password=b&totp=1").await;
    assert_eq!((s, b["error"].as_str()), (401, Some("invalid_client")));
    let (s, b) = post("client_id=CLOUDFERRO_PUBLIC&username=a").await;
    assert_eq!((s, b["error"].as_str()), (400, Some("invalid_request")));
    let (s, b) = post("client_id=CLOUDFERRO_PUBLIC&grant_type=password&password=x").await;
    assert_eq!((s, b["error"].as_str()), (400, Some("invalid_request")));
    let (s, b) = post("client_id=CLOUDFERRO_PUBLIC&grant_type=magic").await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("unsupported_grant_type"))
    );
    // JSON is not a form: Keycloak sees no grant_type at all.
    let r = c
        .post(d.token_url())
        .header("content-type", "application/json")
        .body(r#"{"grant_type":"password"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn cdse_realm_and_client_id_work_too() {
    fresh_step(5).await;
    let (d, c) = start(Config {
        client_id: "cdse-public".into(),
        ..config()
    })
    .await;
    let url = format!(
        "{}/auth/realms/CDSE/protocol/openid-connect/token",
        d.base_url()
    );
    let r = c
        .post(url)
        .form(&[
            ("client_id", "cdse-public"),
            ("username", USER),
            ("password", PASSWORD),
            ("grant_type", "password"),
            ("totp", &code(0)),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn garbage_token_fault_answers_html() {
    let (d, c) = start(Config {
        faults: Faults {
            garbage_token: true,
            ..Faults::default()
        },
        ..config()
    })
    .await;
    let r = c
        .post(d.token_url())
        .form(&[("grant_type", "password")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).is_err());
}

#[tokio::test]
async fn the_log_holds_no_secret() {
    fresh_step(5).await;
    let log_file = tempfile::NamedTempFile::new().unwrap();
    let (d, c) = start(Config {
        log_path: Some(log_file.path().to_path_buf()),
        ..config()
    })
    .await;
    let code_now = code(0);
    let body = login(&c, &d).await;
    password_grant(&c, &d, USER, "wrong-password-xyz", &code(1)).await;
    let text = std::fs::read_to_string(log_file.path()).unwrap();
    assert_eq!(text.lines().count(), 2);
    for secret in [
        PASSWORD,
        "wrong-password-xyz",
        SECRET,
        &code_now,
        &access(&body),
    ] {
        assert!(!text.contains(secret), "log leaks {secret}");
    }
    let first: fake_creodias::LogEntry =
        serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first.grant_type.as_deref(), Some("password"));
    assert_eq!(first.username.as_deref(), Some(USER));
    assert!(first.token_id.is_some());
}

#[tokio::test]
async fn clock_skew_moves_totp_steps_and_the_date_header() {
    fresh_step(5).await;
    let (d, c) = start(config()).await;
    // The server runs two minutes ahead: four steps.
    d.set_clock_skew(120);
    let (s, _) = password_grant(&c, &d, USER, PASSWORD, &code(0)).await;
    assert_eq!(
        s, 401,
        "a code from the machine's clock is four steps behind"
    );
    let r = c
        .post(d.token_url())
        .form(&[
            ("client_id", "CLOUDFERRO_PUBLIC"),
            ("username", USER),
            ("password", PASSWORD),
            ("grant_type", "password"),
            ("totp", &code(4)),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let date = httpdate::parse_http_date(r.headers()["date"].to_str().unwrap()).unwrap();
    let ahead = date
        .duration_since(std::time::SystemTime::now())
        .unwrap()
        .as_secs();
    assert!((118..=121).contains(&ahead), "Date is {ahead} s ahead");
}
