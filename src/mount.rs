//! The mount command: check, log in, mount, serve, unmount.
//!
//! Order matters for "nothing mounted half-way": the mountpoint is checked and the login done
//! before mount(2), so wrong credentials or a bad mountpoint fail with nothing mounted.
//!
//! Background mode (the default) re-runs this program in the foreground as a detached child and
//! waits for one line on a pipe: `ready` once the mount is live (exit 0), or the child's exit
//! with its error already printed on our shared stderr (its exit code). Re-running instead of
//! fork(2) keeps the child free of a half-copied multi-threaded runtime.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;

use anyhow::{bail, Context};
use eodata_auth::token::TokenManager;
use eodata_auth::TokenSource;
use eodata_fetch::cache::{BlockCache, CacheConfig};
use eodata_fetch::disk::DiskCache;
use eodata_fetch::spool::StreamFallback;
use fuser::{Config, MountOption, Session, SessionACL};

use crate::cache_dir;
use crate::cli::Cli;
use crate::fs::{CatalogueNodes, Fs, FsConfig, FsError, QuerySpec, StatusSource};
use crate::fuse::FuseAdapter;
use crate::mountpoint;
use crate::resolver::{CatalogueResolver, Checksums};
use crate::stack;

/// Set in the environment of the background child: it reports readiness on its stdout.
const NOTIFY_ENV: &str = "EODATA_MOUNT_NOTIFY_READY";

/// The filesystem as the mount builds it: catalogue names (with the disk cache's offline
/// fallback) over the block cache, the disk cache, the no-Range spool and the zipper.
type MountFs = Fs<
    cache_dir::OfflineResolver<CatalogueResolver>,
    DiskCache<StreamFallback<Arc<stack::Client>>>,
>;

/// The fuser adapter over [`MountFs`].
type MountAdapter = FuseAdapter<
    cache_dir::OfflineResolver<CatalogueResolver>,
    DiskCache<StreamFallback<Arc<stack::Client>>>,
>;

pub fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    let mountpoint = check_mountpoint(cli)?;
    if !cli.mount.foreground {
        return spawn_background();
    }
    let rt = stack::runtime()?;
    let fs = rt.block_on(build(cli))?;
    rt.block_on(add_listed(cli, &fs))?;
    let disk = fs.cache().source().store().cloned();
    let session = mount(cli, fs, &mountpoint, rt.handle().clone())?;
    serve(session, mountpoint, rt, disk)
}

/// How long an exiting mount waits for the disk cache to finish making a product it just
/// completed whole (an `fsync` and a rename; reading back the blocks other processes wrote): a
/// few seconds covers products of several GiB on a local disk; one not finished by then is
/// made whole at its next open instead.
const ASSEMBLY_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// The mountpoint is usable (a directory, empty unless -o nonempty, /dev/fuse open to us):
/// checked before anything else, so a bad one fails with nothing done.
fn check_mountpoint(cli: &Cli) -> anyhow::Result<std::path::PathBuf> {
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
    Ok(mountpoint)
}

/// Logs in (before anything is mounted: wrong credentials fail here) and builds the layers: the
/// zipper, the spool, the disk and block caches, and the filesystem over them.
async fn build(cli: &Cli) -> anyhow::Result<Arc<MountFs>> {
    let common = &cli.common;
    let settings = stack::settings(common)?;
    let tokens = stack::token_manager(common, &settings)?;
    // With a disk cache, an unreachable token endpoint is not fatal: cached products read
    // offline.
    match tokens.token().await {
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
            passthrough_off: if cli.mount.no_passthrough {
                Some("--no-passthrough".to_string())
            } else if disk.is_none() {
                Some("no disk cache".to_string())
            } else {
                None
            },
            ..FsConfig::default()
        },
    ));
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        // Said now, not at the first open of a cached product: the kernel registers backing
        // files for CAP_SYS_ADMIN only.
        fs.passthrough().turn_off(crate::fuse::NEEDS_ROOT);
    }
    if cli.mount.listed_only && !cli.mount.no_tree {
        tracing::info!("--listed-only: no /eodata tree in the root (it would open every product)");
    }
    fs.set_node_lister(Arc::new(CatalogueNodes(catalogue)));
    let coordinator = stack::coordinator(common, &settings)?;
    fs.set_status_source(status_source(tokens, zipper, spools, disk, coordinator));
    Ok(fs)
}

