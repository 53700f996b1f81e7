//! Shared helpers of the render tests: the example clusters, the reference schemas (read where they
//! are, never copied), and parsing of rendered files.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kiln::render::{RenderSettings, Rendered};
use kiln::spec::{Cluster, ClusterDocument};
use serde::Deserialize;
use serde_json::{Map, Value};

pub fn crate_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `KILN_REFERENCE_SCHEMAS`, else `<crate root>/../shared/schemas`. Missing is a failure, never a skip.
pub fn schemas_dir() -> PathBuf {
    let dir = std::env::var_os("KILN_REFERENCE_SCHEMAS")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate_root().join("../shared/schemas"));
    assert!(
        dir.join("crds").is_dir() && dir.join("k8s").is_dir() && dir.join("helm").is_dir(),
        "reference schemas not found at {}: set KILN_REFERENCE_SCHEMAS to the shared schemas folder \
         (crds/, k8s/, helm/), as scripts/test does",
        dir.display()
    );
    dir
}

pub fn read_json(relative: &str) -> Value {
    let path = schemas_dir().join(relative);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read reference schema {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn document(yaml: &str) -> ClusterDocument {
    serde_yaml::from_str(yaml).expect("example cluster parses")
}

/// The example clusters of `examples/clusters/`, sorted by name.
pub fn example_documents() -> Vec<ClusterDocument> {
    let dir = crate_root().join("examples/clusters");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("examples/clusters exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    paths.sort();
    assert!(
        !paths.is_empty(),
        "no example clusters in {}",
        dir.display()
    );
    paths
        .iter()
        .map(|p| document(&std::fs::read_to_string(p).unwrap()))
        .collect()
}

pub fn expand(doc: &ClusterDocument) -> Cluster {
    Cluster::expand(doc).unwrap_or_else(|e| panic!("{e:?}"))
}

pub fn example_clusters() -> Vec<Cluster> {
    example_documents().iter().map(expand).collect()
}

/// Settings from a real kiln.toml, with a project of kiln's own (the restricted AppProject).
pub fn settings() -> RenderSettings {
    let toml = r#"
state_dir = "/var/lib/kiln"
[git]
url = "ssh://git@forge.lan/infra/gitops.git"
[proxmox]
url = "https://pve1.lan:8006"
token_id = "kiln@pve!reconciler"
token_secret_file = "/run/credentials/kiln.service/proxmox-token"
[secrets]
addr = "https://vault.lan:8200"
token_file = "/run/credentials/kiln.service/vault-token"
[argocd]
repo_url = "https://forge.lan/infra/gitops.git"
project = "kiln"
"#;
    let config = kiln::config::Config::parse(std::path::Path::new("kiln.toml"), toml).unwrap();
    RenderSettings::from_config(&config)
}

pub fn render(clusters: &[Cluster], settings: &RenderSettings) -> Rendered {
    kiln::render::render(clusters, settings, &BTreeMap::new()).expect("render succeeds")
}

/// Every YAML document of a rendered file, as JSON (empty documents dropped).
pub fn documents(path: &str, bytes: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(bytes).unwrap_or_else(|e| panic!("{path}: not UTF-8: {e}"));
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{path}: invalid YAML: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

/// All documents of the output with the file each came from.
pub fn all_documents(out: &Rendered) -> Vec<(String, Value)> {
    out.iter()
        .flat_map(|(path, bytes)| {
            documents(path, bytes)
                .into_iter()
                .map(move |d| (path.clone(), d))
        })
        .collect()
}

pub fn kind_of(doc: &Value) -> (&str, &str) {
    (
        doc["apiVersion"].as_str().unwrap_or(""),
        doc["kind"].as_str().unwrap_or(""),
    )
}

/// Makes a CRD's structural schema strict, as `kubectl apply --validate=strict` is: an object that
/// lists its properties accepts no others, unless it says it preserves unknown fields. (The API server
/// would silently prune a misspelt field; the test should catch it.)
pub fn strict_crd(schema: &mut Value) {
    if let Value::Object(map) = schema {
        let preserves = map
            .get("x-kubernetes-preserve-unknown-fields")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if map.contains_key("properties") && !map.contains_key("additionalProperties") && !preserves
        {
            map.insert("additionalProperties".into(), Value::Bool(false));
        }
        for value in map.values_mut() {
            strict_crd(value);
        }
    } else if let Value::Array(items) = schema {
        items.iter_mut().for_each(strict_crd);
    }
}

/// Helm's merge of a values file over the chart's defaults: maps merge recursively, other values
/// replace, `null` deletes. (Written here again on purpose, not taken from kiln.)
pub fn helm_merge(defaults: &mut Map<String, Value>, values: &Map<String, Value>) {
    for (k, v) in values {
        match (defaults.get_mut(k), v) {
            (_, Value::Null) => {
                defaults.remove(k);
            }
            (Some(Value::Object(d)), Value::Object(o)) => helm_merge(d, o),
            _ => {
                defaults.insert(k.clone(), v.clone());
            }
        }
    }
}

pub struct Validator {
    inner: jsonschema::Validator,
    pub name: String,
}

impl Validator {
    pub fn new(relative: &str, strict: bool) -> Self {
        let mut schema = read_json(relative);
        if strict {
            strict_crd(&mut schema);
        }
        let inner = jsonschema::validator_for(&schema)
            .unwrap_or_else(|e| panic!("reference schema {relative} does not compile: {e}"));
        Self {
            inner,
            name: relative.to_owned(),
        }
    }

    /// The violations, one line each.
    pub fn errors(&self, instance: &Value) -> Vec<String> {
        self.inner
            .iter_errors(instance)
            .map(|e| format!("{} at {}: {e}", self.name, e.instance_path()))
            .collect()
    }
}

/// The reference schema of a kind, if the reference set has one.
pub fn schema_for(api_version: &str, kind: &str) -> Option<(&'static str, bool)> {
    Some(match (api_version, kind) {
        ("argoproj.io/v1alpha1", "Application") => {
            ("crds/application-argoproj.io-v1alpha1.json", true)
        }
        ("argoproj.io/v1alpha1", "ApplicationSet") => {
            ("crds/applicationset-argoproj.io-v1alpha1.json", true)
        }
        ("argoproj.io/v1alpha1", "AppProject") => {
            ("crds/appproject-argoproj.io-v1alpha1.json", true)
        }
        ("external-secrets.io/v1", "ExternalSecret") => {
            ("crds/externalsecret-external-secrets.io-v1.json", true)
        }
        ("external-secrets.io/v1", "ClusterSecretStore") => {
            ("crds/clustersecretstore-external-secrets.io-v1.json", true)
        }
        // The k8s/ files are strict already (additionalProperties: false everywhere).
        ("v1", "Namespace") => ("k8s/namespace-core-v1.json", false),
        ("v1", "ResourceQuota") => ("k8s/resourcequota-core-v1.json", false),
        ("v1", "LimitRange") => ("k8s/limitrange-core-v1.json", false),
        ("v1", "ServiceAccount") => ("k8s/serviceaccount-core-v1.json", false),
        ("v1", "ConfigMap") => ("k8s/configmap-core-v1.json", false),
        ("v1", "Secret") => ("k8s/secret-core-v1.json", false),
        ("networking.k8s.io/v1", "NetworkPolicy") => {
            ("k8s/networkpolicy-networking.k8s.io-v1.json", false)
        }
        ("rbac.authorization.k8s.io/v1", "Role") => {
            ("k8s/role-rbac.authorization.k8s.io-v1.json", false)
        }
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
            ("k8s/rolebinding-rbac.authorization.k8s.io-v1.json", false)
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
            ("k8s/clusterrole-rbac.authorization.k8s.io-v1.json", false)
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => (
            "k8s/clusterrolebinding-rbac.authorization.k8s.io-v1.json",
            false,
        ),
        _ => return None,
    })
}

/// Charts whose values the reference set has a schema for: app → (defaults, schema).
pub const CHART_SCHEMAS: [(&str, &str, &str); 3] = [
    (
        "cert-manager",
        "helm/cert-manager-v1.21.1.values.defaults.json",
        "helm/cert-manager-v1.21.1.values.schema.json",
    ),
    (
        "external-secrets",
        "helm/external-secrets-2.9.0.values.defaults.json",
        "helm/external-secrets-2.9.0.values.schema.json",
    ),
    (
        "metallb",
        "helm/metallb-0.16.1.values.defaults.json",
        "helm/metallb-0.16.1.values.schema.json",
    ),
];
