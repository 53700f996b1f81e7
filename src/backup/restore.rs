//! Restoring a cluster's etcd from a snapshot, the way Talos recovers etcd ("Disaster Recovery" in
//! Talos's docs; the calls in `internal/app/machined/internal/server/v1alpha1/v1alpha1_server.go`
//! and `internal/app/machined/pkg/system/services/etcd.go`, v1.13.9):
//!
//! 1. every control plane is Reset, not gracefully, wiping only EPHEMERAL (etcd's data lives in
//!    `/var/lib/etcd`), and reboots with its config (STATE) intact; a control plane left with its
//!    data would keep the old cluster's members and revision alive beside the restored one;
//! 2. their etcd services come back empty and wait in `Preparing` ("etcd is waiting to join the
//!    cluster", as nothing is there to join);
//! 3. one control plane receives the snapshot (`EtcdRecover`, written to `/var/lib/etcd.snapshot`);
//! 4. `Bootstrap { recover_etcd: true }` there: Talos restores the snapshot (`etcdutl snapshot
//!    restore`, the SHA-256 trailer checked) into a new one-member cluster at the snapshot's revision;
//! 5. the other control planes join it as they do any running cluster. Workers are not touched.
//!
//! [`RestorePlan`] is that flow as a value the operator reads before anything happens;
//! [`execute`] runs it over [`TalosPort`].

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest as _, Sha256};

use super::bbolt::{SnapshotCheck, SnapshotFacts};
use crate::talos::grpc::{
    BootstrapOutcome, ClientIdentity, TalosError, TalosNode, TalosPort, UploadStream,
};

/// One node of the cluster, as the plan names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanNode {
    pub name: String,
    pub ip: IpAddr,
}

impl fmt::Display for PlanNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.ip)
    }
}

/// What a restore will do, decided before it does anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestorePlan {
    pub cluster: String,
    /// The snapshot's id (its file name without `.db.age`).
    pub snapshot: String,
    /// The revision read from the snapshot: etcd comes back at it.
    pub revision: i64,
    /// The control plane that receives the snapshot and bootstraps from it.
    pub receiver: PlanNode,
    /// Every control plane, the receiver first.
    pub control_planes: Vec<PlanNode>,
    /// Left alone: their kubelets reconnect once the API is back.
    pub workers: Vec<PlanNode>,
}

/// The steps of a plan, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestoreStep {
    /// Every control plane answers before any is wiped: a half-wiped cluster is worse than none.
    Preflight,
    /// Reset (not graceful) wiping EPHEMERAL, then reboot.
    Wipe(PlanNode),
    /// Until its etcd waits in `Preparing`, empty.
    AwaitEmptyEtcd(PlanNode),
    Upload(PlanNode),
    Bootstrap(PlanNode),
    /// Until etcd runs on the receiver and every control plane is a voting member again.
    AwaitMembers,
}

impl fmt::Display for RestoreStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestoreStep::Preflight => write!(f, "check that every control plane answers"),
            RestoreStep::Wipe(n) => write!(
                f,
                "reset {n}: wipe EPHEMERAL (etcd's data), keep its config, reboot"
            ),
            RestoreStep::AwaitEmptyEtcd(n) => {
                write!(f, "wait until {n}'s etcd waits in Preparing, empty")
            }
            RestoreStep::Upload(n) => write!(f, "upload the snapshot to {n} (EtcdRecover)"),
            RestoreStep::Bootstrap(n) => {
                write!(f, "bootstrap etcd on {n} from the snapshot (recover_etcd)")
            }
            RestoreStep::AwaitMembers => write!(
                f,
                "wait until etcd runs and every control plane has joined back"
            ),
        }
    }
}

