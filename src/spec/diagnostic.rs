//! One finding about an intent file, phrased for the person who edits it.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// `file:line:col: field: message (hint)`. Line and column are 1-based and absent when the
/// file gives none (e.g. a file that is not valid UTF-8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Field path such as `spec.controlPlane.nodes[1].ip`; empty for the whole document.
    pub path: String,
    pub message: String,
    /// What would be valid, or how to fix it.
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        if self.severity == Severity::Warning {
            f.write_str(": warning")?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

/// A finding before it is tied to a file and a position: what the rules produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub path: String,
    pub message: String,
    pub hint: Option<String>,
}

impl Finding {
    pub fn error(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            path: path.into(),
            message: message.into(),
            hint: None,
        }
    }
    pub fn warning(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(path, message)
        }
    }
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// The most characters of one value an error message shows (DESIGN.md §2): a file that is a
/// symlink to a token, or a secret pasted into the wrong field, must not reach a CI log whole.
pub const MAX_ECHO: usize = 80;

/// `value`, cut to [`MAX_ECHO`] characters with `…` after a cut.
pub fn clip(value: &str) -> String {
    match value.char_indices().nth(MAX_ECHO) {
        Some((cut, _)) => format!("{}…", &value[..cut]),
        None => value.to_owned(),
    }
}

/// `message` with every value in it cut to [`MAX_ECHO`] characters: each quoted run (`"…"`,
/// `` `…` ``, `'…'`) and each unquoted word. Messages come from rules, the schema validator and
/// serde, which quote values each their own way; cutting here, where every diagnostic passes,
/// covers them all.
pub fn clip_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(4 * MAX_ECHO));
    let mut rest = message;
    while !rest.is_empty() {
        let next = rest.find(['"', '`', '\'']);
        let (plain, quoted) = match next {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        clip_words(plain, &mut out);
        if quoted.is_empty() {
            break;
        }
        let q = quoted.chars().next().unwrap_or('"');
        let body = &quoted[1..];
        // An unclosed quote (an apostrophe in prose) quotes nothing.
        match body.find(q) {
            Some(end) if q != '\'' || end > 0 => {
                out.push(q);
                out.push_str(&clip(&body[..end]));
                out.push(q);
                rest = &body[end + 1..];
            }
            _ => {
                out.push(q);
                rest = body;
            }
        }
    }
    out
}

fn clip_words(text: &str, out: &mut String) {
    let mut word_start = None;
    for (i, c) in text
        .char_indices()
        .chain(std::iter::once((text.len(), ' ')))
    {
        match (c.is_whitespace(), word_start) {
            (false, None) => word_start = Some(i),
            (true, Some(s)) => {
                out.push_str(&clip(&text[s..i]));
                word_start = None;
                if i < text.len() {
                    out.push(c);
                }
            }
            (true, None) if i < text.len() => out.push(c),
            _ => {}
        }
    }
}

/// A serde error about secret material (a bundle, a store file, a secret store's answer) told
/// by field and position only. serde's own text quotes the offending value (`invalid type: string
/// "…"`), which there is key material; only the messages that name a field and no value are kept.
pub fn parse_error_without_values(
    message: &str,
    line: Option<usize>,
    column: Option<usize>,
) -> String {
    // serde_yaml ends with " at line L column C" and starts typed errors with the field path.
    let message = message.split(" at line ").next().unwrap_or_default();
    let (field, rest) = match message.split_once(": ") {
        Some((p, m)) if !p.is_empty() && !p.contains(' ') => (Some(p), m),
        _ => (None, message),
    };
    let safe = ["missing field `", "unknown field `", "duplicate field `"];
    let what = if safe.iter().any(|s| rest.starts_with(s)) {
        // The field name, then serde's list of expected fields: names only, no values.
        rest.split_once(", expected")
            .map_or(rest, |(head, _)| head)
            .to_owned()
    } else if rest.starts_with("invalid type") || rest.starts_with("invalid value") {
        "a value of the wrong type or form".to_owned()
    } else if rest.starts_with("invalid length") {
        "a list or string of the wrong length".to_owned()
    } else {
        "not parseable".to_owned()
    };
    let mut out = match field {
        Some(f) => format!("{f}: {what}"),
        None => what,
    };
    if let Some(l) = line {
        out.push_str(&format!(" at line {l}"));
        if let Some(c) = column {
            out.push_str(&format!(" column {c}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_keep_field_and_position_and_drop_values() {
        let key = "LS0tLS1CRUdJTiBQUklWQVRFIEtFWS0tLS0t";
        let yaml = format!("certs.os.key: invalid type: string \"{key}\", expected a map");
        let said = parse_error_without_values(&yaml, Some(3), Some(7));
        assert_eq!(
            said,
            "certs.os.key: a value of the wrong type or form at line 3 column 7"
        );
        let json = format!("invalid value: string \"{key}\", expected base64");
        assert!(!parse_error_without_values(&json, Some(1), None).contains(key));
        let missing = "cluster: missing field `secret` at line 2 column 3";
        assert_eq!(
            parse_error_without_values(missing, Some(2), Some(3)),
            "cluster: missing field `secret` at line 2 column 3"
        );
    }

    #[test]
    fn values_are_cut_to_eighty_characters() {
        let secret = "s".repeat(500);
        let long = |m: &str| m.contains(&"s".repeat(MAX_ECHO + 1));
        for message in [
            format!("\"{secret}\" is not of type \"object\""),
            format!("invalid type: string \"{secret}\", expected a map"),
            format!("`{secret}` is not a Kubernetes label value"),
            format!("unquoted {secret} word"),
            format!("it's '{secret}'"),
        ] {
            let cut = clip_values(&message);
            assert!(!long(&cut), "{cut}");
            assert!(cut.contains(&"s".repeat(MAX_ECHO)), "{cut}");
        }
        let short = "`pve1` is not valid: it's \"x\" here";
        assert_eq!(clip_values(short), short);
        assert_eq!(clip("ü".repeat(81).as_str()).chars().count(), 81);
    }
}
