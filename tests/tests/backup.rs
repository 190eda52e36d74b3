//! Backups and restores with real processes: a backup taken while writers run, restored into
//! fresh clusters of three nodes and of one; the same through a real S3-compatible server
//! (moto's); damaged and foreign backups refused; a restore killed part-way finished by
//! starting it again; `grape restore` before a node's first start.

use grape_client::{
    BackupInfo, BackupRequest, BackupState, DocumentInput, GrapeClient, RestoreInfo,
    RestoreRequest, SearchRequest, ShardChecksum,
};
use grape_e2e::load::{self, DIMENSION, Writers, urls_of};
use grape_e2e::{Cluster, GrapeNode, NodeOptions, vector};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SHARDS: u32 = 4;

fn options() -> NodeOptions {
    NodeOptions::dimension(DIMENSION).setting("DATABASE__SHARD_COUNT", &SHARDS.to_string())
}

async fn wait_backup(client: &GrapeClient, id: &str) -> BackupInfo {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let info = client.backup(id).await.expect("the backup's status");
        if info.state != BackupState::Running {
            return info;
        }
        assert!(
            Instant::now() < deadline,
            "backup {id} still running: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_restore(client: &GrapeClient, id: &str) -> RestoreInfo {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let restores = client.restores().await.expect("the restores' status");
        if let Some(info) = restores.restores.iter().find(|r| r.backup_id == id)
            && info.state != BackupState::Running
        {
            return info.clone();
        }
        assert!(
            Instant::now() < deadline,
            "restore of {id} still running: {restores:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every document id of a collection, read through the API.
async fn all_ids(client: &GrapeClient, collection: &str) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = client
            .collection(collection)
            .list(1000, cursor.as_deref())
            .await
            .expect("a page of documents");
        ids.extend(page.documents.into_iter().map(|d| d.id));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return ids,
        }
    }
}

/// The manifest's per-shard document counts and checksums, as `/admin/checksum` shows them.
fn manifest_checksums(dir: &Path, id: &str) -> Vec<(String, u32, u64, String)> {
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(dir.join(id).join("manifest.json")).expect("the manifest"),
    )
    .expect("a JSON manifest");
    let mut sums = Vec::new();
    for collection in manifest["collections"].as_array().expect("collections") {
        let name = collection["config"]["name"].as_str().unwrap().to_string();
        for shard in collection["shards"].as_array().expect("shards") {
            sums.push((
                name.clone(),
                shard["shard"].as_u64().unwrap() as u32,
                shard["documents"].as_u64().unwrap(),
                shard["checksum"].as_str().unwrap().to_string(),
            ));
        }
    }
    sums.sort();
    sums
}

fn as_tuples(sums: &[ShardChecksum]) -> Vec<(String, u32, u64, String)> {
    let mut all: Vec<_> = sums
        .iter()
        .map(|s| {
            (
                s.collection.clone(),
                s.shard,
                s.documents,
                s.checksum.clone(),
            )
        })
        .collect();
    all.sort();
    all
}

/// Results of 50 fixed queries over the base documents (wide `ef`: exact on these shards).
async fn answers(client: &GrapeClient) -> Vec<Vec<(String, String)>> {
    let mut all = Vec::new();
    for q in 0..50u64 {
        let request = SearchRequest {
            ef: Some(400),
            filter: Some(grape_client::Filter {
                must: vec![grape_client::Condition::matches("kind", "base")],
                ..Default::default()
            }),
            ..SearchRequest::new(vector(7_000_000 + q, DIMENSION), 5)
        };
        let response = client.default_collection().search(&request).await.unwrap();
        all.push(
            response
                .results
                .into_iter()
                .map(|r| (r.id, format!("{:.5}", r.score)))
                .collect(),
        );
    }
    all
}

