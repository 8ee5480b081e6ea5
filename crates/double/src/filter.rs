//! The OData `$filter` subset the catalogue understands, parsed into an expression and
//! evaluated against catalogue entities.
//!
//! Supported: `Field eq|ne|gt|ge|lt|le literal`, `contains(Field,'s')`, `startswith(...)`,
//! `endswith(...)`, `and`, `or`, `not`, parentheses. Fields are paths into the entity
//! (`Name`, `Id`, `Online`, `ContentLength`, `ContentDate/Start`, `Collection/Name`, ...);
//! `Collection/Name` also matches the store's plain `"Collection": "SENTINEL-2"`. Literals are
//! 'strings' ('' escapes a quote), numbers, true/false, null and bare ISO datetimes
//! (`2020-01-01T00:00:00.000Z`), compared as instants. Also, as the real catalogue writes them:
//! `OData.CSC.Intersects(area=geography'SRID=4326;POLYGON((lon lat,...))')`, approximated by
//! the intersection of the polygon's and the `Footprint`'s bounding boxes (a product whose
//! footprint only grazes the box's corner may match; fine for tests of a client's filters), and
//! lambdas over collections such as `Attributes/OData.CSC.DoubleAttribute/any(att:att/Name eq
//! 'cloudCover' and att/OData.CSC.DoubleAttribute/Value le 40)`, whose type casts
//! (`OData.CSC.*` path segments) are ignored. Anything else is an error, which the catalogue
//! answers with 400, as the real one does for filters it does not know.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Lit {
    Str(String),
    Num(f64),
    Bool(bool),
    Null,
    /// Milliseconds since the Unix epoch.
    Time(i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Func {
    Contains,
    StartsWith,
    EndsWith,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Cmp(String, Op, Lit),
    Call(Func, String, String),
    /// `OData.CSC.Intersects`: the polygon's bounding box (min lon, min lat, max lon, max lat).
    Intersects([f64; 4]),
    /// `Collection/any(var:expr)`: the collection's path, the variable, the condition.
    Any(String, String, Box<Expr>),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Open,
    Close,
    Comma,
}

fn lex(s: &str) -> Result<Vec<Tok>, String> {
    let cs: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < cs.len() {
        let c = cs[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                out.push(Tok::Open);
                i += 1
            }
            ')' => {
                out.push(Tok::Close);
                i += 1
            }
            ',' => {
                out.push(Tok::Comma);
                i += 1
            }
            '\'' => {
                let mut v = String::new();
                i += 1;
                loop {
                    match cs.get(i) {
                        None => return Err("unterminated string literal".into()),
                        Some('\'') if cs.get(i + 1) == Some(&'\'') => {
                            v.push('\'');
                            i += 2
                        }
                        Some('\'') => {
                            i += 1;
                            break;
                        }
                        Some(&ch) => {
                            v.push(ch);
                            i += 1
                        }
                    }
                }
                out.push(Tok::Str(v));
            }
            _ => {
                let start = i;
                while i < cs.len() && !cs[i].is_whitespace() && !"(),'".contains(cs[i]) {
                    i += 1;
                }
                out.push(Tok::Word(cs[start..i].iter().collect()));
            }
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek_word(&self, w: &str) -> bool {
        matches!(self.toks.get(self.pos), Some(Tok::Word(x)) if x.eq_ignore_ascii_case(w))
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }
    fn expect(&mut self, t: Tok) -> Result<(), String> {
        match self.next() {
            Some(x) if x == t => Ok(()),
            other => Err(format!("expected {t:?}, found {other:?}")),
        }
    }
    fn or(&mut self) -> Result<Expr, String> {
        let mut e = self.and()?;
        while self.peek_word("or") {
            self.pos += 1;
            e = Expr::Or(Box::new(e), Box::new(self.and()?));
        }
        Ok(e)
    }
    fn and(&mut self) -> Result<Expr, String> {
        let mut e = self.unary()?;
        while self.peek_word("and") {
            self.pos += 1;
            e = Expr::And(Box::new(e), Box::new(self.unary()?));
        }
        Ok(e)
    }
    fn unary(&mut self) -> Result<Expr, String> {
        if self.peek_word("not") {
            self.pos += 1;
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        match self.next() {
            Some(Tok::Open) => {
                let e = self.or()?;
                self.expect(Tok::Close)?;
                Ok(e)
            }
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("OData.CSC.Intersects") => {
                self.expect(Tok::Open)?;
                match self.next() {
                    Some(Tok::Word(a)) if a.eq_ignore_ascii_case("area=geography") => {}
                    other => return Err(format!("expected area=geography, found {other:?}")),
                }
                let wkt = match self.next() {
                    Some(Tok::Str(v)) => v,
                    other => return Err(format!("expected a geography literal, found {other:?}")),
                };
                self.expect(Tok::Close)?;
                let bbox = bbox_of(&wkt).ok_or_else(|| format!("unsupported geography: {wkt}"))?;
                Ok(Expr::Intersects(bbox))
            }
            Some(Tok::Word(w))
                if w.to_ascii_lowercase().ends_with("/any")
                    && self.toks.get(self.pos) == Some(&Tok::Open) =>
            {
                self.pos += 1;
                let (var, rest) = match self.toks.get(self.pos) {
                    Some(Tok::Word(x)) => match x.split_once(':') {
                        Some((v, r)) => (v.to_string(), r.to_string()),
                        None => return Err(format!("expected var:condition in any(), found {x}")),
                    },
                    other => {
                        return Err(format!("expected var:condition in any(), found {other:?}"))
                    }
                };
                self.toks[self.pos] = Tok::Word(rest);
                let inner = self.or()?;
                self.expect(Tok::Close)?;
                Ok(Expr::Any(
                    w[..w.len() - 4].to_string(),
                    var,
                    Box::new(inner),
                ))
            }
            Some(Tok::Word(w)) => {
                let func = match w.to_ascii_lowercase().as_str() {
                    "contains" => Some(Func::Contains),
                    "startswith" => Some(Func::StartsWith),
                    "endswith" => Some(Func::EndsWith),
                    _ => None,
                };
                if let (Some(f), Some(Tok::Open)) = (func, self.toks.get(self.pos)) {
                    self.pos += 1;
                    let field = match self.next() {
                        Some(Tok::Word(field)) => field,
                        other => return Err(format!("expected a field, found {other:?}")),
                    };
                    self.expect(Tok::Comma)?;
                    let value = match self.next() {
                        Some(Tok::Str(v)) => v,
                        other => return Err(format!("expected a string, found {other:?}")),
                    };
                    self.expect(Tok::Close)?;
                    return Ok(Expr::Call(f, field, value));
                }
                if w.contains('(')
                    || !w
                        .chars()
                        .all(|c| c.is_alphanumeric() || c == '/' || c == '_' || c == '.')
                {
                    return Err(format!("unsupported field or function: {w}"));
                }
                let op = match self.next() {
                    Some(Tok::Word(o)) => match o.to_ascii_lowercase().as_str() {
                        "eq" => Op::Eq,
                        "ne" => Op::Ne,
                        "gt" => Op::Gt,
                        "ge" => Op::Ge,
                        "lt" => Op::Lt,
                        "le" => Op::Le,
                        _ => return Err(format!("unsupported operator: {o}")),
                    },
                    other => {
                        return Err(format!("expected an operator after {w}, found {other:?}"))
                    }
                };
                let lit = match self.next() {
                    Some(Tok::Str(s)) => Lit::Str(s),
                    Some(Tok::Word(v)) => literal(&v)?,
                    other => return Err(format!("expected a value, found {other:?}")),
                };
                Ok(Expr::Cmp(w, op, lit))
            }
            other => Err(format!("unexpected {other:?}")),
        }
    }
}

fn literal(v: &str) -> Result<Lit, String> {
    match v.to_ascii_lowercase().as_str() {
        "true" => return Ok(Lit::Bool(true)),
        "false" => return Ok(Lit::Bool(false)),
        "null" => return Ok(Lit::Null),
        _ => {}
    }
    if let Some(t) = parse_time(v) {
        return Ok(Lit::Time(t));
    }
    v.parse::<f64>()
        .map(Lit::Num)
        .map_err(|_| format!("unsupported literal: {v}"))
}

pub(crate) fn parse(filter: &str) -> Result<Expr, String> {
    let mut p = Parser {
        toks: lex(filter)?,
        pos: 0,
    };
    let e = p.or()?;
    if p.pos < p.toks.len() {
        return Err(format!("unexpected trailing {:?}", p.toks[p.pos]));
    }
    Ok(e)
}

/// `2018-09-27T05:12:21.024Z`, `2018-09-27T05:12:21Z`, `2018-09-27T05:12:21+00:00`,
/// `2018-09-27` -> milliseconds since the epoch (UTC; offsets other than zero are applied).
pub(crate) fn parse_time(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    let (mut h, mut mi, mut sec, mut ms, mut offset_min) = (0, 0, 0, 0i64, 0i64);
    let mut rest = &s[10..];
    if !rest.is_empty() {
        if !(rest.starts_with('T') || rest.starts_with('t') || rest.starts_with(' '))
            || rest.len() < 9
        {
            return None;
        }
        let t = &rest[1..];
        if t.as_bytes()[2] != b':' || t.as_bytes()[5] != b':' {
            return None;
        }
        h = num(11..13)?;
        mi = num(14..16)?;
        sec = num(17..19)?;
        rest = &s[19..];
        if let Some(frac) = rest.strip_prefix('.') {
            let digits: String = frac.chars().take_while(|c| c.is_ascii_digit()).collect();
            if digits.is_empty() {
                return None;
            }
            let padded = format!("{:0<3}", &digits[..digits.len().min(3)]);
            ms = padded.parse().ok()?;
            rest = &frac[digits.len()..];
        }
        match rest {
            "" | "Z" | "z" => {}
            o if (o.starts_with('+') || o.starts_with('-')) && o.len() == 6 && &o[3..4] == ":" => {
                let oh: i64 = o[1..3].parse().ok()?;
                let om: i64 = o[4..6].parse().ok()?;
                offset_min = (oh * 60 + om) * if o.starts_with('-') { -1 } else { 1 };
            }
            _ => return None,
        }
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60;
    Some(secs * 1000 + ms)
}

/// The value at `path` (`A/B`) of an entity. `Collection/Name` falls back to a plain
/// `Collection` string, the store's form.
pub(crate) fn field<'a>(
    entity: &'a serde_json::Map<String, Value>,
    path: &str,
) -> Option<&'a Value> {
    // Type casts (`OData.CSC.DoubleAttribute`) name no member: skipped.
    let mut parts = path.split('/').filter(|p| !p.starts_with("OData.CSC."));
    let mut v = entity.get(parts.next()?)?;
    for p in parts {
        v = match v {
            Value::Object(m) => m.get(p)?,
            Value::String(_) if p == "Name" => v,
            _ => return None,
        };
    }
    Some(v)
}

fn compare(v: Option<&Value>, lit: &Lit) -> Option<std::cmp::Ordering> {
    match (v, lit) {
        (Some(Value::String(s)), Lit::Time(t)) => parse_time(s).map(|x| x.cmp(t)),
        (Some(Value::String(s)), Lit::Str(l)) => Some(s.as_str().cmp(l.as_str())),
        (Some(Value::Number(n)), Lit::Num(l)) => n.as_f64()?.partial_cmp(l),
        (Some(Value::Bool(b)), Lit::Bool(l)) => Some(b.cmp(l)),
        (None | Some(Value::Null), Lit::Null) => Some(std::cmp::Ordering::Equal),
        _ => None,
    }
}

/// The bounding box (min lon, min lat, max lon, max lat) of the numbers of a WKT polygon
/// (`SRID=4326;POLYGON((x y, ...))`, optionally inside `geography'...'`).
fn bbox_of(wkt: &str) -> Option<[f64; 4]> {
    let upper = wkt.to_ascii_uppercase();
    let body = &wkt[upper.find("POLYGON")? + "POLYGON".len()..];
    let nums: Vec<f64> = body
        .split(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == 'e' || c == 'E'))
        .filter(|t| !t.is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    if nums.len() < 6 || !nums.len().is_multiple_of(2) {
        return None;
    }
    let mut b = [f64::MAX, f64::MAX, f64::MIN, f64::MIN];
    for p in nums.chunks(2) {
        b = [
            b[0].min(p[0]),
            b[1].min(p[1]),
            b[2].max(p[0]),
            b[3].max(p[1]),
        ];
    }
    Some(b)
}

pub(crate) fn matches(e: &Expr, entity: &serde_json::Map<String, Value>) -> bool {
    use std::cmp::Ordering::*;
    match e {
        Expr::Intersects(a) => match entity
            .get("Footprint")
            .and_then(Value::as_str)
            .and_then(bbox_of)
        {
            Some(f) => a[0] <= f[2] && f[0] <= a[2] && a[1] <= f[3] && f[1] <= a[3],
            None => false,
        },
        Expr::Any(path, var, cond) => match field(entity, path) {
            Some(Value::Array(items)) => items.iter().any(|item| {
                let mut scope = serde_json::Map::new();
                scope.insert(var.clone(), item.clone());
                matches(cond, &scope)
            }),
            _ => false,
        },
        Expr::And(a, b) => matches(a, entity) && matches(b, entity),
        Expr::Or(a, b) => matches(a, entity) || matches(b, entity),
        Expr::Not(a) => !matches(a, entity),
        Expr::Cmp(f, op, lit) => {
            let v = field(entity, f);
            // Ids are UUIDs: compared without regard to case.
            let ord = match (f.as_str(), v, lit) {
                ("Id", Some(Value::String(s)), Lit::Str(l)) => {
                    Some(s.to_ascii_lowercase().cmp(&l.to_ascii_lowercase()))
                }
                _ => compare(v, lit),
            };
            match (op, ord) {
                (Op::Ne, o) => o != Some(Equal),
                (_, None) => false,
                (Op::Eq, Some(o)) => o == Equal,
                (Op::Gt, Some(o)) => o == Greater,
                (Op::Ge, Some(o)) => o != Less,
                (Op::Lt, Some(o)) => o == Less,
                (Op::Le, Some(o)) => o != Greater,
            }
        }
        Expr::Call(func, f, needle) => match field(entity, f) {
            Some(Value::String(s)) => match func {
                Func::Contains => s.contains(needle.as_str()),
                Func::StartsWith => s.starts_with(needle.as_str()),
                Func::EndsWith => s.ends_with(needle.as_str()),
            },
            _ => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entity() -> serde_json::Map<String, Value> {
        json!({
            "Id": "AB-12", "Name": "S2A_MSIL1C_X.SAFE", "Online": true, "ContentLength": 100,
            "Collection": "SENTINEL-2",
            "ContentDate": {"Start": "2018-09-27T05:12:21.024Z", "End": "2018-09-27T05:12:21.024Z"},
            "Footprint": "geography'SRID=4326;POLYGON ((68.8 -50.5, 69.9 -50.5, 69.9 -49.5, 68.8 -49.5, 68.8 -50.5))'",
            "Attributes": [
                {"@odata.type": "#OData.CSC.DoubleAttribute", "Name": "cloudCover", "Value": 23.5, "ValueType": "Double"}
            ]
        })
        .as_object()
        .unwrap()
        .clone()
    }

    fn m(f: &str) -> bool {
        matches(&parse(f).unwrap(), &entity())
    }

    #[test]
    fn filters_match_what_they_should() {
        assert!(m("Name eq 'S2A_MSIL1C_X.SAFE'"));
        assert!(!m("Name eq 'S2B'"));
        assert!(m("Id eq 'ab-12'"));
        assert!(m("contains(Name,'MSIL1C') and startswith(Name,'S2A')"));
        assert!(!m("contains(Name,'MSIL2A')"));
        assert!(m("Collection/Name eq 'SENTINEL-2'"));
        assert!(m("ContentDate/Start gt 2018-01-01T00:00:00.000Z and ContentDate/Start lt 2019-01-01T00:00:00Z"));
        assert!(!m("ContentDate/Start ge 2018-09-27T05:12:21.025Z"));
        assert!(m("ContentDate/Start le 2018-09-27T05:12:21.024Z"));
        // The footprint's box is about 68.8..69.9 E, 49.5..50.5 S (its name's tile, 42FXL).
        assert!(m("OData.CSC.Intersects(area=geography'SRID=4326;POLYGON((60 -60,80 -60,80 -40,60 -40,60 -60))')"));
        assert!(!m(
            "OData.CSC.Intersects(area=geography'SRID=4326;POLYGON((0 0,1 0,1 1,0 1,0 0))')"
        ));
        assert!(m("Attributes/OData.CSC.DoubleAttribute/any(att:att/Name eq 'cloudCover' and att/OData.CSC.DoubleAttribute/Value le 40)"));
        assert!(!m("Attributes/OData.CSC.DoubleAttribute/any(att:att/Name eq 'cloudCover' and att/OData.CSC.DoubleAttribute/Value le 10)"));
        assert!(m("Online eq true and ContentLength gt 50"));
        assert!(m(
            "(Name eq 'x' or Online eq true) and not (Online eq false)"
        ));
        assert!(m("Name eq 'it''s' or endswith(Name,'.SAFE')"));
    }

    #[test]
    fn unknown_syntax_is_an_error() {
        assert!(parse("Name foo 'x'").is_err());
        assert!(parse("OData.CSC.Intersects(area=geography'SRID=4326;POINT(1 2)')").is_err());
        assert!(parse("Name eq 'x' and").is_err());
        assert!(parse("Name eq 'x").is_err());
    }

    #[test]
    fn times_parse_to_epoch_millis() {
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_time("1970-01-02"), Some(86_400_000));
        assert_eq!(parse_time("2000-03-01T00:00:00.5Z"), Some(951_868_800_500));
        assert_eq!(parse_time("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_time("yesterday"), None);
    }
}
