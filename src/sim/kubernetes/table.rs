//! The `meta.k8s.io/v1` `Table` form `kubectl get` asks for (`Accept: application/json;as=Table;
//! v=v1;g=meta.k8s.io,…`): the columns of `pkg/printers/internalversion/printers.go` for nodes, pods,
//! deployments and daemonsets, and the default convertor's `Name` / `Created At` for the rest
//! (`staging/src/k8s.io/apiserver/pkg/registry/rest/table.go`). Ages are printed as
//! `staging/src/k8s.io/apimachinery/pkg/util/duration` `HumanDuration` prints them.

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use super::store::parse_timestamp;

/// Whether an `Accept` header asks for a `Table` (any entry with `as=Table`).
pub fn wants_table(accept: &str) -> bool {
    accept
        .split(',')
        .any(|entry| entry.split(';').any(|p| p.trim() == "as=Table"))
}

/// `HumanDuration`: seconds under two minutes, then minutes (with seconds under ten), hours (with
/// minutes under eight), days (with hours under eight), years.
pub fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs < 120 {
        return format!("{secs}s");
    }
    let minutes = secs / 60;
    if minutes < 10 {
        let s = secs % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    let days = hours / 24;
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{days}d")
        } else {
            format!("{days}d{h}h")
        };
    }
    if days < 365 * 2 {
        return format!("{days}d");
    }
    let (years, rest) = (days / 365, days % 365);
    if days < 365 * 8 && rest != 0 {
        return format!("{years}y{rest}d");
    }
    format!("{years}y")
}

fn age(doc: &Value) -> String {
    doc.pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .and_then(parse_timestamp)
        .map(|t| human_duration(SystemTime::now().duration_since(t).unwrap_or_default()))
        .unwrap_or_else(|| "<unknown>".into())
}

fn col(name: &str, ty: &str, priority: u8) -> Value {
    let format = if name == "Name" { "name" } else { "" };
    json!({ "name": name, "type": ty, "format": format, "description": "", "priority": priority })
}

fn s<'a>(doc: &'a Value, pointer: &str) -> &'a str {
    doc.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn n(doc: &Value, pointer: &str) -> u64 {
    doc.pointer(pointer).and_then(Value::as_u64).unwrap_or(0)
}

fn node_row(doc: &Value) -> Vec<Value> {
    let ready = doc
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .map(|c| {
            if c["status"] == "True" {
                "Ready"
            } else {
                "NotReady"
            }
        })
        .unwrap_or("Unknown");
    let mut status = ready.to_owned();
    if doc.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push_str(",SchedulingDisabled");
    }
    let mut roles: Vec<&str> = doc
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/"))
        .collect();
    roles.sort();
    let roles = if roles.is_empty() {
        "<none>".to_owned()
    } else {
        roles.join(",")
    };
    let internal_ip = doc
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|a| a["type"] == "InternalIP")
        .and_then(|a| a["address"].as_str())
        .unwrap_or("<none>");
    vec![
        json!(s(doc, "/metadata/name")),
        json!(status),
        json!(roles),
        json!(age(doc)),
        json!(s(doc, "/status/nodeInfo/kubeletVersion")),
        json!(internal_ip),
        json!("<none>"),
        json!(s(doc, "/status/nodeInfo/osImage")),
        json!(s(doc, "/status/nodeInfo/kernelVersion")),
        json!(s(doc, "/status/nodeInfo/containerRuntimeVersion")),
    ]
}

fn pod_row(doc: &Value) -> Vec<Value> {
    let statuses: Vec<&Value> = doc
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    let containers = doc
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let ready = statuses.iter().filter(|c| c["ready"] == true).count();
    let restarts: u64 = statuses
        .iter()
        .map(|c| c["restartCount"].as_u64().unwrap_or(0))
        .sum();
    let node = s(doc, "/spec/nodeName");
    let ip = s(doc, "/status/podIP");
    vec![
        json!(s(doc, "/metadata/name")),
        json!(format!("{ready}/{containers}")),
        json!(s(doc, "/status/phase")),
        json!(restarts.to_string()),
        json!(age(doc)),
        json!(if ip.is_empty() { "<none>" } else { ip }),
        json!(if node.is_empty() { "<none>" } else { node }),
        json!("<none>"),
        json!("<none>"),
    ]
}

