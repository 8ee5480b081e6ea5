//! The mount command: check, log in, mount, serve, unmount.
//!
//! Order matters for "nothing mounted half-way": the mountpoint is checked and the login done
//! before mount(2), so wrong credentials or a bad mountpoint fail with nothing mounted.
//!
//! Background mode (the default) re-runs this program in the foreground as a detached child and
//! waits for one line on a pipe: `ready` once the mount is live (exit 0), or the child's exit
//! with its error already printed on our shared stderr (its exit code). Re-running instead of
//! fork(2) keeps the child free of a half-copied multi-threaded runtime.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;

use anyhow::{bail, Context};
use eodata_auth::token::TokenManager;
use eodata_auth::TokenSource;
use eodata_catalogue::Catalogue;
use eodata_fetch::cache::{BlockCache, CacheConfig};
use eodata_fetch::disk::DiskCache;
use eodata_fetch::spool::StreamFallback;
use fuser::{Config, MountOption, Session, SessionACL};

use crate::cache_dir;
use crate::cli::Cli;
use crate::fs::{
    CatalogueNodes, Fs, FsConfig, FsError, ProductMeta, QuerySpec, Resolver, StatusSource,
};
use crate::fuse::FuseAdapter;
use crate::mountpoint;
use crate::stack;

/// Set in the environment of the background child: it reports readiness on its stdout.
const NOTIFY_ENV: &str = "EODATA_MOUNT_NOTIFY_READY";

