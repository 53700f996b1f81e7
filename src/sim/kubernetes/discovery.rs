//! What the simulated API serves and how a client finds out: the resource table, the legacy discovery
//! documents (`/api` → `APIVersions`, `/apis` → `APIGroupList`, `/api/v1` and `/apis/G/V` →
//! `APIResourceList`), the aggregated discovery (`apidiscovery.k8s.io/v2` `APIGroupDiscoveryList`)
//! that client-go asks for first, and an OpenAPI v3 index whose PATCH operations declare the query
//! parameters `kubectl apply` looks for before it sends `fieldValidation`.
//!
//! Shapes follow the types in `staging/src/k8s.io/apimachinery/pkg/apis/meta/v1/types.go`
//! (`APIVersions`, `APIGroupList`, `APIResourceList`), `staging/src/k8s.io/api/apidiscovery/v2/types.go`
//! (`APIGroupDiscoveryList`) and how the API server fills them
//! (`staging/src/k8s.io/apiserver/pkg/endpoints/discovery/`); the client's side is
//! `staging/src/k8s.io/client-go/discovery/discovery_client.go` (it reads the aggregated form only when
//! the response's Content-Type says so, and falls back to the legacy documents otherwise).

use serde_json::{Value, json};

/// One resource the simulated API serves.
#[derive(Debug)]
pub struct Resource {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
}

impl Resource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `pods`, `deployments.apps`: how the API server names a resource in its messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_owned()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

const fn r(
    group: &'static str,
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
) -> Resource {
    Resource {
        group,
        version: "v1",
        plural,
        singular,
        kind,
        namespaced,
        short_names,
        categories,
    }
}

/// Every resource served: what drains, upgrades and the bootstrap manifests (kube-proxy, CoreDNS,
/// flannel: ServiceAccount, ConfigMap, DaemonSet, Deployment, Service, ClusterRole, ClusterRoleBinding)
/// touch, and Leases. Short names and categories as the API server declares them.
pub const RESOURCES: &[Resource] = &[
    r(
        "",
        "namespaces",
        "namespace",
        "Namespace",
        false,
        &["ns"],
        &[],
    ),
    r("", "nodes", "node", "Node", false, &["no"], &[]),
    r("", "pods", "pod", "Pod", true, &["po"], &["all"]),
    r(
        "",
        "services",
        "service",
        "Service",
        true,
        &["svc"],
        &["all"],
    ),
    r(
        "",
        "configmaps",
        "configmap",
        "ConfigMap",
        true,
        &["cm"],
        &[],
    ),
    r("", "secrets", "secret", "Secret", true, &[], &[]),
    r(
        "",
        "serviceaccounts",
        "serviceaccount",
        "ServiceAccount",
        true,
        &["sa"],
        &[],
    ),
    r(
        "apps",
        "daemonsets",
        "daemonset",
        "DaemonSet",
        true,
        &["ds"],
        &["all"],
    ),
    r(
        "apps",
        "deployments",
        "deployment",
        "Deployment",
        true,
        &["deploy"],
        &["all"],
    ),
    r(
        "apps",
        "replicasets",
        "replicaset",
        "ReplicaSet",
        true,
        &["rs"],
        &["all"],
    ),
    r(
        "policy",
        "poddisruptionbudgets",
        "poddisruptionbudget",
        "PodDisruptionBudget",
        true,
        &["pdb"],
        &[],
    ),
    r(
        "rbac.authorization.k8s.io",
        "clusterroles",
        "clusterrole",
        "ClusterRole",
        false,
        &[],
        &[],
    ),
    r(
        "rbac.authorization.k8s.io",
        "clusterrolebindings",
        "clusterrolebinding",
        "ClusterRoleBinding",
        false,
        &[],
        &[],
    ),
    r(
        "rbac.authorization.k8s.io",
        "roles",
        "role",
        "Role",
        true,
        &[],
        &[],
    ),
    r(
        "rbac.authorization.k8s.io",
        "rolebindings",
        "rolebinding",
        "RoleBinding",
        true,
        &[],
        &[],
    ),
    r(
        "coordination.k8s.io",
        "leases",
        "lease",
        "Lease",
        true,
        &[],
        &[],
    ),
];

/// The groups in the order `/apis` lists them (the API server's own priority order for these).
const GROUPS: &[&str] = &[
    "apps",
    "policy",
    "rbac.authorization.k8s.io",
    "coordination.k8s.io",
];

