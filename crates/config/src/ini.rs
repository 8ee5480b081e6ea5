//! A reader for INI files with the semantics of Python's `configparser.ConfigParser()`.
//!
//! The tutorial this project grew from keeps credentials in a `secrets.conf` read by Python's
//! `configparser`; a file that works there must work here unchanged, byte for byte. Neither
//! well-kept Rust crate has those semantics (checked against their sources):
//! - `configparser` 3.3 strips inline comments by default (a `#` inside a password would cut
//!   it), lower-cases section names, silently overwrites duplicate keys and has no `%%`;
//! - `rust-ini` 0.21 handles backslash escapes and quotes (a `\` or `"` in a password would
//!   change), keeps duplicate keys as multiple values and has no `%%` either.
//!
//! So this small reader follows CPython's `RawConfigParser._read` and `BasicInterpolation`
//! (defaults: `strict=True`, `empty_lines_in_values=True`, no inline comments):
//! - `[section]` headers, case-sensitive names; `[DEFAULT]` values show through every section;
//! - `key = value` or `key: value` (the first `=` or `:` splits), keys lower-cased, keys and
//!   values stripped;
//! - only lines whose first non-blank character is `#` or `;` are comments;
//! - a line indented deeper than its key's line continues the value (joined with `\n`), blank
//!   lines inside a value are kept, trailing ones dropped;
//! - duplicate sections and duplicate keys in one section are errors, as is a key before any
//!   section or a line that is neither;
//! - when a value is read, `%%` becomes `%` and `%(name)s` is replaced by that key's value.
//!   Where Python would raise (a lone `%`, an unknown name), the text is taken literally.

use std::collections::{HashMap, HashSet};

/// Name of the section whose keys every other section inherits, as in Python.
const DEFAULT_SECTION: &str = "DEFAULT";

/// How deep `%(name)s` references may nest; Python's `MAX_INTERPOLATION_DEPTH`. Deeper (or
/// cyclic) references are left as written.
const MAX_INTERPOLATION_DEPTH: usize = 10;

/// A section's keys while reading: each key with its value's lines, in file order.
type RawKeys = Vec<(String, Vec<String>)>;

/// Why a file could not be read as INI. `line` is 1-based.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IniError {
    pub line: usize,
    pub message: String,
}

/// A parsed file: raw (uninterpolated) values by section, in file order.
#[derive(Debug, Default)]
pub struct Ini {
    defaults: HashMap<String, String>,
    sections: Vec<(String, HashMap<String, String>)>,
}

impl Ini {
    /// Parses `text` exactly as `ConfigParser().read_string(text)` would (see the module doc).
    pub fn parse(text: &str) -> Result<Ini, IniError> {
        // A UTF-8 byte-order mark, as some Windows editors write, is not part of the first line.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut reader = Reader::default();
        for (index, line) in text.lines().enumerate() {
            reader.line(index + 1, line)?;
        }
        let join = |keys: RawKeys| -> HashMap<String, String> {
            keys.into_iter()
                .map(|(k, lines)| (k, lines.join("\n").trim_end().to_string()))
                .collect()
        };
        Ok(Ini {
            defaults: join(reader.defaults),
            sections: reader
                .sections
                .into_iter()
                .map(|(n, k)| (n, join(k)))
                .collect(),
        })
    }

    /// Whether the file has this section (case-sensitive, as in Python; `DEFAULT` is not one).
    pub fn has_section(&self, section: &str) -> bool {
        self.section(section).is_some()
    }

    /// Section names in file order.
    pub fn section_names(&self) -> impl Iterator<Item = &str> {
        self.sections.iter().map(|(n, _)| n.as_str())
    }

    /// Keys of a section, including those inherited from `[DEFAULT]`.
    pub fn keys(&self, section: &str) -> Vec<&str> {
        let mut keys: Vec<&str> = self
            .section(section)
            .into_iter()
            .flat_map(|s| s.keys())
            .chain(self.defaults.keys())
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// The interpolated value of `key` (any case) in `section`, falling back to `[DEFAULT]`,
    /// as `config[section][key]` gives it in Python. `None` when the section or key is absent.
    pub fn get(&self, section: &str, key: &str) -> Option<String> {
        let sect = self.section(section)?;
        let raw = self.lookup(sect, &key.to_lowercase())?;
        Some(self.interpolate(sect, raw, 1))
    }

    fn section(&self, name: &str) -> Option<&HashMap<String, String>> {
        self.sections
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s)
    }

    fn lookup<'a>(&'a self, sect: &'a HashMap<String, String>, key: &str) -> Option<&'a str> {
        sect.get(key)
            .or_else(|| self.defaults.get(key))
            .map(String::as_str)
    }

