//! TOTP codes (RFC 6238) as Keycloak checks them: HMAC-SHA1, 6 digits, 30 s steps.
//!
//! This module owns two things and nothing else:
//! - reading the TOTP secret the user copied from the account page (base32, often written in
//!   groups with spaces, sometimes lower case, sometimes with `=` padding), with an error that
//!   names the first character that is not base32 so the user can find a typo;
//! - the code for a given 30 s *step*. Callers work in steps, not in codes: the token manager
//!   decides which step to use (server clock offset applied, never the same step twice) and this
//!   module only turns a step into digits.
//!
//! Codes are returned inside [`Secret`] so they cannot reach a log line by accident.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::Secret;

/// Length of one TOTP step. Keycloak's default policy (and every authenticator app) uses 30 s;
/// CREODIAS does not change it.
pub const STEP: Duration = Duration::from_secs(30);

/// Digits per code. Keycloak's default policy, and what the CREODIAS login form asks for.
pub const DIGITS: u8 = 6;

/// The base32 alphabet of RFC 4648 (no `0`, `1`, `8`, `9`: they look like `O`, `I`/`L`, `B`).
const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// The step that contains `time` (seconds since the Unix epoch divided by 30). Times before the
/// epoch (a badly broken clock) count as step 0.
pub fn step_at(time: SystemTime) -> u64 {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    secs / STEP.as_secs()
}

/// The instant at which `step` begins.
pub fn step_start(step: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(step.saturating_mul(STEP.as_secs()))
}

/// Why a TOTP secret could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TotpSecretProblem {
    /// `character` at `position` is not in the base32 alphabet (A-Z, 2-7).
    NotBase32,
    /// The text stops in the middle of a byte: base32 text has 2, 4, 5, 7 or 8 significant
    /// characters per 8, so one character is missing or extra. `position`/`character` name the
    /// last significant character.
    Truncated,
    /// Nothing is left once spaces and padding are removed (`position` is 0, `character` a
    /// space).
    Empty,
}

/// A TOTP secret that is not base32. Says where, so that a typo can be found without printing
/// the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TotpSecretError {
    /// 1-based position of the offending character in the text as given, counted in
    /// characters (spaces included), as a text editor counts columns.
    pub position: usize,
    /// The offending character.
    pub character: char,
    /// What is wrong with it.
    pub problem: TotpSecretProblem,
}

impl fmt::Display for TotpSecretError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.problem {
            TotpSecretProblem::NotBase32 => {
                write!(
                    f,
                    "character {:?} at position {} is not base32 (letters A-Z and digits 2-7 only",
                    self.character, self.position
                )?;
                match self.character {
                    '0' => f.write_str("; did you mean the letter O?)"),
                    '1' => f.write_str("; did you mean the letter I or L?)"),
                    '8' => f.write_str("; did you mean the letter B?)"),
                    _ => f.write_str(")"),
                }
            }
            TotpSecretProblem::Truncated => write!(
                f,
                "the secret ends in the middle of a byte after character {:?} at position {}: a \
                 character is missing or one too many",
                self.character, self.position
            ),
            TotpSecretProblem::Empty => f.write_str("the secret is empty"),
        }
    }
}

impl std::error::Error for TotpSecretError {}

/// Decodes a TOTP secret written in base32: spaces (and other whitespace) are ignored, letters
/// may be in either case, and trailing `=` padding is optional. Returns the raw key bytes.
///
/// The error names the first character that cannot be part of a base32 secret.
pub fn parse_totp_secret(text: &str) -> Result<Vec<u8>, TotpSecretError> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let mut acc: u32 = 0;
    let mut bits: u32 = 0;
    let mut significant = 0usize;
    let mut last: Option<(usize, char)> = None;
    let mut padding_from: Option<(usize, char)> = None;
    for (index, ch) in text.chars().enumerate() {
        let position = index + 1;
        if ch.is_whitespace() {
            continue;
        }
        if ch == '=' {
            padding_from.get_or_insert((position, ch));
            continue;
        }
        // Anything after padding started is misplaced, even a valid letter.
        let upper = ch.to_ascii_uppercase();
        let value = ALPHABET.iter().position(|&c| c as char == upper);
        let (Some(value), None) = (value, padding_from) else {
            let (position, character) = match (value, padding_from) {
                (Some(_), Some(pad)) => pad,
                _ => (position, ch),
            };
            return Err(TotpSecretError {
                position,
                character,
                problem: TotpSecretProblem::NotBase32,
            });
        };
        acc = (acc << 5) | value as u32;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
        significant += 1;
        last = Some((position, ch));
    }
    let Some((position, character)) = last else {
        return Err(TotpSecretError {
            position: 0,
            character: ' ',
            problem: TotpSecretProblem::Empty,
        });
    };
    // 8 characters carry 5 bytes; a group can end after 2, 4, 5 or 7 characters. Any other
    // remainder leaves a character whose bits make no whole byte: a typo, not a secret.
    if matches!(significant % 8, 1 | 3 | 6) {
        return Err(TotpSecretError {
            position,
            character,
            problem: TotpSecretProblem::Truncated,
        });
    }
    Ok(out)
}

/// A TOTP generator for one key. `Debug` does not show the key.
#[derive(Clone)]
pub struct Totp {
    key: Vec<u8>,
}

impl Drop for Totp {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

impl fmt::Debug for Totp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Totp(***)")
    }
}

impl Totp {
    /// A generator for raw key bytes (see [`parse_totp_secret`]).
    pub fn new(key: Vec<u8>) -> Self {
        Totp { key }
    }

    /// A generator for a base32 secret as the user wrote it (tests).
    #[cfg(any(test, feature = "testing"))]
    pub fn from_base32(text: &str) -> Result<Self, TotpSecretError> {
        parse_totp_secret(text).map(Totp::new)
    }

