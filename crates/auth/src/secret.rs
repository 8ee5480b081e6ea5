//! Types that keep secrets out of logs.
//!
//! Every password, TOTP secret, TOTP code and token in this workspace lives in a [`Secret`]: its
//! `Debug` and `Display` print `***`, so a stray `{:?}` in a log line cannot leak it. URLs that may
//! carry a `token=` query parameter go through [`redact_url`] before they are logged. A
//! [`Secret`]'s memory is overwritten with zeros when it is dropped (`zeroize`), so a freed
//! password does not linger in the heap for a core dump or swap to find.

use std::fmt;

/// A string that must never be printed. Use [`Secret::expose`] at the one place that sends it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret's value, for the request that needs it. Never log the result.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Query parameters whose values are credentials and are replaced by `***` when a URL is logged.
const SECRET_PARAMS: &[&str] = &[
    "token",
    "access_token",
    "refresh_token",
    "password",
    "totp",
    "otp",
];

/// The URL as text safe for a log line: credential query values and any userinfo are replaced
/// by `***`. Text that does not parse as a URL is replaced whole, since it cannot be checked.
pub fn redact_url(raw: &str) -> String {
    let Ok(mut url) = url::Url::parse(raw) else {
        return "<unparseable url>".to_string();
    };
    if !url.username().is_empty() || url.password().is_some() {
        let _ = url.set_username("***");
        let _ = url.set_password(None);
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let secret = SECRET_PARAMS.iter().any(|p| k.eq_ignore_ascii_case(p));
                (
                    k.into_owned(),
                    if secret { "***".into() } else { v.into_owned() },
                )
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_formats_its_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn redact_url_hides_token_and_keeps_the_rest() {
        let r = redact_url("https://zipper.example/download/abc?token=eyJsecret.part&x=1");
        assert!(!r.contains("eyJsecret"), "{r}");
        assert!(r.contains("/download/abc"));
        assert!(r.contains("x=1"));
        let r = redact_url("https://user:pw@host/p?Access_Token=zzz");
        assert!(!r.contains("pw") && !r.contains("zzz"), "{r}");
        assert_eq!(redact_url("not a url token=abc"), "<unparseable url>");
    }
}
