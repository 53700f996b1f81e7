//! The elector: acquires and renews a `coordination.k8s.io/v1` Lease the way client-go's
//! `staging/src/k8s.io/client-go/tools/leaderelection/leaderelection.go` does (`tryAcquireOrRenew`,
//! `acquire`, `renew`, `isLeaseValid`), with kube-rs.
//!
//! As there:
//! - the Lease is read; absent, it is created with this instance as holder (the API answers 409
//!   `AlreadyExists` to all but one of several creators);
//! - a follower records *when it saw the Lease change* (`observedTime`, on its own monotonic clock)
//!   and deems it expired `leaseDurationSeconds` after that — never by comparing `renewTime` with
//!   its own wall clock, so clock skew between hosts does not matter, only their clock rates;
//! - the update carries the `resourceVersion` read, so of two candidates at most one wins (409
//!   `Conflict` for the other);
//! - `acquireTime` and `leaseTransitions` are kept on a renewal, and a new holder counts one more
//!   transition.
//!
//! Where kiln differs: there is no optimistic fast path (every attempt reads first: a Lease is
//! tiny and the retry period is seconds); the leader's window (the [`LeaderGate`]) is counted from
//! when its renewal was *sent*, not answered; a follower's wait ends exactly at the observed expiry
//! rather than at its next tick, so takeover after a leader dies takes at most `lease_duration`
//! plus one retry period; and there is no jitter (every attempt is decided by the API server's
//! `resourceVersion` check, so candidates racing is harmless).

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::sync::watch;

use super::gate::LeaderGate;
use super::{HaConfig, Timing};

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("ha.kubeconfig_file {path}: {message}")]
    Kubeconfig { path: String, message: String },
    #[error("the management cluster's API: {0}")]
    Api(String),
    #[error("the management cluster's API did not answer within {0:?}")]
    Timeout(Duration),
}

fn api_err(e: kube::Error) -> LeaseError {
    LeaseError::Api(e.to_string())
}

fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// What the last read showed, and when this process saw it change (its monotonic clock).
#[derive(Debug, Clone)]
struct Observed {
    resource_version: String,
    duration: Duration,
    at: Instant,
}

/// What one attempt does after reading the Lease.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decision {
    /// No Lease: create it, held by this instance.
    Create(Lease),
    /// This instance may (re)take it: replace it with this body (which carries the version read).
    Update(Lease),
    /// Someone else holds an unexpired Lease; look again in this long (at most a retry period,
    /// and exactly at the observed expiry when that comes first).
    Wait {
        holder: Option<String>,
        again_in: Duration,
    },
}

/// The election's state without I/O: what was observed and when. Time comes in as arguments.
#[derive(Debug)]
pub(crate) struct Election {
    identity: String,
    namespace: String,
    name: String,
    timing: Timing,
    observed: Option<Observed>,
}

impl Election {
    pub(crate) fn new(identity: String, namespace: String, name: String, timing: Timing) -> Self {
        Self {
            identity,
            namespace,
            name,
            timing,
            observed: None,
        }
    }

    fn spec(&self, wall: Timestamp, acquired: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.timing.lease_duration.as_secs().max(1) as i32),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(wall)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// client-go's `tryAcquireOrRenew` steps 2–4 on what the read returned.
    pub(crate) fn decide(
        &mut self,
        read: Option<&Lease>,
        now: Instant,
        wall: Timestamp,
    ) -> Decision {
        let Some(lease) = read else {
            return Decision::Create(Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(wall, wall, 0)),
            });
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let rv = lease.metadata.resource_version.clone().unwrap_or_default();
        // Any write to the Lease changes its resourceVersion: a new observation starts the count.
        if self
            .observed
            .as_ref()
            .is_none_or(|o| o.resource_version != rv)
        {
            self.observed = Some(Observed {
                resource_version: rv,
                duration: spec
                    .lease_duration_seconds
                    .filter(|s| *s > 0)
                    .map_or(self.timing.lease_duration, |s| {
                        Duration::from_secs(s as u64)
                    }),
                at: now,
            });
        }
        let observed = self.observed.as_ref().expect("set above");
        let mine = holder.as_deref() == Some(self.identity.as_str());
        let expires = observed.at + observed.duration;
        if holder.is_some() && !mine && now < expires {
            return Decision::Wait {
                holder,
                again_in: (expires - now).min(self.timing.retry_period),
            };
        }
        let (acquired, transitions) = if mine {
            (
                spec.acquire_time.map_or(wall, |t| t.0),
                spec.lease_transitions.unwrap_or(0),
            )
        } else {
            (wall, spec.lease_transitions.unwrap_or(0) + 1)
        };
        let mut next = lease.clone();
        next.spec = Some(self.spec(wall, acquired, transitions));
        Decision::Update(next)
    }

    /// The create or update sent at `sent` was accepted and the API returned `stored`.
    pub(crate) fn written(&mut self, stored: &Lease, sent: Instant) {
        self.observed = Some(Observed {
            resource_version: stored.metadata.resource_version.clone().unwrap_or_default(),
            duration: self.timing.lease_duration,
            at: sent,
        });
    }
}

