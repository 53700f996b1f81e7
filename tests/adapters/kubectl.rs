//! The real `kubectl` against the simulated Kubernetes API (`sim::kubernetes`) over HTTPS with a
//! client certificate: discovery, `get`, `api-resources`, `cordon`, `drain` held by a budget and
//! then let through, `uncordon`, server-side apply, and a Lease's optimistic concurrency, with nothing
//! in between mocked. The same API is driven through the binary, on a cluster kiln made, in
//! `tests/e2e/kubectl.rs`.

use std::sync::{Arc, Mutex};

use base64::Engine;
use kiln::sim::kubernetes::{KubeSimServer, KubeSimState, SimNode};
use serde_json::{Value, json};

use crate::kube::{Pki, pki, start_with};
use crate::kubectl_cli::Kubectl;

pub fn kubeconfig(server: &str, pki: &Pki) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: sim\n  cluster:\n    server: {server}\n    \
         certificate-authority-data: {}\nusers:\n- name: admin\n  user:\n    client-certificate-data: \
         {}\n    client-key-data: {}\ncontexts:\n- name: admin@sim\n  context:\n    cluster: sim\n    \
         user: admin\ncurrent-context: admin@sim\n",
        b64(&pki.ca_pem),
        b64(&pki.client_cert),
        b64(&pki.client_key)
    )
}

/// One control plane and two workers, Ready, with flannel's DaemonSet on each.
async fn cluster(ip: [u8; 4], pki: &Pki) -> KubeSimServer {
    let state = Arc::new(Mutex::new(KubeSimState::default()));
    {
        let mut s = state.lock().unwrap();
        for (name, role) in [
            ("sim-cp-1", "control-plane"),
            ("sim-wk-2", "worker"),
            ("sim-wk-3", "worker"),
        ] {
            s.put_node(
                name,
                SimNode {
                    ready: true,
                    role: role.into(),
                    kubelet_version: "v1.35.0".into(),
                    ..SimNode::default()
                },
            );
        }
        s.create(json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": { "name": "kube-flannel", "namespace": "kube-system" },
            "spec": { "selector": { "matchLabels": { "app": "flannel" } }, "template": {
                "metadata": { "labels": { "app": "flannel" } },
                "spec": { "tolerations": [{ "operator": "Exists", "effect": "NoSchedule" }],
                          "containers": [{ "name": "kube-flannel", "image": "flannel" }] } } },
        }))
        .unwrap();
    }
    start_with(ip, pki, state).await
}

const WEB: &str = "\
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
      - name: web
        image: nginx:1.29
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: web
  namespace: default
spec:
  minAvailable: MIN
  selector:
    matchLabels: {app: web}
";

fn web_pods_on(server: &KubeSimServer, node: &str) -> Vec<String> {
    server
        .state
        .lock()
        .unwrap()
        .pods_on(node)
        .into_iter()
        .filter(|p| p.starts_with("default/web-"))
        .collect()
}

/// Runs kubectl off the async runtime (the API it talks to runs on it).
async fn run(
    k: &Arc<Kubectl>,
    args: &[&str],
    stdin: Option<String>,
) -> crate::kubectl_cli::KubectlRun {
    let (k, args) = (
        k.clone(),
        args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>(),
    );
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        k.run_with_stdin(&args, stdin.as_deref())
    })
    .await
    .unwrap()
}

