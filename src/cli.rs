//! The command line: what a user can type, and nothing else.
//!
//! `eodata-mount MOUNTPOINT` mounts (the default command); `token` and `download` do the
//! tutorial's job in one command each. Options shared by every command (where the credentials
//! and the services are) are global, so they may stand before or after the subcommand.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Mount Copernicus EODATA products from CREODIAS as local files.
///
/// Products appear as MOUNTPOINT/<Name>.zip and are read on demand with authenticated HTTP
/// Range requests; the TOTP code and the Keycloak token are handled for you. The root also holds
/// the /eodata tree of a CREODIAS machine (MOUNTPOINT/Sentinel-2/MSI/L1C/2018/09/27/<Name>.zip;
/// off with --no-tree or --listed-only).
#[derive(Debug, Parser)]
#[command(
    name = "eodata-mount",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub mount: MountArgs,

    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print one valid access token and a newline, nothing else.
    ///
    /// For scripts: curl "$URL?token=$(eodata-mount token)". Tokens are shared with every other
    /// eodata-mount process of this user, so calling this often costs no extra login.
    Token,
    /// Download products (by Name, Name without .SAFE, or UUID) as <Name>.zip.
    Download(DownloadArgs),
    /// Unmount an eodata-mount mount (also as a user, and a stale one left by a process that
    /// died): what fusermount3 -u or umount does, for our mounts only.
    Unmount {
        /// The mountpoint.
        #[arg(value_name = "MOUNTPOINT")]
        mountpoint: PathBuf,
    },
    /// Print a shell completion script, e.g. eodata-mount completions bash >
    /// /etc/bash_completion.d/eodata-mount.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. eodata-mount man > /usr/local/share/man/man1/eodata-mount.1.
    Man,
    /// Show or empty the disk cache (safe while mounts run: they fetch again what they miss).
    Cache(CacheArgs),
    /// Check configuration, login, download service, catalogue and this machine, read-only.
    ///
    /// One password + TOTP login (or the shared cached token), one refresh, one ranged request
    /// and one HEAD at the download service, one catalogue lookup. The output holds no secret:
    /// paste it into a bug report as it is. Exit status 0 only when a mount would work.
    Doctor(DoctorArgs),
    /// Search the catalogue: one product Name a line (pipe it to download --from-file -).
    ///
    /// Criteria are joined with "and" and sent as one OData $filter; no login is needed.
    Search(SearchArgs),
}

/// Options of `search`.
#[derive(Debug, Args)]
pub struct SearchArgs {
    #[command(flatten)]
    pub criteria: CriteriaArgs,

    /// Print the catalogue entries as JSON.
    #[arg(long, conflicts_with = "long")]
    pub json: bool,

    /// A header and columns: name, sensing start, size, online, UUID.
    #[arg(long)]
    pub long: bool,
}

/// What to look for in the catalogue: shared by `search` and `download`, turned into one OData
/// $filter by `eodata_catalogue::filter` (the code the /eodata tree's days use too).
#[derive(Debug, Args, Default)]
pub struct CriteriaArgs {
    /// Collection, e.g. SENTINEL-1, SENTINEL-2, SENTINEL-3, SENTINEL-5P.
    #[arg(long, value_name = "NAME")]
    pub collection: Option<String>,

    /// Product level, e.g. L1C, L2A, GRD, SLC (a test on the product name).
    #[arg(long, value_name = "LEVEL")]
    pub level: Option<String>,

    /// Sensing start on or after this (YYYY-MM-DD or an ISO 8601 instant, UTC).
    #[arg(long, value_name = "DATE")]
    pub from: Option<String>,

    /// Sensing start before this (YYYY-MM-DD: before that day begins).
    #[arg(long, value_name = "DATE")]
    pub to: Option<String>,

    /// Footprint intersecting this box: W,S,E,N in degrees.
    #[arg(
        long,
        value_name = "W,S,E,N",
        allow_hyphen_values = true,
        conflicts_with = "geometry"
    )]
    pub bbox: Option<String>,

    /// Footprint intersecting the polygon in this GeoJSON file (WGS 84).
    #[arg(long, value_name = "FILE.geojson")]
    pub geometry: Option<PathBuf>,

    /// Cloud cover at most this percentage.
    #[arg(long, value_name = "PCT")]
    pub cloud_max: Option<f64>,

    /// Product names containing this text.
    #[arg(long, value_name = "PATTERN")]
    pub name: Option<String>,

    /// Only products downloadable now.
    #[arg(long)]
    pub online_only: bool,

    /// Most products found.
    #[arg(long, default_value_t = 100, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub limit: u64,

    /// A raw OData $filter (as a query directory takes), joined to the others with "and".
    #[arg(long, visible_alias = "query", value_name = "RAW")]
    pub filter: Option<String>,
}

