//! The simulated machines and what they share: per-node phase and Talos version, per-cluster etcd
//! membership, and the loud record of anything a real cluster would not survive.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::ServerConfig;
use tonic::Status;

use super::config::{MachineType, NodeConfig};

/// Roles as Talos names them.
pub const ADMIN: &str = "os:admin";
pub const OPERATOR: &str = "os:operator";
pub const READER: &str = "os:reader";
pub const ETCD_BACKUP: &str = "os:etcd:backup";

/// Who is calling: `None` for a connection without a client certificate (maintenance style).
#[derive(Clone, Debug)]
pub struct Peer {
    pub roles: Option<Vec<String>>,
}

pub enum Phase {
    /// Booted without a config; serves insecure TLS with a certificate made at boot.
    Maintenance {
        tls: Arc<ServerConfig>,
    },
    Configured(Box<Configured>),
    /// Powered off: nothing answers. `installed` is the configuration Talos installed to disk, which
    /// the machine boots into again at power-on; `None` after a Reset wiped it (or before any config).
    Off {
        installed: Option<Box<Configured>>,
    },
}

pub struct Configured {
    /// The config as received (what `--dump-dir` writes).
    pub raw: Vec<u8>,
    pub cfg: NodeConfig,
    /// Built lazily: a worker needs its cluster's OS CA key, which only control planes carry.
    pub tls: Option<Arc<ServerConfig>>,
    /// This node's etcd data directory is not empty.
    pub etcd_data: bool,
    /// Snapshot uploaded with EtcdRecover, for `Bootstrap { recover_etcd }`.
    pub recover_snapshot: Option<Vec<u8>>,
    /// The etcd service failed to start (a recovery from a bad snapshot): its ServiceList message.
    pub etcd_failed: Option<String>,
    /// When the node accepted this config (a new one re-registers its Kubernetes Node).
    pub applied_at: std::time::Instant,
}

pub struct Node {
    pub addr: SocketAddr,
    /// SMBIOS system uuid (empty unless told one, like a VM without `smbios1`).
    pub uuid: String,
    /// The Talos version the machine runs now.
    pub version: String,
    /// `version=` was given: what the machine boots before an install, whatever image a config names.
    pub version_pinned: bool,
    /// `PlatformMetadata.platform`: what the boot image was built for.
    pub platform: String,
    /// Rebooting (after an upgrade): nothing answers until then.
    pub down_until: Option<std::time::Instant>,
    pub phase: Phase,
    /// Installer images in the system containerd (`ImageService.Pull`).
    pub pulled: Vec<String>,
    /// The version a Lifecycle upgrade installed, run after the next reboot.
    pub staged: Option<String>,
    /// `fail-upgrade`: a reboot into another version never comes back.
    pub fail_upgrade: bool,
    /// It did not come back (fail-upgrade): nothing answers, its Kubernetes Node stays NotReady.
    pub broken: bool,
    /// Booted from a disk with Talos installed (a disk-image template): a first config runs no
    /// installer, so the version stays the booted one.
    pub installed: bool,
}

impl Node {
    pub fn minor(&self) -> u32 {
        minor_of(&self.version).unwrap_or(13)
    }

    pub fn is_down(&self) -> bool {
        self.broken
            || self
                .down_until
                .is_some_and(|t| std::time::Instant::now() < t)
    }

    pub fn configured(&self) -> Option<&Configured> {
        match &self.phase {
            Phase::Configured(c) => Some(c),
            _ => None,
        }
    }
}

pub fn minor_of(version: &str) -> Option<u32> {
    version
        .trim_start_matches('v')
        .split('.')
        .nth(1)?
        .parse()
        .ok()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub hostname: String,
    pub addr: SocketAddr,
    /// A learner until then (it is catching up with the leader); `None`: a voting member.
    pub learner_until: Option<std::time::Instant>,
}

#[derive(Default)]
pub struct ClusterState {
    /// Learnt from the first control-plane config; signs workers' API certs as trustd would.
    pub os_ca_key: Option<String>,
    pub members: BTreeMap<u64, Member>,
    pub next_member: u64,
    /// etcd's revision while no Kubernetes API writes to it yet (after that the API's
    /// resourceVersion counter is the revision: `Fleet::etcd_revision`).
    pub revision: i64,
}

