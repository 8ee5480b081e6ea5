//! `eodata-mount download`: the tutorial's whole job, in one command that resumes and checks.
//!
//! Products are fetched in parallel, as many at once as `--max-connections`. Each product is
//! fetched with parallel ranged requests (or, from a server that ignores Range,
//! one stream from the end of the `.part`) through the same zipper client the
//! mount uses (token renewal, retries, resume of cut bodies, back-off on 429), into
//! `<file>.part`, then renamed. Chunks are fetched in parallel but written in order, so the
//! `.part` file is always a correct prefix of the product: after Ctrl-C or SIGKILL the next run
//! continues from its length. The catalogue's MD5, when it has one, is checked before the rename:
//! nothing ever appears under the final name unless it is complete and verified.
//!
//! Two downloads of the same product at once (overlapping cron runs) must not both append to
//! one `.part`: each `.part` is held under an exclusive `flock(2)` from before the first byte
//! until after the rename. The second download waits for the lock (saying so), then finds the
//! complete file and skips it.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use futures::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use md5::{Digest, Md5};

use crate::cli::{CommonArgs, DownloadArgs};
use crate::stack::{self, Client};
use eodata_fetch::{FetchError, RangeSource, RangeSupport};

/// Bytes per ranged request. 8 MiB amortises a request's round trip (even at 30 ms latency and
/// 20 MB/s the overhead is under 10%) while `max_connections` of them in memory stay small.
const CHUNK: u64 = 8 << 20;

pub async fn run(common: &CommonArgs, args: &DownloadArgs) -> anyhow::Result<ExitCode> {
    let mut names = args.products.clone();
    if let Some(file) = &args.from_file {
        names.extend(crate::resolver::names_file(file)?);
    }
    if args.criteria.any() {
        // The same search as `eodata-mount search` with these criteria.
        match crate::search::find(common, &args.criteria).await? {
            Ok(found) if found.is_empty() => bail!("no product matches the search"),
            Ok(found) => names.extend(found.into_iter().map(|p| p.name)),
            Err(e) => bail!("{e}"),
        }
    }
    if names.is_empty() {
        bail!("no product given; usage: eodata-mount download <NAME|UUID>... [-o DIR], or search criteria such as --collection, --from, --to (see --help)");
    }
    let target = Target::new(args.output.as_deref(), names.len())?;
    let settings = stack::settings(common)?;
    let tokens = stack::token_manager(common, &settings)?;
    let catalogue = stack::catalogue(common, &settings)?;
    let zipper = stack::zipper(common, &settings, tokens)?;
    let progress = Progress::new(args.quiet);
    // As many products at once as connections: a server that ignores Range gives each product
    // one stream, so fewer products would leave connections unused. Where ranges work, the
    // connections are shared out so that no more than --max-connections chunks are in flight
    // (and in memory) at once.
    let connections = zipper_parallelism(&zipper);
    let parallel_products = connections.min(names.len()).max(1);
    let window = (connections / parallel_products).max(1);

    let results: Vec<(String, anyhow::Result<Outcome>)> = futures::stream::iter(names)
        .map(|name| {
            let (catalogue, zipper, target, progress) =
                (catalogue.clone(), zipper.clone(), &target, &progress);
            async move {
                let r = one(
                    &name, &catalogue, &zipper, target, args.force, window, progress,
                )
                .await;
                (name, r)
            }
        })
        .buffer_unordered(parallel_products)
        .collect()
        .await;

    let failed: Vec<_> = results.iter().filter(|(_, r)| r.is_err()).collect();
    for (name, r) in &results {
        match r {
            Ok(Outcome::Downloaded(path)) => progress.line(format!("saved {}", path.display())),
            Ok(Outcome::Skipped(path)) => progress.line(format!(
                "{} is already complete; skipped (use --force to download again)",
                path.display()
            )),
            Err(e) => eprintln!("eodata-mount: {name}: {e:#}"),
        }
    }
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "eodata-mount: {} of {} products failed: {}",
            failed.len(),
            results.len(),
            failed
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(ExitCode::FAILURE)
    }
}

enum Outcome {
    Downloaded(PathBuf),
    Skipped(PathBuf),
}

/// Where files go: a directory, or one file name for a single product.
enum Target {
    Dir(PathBuf),
    File(PathBuf),
}

