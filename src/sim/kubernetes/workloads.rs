//! The controllers a drain depends on, run synchronously after every write: DaemonSets get one pod on
//! every node whose taints their pods tolerate; Deployments get a ReplicaSet and `spec.replicas`
//! pods, each placed by a scheduler on a Ready, schedulable (not cordoned) node whose taints it
//! tolerates, the least loaded first; a pod whose node is gone is deleted (pod garbage collection), so
//! its controller makes a new one elsewhere. PodDisruptionBudget status is computed from the matching
//! pods as the disruption controller computes it, and the Eviction API refuses with 429 while a budget
//! allows no disruption.
//!
//! Upstream: `pkg/controller/daemon/daemon_controller.go`, `pkg/controller/deployment/` and
//! `pkg/controller/replicaset/replica_set.go` (what exists, not how they roll out: a changed template
//! replaces the old pods at once), `pkg/controller/podgc/gc_controller.go`, the disruption controller
//! `pkg/controller/disruption/disruption.go` (`getExpectedPodCount`, `countHealthyPods`,
//! `updatePdbStatus`), and the eviction subresource `pkg/registry/core/pod/storage/eviction.go`.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::store::{ApiError, ObjectKey, Selector, timestamp};
use super::{KubeSimState, SimNode};

const CONTROL_PLANE_TAINT: &str = "node-role.kubernetes.io/control-plane";

/// The taints a node carries: Talos puts `node-role.kubernetes.io/control-plane:NoSchedule` on control
/// planes; a cordoned node also carries `node.kubernetes.io/unschedulable:NoSchedule`
/// (`pkg/controller/nodelifecycle`), which DaemonSet pods tolerate.
pub fn taints(node: &SimNode) -> Vec<Value> {
    let mut t = Vec::new();
    if node.role == "control-plane" && !node.control_plane_schedulable {
        t.push(json!({ "key": CONTROL_PLANE_TAINT, "effect": "NoSchedule" }));
    }
    if node.unschedulable {
        t.push(json!({ "key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule" }));
    }
    t
}

/// Whether `tolerations` tolerate every NoSchedule taint of `node` other than the cordon's (which
/// only the scheduler's own check of `spec.unschedulable` deals with).
fn tolerates(tolerations: Option<&Value>, node: &SimNode) -> bool {
    let tolerations: Vec<&Value> = tolerations
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    let role_taints = if node.role == "control-plane" && !node.control_plane_schedulable {
        vec![CONTROL_PLANE_TAINT]
    } else {
        vec![]
    };
    role_taints.iter().all(|taint| {
        tolerations.iter().any(|t| {
            let key = t.get("key").and_then(Value::as_str).unwrap_or("");
            let op = t.get("operator").and_then(Value::as_str).unwrap_or("Equal");
            let effect = t.get("effect").and_then(Value::as_str).unwrap_or("");
            (effect.is_empty() || effect == "NoSchedule")
                && (key == *taint || (op == "Exists" && key.is_empty()))
        })
    })
}

fn labels_of(doc: &Value) -> Option<&Value> {
    doc.pointer("/metadata/labels")
}

fn controller_of(pod: &Value) -> Option<(&str, &str)> {
    pod.pointer("/metadata/ownerReferences")?
        .as_array()?
        .iter()
        .find(|o| o.get("controller").and_then(Value::as_bool) == Some(true))
        .map(|o| {
            (
                o.get("kind").and_then(Value::as_str).unwrap_or(""),
                o.get("name").and_then(Value::as_str).unwrap_or(""),
            )
        })
}

fn is_pod_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// Pod names as ReplicaSets and DaemonSets make them: the owner's name and five characters of the
/// alphabet `staging/src/k8s.io/apimachinery/pkg/util/rand` draws from (here from the cluster's
/// revision, so names are unique and runs are repeatable).
fn pod_name(prefix: &str, revision: u64) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let digest = Sha256::digest(format!("{prefix}/{revision}").as_bytes());
    let suffix: String = digest
        .iter()
        .take(5)
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect();
    format!("{prefix}-{suffix}")
}

fn template_hash(template: &Value) -> String {
    let digest = Sha256::digest(template.to_string().as_bytes());
    hex::encode(&digest[..5])
}

/// A pod the kubelet runs: Running and Ready, its containers started.
pub(super) fn running_status(node: &SimNode, spec: &Value) -> Value {
    let now = timestamp(std::time::SystemTime::now());
    let containers: Vec<Value> = spec
        .get("containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| {
            json!({
                "name": c.get("name").cloned().unwrap_or(json!("main")),
                "image": c.get("image").cloned().unwrap_or(json!("")),
                "ready": true, "started": true, "restartCount": 0,
                "state": { "running": { "startedAt": now } },
            })
        })
        .collect();
    let condition = |t: &str| json!({ "type": t, "status": "True", "lastTransitionTime": now });
    json!({
        "phase": "Running",
        "conditions": [condition("PodScheduled"), condition("Initialized"),
                       condition("ContainersReady"), condition("Ready")],
        "hostIP": node.internal_ip.clone().unwrap_or_default(),
        "startTime": now,
        "containerStatuses": containers,
    })
}

