//! Restores: a backup written by [`super::start`] brought into a cluster of any size, under the
//! same collection names or new ones. The shards are re-placed by the cluster's own
//! placement: the documents go in as ordinary replicated writes.
//!
//! ```text
//!   POST /admin/restore      check the manifest and every file's length (a clear 4xx)
//!     -> stage               download every file into <data_dir>/restore/<id>/, check each
//!                            xxh3 and decode every record: nothing is created before this
//!                            whole backup is known good
//!     -> collections         created (or an empty one replaced) with the backup's settings
//!     -> documents           upserted shard by shard, in batches, through the shards' leaders
//!     -> done                the staging folder is deleted
//! ```
//!
//! Upserts are idempotent, so a restore cut short (a crash, a kill) is finished by starting
//! it again: the collections it created are recognised as its own.
//!
//! `grape restore --from URI --data-dir DIR` runs the first two steps before the node's first
//! start and leaves `restore/pending.json`; the node carries out the rest once the cluster has
//! formed ([`resume_pending`]).

use super::manifest::{MANIFEST, MAX_MANIFEST_BYTES, Manifest, check_record};
use super::store::{Location, store_error};
use super::{PROGRESS_EVERY, now_ms};
use crate::cluster::node::Node;
use crate::cluster::raft::meta_commands::{MetaCommand, MetaResponse};
use crate::cluster::raft::types::{Request, Response};
use crate::cluster::route::{blocking, catalog, documents, meta_command, propose};
use crate::error::{Error, ErrorCode, Result};
use crate::shard::{NewDocument, ShardCommand, ShardResponse, check_document, read_record};
use futures::StreamExt;
use grape_client::{BackupState, CollectionConfig, RestoreInfo, RestoreRequest};
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use xxhash_rust::xxh3::Xxh3;

/// Documents per proposed batch (also bounded by [`BATCH_BYTES`]).
const BATCH_DOCUMENTS: usize = 500;
const BATCH_BYTES: usize = 2 * 1024 * 1024;

/// Shards restored at once.
const SHARDS_AT_ONCE: usize = 2;

/// Tries of one batch while the cluster answers "retry later" (an election, a slow peer).
const BATCH_TRIES: u32 = 8;

/// What `grape restore` leaves for the node's first start.
const PENDING: &str = "pending.json";

fn not_found(message: String) -> Error {
    Error::not_found(ErrorCode::BackupNotFound, message)
}

fn invalid(message: String) -> Error {
    Error::invalid(ErrorCode::InvalidBackup, message)
}

/// The newest backup at `location` that has a manifest.
pub async fn newest(location: &Location) -> Result<String> {
    let listed = location
        .store
        .list_with_delimiter(Some(&location.prefix))
        .await
        .map_err(|e| store_error(&format!("listing {}", location.uri), e))?;
    let mut ids: Vec<String> = listed
        .common_prefixes
        .iter()
        .filter_map(|p| p.filename().map(str::to_string))
        .collect();
    ids.sort();
    for id in ids.into_iter().rev() {
        if location
            .store
            .head(&location.path(&id, MANIFEST))
            .await
            .is_ok()
        {
            return Ok(id);
        }
    }
    Err(not_found(format!(
        "no complete backup (one with a {MANIFEST}) at {}",
        location.uri
    )))
}

/// Reads and checks a backup's manifest.
pub async fn read_manifest(location: &Location, id: &str) -> Result<Manifest> {
    if !super::is_backup_id(id) {
        return Err(Error::invalid(
            ErrorCode::InvalidRequest,
            format!("{id:?} is not a backup id"),
        ));
    }
    let path = location.path(id, MANIFEST);
    let found = match location.store.get(&path).await {
        Ok(found) => found,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(not_found(format!(
                "backup {id} at {} has no {MANIFEST}: it does not exist or did not finish",
                location.uri
            )));
        }
        Err(e) => return Err(store_error(&format!("reading {MANIFEST} of {id}"), e)),
    };
    if found.meta.size > MAX_MANIFEST_BYTES as u64 {
        return Err(invalid(format!(
            "the {MANIFEST} of backup {id} has {} bytes; at most {MAX_MANIFEST_BYTES} are read",
            found.meta.size
        )));
    }
    let bytes = found
        .bytes()
        .await
        .map_err(|e| store_error(&format!("reading {MANIFEST} of {id}"), e))?;
    Manifest::parse(id, &bytes)
}

