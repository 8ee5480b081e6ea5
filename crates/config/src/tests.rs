//! Tests of the whole: file search, precedence, and the error matrix with its messages.

use super::*;
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;

/// The tutorial's file, byte for byte. Its TOTP secret is not base32 ('1').
const TUTORIAL: &str = "[login]\nuser = person@example.com\npassword = qwer\ntotp_secret = 1234 ABCD 1234 ABCD 1234 ABCD 1234 ABCD";

/// A valid secrets file in the tutorial's shape, secret spaced and in lower case.
const VALID: &str = "[login]\nuser = person@example.com\npassword = qwer\ntotp_secret = jbsw y3dp ehpk 3pxp jbsw y3dp ehpk 3pxp\n";

struct Fixture {
    dir: tempfile::TempDir,
    env: HashMap<String, String>,
}

impl Fixture {
    /// An empty working directory and an environment with only HOME (inside the temp dir).
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut env = HashMap::new();
        env.insert(
            "HOME".to_string(),
            dir.path().join("home").display().to_string(),
        );
        Fixture { dir, env }
    }

    fn cwd(&self) -> PathBuf {
        self.dir.path().join("cwd")
    }

    /// Writes `text` at `rel` (inside the temp dir) with mode 0600 and returns its path.
    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    fn set(&mut self, k: &str, v: &str) -> &mut Self {
        self.env.insert(k.to_string(), v.to_string());
        self
    }

    fn load(&self, o: &Overrides) -> Result<Settings, ConfigError> {
        std::fs::create_dir_all(self.cwd()).unwrap();
        load_from(o, &|k| self.env.get(k).cloned(), &self.cwd())
    }

    fn endpoints(&self, o: &Overrides) -> Result<Endpoints, ConfigError> {
        std::fs::create_dir_all(self.cwd()).unwrap();
        endpoints_from(o, &|k| self.env.get(k).cloned(), &self.cwd())
    }

    fn err(&self, o: &Overrides) -> String {
        let e = self.load(o).expect_err("should fail");
        let msg = e.to_string();
        assert!(!msg.contains('\n'), "one line: {msg}");
        assert!(!msg.contains("qwer"), "no password in messages: {msg}");
        msg
    }
}

fn with_config(path: &Path) -> Overrides {
    Overrides {
        config: Some(path.to_path_buf()),
        ..Default::default()
    }
}

#[test]
fn valid_file_gives_creodias_defaults() {
    let f = Fixture::new();
    let path = f.write("cwd/secrets.conf", VALID);
    let s = f.load(&Overrides::default()).unwrap();
    assert_eq!(s.user, "person@example.com");
    assert_eq!(s.password.expose(), "qwer");
    assert_eq!(s.totp_secret.expose(), "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP");
    assert_eq!(s.endpoints.provider, Provider::Creodias);
    assert_eq!(s.endpoints.token_passing, TokenPassing::Query);
    assert_eq!(
        s.endpoints.token_url.as_str(),
        Provider::Creodias.defaults().token_url
    );
    assert_eq!(s.endpoints.client_id, "CLOUDFERRO_PUBLIC");
    assert_eq!(
        s.endpoints.download_url,
        "https://zipper.creodias.eu/odata/v1/Products({id})/$value"
    );
    assert_eq!(
        s.endpoints.catalogue_url.as_str(),
        "https://datahub.creodias.eu/odata/v1"
    );
    assert_eq!(s.endpoints.config_path.as_deref(), Some(path.as_path()));
    assert!(
        s.endpoints.warnings.is_empty(),
        "{:?}",
        s.endpoints.warnings
    );
    // Secrets stay out of Debug.
    let dbg = format!("{s:?}");
    assert!(!dbg.contains("qwer") && !dbg.contains("JBSW"), "{dbg}");
    assert_eq!(
        s.endpoints.download_url_for("abc"),
        "https://zipper.creodias.eu/odata/v1/Products(abc)/$value"
    );
}

