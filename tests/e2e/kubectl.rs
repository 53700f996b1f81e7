//! Issue 26: the real `kubectl` (pinned in the test venv) against a cluster kiln made, with the
//! kubeconfig kiln stored in OpenBao, as a person would use it: `get nodes`, `api-resources`,
//! `apply --server-side`, `cordon`, a `drain --ignore-daemonsets` that a PodDisruptionBudget holds
//! (kubectl retries the 429 until its `--timeout`; nothing is evicted past the budget, as the
//! simulator's log shows) and one it lets through, and `uncordon`. The API is `kiln sim talos`'s
//! Kubernetes API at the cluster's VIP.

use serde_json::Value;

use crate::checks::{assert_converged, assert_exact_vms};
use crate::credentials::stored;
use crate::fixture::ClusterFixture;
use crate::kubectl_cli::Kubectl;
use crate::support::World;

const WORKLOADS: &str = "\
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: kube-flannel-ds
  namespace: kube-system
spec:
  selector:
    matchLabels: {app: flannel}
  template:
    metadata:
      labels: {app: flannel}
    spec:
      tolerations:
      - {operator: Exists, effect: NoSchedule}
      containers:
      - {name: kube-flannel, image: 'ghcr.io/flannel-io/flannel:v0.27.4'}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - {name: web, image: 'nginx:1.29'}
";

fn budget(min_available: u32) -> String {
    format!(
        "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata:\n  name: web\n  namespace: \
         default\nspec:\n  minAvailable: {min_available}\n  selector:\n    matchLabels: {{app: web}}\n"
    )
}

/// `default/web-…` pods on `node`, as kubectl lists them.
/// The bootstrap manifests' CoreDNS pods sit on the workers from the start, unevenly; without them
/// the simulated scheduler (least loaded first) puts one web pod on each worker, which the tests
/// here reason about.
fn without_coredns(k: &Kubectl) {
    let scaled = k.run_with_stdin(
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        Some(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: coredns\n  namespace: kube-system\n\
             spec:\n  replicas: 0\n",
        ),
    );
    assert!(scaled.success(), "{scaled}");
}

fn web_pods_on(k: &Kubectl, node: &str) -> Vec<String> {
    let selector = format!("spec.nodeName={node}");
    let out = k.ok(&[
        "get",
        "pods",
        "-n",
        "default",
        "-l",
        "app=web",
        "--field-selector",
        &selector,
        "-o",
        "json",
    ]);
    let list: Value = serde_json::from_str(&out).expect("kubectl printed JSON");
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned())
        .collect()
}

