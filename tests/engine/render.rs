//! Render tests: every generated document against the third-party schemas (Argo CD and External
//! Secrets CRDs, Kubernetes 1.34 kinds, the charts' values schemas), the `$values` wiring, the
//! topology of DESIGN §6, determinism, overrides and errors.

#[path = "render/behaviour.rs"]
mod behaviour;
#[path = "render/bounds.rs"]
mod bounds;
#[path = "render/cli.rs"]
mod cli;
#[path = "render/support.rs"]
mod support;
#[path = "render/topology.rs"]
mod topology;
#[path = "render/validation.rs"]
mod validation;
