//! Test products for the double: Sentinel-2 L1C `.SAFE` zips and the catalogue that describes them.
//!
//! This module owns the bytes the double serves and the `index.json` that the double's catalogue
//! and zipper read (`{"products":[{OData fields..., "file": "<Id>.zip"}]}`: a contract with the
//! server, see [`IndexEntry`]). Products are real zips (readable by `unzip -t`, Python's
//! `zipfile`, GDAL's `/vsizip/`) with a SAFE-like tree, a real GeoTIFF made by `gdal_translate`,
//! and one big incompressible filler member that brings the zip to the size a test asks for
//! (or, with `bands`, several equal band files sharing that size: the shape of a real product's
//! `IMG_DATA`, for `cp -r` of the folder view).
//!
//! Why generate rather than ship fixtures: tests need products from a few MiB to several GiB, and
//! every byte must be checkable (a read served from the wrong offset must show). Everything is
//! deterministic from the options, so two runs give the same bytes and the same MD5s, and
//! [`ensure()`] lets many test binaries share one generated directory safely.
//!
//! Files: `names` (product names, ids and dates), `index` (the `index.json` contract and the
//! entry made for each product), `safe` (the SAFE zip layout and its bytes), `geotiff` (the band
//! made by GDAL), `ensure` (reuse of a generated directory, safe for concurrent callers), `rng`
//! (the deterministic PRNG); this file holds the options, [`generate`] and the CLI.

mod ensure;
mod geotiff;
mod index;
mod names;
mod rng;
mod safe;
#[cfg(test)]
mod testing;

pub use ensure::ensure;
pub use index::{read_index, Checksum, ContentDate, IndexEntry};
pub use names::specs;
pub use safe::{filler_members, layout, Layout};

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use ensure::{stamp_text, STAMP_FILE};
use index::{index_entry, md5_file, Index};
use rng::fnv1a;
use safe::write_product;

/// The tutorial's product name (the CREODIAS "download with TOTP" tutorial downloads it).
pub const TUTORIAL_NAME: &str = "S2A_MSIL1C_20180927T051221_N0206_R033_T42FXL_20180927T073143.SAFE";
/// The tutorial's product id (its `url_download` ends with it).
pub const TUTORIAL_ID: &str = "db0c8ef3-8ec0-5185-a537-812dad3c58f8";
/// The tutorial's product's sensing day, in days since 1970-01-01 (2018-09-27): the day
/// [`GenerateOptions::same_day`] crowds.
const TUTORIAL_DAY: i64 = 17_801;

/// Filler write size: large enough that per-call overhead vanishes, small enough to never hold a
/// product in memory.
const CHUNK: usize = 1 << 20;
/// Every tenth catalogue-only entry is offline, so listings show both states.
const OFFLINE_EVERY: usize = 10;

/// One product to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductSpec {
    pub id: String,
    pub name: String,
    /// Target zip size in bytes (the result is within 64 KiB, or the minimum layout if larger).
    pub size: u64,
    pub online: bool,
}

/// What [`generate`] and [`ensure()`] make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerateOptions {
    /// Directory receiving `<Id>.zip` files and `index.json`.
    pub out: PathBuf,
    /// Products with a zip file; the first is always the tutorial's.
    pub count: usize,
    /// Target size of each zip in bytes.
    pub size: u64,
    pub seed: u64,
    /// Include a real GeoTIFF band (needs `gdal_translate`); without it the band is left out.
    pub geotiff: bool,
    /// Extra index entries without a zip file, for listing tests of thousands of products.
    pub catalogue_only: usize,
    /// More entries without a zip file, all sensed on the tutorial's day (2018-09-27), for
    /// listings of one crowded day of the `/eodata` tree.
    pub same_day: usize,
    /// Files the filler is split into, of equal size (1 to [`MAX_BANDS`]; 1: the one filler).
    pub bands: usize,
}

/// At most this many filler bands: the Sentinel-2 bands after B01 (which the GeoTIFF holds),
/// B02 to B12 with B8A, so every band file has a real band's name.
pub const MAX_BANDS: usize = 12;