#[test]
fn tutorial_file_unchanged_fails_only_on_its_placeholder_secret() {
    let f = Fixture::new();
    let path = f.write("cwd/secrets.conf", TUTORIAL);
    let msg = f.err(&Overrides::default());
    assert!(
        msg.contains("character '1' at position 1 is not base32"),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("totp_secret in [login] of {}", path.display())),
        "{msg}"
    );
    // With a real secret in its place, the tutorial's file works as it is.
    let path = f.write(
        "cwd/secrets.conf",
        &TUTORIAL.replace("1234 ABCD", "ABCD 2345"),
    );
    let s = f.load(&Overrides::default()).unwrap();
    assert_eq!(s.totp_secret.expose(), "ABCD2345".repeat(4));
    assert_eq!(s.endpoints.config_path, Some(path));
}

#[test]
fn configparser_semantics_reach_the_settings() {
    let f = Fixture::new();
    let text = "[Login]\n[login]\nUSER: me@example.com\nPassword = p%%w#rd;x %z\n  # a comment\nTOTP_SECRET=JBSWY3DPEHPK3PXP\n";
    f.write("cwd/secrets.conf", text);
    let s = f.load(&Overrides::default()).unwrap();
    assert_eq!(s.user, "me@example.com");
    assert_eq!(s.password.expose(), "p%w#rd;x %z");
    assert_eq!(s.totp_secret.expose(), "JBSWY3DPEHPK3PXP");
}

#[test]
fn search_order_cwd_then_xdg_then_home() {
    let mut f = Fixture::new();
    let home_file = f.write("home/.config/eodata-mount/secrets.conf", VALID);
    assert_eq!(
        f.load(&Overrides::default()).unwrap().endpoints.config_path,
        Some(home_file)
    );
    let xdg_file = f.write("xdg/eodata-mount/secrets.conf", VALID);
    let xdg = f.dir.path().join("xdg").display().to_string();
    f.set("XDG_CONFIG_HOME", &xdg);
    assert_eq!(
        f.load(&Overrides::default()).unwrap().endpoints.config_path,
        Some(xdg_file.clone())
    );
    // A relative XDG_CONFIG_HOME is ignored, as the spec says.
    f.set("XDG_CONFIG_HOME", "relative/dir");
    assert!(f
        .load(&Overrides::default())
        .unwrap()
        .endpoints
        .config_path
        .unwrap()
        .starts_with(f.dir.path().join("home")));
    f.set("XDG_CONFIG_HOME", &xdg);
    let cwd_file = f.write("cwd/secrets.conf", VALID);
    assert_eq!(
        f.load(&Overrides::default()).unwrap().endpoints.config_path,
        Some(cwd_file)
    );
    let env_file = f.write("elsewhere/by-env.conf", VALID);
    f.set("EODATA_CONFIG", &env_file.display().to_string());
    assert_eq!(
        f.load(&Overrides::default()).unwrap().endpoints.config_path,
        Some(env_file)
    );
    let flag_file = f.write("elsewhere/by-flag.conf", VALID);
    assert_eq!(
        f.load(&with_config(&flag_file))
            .unwrap()
            .endpoints
            .config_path,
        Some(flag_file)
    );
}

#[test]
fn no_file_lists_every_place_looked() {
    let mut f = Fixture::new();
    f.set("XDG_CONFIG_HOME", "/nonexistent-xdg");
    let msg = f.err(&Overrides::default());
    assert!(
        msg.contains(&f.cwd().join("secrets.conf").display().to_string()),
        "{msg}"
    );
    assert!(
        msg.contains("/nonexistent-xdg/eodata-mount/secrets.conf"),
        "{msg}"
    );
    assert!(msg.contains("EODATA_USER"), "{msg}");
    // Some credentials in the environment are not enough without a file.
    f.set("EODATA_USER", "u");
    assert!(matches!(
        f.load(&Overrides::default()),
        Err(ConfigError::NoFile { .. })
    ));
}

