//! Which Kubernetes versions a Talos minor runs. One table, used by `kiln validate` (the spec's own
//! pair) and by the Talos simulator's `RuntimeValidate` (the *running* Talos against a config's
//! image tags), so both refuse exactly what a real node refuses.
//!
//! Source: siderolabs/talos v1.13.9 `pkg/machinery/compatibility/talos111/talos111.go`,
//! `talos112/talos112.go`, `talos113/talos113.go` (`MinimumKubernetesVersion`,
//! `MaximumKubernetesVersion`) and `pkg/machinery/compatibility/kubernetes_version.go`
//! (`SupportedWith`: the minimum is inclusive, the maximum `x.y.99` is exclusive; only
//! major.minor.patch count, pre-release suffixes are ignored).

use super::Version;

/// The Kubernetes versions one Talos minor supports: `min <= k < max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KubernetesRange {
    pub talos_minor: (u32, u32),
    pub min: Version,
    /// Exclusive, as Talos writes it (`1.36.99`).
    pub max: Version,
}

const TABLE: [KubernetesRange; 3] = [
    KubernetesRange {
        talos_minor: (1, 11),
        min: Version::new(1, 29, 0),
        max: Version::new(1, 34, 99),
    },
    KubernetesRange {
        talos_minor: (1, 12),
        min: Version::new(1, 30, 0),
        max: Version::new(1, 35, 99),
    },
    KubernetesRange {
        talos_minor: (1, 13),
        min: Version::new(1, 31, 0),
        max: Version::new(1, 36, 99),
    },
];

impl KubernetesRange {
    /// `1.31–1.36`: how people say the range (every patch of those minors).
    pub fn minors(&self) -> String {
        format!(
            "{}.{}–{}.{}",
            self.min.major, self.min.minor, self.max.major, self.max.minor
        )
    }
}

/// The range of a Talos minor, or `None` for a minor this table (and kiln) does not know.
pub fn kubernetes_range(talos: Version) -> Option<KubernetesRange> {
    TABLE
        .iter()
        .copied()
        .find(|r| r.talos_minor == talos.minor_line())
}

/// Why a Kubernetes version does not run on a Talos version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Incompatible {
    #[error("version of Kubernetes {k8s} is too old to be used with Talos {talos}")]
    TooOld {
        k8s: String,
        talos: String,
        range: KubernetesRange,
    },
    #[error("version of Kubernetes {k8s} is too new to be used with Talos {talos}")]
    TooNew {
        k8s: String,
        talos: String,
        range: KubernetesRange,
    },
    #[error("compatibility with version {talos} is not supported")]
    UnknownTalos { talos: String },
}

/// Talos's `SupportedWith`, messages included (without the leading `v`, as Talos prints them).
pub fn kubernetes_supported(talos: Version, k8s: Version) -> Result<(), Incompatible> {
    let bare = |v: Version| format!("{}.{}.{}", v.major, v.minor, v.patch);
    let range =
        kubernetes_range(talos).ok_or_else(|| Incompatible::UnknownTalos { talos: bare(talos) })?;
    let key = |v: Version| (v.major, v.minor, v.patch);
    if key(k8s) < key(range.min) {
        return Err(Incompatible::TooOld {
            k8s: bare(k8s),
            talos: bare(talos),
            range,
        });
    }
    if key(k8s) >= key(range.max) {
        return Err(Incompatible::TooNew {
            k8s: bare(k8s),
            talos: bare(talos),
            range,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    #[test]
    fn the_table_is_talos_own() {
        for (talos, ok, old, new) in [
            ("v1.11.6", ["v1.29.0", "v1.34.5"], "v1.28.9", "v1.35.0"),
            ("v1.12.4", ["v1.30.0", "v1.35.2"], "v1.29.9", "v1.36.0"),
            ("v1.13.9", ["v1.31.0", "v1.36.98"], "v1.30.9", "v1.37.0"),
        ] {
            for k in ok {
                assert_eq!(kubernetes_supported(v(talos), v(k)), Ok(()), "{talos} {k}");
            }
            assert!(matches!(
                kubernetes_supported(v(talos), v(old)),
                Err(Incompatible::TooOld { .. })
            ));
            assert!(matches!(
                kubernetes_supported(v(talos), v(new)),
                Err(Incompatible::TooNew { .. })
            ));
        }
        // The maximum is exclusive in Talos: 1.36.99 itself is "too new".
        assert!(kubernetes_supported(v("v1.13.0"), v("v1.36.99")).is_err());
        assert_eq!(
            kubernetes_supported(v("v1.11.6"), v("v1.35.0"))
                .unwrap_err()
                .to_string(),
            "version of Kubernetes 1.35.0 is too new to be used with Talos 1.11.6"
        );
        assert!(matches!(
            kubernetes_supported(v("v1.10.0"), v("v1.33.0")),
            Err(Incompatible::UnknownTalos { .. })
        ));
        assert_eq!(
            kubernetes_range(v("v1.13.9")).unwrap().minors(),
            "1.31–1.36"
        );
    }
}
