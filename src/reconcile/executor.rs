//! Runs a plan's steps in order for one cluster: which steps go side by side, when a failed step may
//! run again (capped backoff keyed on the intent revision and the action), and what a failure means
//! (the error policy of `error`: a refusal is `Blocked` at once, anything else backs off until
//! `max_failures` in a row make it `Failed`). Generic over the step runner, so these rules are tested
//! without any system behind them.

use std::future::Future;
use std::sync::Mutex;
use std::time::Instant;

use super::backoff::{Backoff, RetryKey};
use super::error::{Refusal, TurnError, Verdict, verdict};
use crate::plan::{Action, Step};

/// How a step that did not fail ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flow {
    Done,
    /// A machine is not there yet (booting, API not up): look again soon, no failure counted.
    Wait(String),
}

pub type StepResult = Result<Flow, TurnError>;

/// What runs the steps (a cluster's turn; a scripted fake in tests).
pub trait StepRunner {
    /// Runs `batch` side by side; one result per step, in the batch's order.
    fn run_batch(&mut self, batch: &[Action]) -> impl Future<Output = Vec<StepResult>> + Send;
}

/// The backoff key of an action: the action and its target, stable across cycles.
pub fn action_key(a: &Action) -> String {
    match a {
        Action::GenerateSecrets => "generate-secrets".into(),
        Action::CreateVm { vmid, .. } => format!("create-vm {vmid}"),
        Action::FinishVm { vmid, .. } => format!("finish-vm {vmid}"),
        Action::StartVm { vmid, .. } => format!("start-vm {vmid}"),
        Action::ResizeVm { vmid, .. } => format!("resize-vm {vmid}"),
        Action::ApplyConfig { name, .. } => format!("apply-config {name}"),
        Action::UpdateConfig { name, .. } => format!("update-config {name}"),
        Action::Bootstrap { name, .. } => format!("bootstrap {name}"),
        Action::JoinControlPlane { name, .. } => format!("join-control-plane {name}"),
        Action::StoreCredentials => "store-credentials".into(),
        Action::WaitHealthy => "wait-healthy".into(),
        Action::Uncordon { name } => format!("uncordon {name}"),
        Action::RenewCredentials { .. } => "renew-credentials".into(),
        Action::RemoveNode { vmid, .. } => format!("remove-node {vmid}"),
        Action::DestroyVm { vmid, .. } => format!("destroy-vm {vmid}"),
        Action::RetireSecrets { .. } => "retire-secrets".into(),
        Action::UpgradeTalos { name, to, .. } => format!("upgrade-talos {name} {to}"),
        Action::UpgradeKubernetes {
            name,
            component,
            to,
            ..
        } => format!("upgrade-kubernetes {name} {component} {to}"),
        Action::SyncManifests { to } => format!("sync-manifests {to}"),
    }
}

/// Steps of the same class next to each other run side by side: VM creation (nothing runs on the
/// VMs yet), configs to nodes in maintenance (none is a member of anything yet), and destroys of a
/// decommissioned cluster. Everything else runs one at a time: a resize may reboot a node and a
/// removal leaves etcd, and two of those at once could take a control-plane quorum down.
pub fn batch_class(a: &Action) -> Option<u8> {
    match a {
        Action::CreateVm { .. } | Action::FinishVm { .. } => Some(1),
        Action::ApplyConfig { .. } => Some(2),
        Action::DestroyVm { .. } => Some(3),
        _ => None,
    }
}

/// How a step's result is counted in `kiln_actions_total` (the refusal test is `verdict`'s own).
fn action_result(r: &StepResult) -> crate::metrics::ActionResult {
    use crate::metrics::ActionResult;
    match r {
        Ok(Flow::Done) => ActionResult::Ok,
        Ok(Flow::Wait(_)) => ActionResult::Wait,
        Err(e) if e.refusal().is_some() => ActionResult::Blocked,
        Err(_) => ActionResult::Error,
    }
}

/// How a run of the steps ended.
#[derive(Debug)]
pub enum Execution {
    Complete,
    Waiting {
        action: Action,
        why: String,
    },
    /// A refusal: not run again for this intent revision.
    Blocked {
        action: Action,
        refusal: Refusal,
        why: String,
    },
    /// Failed (now or before) and may run again at `until`.
    BackingOff {
        action: Action,
        error: String,
        until: Instant,
        failures: u32,
    },
    /// The same action failed `max_failures` times in a row.
    Failed {
        action: Action,
        error: String,
        failures: u32,
    },
    /// Shutdown asked before the next batch.
    Interrupted,
}

/// The executor's view of the engine: the shared backoff, shutdown, and the limit.
pub struct Executor<'a> {
    pub cluster: &'a str,
    pub revision: &'a str,
    pub backoff: &'a Mutex<Backoff>,
    pub shutdown: &'a tokio::sync::watch::Receiver<bool>,
    pub max_failures: u32,
}

/// The backoff remembers a block as text only; the refusal's kind travels in front of it so the
/// status names the same reason on every later cycle.
const REFUSAL_SEPARATOR: char = '\u{1f}';

