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
/// Range requests; the TOTP code and the Keycloak token are handled for you.
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
    /// Print a shell completion script, e.g. eodata-mount completions bash >
    /// /etc/bash_completion.d/eodata-mount.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. eodata-mount man > /usr/local/share/man/man1/eodata-mount.1.
    Man,
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

    /// Most products printed.
    #[arg(long, default_value_t = 100, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub limit: u64,

    /// Print the catalogue entries as JSON.
    #[arg(long, conflicts_with = "long")]
    pub json: bool,

    /// A header and columns: name, sensing start, size, online, UUID.
    #[arg(long)]
    pub long: bool,

    /// A raw OData $filter, joined to the others with "and".
    #[arg(long, value_name = "RAW")]
    pub filter: Option<String>,
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
    #[arg(long, global = true, default_value_t = 4, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub max_connections: u32,

    /// A request that makes no progress for this many seconds fails (EIO in the mount).
    #[arg(long, global = true, default_value_t = 120, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub read_timeout: u64,

    /// More log output (-v info, -vv debug, -vvv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Write logs to this file instead of standard error.
    #[arg(long, global = true, value_name = "FILE")]
    pub log_file: Option<PathBuf>,

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

    /// A product to list in the root (Name or UUID); repeatable.
    #[arg(long = "product", value_name = "ID")]
    pub products: Vec<String>,

    /// A file with one product (Name or UUID) a line, listed in the root.
    #[arg(long, value_name = "FILE")]
    pub products_file: Option<PathBuf>,

    /// Memory for the block cache, in MiB.
    #[arg(long, default_value_t = 256, value_name = "MIB",
          value_parser = clap::value_parser!(u64).range(16..=1_048_576))]
    pub cache_size: u64,

    /// Keep product blocks on disk in DIR, across mounts (off by default; a good place is
    /// $XDG_CACHE_HOME/eodata-mount, i.e. ~/.cache/eodata-mount). A product read whole once
    /// reads again without a download, even offline. Several mounts may share one DIR.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Most disk --cache-dir may use, in GiB (fractions allowed). Default: as much as leaves
    /// 5% of its filesystem free.
    #[arg(long, value_name = "GIB", requires = "cache_dir")]
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
    #[arg(long, default_value_t = 1000, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_results: u64,

    /// Seconds a query's listing is kept; the next ls after that fetches it again.
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    pub listing_ttl: u64,
}

/// Options of `download`.
#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// Products: Names (with or without .SAFE) or UUIDs.
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
}