/// Writes `<out>/<Id>.zip` for each product, `<out>/index.json`, and a stamp of the options
/// (so [`ensure()`] can reuse the directory). Returns the index entries.
pub fn generate(opts: &GenerateOptions) -> Result<Vec<IndexEntry>> {
    fs::create_dir_all(&opts.out).with_context(|| format!("creating {}", opts.out.display()))?;
    let stamp = opts.out.join(STAMP_FILE);
    if stamp.exists() {
        fs::remove_file(&stamp).with_context(|| format!("removing {}", stamp.display()))?;
    }
    if !(1..=MAX_BANDS).contains(&opts.bands) {
        bail!("bands must be 1 to {MAX_BANDS}, got {}", opts.bands);
    }
    let mut all = specs(opts.count + opts.catalogue_only, opts.size, opts.seed);
    all.extend(names::specs_on_day(
        opts.same_day,
        opts.size,
        opts.seed,
        TUTORIAL_DAY,
        &all,
    ));
    let mut entries = Vec::with_capacity(all.len());
    for (i, spec) in all.iter().enumerate() {
        if i < opts.count {
            let file = format!("{}.zip", spec.id);
            let path = opts.out.join(&file);
            let product_seed = opts.seed ^ fnv1a(spec.id.as_bytes());
            write_product(&path, spec, product_seed, opts.geotiff, opts.bands)
                .with_context(|| format!("writing {}", path.display()))?;
            let (len, md5) = md5_file(&path)?;
            entries.push(index_entry(spec, len, Some(md5), Some(file))?);
        } else {
            let mut spec = spec.clone();
            spec.online = (i - opts.count) % OFFLINE_EVERY != OFFLINE_EVERY - 1;
            entries.push(index_entry(&spec, spec.size, None, None)?);
        }
    }
    let index = Index { products: entries };
    write_file(
        &opts.out.join("index.json"),
        &serde_json::to_vec_pretty(&index)?,
    )?;
    write_file(&stamp, stamp_text(opts).as_bytes())?;
    Ok(index.products)
}

/// Arguments of `fake-creodias generate`.
#[derive(Debug, Clone, clap::Args)]
pub struct GenerateArgs {
    /// Directory receiving <Id>.zip files and index.json
    #[arg(long)]
    pub out: PathBuf,
    /// Products with a zip file (the first is always the tutorial's)
    #[arg(long, default_value_t = 3)]
    pub count: usize,
    /// Target size of each zip in MiB (fractions allowed)
    #[arg(long, default_value_t = 16.0)]
    pub size_mib: f64,
    /// Seed for names, ids and content
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Leave out the GeoTIFF band (no gdal_translate needed)
    #[arg(long)]
    pub no_geotiff: bool,
    /// Extra index entries without a zip file (for listing tests)
    #[arg(long, default_value_t = 0)]
    pub catalogue_only: usize,
    /// More entries without a zip file, all sensed on 2018-09-27, the tutorial's day (for
    /// listings of one crowded day: MOUNT/Sentinel-2/MSI/L1C/2018/09/27/)
    #[arg(long, default_value_t = 0)]
    pub same_day: usize,
    /// Split the filler into this many band files of equal size in IMG_DATA (1 to 12)
    #[arg(long, default_value_t = 1)]
    pub bands: usize,
}