#[test]
fn credentials_from_environment_need_no_file() {
    let mut f = Fixture::new();
    f.set("EODATA_USER", "env@example.com")
        .set("EODATA_PASSWORD", "pw")
        .set("EODATA_TOTP_SECRET", "jbswy3dpehpk3pxp");
    let s = f.load(&Overrides::default()).unwrap();
    assert_eq!(s.user, "env@example.com");
    assert_eq!(s.totp_secret.expose(), "JBSWY3DPEHPK3PXP");
    assert_eq!(s.endpoints.config_path, None);
}

#[test]
fn environment_overrides_file_per_key() {
    let mut f = Fixture::new();
    f.write("cwd/secrets.conf", VALID);
    f.set("EODATA_PASSWORD", "from-env").set("EODATA_USER", "");
    let s = f.load(&Overrides::default()).unwrap();
    assert_eq!(s.password.expose(), "from-env");
    assert_eq!(
        s.user, "person@example.com",
        "an empty variable counts as unset"
    );
    // An environment value covers a key the file lacks.
    let f2 = Fixture::new();
    f2.write(
        "cwd/secrets.conf",
        "[login]\nuser = u\ntotp_secret = JBSWY3DPEHPK3PXP\n",
    );
    let mut f2 = f2;
    f2.set("EODATA_PASSWORD", "x");
    assert_eq!(
        f2.load(&Overrides::default()).unwrap().password.expose(),
        "x"
    );
}

#[test]
fn named_file_that_does_not_exist() {
    let mut f = Fixture::new();
    f.write("cwd/secrets.conf", VALID); // must not be used instead
    let missing = f.dir.path().join("nope.conf");
    let msg = f.err(&with_config(&missing));
    assert!(
        msg.contains(&missing.display().to_string()) && msg.contains("--config"),
        "{msg}"
    );
    assert!(msg.contains("does not exist"), "{msg}");
    f.set("EODATA_CONFIG", &missing.display().to_string());
    let msg = f.err(&Overrides::default());
    assert!(msg.contains("named by EODATA_CONFIG"), "{msg}");
    assert!(f.endpoints(&Overrides::default()).is_err());
}

#[test]
fn unreadable_file() {
    let f = Fixture::new();
    let dir = f.dir.path().join("a-directory");
    std::fs::create_dir_all(&dir).unwrap();
    let msg = f.err(&with_config(&dir));
    assert!(
        msg.starts_with(&format!("cannot read config file {}:", dir.display())),
        "{msg}"
    );
}

#[test]
fn syntax_errors_name_file_and_line() {
    let f = Fixture::new();
    let path = f.write("s.conf", "[login]\nuser = a\nUser = b\n");
    let msg = f.err(&with_config(&path));
    assert!(
        msg.contains(&format!(
            "{}, line 3: key 'user' appears twice in section [login]",
            path.display()
        )),
        "{msg}"
    );
    let path = f.write("s.conf", "user = a\n[login]\n");
    assert!(f
        .err(&with_config(&path))
        .contains("line 1: a key comes before any [section]"));
    let path = f.write("s.conf", "[login]\n[login]\n");
    assert!(f
        .err(&with_config(&path))
        .contains("line 2: section [login] appears twice"));
    let path = f.write("s.conf", "[login]\nqwer\n");
    assert!(f
        .err(&with_config(&path))
        .contains("line 2: line is neither"));
}