async fn ok(k: &Arc<Kubectl>, args: &[&str], stdin: Option<String>) -> String {
    let out = run(k, args, stdin).await;
    assert!(out.success(), "kubectl {}: {out}", args.join(" "));
    out.stdout
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_gets_cordons_drains_within_a_budget_and_applies() {
    let ip = [127, 0, 21, 1];
    let pki = pki(ip);
    let server = cluster(ip, &pki).await;
    let dir = tempfile::tempdir().unwrap();
    let k = Arc::new(Kubectl::new(
        dir.path(),
        &kubeconfig(&format!("https://{}", server.addr), &pki),
    ));

    let nodes = ok(&k, &["get", "nodes"], None).await;
    let rows: Vec<Vec<&str>> = nodes
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 3, "{nodes}");
    for row in &rows {
        assert_eq!((row[1], row[4]), ("Ready", "v1.35.0"), "{nodes}");
    }
    let version = ok(&k, &["version", "-o", "json"], None).await;
    assert!(version.contains("\"gitVersion\": \"v1.34.1\""), "{version}");

    let resources = ok(&k, &["api-resources"], None).await;
    for want in [
        "poddisruptionbudgets",
        "leases",
        "daemonsets",
        "clusterrolebindings",
        "nodes",
    ] {
        assert!(
            resources.lines().any(|l| l.starts_with(want)),
            "{want} missing:\n{resources}"
        );
    }

    // Server-side apply creates the Deployment (one pod on each worker) and a budget that allows no
    // disruption.
    let applied = ok(
        &k,
        &["apply", "--server-side", "-f", "-"],
        Some(WEB.replace("MIN", "2")),
    )
    .await;
    assert!(
        applied.contains("deployment.apps/web serverside-applied"),
        "{applied}"
    );
    assert!(
        applied.contains("poddisruptionbudget.policy/web serverside-applied"),
        "{applied}"
    );
    let on_2 = web_pods_on(&server, "sim-wk-2");
    assert_eq!((on_2.len(), web_pods_on(&server, "sim-wk-3").len()), (1, 1));
    let pdb = ok(&k, &["get", "pdb", "web", "-o", "json"], None).await;
    let pdb: Value = serde_json::from_str(&pdb).unwrap();
    assert_eq!(pdb["status"]["disruptionsAllowed"], 0);

    // A drain the budget holds: kubectl retries the refused eviction until its timeout, and the pod
    // stays where it is.
    let held = run(
        &k,
        &["drain", "sim-wk-2", "--ignore-daemonsets", "--timeout=7s"],
        None,
    )
    .await;
    assert!(
        !held.success(),
        "the drain went through a budget that allows nothing: {held}"
    );
    assert!(held.stderr.contains("disruption budget"), "{held}");
    assert!(held.stdout.contains("node/sim-wk-2 cordoned"), "{held}");
    assert_eq!(
        web_pods_on(&server, "sim-wk-2"),
        on_2,
        "the held pod was evicted"
    );
    {
        let s = server.state.lock().unwrap();
        assert!(
            s.evictions.is_empty(),
            "evicted past the budget: {:?}",
            s.evictions
        );
        assert!(
            s.refused_evictions.len() >= 2,
            "kubectl did not retry: {:?}",
            s.refused_evictions
        );
        assert!(s.nodes["sim-wk-2"].unschedulable);
    }
    let nodes = ok(&k, &["get", "node", "sim-wk-2"], None).await;
    assert!(nodes.contains("Ready,SchedulingDisabled"), "{nodes}");

    // The budget relaxed to one: the pod is evicted, its replacement runs on the other worker.
    ok(
        &k,
        &["apply", "--server-side", "-f", "-"],
        Some(WEB.replace("MIN", "1")),
    )
    .await;
    let drained = ok(
        &k,
        &["drain", "sim-wk-2", "--ignore-daemonsets", "--timeout=20s"],
        None,
    )
    .await;
    assert!(drained.contains("node/sim-wk-2 drained"), "{drained}");
    assert!(web_pods_on(&server, "sim-wk-2").is_empty());
    assert_eq!(web_pods_on(&server, "sim-wk-3").len(), 2);
    assert_eq!(server.state.lock().unwrap().evictions, on_2);
    // flannel stays: --ignore-daemonsets.
    assert!(
        server
            .state
            .lock()
            .unwrap()
            .pods_on("sim-wk-2")
            .iter()
            .any(|p| p.starts_with("kube-system/kube-flannel-"))
    );

    assert!(
        ok(&k, &["uncordon", "sim-wk-2"], None)
            .await
            .contains("node/sim-wk-2 uncordoned")
    );
    assert!(!server.state.lock().unwrap().nodes["sim-wk-2"].unschedulable);
    let pods = ok(&k, &["get", "pods", "-A", "-o", "wide"], None).await;
    assert!(
        pods.contains("kube-flannel-") && pods.contains("Running"),
        "{pods}"
    );

    // A Lease: created by apply, then a replace carrying a stale resourceVersion is a conflict.
    let lease = "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata:\n  name: kiln\n  \
                 namespace: kube-system\nspec:\n  holderIdentity: HOLDER\n  leaseDurationSeconds: 15\n";
    ok(
        &k,
        &["apply", "--server-side", "-f", "-"],
        Some(lease.replace("HOLDER", "a")),
    )
    .await;
    let first: Value = serde_json::from_str(
        &ok(
            &k,
            &["get", "lease", "kiln", "-n", "kube-system", "-o", "json"],
            None,
        )
        .await,
    )
    .unwrap();
    ok(
        &k,
        &["apply", "--server-side", "-f", "-"],
        Some(lease.replace("HOLDER", "b")),
    )
    .await;
    let mut stale = first.clone();
    stale["spec"]["holderIdentity"] = json!("c");
    let conflict = run(&k, &["replace", "-f", "-"], Some(stale.to_string())).await;
    assert!(!conflict.success(), "{conflict}");
    assert!(
        conflict.stderr.contains("the object has been modified"),
        "{conflict}"
    );
    let now: Value = serde_json::from_str(
        &ok(
            &k,
            &["get", "lease", "kiln", "-n", "kube-system", "-o", "json"],
            None,
        )
        .await,
    )
    .unwrap();
    assert_eq!(now["spec"]["holderIdentity"], "b");

    // The bootstrap manifests' other kinds apply too.
    let bootstrap = "\
apiVersion: v1
kind: ServiceAccount
metadata: {name: flannel, namespace: kube-system}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: kube-flannel-cfg, namespace: kube-system}
data: {net-conf.json: '{\"Network\": \"10.244.0.0/16\"}'}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: flannel}
rules:
- {apiGroups: [''], resources: [pods], verbs: [get]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: flannel}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: flannel}
subjects:
- {kind: ServiceAccount, name: flannel, namespace: kube-system}
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system}
spec:
  clusterIP: 10.96.0.10
  ports:
  - {name: dns, port: 53, protocol: UDP}