fn pending_status() -> Value {
    json!({
        "phase": "Pending",
        "conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/0 nodes are available: no Ready, schedulable node tolerates the pod.",
        }],
    })
}

fn new_pod(
    state: &mut KubeSimState,
    owner: &Value,
    owner_kind: &str,
    prefix: &str,
    template: &Value,
    extra_labels: &[(&str, String)],
) -> (ObjectKey, Value) {
    let ns = owner
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_owned();
    let rv = state.next_revision();
    let name = pod_name(prefix, rv);
    let mut labels = template
        .pointer("/metadata/labels")
        .cloned()
        .unwrap_or(json!({}));
    for (k, v) in extra_labels {
        labels[*k] = json!(v);
    }
    let api_version = owner.get("apiVersion").cloned().unwrap_or(json!("apps/v1"));
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": ns, "labels": labels,
            "uid": format!("6b696c6e-0000-4000-8000-{rv:012x}"),
            "resourceVersion": rv.to_string(), "generation": 1,
            "creationTimestamp": timestamp(std::time::SystemTime::now()),
            "ownerReferences": [{
                "apiVersion": api_version, "kind": owner_kind, "name": prefix,
                "uid": owner.pointer("/metadata/uid").cloned().unwrap_or(json!("")),
                "controller": true, "blockOwnerDeletion": true,
            }],
        },
        "spec": template.get("spec").cloned().unwrap_or(json!({})),
        "status": pending_status(),
    });
    (ObjectKey::pod(&ns, &name), pod)
}

/// Runs every controller until nothing changes (each pass can only add what the last one asked for,
/// so two or three passes settle it).
pub fn reconcile(state: &mut KubeSimState) {
    for _ in 0..4 {
        let before = state.objects.len();
        let before_rv = state.revision;
        garbage_collect_pods(state);
        daemonsets(state);
        deployments(state);
        schedule(state);
        statuses(state);
        if state.objects.len() == before && state.revision == before_rv {
            break;
        }
    }
}

fn objects_of(state: &KubeSimState, group: &str, plural: &str) -> Vec<(ObjectKey, Value)> {
    state
        .objects
        .iter()
        .filter(|(k, _)| k.group == group && k.plural == plural)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn pods_owned_by(
    state: &KubeSimState,
    ns: &str,
    kind: &str,
    name: &str,
) -> Vec<(ObjectKey, Value)> {
    objects_of(state, "", "pods")
        .into_iter()
        .filter(|(k, p)| k.namespace == ns && controller_of(p) == Some((kind, name)))
        .collect()
}

/// Pods bound to a node that no longer exists are deleted.
fn garbage_collect_pods(state: &mut KubeSimState) {
    let gone: Vec<ObjectKey> = objects_of(state, "", "pods")
        .into_iter()
        .filter(|(_, p)| {
            p.pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .is_some_and(|n| !state.nodes.contains_key(n))
        })
        .map(|(k, _)| k)
        .collect();
    for k in gone {
        state.objects.remove(&k);
        state.next_revision();
    }
    // Pods whose controlling DaemonSet, ReplicaSet or Deployment is gone go too (the garbage collector).
    let orphans: Vec<ObjectKey> = objects_of(state, "", "pods")
        .into_iter()
        .filter(|(k, p)| match controller_of(p) {
            Some(("DaemonSet", owner)) => !state.objects.contains_key(&ObjectKey {
                group: "apps".into(),
                plural: "daemonsets".into(),
                namespace: k.namespace.clone(),
                name: owner.to_owned(),
            }),
            Some(("ReplicaSet", owner)) => !state.objects.contains_key(&ObjectKey {
                group: "apps".into(),
                plural: "replicasets".into(),
                namespace: k.namespace.clone(),
                name: owner.to_owned(),
            }),
            _ => false,
        })
        .map(|(k, _)| k)
        .collect();
    for k in orphans {
        state.objects.remove(&k);
        state.next_revision();
    }
}

fn daemonsets(state: &mut KubeSimState) {
    for (key, ds) in objects_of(state, "apps", "daemonsets") {
        let template = ds.pointer("/spec/template").cloned().unwrap_or(json!({}));
        let tolerations = template.pointer("/spec/tolerations").cloned();
        let revision = template_hash(&template);
        // Pods of an older template go (a rolling update, done at once), and new ones take their place.
        let pods: Vec<(ObjectKey, Value)> =
            pods_owned_by(state, &key.namespace, "DaemonSet", &key.name)
                .into_iter()
                .filter(|(k, p)| {
                    let current = p
                        .pointer("/metadata/labels/controller-revision-hash")
                        .and_then(Value::as_str)
                        == Some(revision.as_str());
                    if !current {
                        state.objects.remove(k);
                    }
                    current
                })
                .collect();
        let nodes: Vec<(String, SimNode)> = state
            .nodes
            .iter()
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect();
        for (node_name, node) in &nodes {
            let wanted = tolerates(tolerations.as_ref(), node);
            let here: Vec<&(ObjectKey, Value)> = pods
                .iter()
                .filter(|(_, p)| {
                    p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node_name)
                })
                .collect();
            if wanted && here.is_empty() {
                let (k, mut pod) = new_pod(
                    state,
                    &ds,
                    "DaemonSet",
                    &key.name,
                    &template,
                    &[("controller-revision-hash", revision.clone())],
                );
                // The DaemonSet controller binds its pods itself, cordoned nodes included.
                pod["spec"]["nodeName"] = json!(node_name);
                pod["status"] = running_status(node, &pod["spec"]);
                state.objects.insert(k, pod);
            } else if !wanted {
                for (k, _) in here {
                    state.objects.remove(k);
                    state.next_revision();
                }
            }
        }
    }
}

