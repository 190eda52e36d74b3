//! Backups: a consistent cut of chosen collections, copied from one replica per shard to a
//! directory or an S3-compatible bucket while writes go on; and restores of such a copy into
//! a cluster of any size ([`restore`]).
//!
//! A backup is run by the node that took the request (its *coordinator*):
//!
//! ```text
//!   1. record the backup (meta: PutBackup running; one at a time)
//!   2. pause new writes on every member (in-flight writes finish first)   ─┐ milliseconds
//!   3. append a fence entry to every shard group through its leader        │
//!   4. resume writes                                                      ─┘
//!   5. pull each shard's export (taken by the leader as it applied the fence) and write it
//!   6. write manifest.json (files, lengths, xxh3, document checksums); record the end
//! ```
//!
//! Every write acknowledged before step 2 is committed before the fences, so it is in the
//! copy; a write that waited at the pause is after every fence, so it is in none. Writes in
//! flight during the pause finish before the fences, so a write a client could only send
//! after seeing another one acknowledged is never in the copy without that one.

pub mod export;
pub mod manifest;
pub mod restore;
pub mod store;

use self::export::{ExportChunk, ExportEnd};
use self::manifest::{CollectionEntry, FORMAT, MANIFEST, Manifest, ShardEntry, shard_file};
use self::store::{Location, store_error};
use super::node::Node;
use super::raft::ids::NodeId;
use super::raft::meta_commands::MetaCommand;
use super::raft::peers::CallError;
use super::raft::rpc::{BackupChunkRpc, BackupHoldRpc};
use super::raft::types::{Request, Response};
use super::route::{blocking, meta_command, propose};
use crate::collection::Collection;
use crate::error::{Error, ErrorCode, Result};
use grape_client::{BackupDeleted, BackupInfo, BackupRequest, BackupState};
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use xxhash_rust::xxh3::Xxh3;

/// How long in-flight writes may take to finish when a backup pauses writes.
pub const PAUSE_WAIT: Duration = Duration::from_secs(5);

/// A pause ends by itself after this long, should its coordinator vanish.
pub const PAUSE_LEASE: Duration = Duration::from_secs(30);

/// How long the fences may take, well within [`PAUSE_LEASE`] (a pause begins up to
/// [`PAUSE_WAIT`] before the fences).
const FENCE_WAIT: Duration = Duration::from_secs(15);

/// How often a running backup or restore records its progress in the meta group.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Bytes per uploaded part (S3 needs at least 5 MiB per part but the last).
const PART_BYTES: usize = 8 * 1024 * 1024;

