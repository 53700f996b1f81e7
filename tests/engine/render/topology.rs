//! The layout and wiring of DESIGN §6: `$values` paths, registration, waves, pins.

use std::collections::BTreeSet;

use serde_json::Value;

use super::support::*;

fn applications(out: &kiln::render::Rendered) -> Vec<(String, Value)> {
    all_documents(out)
        .into_iter()
        .filter(|(_, d)| d["kind"] == "Application")
        .collect()
}

#[test]
fn every_values_path_exists_and_every_values_file_is_used() {
    let out = render(&example_clusters(), &settings());
    let mut used = BTreeSet::new();
    let mut paths = BTreeSet::new();
    for (file, app) in applications(&out) {
        let sources: Vec<Value> = match app["spec"]["sources"].as_array() {
            Some(s) => s.clone(),
            None => vec![app["spec"]["source"].clone()],
        };
        for source in &sources {
            for vf in source["helm"]["valueFiles"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let vf = vf.as_str().unwrap();
                let path = vf
                    .strip_prefix("$values/")
                    .unwrap_or_else(|| panic!("{file}: {vf}"));
                assert!(out.contains_key(path), "{file}: {vf} is not rendered");
                assert!(
                    sources.iter().any(|s| s["ref"] == "values"),
                    "{file}: $values without a ref: values source"
                );
                used.insert(path.to_owned());
            }
            if let Some(path) = source["path"].as_str() {
                let prefix = format!("{path}/");
                assert!(
                    out.keys().any(|k| k.starts_with(&prefix)),
                    "{file}: path {path} holds no rendered file"
                );
                paths.insert(prefix);
            }
        }
    }
    let values_files: BTreeSet<String> = out
        .keys()
        .filter(|k| k.ends_with("/values.yaml"))
        .cloned()
        .collect();
    assert_eq!(values_files, used, "values files no Application uses");
    // Every file is reachable: through a path source or the root ApplicationSet's directories.
    for key in out.keys() {
        let reached = paths.iter().any(|p| key.starts_with(p))
            || used.contains(key)
            || key.starts_with("gitops/bootstrap/") && key.matches('/').count() == 3
            || key == "gitops/bootstrap/root.yaml"
            || key == "gitops/bootstrap/argocd-cm-health.yaml";
        assert!(reached, "{key} is deployed by nothing");
    }
}

