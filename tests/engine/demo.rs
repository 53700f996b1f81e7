//! The simulated machine room (`sim::lab`) and the demo scaffolding (`kiln::demo`), against real parts:
//! Talos nodes over real gRPC and TLS on loopback addresses (127.0.44.x with VIPs 127.0.45.x, and the
//! demo clusters moved to 127.0.46.x/127.0.47.x, so these tests never meet a running demo's 127.0.2.x or
//! other suites' 127.0.10.x), the official Talos schemas, the `git` CLI and bare repositories on disk.

// The end-to-end suite's cluster fixtures (each on a free 127.0.<block>.0/24 of its own, from
// 127.0.120.x up) and Git remotes, reused by the in-process engine tests below.
use crate::{fixture, gitrepo};

#[path = "demo/drain.rs"]
mod drain;
#[path = "demo/serve.rs"]
mod serve;

/// The real demo listens on fixed loopback addresses (127.0.2.x): the tests that run it through the
/// binary take this first, so two of them never meet.
pub static DEMO_ADDRESSES: std::sync::Mutex<()> = std::sync::Mutex::new(());

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use kiln::sim::talos::validate::SchemaValidator;
use kiln::sim::talos::{NodeSpec, SimOptions, SimTalos};
use kiln::spec::{Cluster, ClusterDocument, Version};
use kiln::talos::SecretsBundle;
use kiln::talos::credentials::{self, TalosRole};
use kiln::talos::grpc::{ClientIdentity, ClientOptions, GrpcTalos, NodeState, TalosPort};
use time::OffsetDateTime;

fn crate_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn schema_dir() -> PathBuf {
    let dir = std::env::var_os("KILN_REFERENCE_SCHEMAS")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate_root().join("../shared/schemas"));
    assert!(
        dir.join("talos/config-v1.13.schema.json").is_file(),
        "the official Talos schemas are missing under {}/talos: set KILN_REFERENCE_SCHEMAS to the shared \
         schemas folder (scripts/test does) or check out ../shared/schemas",
        dir.display()
    );
    dir
}

fn sim_options() -> SimOptions {
    SimOptions {
        dump_dir: None,
        validator: Some(Arc::new(SchemaValidator::new(schema_dir()))),
        ..Default::default()
    }
}

fn bundle() -> &'static SecretsBundle {
    static B: OnceLock<SecretsBundle> = OnceLock::new();
    B.get_or_init(|| SecretsBundle::generate().expect("bundle"))
}

fn admin() -> ClientIdentity {
    admin_of(bundle())
}

fn admin_of(bundle: &SecretsBundle) -> ClientIdentity {
    let now = OffsetDateTime::now_utc() - time::Duration::minutes(1);
    let cert = credentials::mint_talos_client_cert(
        &bundle.os_ca,
        TalosRole::Admin,
        now,
        Duration::from_secs(3600),
    )
    .unwrap();
    ClientIdentity::from_minted(bundle.os_ca.cert_pem(), &cert)
}

/// One control plane at `127.0.44.<last>`, VIP `127.0.45.<last>`.
fn one_node_cluster(name: &str, last: u8) -> Cluster {
    let yaml = format!(
        "apiVersion: kiln.dev/v1alpha1\nkind: Cluster\nmetadata:\n  name: {name}\nspec:\n  proxmox:\n    \
         node: pve1\n    template: 9000\n    storage: local-lvm\n    bridge: vmbr0\n    vmidPrefix: {prefix}\n  \
         talos:\n    version: v1.13.9\n  kubernetes:\n    version: v1.34.1\n  network:\n    vip: 127.0.45.{last}\n    \
         gateway: 127.0.44.254\n    prefixLength: 24\n    nameservers: [127.0.44.254]\n  controlPlane:\n    \
         resources: {{cores: 2, memoryGiB: 4, diskGiB: 20}}\n    nodes:\n      - {{ip: 127.0.44.{last}}}\n",
        prefix = 800 + u32::from(last)
    );
    let doc: ClusterDocument = serde_yaml::from_str(&yaml).expect("intent document");
    Cluster::expand(&doc).expect("cluster expands")
}

fn config_for(cluster: &Cluster) -> String {
    kiln::talos::config::render(
        cluster,
        &cluster.nodes[0],
        bundle(),
        "v1.13.9".parse::<Version>().unwrap(),
    )
    .expect("render")
}

