//! The order of a version change that moves Talos, Kubernetes, or both: one minor at a time, so that
//! every (Talos, Kubernetes) pair the cluster passes through is one Talos supports
//! (`spec::compat`). A node refuses a config whose Kubernetes is outside its running Talos's range
//! (RuntimeValidate), and `talosctl upgrade-k8s` refuses a Kubernetes its nodes' Talos does not run
//! (v1.13.9 `pkg/cluster/kubernetes/talos_managed.go` `VerifyVersionCompatibility`), so an order that
//! leaves the range stops half-way on a real cluster.
//!
//! Pure: minors in, hops out. Which patch each hop lands on (a minor's latest, or the file's own
//! version on the last hop) is the caller's table.

use std::fmt;

use serde::Serialize;

use crate::spec::Version;
use crate::spec::compat;

/// `(major, minor)`.
pub type Minor = (u32, u32);

/// One step of a rollout: every node moves to this minor before the next hop starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "part", content = "minor")]
pub enum Hop {
    Talos(Minor),
    Kubernetes(Minor),
}

impl fmt::Display for Hop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hop::Talos((a, b)) => write!(f, "Talos {a}.{b}"),
            Hop::Kubernetes((a, b)) => write!(f, "Kubernetes {a}.{b}"),
        }
    }
}

/// Why no order works; each says what the file could ask for instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoPath {
    #[error(
        "Talos {}.{} → {}.{} is a downgrade; Talos does not support downgrades (pin spec.talos.version to what the nodes run)",
        from.0, from.1, to.0, to.1
    )]
    TalosDowngrade { from: Minor, to: Minor },
    #[error(
        "Kubernetes {}.{} → {}.{} is a downgrade; Kubernetes does not support downgrades (pin spec.kubernetes.version to what the cluster runs)",
        from.0, from.1, to.0, to.1
    )]
    KubernetesDowngrade { from: Minor, to: Minor },
    #[error("kiln does not know which Kubernetes versions Talos {}.{} runs", .0.0, .0.1)]
    UnknownTalos(Minor),
    #[error(
        "no order of one-minor steps from Talos {}.{} + Kubernetes {}.{} to Talos {}.{} + Kubernetes {}.{} keeps every pair supported ({why}){}",
        from.0.0, from.0.1, from.1.0, from.1.1, to.0.0, to.0.1, to.1.0, to.1.1,
        suggestion.as_ref().map(|s| format!("; {s}")).unwrap_or_default()
    )]
    Unsupported {
        from: (Minor, Minor),
        to: (Minor, Minor),
        why: String,
        suggestion: Option<String>,
    },
}

fn supported(talos: Minor, k8s: Minor) -> Option<bool> {
    let range = compat::kubernetes_range(Version::new(talos.0, talos.1, 0))?;
    let (lo, hi) = (range.min.minor_line(), range.max.minor_line());
    Some(lo <= k8s && k8s <= hi)
}

/// The hops from the running pair `from` to the file's pair `to`. Talos moves first whenever the
/// running Kubernetes is inside the next Talos minor's range (as Talos's upgrade guide orders it);
/// otherwise Kubernetes moves first, only as far as needed. Minors step within one major.
pub fn path(from: (Minor, Minor), to: (Minor, Minor)) -> Result<Vec<Hop>, NoPath> {
    search(from, to)?.ok_or_else(|| NoPath::Unsupported {
        from,
        to,
        why: blocking_reason(to.0, to.1),
        suggestion: suggest(from, to),
    })
}

/// `Ok(None)`: the pairs are known and ordered, but no order stays supported.
fn search(from: (Minor, Minor), to: (Minor, Minor)) -> Result<Option<Vec<Hop>>, NoPath> {
    let ((t0, k0), (t1, k1)) = (from, to);
    if t1 < t0 {
        return Err(NoPath::TalosDowngrade { from: t0, to: t1 });
    }
    if k1 < k0 {
        return Err(NoPath::KubernetesDowngrade { from: k0, to: k1 });
    }
    if t0.0 != t1.0 || k0.0 != k1.0 {
        return Err(NoPath::Unsupported {
            from,
            to,
            why: "a change of major version".into(),
            suggestion: None,
        });
    }
    let (nt, nk) = ((t1.1 - t0.1) as usize, (k1.1 - k0.1) as usize);
    let talos = |i: usize| (t0.0, t0.1 + i as u32);
    let k8s = |j: usize| (k0.0, k0.1 + j as u32);
    // ok[i][j]: the pair after i Talos hops and j Kubernetes hops runs. The starting pair is what
    // the cluster runs today, whatever the table says.
    let mut ok = vec![vec![false; nk + 1]; nt + 1];
    for (i, row) in ok.iter_mut().enumerate() {
        for (j, cell) in row.iter_mut().enumerate() {
            *cell = (i == 0 && j == 0)
                || supported(talos(i), k8s(j)).ok_or(NoPath::UnknownTalos(talos(i)))?;
        }
    }
    // reach[i][j]: the target can be reached from there through supported pairs only.
    let mut reach = vec![vec![false; nk + 1]; nt + 1];
    for i in (0..=nt).rev() {
        for j in (0..=nk).rev() {
            reach[i][j] = ok[i][j]
                && ((i == nt && j == nk)
                    || (i < nt && reach[i + 1][j])
                    || (j < nk && reach[i][j + 1]));
        }
    }
    if !reach[0][0] {
        return Ok(None);
    }
    let (mut i, mut j, mut hops) = (0, 0, Vec::with_capacity(nt + nk));
    while (i, j) != (nt, nk) {
        if i < nt && reach[i + 1][j] {
            i += 1;
            hops.push(Hop::Talos(talos(i)));
        } else {
            j += 1;
            hops.push(Hop::Kubernetes(k8s(j)));
        }
    }
    Ok(Some(hops))
}

