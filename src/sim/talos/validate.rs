//! How the simulated node judges a config before accepting it. Real Talos decodes strictly (a refusal
//! there is a plain error, gRPC `Unknown`, "failed to parse config: …") and then validates
//! (`InvalidArgument`); the simulator stands in for the decoder with either the
//! official JSON Schema of the node's Talos minor (tests set `KILN_REFERENCE_SCHEMAS`) or a built-in
//! structural check that needs no file at run time.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_yaml::Value;

use super::config::v1alpha1;

/// Judges a config for a node running Talos `v1.<minor>`; `Err` carries the message the node returns.
pub trait ConfigValidator: Send + Sync {
    /// `text` is the config as received; `docs` its parsed YAML documents.
    fn validate(&self, minor: u32, text: &str, docs: &[Value]) -> Result<(), String>;
}

/// Multi-document kinds kiln generates or an operator commonly adds, per the contracts of 1.12 and 1.13.
/// 1.11 takes only the v1alpha1 document plus these few.
const KINDS_1_11: &[&str] = &[
    "HostnameConfig",
    "RegistryMirrorConfig",
    "VolumeConfig",
    "UserVolumeConfig",
];
const KINDS_1_12: &[&str] = &[
    "HostnameConfig",
    "LinkConfig",
    "LinkAliasConfig",
    "Layer2VIPConfig",
    "ResolverConfig",
    "TimeSyncConfig",
    "StaticHostConfig",
    "DHCPv4Config",
    "DHCPv6Config",
    "VLANConfig",
    "BondConfig",
    "BridgeConfig",
    "RegistryMirrorConfig",
    "RegistryAuthConfig",
    "RegistryTLSConfig",
    "KubeSpanConfig",
    "VolumeConfig",
    "UserVolumeConfig",
    "RawVolumeConfig",
    "ExistingVolumeConfig",
    "SwapVolumeConfig",
    "ZswapConfig",
    "TrustedRootsConfig",
    "ExtensionServiceConfig",
    "EventSinkConfig",
    "KmsgLogConfig",
    "WatchdogTimerConfig",
];

/// kiln's strict decoder of the node's contract (`talos::config::decode`: unknown fields and kinds, bad
/// enums and types, Talos's runtime rules), for the minors kiln renders; for any other minor, a
/// structural check of what Talos's decoder insists on: YAML documents that are mappings, exactly one
/// v1alpha1 document with known top-level keys, a valid machine type, the OS CA, an `https://` endpoint,
/// and only document kinds the node's version knows (each with `apiVersion: v1alpha1`).
#[derive(Debug, Default)]
pub struct BuiltinValidator;

impl ConfigValidator for BuiltinValidator {
    fn validate(&self, minor: u32, text: &str, docs: &[Value]) -> Result<(), String> {
        use crate::talos::config::{Contract, decode};
        if let Ok(contract) = Contract::for_version(crate::spec::Version::new(1, minor, 0)) {
            return decode(text, contract).map(drop).map_err(|e| e.to_string());
        }
        structural(minor, docs)
    }
}

fn structural(minor: u32, docs: &[Value]) -> Result<(), String> {
    let mut v1_count = 0;
    for (i, doc) in docs.iter().enumerate() {
        let map = doc
            .as_mapping()
            .ok_or(format!("document {i}: not a mapping"))?;
        match doc.get("kind").and_then(Value::as_str) {
            None => {
                if doc.get("version").and_then(Value::as_str) != Some("v1alpha1") {
                    return Err(format!("document {i}: missing kind"));
                }
                v1_count += 1;
                for key in map.keys() {
                    let key = key.as_str().unwrap_or_default();
                    if !["version", "debug", "persist", "machine", "cluster"].contains(&key) {
                        return Err(format!("unknown keys found during decoding: {key}"));
                    }
                }
            }
            Some(kind) => {
                let known = if minor <= 11 { KINDS_1_11 } else { KINDS_1_12 };
                if !known.contains(&kind) {
                    return Err(format!(
                        "unknown document kind {kind:?} for Talos v1.{minor}"
                    ));
                }
                if doc.get("apiVersion").and_then(Value::as_str) != Some("v1alpha1") {
                    return Err(format!(
                        "document {i} ({kind}): apiVersion must be v1alpha1"
                    ));
                }
            }
        }
    }
    if v1_count != 1 {
        return Err(format!(
            "expected exactly one v1alpha1 document, found {v1_count}"
        ));
    }
    let v1 = v1alpha1(docs).expect("counted above");
    let machine = v1.get("machine").ok_or("machine section is required")?;
    match machine.get("type").and_then(Value::as_str) {
        Some("controlplane") | Some("worker") => {}
        other => return Err(format!("machine.type: unknown machine type {other:?}")),
    }
    if machine
        .get("ca")
        .and_then(|c| c.get("crt"))
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err("machine.ca: certificate is required".into());
    }
    let endpoint = v1
        .get("cluster")
        .and_then(|c| c.get("controlPlane"))
        .and_then(|c| c.get("endpoint"))
        .and_then(Value::as_str)
        .ok_or("cluster.controlPlane.endpoint is required")?;
    if !endpoint.starts_with("https://") {
        return Err(format!(
            "cluster.controlPlane.endpoint: {endpoint:?} must be an https:// URL"
        ));
    }
    Ok(())
}

