//! One retry rule for every adapter: capped exponential backoff with jitter, inside a whole-step
//! budget.
//!
//! Adapters retry what a moment may fix (a sealed Vault, a rejected push) before they report to the
//! reconciler, which then backs off on its own, longer schedule. Without a shared budget those two
//! layers multiply: an adapter's retries nest inside a step that is itself retried. So the
//! reconciler runs each step under [`with_budget`], a deadline carried by the task (a tokio
//! task-local), and every adapter loop asks [`Policy::next_delay`], which says stop as soon as the
//! next wait would end past that deadline. The adapter then returns its last error at once and the
//! reconciler's backoff is the only one left waiting.

use std::future::Future;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

/// What the reconciler gives one step (or one batch of steps run side by side) for the retries
/// inside it. Long waits that are not retries (a drain, a node booting) are bounded by their own
/// timeouts; this only caps how long an adapter keeps re-trying a failing call before the
/// reconciler's own backoff takes over.
pub const STEP_BUDGET: Duration = Duration::from_secs(60);

tokio::task_local! {
    static STEP_DEADLINE: Instant;
}

/// Runs `fut` with a step budget: retries inside it stop once `budget` from now is spent. A budget
/// set inside another keeps the earlier deadline, so an inner scope never extends an outer one.
pub async fn with_budget<F: Future>(budget: Duration, fut: F) -> F::Output {
    let mut deadline = Instant::now() + budget;
    if let Some(outer) = deadline_now() {
        deadline = deadline.min(outer);
    }
    STEP_DEADLINE.scope(deadline, fut).await
}

/// The deadline of the step this task runs, if the caller set one.
pub fn deadline_now() -> Option<Instant> {
    STEP_DEADLINE.try_with(|d| *d).ok()
}

/// How often and how patiently one call is retried.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Tries in all, the first included (at least one is always made).
    pub attempts: u32,
    pub initial: Duration,
    pub max: Duration,
    /// Each wait is drawn from `delay × [1 − jitter, 1 + jitter]` (0 for none), so clients that
    /// failed together do not all come back together.
    pub jitter: f64,
}

