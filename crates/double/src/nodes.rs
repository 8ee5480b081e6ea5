//! OData Nodes: a product's own files, listed folder by folder and downloaded one by one.
//!
//! Listing (no token, like the catalogue): `GET /odata/v1/Products(<uuid>)/Nodes` answers the
//! product's top folder; `.../Nodes(<Name>)/Nodes(GRANULE)/Nodes` answers that folder's children,
//! each `{"Id","Name","ContentLength","ChildrenNumber","Nodes":{"uri"}}` under `result`. Listing a
//! file answers an empty list, as the real service does (docs/protocol.md, "Nodes").
//! Download (token, like the zipper): `.../Nodes(<Name>)/.../Nodes(<file>)/$value`, with every
//! policy of a zipper download (auth, redirect, faults, connection cap, Range switch, throttled
//! and logged body), through `zipper::admit` and `zipper::serve_product`.
//!
//! Both come from the product's zip, whose members sit under `<Name>/...`: the central directory
//! gives the tree and the sizes; a stored member is served from its offset in the zip itself; a
//! deflated one (the generator deflates its small XMLs; real products are stored) is inflated
//! once into `.fake-creodias-nodes/` beside the zip and served from there.
//!
//! Keys are unquoted (`Nodes(GRANULE)`); a quoted key (`Nodes('GRANULE')`) gets 400 DAT-ZIP-104
//! "Malformed OData request path", as the real service answers.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::body::Body;
use hyper::http::{HeaderMap, Method, Response, StatusCode, Uri};
use serde_json::json;

use crate::log::LogEntry;
use crate::respond::{json_response, Answer};
use crate::state::Shared;
use crate::zipper::{admit, error, serve_product, Served};

/// What a `/odata/v1/Products(<id>)/Nodes...` path asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum NodePath {
    /// List the children of the folder at `keys` (empty: the product's top level).
    List { id: String, keys: Vec<String> },
    /// The bytes of the file at `keys`.
    Value { id: String, keys: Vec<String> },
    /// A quoted or empty key, or a shape the service does not know.
    Malformed { id: String },
}

/// Parses `rest`, the part of a path after `/odata/v1/Products(` (with `%24` already `$`).
/// `None` when it is not a Nodes path at all.
pub(crate) fn parse(rest: &str) -> Option<NodePath> {
    let (id, mut tail) = rest.split_once(')')?;
    if !tail.starts_with("/Nodes") {
        return None;
    }
    let id = id.to_string();
    let mut keys = Vec::new();
    loop {
        if tail == "/Nodes" || tail == "/Nodes/" {
            return Some(NodePath::List { id, keys });
        }
        if tail == "/$value" && !keys.is_empty() {
            return Some(NodePath::Value { id, keys });
        }
        let Some(after) = tail.strip_prefix("/Nodes(") else {
            return Some(NodePath::Malformed { id });
        };
        // A key runs to the `)` that ends the segment: followed by `/` or the end of the path.
        let end = after
            .find(")/")
            .or_else(|| after.ends_with(')').then(|| after.len() - 1));
        let Some(end) = end else {
            return Some(NodePath::Malformed { id });
        };
        let raw = &after[..end];
        let key = percent_encoding::percent_decode_str(raw)
            .decode_utf8_lossy()
            .into_owned();
        if key.is_empty() || key.starts_with('\'') || key.contains('/') || key == ".." {
            return Some(NodePath::Malformed { id });
        }
        keys.push(key);
        tail = &after[end + 1..];
    }
}

/// One entry of a folder, from the zip's central directory.
#[derive(Debug, Clone)]
struct Member {
    /// Index in the zip (files only).
    index: Option<usize>,
    size: u64,
    /// Number of direct children (folders only; 0 for files).
    children: usize,
    is_dir: bool,
}

/// The tree of a zip: every folder path (`a/b`, no trailing slash) -> its children by name.
struct Tree {
    folders: BTreeMap<String, BTreeMap<String, Member>>,
}

