//! kiln: a GitOps pull reconciler that turns `clusters/<name>.yaml` intent files into Talos Linux
//! Kubernetes clusters on Proxmox VE. See ARCHITECTURE.md for the map of modules and the data flow.
//!
//! Each module owns one concern and at most one external system; nothing else talks to that system.

pub mod config;
pub mod redact;
pub mod spec;

/// etcd backups: the snapshot format (bbolt), destinations, age encryption, manifests, the
/// snapshot pipeline with its verification and prune, and the restore.
pub mod backup;
/// `kiln demo`: the demo folder, its seeded repository, the simulated lab, the closing report.
pub mod demo;
/// The Git source and the generated-files commit.
pub mod git;
/// Several instances, one leader through a Kubernetes Lease (`[ha]`).
pub mod ha;
/// Health of a new cluster, drain, Node deletion. (The `kube` crate is `::kube` inside the crate.)
pub mod kube;
/// Prometheus metrics of the process (`GET /metrics`).
pub mod metrics;
/// Ordered actions from desired × observed state (pure).
pub mod plan;
/// Proxmox VE API client and VM lifecycle.
pub mod proxmox;
/// The loop: fetch → load → observe → plan → render → commit → apply → status.
pub mod reconcile;
/// Argo CD / External Secrets / Helm values manifests (pure).
pub mod render;
/// Capped exponential backoff with jitter inside a whole-step budget, for every adapter.
pub mod retry;
/// Vault/OpenBao KV v2 and the local file store.
pub mod secrets;
/// HTTP API, webhooks, metrics.
pub mod server;
/// In-process simulated Proxmox and Talos.
pub mod sim;
/// systemd's notify protocol and the watchdog fed by the engine's progress.
pub mod systemd;
/// Talos secrets bundle, machine configs, gRPC client.
pub mod talos;
/// Crash points the end-to-end tests stop the daemon at (inert without `KILN_TEST_PAUSE_AT`).
pub mod testhook;
/// The certificate verifier for peers no CA vouches for (a pinned PVE node, Talos maintenance).
pub mod tls;

#[cfg(test)]
mod invariants;