fn deployments(state: &mut KubeSimState) {
    for (key, deploy) in objects_of(state, "apps", "deployments") {
        let template = deploy
            .pointer("/spec/template")
            .cloned()
            .unwrap_or(json!({}));
        let replicas = deploy
            .pointer("/spec/replicas")
            .and_then(Value::as_u64)
            .unwrap_or(1) as usize;
        let hash = template_hash(&template);
        let rs_name = format!("{}-{hash}", key.name);
        let rs_key = ObjectKey {
            group: "apps".into(),
            plural: "replicasets".into(),
            namespace: key.namespace.clone(),
            name: rs_name.clone(),
        };
        // ReplicaSets of an older template go, and their pods with them (a Recreate rollout).
        let old: Vec<ObjectKey> = objects_of(state, "apps", "replicasets")
            .into_iter()
            .filter(|(k, rs)| {
                k.namespace == key.namespace
                    && *k != rs_key
                    && controller_of(rs) == Some(("Deployment", key.name.as_str()))
            })
            .map(|(k, _)| k)
            .collect();
        for k in old {
            state.objects.remove(&k);
            state.next_revision();
        }
        if !state.objects.contains_key(&rs_key) {
            let rv = state.next_revision();
            let mut rs_template = template.clone();
            rs_template["metadata"]["labels"]["pod-template-hash"] = json!(hash);
            let rs = json!({
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {
                    "name": rs_name, "namespace": key.namespace,
                    "labels": rs_template.pointer("/metadata/labels").cloned().unwrap_or(json!({})),
                    "uid": format!("6b696c6e-0000-4000-8000-{rv:012x}"),
                    "resourceVersion": rv.to_string(), "generation": 1,
                    "creationTimestamp": timestamp(std::time::SystemTime::now()),
                    "ownerReferences": [{
                        "apiVersion": "apps/v1", "kind": "Deployment", "name": key.name,
                        "uid": deploy.pointer("/metadata/uid").cloned().unwrap_or(json!("")),
                        "controller": true, "blockOwnerDeletion": true,
                    }],
                },
                "spec": { "replicas": replicas, "selector": deploy.pointer("/spec/selector").cloned().unwrap_or(json!({})),
                          "template": rs_template },
            });
            state.objects.insert(rs_key.clone(), rs);
        } else if let Some(rs) = state.objects.get_mut(&rs_key)
            && rs.pointer("/spec/replicas").and_then(Value::as_u64) != Some(replicas as u64)
        {
            rs["spec"]["replicas"] = json!(replicas);
        }
        let rs = state.objects.get(&rs_key).cloned().unwrap_or(json!({}));
        let pods = pods_owned_by(state, &key.namespace, "ReplicaSet", &rs_name);
        if pods.len() < replicas {
            for _ in pods.len()..replicas {
                let (k, pod) = new_pod(
                    state,
                    &rs,
                    "ReplicaSet",
                    &rs_name,
                    &template,
                    &[("pod-template-hash", hash.clone())],
                );
                state.objects.insert(k, pod);
            }
        } else {
            // Scale down: the newest pods go first.
            let mut newest: Vec<&(ObjectKey, Value)> = pods.iter().collect();
            newest.sort_by_key(|(_, p)| {
                std::cmp::Reverse(
                    p.pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str)
                        .and_then(|s| s.parse::<u64>().ok())
                        .unwrap_or(0),
                )
            });
            for (k, _) in newest.into_iter().take(pods.len() - replicas) {
                state.objects.remove(k);
                state.next_revision();
            }
        }
    }
}

