//! Against a small scripted HTTP server, for what the double does not do: redirects (and where
//! the credential may follow them), 403s, lying or odd answers (shifted Content-Range, stalls, HEAD
//! refused, garbage bodies), and a 401 from an untrusted redirect target.
//!
//! The server ([`Script`]) answers each request with a closure's [`Reply`] and records what it
//! was sent; [`scripted`] points a client with the [`Fixed`] token at it.

use std::sync::Mutex;
use std::time::Instant;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;

#[derive(Clone, Debug)]
pub(super) struct Req {
    method: String,
    pub(super) target: String,
    /// Lower-case names.
    headers: HashMap<String, String>,
}

pub(super) enum Reply {
    /// Written, then the connection is closed.
    Raw(Vec<u8>),
    /// Written, then the connection is held open without a byte more.
    Stall(Vec<u8>),
}

pub(super) fn reply(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut s = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        s.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (k, v) in headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str("\r\n");
    let mut out = s.into_bytes();
    out.extend_from_slice(body);
    Reply::Raw(out)
}

pub(super) struct Script {
    port: u16,
    reqs: Arc<Mutex<Vec<Req>>>,
}

impl Script {
    pub(super) async fn start(
        handler: impl Fn(&Req, u16) -> Reply + Send + Sync + 'static,
    ) -> Script {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let reqs = Arc::new(Mutex::new(Vec::new()));
        let handler = Arc::new(handler);
        let log = Arc::clone(&reqs);
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let (handler, log) = (Arc::clone(&handler), Arc::clone(&log));
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    let mut lines = text.split("\r\n");
                    let mut first = lines.next().unwrap_or("").split(' ');
                    let req = Req {
                        method: first.next().unwrap_or("").to_string(),
                        target: first.next().unwrap_or("").to_string(),
                        headers: lines
                            .filter_map(|l| l.split_once(':'))
                            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                            .collect(),
                    };
                    log.lock().unwrap().push(req.clone());
                    match handler(&req, port) {
                        Reply::Raw(b) => {
                            let _ = sock.write_all(&b).await;
                            let _ = sock.shutdown().await;
                        }
                        Reply::Stall(b) => {
                            let _ = sock.write_all(&b).await;
                            tokio::time::sleep(Duration::from_secs(30)).await;
                        }
                    }
                });
            }
        });
        Script { port, reqs }
    }

    fn reqs(&self) -> Vec<Req> {
        self.reqs.lock().unwrap().clone()
    }
}

pub(super) fn scripted(
    script: &Script,
    passing: TokenPassing,
    tweak: impl FnOnce(&mut ZipperConfig),
) -> Zipper<Fixed> {
    let mut cfg = ZipperConfig::new(
        format!("http://127.0.0.1:{}/dl/{{id}}", script.port),
        passing,
    );
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
fn redirecting(req: &Req, port: u16) -> Reply {
    if req.target.starts_with("/dl/") {
        let loc = format!("http://localhost:{port}/final?token=forwarded&x=1");
        return reply("302 Found", &[("Location", &loc)], b"");
    }
    if req.target.starts_with("/same") {
        return reply("307 Temporary Redirect", &[("Location", "/dl/again")], b"");
    }
    reply(
        "206 Partial Content",
        &[("Content-Range", "bytes 2-4/10")],
        b"234",
    )
}

#[tokio::test]
async fn zipper_redirects_keep_credentials_only_for_trusted_hosts() {
    for passing in [TokenPassing::Bearer, TokenPassing::Query] {
        // Untrusted target host: no credential of any kind reaches it.
        let script = Script::start(redirecting).await;
        let z = scripted(&script, passing, |_| {});
        assert_eq!(&z.get_range("p", 2..5).await.unwrap()[..], b"234");
        let reqs = script.reqs();
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
        let script = Script::start(redirecting).await;
        let z = scripted(&script, passing, |c| {
            c.trusted_hosts = vec!["LOCALHOST".into()]
        });
        assert_eq!(&z.get_range("p", 2..5).await.unwrap()[..], b"234");
        let hop = &script.reqs()[1];
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
    let script = Script::start(|req: &Req, _| {
        let next = format!("/dl/{}", req.target.len());
        reply("301 Moved Permanently", &[("Location", &next)], b"")
    })
    .await;
    let z = scripted(&script, TokenPassing::Bearer, |_| {});
    let err = z.get_range("p", 0..1).await.unwrap_err();
    assert!(
        matches!(err, FetchError::Protocol(ref m) if m.contains("redirects")),
        "{err:?}"
    );
    assert_eq!(script.reqs().len(), 11);
}

#[tokio::test]
async fn zipper_forbidden_and_token_refused_403() {
    let script = Script::start(|req: &Req, _| {
        if req.target.contains("terms") {
            reply(
                "403 Forbidden",
                &[],
                br#"{"trace-id":"x","code":"DAT-ZIP-111","message":"Terms and conditions not accepted"}"#,
            )
        } else {
            reply(
                "403 Forbidden",
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
    let script = Script::start(|req: &Req, _| match req.target.split('?').next().unwrap() {
        // Content-Range other than what was asked.
        "/dl/shifted" => reply(
            "206 Partial Content",
            &[("Content-Range", "bytes 3-5/10")],
            b"345",
        ),
        // 206 with no Content-Range.
        "/dl/bare" => reply("206 Partial Content", &[], b"012"),
        // HEAD refused: info falls back to a ranged GET for byte 0.
        "/dl/nohead" if req.method == "HEAD" => reply("405 Method Not Allowed", &[], b""),
        "/dl/nohead" => reply(
            "206 Partial Content",
            &[
                ("Content-Range", "bytes 0-0/10"),
                ("Content-Disposition", "attachment; filename=\"N.zip\""),
            ],
            b"0",
        ),
        // Headers, then silence.
        "/dl/stall" => match reply(
            "206 Partial Content",
            &[("Content-Range", "bytes 0-9/10"), ("Content-Length", "10")],
            b"",
        ) {
            Reply::Raw(b) => Reply::Stall(b),
            s => s,
        },
        // A body with a token echoed in it, as garbage.
        "/dl/echo" => reply(
            "400 Bad Request",
            &[],
            format!("bad request {}", req.target).as_bytes(),
        ),
        _ => reply("418 I'm a teapot", &[], b"\x00\xff garbage"),
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
    let script = Script::start(|req: &Req, port| {
        if req.target.starts_with("/dl/") {
            let loc = format!("http://localhost:{port}/final");
            return reply("302 Found", &[("Location", &loc)], b"");
        }
        reply(
            "401 Unauthorized",
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
