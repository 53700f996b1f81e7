//! The Talos gRPC client, wire-compatible with `machine.MachineService` and `cosi.resource.State`.
//!
//! `proto`: hand-written prost messages; `tls`: the two connection modes; `client`: one connection and its
//! calls; `state`: node-state detection and the SMBIOS check; `port`: the trait the reconciler uses.

pub mod client;
pub mod error;
pub mod machine_config;
pub mod manifests;
pub mod port;
pub mod proto;
pub mod state;
pub mod tls;

pub use client::{
    ApplyOutcome, BootstrapOutcome, ByteStream, ClientOptions, Mode, TalosClient, UploadStream,
    VersionReport, collect, upload_from,
};
pub use error::{NoAnswer, TalosError};
pub use port::{GrpcTalos, TalosNode, TalosPort};
pub use state::{MachineStage, MachineStatus, NodeState};
pub use tls::ClientIdentity;