/// The manifest's collections a restore names (all when `names` is absent), by position.
fn chosen_entries(manifest: &Manifest, names: Option<&[String]>) -> Result<Vec<usize>> {
    match names {
        None => Ok((0..manifest.collections.len()).collect()),
        Some([]) => Err(Error::invalid(
            ErrorCode::InvalidRequest,
            "collections must not be empty (leave it out to restore every collection)",
        )),
        Some(names) => names
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(|name| {
                manifest
                    .collections
                    .iter()
                    .position(|c| &c.config.name == name)
                    .ok_or_else(|| {
                        Error::not_found(
                            ErrorCode::CollectionNotFound,
                            format!("backup {} holds no collection '{name}'", manifest.id),
                        )
                    })
            })
            .collect(),
    }
}

/// What a restore does with one backed-up collection.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Target {
    /// Index in the manifest's collections.
    entry: usize,
    /// The collection's settings under its restored name.
    config: CollectionConfig,
    action: Action,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Action {
    Create,
    /// An empty collection of that name with other settings is dropped first.
    Replace,
    /// An empty collection with these settings (or this restore's own, from an earlier try).
    Reuse,
}

/// Decides what happens to each restored collection; refuses a target that holds documents
/// (unless an unfinished try of this same restore put them there).
async fn plan(node: &Node, manifest: &Manifest, request: &RestoreRequest) -> Result<Vec<Target>> {
    let chosen = chosen_entries(manifest, request.collections.as_deref())?;
    for from in request.rename.keys() {
        if !chosen
            .iter()
            .any(|&i| &manifest.collections[i].config.name == from)
        {
            return Err(Error::invalid(
                ErrorCode::InvalidRequest,
                format!("rename names '{from}', which this restore does not include"),
            ));
        }
    }
    let members = node.members().len().max(1) as u32;
    let earlier = node.meta_read().restores.get(&manifest.id).cloned();
    let mut targets = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    for entry in chosen {
        let mut config = manifest.collections[entry].config.clone();
        let original = config.name.clone();
        if let Some(name) = request.rename.get(&original) {
            config.name = name.clone();
        }
        if !names.insert(config.name.clone()) {
            return Err(Error::invalid(
                ErrorCode::InvalidRequest,
                format!("two collections would be restored as '{}'", config.name),
            ));
        }
        // A smaller cluster holds fewer copies.
        config.replication_factor = config.replication_factor.min(members);
        crate::collection::validate_collection_config(&config)?;
        let ours = earlier.as_ref().is_some_and(|r| {
            r.state != BackupState::Done && r.collections.get(&original) == Some(&config.name)
        });
        let existing = node.meta_read().collections.get(&config.name).cloned();
        let action = match existing {
            None => Action::Create,
            Some(_) if ours => Action::Reuse,
            Some(existing) => {
                let (found, _) = documents::list(node, &config.name, None, 1).await?;
                if !found.is_empty() {
                    return Err(Error::conflict(
                        ErrorCode::RestoreConflict,
                        format!(
                            "collection '{}' holds documents: restore into an empty cluster, or under another name (rename)",
                            config.name
                        ),
                    ));
                }
                if existing.config == config {
                    Action::Reuse
                } else if config.name == crate::collection::DEFAULT_COLLECTION {
                    return Err(Error::conflict(
                        ErrorCode::RestoreConflict,
                        format!(
                            "this cluster's 'default' collection has other settings than the backup's ({}): set the database section to match, or restore it under another name (rename)",
                            differences(&existing.config, &config)
                        ),
                    ));
                } else {
                    Action::Replace
                }
            }
        };
        targets.push(Target {
            entry,
            config,
            action,
        });
    }
    Ok(targets)
}

fn differences(have: &CollectionConfig, want: &CollectionConfig) -> String {
    let mut out = Vec::new();
    if have.dimension != want.dimension {
        out.push(format!(
            "dimension {} vs {}",
            have.dimension, want.dimension
        ));
    }
    if have.metric != want.metric {
        out.push(format!("metric {:?} vs {:?}", have.metric, want.metric));
    }
    if have.shard_count != want.shard_count {
        out.push(format!(
            "shard_count {} vs {}",
            have.shard_count, want.shard_count
        ));
    }
    if out.is_empty() {
        out.push("index or replication settings".into());
    }
    out.join(", ")
}