";
    let applied = ok(
        &k,
        &["apply", "--server-side", "-f", "-"],
        Some(bootstrap.to_owned()),
    )
    .await;
    for line in [
        "serviceaccount/flannel serverside-applied",
        "configmap/kube-flannel-cfg serverside-applied",
        "clusterrole.rbac.authorization.k8s.io/flannel serverside-applied",
        "clusterrolebinding.rbac.authorization.k8s.io/flannel serverside-applied",
        "service/kube-dns serverside-applied",
    ] {
        assert!(applied.contains(line), "{line}:\n{applied}");
    }
    let describe = ok(&k, &["describe", "node", "sim-wk-3"], None).await;
    for want in [
        "Kubelet Version:",
        "v1.35.0",
        "kube-flannel-",
        "HolderIdentity:  sim-wk-3",
    ] {
        assert!(describe.contains(want), "{want}:\n{describe}");
    }
    let all = ok(&k, &["get", "all", "-A"], None).await;
    assert!(
        all.lines()
            .any(|l| l.contains("deployment.apps/web") && l.contains("2/2")),
        "{all}"
    );

    // Deleting: kubectl waits for the object to be gone, which it is at once.
    let deleted = ok(&k, &["delete", "lease", "kiln", "-n", "kube-system"], None).await;
    assert!(
        deleted.contains("lease.coordination.k8s.io \"kiln\" deleted"),
        "{deleted}"
    );
    let gone = run(&k, &["get", "lease", "kiln", "-n", "kube-system"], None).await;
    assert!(
        !gone.success() && gone.stderr.contains("NotFound"),
        "{gone}"
    );

    // Unknown things are 404 Status objects, not a crash.
    let missing = run(&k, &["get", "--raw", "/apis/batch/v1/jobs"], None).await;
    assert!(
        !missing.success() && missing.stderr.contains("NotFound"),
        "{missing}"
    );
    ok(&k, &["get", "nodes"], None).await;
}

