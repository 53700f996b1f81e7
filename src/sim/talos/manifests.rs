//! The bootstrap manifests a control plane renders from the config it runs, served as COSI
//! `Manifests.kubernetes.talos.dev` in namespace `controlplane` (what `talosctl upgrade-k8s` syncs
//! last, and kiln after it).
//!
//! Copied from siderolabs/talos v1.13.9:
//! - `pkg/machinery/resources/k8s/manifest.go`: the type, the namespace, and the YAML spec, which is
//!   the list of objects itself (`ManifestSpec.MarshalYAML` returns `Items`, each object inline); the
//!   resource definition sets no sensitivity, so `internal/app/resources/access.go` lets every role
//!   read it (`handlers::cosi_list` authorizes with `live::read_roles`, which says so).
//! - `internal/app/machined/pkg/controllers/k8s/manifest.go` `render`: the resource ids and which
//!   objects each holds, in that order.
//! - `internal/app/machined/pkg/controllers/k8s/control_plane.go` (`BootstrapManifestsConfigSpec`
//!   from the config, `getProxyArgs`) and `pkg/machinery/config/types/v1alpha1` (`ProxyConfig.Image`,
//!   `CoreDNS.Image`, the network defaults): what the templates are fed.
//! - `internal/app/machined/pkg/controllers/k8s/internal/k8stemplates/{kube-proxy,coredns,flannel}.go`:
//!   the objects. Kinds, names, namespaces, labels, selectors, service accounts, tolerations, images,
//!   commands and the config maps' data are as there; resources, probes, security contexts, volumes
//!   and affinities are trimmed (docs/kubernetes-sim.md says so).
//!
//! Only `05-flannel`, `10-kube-proxy`, `11-core-dns` and `11-core-dns-svc` are rendered: the others
//! (`00-kubelet-bootstrapping-token` holds the bootstrap token secret, the CSR and Talos RBAC
//! bindings, the in-cluster kubeconfig, the Talos service account CRD) carry nothing a Kubernetes
//! upgrade changes.

use serde_json::{Value as Json, json};
use serde_yaml::Value;

use super::config::{self, MachineType};
use super::fleet::Node;
use crate::talos::grpc::manifests::MANIFESTS;
use crate::talos::grpc::proto::cosi;

/// What the templates take from the running config (Talos's `BootstrapManifestsConfigSpec`, the
/// fields the rendered objects use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestInputs {
    pub cluster_domain: String,
    pub pod_cidrs: Vec<String>,
    pub dns_service_ip: String,
    pub proxy: Option<Proxy>,
    pub coredns_image: Option<String>,
    pub flannel: Option<Flannel>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    pub image: String,
    pub args: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flannel {
    pub image: String,
    /// KubePrism's port: flannel reaches the API through it (`KUBERNETES_SERVICE_HOST/PORT`).
    pub kube_prism_port: Option<u16>,
}

/// The defaults of the Talos minor the node runs: `pkg/machinery/constants/constants.go`
/// (`DefaultKubernetesVersion`, `DefaultCoreDNSVersion`) and `pkg/images/list.go` (the flannel image
/// from `FlannelVersion`) at v1.11.6, v1.12.9 and v1.13.9.
struct MinorDefaults {
    kubernetes: &'static str,
    coredns: &'static str,
    flannel_image: &'static str,
}

fn defaults(talos_minor: u32) -> MinorDefaults {
    match talos_minor {
        0..=11 => MinorDefaults {
            kubernetes: "1.34.1",
            coredns: "v1.12.4",
            flannel_image: "ghcr.io/siderolabs/flannel:v0.27.4",
        },
        12 => MinorDefaults {
            kubernetes: "1.35.4",
            coredns: "v1.14.2",
            flannel_image: "ghcr.io/siderolabs/flannel:v0.27.4",
        },
        // v1.13's `FlannelVersion` has no `v`, and the image tag is built from it as it is.
        _ => MinorDefaults {
            kubernetes: "1.36.3",
            coredns: "v1.14.6",
            flannel_image: "ghcr.io/siderolabs/flannel:0.28.8",
        },
    }
}

fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, p| cur.get(*p))
}

fn string(v: &Value, path: &[&str]) -> Option<String> {
    get(v, path)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

fn flag(v: &Value, path: &[&str]) -> bool {
    get(v, path).and_then(Value::as_bool).unwrap_or(false)
}

fn strings(v: &Value, path: &[&str]) -> Vec<String> {
    get(v, path)
        .and_then(Value::as_sequence)
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// `kubernetes.VersionGTE(image, 1.31.0)`: the image tag as a version, `false` when it is none.
fn tag_at_least_1_31(image: &str) -> bool {
    let Some(tag) = config::image_tag(image) else {
        return false;
    };
    let mut parts = tag.trim_start_matches('v').split(['.', '-', '+']);
    let major = parts.next().and_then(|p| p.parse::<u32>().ok());
    let minor = parts.next().and_then(|p| p.parse::<u32>().ok());
    matches!((major, minor), (Some(m), Some(n)) if (m, n) >= (1, 31))
}

/// The tenth address of the first IPv4 service subnet (`Network().DNSServiceIPs()`:
/// `constants.DefaultDNSServiceIP`'s offset, 10.96.0.10 for the default 10.96.0.0/12).
fn dns_service_ip(service_cidrs: &[String]) -> String {
    service_cidrs
        .iter()
        .find_map(|c| {
            let (net, _) = c.split_once('/')?;
            let ip: std::net::Ipv4Addr = net.parse().ok()?;
            Some(std::net::Ipv4Addr::from(u32::from(ip).wrapping_add(10)).to_string())
        })
        .unwrap_or_else(|| "10.96.0.10".into())
}

impl ManifestInputs {
    /// The inputs from the v1alpha1 document of the running config, with Talos's defaults for what
    /// it leaves out; `talos_minor` picks the defaults of the version the node runs.
    pub fn from_config(v1: &Value, talos_minor: u32) -> Self {
        let d = defaults(talos_minor);
        let net = ["cluster", "network"];
        let cluster_domain =
            string(v1, &[net[0], net[1], "dnsDomain"]).unwrap_or_else(|| "cluster.local".into());
        let mut pod_cidrs = strings(v1, &[net[0], net[1], "podSubnets"]);
        if pod_cidrs.is_empty() {
            pod_cidrs = vec!["10.244.0.0/16".into()];
        }
        let service_cidrs = strings(v1, &[net[0], net[1], "serviceSubnets"]);
        let proxy = (!flag(v1, &["cluster", "proxy", "disabled"])).then(|| {
            let image = string(v1, &["cluster", "proxy", "image"])
                .unwrap_or_else(|| format!("registry.k8s.io/kube-proxy:v{}", d.kubernetes));
            let mode = string(v1, &["cluster", "proxy", "mode"]).unwrap_or_else(|| {
                if tag_at_least_1_31(&image) {
                    "nftables".into()
                } else {
                    "iptables".into()
                }
            });
            // argsbuilder prints `--key=value` sorted by key; extra args are not modelled.
            let args = vec![
                format!("--cluster-cidr={}", pod_cidrs.join(",")),
                "--conntrack-max-per-core=0".into(),
                "--hostname-override=$(NODE_NAME)".into(),
                "--kubeconfig=/etc/kubernetes/kubeconfig".into(),
                format!("--proxy-mode={mode}"),
            ];
            Proxy { image, args }
        });
        let coredns_image = (!flag(v1, &["cluster", "coreDNS", "disabled"])).then(|| {
            string(v1, &["cluster", "coreDNS", "image"])
                .unwrap_or_else(|| format!("registry.k8s.io/coredns/coredns:{}", d.coredns))
        });
        let cni =
            string(v1, &["cluster", "network", "cni", "name"]).unwrap_or_else(|| "flannel".into());
        let flannel = (cni == "flannel").then(|| {
            let prism = ["machine", "features", "kubePrism"];
            Flannel {
                image: d.flannel_image.into(),
                kube_prism_port: flag(v1, &[prism[0], prism[1], prism[2], "enabled"]).then(|| {
                    get(v1, &[prism[0], prism[1], prism[2], "port"])
                        .and_then(Value::as_u64)
                        .and_then(|p| u16::try_from(p).ok())
                        .unwrap_or(7445)
                }),
            }
        });
        Self {
            cluster_domain,
            pod_cidrs,
            dns_service_ip: dns_service_ip(&service_cidrs),
            proxy,
            coredns_image,
            flannel,
        }
    }

    /// Each resource id with its objects, in resource-id order (COSI lists by id).
    pub fn render(&self) -> Vec<(&'static str, Vec<Json>)> {
        let mut out = Vec::new();
        if let Some(f) = &self.flannel {
            out.push(("05-flannel", flannel(self, f)));
        }
        if let Some(p) = &self.proxy {
            out.push(("10-kube-proxy", kube_proxy(p)));
        }
        if let Some(image) = &self.coredns_image {
            out.push(("11-core-dns", coredns(self, image)));
            out.push(("11-core-dns-svc", vec![coredns_service(self)]));
        }
        out
    }
}

/// Every object of a configured control plane's Manifests, in resource-id order; none elsewhere.
pub fn objects(node: &Node) -> Vec<Json> {
    let Some(c) = node.configured() else {
        return Vec::new();
    };
    if c.cfg.machine_type != MachineType::ControlPlane {
        return Vec::new();
    }
    let Ok(docs) = config::documents(&c.raw) else {
        return Vec::new();
    };
    let Some(v1) = config::v1alpha1(&docs) else {
        return Vec::new();
    };
    ManifestInputs::from_config(v1, node.minor())
        .render()
        .into_iter()
        .flat_map(|(_, objects)| objects)
        .collect()
}

/// The Manifests of a configured control plane; none on a worker or an unconfigured node.
pub fn manifest_resources(node: &Node) -> Vec<cosi::Resource> {
    let Some(c) = node.configured() else {
        return Vec::new();
    };
    if c.cfg.machine_type != MachineType::ControlPlane {
        return Vec::new();
    }
    let Ok(docs) = config::documents(&c.raw) else {
        return Vec::new();
    };
    let Some(v1) = config::v1alpha1(&docs) else {
        return Vec::new();
    };
    let (ns, ty) = MANIFESTS;
    ManifestInputs::from_config(v1, node.minor())
        .render()
        .into_iter()
        .map(|(id, objects)| {
            let yaml = serde_yaml::to_string(&objects).unwrap_or_default();
            super::handlers::resource(ns, ty, id, yaml)
        })
        .collect()
}

/// kube-proxy's and flannel's tolerations: every `NoSchedule` and `NoExecute` taint.
fn tolerate_all() -> Json {
    json!([
        { "effect": "NoSchedule", "operator": "Exists" },
        { "effect": "NoExecute", "operator": "Exists" },
    ])
}

/// `kube-proxy.go`: DaemonSet, ServiceAccount, ClusterRoleBinding (in `render`'s order).
fn kube_proxy(p: &Proxy) -> Vec<Json> {
    let labels = json!({ "tier": "node", "k8s-app": "kube-proxy" });
    let mut command = vec![Json::from("/usr/local/bin/kube-proxy")];
    command.extend(p.args.iter().map(|a| Json::from(a.as_str())));
    vec![
        json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": { "name": "kube-proxy", "namespace": "kube-system", "labels": labels },
            "spec": {
                "selector": { "matchLabels": labels },
                "updateStrategy": { "type": "RollingUpdate", "rollingUpdate": { "maxUnavailable": 1 } },
                "template": {
                    "metadata": { "labels": labels },
                    "spec": {
                        "containers": [{
                            "name": "kube-proxy",
                            "image": p.image,
                            "command": command,
                            "env": [
                                { "name": "NODE_NAME", "valueFrom": { "fieldRef": { "fieldPath": "spec.nodeName" } } },
                                { "name": "POD_IP", "valueFrom": { "fieldRef": { "fieldPath": "status.podIP" } } },
                            ],
                            "securityContext": { "privileged": true },
                        }],
                        "hostNetwork": true,
                        "priorityClassName": "system-cluster-critical",
                        "serviceAccountName": "kube-proxy",
                        "tolerations": tolerate_all(),
                    },
                },
            },
        }),
        json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": { "name": "kube-proxy", "namespace": "kube-system" },
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": { "name": "kube-proxy" },
            "subjects": [{ "kind": "ServiceAccount", "name": "kube-proxy", "namespace": "kube-system" }],
            "roleRef": { "kind": "ClusterRole", "name": "system:node-proxier", "apiGroup": "rbac.authorization.k8s.io" },
        }),
    ]
}