/// Checks that every file of the chosen collections is there whole (by length).
async fn check_files(location: &Location, manifest: &Manifest, targets: &[Target]) -> Result<()> {
    for target in targets {
        for shard in &manifest.collections[target.entry].shards {
            let path = location.path(&manifest.id, &shard.file);
            match location.store.head(&path).await {
                Ok(meta) if meta.size == shard.bytes => {}
                Ok(meta) => {
                    return Err(invalid(format!(
                        "backup {} is damaged: {} has {} bytes, its manifest says {}",
                        manifest.id, shard.file, meta.size, shard.bytes
                    )));
                }
                Err(object_store::Error::NotFound { .. }) => {
                    return Err(invalid(format!(
                        "backup {} is incomplete: {} is missing",
                        manifest.id, shard.file
                    )));
                }
                Err(e) => return Err(store_error(&format!("checking {}", shard.file), e)),
            }
        }
    }
    Ok(())
}

/// Whether this node runs the restore of `backup` now.
pub fn is_running_here(node: &Node, backup: &str) -> bool {
    node.restores_running().lock().contains(backup)
}

/// Restores as this node's copy of the meta state records them, newest first.
pub fn list(node: &Node) -> Vec<RestoreInfo> {
    let mut all: Vec<RestoreInfo> = node.meta_read().restores.values().cloned().collect();
    all.sort_by_key(|r| std::cmp::Reverse(r.started_ms));
    all
}

/// Deletes what an interrupted restore of `id` staged, unless `grape restore` prepared it
/// (that one is taken up again at the next start).
pub fn clean_staging(node: &Node, id: &str) {
    let pending = node.config().node.data_dir.join("restore").join(PENDING);
    let prepared = std::fs::read(&pending)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<PendingRestore>(&bytes).ok())
        .is_some_and(|p| p.manifest.id == id);
    if !prepared {
        let _ = std::fs::remove_dir_all(staging(node, id));
    }
}

/// Where a restore stages its files.
fn staging(node: &Node, id: &str) -> PathBuf {
    node.config().node.data_dir.join("restore").join(id)
}

/// Starts a restore (`POST /admin/restore`): checks the request, the manifest and the files'
/// lengths, records the restore and answers it while it runs in the background.
pub async fn start(node: &Arc<Node>, request: RestoreRequest) -> Result<RestoreInfo> {
    let location = Location::parse(&request.source, node.config())?;
    let id = match &request.backup_id {
        Some(id) => id.clone(),
        None => newest(&location).await?,
    };
    if is_running_here(node, &id) {
        return Err(Error::conflict(
            ErrorCode::BackupRunning,
            format!("the restore of backup {id} is running on this node"),
        ));
    }
    // Started twice through two nodes (a client that timed out and asked another): one runs.
    if let Some(other) = node.meta_read().restores.get(&id).filter(|r| {
        r.state == BackupState::Running
            && r.coordinator != node.id()
            && node.members().contains(&r.coordinator)
    }) {
        return Err(Error::conflict(
            ErrorCode::BackupRunning,
            format!(
                "the restore of backup {id} is running on {}",
                other.coordinator
            ),
        ));
    }
    let manifest = read_manifest(&location, &id).await?;
    let targets = plan(node, &manifest, &request).await?;
    check_files(&location, &manifest, &targets).await?;
    // The staged files, then the documents themselves, must fit beside the reserve.
    let staged: u64 = targets
        .iter()
        .flat_map(|t| &manifest.collections[t.entry].shards)
        .map(|s| s.bytes)
        .sum();
    let needed = staged.saturating_mul(2) + node.disk().reserve_bytes();
    let free = nix::sys::statvfs::statvfs(&node.config().node.data_dir)
        .map(|fs| fs.blocks_available().saturating_mul(fs.fragment_size()))
        .unwrap_or(u64::MAX);
    if free < needed {
        return Err(Error::InsufficientStorage(format!(
            "restoring backup {id} needs about {} MiB free on the data volume (its files staged, then its documents, and database.min_free_disk_mb); {} MiB are free",
            needed >> 20,
            free >> 20
        )));
    }
    let dir = staging(node, &id);
    begin(
        node,
        request.source.clone(),
        manifest,
        targets,
        Source::Remote(location),
        dir,
    )
    .await
}

enum Source {
    /// Files to download and check into the staging folder.
    Remote(Location),
    /// Files `grape restore` downloaded and checked already.
    Staged,
}

