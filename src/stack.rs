//! Building the layers every command stands on, from the command line, in one place:
//! settings -> token manager -> catalogue and zipper client -> block cache.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use eodata_auth::token::{LoginConfig, TokenManager};
use eodata_catalogue::Catalogue;
use eodata_config::{Overrides, Settings};
use eodata_fetch::zipper::{Zipper, ZipperConfig};

use crate::cli::CommonArgs;

/// The zipper client as every command uses it.
pub type Client = Zipper<Arc<TokenManager>>;

/// The tokio runtime: one worker per core (at least two). The FUSE adapter's tasks mostly wait
/// on the network, so a few threads serve many concurrent reads; more workers than cores only
/// add switches: scripts/bench P1 (loopback cp of 1 GiB, 2 cores) took 714-855 ms of mount CPU
/// with four workers, 529-741 ms with two, at the same speed.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    big_buffers_get_their_own_mappings();
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Buffers of a cache block (1 MiB) or more are mapped on their own and unmapped when freed.
/// glibc's default threshold rises as big buffers are freed, after which freed blocks and
/// request buffers stay in per-thread arenas: scripts/bench P6 (peak RSS of the mount during a
/// 1 GiB `cp`, 256 MiB cache) measured ~450-500 MB without this and ~305 MB with it. Called
/// before the runtime starts its threads.
fn big_buffers_get_their_own_mappings() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter, under glibc's own locks.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// What the command line says about the configuration, for `eodata_config::load`.
pub fn overrides(common: &CommonArgs) -> Overrides {
    Overrides {
        config: common.config.clone(),
        token_url: common.token_url.clone(),
        client_id: common.client_id.clone(),
        download_url: common.download_url.clone(),
        catalogue_url: common.catalogue_url.clone(),
        provider: common.provider.clone(),
        coordinator: common.coordinator.clone(),
    }
}

/// Flags > environment > secrets.conf > provider defaults, validated.
pub fn settings(common: &CommonArgs) -> anyhow::Result<Settings> {
    let settings = eodata_config::load(&overrides(common), &|k| std::env::var(k).ok())?;
    for w in &settings.endpoints.warnings {
        eprintln!("eodata-mount: warning: {w}");
    }
    Ok(settings)
}

/// The HTTP client shared by every layer: `eodata_http`'s one builder (it follows no
/// redirects: the clients follow them, deciding where a token may go).
pub fn http_client(common: &CommonArgs) -> anyhow::Result<reqwest::Client> {
    eodata_http::client(Some(Duration::from_secs(common.read_timeout)))
        .context("cannot build the HTTP client")
}

pub fn token_manager(
    common: &CommonArgs,
    settings: &Settings,
) -> anyhow::Result<Arc<TokenManager>> {
    let cache_dir = if common.no_token_cache {
        None
    } else {
        Some(eodata_auth::token::default_cache_dir())
    };
    let cfg = LoginConfig {
        token_url: settings.endpoints.token_url.to_string(),
        client_id: settings.endpoints.client_id.clone(),
        user: settings.user.clone(),
        password: settings.password.clone(),
        totp_secret: settings.totp_secret.clone(),
        cache_dir,
    };
    let mut manager = TokenManager::new(cfg, http_client(common)?)?
        .with_client_secret(settings.endpoints.client_secret.clone());
    if let Some(coord) = coordinator(common, settings)? {
        manager = manager.with_shared_store(|local| coord.token_store(local));
    }
    Ok(Arc::new(manager))
}

/// The process's one coordinator: the token manager and the zipper share its link to Redis,
/// so an outage is said once and one connection serves both.
static COORDINATOR: std::sync::OnceLock<Option<eodata_coord::Coordinator>> =
    std::sync::OnceLock::new();

/// The cluster's coordinator, when one is configured: checked here (a plain `redis://` to
/// another machine is refused without --coordinator-insecure), connected at first use.
pub fn coordinator(
    common: &CommonArgs,
    settings: &Settings,
) -> anyhow::Result<Option<eodata_coord::Coordinator>> {
    if let Some(made) = COORDINATOR.get() {
        return Ok(made.clone());
    }
    let made = match &settings.endpoints.coordinator {
        None => None,
        Some(url) => {
            let address = eodata_coord::Address::parse(url.expose(), common.coordinator_insecure)?;
            Some(eodata_coord::Coordinator::new(
                &address,
                &settings.user,
                settings.endpoints.token_url.as_str(),
            )?)
        }
    };
    Ok(COORDINATOR.get_or_init(|| made).clone())
}

pub fn catalogue(common: &CommonArgs, settings: &Settings) -> anyhow::Result<Arc<Catalogue>> {
    Ok(Arc::new(Catalogue::new(
        settings.endpoints.catalogue_url.clone(),
        http_client(common)?,
    )))
}

pub fn zipper(
    common: &CommonArgs,
    settings: &Settings,
    tokens: Arc<TokenManager>,
) -> anyhow::Result<Arc<Client>> {
    let passing = match settings.endpoints.token_passing {
        eodata_config::TokenPassing::Query => eodata_fetch::zipper::TokenPassing::Query,
        eodata_config::TokenPassing::Bearer => eodata_fetch::zipper::TokenPassing::Bearer,
    };
    let mut cfg = ZipperConfig::new(settings.endpoints.download_url.clone(), passing);
    cfg.max_connections = common.max_connections as usize;
    cfg.read_timeout = Duration::from_secs(common.read_timeout);
    // --read-timeout is the reader's promise both ways: a request that has made no progress for
    // that long fails (EIO), and until then it keeps retrying, however many tries that takes.
    // A count of retries would turn a 20 s outage into EIO at the default 120 s, and a short
    // --read-timeout into minutes of waiting.
    cfg.deadline = cfg.read_timeout;
    cfg.max_retries = u32::MAX;
    // A Bearer token may follow a redirect only within the provider's own domain (CDSE
    // redirects from the catalogue host to the download host); the template's host is trusted
    // by the client itself.
    cfg.trusted_hosts = match settings.endpoints.provider {
        eodata_config::Provider::Creodias => vec![".creodias.eu".into(), ".cloudferro.com".into()],
        eodata_config::Provider::Cdse => vec![".dataspace.copernicus.eu".into()],
    };
    cfg.trusted_hosts
        .extend(common.trusted_hosts.iter().cloned());
    cfg.insecure_http = common.insecure_http;
    if let Some(coord) = coordinator(common, settings)? {
        cfg.account_slots = Some(coord.account_slots(common.account_connections as usize));
    }
    let zipper = Zipper::new(cfg, tokens, http_client(common)?);
    zipper.check()?;
    Ok(Arc::new(zipper))
}
