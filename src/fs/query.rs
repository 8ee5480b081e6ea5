//! Query directories: an OData `$filter` shown as a directory of the products it finds.
//!
//! `--query NAME=FILTER` makes `/mnt/<NAME>/`; one query without a name fills the root. A
//! directory's listing is fetched from the catalogue once (at mount time, so a bad filter fails
//! the mount) and kept for `--listing-ttl`; the first `ls` (opendir) after that refetches it.
//! Lookups and reads never refetch: a refresh happens only where a user asked for a listing,
//! and a listing being paged through by the kernel never changes under it (each opendir gets
//! its own snapshot, see `Fs::opendir`).
//!
//! This file holds the `Fs` methods that fetch listings ([`Fs::refresh_queries`], `listing`).
//! The days of the `/eodata` tree (`tree`) are query directories too, made on first use.
//!
//! A refetch that fails keeps the old listing (logged), so a catalogue outage does not empty a
//! directory that tools are working in; without an old listing the error reaches the caller.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use eodata_fetch::RangeSource;

use super::{Fs, FsError, Resolver};

/// One `--query` as given on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuerySpec {
    /// The directory's name; `None` puts the results in the root.
    pub name: Option<String>,
    /// The OData `$filter` expression.
    pub filter: String,
}

impl QuerySpec {
    /// `NAME=FILTER` or `FILTER`. The text before the first `=` is a name only when it looks
    /// like one (letters, digits, `_`, `-`, `.`; no blanks or quotes), since OData filters may
    /// hold `=` inside string literals (`contains(Name,'a=b')`) but never in such a prefix.
    pub fn parse(text: &str) -> Result<QuerySpec, String> {
        let (name, filter) = match text.split_once('=') {
            Some((n, f)) if is_dir_name(n.trim()) => (Some(n.trim().to_string()), f),
            _ => (None, text),
        };
        let filter = filter.trim().to_string();
        if filter.is_empty() {
            return Err(format!(
                "--query {text:?} has no filter; write NAME=FILTER or FILTER, e.g. \
                 S2=\"Collection/Name eq 'SENTINEL-2' and contains(Name,'T42FXL')\""
            ));
        }
        Ok(QuerySpec { name, filter })
    }

