//! A scripted HTTP server for clients' tests: what the double does not do on purpose.
//!
//! The double plays the services as they are; some tests need an answer no service gives, or one
//! that only a test can steer step by step: a redirect to another host name, a shifted
//! Content-Range, headers then silence, a Keycloak on a test clock, a catalogue that counts its
//! requests. [`Scripted`] is the one raw server for them all (the zipper client's, the token
//! manager's and the catalogue client's tests): it reads each request (request line, headers,
//! a `Content-Length` body), records it, and writes whatever the test's handler returns, byte
//! for byte, on a connection it then closes (or holds open, or answers late).
//!
//! Raw bytes on a plain `TcpListener`, not hyper: a test must be able to send a lying or broken
//! answer that a well-behaved HTTP server would refuse to write.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// How long a [`Reply::stalled`] answer holds its connection open without a byte more: longer
/// than any read timeout a test sets (those are 1 to 10 s), short enough to free the task soon
/// after the test ends.
const STALL_FOR: Duration = Duration::from_secs(30);

/// One request as the server read it.
#[derive(Clone, Debug)]
pub struct Request {
    /// `GET`, `HEAD`, `POST`, ...
    pub method: String,
    /// The request target as sent: path and query, not decoded.
    pub target: String,
    /// Header names lower-cased; a repeated header keeps its last value.
    pub headers: HashMap<String, String>,
    /// The body (`Content-Length` bytes; empty without one).
    pub body: Vec<u8>,
    /// The server's own port, for answers that point back at it (redirects).
    pub port: u16,
}

impl Request {
    /// The target's path, without its query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The target's query parameters, percent-decoded (`+` as a space).
    pub fn query(&self) -> HashMap<String, String> {
        let query = self.target.split_once('?').map_or("", |(_, q)| q);
        url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect()
    }

    /// The body as an `application/x-www-form-urlencoded` form.
    pub fn form(&self) -> HashMap<String, String> {
        url::form_urlencoded::parse(&self.body)
            .into_owned()
            .collect()
    }
}

/// What the server does with a connection once a request is read.
pub enum Reply {
    /// Writes the bytes, then closes the connection.
    Bytes(Vec<u8>),
    /// Writes the bytes, then holds the connection open without a byte more ([`STALL_FOR`]).
    Stall(Vec<u8>),
    /// Waits, then answers with what the closure returns then (so an answer can depend on the
    /// time it is sent, and concurrent requests can pile up behind a slow one).
    Later(Duration, Box<dyn FnOnce() -> Reply + Send>),
}

impl Reply {
    /// A whole HTTP/1.1 answer: the status line (`status` and its standard reason phrase),
    /// `Connection: close`, a `Content-Length` of `body` unless `headers` set one, `headers`,
    /// then `body`.
    pub fn new(status: u16, headers: &[(&str, &str)], body: impl AsRef<[u8]>) -> Reply {
        let body = body.as_ref();
        let reason = hyper::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Whatever");
        let mut head = format!("HTTP/1.1 {status} {reason}\r\nConnection: close\r\n");
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(body);
        Reply::Bytes(out)
    }

    /// The same bytes, then silence instead of a close.
    pub fn stalled(self) -> Reply {
        match self {
            Reply::Bytes(b) | Reply::Stall(b) => Reply::Stall(b),
            later => later,
        }
    }

    /// `answer()` after `delay` (at once when `delay` is zero).
    pub fn later(delay: Duration, answer: impl FnOnce() -> Reply + Send + 'static) -> Reply {
        if delay.is_zero() {
            answer()
        } else {
            Reply::Later(delay, Box::new(answer))
        }
    }
}

/// A running scripted server on a free port of 127.0.0.1; it serves until the runtime ends.
pub struct Scripted {
    port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl Scripted {
    /// Serves `handler` (called once per request, after the request is recorded).
    pub async fn start(handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a local port");
        let port = listener.local_addr().expect("a bound address").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler = Arc::new(handler);
        let log = Arc::clone(&requests);
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (handler, log) = (Arc::clone(&handler), Arc::clone(&log));
                tokio::spawn(serve(sock, port, handler, log));
            }
        });
        Scripted { port, requests }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request so far, in the order they were read.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    /// How many requests so far.
    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

/// One connection: one request, one reply.
async fn serve(
    mut sock: TcpStream,
    port: u16,
    handler: Arc<impl Fn(&Request) -> Reply>,
    log: Arc<Mutex<Vec<Request>>>,
) {
    let Some(req) = read_request(&mut sock, port).await else {
        return;
    };
    log.lock().unwrap().push(req.clone());
    let mut reply = handler(&req);
    loop {
        match reply {
            Reply::Later(delay, answer) => {
                tokio::time::sleep(delay).await;
                reply = answer();
            }
            Reply::Bytes(b) => {
                let _ = sock.write_all(&b).await;
                let _ = sock.shutdown().await;
                return;
            }
            Reply::Stall(b) => {
                let _ = sock.write_all(&b).await;
                tokio::time::sleep(STALL_FOR).await;
                return;
            }
        }
    }
}

/// The request line, headers and `Content-Length` body; `None` when the peer goes first.
async fn read_request(sock: &mut TcpStream, port: u16) -> Option<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let target = first.next().unwrap_or("").to_string();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Some(Request {
        method,
        target,
        headers,
        body: buf[head_end..head_end + length].to_vec(),
        port,
    })
}
