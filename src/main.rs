//! eodata-mount: Copernicus EODATA products from CREODIAS as local files.
//!
//! This file only dispatches commands; each lives in its own module:
//! - the mount (default command): [`mount`] over [`fs`] and the [`fuse`] adapter;
//! - `token`: print a valid access token;
//! - `download`: [`download`], the tutorial's job in one command.
//! - `search`: [`search`], the catalogue searched with friendly criteria, a Name a line;
//! - `doctor`: [`doctor`], what works and what does not, read-only, pasteable in a bug report;
//! - `completions SHELL` and `man`: generated from the clap definitions in [`cli`];
//! - the mount helper's form (`eodata-mount SOURCE MOUNTPOINT -o ...`): rewritten by [`helper`].
//!
//! The stack each command needs (settings, token manager, catalogue, zipper client) is built in
//! [`stack`].

mod cache_dir;
mod cli;
mod doctor;
mod download;
mod fs;
mod fuse;
mod helper;
mod logging;
mod mount;
mod mountpoint;
mod search;
mod stack;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

fn main() -> ExitCode {
    // `mount -t fuse.eodata-mount` calls us as `eodata-mount SOURCE MOUNTPOINT -o OPTS`.
    let cli = match Cli::try_parse_from(helper::rewrite(std::env::args_os().collect())) {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    if let Err(e) = logging::init(cli.common.verbose, cli.common.log_file.as_deref()) {
        eprintln!("eodata-mount: {e:#}");
        return ExitCode::from(2);
    }
    let result = match &cli.command {
        Some(Command::Token) => stack::runtime().and_then(|rt| rt.block_on(token(&cli))),
        Some(Command::Download(args)) => {
            stack::runtime().and_then(|rt| rt.block_on(download::run(&cli.common, args)))
        }
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
        Some(Command::Man) => {
            match clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
                .render(&mut std::io::stdout())
            {
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
            // One line: the chain of causes joined, as every error says what to do.
            eprintln!("eodata-mount: {e:#}");
            ExitCode::FAILURE
        }
    }
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
    eprintln!("eodata-mount: {first} (see eodata-mount --help)");
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
