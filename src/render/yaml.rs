//! A small block-YAML writer for JSON values (Helm values files). serde_yaml's emitter costs about
//! 0.1 ms per small document, a third of the whole budget for 1,000 clusters; this one writes the
//! same data in a few microseconds. Strings are always double-quoted JSON strings (valid YAML, and
//! never misread as a number, boolean or null); keys are left plain only when they cannot be misread.

use std::fmt::Write;

use serde_json::Value;

/// `value` as a YAML document (no trailing newline).
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::with_capacity(256);
    match value {
        Value::Object(map) if !map.is_empty() => write_map(&mut out, map, 0),
        Value::Array(items) if !items.is_empty() => write_list(&mut out, items, 0),
        scalar => write_scalar(&mut out, scalar),
    }
    while out.ends_with('\n') {
        out.pop();
    }
    out
}

fn indent(out: &mut String, level: usize) {
    for _ in 0..level {
        out.push_str("  ");
    }
}

fn write_map(out: &mut String, map: &serde_json::Map<String, Value>, level: usize) {
    for (i, (key, value)) in map.iter().enumerate() {
        // The first entry of a map inside a list item continues the `- ` line.
        if i > 0 || !out.ends_with("- ") {
            indent(out, level);
        }
        write_key(out, key);
        out.push(':');
        write_child(out, value, level + 1);
    }
}

fn write_list(out: &mut String, items: &[Value], level: usize) {
    for item in items {
        indent(out, level);
        out.push_str("- ");
        match item {
            Value::Object(map) if !map.is_empty() => write_map(out, map, level + 1),
            Value::Array(inner) if !inner.is_empty() => {
                out.push('\n');
                write_list(out, inner, level + 1);
            }
            scalar => {
                write_scalar(out, scalar);
                out.push('\n');
            }
        }
    }
}

/// What follows `key:` — a nested block on the next lines, or ` scalar`.
fn write_child(out: &mut String, value: &Value, level: usize) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            out.push('\n');
            write_map(out, map, level);
        }
        // Lists under a key sit at the key's own indentation, as kubectl and Helm write them.
        Value::Array(items) if !items.is_empty() => {
            out.push('\n');
            write_list(out, items, level - 1);
        }
        scalar => {
            out.push(' ');
            write_scalar(out, scalar);
            out.push('\n');
        }
    }
}

fn write_scalar(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::String(s) => write_quoted(out, s),
        Value::Array(_) => out.push_str("[]"),
        Value::Object(_) => out.push_str("{}"),
    }
}

fn write_quoted(out: &mut String, s: &str) {
    // A JSON string is a YAML double-quoted scalar; serde_json escapes what YAML needs escaped.
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\"")));
}

fn write_key(out: &mut String, key: &str) {
    if plain_key(key) {
        out.push_str(key);
    } else {
        write_quoted(out, key);
    }
}

/// Keys such as `controller`, `kube-state-metrics` or `app.kubernetes.io/name` read the same plain;
/// `on`, `yes`, `1` or anything with other characters are quoted.
fn plain_key(key: &str) -> bool {
    let mut chars = key.chars();
    let starts_well = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    let rest_ok = key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    let ambiguous = matches!(
        key.to_ascii_lowercase().as_str(),
        "y" | "n" | "yes" | "no" | "on" | "off" | "true" | "false" | "null"
    );
    starts_well && rest_ok && !ambiguous
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_through_a_real_yaml_parser() {
        let value = json!({
            "controller": {"replicaCount": 3, "resources": {"limits": {"memory": "1Gi"}}},
            "on": "yes", "1x": "0123", "empty": {}, "none": [], "nil": null, "f": 1.5,
            "tolerations": [
                {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"},
                "plain", ["nested", {"a": "b"}], {}
            ],
            "text": "line one\nline: two # not a comment",
            "app.kubernetes.io/name": "x",
        });
        let text = to_yaml(&value);
        let back: Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(back, value, "{text}");
        assert!(
            text.contains("\ncontroller:\n  replicaCount: 3\n"),
            "{text}"
        );
        assert!(text.contains("\"on\": \"yes\""), "{text}");
    }

    #[test]
    fn scalars_and_empty_documents() {
        assert_eq!(to_yaml(&json!({})), "{}");
        assert_eq!(to_yaml(&json!("s")), "\"s\"");
    }
}