fn count(log: &str, what: &str) -> usize {
    log.lines().filter(|l| l.contains(what)).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_with_the_stored_kubeconfig_gets_applies_cordons_and_drains_within_a_budget() {
    let c = ClusterFixture::new("kctl", 1, 2);
    let world = World::start(vec![c.clone()]).await;
    let run = world.run_once();
    assert!(run.success(), "provisioning:\n{run}");
    assert_exact_vms(&world, &[&c], &[]);
    assert_converged(&world, &c).await;

    let kubeconfig = stored(&world, &c.name, "kubeconfig", "kubeconfig").await;
    let dir = world.dir.path().join("kubectl");
    std::fs::create_dir_all(&dir).unwrap();
    let k = Kubectl::new(&dir, kubeconfig.expose());
    let (cp, wk2, wk3) = ("kctl-cp-1", "kctl-wk-2", "kctl-wk-3");

    // Every node Ready, with its role and the kubelet version of its config.
    let nodes = k.ok(&["get", "nodes"]);
    let rows: Vec<Vec<&str>> = nodes
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    let seen: Vec<(&str, &str, &str, &str)> =
        rows.iter().map(|r| (r[0], r[1], r[2], r[4])).collect();
    assert_eq!(
        seen,
        [
            (cp, "Ready", "control-plane", "v1.34.1"),
            (wk2, "Ready", "worker", "v1.34.1"),
            (wk3, "Ready", "worker", "v1.34.1"),
        ],
        "{nodes}"
    );
    let resources = k.ok(&["api-resources"]);
    for want in [
        "pods",
        "nodes",
        "daemonsets",
        "deployments",
        "poddisruptionbudgets",
        "leases",
    ] {
        assert!(
            resources
                .lines()
                .any(|l| l.split_whitespace().next() == Some(want)),
            "{want} is not listed:\n{resources}"
        );
    }

    // Workloads by server-side apply: flannel on every node, web on each worker, and a budget that
    // allows no disruption of web.
    without_coredns(&k);
    let applied = k.run_with_stdin(
        &["apply", "--server-side", "-f", "-"],
        Some(&format!("{WORKLOADS}---\n{}", budget(2))),
    );
    assert!(applied.success(), "apply: {applied}");
    for line in [
        "daemonset.apps/kube-flannel-ds serverside-applied",
        "deployment.apps/web serverside-applied",
        "poddisruptionbudget.policy/web serverside-applied",
    ] {
        assert!(applied.stdout.contains(line), "{applied}");
    }
    let held = web_pods_on(&k, wk2);
    assert_eq!(held.len(), 1, "one web pod on {wk2}");
    assert_eq!(web_pods_on(&k, wk3).len(), 1, "one web pod on {wk3}");
    assert!(
        web_pods_on(&k, cp).is_empty(),
        "the control plane is tainted"
    );

    // cordon, then a drain the budget holds: kubectl retries until its timeout, the pod stays.
    assert!(
        k.ok(&["cordon", wk2])
            .contains(&format!("node/{wk2} cordoned"))
    );
    let drain = k.run(&["drain", wk2, "--ignore-daemonsets", "--timeout=7s"]);
    assert!(!drain.success(), "the drain went past the budget: {drain}");
    assert!(
        drain
            .stderr
            .contains("Cannot evict pod as it would violate the pod's disruption budget"),
        "{drain}"
    );
    assert_eq!(
        web_pods_on(&k, wk2),
        held,
        "the pod the budget holds was moved"
    );
    let log = world.sim.log_text();
    assert_eq!(
        count(&log, "pod evicted"),
        0,
        "evicted past the budget:\n{log}"
    );
    assert!(
        count(&log, "pod eviction refused") >= 2,
        "kubectl did not retry the refused eviction:\n{log}"
    );
    let node = k.ok(&["get", "node", wk2]);
    assert!(node.contains("Ready,SchedulingDisabled"), "{node}");

    // The budget relaxed to one: the drain goes through, the replacement runs on the other worker,
    // and flannel stays (--ignore-daemonsets).
    let relaxed = k.run_with_stdin(&["apply", "--server-side", "-f", "-"], Some(&budget(1)));
    assert!(relaxed.success(), "{relaxed}");
    let drained = k.ok(&["drain", wk2, "--ignore-daemonsets", "--timeout=30s"]);
    assert!(
        drained.contains(&format!("node/{wk2} drained")),
        "{drained}"
    );
    assert!(
        drained.contains(&format!("pod/{} evicted", held[0])),
        "{drained}"
    );
    assert!(web_pods_on(&k, wk2).is_empty());
    assert_eq!(web_pods_on(&k, wk3).len(), 2);
    let log = world.sim.log_text();
    assert_eq!(count(&log, "pod evicted"), 1, "{log}");
    let flannel = k.ok(&[
        "get",
        "pods",
        "-n",
        "kube-system",
        "-l",
        "app=flannel",
        "-o",
        "wide",
    ]);
    assert_eq!(flannel.lines().skip(1).count(), 3, "{flannel}");
    assert!(flannel.contains(wk2), "{flannel}");

    assert!(
        k.ok(&["uncordon", wk2])
            .contains(&format!("node/{wk2} uncordoned"))
    );
    let nodes = k.ok(&["get", "nodes"]);
    assert!(!nodes.contains("SchedulingDisabled"), "{nodes}");
}

/// The line number in `log` of the first line holding every one of `words`.
fn line_of(log: &str, words: &[&str]) -> Option<usize> {
    log.lines()
        .position(|l| words.iter().all(|w| l.contains(w)))
}

/// kiln's own drain (a worker scale-down, through the daemon) against a PodDisruptionBudget: while the
/// budget holds, kiln keeps asking (429s in the simulator's log), evicts nothing, and neither deletes
/// the Node nor destroys the VM; once the budget allows one disruption the pod is evicted, then the
/// Node is deleted and the VM destroyed.
#[tokio::test(flavor = "multi_thread")]
async fn kilns_scale_down_drain_waits_for_a_budget_and_never_evicts_past_it() {
    let c = ClusterFixture::new("kdrain", 1, 2);
    let world = World::start(vec![c.clone()]).await;
    let run = world.run_once();
    assert!(run.success(), "provisioning:\n{run}");
    assert_converged(&world, &c).await;
    let kubeconfig = stored(&world, &c.name, "kubeconfig", "kubeconfig").await;
    let dir = world.dir.path().join("kubectl");
    std::fs::create_dir_all(&dir).unwrap();
    let k = Kubectl::new(&dir, kubeconfig.expose());
    let (wk2, wk3) = ("kdrain-wk-2", "kdrain-wk-3");
    let leaving = c.wanted().into_iter().find(|w| w.name == wk3).unwrap();

    without_coredns(&k);
    let applied = k.run_with_stdin(
        &["apply", "--server-side", "-f", "-"],
        Some(&format!("{WORKLOADS}---\n{}", budget(2))),
    );
    assert!(applied.success(), "{applied}");
    let held = web_pods_on(&k, wk3);
    assert_eq!(
        held.len(),
        1,
        "one web pod on {wk3}:\n{}",
        k.ok(&["get", "pods", "-A", "-o", "wide"])
    );

    let mut smaller = c.clone();
    smaller.workers = 1;
    world.push_file(&smaller.path(), &smaller.yaml(), "workers 2 -> 1");
    let mut daemon = world.spawn_daemon(None);

    // Held: kiln's drain keeps asking and is refused; nothing is evicted, the Node and the VM stay.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while count(&world.sim.log_text(), "pod eviction refused") < 3 {
        daemon.assert_running();
        assert!(
            std::time::Instant::now() < deadline,
            "kiln never asked to evict {}:\n{}\n{}",
            held[0],
            world.sim.log_text(),
            daemon.stderr_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let log = world.sim.log_text();
    assert_eq!(
        count(&log, "pod evicted"),
        0,
        "evicted past the budget:\n{log}"
    );
    assert!(line_of(&log, &["node deleted", wk3]).is_none(), "{log}");
    assert!(
        world.vms().contains_key(&leaving.vmid),
        "the VM went without its drain"
    );
    assert_eq!(web_pods_on(&k, wk3), held);

    // The budget allows one: the drain finishes, then the Node and the VM go.
    let relaxed = k.run_with_stdin(&["apply", "--server-side", "-f", "-"], Some(&budget(1)));
    assert!(relaxed.success(), "{relaxed}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while world.vms().contains_key(&leaving.vmid) {
        daemon.assert_running();
        assert!(
            std::time::Instant::now() < deadline,
            "{wk3} was not removed after the budget relaxed:\n{}",
            daemon.stderr_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let log = world.sim.log_text();
    let evicted = line_of(&log, &["pod evicted", &held[0]])
        .unwrap_or_else(|| panic!("{} was never evicted:\n{log}", held[0]));
    let deleted = line_of(&log, &["node deleted", wk3])
        .unwrap_or_else(|| panic!("{wk3}'s Node was never deleted:\n{log}"));
    assert!(
        evicted < deleted,
        "the Node went before its pod was evicted:\n{log}"
    );
    assert_eq!(count(&log, "pod evicted"), 1, "{log}");
    assert_eq!(
        web_pods_on(&k, wk2).len(),
        2,
        "the replacement runs on the kept worker"
    );
}