/// Binds every pending pod to a Ready, schedulable node whose taints it tolerates, the one with the
/// fewest pods first; a pod no node can take stays Pending.
fn schedule(state: &mut KubeSimState) {
    let mut load: BTreeMap<String, usize> = state.nodes.keys().map(|n| (n.clone(), 0)).collect();
    for (_, p) in objects_of(state, "", "pods") {
        if let Some(n) = p.pointer("/spec/nodeName").and_then(Value::as_str)
            && let Some(c) = load.get_mut(n)
        {
            *c += 1;
        }
    }
    for (key, pod) in objects_of(state, "", "pods") {
        let bound = pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        if bound {
            // A pod made bound (by `create` or apply with `spec.nodeName`) runs once its node's kubelet sees it.
            let node_name = pod["spec"]["nodeName"].as_str().unwrap_or("").to_owned();
            if pod
                .pointer("/status/phase")
                .and_then(Value::as_str)
                .is_none()
                && let Some(node) = state.nodes.get(&node_name).cloned()
                && let Some(p) = state.objects.get_mut(&key)
            {
                p["status"] = running_status(&node, &pod["spec"]);
            }
            continue;
        }
        let tolerations = pod.pointer("/spec/tolerations");
        let target = state
            .nodes
            .iter()
            .filter(|(_, n)| n.ready && !n.unschedulable && tolerates(tolerations, n))
            .min_by_key(|(name, _)| load.get(*name).copied().unwrap_or(0))
            .map(|(name, n)| (name.clone(), n.clone()));
        let Some((node_name, node)) = target else {
            if pod
                .pointer("/status/phase")
                .and_then(Value::as_str)
                .is_none()
                && let Some(p) = state.objects.get_mut(&key)
            {
                p["status"] = pending_status();
            }
            continue;
        };
        *load.entry(node_name.clone()).or_default() += 1;
        let rv = state.next_revision();
        if let Some(p) = state.objects.get_mut(&key) {
            p["spec"]["nodeName"] = json!(node_name);
            p["status"] = running_status(&node, &p["spec"]);
            p["metadata"]["resourceVersion"] = json!(rv.to_string());
        }
    }
    // A pod is Ready while its node's kubelet reports Ready (and runs it): NotReady when the node
    // goes, Ready again when it comes back.
    for (key, pod) in objects_of(state, "", "pods") {
        let Some(node_ready) = pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .and_then(|n| state.nodes.get(n))
            .map(|n| n.ready)
        else {
            continue;
        };
        if pod.pointer("/status/phase").and_then(Value::as_str) != Some("Running")
            || is_pod_ready(&pod) == node_ready
        {
            continue;
        }
        let rv = state.next_revision();
        let want = if node_ready { "True" } else { "False" };
        if let Some(p) = state.objects.get_mut(&key) {
            p["metadata"]["resourceVersion"] = json!(rv.to_string());
            for c in p
                .pointer_mut("/status/conditions")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
                .filter(|c| c["type"] == "Ready" || c["type"] == "ContainersReady")
            {
                c["status"] = json!(want);
            }
            for c in p
                .pointer_mut("/status/containerStatuses")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                c["ready"] = json!(node_ready);
            }
        }
    }
}