async fn begin(
    node: &Arc<Node>,
    source: String,
    manifest: Manifest,
    targets: Vec<Target>,
    files: Source,
    dir: PathBuf,
) -> Result<RestoreInfo> {
    let info = RestoreInfo {
        backup_id: manifest.id.clone(),
        state: BackupState::Running,
        source,
        collections: targets
            .iter()
            .map(|t| {
                (
                    manifest.collections[t.entry].config.name.clone(),
                    t.config.name.clone(),
                )
            })
            .collect(),
        coordinator: node.id().to_string(),
        started_ms: now_ms(),
        finished_ms: None,
        documents_total: targets
            .iter()
            .flat_map(|t| &manifest.collections[t.entry].shards)
            .map(|s| s.documents)
            .sum(),
        documents_restored: 0,
        bytes_total: targets
            .iter()
            .flat_map(|t| &manifest.collections[t.entry].shards)
            .map(|s| s.bytes)
            .sum(),
        error: None,
    };
    if !node.restores_running().lock().insert(manifest.id.clone()) {
        return Err(Error::conflict(
            ErrorCode::BackupRunning,
            format!(
                "the restore of backup {} is running on this node",
                manifest.id
            ),
        ));
    }
    if let Err(error) = put_restore(node, &info).await {
        node.restores_running().lock().remove(&manifest.id);
        return Err(error);
    }
    let started_ms = info.started_ms;
    super::wait_applied(node, |state| {
        state
            .restores
            .get(&manifest.id)
            .is_some_and(|r| r.started_ms == started_ms)
    })
    .await;
    node.backup_counters()
        .restores_started
        .fetch_add(1, Ordering::Relaxed);
    tracing::info!(backup = %manifest.id, collections = ?info.collections, "restore started");
    let node = Arc::clone(node);
    let answer = info.clone();
    // Files `grape restore` staged are kept for another try; downloaded ones are fetched again.
    let keep_on_failure = matches!(files, Source::Staged);
    tokio::spawn(async move {
        let mut info = info;
        let outcome = run(&node, &mut info, &manifest, &targets, files, &dir).await;
        info.finished_ms = Some(now_ms());
        let counters = node.backup_counters();
        match outcome {
            Ok(()) => {
                info.state = BackupState::Done;
                counters.restores_succeeded.fetch_add(1, Ordering::Relaxed);
                let _ = std::fs::remove_dir_all(&dir);
                tracing::info!(backup = %info.backup_id, documents = info.documents_restored, "restore done");
            }
            Err(error) => {
                info.state = BackupState::Failed;
                info.error = Some(error.to_string());
                counters.restores_failed.fetch_add(1, Ordering::Relaxed);
                if !keep_on_failure {
                    let _ = std::fs::remove_dir_all(&dir);
                }
                tracing::warn!(backup = %info.backup_id, %error, "restore failed");
            }
        }
        super::record_end(&node, MetaCommand::PutRestore { info: info.clone() }).await;
        node.restores_running().lock().remove(&info.backup_id);
    });
    Ok(answer)
}

async fn put_restore(node: &Node, info: &RestoreInfo) -> Result<()> {
    match meta_command(node, MetaCommand::PutRestore { info: info.clone() }).await? {
        MetaResponse::Invalid { message } => {
            Err(Error::conflict(ErrorCode::BackupRunning, message))
        }
        _ => Ok(()),
    }
}

