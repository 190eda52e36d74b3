//! The operator's own Prometheus metrics: reconciles, failures, durations, actions, and each
//! cluster's ready members and conditions.

use crate::crd::GrapeClusterStatus;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
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
        self.ready_members
            .with_label_values(&[namespace, cluster])
            .set(status.ready_replicas as i64);
        for c in &status.conditions {
            self.condition
                .with_label_values(&[namespace, cluster, c.type_.as_str()])
                .set((c.status == "True") as i64);
        }
    }

    pub fn forget_cluster(&self, namespace: &str, cluster: &str) {
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