/// Why a restore cannot be planned or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("cluster {0} has no control plane to restore etcd on")]
    NoControlPlane(String),
    #[error("{receiver} is not a control plane of cluster {cluster}")]
    NotAControlPlane { cluster: String, receiver: IpAddr },
    #[error("{step}: {node}: {source}")]
    Talos {
        step: String,
        node: String,
        #[source]
        source: Box<TalosError>,
    },
    #[error("{node}: etcd failed to start from the snapshot: {message}")]
    EtcdFailed { node: String, message: String },
    #[error("the snapshot is not the one its manifest describes: {0}")]
    Snapshot(String),
    #[error("{step}: not done after {after:?}: {last}")]
    Timeout {
        step: String,
        after: Duration,
        last: String,
    },
}

impl RestorePlan {
    /// The plan for a cluster's nodes. `receiver` picks the control plane that gets the snapshot;
    /// by default the first.
    pub fn new(
        cluster: &str,
        snapshot: &str,
        revision: i64,
        control_planes: Vec<PlanNode>,
        workers: Vec<PlanNode>,
        receiver: Option<IpAddr>,
    ) -> Result<Self, RestoreError> {
        let mut control_planes = control_planes;
        let at = match receiver {
            None => 0,
            Some(ip) => control_planes
                .iter()
                .position(|n| n.ip == ip)
                .ok_or_else(|| RestoreError::NotAControlPlane {
                    cluster: cluster.to_owned(),
                    receiver: ip,
                })?,
        };
        if control_planes.is_empty() {
            return Err(RestoreError::NoControlPlane(cluster.to_owned()));
        }
        let receiver = control_planes.remove(at);
        control_planes.insert(0, receiver.clone());
        Ok(Self {
            cluster: cluster.to_owned(),
            snapshot: snapshot.to_owned(),
            revision,
            receiver,
            control_planes,
            workers,
        })
    }

    pub fn steps(&self) -> Vec<RestoreStep> {
        let mut steps = vec![RestoreStep::Preflight];
        steps.extend(self.control_planes.iter().cloned().map(RestoreStep::Wipe));
        steps.extend(
            self.control_planes
                .iter()
                .cloned()
                .map(RestoreStep::AwaitEmptyEtcd),
        );
        steps.push(RestoreStep::Upload(self.receiver.clone()));
        steps.push(RestoreStep::Bootstrap(self.receiver.clone()));
        steps.push(RestoreStep::AwaitMembers);
        steps
    }
}

impl fmt::Display for RestorePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Restore etcd of cluster {} from snapshot {} (revision {}):",
            self.cluster, self.snapshot, self.revision
        )?;
        for (i, step) in self.steps().iter().enumerate() {
            writeln!(f, "  {}. {step}", i + 1)?;
        }
        writeln!(
            f,
            "EPHEMERAL is wiped on EVERY control plane ({}): what etcd holds now is lost, and etcd \
             comes back at revision {} with {} as its only member until the others join.",
            self.control_planes.len(),
            self.revision,
            self.receiver
        )?;
        if self.workers.is_empty() {
            writeln!(f, "The cluster has no workers.")
        } else {
            let names: Vec<String> = self.workers.iter().map(ToString::to_string).collect();
            writeln!(f, "Workers untouched: {}.", names.join(", "))
        }
    }
}

/// How long the executor waits for each wait step, and how often it looks.
#[derive(Clone, Copy, Debug)]
pub struct RestoreTiming {
    pub wait: Duration,
    pub poll: Duration,
}

impl Default for RestoreTiming {
    fn default() -> Self {
        Self {
            // A reboot of a real node and etcd's restore of a large database take minutes.
            wait: Duration::from_secs(15 * 60),
            poll: Duration::from_secs(2),
        }
    }
}

