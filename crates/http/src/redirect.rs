//! Redirects, followed by the callers themselves (the shared [`crate::client`] follows none):
//! where a redirect leads, and whether a credential may go there.
//!
//! Why by hand: an HTTP library that follows redirects drops an `Authorization` header on a
//! cross-host hop (the real CDSE redirects its catalogue host to its download host and then
//! answers 401 "Token not found"), and carries a `?token=` to whatever host a redirect names.
//! So each hop is judged here: the next URL must be http(s), never a downgrade from https to
//! http, and the credential goes only to the origin's host or a trusted one.

use reqwest::header::{HeaderMap, LOCATION};
use reqwest::StatusCode;
use url::Url;

/// Where a redirect answer leads, or why it cannot be followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hop {
    /// Not a redirect: read this answer.
    Stay,
    /// Follow to this URL; `see_other` means the method becomes GET (303).
    Follow { to: Url, see_other: bool },
}

/// Reads a response's status and `Location` against the URL that was asked (`from`).
/// `Err` holds a one-line reason: no or an unreadable `Location`, a non-http(s) target, or a
/// downgrade from https to http (which would expose whatever the next request carries, and
/// which no real service of ours does).
pub fn hop(from: &Url, status: StatusCode, headers: &HeaderMap) -> Result<Hop, String> {
    if !status.is_redirection() || status == StatusCode::NOT_MODIFIED {
        return Ok(Hop::Stay);
    }
    let Some(loc) = headers.get(LOCATION).and_then(|v| v.to_str().ok()) else {
        return Err(format!("HTTP {status} without a usable Location"));
    };
    let to = from
        .join(loc.trim())
        .map_err(|e| format!("HTTP {status} with an unreadable Location: {e}"))?;
    if !matches!(to.scheme(), "http" | "https") {
        return Err(format!("HTTP {status} redirects to a non-http URL"));
    }
    if from.scheme() == "https" && to.scheme() != "https" {
        return Err(format!(
            "HTTP {status} redirects from https to plain http ({}); not followed",
            crate::redact_url(to.as_str())
        ));
    }
    Ok(Hop::Follow {
        to,
        see_other: status == StatusCode::SEE_OTHER,
    })
}

/// Whether a credential may be sent to `url` for a request that started at `origin`: the
/// origin's own host, or a trusted host (an exact name, or `.example.eu` for every subdomain
/// of example.eu); never over http once the request used https.
pub fn trusted(origin: &Url, url: &Url, trusted_hosts: &[String]) -> bool {
    if origin.scheme() == "https" && url.scheme() != "https" {
        return false;
    }
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.to_ascii_lowercase();
    if origin.host_str().map(str::to_ascii_lowercase).as_deref() == Some(host.as_str()) {
        return true;
    }
    trusted_hosts.iter().any(|t| {
        let t = t.trim().to_ascii_lowercase();
        match t.strip_prefix('.') {
            Some(suffix) => host.ends_with(&format!(".{suffix}")),
            None => host == t,
        }
    })
}

/// Whether `url` names this machine (`localhost`, `127.0.0.0/8`, `::1`): the one place where
/// plain http carries no credential across a network.
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => {
            d.eq_ignore_ascii_case("localhost") || d.to_ascii_lowercase().ends_with(".localhost")
        }
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn loc(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(LOCATION, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn hops() {
        let from = Url::parse("https://catalogue.example/odata/v1/Products(1)/$value").unwrap();
        assert_eq!(hop(&from, StatusCode::OK, &HeaderMap::new()), Ok(Hop::Stay));
        assert_eq!(
            hop(&from, StatusCode::NOT_MODIFIED, &HeaderMap::new()),
            Ok(Hop::Stay)
        );
        match hop(
            &from,
            StatusCode::MOVED_PERMANENTLY,
            &loc("https://download.example/x?y=1"),
        ) {
            Ok(Hop::Follow { to, see_other }) => {
                assert_eq!(to.as_str(), "https://download.example/x?y=1");
                assert!(!see_other);
            }
            other => panic!("{other:?}"),
        }
        match hop(&from, StatusCode::SEE_OTHER, &loc("/other")) {
            Ok(Hop::Follow { to, see_other }) => {
                assert_eq!(to.as_str(), "https://catalogue.example/other");
                assert!(see_other);
            }
            other => panic!("{other:?}"),
        }
        let down = hop(
            &from,
            StatusCode::FOUND,
            &loc("http://download.example/x?token=s3"),
        );
        assert!(
            down.as_ref().is_err_and(|e| e.contains("plain http")),
            "{down:?}"
        );
        assert!(!down.unwrap_err().contains("s3"), "the target is redacted");
        assert!(hop(&from, StatusCode::FOUND, &loc("ftp://x/")).is_err());
        assert!(hop(&from, StatusCode::FOUND, &HeaderMap::new()).is_err());
        // http -> https is an upgrade, followed.
        let plain = Url::parse("http://catalogue.example/a").unwrap();
        assert!(matches!(
            hop(
                &plain,
                StatusCode::FOUND,
                &loc("https://catalogue.example/a")
            ),
            Ok(Hop::Follow { .. })
        ));
    }

    #[test]
    fn trust() {
        let origin = Url::parse("https://zipper.creodias.eu/d/1").unwrap();
        let u = |s: &str| Url::parse(s).unwrap();
        let hosts = vec![".cloudferro.com".to_string(), "exact.example".to_string()];
        assert!(trusted(&origin, &u("https://ZIPPER.creodias.eu/x"), &[]));
        assert!(trusted(&origin, &u("https://a.cloudferro.com/x"), &hosts));
        assert!(!trusted(
            &origin,
            &u("https://cloudferro.com.evil/x"),
            &hosts
        ));
        assert!(!trusted(
            &origin,
            &u("https://evilcloudferro.com/x"),
            &hosts
        ));
        assert!(trusted(&origin, &u("https://exact.example/x"), &hosts));
        assert!(!trusted(&origin, &u("https://sub.exact.example/x"), &hosts));
        assert!(!trusted(&origin, &u("http://zipper.creodias.eu/x"), &hosts));
    }

    #[test]
    fn loopback() {
        for (s, want) in [
            ("http://localhost:1/x", true),
            ("http://127.0.0.1/x", true),
            ("http://127.8.9.1/x", true),
            ("http://[::1]:8/x", true),
            ("http://a.localhost/x", true),
            ("http://localhost.evil.com/x", false),
            ("http://10.0.0.1/x", false),
            ("http://zipper.creodias.eu/x", false),
        ] {
            assert_eq!(is_loopback(&Url::parse(s).unwrap()), want, "{s}");
        }
    }
}
