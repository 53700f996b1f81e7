//! Generated documents against the reference schemas.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::support::*;

/// Validates every document of `out`; returns the violations and the kinds seen.
fn validate_output(out: &kiln::render::Rendered) -> (Vec<String>, BTreeSet<String>) {
    let mut validators: BTreeMap<&'static str, Validator> = BTreeMap::new();
    let mut errors = Vec::new();
    let mut kinds = BTreeSet::new();
    let mut check = |path: &str, doc: &Value, errors: &mut Vec<String>| {
        let (api, kind) = kind_of(doc);
        match schema_for(api, kind) {
            Some((file, strict)) => {
                kinds.insert(kind.to_owned());
                let v = validators
                    .entry(file)
                    .or_insert_with(|| Validator::new(file, strict));
                errors.extend(v.errors(doc).into_iter().map(|e| format!("{path}: {e}")));
            }
            // metallb's own CRDs are not in the reference set; checked by shape in topology.rs.
            None if api == "metallb.io/v1beta1" => {
                kinds.insert(kind.to_owned());
            }
            None => errors.push(format!("{path}: no reference schema for {api} {kind}")),
        }
        // The schemas leave metadata.name optional; the API server does not.
        if doc["metadata"]["name"].as_str().is_none_or(str::is_empty) {
            errors.push(format!("{path}: {kind} without metadata.name"));
        }
    };
    for (path, doc) in all_documents(out) {
        if path.ends_with("/values.yaml") {
            continue;
        }
        check(&path, &doc, &mut errors);
        // The namespace Argo CD creates for a core app, with the labels the Application asks for.
        if let Some(meta) = doc.pointer("/spec/syncPolicy/managedNamespaceMetadata") {
            let ns = json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": doc["spec"]["destination"]["namespace"],
                    "labels": meta["labels"],
                },
            });
            check(&format!("{path} (managed namespace)"), &ns, &mut errors);
        }
    }
    (errors, kinds)
}

#[test]
fn every_document_validates_against_the_reference_schemas() {
    for settings in [settings(), kiln::render::RenderSettings::default()] {
        let out = render(&example_clusters(), &settings);
        let (errors, kinds) = validate_output(&out);
        assert!(
            errors.is_empty(),
            "{} violations:\n{}",
            errors.len(),
            errors.join("\n")
        );
        for kind in [
            "Application",
            "ApplicationSet",
            "AppProject",
            "ExternalSecret",
            "ClusterSecretStore",
            "Namespace",
            "ResourceQuota",
            "LimitRange",
            "NetworkPolicy",
            "ServiceAccount",
            "ClusterRoleBinding",
            "ConfigMap",
        ] {
            assert!(kinds.contains(kind), "no {kind} was rendered: {kinds:?}");
        }
    }
}

#[test]
fn a_misspelt_field_is_caught_by_the_strict_crd_schemas() {
    // The control for the test above: the same validation must reject a typo in an Application.
    let out = render(&example_clusters(), &settings());
    let path = "gitops/core/apps/production/metallb.yaml";
    let text = String::from_utf8(out[path].clone()).unwrap();
    let broken = text.replace("selfHeal: true", "selfHeel: true");
    assert_ne!(broken, text);
    let doc = &documents(path, broken.as_bytes())[0];
    let v = Validator::new("crds/application-argoproj.io-v1alpha1.json", true);
    assert!(
        v.errors(doc).iter().any(|e| e.contains("selfHeel")),
        "{:?}",
        v.errors(doc)
    );
}

fn values_errors(out: &kiln::render::Rendered) -> (Vec<String>, usize) {
    let mut errors = Vec::new();
    let mut checked = 0;
    for (app, defaults_file, schema_file) in CHART_SCHEMAS {
        let validator = Validator::new(schema_file, false);
        let prefix = format!("gitops/manifests/{app}/");
        for (path, bytes) in out.range(prefix.clone()..) {
            if !path.starts_with(&prefix) {
                break;
            }
            if !path.ends_with("/values.yaml") {
                continue;
            }
            let values = documents(path, bytes).pop().unwrap_or(json!({}));
            let Value::Object(mut merged) = read_json(defaults_file) else {
                panic!("{defaults_file} is not an object");
            };
            helm_merge(&mut merged, values.as_object().expect("values are a map"));
            errors.extend(
                validator
                    .errors(&Value::Object(merged))
                    .into_iter()
                    .map(|e| format!("{path}: {e}")),
            );
            checked += 1;
        }
    }
    (errors, checked)
}

#[test]
fn chart_values_merged_over_defaults_validate_against_the_chart_schemas() {
    let out = render(&example_clusters(), &settings());
    let (errors, checked) = values_errors(&out);
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    // cert-manager, external-secrets and metallb are on in both examples.
    assert_eq!(checked, 6);
}

#[test]
fn a_user_value_the_chart_refuses_fails_validation() {
    // cert-manager's schema is closed: an unknown key set through spec.apps must be caught.
    let mut docs = example_documents();
    docs[0].spec.apps.cert_manager = Some(kiln::spec::document::AppSpec {
        enabled: None,
        values: serde_json::from_value(json!({"replicaCont": 2})).unwrap(),
    });
    let clusters: Vec<_> = docs.iter().map(expand).collect();
    let (errors, _) = values_errors(&render(&clusters, &settings()));
    assert!(
        errors.iter().any(|e| e.contains("replicaCont")),
        "{errors:?}"
    );
}
