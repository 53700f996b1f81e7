//! Each adapter against the real server it drives: the Proxmox client against fakepve, the secret
//! stores against an OpenBao dev server and the disk, the Git source against bare repositories and
//! `git daemon`, the Talos gRPC client against the simulator's wire, the Kubernetes health checks.
//! One binary for all of them, so the dependency tree is linked once (docs/testing.md).

#[path = "adapters/etcd_real.rs"]
mod etcd_real;
#[path = "adapters/git.rs"]
mod git;
#[path = "adapters/kube.rs"]
mod kube;
#[path = "adapters/kubectl.rs"]
mod kubectl;
#[allow(dead_code)]
#[path = "support/kubectl.rs"]
mod kubectl_cli;
#[path = "adapters/manifests.rs"]
mod manifests;
#[path = "adapters/proxmox.rs"]
mod proxmox;
#[path = "adapters/secrets.rs"]
mod secrets;
#[path = "adapters/talos_grpc.rs"]
mod talos_grpc;