/// The `generate` subcommand: regenerates `--out` and prints what it made.
pub fn run(args: GenerateArgs) -> Result<()> {
    if !(args.size_mib.is_finite() && args.size_mib >= 0.0) {
        bail!(
            "--size-mib must be a non-negative number, got {}",
            args.size_mib
        );
    }
    let opts = GenerateOptions {
        out: args.out,
        count: args.count,
        size: (args.size_mib * 1048576.0) as u64,
        seed: args.seed,
        geotiff: !args.no_geotiff,
        catalogue_only: args.catalogue_only,
        same_day: args.same_day,
        bands: args.bands,
    };
    let started = Instant::now();
    let entries = generate(&opts)?;
    for e in entries.iter().filter(|e| e.file.is_some()) {
        println!(
            "{}  {:>12}  {}  {}",
            e.id, e.content_length, e.checksum[0].value, e.name
        );
    }
    println!(
        "wrote {} products and {} catalogue-only entries to {} in {:.1} s",
        opts.count,
        opts.catalogue_only + opts.same_day,
        opts.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::ensure::stamp_matches;
    use super::testing::*;
    use super::*;
    use std::time::Duration;

    #[test]
    fn same_seed_same_bytes() {
        let dir = TempDir::new("determinism");
        let a = generate(&opts(dir.0.join("a"), 2, 2 * MIB, have("gdal_translate"))).unwrap();
        let b = generate(&opts(dir.0.join("b"), 2, 2 * MIB, have("gdal_translate"))).unwrap();
        assert_eq!(a, b);
        let mut c = opts(dir.0.join("c"), 1, 2 * MIB, false);
        c.seed = 8;
        assert_ne!(generate(&c).unwrap()[0].checksum, a[0].checksum);
    }
    #[test]
    fn cli_arguments_parse_and_run() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: GenerateArgs,
        }
        let dir = TempDir::new("cli");
        let out = dir.0.join("p");
        let cli = <Cli as clap::Parser>::try_parse_from([
            "generate".as_ref(),
            "--out".as_ref(),
            out.as_os_str(),
            "--count=2".as_ref(),
            "--size-mib=0.5".as_ref(),
            "--seed=9".as_ref(),
            "--no-geotiff".as_ref(),
            "--catalogue-only=3".as_ref(),
        ])
        .unwrap();
        run(cli.args).unwrap();
        let entries = read_index(&out).unwrap();
        assert_eq!(entries.len(), 5);
        assert!(entries[0].content_length.abs_diff(MIB / 2) <= TOLERANCE);
        let reuse = GenerateOptions {
            out: out.clone(),
            count: 2,
            size: MIB / 2,
            seed: 9,
            geotiff: false,
            catalogue_only: 3,
            same_day: 0,
            bands: 1,
        };
        assert!(stamp_matches(&reuse), "ensure reuses what the CLI made");
        let bad = <Cli as clap::Parser>::try_parse_from(["generate", "--count", "1"]);
        assert!(bad.is_err(), "--out is required");
    }

    #[test]
    fn same_day_entries_crowd_the_tutorials_day() {
        let dir = TempDir::new("same-day");
        let mut o = opts(dir.0.join("p"), 1, MIB / 2, false);
        o.catalogue_only = 5;
        let without = generate(&o).unwrap();
        o.same_day = 40;
        o.out = dir.0.join("q");
        let with = generate(&o).unwrap();
        assert_eq!(with[..6], without[..], "the other entries do not change");
        let day = &with[6..];
        assert_eq!(day.len(), 40);
        let names: std::collections::HashSet<_> = with.iter().map(|e| &e.name).collect();
        assert_eq!(names.len(), 46);
        for e in day {
            assert!(
                e.s3_path
                    .starts_with("/eodata/Sentinel-2/MSI/L1C/2018/09/27/"),
                "{}",
                e.s3_path
            );
            assert!(e.content_date.start.starts_with("2018-09-27T"));
            assert!(e.file.is_none() && e.name.contains("_MSIL1C_20180927T"));
        }
        assert!(day.iter().any(|e| !e.online) && day.iter().any(|e| e.online));
        assert!(stamp_matches(&o));
        o.same_day = 41;
        assert!(!stamp_matches(&o));
    }

    /// Debug builds too must stay fast: tests generate hundreds of MiB. 64 MiB takes 0.35 s in
    /// a release build on the 2-core test machine; the bound is 40 times that, so only a real
    /// slowdown (an unoptimised checksum, a write per byte) fails it, not a busy machine.
    #[test]
    fn generation_speed() {
        const BOUND: Duration = Duration::from_secs(15);
        let dir = TempDir::new("speed");
        let o = opts(dir.0.join("p"), 1, 64 * MIB, false);
        let t = Instant::now();
        generate(&o).unwrap();
        let took = t.elapsed();
        eprintln!("64 MiB product in {:.2} s", took.as_secs_f64());
        assert!(took < BOUND, "64 MiB took {took:?}, over {BOUND:?}");
    }
}
