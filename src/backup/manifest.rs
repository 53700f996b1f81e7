//! A snapshot's manifest, `<cluster>/<id>.json` beside `<cluster>/<id>.db.age`: what the snapshot
//! is (revision, versions, recipients, when) and what its two files hash to, so a snapshot can be
//! checked without decrypting it (size and SHA-256 of the `.age`) and after decrypting it (of the
//! plaintext database).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The manifest's format; a reader refuses another.
pub const FORMAT: u32 = 1;
/// The encrypted database's suffix.
pub const SNAPSHOT_SUFFIX: &str = ".db.age";
/// The manifest's suffix.
pub const MANIFEST_SUFFIX: &str = ".json";

/// Size and SHA-256 (lowercase hex) of one byte sequence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub cluster: String,
    /// `<UTC timestamp>-<revision>`, the files' common stem.
    pub id: String,
    /// RFC 3339, UTC: when the snapshot's stream started.
    pub created_at: String,
    /// The etcd revision the database holds (read from the database itself).
    pub revision: u64,
    /// The etcd database (bbolt file) as Talos streamed it.
    pub plaintext: Digest,
    /// The `.age` file as stored.
    pub encrypted: Digest,
    /// The Talos version of the node it came from, and the cluster's Kubernetes version.
    pub talos_version: String,
    pub kubernetes_version: String,
    /// The node it was taken from.
    pub node: String,
    /// The age recipients it is encrypted to (public keys).
    pub recipients: Vec<String>,
}

impl Manifest {
    pub fn snapshot_key(&self) -> String {
        snapshot_key(&self.cluster, &self.id)
    }
    pub fn manifest_key(&self) -> String {
        manifest_key(&self.cluster, &self.id)
    }
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if m.format != FORMAT {
            return Err(format!(
                "manifest format {} (kiln reads {FORMAT})",
                m.format
            ));
        }
        Ok(m)
    }
}

/// The id of a snapshot started at `at` holding `revision`: sorts by time as text. Milliseconds,
/// because two snapshots of an idle cluster (same revision) taken within one second — `kiln backup
/// now` twice — must not share a name (the second would replace the first).
pub fn snapshot_id(at: OffsetDateTime, revision: u64) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}.{:03}Z-{revision}",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.millisecond()
    )
}

pub fn snapshot_key(cluster: &str, id: &str) -> String {
    format!("{cluster}/{id}{SNAPSHOT_SUFFIX}")
}

pub fn manifest_key(cluster: &str, id: &str) -> String {
    format!("{cluster}/{id}{MANIFEST_SUFFIX}")
}

pub fn rfc3339(at: OffsetDateTime) -> String {
    at.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time_and_carry_the_revision() {
        let a = snapshot_id(time::macros::datetime!(2026-12-05 05:00:09.5 UTC), 99);
        let b = snapshot_id(time::macros::datetime!(2026-12-05 11:00:00 +01:00), 7);
        let c = snapshot_id(time::macros::datetime!(2026-12-05 05:00:09.501 UTC), 99);
        assert_eq!(a, "20261205T050009.500Z-99");
        assert_eq!(b, "20261205T100000.000Z-7");
        assert!(a < c && c < b);
        assert_eq!(
            snapshot_key("prod", &a),
            "prod/20261205T050009.500Z-99.db.age"
        );
    }

    #[test]
    fn a_manifest_round_trips_and_another_format_is_refused() {
        let m = Manifest {
            format: FORMAT,
            cluster: "prod".into(),
            id: "20261205T050009Z-99".into(),
            created_at: "2026-12-05T05:00:09Z".into(),
            revision: 99,
            plaintext: Digest {
                size: 10,
                sha256: "ab".into(),
            },
            encrypted: Digest {
                size: 20,
                sha256: "cd".into(),
            },
            talos_version: "v1.13.9".into(),
            kubernetes_version: "v1.34.1".into(),
            node: "prod-cp-1".into(),
            recipients: vec!["age1x".into()],
        };
        assert_eq!(Manifest::from_json(&m.to_json()).unwrap(), m);
        let mut other = m.clone();
        other.format = 2;
        assert!(Manifest::from_json(&other.to_json()).is_err());
    }
}