#[derive(Default)]
pub struct Fleet {
    pub nodes: HashMap<SocketAddr, Node>,
    pub clusters: HashMap<String, ClusterState>,
    /// Things that would break a real cluster (a second etcd cluster): reported loudly, kept for tests.
    pub violations: Vec<String>,
    /// Every etcd recovery that succeeded: the node and the revision etcd came back at.
    pub recoveries: Vec<(SocketAddr, i64)>,
    pub dump_dir: Option<PathBuf>,
    /// Control planes that do not join etcd by themselves yet (a test models a slow join with it).
    pub join_held: std::collections::HashSet<SocketAddr>,
    /// The Kubernetes API per cluster key.
    pub kube: HashMap<String, super::kube::KubeLink>,
    /// Clusters bootstrapped since the last call, whose Kubernetes API is to be started.
    pub kube_to_start: Vec<String>,
    /// How long an upgrade's reboot keeps a node silent.
    pub reboot_delay: std::time::Duration,
    /// Machines that reboot once the current call has answered: (address, how long they are down).
    pub reboots: Vec<(SocketAddr, std::time::Duration)>,
    /// How long a joining control plane stays an etcd learner before it is promoted (`join`).
    pub learner_delay: std::time::Duration,
    /// Control planes whose graceful Reset is accepted but whose etcd leave then fails (`join`).
    pub leave_fails: std::collections::HashSet<SocketAddr>,
    /// Every ApplyConfiguration answered, in order (`sim::talos::live`).
    pub applies: Vec<super::live::ApplyRecord>,
}

impl Fleet {
    pub fn node(&mut self, addr: SocketAddr) -> Result<&mut Node, Status> {
        self.nodes
            .get_mut(&addr)
            .ok_or_else(|| Status::unavailable(format!("no simulated node at {addr}")))
    }

    /// Checks the caller against Talos's rules for this method (TALOS-FACTS §1.5, §1.6). In maintenance a
    /// caller is `os:reader` (v1.13+); the ≤1.12 maintenance server implements only a few methods.
    pub fn authorize(
        &mut self,
        addr: SocketAddr,
        peer: &Peer,
        method: &str,
        allowed: &[&str],
    ) -> Result<(), Status> {
        let node = self.node(addr)?;
        if node.is_down() {
            return Err(Status::unavailable("node is rebooting"));
        }
        match (&node.phase, &peer.roles) {
            (Phase::Off { .. }, _) => Err(Status::unavailable("node is powered off")),
            (Phase::Maintenance { .. }, _) => {
                if node.minor() <= 12 {
                    const SERVED: &[&str] = &["ApplyConfiguration", "Get", "List"];
                    if SERVED.contains(&method) {
                        Ok(())
                    } else {
                        Err(Status::unimplemented(
                            "API is not implemented in maintenance mode",
                        ))
                    }
                } else if allowed.contains(&READER) || method == "ApplyConfiguration" {
                    Ok(())
                } else {
                    Err(Status::permission_denied("not authorized"))
                }
            }
            // A connection opened while the node was in maintenance does not survive the reboot into
            // its configuration; real clients see the connection drop.
            (Phase::Configured(_), None) => Err(Status::unavailable(
                "connection closed: the node rebooted into its configuration",
            )),
            (Phase::Configured(_), Some(roles)) => {
                if roles.iter().any(|r| allowed.contains(&r.as_str())) {
                    Ok(())
                } else {
                    Err(Status::permission_denied("not authorized"))
                }
            }
        }
    }

    /// The TLS a new connection to `addr` gets, or `None` when nothing should answer.
    pub fn tls_for(&mut self, addr: SocketAddr) -> Option<Arc<ServerConfig>> {
        let node = self.nodes.get(&addr)?;
        if node.is_down() {
            return None;
        }
        let (cluster_key, needs_tls) = match &node.phase {
            Phase::Off { .. } => return None,
            Phase::Maintenance { tls } => return Some(tls.clone()),
            Phase::Configured(c) => (c.cfg.cluster_key.clone(), c.tls.is_none()),
        };
        if needs_tls {
            let key = self
                .clusters
                .get(&cluster_key)
                .and_then(|c| c.os_ca_key.clone());
            let node = self.nodes.get_mut(&addr)?;
            if let (Phase::Configured(c), Some(key)) = (&mut node.phase, key) {
                match super::pki::configured_server_config(&c.cfg, &key, addr.ip()) {
                    Ok(tls) => c.tls = Some(tls),
                    Err(e) => {
                        tracing::error!(node = %addr, error = %e, "simulated node cannot build its API certificate")
                    }
                }
            }
        }
        match &self.nodes.get(&addr)?.phase {
            Phase::Configured(c) => c.tls.clone(),
            _ => None,
        }
    }