/// `coredns.go` `CoreDNSConfigMap`: the Corefile for the cluster domain.
fn corefile(domain: &str) -> String {
    let mut text = format!(
        ".:53 {{\n    errors\n    health {{\n        lameduck 5s\n    }}\n    ready\n    log . {{\n        class error\n    }}\n    prometheus :9153\n\n    kubernetes {domain} in-addr.arpa ip6.arpa {{\n        pods insecure\n        fallthrough in-addr.arpa ip6.arpa\n        ttl 30\n    }}\n    forward . /etc/resolv.conf {{\n       max_concurrent 1000\n    }}\n    cache 30"
    );
    if domain.is_empty() {
        text.push('\n');
    } else {
        text.push_str(&format!(
            " {{\n       disable success {domain}\n       disable denial {domain}\n    }}\n"
        ));
    }
    text.push_str("    loop\n    reload\n    loadbalance\n}\n");
    text
}

/// `coredns.go`: ServiceAccount, ClusterRole, ClusterRoleBinding, ConfigMap, Deployment. The core
/// group's objects carry `apiVersion: v1` (Talos writes `SchemeGroupVersion.Version`).
fn coredns(inputs: &ManifestInputs, image: &str) -> Vec<Json> {
    let bootstrapping = json!({ "kubernetes.io/bootstrapping": "rbac-defaults" });
    vec![
        json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": { "name": "coredns", "namespace": "kube-system" },
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": { "name": "system:coredns", "labels": bootstrapping },
            "rules": [
                { "apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"], "verbs": ["list", "watch"] },
                { "apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"] },
            ],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {
                "name": "system:coredns", "labels": bootstrapping,
                "annotations": { "rbac.authorization.kubernetes.io/autoupdate": "true" },
            },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:coredns" },
            "subjects": [{ "kind": "ServiceAccount", "name": "coredns", "namespace": "kube-system" }],
        }),
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "name": "coredns", "namespace": "kube-system" },
            "data": { "Corefile": corefile(&inputs.cluster_domain) },
        }),
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {
                "name": "coredns", "namespace": "kube-system",
                "labels": { "k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS" },
            },
            "spec": {
                "replicas": 2,
                "strategy": { "type": "RollingUpdate", "rollingUpdate": { "maxUnavailable": 1 } },
                "selector": { "matchLabels": { "k8s-app": "kube-dns" } },
                "template": {
                    "metadata": { "labels": { "k8s-app": "kube-dns" } },
                    "spec": {
                        "nodeSelector": { "kubernetes.io/os": "linux" },
                        "serviceAccountName": "coredns",
                        "priorityClassName": "system-cluster-critical",
                        "tolerations": [
                            { "key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule" },
                            { "key": "node.cloudprovider.kubernetes.io/uninitialized", "operator": "Exists", "effect": "NoSchedule" },
                        ],
                        "containers": [{
                            "name": "coredns",
                            "image": image,
                            "imagePullPolicy": "IfNotPresent",
                            "args": ["-conf", "/etc/coredns/Corefile"],
                            "ports": [
                                { "name": "dns", "protocol": "UDP", "containerPort": 53 },
                                { "name": "dns-tcp", "protocol": "TCP", "containerPort": 53 },
                                { "name": "metrics", "protocol": "TCP", "containerPort": 9153 },
                            ],
                        }],
                        "dnsPolicy": "Default",
                    },
                },
            },
        }),
    ]
}

