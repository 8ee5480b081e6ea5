//! Building OData requests: string literals, filters, query strings and URLs.
//!
//! Kept apart from the HTTP code so the quoting rules, which decide whether a name with a quote
//! or a `&` in it can inject into the query, are tested on their own.

/// An OData string literal: single-quoted, an embedded `'` doubled (OData ABNF `SQUOTE-in-string`).
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `Name eq '<name>'`
pub fn name_eq(name: &str) -> String {
    format!("Name eq {}", quote(name))
}

/// `startswith(Name,'<prefix>')`
pub fn name_startswith(prefix: &str) -> String {
    format!("startswith(Name,{})", quote(prefix))
}

/// `Id eq '<id>'` (quoted, as the CREODIAS/CDSE catalogue accepts it).
pub fn id_eq(id: &str) -> String {
    format!("Id eq {}", quote(id))
}

/// Percent-encodes a query value. Everything but RFC 3986 unreserved characters is encoded, and
/// a space becomes `%20`, never `+`: some OData servers do not read `+` as a space.
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `{base}/Products` with the given system query options (`$filter`, `$top`, ...), values
/// encoded. A trailing `/` on the base is tolerated.
pub fn products_url(base: &url::Url, params: &[(&str, String)]) -> url::Url {
    let mut url = base.clone();
    let path = format!("{}/Products", base.path().trim_end_matches('/'));
    url.set_path(&path);
    let query: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    url.set_query((!query.is_empty()).then(|| query.join("&")).as_deref());
    url
}

/// `{base}/Products(<id>)`, the entity by key. Only called with a checked UUID, which needs no
/// quoting or encoding.
pub fn entity_url(base: &url::Url, id: &str) -> url::Url {
    let mut url = base.clone();
    let path = format!("{}/Products({id})", base.path().trim_end_matches('/'));
    url.set_path(&path);
    url.set_query(None);
    url
}

/// Whether `s` is a UUID in the 8-4-4-4-12 hex form the catalogue uses for `Id`.
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// The extension of a product name (`SAFE` of `X.SAFE`, `SEN3`, `nc`), if the last dot is
/// followed by 1 to [`MAX_EXTENSION`] letters or digits.
pub fn extension(name: &str) -> Option<&str> {
    let (stem, ext) = name.rsplit_once('.')?;
    (!stem.is_empty() && is_extension(ext)).then_some(ext)
}

/// Whether `ext` (without the dot) looks like a file extension rather than a name field.
pub fn is_extension(ext: &str) -> bool {
    (1..=MAX_EXTENSION).contains(&ext.len()) && ext.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Longest suffix counted as an extension: `SAFE`, `SEN3`, `nc`, `tif`, `zip` are all shorter;
/// Sentinel name fields are longer (`20180927T073143`), so they are never mistaken for one.
const MAX_EXTENSION: usize = 5;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_are_doubled_and_everything_is_encoded() {
        assert_eq!(quote("it's"), "'it''s'");
        assert_eq!(name_eq("a'b"), "Name eq 'a''b'");
        assert_eq!(name_startswith("X"), "startswith(Name,'X')");
        assert_eq!(
            encode("Name eq 'a&b=c+d'"),
            "Name%20eq%20%27a%26b%3Dc%2Bd%27"
        );
        assert_eq!(encode("é"), "%C3%A9");
    }

    #[test]
    fn urls() {
        let base = url::Url::parse("https://datahub.example/odata/v1/").unwrap();
        let u = products_url(
            &base,
            &[("$filter", name_eq("X.SAFE")), ("$top", "2".into())],
        );
        assert_eq!(
            u.as_str(),
            "https://datahub.example/odata/v1/Products?$filter=Name%20eq%20%27X.SAFE%27&$top=2"
        );
        let u = products_url(&url::Url::parse("http://h:1/odata/v1").unwrap(), &[]);
        assert_eq!(u.as_str(), "http://h:1/odata/v1/Products");
        let u = entity_url(&base, "db0c8ef3-8ec0-5185-a537-812dad3c58f8");
        assert_eq!(
            u.as_str(),
            "https://datahub.example/odata/v1/Products(db0c8ef3-8ec0-5185-a537-812dad3c58f8)"
        );
        // A decoded filter reads back exactly, the quote included.
        let u = products_url(&base, &[("$filter", name_eq("a'b c&d"))]);
        let (_, v) = u.query_pairs().next().unwrap();
        assert_eq!(v, "Name eq 'a''b c&d'");
    }

    #[test]
    fn uuid_and_extension() {
        assert!(is_uuid("db0c8ef3-8ec0-5185-a537-812dad3c58f8"));
        assert!(is_uuid("DB0C8EF3-8EC0-5185-A537-812DAD3C58F8"));
        assert!(!is_uuid("db0c8ef3-8ec0-5185-a537-812dad3c58f"));
        assert!(!is_uuid("db0c8ef3x8ec0-5185-a537-812dad3c58f8"));
        assert_eq!(extension("S2A_X_20180927T073143.SAFE"), Some("SAFE"));
        assert_eq!(extension("S3A_X_002.SEN3"), Some("SEN3"));
        assert_eq!(extension("S5P_X_20180430T035011.nc"), Some("nc"));
        assert_eq!(extension("S2A_MSIL1C_20180927T051221_N0206"), None);
        assert_eq!(extension(".hidden"), None);
        assert_eq!(extension("a.b_c"), None);
    }
}