/// What this node counted of the backups and restores it ran (for `/metrics`).
#[derive(Debug, Default)]
pub struct BackupCounters {
    pub started: AtomicU64,
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub restores_started: AtomicU64,
    pub restores_succeeded: AtomicU64,
    pub restores_failed: AtomicU64,
    /// Of the last backup this node ran to the end.
    pub last_duration_ms: AtomicU64,
    pub last_bytes: AtomicU64,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// Whether `id` has the shape of a backup id (it names a folder: nothing else may).
pub(super) fn is_backup_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A new backup id: its start time to the millisecond (ids sort by it, also for backups
/// taken within one second) and a random suffix.
fn new_id() -> String {
    format!(
        "{}-{:04x}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S%3fZ"),
        rand::random::<u16>()
    )
}

/// The collections a backup or restore names, or all of them.
fn chosen(node: &Node, names: Option<&[String]>) -> Result<Vec<Collection>> {
    let all = node.meta_read().collections.clone();
    match names {
        None => Ok(all.into_values().collect()),
        Some([]) => Err(Error::invalid(
            ErrorCode::InvalidRequest,
            "collections must not be empty (leave it out to back up every collection)",
        )),
        Some(names) if names.len() > 1024 => Err(Error::invalid(
            ErrorCode::InvalidRequest,
            "at most 1024 collections may be named",
        )),
        Some(names) => names
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(|name| {
                all.get(name).cloned().ok_or_else(|| {
                    Error::not_found(
                        ErrorCode::CollectionNotFound,
                        format!("collection '{name}' does not exist"),
                    )
                })
            })
            .collect(),
    }
}

/// Starts a backup: checks the request and the destination (a small file is written there
/// first), records the backup, and answers it while it runs in the background.
pub async fn start(node: &Arc<Node>, request: BackupRequest) -> Result<BackupInfo> {
    if let Some(tag) = &request.tag
        && (tag.is_empty() || tag.chars().count() > 256 || tag.chars().any(char::is_control))
    {
        return Err(Error::invalid(
            ErrorCode::InvalidRequest,
            "tag must be 1 to 256 printable characters",
        ));
    }
    let location = Location::parse(&request.destination, node.config())?;
    let collections = chosen(node, request.collections.as_deref())?;
    if let Some(running) = node
        .meta_read()
        .backups
        .values()
        .find(|b| b.state == BackupState::Running && node.members().contains(&b.coordinator))
    {
        return Err(Error::conflict(
            ErrorCode::BackupRunning,
            format!(
                "backup {} is running (on {}); one backup runs at a time",
                running.id, running.coordinator
            ),
        ));
    }
    let id = new_id();
    let info = BackupInfo {
        id: id.clone(),
        state: BackupState::Running,
        location: location.display(&id),
        collections: collections.iter().map(|c| c.name().to_string()).collect(),
        coordinator: node.id().to_string(),
        started_ms: now_ms(),
        finished_ms: None,
        shards_done: 0,
        shards_total: collections.iter().map(|c| c.config.shard_count).sum(),
        bytes: 0,
        documents: 0,
        error: None,
        tag: request.tag.clone(),
    };
    let started = serde_json::to_vec_pretty(&info).unwrap_or_default();
    location
        .store
        .put(&location.path(&id, STARTED), PutPayload::from(started))
        .await
        .map_err(|e| {
            let e = store_error(&format!("cannot write to {}", location.uri), e);
            Error::invalid(ErrorCode::InvalidLocation, e.to_string())
        })?;
    put_backup(node, &info).await?;
    // This node answers for the backup as soon as it says it started.
    wait_applied(node, |state| state.backups.contains_key(&id)).await;
    node.backup_counters()
        .started
        .fetch_add(1, Ordering::Relaxed);
    tracing::info!(backup = %id, location = %info.location, collections = ?info.collections, "backup started");
    let node = Arc::clone(node);
    let answer = info.clone();
    tokio::spawn(async move { run(node, info, location, collections).await });
    Ok(answer)
}

/// Waits (a few seconds at most) until this node's copy of the meta state shows what was just
/// committed, so that its own reads see it.
pub(super) async fn wait_applied(
    node: &Node,
    seen: impl Fn(&super::raft::meta_state::MetaState) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !seen(&node.meta_read()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn put_backup(node: &Node, info: &BackupInfo) -> Result<()> {
    match meta_command(node, MetaCommand::PutBackup { info: info.clone() }).await? {
        super::raft::meta_commands::MetaResponse::Invalid { message } => {
            Err(Error::conflict(ErrorCode::BackupRunning, message))
        }
        _ => Ok(()),
    }
}

/// Runs a recorded backup to its end and records how it ended.
async fn run(
    node: Arc<Node>,
    mut info: BackupInfo,
    location: Location,
    collections: Vec<Collection>,
) {
    let started = Instant::now();
    let outcome = take(&node, &mut info, &location, &collections).await;
    node.exports().forget(&info.id);
    info.finished_ms = Some(now_ms());
    let counters = node.backup_counters();
    match outcome {
        Ok(()) => {
            info.state = BackupState::Done;
            counters.succeeded.fetch_add(1, Ordering::Relaxed);
            counters
                .last_duration_ms
                .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
            counters.last_bytes.store(info.bytes, Ordering::Relaxed);
            tracing::info!(backup = %info.id, bytes = info.bytes, documents = info.documents, millis = started.elapsed().as_millis() as u64, "backup done");
        }
        Err(error) => {
            info.state = BackupState::Failed;
            info.error = Some(error.to_string());
            counters.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(backup = %info.id, %error, "backup failed");
        }
    }
    record_end(&node, MetaCommand::PutBackup { info }).await;
}

/// Records how a backup or restore ended: retried for a minute while the meta group is
/// unavailable (a record left running is failed when its coordinator starts again).
pub(super) async fn record_end(node: &Node, command: MetaCommand) {
    for attempt in 0..30 {
        match meta_command(node, command.clone()).await {
            Ok(_) => return,
            Err(error) if attempt == 29 => {
                tracing::error!(%error, "cannot record the end of a backup or restore");
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(2)).await,
        }
    }
}

/// One shard to copy: its group, and (once fenced) the node exporting it.
struct Fenced {
    collection: usize,
    shard: u32,
    group: String,
    exporter: NodeId,
}

async fn take(
    node: &Arc<Node>,
    info: &mut BackupInfo,
    location: &Location,
    collections: &[Collection],
) -> Result<()> {
    let fenced = cut(node, &info.id, collections).await?;
    let mut entries: Vec<CollectionEntry> = collections
        .iter()
        .map(|c| CollectionEntry {
            config: c.config.clone(),
            shards: Vec::new(),
        })
        .collect();
    let mut reported = Instant::now();
    for shard in fenced {
        let entry = copy_shard(node, info, location, &shard).await?;
        info.shards_done += 1;
        info.bytes += entry.bytes;
        info.documents += entry.documents;
        entries[shard.collection].shards.push(entry);
        if reported.elapsed() > PROGRESS_EVERY {
            reported = Instant::now();
            let _ = put_backup(node, info).await;
        }
    }
    let manifest = Manifest {
        format: FORMAT,
        grape_version: env!("CARGO_PKG_VERSION").to_string(),
        id: info.id.clone(),
        started_ms: info.started_ms,
        finished_ms: now_ms(),
        collections: entries,
        bytes: info.bytes,
        documents: info.documents,
    };
    let body = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| Error::Internal(format!("encoding the manifest: {e}")))?;
    location
        .store
        .put(&location.path(&info.id, MANIFEST), PutPayload::from(body))
        .await
        .map_err(|e| store_error("writing the manifest", e))?;
    Ok(())
}

/// Pauses writes on every member, appends a fence to every shard group, resumes writes.
/// Answers each shard with the node that exports it. Every member must pause, and every pause
/// must still be held when the fences are in: otherwise the cut could split a write from one
/// that depends on it, and the backup fails (it can be started again).
async fn cut(node: &Arc<Node>, backup: &str, collections: &[Collection]) -> Result<Vec<Fenced>> {
    let members: Vec<NodeId> = node.members().into_iter().collect();
    let held = futures::future::join_all(
        members
            .iter()
            .map(|member| async move { (member.clone(), hold(node, member, backup, true).await) }),
    )
    .await;
    let refused: Vec<String> = held
        .iter()
        .filter_map(|(member, result)| result.as_ref().err().map(|e| format!("{member}: {e}")))
        .collect();
    let fenced = if refused.is_empty() {
        // Well within the pauses' lease, so that no pause runs out before the last fence.
        match tokio::time::timeout(FENCE_WAIT, fence_all(node, backup, collections)).await {
            Ok(fenced) => fenced,
            Err(_) => Err(Error::unavailable(
                ErrorCode::NoLeader,
                format!(
                    "the fences were not all in within {} s (an election?); writes resumed",
                    FENCE_WAIT.as_secs()
                ),
            )),
        }
    } else {
        Err(Error::unavailable(
            ErrorCode::PeerUnreachable,
            format!(
                "every member must pause writes for the backup's cut, and {} could not ({}); with a member down for good, remove it first",
                refused.len(),
                refused.join("; ")
            ),
        ))
    };
    // Every member is told to resume, whether or not its pause answered.
    let resumed =
        futures::future::join_all(members.iter().map(|member| async move {
            (member.clone(), hold(node, member, backup, false).await)
        }))
        .await;
    let mut lapsed = Vec::new();
    for ((member, result), (_, paused)) in resumed.into_iter().zip(&held) {
        match result {
            Ok(true) => {}
            Ok(false) if paused.is_ok() => lapsed.push(member),
            Ok(false) => {}
            // Its pause ends by itself when its lease runs out.
            Err(error) => {
                tracing::warn!(%member, %error, "could not resume writes after the backup's cut");
                if paused.is_ok() {
                    lapsed.push(member);
                }
            }
        }
    }
    let fenced = fenced?;
    if !lapsed.is_empty() {
        return Err(Error::unavailable(
            ErrorCode::Unavailable,
            format!(
                "the write pause on {} ran out before every fence was in: the cut is not consistent, so the backup stops here",
                lapsed.join(", ")
            ),
        ));
    }
    Ok(fenced)
}

/// Pauses (or resumes) writes on `member`; a resume answers whether the pause was still held.
async fn hold(
    node: &Arc<Node>,
    member: &str,
    backup: &str,
    pause: bool,
) -> std::result::Result<bool, CallError> {
    if member == node.id() {
        return if pause {
            node.write_gate()
                .hold(backup, PAUSE_WAIT, PAUSE_LEASE)
                .await
                .map(|()| true)
                .map_err(|e| CallError::Remote((&e).into()))
        } else {
            Ok(node.write_gate().release(backup))
        };
    }
    let rpc = BackupHoldRpc {
        backup: backup.to_string(),
        pause,
    };
    node.peers()
        .call(member, &rpc, PAUSE_WAIT + Duration::from_secs(2))
        .await
}

async fn fence_all(
    node: &Arc<Node>,
    backup: &str,
    collections: &[Collection],
) -> Result<Vec<Fenced>> {
    let shards: Vec<(usize, u32, String)> = collections
        .iter()
        .enumerate()
        .flat_map(|(i, c)| c.shard_ids().map(move |s| (i, s, c.group(s))))
        .collect();
    let fences = shards
        .into_iter()
        .map(|(collection, shard, group)| async move {
            let request = Request::Fence {
                backup: backup.to_string(),
                // The leader that appends the fence names itself (see `route::propose_here`).
                exporter: String::new(),
            };
            match propose(node, &group, request).await? {
                Response::Fenced { exporter } => Ok(Fenced {
                    collection,
                    shard,
                    group,
                    exporter,
                }),
                other => Err(Error::Internal(format!("a fence answered {other:?}"))),
            }
        });
    futures::future::join_all(fences)
        .await
        .into_iter()
        .collect()
}

/// Copies one shard's export to the location: answers its manifest entry.
async fn copy_shard(
    node: &Arc<Node>,
    info: &BackupInfo,
    location: &Location,
    shard: &Fenced,
) -> Result<ShardEntry> {
    let file = shard_file(shard.collection, shard.shard);
    let path = location.path(&info.id, &file);
    let upload = location
        .store
        .put_multipart(&path)
        .await
        .map_err(|e| store_error(&format!("starting {file}"), e))?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
    let mut digest = Xxh3::new();
    let mut bytes = 0u64;
    let mut seq = 0u64;
    let copied: Result<ExportEnd> = async {
        loop {
            let chunk = pull(node, &info.id, shard, seq).await?;
            digest.update(&chunk.data);
            bytes += chunk.data.len() as u64;
            writer
                .wait_for_capacity(2)
                .await
                .map_err(|e| store_error(&format!("writing {file}"), e))?;
            writer.write(&chunk.data);
            if let Some(end) = chunk.end {
                return Ok(end);
            }
            seq += 1;
        }
    }
    .await;
    let end = match copied {
        Ok(end) => end,
        Err(error) => {
            let _ = writer.abort().await;
            return Err(error);
        }
    };
    writer
        .finish()
        .await
        .map_err(|e| store_error(&format!("finishing {file}"), e))?;
    Ok(ShardEntry {
        shard: shard.shard,
        file,
        bytes,
        xxh3: format!("{:016x}", digest.digest()),
        documents: end.documents,
        checksum: format!("{:016x}", end.checksum),
        exporter: shard.exporter.clone(),
    })
}

/// The chunk `seq` of a shard's export, from this node or from its exporter; retried while
/// the exporter asks to (no data yet) or does not answer, for up to a minute.
async fn pull(node: &Arc<Node>, backup: &str, shard: &Fenced, seq: u64) -> Result<ExportChunk> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let result = if shard.exporter == node.id() {
            let exports = Arc::clone(node.exports_arc());
            let (backup, group) = (backup.to_string(), shard.group.clone());
            blocking(move || exports.next(&backup, &group, seq)).await
        } else {
            let rpc = BackupChunkRpc {
                backup: backup.to_string(),
                group: shard.group.clone(),
                seq,
            };
            node.peers()
                .call(&shard.exporter, &rpc, Duration::from_secs(40))
                .await
                .map_err(Error::from)
        };
        match result {
            Ok(chunk) => return Ok(chunk),
            Err(Error::Unavailable {
                code: ErrorCode::Unavailable | ErrorCode::PeerUnreachable,
                message,
            }) if Instant::now() < deadline => {
                tracing::debug!(group = %shard.group, %message, "retrying an export pull");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => {
                return Err(Error::unavailable(
                    ErrorCode::Unavailable,
                    format!("copying {} from {}: {error}", shard.group, shard.exporter),
                ));
            }
        }
    }
}

/// Backups as this node's copy of the meta state records them, newest first.
pub fn list(node: &Node) -> Vec<BackupInfo> {
    node.meta_read().backups.values().rev().cloned().collect()
}

/// One backup, or 404.
pub fn get(node: &Node, id: &str) -> Result<BackupInfo> {
    node.meta_read().backups.get(id).cloned().ok_or_else(|| {
        Error::not_found(
            ErrorCode::BackupNotFound,
            format!("no backup {id:?} is recorded"),
        )
    })
}

/// Deletes a backup: its files at its destination (the manifest first, so that a
/// half-deleted backup is never taken for a complete one; `started.json` last, so that a
/// deletion cut short can be finished), then its record. Refused while it runs (unless its
/// coordinator left the cluster) or while this cluster restores it. A backup the cluster no
/// longer has a record of (the newest 100 are kept) is deleted at `destination`, when given,
/// if a Grape backup of that id is there.
pub async fn delete(node: &Node, id: &str, destination: Option<&str>) -> Result<BackupDeleted> {
    let recorded = node.meta_read().backups.get(id).cloned();
    let destination = match (&recorded, destination) {
        (Some(info), _) => {
            if info.state == BackupState::Running && node.members().contains(&info.coordinator) {
                return Err(Error::conflict(
                    ErrorCode::BackupRunning,
                    format!("backup {id} is running; delete it once it has ended"),
                ));
            }
            info.location
                .strip_suffix(&format!("/{id}"))
                .ok_or_else(|| {
                    Error::Internal(format!(
                        "backup {id}'s location {:?} does not end with its id",
                        info.location
                    ))
                })?
                .to_string()
        }
        (None, Some(destination)) => destination.to_string(),
        (None, None) => {
            return Err(Error::not_found(
                ErrorCode::BackupNotFound,
                format!(
                    "no backup {id:?} is recorded (give ?destination= to delete its files where it was written)"
                ),
            ));
        }
    };
    if node
        .meta_read()
        .restores
        .get(id)
        .is_some_and(|r| r.state == BackupState::Running)
    {
        return Err(Error::conflict(
            ErrorCode::BackupRunning,
            format!("backup {id} is being restored into this cluster; delete it once that ended"),
        ));
    }
    let location = Location::parse(&destination, node.config())?;
    if recorded.is_none() {
        marker(&location, id).await?;
    }
    let objects = match destination.strip_prefix("file://") {
        Some(dir) => {
            let folder = std::path::Path::new(dir)
                .canonicalize()
                .map_err(|e| Error::invalid(ErrorCode::InvalidLocation, format!("{dir}: {e}")))?
                .join(id);
            blocking(move || delete_folder(&folder)).await?
        }
        None => delete_objects(&location, id).await?,
    };
    if recorded.is_some() {
        match meta_command(node, MetaCommand::DeleteBackup { id: id.to_string() }).await? {
            super::raft::meta_commands::MetaResponse::Invalid { message } => {
                return Err(Error::conflict(ErrorCode::BackupRunning, message));
            }
            // Done, or forgotten meanwhile by another deletion: the files are gone either way.
            _ => wait_applied(node, |state| !state.backups.contains_key(id)).await,
        }
    }
    tracing::info!(backup = %id, objects, "backup deleted");
    Ok(BackupDeleted {
        id: id.to_string(),
        objects_deleted: objects,
    })
}

/// Checks that a Grape backup `id` is at `location` (its `started.json` names it), before
/// deleting files the cluster has no record of.
async fn marker(location: &Location, id: &str) -> Result<()> {
    let missing = || {
        Error::not_found(
            ErrorCode::BackupNotFound,
            format!("no backup {id:?} at {}", location.uri),
        )
    };
    if !is_backup_id(id) {
        return Err(missing());
    }
    // In a directory, the backup is a folder of its own (not a file, not a link).
    if let Some(dir) = location.uri.strip_prefix("file://") {
        let folder = std::path::Path::new(dir).join(id);
        if !std::fs::symlink_metadata(&folder).is_ok_and(|m| m.file_type().is_dir()) {
            return Err(missing());
        }
    }
    let found = match location.store.get(&location.path(id, STARTED)).await {
        Ok(found) => found,
        Err(object_store::Error::NotFound { .. }) => return Err(missing()),
        Err(e) => return Err(store_error(&format!("reading {}", location.uri), e)),
    };
    if found.meta.size > 1 << 20 {
        return Err(missing());
    }
    let bytes = found
        .bytes()
        .await
        .map_err(|e| store_error(&format!("reading {}", location.uri), e))?;
    match serde_json::from_slice::<BackupInfo>(&bytes) {
        Ok(info) if info.id == id => Ok(()),
        _ => Err(missing()),
    }
}

/// The file every backup writes first and a deletion removes last.
const STARTED: &str = "started.json";

/// Deletes backup `id`'s objects in a bucket: the manifest first, `started.json` last;
/// answers how many.
async fn delete_objects(location: &Location, id: &str) -> Result<u64> {
    let what = format!("deleting backup {id} at {}", location.uri);
    let first = location.path(id, MANIFEST);
    let last = location.path(id, STARTED);
    let folder = location.prefix.clone().join(id);
    let mut listed = location.store.list(Some(&folder));
    let mut paths = Vec::new();
    while let Some(object) = futures::StreamExt::next(&mut listed).await {
        match object {
            Ok(object) if object.location != first && object.location != last => {
                paths.push(object.location)
            }
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(store_error(&what, e)),
        }
    }
    drop(listed);
    let mut deleted = 0;
    for path in std::iter::once(first).chain(paths).chain([last]) {
        match location.store.delete(&path).await {
            Ok(()) => deleted += 1,
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(store_error(&what, e)),
        }
    }
    Ok(deleted)
}

/// Deletes a backup's folder in a directory, the manifest first and `started.json` last,
/// without following links: a link inside it is removed itself, never what it points to (a
/// shared volume is writable by others). Answers how many files went.
fn delete_folder(folder: &std::path::Path) -> Result<u64> {
    let failed = |path: &std::path::Path, e: std::io::Error| {
        Error::unavailable(
            ErrorCode::Unavailable,
            format!("deleting {}: {e}", path.display()),
        )
    };
    let kind = match std::fs::symlink_metadata(folder) {
        Ok(meta) => meta.file_type(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(failed(folder, e)),
    };
    if !kind.is_dir() {
        // A link (or a file) where the folder should be: only it goes.
        std::fs::remove_file(folder).map_err(|e| failed(folder, e))?;
        return Ok(1);
    }
    fn remove(path: &std::path::Path, count: &mut u64) -> std::io::Result<()> {
        match std::fs::remove_file(path) {
            Ok(()) => {
                *count += 1;
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
    fn empty(
        dir: &std::path::Path,
        skip: Option<&std::path::Path>,
        count: &mut u64,
    ) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if Some(path.as_path()) == skip {
                continue;
            }
            if std::fs::symlink_metadata(&path)?.file_type().is_dir() {
                empty(&path, None, count)?;
                std::fs::remove_dir(&path)?;
            } else {
                remove(&path, count)?;
            }
        }
        Ok(())
    }
    let mut count = 0;
    let started = folder.join(STARTED);
    remove(&folder.join(MANIFEST), &mut count).map_err(|e| failed(folder, e))?;
    empty(folder, Some(&started), &mut count).map_err(|e| failed(folder, e))?;
    remove(&started, &mut count).map_err(|e| failed(folder, e))?;
    std::fs::remove_dir(folder).map_err(|e| failed(folder, e))?;
    Ok(count)
}

/// At start: backups and restores this node was running when it stopped are recorded as
/// failed (a restore can be started again and finishes what it began).
pub async fn fail_interrupted(node: &Arc<Node>) {
    let (backups, restores) = {
        let state = node.meta_read();
        (
            state
                .backups
                .values()
                .filter(|b| b.state == BackupState::Running && b.coordinator == node.id())
                .cloned()
                .collect::<Vec<_>>(),
            state
                .restores
                .values()
                .filter(|r| r.state == BackupState::Running && r.coordinator == node.id())
                .cloned()
                .collect::<Vec<_>>(),
        )
    };
    for mut info in backups {
        info.state = BackupState::Failed;
        info.finished_ms = Some(now_ms());
        info.error = Some(format!("{} restarted while it ran the backup", node.id()));
        let _ = put_backup(node, &info).await;
    }
    for mut info in restores {
        if restore::is_running_here(node, &info.backup_id) {
            continue;
        }
        restore::clean_staging(node, &info.backup_id);
        info.state = BackupState::Failed;
        info.finished_ms = Some(now_ms());
        info.error = Some(format!(
            "{} restarted while it ran the restore: start it again to finish it",
            node.id()
        ));
        let _ = meta_command(node, MetaCommand::PutRestore { info }).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_taken_within_one_second_sort_in_the_order_they_were_made() {
        // Restore without an id picks the greatest at the destination as the newest, so ids
        // must sort by start time also when backups follow each other quickly.
        let mut ids = Vec::new();
        for _ in 0..5 {
            ids.push(new_id());
            std::thread::sleep(std::time::Duration::from_millis(3));
        }
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(sorted, ids);
        assert!(ids.iter().all(|id| is_backup_id(id)), "{ids:?}");
    }
}
