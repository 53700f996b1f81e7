//! The reconcile loop (DESIGN.md §7): fetch → load → observe → plan → render → commit → apply → status.
//!
//! `policy` decides the cycle's safety rules (pure); `engine` runs cycles over every cluster and does
//! the I/O policy decides; `worker` drives one cluster's turn (observe, plan, execute, report): `turn`
//! is its context, `steps` its handlers grouped by the system they drive, `executor` the order,
//! batching and backoff, `error` the typed errors and the policy (Blocked vs retry); `observe` is the
//! one observation path (worker and `kiln plan`); `records` is what kiln must remember across
//! restarts; `ports` bundles the systems the engine drives.

pub mod backoff;
pub mod backup;
pub mod engine;
pub mod error;
pub mod executor;
pub mod hold;
pub mod observe;
pub mod offline;
pub mod policy;
pub mod ports;
pub mod preview;
pub mod records;
pub mod renewal;
pub mod requests;
pub mod state_file;
pub mod state_lock;
pub mod status;
mod steps;
pub mod turn;
mod upgrade_record;
pub mod worker;

pub use engine::{CycleObserver, CycleReport, Engine, Leadership};
pub use policy::Intent;
pub use ports::{KubeConnect, KubeRs, Ports};
pub use worker::Progress;