/// The elector's task: one attempt per retry period, the [`LeaderGate`] told of each outcome.
pub struct Elector {
    api: Api<Lease>,
    election: Election,
    gate: LeaderGate,
    timing: Timing,
    lease_name: String,
}

impl Elector {
    /// Reads `ha.kubeconfig_file` and prepares the client; contacts nothing yet.
    pub async fn connect(
        ha: &HaConfig,
        identity: String,
    ) -> Result<(Self, LeaderGate), LeaseError> {
        let path = ha.kubeconfig_file.display().to_string();
        let bad = |message: String| LeaseError::Kubeconfig {
            path: path.clone(),
            message,
        };
        let kubeconfig =
            Kubeconfig::read_from(&ha.kubeconfig_file).map_err(|e| bad(e.to_string()))?;
        let mut config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| bad(e.to_string()))?;
        let timing = ha.timing();
        // One attempt must fit in a retry period: a management API that hangs counts as down.
        config.connect_timeout = Some(timing.retry_period);
        config.read_timeout = Some(timing.retry_period);
        config.write_timeout = Some(timing.retry_period);
        let client = kube::Client::try_from(config).map_err(|e| bad(e.to_string()))?;
        let gate = LeaderGate::new(identity.clone(), timing.renew_deadline);
        Ok((
            Self {
                api: Api::namespaced(client, &ha.namespace),
                election: Election::new(
                    identity,
                    ha.namespace.clone(),
                    ha.lease_name.clone(),
                    timing,
                ),
                gate: gate.clone(),
                timing,
                lease_name: ha.lease_name.clone(),
            },
            gate,
        ))
    }

    /// Who holds the Lease now, for `kiln status` (one read, no election).
    pub async fn holder(ha: &HaConfig) -> Result<Option<String>, LeaseError> {
        let (elector, _) = Self::connect(ha, String::new()).await?;
        let lease = elector.api.get_opt(&ha.lease_name).await.map_err(api_err)?;
        Ok(lease
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
            .filter(|h| !h.is_empty()))
    }

    /// Runs until `stop` turns true, then hands itself back for [`Self::release`]. A leader that
    /// cannot renew keeps trying; its gate shuts by itself at the renew deadline. The daemon stops
    /// it only once the engine finished its last step, so that step is still covered.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) -> Self {
        let mut was_leading = false;
        loop {
            let sent = Instant::now();
            let again_in = match tokio::time::timeout(
                self.timing.renew_deadline,
                self.try_acquire_or_renew(sent),
            )
            .await
            {
                Ok(Ok(again_in)) => again_in,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, lease = %self.lease_name, "cannot read or write the Lease");
                    self.timing.retry_period
                }
                Err(_) => {
                    tracing::warn!(error = %LeaseError::Timeout(self.timing.renew_deadline), lease = %self.lease_name, "cannot read or write the Lease");
                    self.timing.retry_period
                }
            };
            self.gate.publish();
            let leading = self.gate.check();
            crate::metrics::global().set_ha_leader(leading);
            if leading != was_leading {
                if leading {
                    tracing::info!(identity = %self.gate.identity(), lease = %self.lease_name, "acquired the Lease: this instance leads");
                } else {
                    tracing::warn!(identity = %self.gate.identity(), holder = ?self.gate.holder(), "this instance no longer holds the Lease: it stops acting");
                }
                was_leading = leading;
            }
            // The gate may shut before the next attempt (a renewal failed): wake in time to see it.
            let wait = again_in.max(Duration::from_millis(10));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                r = stop.changed() => {
                    if r.is_err() || *stop.borrow() {
                        return self;
                    }
                }
            }
        }
    }

    /// On a clean exit: gives the Lease up if this instance holds it, as client-go's `release`
    /// (`ReleaseOnCancel`) does — no holder, a one-second duration — so a follower takes over at
    /// its next look instead of after a whole lease. The gate shuts first: nothing of this process
    /// writes after the release.
    pub async fn release(self) {
        let mine = self.gate.holder().as_deref() == Some(self.gate.identity());
        self.gate.held_by(None);
        crate::metrics::global().set_ha_leader(false);
        if !mine {
            return;
        }
        let released = tokio::time::timeout(self.timing.renew_deadline, async {
            let Some(lease) = self.api.get_opt(&self.lease_name).await.map_err(api_err)? else {
                return Ok(false);
            };
            let spec = lease.spec.clone().unwrap_or_default();
            if spec.holder_identity.as_deref() != Some(self.gate.identity()) {
                return Ok(false);
            }
            let mut next = lease.clone();
            next.spec = Some(LeaseSpec {
                holder_identity: None,
                lease_duration_seconds: Some(1),
                renew_time: Some(MicroTime(Timestamp::now())),
                acquire_time: Some(MicroTime(Timestamp::now())),
                lease_transitions: spec.lease_transitions,
                ..LeaseSpec::default()
            });
            self.api
                .replace(&self.lease_name, &PostParams::default(), &next)
                .await
                .map_err(api_err)?;
            Ok::<_, LeaseError>(true)
        })
        .await;
        match released {
            Ok(Ok(true)) => tracing::info!(lease = %self.lease_name, "released the Lease"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not release the Lease; it expires by itself")
            }
            Err(_) => tracing::warn!("could not release the Lease in time; it expires by itself"),
        }
    }

    /// One attempt; returns how long to wait before the next.
    async fn try_acquire_or_renew(&mut self, sent: Instant) -> Result<Duration, LeaseError> {
        let read = self.api.get_opt(&self.lease_name).await.map_err(api_err)?;
        let decision = self
            .election
            .decide(read.as_ref(), Instant::now(), Timestamp::now());
        let written = match decision {
            Decision::Wait { holder, again_in } => {
                self.gate.held_by(holder);
                return Ok(again_in);
            }
            Decision::Create(lease) => self.api.create(&PostParams::default(), &lease).await,
            Decision::Update(lease) => {
                self.api
                    .replace(&self.lease_name, &PostParams::default(), &lease)
                    .await
            }
        };
        match written {
            Ok(stored) => {
                self.election.written(&stored, sent);
                self.gate.renewed(sent);
                Ok(self.timing.retry_period)
            }
            // Another candidate wrote first (AlreadyExists on create, Conflict on update): the
            // next read shows who.
            Err(e) if status_code(&e) == Some(409) => {
                self.gate.held_by(None);
                tracing::debug!(error = %e, "lost the race for the Lease");
                Ok(Duration::ZERO)
            }
            Err(e) => Err(api_err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn election(id: &str) -> Election {
        Election::new(
            id.into(),
            "argocd".into(),
            "kiln".into(),
            Timing::from_lease(Duration::from_secs(15)),
        )
    }

    fn stored(lease: &Lease, rv: u64) -> Lease {
        let mut l = lease.clone();
        l.metadata.resource_version = Some(rv.to_string());
        l
    }

    fn body(d: Decision) -> Lease {
        match d {
            Decision::Create(l) | Decision::Update(l) => l,
            other => panic!("expected a write, got {other:?}"),
        }
    }

    fn holder(l: &Lease) -> &str {
        l.spec.as_ref().unwrap().holder_identity.as_deref().unwrap()
    }

    #[test]
    fn absent_lease_is_created_then_renewed_keeping_acquire_time_and_transitions() {
        let mut a = election("a_1");
        let t0 = Instant::now();
        let w0 = Timestamp::from_second(1_800_000_000).unwrap();
        let created = body(a.decide(None, t0, w0));
        assert_eq!(holder(&created), "a_1");
        assert_eq!(
            created.spec.as_ref().unwrap().lease_duration_seconds,
            Some(15)
        );
        assert_eq!(created.spec.as_ref().unwrap().lease_transitions, Some(0));
        let v1 = stored(&created, 10);
        a.written(&v1, t0);
        let w1 = Timestamp::from_second(1_800_000_003).unwrap();
        let renewed = body(a.decide(Some(&v1), t0 + Duration::from_secs(3), w1));
        let spec = renewed.spec.as_ref().unwrap();
        assert_eq!(renewed.metadata.resource_version.as_deref(), Some("10"));
        assert_eq!(spec.acquire_time, Some(MicroTime(w0)));
        assert_eq!(spec.renew_time, Some(MicroTime(w1)));
        assert_eq!(spec.lease_transitions, Some(0));
    }

    #[test]
    fn a_follower_counts_expiry_from_when_it_saw_the_change_not_from_renew_time() {
        let mut a = election("a_1");
        let mut b = election("b_2");
        let t0 = Instant::now();
        // a's renewTime says 1970: a follower comparing it with its wall clock would take over.
        let ancient = Timestamp::from_second(0).unwrap();
        let v1 = stored(&body(a.decide(None, t0, ancient)), 10);
        // b first sees it 5s later: the lease runs 15s from *then*.
        let seen = t0 + Duration::from_secs(5);
        match b.decide(Some(&v1), seen, Timestamp::now()) {
            Decision::Wait { holder, again_in } => {
                assert_eq!(holder.as_deref(), Some("a_1"));
                assert_eq!(again_in, Duration::from_secs(3), "one retry period");
            }
            other => panic!("{other:?}"),
        }
        // The same version seen again does not restart the count.
        let just_before = seen + Duration::from_millis(14_999);
        match b.decide(Some(&v1), just_before, Timestamp::now()) {
            Decision::Wait { again_in, .. } => assert_eq!(again_in, Duration::from_millis(1)),
            other => panic!("{other:?}"),
        }
        let taken = body(b.decide(Some(&v1), seen + Duration::from_secs(15), Timestamp::now()));
        let spec = taken.spec.as_ref().unwrap();
        assert_eq!(holder(&taken), "b_2");
        assert_eq!(spec.lease_transitions, Some(1));
        assert_eq!(taken.metadata.resource_version.as_deref(), Some("10"));
    }

    #[test]
    fn a_renewal_seen_restarts_the_followers_count() {
        let mut a = election("a_1");
        let mut b = election("b_2");
        let t0 = Instant::now();
        let v1 = stored(&body(a.decide(None, t0, Timestamp::now())), 10);
        assert!(matches!(
            b.decide(Some(&v1), t0, Timestamp::now()),
            Decision::Wait { .. }
        ));
        a.written(&v1, t0);
        let v2 = stored(
            &body(a.decide(Some(&v1), t0 + Duration::from_secs(12), Timestamp::now())),
            11,
        );
        // 15s after b first saw a's lease, but a renewed at 12s and b saw that at 13s.
        assert!(matches!(
            b.decide(Some(&v2), t0 + Duration::from_secs(13), Timestamp::now()),
            Decision::Wait { .. }
        ));
        assert!(matches!(
            b.decide(Some(&v2), t0 + Duration::from_secs(20), Timestamp::now()),
            Decision::Wait { .. }
        ));
        assert!(matches!(
            b.decide(Some(&v2), t0 + Duration::from_secs(28), Timestamp::now()),
            Decision::Update(_)
        ));
    }

    #[test]
    fn a_released_lease_is_taken_at_once() {
        let mut b = election("b_2");
        let mut free = Lease::default();
        free.metadata.resource_version = Some("7".into());
        free.spec = Some(LeaseSpec {
            holder_identity: Some(String::new()),
            lease_transitions: Some(4),
            ..LeaseSpec::default()
        });
        let taken = body(b.decide(Some(&free), Instant::now(), Timestamp::now()));
        assert_eq!(taken.spec.unwrap().lease_transitions, Some(5));
    }
}
