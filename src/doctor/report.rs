//! The doctor's report: checks grouped by area, each ok / warn / fail, printed as text for a
//! person (a summary line per area at the end) or as JSON for a script. Nothing here knows how
//! a check is made; the text of every check is written by its maker, free of secrets.

use serde::Serialize;

/// How a check came out. Ordered: the worst of a section is its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    /// Works, but something is worth knowing or fixing; a mount would still work.
    Warn,
    /// A mount would not work (or this area could not be checked because of one that failed).
    Fail,
}

impl Level {
    fn word(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "fail",
        }
    }
}

/// One fact found, with what it means.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub level: Level,
    pub text: String,
    /// The facts behind the text, for scripts (numbers, header values); never a secret.
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub value: serde_json::Value,
}

/// The checks of one area.
#[derive(Debug, Clone, Serialize)]
pub struct Section {
    pub name: &'static str,
    pub status: Level,
    pub checks: Vec<Check>,
}

impl Section {
    pub fn new(name: &'static str) -> Self {
        Section {
            name,
            status: Level::Ok,
            checks: Vec::new(),
        }
    }

    pub fn add(&mut self, name: &'static str, level: Level, text: impl Into<String>) {
        self.add_value(name, level, text, serde_json::Value::Null);
    }

    pub fn add_value(
        &mut self,
        name: &'static str,
        level: Level,
        text: impl Into<String>,
        value: serde_json::Value,
    ) {
        self.status = self.status.max(level);
        self.checks.push(Check {
            name,
            level,
            text: text.into(),
            value,
        });
    }

    pub fn ok(&mut self, name: &'static str, text: impl Into<String>) {
        self.add(name, Level::Ok, text);
    }

    pub fn warn(&mut self, name: &'static str, text: impl Into<String>) {
        self.add(name, Level::Warn, text);
    }

    pub fn fail(&mut self, name: &'static str, text: impl Into<String>) {
        self.add(name, Level::Fail, text);
    }

    /// The first check at the section's status, to say why in the summary.
    fn reason(&self) -> Option<&Check> {
        (self.status != Level::Ok)
            .then(|| self.checks.iter().find(|c| c.level == self.status))
            .flatten()
    }
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub version: &'static str,
    pub sections: Vec<Section>,
    /// True when no check failed.
    pub mount_would_work: bool,
}

impl Report {
    pub fn new(sections: Vec<Section>) -> Self {
        let mount_would_work = sections.iter().all(|s| s.status != Level::Fail);
        Report {
            version: env!("CARGO_PKG_VERSION"),
            sections,
            mount_would_work,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the report serialises")
    }

    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = format!(
            "eodata-mount {} doctor (this output holds no password, TOTP secret, code or token: paste it into a bug report as it is)\n",
            self.version
        );
        for s in &self.sections {
            let _ = writeln!(out, "\n{}", s.name);
            for c in &s.checks {
                let _ = writeln!(out, "  [{:<4}] {}: {}", c.level.word(), c.name, c.text);
            }
        }
        let _ = writeln!(out, "\nsummary");
        let width = self
            .sections
            .iter()
            .map(|s| s.name.len())
            .max()
            .unwrap_or(0);
        for s in &self.sections {
            let why = s
                .reason()
                .map(|c| format!(" ({}: {})", c.name, c.text))
                .unwrap_or_default();
            let _ = writeln!(out, "  {:<width$}  {}{why}", s.name, s.status.word());
        }
        let verdict = if self.mount_would_work {
            "a mount would work"
        } else {
            "a mount would not work: see the failed checks above"
        };
        let _ = writeln!(out, "{verdict}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_check_is_the_status_and_a_failure_stops_the_mount() {
        let mut a = Section::new("a");
        a.ok("x", "fine");
        a.warn("y", "hmm");
        let mut b = Section::new("b");
        b.ok("z", "fine");
        let r = Report::new(vec![a.clone(), b.clone()]);
        assert_eq!(r.sections[0].status, Level::Warn);
        assert!(r.mount_would_work);
        assert!(
            r.to_text().contains("  a  warn (y: hmm)"),
            "{}",
            r.to_text()
        );
        b.fail("w", "broken");
        let r = Report::new(vec![a, b]);
        assert!(!r.mount_would_work);
        assert!(r
            .to_text()
            .ends_with("a mount would not work: see the failed checks above\n"));
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(json["sections"][1]["status"], "fail");
        assert_eq!(json["mount_would_work"], false);
    }
}