/// The verbs served for every resource. No `watch` or `deletecollection`: this server does not serve
/// them, and discovery must not promise what the server refuses.
const VERBS: &[&str] = &["create", "delete", "get", "list", "patch", "update"];

/// The Eviction subresource as `/api/v1` lists it: kubectl's drain looks for exactly this entry
/// (`name: pods/eviction`, `kind: Eviction`, with group and version) to choose the Eviction API over
/// deleting pods (`staging/src/k8s.io/kubectl/pkg/drain/drain.go`, `CheckEvictionSupport`).
const EVICTION_GROUP: &str = "policy";

pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static Resource> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.kind == kind)
}

pub fn group_version_served(group: &str, version: &str) -> bool {
    RESOURCES
        .iter()
        .any(|r| r.group == group && r.version == version)
}

/// `GET /api` (legacy).
pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{ "clientCIDR": "0.0.0.0/0", "serverAddress": server_address }],
    })
}

/// `GET /apis` (legacy).
pub fn api_group_list() -> Value {
    let groups: Vec<Value> = GROUPS
        .iter()
        .map(|g| {
            let gv = json!({ "groupVersion": format!("{g}/v1"), "version": "v1" });
            json!({ "name": g, "versions": [gv.clone()], "preferredVersion": gv })
        })
        .collect();
    json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups })
}

/// `GET /api/v1` or `/apis/G/V` (legacy), or `None` for a group version not served.
pub fn api_resource_list(group: &str, version: &str) -> Option<Value> {
    if !group_version_served(group, version) {
        return None;
    }
    let mut resources = Vec::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let mut entry = json!({
            "name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
            "kind": r.kind, "verbs": VERBS,
        });
        if !r.short_names.is_empty() {
            entry["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            entry["categories"] = json!(r.categories);
        }
        resources.push(entry);
        if group.is_empty() && r.plural == "pods" {
            resources.push(json!({
                "name": "pods/eviction", "singularName": "pod", "namespaced": true,
                "group": EVICTION_GROUP, "version": "v1", "kind": "Eviction", "verbs": ["create"],
            }));
        }
    }
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
        "resources": resources,
    }))
}