/// Runs the plan. `snapshot` is the plaintext database (with its trailer), streamed to the
/// receiver; `progress` hears each step as it starts.
pub async fn execute(
    plan: &RestorePlan,
    talos: &dyn TalosPort,
    identity: &ClientIdentity,
    snapshot: UploadStream,
    timing: RestoreTiming,
    progress: &mut (dyn FnMut(&RestoreStep) + Send),
) -> Result<(), RestoreError> {
    let talos_err = |step: &RestoreStep, node: &PlanNode| {
        let (step, node) = (step.to_string(), node.to_string());
        move |source| RestoreError::Talos {
            step,
            node,
            source: Box::new(source),
        }
    };
    let mut snapshot = Some(snapshot);
    for step in plan.steps() {
        progress(&step);
        match &step {
            RestoreStep::Preflight => {
                for n in &plan.control_planes {
                    let node = talos
                        .connect(n.ip, identity)
                        .await
                        .map_err(talos_err(&step, n))?;
                    node.services().await.map_err(talos_err(&step, n))?;
                }
            }
            RestoreStep::Wipe(n) => {
                let node = talos
                    .connect(n.ip, identity)
                    .await
                    .map_err(talos_err(&step, n))?;
                node.reset_ephemeral().await.map_err(talos_err(&step, n))?;
            }
            RestoreStep::AwaitEmptyEtcd(n) => {
                wait_for(&step, timing, || async {
                    let node = talos
                        .connect(n.ip, identity)
                        .await
                        .map_err(|e| e.to_string())?;
                    let (state, _) = etcd_service(&*node).await.map_err(|e| e.to_string())?;
                    if state == "Preparing" {
                        Ok(Some(()))
                    } else {
                        Err(format!("{n}: etcd is {state}"))
                    }
                })
                .await?;
            }
            RestoreStep::Upload(n) => {
                let node = talos
                    .connect(n.ip, identity)
                    .await
                    .map_err(talos_err(&step, n))?;
                let upload = snapshot.take().expect("one upload step");
                node.etcd_recover(upload)
                    .await
                    .map_err(talos_err(&step, n))?;
            }
            RestoreStep::Bootstrap(n) => {
                let node = talos
                    .connect(n.ip, identity)
                    .await
                    .map_err(talos_err(&step, n))?;
                match node
                    .bootstrap_recover()
                    .await
                    .map_err(talos_err(&step, n))?
                {
                    BootstrapOutcome::Bootstrapped => {}
                    BootstrapOutcome::AlreadyBootstrapped => {
                        return Err(RestoreError::EtcdFailed {
                            node: n.to_string(),
                            message: "etcd data directory is not empty: the wipe did not happen"
                                .into(),
                        });
                    }
                }
            }
            RestoreStep::AwaitMembers => {
                let receiver = &plan.receiver;
                let wanted = plan.control_planes.len();
                wait_for(&step, timing, || async {
                    let node = talos
                        .connect(receiver.ip, identity)
                        .await
                        .map_err(|e| e.to_string())?;
                    let (state, message) = etcd_service(&*node).await.map_err(|e| e.to_string())?;
                    if state == "Failed" {
                        return Ok(Some(Err(RestoreError::EtcdFailed {
                            node: receiver.to_string(),
                            message,
                        })));
                    }
                    if state != "Running" {
                        return Err(format!("{receiver}: etcd is {state}"));
                    }
                    let members = node.etcd_members().await.map_err(|e| e.to_string())?;
                    let voting = members.iter().filter(|m| !m.is_learner).count();
                    if voting < wanted {
                        return Err(format!(
                            "{voting} of {wanted} control planes are voting members"
                        ));
                    }
                    Ok(Some(Ok(())))
                })
                .await??;
            }
        }
    }
    Ok(())
}

/// The etcd service's state and last message (`ServiceList`).
async fn etcd_service(node: &dyn TalosNode) -> Result<(String, String), TalosError> {
    let services = node.services().await?;
    Ok(services
        .into_iter()
        .find(|s| s.id == "etcd")
        .map(|s| {
            let message = s.health.map(|h| h.last_message).unwrap_or_default();
            (s.state, message)
        })
        .unwrap_or_else(|| ("absent".to_owned(), String::new())))
}