async fn run(
    node: &Arc<Node>,
    info: &mut RestoreInfo,
    manifest: &Manifest,
    targets: &[Target],
    files: Source,
    dir: &Path,
) -> Result<()> {
    if let Source::Remote(location) = &files {
        stage(location, manifest, targets.iter().map(|t| t.entry), dir).await?;
    }
    // Checked again from the staged copy (it could have been damaged on this disk since).
    verify_staged(manifest, targets.iter().map(|t| t.entry), dir).await?;
    for target in targets {
        match target.action {
            Action::Reuse => {}
            Action::Replace => {
                catalog::drop(node, &target.config.name).await?;
                catalog::create(node, target.config.clone()).await?;
            }
            Action::Create => match catalog::create(node, target.config.clone()).await {
                Ok(_) => {}
                // An earlier try of this restore created it.
                Err(Error::Conflict {
                    code: ErrorCode::CollectionExists,
                    ..
                }) => {}
                Err(error) => return Err(error),
            },
        }
    }
    let restored = Arc::new(AtomicU64::new(0));
    let shards: Vec<(String, u32, u32, PathBuf)> = targets
        .iter()
        .flat_map(|t| {
            manifest.collections[t.entry].shards.iter().map(|s| {
                (
                    t.config.name.clone(),
                    s.shard,
                    t.config.shard_count,
                    dir.join(&s.file),
                )
            })
        })
        .collect();
    let mut work = futures::stream::iter(shards.into_iter().map(|(name, shard, count, file)| {
        let restored = Arc::clone(&restored);
        let node = Arc::clone(node);
        async move { restore_shard(&node, &name, shard, count, &file, &restored).await }
    }))
    .buffer_unordered(SHARDS_AT_ONCE);
    let mut reported = Instant::now();
    while let Some(result) = work.next().await {
        result?;
        if reported.elapsed() > PROGRESS_EVERY {
            reported = Instant::now();
            info.documents_restored = restored.load(Ordering::Relaxed);
            let _ = put_restore(node, info).await;
        }
    }
    info.documents_restored = restored.load(Ordering::Relaxed);
    Ok(())
}

/// Downloads the chosen collections' files into `dir` (none longer than its manifest says).
pub async fn stage(
    location: &Location,
    manifest: &Manifest,
    entries: impl Iterator<Item = usize>,
    dir: &Path,
) -> Result<()> {
    let storage_error = |what: String| Error::unavailable(ErrorCode::StorageError, what);
    std::fs::create_dir_all(dir.join("data"))
        .map_err(|e| storage_error(format!("cannot create {}: {e}", dir.display())))?;
    for entry in entries {
        for shard in &manifest.collections[entry].shards {
            let target = dir.join(&shard.file);
            download(
                location.store.as_ref(),
                &location.path(&manifest.id, &shard.file),
                &target,
                shard.bytes,
            )
            .await?;
        }
    }
    // Digests and records are checked by `verify_staged`, which always follows.
    Ok(())
}

fn check_digest(
    id: &str,
    file: &str,
    bytes: u64,
    digest: u64,
    want_bytes: u64,
    want: &str,
) -> Result<()> {
    if bytes != want_bytes {
        return Err(invalid(format!(
            "backup {id} is damaged: {file} has {bytes} bytes, its manifest says {want_bytes}"
        )));
    }
    if format!("{digest:016x}") != want {
        return Err(invalid(format!(
            "backup {id} is corrupt: {file} has xxh3 {digest:016x}, its manifest says {want}"
        )));
    }
    Ok(())
}

async fn download(
    store: &dyn ObjectStore,
    from: &object_store::path::Path,
    to: &Path,
    expected: u64,
) -> Result<()> {
    let found = store
        .get(from)
        .await
        .map_err(|e| store_error(&format!("reading {from}"), e))?;
    let mut stream = found.into_stream();
    let part = to.with_extension("part");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&part).map_err(|e| {
        Error::unavailable(
            ErrorCode::StorageError,
            format!("cannot create {}: {e}", part.display()),
        )
    })?);
    let mut written = 0u64;
    while let Some(bytes) = stream.next().await {
        let bytes = bytes.map_err(|e| store_error(&format!("reading {from}"), e))?;
        written += bytes.len() as u64;
        if written > expected {
            drop(out);
            let _ = std::fs::remove_file(&part);
            return Err(invalid(format!(
                "{from} is longer than its manifest says ({expected} bytes): it changed since the backup"
            )));
        }
        out.write_all(&bytes).map_err(|e| {
            Error::unavailable(
                ErrorCode::StorageError,
                format!("writing {}: {e}", part.display()),
            )
        })?;
    }
    out.flush()
        .and_then(|()| std::fs::rename(&part, to))
        .map_err(|e| {
            Error::unavailable(
                ErrorCode::StorageError,
                format!("writing {}: {e}", to.display()),
            )
        })
}

async fn file_digest(path: PathBuf) -> Result<(u64, u64)> {
    blocking(move || {
        let mut file = std::fs::File::open(&path).map_err(|e| {
            Error::unavailable(
                ErrorCode::StorageError,
                format!("reading {}: {e}", path.display()),
            )
        })?;
        let mut digest = Xxh3::new();
        let mut buffer = vec![0u8; 1 << 20];
        let mut bytes = 0u64;
        loop {
            let n = std::io::Read::read(&mut file, &mut buffer).map_err(|e| {
                Error::unavailable(
                    ErrorCode::StorageError,
                    format!("reading {}: {e}", path.display()),
                )
            })?;
            if n == 0 {
                return Ok((bytes, digest.digest()));
            }
            digest.update(&buffer[..n]);
            bytes += n as u64;
        }
    })
    .await
}