fn read_tree(zip_path: &Path) -> anyhow::Result<Tree> {
    let mut zip = zip::ZipArchive::new(std::fs::File::open(zip_path)?)?;
    let mut folders: BTreeMap<String, BTreeMap<String, Member>> = BTreeMap::new();
    folders.insert(String::new(), BTreeMap::new());
    for i in 0..zip.len() {
        let f = zip.by_index_raw(i)?;
        let name = f.name().trim_end_matches('/').to_string();
        if name.is_empty() {
            continue;
        }
        let parts: Vec<&str> = name.split('/').collect();
        // Every ancestor is a folder, listed or not.
        for depth in 0..parts.len() {
            let parent = parts[..depth].join("/");
            let child = parts[depth];
            let is_last = depth + 1 == parts.len();
            let entry = folders.entry(parent).or_default();
            let dir = !is_last || f.is_dir();
            entry.entry(child.to_string()).or_insert(Member {
                index: None,
                size: 0,
                children: 0,
                is_dir: dir,
            });
            if is_last && !f.is_dir() {
                let m = entry.get_mut(child).expect("just inserted");
                m.index = Some(i);
                m.size = f.size();
                m.is_dir = false;
            }
            if dir {
                folders.entry(parts[..=depth].join("/")).or_default();
            }
        }
    }
    let counts: BTreeMap<String, usize> =
        folders.iter().map(|(k, v)| (k.clone(), v.len())).collect();
    for (parent, children) in folders.iter_mut() {
        for (name, m) in children.iter_mut() {
            if m.is_dir {
                let path = if parent.is_empty() {
                    name.clone()
                } else {
                    format!("{parent}/{name}")
                };
                m.children = counts.get(&path).copied().unwrap_or(0);
            }
        }
    }
    Ok(Tree { folders })
}

/// `Nodes(a)/Nodes(b)` of a node path.
fn nodes_path(keys: &[String]) -> String {
    keys.iter()
        .map(|k| {
            let enc = percent_encoding::utf8_percent_encode(k, percent_encoding::CONTROLS)
                .to_string()
                .replace(' ', "%20");
            format!("/Nodes({enc})")
        })
        .collect()
}

/// `GET .../Nodes`: the children of a folder. No token needed.
pub(crate) fn list(
    shared: &Arc<Shared>,
    method: &Method,
    id: &str,
    keys: &[String],
    entry: &mut LogEntry,
) -> Response<Body> {
    entry.product = Some(id.to_string());
    if *method != Method::GET && *method != Method::HEAD {
        entry.outcome = "method_not_allowed".into();
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"detail": "Method Not Allowed"}),
        );
    }
    let not_found = |entry: &mut LogEntry| {
        entry.outcome = "not_found".into();
        json_response(
            StatusCode::NOT_FOUND,
            &json!({"detail": {"message": format!("Node not found in product {id}")}}),
        )
    };
    let Some(product) = shared.store.by_id(id) else {
        return not_found(entry);
    };
    let Some(file) = product.file.as_ref() else {
        return not_found(entry);
    };
    let tree = match read_tree(file) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!("reading the zip of {id}: {e:#}");
            entry.outcome = "io_error".into();
            return json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({"detail": "cannot read product"}),
            );
        }
    };
    let folder = keys.join("/");
    let children = match tree.folders.get(&folder) {
        Some(c) => c.clone(),
        None => {
            // A file lists as empty; anything else does not exist.
            let (parent, name) = match keys.split_last() {
                Some((name, parent)) => (parent.join("/"), name.clone()),
                None => return not_found(entry),
            };
            match tree.folders.get(&parent).and_then(|c| c.get(&name)) {
                Some(m) if !m.is_dir => BTreeMap::new(),
                _ => return not_found(entry),
            }
        }
    };
    let base = format!("{}/odata/v1/Products({})", shared.base_url, product.id);
    let result: Vec<serde_json::Value> = children
        .iter()
        .map(|(name, m)| {
            let mut path = keys.to_vec();
            path.push(name.clone());
            json!({
                "Id": name,
                "Name": name,
                "ContentLength": if m.is_dir { 0 } else { m.size },
                "ChildrenNumber": m.children,
                "Nodes": {"uri": format!("{base}{}/Nodes", nodes_path(&path))},
            })
        })
        .collect();
    entry.outcome = "ok".into();
    json_response(StatusCode::OK, &json!({ "result": result }))
}