    /// The 6-digit code for `step`, zero-padded (`"012345"`), as Keycloak expects it.
    pub fn code(&self, step: u64) -> Secret {
        self.code_with_digits(step, DIGITS)
    }

    /// The code for `step` with `digits` digits (6 to 8). Only the RFC test vectors need 8.
    pub fn code_with_digits(&self, step: u64, digits: u8) -> Secret {
        // Never more than 8: totp-rs panics from 10 digits on, and RFC 4226 stops at 8.
        let digits = digits.clamp(6, 8);
        // `build_noncompliant` because keys shorter than 128 bits exist in the wild (80-bit
        // secrets from older enrolments); the server, not this client, decides whether a key is
        // acceptable. Digits and step are set to valid values above, so nothing can panic.
        let totp = totp_rs::Builder::new()
            .with_algorithm(totp_rs::Algorithm::SHA1)
            .with_digits(digits)
            .with_step_duration(STEP.as_secs())
            .with_secret(self.key.clone())
            .build_noncompliant();
        let time = step.saturating_mul(STEP.as_secs());
        Secret::new(totp.generate(time).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SHA-1 key of RFC 6238 appendix B: ASCII "12345678901234567890".
    const RFC_KEY: &[u8] = b"12345678901234567890";

    /// RFC 6238 appendix B, SHA-1 rows: (time in seconds, 8-digit code).
    const RFC_SHA1: &[(u64, &str)] = &[
        (59, "94287082"),
        (1_111_111_109, "07081804"),
        (1_111_111_111, "14050471"),
        (1_234_567_890, "89005924"),
        (2_000_000_000, "69279037"),
        (20_000_000_000, "65353130"),
    ];

    #[test]
    fn rfc6238_sha1_vectors_at_8_digits() {
        let totp = Totp::new(RFC_KEY.to_vec());
        for &(time, want) in RFC_SHA1 {
            let step = time / 30;
            assert_eq!(totp.code_with_digits(step, 8).expose(), want, "T={time}");
        }
    }

    #[test]
    fn six_digit_codes_are_the_last_six_digits_zero_padded() {
        let totp = Totp::new(RFC_KEY.to_vec());
        for &(time, want) in RFC_SHA1 {
            let code = totp.code(step_at(UNIX_EPOCH + Duration::from_secs(time)));
            assert_eq!(code.expose(), &want[2..], "T={time}");
            assert_eq!(code.expose().len(), 6);
        }
        // T=1111111109 gives 07081804 -> 081804: the leading zero must stay.
        assert_eq!(totp.code(1_111_111_109 / 30).expose(), "081804");
    }

    #[test]
    fn base32_secret_gives_the_same_codes_as_raw_key() {
        // "12345678901234567890" in base32, written the way people paste it.
        let text = "gezd gnbv gy3t qojq gezd gnbv gy3t qojq";
        let totp = Totp::from_base32(text).unwrap();
        assert_eq!(totp.code_with_digits(1, 8).expose(), "94287082");
    }

    #[test]
    fn secret_normalisation() {
        let want = RFC_KEY.to_vec();
        assert_eq!(
            parse_totp_secret("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ").unwrap(),
            want
        );
        assert_eq!(
            parse_totp_secret(" gezdgnbv\tGY3TQOJQ GEZDGNBVGY3TQOJQ\n").unwrap(),
            want
        );
        // 10 bytes -> 16 chars, no padding needed; 1 byte -> 2 chars + 6 padding.
        assert_eq!(parse_totp_secret("ME======").unwrap(), b"a");
        assert_eq!(parse_totp_secret("me").unwrap(), b"a");
        assert_eq!(parse_totp_secret("MFRGG===").unwrap(), b"abc");
    }

    #[test]
    fn secret_errors_name_the_first_bad_character() {
        // The tutorial's example secret: '1' is not base32.
        let e = parse_totp_secret("1234 ABCD 1234 ABCD").unwrap_err();
        assert_eq!(
            (e.position, e.character, e.problem),
            (1, '1', TotpSecretProblem::NotBase32)
        );
        assert!(e.to_string().contains("letter I or L"), "{e}");
        let e = parse_totp_secret("ABCD EF9H").unwrap_err();
        assert_eq!((e.position, e.character), (8, '9'));
        let e = parse_totp_secret("ABCD-EFGH").unwrap_err();
        assert_eq!((e.position, e.character), (5, '-'));
        // Padding in the middle: the '=' is the misplaced character.
        let e = parse_totp_secret("ME==MFRG").unwrap_err();
        assert_eq!((e.position, e.character), (3, '='));
        let e = parse_totp_secret("ABC").unwrap_err();
        assert_eq!(
            (e.position, e.character, e.problem),
            (3, 'C', TotpSecretProblem::Truncated)
        );
        let e = parse_totp_secret("  = ").unwrap_err();
        assert_eq!(e.problem, TotpSecretProblem::Empty);
        // Non-ASCII counts as one character.
        let e = parse_totp_secret("ÄBCD").unwrap_err();
        assert_eq!((e.position, e.character), (1, 'Ä'));
    }

    #[test]
    fn steps() {
        let t = UNIX_EPOCH + Duration::from_secs(59);
        assert_eq!(step_at(t), 1);
        assert_eq!(step_start(2), UNIX_EPOCH + Duration::from_secs(60));
        assert_eq!(step_at(UNIX_EPOCH - Duration::from_secs(5)), 0);
    }

    #[test]
    fn debug_hides_key_and_code() {
        let totp = Totp::new(RFC_KEY.to_vec());
        assert_eq!(format!("{totp:?} {:?}", totp.code(1)), "Totp(***) ***");
    }
}