#[test]
fn missing_section_and_keys() {
    let f = Fixture::new();
    let path = f.write("s.conf", "[Login]\nuser = a\n");
    let msg = f.err(&with_config(&path));
    assert!(
        msg.contains(&format!("{} has no [login] section", path.display())),
        "{msg}"
    );
    assert!(
        msg.contains("there is a [Login]; section names are case-sensitive"),
        "{msg}"
    );
    let path = f.write(
        "s.conf",
        "[login]\nuser = a\ntotp_secret = JBSWY3DPEHPK3PXP\n",
    );
    let msg = f.err(&with_config(&path));
    assert!(
        msg.contains("password is not set") && msg.contains("EODATA_PASSWORD"),
        "{msg}"
    );
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    for key in ["user", "password", "totp_secret"] {
        let text = VALID.lines().map(|l| {
            if l.starts_with(key) {
                format!("{key} =")
            } else {
                l.to_string()
            }
        });
        let path = f.write("s.conf", &text.collect::<Vec<_>>().join("\n"));
        let msg = f.err(&with_config(&path));
        assert_eq!(
            msg,
            format!(
                "{key} in [login] of {} is empty; give it a value",
                path.display()
            )
        );
    }
}

#[test]
fn bad_totp_secret_from_environment_names_the_variable() {
    let mut f = Fixture::new();
    f.write("cwd/secrets.conf", VALID);
    f.set("EODATA_TOTP_SECRET", "JBSW Y3D0");
    let msg = f.err(&Overrides::default());
    assert!(
        msg.starts_with(
            "totp_secret from environment variable EODATA_TOTP_SECRET: character '0' at position 9"
        ),
        "{msg}"
    );
}

#[test]
fn precedence_flag_env_file_default() {
    let mut f = Fixture::new();
    f.write(
        "cwd/secrets.conf",
        &format!("{VALID}[endpoints]\ntoken_url = https://file.example/token\nclient_id = file-client\ncatalogue_url = https://file.example/odata/v1\n"),
    );
    let s = f.load(&Overrides::default()).unwrap();
    assert_eq!(s.endpoints.token_url.as_str(), "https://file.example/token");
    assert_eq!(s.endpoints.client_id, "file-client");
    assert_eq!(
        s.endpoints.catalogue_url.as_str(),
        "https://file.example/odata/v1"
    );
    assert_eq!(
        s.endpoints.download_url,
        Provider::Creodias.defaults().download_url,
        "default"
    );

    f.set("EODATA_TOKEN_URL", "https://env.example/token")
        .set("EODATA_CLIENT_ID", "env-client");
    let s = f.load(&Overrides::default()).unwrap();
    assert_eq!(s.endpoints.token_url.as_str(), "https://env.example/token");
    assert_eq!(s.endpoints.client_id, "env-client");
    assert_eq!(
        s.endpoints.catalogue_url.as_str(),
        "https://file.example/odata/v1"
    );

    let o = Overrides {
        token_url: Some("http://127.0.0.1:8080/token".into()),
        ..Default::default()
    };
    let s = f.load(&o).unwrap();
    assert_eq!(
        s.endpoints.token_url.as_str(),
        "http://127.0.0.1:8080/token"
    );
    assert_eq!(s.endpoints.client_id, "env-client");
}

#[test]
fn provider_selects_defaults_and_token_passing() {
    let mut f = Fixture::new();
    f.write(
        "cwd/secrets.conf",
        &format!("{VALID}[endpoints]\nprovider = CDSE\n"),
    );
    let s = f.load(&Overrides::default()).unwrap();
    assert_eq!(s.endpoints.provider, Provider::Cdse);
    assert_eq!(s.endpoints.token_passing, TokenPassing::Bearer);
    assert_eq!(s.endpoints.client_id, "cdse-public");
    assert_eq!(
        s.endpoints.catalogue_url.as_str(),
        "https://catalogue.dataspace.copernicus.eu/odata/v1"
    );
    assert_eq!(
        s.endpoints.download_url,
        "https://download.dataspace.copernicus.eu/odata/v1/Products({id})/$value"
    );
    // Flag over env over file.
    f.set("EODATA_PROVIDER", "creodias");
    assert_eq!(
        f.load(&Overrides::default()).unwrap().endpoints.provider,
        Provider::Creodias
    );
    let o = Overrides {
        provider: Some("cdse".into()),
        ..Default::default()
    };
    assert_eq!(f.load(&o).unwrap().endpoints.provider, Provider::Cdse);
    // A single endpoint override keeps the provider's other defaults.
    let o = Overrides {
        provider: Some("cdse".into()),
        client_id: Some("mine".into()),
        ..Default::default()
    };
    let s = f.load(&o).unwrap();
    assert_eq!(
        (
            s.endpoints.client_id.as_str(),
            s.endpoints.token_url.host_str()
        ),
        ("mine", Some("identity.dataspace.copernicus.eu"))
    );
}

