//! The command line as `mount` gives it: `/etc/fstab` entries and systemd mount units run us
//! through fuse3's mount helper (`mount.fuse3`), which calls
//! `eodata-mount SOURCE MOUNTPOINT -o OPT,OPT,...` (checked on Debian 12's fuse3 3.14: it drops
//! `_netdev`, `nofail`, `noauto`, `user` and `x-systemd.*`, and adds `rw`, `dev`, `suid` or
//! their opposites). This module rewrites that form into our own flags before clap sees it:
//!
//! - `SOURCE` (the fstab's first field, e.g. `eodata`) is dropped: the products come from the
//!   options, not from a device;
//! - `config=FILE`, `provider=`, `product=ID`, `products_file=`, `cache_size=`, `cache_dir=`,
//!   `max_connections=`, `log_file=` become `--config FILE`, `--provider` ...: an fstab line
//!   cannot hold two commands, so everything a mount needs must fit in `-o`;
//! - options `mount` itself uses (`_netdev`, `nofail`, `noauto`, `auto`, `user`, `users`,
//!   `nouser`, `defaults`, `x-*`, `comment=*`) and ones that make no sense on a read-only,
//!   device-less mount (`rw`, `dev`, `suid`, `exec`, `atime`, `async`) are dropped, in case a
//!   helper passes them on;
//! - everything else stays a FUSE option (`allow_other`, `default_permissions`, `noexec`, ...).
//!
//! Any other command line passes through unchanged, so the rewrite can run on every start
//! (the background mount re-runs us with the same arguments).

use std::ffi::OsString;

/// `-o` keys that are our flags, and the flag each becomes.
const FLAG_OPTIONS: [(&str, &str); 8] = [
    ("config", "--config"),
    ("provider", "--provider"),
    ("product", "--product"),
    ("products_file", "--products-file"),
    ("cache_size", "--cache-size"),
    ("cache_dir", "--cache-dir"),
    ("max_connections", "--max-connections"),
    ("log_file", "--log-file"),
];

/// Options `mount` and systemd read themselves, or that a read-only FUSE mount ignores.
const IGNORED: [&str; 14] = [
    "_netdev", "nofail", "noauto", "auto", "user", "users", "nouser", "defaults", "rw", "dev",
    "suid", "exec", "atime", "async",
];

/// Subcommands: a first argument naming one is never a mount helper's SOURCE.
const COMMANDS: [&str; 6] = ["token", "download", "unmount", "completions", "man", "help"];

/// Rewrites `PROG SOURCE MOUNTPOINT -o OPTS` into our flags; returns anything else unchanged.
pub fn rewrite(args: Vec<OsString>) -> Vec<OsString> {
    let is_positional = |a: &OsString| !a.to_string_lossy().starts_with('-');
    let helper_form = args.len() >= 4
        && is_positional(&args[1])
        && is_positional(&args[2])
        && args[3] == "-o"
        && !COMMANDS.contains(&args[1].to_string_lossy().as_ref());
    if !helper_form {
        return args;
    }
    let mut out = vec![args[0].clone(), args[2].clone()];
    let mut rest = args[3..].iter();
    while let Some(arg) = rest.next() {
        if arg == "-o" {
            let Some(opts) = rest.next() else { break };
            let mut kept = Vec::new();
            for opt in opts.to_string_lossy().split(',') {
                let (key, value) = match opt.split_once('=') {
                    Some((k, v)) => (k, Some(v)),
                    None => (opt, None),
                };
                if opt.is_empty()
                    || IGNORED.contains(&opt)
                    || key.starts_with("x-")
                    || key == "comment"
                {
                    continue;
                }
                match (FLAG_OPTIONS.iter().find(|(k, _)| *k == key), value) {
                    (Some((_, flag)), Some(v)) => {
                        out.push(OsString::from(*flag));
                        out.push(OsString::from(v));
                    }
                    _ => kept.push(opt.to_string()),
                }
            }
            if !kept.is_empty() {
                out.push("-o".into());
                out.push(kept.join(",").into());
            }
        } else {
            out.push(arg.clone());
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
}