/// `status` of DaemonSets, Deployments and ReplicaSets, from their pods (what `kubectl get` shows).
fn statuses(state: &mut KubeSimState) {
    for (key, ds) in objects_of(state, "apps", "daemonsets") {
        let pods = pods_owned_by(state, &key.namespace, "DaemonSet", &key.name);
        let ready = pods.iter().filter(|(_, p)| is_pod_ready(p)).count();
        let status = json!({
            "currentNumberScheduled": pods.len(), "desiredNumberScheduled": pods.len(),
            "numberReady": ready, "numberAvailable": ready, "updatedNumberScheduled": pods.len(),
            "numberMisscheduled": 0,
            "observedGeneration": ds.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
        });
        set_status(state, &key, status);
    }
    for (key, rs) in objects_of(state, "apps", "replicasets") {
        let pods = pods_owned_by(state, &key.namespace, "ReplicaSet", &key.name);
        let ready = pods.iter().filter(|(_, p)| is_pod_ready(p)).count();
        let status = json!({
            "replicas": pods.len(), "readyReplicas": ready, "availableReplicas": ready,
            "fullyLabeledReplicas": pods.len(),
            "observedGeneration": rs.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
        });
        set_status(state, &key, status);
    }
    for (key, deploy) in objects_of(state, "apps", "deployments") {
        let mut pods = Vec::new();
        for (rs_key, rs) in objects_of(state, "apps", "replicasets") {
            if rs_key.namespace == key.namespace
                && controller_of(&rs) == Some(("Deployment", key.name.as_str()))
            {
                pods.extend(pods_owned_by(
                    state,
                    &key.namespace,
                    "ReplicaSet",
                    &rs_key.name,
                ));
            }
        }
        let ready = pods.iter().filter(|(_, p)| is_pod_ready(p)).count();
        let wanted = deploy
            .pointer("/spec/replicas")
            .and_then(Value::as_u64)
            .unwrap_or(1) as usize;
        let available = ready >= wanted;
        let status = json!({
            "replicas": pods.len(), "readyReplicas": ready, "availableReplicas": ready,
            "updatedReplicas": pods.len(), "unavailableReplicas": wanted.saturating_sub(ready),
            "observedGeneration": deploy.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
            "conditions": [{
                "type": "Available", "status": if available { "True" } else { "False" },
                "reason": if available { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" },
            }],
        });
        set_status(state, &key, status);
    }
    for (key, _) in objects_of(state, "policy", "poddisruptionbudgets") {
        if let Some(status) = budget_status(state, &key) {
            set_status(state, &key, status);
        }
    }
}

/// Writes `status` unless it is unchanged (so a settled cluster's revision stands still).
fn set_status(state: &mut KubeSimState, key: &ObjectKey, status: Value) {
    let same = state.objects.get(key).and_then(|o| o.get("status")) == Some(&status);
    if same {
        return;
    }
    let rv = state.next_revision();
    if let Some(o) = state.objects.get_mut(key) {
        o["status"] = status;
        o["metadata"]["resourceVersion"] = json!(rv.to_string());
    }
}

/// `IntOrString` scaled against `total`, rounding up (`intstr.GetScaledValueFromIntOrPercent(…,
/// true)`, as the disruption controller calls it).
fn scaled(value: &Value, total: usize) -> Option<usize> {
    if let Some(n) = value.as_u64() {
        return Some(n as usize);
    }
    let p: usize = value.as_str()?.strip_suffix('%')?.parse().ok()?;
    Some((p * total).div_ceil(100))
}

/// The pods a budget covers: same namespace, labels matching its selector (a nil selector covers
/// none, an empty one every pod: policy/v1 semantics).
fn budget_pods(state: &KubeSimState, key: &ObjectKey) -> Vec<(ObjectKey, Value)> {
    let Some(pdb) = state.objects.get(key) else {
        return Vec::new();
    };
    let Some(selector) =
        Selector::from_label_selector(pdb.pointer("/spec/selector").unwrap_or(&Value::Null))
    else {
        return Vec::new();
    };
    objects_of(state, "", "pods")
        .into_iter()
        .filter(|(k, p)| k.namespace == key.namespace && selector.matches(labels_of(p)))
        .collect()
}

/// `getExpectedScale`: the sum of the scales of the covered pods' controllers, each counted once (a
/// Deployment's replicas for the pods of its ReplicaSets, a bare ReplicaSet's own); pods without a
/// controller are left out. A controller without a scale the disruption controller knows (a DaemonSet
/// is not among its finders) is an error, which it answers by failing safe.
fn expected_scale(
    state: &KubeSimState,
    ns: &str,
    pods: &[(ObjectKey, Value)],
) -> Result<usize, String> {
    let mut scales: BTreeMap<String, usize> = BTreeMap::new();
    let replicas = |doc: &Value| {
        doc.pointer("/spec/replicas")
            .and_then(Value::as_u64)
            .unwrap_or(1) as usize
    };
    let get = |plural: &str, name: &str| {
        state.objects.get(&ObjectKey {
            group: "apps".into(),
            plural: plural.into(),
            namespace: ns.to_owned(),
            name: name.to_owned(),
        })
    };
    for (key, pod) in pods {
        let Some((kind, name)) = controller_of(pod) else {
            continue;
        };
        let found = match kind {
            "ReplicaSet" => get("replicasets", name).map(|rs| match controller_of(rs) {
                Some(("Deployment", d)) => (
                    format!("Deployment/{d}"),
                    get("deployments", d).map_or(0, replicas),
                ),
                _ => (format!("ReplicaSet/{name}"), replicas(rs)),
            }),
            "Deployment" => {
                get("deployments", name).map(|d| (format!("Deployment/{name}"), replicas(d)))
            }
            _ => None,
        };
        let (controller, scale) =
            found.ok_or_else(|| format!("found no controllers for pod \"{}\"", key.name))?;
        scales.insert(controller, scale);
    }
    Ok(scales.values().sum())
}

/// The budget's status as the disruption controller writes it (`getExpectedPodCount`,
/// `countHealthyPods`, `updatePdbStatus`): with `maxUnavailable`, expected pods are the controllers'
/// scale and desired healthy is expected minus it (percentages rounded up); with an integer
/// `minAvailable`, expected pods are the covered pods and desired healthy the number; with a
/// percentage, expected is the scale again; with neither, both stay 0. Current healthy counts the
/// Ready pods, and `disruptionsAllowed = healthy - desired`, but 0 when that is negative or nothing
/// is expected (so a budget that matches no pod yet is safe).
pub fn budget_status(state: &KubeSimState, key: &ObjectKey) -> Option<Value> {
    let pdb = state.objects.get(key)?;
    let pods = budget_pods(state, key);
    let healthy = pods.iter().filter(|(_, p)| is_pod_ready(p)).count();
    let spec = pdb.get("spec").cloned().unwrap_or(json!({}));
    let set = |f: &str| spec.get(f).filter(|v| !v.is_null()).cloned();
    let counts = if let Some(max) = set("maxUnavailable") {
        expected_scale(state, &key.namespace, &pods).map(|expected| {
            let max = scaled(&max, expected).unwrap_or(0);
            (expected, expected.saturating_sub(max))
        })
    } else if let Some(min) = set("minAvailable") {
        match min.as_u64() {
            Some(n) => Ok((pods.len(), n as usize)),
            None => expected_scale(state, &key.namespace, &pods)
                .map(|expected| (expected, scaled(&min, expected).unwrap_or(expected))),
        }
    } else {
        Ok((0, 0))
    };
    let generation = pdb
        .pointer("/metadata/generation")
        .cloned()
        .unwrap_or(json!(1));
    let (expected, desired, allowed, reason, message) = match counts {
        Ok((expected, desired)) => {
            let allowed = if expected == 0 {
                0
            } else {
                healthy.saturating_sub(desired)
            };
            let reason = if allowed > 0 {
                "SufficientPods"
            } else {
                "InsufficientPods"
            };
            (expected, desired, allowed, reason, String::new())
        }
        // failSafe: nothing may be disrupted while the budget cannot be computed.
        Err(e) => (0, 0, 0, "SyncFailed", e),
    };
    Some(json!({
        "observedGeneration": generation,
        "disruptionsAllowed": allowed,
        "currentHealthy": healthy,
        "desiredHealthy": desired,
        "expectedPods": expected,
        "conditions": [{
            "type": "DisruptionAllowed",
            "status": if allowed > 0 { "True" } else { "False" },
            "reason": reason,
            "message": message,
            "observedGeneration": generation,
        }],
    }))
}

fn too_many_requests(budget: &str, desired: u64, healthy: u64) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "TooManyRequests",
        "Cannot evict pod as it would violate the pod's disruption budget.",
    );
    e.details = Some(json!({
        "causes": [{
            "reason": "DisruptionBudget",
            "message": format!(
                "The disruption budget {budget} needs {desired} healthy pods and has {healthy} currently"
            ),
        }],
    }));
    e
}

