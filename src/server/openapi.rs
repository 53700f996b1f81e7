//! `GET /api/v1/openapi.json`: OpenAPI 3.1 for every route `server::router` serves. The request
//! bodies' schemas are generated from the Rust types (the seed body, the intent document), so the
//! document cannot drift from what the handlers read; e2e `api::` checks that its paths and methods
//! are exactly the routes the daemon answers.

use serde_json::{Map, Value, json};

use super::seed::SeedRequest;

/// Moves a generated JSON Schema's `$defs` into `components.schemas` under `prefix`, rewriting its
/// references: inside an OpenAPI document `#/$defs/…` would resolve against the document's root.
fn hoist(mut schema: Value, prefix: &str, components: &mut Map<String, Value>) -> Value {
    fn rewrite(v: &mut Value, prefix: &str) {
        match v {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get_mut("$ref")
                    && let Some(name) = r.strip_prefix("#/$defs/")
                {
                    *r = format!("#/components/schemas/{prefix}{name}");
                }
                map.values_mut().for_each(|v| rewrite(v, prefix));
            }
            Value::Array(items) => items.iter_mut().for_each(|v| rewrite(v, prefix)),
            _ => {}
        }
    }
    rewrite(&mut schema, prefix);
    if let Value::Object(map) = &mut schema {
        map.remove("$schema");
        if let Some(Value::Object(defs)) = map.remove("$defs") {
            for (name, def) in defs {
                components.insert(format!("{prefix}{name}"), def);
            }
        }
    }
    schema
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    })
}

fn json_response(description: &str, schema: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}
    })
}

