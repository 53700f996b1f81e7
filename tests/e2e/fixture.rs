//! Cluster intent files for the end-to-end world, and what each must become: names, VMIDs, IPs and MACs
//! worked out here from DESIGN.md §2 independently of kiln's own `spec::expand`, so a test compares the
//! reconciler's result with the contract rather than with kiln's reading of it.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::sync::atomic::{AtomicU8, Ordering};

use sha2::{Digest, Sha256};

/// First `127.0.<block>.0/24` handed out. Away from the 127.0.10.x/11.x the other suites use, so these
/// tests can run beside them (and beside another worktree's run of this suite: busy blocks are skipped).
const FIRST_BLOCK: u8 = 120;

/// A loopback /24 of its own for one cluster: its nodes are `.1..`, its VIP `.100`, its gateway `.254`.
/// Blocks whose Talos or Kubernetes ports are taken (another test process) are skipped.
pub fn next_block() -> u8 {
    static NEXT: AtomicU8 = AtomicU8::new(FIRST_BLOCK);
    loop {
        let block = NEXT.fetch_add(1, Ordering::SeqCst);
        assert!(
            block < 250,
            "no free loopback block left for the e2e clusters"
        );
        let free = |last: u8, port: u16| {
            TcpListener::bind(SocketAddrV4::new(Ipv4Addr::new(127, 0, block, last), port)).is_ok()
        };
        if free(1, 50000) && free(100, 6443) && free(100, 50000) {
            return block;
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    ControlPlane,
    Worker,
}

impl Role {
    pub fn tag(self) -> &'static str {
        match self {
            Role::ControlPlane => "kiln-role-controlplane",
            Role::Worker => "kiln-role-worker",
        }
    }

    /// `machine.type` in the Talos config.
    pub fn machine_type(self) -> &'static str {
        match self {
            Role::ControlPlane => "controlplane",
            Role::Worker => "worker",
        }
    }
}

/// One VM the file asks for, as DESIGN.md §2 names and numbers it.
#[derive(Clone, Debug)]
pub struct WantedVm {
    pub number: u32,
    pub role: Role,
    pub name: String,
    pub vmid: u32,
    pub ip: Ipv4Addr,
    /// Upper case, colon separated, as Proxmox writes it in `net0`.
    pub mac: String,
    pub cores: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
}

/// One cluster file of the world.
#[derive(Clone, Debug)]
pub struct ClusterFixture {
    pub name: String,
    pub block: u8,
    pub control_planes: u32,
    pub workers: u32,
    pub protected: bool,
}

pub const CP_RESOURCES: (u32, u64, u64) = (2, 2, 12);
pub const WK_RESOURCES: (u32, u64, u64) = (3, 4, 16);

impl ClusterFixture {
    pub fn new(name: &str, control_planes: u32, workers: u32) -> Self {
        Self {
            name: name.to_owned(),
            block: next_block(),
            control_planes,
            workers,
            protected: false,
        }
    }

    pub fn protected(mut self) -> Self {
        self.protected = true;
        self
    }

    pub fn path(&self) -> String {
        format!("clusters/{}.yaml", self.name)
    }

    /// `vmidPrefix`: the block number, so every cluster of every test has its own VMIDs.
    pub fn vmid_prefix(&self) -> u32 {
        u32::from(self.block)
    }

    pub fn ip(&self, last: u8) -> Ipv4Addr {
        Ipv4Addr::new(127, 0, self.block, last)
    }

    pub fn vip(&self) -> Ipv4Addr {
        self.ip(100)
    }

    pub fn gateway(&self) -> Ipv4Addr {
        self.ip(254)
    }

    /// Every VM, control planes 1..C then workers C+1.. (the established pattern: `-cp-1..3`, `-wk-4`).
    pub fn wanted(&self) -> Vec<WantedVm> {
        (1..=self.control_planes + self.workers)
            .map(|n| {
                let (role, short, (cores, mem_gib, disk_gib)) = if n <= self.control_planes {
                    (Role::ControlPlane, "cp", CP_RESOURCES)
                } else {
                    (Role::Worker, "wk", WK_RESOURCES)
                };
                WantedVm {
                    number: n,
                    role,
                    name: format!("{}-{short}-{n}", self.name),
                    vmid: format!("{}{n}", self.vmid_prefix()).parse().unwrap(),
                    ip: self.ip(n as u8),
                    mac: derived_mac(&self.name, n),
                    cores,
                    memory_mib: mem_gib * 1024,
                    disk_gib,
                }
            })
            .collect()
    }

    pub fn vmids(&self) -> Vec<u32> {
        self.wanted().iter().map(|v| v.vmid).collect()
    }

    /// The intent file. No MAC is given, so kiln derives them (checked against [`derived_mac`]).
    pub fn yaml(&self) -> String {
        let (cc, cm, cd) = CP_RESOURCES;
        let (wc, wm, wd) = WK_RESOURCES;
        let node_list = |range: std::ops::RangeInclusive<u32>| -> String {
            range
                .map(|n| format!("      - {{ip: {}}}\n", self.ip(n as u8)))
                .collect()
        };
        let workers = if self.workers == 0 {
            String::new()
        } else {
            format!(
                "  workers:\n    resources: {{cores: {wc}, memoryGiB: {wm}, diskGiB: {wd}}}\n    nodes:\n{}",
                node_list(self.control_planes + 1..=self.control_planes + self.workers)
            )
        };
        format!(
            "# An end-to-end test cluster on loopback addresses, served by `kiln sim talos`.
apiVersion: kiln.dev/v1alpha1
kind: Cluster
metadata:
  name: {name}
  labels: {{suite: e2e}}
spec:
  deletionProtection: {protected}
  proxmox:
    node: pve1
    template: 9000
    storage: local-lvm
    bridge: vmbr0
    vmidPrefix: {prefix}
  talos:
    version: v1.13.9
  kubernetes:
    version: v1.34.1
  network:
    vip: {vip}
    gateway: {gw}
    prefixLength: 24
    nameservers: [{gw}]
  controlPlane:
    resources: {{cores: {cc}, memoryGiB: {cm}, diskGiB: {cd}}}
    nodes:
{cps}{workers}  apps:
    ingress-nginx: {{enabled: false}}
    longhorn: {{enabled: false}}
",
            name = self.name,
            protected = self.protected,
            prefix = self.vmid_prefix(),
            vip = self.vip(),
            gw = self.gateway(),
            cps = node_list(1..=self.control_planes),
        )
    }
}

/// DESIGN.md §2: `02` followed by the first 5 bytes of SHA-256 of `"{cluster}/{n}"`.
pub fn derived_mac(cluster: &str, n: u32) -> String {
    let digest = Sha256::digest(format!("{cluster}/{n}").as_bytes());
    std::iter::once(0x02u8)
        .chain(digest.iter().copied().take(5))
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}