fn columns(plural: &str) -> Vec<Value> {
    match plural {
        "nodes" => vec![
            col("Name", "string", 0),
            col("Status", "string", 0),
            col("Roles", "string", 0),
            col("Age", "string", 0),
            col("Version", "string", 0),
            col("Internal-IP", "string", 1),
            col("External-IP", "string", 1),
            col("OS-Image", "string", 1),
            col("Kernel-Version", "string", 1),
            col("Container-Runtime", "string", 1),
        ],
        "pods" => vec![
            col("Name", "string", 0),
            col("Ready", "string", 0),
            col("Status", "string", 0),
            col("Restarts", "string", 0),
            col("Age", "string", 0),
            col("IP", "string", 1),
            col("Node", "string", 1),
            col("Nominated Node", "string", 1),
            col("Readiness Gates", "string", 1),
        ],
        "deployments" => vec![
            col("Name", "string", 0),
            col("Ready", "string", 0),
            col("Up-to-date", "integer", 0),
            col("Available", "integer", 0),
            col("Age", "string", 0),
        ],
        "daemonsets" => vec![
            col("Name", "string", 0),
            col("Desired", "integer", 0),
            col("Current", "integer", 0),
            col("Ready", "integer", 0),
            col("Up-to-date", "integer", 0),
            col("Available", "integer", 0),
            col("Age", "string", 0),
        ],
        "poddisruptionbudgets" => vec![
            col("Name", "string", 0),
            col("Min Available", "string", 0),
            col("Max Unavailable", "string", 0),
            col("Allowed Disruptions", "integer", 0),
            col("Age", "string", 0),
        ],
        _ => vec![col("Name", "string", 0), col("Created At", "date", 0)],
    }
}

fn int_or_string(doc: &Value, pointer: &str) -> String {
    match doc.pointer(pointer) {
        Some(Value::Number(x)) => x.to_string(),
        Some(Value::String(x)) => x.clone(),
        _ => "N/A".into(),
    }
}

fn cells(plural: &str, doc: &Value) -> Vec<Value> {
    match plural {
        "nodes" => node_row(doc),
        "pods" => pod_row(doc),
        "deployments" => vec![
            json!(s(doc, "/metadata/name")),
            json!(format!(
                "{}/{}",
                n(doc, "/status/readyReplicas"),
                n(doc, "/spec/replicas")
            )),
            json!(n(doc, "/status/updatedReplicas")),
            json!(n(doc, "/status/availableReplicas")),
            json!(age(doc)),
        ],
        "daemonsets" => vec![
            json!(s(doc, "/metadata/name")),
            json!(n(doc, "/status/desiredNumberScheduled")),
            json!(n(doc, "/status/currentNumberScheduled")),
            json!(n(doc, "/status/numberReady")),
            json!(n(doc, "/status/updatedNumberScheduled")),
            json!(n(doc, "/status/numberAvailable")),
            json!(age(doc)),
        ],
        "poddisruptionbudgets" => vec![
            json!(s(doc, "/metadata/name")),
            json!(int_or_string(doc, "/spec/minAvailable")),
            json!(int_or_string(doc, "/spec/maxUnavailable")),
            json!(n(doc, "/status/disruptionsAllowed")),
            json!(age(doc)),
        ],
        _ => vec![
            json!(s(doc, "/metadata/name")),
            doc.pointer("/metadata/creationTimestamp")
                .cloned()
                .unwrap_or(Value::Null),
        ],
    }
}

/// A `Table` of `items` (one row each, with the object's metadata as `PartialObjectMetadata`, the
/// API server's default `includeObject=Metadata`).
pub fn table(plural: &str, items: &[Value], resource_version: u64) -> Value {
    let rows: Vec<Value> = items
        .iter()
        .map(|doc| {
            json!({
                "cells": cells(plural, doc),
                "object": {
                    "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                    "metadata": doc.get("metadata").cloned().unwrap_or(json!({})),
                },
            })
        })
        .collect();
    json!({
        "kind": "Table", "apiVersion": "meta.k8s.io/v1",
        "metadata": { "resourceVersion": resource_version.to_string() },
        "columnDefinitions": columns(plural),
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_print_as_kubectl_prints_them() {
        let d = Duration::from_secs;
        assert_eq!(human_duration(d(5)), "5s");
        assert_eq!(human_duration(d(119)), "119s");
        assert_eq!(human_duration(d(150)), "2m30s");
        assert_eq!(human_duration(d(600)), "10m");
        assert_eq!(human_duration(d(3 * 3600 + 120)), "3h2m");
        assert_eq!(human_duration(d(30 * 3600)), "30h");
        assert_eq!(human_duration(d(3 * 86400 + 7200)), "3d2h");
        assert_eq!(human_duration(d(40 * 86400)), "40d");
    }

    #[test]
    fn a_table_is_asked_for_by_kubectl_get_only() {
        assert!(wants_table(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
        ));
        assert!(!wants_table("application/json"));
    }
}