fn remember(refusal: Refusal, why: &str) -> String {
    format!("{}{REFUSAL_SEPARATOR}{why}", refusal.reason())
}

fn recall(stored: &str) -> (Refusal, String) {
    let (reason, why) = stored.split_once(REFUSAL_SEPARATOR).unwrap_or(("", stored));
    let refusal = Refusal::ALL
        .iter()
        .copied()
        .find(|r| r.reason() == reason)
        .unwrap_or(Refusal::NeedsAPerson);
    (refusal, why.to_owned())
}

impl Executor<'_> {
    fn key(&self, action: &Action) -> RetryKey {
        RetryKey {
            cluster: self.cluster.to_owned(),
            intent_revision: self.revision.to_owned(),
            action: action_key(action),
        }
    }

    fn backoff(&self) -> std::sync::MutexGuard<'_, Backoff> {
        // A panic while holding it leaves plain data behind: keep using it.
        self.backoff.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the backoff says about a batch before it runs: blocked, still waiting, or free to go.
    fn held(&self, batch: &[Step], keys: &[RetryKey]) -> Option<Execution> {
        let backoff = self.backoff();
        if let Some((step, stored)) = keys
            .iter()
            .zip(batch)
            .find_map(|(k, s)| backoff.blocked(k).map(|why| (s, why)))
        {
            let (refusal, why) = recall(stored);
            return Some(Execution::Blocked {
                action: step.action.clone(),
                refusal,
                why,
            });
        }
        let now = Instant::now();
        let (until, error) = keys.iter().find_map(|k| backoff.wait(k, now))?;
        let failures = keys.iter().map(|k| backoff.failures(k)).max().unwrap_or(0);
        let action = batch[0].action.clone();
        let error = error.to_owned();
        Some(if failures >= self.max_failures {
            Execution::Failed {
                action,
                error,
                failures,
            }
        } else {
            Execution::BackingOff {
                action,
                error,
                until,
                failures,
            }
        })
    }

    /// Runs `steps` in order, batches side by side; stops at the first batch that did not finish.
    pub async fn execute<R: StepRunner>(&self, runner: &mut R, steps: &[Step]) -> Execution {
        let mut i = 0;
        while i < steps.len() {
            if *self.shutdown.borrow() {
                return Execution::Interrupted;
            }
            let class = batch_class(&steps[i].action);
            let mut j = i + 1;
            while class.is_some() && j < steps.len() && batch_class(&steps[j].action) == class {
                j += 1;
            }
            let batch = &steps[i..j];
            let keys: Vec<RetryKey> = batch.iter().map(|s| self.key(&s.action)).collect();
            if let Some(held) = self.held(batch, &keys) {
                return held;
            }
            let actions: Vec<Action> = batch.iter().map(|s| s.action.clone()).collect();
            // Adapters' own retries end with the step's budget; this executor's backoff is the one
            // that waits longer (crate::retry).
            let results =
                crate::retry::with_budget(crate::retry::STEP_BUDGET, runner.run_batch(&actions))
                    .await;
            if let Some(stop) = self.settle(batch, keys, results) {
                return stop;
            }
            i = j;
        }
        Execution::Complete
    }

    /// Books a batch's results in the backoff; a refusal outranks a failure, which outranks a wait.
    fn settle(
        &self,
        batch: &[Step],
        keys: Vec<RetryKey>,
        results: Vec<StepResult>,
    ) -> Option<Execution> {
        let mut waiting = None;
        let mut failed = None;
        let mut blocked = None;
        let mut backoff = self.backoff();
        for (key, (step, r)) in keys.into_iter().zip(batch.iter().zip(results)) {
            crate::metrics::global().action(&step.action, action_result(&r));
            match r {
                Ok(Flow::Done) => backoff.succeeded(&key),
                Ok(Flow::Wait(why)) => {
                    backoff.succeeded(&key);
                    waiting.get_or_insert(Execution::Waiting {
                        action: step.action.clone(),
                        why,
                    });
                }
                Err(e) => {
                    let error = e.report();
                    let failures = backoff.failures(&key) + 1;
                    match verdict(&e, failures, self.max_failures) {
                        Verdict::Blocked(refusal) => {
                            tracing::warn!(cluster = %self.cluster, action = %key.action, reason = refusal.reason(), %error, "step blocked");
                            backoff.block(key, &remember(refusal, &error));
                            blocked.get_or_insert(Execution::Blocked {
                                action: step.action.clone(),
                                refusal,
                                why: error,
                            });
                        }
                        v @ (Verdict::Retry | Verdict::GiveUp) => {
                            tracing::warn!(cluster = %self.cluster, action = %key.action, %error, failures, "step failed");
                            let until = backoff.failed(key, &error, Instant::now());
                            let action = step.action.clone();
                            failed.get_or_insert(if v == Verdict::GiveUp {
                                Execution::Failed {
                                    action,
                                    error,
                                    failures,
                                }
                            } else {
                                Execution::BackingOff {
                                    action,
                                    error,
                                    until,
                                    failures,
                                }
                            });
                        }
                    }
                }
            }
        }
        blocked.or(failed).or(waiting)
    }
}

#[cfg(test)]
mod tests;