impl Target {
    /// The `-o` rule: an existing directory, a path ending in `/` or one not ending in `.zip`
    /// is a directory (created when missing); a `.zip` path is one file, so one product.
    fn new(output: Option<&Path>, count: usize) -> anyhow::Result<Target> {
        let Some(out) = output else {
            return Ok(Target::Dir(PathBuf::from(".")));
        };
        let text = out.as_os_str().to_string_lossy();
        let is_zip = !text.ends_with('/')
            && out
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("zip"));
        if out.is_dir() || !is_zip {
            std::fs::create_dir_all(out)
                .with_context(|| format!("cannot create directory {}", out.display()))?;
            return Ok(Target::Dir(out.to_path_buf()));
        }
        if count > 1 {
            bail!(
                "-o {} names one file, but {count} products were given; give a directory instead (e.g. -o {}/)",
                out.display(),
                text.trim_end_matches(".zip").trim_end_matches(".ZIP")
            );
        }
        Ok(Target::File(out.to_path_buf()))
    }

    fn path_for(&self, file_name: &str) -> PathBuf {
        match self {
            Target::Dir(d) => d.join(file_name),
            Target::File(f) => f.clone(),
        }
    }
}

async fn one(
    name: &str,
    catalogue: &eodata_catalogue::Catalogue,
    zipper: &Arc<Client>,
    target: &Target,
    force: bool,
    window: usize,
    progress: &Progress,
) -> anyhow::Result<Outcome> {
    let product = catalogue.resolve(name).await?;
    // Named from the catalogue, before asking the download service anything: where the server
    // ignores Range, asking it about a product starts sending the whole product, which a
    // download that finds the file already complete (under the lock below) must not cost.
    let file_name = format!("{}.zip", file_stem(&product.name, &product.id));
    let dest = target.path_for(&file_name);
    let md5 = product.md5.as_deref().map(str::to_ascii_lowercase);
    let part = PathBuf::from(format!("{}.part", dest.display()));
    let wanted = Wanted {
        id: &product.id,
        file_name: &file_name,
        dest: &dest,
        part: &part,
        md5: md5.as_deref(),
    };
    let Some(mut file) = claim(&wanted, zipper, force, progress).await? else {
        return Ok(Outcome::Skipped(dest));
    };
    let info = zipper.info(&product.id).await?;
    let (resumed_from, mut hasher) = resume_point(&mut file, &part, info.size)?;
    let bar = progress.bar(&file_name, info.size, resumed_from);
    let start = Instant::now();
    let mut sink = Sink {
        file: &mut file,
        hasher: &mut hasher,
        bar: &bar,
    };
    let have = fetch_rest(zipper, &info, &wanted, window, resumed_from, &mut sink).await?;
    file.sync_all()?;
    bar.finish_and_clear();
    keep(&wanted, have, info.size, hasher)?;
    // The lock goes only now: a download waiting on it then sees the .part gone and the
    // complete file in its place.
    drop(file);
    let secs = start.elapsed().as_secs_f64().max(1e-3);
    progress.line(format!(
        "{}: {:.1} MB in {:.1} s ({:.1} MB/s){}",
        file_name,
        (info.size - resumed_from) as f64 / 1e6,
        secs,
        (info.size - resumed_from) as f64 / secs / 1e6,
        if resumed_from > 0 {
            format!(", resumed at byte {resumed_from}")
        } else {
            String::new()
        }
    ));
    Ok(Outcome::Downloaded(dest))
}

/// One product's download: where it goes and what it must hash to.
struct Wanted<'a> {
    id: &'a str,
    file_name: &'a str,
    dest: &'a Path,
    part: &'a Path,
    /// The catalogue's MD5, lower case.
    md5: Option<&'a str>,
}

