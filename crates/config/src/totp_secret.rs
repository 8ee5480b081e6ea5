//! Checking and normalising the TOTP secret when the settings are read, so that a typo is
//! reported up front naming the character, rather than as a refused login later (which,
//! repeated, can lock the account).
//!
//! The check is the auth crate's own reader, [`eodata_auth::parse_totp_secret`], so this crate
//! accepts exactly what the token manager will: base32 (`A`-`Z`, `2`-`7`), any case, blanks
//! ignored, `=` padding at the end only, no dangling bits. The normalised form handed on is
//! upper case without blanks or padding, which every base32 decoder reads.

pub use eodata_auth::{TotpSecretError, TotpSecretProblem};

/// The secret in canonical form (upper case, no blanks, no padding), or where it is wrong.
pub fn normalize_totp_secret(raw: &str) -> Result<String, TotpSecretError> {
    eodata_auth::parse_totp_secret(raw)?;
    Ok(raw
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '=')
        .map(|c| c.to_ascii_uppercase())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spaced_lower_case_padded_secret_is_normalised() {
        assert_eq!(
            normalize_totp_secret(" jbsw y3dp ehpk 3pxp ").unwrap(),
            "JBSWY3DPEHPK3PXP"
        );
        assert_eq!(normalize_totp_secret("MZXW6===").unwrap(), "MZXW6");
        assert_eq!(normalize_totp_secret("mzxw6 = = =").unwrap(), "MZXW6");
    }

    #[test]
    fn normalised_secret_decodes_to_the_same_key_in_totp_rs() {
        let raw = "jbsw y3dp ehpk 3pxp jbsw y3dp ehpk 3pxp";
        let normalised = normalize_totp_secret(raw).unwrap();
        let ours = eodata_auth::parse_totp_secret(raw).unwrap();
        let theirs = totp_rs::Secret::try_from_base32(&normalised).unwrap();
        assert_eq!(theirs.as_bytes(), ours.as_slice());
    }

    #[test]
    fn tutorial_example_is_refused_at_its_first_character() {
        let e = normalize_totp_secret("1234 ABCD 1234 ABCD 1234 ABCD 1234 ABCD").unwrap_err();
        assert_eq!(
            (e.character, e.position, e.problem),
            ('1', 1, TotpSecretProblem::NotBase32)
        );
        let msg = e.to_string();
        assert!(
            msg.contains("character '1' at position 1 is not base32"),
            "{msg}"
        );
        assert!(msg.contains("letter I or L"), "{msg}");
    }

    #[test]
    fn position_counts_blanks_as_written() {
        let e = normalize_totp_secret("ABCD EFG8").unwrap_err();
        assert_eq!((e.character, e.position), ('8', 9));
        let e = normalize_totp_secret("ABCD-EFGH").unwrap_err();
        assert_eq!((e.character, e.position), ('-', 5));
    }

    #[test]
    fn padding_inside_empty_and_bad_length() {
        let e = normalize_totp_secret("AB=CD").unwrap_err();
        assert_eq!((e.position, e.problem), (3, TotpSecretProblem::NotBase32));
        for empty in ["  ", "===", ""] {
            assert_eq!(
                normalize_totp_secret(empty).unwrap_err().problem,
                TotpSecretProblem::Empty
            );
        }
        let e = normalize_totp_secret("JBSWY3DPE").unwrap_err();
        assert_eq!(e.problem, TotpSecretProblem::Truncated);
    }
}
