//! End-to-end acceptance of the reconciler (issue 19; DESIGN.md §3, §4, §5, §7) through the real `kiln`
//! binary against real parts: fakepve (the PVE 9 API), an OpenBao dev server, Git repositories on disk
//! and `kiln sim talos` answering over gRPC at each node's own loopback IP. Each test builds its own
//! world (`reconcile/support.rs`); docs/testing.md says how, and how to run one test.

// The other suites' harnesses, reused as they are; each suite uses only part of them.
#[allow(dead_code)]
#[path = "secrets/bao.rs"]
mod bao;
#[allow(dead_code)]
#[path = "git/support.rs"]
mod gitrepo;
#[allow(dead_code)]
#[path = "proxmox/support.rs"]
mod pve;

#[allow(dead_code)]
#[path = "spec/measure.rs"]
mod measure;

#[path = "reconcile/checks.rs"]
mod checks;
#[path = "reconcile/credentials.rs"]
mod credentials;
#[path = "reconcile/fixture.rs"]
mod fixture;
#[path = "reconcile/support.rs"]
mod support;
#[path = "reconcile/talos_sim.rs"]
mod talos_sim;

#[path = "reconcile/crash.rs"]
mod crash;
#[path = "reconcile/decommission.rs"]
mod decommission;
#[path = "reconcile/faults.rs"]
mod faults;
#[path = "reconcile/git_safety.rs"]
mod git_safety;
#[path = "reconcile/harness.rs"]
mod harness;
#[path = "reconcile/hostile_input.rs"]
mod hostile_input;
#[path = "reconcile/invalid.rs"]
mod invalid;
#[path = "reconcile/least_privilege.rs"]
mod least_privilege;
#[path = "reconcile/plan.rs"]
mod plan;
#[path = "reconcile/provision.rs"]
mod provision;
#[path = "reconcile/talos_real.rs"]
mod talos_real;
