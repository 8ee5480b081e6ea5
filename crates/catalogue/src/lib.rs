//! The OData catalogue: product names and UUIDs to [`Product`]s, and listings for queries.
//!
//! The mount turns every `lookup` of a directory entry into a [`Catalogue::resolve`]; shells,
//! file managers and `ls` repeat those lookups many times, often for names that do not exist.
//! So this crate owns:
//! - the name rules (UUID, name with or without `.SAFE`-like extension, a trailing `.zip`),
//! - a cache: products are immutable, so found ones are kept for an hour; names that were not
//!   found are kept for half a minute, so repeated probes do not hammer the service but a
//!   product published meanwhile shows up soon;
//! - single flight: concurrent lookups of one name share one request;
//! - [`Catalogue::query`], paging through search results;
//! - [`Catalogue::list_nodes`], the files inside a product ([`nodes`]).
//!
//! Files: [`product`] (the answer and its JSON), `odata` (quoting and URLs), `http` (one GET
//! with retries), `date` (ISO 8601), `error`.

pub mod date;
mod error;
pub mod filter;
pub mod footprint;
mod http;
pub mod nodes;
mod odata;
pub mod product;

pub use date::parse_iso8601;
pub use error::CatalogueError;
pub use product::Product;

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Answer;
use product::{WirePage, WireProduct};
use tokio::sync::OnceCell;

/// Tuning of a [`Catalogue`]. The defaults suit the real services; tests shorten the times.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long a found product is remembered. Products never change once published; an hour
    /// bounds memory use of a long-running mount and picks up the rare re-processing.
    pub positive_ttl: Duration,
    /// How long "no such product" is remembered: long enough to absorb a shell's burst of
    /// repeated lookups (completion, `ls`, `stat`), short enough that a product published a
    /// minute later can be opened.
    pub negative_ttl: Duration,
    /// Products and misses kept at most, least recently used dropped first. 4096 entries of a
    /// few hundred bytes each: about a megabyte.
    pub capacity: NonZeroUsize,
    /// Tries per request for transient failures (network, 5xx, 429): a couple of retries ride
    /// out a restart or a blip without making a user wait long on a real outage.
    pub max_attempts: u32,
    /// Wait before the first retry, doubled for each further one (250 ms, 500 ms, ...).
    pub backoff: Duration,
    /// Whole-request limit, so a stalled catalogue cannot hold a `stat` forever.
    pub request_timeout: Duration,
    /// `$top` of each page of [`Catalogue::query`]; at most 1000, the services' limit, which is
    /// also the default: fewer, larger pages.
    pub page_size: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            positive_ttl: Duration::from_secs(3600),
            negative_ttl: Duration::from_secs(30),
            capacity: NonZeroUsize::new(4096).expect("non-zero"),
            max_attempts: 3,
            backoff: Duration::from_millis(250),
            request_timeout: Duration::from_secs(30),
            page_size: MAX_PAGE,
        }
    }
}

/// Largest `$top` the services accept (docs/protocol.md).
const MAX_PAGE: usize = 1000;

/// The order of every paged query: the services only order fully (by this, then by id)
/// when asked to; unordered pages may repeat or skip products.
const ORDER: &str = "ContentDate/Start asc";

/// Largest `$skip` the services accept (docs/protocol.md); paging by `$skip` stops there.
const MAX_SKIP: usize = 10_000;

/// Candidates asked for when a name without extension is looked up with `startswith`: the exact
/// stem is normally the only match, a few more leave room for names that extend it
/// (`X_COG.SAFE`) without making the answer large.
const STEM_CANDIDATES: usize = 20;

/// A lookup's outcome as cached and as shared between concurrent callers.
type Lookup = Result<Product, CatalogueError>;

struct Entry {
    result: Lookup,
    expires: Instant,
}

struct State {
    cache: lru::LruCache<String, Entry>,
    /// Lookups under way, by key; later callers await the same cell.
    in_flight: HashMap<String, Arc<OnceCell<Lookup>>>,
}

/// A client of one OData catalogue, with its cache. Share it (`Arc`) across the mount.
pub struct Catalogue {
    base: url::Url,
    http: reqwest::Client,
    opts: Options,
    state: Mutex<State>,
}

impl std::fmt::Debug for Catalogue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalogue")
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

impl Catalogue {
    /// A catalogue at `base_url` (e.g. `https://datahub.creodias.eu/odata/v1`) with default
    /// [`Options`].
    pub fn new(base_url: url::Url, http: reqwest::Client) -> Self {
        Self::with_options(base_url, http, Options::default())
    }

    pub fn with_options(base_url: url::Url, http: reqwest::Client, opts: Options) -> Self {
        Catalogue {
            base: base_url,
            http,
            state: Mutex::new(State {
                cache: lru::LruCache::new(opts.capacity),
                in_flight: HashMap::new(),
            }),
            opts,
        }
    }

