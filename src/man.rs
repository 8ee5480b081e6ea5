//! The man page: clap's sections (name, synopsis, description, options, subcommands, version)
//! from the command line's own definition, so they never drift from `--help`, and the sections
//! a user looks for that clap cannot know: EXAMPLES, FILES, ENVIRONMENT, EXIT STATUS, SEE ALSO.
//! SEE ALSO names only pages the packages this program needs install (fuse3, gdal-bin,
//! rsync, unzip).

use std::io::Write;

/// The hand-written sections, in roff: `.SH` headings, `.TP` for tagged paragraphs, `.nf`/`.fi`
/// around commands shown as typed.
const EXTRA: &str = r#".SH EXAMPLES
.nf
eodata-mount /mnt/eodata
ls /mnt/eodata/Sentinel-2/MSI/L1C/2018/09/27/
cp /mnt/eodata/S2A_MSIL1C_20180927T051221_N0206_R033_T42FXL_20180927T073143.SAFE.zip .
gdalinfo /vsizip//mnt/eodata/<Name>.zip/<Name>/GRANULE/.../IMG_DATA/<band>.jp2
ls /mnt/eodata/<Name>/GRANULE/          # the product's own files, one by one
eodata-mount search \-\-collection SENTINEL\-2 \-\-from 2018\-09\-27 \-\-to 2018\-09\-28 \\
  | eodata-mount download \-\-from\-file \- \-o products/
curl "$URL?token=$(eodata-mount token)"
eodata-mount doctor
eodata-mount unmount /mnt/eodata
.fi
.SH FILES
.TP
\fI./secrets.conf\fR, then \fI$XDG_CONFIG_HOME/eodata-mount/secrets.conf\fR (else \fI~/.config/eodata-mount/secrets.conf\fR)
The login ([login] user, password, totp_secret) and, optionally, [endpoints]; searched in this
order, unless named by \-\-config or EODATA_CONFIG. Keep it mode 0600.
.TP
\fI$XDG_RUNTIME_DIR/eodata-mount/\fR (root: \fI/run/eodata-mount/\fR)
The token cache shared by every process of the user: one login for all of them.
.TP
\fI$XDG_CACHE_HOME/eodata-mount/\fR (else \fI~/.cache/eodata-mount/\fR)
The disk cache of product bytes (\-\-cache\-dir, \-\-no\-cache\-dir); see \fBeodata-mount cache list\fR.
A product held whole is one file there, which the kernel reads directly when the mount runs as
root on Linux 6.9 or later (FUSE passthrough; off with \-\-no\-passthrough).
.TP
\fI$XDG_STATE_HOME/eodata-mount/<mountpoint>.log\fR (else \fI~/.local/state/eodata-mount/\fR)
The log of a mount running in the background without \-\-log\-file.
.TP
\fIMOUNTPOINT/.eodata-status\fR
The mount's state, one key: value a line (not listed by ls).
.SH ENVIRONMENT
.TP
\fBEODATA_CONFIG\fR
The secrets file, as \-\-config.
.TP
\fBEODATA_USER\fR, \fBEODATA_PASSWORD\fR, \fBEODATA_TOTP_SECRET\fR
The login, instead of [login] in the secrets file.
.TP
\fBEODATA_TOKEN_URL\fR, \fBEODATA_CLIENT_ID\fR, \fBEODATA_CLIENT_SECRET\fR, \fBEODATA_DOWNLOAD_URL\fR, \fBEODATA_CATALOGUE_URL\fR, \fBEODATA_PROVIDER\fR
The services, as the flags of the same names (the client secret has no flag: \fBps\fR shows flags).
.TP
\fBEODATA_COORDINATOR\fR, \fBEODATA_COORDINATOR_INSECURE\fR
The Redis that several machines of one account share, as \-\-coordinator.
.TP
\fBXDG_RUNTIME_DIR\fR, \fBXDG_CACHE_HOME\fR, \fBXDG_STATE_HOME\fR, \fBXDG_CONFIG_HOME\fR
Where the files above go.
.TP
\fBRUST_LOG\fR
Log filter, overriding \-v (no setting makes a secret appear in a log line).
.SH EXIT STATUS
.TP
\fB0\fR
Done: mounted (in the background: the mount is live), downloaded, or, for \fBdoctor\fR, a mount
would work.
.TP
\fB1\fR
Failed, with one line on standard error saying why and what to do; nothing is left mounted.
.TP
\fB2\fR
The command line is wrong (an unknown flag, a missing value).
.SH SEE ALSO
\fBfusermount3\fR(1), \fBmount.fuse3\fR(8), \fBfstab\fR(5), \fBgdalinfo\fR(1), \fBrsync\fR(1),
\fBunzip\fR(1)
"#;

/// Writes the whole page.
pub fn render(w: &mut dyn Write) -> std::io::Result<()> {
    let man = clap_mangen::Man::new(<crate::cli::Cli as clap::CommandFactory>::command());
    man.render_title(w)?;
    man.render_name_section(w)?;
    man.render_synopsis_section(w)?;
    man.render_description_section(w)?;
    man.render_options_section(w)?;
    man.render_subcommands_section(w)?;
    w.write_all(EXTRA.as_bytes())?;
    man.render_version_section(w)
}
