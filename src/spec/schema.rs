//! The intent file's JSON Schema (generated from the types) and structural validation against it.
//! Validating the YAML against the schema first is what lets `kiln validate` report *every*
//! structural error of a file with its path, where serde stops at the first.

use std::sync::OnceLock;

use jsonschema::error::ValidationErrorKind;
use jsonschema::paths::LocationSegment;
use serde_json::Value;

use super::diagnostic::Finding;
use super::document::ClusterDocument;
use super::position::{join_index, join_key};

/// The JSON Schema of the intent file, as committed in `schemas/cluster.schema.json`.
///
/// Optional fields are written as absent, never as `null`, so the generated `null` alternatives
/// are removed: an editor then offers the field's real type, and `enabled: ~` is refused instead
/// of silently meaning "default".
pub fn json_schema() -> Value {
    let schema = schemars::schema_for!(ClusterDocument);
    let mut value = serde_json::to_value(schema).expect("a schema is JSON");
    strip_null(&mut value);
    value
}

fn strip_null(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let Some(Value::Array(types)) = map.get_mut("type") {
                types.retain(|t| t != "null");
                if types.len() == 1 {
                    let only = types.remove(0);
                    map.insert("type".into(), only);
                }
            }
            if let Some(Value::Array(alts)) = map.get_mut("anyOf") {
                alts.retain(|a| {
                    a.get("type").is_none_or(|t| t != "null")
                        || a.as_object().is_some_and(|o| o.len() > 1)
                });
                if alts.len() == 1 {
                    let Some(Value::Object(only)) = alts.pop() else {
                        unreachable!("schemars writes subschemas as objects")
                    };
                    map.remove("anyOf");
                    for (k, val) in only {
                        map.entry(k).or_insert(val);
                    }
                }
            }
            map.values_mut().for_each(strip_null);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_null),
        _ => {}
    }
}

/// The schema, generated once per process.
fn schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(json_schema)
}

fn validator() -> &'static jsonschema::Validator {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        jsonschema::options()
            .should_validate_formats(true)
            .build(schema())
            .expect("the generated schema compiles")
    })
}

/// Every structural problem of `instance`, each with its field path.
pub fn structural_findings(instance: &Value) -> Vec<Finding> {
    let v = validator();
    if v.is_valid(instance) {
        return Vec::new();
    }
    let mut out = Vec::new();
    for err in v.iter_errors(instance) {
        let path = dotted(err.instance_path().segments());
        let shown = short(err.instance());
        match err.kind() {
            ValidationErrorKind::AdditionalProperties { unexpected } => {
                let allowed = allowed_fields(schema(), &path);
                for field in unexpected {
                    let mut f =
                        Finding::error(join_key(&path, field), format!("unknown field `{field}`"));
                    if !allowed.is_empty() {
                        f = f.hint(format!("valid fields here: {}", allowed.join(", ")));
                    }
                    out.push(f);
                }
            }
            ValidationErrorKind::Required { property } => {
                let name = property.as_str().unwrap_or_default();
                let full = join_key(&path, name);
                let mut f = Finding::error(full.clone(), format!("missing field `{name}`"));
                if let Some(h) = field_hint(&full) {
                    f = f.hint(h);
                }
                out.push(f);
            }
            ValidationErrorKind::Pattern { .. }
            | ValidationErrorKind::Format { .. }
            | ValidationErrorKind::AnyOf { .. }
            | ValidationErrorKind::OneOfNotValid { .. } => {
                let mut f = Finding::error(path.clone(), format!("{shown} is not valid here"));
                if let Some(h) = field_hint(&path) {
                    f = f.hint(h);
                }
                out.push(f);
            }
            _ => {
                let mut f = Finding::error(path.clone(), err.to_string());
                if let Some(h) = field_hint(&path) {
                    f = f.hint(h);
                }
                out.push(f);
            }
        }
    }
    out
}

fn short(v: &Value) -> String {
    super::diagnostic::clip(&v.to_string())
}