/// The `.part`, locked for the whole download and the rename (one writer per product), or
/// `None` when a complete file is already there (decided under the lock; by the catalogue's
/// MD5 with no request when it has one). A different file in the way is an error unless
/// `force`.
async fn claim(
    w: &Wanted<'_>,
    zipper: &Arc<Client>,
    force: bool,
    progress: &Progress,
) -> anyhow::Result<Option<std::fs::File>> {
    loop {
        let Some(file) = lock_part(w.part, w.file_name, progress).await? else {
            // The .part waited on was renamed (the other download finished) or removed.
            continue;
        };
        if !w.dest.exists() || force {
            return Ok(Some(file));
        }
        if file.metadata()?.len() == 0 {
            // Made by us just now; nobody else can be writing it while we hold the lock.
            let _ = std::fs::remove_file(w.part);
        }
        drop(file);
        let len = std::fs::metadata(w.dest)?.len();
        let same = match w.md5 {
            Some(want) => file_md5(w.dest)? == want,
            None => len == zipper.info(w.id).await?.size,
        };
        if same {
            return Ok(None);
        }
        bail!(
            "{} exists and is not this product's complete download; use --force to replace it",
            w.dest.display()
        );
    }
}

/// Where the `.part` resumes (its length, or 0 when it is longer than the product: another
/// version or garbage), and the MD5 of what it already holds (the MD5 covers the whole file).
fn resume_point(file: &mut std::fs::File, part: &Path, size: u64) -> anyhow::Result<(u64, Md5)> {
    let mut have = file.metadata()?.len();
    if have > size {
        file.set_len(0)?;
        have = 0;
    }
    let mut hasher = Md5::new();
    if have > 0 {
        hash_prefix(part, have, &mut hasher)?;
    }
    Ok((have, hasher))
}

/// Where the bytes go: the locked `.part`, its running MD5, the progress bar.
struct Sink<'a> {
    file: &'a mut std::fs::File,
    hasher: &'a mut Md5,
    bar: &'a ProgressBar,
}

/// Appends the product from `have` on: parallel ranged requests where the server honours
/// Range, else (or once it turns out to ignore it) one stream from the end of the `.part`.
/// Returns the `.part`'s length.
async fn fetch_rest(
    zipper: &Arc<Client>,
    info: &eodata_fetch::ObjectInfo,
    w: &Wanted<'_>,
    window: usize,
    mut have: u64,
    sink: &mut Sink<'_>,
) -> anyhow::Result<u64> {
    let mut ranged = info.ranges == RangeSupport::Honoured;
    if ranged {
        let chunks = (have..info.size)
            .step_by(CHUNK as usize)
            .map(|a| a..(a + CHUNK).min(info.size));
        let mut stream = futures::stream::iter(chunks)
            .map(|r| async move { zipper.get_range(w.id, r).await })
            .buffered(window);
        while let Some(chunk) = stream.next().await {
            let bytes = match chunk {
                Err(FetchError::RangeIgnored(_)) => {
                    ranged = false;
                    break;
                }
                chunk => chunk?,
            };
            append(sink.file, w.part, sink.hasher, &bytes)?;
            have += bytes.len() as u64;
            sink.bar.set_position(have);
        }
    }
    if !ranged && have < info.size {
        // From the end of the .part: on the wire from byte 0, what is had is skipped.
        tracing::info!(id = %w.id, from = have, "the server ignores Range: one stream");
        let mut stream = zipper.stream_from(w.id, have).await?;
        while let Some(bytes) = stream.next_chunk().await? {
            append(sink.file, w.part, sink.hasher, &bytes)?;
            have += bytes.len() as u64;
            sink.bar.set_position(have);
        }
    }
    Ok(have)
}

/// The `.part` becomes the product's file only when it is whole and, where the catalogue gives
/// an MD5, hashes to it; a wrong one is removed. Nothing under the final name is ever wrong.
fn keep(w: &Wanted<'_>, have: u64, size: u64, hasher: Md5) -> anyhow::Result<()> {
    if have != size {
        bail!("download ended at {have} of {size} bytes; run the command again to resume");
    }
    let got = format!("{:x}", hasher.finalize());
    if let Some(want) = w.md5 {
        if got != want {
            let _ = std::fs::remove_file(w.part);
            bail!(
                "MD5 mismatch: the catalogue says {want}, the download has {got}; nothing was kept, run the command again"
            );
        }
    }
    std::fs::rename(w.part, w.dest)
        .with_context(|| format!("cannot rename {} to {}", w.part.display(), w.dest.display()))
}

/// How often a download waiting for another one's lock on a `.part` tries again, in
/// milliseconds: often enough that the wait ends soon after the other finishes, rarely enough to
/// cost nothing.
const LOCK_POLL_MS: u64 = 250;