    /// The product with this UUID or name. Accepted forms:
    /// - a UUID: the entity `Products(<uuid>)`, then `$filter=Id eq '<uuid>'` for services
    ///   without entity paths;
    /// - a name with an extension (`X.SAFE`, `X.SEN3`, `X.nc`): `Name eq 'X.SAFE'`;
    /// - a name without one (`X`): `startswith(Name,'X')`, taking the product named `X` or `X.<ext>`;
    /// - any of these followed by `.zip` (the download's file name), which is dropped.
    ///
    /// Cached (see [`Options`]); concurrent calls for one name make one request.
    pub async fn resolve(&self, name_or_id: &str) -> Result<Product, CatalogueError> {
        let key = normalise(name_or_id);
        if key.is_empty() {
            return Err(CatalogueError::NotFound(name_or_id.to_string()));
        }
        let cell = {
            let mut state = self.state.lock().expect("catalogue state poisoned");
            if let Some(entry) = state.cache.get(&key) {
                if entry.expires > Instant::now() {
                    return entry.result.clone();
                }
                state.cache.pop(&key);
            }
            state.in_flight.entry(key.clone()).or_default().clone()
        };
        let result = cell
            .get_or_init(|| async {
                let result = self.lookup(&key).await;
                self.remember(&key, &result);
                result
            })
            .await
            .clone();
        let mut state = self.state.lock().expect("catalogue state poisoned");
        if state
            .in_flight
            .get(&key)
            .is_some_and(|c| Arc::ptr_eq(c, &cell))
        {
            state.in_flight.remove(&key);
        }
        drop(state);
        result.map_err(|e| match e {
            // Name the product as the caller wrote it.
            CatalogueError::NotFound(_) => CatalogueError::NotFound(name_or_id.to_string()),
            other => other,
        })
    }