#[test]
fn unknown_provider_lists_valid_ones() {
    let f = Fixture::new();
    f.write("cwd/secrets.conf", VALID);
    let o = Overrides {
        provider: Some("copernicus".into()),
        ..Default::default()
    };
    let msg = f.err(&o);
    assert_eq!(
        msg,
        "unknown provider \"copernicus\" from flag --provider; valid providers are: creodias, cdse"
    );
}

#[test]
fn bad_urls_name_their_origin() {
    let mut f = Fixture::new();
    let path = f.write(
        "cwd/secrets.conf",
        &format!("{VALID}[endpoints]\ncatalogue_url = datahub.creodias.eu/odata\n"),
    );
    let msg = f.err(&Overrides::default());
    assert!(msg.starts_with(&format!("catalogue_url in [endpoints] of {} is not a usable URL (\"datahub.creodias.eu/odata\")", path.display())), "{msg}");
    f.set("EODATA_CATALOGUE_URL", "https://ok.example/odata/v1");
    f.set("EODATA_TOKEN_URL", "ftp://x.example/token");
    let msg = f.err(&Overrides::default());
    assert!(
        msg.contains("environment variable EODATA_TOKEN_URL") && msg.contains("scheme \"ftp\""),
        "{msg}"
    );
    let o = Overrides {
        token_url: Some("https://u:secretpw@x.example/t?token=abc".into()),
        download_url: Some("mailto:{id}".into()),
        ..Default::default()
    };
    let msg = f.err(&o);
    assert!(
        msg.contains("flag --download-url") && msg.contains("mailto:{id}"),
        "{msg}"
    );
}

#[test]
fn download_template_needs_id_and_accepts_legacy_form() {
    let f = Fixture::new();
    f.write("cwd/secrets.conf", VALID);
    let o = Overrides {
        download_url: Some("https://zipper.creodias.eu/download/{id}".into()),
        ..Default::default()
    };
    let s = f.load(&o).unwrap();
    assert_eq!(
        s.endpoints.download_url_for("u-u-i-d"),
        "https://zipper.creodias.eu/download/u-u-i-d"
    );
    let o = Overrides {
        download_url: Some("https://zipper.creodias.eu/download/".into()),
        ..Default::default()
    };
    let msg = f.err(&o);
    assert!(msg.starts_with("download URL from flag --download-url (\"https://zipper.creodias.eu/download/\") has no {id}"), "{msg}");
}

#[test]
fn empty_endpoint_value_is_an_error() {
    let f = Fixture::new();
    let path = f.write(
        "cwd/secrets.conf",
        &format!("{VALID}[endpoints]\nclient_id =\n"),
    );
    assert_eq!(
        f.err(&Overrides::default()),
        format!(
            "client_id in [endpoints] of {} is empty; give it a value",
            path.display()
        )
    );
}