pub fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    let Some(mountpoint) = cli.mount.mountpoint.as_deref() else {
        bail!("no mountpoint given; usage: eodata-mount [OPTIONS] <MOUNTPOINT> (see --help)");
    };
    let mountpoint = match mountpoint::prepare(mountpoint) {
        Err(mountpoint::MountpointError::Missing(word)) => {
            bail!("{}", not_a_command(&word))
        }
        r => r?,
    };
    let consents_nonempty = cli
        .mount
        .options
        .iter()
        .flat_map(|o| o.split(','))
        .any(|o| o == "nonempty");
    if !consents_nonempty && mountpoint::is_nonempty(&mountpoint)? {
        bail!(
            "mountpoint {} is not empty: its files would be hidden while mounted; use an empty directory, or -o nonempty to mount over them",
            mountpoint.display()
        );
    }
    mountpoint::check_fuse_device()?;
    if !cli.mount.foreground {
        return spawn_background();
    }
    let rt = stack::runtime()?;
    let common = &cli.common;
    let settings = stack::settings(common)?;
    let tokens = stack::token_manager(common, &settings)?;
    // Log in before mounting: wrong credentials must fail here, with nothing mounted. With a
    // --cache-dir, an unreachable token endpoint is not fatal: cached products read offline.
    match rt.block_on(tokens.token()) {
        Err(e @ eodata_auth::AuthError::Unavailable { .. })
            if cache_dir::resolve(&cli.mount).is_some() =>
        {
            tracing::warn!("{e}; mounting anyway: products in the disk cache read offline");
        }
        r => {
            r.context("cannot log in, so nothing was mounted")?;
        }
    }
    let catalogue = stack::catalogue(common, &settings)?;
    let zipper = stack::zipper(common, &settings, tokens.clone())?;
    // Servers that ignore Range are streamed once and spooled, under the block cache;
    // the disk cache (on by default) keeps blocks, the spooled ones too, across mounts.
    let store = cache_dir::open_store(&cli.mount)?;
    if let Some(store) = &store {
        zipper.remember_ranges_in(cache_dir::ranges_file(store));
    }
    let checksums = Checksums::default();
    let mut spool = cache_dir::spool_config(&cli.mount, &store);
    spool.expected_md5 = Some(checksums.lookup());
    let fallback = StreamFallback::new(zipper.clone(), spool);
    let spools = fallback.monitor();
    let disk = store.clone();
    let source = DiskCache::new(fallback, store);
    let cache = Arc::new(BlockCache::new(
        source,
        CacheConfig {
            budget_bytes: cli.mount.cache_size << 20,
            ..CacheConfig::default()
        },
    ));
    let fs = Arc::new(Fs::new(
        cache_dir::OfflineResolver::new(
            CatalogueResolver(catalogue.clone(), checksums),
            &cli.mount,
        ),
        cache,
        FsConfig {
            max_connections: common.max_connections as usize,
            queries: query_specs(&cli.mount.queries)?,
            max_results: cli.mount.max_results as usize,
            listing_ttl: std::time::Duration::from_secs(cli.mount.listing_ttl),
            safe_view: !cli.mount.no_safe_view,
            listed_only: cli.mount.listed_only,
            tree: !cli.mount.no_tree,
            ..FsConfig::default()
        },
    ));
    if cli.mount.listed_only && !cli.mount.no_tree {
        tracing::info!("--listed-only: no /eodata tree in the root (it would open every product)");
    }
    fs.set_node_lister(Arc::new(CatalogueNodes(catalogue)));
    let coordinator = stack::coordinator(common, &settings)?;
    fs.set_status_source(status_source(tokens, zipper, spools, disk, coordinator));
    // --product names are typed by hand: an unknown one fails the mount. A products file may
    // hold hundreds, looked up LOOKUPS_AT_ONCE at a time; an unknown one there is a warning.
    let mut wanted: Vec<(String, bool)> = cli
        .mount
        .products
        .iter()
        .map(|n| (n.clone(), true))
        .collect();
    if let Some(file) = &cli.mount.products_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read products file {}", file.display()))?;
        wanted.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(|l| (l.to_string(), false)),
        );
    }
    rt.block_on(async {
        use futures::StreamExt;
        let results: Vec<_> = futures::stream::iter(&wanted)
            .map(|(name, required)| {
                let fs = &fs;
                async move { (name, *required, fs.add_product(name).await) }
            })
            .buffer_unordered(LOOKUPS_AT_ONCE)
            .collect()
            .await;
        let mut unknown = Vec::new();
        for (name, required, result) in results {
            match result {
                Ok(_) => {}
                Err(FsError::NotFound) if !required => unknown.push(name.as_str()),
                Err(FsError::NotFound) => {
                    bail!("product {name} not found in the catalogue")
                }
                Err(e) => bail!("product {name}: {e}"),
            }
        }
        if !unknown.is_empty() {
            unknown.sort_unstable();
            warn_user(&format!(
                "{} of the products file's names not found in the catalogue, so not listed: {}",
                unknown.len(),
                unknown.join(", ")
            ));
        }
        // Fetch every query's listing now: a filter the catalogue refuses fails here, with
        // nothing mounted, and the first `ls` finds its listing ready.
        let listed = fs
            .refresh_queries()
            .await
            .map_err(|e| anyhow::anyhow!("--query: {e}"))?;
        for (dir, n) in listed {
            tracing::info!("query directory {dir:?}: {n} products");
        }
        anyhow::Ok(())
    })?;

    let mut options = vec![
        MountOption::FSName(mountpoint::FS_NAME.into()),
        MountOption::Subtype(mountpoint::FS_NAME.into()),
        MountOption::RO,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoAtime,
    ];
    let mut acl = if cli.mount.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    for opt in cli.mount.options.iter().flat_map(|o| o.split(',')) {
        match opt {
            "" => {}
            // fuser expresses these as the session's access list, not as mount options.
            "allow_other" => acl = SessionACL::All,
            "allow_root" => acl = SessionACL::RootAndOwner,
            // Consent checked above; the kernel and fusermount3 know no such option.
            "nonempty" => {}
            other => options.push(parse_mount_option(other)),
        }
    }
    let mut config = Config::default();
    config.acl = acl;
    let adapter = FuseAdapter::new(fs, rt.handle().clone());
    config.mount_options = options;
    // As a user, fuser mounts through the setuid fusermount3; the unmount below does too.
    let session = Session::new(adapter, &mountpoint, &config)
        .with_context(|| format!("cannot mount on {}", mountpoint.display()))?;
    mountpoint::raise_read_ahead(&mountpoint);
    tracing::info!("mounted on {}", mountpoint.display());
    notify_ready()?;

    // SIGTERM/SIGINT: unmount; the session loop then ends and we exit.
    let mp = mountpoint.clone();
    rt.spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::info!("signal received: unmounting {}", mp.display());
        if let Err(e) = mountpoint::unmount(&mp) {
            // A mountpoint left behind is a failure the caller (a shell, systemd) must see.
            tracing::error!("unmount of {} failed: {e}", mp.display());
            eprintln!(
                "eodata-mount: unmount of {} failed: {e}; unmount it with: eodata-mount unmount {}",
                mp.display(),
                mp.display()
            );
            std::process::exit(1);
        }
        // Readers of a detached mount get an error once /dev/fuse closes, instead of hanging.
        std::process::exit(0);
    });
    let result = session.run();
    tracing::info!("unmounted {}", mountpoint.display());
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    result.context("the FUSE session ended with an error")?;
    Ok(ExitCode::SUCCESS)
}