impl Policy {
    /// The wait before try `retry + 1`, where `retry` counts from 0 for the wait after the first
    /// failure: `initial × 2^retry`, capped at `max`, before jitter.
    pub fn base_delay(&self, retry: u32) -> Duration {
        let factor = 1u32 << retry.min(16);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// Whether to try again after `failures` failed tries, and after how long; `None` once the
    /// tries are used up or the wait would end past the step's deadline.
    pub fn next_delay(&self, failures: u32) -> Option<Duration> {
        let jitter = self.jitter.clamp(0.0, 1.0);
        let factor = if jitter > 0.0 {
            rand::rng().random_range(1.0 - jitter..=1.0 + jitter)
        } else {
            1.0
        };
        decide(self, failures, factor, Instant::now(), deadline_now())
    }

    /// Runs `op` until it succeeds, fails with an error `transient` says is not worth retrying, or
    /// the tries or the step's budget are spent; returns the last result and how many tries ran.
    pub async fn run<T, E, Op, Fut>(
        &self,
        mut op: Op,
        transient: impl Fn(&E) -> bool,
    ) -> (Result<T, E>, u32)
    where
        Op: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut failures = 0u32;
        loop {
            match op(failures).await {
                Ok(v) => return (Ok(v), failures + 1),
                Err(e) => {
                    failures += 1;
                    let wait = if transient(&e) {
                        self.next_delay(failures)
                    } else {
                        None
                    };
                    let Some(wait) = wait else {
                        return (Err(e), failures);
                    };
                    // Trying again is progress for systemd's watchdog (a hung call is not).
                    crate::systemd::progress();
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

/// The rule itself, with the clock, the deadline and the jitter drawn passed in.
fn decide(
    policy: &Policy,
    failures: u32,
    jitter_factor: f64,
    now: Instant,
    deadline: Option<Instant>,
) -> Option<Duration> {
    if failures == 0 || failures >= policy.attempts.max(1) {
        return None;
    }
    let wait = policy.base_delay(failures - 1).mul_f64(jitter_factor);
    match deadline {
        Some(d) if now + wait >= d => None,
        _ => Some(wait),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy {
        attempts: 8,
        initial: Duration::from_millis(100),
        max: Duration::from_secs(2),
        jitter: 0.0,
    };

    #[test]
    fn waits_double_up_to_the_cap_and_stop_after_the_last_try() {
        let now = Instant::now();
        let waits: Vec<Option<Duration>> = (1..=8)
            .map(|f| decide(&POLICY, f, 1.0, now, None))
            .collect();
        let ms = |m| Some(Duration::from_millis(m));
        assert_eq!(
            waits,
            [
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1600),
                ms(2000),
                ms(2000),
                None
            ]
        );
        let once = Policy {
            attempts: 0,
            ..POLICY
        };
        assert_eq!(decide(&once, 1, 1.0, now, None), None, "one try at least");
    }

    #[test]
    fn no_wait_ends_past_the_steps_deadline() {
        let now = Instant::now();
        let deadline = Some(now + Duration::from_millis(300));
        // 100 and 200 ms fit in the 300 ms left; 400 would end past the deadline: stop, though
        // five tries are left.
        assert!(decide(&POLICY, 1, 1.0, now, deadline).is_some());
        assert!(decide(&POLICY, 2, 1.0, now, deadline).is_some());
        assert_eq!(decide(&POLICY, 3, 1.0, now, deadline), None);
        let deadline = Some(now + Duration::from_millis(700));
        // Later in the step, the same small wait no longer fits.
        let late = now + Duration::from_millis(650);
        assert_eq!(decide(&POLICY, 1, 1.0, late, deadline), None);
        // Jitter is applied before the check: a wait stretched past the deadline is not taken.
        assert_eq!(
            decide(&POLICY, 2, 1.2, now + Duration::from_millis(460), deadline),
            None
        );
        assert!(decide(&POLICY, 2, 0.8, now + Duration::from_millis(460), deadline).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn an_adapters_retries_stop_when_the_step_budget_is_spent() {
        let tries = |budget: Option<Duration>| async move {
            let op = |_| async { Err::<(), _>("sealed") };
            let run = POLICY.run(op, |_| true);
            match budget {
                Some(b) => with_budget(b, run).await,
                None => run.await,
            }
        };
        // Alone, all 8 tries run (100+200+400+800+1600+2000+2000 ms of waits).
        let start = Instant::now();
        let (result, n) = tries(None).await;
        assert_eq!((result, n), (Err("sealed"), 8));
        assert_eq!(start.elapsed(), Duration::from_millis(7100));
        // Inside a 1 s step: tries at 0, 100, 300 and 700 ms; the next wait (800 ms) would end
        // past the budget, so the adapter gives up there and the step reports at once.
        let start = Instant::now();
        let (_, n) = tries(Some(Duration::from_secs(1))).await;
        assert_eq!(n, 4);
        assert_eq!(start.elapsed(), Duration::from_millis(700));
    }

    #[tokio::test(start_paused = true)]
    async fn an_inner_budget_never_extends_the_outer_one_and_permanent_errors_stop_at_once() {
        let inner = with_budget(Duration::from_secs(1), async {
            with_budget(Duration::from_secs(60), async { deadline_now() }).await
        })
        .await
        .unwrap();
        assert!(inner <= Instant::now() + Duration::from_secs(1));
        assert_eq!(deadline_now(), None, "the budget ends with its scope");

        let (result, n) = POLICY
            .run(|_| async { Err::<(), _>("refused") }, |_| false)
            .await;
        assert_eq!((result, n), (Err("refused"), 1));
    }
}
