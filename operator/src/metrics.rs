//! Prometheus metrics of the operator: builds by result and reason, durations, builds in
//! progress, reconcile errors. Labels are stable words (phases, reasons), never messages.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
    pub reason: String,
}

/// The operator's metrics and the registry that serves them.
#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub builds_started: Counter,
    pub builds_finished: Family<ResultLabels, Counter>,
    pub build_duration: Histogram,
    pub stage_duration: Histogram,
    pub builds_in_progress: Gauge,
    pub reconcile_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("stagecoach");
        let builds_started = Counter::default();
        let builds_finished = Family::<ResultLabels, Counter>::default();
        // 5 s to about 3 h.
        let build_duration = Histogram::new(exponential_buckets(5.0, 2.0, 12));
        let stage_duration = Histogram::new(exponential_buckets(1.0, 2.0, 14));
        let builds_in_progress = Gauge::default();
        let reconcile_errors = Counter::default();
        registry.register("builds_started", "Builds started", builds_started.clone());
        registry.register(
            "builds_finished",
            "Builds finished, by result and reason",
            builds_finished.clone(),
        );
        registry.register(
            "build_duration_seconds",
            "Time from start to end of a build",
            build_duration.clone(),
        );
        registry.register(
            "stage_duration_seconds",
            "Time a stage pod took",
            stage_duration.clone(),
        );
        registry.register(
            "builds_in_progress",
            "Builds neither succeeded nor failed",
            builds_in_progress.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciliations that failed and were retried",
            reconcile_errors.clone(),
        );
        Metrics {
            registry,
            builds_started,
            builds_finished,
            build_duration,
            stage_duration,
            builds_in_progress,
            reconcile_errors,
        }
    }
}

impl Metrics {
    /// The text exposition format for `/metrics`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_exposed_with_stable_labels() {
        let m = Metrics::default();
        m.builds_started.inc();
        m.builds_finished
            .get_or_create(&ResultLabels {
                result: "Failed".into(),
                reason: "StageFailed".into(),
            })
            .inc();
        m.build_duration.observe(42.0);
        let text = m.encode();
        assert!(text.contains("stagecoach_builds_started_total 1"), "{text}");
        assert!(
            text.contains(
                r#"stagecoach_builds_finished_total{result="Failed",reason="StageFailed"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains("stagecoach_build_duration_seconds_count 1"),
            "{text}"
        );
    }
}
