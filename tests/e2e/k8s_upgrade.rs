//! Issue 26, Kubernetes upgrades (DESIGN.md §4), seen from outside: a 3+1 cluster on Talos 1.13 at
//! Kubernetes v1.34.1 is asked for v1.35.4. While `kiln run --once` rolls it out, the test reads the
//! cluster's Kubernetes API with the kubeconfig kiln stored — the static pods' mirror pods, each
//! Node's kubelet version, `/version` — as `talosctl upgrade-k8s` and a person with kubectl would;
//! the simulator's log says which node got a config, when.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};

use crate::checks::{assert_converged, status_of};
use crate::credentials::stored;
use crate::fixture::{ClusterFixture, Role};
use crate::support::{Outcome, World, kiln, plain};

const OLD: &str = "v1.34.1";
const NEW: &str = "v1.35.4";
const STATIC: [&str; 3] = [
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
];

fn at_kubernetes(c: &ClusterFixture, version: &str) -> String {
    let yaml = c.yaml();
    let old = format!("  kubernetes:\n    version: {OLD}\n");
    assert!(yaml.contains(&old), "{yaml}");
    yaml.replace(&old, &format!("  kubernetes:\n    version: {version}\n"))
}

async fn client(world: &World, c: &ClusterFixture) -> kube::Client {
    let kubeconfig = stored(world, &c.name, "kubeconfig", "kubeconfig").await;
    let parsed = kube::config::Kubeconfig::from_yaml(kubeconfig.expose()).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(parsed, &Default::default())
        .await
        .unwrap();
    config.connect_timeout = Some(Duration::from_millis(500));
    config.read_timeout = Some(Duration::from_secs(2));
    kube::Client::try_from(config).unwrap()
}

/// What the API shows at one moment: each control plane's static pod images (by component), each
/// Node's kubelet version, and `/version`.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    static_pods: Vec<(String, String, String)>,
    kubelets: Vec<(String, String)>,
    server: String,
}

fn tag(image: &str) -> String {
    image.rsplit_once(':').map_or("", |(_, t)| t).to_owned()
}

async fn sample(client: &kube::Client, cps: &[String]) -> Option<Sample> {
    let pods: kube::Api<Pod> = kube::Api::namespaced(client.clone(), "kube-system");
    let mut static_pods = Vec::new();
    for cp in cps {
        for component in STATIC {
            let pod = pods.get(&format!("{component}-{cp}")).await.ok()?;
            let image = pod.spec?.containers.first()?.image.clone()?;
            static_pods.push((cp.clone(), component.to_owned(), tag(&image)));
        }
    }
    let nodes = kube::Api::<Node>::all(client.clone())
        .list(&Default::default())
        .await
        .ok()?;
    let mut kubelets: Vec<(String, String)> = nodes
        .items
        .into_iter()
        .filter_map(|n| Some((n.metadata.name?, n.status?.node_info?.kubelet_version)))
        .collect();
    kubelets.sort();
    let server = client.apiserver_version().await.ok()?.git_version;
    Some(Sample {
        static_pods,
        kubelets,
        server,
    })
}

fn plan_text(world: &World) -> Outcome {
    let mut cmd = kiln();
    cmd.args(["plan", "--config"])
        .arg(&world.config)
        .arg("--repo")
        .arg(&world.repos.work);
    world.run_command(cmd)
}

/// The node IP of every config the simulator applied (not a dry run), in order.
fn applies(world: &World) -> Vec<Ipv4Addr> {
    world
        .sim
        .log_text()
        .lines()
        .map(plain)
        .filter_map(|l| {
            let (_, rest) = l.split_once("apply config ")?;
            if !rest.contains("dry_run=false") {
                return None;
            }
            let node = rest
                .split_whitespace()
                .find_map(|w| w.strip_prefix("node="))?;
            node.trim_matches('"').split(':').next()?.parse().ok()
        })
        .collect()
}

