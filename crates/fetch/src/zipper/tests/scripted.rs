//! Against a small scripted HTTP server, for what the double does not do: redirects (and where
//! the credential may follow them), 403s, lying or odd answers (shifted Content-Range, stalls, HEAD
//! refused, garbage bodies), and a 401 from an untrusted redirect target.
//!
//! The server is the double crate's [`Scripted`]: it answers each request with a closure's
//! [`Reply`] and records what it was sent; [`scripted`] points a client with the [`Fixed`] token
//! at it.

use std::time::Instant;

use fake_creodias::scripted::{Reply, Request, Scripted};

use super::*;

pub(super) fn scripted(
    script: &Scripted,
    passing: TokenPassing,
    tweak: impl FnOnce(&mut ZipperConfig),
) -> Zipper<Fixed> {
    let mut cfg = ZipperConfig::new(format!("{}/dl/{{id}}", script.base()), passing);
    cfg.read_timeout = Duration::from_secs(2);
    tweak(&mut cfg);
    Zipper::new(
        cfg,
        Fixed(AtomicU32::new(0)),
        eodata_http::client(None).unwrap(),
    )
}

/// Serves "0123456789" by range at /final; everything else redirects there on `localhost`
/// (another host name for the same server).
fn redirecting(req: &Request) -> Reply {
    if req.target.starts_with("/dl/") {
        let loc = format!("http://localhost:{}/final?token=forwarded&x=1", req.port);
        return Reply::new(302, &[("Location", &loc)], b"");
    }
    if req.target.starts_with("/same") {
        return Reply::new(307, &[("Location", "/dl/again")], b"");
    }
    Reply::new(206, &[("Content-Range", "bytes 2-4/10")], b"234")
}

#[tokio::test]
async fn zipper_redirects_keep_credentials_only_for_trusted_hosts() {
    for passing in [TokenPassing::Bearer, TokenPassing::Query] {
        // Untrusted target host: no credential of any kind reaches it.
        let script = Scripted::start(redirecting).await;
        let z = scripted(&script, passing, |_| {});
        assert_eq!(&z.get_range("p", 2..5).await.unwrap()[..], b"234");
        let reqs = script.requests();
        assert_eq!(reqs.len(), 2);
        let (first, hop) = (&reqs[0], &reqs[1]);
        assert_eq!(
            hop.headers.get("range").map(String::as_str),
            Some("bytes=2-4")
        );
        assert!(hop.target.starts_with("/final?x=1"), "{}", hop.target);
        assert!(!hop.target.contains("token"), "{}", hop.target);
        assert!(!hop.headers.contains_key("authorization"));
        match passing {
            TokenPassing::Bearer => {
                assert_eq!(
                    first.headers["authorization"],
                    format!("Bearer {FIXED_TOKEN}")
                );
                assert!(!first.target.contains("token="));
            }
            TokenPassing::Query => {
                assert!(first.target.ends_with(&format!("?token={FIXED_TOKEN}")));
                assert!(!first.headers.contains_key("authorization"));
            }
        }
        assert_eq!(z.stats().redirects, 1);

        // Trusted: ours replaces whatever token the Location carried.
        let script = Scripted::start(redirecting).await;
        let z = scripted(&script, passing, |c| {
            c.trusted_hosts = vec!["LOCALHOST".into()]
        });
        assert_eq!(&z.get_range("p", 2..5).await.unwrap()[..], b"234");
        let hop = &script.requests()[1];
        assert!(!hop.target.contains("forwarded"), "{}", hop.target);
        match passing {
            TokenPassing::Bearer => {
                assert_eq!(
                    hop.headers["authorization"],
                    format!("Bearer {FIXED_TOKEN}")
                )
            }
            TokenPassing::Query => assert!(hop.target.contains(&format!("token={FIXED_TOKEN}"))),
        }
    }

    // A redirect loop ends.
    let script = Scripted::start(|req: &Request| {
        let next = format!("/dl/{}", req.target.len());
        Reply::new(301, &[("Location", &next)], b"")
    })
    .await;
    let z = scripted(&script, TokenPassing::Bearer, |_| {});
    let err = z.get_range("p", 0..1).await.unwrap_err();
    assert!(
        matches!(err, FetchError::Protocol(ref m) if m.contains("redirects")),
        "{err:?}"
    );
    assert_eq!(script.requests().len(), 11);
}