/// Checks the staged files: lengths and digests, and that every record decodes into a valid
/// document of its collection and shard, with the manifest's count and checksum.
async fn verify_staged(
    manifest: &Manifest,
    entries: impl Iterator<Item = usize>,
    dir: &Path,
) -> Result<()> {
    for entry in entries {
        let config = manifest.collections[entry].config.clone();
        for shard in manifest.collections[entry].shards.clone() {
            let path = dir.join(&shard.file);
            let (bytes, digest) = file_digest(path.clone()).await?;
            check_digest(
                &manifest.id,
                &shard.file,
                bytes,
                digest,
                shard.bytes,
                &shard.xxh3,
            )?;
            let (id, config) = (manifest.id.clone(), config.clone());
            blocking(move || {
                let mut count = 0u64;
                let mut sum = 0u64;
                read_documents(&path, shard.shard, &config, |document, hash| {
                    count += 1;
                    sum = sum.wrapping_add(hash);
                    drop(document);
                    Ok(())
                })?;
                if count != shard.documents || format!("{sum:016x}") != shard.checksum {
                    return Err(invalid(format!(
                        "backup {id} is corrupt: {} holds {count} documents with checksum {sum:016x}; its manifest says {} with {}",
                        shard.file, shard.documents, shard.checksum
                    )));
                }
                Ok(())
            })
            .await?;
        }
    }
    Ok(())
}

/// Reads a staged shard file's documents (checked against the collection) with each one's
/// hash as `/admin/checksum` computes it.
fn read_documents(
    path: &Path,
    shard: u32,
    config: &CollectionConfig,
    mut each: impl FnMut(NewDocument, u64) -> Result<()>,
) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| {
        Error::unavailable(
            ErrorCode::StorageError,
            format!("reading {}: {e}", path.display()),
        )
    })?;
    let mut input = BufReader::with_capacity(1 << 20, file);
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("a shard file")
        .to_string();
    while let Some((id, value)) =
        read_record(&mut input).map_err(|e| invalid(format!("{name} cannot be read: {e}")))?
    {
        let document = check_record(&id, &value, shard, config.shard_count)?;
        check_document(config, &document)
            .map_err(|e| invalid(format!("{name}: document {id:?}: {}", e.message())))?;
        let hash = crate::shard::document_hash(&id, &value);
        each(document, hash)?;
    }
    Ok(())
}

/// Upserts one staged shard file into collection `name`, in batches.
async fn restore_shard(
    node: &Arc<Node>,
    name: &str,
    shard: u32,
    shard_count: u32,
    file: &Path,
    restored: &AtomicU64,
) -> Result<()> {
    let collection = catalog::collection(node, name)?;
    let group = collection.group(shard);
    let config = collection.config.clone();
    let (batches, mut receive) = tokio::sync::mpsc::channel::<Vec<NewDocument>>(2);
    let path = file.to_path_buf();
    let reader = tokio::task::spawn_blocking(move || {
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        read_documents(&path, shard, &config, |document, _| {
            bytes += document.vector.len() * 4 + document.id.len() + 64;
            batch.push(document);
            if batch.len() >= BATCH_DOCUMENTS || bytes >= BATCH_BYTES {
                bytes = 0;
                batches
                    .blocking_send(std::mem::take(&mut batch))
                    .map_err(|_| Error::Internal("the restore stopped".into()))?;
            }
            Ok(())
        })?;
        if !batch.is_empty() {
            let _ = batches.blocking_send(batch);
        }
        Ok::<(), Error>(())
    });
    let _ = shard_count;
    while let Some(batch) = receive.recv().await {
        let count = batch.len() as u64;
        // One request id for every try: a retry after a lost answer is answered, not applied
        // twice (and upserts are idempotent anyway).
        let command = ShardCommand::upsert(batch);
        let mut pause = Duration::from_millis(500);
        let mut tries = 0;
        let answer = loop {
            tries += 1;
            match propose(node, &group, Request::Shard(command.clone())).await {
                Err(Error::Unavailable { code, message })
                    if tries < BATCH_TRIES && code != ErrorCode::StorageError =>
                {
                    tracing::warn!(%group, %code, %message, tries, "a restore batch is retried");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(8));
                }
                other => break other?,
            }
        };
        match answer {
            Response::Shard(ShardResponse::Rejected { code, message }) => {
                return Err(Error::invalid(
                    code,
                    format!("{group} refused a batch: {message}"),
                ));
            }
            _ => {
                restored.fetch_add(count, Ordering::Relaxed);
            }
        }
    }
    reader
        .await
        .map_err(|e| Error::Internal(format!("a restore reader panicked: {e}")))?
}

