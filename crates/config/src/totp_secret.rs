//! Checking and normalising the TOTP secret, so that a typo is reported when the settings are
//! read, naming the character, rather than as a refused login later (which, repeated, can lock
//! the account).
//!
//! The secret is RFC 4648 base32 (`A`-`Z`, `2`-`7`). Sites show it in groups (`ABCD EFGH ...`)
//! and apps sometimes in lower case; the tutorial removes the spaces. Here all whitespace is
//! ignored, case is ignored, and `=` padding is accepted at the end only. The result is upper
//! case without blanks or padding: the form `totp_rs::Secret::try_from_base32` decodes.

/// Why a TOTP secret is not base32. The `Display` never contains more than one character of
/// the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TotpSecretProblem {
    #[error("it is empty")]
    Empty,
    /// `position` is 1-based and counts characters of the value as written, blanks included.
    #[error("character '{character}' at position {position} is not base32 (letters A-Z and digits 2-7){hint}", hint = digit_hint(*character))]
    NotBase32 { character: char, position: usize },
    #[error("'=' padding at position {position} is followed by more characters; '=' may only end the secret")]
    PaddingInside { position: usize },
    /// Base32 text never has 1, 3 or 6 characters past a multiple of 8: a character was lost
    /// or added.
    #[error("it has {count} base32 characters, a length no base32 text has; a character is missing or extra")]
    BadLength { count: usize },
}

fn digit_hint(c: char) -> &'static str {
    match c {
        '0' => "; a '0' is probably the letter O",
        '1' => "; a '1' is probably the letter I or L",
        '8' => "; an '8' is probably the letter B",
        '9' => "; digits 0, 1, 8 and 9 never occur in base32",
        _ => "",
    }
}

/// The secret in canonical form (upper case, no blanks, no padding), or what is wrong with it.
pub fn normalize_totp_secret(raw: &str) -> Result<String, TotpSecretProblem> {
    let mut out = String::with_capacity(raw.len());
    let mut padding_at: Option<usize> = None;
    for (i, c) in raw.chars().enumerate() {
        let position = i + 1;
        if c.is_whitespace() {
            continue;
        }
        if c == '=' {
            padding_at.get_or_insert(position);
            continue;
        }
        if let Some(position) = padding_at {
            return Err(TotpSecretProblem::PaddingInside { position });
        }
        let upper = c.to_ascii_uppercase();
        if !(upper.is_ascii_uppercase() || ('2'..='7').contains(&upper)) {
            return Err(TotpSecretProblem::NotBase32 {
                character: c,
                position,
            });
        }
        out.push(upper);
    }
    if out.is_empty() {
        return Err(TotpSecretProblem::Empty);
    }
    if matches!(out.len() % 8, 1 | 3 | 6) {
        return Err(TotpSecretProblem::BadLength { count: out.len() });
    }
    // The decoder the auth crate's TOTP library uses must agree; it does for anything that
    // passed the checks above, and this keeps it so if either side changes.
    if totp_rs::Secret::try_from_base32(&out).is_err() {
        return Err(TotpSecretProblem::BadLength { count: out.len() });
    }
    Ok(out)
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
    fn tutorial_example_is_refused_at_its_first_character() {
        let e = normalize_totp_secret("1234 ABCD 1234 ABCD 1234 ABCD 1234 ABCD").unwrap_err();
        assert_eq!(
            e,
            TotpSecretProblem::NotBase32 {
                character: '1',
                position: 1
            }
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
        assert_eq!(
            e,
            TotpSecretProblem::NotBase32 {
                character: '8',
                position: 9
            }
        );
        let e = normalize_totp_secret("ABCD-EFGH").unwrap_err();
        assert_eq!(
            e,
            TotpSecretProblem::NotBase32 {
                character: '-',
                position: 5
            }
        );
    }

    #[test]
    fn padding_inside_empty_and_bad_length() {
        assert_eq!(
            normalize_totp_secret("AB=CD").unwrap_err(),
            TotpSecretProblem::PaddingInside { position: 3 }
        );
        assert_eq!(
            normalize_totp_secret("  ").unwrap_err(),
            TotpSecretProblem::Empty
        );
        assert_eq!(
            normalize_totp_secret("===").unwrap_err(),
            TotpSecretProblem::Empty
        );
        assert_eq!(
            normalize_totp_secret("JBSWY3DPE").unwrap_err(),
            TotpSecretProblem::BadLength { count: 9 }
        );
    }
}