fn talos() -> GrpcTalos {
    GrpcTalos {
        port: 50000,
        options: ClientOptions {
            connect_timeout: Duration::from_secs(2),
            call_timeout: Duration::from_secs(20),
        },
    }
}

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 44, last])
}

fn addr(last: u8) -> SocketAddr {
    SocketAddr::new(ip(last), 50000)
}

/// A power cycle must not undo an install: Talos lives on the VM's disk, so a configured machine that
/// is switched off and on again comes back configured, while a fresh one comes back in maintenance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_node_survives_a_power_cycle_a_fresh_one_stays_in_maintenance() {
    let cluster = one_node_cluster("powercycle", 1);
    let mut sim = SimTalos::new(sim_options());
    sim.boot_node(&NodeSpec {
        addr: addr(1),
        uuid: None,
        version: None,
        platform: None,
    })
    .expect("node boots on 127.0.44.1 (Linux routes all of 127/8)");
    sim.boot_node(&NodeSpec {
        addr: addr(2),
        uuid: None,
        version: None,
        platform: None,
    })
    .unwrap();
    let (t, id) = (talos(), admin());
    t.apply_in_maintenance(ip(1), "", config_for(&cluster).as_bytes())
        .await
        .expect("config accepted");
    assert!(
        matches!(t.node_state(ip(1), &id).await, NodeState::Configured(_)),
        "configured after apply"
    );

    for last in [1, 2] {
        sim.set_powered(addr(last), false).unwrap();
        assert!(
            matches!(
                t.node_state(ip(last), &id).await,
                NodeState::Unreachable { .. }
            ),
            "node {last} powered off answers nothing"
        );
        sim.set_powered(addr(last), true).unwrap();
    }
    assert!(
        matches!(t.node_state(ip(1), &id).await, NodeState::Configured(_)),
        "the installed node boots its config again"
    );
    assert!(sim.applied_config(addr(1)).is_some());
    assert_eq!(t.node_state(ip(2), &id).await, NodeState::Maintenance);
}

mod lab {
    use super::*;
    use kiln::proxmox::VmSpec;
    use kiln::sim::lab::Lab;

    fn lab() -> Lab {
        Lab::with_options(&[(9000, "pve1")], sim_options(), 50000)
    }

    fn vm_spec(cluster: &Cluster) -> VmSpec {
        VmSpec::for_node(cluster, &cluster.nodes[0], "uid-lab")
    }

    /// The coupling the reconciler relies on: create + start boots a machine in maintenance at the VM's
    /// cloud-init address, a stop silences it, a reboot brings back what is installed, destroy removes
    /// it, and a new VM at the same address boots fresh.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn vm_power_drives_the_talos_node_at_its_cloud_init_address() {
        let cluster = one_node_cluster("labpower", 11);
        let lab = lab();
        let pve = lab.proxmox();
        let (t, id) = (talos(), admin());
        let spec = vm_spec(&cluster);
        let vmid = spec.id.vmid.get();

        assert!(
            matches!(
                t.node_state(ip(11), &id).await,
                NodeState::Unreachable { .. }
            ),
            "nothing answers before the VM exists"
        );
        let vm = pve.create(&spec, "pve1").await.expect("clone and start").vm;
        assert_eq!(lab.node_addr(vmid), Some(addr(11)));
        assert_eq!(
            t.node_state(ip(11), &id).await,
            NodeState::Maintenance,
            "first boot: maintenance"
        );

        let vm = pve.shutdown(&vm).await.unwrap();
        assert!(
            matches!(
                t.node_state(ip(11), &id).await,
                NodeState::Unreachable { .. }
            ),
            "a stopped VM answers nothing"
        );
        let vm = pve.start(&vm).await.unwrap();
        assert_eq!(t.node_state(ip(11), &id).await, NodeState::Maintenance);

