//! Intent files: types, defaults, expansion into nodes, validation, JSON Schema. Pure: no I/O.

pub mod cluster;
pub mod document;
pub mod types;

pub use cluster::{App, Cluster, Node, Role};
pub use document::ClusterDocument;
pub use types::{ClusterName, HumanDuration, Ipv4Range, MacAddr, Version, Vmid};

/// The JSON Schema of the intent file, as committed in `schemas/cluster.schema.json`.
pub fn json_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(ClusterDocument);
    serde_json::to_value(schema).expect("a schema is JSON")
}