impl CriteriaArgs {
    /// Whether any criterion is given (the limit alone is none).
    pub fn any(&self) -> bool {
        self.collection.is_some()
            || self.level.is_some()
            || self.from.is_some()
            || self.to.is_some()
            || self.bbox.is_some()
            || self.geometry.is_some()
            || self.cloud_max.is_some()
            || self.name.is_some()
            || self.online_only
            || self.filter.is_some()
    }
}

/// `eodata-mount cache list|clear`.
#[derive(Debug, Args)]
pub struct CacheArgs {
    #[command(subcommand)]
    pub action: CacheAction,
    /// The disk cache (default: $XDG_CACHE_HOME/eodata-mount, else ~/.cache/eodata-mount).
    #[arg(long, global = true, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum CacheAction {
    /// One line a product: UUID, bytes held of its size, whole or partial, its Name if known.
    List,
    /// Drop every product, or the ones named (Name, UUID or /eodata/... path).
    Clear {
        #[arg(value_name = "PRODUCT")]
        products: Vec<String>,
    },
}

/// Options of `doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The product to probe (Name or UUID); default: the tutorial's Sentinel-2 product.
    #[arg(long, value_name = "ID")]
    pub product: Option<String>,

    /// Print the report as JSON (for scripts).
    #[arg(long)]
    pub json: bool,
}

/// Options of every command: credentials, services, logging.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// secrets.conf to read ([login] user, password, totp_secret).
    #[arg(long, global = true, env = "EODATA_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Service provider whose endpoints are the defaults: creodias or cdse.
    #[arg(long, global = true, value_name = "NAME")]
    pub provider: Option<String>,

    /// Keycloak token endpoint.
    #[arg(long, global = true, value_name = "URL")]
    pub token_url: Option<String>,

    /// OpenID Connect client id.
    #[arg(long, global = true, value_name = "ID")]
    pub client_id: Option<String>,

    /// Download URL template; {id} is replaced by the product's UUID.
    #[arg(long, global = true, value_name = "TEMPLATE")]
    pub download_url: Option<String>,

    /// OData catalogue base URL.
    #[arg(long, global = true, value_name = "URL")]
    pub catalogue_url: Option<String>,

    /// Do not share tokens with other processes through the per-user token cache.
    #[arg(long, global = true)]
    pub no_token_cache: bool,

    /// Parallel HTTP connections to the download service (it caps them per user).
    #[arg(long, global = true, default_value_t = eodata_fetch::zipper::DEFAULT_MAX_CONNECTIONS as u32, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub max_connections: u32,

    /// A request that makes no progress for this many seconds fails (EIO in the mount).
    #[arg(long, global = true, default_value_t = eodata_fetch::zipper::DEFAULT_READ_TIMEOUT.as_secs(), value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub read_timeout: u64,

    /// More log output (-v info, -vv debug, -vvv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Write logs to this file instead of standard error (created 0600, rotated to FILE.1 past
    /// 10 MiB). A background mount without it logs to
    /// $XDG_STATE_HOME/eodata-mount/<mountpoint>.log (else ~/.local/state/eodata-mount/).
    #[arg(long, global = true, value_name = "FILE")]
    pub log_file: Option<PathBuf>,

    /// Write logs to syslog (the journal under systemd: journalctl -t eodata-mount).
    #[arg(long, global = true, conflicts_with = "log_file")]
    pub syslog: bool,

    /// A host a download redirect may carry the Bearer token to, besides the provider's own
    /// domain (a name, or .example.eu for its subdomains); repeatable or comma-separated.
    #[arg(
        long = "trusted-host",
        global = true,
        env = "EODATA_TRUSTED_HOSTS",
        value_delimiter = ',',
        value_name = "HOST"
    )]
    pub trusted_hosts: Vec<String>,

    /// Allow a plain-http download URL to a host other than this machine. The access token
    /// then travels in clear; without this flag such a URL is refused.
    #[arg(long, global = true, env = "EODATA_INSECURE_HTTP")]
    pub insecure_http: bool,

    /// Share this account's tokens and connection cap with the other machines that name the
    /// same Redis (or Valkey): redis://[user:pass@]host:port[/db], rediss:// for TLS. Also
    /// EODATA_COORDINATOR, or coordinator= in [endpoints] of secrets.conf (better places for a
    /// password than the command line, which every local user sees in ps).
    #[arg(long, global = true, value_name = "URL")]
    pub coordinator: Option<String>,

    /// Allow a plain redis:// coordinator on another machine: its live tokens then cross the
    /// network in clear (only on a network private to the cluster).
    #[arg(long, global = true, env = "EODATA_COORDINATOR_INSECURE")]
    pub coordinator_insecure: bool,

    /// Download connections the whole account may have open, shared by every machine of the
    /// coordinator (CDSE allows 4 per user); each machine also keeps to --max-connections.
    #[arg(long, global = true, default_value_t = eodata_coord::DEFAULT_ACCOUNT_CONNECTIONS as u64,
          value_name = "N", value_parser = clap::value_parser!(u64).range(1..=64))]
    pub account_connections: u64,
}