        // The node reports the uuid of its VM's smbios1, as a guest does: the check passes.
        assert!(!vm.smbios_uuid().is_empty());
        t.apply_in_maintenance(ip(11), vm.smbios_uuid(), config_for(&cluster).as_bytes())
            .await
            .expect("config accepted");
        assert!(lab.applied_config(ip(11)).is_some());
        // The adapter reboots only for a pending change: more cores make one.
        let mut bigger = spec.clone();
        bigger.resources.cores += 1;
        let vm = pve.resize(&vm, &bigger).await.unwrap().vm;
        let vm = pve.reboot(&vm).await.unwrap();
        assert!(
            lab.sim_proxmox()
                .requests()
                .iter()
                .any(|r| r.path == format!("/nodes/pve1/qemu/{vmid}/status/reboot")),
            "Proxmox was asked to reboot the VM"
        );
        assert!(
            matches!(t.node_state(ip(11), &id).await, NodeState::Configured(_)),
            "Talos is installed on the disk: a reboot comes back configured"
        );
        lab.sim_proxmox().stop_by_hand(vmid);
        assert!(matches!(
            t.node_state(ip(11), &id).await,
            NodeState::Unreachable { .. }
        ));
        let vm = pve.claim(vm.identity()).await.unwrap();
        let vm = pve.start(&vm).await.unwrap();
        assert!(matches!(
            t.node_state(ip(11), &id).await,
            NodeState::Configured(_)
        ));

        pve.destroy(vm).await.unwrap();
        assert_eq!(lab.node_addr(vmid), None);
        assert!(lab.applied_config(ip(11)).is_none(), "the machine is gone");
        assert!(matches!(
            t.node_state(ip(11), &id).await,
            NodeState::Unreachable { .. }
        ));

        // A new VM at the same address is a new machine: a blank disk, maintenance.
        pve.create(&spec, "pve1").await.unwrap();
        let mut state = t.node_state(ip(11), &id).await;
        for _ in 0..50 {
            if state == NodeState::Maintenance {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            state = t.node_state(ip(11), &id).await;
        }
        assert_eq!(state, NodeState::Maintenance);
        assert!(lab.boot_errors().is_empty(), "{:?}", lab.boot_errors());
        assert!(lab.violations().is_empty());
    }

    /// The lab's hypervisor is kiln's real adapter over the simulated PVE API: a create is PVE's
    /// clone call with kiln's parameters (a full clone to the intent's storage, kiln's name, the
    /// ownership marker from the first call on), then one config write carrying kiln's tags and the
    /// digest just read, the disk growth, the start. A change to the adapter's clone logic shows here.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_create_is_the_adapters_clone_configure_grow_start_on_the_pve_api() {
        let cluster = one_node_cluster("labclone", 14);
        let lab = lab();
        let spec = vm_spec(&cluster);
        let vmid = spec.id.vmid.get();
        lab.proxmox().create(&spec, "pve1").await.expect("create");

