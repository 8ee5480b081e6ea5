//! Settings for eodata-mount: command-line flags, environment, the tutorial's `secrets.conf` and
//! provider defaults, merged into one validated [`Settings`] (or [`Endpoints`] for commands
//! that need no credentials).
//!
//! Precedence, for every setting: flag > environment > file > provider default.
//!
//! Files: the `[login]` section holds `user`, `password` and `totp_secret`, exactly as the
//! CREODIAS tutorial writes them (read with Python's configparser semantics, see [`ini`]);
//! `totp_secret` may be left out for an account without two-factor login. An optional
//! `[endpoints]` section may hold `token_url`, `client_id`, `client_secret` (a confidential
//! client; also `EODATA_CLIENT_SECRET`), `download_url`, `catalogue_url` and `provider`.
//!
//! Everything is checked here, once, so that later layers can trust what they get: a typo in the
//! TOTP secret or a URL is reported before any request, naming where it was written.

mod error;
pub mod ini;
mod provider;
mod totp_secret;

pub use error::{ConfigError, Origin};
pub use provider::{Provider, ProviderDefaults, TokenPassing, UnknownProvider};
pub use totp_secret::{normalize_totp_secret, TotpSecretError, TotpSecretProblem};

use std::path::{Path, PathBuf};

use eodata_auth::Secret;
use ini::Ini;

/// What the command line asked for; the CLI maps its flags onto this. `None`: flag not given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--config`: the secrets file to read (must exist).
    pub config: Option<PathBuf>,
    /// `--token-url`
    pub token_url: Option<String>,
    /// `--client-id`
    pub client_id: Option<String>,
    /// `--download-url`: a template containing `{id}`.
    pub download_url: Option<String>,
    /// `--catalogue-url`
    pub catalogue_url: Option<String>,
    /// `--provider`: `creodias` or `cdse`.
    pub provider: Option<String>,
    /// `--coordinator`: the cluster's Redis (`redis://` or `rediss://`).
    pub coordinator: Option<String>,
}

/// Everything needed to log in and fetch products, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The account's e-mail address.
    pub user: String,
    pub password: Secret,
    /// Normalised base32: upper case, no blanks, no `=` padding. Empty when the account has no
    /// two-factor login (no `totp_secret` given).
    pub totp_secret: Secret,
    /// Where the services are, and what the user should know about the configuration.
    pub endpoints: Endpoints,
}

/// The service endpoints without credentials: for commands that only search the catalogue, and
/// for a test double that needs no login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub provider: Provider,
    /// How downloads carry the token; follows [`Endpoints::provider`].
    pub token_passing: TokenPassing,
    pub token_url: url::Url,
    pub client_id: String,
    /// The OpenID client's secret, for a confidential client; the providers' clients are
    /// public and need none. Never printed (`Secret`).
    pub client_secret: Option<Secret>,
    /// A template containing `{id}` (see [`Endpoints::download_url_for`]); checked to give an
    /// http(s) URL once a UUID is put in.
    pub download_url: String,
    pub catalogue_url: url::Url,
    /// The Redis that coordinates several machines on this account (`--coordinator`,
    /// `EODATA_COORDINATOR`, `coordinator` in `[endpoints]`); `None`: this machine alone. A
    /// `Secret`, since the address may hold Redis's password. Checked by `eodata-coord`.
    pub coordinator: Option<Secret>,
    /// The secrets file that was read, if one was found (credentials may all come from the
    /// environment).
    pub config_path: Option<PathBuf>,
    /// Things the user should fix that do not stop the program, e.g. a file others can read.
    /// The CLI prints them.
    pub warnings: Vec<String>,
}

impl Endpoints {
    /// The download URL of one product (without any token).
    pub fn download_url_for(&self, id: &str) -> String {
        self.download_url.replace(ID_PLACEHOLDER, id)
    }
}

/// Where a product's UUID goes in a download URL template.
pub const ID_PLACEHOLDER: &str = "{id}";

/// A UUID put into the download template to check that it yields a URL; the tutorial's product.
const SAMPLE_ID: &str = "db0c8ef3-8ec0-5185-a537-812dad3c58f8";

/// The file name looked for in the working directory and the XDG config directory; the tutorial's.
const FILE_NAME: &str = "secrets.conf";

/// The directory under `$XDG_CONFIG_HOME` that holds [`FILE_NAME`].
const APP_DIR: &str = "eodata-mount";

/// The tutorial's section for user, password and totp_secret.
const LOGIN: &str = "login";
/// Our optional section for endpoint overrides; the tutorial's Python ignores it.
const ENDPOINTS: &str = "endpoints";