/// Options of the mount (the default command).
#[derive(Debug, Args)]
pub struct MountArgs {
    /// Where to mount.
    #[arg(value_name = "MOUNTPOINT")]
    pub mountpoint: Option<PathBuf>,

    /// Stay in the foreground instead of returning once the mount is live.
    #[arg(short, long)]
    pub foreground: bool,

    /// A product to list in the root (Name, UUID, or an /eodata/... path); repeatable.
    #[arg(long = "product", value_name = "ID")]
    pub products: Vec<String>,

    /// A file with one product (Name or UUID) a line, listed in the root.
    #[arg(long, value_name = "FILE")]
    pub products_file: Option<PathBuf>,

    /// Only products listed by --product, --products-file or --query can be opened: a lookup of
    /// any other <Name>.zip or <uuid>.zip fails (ENOENT) without a request, and the /eodata tree
    /// is not shown. Use it with --allow-other, or every local user can download anything on
    /// your account.
    #[arg(long)]
    pub listed_only: bool,

    /// Memory for the block cache, in MiB.
    #[arg(long, default_value_t = eodata_fetch::cache::DEFAULT_BUDGET_BYTES >> 20, value_name = "MIB",
          value_parser = clap::value_parser!(u64).range(16..=1_048_576))]
    pub cache_size: u64,

    /// Keep products on disk in DIR, across mounts and for every process of this user
    /// (default: $XDG_CACHE_HOME/eodata-mount, else ~/.cache/eodata-mount). A product is
    /// downloaded once per machine and then reads from disk, even offline. Several mounts may
    /// share one DIR.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// No disk cache: products whose server ignores Range are spooled in $TMPDIR while the
    /// mount runs, and downloaded again by the next mount.
    #[arg(long, conflicts_with_all = ["cache_dir", "cache_dir_size"])]
    pub no_cache_dir: bool,

    /// Read products whole in the disk cache through this process, not by FUSE passthrough
    /// (by default, on Linux 6.9+ and as root, the kernel reads their cache file directly).
    #[arg(long)]
    pub no_passthrough: bool,

    /// Most disk the cache dir may use, in GiB (fractions allowed). Default: as much as leaves
    /// 5% of its filesystem free.
    #[arg(long, value_name = "GIB")]
    pub cache_dir_size: Option<f64>,

    /// Let other users read the mount (needs user_allow_other in /etc/fuse.conf when not root).
    #[arg(long)]
    pub allow_other: bool,

    /// FUSE mount options, comma-separated, as in mount -o.
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,

    /// An OData $filter shown as a directory of its products; NAME=FILTER makes MOUNTPOINT/NAME/,
    /// a single FILTER without a name fills the root. Repeatable.
    #[arg(long = "query", value_name = "[NAME=]FILTER")]
    pub queries: Vec<String>,

    /// Most products one query directory lists.
    #[arg(long, default_value_t = crate::fs::DEFAULT_MAX_RESULTS as u64, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_results: u64,

    /// Seconds a query's listing is kept; the next ls after that fetches it again.
    #[arg(long, default_value_t = crate::fs::DEFAULT_LISTING_TTL.as_secs(), value_name = "SECS")]
    pub listing_ttl: u64,

    /// Do not show the folder <Name>/ (the product's own files, one by one) beside each
    /// <Name>.zip.
    #[arg(long)]
    pub no_safe_view: bool,

    /// Do not show the /eodata tree (Sentinel-1/ Sentinel-2/ ... down to
    /// Sentinel-2/MSI/L1C/YYYY/MM/DD/<Name>.zip) in the root. The tree is also off under
    /// --listed-only, since it would let anyone with access to the mount open any product.
    #[arg(long)]
    pub no_tree: bool,
}

/// Options of `download`.
#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// Products: Names (with or without .SAFE), UUIDs, or /eodata/... paths (as on a CREODIAS
    /// machine or in a mount's tree: the last component is the Name, .zip or not).
    #[arg(value_name = "PRODUCT")]
    pub products: Vec<String>,

    /// Read products from this file, one a line (blank lines and # comments skipped).
    #[arg(long, value_name = "FILE")]
    pub from_file: Option<PathBuf>,

    /// Output directory, or a file name when downloading a single product.
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,

    /// Download again even when a complete file is already there.
    #[arg(long)]
    pub force: bool,

    /// No progress output.
    #[arg(short, long)]
    pub quiet: bool,

    /// Also every product the catalogue finds for these criteria (as `search` takes them;
    /// --query FILTER for a raw OData filter), up to --limit.
    #[command(flatten)]
    pub criteria: CriteriaArgs,
}