        let seen = lab.sim_proxmox().requests();
        let writes: Vec<_> = seen.iter().filter(|r| r.method != "GET").collect();
        let calls: Vec<(&str, &str)> = writes
            .iter()
            .map(|r| (r.method.as_str(), r.path.as_str()))
            .collect();
        let vm_path = format!("/nodes/pve1/qemu/{vmid}");
        assert_eq!(
            calls,
            [
                ("POST", "/nodes/pve1/qemu/9000/clone"),
                ("PUT", format!("{vm_path}/config").as_str()),
                ("PUT", format!("{vm_path}/resize").as_str()),
                ("POST", format!("{vm_path}/status/start").as_str()),
            ]
        );
        let clone = &writes[0].params;
        assert_eq!(clone["newid"], vmid.to_string());
        assert_eq!(clone["name"], spec.id.name);
        assert_eq!(clone["full"], "1");
        assert_eq!(clone["storage"], "local-lvm");
        assert_eq!(
            clone["description"].lines().next(),
            Some(spec.id.marker().as_str())
        );
        assert!(!clone.contains_key("target"), "same node: no target");
        let config = &writes[1].params;
        assert_eq!(config["tags"], spec.id.tags());
        assert_eq!(config["ipconfig0"], spec.ipconfig0());
        assert_eq!(config["net0"], spec.net0());
        assert!(
            !config["digest"].is_empty(),
            "written against the digest read"
        );
        assert_eq!(
            writes[2].params["size"],
            format!("{}G", spec.resources.disk_gib)
        );
        let vm = lab.sim_proxmox().vm(vmid).unwrap();
        assert!(vm.running);
        assert_eq!(vm.config["tags"], spec.id.tags());
        assert_eq!(
            vm.config["scsi0"],
            format!(
                "local-lvm:vm-{vmid}-disk-0,size={}G",
                spec.resources.disk_gib
            )
        );
        assert_eq!(lab.node_addr(vmid), Some(addr(14)), "its machine booted");
    }

    /// A machine whose address is held by someone else comes up once it is free, as a slow boot;
    /// a VM with no static address, or with another machine's, gets none and says why.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn machines_that_cannot_answer_say_why_and_a_busy_address_is_waited_for() {
        let lab = lab();
        let pve = lab.proxmox();
        let (t, id) = (talos(), admin());

        let blocker = std::net::TcpListener::bind(addr(13)).expect("bind 127.0.44.13:50000");
        let cluster = one_node_cluster("labbusy", 13);
        pve.create(&vm_spec(&cluster), "pve1").await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(blocker);
        let mut state = t.node_state(ip(13), &id).await;
        for _ in 0..50 {
            if state == NodeState::Maintenance {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            state = t.node_state(ip(13), &id).await;
        }
        assert_eq!(state, NodeState::Maintenance);
        assert!(lab.boot_errors().is_empty(), "{:?}", lab.boot_errors());

        let sim = lab.sim_proxmox();
        sim.add_vm(
            990,
            "pve1",
            [("name".to_owned(), "dhcp-vm".to_owned())].into(),
            true,
        );
        sim.add_vm(
            991,
            "pve1",
            [(
                "ipconfig0".to_owned(),
                "ip=127.0.44.13/24,gw=127.0.44.254".to_owned(),
            )]
            .into(),
            true,
        );
        let errors = lab.boot_errors();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("VM 990") && errors[0].contains("ipconfig0"));
        assert!(errors[1].contains("VM 991") && errors[1].contains("conflict"));
        assert_eq!(lab.node_addr(991), None);
        assert_eq!(
            t.node_state(ip(13), &id).await,
            NodeState::Maintenance,
            "the first machine keeps its address"
        );
    }

    /// The lab owns the machines: dropping it stops them even while the Proxmox port lives on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_the_lab_stops_its_machines() {
        let cluster = one_node_cluster("labdrop", 12);
        let lab = lab();
        let pve = lab.proxmox();
        let vmid = pve
            .create(&vm_spec(&cluster), "pve1")
            .await
            .unwrap()
            .vm
            .vmid();
        let (t, id) = (talos(), admin());
        assert_eq!(t.node_state(ip(12), &id).await, NodeState::Maintenance);
        drop(lab);
        let mut state = t.node_state(ip(12), &id).await;
        for _ in 0..50 {
            if matches!(state, NodeState::Unreachable { .. }) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            state = t.node_state(ip(12), &id).await;
        }
        assert!(matches!(state, NodeState::Unreachable { .. }), "{state:?}");
        assert!(pve.observe().await.unwrap().get(vmid).is_some());
    }
}

mod folder {
    use std::path::Path;
    use std::process::Command;

    use kiln::config::{ProxmoxBackend, SecretsBackend, TalosBackend};
    use kiln::demo::{Demo, DemoError, MARKER};
    use kiln::reconcile::status::{ClusterStatus, NodeStatus, Phase, StatusBook};

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .arg("--git-dir")
            .arg(dir)
            .args(args)
            .output()
            .expect("git CLI on PATH");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    #[tokio::test]
    async fn prepare_seeds_the_remote_and_writes_a_config_kiln_accepts() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("kiln-demo");
        let demo = Demo::prepare(&dir).expect("prepare");
        assert!(dir.join(MARKER).is_file());
        assert_eq!(demo.clusters, ["production", "staging"]);
        // Five production nodes, three staging ones, and both VIPs, all on loopback.
        assert_eq!(demo.listen_addresses.len(), 10);
        assert!(demo.listen_addresses.iter().all(|a| a.ip().is_loopback()));
        assert!(
            demo.listen_addresses
                .contains(&"127.0.2.160:6443".parse().unwrap())
        );

        // The config on disk is the one returned, and kiln's own loader accepts it.
        let loaded = kiln::config::Config::load(&demo.config_path()).expect("kiln.toml loads");
        assert_eq!(loaded.state_dir, dir.join("state"));
        assert_eq!(loaded.git.url, demo.remote.to_str().unwrap());
        assert_eq!(loaded.git.poll_interval, std::time::Duration::from_secs(1));
        assert_eq!(loaded.proxmox.backend, ProxmoxBackend::Simulated);
        assert_eq!(loaded.talos.backend, TalosBackend::Simulated);
        assert_eq!(loaded.secrets.backend, SecretsBackend::File);
        assert_eq!(demo.config.state_dir, loaded.state_dir);

