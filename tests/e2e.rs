//! End-to-end acceptance of the reconciler (issue 19; DESIGN.md §3, §4, §5, §7) through the real `kiln`
//! binary against real parts: fakepve (the PVE 9 API), an OpenBao dev server, Git repositories on disk
//! and `kiln sim talos` answering over gRPC at each node's own loopback IP. Each test builds its own
//! world (`e2e/support.rs`); docs/testing.md says how, and how to run one test.

// The other suites' harnesses, reused as they are; each suite uses only part of them.
#[allow(dead_code)]
#[path = "adapters/secrets/bao.rs"]
mod bao;
#[allow(dead_code)]
#[path = "adapters/git/support.rs"]
mod gitrepo;
#[allow(dead_code)]
#[path = "adapters/proxmox/support.rs"]
mod pve;

#[allow(dead_code)]
#[path = "engine/spec/measure.rs"]
mod measure;

#[path = "e2e/checks.rs"]
mod checks;
#[path = "e2e/credentials.rs"]
mod credentials;
#[path = "e2e/fixture.rs"]
mod fixture;
#[path = "e2e/restore.rs"]
mod restore;
#[path = "e2e/support.rs"]
mod support;
#[path = "e2e/talos_sim.rs"]
mod talos_sim;

#[path = "e2e/api.rs"]
mod api;
#[path = "e2e/backup.rs"]
mod backup;
#[path = "e2e/ci_workflows.rs"]
mod ci_workflows;
#[path = "e2e/cp_scale.rs"]
mod cp_scale;
#[path = "e2e/crash.rs"]
mod crash;
#[path = "e2e/day2.rs"]
mod day2;
#[path = "e2e/decommission.rs"]
mod decommission;
#[path = "e2e/faults.rs"]
mod faults;
#[path = "e2e/git_safety.rs"]
mod git_safety;
#[path = "e2e/ha.rs"]
mod ha;
#[path = "e2e/harness.rs"]
mod harness;
#[path = "e2e/hostile_input.rs"]
mod hostile_input;
#[path = "e2e/invalid.rs"]
mod invalid;
#[path = "e2e/k8s_upgrade.rs"]
mod k8s_upgrade;
#[path = "e2e/kubectl.rs"]
mod kubectl;
#[allow(dead_code)]
#[path = "support/kubectl.rs"]
mod kubectl_cli;
#[path = "e2e/least_privilege.rs"]
mod least_privilege;
#[path = "e2e/live_config.rs"]
mod live_config;
#[path = "e2e/metrics.rs"]
mod metrics;
#[path = "e2e/package.rs"]
mod package;
#[path = "e2e/plan.rs"]
mod plan;
#[path = "e2e/provision.rs"]
mod provision;
#[path = "e2e/renewal.rs"]
mod renewal;
#[path = "e2e/service.rs"]
mod service;
#[path = "e2e/talos_real.rs"]
mod talos_real;
#[path = "e2e/upgrade.rs"]
mod upgrade;
