//! Everything that can be wrong with the settings, each as one line that names the place to fix
//! (flag, environment variable, or file and key) and what to do.
//!
//! No message contains a password or token; a TOTP secret is quoted by at most one character.

use std::fmt;
use std::path::PathBuf;

use crate::totp_secret::TotpSecretError;

/// Where a setting came from, so that an error about it names the place to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A command-line flag, e.g. `--token-url`.
    Flag(&'static str),
    /// An environment variable, e.g. `EODATA_TOKEN_URL`.
    Env(&'static str),
    /// A key in the secrets file.
    File {
        path: PathBuf,
        section: &'static str,
        key: &'static str,
    },
    /// The provider's built-in default.
    Default(crate::Provider),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(flag) => write!(f, "flag {flag}"),
            Origin::Env(var) => write!(f, "environment variable {var}"),
            Origin::File { path, section, key } => {
                write!(f, "{key} in [{section}] of {}", path.display())
            }
            Origin::Default(p) => write!(f, "the {p} default"),
        }
    }
}

/// A list of paths for a message: `a, b, c`.
fn paths(list: &[PathBuf]) -> String {
    list.iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why no valid settings could be built. `Display` is one line meant for the user.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no secrets file found (looked in: {}) and EODATA_USER and EODATA_PASSWORD (with EODATA_TOTP_SECRET for two-factor login) are not both set; create one of those files with a [login] section holding user, password and totp_secret (left out without two-factor login), or name one with --config", paths(.looked))]
    NoFile { looked: Vec<PathBuf> },

    #[error("config file {} named by {named_by} does not exist; fix the path or drop the {named_by}", .path.display())]
    NamedFileMissing {
        path: PathBuf,
        named_by: &'static str,
    },

    #[error("cannot read config file {}: {source}; check that it is a readable file", .path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{}, line {line}: {message}; fix that line (the file is read as Python's configparser reads it)", .path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        message: String,
    },

    #[error("{} has no [login] section{hint}; add a [login] section with user, password and totp_secret, or set {env}", .path.display())]
    MissingSection {
        path: PathBuf,
        /// E.g. " (there is a [Login]; section names are case-sensitive)", or empty.
        hint: String,
        /// The environment variables that would also do, e.g. "EODATA_PASSWORD".
        env: String,
    },

    #[error("{key} is not set; add `{key} = ...` to the [login] section of {} or set {env}", .path.display())]
    MissingKey {
        key: &'static str,
        path: PathBuf,
        env: &'static str,
    },

    #[error("{origin} is empty; give it a value")]
    EmptyValue { origin: Origin },

    #[error("totp_secret from {origin}: {problem}; copy the secret exactly as it was shown when two-factor login was set up")]
    BadTotpSecret {
        origin: Origin,
        problem: TotpSecretError,
    },

    #[error(
        "{origin} is not a usable URL ({value:?}): {problem}; give a full http:// or https:// URL"
    )]
    BadUrl {
        origin: Origin,
        value: String,
        problem: String,
    },

    #[error("download URL from {origin} ({value:?}) has no {{id}}; write it as a template such as https://zipper.creodias.eu/odata/v1/Products({{id}})/$value")]
    NoIdInTemplate { origin: Origin, value: String },

    #[error("unknown provider {value:?} from {origin}; valid providers are: {valid}")]
    UnknownProvider {
        origin: Origin,
        value: String,
        valid: String,
    },
}
