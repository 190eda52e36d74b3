//! Backups on Kubernetes: `GrapeBackup` (one backup), `GrapeScheduledBackup` (a cron schedule
//! with retention), and the restore of `GrapeCluster.spec.bootstrap.fromBackup`.
//!
//! ```text
//!   crd         the two custom resources                                 (pure)
//!   decide      (spec, status, what the data plane said, now) -> step, status   (pure)
//!   controller  the kube-runtime shell: watch, call the data plane, patch status, events
//! ```
//!
//! The data plane does the work (`POST /admin/backups`, `DELETE /admin/backups/{id}`,
//! `POST /admin/restore`); the operator starts it, follows it and reports it.

pub mod controller;
pub mod crd;
pub mod decide;
