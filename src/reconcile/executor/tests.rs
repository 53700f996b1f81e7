//! The executor's rules against a scripted runner: batching, the one-at-a-time steps, backoff, and the
//! error policy (a refusal is `Blocked` on the first try; anything else backs off, then `Failed`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use super::*;
use crate::plan::Step;
use crate::proxmox::ProxmoxError;
use crate::reconcile::backoff::BackoffPolicy;
use crate::reconcile::error::ConfigRefused;
use crate::secrets::SecretsError;
use crate::spec::{Role, Vmid};
use crate::talos::grpc::TalosError;

/// What the fake answers for one run of a step.
#[derive(Clone, Copy, Debug)]
enum Answer {
    Done,
    Wait,
    ForeignVm,
    Shrink,
    UuidMismatch,
    MissingPrivilege,
    InvalidArgumentInMaintenance,
    Locked,
    FailedPrecondition,
}

impl Answer {
    fn result(self) -> StepResult {
        let addr = std::net::SocketAddr::from(([10, 0, 0, 11], 50000));
        match self {
            Answer::Done => Ok(Flow::Done),
            Answer::Wait => Ok(Flow::Wait("booting".into())),
            Answer::ForeignVm => Err(ProxmoxError::Foreign {
                vmid: 401,
                reason: "it has no kiln tags".into(),
            }
            .into()),
            Answer::Shrink => Err(ProxmoxError::ShrinkRefused {
                vmid: 401,
                disk: "scsi0".into(),
                have: 40 << 30,
                want: 20 << 30,
            }
            .into()),
            Answer::UuidMismatch => Err(TalosError::UuidMismatch {
                addr,
                expected: "vm".into(),
                found: "other".into(),
            }
            .into()),
            Answer::MissingPrivilege => Err(SecretsError::Auth {
                path: "kv/kiln/a".into(),
                message: "permission denied".into(),
            }
            .into()),
            Answer::InvalidArgumentInMaintenance => Err(ConfigRefused {
                node: "a-cp-1".into(),
                running: "v1.11.6".into(),
                reason: "Kubernetes 1.35 is not supported".into(),
                advice: String::new(),
                source: TalosError::test_reply("InvalidArgument", "k8s 1.35 unsupported"),
            }
            .into()),
            Answer::Locked => Err(ProxmoxError::Locked {
                vmid: 401,
                lock: "clone".into(),
            }
            .into()),
            Answer::FailedPrecondition => Err(TalosError::test_reply(
                "FailedPrecondition",
                "bootstrap is not available yet",
            )
            .into()),
        }
    }
}

#[derive(Default)]
struct Fake {
    /// Per action key, the answers of its next runs (then `Done`).
    script: BTreeMap<String, VecDeque<Answer>>,
    batches: Vec<Vec<String>>,
}

impl Fake {
    fn answer(mut self, action: &Action, answers: &[Answer]) -> Self {
        self.script
            .insert(action_key(action), answers.iter().copied().collect());
        self
    }

    fn runs(&self, action: &Action) -> usize {
        let key = action_key(action);
        self.batches.iter().flatten().filter(|k| **k == key).count()
    }
}

impl StepRunner for Fake {
    async fn run_batch(&mut self, batch: &[Action]) -> Vec<StepResult> {
        self.batches.push(batch.iter().map(action_key).collect());
        batch
            .iter()
            .map(|a| {
                self.script
                    .get_mut(&action_key(a))
                    .and_then(VecDeque::pop_front)
                    .unwrap_or(Answer::Done)
                    .result()
            })
            .collect()
    }
}

fn vmid(n: u64) -> Vmid {
    Vmid::new(n).unwrap()
}

fn create(n: u32) -> Action {
    Action::CreateVm {
        number: n,
        role: Role::ControlPlane,
        vmid: vmid(400 + u64::from(n)),
        name: format!("a-cp-{n}"),
        pve_node: "pve1".into(),
        template: vmid(9000),
    }
}

fn apply(n: u32) -> Action {
    Action::ApplyConfig {
        number: n,
        name: format!("a-cp-{n}"),
    }
}

fn resize(n: u32) -> Action {
    Action::ResizeVm {
        number: n,
        vmid: vmid(400 + u64::from(n)),
        name: format!("a-cp-{n}"),
        role: Role::ControlPlane,
        cores: Some((2, 4)),
        memory_mib: None,
        disk_gib: None,
    }
}