/// `eodata-mount unmount MOUNTPOINT`: unmount one of our mounts, as root or as its user,
/// including a stale one whose process died.
pub fn unmount_command(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let abs =
        std::path::absolute(path).with_context(|| format!("mountpoint {}", path.display()))?;
    // canonicalize asks the mount itself, which fails on a dead one: then the path as given.
    let abs = abs.canonicalize().unwrap_or(abs);
    let Some(m) = mountpoint::mount_at(&abs) else {
        bail!("{} is not mounted", path.display());
    };
    if !(m.fstype.starts_with("fuse") && m.source == mountpoint::FS_NAME) {
        bail!(
            "{} is not an eodata-mount mount ({}); use umount",
            path.display(),
            m.fstype
        );
    }
    mountpoint::unmount(&abs).with_context(|| format!("cannot unmount {}", path.display()))?;
    Ok(ExitCode::SUCCESS)
}

/// Map one `-o` option onto fuser's enum; unknown ones pass through to the kernel.
fn parse_mount_option(opt: &str) -> MountOption {
    match opt {
        "default_permissions" => MountOption::DefaultPermissions,
        "ro" => MountOption::RO,
        "nodev" => MountOption::NoDev,
        "nosuid" => MountOption::NoSuid,
        "noexec" => MountOption::NoExec,
        "noatime" => MountOption::NoAtime,
        other => MountOption::CUSTOM(other.to_string()),
    }
}

/// Catalogue lookups at once for a products file: 8 turns 500 names from half a minute
/// (one at a time) into a few seconds without a burst the catalogue would throttle.
const LOOKUPS_AT_ONCE: usize = 8;

/// A warning the user must see when mounting: in the log, and on the terminal too when the
/// log goes elsewhere (printed once either way).
fn warn_user(msg: &str) {
    tracing::warn!("{msg}");
    if crate::logging::destination() != crate::logging::Destination::Stderr {
        eprintln!("eodata-mount: warning: {msg}");
    }
}

/// A missing mountpoint that is a bare word may be a command the user meant: say which, or
/// list the commands, along with how to make the directory.
fn not_a_command(word: &str) -> String {
    use clap::CommandFactory;
    let missing = mountpoint::MountpointError::Missing(word.to_string()).to_string();
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_lowercase() || c == '-' || c == '_');
    if !plain {
        return missing;
    }
    let cmd = crate::cli::Cli::command();
    let names: Vec<&str> = cmd
        .get_subcommands()
        .map(|c| c.get_name())
        .filter(|n| *n != "help")
        .collect();
    let hint = match word {
        "status" | "stat" | "info" => {
            Some("a mount's status is a file: cat MOUNTPOINT/.eodata-status".to_string())
        }
        "ls" | "list" => Some("list a mount's products with: ls MOUNTPOINT".to_string()),
        "umount" | "stop" => Some("unmount with: eodata-mount unmount MOUNTPOINT".to_string()),
        "mount" => Some("mount with: eodata-mount MOUNTPOINT".to_string()),
        "login" | "auth" => Some("check the login with: eodata-mount token".to_string()),
        _ => names
            .iter()
            .map(|n| (strsim::jaro(word, n), *n))
            .filter(|(score, _)| *score > 0.8)
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, n)| format!("did you mean: eodata-mount {n}")),
    };
    match hint {
        Some(hint) => format!("'{word}' is not a command; {hint}; to mount on a directory named {word}: mkdir {word}"),
        None => format!(
            "'{word}' is neither a command ({}) nor an existing mountpoint; to mount there: mkdir {word}",
            names.join(", ")
        ),
    }
}

/// Whether this process is the background mount started by [`spawn_background`].
pub fn is_background_child() -> bool {
    std::env::var_os(NOTIFY_ENV).is_some()
}

