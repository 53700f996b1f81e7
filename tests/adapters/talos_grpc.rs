//! The Talos gRPC client against the Talos simulator, over real TCP, TLS and HTTP/2 on loopback
//! addresses (127.0.10.x), with configs rendered by kiln for a cluster whose nodes live there.
//!
//! The wire tests decode what the client sends and what the simulator answers with a raw protobuf
//! reader written here, against the field numbers of Talos's own protos (TALOS-FACTS §1), so wire
//! compatibility does not rest on the client and the simulator agreeing with each other.

#[path = "talos_grpc/live_config.rs"]
mod live_config;
#[path = "talos_grpc/real.rs"]
mod real;
#[path = "talos_grpc/restore.rs"]
mod restore;
#[path = "talos_grpc/snapshot.rs"]
mod snapshot;
#[path = "talos_grpc/upgrade.rs"]
mod upgrade;
#[path = "talos_grpc/wire.rs"]
mod wire;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use kiln::backup::bbolt;
use kiln::sim::talos::validate::SchemaValidator;
use kiln::sim::talos::{NodeSpec, SimOptions, SimTalos};
use kiln::spec::{Cluster, ClusterDocument, Version};
use kiln::talos::KeyAlgorithm;
use kiln::talos::SecretsBundle;
use kiln::talos::credentials::{self, TalosRole};
use kiln::talos::grpc::{
    BootstrapOutcome, ClientIdentity, ClientOptions, GrpcTalos, MachineStage, NodeState,
    TalosClient, TalosError, TalosPort,
};
use kiln::talos::grpc::{TalosNode, collect, upload_from};
use kiln::talos::pki::LeafSpec;
use time::OffsetDateTime;

pub fn crate_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn schema_dir() -> PathBuf {
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

pub fn bundle() -> &'static SecretsBundle {
    static B: OnceLock<SecretsBundle> = OnceLock::new();
    B.get_or_init(|| SecretsBundle::generate().expect("bundle"))
}

/// A cluster whose nodes are `127.0.10.<first>…` (`cps` control planes, then `workers` workers) and whose
/// VIP is `127.0.11.<first>`.
pub fn cluster(name: &str, first: u8, cps: u8, workers: u8) -> Cluster {
    let node = |i: u8| format!("      - {{ip: 127.0.10.{}}}\n", first + i);
    let cp_nodes: String = (0..cps).map(node).collect();
    let wk_nodes: String = (cps..cps + workers).map(node).collect();
    let workers_section = if workers == 0 {
        String::new()
    } else {
        format!(
            "  workers:\n    resources: {{cores: 2, memoryGiB: 4, diskGiB: 20}}\n    nodes:\n{wk_nodes}"
        )
    };
    let prefix = 100 + u32::from(first);
    let yaml = format!(
        "apiVersion: kiln.dev/v1alpha1\nkind: Cluster\nmetadata:\n  name: {name}\nspec:\n  proxmox:\n    \
         node: pve1\n    template: 9000\n    storage: local-lvm\n    bridge: vmbr0\n    vmidPrefix: {prefix}\n  \
         talos:\n    version: v1.13.9\n  kubernetes:\n    version: v1.34.1\n  network:\n    vip: 127.0.11.{first}\n    \
         gateway: 127.0.10.254\n    prefixLength: 24\n    nameservers: [127.0.10.254]\n  controlPlane:\n    \
         resources: {{cores: 2, memoryGiB: 4, diskGiB: 20}}\n    nodes:\n{cp_nodes}{workers_section}"
    );
    let doc: ClusterDocument = serde_yaml::from_str(&yaml).expect("intent document");
    Cluster::expand(&doc).expect("cluster expands")
}

pub fn config_for(cluster: &Cluster, ip: IpAddr) -> String {
    let node = cluster
        .nodes
        .iter()
        .find(|n| IpAddr::V4(n.ip) == ip)
        .expect("node of the cluster");
    kiln::talos::config::render(
        cluster,
        node,
        bundle(),
        "v1.13.9".parse::<Version>().unwrap(),
    )
    .expect("render")
}