/// The official schema of each Talos minor, read from `<dir>/talos/config-v1.<minor>.schema.json`. Each
/// document is validated against the definition its kind names (the root's `oneOf` would only say
/// "matches none"), so the message names the offending field as Talos's own validation would.
pub struct SchemaValidator {
    dir: PathBuf,
    cache: Mutex<HashMap<u32, serde_json::Value>>,
}

impl SchemaValidator {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// From `KILN_REFERENCE_SCHEMAS`, when set.
    pub fn from_env() -> Option<Self> {
        std::env::var_os("KILN_REFERENCE_SCHEMAS").map(|d| Self::new(PathBuf::from(d)))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn schema(&self, minor: u32) -> Result<serde_json::Value, String> {
        let mut cache = self.cache.lock().expect("schema cache lock");
        if let Some(s) = cache.get(&minor) {
            return Ok(s.clone());
        }
        let path = self
            .dir
            .join("talos")
            .join(format!("config-v1.{minor}.schema.json"));
        let text = std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "simulator: cannot read the Talos v1.{minor} schema {}: {e}",
                path.display()
            )
        })?;
        let schema: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| format!("simulator: {}: {e}", path.display()))?;
        cache.insert(minor, schema.clone());
        Ok(schema)
    }
}

fn definition_for(root: &serde_json::Value, doc: &serde_json::Value) -> Option<String> {
    let defs = root.get("$defs")?.as_object()?;
    match doc.get("kind").and_then(|k| k.as_str()) {
        None => Some("v1alpha1.Config".to_owned()),
        Some(kind) => defs.iter().find_map(|(name, def)| {
            let kinds = def.pointer("/properties/kind/enum")?.as_array()?;
            kinds
                .iter()
                .any(|k| k.as_str() == Some(kind))
                .then(|| name.clone())
        }),
    }
}

impl ConfigValidator for SchemaValidator {
    fn validate(&self, minor: u32, _text: &str, docs: &[Value]) -> Result<(), String> {
        let root = self.schema(minor)?;
        if v1alpha1(docs).is_none() {
            return Err("the applied machine configuration doesn't contain v1alpha1 config".into());
        }
        for (i, doc) in docs.iter().enumerate() {
            let json: serde_json::Value = serde_json::to_value(doc)
                .map_err(|e| format!("document {i}: not representable as JSON: {e}"))?;
            let kind = json
                .get("kind")
                .and_then(|k| k.as_str())
                .unwrap_or("v1alpha1")
                .to_owned();
            let def = definition_for(&root, &json).ok_or_else(|| {
                format!("document {i}: unknown document kind {kind:?} for Talos v1.{minor}")
            })?;
            let mut schema = root.clone();
            let obj = schema.as_object_mut().expect("schema root is an object");
            obj.remove("oneOf");
            obj.insert(
                "$ref".into(),
                serde_json::Value::String(format!("#/$defs/{def}")),
            );
            let validator = jsonschema::validator_for(&schema)
                .map_err(|e| format!("simulator: schema {def}: {e}"))?;
            let errors: Vec<String> = validator
                .iter_errors(&json)
                .map(|e| format!("{kind} {}: {e}", e.instance_path()))
                .collect();
            if !errors.is_empty() {
                return Err(format!(
                    "{} errors validating config:\n{}",
                    errors.len(),
                    errors.join("\n")
                ));
            }
        }
        Ok(())
    }
}