fn remove(n: u32) -> Action {
    Action::RemoveNode {
        number: n,
        role: Role::ControlPlane,
        vmid: vmid(400 + u64::from(n)),
        name: format!("a-cp-{n}"),
    }
}

fn bootstrap() -> Action {
    Action::Bootstrap {
        number: 1,
        name: "a-cp-1".into(),
    }
}

fn steps(actions: &[Action]) -> Vec<Step> {
    actions
        .iter()
        .map(|a| Step {
            action: a.clone(),
            reason: "test".into(),
        })
        .collect()
}

/// The engine's shared state for one test: backoff without delay unless asked, no shutdown.
struct World {
    backoff: Mutex<Backoff>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    _tx: tokio::sync::watch::Sender<bool>,
}

impl World {
    fn new(initial: Duration) -> Self {
        let (tx, rx) = tokio::sync::watch::channel(false);
        Self {
            backoff: Mutex::new(Backoff::new(BackoffPolicy {
                initial,
                max: initial,
                jitter: 0.0,
            })),
            shutdown: rx,
            _tx: tx,
        }
    }

    fn executor(&self, max_failures: u32) -> Executor<'_> {
        Executor {
            cluster: "a",
            revision: "r1",
            backoff: &self.backoff,
            shutdown: &self.shutdown,
            max_failures,
        }
    }
}

#[tokio::test]
async fn creation_and_maintenance_configs_batch_while_reboots_and_removals_go_one_at_a_time() {
    let world = World::new(Duration::ZERO);
    let plan = steps(&[
        Action::GenerateSecrets,
        create(1),
        create(2),
        Action::FinishVm {
            number: 3,
            vmid: vmid(403),
        },
        apply(1),
        apply(2),
        bootstrap(),
        resize(1),
        resize(2),
        remove(3),
        remove(4),
    ]);
    let mut fake = Fake::default();
    let ended = world.executor(3).execute(&mut fake, &plan).await;
    assert!(matches!(ended, Execution::Complete), "{ended:?}");
    let sizes: Vec<usize> = fake.batches.iter().map(Vec::len).collect();
    assert_eq!(sizes, [1, 3, 2, 1, 1, 1, 1, 1], "{:?}", fake.batches);
    assert_eq!(
        fake.batches[1],
        ["create-vm 401", "create-vm 402", "finish-vm 403"]
    );
    assert_eq!(
        fake.batches[2],
        ["apply-config a-cp-1", "apply-config a-cp-2"]
    );
}

/// DESIGN §7: a foreign VM, a refused shrink, a uuid mismatch, a missing privilege and an
/// `InvalidArgument` from a maintenance apply are `Blocked` on the first try, with the cause, and
/// the step is not run again for the same intent revision.
#[tokio::test]
async fn refusals_are_blocked_on_the_first_try_and_not_run_again() {
    let cases = [
        (
            create(1),
            Answer::ForeignVm,
            Refusal::ForeignVm,
            "no kiln tags",
        ),
        (
            resize(1),
            Answer::Shrink,
            Refusal::RefusedShrink,
            "disks only grow",
        ),
        (
            apply(1),
            Answer::UuidMismatch,
            Refusal::UuidMismatch,
            "does not match",
        ),
        (
            Action::GenerateSecrets,
            Answer::MissingPrivilege,
            Refusal::MissingPrivilege,
            "denied",
        ),
        (
            apply(1),
            Answer::InvalidArgumentInMaintenance,
            Refusal::ConfigRefused,
            "runs Talos v1.11.6",
        ),
    ];
    for (action, answer, refusal, cause) in cases {
        let world = World::new(Duration::ZERO);
        let plan = steps(&[action.clone(), Action::WaitHealthy]);
        let mut fake = Fake::default().answer(&action, &[answer]);
        for attempt in 1..=2 {
            match world.executor(5).execute(&mut fake, &plan).await {
                Execution::Blocked {
                    action: a,
                    refusal: r,
                    why,
                } => {
                    assert_eq!(a, action);
                    assert_eq!(r, refusal, "attempt {attempt}");
                    assert!(why.contains(cause), "{why}");
                }
                other => panic!("{answer:?}, attempt {attempt}: {other:?}"),
            }
        }
        assert_eq!(fake.runs(&action), 1, "{answer:?} ran again");
        assert_eq!(fake.runs(&Action::WaitHealthy), 0);
        let failures = world.backoff.lock().unwrap().failures(&RetryKey {
            cluster: "a".into(),
            intent_revision: "r1".into(),
            action: action_key(&action),
        });
        assert_eq!(failures, 0, "a refusal is not a failure to count");
    }
}

