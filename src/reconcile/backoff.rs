//! Retry policy for failed actions: capped exponential backoff with jitter, keyed on the cluster's
//! intent revision and the action, so an edit to the file retries at once while a failing action is
//! never hammered (DESIGN.md §7).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What one failure is keyed on: a new intent revision is a new key, so it starts fresh.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RetryKey {
    pub cluster: String,
    pub intent_revision: String,
    pub action: String,
}

#[derive(Debug, Clone, Copy)]
pub struct BackoffPolicy {
    pub initial: Duration,
    pub max: Duration,
    /// Fraction of the delay added or removed at random (0.0..1.0).
    pub jitter: f64,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(5),
            max: Duration::from_secs(300),
            jitter: 0.2,
        }
    }
}

impl BackoffPolicy {
    /// The delay after `failures` consecutive failures (1 = the first), before jitter.
    pub fn base_delay(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(30);
        self.initial
            .checked_mul(1u32 << exp)
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// `base_delay` spread by ±jitter, using `unit` ∈ [0, 1) as the random draw (pure for tests).
    pub fn delay(&self, failures: u32, unit: f64) -> Duration {
        let base = self.base_delay(failures).as_secs_f64();
        let spread = base * self.jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        Duration::from_secs_f64((base + spread).max(0.0)).min(self.max)
    }
}

#[derive(Debug, Clone)]
struct Entry {
    failures: u32,
    not_before: Instant,
    last_error: String,
}

/// Failures per key, and when each may be tried again.
#[derive(Debug, Default)]
pub struct Backoff {
    policy: BackoffPolicy,
    entries: HashMap<RetryKey, Entry>,
    /// Actions a node refused for good (a `Blocked` step): not run again for this intent revision.
    blocked: HashMap<RetryKey, String>,
}

impl Backoff {
    pub fn new(policy: BackoffPolicy) -> Self {
        Self {
            policy,
            entries: HashMap::new(),
            blocked: HashMap::new(),
        }
    }

    /// Records a failure and returns when the action may run again.
    pub fn failed(&mut self, key: RetryKey, error: &str, now: Instant) -> Instant {
        let failures = self.entries.get(&key).map_or(0, |e| e.failures) + 1;
        let delay = self.policy.delay(failures, rand::random::<f64>());
        let not_before = now + delay;
        self.entries.insert(
            key,
            Entry {
                failures,
                not_before,
                last_error: error.to_owned(),
            },
        );
        not_before
    }

    pub fn succeeded(&mut self, key: &RetryKey) {
        self.entries.remove(key);
        self.blocked.remove(key);
    }

    /// The action ended `Blocked`: it waits for a person (a new intent revision, or a restart after
    /// fixing what is outside the file, e.g. the template), never for a timer.
    pub fn block(&mut self, key: RetryKey, why: &str) {
        self.entries.remove(&key);
        self.blocked.insert(key, why.to_owned());
    }

    pub fn blocked(&self, key: &RetryKey) -> Option<&str> {
        self.blocked.get(key).map(String::as_str)
    }

    /// `None` when the action may run now; otherwise when, and the error that put it off.
    pub fn wait(&self, key: &RetryKey, now: Instant) -> Option<(Instant, &str)> {
        self.entries
            .get(key)
            .filter(|e| e.not_before > now)
            .map(|e| (e.not_before, e.last_error.as_str()))
    }

    pub fn failures(&self, key: &RetryKey) -> u32 {
        self.entries.get(key).map_or(0, |e| e.failures)
    }

    /// Forgets every key of a cluster whose intent revision is not `current` (the file changed).
    pub fn forget_stale(&mut self, cluster: &str, current: &str) {
        self.entries
            .retain(|k, _| k.cluster != cluster || k.intent_revision == current);
        self.blocked
            .retain(|k, _| k.cluster != cluster || k.intent_revision == current);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(rev: &str) -> RetryKey {
        RetryKey {
            cluster: "production".into(),
            intent_revision: rev.into(),
            action: "create-vm 401".into(),
        }
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        let p = BackoffPolicy::default();
        assert_eq!(p.base_delay(1), Duration::from_secs(5));
        assert_eq!(p.base_delay(2), Duration::from_secs(10));
        assert_eq!(p.base_delay(4), Duration::from_secs(40));
        assert_eq!(p.base_delay(10), Duration::from_secs(300));
        assert_eq!(p.base_delay(u32::MAX), Duration::from_secs(300));
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        let p = BackoffPolicy::default();
        assert_eq!(p.delay(2, 0.5), Duration::from_secs(10));
        assert_eq!(p.delay(2, 0.0), Duration::from_secs(8));
        assert!(p.delay(2, 0.999) <= Duration::from_secs(12));
    }

    #[test]
    fn a_failed_key_waits_and_a_new_revision_does_not() {
        let mut b = Backoff::new(BackoffPolicy::default());
        let now = Instant::now();
        let until = b.failed(key("r1"), "clone failed", now);
        assert!(until > now);
        assert_eq!(b.wait(&key("r1"), now).map(|w| w.1), Some("clone failed"));
        assert!(b.wait(&key("r2"), now).is_none());
        assert!(b.wait(&key("r1"), until).is_none());
        b.failed(key("r1"), "again", now);
        assert_eq!(b.failures(&key("r1")), 2);
        b.forget_stale("production", "r2");
        assert_eq!(b.failures(&key("r1")), 0);
    }
}
