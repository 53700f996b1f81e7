//! The Talos simulator: Talos nodes on loopback addresses over real gRPC and TLS, as `kiln sim talos`
//! and the tests run them. It copies what kiln meets on real nodes (DESIGN §4, TALOS-FACTS §1): ALPN h2,
//! maintenance mode with a self-signed certificate and reader rights, then mTLS from the config's OS CA
//! with `os:admin` and ExtKeyUsage exactly ClientAuth; configs validated before acceptance; COSI
//! MachineStatus and SystemInformation; etcd bootstrap and membership per node, shared by the nodes of a
//! cluster; a loud error for a second etcd cluster. Delays and failures can be injected per method.

pub mod config;
pub mod fleet;
pub mod handlers;
mod join;
pub mod kube;
pub mod live;
pub mod manifests;
pub mod pki;
pub mod runtime;
pub mod server;
pub mod upgrade;
pub mod validate;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::Status;

use fleet::{Fleet, Node, Phase};
use validate::{BuiltinValidator, ConfigValidator, SchemaValidator};

/// Default Talos version of a node booted without `version=`, before a config names an image.
pub const DEFAULT_VERSION: &str = "v1.13.9";

/// The platform a Proxmox template made from Talos's nocloud image reports.
pub const DEFAULT_PLATFORM: &str = "nocloud";

/// How long an upgraded node answers nothing while it reboots, unless told otherwise.
pub const DEFAULT_REBOOT_DELAY: Duration = Duration::from_secs(1);

/// One simulated machine: where it listens, its SMBIOS uuid, and optionally the Talos version it boots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSpec {
    pub addr: SocketAddr,
    pub uuid: Option<String>,
    pub version: Option<String>,
    /// The Talos platform the boot image is for (`nocloud` unless told, e.g. `metal` for an ISO).
    pub platform: Option<String>,
}

impl std::str::FromStr for NodeSpec {
    type Err = String;

    /// `ADDR[,uuid=UUID][,version=vX.Y.Z][,platform=NAME]`, as `kiln sim talos --listen` takes it.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split(',');
        let addr = parts.next().unwrap_or_default();
        let addr: SocketAddr = addr
            .parse()
            .map_err(|e| format!("{addr:?}: not an IP:port address: {e}"))?;
        let mut spec = NodeSpec {
            addr,
            uuid: None,
            version: None,
            platform: None,
        };
        for part in parts {
            match part.split_once('=') {
                Some(("uuid", v)) if !v.is_empty() => spec.uuid = Some(v.to_owned()),
                Some(("version", v)) if fleet::minor_of(v).is_some() && v.starts_with('v') => {
                    spec.version = Some(v.to_owned())
                }
                Some(("platform", v))
                    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') =>
                {
                    spec.platform = Some(v.to_owned())
                }
                _ => {
                    return Err(format!(
                        "{part:?}: expected uuid=UUID, version=vX.Y.Z or platform=NAME"
                    ));
                }
            }
        }
        Ok(spec)
    }
}

/// One `kiln sim talos --listen` value: a machine and two flags of its own.
/// `fail-upgrade`: after a reboot into another version it never answers again. `installed`: its boot
/// disk already holds Talos, as a nocloud disk image made into a template does, so its first config
/// runs no installer and it keeps the version it booted (Talos v1.13.9
/// `internal/app/machined/pkg/runtime/v1alpha1/v1alpha1_sequencer.go` `Install`: the install phases
/// run only `if !r.State().Machine().Installed()`). Without it, a first config installs the image it
/// names, as from an ISO.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listen {
    pub node: NodeSpec,
    pub fail_upgrade: bool,
    pub installed: bool,
}

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (mut fail_upgrade, mut installed) = (false, false);
        let rest: Vec<&str> = s
            .split(',')
            .filter(|p| match *p {
                "fail-upgrade" => {
                    fail_upgrade = true;
                    false
                }
                "installed" => {
                    installed = true;
                    false
                }
                _ => true,
            })
            .collect();
        Ok(Listen {
            node: rest.join(",").parse()?,
            fail_upgrade,
            installed,
        })
    }
}

/// A failure a test wants a node to answer with, once per entry.
#[derive(Clone, Debug)]
pub struct InjectedFailure {
    pub code: tonic::Code,
    pub message: String,
}

