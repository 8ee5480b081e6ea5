//! OData Nodes: the files and folders inside a product, listed one folder per request.
//!
//! `GET {catalogue}/Products(<uuid>)/Nodes` lists the product's top level (for a `.SAFE` product,
//! one folder named like the product); `.../Nodes(<Name>)/Nodes(GRANULE)/Nodes` lists that
//! folder. Keys are unquoted (a quoted key is refused), and listing needs no token. Each entry
//! is `{"Id","Name","ContentLength","ChildrenNumber","Nodes":{"uri"}}` under `result`; a folder
//! has `ContentLength` 0 and its children counted, a file its size and no children. Listing a
//! file answers an empty list. See docs/protocol.md, "Nodes".
//!
//! No cache here: the mount keeps each folder's listing with the product (folders never change
//! once published), so each folder costs one request per mount.

use serde_json::Value;

use crate::http::{self, Answer};
use crate::{Catalogue, CatalogueError};

/// One entry of a folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    /// `ContentLength`: a file's size in bytes (0 for folders).
    pub size: u64,
    /// `ChildrenNumber`: entries inside a folder (0 for files).
    pub children: u64,
    /// A folder: it has children. (An empty folder looks like an empty file; both read as
    /// nothing.)
    pub is_dir: bool,
}

/// `{base}/Products(<id>)/Nodes(<k1>)/.../Nodes(<kn>)/Nodes`, each key unquoted and
/// percent-encoded where it holds anything but unreserved characters.
pub fn nodes_url(base: &url::Url, id: &str, path: &[String]) -> url::Url {
    let mut url = base.clone();
    let mut p = format!(
        "{}/Products({})",
        base.path().trim_end_matches('/'),
        crate::odata::encode(id)
    );
    for key in path {
        p.push_str(&format!("/Nodes({})", crate::odata::encode(key)));
    }
    p.push_str("/Nodes");
    url.set_path(&p);
    url.set_query(None);
    url
}

impl Catalogue {
    /// The entries of the folder at `path` inside product `id` (`[]`: the top level). One
    /// request, retried like any catalogue request; a missing folder is
    /// [`CatalogueError::NotFound`].
    pub async fn list_nodes(&self, id: &str, path: &[String]) -> Result<Vec<Node>, CatalogueError> {
        let url = nodes_url(&self.base, id, path);
        // A 404 names a folder that does not exist, as for an entity.
        match http::get_json(&self.http, &url, &self.opts, http::Kind::Entity).await? {
            Answer::NotFound => Err(CatalogueError::NotFound(format!("{id}/{}", path.join("/")))),
            Answer::Json(json) => parse_nodes(&json).map_err(|reason| CatalogueError::Protocol {
                url: url.to_string(),
                reason,
            }),
        }
    }
}

/// The entries of a Nodes answer. Entries without a usable `Name` are an error: the listing
/// would be silently incomplete otherwise.
pub fn parse_nodes(json: &Value) -> Result<Vec<Node>, String> {
    let list = json
        .get("result")
        .or_else(|| json.get("value"))
        .and_then(Value::as_array)
        .ok_or("a Nodes answer without a `result` list")?;
    let number = |v: &Value, key: &str| -> Result<u64, String> {
        match v.get(key) {
            None | Some(Value::Null) => Ok(0),
            Some(n) => n
                .as_u64()
                .or_else(|| {
                    n.as_f64()
                        .filter(|f| *f >= 0.0 && f.fract() == 0.0)
                        .map(|f| f as u64)
                })
                .ok_or_else(|| format!("`{key}` is not a size: {n}")),
        }
    };
    list.iter()
        .map(|entry| {
            let name = entry
                .get("Name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty() && *n != "." && *n != ".." && !n.contains('/'))
                .ok_or_else(|| format!("a node without a usable Name: {entry}"))?;
            let size = number(entry, "ContentLength")?;
            let children = number(entry, "ChildrenNumber")?;
            Ok(Node {
                name: name.to_string(),
                size,
                children,
                is_dir: children > 0,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_keys_unquoted() {
        let base = url::Url::parse("https://h.example/odata/v1/").unwrap();
        let u = nodes_url(&base, "db0c8ef3-8ec0-5185-a537-812dad3c58f8", &[]);
        assert_eq!(
            u.as_str(),
            "https://h.example/odata/v1/Products(db0c8ef3-8ec0-5185-a537-812dad3c58f8)/Nodes"
        );
        let u = nodes_url(&base, "x", &["A.SAFE".into(), "a b".into()]);
        assert_eq!(
            u.as_str(),
            "https://h.example/odata/v1/Products(x)/Nodes(A.SAFE)/Nodes(a%20b)/Nodes"
        );
    }

    #[test]
    fn parses_the_documented_answer() {
        let json: Value = serde_json::from_str(
            r#"{"result":[{"Id":"S2A.SAFE","Name":"S2A.SAFE","ContentLength":0,"ChildrenNumber":9,
                "Nodes":{"uri":"https://x/Nodes(S2A.SAFE)/Nodes"}},
                {"Id":"m.xml","Name":"m.xml","ContentLength":1234,"ChildrenNumber":0,"Nodes":{"uri":"u"}}]}"#,
        )
        .unwrap();
        let nodes = parse_nodes(&json).unwrap();
        assert_eq!(nodes.len(), 2);
        assert!(nodes[0].is_dir && nodes[0].children == 9);
        assert_eq!((nodes[1].size, nodes[1].is_dir), (1234, false));
        assert!(parse_nodes(&serde_json::json!({"result":[{"Name":"../x"}]})).is_err());
        assert!(parse_nodes(&serde_json::json!({"oops":1})).is_err());
        assert!(
            parse_nodes(&serde_json::json!({"result":[{"Name":"a","ContentLength":-1}]})).is_err()
        );
    }
}