pub fn identity(role: TalosRole) -> ClientIdentity {
    let now = OffsetDateTime::now_utc() - time::Duration::minutes(1);
    let cert =
        credentials::mint_talos_client_cert(&bundle().os_ca, role, now, Duration::from_secs(3600))
            .unwrap();
    ClientIdentity::from_minted(bundle().os_ca.cert_pem(), &cert)
}

pub fn admin() -> ClientIdentity {
    identity(TalosRole::Admin)
}

pub fn addr(last: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 10, last], 50000))
}

pub async fn start_sim(nodes: &[NodeSpec]) -> SimTalos {
    let options = SimOptions {
        dump_dir: None,
        validator: Some(Arc::new(SchemaValidator::new(schema_dir()))),
        ..Default::default()
    };
    SimTalos::start(nodes, options)
        .await
        .expect("simulator starts on 127.0.10.x (Linux routes all of 127/8)")
}

pub fn options() -> ClientOptions {
    ClientOptions {
        connect_timeout: Duration::from_secs(5),
        call_timeout: Duration::from_secs(30),
    }
}

fn port() -> GrpcTalos {
    GrpcTalos {
        port: 50000,
        options: options(),
    }
}

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 10, last])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_drives_the_simulator_through_a_cluster_lifecycle() {
    let cluster = cluster("life", 1, 3, 1);
    let specs: Vec<NodeSpec> = (1..=4)
        .map(|i| NodeSpec {
            addr: addr(i),
            uuid: (i == 1).then(|| "4c4c4544-0001".to_owned()),
            version: None,
            platform: None,
        })
        .collect();
    let sim = start_sim(&specs).await;
    let talos = port();
    let id = admin();

    // Maintenance detection on every node.
    for i in 1..=4 {
        assert_eq!(
            talos.node_state(ip(i), &id).await,
            NodeState::Maintenance,
            "node {i}"
        );
    }

    // An invalid config comes back with the simulator's validation error, and changes nothing.
    let good = config_for(&cluster, ip(1));
    let bad = good.replacen("machine:\n", "machine:\n  bogusField: 1\n", 1);
    assert_ne!(bad, good);
    let err = talos
        .apply_in_maintenance(ip(1), "4c4c4544-0001", bad.as_bytes())
        .await
        .unwrap_err();
    // Talos's strict decoder refuses an unknown field before validation: a plain error (`Unknown`).
    assert_eq!(err.code(), Some(tonic::Code::Unknown), "{err}");
    assert!(
        err.to_string().contains("failed to parse config")
            && err.to_string().contains("bogusField"),
        "the decoder's message names the field: {err}"
    );
    assert_eq!(talos.node_state(ip(1), &id).await, NodeState::Maintenance);

    // The SMBIOS uuid check refuses a different machine before any config is sent.
    let err = talos
        .apply_in_maintenance(ip(1), "4c4c4544-9999", good.as_bytes())
        .await
        .unwrap_err();
    assert!(matches!(err, TalosError::UuidMismatch { .. }), "{err}");
    assert!(sim.applied_config(addr(1)).is_none());

    // One apply at a time per node: a second, concurrent one is refused (retryable).
    sim.set_delay("ApplyConfiguration", Duration::from_millis(400));
    let cfg4 = config_for(&cluster, ip(4));
    let (first, second) = tokio::join!(
        talos.apply_in_maintenance(ip(4), "", cfg4.as_bytes()),
        async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            talos.apply_in_maintenance(ip(4), "", cfg4.as_bytes()).await
        }
    );
    first.unwrap();
    let err = second.unwrap_err();
    assert!(
        err.is_transient() && err.to_string().contains("already in progress"),
        "{err}"
    );
    sim.set_delay("ApplyConfiguration", Duration::ZERO);

    // Apply everywhere (nodes 2–4 report no uuid: a warning, not a refusal).
    for i in 1..=3 {
        let cfg = config_for(&cluster, ip(i));
        let outcome = talos
            .apply_in_maintenance(ip(i), "4c4c4544-0001", cfg.as_bytes())
            .await
            .unwrap();
        assert_eq!(
            outcome.mode,
            kiln::talos::grpc::proto::machine::ApplyMode::NoReboot
        );
        assert_eq!(sim.applied_config(addr(i)).unwrap(), cfg.as_bytes());
    }

    // Configured detection: mTLS works, not bootstrapped yet.
    for i in 1..=4 {
        match talos.node_state(ip(i), &id).await {
            NodeState::Configured(s) => assert_eq!(s.stage, MachineStage::Booting, "node {i}"),
            other => panic!("node {i}: {other:?}"),
        }
    }
    // Nobody lists etcd members before bootstrap: the node waits until the caller's deadline.
    let err = talos
        .etcd_members_within(ip(2), &id, Duration::from_millis(500))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::DeadlineExceeded), "{err}");

    // Bootstrap, then a repeated one is handled as done, on the same node and on a joined one.
    assert_eq!(
        talos.bootstrap(ip(1), &id).await.unwrap(),
        BootstrapOutcome::Bootstrapped
    );
    assert_eq!(
        talos.bootstrap(ip(1), &id).await.unwrap(),
        BootstrapOutcome::AlreadyBootstrapped
    );
    assert_eq!(
        talos.bootstrap(ip(2), &id).await.unwrap(),
        BootstrapOutcome::AlreadyBootstrapped
    );
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
    for i in 1..=4 {
        match talos.node_state(ip(i), &id).await {
            NodeState::Configured(s) => {
                assert_eq!(s.stage, MachineStage::Running, "node {i}");
                assert!(s.ready);
            }
            other => panic!("node {i}: {other:?}"),
        }
    }

    // Kubeconfig: chunks joined, gunzipped, untarred.
    let kubeconfig = talos.kubeconfig(ip(1), &id).await.unwrap();
    let kc: serde_yaml::Value = serde_yaml::from_str(kubeconfig.expose()).unwrap();
    assert_eq!(kc["current-context"].as_str(), Some("admin@life"));
    assert_eq!(
        kc["clusters"][0]["cluster"]["server"].as_str(),
        Some("https://127.0.11.1:6443")
    );
    let users = kc["users"][0]["user"]["client-certificate-data"]
        .as_str()
        .unwrap();
    assert!(!users.is_empty());

    // etcd membership, seen from another control plane.
    let members = talos.etcd_members(ip(2), &id).await.unwrap();
    let mut names: Vec<&str> = members.iter().map(|m| m.hostname.as_str()).collect();
    names.sort();
    assert_eq!(names, ["life-cp-1", "life-cp-2", "life-cp-3"]);
    // Workers run no etcd.
    assert!(talos.etcd_members(ip(4), &id).await.is_err());

    // Version and services over mTLS.
    let v = talos.version(ip(3), &id).await.unwrap();
    assert_eq!(v.tag, "v1.13.9");
    let services = talos.services(ip(1), &id).await.unwrap();
    assert!(
        services
            .iter()
            .any(|s| s.id == "etcd" && s.state == "Running")
    );

    // Graceful reset of one control plane: it leaves etcd; another member's list confirms it.
    talos.reset_graceful(ip(3), &id, true).await.unwrap();
    let members = talos.etcd_members(ip(1), &id).await.unwrap();
    let mut names: Vec<&str> = members.iter().map(|m| m.hostname.as_str()).collect();
    names.sort();
    assert_eq!(names, ["life-cp-1", "life-cp-2"]);
    assert_eq!(
        talos.node_state(ip(3), &id).await,
        NodeState::Maintenance,
        "reset with reboot → maintenance"
    );

    // Upgrade moves the node's version, once it is back from its reboot.
    talos
        .upgrade(ip(2), &id, "ghcr.io/siderolabs/installer:v1.13.10", true)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let tag = loop {
        match talos.version(ip(2), &id).await {
            Ok(v) => break v.tag,
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "not back from the upgrade's reboot: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(tag, "v1.13.10");
    assert_eq!(sim.version(addr(2)).as_deref(), Some("v1.13.10"));

    // Snapshot and removal by id.
    let snapshot = collect(talos.etcd_snapshot(ip(1), &id).await.unwrap())
        .await
        .unwrap();
    let facts = bbolt::check(&snapshot).unwrap();
    assert!(facts.has_hash_trailer && facts.revision >= 1, "{facts:?}");
    let cp2 = members
        .iter()
        .find(|m| m.hostname == "life-cp-2")
        .unwrap()
        .id;
    talos.etcd_remove_member(ip(1), &id, cp2).await.unwrap();
    assert_eq!(talos.etcd_members(ip(1), &id).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_client_certs_from_the_os_ca_with_client_auth_only_get_in() {
    let cluster = cluster("certs", 11, 1, 0);
    let sim = start_sim(&[NodeSpec {
        addr: addr(11),
        uuid: None,
        version: None,
        platform: None,
    }])
    .await;
    let talos = port();
    talos
        .apply_in_maintenance(ip(11), "", config_for(&cluster, ip(11)).as_bytes())
        .await
        .unwrap();
    assert!(matches!(
        talos.node_state(ip(11), &admin()).await,
        NodeState::Configured(_)
    ));

    // A cert from another CA (same subject, same role) is refused: the node is not "configured" for it.
    let now = OffsetDateTime::now_utc() - time::Duration::minutes(1);
    let other_ca =
        kiln::talos::CertificateAuthority::generate(Some("talos"), KeyAlgorithm::Ed25519, now)
            .unwrap();
    let foreign = credentials::mint_talos_client_cert(
        &other_ca,
        TalosRole::Admin,
        now,
        Duration::from_secs(3600),
    )
    .unwrap();
    let foreign = ClientIdentity::from_minted(bundle().os_ca.cert_pem(), &foreign);
    assert!(matches!(
        talos.node_state(ip(11), &foreign).await,
        NodeState::Booting { .. }
    ));
    assert!(talos.version(ip(11), &foreign).await.is_err());

    // A cert from the right CA whose ExtKeyUsage is not exactly ClientAuth is refused too.
    let wide = bundle()
        .os_ca
        .issue(LeafSpec {
            common_name: None,
            organization: Some("os:admin"),
            not_before: now,
            not_after: now + time::Duration::hours(1),
            ip_sans: &[],
            dns_sans: &[],
            key_usages: &[rcgen::KeyUsagePurpose::DigitalSignature],
            extended_key_usages: &[
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ],
        })
        .unwrap();
    let wide = ClientIdentity {
        ca_pem: bundle().os_ca.cert_pem().to_owned(),
        cert_pem: wide.cert_pem.clone(),
        key_pem: kiln::redact::Secret::new(wide.key_pem.expose()),
    };
    assert!(talos.version(ip(11), &wide).await.is_err());

    // No client cert at all: the insecure handshake no longer gets anywhere.
    let insecure = TalosClient::connect_insecure(addr(11), options()).await;
    if let Ok(client) = insecure {
        assert!(client.version().await.is_err());
    }

    // A reader may read but not bootstrap.
    let reader = identity(TalosRole::Reader);
    assert!(talos.version(ip(11), &reader).await.is_ok());
    let err = talos.bootstrap(ip(11), &reader).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::PermissionDenied), "{err}");
    drop(sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_mode_allows_reads_and_refuses_admin_calls() {
    let sim = start_sim(&[
        NodeSpec {
            addr: addr(21),
            uuid: Some("u-21".into()),
            version: None,
            platform: None,
        },
        NodeSpec {
            addr: addr(22),
            uuid: None,
            version: Some("v1.12.11".into()),
            platform: None,
        },
    ])
    .await;
    let client = TalosClient::connect_insecure(addr(21), options())
        .await
        .unwrap();
    assert_eq!(client.version().await.unwrap().tag, "v1.13.9");
    assert_eq!(
        kiln::talos::grpc::state::system_uuid(&client)
            .await
            .unwrap(),
        "u-21"
    );
    assert_eq!(
        client.bootstrap(false).await.unwrap_err().code(),
        Some(tonic::Code::PermissionDenied)
    );
    assert_eq!(
        client.kubeconfig().await.unwrap_err().code(),
        Some(tonic::Code::PermissionDenied)
    );
    assert_eq!(
        client.reset(true, false).await.unwrap_err().code(),
        Some(tonic::Code::PermissionDenied)
    );
    // A dry run in maintenance says there is no config yet, and applies nothing.
    let cluster = cluster("maint", 21, 1, 0);
    let outcome = client
        .apply_configuration(
            config_for(&cluster, ip(21)).as_bytes(),
            kiln::talos::grpc::proto::machine::ApplyMode::Auto,
            true,
        )
        .await
        .unwrap();
    assert!(
        outcome.mode_details.contains("maintenance mode"),
        "{outcome:?}"
    );
    assert!(sim.applied_config(addr(21)).is_none());

    // The ≤1.12 maintenance server does not implement Version at all.
    let old = TalosClient::connect_insecure(addr(22), options())
        .await
        .unwrap();
    assert_eq!(
        old.version().await.unwrap_err().code(),
        Some(tonic::Code::Unimplemented)
    );
    let status = kiln::talos::grpc::state::machine_status(&old)
        .await
        .unwrap();
    assert_eq!(status.stage, MachineStage::Maintenance);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_etcd_cluster_is_refused_loudly() {
    let cluster = cluster("split", 31, 2, 0);
    let sim = start_sim(&[
        NodeSpec {
            addr: addr(31),
            uuid: None,
            version: None,
            platform: None,
        },
        NodeSpec {
            addr: addr(32),
            uuid: None,
            version: None,
            platform: None,
        },
    ])
    .await;
    let talos = port();
    let id = admin();
    for i in [31, 32] {
        talos
            .apply_in_maintenance(ip(i), "", config_for(&cluster, ip(i)).as_bytes())
            .await
            .unwrap();
    }
    // cp-2 has not joined yet (a slow join): bootstrapping it too would split etcd.
    sim.hold_etcd_join(addr(32), true);
    assert_eq!(
        talos.bootstrap(ip(31), &id).await.unwrap(),
        BootstrapOutcome::Bootstrapped
    );
    let err = talos.bootstrap(ip(32), &id).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::Internal), "{err}");
    assert!(err.to_string().contains("second etcd cluster"), "{err}");
    assert_eq!(sim.violations().len(), 1);
    // Released, it joins the one cluster.
    sim.hold_etcd_join(addr(32), false);
    assert_eq!(talos.etcd_members(ip(32), &id).await.unwrap().len(), 2);

    // Injected failures and delays reach the client as the node would send them.
    sim.fail_next(
        addr(31),
        "Bootstrap",
        tonic::Code::FailedPrecondition,
        "time is not in sync yet",
    );
    let err = talos.bootstrap(ip(31), &id).await.unwrap_err();
    assert!(
        err.is_transient() && err.to_string().contains("time is not in sync"),
        "{err}"
    );
    sim.set_delay("Version", Duration::from_millis(300));
    let started = std::time::Instant::now();
    talos.version(ip(31), &id).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));

    // A destroyed VM stops answering; a new one at the same address boots into maintenance.
    let mut sim = sim;
    sim.remove_node(addr(32));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(matches!(
        talos.node_state(ip(32), &id).await,
        NodeState::Unreachable { .. }
    ));
    let spec = NodeSpec {
        addr: addr(32),
        uuid: None,
        version: None,
        platform: None,
    };
    sim.add_node(&spec).await.unwrap();
    assert_eq!(talos.node_state(ip(32), &id).await, NodeState::Maintenance);
}