/// How long, in seconds, a waiting download lets the `.part` it waits on stay the same size
/// before it gives up. The holder writes as bytes arrive, so stillness means it is stuck; but a
/// holder resuming from a server that ignores Range re-reads the whole prefix from byte 0
/// without writing (10 GiB at 20 MB/s is about 9 minutes), hence half an hour.
const LOCK_STALL_SECS: u64 = 30 * 60;

/// Opens `part` (never through a symlink) and takes an exclusive `flock(2)` on it, waiting
/// while another process holds it (a second `download` of the same product: overlapping cron
/// runs, xargs). The kernel drops the lock when its holder exits, however it exits.
///
/// Returns `None` when the file locked is no longer the one named `part` (the holder renamed
/// it to its final name, or removed it after a failed check): the caller looks again.
async fn lock_part(
    part: &Path,
    file_name: &str,
    progress: &Progress,
) -> anyhow::Result<Option<std::fs::File>> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o644)
        .open(part)
        .with_context(|| format!("cannot write {}", part.display()))?;
    let mut waiting = false;
    let mut seen_len = 0;
    let mut still_since = Instant::now();
    loop {
        // SAFETY: flock(2) on a descriptor we own, kept open by `file` for the whole call.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(err).with_context(|| format!("cannot lock {}", part.display()));
        }
        if !waiting {
            waiting = true;
            tracing::info!(part = %part.display(), "waiting for another download of this product");
            progress.line(format!(
                "{file_name}: another download of this product is running ({} is locked); waiting for it to finish",
                part.display()
            ));
        }
        let len = file.metadata()?.len();
        if len != seen_len {
            seen_len = len;
            still_since = Instant::now();
        } else if still_since.elapsed().as_secs() >= LOCK_STALL_SECS {
            bail!(
                "another process has held {} for {} minutes without writing to it; if it is stuck, stop it (fuser -v {}) and run the command again",
                part.display(),
                LOCK_STALL_SECS / 60,
                part.display()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(LOCK_POLL_MS)).await;
    }
    if waiting {
        tracing::info!(part = %part.display(), "the other download let go of the lock");
    }
    let ours = file.metadata()?;
    match std::fs::symlink_metadata(part) {
        Ok(m) if m.dev() == ours.dev() && m.ino() == ours.ino() => Ok(Some(file)),
        _ => Ok(None),
    }
}

/// Appends bytes to the .part file and the running MD5.
fn append(
    file: &mut std::fs::File,
    part: &Path,
    hasher: &mut Md5,
    bytes: &[u8],
) -> anyhow::Result<()> {
    file.write_all(bytes)
        .with_context(|| format!("cannot write {}", part.display()))?;
    hasher.update(bytes);
    Ok(())
}

fn zipper_parallelism(zipper: &Client) -> usize {
    zipper.config().max_connections.max(1)
}

/// Longest file stem taken from a catalogue Name, in bytes: file names may have 255 bytes, and
/// `.zip.part` must still fit.
const MAX_STEM: usize = 240;

/// The catalogue's Name as a file stem that stays inside the output directory: separators,
/// NUL and control characters become `_`, leading dots too (no `..`, no hidden file), and it
/// is cut to [`MAX_STEM`] bytes. A Name with nothing left falls back to the product's UUID.
fn file_stem(name: &str, id: &str) -> String {
    let mut stem: String = name
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    let dots = stem.len() - stem.trim_start_matches('.').len();
    stem.replace_range(..dots, &"_".repeat(dots));
    while stem.len() > MAX_STEM {
        stem.pop();
    }
    if stem.trim_matches('_').is_empty() {
        let id = file_stem_of_id(id);
        return if id.is_empty() { "product".into() } else { id };
    }
    stem
}

/// The UUID as a file stem (it is the server's, so it is cleaned too).
fn file_stem_of_id(id: &str) -> String {
    id.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(64)
        .collect()
}

fn hash_prefix(path: &Path, len: u64, hasher: &mut Md5) -> anyhow::Result<()> {
    let mut f = std::fs::File::open(path)?.take(len);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
    }
}

fn file_md5(path: &Path) -> anyhow::Result<String> {
    let mut h = Md5::new();
    hash_prefix(path, u64::MAX, &mut h)?;
    Ok(format!("{:x}", h.finalize()))
}