/// A lock or a `FailedPrecondition` backs off, runs again only after the delay, and turns `Failed`
/// at `max_failures` in a row.
#[tokio::test]
async fn passing_troubles_back_off_then_fail() {
    for answer in [Answer::Locked, Answer::FailedPrecondition] {
        let world = World::new(Duration::ZERO);
        let action = create(1);
        let plan = steps(std::slice::from_ref(&action));
        let mut fake = Fake::default().answer(&action, &[answer; 3]);
        for failures in 1..=2 {
            match world.executor(3).execute(&mut fake, &plan).await {
                Execution::BackingOff { failures: f, .. } => assert_eq!(f, failures),
                other => panic!("{answer:?}: {other:?}"),
            }
        }
        match world.executor(3).execute(&mut fake, &plan).await {
            Execution::Failed {
                failures, error, ..
            } => {
                assert_eq!(failures, 3);
                assert!(!error.is_empty());
            }
            other => panic!("{answer:?}: {other:?}"),
        }
        // The script is spent: the next run succeeds and clears the count.
        let ended = world.executor(3).execute(&mut fake, &plan).await;
        assert!(matches!(ended, Execution::Complete), "{ended:?}");
        assert_eq!(fake.runs(&action), 4);
    }
}

#[tokio::test]
async fn a_step_backing_off_is_not_run_before_its_time() {
    let world = World::new(Duration::from_secs(3600));
    let action = create(1);
    let plan = steps(std::slice::from_ref(&action));
    let mut fake = Fake::default().answer(&action, &[Answer::Locked]);
    let first = world.executor(5).execute(&mut fake, &plan).await;
    let Execution::BackingOff { until, .. } = first else {
        panic!("{first:?}");
    };
    assert!(until > Instant::now() + Duration::from_secs(3000));
    let second = world.executor(5).execute(&mut fake, &plan).await;
    assert!(
        matches!(second, Execution::BackingOff { failures: 1, .. }),
        "{second:?}"
    );
    assert_eq!(fake.runs(&action), 1, "it ran during its backoff");
}

#[tokio::test]
async fn a_refusal_in_a_batch_outranks_a_failure_and_a_wait() {
    let world = World::new(Duration::ZERO);
    let plan = steps(&[apply(1), apply(2), apply(3), bootstrap()]);
    let mut fake = Fake::default()
        .answer(&apply(1), &[Answer::Wait])
        .answer(&apply(2), &[Answer::Locked])
        .answer(&apply(3), &[Answer::UuidMismatch]);
    let ended = world.executor(5).execute(&mut fake, &plan).await;
    assert!(
        matches!(&ended, Execution::Blocked { action, .. } if *action == apply(3)),
        "{ended:?}"
    );
    assert_eq!(fake.runs(&bootstrap()), 0);
}

#[tokio::test]
async fn a_wait_stops_the_run_without_counting_a_failure() {
    let world = World::new(Duration::ZERO);
    let plan = steps(&[apply(1), bootstrap()]);
    let mut fake = Fake::default().answer(&apply(1), &[Answer::Wait]);
    let ended = world.executor(1).execute(&mut fake, &plan).await;
    assert!(matches!(ended, Execution::Waiting { .. }), "{ended:?}");
    assert_eq!(fake.runs(&bootstrap()), 0);
    let ended = world.executor(1).execute(&mut fake, &plan).await;
    assert!(matches!(ended, Execution::Complete), "{ended:?}");
}

#[tokio::test]
async fn shutdown_stops_before_the_next_batch() {
    let world = World::new(Duration::ZERO);
    world._tx.send(true).unwrap();
    let mut fake = Fake::default();
    let ended = world
        .executor(3)
        .execute(&mut fake, &steps(&[create(1)]))
        .await;
    assert!(matches!(ended, Execution::Interrupted), "{ended:?}");
    assert!(fake.batches.is_empty());
}
