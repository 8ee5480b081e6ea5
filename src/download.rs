//! `eodata-mount download`: the tutorial's whole job, in one command that resumes and checks.
//!
//! Each product is fetched with parallel ranged requests (or, from a server that ignores Range,
//! one stream from the end of the `.part`) through the same zipper client the
//! mount uses (token renewal, retries, resume of cut bodies, back-off on 429), into
//! `<file>.part`, then renamed. Chunks are fetched in parallel but written in order, so the
//! `.part` file is always a correct prefix of the product: after Ctrl-C or SIGKILL the next run
//! continues from its length. The catalogue's MD5, when it has one, is checked before the rename:
//! nothing ever appears under the final name unless it is complete and verified.

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

/// Products fetched at the same time; the connections below them are shared and capped anyway,
/// so two keep the pipe full without splitting the bandwidth over many half-done files.
const PARALLEL_PRODUCTS: usize = 2;

pub async fn run(common: &CommonArgs, args: &DownloadArgs) -> anyhow::Result<ExitCode> {
    let mut names = args.products.clone();
    if let Some(file) = &args.from_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        names.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from),
        );
    }
    if names.is_empty() {
        bail!("no product given; usage: eodata-mount download <NAME|UUID>... [-o DIR]");
    }
    let target = Target::new(args.output.as_deref(), names.len())?;
    let settings = stack::settings(common)?;
    let tokens = stack::token_manager(common, &settings)?;
    let catalogue = stack::catalogue(common, &settings)?;
    let zipper = stack::zipper(common, &settings, tokens)?;
    let progress = Progress::new(args.quiet);

    let results: Vec<(String, anyhow::Result<Outcome>)> = futures::stream::iter(names)
        .map(|name| {
            let (catalogue, zipper, target, progress) =
                (catalogue.clone(), zipper.clone(), &target, &progress);
            async move {
                let r = one(&name, &catalogue, &zipper, target, args.force, progress).await;
                (name, r)
            }
        })
        .buffer_unordered(PARALLEL_PRODUCTS)
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
    fn new(output: Option<&Path>, count: usize) -> anyhow::Result<Target> {
        let Some(out) = output else {
            return Ok(Target::Dir(PathBuf::from(".")));
        };
        if out.is_dir() {
            return Ok(Target::Dir(out.to_path_buf()));
        }
        if count > 1 || out.as_os_str().to_string_lossy().ends_with('/') {
            std::fs::create_dir_all(out)
                .with_context(|| format!("cannot create directory {}", out.display()))?;
            return Ok(Target::Dir(out.to_path_buf()));
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
    progress: &Progress,
) -> anyhow::Result<Outcome> {
    let product = catalogue.resolve(name).await?;
    let info = zipper.info(&product.id).await?;
    let file_name = info
        .filename
        .as_deref()
        .filter(|f| safe_file_name(f))
        .map(String::from)
        .unwrap_or_else(|| format!("{}.zip", product.name));
    let dest = target.path_for(&file_name);
    let md5 = product.md5.as_deref().map(str::to_ascii_lowercase);

    if dest.exists() && !force {
        let len = std::fs::metadata(&dest)?.len();
        let same = len == info.size
            && match &md5 {
                Some(want) => &file_md5(&dest)? == want,
                None => true,
            };
        if same {
            return Ok(Outcome::Skipped(dest));
        }
        bail!(
            "{} exists and is not this product's complete download; use --force to replace it",
            dest.display()
        );
    }

    let part = PathBuf::from(format!("{}.part", dest.display()));
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(&part)
        .with_context(|| format!("cannot write {}", part.display()))?;
    let mut have = file.metadata()?.len();
    if have > info.size {
        // Not a prefix of this product (another version, or garbage): start over.
        file.set_len(0)?;
        have = 0;
    }
    // The MD5 covers the whole file, so a resumed download first hashes what it already has.
    let mut hasher = Md5::new();
    if have > 0 {
        hash_prefix(&part, have, &mut hasher)?;
    }
    let bar = progress.bar(&file_name, info.size, have);
    let start = Instant::now();
    let resumed_from = have;

    // Servers that ignore Range (answer 200 to a ranged GET) get one stream instead.
    let mut ranged = info.ranges == RangeSupport::Honoured;
    if ranged {
        let chunks = (have..info.size)
            .step_by(CHUNK as usize)
            .map(|a| a..(a + CHUNK).min(info.size));
        let id = product.id.clone();
        let mut stream = futures::stream::iter(chunks)
            .map(|r| {
                let (zipper, id) = (zipper.clone(), id.clone());
                async move { zipper.get_range(&id, r).await }
            })
            .buffered(zipper_parallelism(zipper));
        while let Some(chunk) = stream.next().await {
            let bytes = match chunk {
                Err(FetchError::RangeIgnored(_)) => {
                    ranged = false;
                    break;
                }
                chunk => chunk?,
            };
            append(&mut file, &part, &mut hasher, &bytes)?;
            have += bytes.len() as u64;
            bar.set_position(have);
        }
    }
    if !ranged && have < info.size {
        // From the end of the .part: on the wire from byte 0, what is had is skipped.
        tracing::info!(id = %product.id, from = have, "the server ignores Range: one stream");
        let mut stream = zipper.stream_from(&product.id, have).await?;
        while let Some(bytes) = stream.next_chunk().await? {
            append(&mut file, &part, &mut hasher, &bytes)?;
            have += bytes.len() as u64;
            bar.set_position(have);
        }
    }
    file.sync_all()?;
    drop(file);
    bar.finish_and_clear();
    if have != info.size {
        bail!(
            "download ended at {have} of {} bytes; run the command again to resume",
            info.size
        );
    }
    let got = format!("{:x}", hasher.finalize());
    if let Some(want) = md5 {
        if got != want {
            let _ = std::fs::remove_file(&part);
            bail!(
                "MD5 mismatch: the catalogue says {want}, the download has {got}; nothing was kept, run the command again"
            );
        }
    }
    std::fs::rename(&part, &dest)
        .with_context(|| format!("cannot rename {} to {}", part.display(), dest.display()))?;
    let secs = start.elapsed().as_secs_f64().max(1e-3);
    progress.line(format!(
        "{}: {} MiB in {:.1} s ({:.1} MB/s){}",
        file_name,
        (info.size - resumed_from) >> 20,
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

/// A server-given file name is used only if it cannot leave the target directory.
fn safe_file_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && !name.contains('\\') && name != "." && name != ".."
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
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:40!} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("static template"),
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