/// The whole document.
pub fn document() -> Value {
    let mut components = Map::new();
    let seed = hoist(
        serde_json::to_value(schemars::schema_for!(SeedRequest)).unwrap_or(Value::Null),
        "Seed",
        &mut components,
    );
    let intent = hoist(crate::spec::json_schema(), "Intent", &mut components);
    components.insert("SeedClusterRequest".into(), seed);
    components.insert("ClusterDocument".into(), intent);
    components.insert(
        "Error".into(),
        json!({
            "type": "object",
            "required": ["error"],
            "properties": {"error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "description": "unauthorized, not_found, invalid, conflict, protected, too_large, unsupported_media_type, git_unavailable, …"},
                    "message": {"type": "string"},
                    "details": {"type": "array", "items": {
                        "type": "object",
                        "required": ["path", "message"],
                        "properties": {
                            "path": {"type": "string", "description": "field path in the body, e.g. network_config.node_ips[3] or spec.network.vip"},
                            "message": {"type": "string"},
                            "line": {"type": "integer", "description": "line in a YAML body"}
                        }
                    }}
                }
            }}
        }),
    );
    components.insert(
        "Accepted".into(),
        json!({
            "type": "object",
            "required": ["commit", "path", "branch", "status_url"],
            "properties": {
                "commit": {"type": "string", "description": "the commit pushed"},
                "path": {"type": "string", "description": "the cluster file, e.g. clusters/analytics.yaml"},
                "branch": {"type": "string", "description": "the tracked branch, or kiln/add-<name> / kiln/delete-<name> with api.write_mode = \"branch\""},
                "status_url": {"type": "string"},
                "warnings": {"type": "array", "items": {"type": "object"}}
            }
        }),
    );
    components.insert(
        "ClusterStatus".into(),
        json!({
            "type": "object",
            "required": ["name", "phase"],
            "properties": {
                "name": {"type": "string"},
                "phase": {"type": "string", "enum": ["Pending", "Provisioning", "Bootstrapping", "Ready", "Updating", "Degraded", "Deleting", "Blocked", "Failed"]},
                "conditions": {"type": "array", "items": {
                    "type": "object",
                    "properties": {
                        "type": {"type": "string"}, "status": {"type": "boolean"},
                        "reason": {"type": "string"}, "message": {"type": "string"}
                    }
                }},
                "nodes": {"type": "array", "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"}, "vmid": {"type": "integer"}, "ip": {"type": "string"},
                        "role": {"type": "string"}, "vm_state": {"type": "string"}, "talos_stage": {"type": "string"},
                        "talos_version": {"type": "string"}, "kubernetes_version": {"type": "string"}
                    }
                }},
                "last_applied_revision": {"type": ["string", "null"]},
                "last_error": {"type": ["string", "null"]},
                "retry_at": {"type": ["string", "null"], "format": "date-time"},
                "updated_at": {"type": "string", "format": "date-time"},
                "credentials": {"type": "object"}
            }
        }),
    );
    components.insert(
        "ClusterList".into(),
        json!({
            "type": "object",
            "required": ["clusters"],
            "properties": {
                "revision": {"type": ["string", "null"], "description": "the tip the daemon fetched"},
                "clusters": {"type": "array", "items": {"$ref": "#/components/schemas/ClusterStatus"}}
            }
        }),
    );

    let name_param = json!({
        "name": "name", "in": "path", "required": true,
        "schema": {"type": "string", "pattern": "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", "maxLength": 50}
    });
    let unauthorized = error_response("no or wrong bearer token");
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "kiln",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "kiln's HTTP API: every write is a Git commit of clusters/<name>.yaml (docs/api.md)."
        },
        "security": [{"bearer": []}],
        "paths": {
            "/api/v1/clusters": {
                "get": {
                    "operationId": "listClusters",
                    "summary": "Every cluster at the tip the daemon fetched, with its phase (Pending until reconciled)",
                    "responses": {"200": json_response("the clusters", "ClusterList"), "401": unauthorized}
                },
                "post": {
                    "operationId": "createCluster",
                    "summary": "Validate and commit clusters/<name>.yaml, then poll at once",
                    "requestBody": {"required": true, "content": {
                        "application/json": {"schema": {"oneOf": [
                            {"$ref": "#/components/schemas/SeedClusterRequest"},
                            {"$ref": "#/components/schemas/ClusterDocument"}
                        ]}},
                        "application/yaml": {"schema": {"$ref": "#/components/schemas/ClusterDocument"}}
                    }},
                    "responses": {
                        "202": json_response("committed (and pushed)", "Accepted"),
                        "401": unauthorized,
                        "409": error_response("a cluster of that name exists"),
                        "413": error_response("the body is larger than 1 MiB"),
                        "415": error_response("neither JSON nor YAML"),
                        "422": error_response("the body or the resulting cluster does not validate; every error in details"),
                        "503": error_response("the repository cannot be written now")
                    }
                }
            },
            "/api/v1/clusters/{name}/status": {
                "get": {
                    "operationId": "clusterStatus",
                    "parameters": [name_param],
                    "responses": {
                        "200": json_response("phase, conditions, nodes, revision, last error", "ClusterStatus"),
                        "401": unauthorized,
                        "404": error_response("no such cluster")
                    }
                }
            },
            "/api/v1/clusters/{name}/backups": {
                "get": {
                    "operationId": "clusterBackups",
                    "summary": "The cluster's etcd snapshots with their verification state (each read back unless verify=false)",
                    "parameters": [name_param, {"name": "verify", "in": "query", "required": false, "schema": {"type": "boolean", "default": true}}],
                    "responses": {
                        "200": {"description": "snapshots, oldest first: id, manifest, stored_size, state", "content": {"application/json": {"schema": {"type": "array", "items": {"type": "object"}}}}},
                        "401": unauthorized,
                        "404": error_response("no such cluster, or no spec.backup"),
                        "503": error_response("the destination cannot be read now")
                    }
                },
                "post": {
                    "operationId": "backupNow",
                    "summary": "Take a snapshot at the daemon's next cycle (started at once), whatever the schedule says; the result shows in the cluster's status",
                    "parameters": [name_param],
                    "responses": {
                        "202": {"description": "requested: cluster, requested_at, status_url", "content": {"application/json": {"schema": {"type": "object"}}}},
                        "401": unauthorized,
                        "404": error_response("no such cluster, or no spec.backup"),
                        "503": error_response("kiln's records cannot be read now")
                    }
                }
            },
            "/api/v1/clusters/{name}": {
                "delete": {
                    "operationId": "deleteCluster",
                    "summary": "Commit the removal of clusters/<name>.yaml (decommissioned after decommission_grace)",
                    "parameters": [name_param],
                    "responses": {
                        "202": json_response("removal committed", "Accepted"),
                        "401": unauthorized,
                        "404": error_response("no such cluster"),
                        "409": error_response("the file does not parse"),
                        "423": error_response("the cluster has deletionProtection: true"),
                        "503": error_response("the repository cannot be written now")
                    }
                }
            },
            "/api/v1/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "responses": {"200": {"description": "this document", "content": {"application/json": {"schema": {"type": "object"}}}}, "401": unauthorized}
                }
            },
            "/api/v1/webhooks/git": {
                "post": {
                    "operationId": "gitWebhook",
                    "summary": "A GitHub or Gitea/Forgejo push event: triggers a poll",
                    "security": [],
                    "parameters": [
                        {"name": "X-Hub-Signature-256", "in": "header", "required": false, "schema": {"type": "string"}, "description": "GitHub: sha256=HMAC of the body"},
                        {"name": "X-Gitea-Signature", "in": "header", "required": false, "schema": {"type": "string"}, "description": "Gitea: HMAC-SHA256 of the body, hex"},
                        {"name": "X-Forgejo-Signature", "in": "header", "required": false, "schema": {"type": "string"}, "description": "Forgejo: HMAC-SHA256 of the body, hex"}
                    ],
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object"}}}},
                    "responses": {
                        "202": {"description": "accepted: a poll was triggered"},
                        "200": {"description": "a valid event that triggers nothing (e.g. ping)"},
                        "400": error_response("the body could not be read"),
                        "401": error_response("bad or missing signature"),
                        "404": error_response("the webhook is off (no api.webhook_secret_file)"),
                        "413": error_response("the body is larger than 1 MiB"),
                        "429": error_response("more than 10 polls a minute from webhooks (Retry-After)")
                    }
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "responses": {
                        "200": {"description": "Prometheus metrics", "content": {"application/openmetrics-text": {"schema": {"type": "string"}}}},
                        "401": unauthorized
                    }
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "security": [],
                    "responses": {"200": {"description": "the process answers", "content": {"text/plain": {"schema": {"type": "string"}}}}}
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "security": [],
                    "responses": {
                        "200": {"description": "a cycle finished recently and Git is readable", "content": {"application/json": {"schema": {"type": "object"}}}},
                        "503": {"description": "not ready, with the reasons", "content": {"application/json": {"schema": {"type": "object"}}}}
                    }
                }
            }
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": components
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `$ref` points at a schema the document holds (the OpenAPI validator in e2e checks the
    /// rest of the format).
    #[test]
    fn every_reference_resolves_inside_the_document() {
        fn refs(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        out.push(r.clone());
                    }
                    m.values().for_each(|v| refs(v, out));
                }
                Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let doc = document();
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(!all.is_empty());
        for r in all {
            let pointer = r
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("external ref {r}"));
            assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
        }
    }
}