    /// `BasicInterpolation._interpolate_some`, taking literally what Python would reject.
    fn interpolate(&self, sect: &HashMap<String, String>, raw: &str, depth: usize) -> String {
        let mut out = String::with_capacity(raw.len());
        let mut rest = raw;
        while let Some(p) = rest.find('%') {
            out.push_str(&rest[..p]);
            rest = &rest[p..];
            if let Some(after) = rest.strip_prefix("%%") {
                out.push('%');
                rest = after;
                continue;
            }
            let reference = rest
                .strip_prefix("%(")
                .and_then(|r| r.find(")s").map(|end| (&r[..end], &r[end + 2..])))
                .filter(|(name, _)| !name.is_empty() && !name.contains(')'));
            match reference {
                Some((name, after)) if depth < MAX_INTERPOLATION_DEPTH => {
                    match self.lookup(sect, &name.to_lowercase()) {
                        Some(value) => {
                            out.push_str(&self.interpolate(sect, value, depth + 1));
                            rest = after;
                        }
                        None => {
                            out.push('%');
                            rest = &rest[1..];
                        }
                    }
                }
                _ => {
                    out.push('%');
                    rest = &rest[1..];
                }
            }
        }
        out.push_str(rest);
        out
    }
}

/// The parser's state between lines. Values are collected as lists of lines, joined at the
/// end, as Python does.
#[derive(Default)]
struct Reader {
    defaults: RawKeys,
    sections: Vec<(String, RawKeys)>,
    /// None: before any section; Some(None): in DEFAULT; Some(Some(i)): in sections[i].
    current: Option<Option<usize>>,
    seen_sections: HashSet<String>,
    seen_keys: HashSet<(String, String)>,
    /// The key whose value continuation lines extend.
    current_key: Option<usize>,
    indent_level: usize,
}

impl Reader {
    /// One line (`lineno` 1-based): blank or comment, a continuation of the current value, a
    /// section header, or `key = value`.
    fn line(&mut self, lineno: usize, line: &str) -> Result<(), IniError> {
        let stripped = line.trim();
        let is_comment = stripped.starts_with('#') || stripped.starts_with(';');
        let value = if is_comment { "" } else { stripped };
        if value.is_empty() {
            // Blank lines belong to the value being read; comment lines do not.
            if !is_comment {
                self.continue_value(String::new());
            }
            return Ok(());
        }
        let cur_indent = line.chars().take_while(|c| c.is_whitespace()).count();
        if self.current_key.is_some() && cur_indent > self.indent_level {
            self.continue_value(value.to_string());
            return Ok(());
        }
        self.indent_level = cur_indent;
        match section_header(value) {
            Some(name) => self.header(lineno, name),
            None => self.key(lineno, value),
        }
    }

    /// Adds a line to the value being read, if one is.
    fn continue_value(&mut self, text: String) {
        if let (Some(sect), Some(k)) = (self.current, self.current_key) {
            keys_of(sect, &mut self.defaults, &mut self.sections)[k]
                .1
                .push(text);
        }
    }

    fn header(&mut self, lineno: usize, name: &str) -> Result<(), IniError> {
        if name == DEFAULT_SECTION {
            self.current = Some(None);
        } else if self.seen_sections.contains(name) {
            return Err(IniError {
                line: lineno,
                message: format!("section [{name}] appears twice"),
            });
        } else {
            self.sections.push((name.to_string(), Vec::new()));
            self.current = Some(Some(self.sections.len() - 1));
        }
        self.seen_sections.insert(name.to_string());
        self.current_key = None;
        Ok(())
    }

    fn key(&mut self, lineno: usize, value: &str) -> Result<(), IniError> {
        let error = |message: String| IniError {
            line: lineno,
            message,
        };
        let Some(sect) = self.current else {
            return Err(error("a key comes before any [section] header".to_string()));
        };
        let Some(split) = value.find(['=', ':']) else {
            // The line's text is not quoted: it may be part of a password.
            return Err(error(
                "line is neither `[section]`, `key = value` nor a comment".to_string(),
            ));
        };
        let key = value[..split].trim_end().to_lowercase();
        if key.is_empty() {
            return Err(error("line has no key before its `=` or `:`".to_string()));
        }
        let section_name = match sect {
            None => DEFAULT_SECTION.to_string(),
            Some(i) => self.sections[i].0.clone(),
        };
        if !self.seen_keys.insert((section_name.clone(), key.clone())) {
            return Err(error(format!(
                "key '{key}' appears twice in section [{section_name}]"
            )));
        }
        let keys = keys_of(sect, &mut self.defaults, &mut self.sections);
        let raw = value[split + 1..].trim().to_string();
        // `seen_keys` guarantees the key is new in this section.
        keys.push((key, vec![raw]));
        self.current_key = Some(keys.len() - 1);
        Ok(())
    }
}

/// `[name]` -> `name`, following Python's `SECTCRE` (`\[(?P<header>.+)\]`, matched at the start
/// of the stripped line: the name runs to the last `]`, anything after it is ignored).
fn section_header(value: &str) -> Option<&str> {
    let inner = value.strip_prefix('[')?;
    let end = inner.rfind(']')?;
    (end > 0).then(|| &inner[..end])
}

