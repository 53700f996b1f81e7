//! Where each credential of a cluster lives and under which keys (DESIGN.md §5). The paths are relative
//! to the KV v2 mount (`secrets.mount`, default `admin`); the mount itself is the store's business.

use std::fmt;

use crate::spec::ClusterName;

/// Keys of `{prefix}/{cluster}/talos`.
pub mod talos_keys {
    pub const TALOSCONFIG: &str = "talosconfig";
}

/// Keys of `{prefix}/{cluster}/kubeconfig`.
pub mod kubeconfig_keys {
    pub const KUBECONFIG: &str = "kubeconfig";
    pub const SERVER: &str = "server";
    pub const CA_CRT: &str = "ca.crt";
    pub const CLIENT_CRT: &str = "client.crt";
    pub const CLIENT_KEY: &str = "client.key";
}

/// Keys of `{prefix}/{cluster}/secrets`. The Talos parts of the bundle are named by the `talos` module;
/// only the keys every reader must agree on are fixed here.
pub mod bundle_keys {
    /// The whole Talos secrets bundle as YAML (what `talosctl gen secrets` writes).
    pub const BUNDLE: &str = "secrets.yaml";
    /// Written with the bundle; the custom metadata key of the same name mirrors it so a metadata read
    /// (which never returns values) can tell which cluster incarnation the path belongs to.
    pub const CLUSTER_UID: &str = "cluster-uid";
}

/// Custom metadata keys (KV v2 `custom_metadata`: not secret, readable without reading values).
pub mod meta_keys {
    /// On the kubeconfig and talosconfig paths: RFC 3339 time the stored client certificate expires.
    pub const EXPIRES_AT: &str = "expires-at";
    /// On the kubeconfig and talosconfig paths: RFC 3339 time kiln minted the stored certificate;
    /// with `expires-at` it gives the lifetime the certificate was issued with (renewal at a third).
    pub const ISSUED_AT: &str = "issued-at";
    /// On the secrets path: RFC 3339 time etcd was bootstrapped; its presence forbids a second bootstrap.
    pub const BOOTSTRAPPED_AT: &str = "bootstrapped-at";
    /// On every path of a decommissioned cluster kept under `on_decommission = "retain"`; a cluster of
    /// that name is `Blocked` until an operator destroys them.
    pub const DECOMMISSIONED_AT: &str = "kiln-decommissioned-at";
    /// Mirror of the bundle's `cluster-uid` key.
    pub const CLUSTER_UID: &str = super::bundle_keys::CLUSTER_UID;
}

/// A path inside the KV v2 mount, e.g. `kubernetes/prod/talos`. Built only from a validated prefix and
/// cluster name, so it never holds empty segments, `..` or a leading slash.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretPath(String);

impl SecretPath {
    /// A path from text (an operator's argument, a test): same rules as a prefix.
    pub fn parse(raw: &str) -> Result<Self, String> {
        Prefix::parse(raw).map(|p| Self(p.0))
    }
    /// `self/leaf`, where `leaf` may itself hold segments (what a KV `LIST` returns, minus the slash).
    pub fn join(&self, leaf: &str) -> Option<SecretPath> {
        let leaf = leaf.trim_end_matches('/');
        if leaf.is_empty()
            || leaf
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return None;
        }
        Some(SecretPath(format!("{}/{leaf}", self.0)))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The segments, for stores that map a path onto a directory tree.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

impl fmt::Display for SecretPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A prefix that is one or more non-empty segments without `.`/`..`, trimmed of slashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefix(String);

impl Prefix {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let trimmed = raw.trim_matches('/');
        if trimmed.is_empty() {
            return Err("secrets.prefix must not be empty".into());
        }
        for seg in trimmed.split('/') {
            if seg.is_empty() || seg == "." || seg == ".." {
                return Err(format!(
                    "secrets.prefix `{raw}` has an empty, `.` or `..` segment"
                ));
            }
            if seg.chars().any(|c| c.is_control() || c == '\\') {
                return Err(format!(
                    "secrets.prefix `{raw}` has a control character or `\\`"
                ));
            }
        }
        Ok(Self(trimmed.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The three paths of one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretPaths {
    /// `{prefix}/{cluster}`: the folder the three live in (what decommission lists).
    pub dir: SecretPath,
    pub talos: SecretPath,
    pub kubeconfig: SecretPath,
    pub secrets: SecretPath,
}

/// `[ha]`: where the instances keep kiln's records (`reconcile::records::SharedRecords`), so the one
/// that takes the Lease carries on what another started. `_` never begins a cluster name (a DNS-1123
/// label), so this folder never meets a cluster's.
pub fn shared_records(prefix: &Prefix) -> SecretPath {
    SecretPath(format!("{}/_kiln/records", prefix.as_str()))
}

impl SecretPaths {
    pub fn for_cluster(prefix: &Prefix, name: &ClusterName) -> Self {
        let dir = format!("{}/{}", prefix.as_str(), name.as_str());
        Self {
            talos: SecretPath(format!("{dir}/talos")),
            kubeconfig: SecretPath(format!("{dir}/kubeconfig")),
            secrets: SecretPath(format!("{dir}/secrets")),
            dir: SecretPath(dir),
        }
    }
    pub fn all(&self) -> [&SecretPath; 3] {
        [&self.talos, &self.kubeconfig, &self.secrets]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_established_pattern() {
        let p = SecretPaths::for_cluster(
            &Prefix::parse("/kubernetes/").unwrap(),
            &"prod".parse().unwrap(),
        );
        assert_eq!(p.talos.as_str(), "kubernetes/prod/talos");
        assert_eq!(p.kubeconfig.as_str(), "kubernetes/prod/kubeconfig");
        assert_eq!(p.secrets.as_str(), "kubernetes/prod/secrets");
        assert_eq!(p.dir.as_str(), "kubernetes/prod");
        assert_eq!(p.dir.join("x").unwrap().as_str(), "kubernetes/prod/x");
        assert!(p.dir.join("../x").is_none());
    }

    #[test]
    fn prefix_rejects_traversal_and_empty() {
        assert!(Prefix::parse("").is_err());
        assert!(Prefix::parse("a/../b").is_err());
        assert!(Prefix::parse("a//b").is_err());
        assert_eq!(Prefix::parse("team/k8s").unwrap().as_str(), "team/k8s");
    }
}
