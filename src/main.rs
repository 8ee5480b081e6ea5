//! eodata-mount: Copernicus EODATA products from CREODIAS as local files.
//!
//! This file only dispatches commands; each lives in its own module:
//! - the mount (default command): [`mount`] over [`fs`] and the [`fuse`] adapter;
//! - `token`: print a valid access token;
//! - `download`: [`download`], the tutorial's job in one command;
//! - `unmount MOUNTPOINT`: [`mount::unmount_command`], as root or as the mount's user;
//! - `search`: [`search`], the catalogue searched with friendly criteria, a Name a line;
//! - `doctor`: [`doctor`], what works and what does not, read-only, pasteable in a bug report;
//! - `completions SHELL` and `man`: generated from the clap definitions in [`cli`];
//! - `cache list|clear`: [`cache_cmd`], the disk cache seen and emptied;
//! - the mount helper's form (`eodata-mount SOURCE MOUNTPOINT -o ...`): rewritten by [`mount_helper`].
//!
//! The stack each command needs (settings, token manager, catalogue, zipper client) is built in
//! [`stack`].

mod cache_cmd;
mod cache_dir;
mod cli;
mod doctor;
mod download;
mod fs;
mod fuse;
mod logging;
mod man;
mod mount;
mod mount_helper;
mod mountpoint;
mod resolver;
mod search;
mod stack;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

fn main() -> ExitCode {
    // `mount -t fuse.eodata-mount` calls us as `eodata-mount SOURCE MOUNTPOINT -o OPTS`.
    let cli = match Cli::try_parse_from(mount_helper::rewrite(std::env::args_os().collect())) {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let destination = log_destination(&cli);
    let to_file = destination != logging::Destination::Stderr;
    if let Err(e) = logging::init(cli.common.verbose, destination) {
        eprintln!("eodata-mount: {e:#}");
        return ExitCode::from(2);
    }
    let result = match &cli.command {
        Some(Command::Token) => stack::runtime().and_then(|rt| rt.block_on(token(&cli))),
        Some(Command::Download(args)) => {
            stack::runtime().and_then(|rt| rt.block_on(download::run(&cli.common, args)))
        }
        Some(Command::Unmount { mountpoint }) => mount::unmount_command(mountpoint),
        Some(Command::Doctor(args)) => {
            stack::runtime().and_then(|rt| rt.block_on(doctor::run(&cli.common, args)))
        }
        Some(Command::Search(args)) => {
            stack::runtime().and_then(|rt| rt.block_on(search::run(&cli.common, args)))
        }
        Some(Command::Completions { shell }) => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "eodata-mount", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Cache(args)) => cache_cmd::run(args),
        Some(Command::Man) => {
            match man::render(&mut std::io::stdout()) {
                // `eodata-mount man | head` is not an error.
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
                _ => Ok(ExitCode::SUCCESS),
            }
        }
        None => mount::run(&cli),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // One line: the chain of causes joined, as every error says what to do. A log
            // kept elsewhere gets it too, so it says why the mount ended.
            if to_file {
                tracing::error!("{e:#}");
            }
            eprintln!("eodata-mount: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--log-file`, `--syslog`, or for the mount's background process (it has no terminal) its
/// own file under `$XDG_STATE_HOME/eodata-mount/`; standard error otherwise.
fn log_destination(cli: &Cli) -> logging::Destination {
    if let Some(path) = &cli.common.log_file {
        return logging::Destination::File(path.clone());
    }
    if cli.common.syslog {
        return logging::Destination::Syslog;
    }
    if cli.command.is_none() && mount::is_background_child() {
        if let Some(path) = cli
            .mount
            .mountpoint
            .as_deref()
            .and_then(logging::default_log_file)
        {
            return logging::Destination::File(path);
        }
    }
    logging::Destination::Stderr
}

/// clap's errors in one line (its own format spans three); help and version as clap prints them.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    let text = e.render().to_string();
    let first = text.lines().next().unwrap_or("invalid arguments");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    // clap's "did you mean" is its tip line: kept, on the same line.
    match text
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("tip: "))
    {
        Some(tip) => eprintln!("eodata-mount: {first}; {tip} (see eodata-mount --help)"),
        None => eprintln!("eodata-mount: {first} (see eodata-mount --help)"),
    }
    ExitCode::from(2)
}

/// `eodata-mount token`: one valid access token and a newline on stdout, nothing else.
async fn token(cli: &Cli) -> anyhow::Result<ExitCode> {
    let settings = stack::settings(&cli.common)?;
    let tokens = stack::token_manager(&cli.common, &settings)?;
    use eodata_auth::TokenSource;
    let token = tokens.token().await?;
    println!("{}", token.value.expose());
    Ok(ExitCode::SUCCESS)
}
