//! Intent files: types, defaults, expansion into nodes, validation, JSON Schema. Pure: no I/O,
//! except `load_paths`, the small helper that reads files and folders for `kiln validate`.

pub mod cluster;
pub mod compat;
pub mod diagnostic;
pub mod document;
pub mod files;
pub mod load;
pub mod position;
mod pve_names;
pub mod rules;
pub mod schema;
pub mod talos_releases;
pub mod types;
pub mod yaml_json;

pub use cluster::{App, Cluster, Node, Role};
pub use diagnostic::{Diagnostic, Severity};
pub use document::ClusterDocument;
pub use files::{LoadPathsError, load_local, load_paths, read_regular_file};
pub use load::{InvalidFile, LoadOutcome, load};
pub use schema::json_schema;
pub use types::{ClusterName, HumanDuration, Ipv4Range, MacAddr, Version, Vmid};
