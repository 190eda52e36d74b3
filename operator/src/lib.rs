//! The Grape operator: reconciles a `GrapeCluster` into a StatefulSet of data-plane nodes and
//! drives scaling, rolling restarts, rebalancing and leadership transfer through the data
//! plane's admin API.
//!
//! ```text
//!   crd        the custom resource (spec, status)          (pure)
//!   resources  owned objects rendered from the spec         (pure)
//!   certs      the nodes' CA and certificate, when the operator issues them (pure)
//!   decide     (spec, observed) -> StatefulSet size, action, status   (pure)
//!   dataplane  observe the cluster / run an action through grape-client
//!   controller the kube-runtime shell: watch, apply, status, events
//!   lease      leader election so that two operator replicas never act at once
//!   backup     GrapeBackup, GrapeScheduledBackup and the bootstrap restore (crd, decide, shell)
//! ```

#![forbid(unsafe_code)]

pub mod backup;
pub mod certs;
pub mod controller;
pub mod crd;
pub mod dataplane;
pub mod decide;
pub mod lease;
pub mod metrics;
pub mod resources;