#[derive(Default)]
struct Faults {
    /// Method name (e.g. `Bootstrap`) → delay before every answer.
    delays: HashMap<String, Duration>,
    /// method → a pause before each streamed message, and the message after which the stream stalls.
    paces: HashMap<String, (Duration, Option<usize>)>,
    /// (node, method) → failures answered before the method runs, oldest first.
    failures: HashMap<(SocketAddr, String), Vec<InjectedFailure>>,
    /// (node, method) answered with a failure every time.
    refused: std::collections::HashSet<(SocketAddr, String)>,
}

pub struct Shared {
    pub fleet: Mutex<Fleet>,
    pub validator: Arc<dyn ConfigValidator>,
    faults: Mutex<Faults>,
    /// Nodes with an ApplyConfiguration in progress.
    applying: Mutex<std::collections::HashSet<SocketAddr>>,
    /// The listening machines. Here, not in [`SimTalos`], because a node reboots itself (an upgrade).
    serving: Mutex<HashMap<SocketAddr, Serving>>,
    /// The simulator was dropped: a node rebooting meanwhile stays down.
    closed: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn listening(&self, addr: SocketAddr) -> bool {
        self.serving
            .lock()
            .expect("serving lock")
            .contains_key(&addr)
    }

    fn stop_listening(&self, addr: SocketAddr) {
        let serving = self.serving.lock().expect("serving lock").remove(&addr);
        if let Some(serving) = serving {
            serving.close();
        }
    }

    fn stream_pace(&self, method: &str) -> Option<(Duration, Option<usize>)> {
        self.faults
            .lock()
            .expect("faults lock")
            .paces
            .get(method)
            .copied()
    }

    async fn before_call(&self, addr: SocketAddr, method: &str) -> Result<(), Status> {
        let (delay, failure) = {
            let mut faults = self.faults.lock().expect("faults lock");
            let delay = faults.delays.get(method).copied();
            let failure = faults
                .failures
                .get_mut(&(addr, method.to_owned()))
                .and_then(|q| {
                    if q.is_empty() {
                        None
                    } else {
                        Some(q.remove(0))
                    }
                })
                .or_else(|| {
                    faults
                        .refused
                        .contains(&(addr, method.to_owned()))
                        .then(|| InjectedFailure {
                            code: tonic::Code::FailedPrecondition,
                            message: format!(
                                "{method} refused on {addr} (kiln sim talos --refuse)"
                            ),
                        })
                });
            (delay, failure)
        };
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        match failure {
            Some(f) => Err(Status::new(f.code, f.message)),
            None => Ok(()),
        }
    }
}

#[derive(Default)]
pub struct SimOptions {
    /// Where every accepted config is written, as `<node-ip>.yaml`.
    pub dump_dir: Option<PathBuf>,
    /// Overrides the validator chosen from the environment.
    pub validator: Option<Arc<dyn ConfigValidator>>,
    /// How long an upgrade's reboot keeps a node silent (`None`: [`DEFAULT_REBOOT_DELAY`]).
    pub reboot_delay: Option<Duration>,
}

/// The official schemas when `KILN_REFERENCE_SCHEMAS` names them, else the built-in check.
pub fn default_validator() -> Arc<dyn ConfigValidator> {
    match SchemaValidator::from_env() {
        Some(v) => Arc::new(v),
        None => Arc::new(BuiltinValidator),
    }
}

/// One powered machine's server: the task serving it and a second handle on its listening socket.
struct Serving {
    task: tokio::task::JoinHandle<()>,
    /// The listening socket (a duplicate descriptor, as a stream only to reach `shutdown(2)`), so a
    /// power-off stops the listening at once: an aborted task closes its listener only when the runtime
    /// next polls it, and meanwhile the kernel would still complete connections into the backlog.
    socket: std::net::TcpStream,
}

impl Serving {
    /// Afterwards a connection is refused, as a machine that is off never answers one.
    fn close(self) {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
        self.task.abort();
    }
}

/// Binds `addr` and serves whatever node the fleet holds there. Returns the bound address.
fn listen(shared: &Arc<Shared>, addr: SocketAddr) -> Result<SocketAddr, SimError> {
    let bind_error = |source| SimError::Bind { addr, source };
    // As `TcpListener::bind` does: SO_REUSEADDR, so a machine that comes back at the address of one
    // just switched off or destroyed is not refused for the old socket.
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(bind_error)?;
    socket.set_reuseaddr(true).map_err(bind_error)?;
    socket.bind(addr).map_err(bind_error)?;
    let listener = socket.listen(1024).map_err(bind_error)?;
    let addr = listener.local_addr().map_err(bind_error)?;
    let dup = {
        use std::os::fd::AsFd;
        listener.as_fd().try_clone_to_owned().map_err(bind_error)?
    };
    let service = server::NodeService {
        shared: shared.clone(),
        addr,
    };
    let task = tokio::spawn(async move {
        if let Err(e) = server::serve(listener, service).await {
            tracing::error!(node = %addr, error = %e, "simulated Talos node stopped");
        }
    });
    shared.serving.lock().expect("serving lock").insert(
        addr,
        Serving {
            task,
            socket: std::net::TcpStream::from(dup),
        },
    );
    Ok(addr)
}