#[tokio::test]
async fn kubernetes_v1_34_to_v1_35_moves_static_pods_then_kubelets_then_the_manifests() {
    let c = ClusterFixture::new("k8sup", 3, 1);
    let world = Arc::new(World::start(vec![c.clone()]).await);
    let run = world.run_once();
    assert!(run.success(), "provisioning at {OLD}:\n{run}");
    assert_converged(&world, &c).await;
    let wanted = c.wanted();
    let cps: Vec<String> = wanted
        .iter()
        .filter(|w| w.role == Role::ControlPlane)
        .map(|w| w.name.clone())
        .collect();
    let api = client(&world, &c).await;
    let before = sample(&api, &cps).await.expect("the API answers");
    assert!(before.kubelets.iter().all(|(_, v)| v == OLD), "{before:?}");
    assert_eq!(before.server, OLD);
    let applied_before = applies(&world).len();

    world.push_file(&c.path(), &at_kubernetes(&c, NEW), "Kubernetes v1.35.4");

    // `kiln plan` names each component of each node, static pods first, then the kubelets.
    let plan = plan_text(&world);
    assert_eq!(plan.code, Some(2), "the plan has changes:\n{plan}");
    let mut lines = Vec::new();
    for component in [
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
    ] {
        for cp in &cps {
            lines.push(format!(
                "restarts {component} on {cp} with {NEW} (no reboot)"
            ));
        }
    }
    for w in &wanted {
        lines.push(format!(
            "restarts the kubelet of {} on {NEW} (no reboot)",
            w.name
        ));
    }
    let at: Vec<usize> = lines
        .iter()
        .map(|l| {
            plan.stdout
                .find(l.as_str())
                .unwrap_or_else(|| panic!("no {l:?} in the plan:\n{plan}"))
        })
        .collect();
    assert!(
        at.windows(2).all(|p| p[0] < p[1]),
        "order in the plan:\n{plan}"
    );

    let w = world.clone();
    let run = tokio::task::spawn_blocking(move || w.run_once_for(Duration::from_secs(120)));
    let mut samples: Vec<Sample> = Vec::new();
    while !run.is_finished() {
        if let Some(s) = sample(&api, &cps).await
            && samples.last() != Some(&s)
        {
            samples.push(s);
        }
        // Sampling, not synchronisation.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let run = run.await.unwrap();
    assert!(run.success(), "the upgrade run:\n{run}");
    samples.extend(sample(&api, &cps).await);
    let show = || {
        samples
            .iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    };

    // Talos's order, in every state the API went through: a component moves on a control plane
    // only once the one before it runs NEW on every control plane, and a kubelet only once every
    // static pod does.
    for s in &samples {
        let at_new = |component: &str| {
            s.static_pods
                .iter()
                .filter(|(_, c, _)| c == component)
                .all(|(_, _, v)| v == NEW)
        };
        let any_new = |component: &str| {
            s.static_pods
                .iter()
                .any(|(_, c, v)| c == component && v == NEW)
        };
        for pair in STATIC.windows(2) {
            assert!(
                !any_new(pair[1]) || at_new(pair[0]),
                "{} moved before {} was done:\n{}",
                pair[1],
                pair[0],
                show()
            );
        }
        let kubelet_new = s.kubelets.iter().any(|(_, v)| v == NEW);
        assert!(
            !kubelet_new || STATIC.iter().all(|c| at_new(c)),
            "a kubelet moved before the static pods:\n{}",
            show()
        );
        // Never two kubelets at once: each moves alone between samples is too strict to see, but
        // the order of the configs applied below is exact.
    }
    let last = samples.last().unwrap();
    assert!(last.kubelets.iter().all(|(_, v)| v == NEW), "{}", show());
    assert!(
        last.static_pods.iter().all(|(_, _, v)| v == NEW),
        "{}",
        show()
    );
    assert_eq!(last.server, NEW, "/version at the end");

    // One config per change, node by node: each control plane four times (three static pods and
    // kube-proxy), then every node's kubelet, control planes first.
    let ip = |name: &str| wanted.iter().find(|w| w.name == name).unwrap().ip;
    let mut expected = Vec::new();
    for _ in 0..4 {
        expected.extend(cps.iter().map(|cp| ip(cp)));
    }
    expected.extend(wanted.iter().map(|w| w.ip));
    let applied: Vec<Ipv4Addr> = applies(&world)[applied_before..].to_vec();
    assert_eq!(
        applied,
        expected,
        "configs applied, in order:\n{}",
        world.sim.log_text()
    );

    // The manifests: kube-proxy's DaemonSet runs the new image.
    let proxy = kube::Api::<DaemonSet>::namespaced(api.clone(), "kube-system")
        .get("kube-proxy")
        .await
        .expect("kube-proxy's DaemonSet was applied");
    let image = proxy.spec.unwrap().template.spec.unwrap().containers[0]
        .image
        .clone()
        .unwrap();
    assert_eq!(image, format!("registry.k8s.io/kube-proxy:{NEW}"));

    // Ready, and a second run changes nothing.
    let (out, json) = world.status_json(Some(&c.name));
    let json = json.unwrap_or_else(|| panic!("no JSON from kiln status:\n{out}"));
    assert_eq!(
        status_of(&json, &c.name).unwrap()["phase"],
        "Ready",
        "{json}"
    );
    let count = applies(&world).len();
    let again = world.run_once();
    assert!(again.success(), "{again}");
    assert_eq!(applies(&world).len(), count, "a second run applies nothing");
    assert_converged(&world, &c).await;
}

#[tokio::test]
async fn a_combined_bump_goes_through_supported_pairs_only() {
    // Talos 1.12 + Kubernetes 1.30 → Talos 1.13 + Kubernetes 1.32: Talos 1.13 does not run 1.30, so
    // Kubernetes moves to 1.31 (the patch Talos shipped) on Talos 1.12 first, then Talos, then
    // Kubernetes 1.32.
    let c = ClusterFixture::new("k8spath", 1, 0);
    let world = Arc::new(
        World::start_with_nodes(vec![c.clone()], |ip| format!("{ip}:50000,version=v1.12.11")).await,
    );
    let start = c
        .yaml()
        .replace("version: v1.13.9\n", "version: v1.12.11\n")
        .replace(
            &format!("  kubernetes:\n    version: {OLD}\n"),
            "  kubernetes:\n    version: v1.30.5\n",
        );
    world.push_file(&c.path(), &start, "Talos 1.12 with Kubernetes 1.30");
    let run = world.run_once();
    assert!(
        run.success(),
        "provisioning at Talos 1.12 + Kubernetes 1.30:\n{run}"
    );
    let target = c.yaml().replace(
        &format!("  kubernetes:\n    version: {OLD}\n"),
        "  kubernetes:\n    version: v1.32.4\n",
    );
    world.push_file(&c.path(), &target, "Talos 1.13 with Kubernetes 1.32");

    // The plan starts with Kubernetes 1.31 and says the way.
    let plan = plan_text(&world);
    assert_eq!(plan.code, Some(2), "{plan}");
    let cp = &c.wanted()[0];
    assert!(
        plan.stdout.contains(&format!(
            "restarts kube-apiserver on {} with v1.31.4 (no reboot)",
            cp.name
        )),
        "{plan}"
    );
    assert!(
        plan.stdout
            .contains("Kubernetes 1.31 → Talos 1.13 → Kubernetes 1.32"),
        "the plan names the way:\n{plan}"
    );
    // The whole way, in order: Kubernetes 1.31, the Talos upgrade, then Kubernetes 1.32.
    let at = |needle: &str| {
        plan.stdout
            .find(needle)
            .unwrap_or_else(|| panic!("no {needle:?} in the plan:\n{plan}"))
    };
    let k131 = at("with v1.31.4 (no reboot)");
    let talos = at(&format!("upgrades {} v1.12.11 → v1.13.9 (reboot)", cp.name));
    let k132 = at("with v1.32.4 (no reboot)");
    assert!(k131 < talos && talos < k132, "order in the plan:\n{plan}");

    let before = applies(&world).len();
    let run = world.run_once_for(Duration::from_secs(120));
    assert!(run.success(), "the combined run:\n{run}");
    // The simulator's log: five configs (Kubernetes 1.31 on the control plane: three static pods,
    // kube-proxy, the kubelet) before the reboot into Talos v1.13.9, the 1.32 hop after it.
    let log = world.sim.log_text();
    let lines: Vec<String> = log.lines().map(plain).collect();
    let reboot = lines
        .iter()
        .position(|l| l.contains("reboot: upgrading") && l.contains("to=v1.13.9"))
        .unwrap_or_else(|| panic!("no upgrade to v1.13.9:\n{log}"));
    let applies_before_reboot = lines[..reboot]
        .iter()
        .filter(|l| l.contains("apply config ") && l.contains("dry_run=false"))
        .count();
    assert_eq!(
        applies_before_reboot - before,
        5,
        "Kubernetes 1.31 before Talos 1.13:\n{log}"
    );
    let api = client(&world, &c).await;
    let last = sample(&api, std::slice::from_ref(&cp.name)).await.unwrap();
    assert!(
        last.kubelets.iter().all(|(_, v)| v == "v1.32.4"),
        "{last:?}"
    );
    assert_eq!(last.server, "v1.32.4");
    assert_converged(&world, &c).await;
}

#[tokio::test]
async fn a_kubernetes_downgrade_is_refused_by_plan() {
    let c = ClusterFixture::new("k8sdown", 1, 0);
    let world = World::start(vec![c.clone()]).await;
    let run = world.run_once();
    assert!(run.success(), "{run}");
    world.push_file(
        &c.path(),
        &at_kubernetes(&c, "v1.33.6"),
        "Kubernetes down to 1.33",
    );
    let plan = plan_text(&world);
    assert_eq!(plan.code, Some(1), "refused:\n{plan}");
    assert!(
        plan.stdout
            .contains("Kubernetes 1.34 → 1.33 is a downgrade"),
        "{plan}"
    );
}