/// Re-run ourselves in the foreground, detached, and wait for it to say the mount is live.
fn spawn_background() -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot find our own executable")?;
    let mut cmd = Command::new(exe);
    cmd.args(std::env::args_os().skip(1))
        .arg("--foreground")
        .env(NOTIFY_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    // SAFETY: setsid is async-signal-safe; it detaches the child from our terminal's session
    // so that Ctrl-C in this shell does not reach the mount.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("cannot start the background mount")?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).ok();
    if line.trim() == "ready" {
        return Ok(ExitCode::SUCCESS);
    }
    // The child printed its error on our stderr; pass on its exit code.
    let status = child.wait().context("waiting for the background mount")?;
    Ok(ExitCode::from(
        status.code().unwrap_or(1).clamp(1, 255) as u8
    ))
}

/// In the background child: tell the parent the mount is live, then let go of its terminal.
fn notify_ready() -> anyhow::Result<()> {
    if std::env::var_os(NOTIFY_ENV).is_none() {
        return Ok(());
    }
    let mut out = std::io::stdout();
    writeln!(out, "ready")?;
    out.flush()?;
    let devnull = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    use std::os::fd::AsRawFd;
    // SAFETY: dup2 onto our own stdout/stderr; the parent has exited or will, and the logs go
    // to --log-file when one is given.
    unsafe {
        libc::dup2(devnull.as_raw_fd(), 1);
        libc::dup2(devnull.as_raw_fd(), 2);
    }
    Ok(())
}

/// `--query` values, checked.
fn query_specs(texts: &[String]) -> anyhow::Result<Vec<QuerySpec>> {
    let specs = texts
        .iter()
        .map(|t| QuerySpec::parse(t))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    QuerySpec::check_all(&specs).map_err(anyhow::Error::msg)?;
    Ok(specs)
}

/// The token manager's and the download client's lines of the `.eodata-status` file.
fn status_source(
    tokens: Arc<TokenManager>,
    zipper: Arc<stack::Client>,
    spools: eodata_fetch::spool::SpoolMonitor,
    disk: Option<Arc<eodata_fetch::disk::DiskStore>>,
    coordinator: Option<eodata_coord::Coordinator>,
) -> StatusSource {
    Box::new(move || {
        use std::fmt::Write as _;
        let now = std::time::SystemTime::now();
        let secs_left = |t: std::time::SystemTime| match t.duration_since(now) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        };
        let t = tokens.status();
        let z = zipper.stats();
        let mut s = String::new();
        match t.access_expires_at {
            Some(at) => {
                let _ = writeln!(s, "token.access_expires_in_secs: {}", secs_left(at));
            }
            None => s.push_str("token.access_expires_in_secs: none\n"),
        }
        match t.refresh_expires_at {
            Some(Some(at)) => {
                let _ = writeln!(s, "token.refresh_expires_in_secs: {}", secs_left(at));
            }
            Some(None) => s.push_str("token.refresh_expires_in_secs: unknown\n"),
            None => s.push_str("token.refresh_expires_in_secs: none\n"),
        }
        match &t.refused {
            Some(e) => {
                let _ = writeln!(s, "token.refused: {e}");
            }
            None => s.push_str("token.refused: no\n"),
        }
        let _ = writeln!(s, "log: {}", crate::logging::destination());
        let _ = writeln!(s, "zipper.requests: {}", z.requests);
        let _ = writeln!(s, "zipper.bytes: {}", z.bytes);
        let _ = writeln!(s, "zipper.retries: {}", z.retries);
        let _ = writeln!(s, "zipper.redirects: {}", z.redirects);
        let _ = writeln!(s, "zipper.unauthorized: {}", z.unauthorized);
        let _ = writeln!(s, "zipper.throttled: {}", z.throttled);
        let _ = writeln!(s, "zipper.connection_limit: {}", z.connection_limit);
        let ranges = match zipper.host_ranges() {
            Some(eodata_fetch::RangeSupport::Honoured) => "honoured",
            Some(eodata_fetch::RangeSupport::Ignored) => "ignored (products stream whole, once)",
            None => "not known yet",
        };
        let _ = writeln!(s, "zipper.range: {ranges}");
        match &coordinator {
            Some(c) => {
                let link = c.link();
                let state = if link.is_down() {
                    "unreachable (this machine's own token cache and connection budget)"
                } else {
                    "shared"
                };
                let _ = writeln!(s, "coordinator: {} {state}", link.shown());
            }
            None => s.push_str("coordinator: none\n"),
        }
        match &disk {
            Some(d) => {
                let _ = writeln!(s, "disk_cache.dir: {}", d.root().display());
                let _ = writeln!(s, "disk_cache.used_bytes: {}", d.used_bytes());
            }
            None => s.push_str("disk_cache.dir: none (--no-cache-dir)\n"),
        }
        for p in spools.progress() {
            let what = match (p.have >= p.size, p.following, p.running) {
                (true, _, _) => "whole",
                (false, true, _) => "streaming whole product in another process",
                (false, false, true) => "streaming whole product (server ignores Range)",
                (false, false, false) => "stream stopped",
            };
            let _ = writeln!(
                s,
                "stream.{}: {what}: {} of {} MiB",
                p.id,
                p.have >> 20,
                p.size >> 20
            );
        }
        s
    })
}

