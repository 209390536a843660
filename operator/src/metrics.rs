//! Prometheus metrics of the operator: builds by result and reason, durations, builds in
//! progress, reconcile errors. Labels are stable words (phases, reasons), never messages.

use std::sync::{Arc, PoisonError, RwLock};

use kube::runtime::reflector::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api::{ImageBuild, Phase};

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
    pub builds_in_progress: InProgress,
    pub reconcile_errors: Counter,
    /// 1 while this replica reconciles (holds the Lease, or runs without election).
    pub leader: Gauge,
    /// Keyed stages found in the stage cache (`result="hit"`) or not (`"miss"`).
    pub stage_cache: Family<CacheLabels, Counter>,
}

/// Labels of the stage cache counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub result: String,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("stagecoach");
        let builds_started = Counter::default();
        let builds_finished = Family::<ResultLabels, Counter>::default();
        // 5 s to about 3 h.
        let build_duration = Histogram::new(exponential_buckets(5.0, 2.0, 12));
        let stage_duration = Histogram::new(exponential_buckets(1.0, 2.0, 14));
        let builds_in_progress = InProgress::default();
        let reconcile_errors = Counter::default();
        let leader = Gauge::default();
        let stage_cache = Family::<CacheLabels, Counter>::default();
        registry.register(
            "stage_cache_lookups",
            "Keyed stages looked up in the stage cache, by result (hit or miss)",
            stage_cache.clone(),
        );
        registry.register(
            "leader",
            "Whether this replica reconciles (holds the Lease)",
            leader.clone(),
        );
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
        registry.register_collector(Box::new(builds_in_progress.clone()));
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
            leader,
            stage_cache,
        }
    }
}

/// Builds in progress, counted at each scrape from the running controller's cache: a
/// gauge moved up and down by hand restarts at zero with the operator and goes negative.
#[derive(Debug, Clone, Default)]
pub struct InProgress(Arc<RwLock<Option<Store<ImageBuild>>>>);

impl InProgress {
    /// Counts the builds of `store` until the returned guard is dropped.
    pub fn follow(&self, store: Store<ImageBuild>) -> Following {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Some(store);
        Following(self.clone())
    }

    /// Builds not finished at their current generation (none without a controller).
    pub fn count(&self) -> i64 {
        let store = self.0.read().unwrap_or_else(PoisonError::into_inner);
        let finished = |b: &ImageBuild| {
            b.status.as_ref().is_some_and(|s| {
                matches!(s.phase, Some(Phase::Succeeded | Phase::Failed))
                    && s.observed_generation == b.metadata.generation
            })
        };
        store
            .iter()
            .flat_map(|s| s.state_filter(|b| !finished(b)))
            .count() as i64
    }
}

/// Stops the count when the controller it follows stops (a replica that lost the lease).
#[derive(Debug)]
pub struct Following(InProgress);

impl Drop for Following {
    fn drop(&mut self) {
        *self.0.0.write().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

impl Collector for InProgress {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let gauge = ConstGauge::new(self.count());
        let help = "Builds neither succeeded nor failed";
        let metric =
            encoder.encode_descriptor("builds_in_progress", help, None, gauge.metric_type())?;
        gauge.encode(metric)
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
    fn builds_in_progress_are_counted_from_the_cache() {
        let build = |name: &str, phase: Option<Phase>, observed: i64| {
            let mut b = ImageBuild::new(
                name,
                serde_json::from_value(serde_json::json!({
                    "source": {"git": {"url": "https://git.example/app.git"}},
                    "output": {"image": "registry.example/app:1"}
                }))
                .expect("spec"),
            );
            b.metadata.namespace = Some("team".into());
            b.metadata.generation = Some(2);
            b.status = phase.map(|phase| crate::api::ImageBuildStatus {
                phase: Some(phase),
                observed_generation: Some(observed),
                ..Default::default()
            });
            b
        };
        let m = Metrics::default();
        let (store, mut writer) = kube::runtime::reflector::store();
        for b in [
            build("new", None, 0),
            build("building", Some(Phase::Building), 2),
            build("done", Some(Phase::Succeeded), 2),
            build("failed", Some(Phase::Failed), 2),
            // Finished, but its spec changed since: a new build is due.
            build("changed", Some(Phase::Succeeded), 1),
        ] {
            writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(b));
        }
        // Before any controller runs (and after a restart) the gauge is 0, never negative.
        assert!(m.encode().contains("stagecoach_builds_in_progress 0"));
        let following = m.builds_in_progress.follow(store);
        let text = m.encode();
        assert!(text.contains("stagecoach_builds_in_progress 3"), "{text}");
        assert!(
            text.contains("# TYPE stagecoach_builds_in_progress gauge"),
            "{text}"
        );
        drop(following);
        assert!(m.encode().contains("stagecoach_builds_in_progress 0"));
    }

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