    /// Checks a set of queries: at most one without a name, no name twice.
    pub fn check_all(specs: &[QuerySpec]) -> Result<(), String> {
        if specs.iter().filter(|s| s.name.is_none()).count() > 1 {
            return Err(
                "only one --query may go without a name (it fills the root); \
                        name the others NAME=FILTER"
                    .into(),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for name in specs.iter().filter_map(|s| s.name.as_deref()) {
            if !seen.insert(name) {
                return Err(format!("two --query directories are named {name:?}"));
            }
        }
        Ok(())
    }
}

fn is_dir_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && !s.ends_with(".zip")
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

/// A query directory: its filter and its current listing.
pub(super) struct QueryDir {
    pub spec: QuerySpec,
    /// The listing; an async lock so that concurrent `ls` after expiry share one refetch.
    pub listing: tokio::sync::Mutex<Listing>,
    /// Most products listed (`--max-results` for `--query`; a day of the tree lists more).
    pub max_results: usize,
    /// For a day of the `/eodata` tree (`tree`): its path, e.g.
    /// `/eodata/Sentinel-2/MSI/L1C/2018/09/27`; a product whose `S3Path` names another
    /// directory is left out (it is listed where its `S3Path` says).
    pub place: Option<String>,
}

/// Whether a product found by a tree day's query belongs in that day's directory `place`: its
/// `S3Path` names it, or, without one, its sensing start falls on the day (the query looks a
/// little past the day's bounds, see `layout::DAY_MARGIN`). A product with neither is kept.
fn in_place(meta: &super::ProductMeta, place: &str) -> bool {
    if let Some(s3) = meta.s3_path() {
        return super::layout::same_path(s3, place);
    }
    let start = meta
        .xattrs
        .iter()
        .find(|(k, _)| k == super::CONTENT_START_XATTR)
        .map(|(_, v)| v.as_str());
    match (start, super::layout::path_day(place)) {
        (Some(start), Some(day)) => start.starts_with(&day),
        _ => true,
    }
}

/// What a query found, as file names to product inodes.
#[derive(Default)]
pub(super) struct Listing {
    /// When the catalogue last answered; `None` before the first answer.
    pub fetched_at: Option<Instant>,
    /// When, as the directory's mtime.
    pub fetched_wall: Option<SystemTime>,
    pub entries: Arc<BTreeMap<String, u64>>,
}

impl Listing {
    /// Whether an `ls` now should refetch.
    pub fn stale(&self, ttl: Duration) -> bool {
        self.fetched_at.is_none_or(|t| t.elapsed() >= ttl)
    }
}

impl<R: Resolver, S: RangeSource> Fs<R, S> {
    /// Fetches every query's listing (at mount time: a filter the catalogue refuses fails the
    /// mount, and the first `ls` finds the listing ready). Returns (directory, products).
    pub async fn refresh_queries(&self) -> Result<Vec<(String, usize)>, FsError> {
        let mut out = Vec::new();
        for dir in self.queries.values() {
            let entries = self.listing(dir, true).await?;
            out.push((dir.spec.name.clone().unwrap_or_default(), entries.len()));
        }
        Ok(out)
    }

    /// A query directory's entries, fetched first when never fetched, or when `refresh` and
    /// older than the listing TTL. A failed refetch keeps the old entries.
    pub(super) async fn listing(
        &self,
        dir: &QueryDir,
        refresh: bool,
    ) -> Result<Arc<BTreeMap<String, u64>>, FsError> {
        let mut listing = dir.listing.lock().await;
        let due = if refresh {
            listing.stale(self.config.listing_ttl)
        } else {
            listing.fetched_at.is_none()
        };
        if !due {
            return Ok(listing.entries.clone());
        }
        let started = Instant::now();
        match self.resolver.query(&dir.spec.filter, dir.max_results).await {
            Ok(found) => {
                if found.len() >= dir.max_results {
                    tracing::warn!(
                        "query {:?} stopped at {} products{}",
                        dir.spec.filter,
                        dir.max_results,
                        if dir.place.is_some() {
                            ""
                        } else {
                            " (--max-results): raise it or narrow the filter"
                        }
                    );
                }
                let mut entries = BTreeMap::new();
                let mut table = self.inodes.lock().unwrap();
                for meta in found {
                    if let Some(place) = &dir.place {
                        if !in_place(&meta, place) {
                            continue;
                        }
                    }
                    let id = meta.id.clone();
                    let node = table.insert(meta, None, &id);
                    entries.insert(node.file_name(), node.ino);
                }
                drop(table);
                tracing::info!(
                    "query {:?}: {} products in {:.2} s",
                    dir.spec.filter,
                    entries.len(),
                    started.elapsed().as_secs_f64()
                );
                listing.entries = Arc::new(entries);
                listing.fetched_at = Some(Instant::now());
                listing.fetched_wall = Some(SystemTime::now());
                Ok(listing.entries.clone())
            }
            Err(e) if listing.fetched_at.is_some() => {
                let msg = format!("query {:?}: {e}; keeping the old listing", dir.spec.filter);
                tracing::warn!("{msg}");
                self.note_error(&msg);
                Ok(listing.entries.clone())
            }
            Err(e) => {
                self.note_error(&format!("query {:?}: {e}", dir.spec.filter));
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_split_off_only_when_they_look_like_names() {
        let s = QuerySpec::parse("s2=Collection/Name eq 'SENTINEL-2'").unwrap();
        assert_eq!(s.name.as_deref(), Some("s2"));
        assert_eq!(s.filter, "Collection/Name eq 'SENTINEL-2'");
        let s = QuerySpec::parse("contains(Name,'a=b')").unwrap();
        assert_eq!(s.name, None);
        assert_eq!(s.filter, "contains(Name,'a=b')");
        let s = QuerySpec::parse("Name eq 'x=y'").unwrap();
        assert_eq!(s.name, None);
        assert!(QuerySpec::parse("empty=").is_err());
        assert!(QuerySpec::parse("  ").is_err());
    }

    #[test]
    fn one_unnamed_query_at_most_and_unique_names() {
        let q = |t: &str| QuerySpec::parse(t).unwrap();
        assert!(QuerySpec::check_all(&[q("a=x"), q("y")]).is_ok());
        assert!(QuerySpec::check_all(&[q("x"), q("y")]).is_err());
        assert!(QuerySpec::check_all(&[q("a=x"), q("a=y")]).is_err());
    }
}