fn dotted<'a>(segments: impl Iterator<Item = LocationSegment<'a>>) -> String {
    let mut path = String::new();
    for seg in segments {
        path = match seg {
            LocationSegment::Property(p) => join_key(&path, &p),
            LocationSegment::Index(i) => join_index(&path, i),
        };
    }
    path
}

/// The field names the schema allows at `path`, for the hint of an
/// unknown-field error.
fn allowed_fields(schema: &Value, path: &str) -> Vec<String> {
    let mut node = schema;
    for part in split_path(path) {
        node = resolve(schema, node);
        node = match part {
            Part::Key(k) => match node.get("properties").and_then(|p| p.get(&k)) {
                Some(n) => n,
                None => match node.get("additionalProperties") {
                    Some(n) if n.is_object() => n,
                    _ => return Vec::new(),
                },
            },
            Part::Index => match node.get("items") {
                Some(n) => n,
                None => return Vec::new(),
            },
        };
    }
    let node = resolve(schema, node);
    node.get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

/// Follows a local `$ref` (`#/$defs/Name`).
fn resolve<'a>(root: &'a Value, node: &'a Value) -> &'a Value {
    match node.get("$ref").and_then(Value::as_str) {
        Some(r) => r
            .strip_prefix("#")
            .and_then(|ptr| root.pointer(ptr))
            .unwrap_or(node),
        None => node,
    }
}

enum Part {
    Key(String),
    Index,
}

/// Splits a dotted path back into keys and indices (the inverse of `join_key`/`join_index`).
fn split_path(path: &str) -> Vec<Part> {
    let mut parts = Vec::new();
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            rest = r;
            continue;
        }
        if let Some(r) = rest.strip_prefix("[\"") {
            let end = r.find("\"]").unwrap_or(r.len());
            parts.push(Part::Key(r[..end].to_owned()));
            rest = r.get(end + 2..).unwrap_or("");
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']').unwrap_or(r.len());
            parts.push(Part::Index);
            rest = r.get(end + 1..).unwrap_or("");
        } else {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            parts.push(Part::Key(rest[..end].to_owned()));
            rest = &rest[end..];
        }
    }
    parts
}

/// What a valid value looks like, by field name.
pub fn field_hint(path: &str) -> Option<&'static str> {
    let last = path.rsplit(['.', '[']).next().unwrap_or(path);
    Some(match last {
        "apiVersion" => "write apiVersion: kiln.dev/v1alpha1",
        "kind" => "write kind: Cluster",
        "name" if path == "metadata.name" => {
            "a DNS-1123 label of at most 50 characters (lowercase letters, digits, `-`), equal to the file's stem"
        }
        "template" => "a template VMID (100..999999999) or a map {pve-node: VMID}",
        "version" => "vMAJOR.MINOR.PATCH, e.g. v1.13.9",
        "mac" => "six hex pairs like BC:24:11:00:00:01",
        "lbRange" => "FIRST-LAST in the node network, e.g. 192.168.2.200-192.168.2.220",
        "vip" | "gateway" | "ip" => "an IPv4 address such as 192.168.2.160",
        "nameservers" => "a list of IP addresses, e.g. [192.168.2.1]",
        "podCIDR" | "serviceCIDR" => "an IPv4 network such as 10.244.0.0/16",
        "prefixLength" => "the node network's prefix length, 1..32, e.g. 24",
        "vlan" => "a VLAN tag, 1..4094",
        "vmidPrefix" => "VMIDs are this prefix followed by the node number: 40 gives 401, 402, …",
        "schedule" => "a duration such as 6h or 1d",
        "cores" | "memoryGiB" | "diskGiB" | "keep" => "a positive whole number",
        "number" => "a node number of 1 or more",
        "enabled" => "true or false",
        "deletionProtection" => "true or false",
        "installDisk" => "a device path such as /dev/sda",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_has_no_null_alternatives() {
        let text = json_schema().to_string();
        assert!(!text.contains("\"null\""), "{text}");
    }

    #[test]
    fn split_path_inverts_join() {
        let parts = split_path("spec.registries.mirrors[\"docker.io\"][0]");
        assert_eq!(parts.len(), 5);
        assert!(matches!(&parts[3], Part::Key(k) if k == "docker.io"));
    }
}