    /// Products matching an OData `$filter` (empty: no filter), at most `max_results`, in the
    /// service's order. Pages by `$top`/`$skip` and follows `@odata.nextLink`; results are
    /// also cached for [`Catalogue::resolve`]. Paging by `$skip` stops at the service's limit of
    /// 10 000 (a warning is logged).
    pub async fn query(
        &self,
        filter: &str,
        max_results: usize,
    ) -> Result<Vec<Product>, CatalogueError> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut skip = 0usize;
        let mut next: Option<url::Url> = None;
        while out.len() < max_results {
            let top = (max_results - out.len()).min(self.opts.page_size.clamp(1, MAX_PAGE));
            let url = match next.take() {
                Some(url) => url,
                None => {
                    if skip > MAX_SKIP {
                        tracing::warn!("catalogue query stopped after {} results: the service pages no further than $skip={MAX_SKIP}; narrow the filter", out.len());
                        break;
                    }
                    // Without $orderby the service's order is unstable between pages, and
                    // paging loses or repeats products (docs/protocol.md, "Catalogue").
                    let mut params =
                        vec![("$orderby", ORDER.to_string()), ("$top", top.to_string())];
                    if !filter.trim().is_empty() {
                        params.insert(0, ("$filter", filter.to_string()));
                    }
                    if skip > 0 {
                        params.push(("$skip", skip.to_string()));
                    }
                    odata::products_url(&self.base, &params)
                }
            };
            let (page, next_link) = self.page(&url).await?;
            let got = page.len();
            let before = out.len();
            for p in page {
                if seen.insert(p.id.clone()) && out.len() < max_results {
                    self.remember_product(&p);
                    out.push(p);
                }
            }
            skip += got;
            if got > 0 && out.len() == before {
                // A page of nothing new: the service ignores paging; more requests would loop.
                tracing::warn!("catalogue query stopped: a page repeated earlier results");
                break;
            }
            match next_link {
                Some(link) if got > 0 => {
                    next = Some(url.join(&link).map_err(|e| CatalogueError::Protocol {
                        url: url.to_string(),
                        reason: format!("@odata.nextLink {link:?} is not a URL: {e}"),
                    })?)
                }
                // Without a next link, a short page is the last one.
                _ if got < top => break,
                _ => {}
            }
        }
        Ok(out)
    }

    /// The request(s) behind one uncached resolve of a normalised key.
    async fn lookup(&self, key: &str) -> Lookup {
        if odata::is_uuid(key) {
            let id = key.to_ascii_lowercase();
            match http::get_json(
                &self.http,
                &odata::entity_url(&self.base, &id),
                &self.opts,
                http::Kind::Entity,
            )
            .await
            {
                Ok(Answer::Json(json)) => {
                    let url = odata::entity_url(&self.base, &id);
                    // An entity is the object itself; some services wrap it in `value`.
                    return match json.get("value").and_then(|v| v.as_array()) {
                        Some(list) => first(list, &url, key),
                        None => to_product(json, &url),
                    };
                }
                // No such entity, or no entity paths: ask by filter.
                Ok(Answer::NotFound) | Err(CatalogueError::Rejected { .. }) => {}
                Err(e) => return Err(e),
            }
            let (page, _) = self
                .page(&odata::products_url(
                    &self.base,
                    &[("$filter", odata::id_eq(&id)), ("$top", "1".into())],
                ))
                .await?;
            return page
                .into_iter()
                .next()
                .ok_or_else(|| CatalogueError::NotFound(key.to_string()));
        }
        if odata::extension(key).is_some() {
            let url = odata::products_url(
                &self.base,
                &[("$filter", odata::name_eq(key)), ("$top", "1".into())],
            );
            let (page, _) = self.page(&url).await?;
            return page
                .into_iter()
                .find(|p| p.name == key)
                .ok_or_else(|| CatalogueError::NotFound(key.to_string()));
        }
        let url = odata::products_url(
            &self.base,
            &[
                ("$filter", odata::name_startswith(key)),
                ("$orderby", ORDER.to_string()),
                ("$top", STEM_CANDIDATES.to_string()),
            ],
        );
        let (page, _) = self.page(&url).await?;
        // The exact name, else `key.<ext>`; among several extensions, the first in the
        // service's order.
        let exact = page.iter().position(|p| p.name == key);
        let stem = || {
            page.iter().position(|p| {
                p.name
                    .strip_prefix(key)
                    .and_then(|rest| rest.strip_prefix('.'))
                    .is_some_and(odata::is_extension)
            })
        };
        match exact.or_else(stem) {
            Some(i) => Ok(page.into_iter().nth(i).expect("index from position")),
            None => Err(CatalogueError::NotFound(key.to_string())),
        }
    }

    /// One page of search results and its `@odata.nextLink`. A 404 to a search is retried as
    /// a passing fault (the real catalogue answers some now and then).
    async fn page(&self, url: &url::Url) -> Result<(Vec<Product>, Option<String>), CatalogueError> {
        let json = match http::get_json(&self.http, url, &self.opts, http::Kind::Collection).await?
        {
            Answer::Json(json) => json,
            Answer::NotFound => return Ok((Vec::new(), None)),
        };
        let page: WirePage =
            serde_json::from_value(json).map_err(|e| CatalogueError::Protocol {
                url: url.to_string(),
                reason: format!("not an OData result list: {e}"),
            })?;
        let products = page
            .value
            .into_iter()
            .map(|v| to_product(v, url))
            .collect::<Result<_, _>>()?;
        Ok((products, page.next_link))
    }

    /// Caches a lookup's outcome: products long, misses briefly, failures not at all (the next
    /// lookup should try again).
    fn remember(&self, key: &str, result: &Lookup) {
        let ttl = match result {
            Ok(p) => {
                self.remember_product(p);
                self.opts.positive_ttl
            }
            Err(CatalogueError::NotFound(_)) => self.opts.negative_ttl,
            Err(_) => return,
        };
        let entry = Entry {
            result: result.clone(),
            expires: Instant::now() + ttl,
        };
        self.state
            .lock()
            .expect("catalogue state poisoned")
            .cache
            .put(key.to_string(), entry);
    }

    /// Caches a product under its name and its id, so a later resolve by either is free.
    fn remember_product(&self, p: &Product) {
        let expires = Instant::now() + self.opts.positive_ttl;
        let mut state = self.state.lock().expect("catalogue state poisoned");
        for key in [p.name.clone(), p.id.to_ascii_lowercase()] {
            state.cache.put(
                key,
                Entry {
                    result: Ok(p.clone()),
                    expires,
                },
            );
        }
    }
}

/// The product a user names, as a Name, UUID or path: of a path (`/eodata/Sentinel-2/MSI/L1C/
/// 2018/09/27/<Name>`, as on a CREODIAS machine or in a mount's tree, or a local copy of one) the
/// last component, since product names never hold a `/`.
pub fn product_of(text: &str) -> &str {
    let t = text.trim().trim_end_matches('/');
    t.rsplit('/').next().unwrap_or(t)
}

/// The cache key of what a user typed: blanks, a leading path (see [`product_of`]) and a
/// trailing `.zip` dropped, a UUID in lower case (names are case-sensitive and kept as they are).
fn normalise(name_or_id: &str) -> String {
    let s = product_of(name_or_id);
    let s = match s.len().checked_sub(4) {
        Some(cut) if s.is_char_boundary(cut) && s[cut..].eq_ignore_ascii_case(".zip") => &s[..cut],
        _ => s,
    };
    if odata::is_uuid(s) {
        s.to_ascii_lowercase()
    } else {
        s.to_string()
    }
}

fn to_product(json: serde_json::Value, url: &url::Url) -> Result<Product, CatalogueError> {
    serde_json::from_value::<WireProduct>(json)
        .map(WireProduct::into_product)
        .map_err(|e| CatalogueError::Protocol {
            url: url.to_string(),
            reason: format!("not a product entry: {e}"),
        })
}

fn first(list: &[serde_json::Value], url: &url::Url, key: &str) -> Lookup {
    match list.first() {
        Some(v) => to_product(v.clone(), url),
        None => Err(CatalogueError::NotFound(key.to_string())),
    }
}

#[cfg(test)]
mod tests;