        // A bare remote whose main holds exactly the seed: the clusters and a README.
        assert_eq!(
            git(&demo.remote, &["rev-parse", "--is-bare-repository"]).trim(),
            "true"
        );
        assert_eq!(
            git(&demo.remote, &["symbolic-ref", "HEAD"]).trim(),
            "refs/heads/main"
        );
        assert_eq!(
            git(&demo.remote, &["rev-parse", "main"]).trim(),
            demo.seed_commit
        );
        let files = git(&demo.remote, &["ls-tree", "-r", "--name-only", "main"]);
        assert_eq!(
            files.lines().collect::<Vec<_>>(),
            [
                "README.md",
                "clusters/production.yaml",
                "clusters/staging.yaml"
            ]
        );
        // What kiln will read from Git passes kiln's own validation.
        let texts: Vec<(std::path::PathBuf, String)> = ["production", "staging"]
            .iter()
            .map(|n| {
                let path = format!("clusters/{n}.yaml");
                let text = git(&demo.remote, &["show", &format!("main:{path}")]);
                (path.into(), text)
            })
            .collect();
        let outcome = kiln::spec::load(texts.iter().map(|(p, t)| (p.as_path(), t.as_str())));
        assert!(outcome.is_valid(), "{:?}", outcome.invalid);
        assert_eq!(outcome.clusters.len(), 2);
        assert!(
            outcome
                .clusters
                .iter()
                .flat_map(|c| &c.nodes)
                .all(|n| n.ip.is_loopback())
        );
        // The lab has the template both clusters clone from.
        assert!(
            demo.lab
                .sim_proxmox()
                .vm(9000)
                .is_some_and(|vm| vm.is_template())
        );
    }

    #[test]
    fn prepare_starts_fresh_in_a_demo_folder_and_refuses_any_other() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("kiln-demo");
        let first = Demo::prepare(&dir).unwrap();
        std::fs::write(dir.join("state-left-over"), "x").unwrap();
        drop(first);
        let again = Demo::prepare(&dir).expect("a demo folder is wiped and recreated");
        assert!(!dir.join("state-left-over").exists());
        assert_eq!(
            git(&again.remote, &["rev-list", "--count", "main"]).trim(),
            "1"
        );

        let other = tmp.path().join("precious");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("notes.txt"), "keep me").unwrap();
        let err = Demo::prepare(&other).unwrap_err();
        assert!(matches!(err, DemoError::NotADemoFolder(_)), "{err}");
        assert!(err.to_string().contains(MARKER));
        assert_eq!(
            std::fs::read_to_string(other.join("notes.txt")).unwrap(),
            "keep me"
        );
        let file = tmp.path().join("a-file");
        std::fs::write(&file, "").unwrap();
        assert!(matches!(
            Demo::prepare(&file),
            Err(DemoError::NotAFolder(_))
        ));
        // An empty folder is fine.
        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        Demo::prepare(&empty).unwrap();
    }

    /// The closing report shows the status table and only kiln's own commits, with the files they
    /// touched under gitops/: a commit is pushed here as kiln pushes, from a clone with kiln's author.
    #[test]
    fn report_shows_status_and_only_kilns_commits() {
        let tmp = tempfile::tempdir().unwrap();
        let demo = Demo::prepare(&tmp.path().join("kiln-demo")).unwrap();
        let before = demo.report(&StatusBook::default());
        assert!(before.contains("kiln has pushed no commit"), "{before}");

        let work = tmp.path().join("work");
        let run = |args: &[&str], env: &[(&str, &str)]| {
            let out = Command::new("git")
                .args(args)
                .envs(env.iter().copied())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(
            &[
                "clone",
                "-q",
                demo.remote.to_str().unwrap(),
                work.to_str().unwrap(),
            ],
            &[],
        );
        let w = work.to_str().unwrap();
        let commit = |msg: &str, name: &str, email: &str| {
            run(&["-C", w, "add", "-A"], &[]);
            run(
                &["-C", w, "commit", "-q", "--no-gpg-sign", "-m", msg],
                &[
                    ("GIT_AUTHOR_NAME", name),
                    ("GIT_AUTHOR_EMAIL", email),
                    ("GIT_COMMITTER_NAME", name),
                    ("GIT_COMMITTER_EMAIL", email),
                ],
            );
        };
        let app_dir = work.join("gitops/core/apps/staging");
        std::fs::create_dir_all(&app_dir).unwrap();
        std::fs::write(app_dir.join("cert-manager.yaml"), "kind: Application\n").unwrap();
        std::fs::write(work.join("gitops/root.yaml"), "kind: ApplicationSet\n").unwrap();
        commit("kiln: render staging", "kiln", "kiln@localhost");
        // A person's commit under gitops/ is not kiln's.
        std::fs::write(work.join("gitops/by-hand.yaml"), "x: 1\n").unwrap();
        commit("hand edit", "Ada", "ada@example.com");
        run(
            &["-C", w, "push", "-q", "origin", "HEAD:refs/heads/main"],
            &[],
        );

        let mut book = StatusBook::default();
        book.clusters.insert(
            "staging".into(),
            ClusterStatus {
                name: "staging".into(),
                phase: Phase::Ready,
                conditions: vec![],
                nodes: vec![NodeStatus {
                    name: "staging-cp-1".into(),
                    vmid: 411,
                    ip: "127.0.2.171".parse().unwrap(),
                    role: "controlplane".into(),
                    vm_state: kiln::reconcile::status::VmState::Running,
                    talos_stage: "running".into(),
                    talos_version: None,
                    kubernetes_version: None,
                }],
                last_applied_revision: Some("abcdef0123456789".into()),
                last_error: None,
                retry_at: None,
                updated_at: time::macros::datetime!(2026-11-25 0:00 UTC),
                credentials: Default::default(),
                backup: None,
            },
        );
        let report = demo.report(&book);
        println!("{report}");
        assert!(report.contains("staging  Ready  1/1"), "{report}");
        assert!(report.contains("kiln pushed 1 commit(s)"), "{report}");
        assert!(report.contains("kiln: render staging"), "{report}");
        assert!(
            report.contains("A gitops/core/apps/staging/cert-manager.yaml"),
            "{report}"
        );
        assert!(report.contains("A gitops/root.yaml"), "{report}");
        assert!(
            !report.contains("hand edit") && !report.contains("by-hand"),
            "{report}"
        );
        assert!(!report.contains("Seed the kiln demo"), "{report}");
        assert!(report.contains(&format!("git -C {} log --stat", demo.remote.display())));
    }
}