/// kiln's own drain (`kube::KubeClient::drain`, used before a resize reboot and a scale-down) against
/// the same API: it waits on the budget's 429s, never evicting past it, and goes on once the budget
/// allows a disruption.
#[tokio::test(flavor = "multi_thread")]
async fn kilns_drain_waits_on_a_budget_and_never_evicts_past_it() {
    use kiln::kube::{KubeAccess, KubeClient, KubePort};
    use std::time::Duration;

    let ip = [127, 0, 21, 2];
    let pki = pki(ip);
    let server = cluster(ip, &pki).await;
    {
        let mut s = server.state.lock().unwrap();
        for doc in serde_yaml::Deserializer::from_str(&WEB.replace("MIN", "2")) {
            let doc: Value = serde::Deserialize::deserialize(doc).unwrap();
            s.create(doc).unwrap();
        }
    }
    let held = web_pods_on(&server, "sim-wk-2");
    assert_eq!(held.len(), 1);
    let kube = KubeClient::connect(&KubeAccess {
        server: format!("https://{}", server.addr),
        ca_pem: pki.ca_pem.clone(),
        client_cert_pem: pki.client_cert.clone(),
        client_key_pem: kiln::redact::Secret::new(pki.client_key.clone()),
    })
    .await
    .unwrap();

    // Cordoned first, as kiln's steps do, so a replacement never lands back on the node.
    kube.set_unschedulable("sim-wk-2", true).await.unwrap();
    // Held: a timeout naming the pod, which is still there; the refusals show kiln kept asking.
    let err = kube
        .drain("sim-wk-2", Duration::from_millis(1500))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&held[0]), "{err}");
    {
        let s = server.state.lock().unwrap();
        assert!(
            s.evictions.is_empty(),
            "evicted past the budget: {:?}",
            s.evictions
        );
        assert!(
            s.refused_evictions.len() >= 2,
            "no retry on 429: {:?}",
            s.refused_evictions
        );
    }
    assert_eq!(web_pods_on(&server, "sim-wk-2"), held);

    // A drain that waits while the budget holds and goes on once it allows one disruption.
    let drain = {
        let kube = kube.clone();
        tokio::spawn(async move { kube.drain("sim-wk-2", Duration::from_secs(30)).await })
    };
    let refused_before = server.state.lock().unwrap().refused_evictions.len();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while server.state.lock().unwrap().refused_evictions.len() <= refused_before {
        assert!(
            std::time::Instant::now() < deadline,
            "the drain never asked"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(server.state.lock().unwrap().evictions.is_empty());
    {
        let mut s = server.state.lock().unwrap();
        let key = kiln::sim::kubernetes::ObjectKey {
            group: "policy".into(),
            plural: "poddisruptionbudgets".into(),
            namespace: "default".into(),
            name: "web".into(),
        };
        s.objects.get_mut(&key).unwrap()["spec"]["minAvailable"] = json!(1);
    }
    assert_eq!(drain.await.unwrap().unwrap(), 1);
    assert_eq!(server.state.lock().unwrap().evictions, held);
    assert!(web_pods_on(&server, "sim-wk-2").is_empty());
}

#[test]
fn a_missing_kubectl_is_named_with_the_way_to_install_it() {
    let empty = tempfile::tempdir().unwrap();
    let message = crate::kubectl_cli::kubectl_in(empty.path()).unwrap_err();
    assert!(
        message.contains(&empty.path().join("bin/kubectl").display().to_string())
            && message.contains("scripts/setup-test-env")
            && message.contains("KILN_TEST_VENV"),
        "{message}"
    );
    // The venv the tests use has it.
    assert!(crate::kubectl_cli::kubectl_binary().is_file());
}

/// kube-rs, as kiln's own code would apply the bootstrap manifests (server-side apply with a field
/// manager, forced) and hold a Lease (replace with the resourceVersion it read: a stale one is 409).
#[tokio::test(flavor = "multi_thread")]
async fn kube_rs_applies_server_side_and_a_stale_lease_replace_conflicts() {
    use k8s_openapi::api::apps::v1::DaemonSet;
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::api::{Api, Patch, PatchParams, PostParams};

    let ip = [127, 0, 21, 3];
    let pki = pki(ip);
    let server = cluster(ip, &pki).await;
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::from_yaml(&kubeconfig(&format!("https://{}", server.addr), &pki))
            .unwrap(),
        &Default::default(),
    )
    .await
    .unwrap();
    let client = kube::Client::try_from(config).unwrap();

    let proxies: Api<DaemonSet> = Api::namespaced(client.clone(), "kube-system");
    let manifest = |image: &str| {
        json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": { "name": "kube-proxy", "namespace": "kube-system" },
            "spec": { "selector": { "matchLabels": { "k8s-app": "kube-proxy" } }, "template": {
                "metadata": { "labels": { "k8s-app": "kube-proxy" } },
                "spec": { "tolerations": [{ "operator": "Exists" }],
                          "containers": [{ "name": "kube-proxy", "image": image }] } } },
        })
    };
    let params = PatchParams::apply("kiln").force();
    let first = proxies
        .patch(
            "kube-proxy",
            &params,
            &Patch::Apply(manifest("registry.k8s.io/kube-proxy:v1.34.1")),
        )
        .await
        .unwrap();
    assert_eq!(first.metadata.generation, Some(1));
    let second = proxies
        .patch(
            "kube-proxy",
            &params,
            &Patch::Apply(manifest("registry.k8s.io/kube-proxy:v1.35.0")),
        )
        .await
        .unwrap();
    assert_eq!(
        second.metadata.generation,
        Some(2),
        "a new template is a new generation"
    );
    let image = second.spec.unwrap().template.spec.unwrap().containers[0]
        .image
        .clone();
    assert_eq!(image.as_deref(), Some("registry.k8s.io/kube-proxy:v1.35.0"));
    // One kube-proxy pod per node, of the new template.
    for node in ["sim-cp-1", "sim-wk-2", "sim-wk-3"] {
        let pods: Vec<String> = server
            .state
            .lock()
            .unwrap()
            .pods_on(node)
            .into_iter()
            .filter(|p| p.starts_with("kube-system/kube-proxy-"))
            .collect();
        assert_eq!(pods.len(), 1, "{node}: {pods:?}");
        let pod: k8s_openapi::api::core::v1::Pod = Api::namespaced(client.clone(), "kube-system")
            .get(pods[0].trim_start_matches("kube-system/"))
            .await
            .unwrap();
        assert_eq!(
            pod.spec.unwrap().containers[0].image.as_deref(),
            Some("registry.k8s.io/kube-proxy:v1.35.0"),
            "{node} runs the old template"
        );
    }

    let leases: Api<Lease> = Api::namespaced(client, "kube-system");
    let mut lease: Lease = serde_json::from_value(json!({
        "metadata": { "name": "kiln" }, "spec": { "holderIdentity": "kiln-a" },
    }))
    .unwrap();
    let created = leases.create(&PostParams::default(), &lease).await.unwrap();
    lease = created.clone();
    lease.spec.as_mut().unwrap().holder_identity = Some("kiln-a".into());
    let renewed = leases
        .replace("kiln", &PostParams::default(), &lease)
        .await
        .unwrap();
    assert_ne!(
        renewed.metadata.resource_version,
        created.metadata.resource_version
    );
    // `lease` still carries the first resourceVersion: someone else renewed since.
    lease.spec.as_mut().unwrap().holder_identity = Some("kiln-b".into());
    match leases.replace("kiln", &PostParams::default(), &lease).await {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (409, "Conflict")),
        other => panic!("a stale replace was not a conflict: {other:?}"),
    }
    let now = leases.get("kiln").await.unwrap();
    assert_eq!(now.spec.unwrap().holder_identity.as_deref(), Some("kiln-a"));
}

