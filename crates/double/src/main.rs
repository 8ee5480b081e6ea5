//! `fake-creodias`: the double as a process, for scripts, benchmarks and peers (rclone,
//! httpdirfs) that need a server outside the test process.
//!
//! `serve` prints exactly one line first, `listening on http://127.0.0.1:PORT`, flushed, so a
//! script can start it with `--port 0` and read the port; then it serves until SIGTERM or SIGINT.
//! `generate` writes a product store (see the library's `generate` module).

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use fake_creodias::{Config, Double, Faults, User};

#[derive(Parser)]
#[command(
    name = "fake-creodias",
    version,
    about = "A local double of CREODIAS: Keycloak, zipper and OData catalogue"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the token endpoint, zipper and catalogue on 127.0.0.1.
    Serve(Box<ServeArgs>),
    /// Write a directory of test products and its index.json.
    Generate(fake_creodias::generate::GenerateArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Port on 127.0.0.1 (0: any free port; the first line printed says which).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Product store: a directory with index.json and the zips.
    #[arg(long)]
    products: Option<PathBuf>,
    /// Username of an account (repeat --user/--password/--totp-secret for more accounts).
    #[arg(long)]
    user: Vec<String>,
    /// Password of the account.
    #[arg(long)]
    password: Vec<String>,
    /// Base32 TOTP secret of the account.
    #[arg(long)]
    totp_secret: Vec<String>,
    /// OpenID client id that logins must send (default: CLOUDFERRO_PUBLIC, with --cdse
    /// cdse-public).
    #[arg(long)]
    client_id: Option<String>,
    /// Play CDSE: realm CDSE, client cdse-public, OData downloads at 127.0.0.1 redirected to
    /// localhost (catalogue host -> download host).
    #[arg(long)]
    cdse: bool,
    /// Secret of a confidential client: token requests must send it as client_secret.
    #[arg(long)]
    client_secret: Option<String>,
    /// Access token lifetime in seconds (fractions allowed; default 300, with --cdse 600).
    #[arg(long)]
    access_lifetime: Option<f64>,
    /// Refresh token lifetime in seconds (fractions allowed; default 1800, with --cdse 3600).
    #[arg(long)]
    refresh_lifetime: Option<f64>,
    /// Maximum age of a session from its login, in seconds (default none, with --cdse 3600).
    #[arg(long)]
    session_max: Option<f64>,
    /// Active sessions per user (default none, with --cdse 100).
    #[arg(long)]
    max_sessions: Option<usize>,
    /// A login over --max-sessions drops the oldest session instead of being refused (403).
    #[arg(long)]
    drop_oldest_session: bool,
    /// Failed logins before an account locks (0: never).
    #[arg(long, default_value_t = 30)]
    lockout_after: u32,
    /// Delay added before every answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Bytes per second per download body.
    #[arg(long)]
    bandwidth: Option<u64>,
    /// Download bodies streaming at once per user; more get 429 DAT-ZIP-100.
    #[arg(long)]
    max_connections: Option<usize>,
    /// Fraction of zipper GETs answered 503.
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
    /// Fraction of zipper bodies cut half-way.
    #[arg(long, default_value_t = 0.0)]
    cut_rate: f64,
    /// Honour Range headers (206). By default they are ignored (200 and the whole body), as
    /// the real zipper does.
    #[arg(long, conflicts_with = "no_range")]
    range: bool,
    /// Ignore Range headers (the default; kept so older scripts still parse).
    #[arg(long)]
    no_range: bool,
    /// Serve members in another order every other GET (bytes not stable across requests).
    #[arg(long)]
    reorder_members: bool,
    /// No token needed; also serve /files/ (HTML index) for rclone/httpdirfs.
    #[arg(long)]
    no_auth: bool,
    /// Alter one byte of every download body.
    #[arg(long)]
    tamper: bool,
    /// Refuse every refresh_token grant.
    #[arg(long)]
    refuse_refresh: bool,
    /// Answer 429 (Retry-After: 1) to the first N zipper requests.
    #[arg(long, default_value_t = 0)]
    rate_limit_burst: u32,
    /// The token endpoint answers HTML instead of JSON.
    #[arg(long)]
    garbage_token: bool,
    /// The catalogue answers HTML instead of JSON.
    #[arg(long)]
    garbage_catalogue: bool,
    /// Zipper error bodies are HTML instead of JSON.
    #[arg(long)]
    garbage_zipper_errors: bool,
    /// Downloads on the OData form get a 301 to the same URL at localhost (another host name).
    #[arg(long)]
    redirect_downloads: bool,
    /// Also serve /_double/ control endpoints (faults, outage, revoke, log) for scripts.
    #[arg(long)]
    control: bool,
    /// Run the double's clock this many seconds ahead of the machine's (negative: behind).
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    clock_skew: i64,
    /// Seed of the fault RNG.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Append one JSON line per request to this file.
    #[arg(long)]
    log: Option<PathBuf>,
}