    pub fn cluster(&mut self, key: &str) -> &mut ClusterState {
        self.clusters.entry(key.to_owned()).or_default()
    }

    /// Is the etcd cluster of `key` up (someone bootstrapped it and members remain)?
    /// Members whose machines were wiped or destroyed still show in the list, but an etcd cluster
    /// lives only while some member still has its data.
    pub fn cluster_bootstrapped(&self, key: &str) -> bool {
        self.clusters.get(key).is_some_and(|c| {
            c.members.values().any(|m| {
                self.nodes
                    .get(&m.addr)
                    .and_then(Node::configured)
                    .is_some_and(|n| n.etcd_data && n.cfg.cluster_key == key)
            })
        })
    }

    /// The revision of the cluster's etcd. Kubernetes's resourceVersion is etcd's revision, so once
    /// the simulated API runs, its counter is it: every object the API writes (bootstrap manifests,
    /// Nodes, Leases, kubectl's writes) moves it, as each write moves a real etcd's. Before that, a
    /// freshly bootstrapped etcd is at revision 1 (etcd `server/mvcc/kvstore.go`: `currentRev` starts
    /// at 1).
    pub fn etcd_revision(&self, key: &str) -> i64 {
        match self.kube.get(key) {
            Some(link) => link.state.lock().expect("kube lock").revision as i64,
            None => self.clusters.get(key).map_or(1, |c| c.revision.max(1)),
        }
    }

    /// After a recovery etcd carries on from the snapshot's revision.
    pub fn set_etcd_revision(&mut self, key: &str, revision: i64) {
        self.cluster(key).revision = revision;
        if let Some(link) = self.kube.get(key) {
            link.state.lock().expect("kube lock").revision = revision.max(1) as u64;
        }
    }

    pub fn add_member(&mut self, key: &str, addr: SocketAddr) {
        let Some(node) = self.nodes.get_mut(&addr) else {
            return;
        };
        let Phase::Configured(c) = &mut node.phase else {
            return;
        };
        if c.cfg.machine_type != MachineType::ControlPlane {
            return;
        }
        c.etcd_data = true;
        let hostname = c
            .cfg
            .hostname
            .clone()
            .unwrap_or_else(|| addr.ip().to_string());
        let cluster = self.clusters.entry(key.to_owned()).or_default();
        if cluster.members.values().any(|m| m.addr == addr) {
            return;
        }
        cluster.next_member += 1;
        // etcd member ids are random 64-bit numbers; derive one that is stable per address and counter.
        let id = (u64::from(u32::from_be_bytes(match addr.ip() {
            std::net::IpAddr::V4(v4) => v4.octets(),
            std::net::IpAddr::V6(v6) => {
                let o = v6.octets();
                [o[12], o[13], o[14], o[15]]
            }
        })) << 24)
            ^ (cluster.next_member << 8)
            ^ 0x5a5a_0000_0000_0001;
        cluster.members.insert(
            id,
            Member {
                id,
                hostname,
                addr,
                learner_until: None,
            },
        );
    }

    /// Control planes of a bootstrapped cluster join etcd once they run their config: as learners,
    /// one at a time (`join`).
    pub fn join_waiting_control_planes(&mut self, key: &str) {
        let mut waiting: Vec<SocketAddr> = self
            .nodes
            .values()
            .filter_map(|n| match &n.phase {
                Phase::Configured(c)
                    if c.cfg.cluster_key == key
                        && c.cfg.machine_type == MachineType::ControlPlane =>
                {
                    Some(n.addr)
                }
                _ => None,
            })
            .collect();
        waiting.sort();
        for addr in waiting {
            if self.join_held.contains(&addr) {
                continue;
            }
            let joined = self
                .clusters
                .get(key)
                .is_some_and(|c| c.members.values().any(|m| m.addr == addr));
            let has_data = self
                .nodes
                .get(&addr)
                .and_then(Node::configured)
                .is_some_and(|c| c.etcd_data);
            if !joined && !has_data && !self.add_learner(key, addr) {
                // etcd holds one learner at a time: the others retry after its promotion.
                break;
            }
        }
    }

    pub fn violation(&mut self, message: String) {
        tracing::error!(violation = %message, "SIMULATED CLUSTER BROKEN");
        eprintln!("kiln sim talos: VIOLATION: {message}");
        self.violations.push(message);
    }
}