/// An upgraded machine reboots into its new image: its listener closes (connections are refused, as
/// by a machine that is down) and comes back after `delay`. The reply to the Upgrade call has its own
/// connection, which closing the listener does not end.
pub(crate) fn reboot(shared: &Arc<Shared>, addr: SocketAddr, delay: Duration) {
    shared.stop_listening(addr);
    let shared = shared.clone();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        if shared.closed.load(std::sync::atomic::Ordering::SeqCst) || shared.listening(addr) {
            return;
        }
        let broken = {
            let mut fleet = shared.fleet.lock().expect("fleet lock");
            let broken = fleet.nodes.get(&addr).is_some_and(|n| n.broken);
            // Its Kubernetes Node follows the machine back (Ready again), or stays NotReady.
            kube::sync(&mut fleet);
            broken
        };
        if broken {
            return;
        }
        match listen(&shared, addr) {
            // Tests read "one node down at a time" from these lines.
            Ok(_) => tracing::info!(node = %addr, "back from reboot"),
            Err(e) => {
                tracing::error!(node = %addr, error = %e, "simulated Talos node did not come back from its reboot")
            }
        }
    });
}

/// A running simulator. Dropping it stops every node's server.
pub struct SimTalos {
    shared: Arc<Shared>,
    addrs: Vec<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{addr} is listed twice")]
    Duplicate { addr: SocketAddr },
    #[error("maintenance certificate for {addr}: {message}")]
    Tls { addr: SocketAddr, message: String },
}

impl SimTalos {
    /// A simulator with no machine yet; [`Self::boot_node`] adds them as they boot.
    pub fn new(options: SimOptions) -> Self {
        let fleet = Fleet {
            dump_dir: options.dump_dir,
            reboot_delay: options.reboot_delay.unwrap_or(DEFAULT_REBOOT_DELAY),
            ..Fleet::default()
        };
        let shared = Arc::new(Shared {
            fleet: Mutex::new(fleet),
            validator: options.validator.unwrap_or_else(default_validator),
            faults: Mutex::new(Faults::default()),
            applying: Mutex::default(),
            serving: Mutex::default(),
            closed: Default::default(),
        });
        Self {
            shared,
            addrs: Vec::new(),
        }
    }

    /// Binds every node's address and starts serving, all nodes in maintenance mode.
    pub async fn start(nodes: &[NodeSpec], options: SimOptions) -> Result<Self, SimError> {
        let mut sim = Self::new(options);
        for spec in nodes {
            sim.add_node(spec).await?;
        }
        Ok(sim)
    }

    /// A machine boots (a VM was created and started): it answers at its address in maintenance mode.
    /// Returns the bound address (port 0 picks one).
    pub async fn add_node(&mut self, spec: &NodeSpec) -> Result<SocketAddr, SimError> {
        self.boot_node(spec)
    }

    /// [`Self::add_node`] without awaiting, for callers that are not async themselves (a hypervisor's
    /// power hook, `sim::lab`): the node answers as soon as this returns. Must run inside a Tokio
    /// runtime, which serves the node.
    pub fn boot_node(&mut self, spec: &NodeSpec) -> Result<SocketAddr, SimError> {
        if self.shared.listening(spec.addr) {
            return Err(SimError::Duplicate { addr: spec.addr });
        }
        let addr = listen(&self.shared, spec.addr)?;
        let tls = match pki::maintenance_server_config(addr.ip()) {
            Ok(tls) => tls,
            Err(message) => {
                self.shared.stop_listening(addr);
                return Err(SimError::Tls { addr, message });
            }
        };
        self.shared.fleet.lock().expect("fleet lock").nodes.insert(
            addr,
            Node {
                addr,
                uuid: spec.uuid.clone().unwrap_or_default(),
                version: spec
                    .version
                    .clone()
                    .unwrap_or_else(|| DEFAULT_VERSION.to_owned()),
                version_pinned: spec.version.is_some(),
                platform: spec
                    .platform
                    .clone()
                    .unwrap_or_else(|| DEFAULT_PLATFORM.to_owned()),
                down_until: None,
                phase: Phase::Maintenance { tls },
                pulled: Vec::new(),
                staged: None,
                fail_upgrade: false,
                broken: false,
                installed: false,
            },
        );
        self.addrs.push(addr);
        Ok(addr)
    }

