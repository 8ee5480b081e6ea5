//! Types that keep secrets out of logs.
//!
//! Every password, TOTP secret, TOTP code and token in this workspace lives in a [`Secret`]: its
//! `Debug` and `Display` print `***`, so a stray `{:?}` in a log line cannot leak it. URLs that may
//! carry a `token=` query parameter go through [`crate::redact_url`] (the HTTP room's) before they
//! are logged. A
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redact_url;

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
