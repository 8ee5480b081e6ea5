//! Log output: `-v` levels, `RUST_LOG`, a log file for the background mount, and a hard cap on
//! the HTTP stack's own logging.
//!
//! Our code logs URLs only through `eodata_auth::redact_url` and secrets only as `***`. The HTTP
//! crates underneath do not know which query parameter is a token, and at debug/trace level they
//! print URLs and headers; so their level is capped at `warn` whatever the user asks for. This
//! is what lets us promise that no token appears in a log line at any verbosity.

use std::fs::OpenOptions;
use std::path::Path;

use anyhow::Context;
use tracing_subscriber::EnvFilter;

/// Crates that may print request URLs or headers (and so tokens) at debug or trace level.
const CAPPED_CRATES: &[&str] = &["hyper", "hyper_util", "reqwest", "h2", "rustls", "axum"];

/// Install the global subscriber. `verbose` counts `-v` flags.
pub fn init(verbose: u8, log_file: Option<&Path>) -> anyhow::Result<()> {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let mut filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new(level));
    for krate in CAPPED_CRATES {
        filter = filter.add_directive(format!("{krate}=warn").parse().expect("static directive"));
    }
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match log_file {
        Some(path) => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open log file {}", path.display()))?;
            builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .init();
        }
        None => builder.with_writer(std::io::stderr).init(),
    }
    Ok(())
}