    /// A machine is gone (its VM destroyed): it stops answering and its state is forgotten. Its etcd
    /// membership stays, as a destroyed member's does on a real cluster until someone removes it.
    pub fn remove_node(&mut self, addr: SocketAddr) {
        self.shared.stop_listening(addr);
        self.addrs.retain(|a| *a != addr);
        self.shared
            .fleet
            .lock()
            .expect("fleet lock")
            .nodes
            .remove(&addr);
    }

    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// How long a control plane joining a running etcd stays a learner before Talos promotes it
    /// (`join`; zero unless told: promoted at the next call).
    pub fn set_learner_delay(&self, delay: Duration) {
        self.shared.fleet.lock().expect("fleet lock").learner_delay = delay;
    }

    /// A graceful Reset of the control plane at `addr` is accepted, but its etcd leave then fails: the
    /// member stays listed and the node keeps running (`join::failed_leave`).
    pub fn fail_leave(&self, addr: SocketAddr) {
        self.shared
            .fleet
            .lock()
            .expect("fleet lock")
            .leave_fails
            .insert(addr);
    }

    /// Every call of `method` on `addr` fails with `FailedPrecondition` from now on (a test's node
    /// that refuses, e.g., a graceful `Reset`).
    pub fn refuse(&self, addr: SocketAddr, method: &str) {
        self.shared
            .faults
            .lock()
            .expect("faults lock")
            .refused
            .insert((addr, method.to_owned()));
    }

    /// Every answer of `method` (e.g. `"Bootstrap"`) waits this long first.
    pub fn set_delay(&self, method: &str, delay: Duration) {
        self.shared
            .faults
            .lock()
            .expect("faults lock")
            .delays
            .insert(method.to_owned(), delay);
    }

    /// A server stream of `method` sends each message after `pause`, and with `stall_after` sends
    /// that many and then nothing more while keeping the stream open (a node whose disk or etcd
    /// hangs mid-snapshot).
    pub fn pace_stream(&self, method: &str, pause: Duration, stall_after: Option<usize>) {
        self.shared
            .faults
            .lock()
            .expect("faults lock")
            .paces
            .insert(method.to_owned(), (pause, stall_after));
    }

    /// The next call of `method` on `addr` fails with `code` and `message`, before the method runs.
    pub fn fail_next(&self, addr: SocketAddr, method: &str, code: tonic::Code, message: &str) {
        self.shared
            .faults
            .lock()
            .expect("faults lock")
            .failures
            .entry((addr, method.to_owned()))
            .or_default()
            .push(InjectedFailure {
                code,
                message: message.to_owned(),
            });
    }

    /// What would have broken a real cluster (a second etcd bootstrap), in order.
    pub fn violations(&self) -> Vec<String> {
        self.shared
            .fleet
            .lock()
            .expect("fleet lock")
            .violations
            .clone()
    }

    /// The config a node runs, exactly as it was sent.
    pub fn applied_config(&self, addr: SocketAddr) -> Option<Vec<u8>> {
        let fleet = self.shared.fleet.lock().expect("fleet lock");
        fleet.nodes.get(&addr)?.configured().map(|c| c.raw.clone())
    }

    /// From now on a reboot of this node into another Talos version never comes back.
    pub fn fail_upgrades(&self, addr: SocketAddr) {
        if let Some(node) = self
            .shared
            .fleet
            .lock()
            .expect("fleet lock")
            .nodes
            .get_mut(&addr)
        {
            node.fail_upgrade = true;
        }
    }

    /// The machine's disk already holds Talos (`Listen::installed`): its first config keeps the
    /// version it booted.
    pub fn boot_installed(&self, addr: SocketAddr) {
        if let Some(node) = self
            .shared
            .fleet
            .lock()
            .expect("fleet lock")
            .nodes
            .get_mut(&addr)
        {
            node.installed = true;
        }
    }

    /// The Talos version a node runs.
    pub fn version(&self, addr: SocketAddr) -> Option<String> {
        self.shared
            .fleet
            .lock()
            .expect("fleet lock")
            .nodes
            .get(&addr)
            .map(|n| n.version.clone())
    }