/// `coredns.go` `CoreDNSService` (IPv4 single stack: the simulator models IPv4 service subnets).
fn coredns_service(inputs: &ManifestInputs) -> Json {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {
            "name": "kube-dns", "namespace": "kube-system",
            "annotations": { "prometheus.io/scrape": "true", "prometheus.io/port": "9153" },
            "labels": {
                "k8s-app": "kube-dns",
                "kubernetes.io/cluster-service": "true",
                "kubernetes.io/name": "CoreDNS",
            },
        },
        "spec": {
            "selector": { "k8s-app": "kube-dns" },
            "clusterIP": inputs.dns_service_ip,
            "clusterIPs": [inputs.dns_service_ip],
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "ports": [
                { "name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53 },
                { "name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53 },
                { "name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153 },
            ],
        },
    })
}

/// `flannel.go` `FlannelConfigMapTemplate`'s `net-conf.json` (IPv4 and IPv6 pod subnets).
fn net_conf(pod_cidrs: &[String]) -> String {
    let mut conf = serde_json::Map::new();
    let v4 = pod_cidrs.iter().find(|c| c.contains('.'));
    let v6 = pod_cidrs.iter().find(|c| !c.contains('.'));
    if let Some(n) = v4 {
        conf.insert("Network".into(), json!(n));
    }
    if let Some(n) = v6 {
        conf.insert("IPv6Network".into(), json!(n));
        conf.insert("EnableIPv6".into(), json!(true));
    }
    if v4.is_none() {
        conf.insert("EnableIPv4".into(), json!(false));
    }
    conf.insert("Backend".into(), json!({ "Type": "vxlan", "Port": 4789 }));
    serde_json::to_string_pretty(&Json::Object(conf)).unwrap_or_default()
}

const CNI_CONF: &str = r#"{
  "name": "cbr0",
  "cniVersion": "1.0.0",
  "plugins": [
    {
      "type": "flannel",
      "delegate": {
        "hairpinMode": true,
        "isDefaultGateway": true
      }
    },
    {
      "type": "portmap",
      "capabilities": {
        "portMappings": true
      }
    }
  ]
}"#;

