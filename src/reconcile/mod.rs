//! The reconcile loop (DESIGN.md §7): fetch → load → observe → plan → render → commit → apply → status.
//!
//! `policy` decides the cycle's safety rules (pure); `engine` runs cycles over every cluster; `worker` is one cluster's turn (observe, plan, execute);
//! `observe` maps the ports' answers onto the planner's inputs; `records` is what kiln must remember
//! across restarts; `ports` bundles the systems the engine drives.

pub mod backoff;
pub mod engine;
pub mod observe;
pub mod offline;
pub mod policy;
pub mod ports;
pub mod preview;
pub mod records;
pub mod state_file;
pub mod state_lock;
pub mod status;
pub mod worker;

pub use engine::{CycleReport, Engine};
pub use policy::Intent;
pub use ports::{KubeConnect, KubeRs, Ports};
pub use worker::Progress;
