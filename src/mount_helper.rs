//! The command line as `mount` gives it: `/etc/fstab` entries and systemd mount units run us
//! through fuse3's mount helper (`mount.fuse3`), which calls
//! `eodata-mount SOURCE MOUNTPOINT -o OPT,OPT,...` (checked on Debian 12's fuse3 3.14: it drops
//! `_netdev`, `nofail`, `noauto`, `user` and `x-systemd.*`, and adds `rw`, `dev`, `suid` or
//! their opposites). This module rewrites that form into our own flags before clap sees it:
//!
//! - `SOURCE` (the fstab's first field, e.g. `eodata`) is dropped: the products come from the
//!   options, not from a device;
//! - every flag of ours fits in `-o` (an fstab line cannot hold two commands): `key=value`
//!   becomes `--key value` for a flag that takes a value (`config=FILE`, `product=ID`,
//!   `query="NAME=FILTER"`, `cache_size=`, ...; `_` for `-`; double quotes keep commas in a
//!   value), a bare `key` becomes `--key` for a switch (`listed_only`, `no_token_cache`, ...);
//!   the flags are read from the command line's own definition, so a new flag works at once;
//! - options `mount` itself uses (`_netdev`, `nofail`, `noauto`, `auto`, `user`, `users`,
//!   `nouser`, `defaults`, `x-*`, `comment=*`) and ones that make no sense on a read-only,
//!   device-less mount (`rw`, `dev`, `suid`, `exec`, `atime`, `async`) are dropped, in case a
//!   helper passes them on;
//! - everything else stays a FUSE option (`allow_other`, `default_permissions`, `noexec`, ...).
//!
//! Any other command line passes through unchanged, so the rewrite can run on every start
//! (the background mount re-runs us with the same arguments).

use std::ffi::OsString;

use clap::CommandFactory;

use crate::cli::Cli;

/// Options `mount` and systemd read themselves, or that a read-only FUSE mount ignores.
const IGNORED: [&str; 14] = [
    "_netdev", "nofail", "noauto", "auto", "user", "users", "nouser", "defaults", "rw", "dev",
    "suid", "exec", "atime", "async",
];

/// Our flags that are also FUSE options, so stay `-o` options (same effect either way).
const FUSE_ALSO: [&str; 1] = ["allow_other"];

/// How a `-o` key maps onto our flags: `key=value` onto a flag taking a value, a bare `key`
/// onto a switch. Taken from the command line's own definition, so every flag works in fstab.
enum Flag {
    Value(String),
    Switch(String),
}

fn flag_for(key: &str) -> Option<Flag> {
    if FUSE_ALSO.contains(&key) {
        return None;
    }
    let long = key.replace('_', "-");
    let cmd = Cli::command();
    let arg = cmd
        .get_arguments()
        .find(|a| a.get_long() == Some(long.as_str()))?;
    let flag = format!("--{long}");
    Some(if arg.get_action().takes_values() {
        Flag::Value(flag)
    } else {
        Flag::Switch(flag)
    })
}

/// Subcommand names: a first argument naming one is never a mount helper's SOURCE.
fn is_command(word: &str) -> bool {
    word == "help" || Cli::command().find_subcommand(word).is_some()
}

/// Splits `-o` text at commas outside double quotes, and drops the quotes: a filter such as
/// `query="contains(Name,'T42FXL')"` holds commas.
fn split_options(text: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    for c in text.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(String::new()),
            c => out.last_mut().expect("never empty").push(c),
        }
    }
    out
}

