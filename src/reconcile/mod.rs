//! The reconcile loop (DESIGN.md §7): fetch → load → observe → plan → render → commit → apply → status.

pub mod backoff;
pub mod status;