/// `GET .../Nodes(a)/.../Nodes(file)/$value`: one file's bytes, as a zipper download.
pub(crate) async fn value(
    shared: &Arc<Shared>,
    method: &Method,
    headers: &HeaderMap,
    uri: &Uri,
    id: &str,
    keys: &[String],
    mut entry: LogEntry,
) -> Answer {
    entry.product = Some(id.to_string());
    let user = match admit(shared, method, headers, uri, &mut entry) {
        Ok(user) => user,
        Err(resp) => return Answer::done(*resp, entry),
    };
    let served = shared
        .store
        .by_id(id)
        .and_then(|p| p.file.clone())
        .and_then(|zip| member(&zip, keys).transpose());
    match served {
        Some(Ok(served)) => serve_product(shared, method, headers, &served, &user, entry).await,
        Some(Err(e)) => {
            tracing::warn!("serving a node of {id}: {e:#}");
            entry.outcome = "io_error".into();
            let r = error(
                shared,
                StatusCode::INTERNAL_SERVER_ERROR,
                "DAT-ZIP-500",
                "Internal error",
            );
            Answer::done(r, entry)
        }
        None => {
            entry.outcome = "not_found".into();
            let r = error(
                shared,
                StatusCode::NOT_FOUND,
                "DAT-ZIP-915",
                "No objects to stream",
            );
            Answer::done(r, entry)
        }
    }
}

/// A quoted key or an unknown shape under `Products(<id>)/Nodes`.
pub(crate) fn malformed(shared: &Arc<Shared>, id: &str, entry: &mut LogEntry) -> Response<Body> {
    entry.product = Some(id.to_string());
    entry.outcome = "malformed".into();
    error(
        shared,
        StatusCode::BAD_REQUEST,
        "DAT-ZIP-104",
        "Malformed OData request path",
    )
}

/// Where the bytes of the member at `keys` are: in the zip itself (stored), or in its inflated
/// copy. `Ok(None)` when there is no such file.
fn member(zip_path: &Path, keys: &[String]) -> anyhow::Result<Option<Served>> {
    let name = keys.join("/");
    let mut zip = zip::ZipArchive::new(std::fs::File::open(zip_path)?)?;
    let Some(index) = zip.index_for_name(&name) else {
        return Ok(None);
    };
    let f = zip.by_index_raw(index)?;
    if f.is_dir() {
        return Ok(None);
    }
    let filename = keys.last().cloned().unwrap_or_default();
    let content_type = "application/octet-stream";
    if f.compression() == zip::CompressionMethod::Stored {
        return Ok(Some(Served {
            file: zip_path.to_path_buf(),
            offset: f.data_start(),
            len: Some(f.size()),
            content_type,
            filename,
        }));
    }
    drop(f);
    let copy = inflated_copy(zip_path, &mut zip, index)?;
    Ok(Some(Served {
        file: copy,
        offset: 0,
        len: None,
        content_type,
        filename,
    }))
}

/// The inflated bytes of member `index`, written once beside the zip (temp file + rename, so a
/// concurrent request never serves half a copy).
fn inflated_copy(
    zip_path: &Path,
    zip: &mut zip::ZipArchive<std::fs::File>,
    index: usize,
) -> anyhow::Result<PathBuf> {
    let dir = zip_path
        .parent()
        .unwrap_or(Path::new("."))
        .join(".fake-creodias-nodes");
    let stem = zip_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mtime = std::fs::metadata(zip_path)?
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let path = dir.join(format!("{stem}.{mtime}.{index}"));
    if path.exists() {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir)?;
    let mut data = Vec::new();
    zip.by_index(index)?.read_to_end(&mut data)?;
    let tmp = tempfile_in(&dir)?;
    std::fs::write(&tmp, &data)?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

fn tempfile_in(dir: &Path) -> std::io::Result<PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    Ok(dir.join(format!(
        ".tmp.{}.{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_node_paths() {
        assert_eq!(
            parse("abc)/Nodes"),
            Some(NodePath::List {
                id: "abc".into(),
                keys: vec![]
            })
        );
        assert_eq!(
            parse("abc)/Nodes(X.SAFE)/Nodes(GRANULE)/Nodes"),
            Some(NodePath::List {
                id: "abc".into(),
                keys: keys(&["X.SAFE", "GRANULE"])
            })
        );
        assert_eq!(
            parse("abc)/Nodes(X.SAFE)/Nodes(a%20b.xml)/$value"),
            Some(NodePath::Value {
                id: "abc".into(),
                keys: keys(&["X.SAFE", "a b.xml"])
            })
        );
        assert_eq!(
            parse("abc)/Nodes('X.SAFE')/Nodes"),
            Some(NodePath::Malformed { id: "abc".into() })
        );
        assert_eq!(
            parse("abc)/Nodes/$value"),
            Some(NodePath::Malformed { id: "abc".into() })
        );
        assert_eq!(parse("abc)/$value"), None);
        assert_eq!(parse("abc)"), None);
    }
}