/// Reads and validates everything, requiring credentials. `env` looks up environment variables
/// (the CLI passes `&|k| std::env::var(k).ok()`; tests pass a map). Empty variables count as
/// unset.
pub fn load(
    overrides: &Overrides,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Settings, ConfigError> {
    load_from(overrides, env, Path::new("."))
}

/// Like [`load`] but credentials are neither required nor checked, and no secrets file is
/// needed: a file is read only for its `[endpoints]`. A file named by `--config` or
/// `EODATA_CONFIG` must still exist, and a file that is found must still parse.
pub fn load_endpoints_only(
    overrides: &Overrides,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Endpoints, ConfigError> {
    endpoints_from(overrides, env, Path::new("."))
}

/// [`load`] with the working directory given, for tests.
fn load_from(
    overrides: &Overrides,
    env: &dyn Fn(&str) -> Option<String>,
    cwd: &Path,
) -> Result<Settings, ConfigError> {
    let env = |k: &str| env(k).filter(|v| !v.is_empty());
    // The TOTP secret is optional (accounts without two-factor login).
    let credentials_in_env = ["EODATA_USER", "EODATA_PASSWORD"]
        .iter()
        .all(|k| env(k).is_some());
    let file = match find_file(overrides, &env, cwd)? {
        Found::File(path) => Some(read_file(path)?),
        Found::Nothing { looked } if !credentials_in_env => {
            return Err(ConfigError::NoFile { looked })
        }
        Found::Nothing { .. } => None,
    };
    let user = credential(&file, &env, "user", "EODATA_USER")?;
    let password = credential(&file, &env, "password", "EODATA_PASSWORD")?;
    let totp = match credential(&file, &env, "totp_secret", "EODATA_TOTP_SECRET") {
        Ok(found) => Some(found),
        // No two-factor login on this account: logins send no code.
        Err(ConfigError::MissingKey { .. } | ConfigError::NoFile { .. }) => None,
        Err(e) => return Err(e),
    };
    let totp_secret = match totp {
        Some(totp) => {
            normalize_totp_secret(&totp.0).map_err(|problem| ConfigError::BadTotpSecret {
                origin: totp.1,
                problem,
            })?
        }
        None => String::new(),
    };
    Ok(Settings {
        user: user.0,
        password: Secret::new(password.0),
        totp_secret: Secret::new(totp_secret),
        endpoints: endpoints(overrides, &env, file)?,
    })
}

/// [`load_endpoints_only`] with the working directory given, for tests.
fn endpoints_from(
    overrides: &Overrides,
    env: &dyn Fn(&str) -> Option<String>,
    cwd: &Path,
) -> Result<Endpoints, ConfigError> {
    let env = |k: &str| env(k).filter(|v| !v.is_empty());
    let file = match find_file(overrides, &env, cwd)? {
        Found::File(path) => Some(read_file(path)?),
        Found::Nothing { .. } => None,
    };
    endpoints(overrides, &env, file)
}

enum Found {
    File(PathBuf),
    Nothing { looked: Vec<PathBuf> },
}

/// `--config`, else `EODATA_CONFIG`, else `./secrets.conf`, else
/// `$XDG_CONFIG_HOME/eodata-mount/secrets.conf` (`$HOME/.config` when unset, per the XDG spec,
/// which also says to ignore a relative `XDG_CONFIG_HOME`).
fn find_file(
    overrides: &Overrides,
    env: &dyn Fn(&str) -> Option<String>,
    cwd: &Path,
) -> Result<Found, ConfigError> {
    let named = match (&overrides.config, env("EODATA_CONFIG")) {
        (Some(path), _) => Some((path.clone(), "--config")),
        (None, Some(path)) => Some((PathBuf::from(path), "EODATA_CONFIG")),
        (None, None) => None,
    };
    if let Some((path, named_by)) = named {
        return match path.try_exists() {
            Ok(false) => Err(ConfigError::NamedFileMissing { path, named_by }),
            // An error here (e.g. a directory we may not search) shows when the file is read.
            _ => Ok(Found::File(path)),
        };
    }
    let mut looked = vec![cwd.join(FILE_NAME)];
    let config_home = env("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| env("HOME").map(|home| Path::new(&home).join(".config")));
    if let Some(dir) = config_home {
        looked.push(dir.join(APP_DIR).join(FILE_NAME));
    }
    match looked.iter().find(|p| p.exists()) {
        Some(path) => Ok(Found::File(path.clone())),
        None => Ok(Found::Nothing { looked }),
    }
}

/// A secrets file, parsed, with the warnings reading it produced.
struct File {
    path: PathBuf,
    ini: Ini,
    warnings: Vec<String>,
}

fn read_file(path: PathBuf) -> Result<File, ConfigError> {
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(source) => return Err(ConfigError::Unreadable { path, source }),
    };
    let ini = Ini::parse(&text).map_err(|e| ConfigError::Syntax {
        path: path.clone(),
        line: e.line,
        message: e.message,
    })?;
    let mut warnings = Vec::new();
    if let Some(w) = permission_warning(&path) {
        warnings.push(w);
    }
    if ini.has_section(ENDPOINTS) {
        for key in ini.keys(ENDPOINTS) {
            if !ENDPOINT_KEYS.contains(&key) {
                warnings.push(format!(
                    "{}: unknown key {key:?} in [{ENDPOINTS}] is ignored; known keys are {}",
                    path.display(),
                    ENDPOINT_KEYS.join(", ")
                ));
            }
        }
    }
    Ok(File {
        path,
        ini,
        warnings,
    })
}

/// Keys the `[endpoints]` section may hold.
const ENDPOINT_KEYS: [&str; 7] = [
    "token_url",
    "client_id",
    "client_secret",
    "download_url",
    "catalogue_url",
    "provider",
    "coordinator",
];

/// Group or others may read the file: warn, since it holds a password and the TOTP secret.
#[cfg(unix)]
fn permission_warning(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    /// Read bits for group and others.
    const READABLE_BY_OTHERS: u32 = 0o044;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & READABLE_BY_OTHERS != 0).then(|| {
        let p = path.display();
        format!("{p} is readable by other users; run: chmod 600 {p}")
    })
}

#[cfg(not(unix))]
fn permission_warning(_path: &Path) -> Option<String> {
    None
}

/// One credential: environment first, then the file's `[login]`. Returns the value and its
/// origin.
fn credential(
    file: &Option<File>,
    env: &dyn Fn(&str) -> Option<String>,
    key: &'static str,
    var: &'static str,
) -> Result<(String, Origin), ConfigError> {
    if let Some(value) = env(var) {
        return Ok((value, Origin::Env(var)));
    }
    let Some(file) = file else {
        // Only reached when all three are in the environment, so never in practice; kept total.
        return Err(ConfigError::NoFile { looked: Vec::new() });
    };
    if !file.ini.has_section(LOGIN) {
        let hint = match file
            .ini
            .section_names()
            .find(|n| n.eq_ignore_ascii_case(LOGIN))
        {
            Some(other) => format!(" (there is a [{other}]; section names are case-sensitive)"),
            None => String::new(),
        };
        return Err(ConfigError::MissingSection {
            path: file.path.clone(),
            hint,
            env: "EODATA_USER, EODATA_PASSWORD and EODATA_TOTP_SECRET".to_string(),
        });
    }
    let origin = Origin::File {
        path: file.path.clone(),
        section: LOGIN,
        key,
    };
    match file.ini.get(LOGIN, key) {
        None => Err(ConfigError::MissingKey {
            key,
            path: file.path.clone(),
            env: var,
        }),
        Some(value) if value.is_empty() => Err(ConfigError::EmptyValue { origin }),
        Some(value) => Ok((value, origin)),
    }
}

/// One endpoint setting: flag, then environment, then `[endpoints]` of the file.
fn pick(
    flag: (&Option<String>, &'static str),
    env: &dyn Fn(&str) -> Option<String>,
    var: &'static str,
    file: &Option<File>,
    key: &'static str,
) -> Result<Option<(String, Origin)>, ConfigError> {
    let found = if let Some(v) = flag.0 {
        Some((v.clone(), Origin::Flag(flag.1)))
    } else if let Some(v) = env(var) {
        Some((v, Origin::Env(var)))
    } else {
        file.as_ref().and_then(|f| {
            f.ini.get(ENDPOINTS, key).map(|v| {
                (
                    v,
                    Origin::File {
                        path: f.path.clone(),
                        section: ENDPOINTS,
                        key,
                    },
                )
            })
        })
    };
    match found {
        Some((v, origin)) if v.trim().is_empty() => Err(ConfigError::EmptyValue { origin }),
        other => Ok(other),
    }
}

/// A setting of `[endpoints]`: its flag, environment variable and key.
type Names = (&'static str, &'static str, &'static str);
const PROVIDER: Names = ("--provider", "EODATA_PROVIDER", "provider");
const TOKEN_URL: Names = ("--token-url", "EODATA_TOKEN_URL", "token_url");
const CLIENT_ID: Names = ("--client-id", "EODATA_CLIENT_ID", "client_id");
/// No flag is read: a secret on the command line is visible to every local user in `ps`.
const CLIENT_SECRET: Names = ("--client-secret", "EODATA_CLIENT_SECRET", "client_secret");
const DOWNLOAD_URL: Names = ("--download-url", "EODATA_DOWNLOAD_URL", "download_url");
const CATALOGUE_URL: Names = ("--catalogue-url", "EODATA_CATALOGUE_URL", "catalogue_url");
const COORDINATOR: Names = ("--coordinator", "EODATA_COORDINATOR", "coordinator");

fn endpoints(
    overrides: &Overrides,
    env: &dyn Fn(&str) -> Option<String>,
    file: Option<File>,
) -> Result<Endpoints, ConfigError> {
    // Each setting from its flag, environment variable or key in `[endpoints]`, first found.
    let setting =
        |flag: &Option<String>, (name, var, key): Names| pick((flag, name), env, var, &file, key);
    let provider = match setting(&overrides.provider, PROVIDER)? {
        None => Provider::default(),
        Some((value, origin)) => value.parse().map_err(|_| ConfigError::UnknownProvider {
            origin,
            value,
            valid: Provider::valid_names(),
        })?,
    };
    let defaults = provider.defaults();
    let or_default = |found: Option<(String, Origin)>, default: &str| {
        found.unwrap_or_else(|| (default.to_string(), Origin::Default(provider)))
    };
    let token_url = or_default(
        setting(&overrides.token_url, TOKEN_URL)?,
        defaults.token_url,
    );
    let client_id = or_default(
        setting(&overrides.client_id, CLIENT_ID)?,
        defaults.client_id,
    );
    let client_secret = setting(&None, CLIENT_SECRET)?.map(|(v, _)| Secret::new(v.trim()));
    let download_url = or_default(
        setting(&overrides.download_url, DOWNLOAD_URL)?,
        defaults.download_url,
    );
    let catalogue_url = or_default(
        setting(&overrides.catalogue_url, CATALOGUE_URL)?,
        defaults.catalogue_url,
    );
    let coordinator =
        setting(&overrides.coordinator, COORDINATOR)?.map(|(v, _)| Secret::new(v.trim()));
    let token_url = http_url(token_url)?;
    let catalogue_url = http_url(catalogue_url)?;
    let download_url = download_template(download_url)?;
    let (config_path, warnings) = match file {
        Some(f) => (Some(f.path), f.warnings),
        None => (None, Vec::new()),
    };
    Ok(Endpoints {
        provider,
        token_passing: provider.token_passing(),
        token_url,
        client_id: client_id.0.trim().to_string(),
        client_secret,
        download_url,
        catalogue_url,
        coordinator,
        config_path,
        warnings,
    })
}

/// Parses an absolute http(s) URL with a host, or says which setting is wrong and why.
fn http_url((value, origin): (String, Origin)) -> Result<url::Url, ConfigError> {
    check_http(value.trim(), value.trim(), origin)
}

/// `url` parsed and checked; `shown` is what an error quotes (the template, for downloads).
fn check_http(url: &str, shown: &str, origin: Origin) -> Result<url::Url, ConfigError> {
    let bad = |problem: String| ConfigError::BadUrl {
        origin: origin.clone(),
        // A URL that parses may carry credentials (userinfo, `token=`): quote it redacted.
        value: match url::Url::parse(shown) {
            Ok(u) if !u.username().is_empty() || u.password().is_some() || u.query().is_some() => {
                eodata_auth::redact_url(shown)
            }
            _ => shown.to_string(),
        },
        problem,
    };
    let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad(format!(
            "scheme {:?} is not http or https",
            parsed.scheme()
        )));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("it has no host".to_string()));
    }
    Ok(parsed)
}

/// Checks a download template: it must contain `{id}` and give an http(s) URL with a UUID in
/// it. Returns it trimmed. Both the OData form and the tutorial's legacy
/// `https://zipper.creodias.eu/download/{id}` pass.
fn download_template((value, origin): (String, Origin)) -> Result<String, ConfigError> {
    let template = value.trim().to_string();
    if !template.contains(ID_PLACEHOLDER) {
        return Err(ConfigError::NoIdInTemplate {
            origin,
            value: template,
        });
    }
    let sample = template.replace(ID_PLACEHOLDER, SAMPLE_ID);
    check_http(&sample, &template, origin).map(|_| template)
}

#[cfg(test)]
mod tests;
