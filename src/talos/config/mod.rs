//! Talos machine configuration for the contracts kiln supports (Talos 1.11, 1.12, 1.13): typed
//! documents (`types`, `documents`), the renderer from a cluster spec (`render`), and a strict
//! decoder (`decode`) that refuses what the official schema of the contract refuses, without
//! needing the schema file at run time.

pub mod compare;
pub mod decode;
pub mod documents;
pub mod images;
pub mod render;
pub mod types;

use std::fmt;

use crate::spec::Version;

pub use decode::{ConfigFieldError, DecodeError, DecodedConfig, decode};
pub use render::{KubernetesImages, RenderError, render, render_documents, render_documents_with};

/// A machine-config contract: what a Talos minor emits and accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Contract {
    /// Talos 1.11: one v1alpha1 document, networking and registries inside it.
    V1_11,
    /// Talos 1.12: v1alpha1 plus `HostnameConfig`, `LinkConfig`, `RegistryMirrorConfig`, …
    V1_12,
    /// Talos 1.13: as 1.12, `machine.network` gone from v1alpha1.
    V1_13,
}

impl Contract {
    pub const ALL: [Contract; 3] = [Contract::V1_11, Contract::V1_12, Contract::V1_13];

    /// The contract of a Talos version; other minors are not supported.
    pub fn for_version(v: Version) -> Result<Self, UnsupportedVersion> {
        match (v.major, v.minor) {
            (1, 11) => Ok(Contract::V1_11),
            (1, 12) => Ok(Contract::V1_12),
            (1, 13) => Ok(Contract::V1_13),
            _ => Err(UnsupportedVersion(v)),
        }
    }

    /// `1.12`: the minor as the schema file names it (`config-v1.12.schema.json`).
    pub fn minor_str(self) -> &'static str {
        match self {
            Contract::V1_11 => "1.11",
            Contract::V1_12 => "1.12",
            Contract::V1_13 => "1.13",
        }
    }

    /// The official schema's file name under `schemas/talos/`.
    pub fn schema_file(self) -> String {
        format!("config-v{}.schema.json", self.minor_str())
    }

    /// Whether the contract has the multi-document network/registry kinds.
    pub fn multi_doc(self) -> bool {
        self >= Contract::V1_12
    }
}

impl fmt::Display for Contract {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.minor_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Talos {0} is not supported: kiln renders machine configs for Talos 1.11, 1.12 and 1.13")]
pub struct UnsupportedVersion(pub Version);