#[test]
fn permissions_warning_and_unknown_endpoint_key() {
    let f = Fixture::new();
    let path = f.write(
        "cwd/secrets.conf",
        &format!("{VALID}[endpoints]\ntokn_url = x\n"),
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let s = f.load(&Overrides::default()).unwrap();
    let p = path.display();
    assert_eq!(
        s.endpoints.warnings[0],
        format!("{p} is readable by other users; run: chmod 600 {p}")
    );
    assert!(
        s.endpoints.warnings[1].contains("unknown key \"tokn_url\""),
        "{:?}",
        s.endpoints.warnings
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(
        f.load(&Overrides::default())
            .unwrap()
            .endpoints
            .warnings
            .len(),
        2,
        "group-readable warns too"
    );
}

#[test]
fn endpoints_only_needs_no_credentials() {
    let f = Fixture::new();
    let e = f.endpoints(&Overrides::default()).unwrap();
    assert_eq!(e.provider, Provider::Creodias);
    assert_eq!(e.config_path, None);
    // A file without [login] is fine, and its [endpoints] are used.
    let path = f.write(
        "cwd/secrets.conf",
        "[endpoints]\ncatalogue_url = http://127.0.0.1:9/odata/v1\n",
    );
    let e = f.endpoints(&Overrides::default()).unwrap();
    assert_eq!(e.catalogue_url.as_str(), "http://127.0.0.1:9/odata/v1");
    assert_eq!(e.config_path, Some(path.clone()));
    // ... but load() still requires credentials.
    assert!(f
        .err(&Overrides::default())
        .contains("has no [login] section"));
    // A broken file is reported even here.
    f.write("cwd/secrets.conf", "[endpoints]\n[endpoints]\n");
    assert!(matches!(
        f.endpoints(&Overrides::default()),
        Err(ConfigError::Syntax { .. })
    ));
}

#[test]
fn totp_secret_may_be_left_out_and_client_secret_is_read_and_hidden() {
    let mut f = Fixture::new();
    let path = f.write(
        "s.conf",
        "[login]\nuser = a@example.com\npassword = qwer\n[endpoints]\nclient_secret = dc0a-s3cret\n",
    );
    let s = f.load(&with_config(&path)).unwrap();
    assert!(s.totp_secret.is_empty(), "no two-factor login");
    let secret = s.endpoints.client_secret.clone().unwrap();
    assert_eq!(secret.expose(), "dc0a-s3cret");
    assert!(
        s.endpoints
            .warnings
            .iter()
            .all(|w| !w.contains("client_secret")),
        "{:?}",
        s.endpoints.warnings
    );
    assert!(!format!("{s:?}").contains("dc0a-s3cret"), "never printed");
    // The environment wins over the file.
    f.set("EODATA_CLIENT_SECRET", "from-env");
    let s = f.load(&with_config(&path)).unwrap();
    assert_eq!(s.endpoints.client_secret.unwrap().expose(), "from-env");
    // Credentials from the environment alone, without a TOTP secret.
    let mut f = Fixture::new();
    f.set("EODATA_USER", "u").set("EODATA_PASSWORD", "p");
    let s = f.load(&Overrides::default()).unwrap();
    assert!(s.totp_secret.is_empty());
    assert!(s.endpoints.client_secret.is_none());
}

#[test]
fn the_coordinator_comes_from_flag_env_or_file_and_is_never_printed() {
    let mut f = Fixture::new();
    f.write(
        "cwd/secrets.conf",
        &format!("{VALID}[endpoints]\ncoordinator = rediss://:filepw@redis.cluster:6380\n"),
    );
    let s = f.load(&Overrides::default()).unwrap();
    let c = s.endpoints.coordinator.clone().unwrap();
    assert_eq!(c.expose(), "rediss://:filepw@redis.cluster:6380");
    assert!(!format!("{:?}", s.endpoints).contains("filepw"));
    f.set("EODATA_COORDINATOR", "redis://127.0.0.1:6379");
    let s = f.load(&Overrides::default()).unwrap();
    assert_eq!(
        s.endpoints.coordinator.unwrap().expose(),
        "redis://127.0.0.1:6379"
    );
    let o = Overrides {
        coordinator: Some("redis://localhost:7000".into()),
        ..Default::default()
    };
    assert_eq!(
        f.load(&o).unwrap().endpoints.coordinator.unwrap().expose(),
        "redis://localhost:7000"
    );
}
