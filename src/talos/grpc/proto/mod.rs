//! Hand-written prost messages for the parts of Talos's API kiln uses.
//!
//! Field numbers and types follow `api/common/common.proto`, `api/machine/machine.proto` (Talos v1.13.x) and
//! the COSI `resource.proto`/`state.proto`, as restated in TALOS-FACTS.md §1. No `.proto` file is vendored:
//! no `protoc` exists where kiln builds, and only the messages kiln sends or reads are needed. Fields that
//! kiln never reads are still declared where the simulator has to send them, so both sides stay honest.
//! `tests/adapters/talos_grpc.rs` decodes these messages with an independent raw-protobuf reader to pin the numbers.

pub mod common;
pub mod cosi;
pub mod machine;
pub mod upgrade;

/// Fully qualified gRPC paths, exactly as Talos registers them.
pub mod paths {
    pub const APPLY_CONFIGURATION: &str = "/machine.MachineService/ApplyConfiguration";
    pub const BOOTSTRAP: &str = "/machine.MachineService/Bootstrap";
    pub const KUBECONFIG: &str = "/machine.MachineService/Kubeconfig";
    pub const VERSION: &str = "/machine.MachineService/Version";
    pub const UPGRADE: &str = "/machine.MachineService/Upgrade";
    pub const RESET: &str = "/machine.MachineService/Reset";
    pub const REBOOT: &str = "/machine.MachineService/Reboot";
    pub const ETCD_MEMBER_LIST: &str = "/machine.MachineService/EtcdMemberList";
    pub const ETCD_REMOVE_MEMBER_BY_ID: &str = "/machine.MachineService/EtcdRemoveMemberByID";
    pub const ETCD_SNAPSHOT: &str = "/machine.MachineService/EtcdSnapshot";
    pub const ETCD_RECOVER: &str = "/machine.MachineService/EtcdRecover";
    pub const SERVICE_LIST: &str = "/machine.MachineService/ServiceList";
    /// The new upgrade flow (Talos ≥ v1.13: `v1alpha1_server.go` registers both services).
    pub const IMAGE_PULL: &str = "/machine.ImageService/Pull";
    pub const LIFECYCLE_UPGRADE: &str = "/machine.LifecycleService/Upgrade";
    pub const COSI_GET: &str = "/cosi.resource.State/Get";
    pub const COSI_LIST: &str = "/cosi.resource.State/List";
}