/// `POST …/pods/NAME/eviction`, as `pkg/registry/core/pod/storage/eviction.go` decides it: a pod that
/// is not running (Pending, Succeeded, Failed) goes at once; otherwise the one budget covering it
/// must allow a disruption (more than one budget is a 500, none means go), else 429 with a
/// `DisruptionBudget` cause; an unhealthy pod goes when its budget is satisfied anyway
/// (`unhealthyPodEvictionPolicy: IfHealthyBudget`, the default). An accepted eviction deletes the pod
/// (the simulated kubelet stops it at once), and the controllers make its replacement.
pub fn evict(state: &mut KubeSimState, ns: &str, name: &str) -> Result<(), ApiError> {
    let key = ObjectKey::pod(ns, name);
    let pod_resource = super::discovery::find("", "v1", "pods").expect("pods are served");
    let pod = state
        .objects
        .get(&key)
        .cloned()
        .ok_or_else(|| ApiError::not_found(pod_resource, name))?;
    let phase = pod
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("Pending");
    if phase == "Running" {
        let budgets: Vec<ObjectKey> = objects_of(state, "policy", "poddisruptionbudgets")
            .into_iter()
            .filter(|(k, _)| budget_pods(state, k).iter().any(|(p, _)| *p == key))
            .map(|(k, _)| k)
            .collect();
        if budgets.len() > 1 {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
            ));
        }
        if let Some(budget) = budgets.first() {
            let status = budget_status(state, budget).unwrap_or(json!({}));
            let n = |f: &str| status.get(f).and_then(Value::as_u64).unwrap_or(0);
            // An unhealthy pod: `AlwaysAllow` lets it go; `IfHealthyBudget` (the default) when the
            // budget is met anyway and asks for something.
            let always = state
                .objects
                .get(budget)
                .and_then(|b| b.pointer("/spec/unhealthyPodEvictionPolicy"))
                .and_then(Value::as_str)
                == Some("AlwaysAllow");
            let satisfied_anyway = !is_pod_ready(&pod)
                && (always
                    || (n("currentHealthy") >= n("desiredHealthy") && n("desiredHealthy") > 0));
            if !satisfied_anyway && n("disruptionsAllowed") == 0 {
                state.refused_evictions.push(format!("{ns}/{name}"));
                tracing::info!(pod = %format!("{ns}/{name}"), budget = %budget.name, "pod eviction refused by its disruption budget");
                return Err(too_many_requests(
                    &budget.name,
                    n("desiredHealthy"),
                    n("currentHealthy"),
                ));
            }
        }
    }
    state.objects.remove(&key);
    state.next_revision();
    // The e2e tests read drains from `kiln sim talos`'s log: it is all they can see of them.
    tracing::info!(pod = %format!("{ns}/{name}"), "pod evicted");
    state.evictions.push(format!("{ns}/{name}"));
    reconcile(state);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(role: &str) -> SimNode {
        SimNode {
            ready: true,
            role: role.into(),
            ..SimNode::default()
        }
    }

    fn cluster() -> KubeSimState {
        let mut s = KubeSimState::default();
        s.put_node("cp-1", node("control-plane"));
        s.put_node("wk-2", node("worker"));
        s.put_node("wk-3", node("worker"));
        s.create(json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": { "name": "flannel", "namespace": "kube-system" },
            "spec": { "selector": { "matchLabels": { "app": "flannel" } }, "template": {
                "metadata": { "labels": { "app": "flannel" } },
                "spec": { "tolerations": [{ "operator": "Exists", "effect": "NoSchedule" }],
                          "containers": [{ "name": "flannel", "image": "flannel:v0.27" }] } } },
        }))
        .unwrap();
        s.create(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": { "name": "web", "namespace": "default" },
            "spec": { "replicas": 2, "selector": { "matchLabels": { "app": "web" } }, "template": {
                "metadata": { "labels": { "app": "web" } },
                "spec": { "containers": [{ "name": "web", "image": "nginx" }] } } },
        }))
        .unwrap();
        s
    }

    fn pdb(s: &mut KubeSimState, spec: Value) {
        let mut spec = spec;
        spec["selector"] = json!({ "matchLabels": { "app": "web" } });
        s.create(json!({
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": { "name": "web", "namespace": "default" }, "spec": spec,
        }))
        .unwrap();
    }

    fn web_pod_on(s: &KubeSimState, node: &str) -> String {
        s.pods_on(node)
            .into_iter()
            .find(|p| p.starts_with("default/web-"))
            .unwrap_or_else(|| panic!("no web pod on {node}: {:?}", s.pods_on(node)))
    }

    #[test]
    fn daemonsets_run_everywhere_and_deployments_spread_over_workers() {
        let s = cluster();
        for n in ["cp-1", "wk-2", "wk-3"] {
            assert!(
                s.pods_on(n)
                    .iter()
                    .any(|p| p.starts_with("kube-system/flannel-")),
                "{n}"
            );
        }
        assert!(s.pods_on("cp-1").iter().all(|p| !p.starts_with("default/")));
        web_pod_on(&s, "wk-2");
        web_pod_on(&s, "wk-3");
    }

    #[test]
    fn a_control_plane_that_allows_scheduling_takes_workloads() {
        let mut s = KubeSimState::default();
        s.put_node(
            "solo-cp-1",
            SimNode {
                control_plane_schedulable: true,
                ..node("control-plane")
            },
        );
        s.create(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": { "name": "web", "namespace": "default" },
            "spec": { "replicas": 1, "selector": { "matchLabels": { "app": "web" } }, "template": {
                "metadata": { "labels": { "app": "web" } },
                "spec": { "containers": [{ "name": "web", "image": "nginx" }] } } },
        }))
        .unwrap();
        assert_eq!(s.pods_on("solo-cp-1").len(), 1);
        // Its replacement finds only a tainted control plane: it stays Pending, unbound.
        s.put_node("tainted-cp-2", node("control-plane"));
        s.nodes.remove("solo-cp-1");
        reconcile(&mut s);
        assert!(
            s.pods_on("tainted-cp-2").is_empty(),
            "a tainted control plane took a pod"
        );
        let pending: Vec<&Value> = s
            .objects
            .iter()
            .filter(|(k, _)| k.plural == "pods" && k.namespace == "default")
            .map(|(_, p)| p)
            .collect();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0]["status"]["phase"], "Pending");
        assert!(pending[0].pointer("/spec/nodeName").is_none());
    }

    #[test]
    fn a_budget_allows_what_its_numbers_allow() {
        // (spec, disruptions allowed, expected pods); the Deployment wants 2, both Ready.
        for (spec, allowed, expected) in [
            (json!({ "minAvailable": 2 }), 0, 2),
            (json!({ "minAvailable": 1 }), 1, 2),
            (json!({ "maxUnavailable": 1 }), 1, 2),
            (json!({ "maxUnavailable": "0%" }), 0, 2),
            (json!({ "minAvailable": "50%" }), 1, 2),
            // Neither: nothing expected, so nothing may be disrupted.
            (json!({}), 0, 0),
        ] {
            let mut s = cluster();
            pdb(&mut s, spec.clone());
            let key = ObjectKey {
                group: "policy".into(),
                plural: "poddisruptionbudgets".into(),
                namespace: "default".into(),
                name: "web".into(),
            };
            let status = budget_status(&s, &key).unwrap();
            assert_eq!(status["disruptionsAllowed"], allowed, "{spec}");
            assert_eq!(status["expectedPods"], expected, "{spec}");
            assert_eq!(
                s.objects[&key]["status"], status,
                "stored as the controller writes it"
            );
        }
    }

    #[test]
    fn a_percentage_over_daemonset_pods_fails_safe() {
        let mut s = cluster();
        s.create(json!({
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": { "name": "flannel", "namespace": "kube-system" },
            "spec": { "maxUnavailable": 1, "selector": { "matchLabels": { "app": "flannel" } } },
        }))
        .unwrap();
        let key = ObjectKey {
            group: "policy".into(),
            plural: "poddisruptionbudgets".into(),
            namespace: "kube-system".into(),
            name: "flannel".into(),
        };
        let status = budget_status(&s, &key).unwrap();
        assert_eq!(status["disruptionsAllowed"], 0);
        assert_eq!(status["conditions"][0]["reason"], "SyncFailed");
        let pod = s
            .pods_on("wk-2")
            .into_iter()
            .find(|p| p.starts_with("kube-system/"))
            .unwrap();
        let (ns, name) = pod.split_once('/').unwrap();
        assert_eq!(evict(&mut s, ns, name).unwrap_err().code, 429);
    }

    #[test]
    fn an_eviction_past_the_budget_is_refused_and_the_pod_stays() {
        let mut s = cluster();
        pdb(&mut s, json!({ "minAvailable": 2 }));
        let pod = web_pod_on(&s, "wk-2");
        let (ns, name) = pod.split_once('/').unwrap();
        let err = evict(&mut s, ns, name).unwrap_err();
        assert_eq!((err.code.as_u16(), err.reason), (429, "TooManyRequests"));
        assert!(
            err.status()["details"]["causes"][0]["message"]
                .as_str()
                .unwrap()
                .contains("needs 2 healthy pods and has 2 currently")
        );
        assert!(s.pods_on("wk-2").contains(&pod));
        assert_eq!(s.refused_evictions, vec![pod]);
    }

    #[test]
    fn an_allowed_eviction_is_replaced_on_a_schedulable_node_only() {
        let mut s = cluster();
        pdb(&mut s, json!({ "minAvailable": 1 }));
        s.nodes.get_mut("wk-2").unwrap().unschedulable = true;
        let pod = web_pod_on(&s, "wk-2");
        let (ns, name) = pod.split_once('/').unwrap();
        evict(&mut s, ns, name).unwrap();
        assert!(
            !s.pods_on("wk-2")
                .iter()
                .any(|p| p.starts_with("default/web-"))
        );
        let on_3 = s
            .pods_on("wk-3")
            .iter()
            .filter(|p| p.starts_with("default/web-"))
            .count();
        assert_eq!(
            on_3, 2,
            "the replacement went to the only schedulable worker"
        );
        // The DaemonSet pod stays on the cordoned node.
        assert!(
            s.pods_on("wk-2")
                .iter()
                .any(|p| p.starts_with("kube-system/flannel-"))
        );
    }

    #[test]
    fn pods_follow_their_nodes_readiness_and_budgets_with_them() {
        let mut s = cluster();
        pdb(&mut s, json!({ "minAvailable": 1 }));
        let key = ObjectKey {
            group: "policy".into(),
            plural: "poddisruptionbudgets".into(),
            namespace: "default".into(),
            name: "web".into(),
        };
        s.set_node_ready("wk-3", false);
        assert_eq!(budget_status(&s, &key).unwrap()["currentHealthy"], 1);
        assert_eq!(budget_status(&s, &key).unwrap()["disruptionsAllowed"], 0);
        s.set_node_ready("wk-3", true);
        assert_eq!(budget_status(&s, &key).unwrap()["currentHealthy"], 2);
        assert_eq!(budget_status(&s, &key).unwrap()["disruptionsAllowed"], 1);
    }

    #[test]
    fn a_deleted_node_takes_its_pods_with_it() {
        let mut s = cluster();
        s.nodes.remove("wk-3");
        reconcile(&mut s);
        assert!(s.pods_on("wk-3").is_empty());
        assert_eq!(
            s.pods_on("wk-2")
                .iter()
                .filter(|p| p.starts_with("default/web-"))
                .count(),
            2
        );
    }
}