fn file_uri(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

async fn restore_all(client: &GrapeClient, source: &str, id: &str) -> RestoreInfo {
    let started = client
        .start_restore(&RestoreRequest {
            source: source.to_string(),
            backup_id: Some(id.to_string()),
            collections: None,
            rename: BTreeMap::new(),
        })
        .await
        .expect("the restore starts");
    assert_eq!(started.backup_id, id);
    wait_restore(client, id).await
}

/// The cut is one instant for every shard: each writer writes one request after another
/// (`w{w}-{n}`, batches `w{w}-{n}-{i}`), so if a write of writer w is in the copy, every
/// acknowledged earlier write of w is too, whatever shard it went to.
fn assert_causal(ids: &BTreeSet<String>, acked: &BTreeMap<String, u64>) {
    let position = |id: &str| -> Option<(u64, u64)> {
        let mut parts = id.strip_prefix('w')?.split('-');
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    };
    let mut newest: BTreeMap<u64, u64> = BTreeMap::new();
    for id in ids {
        if let Some((w, n)) = position(id) {
            let entry = newest.entry(w).or_insert(n);
            *entry = (*entry).max(n);
        }
    }
    for id in acked.keys() {
        let (w, n) = position(id).expect("a writer's id");
        if newest.get(&w).is_some_and(|&last| n < last) {
            assert!(
                ids.contains(id),
                "{id} was acknowledged before a later write of its writer that is in the copy, but it is not in the copy"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_taken_while_writers_run_restores_into_three_and_one_node_clusters() {
    let source = Cluster::start(3, options()).await;
    load::load_base_documents(&source, 4000).await.unwrap();
    let urls = Arc::new(Mutex::new(urls_of(&source)));
    let writers = Writers::start(Arc::clone(&urls), 4);
    while writers.count() < 200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let client = source.node(1).client();
    // Every write acknowledged before the request is in the backup.
    let before: BTreeMap<String, u64> = writers.acked_now();
    let backups = tempfile::tempdir().unwrap();
    let started = client
        .start_backup(&BackupRequest {
            destination: file_uri(backups.path()),
            collections: None,
            tag: None,
        })
        .await
        .expect("the backup starts");
    assert_eq!(started.shards_total, SHARDS);
    let info = wait_backup(&client, &started.id).await;
    let acked = writers.stop().await;
    assert_eq!(info.state, BackupState::Done, "{info:?}");
    let expected = manifest_checksums(backups.path(), &info.id);
    let total: u64 = expected.iter().map(|s| s.2).sum();
    assert_eq!(total, info.documents);
    assert!(
        total >= 4000 + before.len() as u64,
        "{total} documents backed up; {} were acknowledged before it started",
        4000 + before.len()
    );
    assert!(
        total <= 4000 + acked.len() as u64,
        "{total} documents backed up; only {} were ever acknowledged",
        4000 + acked.len()
    );
    assert!(backups.path().join(&info.id).join("started.json").exists());
    // Every node lists it.
    for node in &source.nodes {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let listed = node.client().backups().await.unwrap();
            if listed
                .backups
                .first()
                .is_some_and(|b| b.id == info.id && b.state == BackupState::Done)
            {
                break;
            }
            assert!(Instant::now() < deadline, "{} lists {listed:?}", node.url);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let source_answers = answers(&client).await;

    for size in [3usize, 1] {
        let target = Cluster::start(size, options()).await;
        let client = target.node(1).client();
        let restored = restore_all(&client, &file_uri(backups.path()), &info.id).await;
        assert_eq!(restored.state, BackupState::Done, "{restored:?}");
        assert_eq!(restored.documents_restored, total);
        let sums = load::converged(&target, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(
            as_tuples(&sums),
            expected,
            "the restored shards' checksums differ from the manifest's ({size} nodes)"
        );
        let ids = all_ids(&client, "default").await;
        for id in before.keys() {
            assert!(
                ids.contains(id),
                "{id}, acknowledged before the backup, is missing"
            );
        }
        assert!(
            ids.iter()
                .all(|id| id.starts_with("base-") || acked.contains_key(id))
        );
        assert_causal(&ids, &acked);
        assert_eq!(
            answers(&client).await,
            source_answers,
            "searches differ after the restore into {size} nodes"
        );
        // Restoring again into a cluster that now holds the documents is refused.
        let again = client
            .start_restore(&RestoreRequest {
                source: file_uri(backups.path()),
                backup_id: Some(info.id.clone()),
                collections: None,
                rename: BTreeMap::new(),
            })
            .await
            .expect_err("a restore over documents");
        assert!(again.to_string().contains("holds documents"), "{again}");
    }
}

/// moto's S3 server on a free loopback port, stopped when dropped.
struct Moto {
    child: std::process::Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto_server() -> PathBuf {
    if let Ok(path) = std::env::var("GRAPE_TEST_MOTO_SERVER") {
        return PathBuf::from(path);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = root.join(".tools/moto/bin/moto_server");
    assert!(
        path.exists(),
        "no moto server at {path:?}: run ./scripts/setup.sh (it installs moto from PyPI)"
    );
    path
}

async fn start_moto() -> Moto {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new(moto_server())
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("moto_server starts");
    let moto = Moto {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(&moto.endpoint).await.is_err() {
        assert!(Instant::now() < deadline, "moto did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    moto
}

fn s3_options(moto: &Moto, credentials: &Path) -> NodeOptions {
    let mut options = options().setting("BACKUP__CREDENTIALS_FILE", &credentials.to_string_lossy());
    options.env.extend([
        ("AWS_ENDPOINT".into(), moto.endpoint.clone()),
        ("AWS_ALLOW_HTTP".into(), "true".into()),
        ("AWS_REGION".into(), "us-east-1".into()),
    ]);
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backups_go_to_and_come_back_from_an_s3_compatible_server() {
    let moto = start_moto().await;
    let created = reqwest::Client::new()
        .put(format!("{}/grape-backups", moto.endpoint))
        .send()
        .await
        .unwrap();
    assert!(created.status().is_success(), "{created:?}");
    // The keys come from the credentials file (moto accepts any).
    let (_keys, credentials) = grape_e2e::temp_file(
        "s3.env",
        "# test keys\nAWS_ACCESS_KEY_ID=grape-test-key\nAWS_SECRET_ACCESS_KEY=grape-test-secret-value\n",
    );
    let source = Cluster::start(3, s3_options(&moto, &credentials)).await;
    load::load_base_documents(&source, 3000).await.unwrap();
    let client = source.node(2).client();
    let destination = "s3://grape-backups/nightly/cluster-a";
    let started = client
        .start_backup(&BackupRequest {
            destination: destination.into(),
            collections: None,
            tag: None,
        })
        .await
        .expect("the backup starts");
    let info = wait_backup(&client, &started.id).await;
    assert_eq!(info.state, BackupState::Done, "{info:?}");
    assert_eq!(info.documents, 3000);
    assert_eq!(info.location, format!("{destination}/{}", info.id));
    let source_sums = as_tuples(
        &load::converged(&source, Duration::from_secs(30))
            .await
            .unwrap(),
    );
    let source_answers = answers(&client).await;
    // The secret never shows, in answers or logs.
    let listed = serde_json::to_string(&client.backups().await.unwrap()).unwrap();
    assert!(!listed.contains("grape-test-secret-value"));
    for node in &source.nodes {
        assert!(!node.log_text().contains("grape-test-secret-value"));
    }
    // A bucket that does not exist is refused at once.
    let missing = client
        .start_backup(&BackupRequest {
            destination: "s3://no-such-bucket/x".into(),
            collections: None,
            tag: None,
        })
        .await
        .expect_err("a backup into a missing bucket");
    assert!(
        missing.to_string().contains("invalid_location"),
        "{missing}"
    );

    // Into one node: the newest backup at the location, found by listing.
    let target = GrapeNode::start(s3_options(&moto, &credentials)).await;
    let client = target.client();
    client
        .start_restore(&RestoreRequest {
            source: destination.into(),
            backup_id: None,
            collections: None,
            rename: BTreeMap::new(),
        })
        .await
        .expect("the restore starts");
    let restored = wait_restore(&client, &info.id).await;
    assert_eq!(restored.state, BackupState::Done, "{restored:?}");
    let sums = as_tuples(&client.checksum().await.unwrap().shards);
    assert_eq!(sums, source_sums);
    assert_eq!(answers(&client).await, source_answers);

    // Deleting a backup (what a schedule's retention does): its objects and its record go,
    // the other backup at the same destination stays and is the newest one restored.
    let source_client = source.node(1).client();
    let second = source_client
        .start_backup(&BackupRequest {
            destination: destination.into(),
            collections: None,
            tag: None,
        })
        .await
        .unwrap();
    assert_eq!(
        wait_backup(&source_client, &second.id).await.state,
        BackupState::Done
    );
    let keys = |id: String| {
        let endpoint = moto.endpoint.clone();
        async move {
            let listing = reqwest::get(format!(
                "{endpoint}/grape-backups?list-type=2&prefix=nightly/cluster-a/{id}/"
            ))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
            listing.matches("<Key>").count()
        }
    };
    let files = keys(info.id.clone()).await;
    assert!(files >= 2 + SHARDS as usize, "{files} objects listed");
    let deleted = source_client.delete_backup(&info.id, None).await.unwrap();
    assert_eq!(deleted.objects_deleted, files as u64);
    assert_eq!(keys(info.id.clone()).await, 0);
    assert!(keys(second.id.clone()).await >= 2 + SHARDS as usize);
    let gone = source_client.backup(&info.id).await.unwrap_err();
    assert!(gone.to_string().contains("backup_not_found"), "{gone}");
    let again = source_client
        .delete_backup(&info.id, None)
        .await
        .unwrap_err();
    assert!(again.to_string().contains("backup_not_found"), "{again}");
    let fresh = GrapeNode::start(s3_options(&moto, &credentials)).await;
    let refused = fresh
        .client()
        .start_restore(&RestoreRequest {
            source: destination.into(),
            backup_id: Some(info.id.clone()),
            collections: None,
            rename: BTreeMap::new(),
        })
        .await
        .expect_err("a deleted backup is not restored");
    assert!(refused.to_string().contains(&info.id), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_a_backup_removes_its_folder_and_record() {
    let node = GrapeNode::start(options()).await;
    let client = node.client();
    let docs: Vec<DocumentInput> = (0..2000).map(|i| load::doc(&format!("d{i}"), i)).collect();
    for batch in docs.chunks(500) {
        client
            .default_collection()
            .upsert_batch(batch)
            .await
            .unwrap();
    }
    let backups = tempfile::tempdir().unwrap();
    let request = BackupRequest {
        destination: file_uri(backups.path()),
        collections: None,
        tag: None,
    };
    let first = client.start_backup(&request).await.unwrap();
    let first = wait_backup(&client, &first.id).await;
    assert_eq!(first.state, BackupState::Done, "{first:?}");
    let second = client.start_backup(&request).await.unwrap();
    assert_eq!(
        wait_backup(&client, &second.id).await.state,
        BackupState::Done
    );
    // Someone with write access to the shared folder planted links inside the backup: to a
    // file and to a folder outside it. Deleting removes the links, never what they point to.
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("precious"), "keep me").unwrap();
    let data = backups.path().join(&first.id).join("data");
    std::os::unix::fs::symlink(outside.path().join("precious"), data.join("x.records")).unwrap();
    std::os::unix::fs::symlink(outside.path(), data.join("folder")).unwrap();
    let deleted = client.delete_backup(&first.id, None).await.unwrap();
    assert_eq!(deleted.id, first.id);
    assert!(deleted.objects_deleted >= 2 + SHARDS as u64, "{deleted:?}");
    assert!(!backups.path().join(&first.id).exists());
    assert_eq!(
        std::fs::read_to_string(outside.path().join("precious")).unwrap(),
        "keep me"
    );
    assert!(
        backups
            .path()
            .join(&second.id)
            .join("manifest.json")
            .exists()
    );
    let listed: Vec<String> = client
        .backups()
        .await
        .unwrap()
        .backups
        .into_iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(listed, vec![second.id.clone()]);
    let again = client.delete_backup(&first.id, None).await.unwrap_err();
    assert!(again.to_string().contains("backup_not_found"), "{again}");

    // A cluster with no record of a backup (another cluster took it, or the record was
    // pruned) deletes it where it was written, if a Grape backup of that id is there.
    let other = GrapeNode::start(options()).await;
    let other = other.client();
    let destination = file_uri(backups.path());
    let unknown = other
        .delete_backup(&second.id, None)
        .await
        .expect_err("no record, no destination");
    assert!(
        unknown.to_string().contains("backup_not_found"),
        "{unknown}"
    );
    let stranger = backups.path().join("20261203T000000Z-beef");
    std::fs::create_dir_all(&stranger).unwrap();
    std::fs::write(stranger.join("notes.txt"), "not a backup").unwrap();
    let refused = other
        .delete_backup("20261203T000000Z-beef", Some(&destination))
        .await
        .expect_err("a folder that holds no backup");
    assert!(
        refused.to_string().contains("backup_not_found"),
        "{refused}"
    );
    assert!(stranger.join("notes.txt").exists());
    let deleted = other
        .delete_backup(&second.id, Some(&destination))
        .await
        .unwrap();
    assert!(deleted.objects_deleted >= 2 + SHARDS as u64, "{deleted:?}");
    assert!(!backups.path().join(&second.id).exists());
    // The cluster that took it still lists it, and deleting it there finishes quietly.
    assert_eq!(client.backups().await.unwrap().backups.len(), 1);
    let deleted = client.delete_backup(&second.id, None).await.unwrap();
    assert_eq!(deleted.objects_deleted, 0);
    assert!(client.backups().await.unwrap().backups.is_empty());
}

/// Copies a backup's folder to a new location.
fn copy_backup(from: &Path, id: &str) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    let copy = |from: &Path, to: &Path| {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            if entry.path().is_file() {
                std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
            }
        }
    };
    copy(&from.join(id), &to.path().join(id));
    copy(
        &from.join(id).join("data"),
        &to.path().join(id).join("data"),
    );
    to
}

async fn nothing_restored(client: &GrapeClient) {
    let collections = client.list_collections().await.unwrap();
    let names: Vec<&str> = collections
        .collections
        .iter()
        .map(|c| c.config.name.as_str())
        .collect();
    assert_eq!(names, ["default"], "a refused restore created collections");
    assert!(all_ids(client, "default").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn damaged_and_foreign_backups_are_refused_and_leave_nothing() {
    let source = GrapeNode::start(options()).await;
    let client = source.client();
    // A collection of its own: a restore that created anything too early would show.
    let config: grape_client::CollectionConfig = serde_json::from_value(serde_json::json!({
        "name": "docs", "dimension": DIMENSION, "shard_count": 2, "metric": "l2"
    }))
    .unwrap();
    client.create_collection(&config).await.unwrap();
    let docs: Vec<DocumentInput> = (0..2000).map(|i| load::doc(&format!("d{i}"), i)).collect();
    for batch in docs.chunks(500) {
        client.collection("docs").upsert_batch(batch).await.unwrap();
    }
    let backups = tempfile::tempdir().unwrap();
    let started = client
        .start_backup(&BackupRequest {
            destination: file_uri(backups.path()),
            collections: Some(vec!["docs".into()]),
            tag: None,
        })
        .await
        .unwrap();
    let info = wait_backup(&client, &started.id).await;
    assert_eq!(info.state, BackupState::Done, "{info:?}");
    let id = info.id.clone();
    let target = GrapeNode::start(options()).await;
    let client = target.client();
    let request = |dir: &Path| RestoreRequest {
        source: file_uri(dir),
        backup_id: Some(id.clone()),
        collections: None,
        rename: BTreeMap::new(),
    };
    let shard_file = |dir: &Path| dir.join(&id).join("data").join("c0-s1.records");

    // Truncated: refused at once, by length.
    let truncated = copy_backup(backups.path(), &id);
    let file = shard_file(truncated.path());
    let length = std::fs::metadata(&file).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(length / 2)
        .unwrap();
    let refused = client
        .start_restore(&request(truncated.path()))
        .await
        .expect_err("a truncated backup");
    let text = refused.to_string();
    assert!(
        text.contains("invalid_backup") && text.contains("bytes"),
        "{text}"
    );

    // A missing file: refused at once.
    let missing = copy_backup(backups.path(), &id);
    std::fs::remove_file(shard_file(missing.path())).unwrap();
    let refused = client
        .start_restore(&request(missing.path()))
        .await
        .expect_err("an incomplete backup");
    assert!(refused.to_string().contains("missing"), "{refused}");

    // A newer format: refused at once, naming it.
    let foreign = copy_backup(backups.path(), &id);
    let manifest_path = foreign.path().join(&id).join("manifest.json");
    let mut manifest: Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    manifest["format"] = Value::from(99);
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let refused = client
        .start_restore(&request(foreign.path()))
        .await
        .expect_err("a backup of an unknown format");
    assert!(refused.to_string().contains("format 99"), "{refused}");

    // A truncated manifest.
    let cut = copy_backup(backups.path(), &id);
    let manifest_path = cut.path().join(&id).join("manifest.json");
    let bytes = std::fs::read(&manifest_path).unwrap();
    std::fs::write(&manifest_path, &bytes[..bytes.len() / 2]).unwrap();
    let refused = client
        .start_restore(&request(cut.path()))
        .await
        .expect_err("a truncated manifest");
    assert!(refused.to_string().contains("not valid JSON"), "{refused}");

    // A flipped byte: same length, found by its digest before anything is created.
    let corrupt = copy_backup(backups.path(), &id);
    let file = shard_file(corrupt.path());
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&file, &bytes).unwrap();
    client
        .start_restore(&request(corrupt.path()))
        .await
        .expect("a restore whose files have the right lengths starts");
    let failed = wait_restore(&client, &id).await;
    assert_eq!(failed.state, BackupState::Failed);
    let error = failed.error.unwrap_or_default();
    assert!(
        error.contains("corrupt") && error.contains("c0-s1"),
        "{error}"
    );
    nothing_restored(&client).await;
    assert!(
        !target.data_dir.path().join("restore").join(&id).exists(),
        "the staged files of a refused restore were left behind"
    );

    // The same refusals before a first start: `grape restore` exits non-zero, leaves nothing.
    for (what, dir) in [("a corrupt", &corrupt), ("a truncated", &truncated)] {
        let data = tempfile::tempdir().unwrap();
        let output = std::process::Command::new(grape_e2e::grape_binary())
            .args([
                "restore",
                "--from",
                &file_uri(dir.path()),
                "--backup-id",
                &id,
            ])
            .arg("--data-dir")
            .arg(data.path())
            .output()
            .unwrap();
        assert!(!output.status.success(), "{what} backup was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(&id), "{stderr}");
        assert_eq!(
            std::fs::read_dir(data.path()).unwrap().count(),
            0,
            "{what} backup left files in the data directory"
        );
    }

    // The intact backup restores.
    let restored = restore_all(&client, &file_uri(backups.path()), &id).await;
    assert_eq!(restored.state, BackupState::Done, "{restored:?}");
    let restored_sums: Vec<_> = as_tuples(&client.checksum().await.unwrap().shards)
        .into_iter()
        .filter(|s| s.0 == "docs")
        .collect();
    assert_eq!(restored_sums, manifest_checksums(backups.path(), &id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restore_killed_part_way_finishes_when_started_again() {
    let source = GrapeNode::start(options()).await;
    let client = source.client();
    let total = 60_000u64;
    for start in (0..total).step_by(1000) {
        let batch: Vec<DocumentInput> = (start..start + 1000)
            .map(|i| load::doc(&format!("d{i}"), i))
            .collect();
        client
            .default_collection()
            .upsert_batch(&batch)
            .await
            .unwrap();
    }
    let backups = tempfile::tempdir().unwrap();
    let started = client
        .start_backup(&BackupRequest {
            destination: file_uri(backups.path()),
            collections: None,
            tag: None,
        })
        .await
        .unwrap();
    let info = wait_backup(&client, &started.id).await;
    assert_eq!(info.state, BackupState::Done, "{info:?}");
    let expected = manifest_checksums(backups.path(), &info.id);

    let mut target = GrapeNode::start(options()).await;
    target
        .client()
        .start_restore(&RestoreRequest {
            source: file_uri(backups.path()),
            backup_id: Some(info.id.clone()),
            collections: None,
            rename: BTreeMap::new(),
        })
        .await
        .unwrap();
    // Killed once some documents are in, before all are.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let held = target.client().stats().await.unwrap().documents;
        if held > 0 {
            assert!(
                held < total,
                "the restore finished before it could be killed"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the restore wrote nothing");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    target.kill9();
    target.restart().await;
    let client = target.client();
    let interrupted = wait_restore(&client, &info.id).await;
    assert_eq!(interrupted.state, BackupState::Failed);
    assert!(
        interrupted
            .error
            .as_deref()
            .unwrap_or("")
            .contains("restarted"),
        "{interrupted:?}"
    );
    let finished = restore_all(&client, &file_uri(backups.path()), &info.id).await;
    assert_eq!(finished.state, BackupState::Done, "{finished:?}");
    assert_eq!(
        as_tuples(&client.checksum().await.unwrap().shards),
        expected
    );

    // `grape restore` before a first start: the node restores the backup once it runs.
    let data = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(grape_e2e::grape_binary())
        .args(["restore", "--from", &file_uri(backups.path())])
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let fresh = GrapeNode::start_in(options(), data).await;
    let restored = wait_restore(&fresh.client(), &info.id).await;
    assert_eq!(restored.state, BackupState::Done, "{restored:?}");
    assert_eq!(
        as_tuples(&fresh.client().checksum().await.unwrap().shards),
        expected
    );
    // The staged backup is deleted once the restore is done.
    let deadline = Instant::now() + Duration::from_secs(10);
    while fresh.data_dir.path().join("restore").exists() {
        assert!(Instant::now() < deadline, "the staged backup was kept");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