#[tokio::test]
async fn zipper_forbidden_and_token_refused_403() {
    let script = Scripted::start(|req: &Request| {
        if req.target.contains("terms") {
            Reply::new(403,
                &[],
                br#"{"trace-id":"x","code":"DAT-ZIP-111","message":"Terms and conditions not accepted"}"#,
            )
        } else {
            Reply::new(403,
                &[],
                br#"{"trace-id":"y","code":"DAT-ZIP-604","message":"Token not found"}"#,
            )
        }
    })
    .await;
    let z = scripted(&script, TokenPassing::Query, |_| {});
    let err = z.get_range("terms", 0..1).await.unwrap_err();
    match &err {
        FetchError::Forbidden(m) => assert!(m.contains("Terms and conditions"), "{m}"),
        e => panic!("{e:?}"),
    }
    assert_eq!(
        z.inner.tokens.0.load(Ordering::SeqCst),
        0,
        "a plain 403 renews nothing"
    );

    // 403 "Token not found": renewed, at most MAX_RENEWALS times, then a clear error.
    let err = z.get_range("other", 0..1).await.unwrap_err();
    assert!(
        matches!(err, FetchError::Forbidden(ref m) if m.contains("renewals")),
        "{err:?}"
    );
    assert_eq!(z.inner.tokens.0.load(Ordering::SeqCst), 3);
    assert!(!err.to_string().contains(FIXED_TOKEN));
}

#[tokio::test]
async fn zipper_rejects_lying_or_odd_answers() {
    let script = Scripted::start(|req: &Request| match req.path() {
        // Content-Range other than what was asked.
        "/dl/shifted" => Reply::new(206, &[("Content-Range", "bytes 3-5/10")], b"345"),
        // 206 with no Content-Range.
        "/dl/bare" => Reply::new(206, &[], b"012"),
        // HEAD refused: info falls back to a ranged GET for byte 0.
        "/dl/nohead" if req.method == "HEAD" => Reply::new(405, &[], b""),
        "/dl/nohead" => Reply::new(
            206,
            &[
                ("Content-Range", "bytes 0-0/10"),
                ("Content-Disposition", "attachment; filename=\"N.zip\""),
            ],
            b"0",
        ),
        // Headers, then silence.
        "/dl/stall" => Reply::new(
            206,
            &[("Content-Range", "bytes 0-9/10"), ("Content-Length", "10")],
            b"",
        )
        .stalled(),
        // A body with a token echoed in it, as garbage.
        "/dl/echo" => Reply::new(400, &[], format!("bad request {}", req.target).as_bytes()),
        _ => Reply::new(418, &[], b"\x00\xff garbage"),
    })
    .await;
    let z = scripted(&script, TokenPassing::Query, |c| c.max_retries = 1);
    for id in ["shifted", "bare"] {
        let err = z.get_range(id, 0..3).await.unwrap_err();
        assert!(matches!(err, FetchError::Protocol(_)), "{id}: {err:?}");
    }
    let info = z.info("nohead").await.unwrap();
    assert_eq!(
        info,
        ObjectInfo {
            size: 10,
            filename: Some("N.zip".into()),
            ranges: RangeSupport::Honoured
        }
    );

    let started = Instant::now();
    let err = z.get_range("stall", 0..10).await.unwrap_err();
    assert!(matches!(err, FetchError::Timeout(_)), "{err:?}");
    // A 2 s stall, one retry, a 2 s stall again.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(10),
        "{took:?}"
    );

    let err = z.get_range("echo", 0..1).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("400") && !msg.contains(FIXED_TOKEN), "{msg}");
    let msg = z.get_range("teapot", 0..1).await.unwrap_err().to_string();
    assert!(msg.contains("418"), "{msg}");
}

#[tokio::test]
async fn zipper_401_from_an_untrusted_redirect_target_is_not_renewed() {
    let script = Scripted::start(|req: &Request| {
        if req.target.starts_with("/dl/") {
            let loc = format!("http://localhost:{}/final", req.port);
            return Reply::new(302, &[("Location", &loc)], b"");
        }
        Reply::new(
            401,
            &[],
            br#"{"trace-id":"z","code":"DAT-ZIP-604","message":"Token not found"}"#,
        )
    })
    .await;
    let z = scripted(&script, TokenPassing::Bearer, |_| {});
    let err = z.get_range("p", 0..1).await.unwrap_err();
    assert!(
        matches!(err, FetchError::Forbidden(ref m) if m.contains("not trusted")),
        "{err:?}"
    );
    assert_eq!(z.inner.tokens.0.load(Ordering::SeqCst), 0);
}