/// Polls `probe` until it yields a value; `Err(why)` and `Ok(None)` mean "not yet" (the last why is
/// reported on timeout). Nodes reboot under the restore, so an unreachable node is "not yet" too.
async fn wait_for<T, F, Fut>(
    step: &RestoreStep,
    timing: RestoreTiming,
    mut probe: F,
) -> Result<T, RestoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, String>>,
{
    let deadline = tokio::time::Instant::now() + timing.wait;
    let mut last = String::from("no answer yet");
    loop {
        match probe().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(why) => last = why,
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(RestoreError::Timeout {
                step: step.to_string(),
                after: timing.wait,
                last,
            });
        }
        crate::systemd::progress();
        tokio::time::sleep(timing.poll).await;
    }
}

/// What the manifest says the decrypted snapshot is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    /// Lowercase hex.
    pub sha256: String,
    pub size: u64,
    pub revision: i64,
}

/// Hash, size and database check of a plaintext stream, fed as it passes.
struct Verifier {
    hasher: Sha256,
    size: u64,
    check: SnapshotCheck,
}

impl Verifier {
    fn new() -> Self {
        Self {
            hasher: Sha256::new(),
            size: 0,
            check: SnapshotCheck::new(),
        }
    }

    fn feed(&mut self, chunk: &[u8]) -> Result<(), String> {
        self.hasher.update(chunk);
        self.size += chunk.len() as u64;
        self.check.feed(chunk).map_err(|e| e.to_string())
    }

    fn finish(self, expected: &Expected) -> Result<SnapshotFacts, String> {
        let sha = hex::encode(self.hasher.finalize());
        if self.size != expected.size || sha != expected.sha256 {
            return Err(format!(
                "{} bytes with SHA-256 {sha}, where the manifest says {} bytes with {}",
                self.size, expected.size, expected.sha256
            ));
        }
        let facts = self.check.finish().map_err(|e| e.to_string())?;
        if facts.revision != expected.revision {
            return Err(format!(
                "the database is at revision {}, the manifest says {}",
                facts.revision, expected.revision
            ));
        }
        Ok(facts)
    }
}

/// Reads a decrypted snapshot to its end, holding none of it: its size and SHA-256 must be the
/// manifest's, and it must be etcd's database at the manifest's revision. Run before any node is
/// touched.
pub async fn verify_plaintext<S, E>(
    stream: S,
    expected: &Expected,
) -> Result<SnapshotFacts, RestoreError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: fmt::Display,
{
    let mut stream = stream;
    let mut v = Verifier::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| RestoreError::Snapshot(e.to_string()))?;
        v.feed(&chunk).map_err(RestoreError::Snapshot)?;
    }
    v.finish(expected).map_err(RestoreError::Snapshot)
}

