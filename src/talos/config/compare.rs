//! Whether the config a node runs is the one kiln renders for it, judged as documents (parsed YAML
//! values), never as bytes: Talos hands back what it was given (a read-only config's `Bytes()` are
//! the applied bytes, siderolabs/talos v1.13.9 `pkg/machinery/config/container/container.go`), but a
//! config applied by a person (`talosctl edit mc`) may order keys, quote or comment differently and
//! still mean the same thing.
//!
//! Documents are matched by what names them (`kind` and `name`; the v1alpha1 document has neither and
//! is named by `version: v1alpha1`), so their order in the stream does not matter either.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_yaml::Value;

#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("the {which} machine config is not YAML: {message}")]
    NotYaml {
        which: &'static str,
        message: String,
    },
}

/// The name of each document that is not the same in both streams, sorted (`v1alpha1`,
/// `RegistryMirrorConfig docker.io`, …); empty when the configs are equal as documents.
pub fn differing_documents(running: &str, rendered: &str) -> Result<Vec<String>, CompareError> {
    let running = keyed(running, "running")?;
    let rendered = keyed(rendered, "rendered")?;
    let mut names: Vec<String> = running
        .keys()
        .chain(rendered.keys())
        .filter(|k| running.get(*k) != rendered.get(*k))
        .cloned()
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

fn keyed(text: &str, which: &'static str) -> Result<BTreeMap<String, Value>, CompareError> {
    let mut out = BTreeMap::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = Value::deserialize(doc).map_err(|e| CompareError::NotYaml {
            which,
            message: e.to_string(),
        })?;
        // A stream may start or end with `---`: an empty document is no document.
        if value.is_null() {
            continue;
        }
        let mut key = document_name(&value);
        // Two documents of one name (which Talos refuses) still both count.
        while out.contains_key(&key) {
            key.push('\'');
        }
        out.insert(key, value);
    }
    Ok(out)
}

fn document_name(doc: &Value) -> String {
    let field = |k: &str| doc.get(k).and_then(Value::as_str);
    match (field("kind"), field("name")) {
        (Some(kind), Some(name)) => format!("{kind} {name}"),
        (Some(kind), None) => kind.to_owned(),
        _ => field("version").unwrap_or("v1alpha1").to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RENDERED: &str = "version: v1alpha1\nmachine:\n  type: worker\n  nodeLabels: {a: b}\n---\napiVersion: v1alpha1\nkind: RegistryMirrorConfig\nname: docker.io\nendpoints:\n  - url: https://m.lan\n---\napiVersion: v1alpha1\nkind: HostnameConfig\nhostname: w-4\n";

    #[test]
    fn the_same_documents_in_another_order_and_spelling_are_equal() {
        let running = "# edited by hand\napiVersion: v1alpha1\nkind: HostnameConfig\nhostname: \"w-4\"\n---\nmachine: {nodeLabels: {a: b}, type: worker}\nversion: v1alpha1\n---\nkind: RegistryMirrorConfig\napiVersion: v1alpha1\nname: docker.io\nendpoints: [{url: 'https://m.lan'}]\n---\n";
        assert_eq!(
            differing_documents(running, RENDERED).unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_changed_field_names_its_document() {
        let running = RENDERED.replace("nodeLabels: {a: b}", "nodeLabels: {a: c}");
        assert_eq!(
            differing_documents(&running, RENDERED).unwrap(),
            vec!["v1alpha1".to_owned()]
        );
        let running = RENDERED.replace("https://m.lan", "https://other.lan");
        assert_eq!(
            differing_documents(&running, RENDERED).unwrap(),
            vec!["RegistryMirrorConfig docker.io".to_owned()]
        );
    }

    #[test]
    fn a_missing_or_extra_document_differs() {
        let (without, _) = RENDERED
            .split_once("---\napiVersion: v1alpha1\nkind: Hostname")
            .unwrap();
        assert_eq!(
            differing_documents(without, RENDERED).unwrap(),
            vec!["HostnameConfig".to_owned()]
        );
        assert_eq!(
            differing_documents(RENDERED, without).unwrap(),
            vec!["HostnameConfig".to_owned()]
        );
    }

    #[test]
    fn text_that_is_not_yaml_is_an_error_not_a_difference() {
        assert!(differing_documents("a: [", RENDERED).is_err());
    }
}
