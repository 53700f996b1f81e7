//! When the stored kubeconfig and talosconfig are renewed (DESIGN §5): once a third of the life they
//! were issued with remains. Pure: observation reads each credential's `issued-at` and `expires-at`
//! metadata and the clock, and hands over what is left of which lifetime.
//!
//! The lifetime is the one the certificate was issued with, not today's `credential_lifetime`, so a
//! changed setting never makes every stored credential due at once (nor leaves one unrenewed).

use std::time::Duration;

use serde::Serialize;

use super::action::{Action, Step};
use super::observed::SecretsObserved;

/// What the metadata says of one stored credential's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum Expiry {
    /// `lifetime` as issued (`expires-at` − `issued-at`), `remaining` at observation (zero once
    /// expired).
    Known {
        lifetime: Duration,
        remaining: Duration,
    },
    /// Stored without a readable `expires-at` (written by hand, or a write cut short between the
    /// value and its metadata): renewed once, so it gets one.
    Unknown,
}

impl Expiry {
    /// A third of the life or less remains.
    pub fn due(&self) -> bool {
        match *self {
            Expiry::Known {
                lifetime,
                remaining,
            } => remaining <= lifetime / 3,
            Expiry::Unknown => true,
        }
    }
}

/// The two stored credentials' expiries; `None` where nothing is stored (then `StoreCredentials`,
/// not renewal, is planned).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StoredCredentials {
    pub kubeconfig: Option<Expiry>,
    pub talosconfig: Option<Expiry>,
}

/// The renewal step, when a stored credential is due. Nothing is planned for a credential that is
/// not stored yet, nor for a cluster with retained (decommissioned) secrets.
pub fn renewal(secrets: &SecretsObserved) -> Option<Step> {
    if secrets.decommissioned {
        return None;
    }
    let due = |e: Option<Expiry>| e.is_some_and(|e| e.due());
    let kubeconfig = secrets.kubeconfig_stored && due(secrets.credentials.kubeconfig);
    let talosconfig = secrets.talosconfig_stored && due(secrets.credentials.talosconfig);
    if !kubeconfig && !talosconfig {
        return None;
    }
    let reason = [
        (kubeconfig, "kubeconfig", secrets.credentials.kubeconfig),
        (talosconfig, "talosconfig", secrets.credentials.talosconfig),
    ]
    .into_iter()
    .filter(|(due, _, _)| *due)
    .map(|(_, what, e)| match e {
        Some(Expiry::Known { remaining, .. }) if remaining.is_zero() => {
            format!("the stored {what} has expired")
        }
        Some(Expiry::Known { remaining, .. }) => format!(
            "the stored {what} expires in {}, within the last third of its life",
            humanize(remaining)
        ),
        _ => format!("the stored {what} has no expires-at metadata"),
    })
    .collect::<Vec<_>>()
    .join("; ");
    Some(Step {
        action: Action::RenewCredentials {
            kubeconfig,
            talosconfig,
        },
        reason,
    })
}

/// Whole seconds: what a person reads in a plan or a status line.
pub fn humanize(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::BundleState;

    const DAY: Duration = Duration::from_secs(24 * 3600);
    const YEAR: Duration = Duration::from_secs(8760 * 3600);

    fn stored(kubeconfig: Option<Expiry>, talosconfig: Option<Expiry>) -> SecretsObserved {
        SecretsObserved {
            bundle: BundleState::Present,
            bootstrapped: true,
            kubeconfig_stored: true,
            talosconfig_stored: true,
            decommissioned: false,
            credentials: StoredCredentials {
                kubeconfig,
                talosconfig,
            },
        }
    }

    fn left(remaining: Duration) -> Option<Expiry> {
        Some(Expiry::Known {
            lifetime: YEAR,
            remaining,
        })
    }

    #[test]
    fn due_at_a_third_of_the_life_issued_with() {
        let third = YEAR / 3;
        assert!(!left(third + Duration::from_secs(1)).unwrap().due());
        assert!(left(third).unwrap().due());
        assert!(left(Duration::ZERO).unwrap().due());
        // A 90 s credential is due with 30 s left, whatever a year-long setting would say.
        let short = Expiry::Known {
            lifetime: Duration::from_secs(90),
            remaining: Duration::from_secs(31),
        };
        assert!(!short.due());
        let short = Expiry::Known {
            lifetime: Duration::from_secs(90),
            remaining: Duration::from_secs(30),
        };
        assert!(short.due());
        assert!(Expiry::Unknown.due());
    }

    #[test]
    fn nothing_is_planned_outside_the_window() {
        assert_eq!(renewal(&stored(left(200 * DAY), left(200 * DAY))), None);
    }

    #[test]
    fn only_the_due_credential_is_renewed() {
        let step = renewal(&stored(left(100 * DAY), left(200 * DAY))).unwrap();
        assert_eq!(
            step.action,
            Action::RenewCredentials {
                kubeconfig: true,
                talosconfig: false
            }
        );
        assert!(
            step.reason
                .starts_with("the stored kubeconfig expires in 3months 8days")
                && step.reason.ends_with("within the last third of its life"),
            "{}",
            step.reason
        );
        let step = renewal(&stored(left(200 * DAY), Some(Expiry::Unknown))).unwrap();
        assert_eq!(
            step.action,
            Action::RenewCredentials {
                kubeconfig: false,
                talosconfig: true
            }
        );
        let step = renewal(&stored(left(Duration::ZERO), left(Duration::ZERO))).unwrap();
        assert!(
            step.reason.contains("kubeconfig has expired"),
            "{}",
            step.reason
        );
    }

    #[test]
    fn a_missing_credential_or_a_retired_cluster_is_not_renewed() {
        let mut s = stored(left(Duration::ZERO), left(Duration::ZERO));
        s.kubeconfig_stored = false;
        s.talosconfig_stored = false;
        assert_eq!(renewal(&s), None);
        let mut s = stored(left(Duration::ZERO), left(Duration::ZERO));
        s.decommissioned = true;
        assert_eq!(renewal(&s), None);
        // Stored but not read (a cheap observation never builds SecretsObserved at all).
        assert_eq!(renewal(&stored(None, None)), None);
    }
}