/// Product id -> the catalogue's MD5, filled as products are resolved or listed; the spool
/// checks a product it streamed whole against it (`eodata_fetch::spool::ExpectedMd5`).
#[derive(Clone, Default)]
pub struct Checksums(Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>);

impl Checksums {
    fn note(&self, p: &eodata_catalogue::Product) {
        if let Some(md5) = &p.md5 {
            let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
            m.insert(p.id.clone(), md5.clone());
        }
    }

    /// The lookup the spool asks.
    pub fn lookup(&self) -> eodata_fetch::spool::ExpectedMd5 {
        let map = Arc::clone(&self.0);
        Arc::new(move |id: &str| {
            map.lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(id)
                .cloned()
        })
    }
}

/// Names to products through the OData catalogue; remembers each product's MD5.
pub struct CatalogueResolver(pub Arc<Catalogue>, pub Checksums);

impl Resolver for CatalogueResolver {
    async fn resolve(&self, name: &str) -> Result<Option<ProductMeta>, FsError> {
        match self.0.resolve(name).await {
            Ok(p) => {
                self.1.note(&p);
                Ok(Some(product_meta(&p)))
            }
            Err(eodata_catalogue::CatalogueError::NotFound(_)) => Ok(None),
            Err(e) => {
                tracing::warn!("catalogue lookup of {name} failed: {e}");
                Err(FsError::Catalogue(e.to_string()))
            }
        }
    }

    async fn query(&self, filter: &str, max_results: usize) -> Result<Vec<ProductMeta>, FsError> {
        match self.0.query(filter, max_results).await {
            Ok(products) => {
                products.iter().for_each(|p| self.1.note(p));
                Ok(products.iter().map(product_meta).collect())
            }
            Err(e) => {
                tracing::warn!("catalogue query {filter:?} failed: {e}");
                Err(FsError::Catalogue(e.to_string()))
            }
        }
    }
}

fn product_meta(p: &eodata_catalogue::Product) -> ProductMeta {
    let mut xattrs = Vec::new();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            xattrs.push((format!("user.eodata.{k}"), v));
        }
    };
    // What GIS tools take: WKT (ogr2ogr, shapely's wkt.loads) and a GeoJSON geometry.
    put("footprint", p.footprint_wkt().map(str::to_string));
    put("geojson", p.footprint_geojson());
    put("checksum.md5", p.md5.clone());
    put("s3path", p.s3_path.clone());
    put("size_hint", p.size_hint.map(|s| s.to_string()));
    put("content_start", p.content_start.map(iso8601));
    put("content_end", p.content_end.map(iso8601));
    put("publication_date", p.publication_date.map(iso8601));
    ProductMeta {
        id: p.id.clone(),
        name: p.name.clone(),
        mtime: p
            .modification_date
            .or(p.publication_date)
            .unwrap_or(std::time::UNIX_EPOCH),
        online: p.online,
        size_hint: p.size_hint,
        xattrs,
    }
}

/// A time as ISO 8601 in UTC to the millisecond (`2018-09-27T05:12:21.024Z`), as the catalogue
/// writes its dates and `date -d`, Python's `fromisoformat` and GDAL read them.
fn iso8601(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}
