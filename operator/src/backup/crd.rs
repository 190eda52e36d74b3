//! `GrapeBackup` (one backup of a GrapeCluster) and `GrapeScheduledBackup` (backups on a cron
//! schedule, with retention), `grape.io/v1alpha1`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// One backup of a GrapeCluster, taken once (CloudNativePG's `Backup`).
// kube's printcolumn attributes repeat the same keys by design.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "grape.io",
    version = "v1alpha1",
    kind = "GrapeBackup",
    plural = "grapebackups",
    shortname = "gbackup",
    namespaced,
    status = "GrapeBackupStatus",
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.cluster"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Backup", type_ = "string", json_path = ".status.backupId"),
    printcolumn(name = "Bytes", type_ = "integer", json_path = ".status.bytes"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    doc = "One consistent backup of a GrapeCluster's collections to S3-compatible storage or a shared volume."
)]
#[x_kube(
    cel,
    validation = Rule::new("self == oldSelf").message("a GrapeBackup's spec is fixed: create another GrapeBackup")
)]
#[serde(rename_all = "camelCase")]
pub struct GrapeBackupSpec {
    /// The GrapeCluster to back up, in this namespace.
    #[schemars(length(min = 1, max = 63))]
    pub cluster: String,
    #[serde(flatten)]
    pub target: BackupTarget,
}

/// Where a backup goes and what it holds.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupTarget {
    /// `s3://bucket/prefix` (credentials: the cluster's `backup.credentialsSecret`) or
    /// `file:///backups/...` (the cluster's `backup.volumeClaimName`, mounted at `/backups`).
    /// Each backup goes into a folder named by its id under it. It must be one of the
    /// cluster's `spec.backup.destinations`, or inside one.
    #[schemars(length(min = 6, max = 1024))]
    #[x_kube(validation = Rule::new("self.startsWith('s3://') || self.startsWith('file:///')").message("destination must be s3://bucket/prefix or file:///dir"))]
    pub destination: String,
    /// Collections to back up; all when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub collections: Option<Vec<String>>,
}

/// What the operator observed of a backup.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GrapeBackupStatus {
    /// `Pending` (waiting for the cluster, or for another backup to end), `Running`,
    /// `Completed` or `Failed`. The last two are final.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The data plane's id of the backup (its folder under the destination).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
    /// Where its files are: the destination followed by the id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Bytes and documents written (all of them once completed).
    #[serde(default)]
    pub bytes: i64,
    #[serde(default)]
    pub documents: i64,
    /// Shard files written, of all.
    #[serde(default)]
    pub shards_done: i32,
    #[serde(default)]
    pub shards_total: i32,
    /// Why it is pending or why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Failed attempts to start it (retried with backoff while the cluster cannot take it).
    #[serde(default)]
    pub attempts: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_time: Option<Time>,
    /// `Complete` and `Failed`, as a Job's (`kubectl wait --for=condition=Complete`).
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Backups of a GrapeCluster on a cron schedule, the oldest deleted beyond a count
/// (CloudNativePG's `ScheduledBackup`).
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "grape.io",
    version = "v1alpha1",
    kind = "GrapeScheduledBackup",
    plural = "grapescheduledbackups",
    shortname = "gsbackup",
    namespaced,
    status = "GrapeScheduledBackupStatus",
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.cluster"),
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
    printcolumn(name = "Suspend", type_ = "boolean", json_path = ".spec.suspend"),
    printcolumn(
        name = "Last backup",
        type_ = "date",
        json_path = ".status.lastScheduleTime"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    doc = "Backups of a GrapeCluster on a cron schedule, with retention."
)]
#[serde(rename_all = "camelCase")]
pub struct GrapeScheduledBackupSpec {
    /// The GrapeCluster to back up, in this namespace.
    #[schemars(length(min = 1, max = 63))]
    pub cluster: String,
    /// When, in UTC: five cron fields (`0 2 * * *`: 02:00 every day) or `@hourly`, `@daily`,
    /// `@weekly`, `@monthly`.
    #[schemars(length(min = 1, max = 256))]
    pub schedule: String,
    #[serde(flatten)]
    pub target: BackupTarget,
    /// Completed backups kept; the oldest beyond this are deleted, files and GrapeBackup.
    #[serde(default = "default_keep")]
    #[schemars(range(min = 1, max = 1000))]
    pub successful_backups_to_keep: i32,
    /// Failed backups kept (for their error); older ones are deleted with their partial files.
    /// At least one, so that the last failure stays visible.
    #[serde(default = "default_keep_failed")]
    #[schemars(range(min = 1, max = 100))]
    pub failed_backups_to_keep: i32,
    /// Take no new backups (retention still applies). A run missed while suspended is taken
    /// once when resumed.
    #[serde(default)]
    pub suspend: bool,
    /// Take the first backup at once rather than at the first scheduled time.
    #[serde(default)]
    pub immediate: bool,
}

fn default_keep() -> i32 {
    7
}

fn default_keep_failed() -> i32 {
    3
}

/// What the operator observed and did on a schedule.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GrapeScheduledBackupStatus {
    /// The scheduled time of the last run (a GrapeBackup made, or skipped while one was still
    /// running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Time>,
    /// When the newest completed backup of this schedule completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_time: Option<Time>,
    /// The newest GrapeBackup of this schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<String>,
    /// `Ready`: the schedule is valid and backups are being taken (False: `InvalidSchedule`,
    /// `Suspended`, `LastBackupFailed`, `BackupOverdue`).
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// The CustomResourceDefinitions as YAML (what `crds/grapebackup.yaml` and
/// `crds/grapescheduledbackup.yaml` hold).
pub fn crd_yamls() -> [(String, String); 2] {
    use kube::CustomResourceExt;
    let render = |crd| {
        format!(
            "# Generated by `cargo run -p grape-operator --bin crdgen`; do not edit.\n{}",
            serde_yaml::to_string(&crd).unwrap_or_default()
        )
    };
    [
        ("grapebackup".to_string(), render(GrapeBackup::crd())),
        (
            "grapescheduledbackup".to_string(),
            render(GrapeScheduledBackup::crd()),
        ),
    ]
}