/// The upload's source: the decrypted snapshot passed on chunk by chunk while checked again; if
/// it is not what [`verify_plaintext`] saw (a destination that changed in between), the stream
/// ends with an error instead of its end, which cancels the upload before Talos holds it whole.
pub fn checked_upload<S, E>(stream: S, expected: Expected) -> UploadStream
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
    E: fmt::Display,
{
    let state = (stream, Some(Verifier::new()), expected);
    Box::pin(futures::stream::unfold(
        state,
        |(mut stream, verifier, expected)| async move {
            let mut v = verifier?;
            match stream.next().await {
                Some(Ok(chunk)) => match v.feed(&chunk) {
                    Ok(()) => Some((Ok(chunk), (stream, Some(v), expected))),
                    Err(e) => Some((Err(std::io::Error::other(e)), (stream, None, expected))),
                },
                Some(Err(e)) => Some((
                    Err(std::io::Error::other(e.to_string())),
                    (stream, None, expected),
                )),
                None => match v.finish(&expected) {
                    Ok(_) => None,
                    Err(e) => Some((Err(std::io::Error::other(e)), (stream, None, expected))),
                },
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(name: &str, last: u8) -> PlanNode {
        PlanNode {
            name: name.into(),
            ip: IpAddr::from([10, 0, 0, last]),
        }
    }

    #[test]
    fn the_plan_wipes_every_control_plane_and_names_the_untouched_workers() {
        let plan = RestorePlan::new(
            "prod",
            "20261205T050000Z-4242",
            4242,
            vec![n("cp-1", 1), n("cp-2", 2), n("cp-3", 3)],
            vec![n("w-1", 11)],
            Some(IpAddr::from([10, 0, 0, 2])),
        )
        .unwrap();
        assert_eq!(plan.receiver, n("cp-2", 2));
        let steps = plan.steps();
        let wiped: Vec<_> = steps
            .iter()
            .filter_map(|s| match s {
                RestoreStep::Wipe(n) => Some(n.name.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(wiped, ["cp-2", "cp-1", "cp-3"]);
        assert_eq!(steps[0], RestoreStep::Preflight);
        let upload = steps
            .iter()
            .position(|s| matches!(s, RestoreStep::Upload(_)))
            .unwrap();
        let last_wait = steps
            .iter()
            .rposition(|s| matches!(s, RestoreStep::AwaitEmptyEtcd(_)))
            .unwrap();
        assert!(last_wait < upload, "every etcd is empty before the upload");
        let text = plan.to_string();
        assert!(
            text.contains("EPHEMERAL is wiped on EVERY control plane (3)"),
            "{text}"
        );
        assert!(text.contains("revision 4242"), "{text}");
        assert!(
            text.contains("Workers untouched: w-1 (10.0.0.11)"),
            "{text}"
        );
        assert!(!text.contains("reset w-1"), "{text}");
    }

    fn expected_for(snapshot: &[u8], revision: i64) -> Expected {
        Expected {
            sha256: hex::encode(Sha256::digest(snapshot)),
            size: snapshot.len() as u64,
            revision,
        }
    }

    fn stream_of(
        bytes: &[u8],
    ) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + Unpin + 'static {
        futures::stream::iter(
            bytes
                .chunks(1000)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn the_plaintext_must_be_the_manifests_database() {
        let snap = crate::backup::bbolt::EtcdDbBuilder::new(77).build();
        let good = expected_for(&snap, 77);
        let facts = verify_plaintext(stream_of(&snap), &good).await.unwrap();
        assert_eq!(facts.revision, 77);
        let wrong_rev = Expected {
            revision: 78,
            ..good.clone()
        };
        let err = verify_plaintext(stream_of(&snap), &wrong_rev)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("revision 77"), "{err}");
        let err = verify_plaintext(stream_of(&snap[..snap.len() - 1]), &good)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("manifest says"), "{err}");
    }

    #[tokio::test]
    async fn an_upload_that_differs_from_its_manifest_ends_in_an_error_not_its_end() {
        let snap = crate::backup::bbolt::EtcdDbBuilder::new(77).build();
        let good = expected_for(&snap, 77);
        let mut passed = Vec::new();
        let mut upload = checked_upload(stream_of(&snap), good.clone());
        while let Some(chunk) = upload.next().await {
            passed.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(passed, snap);

        let mut other = snap.clone();
        let at = other.len() / 2;
        other[at] ^= 1;
        let mut upload = checked_upload(stream_of(&other), good);
        let mut last = None;
        while let Some(chunk) = upload.next().await {
            last = Some(chunk);
        }
        assert!(
            matches!(last, Some(Err(_))),
            "the stream must end in an error"
        );
    }

    #[test]
    fn a_plan_needs_a_control_plane_and_a_receiver_among_them() {
        assert!(matches!(
            RestorePlan::new("c", "s", 1, vec![], vec![n("w", 9)], None),
            Err(RestoreError::NoControlPlane(_))
        ));
        assert!(matches!(
            RestorePlan::new(
                "c",
                "s",
                1,
                vec![n("cp", 1)],
                vec![n("w", 9)],
                Some(IpAddr::from([10, 0, 0, 9]))
            ),
            Err(RestoreError::NotAControlPlane { .. })
        ));
    }
}