/// The demo's own clusters, as `Demo::prepare` seeds them, go through the lab the way the engine will
/// drive them: clone and start every VM, send each node its config (Talos 1.13 for production, the 1.12
/// contract for staging), bootstrap the first control plane, and every node runs its config with one
/// etcd cluster. Moved from the demo's 127.0.2.x to 127.0.46.x/127.0.47.x so a demo running beside the
/// tests is not disturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_clusters_come_up_in_the_lab() {
    use kiln::proxmox::VmSpec;
    use kiln::sim::lab::Lab;
    use kiln::spec::Role;

    let clusters = kiln::demo::demo_clusters().expect("demo clusters");
    let lab = Lab::with_options(&[(9000, "pve1")], sim_options(), 50000);
    let pve = lab.proxmox();
    let t = talos();
    for (i, (name, text)) in clusters.iter().enumerate() {
        // Each cluster has its own secrets bundle, hence its own CAs and etcd cluster.
        let bundle = SecretsBundle::generate().expect("bundle");
        let id = admin_of(&bundle);
        let moved = text.replace("127.0.2.", &format!("127.0.{}.", 46 + i));
        let doc: ClusterDocument = serde_yaml::from_str(&moved).unwrap();
        let cluster = Cluster::expand(&doc).unwrap();
        let version = cluster.spec.talos.version;
        for node in &cluster.nodes {
            let vm = pve
                .create(
                    &VmSpec::for_node(&cluster, node, "uid-demo"),
                    &node.pve_node,
                )
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", node.name));
            assert!(vm.vm.running());
            let ip = IpAddr::V4(node.ip);
            assert_eq!(
                t.node_state(ip, &id).await,
                NodeState::Maintenance,
                "{}",
                node.name
            );
            let config = kiln::talos::config::render(&cluster, node, &bundle, version).unwrap();
            t.apply_in_maintenance(ip, vm.vm.smbios_uuid(), config.as_bytes())
                .await
                .unwrap_or_else(|e| panic!("{} ({name}, Talos {version}): {e}", node.name));
        }
        let first = cluster
            .nodes
            .iter()
            .find(|n| n.role == Role::ControlPlane)
            .unwrap();
        let first_ip = IpAddr::V4(first.ip);
        t.bootstrap(first_ip, &id).await.expect("bootstrap");
        let members = t.etcd_members(first_ip, &id).await.unwrap();
        let cps = cluster
            .nodes
            .iter()
            .filter(|n| n.role == Role::ControlPlane)
            .count();
        assert_eq!(members.len(), cps, "{name}: every control plane joined");
        let all_ready = || async {
            for node in &cluster.nodes {
                let state = t.node_state(IpAddr::V4(node.ip), &id).await;
                assert!(
                    matches!(&state, NodeState::Configured(s) if s.ready),
                    "{}: {state:?}",
                    node.name
                );
            }
        };
        all_ready().await;
        // A Proxmox reboot of every VM (a resize's pending change) keeps the cluster: Talos is on disk.
        for node in &cluster.nodes {
            let mut spec = VmSpec::for_node(&cluster, node, "uid-demo");
            spec.resources.cores += 1;
            let vm = pve.claim(&spec.id).await.unwrap();
            let vm = pve.resize(&vm, &spec).await.unwrap().vm;
            pve.reboot(&vm).await.unwrap();
            assert_eq!(
                lab.sim_proxmox().vm(vm.vmid()).unwrap().config["cores"],
                spec.resources.cores.to_string(),
                "{}: rebooted with its new size",
                node.name
            );
        }
        all_ready().await;
        assert_eq!(t.etcd_members(first_ip, &id).await.unwrap().len(), cps);
    }
    assert!(lab.violations().is_empty(), "{:?}", lab.violations());
    assert!(lab.boot_errors().is_empty(), "{:?}", lab.boot_errors());
}

