//! kiln's Prometheus metrics (DESIGN §8, `GET /metrics`): one process-wide set, so every adapter
//! can count its requests without a handle threaded through each constructor.
//!
//! Invariant: label values are bounded and never secret — cluster names, phases, action kinds,
//! system names, results; never a URL with credentials, a token, or an error text.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::reconcile::status::{Phase, StatusBook};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: String,
}

pub struct Metrics {
    registry: Registry,
    pub cycles: Family<ResultLabel, Counter>,
    pub cycle_duration: Histogram,
    pub clusters: Family<PhaseLabel, Gauge>,
}

/// Every phase a cluster can be in, so each gauge exists (at 0) before the first cluster has it:
/// an alert on `kiln_clusters{phase="Failed"}` then has a series to read.
const PHASES: [Phase; 9] = [
    Phase::Pending,
    Phase::Provisioning,
    Phase::Bootstrapping,
    Phase::Ready,
    Phase::Updating,
    Phase::Degraded,
    Phase::Deleting,
    Phase::Blocked,
    Phase::Failed,
];

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("kiln");
        let cycles = Family::<ResultLabel, Counter>::default();
        registry.register(
            "reconcile_cycles",
            "Reconcile cycles finished, by result (ok: every cluster converged or settled; error: \
             the cycle stopped short on Git or Proxmox)",
            cycles.clone(),
        );
        // From 10 ms (a no-op cycle) to 30 min (a cycle that carries a rolling upgrade).
        let cycle_duration =
            Histogram::new([0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0]);
        registry.register(
            "reconcile_cycle_duration_seconds",
            "Wall time of one reconcile cycle",
            cycle_duration.clone(),
        );
        let clusters = Family::<PhaseLabel, Gauge>::default();
        registry.register(
            "clusters",
            "Clusters kiln knows, by phase",
            clusters.clone(),
        );
        for p in PHASES {
            // Creates the series at 0; the guard it returns is not needed.
            drop(clusters.get_or_create(&PhaseLabel {
                phase: p.to_string(),
            }));
        }
        Self {
            registry,
            cycles,
            cycle_duration,
            clusters,
        }
    }

    /// A finished cycle: its result and time, and the phases it left.
    pub fn cycle_done(&self, ok: bool, took: Duration, status: &StatusBook) {
        let result = if ok { "ok" } else { "error" };
        self.cycles
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
        self.cycle_duration.observe(took.as_secs_f64());
        for p in PHASES {
            let n = status.clusters.values().filter(|c| c.phase == p).count();
            self.clusters
                .get_or_create(&PhaseLabel {
                    phase: p.to_string(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// The text exposition Prometheus scrapes (OpenMetrics 1.0, ending in `# EOF`).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}