/// The media type of aggregated discovery (`apidiscovery.k8s.io/v2`), as client-go asks for it in
/// `Accept` and as the API server labels its answer.
pub const AGGREGATED_V2: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether an `Accept` header asks for aggregated discovery v2 (one of its comma-separated entries
/// names `g=apidiscovery.k8s.io`, `v=v2` and `as=APIGroupDiscoveryList`).
pub fn wants_aggregated(accept: &str) -> bool {
    accept.split(',').any(|entry| {
        let params: Vec<&str> = entry.split(';').map(str::trim).collect();
        params.contains(&"g=apidiscovery.k8s.io")
            && params.contains(&"v=v2")
            && params.contains(&"as=APIGroupDiscoveryList")
    })
}

fn aggregated_resource(r: &Resource) -> Value {
    let mut entry = json!({
        "resource": r.plural,
        "responseKind": { "group": r.group, "version": r.version, "kind": r.kind },
        "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": r.singular,
        "verbs": VERBS,
    });
    if !r.short_names.is_empty() {
        entry["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        entry["categories"] = json!(r.categories);
    }
    if r.group.is_empty() && r.plural == "pods" {
        entry["subresources"] = json!([{
            "subresource": "eviction",
            "responseKind": { "group": EVICTION_GROUP, "version": "v1", "kind": "Eviction" },
            "verbs": ["create"],
        }]);
    }
    entry
}

/// `GET /api` (`core: true`) or `/apis` with aggregated discovery asked for.
pub fn aggregated(core: bool) -> Value {
    let groups: Vec<&str> = if core { vec![""] } else { GROUPS.to_vec() };
    let items: Vec<Value> = groups
        .iter()
        .map(|g| {
            let resources: Vec<Value> = RESOURCES
                .iter()
                .filter(|r| r.group == *g)
                .map(aggregated_resource)
                .collect();
            let mut metadata = json!({});
            if !g.is_empty() {
                metadata["name"] = json!(g);
            }
            json!({
                "metadata": metadata,
                "versions": [{ "version": "v1", "resources": resources, "freshness": "Current" }],
            })
        })
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {}, "items": items,
    })
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `GET /openapi/v3`: the index of one document per group version, as
/// `staging/src/k8s.io/kube-openapi/pkg/handler3` serves it (`paths.<gv>.serverRelativeURL`).
pub fn openapi_v3_index() -> Value {
    let mut paths = serde_json::Map::new();
    let mut gvs: Vec<(&str, &str)> = RESOURCES.iter().map(|r| (r.group, r.version)).collect();
    gvs.dedup();
    for (g, v) in gvs {
        let p = gv_path(g, v);
        paths.insert(
            p.clone(),
            json!({ "serverRelativeURL": format!("/openapi/v3/{p}?hash=kiln-sim") }),
        );
    }
    json!({ "paths": paths })
}

/// `GET /openapi/v3/api/v1` or `/openapi/v3/apis/G/V`: the operations of each resource with the
/// query parameters the API server declares on PATCH (`fieldManager`, `fieldValidation`, `force`,
/// `dryRun`) and the `x-kubernetes-group-version-kind` extension. kubectl reads exactly that to decide
/// whether the server validates fields itself (`staging/src/k8s.io/cli-runtime/pkg/resource/
/// query_param_verifier_v3.go`); schemas are left open (`type: object`), since this server does not
/// validate against them.
pub fn openapi_v3_document(path: &str) -> Option<Value> {
    let (group, version) = match path.split('/').collect::<Vec<_>>().as_slice() {
        ["api", v] => ("", *v),
        ["apis", g, v] => (*g, *v),
        _ => return None,
    };
    if !group_version_served(group, version) {
        return None;
    }
    let query = |name: &str| json!({ "name": name, "in": "query", "schema": { "type": "string" } });
    let mut paths = serde_json::Map::new();
    let mut schemas = serde_json::Map::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let gvk = json!({ "group": r.group, "version": r.version, "kind": r.kind });
        let schema_name = format!(
            "io.k8s.kiln-sim.{}.{}",
            r.api_version().replace('/', "."),
            r.kind
        );
        schemas.insert(
            schema_name.clone(),
            json!({ "type": "object", "x-kubernetes-group-version-kind": [gvk.clone()] }),
        );
        let body = json!({ "$ref": format!("#/components/schemas/{schema_name}") });
        let ok = json!({ "200": { "description": "OK", "content": { "application/json": { "schema": body } } } });
        let op = |action: &str, params: Vec<Value>| {
            json!({
                "operationId": format!("{action}{}", r.kind),
                "parameters": params,
                "responses": ok,
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
            })
        };
        let base = format!("/{}", gv_path(group, version));
        let item = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("{base}/{}/{{name}}", r.plural)
        };
        let write_params = || {
            vec![
                query("dryRun"),
                query("fieldManager"),
                query("fieldValidation"),
            ]
        };
        let mut patch_params = write_params();
        patch_params.push(query("force"));
        paths.insert(
            item,
            json!({
                "get": op("get", vec![]),
                "put": op("put", write_params()),
                "patch": op("patch", patch_params),
                "delete": op("delete", vec![query("dryRun")]),
            }),
        );
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": { "title": "Kubernetes", "version": "v1" },
        "paths": paths,
        "components": { "schemas": schemas },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eviction_subresource_is_listed_as_kubectl_drain_looks_for_it() {
        let list = api_resource_list("", "v1").unwrap();
        let eviction = list["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "pods/eviction")
            .unwrap();
        assert_eq!(eviction["kind"], "Eviction");
        assert_eq!(eviction["group"], "policy");
        assert_eq!(eviction["version"], "v1");
    }

    #[test]
    fn aggregated_discovery_is_chosen_only_when_asked_for() {
        assert!(wants_aggregated(
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
        ));
        assert!(!wants_aggregated("application/json, */*"));
        assert!(!wants_aggregated(
            "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"
        ));
    }

    #[test]
    fn unknown_group_versions_are_not_served() {
        assert!(api_resource_list("batch", "v1").is_none());
        assert!(openapi_v3_document("apis/apps/v2").is_none());
        assert!(openapi_v3_document("apis/apps/v1").is_some());
        assert_eq!(find("apps", "v1", "daemonsets").unwrap().kind, "DaemonSet");
        assert_eq!(
            by_kind("policy/v1", "PodDisruptionBudget").unwrap().plural,
            "poddisruptionbudgets"
        );
    }
}