/// `kiln demo` through the real binary, as the README's first command runs it: from any folder,
/// twice in a row (the second run wipes and reseeds its own folder), each reaching Ready and ending
/// with one kiln commit of the generated files and a second cycle that does nothing.
#[test]
fn kiln_demo_runs_twice_from_a_fresh_folder() {
    let _addresses = DEMO_ADDRESSES.lock().unwrap_or_else(|p| p.into_inner());
    let cwd = tempfile::tempdir().unwrap();
    for run in 1..=2 {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("demo")
            .current_dir(cwd.path())
            .env("KILN_REFERENCE_SCHEMAS", schema_dir())
            .output()
            .expect("running kiln demo");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "run {run}: kiln demo failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        for cluster in ["production", "staging"] {
            assert!(
                stdout
                    .lines()
                    .any(|l| l.trim_start().starts_with(cluster) && l.contains(" Ready ")),
                "run {run}: {cluster} is not Ready:\n{stdout}"
            );
        }
        assert!(
            stdout.contains("kiln pushed 1 commit(s)"),
            "run {run}: expected exactly one kiln commit:\n{stdout}"
        );
        assert!(
            stderr.contains("second cycle: nothing to do"),
            "run {run}: the second cycle was not a no-op:\n{stderr}"
        );
        assert!(
            !stderr.contains("WARN") && !stderr.contains("ERROR"),
            "run {run}: warnings on a clean demo:\n{stderr}"
        );
        let remote = cwd.path().join("kiln-demo/remote.git");
        let files = std::process::Command::new("git")
            .arg("-C")
            .arg(&remote)
            .args(["ls-tree", "-r", "--name-only", "main"])
            .output()
            .unwrap();
        let files = String::from_utf8_lossy(&files.stdout);
        assert!(
            files
                .lines()
                .any(|f| f.starts_with("gitops/core/apps/production/")),
            "run {run}: no generated files under gitops/:\n{files}"
        );
        assert!(
            !files.lines().any(|f| f.starts_with("gitops/gitops/")),
            "run {run}: output_dir doubled:\n{files}"
        );
    }
}