/// What `grape restore` leaves for the node's first start.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PendingRestore {
    request: RestoreRequest,
    manifest: Manifest,
}

/// `grape restore`, before a node's first start: downloads and checks the backup into
/// `<data_dir>/restore/` and leaves it for the node to restore once the cluster has formed.
pub async fn prepare_offline(
    data_dir: &Path,
    request: RestoreRequest,
    config: &crate::config::Config,
) -> Result<Manifest> {
    if data_dir.join("CURRENT").exists() || data_dir.join("db").exists() {
        return Err(Error::conflict(
            ErrorCode::RestoreConflict,
            format!(
                "{} already holds a node's data: restore into a new data directory, or into a running cluster with POST /admin/restore",
                data_dir.display()
            ),
        ));
    }
    let location = Location::parse(&request.source, config)?;
    let id = match &request.backup_id {
        Some(id) => id.clone(),
        None => newest(&location).await?,
    };
    let manifest = read_manifest(&location, &id).await?;
    let entries = chosen_entries(&manifest, request.collections.as_deref())?;
    let dir = data_dir.join("restore").join(&id);
    let staged = async {
        stage(&location, &manifest, entries.iter().copied(), &dir).await?;
        verify_staged(&manifest, entries.iter().copied(), &dir).await
    }
    .await;
    if let Err(error) = staged {
        let _ = std::fs::remove_dir_all(data_dir.join("restore"));
        return Err(error);
    }
    let pending = PendingRestore {
        request: RestoreRequest {
            backup_id: Some(id),
            ..request
        },
        manifest: manifest.clone(),
    };
    let body = serde_json::to_vec_pretty(&pending)
        .map_err(|e| Error::Internal(format!("encoding {PENDING}: {e}")))?;
    std::fs::write(data_dir.join("restore").join(PENDING), body).map_err(|e| {
        Error::unavailable(ErrorCode::StorageError, format!("writing {PENDING}: {e}"))
    })?;
    Ok(manifest)
}

/// At start: carries out a restore `grape restore` prepared, once the cluster has formed and
/// this node is ready. Interrupted backups and restores of this node are recorded as failed
/// first.
pub async fn resume_pending(node: Arc<Node>) {
    while !node.is_ready() {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    super::fail_interrupted(&node).await;
    let file = node.config().node.data_dir.join("restore").join(PENDING);
    let Ok(bytes) = std::fs::read(&file) else {
        return;
    };
    let pending: PendingRestore = match serde_json::from_slice(&bytes) {
        Ok(pending) => pending,
        Err(error) => {
            tracing::error!(file = %file.display(), %error, "the prepared restore cannot be read; it is left as it is");
            return;
        }
    };
    let id = pending.manifest.id.clone();
    if node
        .meta_read()
        .restores
        .get(&id)
        .is_some_and(|r| r.state == BackupState::Done)
    {
        tracing::info!(backup = %id, "the prepared restore was done already (by another node)");
        let _ = std::fs::remove_dir_all(file.parent().unwrap_or(&file));
        return;
    }
    let started = async {
        let targets = plan(&node, &pending.manifest, &pending.request).await?;
        let dir = staging(&node, &id);
        begin(
            &node,
            pending.request.source.clone(),
            pending.manifest.clone(),
            targets,
            Source::Staged,
            dir,
        )
        .await
    }
    .await;
    if let Err(error) = started {
        tracing::error!(backup = %id, %error, "the prepared restore cannot start; it is tried again at the next start");
        return;
    }
    tracing::info!(backup = %id, "restoring the backup prepared by `grape restore`");
    while is_running_here(&node, &id) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Kept until done: a restart part-way goes on where it stopped.
    if node
        .meta_read()
        .restores
        .get(&id)
        .is_some_and(|r| r.state == BackupState::Done)
    {
        let _ = std::fs::remove_dir_all(file.parent().unwrap_or(&file));
    }
}
