//! The operator's own Prometheus metrics: reconciles, failures, durations, actions, and each
//! cluster's ready members and conditions.

use crate::crd::GrapeClusterStatus;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Registered once, cloned into every reconcile.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    reconciles: IntCounterVec,
    duration: HistogramVec,
    actions: IntCounterVec,
    ready_members: IntGaugeVec,
    condition: IntGaugeVec,
    /// Clusters whose series exist (namespace, name).
    seen: Arc<Mutex<BTreeSet<(String, String)>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "grape_operator_reconciliations_total",
                "Reconciles by result (ok or error)",
            ),
            &["result"],
        )
        .expect("metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "grape_operator_reconcile_duration_seconds",
                "Time one reconcile took",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &[],
        )
        .expect("metric");
        let actions = IntCounterVec::new(
            Opts::new(
                "grape_operator_actions_total",
                "Data-plane and pod actions taken, by kind",
            ),
            &["action"],
        )
        .expect("metric");
        let ready_members = IntGaugeVec::new(
            Opts::new(
                "grape_operator_cluster_ready_replicas",
                "Ready pods of each GrapeCluster",
            ),
            &["namespace", "cluster"],
        )
        .expect("metric");
        let condition = IntGaugeVec::new(
            Opts::new(
                "grape_operator_cluster_condition",
                "1 when the condition is True, per GrapeCluster and condition type",
            ),
            &["namespace", "cluster", "condition"],
        )
        .expect("metric");
        for collector in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(actions.clone()),
            Box::new(ready_members.clone()),
            Box::new(condition.clone()),
        ] {
            registry.register(collector).expect("unique metric");
        }
        Metrics {
            registry,
            reconciles,
            duration,
            actions,
            ready_members,
            condition,
            seen: Arc::default(),
        }
    }

    pub fn observe_reconcile(&self, took: Duration, ok: bool) {
        self.reconciles
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
        self.duration
            .with_label_values::<&str>(&[])
            .observe(took.as_secs_f64());
    }

    pub fn count_action(&self, reason: &str) {
        self.actions.with_label_values(&[reason]).inc();
    }

    pub fn set_cluster(&self, namespace: &str, cluster: &str, status: &GrapeClusterStatus) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.insert((namespace.to_string(), cluster.to_string()));
        }
        self.ready_members
            .with_label_values(&[namespace, cluster])
            .set(status.ready_replicas as i64);
        for c in &status.conditions {
            self.condition
                .with_label_values(&[namespace, cluster, c.type_.as_str()])
                .set((c.status == "True") as i64);
        }
    }

    /// Forgets the clusters not in `present` (namespace, name).
    pub fn retain_clusters(&self, present: &BTreeSet<(String, String)>) {
        let gone: Vec<(String, String)> = self
            .seen
            .lock()
            .map(|seen| seen.difference(present).cloned().collect())
            .unwrap_or_default();
        for (namespace, cluster) in gone {
            self.forget_cluster(&namespace, &cluster);
        }
    }

    /// Clusters with series.
    pub fn clusters(&self) -> BTreeSet<(String, String)> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn forget_cluster(&self, namespace: &str, cluster: &str) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.remove(&(namespace.to_string(), cluster.to_string()));
        }
        let _ = self
            .ready_members
            .remove_label_values(&[namespace, cluster]);
        for c in ["Ready", "Progressing", "Degraded", "Balanced"] {
            let _ = self.condition.remove_label_values(&[namespace, cluster, c]);
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_series_of_a_deleted_cluster_are_dropped() {
        let metrics = Metrics::new();
        let status = GrapeClusterStatus {
            ready_replicas: 3,
            ..GrapeClusterStatus::default()
        };
        metrics.set_cluster("a", "kept", &status);
        metrics.set_cluster("a", "deleted", &status);
        let present = BTreeSet::from([("a".to_string(), "kept".to_string())]);
        metrics.retain_clusters(&present);
        let text = metrics.render();
        assert!(text.contains("cluster=\"kept\""), "{text}");
        assert!(!text.contains("cluster=\"deleted\""), "{text}");
        assert_eq!(metrics.clusters(), present);
    }
}