fn secs(s: f64, flag: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s)
        .with_context(|| format!("{flag} must be a non-negative number of seconds, got {s}"))
}

fn config(a: ServeArgs) -> anyhow::Result<Config> {
    anyhow::ensure!(
        a.user.len() == a.password.len() && a.user.len() == a.totp_secret.len(),
        "give --user, --password and --totp-secret once per account ({} users, {} passwords, {} secrets)",
        a.user.len(),
        a.password.len(),
        a.totp_secret.len()
    );
    for (flag, rate) in [("--fail-rate", a.fail_rate), ("--cut-rate", a.cut_rate)] {
        anyhow::ensure!(
            (0.0..=1.0).contains(&rate),
            "{flag} must be between 0 and 1, got {rate}"
        );
    }
    let users = a
        .user
        .iter()
        .zip(&a.password)
        .zip(&a.totp_secret)
        .map(|((u, p), s)| User::new(u, p, s))
        .collect();
    let base = if a.cdse {
        Config::default().cdse()
    } else {
        Config::default()
    };
    let lifetime = |given: Option<f64>, default: Duration, flag: &str| match given {
        Some(s) => secs(s, flag),
        None => Ok(default),
    };
    Ok(Config {
        users,
        mode: base.mode,
        client_id: a.client_id.unwrap_or(base.client_id),
        client_secret: a.client_secret,
        access_lifetime: lifetime(a.access_lifetime, base.access_lifetime, "--access-lifetime")?,
        refresh_lifetime: lifetime(
            a.refresh_lifetime,
            base.refresh_lifetime,
            "--refresh-lifetime",
        )?,
        session_max: match a.session_max {
            Some(s) => Some(secs(s, "--session-max")?),
            None => base.session_max,
        },
        max_sessions: a.max_sessions.or(base.max_sessions),
        session_limit: if a.drop_oldest_session {
            fake_creodias::SessionLimit::DropOldest
        } else {
            fake_creodias::SessionLimit::Deny
        },
        lockout_after: a.lockout_after,
        products_dir: a.products,
        faults: Faults {
            fail_rate: a.fail_rate,
            cut_rate: a.cut_rate,
            cut_next: 0,
            latency: Duration::from_millis(a.latency_ms),
            bandwidth_per_conn: a.bandwidth,
            max_connections_per_user: a.max_connections,
            range: a.range,
            reorder_members: a.reorder_members,
            no_auth: a.no_auth,
            tamper: a.tamper,
            refuse_refresh: a.refuse_refresh,
            rate_limit_burst: a.rate_limit_burst,
            garbage_token: a.garbage_token,
            garbage_catalogue: a.garbage_catalogue,
            garbage_zipper_errors: a.garbage_zipper_errors,
            redirect_downloads: a.redirect_downloads,
            ..Faults::default()
        },
        seed: a.seed,
        log_path: a.log,
        port: a.port,
    })
}

async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let (skew, control) = (a.clock_skew, a.control);
    let double = Double::start(config(a)?).await?;
    double.set_clock_skew(skew);
    if control {
        double.enable_control();
    }
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {}", double.base_url())?;
        out.flush()?;
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    double.stop();
    Ok(())
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve(a) => tokio::runtime::Runtime::new()?.block_on(serve(*a)),
        Command::Generate(a) => fake_creodias::generate::run(a),
    }
}