#[test]
fn node_specs_parse_as_the_cli_takes_them() {
    let spec: NodeSpec = "127.0.10.1:50000,uuid=abc,version=v1.12.11"
        .parse()
        .unwrap();
    assert_eq!(spec.addr, addr(1));
    assert_eq!(spec.uuid.as_deref(), Some("abc"));
    assert_eq!(spec.version.as_deref(), Some("v1.12.11"));
    assert!("127.0.10.1:50000,colour=blue".parse::<NodeSpec>().is_err());
    assert!(
        "127.0.10.1:50000,version=latest"
            .parse::<NodeSpec>()
            .is_err()
    );
    assert!("nowhere".parse::<NodeSpec>().is_err());
}

/// `kiln sim talos` as a process: kills it when the test ends, however it ends.
struct SimProcess(std::process::Child);

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kiln_sim_talos_serves_nodes_and_dumps_accepted_configs() {
    use std::io::BufRead;

    let dump = tempfile::tempdir().unwrap();
    // Without KILN_REFERENCE_SCHEMAS the simulator judges configs with kiln's strict decoder.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "sim",
            "talos",
            "--listen",
            "127.0.10.61:50000,uuid=cli-61",
            "--listen",
            "127.0.10.62:50000,version=v1.13.9",
        ])
        .arg("--dump-dir")
        .arg(dump.path())
        .env_remove("KILN_REFERENCE_SCHEMAS")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run kiln sim talos");
    let stdout = child.stdout.take().unwrap();
    let _guard = SimProcess(child);
    let mut lines = std::io::BufReader::new(stdout).lines();
    for _ in 0..2 {
        let line = lines.next().expect("a line per node").unwrap();
        assert!(line.contains("listening on 127.0.10.6"), "{line}");
    }

    let cluster = cluster("cli", 61, 2, 0);
    let talos = port();
    assert_eq!(
        talos.node_state(ip(61), &admin()).await,
        NodeState::Maintenance
    );
    let good = config_for(&cluster, ip(61));
    let bad = good.replacen("machine:\n", "machine:\n  bogusField: 1\n", 1);
    let err = talos
        .apply_in_maintenance(ip(61), "cli-61", bad.as_bytes())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::Unknown), "{err}");
    assert!(err.to_string().contains("bogusField"), "{err}");
    assert!(
        !dump.path().join("127.0.10.61.yaml").exists(),
        "a refused config is not dumped"
    );

    talos
        .apply_in_maintenance(ip(61), "cli-61", good.as_bytes())
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(dump.path().join("127.0.10.61.yaml")).unwrap(),
        good
    );
    assert!(matches!(
        talos.node_state(ip(61), &admin()).await,
        NodeState::Configured(_)
    ));
    assert_eq!(
        talos.bootstrap(ip(61), &admin()).await.unwrap(),
        BootstrapOutcome::Bootstrapped
    );
    assert_eq!(
        talos.node_state(ip(62), &admin()).await,
        NodeState::Maintenance
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configs_of_every_contract_are_accepted_and_set_the_version() {
    let talos = port();
    let mut sim = start_sim(&[]).await;
    for (i, version) in [(71u8, "v1.11.5"), (72, "v1.12.11"), (73, "v1.13.9")] {
        sim.add_node(&NodeSpec {
            addr: addr(i),
            uuid: None,
            version: None,
            platform: None,
        })
        .await
        .unwrap();
        let cluster = cluster(&format!("contract-{i}"), i, 1, 0);
        let node = cluster
            .nodes
            .iter()
            .find(|n| IpAddr::V4(n.ip) == ip(i))
            .unwrap();
        let cfg = kiln::talos::config::render(&cluster, node, bundle(), version.parse().unwrap())
            .unwrap();
        talos
            .apply_in_maintenance(ip(i), "", cfg.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{version}: {e}"));
        assert!(
            matches!(
                talos.node_state(ip(i), &admin()).await,
                NodeState::Configured(_)
            ),
            "{version}"
        );
        assert_eq!(talos.version(ip(i), &admin()).await.unwrap().tag, version);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_api_at_the_vip_serves_the_kube_client() {
    use k8s_openapi::api::core::v1::{Node, Pod};
    use kube::api::{Api, DeleteParams, EvictParams, ListParams, Patch, PatchParams};

    let cluster = cluster("kapi", 81, 1, 1);
    let sim = start_sim(&[
        NodeSpec {
            addr: addr(81),
            uuid: None,
            version: None,
            platform: None,
        },
        NodeSpec {
            addr: addr(82),
            uuid: None,
            version: None,
            platform: None,
        },
    ])
    .await;
    let talos = port();
    let id = admin();
    for i in [81, 82] {
        talos
            .apply_in_maintenance(ip(i), "", config_for(&cluster, ip(i)).as_bytes())
            .await
            .unwrap();
    }
    talos.bootstrap(ip(81), &id).await.unwrap();
    let kubeconfig = talos.kubeconfig(ip(81), &id).await.unwrap();
    let kc = kube::config::Kubeconfig::from_yaml(kubeconfig.expose()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    assert_eq!(config.cluster_url.to_string(), "https://127.0.11.81:6443/");
    let client = kube::Client::try_from(config).unwrap();

    // The API comes up right after bootstrap; give its listener a moment.
    let mut version = None;
    for _ in 0..50 {
        match client.apiserver_version().await {
            Ok(v) => {
                version = Some(v);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert_eq!(
        version
            .expect("the Kubernetes API answers at the VIP")
            .git_version,
        "v1.34.1"
    );

    let nodes: Api<Node> = Api::all(client.clone());
    let list = nodes.list(&ListParams::default()).await.unwrap();
    let names: Vec<String> = list
        .items
        .iter()
        .map(|n| n.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["kapi-cp-1", "kapi-wk-2"]);
    for n in &list.items {
        let ready = n
            .status
            .as_ref()
            .unwrap()
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "True");
    }

    // Cordon, then the eviction of a pod that is not there, then Node deletion.
    let patched = nodes
        .patch(
            "kapi-wk-2",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"unschedulable": true}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.spec.unwrap().unschedulable, Some(true));
    let all_pods: Api<Pod> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    // Only what Talos's bootstrap manifests run there (kube-proxy, flannel, maybe CoreDNS), which
    // the simulator creates once etcd runs, as Talos's ManifestApplyController does.
    let on_worker = all_pods
        .list(&ListParams::default().fields("spec.nodeName=kapi-wk-2"))
        .await
        .unwrap()
        .items;
    assert!(
        on_worker
            .iter()
            .all(|p| p.metadata.namespace.as_deref() == Some("kube-system")),
        "{on_worker:?}"
    );
    assert!(
        on_worker.iter().any(|p| p
            .metadata
            .name
            .as_deref()
            .is_some_and(|n| n.starts_with("kube-proxy"))),
        "the bootstrap manifests' kube-proxy runs on every node"
    );
    match pods.evict("nothing", &EvictParams::default()).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 404),
        other => panic!("{other:?}"),
    }
    nodes
        .delete("kapi-wk-2", &DeleteParams::default())
        .await
        .unwrap();
    let names: Vec<String> = nodes
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|n| n.metadata.name.unwrap())
        .collect();
    assert_eq!(names, ["kapi-cp-1"]);
    match nodes.get("kapi-wk-2").await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 404),
        other => panic!("{other:?}"),
    }
    drop(sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_recovers_from_a_snapshot_after_losing_every_member() {
    let cluster = cluster("rec", 91, 1, 0);
    let sim = start_sim(&[NodeSpec {
        addr: addr(91),
        uuid: None,
        version: None,
        platform: None,
    }])
    .await;
    let talos = port();
    let id = admin();
    let cfg = config_for(&cluster, ip(91));
    talos
        .apply_in_maintenance(ip(91), "", cfg.as_bytes())
        .await
        .unwrap();
    talos.bootstrap(ip(91), &id).await.unwrap();
    // Streamed in Talos's 1 KiB chunks, a real bbolt file with etcd's SHA-256 trailer.
    let mut stream = talos.etcd_snapshot(ip(91), &id).await.unwrap();
    let mut check = bbolt::SnapshotCheck::new();
    let mut snapshot = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        assert!(chunk.len() <= 1024);
        check.feed(&chunk).unwrap();
        snapshot.extend_from_slice(&chunk);
    }
    let revision = check.finish().unwrap().revision;
    // Writes after the snapshot: the revision the recovery must roll back.
    sim.write_etcd(addr(91), 500);

    // A graceful reset of the last member is refused.
    let err = talos.reset_graceful(ip(91), &id, true).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::FailedPrecondition), "{err}");

    // Talos's recovery: wipe EPHEMERAL (etcd's data) and keep the config; etcd waits in Preparing.
    let node = talos.connect(ip(91), &id).await.unwrap();
    node.reset_ephemeral().await.unwrap();
    drop(node);
    let node = connect_when_back(&talos, ip(91), &id).await;
    assert_eq!(
        etcd_state(&*node).await,
        ("Preparing".to_owned(), String::new())
    );
    assert!(node.etcd_snapshot().await.is_err(), "no etcd, no snapshot");

    // The upload is not read until Bootstrap; a bad one fails the etcd service, not the call.
    node.etcd_recover(upload_from(&b"not a snapshot"[..]))
        .await
        .unwrap();
    assert_eq!(
        node.bootstrap_recover().await.unwrap(),
        BootstrapOutcome::Bootstrapped
    );
    let (state, message) = etcd_state(&*node).await;
    assert_eq!(state, "Failed");
    assert!(message.contains("not an etcd database"), "{message}");
    // Without its trailer the hash check refuses it unless skipped.
    node.etcd_recover(upload_from(snapshot[..snapshot.len() - 32].to_vec()))
        .await
        .unwrap();
    node.bootstrap_recover().await.unwrap();
    assert!(etcd_state(&*node).await.1.contains("missing hash"));

    let before = sim.etcd_revision(addr(91)).unwrap();
    assert!(before >= revision + 500, "{before} after {revision}");
    // The whole snapshot, streamed in pieces: etcd back, one member, at the snapshot's revision
    // (and what the API writes right after, as on a real cluster).
    let pieces: Vec<Result<bytes::Bytes, std::io::Error>> = snapshot
        .chunks(10_000)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    node.etcd_recover(Box::pin(futures::stream::iter(pieces)))
        .await
        .unwrap();
    let outcome = node.bootstrap_recover().await.unwrap();
    assert_eq!(outcome, BootstrapOutcome::Bootstrapped);
    assert_eq!(etcd_state(&*node).await.0, "Running");
    let again = collect(node.etcd_snapshot().await.unwrap()).await.unwrap();
    let after = bbolt::check(&again).unwrap().revision;
    assert!(
        (revision..revision + 100).contains(&after),
        "back at {after}: the snapshot was at {revision}, etcd at {before} before the recovery"
    );
    let members = talos.etcd_members(ip(91), &id).await.unwrap();
    assert_eq!(
        members
            .iter()
            .map(|m| m.hostname.as_str())
            .collect::<Vec<_>>(),
        ["rec-cp-1"]
    );
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
}

/// A node back from a reboot, over mTLS.
async fn connect_when_back(
    talos: &GrpcTalos,
    ip: IpAddr,
    id: &ClientIdentity,
) -> Box<dyn TalosNode> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(node) = talos.connect(ip, id).await
            && node.services().await.is_ok()
        {
            return node;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{ip} did not come back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The etcd service's state and its last message.
async fn etcd_state(node: &dyn TalosNode) -> (String, String) {
    let services = node.services().await.unwrap();
    let etcd = services
        .iter()
        .find(|s| s.id == "etcd")
        .expect("etcd listed");
    let message = etcd
        .health
        .as_ref()
        .map(|h| h.last_message.clone())
        .unwrap_or_default();
    (etcd.state.clone(), message)
}