#[test]
fn registration_builds_the_argocd_cluster_secret_from_vault() {
    let out = render(&example_clusters(), &settings());
    let docs = documents(
        "es",
        &out["gitops/core/clusters/production/cluster-secret.yaml"],
    );
    let es = &docs[0];
    assert_eq!(es["apiVersion"], "external-secrets.io/v1");
    assert_eq!(es["metadata"]["namespace"], "argocd");
    assert_eq!(es["spec"]["secretStoreRef"]["kind"], "ClusterSecretStore");
    assert_eq!(es["spec"]["secretStoreRef"]["name"], "kiln-vault");
    let tpl = &es["spec"]["target"]["template"];
    assert_eq!(
        tpl["metadata"]["labels"]["argocd.argoproj.io/secret-type"],
        "cluster"
    );
    assert_eq!(
        tpl["metadata"]["labels"]["env"], "prod",
        "intent labels copied"
    );
    assert_eq!(tpl["data"]["name"], "production");
    let config: Value = serde_json::from_str(tpl["data"]["config"].as_str().unwrap()).unwrap();
    for key in ["caData", "certData", "keyData"] {
        assert!(config["tlsClientConfig"][key].is_string(), "{key}");
    }
    let props: BTreeSet<&str> = es["spec"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            assert_eq!(d["remoteRef"]["key"], "kubernetes/production/kubeconfig");
            d["remoteRef"]["property"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        props,
        BTreeSet::from(["server", "ca.crt", "client.crt", "client.key"])
    );
    let store = &documents("s", &out["gitops/core/shared/cluster-secret-store.yaml"])[1];
    assert_eq!(store["kind"], "ClusterSecretStore");
    assert_eq!(store["spec"]["conditions"][0]["namespaces"][0], "argocd");
    assert_eq!(store["spec"]["provider"]["vault"]["path"], "admin");
    assert_eq!(store["spec"]["provider"]["vault"]["version"], "v2");
}

#[test]
fn core_apps_follow_the_pins_waves_and_namespace_rules() {
    let out = render(&example_clusters(), &settings());
    let mut waves = std::collections::BTreeMap::new();
    for (file, app) in applications(&out) {
        let Some(name) = app["metadata"]["labels"]["kiln.dev/app"].as_str() else {
            // kiln's own in-cluster Applications: registration and apps take their objects along.
            if file.starts_with("gitops/bootstrap/production/") {
                assert_eq!(
                    app["metadata"]["finalizers"][0], "resources-finalizer.argocd.argoproj.io",
                    "{file}"
                );
                assert_eq!(
                    app["spec"]["destination"]["server"],
                    "https://kubernetes.default.svc"
                );
            }
            continue;
        };
        assert!(
            app["metadata"]["finalizers"].is_null(),
            "{file}: child Applications carry no finalizer"
        );
        let sources = app["spec"]["sources"].as_array().unwrap();
        let chart = &sources[0];
        assert!(
            chart["repoURL"].as_str().unwrap().starts_with("https://"),
            "{file}"
        );
        let pin = kiln::render::pin(name.parse_app());
        assert_eq!(chart["chart"], pin.chart, "{file}");
        assert_eq!(chart["targetRevision"], pin.version, "{file}");
        let wave: i32 = app["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        waves.insert(name.to_owned(), wave);
        let labels = &app["spec"]["syncPolicy"]["managedNamespaceMetadata"]["labels"];
        let privileged = matches!(name, "metallb" | "longhorn" | "monitoring");
        assert_eq!(
            labels["pod-security.kubernetes.io/enforce"] == "privileged",
            privileged,
            "{file}"
        );
        let options: Vec<&str> = app["spec"]["syncPolicy"]["syncOptions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o.as_str().unwrap())
            .collect();
        if name == "metallb" {
            assert!(
                options.contains(&"SkipDryRunOnMissingResource=true"),
                "{file}"
            );
        }
    }
    assert!(waves["metallb"] < waves["cert-manager"]);
    assert!(waves["cert-manager"] < waves["external-secrets"]);
    for later in ["ingress-nginx", "longhorn", "monitoring", "traefik"] {
        assert!(waves["external-secrets"] < waves[later], "{later}");
    }
}

trait ParseApp {
    fn parse_app(&self) -> kiln::spec::App;
}
impl ParseApp for str {
    fn parse_app(&self) -> kiln::spec::App {
        kiln::spec::App::ALL
            .into_iter()
            .find(|a| a.name() == self)
            .unwrap_or_else(|| panic!("unknown app {self}"))
    }
}

#[test]
fn a_project_of_kilns_own_exists_before_anything_uses_it() {
    let out = render(&example_clusters(), &settings());
    let root = documents("root", &out["gitops/bootstrap/root.yaml"]);
    let project = root
        .iter()
        .find(|d| d["kind"] == "AppProject")
        .expect("root.yaml carries the AppProject");
    assert_eq!(project["metadata"]["name"], "kiln");
    let shared = &documents("p", &out["gitops/core/shared/app-project.yaml"])[0];
    assert_eq!(project, shared, "one definition, two places");
    // With Argo CD's default project, nothing is bootstrapped: it always exists.
    let plain = render(
        &example_clusters(),
        &kiln::render::RenderSettings::default(),
    );
    let root = documents("root", &plain["gitops/bootstrap/root.yaml"]);
    assert!(root.iter().all(|d| d["kind"] != "AppProject"));
}

#[test]
fn application_sets_preserve_resources_except_the_root() {
    let out = render(&example_clusters(), &settings());
    let mut seen = 0;
    for (file, doc) in all_documents(&out) {
        if doc["kind"] != "ApplicationSet" {
            continue;
        }
        seen += 1;
        let preserve = &doc["spec"]["syncPolicy"]["preserveResourcesOnDeletion"];
        if file == "gitops/bootstrap/root.yaml" {
            assert!(preserve.is_null(), "root keeps Argo CD's default");
            assert_eq!(
                doc["spec"]["generators"][0]["git"]["directories"][0]["path"],
                "gitops/bootstrap/*"
            );
        } else {
            assert_eq!(preserve, &Value::Bool(true), "{file}");
        }
    }
    assert_eq!(seen, 2);
}

#[test]
fn metallb_pool_comes_from_lb_range_and_traefik_replaces_ingress_nginx() {
    let out = render(&example_clusters(), &settings());
    let pool = &documents(
        "p",
        &out["gitops/manifests/metallb/production/extra/address-pool.yaml"],
    )[0];
    assert_eq!(pool["kind"], "IPAddressPool");
    assert_eq!(pool["spec"]["addresses"][0], "192.168.2.200-192.168.2.220");
    assert!(out.contains_key("gitops/core/apps/staging/traefik.yaml"));
    assert!(!out.contains_key("gitops/core/apps/staging/ingress-nginx.yaml"));
    assert!(!out.contains_key("gitops/core/apps/staging/longhorn.yaml"));
    assert!(out.contains_key("gitops/core/apps/production/longhorn.yaml"));
}

#[test]
fn user_values_are_merged_over_kilns() {
    let out = render(&example_clusters(), &settings());
    let v = &documents(
        "v",
        &out["gitops/manifests/ingress-nginx/production/values.yaml"],
    )[0];
    assert_eq!(v["controller"]["replicaCount"], 3, "the user's value");
    assert!(
        v["controller"]["resources"]["requests"]["cpu"].is_string(),
        "kiln's value kept"
    );
    let m = &documents("m", &out["gitops/manifests/monitoring/staging/values.yaml"])[0];
    assert_eq!(m["prometheus"]["prometheusSpec"]["retention"], "3d");
    assert!(m["prometheus"]["prometheusSpec"]["resources"].is_object());
}

#[test]
fn chart_pins_match_the_reference_table() {
    let readme = std::fs::read_to_string(schemas_dir().join("README.md")).unwrap();
    let table = readme
        .split("### Chart pins")
        .nth(1)
        .expect("README has the Chart pins table");
    let mut checked = 0;
    for line in table
        .lines()
        .filter(|l| l.starts_with("| ") && l.contains("`"))
    {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | app | chart | repoURL | version | …
        let app = cells[1];
        let Some(found) = kiln::spec::App::ALL.into_iter().find(|a| a.name() == app) else {
            continue;
        };
        let pin = kiln::render::pin(found);
        let unquote = |s: &str| s.split('`').nth(1).unwrap_or("").to_owned();
        assert_eq!(unquote(cells[2]), pin.chart, "{app}");
        assert_eq!(unquote(cells[3]), pin.repo_url, "{app}");
        assert_eq!(unquote(cells[4]), pin.version, "{app}");
        checked += 1;
    }
    assert_eq!(checked, 6, "the six core apps");
}