fn keys_of<'a>(
    sect: Option<usize>,
    defaults: &'a mut RawKeys,
    sections: &'a mut [(String, RawKeys)],
) -> &'a mut RawKeys {
    match sect {
        None => defaults,
        Some(i) => &mut sections[i].1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(text: &str, section: &str, key: &str) -> Option<String> {
        Ini::parse(text).unwrap().get(section, key)
    }

    #[test]
    fn reads_the_tutorials_file() {
        let text = "[login]\nuser = person@example.com\npassword = qwer\ntotp_secret = 1234 ABCD 1234 ABCD 1234 ABCD 1234 ABCD\n";
        let ini = Ini::parse(text).unwrap();
        assert_eq!(ini.get("login", "user").unwrap(), "person@example.com");
        assert_eq!(ini.get("login", "password").unwrap(), "qwer");
        assert_eq!(
            ini.get("login", "totp_secret").unwrap(),
            "1234 ABCD 1234 ABCD 1234 ABCD 1234 ABCD"
        );
        assert_eq!(ini.section_names().collect::<Vec<_>>(), ["login"]);
    }

    #[test]
    fn separators_case_and_stripping() {
        let text = "[s]\n  USER :  a=b \nPassWord=x:y\n";
        assert_eq!(get(text, "s", "user").unwrap(), "a=b");
        assert_eq!(get(text, "s", "PASSWORD").unwrap(), "x:y");
        // Section names are case-sensitive in Python.
        assert!(!Ini::parse(text).unwrap().has_section("S"));
    }

    #[test]
    fn comments_only_at_line_start() {
        let text = "# top\n[s]\n  ; indented comment\nk = a#b ;c\n";
        assert_eq!(get(text, "s", "k").unwrap(), "a#b ;c");
    }

    #[test]
    fn percent_semantics() {
        let text = "[s]\na = 100%%\nb = 5% off\nc = x%(a)sy\nd = %(missing)s\ne = %\nf = %(e)s%%\n";
        assert_eq!(get(text, "s", "a").unwrap(), "100%");
        assert_eq!(get(text, "s", "b").unwrap(), "5% off");
        assert_eq!(get(text, "s", "c").unwrap(), "x100%y");
        assert_eq!(get(text, "s", "d").unwrap(), "%(missing)s");
        assert_eq!(get(text, "s", "e").unwrap(), "%");
        assert_eq!(get(text, "s", "f").unwrap(), "%%");
    }

    #[test]
    fn cyclic_references_do_not_loop() {
        let text = "[s]\na = %(b)s\nb = %(a)s\n";
        assert!(get(text, "s", "a").unwrap().contains("%(")); // stops at the depth limit
    }

    #[test]
    fn continuation_lines_as_python() {
        let text = "[s]\nk = one\n  two\n\n   three\n# comment inside\n  four\n\nnext = x\n";
        assert_eq!(get(text, "s", "k").unwrap(), "one\ntwo\n\nthree\nfour");
        assert_eq!(get(text, "s", "next").unwrap(), "x");
        // An indented line after a header is not a continuation; it is a key of its own.
        let text = "[s]\n  k = v\n";
        assert_eq!(get(text, "s", "k").unwrap(), "v");
        // Indented deeper than its key: even a [header] continues the value.
        let text = "[s]\nk = v\n  [t]\n";
        assert_eq!(get(text, "s", "k").unwrap(), "v\n[t]");
        // An empty first line stays (checked against CPython 3).
        assert_eq!(get("[s]\nk =\n  more\n", "s", "k").unwrap(), "\nmore");
    }

    #[test]
    fn default_section_shows_through() {
        // DEFAULT may be re-opened (Python only refuses duplicate keys in it).
        let text = "[DEFAULT]\nk = d\n[s]\nother = 1\n[DEFAULT]\nz = 1\n";
        let ini = Ini::parse(text).unwrap();
        assert_eq!(ini.get("s", "k").unwrap(), "d");
        assert!(!ini.has_section("DEFAULT"));
        assert_eq!(ini.keys("s"), ["k", "other", "z"]);
    }

    #[test]
    fn errors_like_python() {
        let e = Ini::parse("k = v\n").unwrap_err();
        assert_eq!(e.line, 1);
        assert!(e.message.contains("before any [section]"), "{e:?}");
        let e = Ini::parse("[s]\nk = 1\nK = 2\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(
            e.message.contains("'k' appears twice in section [s]"),
            "{e:?}"
        );
        let e = Ini::parse("[s]\n[t]\n[s]\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.message.contains("[s] appears twice"), "{e:?}");
        let e = Ini::parse("[s]\njust words\n").unwrap_err();
        assert_eq!(e.line, 2);
        let e = Ini::parse("[s]\n = v\n").unwrap_err();
        assert!(e.message.contains("no key"), "{e:?}");
    }

    #[test]
    fn header_takes_name_to_last_bracket_and_crlf_is_fine() {
        let text = "\u{feff}[login] trailing\r\nuser = u\r\n";
        assert_eq!(get(text, "login", "user").unwrap(), "u");
        assert!(Ini::parse("[]\n").is_err());
    }
}