/// Through the Talos simulator (`sim::talos::kube`): each Node's `kubeletVersion` is the kubelet
/// image tag of the config its machine runs, and `/version` the API server image tag of the control
/// plane's config; a config with new images (applied without a reboot, as Talos applies image changes)
/// shows at once, on that node only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_report_the_kubelet_and_the_api_server_their_configs_name() {
    use crate::talos_grpc::{addr, admin, cluster, config_for, start_sim};
    use k8s_openapi::api::core::v1::Node;
    use kiln::sim::talos::NodeSpec;
    use kiln::talos::grpc::proto::machine::ApplyMode;
    use kiln::talos::grpc::{GrpcTalos, TalosPort};
    use kube::api::{Api, ListParams};
    use std::net::IpAddr;
    use std::time::Duration;

    let c = cluster("kver", 231, 1, 1);
    let spec = |last| NodeSpec {
        addr: addr(last),
        uuid: None,
        version: None,
        platform: None,
    };
    let _sim = start_sim(&[spec(231), spec(232)]).await;
    let talos = GrpcTalos {
        port: 50000,
        options: crate::talos_grpc::options(),
    };
    let ip = |last: u8| IpAddr::from([127, 0, 10, last]);
    for last in [231, 232] {
        talos
            .apply_in_maintenance(ip(last), "", config_for(&c, ip(last)).as_bytes())
            .await
            .unwrap();
    }
    talos.bootstrap(ip(231), &admin()).await.unwrap();
    let kubeconfig = talos.kubeconfig(ip(231), &admin()).await.unwrap();
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::from_yaml(kubeconfig.expose()).unwrap(),
        &Default::default(),
    )
    .await
    .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    // The API's listener starts right after bootstrap.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let version = loop {
        match client.apiserver_version().await {
            Ok(v) => break v.git_version,
            Err(e) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no API at the VIP: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(version, "v1.34.1");
    let kubelets = || async {
        Api::<Node>::all(client.clone())
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|n| {
                (
                    n.metadata.name.unwrap(),
                    n.status.unwrap().node_info.unwrap().kubelet_version,
                )
            })
            .collect::<Vec<_>>()
    };
    let both = |cp: &str, wk: &str| {
        vec![
            ("kver-cp-1".to_owned(), cp.to_owned()),
            ("kver-wk-2".to_owned(), wk.to_owned()),
        ]
    };
    assert_eq!(kubelets().await, both("v1.34.1", "v1.34.1"));

    // The worker's kubelet first: only its Node changes.
    let worker = config_for(&c, ip(232));
    assert!(worker.contains("ghcr.io/siderolabs/kubelet:v1.34.1"));
    let worker = worker.replace("kubelet:v1.34.1", "kubelet:v1.35.0");
    talos
        .apply_configured(
            ip(232),
            &admin(),
            worker.as_bytes(),
            ApplyMode::NoReboot,
            false,
        )
        .await
        .unwrap();
    assert_eq!(kubelets().await, both("v1.34.1", "v1.35.0"));
    assert_eq!(
        client.apiserver_version().await.unwrap().git_version,
        "v1.34.1"
    );

    // Then the control plane's API server image: `/version` follows it.
    let cp = config_for(&c, ip(231));
    assert!(
        cp.contains("kube-apiserver:v1.34.1"),
        "the control plane's config names its API server image"
    );
    let cp = cp.replace("kube-apiserver:v1.34.1", "kube-apiserver:v1.35.0");
    talos
        .apply_configured(ip(231), &admin(), cp.as_bytes(), ApplyMode::NoReboot, false)
        .await
        .unwrap();
    assert_eq!(
        client.apiserver_version().await.unwrap().git_version,
        "v1.35.0"
    );
    assert_eq!(kubelets().await, both("v1.34.1", "v1.35.0"));
    // The control plane's static pods, as their mirror pods show them: the API server's new image, the
    // others as they were.
    let image = |name: &'static str| {
        let client = client.clone();
        async move {
            let pod = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client, "kube-system")
                .get(name)
                .await
                .unwrap();
            pod.spec.unwrap().containers[0].image.clone().unwrap()
        }
    };
    assert_eq!(
        image("kube-apiserver-kver-cp-1").await,
        "registry.k8s.io/kube-apiserver:v1.35.0"
    );
    assert_eq!(
        image("kube-scheduler-kver-cp-1").await,
        "registry.k8s.io/kube-scheduler:v1.34.1"
    );
}
