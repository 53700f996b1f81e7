//! What kiln remembers between cycles and restarts, per cluster it manages (`state_dir/records.json`).
//! Everything here can be rebuilt from observation except two things observation cannot give: which
//! clusters kiln made (so a deleted file is told from a never-known one) and the spec last applied
//! (so a file that turns invalid, or is deleted, still renders and still names its VMs). A record is
//! dropped only once Proxmox confirms the cluster's VMs are gone (DESIGN.md §7).

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    /// The text of the intent file last applied successfully (or, before the first success, the
    /// first valid text seen: kiln may have made VMs for it).
    pub spec_text: String,
    /// Its repository path, for messages.
    pub path: String,
    /// The intent revision whose apply last succeeded.
    pub applied_revision: Option<String>,
    /// kiln's identity of this cluster incarnation (the bundle's `cluster-uid`), once known.
    pub cluster_uid: Option<String>,
    /// `deletionProtection` of the last valid text.
    pub protected: bool,
    /// RFC 3339 time the file was first seen missing; cleared when it comes back.
    pub missing_since: Option<String>,
    /// RFC 3339 time of the last full observation (secrets, Talos, Kubernetes).
    pub deep_checked_at: Option<String>,
    /// Node number → RFC 3339 time kiln started its VM, until the node first answers: what
    /// `[talos] boot_timeout` is measured from (no listing says when a VM started).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub started_at: BTreeMap<u32, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Records {
    pub clusters: BTreeMap<String, ClusterRecord>,
    /// Hash of what was last published (intent texts, templates, kiln's version, render settings):
    /// equal means the generated files are already at the tip, so no fetch or commit is needed.
    pub published_key: Option<String>,
}

impl Records {
    pub const FILE: &'static str = "records.json";

    pub fn load(state_dir: &Path) -> io::Result<Self> {
        super::state_file::load(state_dir, Self::FILE)
    }

    /// Synced and renamed into place: a crash leaves the old or the new file.
    pub fn save(&self, state_dir: &Path) -> io::Result<()> {
        super::state_file::save(state_dir, Self::FILE, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Records::load(dir.path()).unwrap(), Records::default());
        let mut r = Records::default();
        r.clusters.insert(
            "prod".into(),
            ClusterRecord {
                spec_text: "x".into(),
                cluster_uid: Some("u".into()),
                ..Default::default()
            },
        );
        r.save(dir.path()).unwrap();
        assert_eq!(Records::load(dir.path()).unwrap(), r);
    }
}