/// The products named by --product and --products-file, and every query's listing, before
/// mounting. --product names are typed by hand: an unknown one fails the mount. A products
/// file may hold hundreds, looked up LOOKUPS_AT_ONCE at a time; an unknown one there is a
/// warning. A filter the catalogue refuses fails here, with nothing mounted, and the first
/// `ls` finds its listing ready.
async fn add_listed(cli: &Cli, fs: &Arc<MountFs>) -> anyhow::Result<()> {
    use futures::StreamExt;
    let mut wanted: Vec<(String, bool)> = cli
        .mount
        .products
        .iter()
        .map(|n| (n.clone(), true))
        .collect();
    if let Some(file) = &cli.mount.products_file {
        let names = crate::resolver::names_file(file).context("--products-file")?;
        wanted.extend(names.into_iter().map(|l| (l, false)));
    }
    let results: Vec<_> = futures::stream::iter(&wanted)
        .map(|(name, required)| async move { (name, *required, fs.add_product(name).await) })
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
    let listed = fs
        .refresh_queries()
        .await
        .map_err(|e| anyhow::anyhow!("--query: {e}"))?;
    for (dir, n) in listed {
        tracing::info!("query directory {dir:?}: {n} products");
    }
    Ok(())
}

/// Threads reading the kernel's requests, each on its own clone of /dev/fuse (`clone_fd`), so
/// replies from the tokio workers (one per core) go back through one queue each instead of all
/// contending for one.
const FUSE_THREADS: usize = 2;

/// mount(2) with the options asked for (read-only, no devices or setuid, no atime, and the
/// access list); as a user, fuser mounts through the setuid fusermount3.
fn mount(
    cli: &Cli,
    fs: Arc<MountFs>,
    mountpoint: &std::path::Path,
    rt: tokio::runtime::Handle,
) -> anyhow::Result<Session<MountAdapter>> {
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
    config.mount_options = options;
    config.n_threads = Some(FUSE_THREADS);
    config.clone_fd = true;
    let session = Session::new(FuseAdapter::new(fs, rt), mountpoint, &config)
        .with_context(|| format!("cannot mount on {}", mountpoint.display()))?;
    mountpoint::raise_read_ahead(mountpoint);
    tracing::info!("mounted on {}", mountpoint.display());
    notify_ready()?;
    Ok(session)
}

/// Serves until unmounted: from outside (the session ends), or by SIGTERM/SIGINT, which
/// unmounts and exits (non-zero if the unmount failed: a mountpoint left behind is a failure
/// the caller, a shell or systemd, must see).
fn serve<FS: fuser::Filesystem>(
    session: Session<FS>,
    mountpoint: std::path::PathBuf,
    rt: tokio::runtime::Runtime,
    disk: Option<Arc<eodata_fetch::disk::DiskStore>>,
) -> anyhow::Result<ExitCode> {
    let mp = mountpoint.clone();
    let settle = move || {
        if let Some(d) = &disk {
            d.finish_assembly(ASSEMBLY_GRACE);
        }
    };
    let settle_on_signal = settle.clone();
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
            tracing::error!("unmount of {} failed: {e}", mp.display());
            eprintln!(
                "eodata-mount: unmount of {} failed: {e}; unmount it with: eodata-mount unmount {}",
                mp.display(),
                mp.display()
            );
            std::process::exit(1);
        }
        settle_on_signal();
        // Readers of a detached mount get an error once /dev/fuse closes, instead of hanging.
        std::process::exit(0);
    });
    let result = session.run();
    tracing::info!("unmounted {}", mountpoint.display());
    settle();
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
        let mut s = String::new();
        token_lines(&mut s, &tokens.status());
        let _ = writeln!(s, "log: {}", crate::logging::destination());
        zipper_lines(&mut s, &zipper);
        let _ = writeln!(
            s,
            "coordinator: {}",
            coordinator_state(coordinator.as_ref())
        );
        match &disk {
            Some(d) => {
                let _ = writeln!(s, "disk_cache.dir: {}", d.root().display());
                let _ = writeln!(s, "disk_cache.used_bytes: {}", d.used_bytes());
            }
            None => s.push_str("disk_cache.dir: none (--no-cache-dir)\n"),
        }
        stream_lines(&mut s, &spools);
        s
    })
}

/// The token manager's lines: when the tokens expire (seconds from now), and a refusal.
fn token_lines(s: &mut String, t: &eodata_auth::TokenStatus) {
    let now = std::time::SystemTime::now();
    let secs_left = |t: std::time::SystemTime| match t.duration_since(now) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
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
}

/// The download client's counters and what it knows of the host's Range support.
fn zipper_lines(s: &mut String, zipper: &stack::Client) {
    let z = zipper.stats();
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
}

/// The coordinator's address (shown without its password) and whether it answers.
fn coordinator_state(coordinator: Option<&eodata_coord::Coordinator>) -> String {
    let Some(c) = coordinator else {
        return "none".into();
    };
    let link = c.link();
    let state = if link.is_down() {
        "unreachable (this machine's own token cache and connection budget)"
    } else {
        "shared"
    };
    format!("{} {state}", link.shown())
}

/// One line per product streamed whole (its server ignores Range): how far it is.
fn stream_lines(s: &mut String, spools: &eodata_fetch::spool::SpoolMonitor) {
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
}
