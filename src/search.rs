//! `eodata-mount search`: the catalogue searched with friendly criteria, one product Name a
//! line on stdout, so `search ... | download --from-file -` works; `--long` adds a header and
//! columns, `--json` gives the entries. The criteria become OData in
//! [`eodata_catalogue::filter`], which query directories share. No login: the catalogue needs
//! none.

use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context;
use eodata_catalogue::filter::{iso_millis, Area, Criteria, FilterError, Instant};
use eodata_catalogue::{Catalogue, Product};

use crate::cli::{CommonArgs, CriteriaArgs, SearchArgs};

/// Exit status for input that cannot become a search (bad date, bad box), as for bad flags.
const USAGE: u8 = 2;

pub async fn run(common: &CommonArgs, args: &SearchArgs) -> anyhow::Result<ExitCode> {
    let products = match find(common, &args.criteria).await? {
        Ok(p) => p,
        Err(e) => {
            eprintln!("eodata-mount: {e}");
            return Ok(ExitCode::from(USAGE));
        }
    };
    let mut out = String::new();
    if args.json {
        let entries: Vec<serde_json::Value> = products.iter().map(entry).collect();
        out = serde_json::to_string_pretty(&entries)? + "\n";
    } else if args.long {
        out.push_str("NAME\tSTART\tSIZE\tONLINE\tID\n");
        for p in &products {
            let start = p
                .content_start
                .map(iso_millis)
                .unwrap_or_else(|| "-".into());
            let size = p.size_hint.map_or("-".into(), |n| n.to_string());
            out.push_str(&format!(
                "{}\t{start}\t{size}\t{}\t{}\n",
                p.name, p.online, p.id
            ));
        }
    } else {
        for p in &products {
            out.push_str(&p.name);
            out.push('\n');
        }
    }
    use std::io::Write;
    match std::io::stdout().write_all(out.as_bytes()) {
        // `search | head` is not an error.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
        _ => {}
    }
    if products.is_empty() {
        eprintln!("eodata-mount: no product matches");
    }
    Ok(ExitCode::SUCCESS)
}

/// The products the catalogue finds for `args`, at most `--limit`; the inner error is the
/// user's input that cannot become a search (a bad date or box: exit status 2).
pub async fn find(
    common: &CommonArgs,
    args: &CriteriaArgs,
) -> anyhow::Result<Result<Vec<Product>, FilterError>> {
    let filter = match criteria(args).and_then(|c| c.filter()) {
        Ok(f) => f,
        Err(e) => return Ok(Err(e)),
    };
    tracing::info!(filter = %filter, "catalogue search");
    let overrides = crate::stack::overrides(common);
    let endpoints = eodata_config::load_endpoints_only(&overrides, &|k| std::env::var(k).ok())?;
    let catalogue = Catalogue::new(
        endpoints.catalogue_url.clone(),
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(common.read_timeout))
            .user_agent(concat!("eodata-mount/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot build the HTTP client")?,
    );
    let products = catalogue
        .query(&filter, args.limit as usize)
        .await
        .context("the catalogue search failed")?;
    Ok(Ok(products))
}

fn criteria(args: &CriteriaArgs) -> Result<Criteria, FilterError> {
    let area = match (&args.bbox, &args.geometry) {
        (Some(b), _) => Some(Area::from_bbox(b)?),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                FilterError(format!("cannot read the geometry {}: {e}", path.display()))
            })?;
            Some(Area::from_geojson(&text)?)
        }
        (None, None) => None,
    };
    Ok(Criteria {
        collection: args.collection.clone(),
        level: args.level.clone(),
        from: args.from.as_deref().map(Instant::parse).transpose()?,
        to: args.to.as_deref().map(Instant::parse).transpose()?,
        area,
        cloud_max: args.cloud_max,
        name: args.name.clone(),
        online_only: args.online_only,
        raw: args.filter.clone(),
    })
}

/// A product as the catalogue's JSON spells it (the fields this client reads).
fn entry(p: &Product) -> serde_json::Value {
    let time = |t: Option<std::time::SystemTime>| t.filter(|t| *t >= UNIX_EPOCH).map(iso_millis);
    serde_json::json!({
        "Id": p.id,
        "Name": p.name,
        "ContentLength": p.size_hint,
        "Online": p.online,
        "ContentDate": {"Start": time(p.content_start), "End": time(p.content_end)},
        "OriginDate": time(p.origin_date),
        "PublicationDate": time(p.publication_date),
        "ModificationDate": time(p.modification_date),
        "Checksum": p.md5.as_ref().map(|m| vec![serde_json::json!({"Algorithm": "MD5", "Value": m})]).unwrap_or_default(),
        "Footprint": p.footprint,
        "S3Path": p.s3_path,
    })
}
