//! Files inside a product (OData Nodes) as objects of their own, so that every layer of this
//! crate (the download client's retries and token, the no-Range stream and spool, the disk
//! cache, the block cache, read-ahead) serves one file of a product exactly as it serves a
//! whole product.
//!
//! A node file is addressed by a *node id*, `<product uuid>/<folder>/.../<file>` (the path as
//! the Nodes listing gives it, from the product's top folder down). The download client builds
//! its URL from the download template: `.../Products({id})/$value` becomes
//! `.../Products(<uuid>)/Nodes(<folder>)/.../Nodes(<file>)/$value`, keys unquoted (the service
//! refuses quoted ones; see docs/protocol.md, "Nodes"). Each node id is its own cache object, so
//! a file read once is never fetched again while it stays cached, and reading one file never
//! fetches the product's zip.

use crate::FetchError;

/// The node id of the file at `path` (folders from the product's top, then the file name)
/// inside product `product_id`.
pub fn node_id(product_id: &str, path: &[String]) -> String {
    let mut id = product_id.to_string();
    for p in path {
        id.push('/');
        id.push_str(p);
    }
    id
}

/// `(product uuid, path)` of a node id; `None` for a product id (or anything that is not a
/// UUID followed by clean path segments: no empty, `.` or `..` segment).
pub fn split_node_id(id: &str) -> Option<(&str, Vec<&str>)> {
    let (uuid, rest) = id.split_once('/')?;
    if !is_uuid(uuid) {
        return None;
    }
    let parts: Vec<&str> = rest.split('/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return None;
    }
    Some((uuid, parts))
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The download URL (without credentials) of a node id, from the product download template;
/// `None` when `id` is a product id. Only the OData form of the template (`...({id})/$value`)
/// has node URLs; the legacy `/download/{id}` form gives an error saying so.
pub(crate) fn node_url(template: &str, id: &str) -> Option<Result<String, FetchError>> {
    let (uuid, path) = split_node_id(id)?;
    const TAIL: &str = "({id})/$value";
    let Some(at) = template.find(TAIL) else {
        return Some(Err(FetchError::Protocol(format!(
            "the download URL template {template:?} has no OData form (...Products({{id}})/$value), \
             so single files of a product cannot be downloaded; use the .zip"
        ))));
    };
    let mut nodes = String::new();
    for p in path {
        nodes.push_str("/Nodes(");
        nodes.push_str(&encode_key(p));
        nodes.push(')');
    }
    Some(Ok(format!(
        "{}({}){}/$value{}",
        &template[..at],
        uuid.to_ascii_lowercase(),
        nodes,
        &template[at + TAIL.len()..]
    )))
}

/// A node key in a path: unquoted, unreserved characters as they are, anything else
/// percent-encoded.
fn encode_key(key: &str) -> String {
    key.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: &str = "db0c8ef3-8ec0-5185-a537-812dad3c58f8";

    #[test]
    fn node_ids_round_trip_and_product_ids_are_not_nodes() {
        let id = node_id(U, &["X.SAFE".into(), "GRANULE".into(), "a.xml".into()]);
        assert_eq!(id, format!("{U}/X.SAFE/GRANULE/a.xml"));
        assert_eq!(
            split_node_id(&id),
            Some((U, vec!["X.SAFE", "GRANULE", "a.xml"]))
        );
        assert_eq!(split_node_id(U), None);
        assert_eq!(split_node_id("a b/../c"), None);
        assert_eq!(split_node_id(&format!("{U}/X/../y")), None);
        assert_eq!(split_node_id(&format!("{U}//y")), None);
    }

    #[test]
    fn node_urls_come_from_the_odata_template() {
        let t = "https://zipper.example/odata/v1/Products({id})/$value";
        let id = node_id(U, &["X.SAFE".into(), "a b.xml".into()]);
        assert_eq!(
            node_url(t, &id).unwrap().unwrap(),
            format!("https://zipper.example/odata/v1/Products({U})/Nodes(X.SAFE)/Nodes(a%20b.xml)/$value")
        );
        assert!(node_url(t, U).is_none());
        assert!(matches!(
            node_url("https://z.example/download/{id}", &id),
            Some(Err(FetchError::Protocol(_)))
        ));
    }
}