/// "12.3 MB/s eta 1m05s" for `done` bytes in `secs` with `left` to go; "-" before any byte.
fn rate_text(done: u64, left: u64, secs: f64) -> String {
    if done == 0 || secs <= 0.0 {
        return "- MB/s".to_string();
    }
    let rate = done as f64 / secs;
    let eta = (left as f64 / rate).round() as u64;
    let eta = match eta {
        0..=59 => format!("{eta}s"),
        60..=3599 => format!("{}m{:02}s", eta / 60, eta % 60),
        _ => format!("{}h{:02}m", eta / 3600, eta % 3600 / 60),
    };
    format!("{:.1} MB/s eta {eta}", rate / 1e6)
}

/// Progress bars on a terminal; plain lines otherwise; nothing with `-q`.
struct Progress {
    quiet: bool,
    multi: Option<MultiProgress>,
}

impl Progress {
    fn new(quiet: bool) -> Self {
        let multi = (!quiet && std::io::stderr().is_terminal())
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Progress { quiet, multi }
    }

    fn bar(&self, name: &str, size: u64, at: u64) -> ProgressBar {
        let Some(multi) = &self.multi else {
            return ProgressBar::hidden();
        };
        let bar = multi.add(ProgressBar::new(size));
        // The rate is this run's bytes over this run's time, shown from the first bytes on, in
        // the same units (MB, MB/s) as the summary line; indicatif's own estimate starts at
        // "0 B/s" and lags by several chunks.
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:40!} {bar:30} {decimal_bytes}/{decimal_total_bytes} {rate}",
            )
            .expect("static template")
            .with_key(
                "rate",
                move |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = w.write_str(&rate_text(
                        s.pos().saturating_sub(at),
                        s.len().unwrap_or(0).saturating_sub(s.pos()),
                        s.elapsed().as_secs_f64(),
                    ));
                },
            ),
        );
        bar.set_message(name.to_string());
        bar.set_position(at);
        bar
    }

    fn line(&self, text: String) {
        if self.quiet {
            return;
        }
        match &self.multi {
            Some(m) => {
                let _ = m.println(text);
            }
            None => eprintln!("{text}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_names_become_plain_file_names() {
        assert_eq!(file_stem("../../x", "id"), "___.._x");
        assert_eq!(file_stem("/etc/passwd", "id"), "_etc_passwd");
        assert_eq!(file_stem("a\0b/c", "id"), "a_b_c");
        assert_eq!(file_stem("..", "abc-1"), "abc-1");
        assert_eq!(file_stem("", "../x"), "x");
        assert_eq!(file_stem("S2A_MSIL1C.SAFE", "id"), "S2A_MSIL1C.SAFE");
        assert!(file_stem(&"é".repeat(300), "id").len() <= MAX_STEM);
    }

    #[test]
    fn the_rate_is_true_from_the_first_bytes_in_mb() {
        assert_eq!(rate_text(0, 100, 1.0), "- MB/s");
        // 1 MB in the first half second: 2 MB/s at once, not "0 B/s".
        assert_eq!(rate_text(1_000_000, 9_000_000, 0.5), "2.0 MB/s eta 5s");
        assert_eq!(
            rate_text(20_000_000, 1_200_000_000, 1.0),
            "20.0 MB/s eta 1m00s"
        );
        assert_eq!(
            rate_text(1_000_000, 7_200_000_000, 1.0),
            "1.0 MB/s eta 2h00m"
        );
    }

    #[test]
    fn output_rule_directory_or_one_zip() {
        let tmp = tempfile::tempdir().unwrap();
        let p = |s: &str| tmp.path().join(s);
        assert!(matches!(
            Target::new(Some(&p("newdir")), 1).unwrap(),
            Target::Dir(_)
        ));
        assert!(p("newdir").is_dir());
        let slash = PathBuf::from(format!("{}/", p("d.zip").display()));
        assert!(matches!(
            Target::new(Some(&slash), 1).unwrap(),
            Target::Dir(_)
        ));
        assert!(matches!(
            Target::new(Some(&p("one.zip")), 1).unwrap(),
            Target::File(_)
        ));
        assert!(!p("one.zip").exists());
        let err = Target::new(Some(&p("x.zip")), 2).err().unwrap().to_string();
        assert!(err.contains("names one file"), "{err}");
        assert!(!p("x.zip").exists());
    }
}