fn blocking_reason(talos: Minor, k8s: Minor) -> String {
    match compat::kubernetes_range(Version::new(talos.0, talos.1, 0)) {
        Some(r) if supported(talos, k8s) == Some(false) => format!(
            "Talos {}.{} runs Kubernetes {}",
            talos.0,
            talos.1,
            r.minors()
        ),
        _ => "an intermediate pair is outside every range".into(),
    }
}

/// The nearest target that has an order: the file's Talos with the closest Kubernetes above the
/// one asked for, named with the hops it would take.
fn suggest(from: (Minor, Minor), to: (Minor, Minor)) -> Option<String> {
    let (t1, k1) = to;
    (1..=8).find_map(|up| {
        let k = (k1.0, k1.1 + up);
        let hops = search(from, (t1, k)).ok()??;
        let steps: Vec<String> = hops.iter().map(Hop::to_string).collect();
        Some(format!(
            "ask for Kubernetes {}.{} with Talos {}.{} instead: {}",
            k.0,
            k.1,
            t1.0,
            t1.1,
            steps.join(" → ")
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn talos_first_when_the_running_kubernetes_fits_the_next_minor() {
        // 1.33 runs on 1.11, 1.12 and 1.13.
        assert_eq!(
            path(((1, 11), (1, 33)), ((1, 13), (1, 34))).unwrap(),
            vec![
                Hop::Talos((1, 12)),
                Hop::Talos((1, 13)),
                Hop::Kubernetes((1, 34))
            ]
        );
    }

    #[test]
    fn kubernetes_moves_first_only_as_far_as_the_next_talos_needs() {
        // The example: Talos 1.13 does not run Kubernetes 1.30, so 1.31 comes first.
        assert_eq!(
            path(((1, 12), (1, 30)), ((1, 13), (1, 34))).unwrap(),
            vec![
                Hop::Kubernetes((1, 31)),
                Hop::Talos((1, 13)),
                Hop::Kubernetes((1, 32)),
                Hop::Kubernetes((1, 33)),
                Hop::Kubernetes((1, 34)),
            ]
        );
    }

    #[test]
    fn every_pair_on_the_way_is_supported() {
        for t0 in 11..=13 {
            for t1 in t0..=13 {
                for k0 in 29..=36 {
                    for k1 in k0..=36 {
                        let from = ((1, t0), (1, k0));
                        if supported(from.0, from.1) != Some(true) {
                            continue;
                        }
                        let Ok(hops) = path(from, ((1, t1), (1, k1))) else {
                            continue;
                        };
                        let (mut t, mut k) = from;
                        for hop in hops {
                            match hop {
                                Hop::Talos(m) => t = m,
                                Hop::Kubernetes(m) => k = m,
                            }
                            assert_eq!(supported(t, k), Some(true), "{t:?} {k:?}");
                        }
                        assert_eq!((t, k), ((1, t1), (1, k1)));
                    }
                }
            }
        }
    }

    #[test]
    fn nothing_to_do_is_no_hop() {
        assert_eq!(path(((1, 13), (1, 34)), ((1, 13), (1, 34))).unwrap(), []);
    }

    #[test]
    fn downgrades_are_refused() {
        assert!(matches!(
            path(((1, 13), (1, 34)), ((1, 12), (1, 34))),
            Err(NoPath::TalosDowngrade { .. })
        ));
        assert!(matches!(
            path(((1, 13), (1, 34)), ((1, 13), (1, 33))),
            Err(NoPath::KubernetesDowngrade { .. })
        ));
    }

    #[test]
    fn an_impossible_pair_is_refused_with_the_path_it_would_need() {
        // Talos 1.13 does not run Kubernetes 1.30 at all.
        let err = path(((1, 11), (1, 29)), ((1, 13), (1, 30))).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, NoPath::Unsupported { .. }), "{text}");
        assert!(
            text.contains("Talos 1.13 runs Kubernetes 1.31–1.36"),
            "{text}"
        );
        assert!(
            text.contains("ask for Kubernetes 1.31 with Talos 1.13 instead: Kubernetes 1.30 → Talos 1.12 → Kubernetes 1.31 → Talos 1.13"),
            "{text}"
        );
    }

    #[test]
    fn an_unknown_talos_minor_is_named() {
        assert_eq!(
            path(((1, 13), (1, 34)), ((1, 14), (1, 34))),
            Err(NoPath::UnknownTalos((1, 14)))
        );
    }
}