/// `flannel.go`: ClusterRole, ClusterRoleBinding, ServiceAccount, ConfigMap, DaemonSet (without the
/// kube-network-policies container, off unless the config asks for it).
fn flannel(inputs: &ManifestInputs, f: &Flannel) -> Vec<Json> {
    let app = json!({ "k8s-app": "flannel" });
    let node_app = json!({ "k8s-app": "flannel", "tier": "node" });
    let mut env = vec![
        json!({ "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } }),
        json!({ "name": "POD_NAMESPACE", "valueFrom": { "fieldRef": { "fieldPath": "metadata.namespace" } } }),
        json!({ "name": "EVENT_QUEUE_DEPTH", "value": "5000" }),
        json!({ "name": "CONT_WHEN_CACHE_NOT_READY", "value": "false" }),
    ];
    if let Some(port) = f.kube_prism_port {
        env.push(json!({ "name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1" }));
        env.push(json!({ "name": "KUBERNETES_SERVICE_PORT", "value": port.to_string() }));
    }
    vec![
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": { "name": "flannel", "labels": app },
            "rules": [
                { "apiGroups": [""], "resources": ["pods", "nodes", "namespaces"], "verbs": ["get", "list", "watch"] },
                { "apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"] },
            ],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": { "name": "flannel", "labels": app },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "flannel" },
            "subjects": [{ "kind": "ServiceAccount", "name": "flannel", "namespace": "kube-system" }],
        }),
        json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": { "name": "flannel", "namespace": "kube-system", "labels": app },
        }),
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "name": "kube-flannel-cfg", "namespace": "kube-system", "labels": node_app },
            "data": { "cni-conf.json": CNI_CONF, "net-conf.json": net_conf(&inputs.pod_cidrs) },
        }),
        json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": { "name": "kube-flannel", "namespace": "kube-system", "labels": node_app },
            "spec": {
                "selector": { "matchLabels": node_app },
                "template": {
                    "metadata": { "labels": node_app },
                    "spec": {
                        "containers": [{
                            "name": "kube-flannel",
                            "image": f.image,
                            "command": ["/opt/bin/flanneld"],
                            "args": ["--ip-masq", "--kube-subnet-mgr"],
                            "env": env,
                        }],
                        "initContainers": [{
                            "name": "install-config",
                            "image": f.image,
                            "command": ["cp"],
                            "args": ["-f", "/etc/kube-flannel/cni-conf.json", "/etc/cni/net.d/10-flannel.conflist"],
                        }],
                        "hostNetwork": true,
                        "priorityClassName": "system-node-critical",
                        "serviceAccountName": "flannel",
                        "tolerations": tolerate_all(),
                    },
                },
            },
        }),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v1(yaml: &str) -> Value {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn defaults_follow_the_running_minor_and_the_config_wins() {
        let bare = ManifestInputs::from_config(&v1("version: v1alpha1\n"), 13);
        assert_eq!(
            bare.proxy.as_ref().unwrap().image,
            "registry.k8s.io/kube-proxy:v1.36.3"
        );
        assert!(
            bare.proxy
                .as_ref()
                .unwrap()
                .args
                .contains(&"--proxy-mode=nftables".to_owned())
        );
        assert_eq!(
            bare.coredns_image.as_deref(),
            Some("registry.k8s.io/coredns/coredns:v1.14.6")
        );
        assert_eq!(bare.dns_service_ip, "10.96.0.10");
        assert_eq!(bare.cluster_domain, "cluster.local");
        let old = ManifestInputs::from_config(&v1("version: v1alpha1\n"), 12);
        assert_eq!(
            old.coredns_image.as_deref(),
            Some("registry.k8s.io/coredns/coredns:v1.14.2")
        );

        let set = ManifestInputs::from_config(
            &v1(
                "cluster:\n  proxy:\n    image: registry.k8s.io/kube-proxy:v1.30.2\n  \
                 coreDNS:\n    image: mirror.lan/coredns:v1.11.1\n  network:\n    \
                 serviceSubnets: [10.100.0.0/16]\n    cni:\n      name: none\n",
            ),
            13,
        );
        let proxy = set.proxy.as_ref().unwrap();
        assert_eq!(proxy.image, "registry.k8s.io/kube-proxy:v1.30.2");
        assert!(proxy.args.contains(&"--proxy-mode=iptables".to_owned()));
        assert_eq!(
            set.coredns_image.as_deref(),
            Some("mirror.lan/coredns:v1.11.1")
        );
        assert_eq!(set.dns_service_ip, "10.100.0.10");
        let ids: Vec<&str> = set.render().iter().map(|(id, _)| *id).collect();
        assert_eq!(
            ids,
            ["10-kube-proxy", "11-core-dns", "11-core-dns-svc"],
            "no flannel without the flannel CNI"
        );
    }

    #[test]
    fn disabled_parts_are_not_rendered() {
        let inputs = ManifestInputs::from_config(
            &v1("cluster:\n  proxy:\n    disabled: true\n  coreDNS:\n    disabled: true\n"),
            13,
        );
        let ids: Vec<&str> = inputs.render().iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, ["05-flannel"]);
    }

    #[test]
    fn the_corefile_names_the_cluster_domain() {
        let text = corefile("cluster.local");
        assert!(text.contains("kubernetes cluster.local in-addr.arpa ip6.arpa {"));
        assert!(text.contains("cache 30 {\n       disable success cluster.local\n"));
        assert!(text.ends_with("    loop\n    reload\n    loadbalance\n}\n"));
    }
}
