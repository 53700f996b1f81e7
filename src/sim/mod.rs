//! In-process simulators of the external systems, used by `kiln demo`, `kiln sim talos` and engine tests.

pub mod kubernetes;
pub mod lab;
pub mod pve;
pub mod talos;
