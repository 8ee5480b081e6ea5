//! Tests that need no server: a refused login fails before any request, the URL template
//! encodes the id, and the rule for which redirect hosts are trusted with the credential.

use super::*;

/// A token source whose login is refused.
struct Refused(AtomicU32);

impl TokenSource for Refused {
    async fn token(&self) -> Result<AccessToken, AuthError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Err(AuthError::Refused {
            server: "keycloak".into(),
            reason: "Invalid user credentials".into(),
        })
    }
    async fn rejected(&self, _: &AccessToken) {}
}

#[tokio::test]
async fn zipper_refused_login_fails_at_once() {
    let z = Zipper::new(
        ZipperConfig::new("http://127.0.0.1:9/x/{id}", TokenPassing::Query),
        Refused(AtomicU32::new(0)),
        eodata_http::client(None).unwrap(),
    );
    assert!(matches!(
        z.get_range("a", 0..10).await,
        Err(FetchError::Auth(_))
    ));
    assert!(matches!(z.info("a").await, Err(FetchError::Auth(_))));
    assert_eq!(z.inner.tokens.0.load(Ordering::SeqCst), 2);
    assert_eq!(z.stats().requests, 0);
}

#[test]
fn zipper_url_template_encodes_the_id() {
    let z = Zipper::new(
        ZipperConfig::new(
            "https://h.example/odata/v1/Products({id})/$value",
            TokenPassing::Query,
        ),
        Fixed(AtomicU32::new(0)),
        reqwest::Client::new(),
    );
    let u = z.inner.product_url("a b/../c").unwrap();
    assert_eq!(
        u.as_str(),
        "https://h.example/odata/v1/Products(a%20b%2F..%2Fc)/$value"
    );
    let bad = Zipper::new(
        ZipperConfig::new("not a url {id}", TokenPassing::Query),
        Fixed(AtomicU32::new(0)),
        reqwest::Client::new(),
    );
    assert!(matches!(
        bad.inner.product_url("x"),
        Err(FetchError::Protocol(_))
    ));
}

#[test]
fn zipper_trusted_hosts_rule() {
    let mut cfg = ZipperConfig::new("https://zipper.example.eu/d/{id}", TokenPassing::Bearer);
    cfg.trusted_hosts = vec![".dataspace.example.eu".into(), "Other.Example".into()];
    let z = Zipper::new(cfg, Fixed(AtomicU32::new(0)), reqwest::Client::new());
    let origin = url::Url::parse("https://zipper.example.eu/d/x").unwrap();
    let trusted = |u: &str| z.inner.trusted(&origin, &url::Url::parse(u).unwrap());
    assert!(trusted("https://ZIPPER.example.eu/other"));
    assert!(trusted("https://download.dataspace.example.eu/x"));
    assert!(trusted("https://other.example/x"));
    assert!(!trusted("https://dataspace.example.eu.evil.test/x"));
    assert!(!trusted("https://evildataspace.example.eu/x"));
    assert!(!trusted("https://example.eu/x"));
    assert!(
        !trusted("http://zipper.example.eu/d/x"),
        "never downgraded to http"
    );
    assert!(!trusted("https://127.0.0.1/x"));
}
