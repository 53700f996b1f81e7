//! Nodes, which the simulated machines' kubelets register (`KubeSimState::nodes`) rather than clients
//! create: the `v1.Node` JSON (`staging/src/k8s.io/api/core/v1/types.go`: Ready condition, the cordon's
//! `spec.unschedulable` and taint, `nodeInfo.kubeletVersion`, the InternalIP address), get, list,
//! patch (kubectl's cordon sends a strategic merge patch of `spec.unschedulable`, kiln's a merge
//! patch), and delete (the pods bound to it go with it).

use serde_json::{Value, json};

use super::store::{self, ApiError, timestamp};
use super::workloads;
use super::{KubeSimState, SimNode};

pub fn node_json(name: &str, n: &SimNode) -> Value {
    let mut node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name,
            "uid": format!("6b696c6e-0000-4000-8001-{:012x}", name.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b))) & 0xffff_ffff_ffff),
            "resourceVersion": n.resource_version.to_string(),
            "creationTimestamp": timestamp(n.created),
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                format!("node-role.kubernetes.io/{}", n.role): "",
            },
        },
        "spec": {},
        "status": {
            "conditions": [{
                "type": "Ready",
                "status": if n.ready { "True" } else { "False" },
                "reason": if n.ready { "KubeletReady" } else { "KubeletNotReady" },
                "message": if n.ready { "kubelet is posting ready status" } else { "kubelet stopped posting node status" },
                "lastHeartbeatTime": timestamp(std::time::SystemTime::now()),
                "lastTransitionTime": timestamp(n.created),
            }],
            "addresses": n.internal_ip.iter().map(|ip| json!({ "type": "InternalIP", "address": ip }))
                .chain(std::iter::once(json!({ "type": "Hostname", "address": name })))
                .collect::<Vec<_>>(),
            "nodeInfo": {
                "kubeletVersion": n.kubelet_version,
                "kubeProxyVersion": n.kubelet_version,
                "osImage": n.os_image,
                "operatingSystem": "linux",
                "architecture": "amd64",
                "containerRuntimeVersion": "containerd://2.1.4",
                "kernelVersion": "6.12.0-talos",
                "machineID": "", "systemUUID": "", "bootID": "",
            },
            "capacity": { "cpu": "2", "memory": "4026532Ki", "pods": "110" },
            "allocatable": { "cpu": "1950m", "memory": "3600000Ki", "pods": "110" },
        },
    });
    if n.unschedulable {
        node["spec"]["unschedulable"] = json!(true);
    }
    if !n.annotations.is_empty() {
        node["metadata"]["annotations"] = json!(n.annotations);
    }
    let taints = workloads::taints(n);
    if !taints.is_empty() {
        node["spec"]["taints"] = json!(taints);
    }
    node
}

fn not_found(name: &str) -> ApiError {
    let r = super::discovery::find("", "v1", "nodes").expect("nodes are served");
    ApiError::not_found(r, name)
}

pub fn get(state: &KubeSimState, name: &str) -> Result<Value, ApiError> {
    state
        .nodes
        .get(name)
        .map(|n| node_json(name, n))
        .ok_or_else(|| not_found(name))
}

pub fn list(state: &KubeSimState) -> Vec<Value> {
    state.nodes.iter().map(|(k, v)| node_json(k, v)).collect()
}

/// A merge or strategic merge patch: only `spec.unschedulable` and `metadata.annotations` change the
/// simulated node (the rest of a Node is the kubelet's to report); `null` clears either, as
/// kubectl's uncordon sends it (RFC 7386: a `null` member removes the key).
pub fn patch(state: &mut KubeSimState, name: &str, patch: &Value) -> Result<Value, ApiError> {
    let current = get(state, name)?;
    if let Some(sent) = patch
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        && current
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            != Some(sent)
    {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on nodes \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            ),
        ));
    }
    let mut merged = current.clone();
    store::merge_patch(&mut merged, patch);
    let unschedulable = merged
        .pointer("/spec/unschedulable")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let annotations = merged
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    let rv = state.next_revision();
    let node = state.nodes.get_mut(name).ok_or_else(|| not_found(name))?;
    node.annotations = annotations;
    if node.unschedulable != unschedulable || patch.pointer("/spec").is_some() {
        node.unschedulable = unschedulable;
        // The e2e tests read drains from `kiln sim talos`'s log: it is all they can see of them.
        tracing::info!(node = %name, unschedulable, "node cordon set");
    }
    node.resource_version = rv;
    let out = node_json(name, node);
    workloads::reconcile(state);
    Ok(out)
}

/// `PUT` a Node (kubectl's cordon falls back to it when a patch fails): only `spec.unschedulable` is
/// taken, with the resourceVersion checked.
pub fn update(state: &mut KubeSimState, name: &str, doc: &Value) -> Result<Value, ApiError> {
    let unschedulable = doc
        .pointer("/spec/unschedulable")
        .cloned()
        .unwrap_or(Value::Null);
    let mut p = json!({ "spec": { "unschedulable": unschedulable } });
    if let Some(rv) = doc.pointer("/metadata/resourceVersion") {
        p["metadata"] = json!({ "resourceVersion": rv });
    }
    patch(state, name, &p)
}

/// Deletes the Node; its pods are garbage-collected and their controllers place them elsewhere.
pub fn delete(state: &mut KubeSimState, name: &str) -> Result<Value, ApiError> {
    let node = state.nodes.remove(name).ok_or_else(|| not_found(name))?;
    state.next_revision();
    tracing::info!(node = %name, "node deleted");
    let out = node_json(name, &node);
    workloads::reconcile(state);
    Ok(out)
}