    /// The etcd revision of the cluster the node at `addr` belongs to (`Fleet::etcd_revision`).
    pub fn etcd_revision(&self, addr: SocketAddr) -> Option<i64> {
        let fleet = self.shared.fleet.lock().expect("fleet lock");
        let key = fleet
            .nodes
            .get(&addr)?
            .configured()?
            .cfg
            .cluster_key
            .clone();
        Some(fleet.etcd_revision(&key))
    }

    /// Every successful etcd recovery so far: the node and the revision etcd came back at.
    pub fn etcd_recoveries(&self) -> Vec<(SocketAddr, i64)> {
        self.shared
            .fleet
            .lock()
            .expect("fleet lock")
            .recoveries
            .clone()
    }

    /// `n` writes to the etcd of the node's cluster by some client (a Kubernetes controller, an
    /// operator's `etcdctl put`): each moves the revision by one, as on etcd.
    pub fn write_etcd(&self, addr: SocketAddr, n: i64) {
        let mut fleet = self.shared.fleet.lock().expect("fleet lock");
        let Some(key) = fleet
            .nodes
            .get(&addr)
            .and_then(Node::configured)
            .map(|c| c.cfg.cluster_key.clone())
        else {
            return;
        };
        let revision = fleet.etcd_revision(&key) + n;
        fleet.set_etcd_revision(&key, revision);
    }

    /// Holds a control plane back from joining a running etcd cluster (a slow join on real Talos, while
    /// a Bootstrap sent to it would start a second etcd cluster); releasing lets it join.
    pub fn hold_etcd_join(&self, addr: SocketAddr, held: bool) {
        let mut fleet = self.shared.fleet.lock().expect("fleet lock");
        if held {
            fleet.join_held.insert(addr);
            return;
        }
        fleet.join_held.remove(&addr);
        let key = fleet
            .nodes
            .get(&addr)
            .and_then(Node::configured)
            .map(|c| c.cfg.cluster_key.clone());
        if let Some(key) = key
            && fleet.cluster_bootstrapped(&key)
        {
            fleet.join_waiting_control_planes(&key);
        }
    }

    /// Powers a node off or back on, as a hypervisor would. Off, nothing listens at its address (a
    /// connection is refused). A machine that runs a config has Talos installed on its disk, so it boots
    /// back into that config (same etcd data, same Kubernetes Node); one that never got a config, or was
    /// wiped by a Reset, boots into maintenance.
    pub fn set_powered(&mut self, addr: SocketAddr, on: bool) -> Result<(), String> {
        {
            let mut fleet = self.shared.fleet.lock().expect("fleet lock");
            let node = fleet
                .nodes
                .get_mut(&addr)
                .ok_or(format!("no simulated node at {addr}"))?;
            let phase = std::mem::replace(&mut node.phase, Phase::Off { installed: None });
            node.phase = match (on, phase) {
                (false, Phase::Configured(c)) => Phase::Off { installed: Some(c) },
                (false, Phase::Maintenance { .. }) => Phase::Off { installed: None },
                (true, Phase::Off { installed: Some(c) }) => Phase::Configured(c),
                (true, Phase::Off { installed: None }) => Phase::Maintenance {
                    tls: pki::maintenance_server_config(addr.ip())?,
                },
                (_, unchanged) => unchanged,
            };
            // The cluster's Kubernetes Nodes follow their machines at once (NotReady while off).
            kube::sync(&mut fleet);
        }
        match (on, self.shared.listening(addr)) {
            (false, true) => self.shared.stop_listening(addr),
            (true, false) => {
                listen(&self.shared, addr).map_err(|e| e.to_string())?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Serves until the process is stopped (what `kiln sim talos` does). Machines reboot and come
    /// back meanwhile, so no single server's end is the simulator's.
    pub async fn wait(self) {
        std::future::pending::<()>().await;
    }
}

impl Drop for SimTalos {
    fn drop(&mut self) {
        self.shared
            .closed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let all: Vec<Serving> = match self.shared.serving.lock() {
            Ok(mut serving) => serving.drain().map(|(_, s)| s).collect(),
            Err(_) => Vec::new(),
        };
        for serving in all {
            serving.close();
        }
        if let Ok(mut fleet) = self.shared.fleet.lock() {
            for link in fleet.kube.values_mut() {
                link.server = None;
            }
        }
    }
}
