//! The bootstrap manifests end to end over the wire (issue 26, the last phase of a Kubernetes
//! upgrade): a simulated control plane renders them from the config it runs and serves them as COSI
//! `Manifests`; kiln's Talos client reads them; kiln's kube port server-side applies them to the
//! simulated Kubernetes API, and kube-rs reads the workloads back. Talos nodes at 127.0.10.161-162
//! (VIP 127.0.11.161, never bootstrapped), the Kubernetes API at 127.0.22.1.

use std::sync::{Arc, Mutex};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::Pod;
use kiln::kube::{KubeAccess, KubeClient, KubePort};
use kiln::redact::Secret;
use kiln::sim::kubernetes::{KubeSimState, SimNode};
use kiln::talos::credentials::TalosRole;
use kiln::talos::grpc::{GrpcTalos, TalosPort};
use serde_json::Value;

use crate::kube::{pki, start_with};
use crate::talos_grpc::{addr, admin, cluster, config_for, identity, options, start_sim};

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} among the manifests"))
}

fn first_image(o: &Value) -> &str {
    o["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .expect("a container image")
}

fn running_proxy_image(config: &str) -> String {
    let v1 = serde_yaml::Deserializer::from_str(config)
        .map(|d| <serde_yaml::Value as serde::Deserialize>::deserialize(d).unwrap())
        .find(|d| d.get("kind").is_none())
        .expect("the v1alpha1 document");
    v1["cluster"]["proxy"]["image"]
        .as_str()
        .expect("kiln names the proxy image on a control plane")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_planes_manifests_are_read_applied_and_follow_its_config() {
    let c = cluster("mani", 161, 1, 1);
    let (cp, wk) = (addr(161), addr(162));
    let sim = start_sim(&[
        cp.to_string().parse().unwrap(),
        wk.to_string().parse().unwrap(),
    ])
    .await;
    let talos = GrpcTalos {
        port: 50000,
        options: options(),
    };
    let cp_config = config_for(&c, cp.ip());
    // The control plane first: the worker's API certificate is signed with the key it carries.
    for at in [cp, wk] {
        talos
            .apply_in_maintenance(at.ip(), "", config_for(&c, at.ip()).as_bytes())
            .await
            .unwrap();
    }

    // Not a sensitive resource: an os:reader lists it, as talosctl's sync does with any role.
    let reader = talos
        .connect(cp.ip(), &identity(TalosRole::Reader))
        .await
        .unwrap();
    let objects = reader.bootstrap_manifests().await.unwrap();
    let kinds: Vec<(&str, &str)> = objects
        .iter()
        .map(|o| {
            (
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    // Resource-id order (05-flannel, 10-kube-proxy, 11-core-dns, 11-core-dns-svc), each resource's
    // objects in the order Talos's `render` lists them.
    assert_eq!(
        kinds,
        [
            ("ClusterRole", "flannel"),
            ("ClusterRoleBinding", "flannel"),
            ("ServiceAccount", "flannel"),
            ("ConfigMap", "kube-flannel-cfg"),
            ("DaemonSet", "kube-flannel"),
            ("DaemonSet", "kube-proxy"),
            ("ServiceAccount", "kube-proxy"),
            ("ClusterRoleBinding", "kube-proxy"),
            ("ServiceAccount", "coredns"),
            ("ClusterRole", "system:coredns"),
            ("ClusterRoleBinding", "system:coredns"),
            ("ConfigMap", "coredns"),
            ("Deployment", "coredns"),
            ("Service", "kube-dns"),
        ]
    );
    let proxy_image = running_proxy_image(&cp_config);
    assert_eq!(proxy_image, "registry.k8s.io/kube-proxy:v1.34.1");
    assert_eq!(
        first_image(find(&objects, "DaemonSet", "kube-proxy")),
        proxy_image
    );
    // kiln names no CoreDNS image: Talos v1.13's DefaultCoreDNSVersion.
    assert_eq!(
        first_image(find(&objects, "Deployment", "coredns")),
        "registry.k8s.io/coredns/coredns:v1.14.6"
    );
    assert_eq!(
        find(&objects, "Service", "kube-dns")["spec"]["clusterIP"],
        "10.96.0.10"
    );

    // A worker renders none.
    let worker = talos.connect(wk.ip(), &admin()).await.unwrap();
    assert!(worker.bootstrap_manifests().await.unwrap().is_empty());

    // Applied through kiln's kube port, server-side, to the simulated API.
    let ip = [127, 0, 22, 1];
    let kpki = pki(ip);
    let mut state = KubeSimState::default();
    // The two machines' Nodes, so the DaemonSet controller has somewhere to run kube-proxy (it
    // tolerates the control plane's NoSchedule taint).
    for (name, role) in [("mani-cp-1", "control-plane"), ("mani-wk-2", "worker")] {
        state.put_node(
            name,
            SimNode {
                ready: true,
                role: role.into(),
                kubelet_version: "v1.34.1".into(),
                ..SimNode::default()
            },
        );
    }
    let server = start_with(ip, &kpki, Arc::new(Mutex::new(state))).await;
    let kube = KubeClient::connect(&KubeAccess {
        server: format!("https://{}", server.addr),
        ca_pem: kpki.ca_pem.clone(),
        client_cert_pem: kpki.client_cert.clone(),
        client_key_pem: Secret::new(kpki.client_key.clone()),
    })
    .await
    .unwrap();
    assert_eq!(
        kube.workload_image("DaemonSet", "kube-system", "kube-proxy")
            .await
            .unwrap(),
        None,
        "nothing applied yet"
    );
    assert_eq!(kube.apply_manifests(&objects).await.unwrap(), objects.len());

    // Read back with kube-rs itself, not through the port under test.
    let raw = ::kube::Client::try_from(
        ::kube::Config::from_custom_kubeconfig(
            ::kube::config::Kubeconfig::from_yaml(&kubeconfig(&server.addr.to_string(), &kpki))
                .unwrap(),
            &Default::default(),
        )
        .await
        .unwrap(),
    )
    .unwrap();
    let pods: ::kube::Api<Pod> = ::kube::Api::namespaced(raw.clone(), "kube-system");
    let proxy_pod_images = || async {
        let list = pods
            .list(&::kube::api::ListParams::default().labels("k8s-app=kube-proxy,tier=node"))
            .await
            .unwrap();
        list.items
            .into_iter()
            .map(|p| p.spec.unwrap().containers[0].image.clone().unwrap())
            .collect::<Vec<_>>()
    };
    let daemonsets: ::kube::Api<DaemonSet> = ::kube::Api::namespaced(raw.clone(), "kube-system");
    let deployments: ::kube::Api<Deployment> = ::kube::Api::namespaced(raw, "kube-system");
    let ds_image = |ds: DaemonSet| {
        ds.spec.unwrap().template.spec.unwrap().containers[0]
            .image
            .clone()
            .unwrap()
    };
    let proxy_ds = daemonsets.get("kube-proxy").await.unwrap();
    // Applied as Talos applies it: server-side, by the field manager `talos`.
    let managers: Vec<(String, String)> = proxy_ds
        .metadata
        .managed_fields
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|e| {
            (
                e.manager.unwrap_or_default(),
                e.operation.unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(managers, [("talos".to_owned(), "Apply".to_owned())]);
    // Marked as Talos marks what it applies, so a later `talosctl upgrade-k8s` owns it still.
    assert_eq!(
        proxy_ds
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("config.k8s.io/owning-inventory"))
            .map(String::as_str),
        Some("talos-bootstrap-manifests-inventory")
    );
    assert_eq!(ds_image(proxy_ds), proxy_image);
    assert_eq!(
        proxy_pod_images().await,
        [proxy_image.clone(), proxy_image.clone()],
        "one kube-proxy pod per node, selected by the rendered labels"
    );
    let coredns = deployments.get("coredns").await.unwrap();
    assert_eq!(
        coredns.spec.unwrap().template.spec.unwrap().containers[0].image,
        Some("registry.k8s.io/coredns/coredns:v1.14.6".into())
    );
    assert!(
        server
            .state
            .lock()
            .unwrap()
            .objects
            .keys()
            .any(|k| k.plural == "clusterrolebindings" && k.name == "system:coredns"),
        "the cluster-scoped RBAC went in too"
    );

    // The proxy image changes in the running config (as upgrade-k8s's proxy phase patches it): the
    // control plane re-renders its DaemonSet, and re-applying moves the cluster's.
    let next = "registry.k8s.io/kube-proxy:v1.35.0";
    sim.edit_running_config(cp, |docs| {
        let v1 = docs.iter_mut().find(|d| d.get("kind").is_none()).unwrap();
        v1["cluster"]["proxy"]["image"] = serde_yaml::Value::String(next.into());
    })
    .unwrap();
    let admin_cp = talos.connect(cp.ip(), &admin()).await.unwrap();
    let objects = admin_cp.bootstrap_manifests().await.unwrap();
    assert_eq!(first_image(find(&objects, "DaemonSet", "kube-proxy")), next);
    assert_eq!(kube.apply_manifests(&objects).await.unwrap(), objects.len());
    assert_eq!(ds_image(daemonsets.get("kube-proxy").await.unwrap()), next);
    assert_eq!(proxy_pod_images().await, [next, next], "the pods follow");
    assert_eq!(
        kube.workload_image("DaemonSet", "kube-system", "kube-proxy")
            .await
            .unwrap()
            .as_deref(),
        Some(next)
    );
    assert_eq!(
        kube.workload_image("Deployment", "kube-system", "coredns")
            .await
            .unwrap()
            .as_deref(),
        Some("registry.k8s.io/coredns/coredns:v1.14.6")
    );
}

fn kubeconfig(server: &str, p: &crate::kube::Pki) -> String {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://{server}\n    \
         certificate-authority-data: {}\nusers:\n- name: u\n  user:\n    client-certificate-data: {}\n    \
         client-key-data: {}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\n",
        b64(&p.ca_pem),
        b64(&p.client_cert),
        b64(&p.client_key)
    )
}