/// Rewrites `PROG SOURCE MOUNTPOINT -o OPTS` (or `-oOPTS`) into our flags; returns anything
/// else unchanged.
pub fn rewrite(args: Vec<OsString>) -> Vec<OsString> {
    let is_positional = |a: &OsString| !a.to_string_lossy().starts_with('-');
    let helper_form = args.len() >= 4
        && is_positional(&args[1])
        && is_positional(&args[2])
        && args[3].to_string_lossy().starts_with("-o")
        && !is_command(&args[1].to_string_lossy());
    if !helper_form {
        return args;
    }
    let mut out = vec![args[0].clone(), args[2].clone()];
    let mut rest = args[3..].iter();
    while let Some(arg) = rest.next() {
        let text = arg.to_string_lossy();
        let opts = if text == "-o" {
            let Some(opts) = rest.next() else { break };
            opts.to_string_lossy().into_owned()
        } else if let Some(attached) = text.strip_prefix("-o") {
            attached.to_string()
        } else {
            out.push(arg.clone());
            continue;
        };
        let mut kept = Vec::new();
        for opt in split_options(&opts) {
            let (key, value) = match opt.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (opt.as_str(), None),
            };
            if opt.is_empty()
                || IGNORED.contains(&opt.as_str())
                || key.starts_with("x-")
                || key == "comment"
            {
                continue;
            }
            match (flag_for(key), value) {
                (Some(Flag::Value(flag)), Some(v)) => {
                    out.push(OsString::from(flag));
                    out.push(OsString::from(v));
                }
                (Some(Flag::Switch(flag)), None) => out.push(OsString::from(flag)),
                _ => kept.push(opt.clone()),
            }
        }
        if !kept.is_empty() {
            out.push("-o".into());
            out.push(kept.join(",").into());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Vec<String> {
        rewrite(args.iter().map(OsString::from).collect())
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn the_mount_helper_form_becomes_our_flags() {
        assert_eq!(
            run(&[
                "eodata-mount",
                "eodata",
                "/mnt/eodata",
                "-o",
                "rw,nosuid,nodev,_netdev,x-systemd.automount,config=/etc/eodata/secrets.conf,\
                 allow_other,product=abc,cache_size=64,nofail,comment=x",
            ]),
            vec![
                "eodata-mount",
                "/mnt/eodata",
                "--config",
                "/etc/eodata/secrets.conf",
                "--product",
                "abc",
                "--cache-size",
                "64",
                "-o",
                "nosuid,nodev,allow_other",
            ]
        );
    }

    #[test]
    fn other_command_lines_pass_unchanged() {
        for args in [
            &["eodata-mount", "/mnt/x"][..],
            &["eodata-mount", "/mnt/x", "-o", "allow_other"],
            &["eodata-mount", "download", "a", "-o", "out"],
            &["eodata-mount", "--product", "a", "/mnt/x", "-o", "ro"],
        ] {
            assert_eq!(run(args), args.to_vec());
        }
    }

    #[test]
    fn every_flag_switches_queries_and_the_attached_form() {
        assert_eq!(
            run(&[
                "eodata-mount",
                "eodata",
                "/mnt/e",
                "-oconfig=/etc/s.conf,listed_only,max_results=5,read_timeout=30,\
                 query=\"t=contains(Name,'T42FXL')\",allow_other,no_token_cache",
            ]),
            vec![
                "eodata-mount",
                "/mnt/e",
                "--config",
                "/etc/s.conf",
                "--listed-only",
                "--max-results",
                "5",
                "--read-timeout",
                "30",
                "--query",
                "t=contains(Name,'T42FXL')",
                "--no-token-cache",
                "-o",
                "allow_other",
            ]
        );
        // A subcommand is never a SOURCE.
        let args = ["eodata-mount", "unmount", "/mnt/e", "-oro"];
        assert_eq!(run(&args), args.to_vec());
    }

    #[test]
    fn the_coordinator_and_the_account_cap_fit_in_o() {
        assert_eq!(
            run(&[
                "eodata-mount",
                "eodata",
                "/mnt/e",
                "-o",
                "coordinator=redis://127.0.0.1:6379/0,account_connections=2",
            ]),
            vec![
                "eodata-mount",
                "/mnt/e",
                "--coordinator",
                "redis://127.0.0.1:6379/0",
                "--account-connections",
                "2",
            ]
        );
    }
}
