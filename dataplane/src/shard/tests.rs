use super::*;
use crate::index::OriginalsPlace;
use crate::storage::StorageOptions;
use grape_client::{Metric, Quantization};
use serde_json::json;

fn doc(id: &str, vector: Vec<f32>, metadata: serde_json::Value) -> NewDocument {
    NewDocument {
        id: id.into(),
        vector,
        metadata: metadata.as_object().cloned().unwrap_or_default(),
    }
}

fn open_in(storage: &Arc<Storage>, namespace: &str) -> Shard {
    let mut config = CollectionConfig::new("docs", 2);
    config.metric = Metric::L2;
    Shard::open(
        Arc::new(config),
        namespace,
        Arc::clone(storage),
        Arc::new(IndexWorker::new(1).unwrap()),
        IndexOptions {
            rebuild_threshold: 10,
            ..IndexOptions::default()
        },
    )
    .unwrap()
}

fn storage(dir: &std::path::Path) -> Arc<Storage> {
    Arc::new(Storage::open(dir, &StorageOptions::default()).unwrap())
}

#[test]
fn commands_apply_in_order_and_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let storage = storage(dir.path());
        let shard = open_in(&storage, "docs/0");
        let upsert = ShardCommand::Upsert {
            request: None,
            documents: vec![
                doc("a", vec![0.0, 0.0], json!({"k": 1})),
                doc("b", vec![1.0, 0.0], json!({})),
                doc("a", vec![5.0, 5.0], json!({"k": 2})),
            ],
        };
        let delete = ShardCommand::Delete {
            request: None,
            ids: vec!["b".into(), "nope".into(), "b".into()],
        };
        let responses = shard.apply(&[&upsert, &delete], b"m2").unwrap();
        assert_eq!(
            responses,
            vec![
                ShardResponse::Upserted { count: 3 },
                ShardResponse::Deleted {
                    existed: vec![true, false, false]
                }
            ]
        );
        assert_eq!(shard.len(), 1);
        storage.sync().unwrap();
    }
    let storage = storage(dir.path());
    let shard = open_in(&storage, "docs/0");
    assert_eq!(shard.applied_marker().as_deref(), Some(&b"m2"[..]));
    assert_eq!(shard.len(), 1);
    let a = shard.get("a").unwrap().unwrap();
    assert_eq!(a.vector, vec![5.0, 5.0]);
    assert_eq!(a.metadata["k"], 2);
    assert!(shard.get("b").unwrap().is_none());
    let hits = shard.search(&[5.0, 5.0], 5, 16, None, None).unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(&*hits[0].id, "a");
    assert_eq!(hits[0].score, 0.0);
    // Another namespace in the same storage is independent.
    assert!(open_in(&storage, "docs/1").is_empty());
}

#[test]
fn selective_filters_are_answered_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let shard = open_in(&storage(dir.path()), "docs/0");
    let documents = (0..500)
        .map(|i| {
            doc(
                &format!("d{i}"),
                vec![i as f32, 0.0],
                json!({"even": i % 2 == 0, "i": i}),
            )
        })
        .collect();
    shard
        .apply(
            &[&ShardCommand::Upsert {
                documents,
                request: None,
            }],
            b"1",
        )
        .unwrap();
    let filter: grape_client::Filter = serde_json::from_value(json!({
        "must": [{"key": "even", "match": false}, {"key": "i", "range": {"gte": 100}}]
    }))
    .unwrap();
    let filter = CompiledFilter::new(
        &filter,
        filter::FilterLimits {
            conditions: 8,
            values: 8,
        },
    )
    .unwrap();
    let hits = shard
        .search(&[0.0, 0.0], 3, 16, Some(&filter), None)
        .unwrap();
    let ids: Vec<&str> = hits.iter().map(|h| &*h.id).collect();
    assert_eq!(ids, ["d101", "d103", "d105"]);
}

#[test]
fn checksums_depend_on_content_not_on_write_order() {
    let a = tempfile::tempdir().unwrap();
    let (sa, sb) = {
        let storage = storage(a.path());
        (open_in(&storage, "x/0"), open_in(&storage, "y/0"))
    };
    let d1 = doc("x", vec![1.0, 2.0], json!({"t": "x"}));
    let d2 = doc("y", vec![3.0, 4.0], json!({}));
    sa.apply(
        &[&ShardCommand::Upsert {
            request: None,
            documents: vec![d1.clone(), d2.clone()],
        }],
        b"1",
    )
    .unwrap();
    sb.apply(
        &[&ShardCommand::Upsert {
            request: None,
            documents: vec![d2],
        }],
        b"1",
    )
    .unwrap();
    sb.apply(
        &[&ShardCommand::Upsert {
            request: None,
            documents: vec![d1.clone()],
        }],
        b"2",
    )
    .unwrap();
    assert_eq!(sa.checksum().unwrap(), sb.checksum().unwrap());
    let mut changed = d1;
    changed.metadata.insert("t".into(), json!("changed"));
    sb.apply(
        &[&ShardCommand::Upsert {
            request: None,
            documents: vec![changed],
        }],
        b"3",
    )
    .unwrap();
    assert_ne!(sa.checksum().unwrap(), sb.checksum().unwrap());
}

#[test]
fn a_snapshot_restores_an_identical_replica() {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage(dir.path());
    let source = open_in(&storage, "s/0");
    let documents = (0..300)
        .map(|i| doc(&format!("d{i}"), vec![i as f32, 1.0], json!({"i": i})))
        .collect();
    source
        .apply(
            &[&ShardCommand::Upsert {
                documents,
                request: None,
            }],
            b"at-7",
        )
        .unwrap();
    source
        .apply(
            &[&ShardCommand::Delete {
                request: None,
                ids: vec!["d5".into()],
            }],
            b"at-8",
        )
        .unwrap();
    let (marker, data) = source.snapshot().unwrap();
    assert_eq!(marker.as_deref(), Some(&b"at-8"[..]));

    let target = open_in(&storage, "t/0");
    target
        .apply(
            &[&ShardCommand::Upsert {
                request: None,
                documents: vec![doc("stale", vec![0.0, 0.0], json!({}))],
            }],
            b"old",
        )
        .unwrap();
    target.restore(b"at-8", &data).unwrap();
    assert_eq!(target.len(), 299);
    assert!(!target.contains("stale") && !target.contains("d5"));
    assert_eq!(target.checksum().unwrap(), source.checksum().unwrap());
    assert_eq!(target.applied_marker().as_deref(), Some(&b"at-8"[..]));
    let hits = target.search(&[42.0, 1.0], 1, 16, None, None).unwrap();
    assert_eq!(&*hits[0].id, "d42");
    assert!(
        target.restore(b"x", &data[..data.len() - 3]).is_err(),
        "a truncated snapshot is refused"
    );
    assert_eq!(target.len(), 299, "and leaves the replica as it was");
}

/// A shard "t/0" holding `n` documents `o0..`, applied at `marker`.
fn shard_with(
    storage: &Arc<Storage>,
    namespace: &str,
    prefix: &str,
    n: usize,
    marker: &[u8],
) -> Shard {
    let shard = open_in(storage, namespace);
    let documents = (0..n)
        .map(|i| {
            doc(
                &format!("{prefix}{i}"),
                vec![i as f32, 1.0],
                json!({"i": i}),
            )
        })
        .collect();
    shard
        .apply(
            &[&ShardCommand::Upsert {
                documents,
                request: Some(7),
            }],
            marker,
        )
        .unwrap();
    shard
}

/// Reads from `data`, calling `during` before every read.
struct Watched<'a> {
    data: &'a [u8],
    during: &'a mut dyn FnMut(usize),
    at: usize,
}

impl std::io::Read for Watched<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        (self.during)(self.at);
        let n = buffer.len().min(self.data.len() - self.at).min(4096);
        buffer[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[test]
fn readers_see_the_old_content_until_an_install_switches_whole() {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage(dir.path());
    let source = shard_with(&storage, "s/0", "n", 3000, b"new");
    let (_, data) = source.snapshot().unwrap();
    let target = shard_with(&storage, "t/0", "o", 50, b"old");
    let old_checksum = target.checksum().unwrap();
    let mut reads = 0;
    let mut during = |_at: usize| {
        reads += 1;
        // Mid-install, every read still answers from the whole old content.
        assert_eq!(target.len(), 50);
        assert!(target.get("o7").unwrap().is_some());
        assert!(target.get("n7").unwrap().is_none());
        assert_eq!(target.list(None, 100).unwrap().len(), 50);
        assert_eq!(target.checksum().unwrap(), old_checksum);
        let hits = target.search(&[7.0, 1.0], 1, 16, None, None).unwrap();
        assert_eq!(&*hits[0].id, "o7");
    };
    target
        .restore_from(
            b"new",
            &mut Watched {
                data: &data,
                during: &mut during,
                at: 0,
            },
        )
        .unwrap();
    assert!(reads > 10, "the install read its input in pieces ({reads})");
    assert_eq!(target.len(), 3000);
    assert!(target.get("o7").unwrap().is_none());
    assert_eq!(target.checksum().unwrap(), source.checksum().unwrap());
    // The old generation is gone from storage, and a second install works the same way.
    let old_rows = storage.rows_under(&generation_namespace("t/0", 0));
    assert_eq!(old_rows, 0);
    let (_, again) = shard_with(&storage, "u/0", "x", 5, b"x")
        .snapshot()
        .unwrap();
    target.restore(b"x", &again).unwrap();
    assert_eq!(target.len(), 5);
    assert_eq!(
        storage.generations("t/0").unwrap(),
        Generations {
            current: 2,
            stale: vec![]
        }
    );
}

/// A batch writing document `n1` into generation 1 of `t/0`.
fn document_in_generation_1(storage: &Storage) -> Changes {
    let mut changes = Changes::default();
    changes.put_document(
        storage,
        &generation_namespace("t/0", 1),
        "n1",
        &encode_document(&[1.0, 1.0], &Metadata::new()),
    );
    changes
}

#[test]
fn a_crash_mid_install_leaves_the_old_content_and_no_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    let data = {
        let storage = storage(dir.path());
        let source = shard_with(&storage, "s/0", "n", 20_000, b"new");
        source.snapshot().unwrap().1
    };
    let old_checksum;
    {
        let storage = storage(dir.path());
        let target = shard_with(&storage, "t/0", "o", 50, b"old");
        old_checksum = target.checksum().unwrap();
        // The install dies (as a process would) while it writes the new content's files.
        let crashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut during = |at: usize| {
                if at > data.len() * 9 / 10 {
                    panic!("crash");
                }
            };
            let _ = target.restore_from(
                b"new",
                &mut Watched {
                    data: &data,
                    during: &mut during,
                    at: 0,
                },
            );
        }));
        assert!(crashed.is_err());
        assert_eq!(storage.generations("t/0").unwrap().stale, vec![1]);
        let staged = std::fs::read_dir(dir.path().join("ingest"))
            .unwrap()
            .count();
        assert_eq!(staged, 1, "the crash leaves its staged files behind");
        // As if it had died later, with the new content ingested but not yet switched to.
        let changes = document_in_generation_1(&storage);
        storage.commit(changes).unwrap();
    }
    let storage = storage(dir.path());
    assert!(
        !dir.path().join("ingest").exists(),
        "staged files are dropped at open"
    );
    let reopened = open_in(&storage, "t/0");
    assert_eq!(reopened.len(), 50);
    assert_eq!(reopened.checksum().unwrap(), old_checksum);
    assert_eq!(reopened.applied_marker().as_deref(), Some(&b"old"[..]));
    let leftovers = storage.rows_under(&generation_namespace("t/0", 1));
    assert_eq!(leftovers, 0);
    assert_eq!(storage.generations("t/0").unwrap(), Generations::default());
    // And a crash after the switch, before the old generation was deleted, keeps the new.
    let mut changes = document_in_generation_1(&storage);
    changes.set_applied(&storage, &generation_namespace("t/0", 1), b"new");
    changes.set_generations(
        &storage,
        "t/0",
        &Generations {
            current: 1,
            stale: vec![0],
        },
    );
    storage.commit(changes).unwrap();
    drop(reopened);
    let switched = open_in(&storage, "t/0");
    assert_eq!(switched.len(), 1);
    assert!(switched.contains("n1"));
    assert_eq!(switched.applied_marker().as_deref(), Some(&b"new"[..]));
    let old_rows = storage.rows_under(&generation_namespace("t/0", 0));
    assert_eq!(old_rows, 0);
    // Dropping the replica removes every generation.
    switched.destroy().unwrap();
    assert_eq!(open_in(&storage, "t/0").len(), 0);
}

/// A shard of a cosine collection of dimension 4.
fn cosine_shard(storage: &Arc<Storage>) -> Shard {
    Shard::open(
        Arc::new(CollectionConfig::new("docs", 4)),
        "cos/0",
        Arc::clone(storage),
        Arc::new(IndexWorker::new(1).unwrap()),
        IndexOptions::default(),
    )
    .unwrap()
}

#[test]
fn invalid_commands_are_rejected_alike_on_every_replica_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage(dir.path());
    // Two replicas of the same shard (in one RocksDB, two namespaces).
    let replicas = [
        cosine_shard(&storage),
        Shard::open(
            Arc::new(CollectionConfig::new("docs", 4)),
            "cos/1",
            Arc::clone(&storage),
            Arc::new(IndexWorker::new(1).unwrap()),
            IndexOptions::default(),
        )
        .unwrap(),
    ];
    let good = ShardCommand::Upsert {
        request: None,
        documents: vec![doc("good", vec![0.1, 0.2, 0.3, 0.4], json!({}))],
    };
    let bad: Vec<(ErrorCode, NewDocument)> = vec![
        (
            ErrorCode::DimensionMismatch,
            doc("d", vec![1.0; 3], json!({})),
        ),
        (
            ErrorCode::DimensionMismatch,
            doc("d", vec![1.0; 5], json!({})),
        ),
        (
            ErrorCode::InvalidVector,
            doc("d", vec![1.0, f32::NAN, 0.0, 0.0], json!({})),
        ),
        (
            ErrorCode::InvalidVector,
            doc("d", vec![f32::INFINITY, 0.0, 0.0, 0.0], json!({})),
        ),
        (
            ErrorCode::InvalidVector,
            doc("d", vec![1e-30; 4], json!({})),
        ),
        (
            ErrorCode::InvalidVector,
            doc("d", vec![1e-45, 0.0, 0.0, 0.0], json!({})),
        ),
        (ErrorCode::InvalidVector, doc("d", vec![1e20; 4], json!({}))),
        (ErrorCode::InvalidVector, doc("d", vec![0.0; 4], json!({}))),
        (ErrorCode::InvalidId, doc("", vec![1.0; 4], json!({}))),
        (
            ErrorCode::InvalidId,
            doc(&"x".repeat(MAX_ID_BYTES + 1), vec![1.0; 4], json!({})),
        ),
        (
            ErrorCode::MetadataTooLarge,
            doc(
                "d",
                vec![1.0; 4],
                json!({"blob": "x".repeat(MAX_METADATA_BYTES)}),
            ),
        ),
    ];
    for replica in &replicas {
        replica.apply(&[&good], b"m1").unwrap();
    }
    let before: Vec<_> = replicas.iter().map(|r| r.checksum().unwrap()).collect();
    assert_eq!(before[0], before[1]);
    for (code, document) in bad {
        // A bad command in the middle of a batch: rejected whole, its neighbours applied.
        let bad = ShardCommand::Upsert {
            request: None,
            documents: vec![doc("fine", vec![0.5; 4], json!({})), document],
        };
        let delete = ShardCommand::Delete {
            request: None,
            ids: vec!["fine".into()],
        };
        for replica in &replicas {
            let responses = replica.apply(&[&good, &bad, &delete], b"m2").unwrap();
            assert_eq!(responses[0], ShardResponse::Upserted { count: 1 });
            match &responses[1] {
                ShardResponse::Rejected { code: got, message } => {
                    assert_eq!(*got, code, "{message}");
                    assert!(message.starts_with("documents[1]: "), "{message}");
                }
                other => panic!("{code}: applied as {other:?}"),
            }
            assert_eq!(
                responses[2],
                ShardResponse::Deleted {
                    existed: vec![false]
                },
                "the rejected command wrote nothing"
            );
            assert_eq!(replica.checksum().unwrap(), before[0]);
            assert_eq!(replica.applied_marker().as_deref(), Some(&b"m2"[..]));
        }
    }
    // The index never saw them: searches still work and find only the good document.
    for replica in &replicas {
        let query = distance::prepare(Metric::Cosine, &[0.1, 0.2, 0.3, 0.4]).unwrap();
        let hits = replica.search(&query, 5, 16, None, None).unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(&*hits[0].id, "good");
    }
}

#[test]
fn a_stored_document_the_index_cannot_use_stays_readable_and_deletable() {
    // An earlier version stored a vector the index cannot normalise (a "ghost").
    let dir = tempfile::tempdir().unwrap();
    let storage = storage(dir.path());
    let mut changes = Changes::default();
    let value = encode_document(&[1e-30; 4], &Metadata::new());
    changes.put_document(&storage, "cos/0", "ghost", &value);
    storage.commit(changes).unwrap();
    let shard = cosine_shard(&storage);
    assert_eq!(shard.len(), 1, "counted, as the checksum counts it");
    assert!(shard.get("ghost").unwrap().is_some());
    let query = distance::prepare(Metric::Cosine, &[1.0, 0.0, 0.0, 0.0]).unwrap();
    assert!(shard.search(&query, 5, 16, None, None).unwrap().is_empty());
    let delete = ShardCommand::Delete {
        request: None,
        ids: vec!["ghost".into()],
    };
    assert_eq!(
        shard.apply(&[&delete], b"m").unwrap(),
        vec![ShardResponse::Deleted {
            existed: vec![true]
        }]
    );
    assert_eq!(shard.len(), 0);
    assert_eq!(shard.checksum().unwrap().0, 0);
}

/// Waits up to five seconds for `done`.
fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn open_with(storage: &Arc<Storage>, namespace: &str, worker: &Arc<IndexWorker>) -> Shard {
    let mut config = CollectionConfig::new("docs", 2);
    config.metric = Metric::L2;
    Shard::open(
        Arc::new(config),
        namespace,
        Arc::clone(storage),
        Arc::clone(worker),
        IndexOptions::default(),
    )
    .unwrap()
}

fn points(ids: std::ops::Range<u32>) -> ShardCommand {
    ShardCommand::Upsert {
        request: None,
        documents: ids
            .map(|i| doc(&format!("p{i}"), vec![i as f32, 1.0], json!({})))
            .collect(),
    }
}

#[test]
fn a_panic_in_graph_maintenance_fails_that_replica_only() {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage(dir.path());
    let worker = Arc::new(IndexWorker::new(1).unwrap());
    let broken = open_with(&storage, "docs/0", &worker);
    let healthy = open_with(&storage, "docs/1", &worker);
    let twin = open_with(&storage, "docs/2", &worker);
    broken
        .state
        .read()
        .index
        .faults
        .maintain
        .store(true, std::sync::atomic::Ordering::Relaxed);
    for shard in [&broken, &healthy, &twin] {
        shard.apply(&[&points(0..50)], b"m1").unwrap();
    }
    eventually("the broken replica is marked failed", || {
        broken.failure().is_some()
    });
    let reason = broken.failure().unwrap();
    assert!(reason.contains("injected fault in maintain"), "{reason}");
    assert_eq!(broken.figures().failed.as_deref(), Some(reason.as_str()));
    match broken.search(&[3.0, 1.0], 1, 16, None, None) {
        Err(error) => assert_eq!(error.code(), ErrorCode::ShardFailed),
        Ok(hits) => panic!("a failed replica answered {hits:?}"),
    }
    // The process and the shared pool go on: the other replicas index and search.
    for shard in [&healthy, &twin] {
        eventually("indexed", || shard.figures().index.pending == 0);
        let hits = shard.search(&[3.0, 1.0], 1, 16, None, None).unwrap();
        assert_eq!(&*hits[0].id, "p3");
        assert!(shard.failure().is_none());
    }
    // Writes still apply to the failed replica's storage, answered as a healthy one answers.
    let delete = ShardCommand::Delete {
        request: None,
        ids: vec!["p1".into(), "never".into(), "p60".into()],
    };
    let more = points(55..65);
    let expected = twin.apply(&[&delete, &more], b"m2").unwrap();
    assert_eq!(broken.apply(&[&delete, &more], b"m2").unwrap(), expected);
    assert_eq!(
        expected[0],
        ShardResponse::Deleted {
            existed: vec![true, false, false]
        }
    );
    assert_eq!(broken.checksum().unwrap(), twin.checksum().unwrap());
    // Reopening (a restart) rebuilds the index from storage: searchable again, nothing lost.
    drop(broken);
    let reopened = open_with(&storage, "docs/0", &worker);
    assert!(reopened.failure().is_none());
    assert_eq!(reopened.len(), 59);
    eventually("reindexed", || reopened.figures().index.pending == 0);
    let hits = reopened.search(&[60.0, 1.0], 1, 16, None, None).unwrap();
    assert_eq!(&*hits[0].id, "p60");
    assert!(reopened.get("p1").unwrap().is_none());
}

#[test]
fn a_panic_while_applying_to_memory_keeps_replicas_in_agreement() {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage(dir.path());
    let worker = Arc::new(IndexWorker::new(1).unwrap());
    let broken = open_with(&storage, "docs/0", &worker);
    let twin = open_with(&storage, "docs/1", &worker);
    broken
        .state
        .read()
        .index
        .faults
        .add
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let first = points(0..10);
    let second = ShardCommand::Delete {
        request: None,
        ids: vec!["p2".into(), "p2".into(), "p99".into()],
    };
    let third = points(8..12);
    for (commands, marker) in [
        (vec![&first], &b"m1"[..]),
        (vec![&second, &third], &b"m2"[..]),
    ] {
        let expected = twin.apply(&commands, marker).unwrap();
        assert_eq!(broken.apply(&commands, marker).unwrap(), expected);
    }
    assert!(broken.failure().unwrap().contains("injected fault in add"));
    assert_eq!(broken.checksum().unwrap(), twin.checksum().unwrap());
    assert_eq!(broken.applied_marker().as_deref(), Some(&b"m2"[..]));
    drop(broken);
    let reopened = open_with(&storage, "docs/0", &worker);
    assert_eq!(reopened.len(), 11);
    assert!(reopened.failure().is_none());
}

#[test]
fn a_retried_command_is_answered_as_the_first_time_and_applied_once() {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage(dir.path());
    let worker = Arc::new(IndexWorker::new(1).unwrap());
    let tagged = |request: u64, id: &str, x: f32| ShardCommand::Upsert {
        documents: vec![doc(id, vec![x, 1.0], json!({"x": x}))],
        request: Some(request),
    };
    let remove = |request: u64, id: &str| ShardCommand::Delete {
        ids: vec![id.into()],
        request: Some(request),
    };
    let replica = open_with(&storage, "docs/0", &worker);
    replica.apply(&[&tagged(1, "a", 1.0)], b"m1").unwrap();
    replica.apply(&[&tagged(2, "a", 2.0)], b"m2").unwrap();
    // The first write's retry arrives late: it must not bring back the older value.
    assert_eq!(
        replica.apply(&[&tagged(1, "a", 1.0)], b"m3").unwrap(),
        vec![ShardResponse::Upserted { count: 1 }]
    );
    assert_eq!(replica.get("a").unwrap().unwrap().vector, vec![2.0, 1.0]);
    // A delete retried after it applied answers "existed", as the first time did.
    let first = replica.apply(&[&remove(3, "a")], b"m4").unwrap();
    assert_eq!(
        first,
        vec![ShardResponse::Deleted {
            existed: vec![true]
        }]
    );
    assert_eq!(replica.apply(&[&remove(3, "a")], b"m5").unwrap(), first);
    // A retry in the same batch as its original.
    let twice = replica
        .apply(&[&tagged(4, "b", 4.0), &tagged(4, "b", 9.0)], b"m6")
        .unwrap();
    assert_eq!(twice[0], twice[1]);
    assert_eq!(replica.get("b").unwrap().unwrap().vector, vec![4.0, 1.0]);
    // Commands without an id (from older nodes) apply every time.
    let untagged = ShardCommand::Delete {
        ids: vec!["b".into()],
        request: None,
    };
    assert_eq!(
        replica.apply(&[&untagged, &untagged], b"m7").unwrap(),
        vec![
            ShardResponse::Deleted {
                existed: vec![true]
            },
            ShardResponse::Deleted {
                existed: vec![false]
            }
        ]
    );

    // The answers survive a restart and travel in snapshots.
    drop(replica);
    let reopened = open_with(&storage, "docs/0", &worker);
    assert_eq!(reopened.apply(&[&remove(3, "a")], b"m8").unwrap(), first);
    let (marker, data) = reopened.snapshot().unwrap();
    let other = open_with(&storage, "docs/1", &worker);
    other.restore(&marker.unwrap(), &data).unwrap();
    for replica in [&reopened, &other] {
        let retry = [&tagged(1, "a", 1.0), &remove(3, "a"), &tagged(5, "c", 5.0)];
        let answers = replica.apply(&retry, b"m9").unwrap();
        assert_eq!(answers[1], first[0]);
        assert!(replica.get("a").unwrap().is_none(), "not written again");
    }
    assert_eq!(reopened.checksum().unwrap(), other.checksum().unwrap());
    assert_eq!(reopened.len(), 1);
}

mod saved_graphs {
    use super::*;

    const DIM: usize = 8;
    const WAIT: Duration = Duration::from_secs(10);

    fn options() -> IndexOptions {
        IndexOptions {
            rebuild_threshold: 1_000_000,
            ..IndexOptions::default()
        }
    }

    fn open(storage: &Arc<Storage>, options: IndexOptions) -> Shard {
        open_quantized(storage, options, Quantization::None)
    }

    fn open_quantized(
        storage: &Arc<Storage>,
        options: IndexOptions,
        quantization: Quantization,
    ) -> Shard {
        let mut config = CollectionConfig::new("docs", DIM);
        config.metric = Metric::L2;
        config.quantization = quantization;
        Shard::open(
            Arc::new(config),
            "docs/0@1",
            Arc::clone(storage),
            Arc::new(IndexWorker::new(2).unwrap()),
            options,
        )
        .unwrap()
    }

    /// A distinct vector per document and version.
    fn vector(i: usize, version: usize) -> Vec<f32> {
        (0..DIM)
            .map(|d| match d {
                0 => i as f32 * 0.01,
                1 => version as f32 * 3.0,
                _ => (((i * 31 + d * 17) % 101) as f32) * 0.37,
            })
            .collect()
    }

    fn upsert(shard: &Shard, docs: impl Iterator<Item = (usize, usize)>, tag: &str) {
        let documents = docs
            .map(|(i, version)| doc(&format!("d{i}"), vector(i, version), json!({ "tag": tag })))
            .collect();
        shard
            .apply(
                &[&ShardCommand::Upsert {
                    request: None,
                    documents,
                }],
                b"m",
            )
            .unwrap();
    }

    fn indexed(shard: &Shard) {
        let started = Instant::now();
        while shard.figures().index.pending > 0 {
            assert!(started.elapsed() < Duration::from_secs(60), "never indexed");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The top hit of each document's own vector is the document, at distance 0. A wide
    /// search: what is checked is which documents are found, not recall (a narrow walk misses
    /// an exact match now and then in these tightly packed points).
    fn finds_itself(shard: &Shard, i: usize, version: usize) -> bool {
        let hits = shard
            .search(&vector(i, version), 1, 512, None, None)
            .unwrap();
        hits.first()
            .is_some_and(|h| *h.id == *format!("d{i}") && h.distance == 0.0)
    }

    fn loaded_shard(dir: &std::path::Path) -> (Arc<Storage>, Shard) {
        let storage = storage(dir);
        let shard = open(&storage, options());
        upsert(&shard, (0..2000).map(|i| (i, 0)), "a");
        indexed(&shard);
        (storage, shard)
    }

    fn graph_file(storage: &Storage) -> std::path::PathBuf {
        saved_graph::path(storage.path(), "docs/0@1")
    }

    /// A loaded shard's graph saved and the shard closed: its storage, the file and its bytes.
    fn saved_file(dir: &std::path::Path) -> (Arc<Storage>, std::path::PathBuf, Vec<u8>) {
        let (storage, shard) = loaded_shard(dir);
        shard.save_graph(WAIT).unwrap().unwrap();
        drop(shard);
        let file = graph_file(&storage);
        let good = std::fs::read(&file).unwrap();
        (storage, file, good)
    }

    #[test]
    fn a_saved_graph_is_loaded_instead_of_built() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, shard) = loaded_shard(dir.path());
        assert!(shard.save_graph(WAIT).unwrap().unwrap() > 2000 * DIM as u64 * 4);
        // Nothing changed since: nothing to write.
        assert_eq!(shard.save_graph(WAIT).unwrap(), None);
        drop(shard);
        let shard = open(&storage, options());
        let figures = shard.figures();
        assert_eq!(figures.graph_loaded, 2000);
        assert_eq!(
            (
                figures.index.live,
                figures.index.pending,
                figures.index.stored
            ),
            (2000, 0, 2000),
            "{figures:?}"
        );
        assert!((0..2000).step_by(97).all(|i| finds_itself(&shard, i, 0)));
        // Loaded and unchanged: still nothing to write.
        assert_eq!(shard.save_graph(WAIT).unwrap(), None);
    }

    #[test]
    fn a_quantized_graph_is_saved_with_its_codebook_and_loaded_with_its_full_vectors() {
        for quantization in [Quantization::Scalar, Quantization::Binary] {
            for originals in [OriginalsPlace::Memory, OriginalsPlace::Disk] {
                let dir = tempfile::tempdir().unwrap();
                let storage = storage(dir.path());
                let options = IndexOptions {
                    quantized_originals: originals,
                    ..options()
                };
                let shard = open_quantized(&storage, options, quantization);
                upsert(&shard, (0..2000).map(|i| (i, 0)), "a");
                indexed(&shard);
                shard.save_graph(WAIT).unwrap().unwrap();
                // Changed after the save: reinserted at load, the rest reused.
                upsert(&shard, (0..100).map(|i| (i, 1)), "b");
                drop(shard);
                let shard = open_quantized(&storage, options, quantization);
                let case = format!("{quantization:?}, full vectors in {originals:?}");
                assert_eq!(shard.figures().graph_loaded, 1900, "{case}");
                indexed(&shard);
                if quantization == Quantization::Scalar {
                    assert!((0..100).all(|i| finds_itself(&shard, i, 1)), "{case}");
                    assert!(
                        (100..2000).step_by(37).all(|i| finds_itself(&shard, i, 0)),
                        "{case}"
                    );
                } else {
                    // One bit for each of 8 components tells these points too little apart
                    // for recall to mean anything (binary codes are for hundreds of
                    // dimensions): what must hold is that answers carry exact distances, read
                    // from the full vectors reloaded with the graph.
                    let query = vector(500, 0);
                    for hit in shard.search(&query, 5, 64, None, None).unwrap() {
                        let id: usize = hit.id[1..].parse().unwrap();
                        let version = usize::from(id < 100);
                        let exact: f32 = query
                            .iter()
                            .zip(vector(id, version))
                            .map(|(a, b)| (a - b) * (a - b))
                            .sum();
                        assert!(
                            (hit.distance - exact).abs() <= 1e-3 * exact.max(1.0),
                            "{case}"
                        );
                    }
                }
                // The file is refused where the collection holds full vectors (as when a
                // node's engine changes to hnsw_rs): the graph is built again.
                drop(shard);
                let shard = open_quantized(&storage, options, Quantization::None);
                assert_eq!(shard.figures().graph_loaded, 0, "{case}");
                indexed(&shard);
                assert!(
                    (0..100).step_by(7).all(|i| finds_itself(&shard, i, 1)),
                    "{case}"
                );
                assert_eq!(shard.figures().index.live, 2000, "{case}");
            }
        }
    }

    #[test]
    fn a_saved_graph_older_than_the_documents_reuses_only_unchanged_vectors() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, shard) = loaded_shard(dir.path());
        shard.save_graph(WAIT).unwrap().unwrap();
        // After the save: 100 vectors change, 50 documents change metadata only, 100 are
        // deleted and 100 are new.
        upsert(&shard, (0..100).map(|i| (i, 1)), "b");
        upsert(&shard, (100..150).map(|i| (i, 0)), "c");
        let delete = ShardCommand::Delete {
            request: None,
            ids: (150..250).map(|i| format!("d{i}")).collect(),
        };
        shard.apply(&[&delete], b"m").unwrap();
        upsert(&shard, (2000..2100).map(|i| (i, 0)), "a");
        drop(shard);
        let shard = open(&storage, options());
        assert_eq!(shard.figures().graph_loaded, 1800);
        indexed(&shard);
        let figures = shard.figures().index;
        assert_eq!(
            (figures.live, figures.dead_in_graph),
            (2000, 200),
            "{figures:?}"
        );
        assert!((0..100).all(|i| finds_itself(&shard, i, 1)));
        assert!((100..150).all(|i| finds_itself(&shard, i, 0)));
        assert_eq!(shard.get("d120").unwrap().unwrap().metadata["tag"], "c");
        let hits = shard.search(&vector(120, 0), 1, 64, None, None).unwrap();
        assert_eq!(hits[0].metadata["tag"], "c");
        assert!((150..250).all(|i| !finds_itself(&shard, i, 0)));
        assert!((2000..2100).all(|i| finds_itself(&shard, i, 0)));
        assert!((250..2000).step_by(37).all(|i| finds_itself(&shard, i, 0)));
    }

    #[test]
    fn a_damaged_saved_graph_is_deleted_and_the_graph_built_from_the_documents() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, file, good) = saved_file(dir.path());
        let mut flipped = good.clone();
        flipped[good.len() / 2] ^= 0x40;
        let damages: [(&str, Vec<u8>); 4] = [
            ("a flipped bit", flipped),
            ("truncated", good[..good.len() - 100].to_vec()),
            ("only the header", good[..40].to_vec()),
            ("bytes after the end", [good.as_slice(), b"x"].concat()),
        ];
        for (what, bytes) in damages {
            std::fs::write(&file, bytes).unwrap();
            let shard = open(&storage, options());
            assert_eq!(shard.figures().graph_loaded, 0, "{what}");
            assert!(!file.exists(), "{what}: the damaged file stayed");
            indexed(&shard);
            assert_eq!(shard.figures().index.live, 2000, "{what}");
            assert!(
                (0..2000).step_by(97).all(|i| finds_itself(&shard, i, 0)),
                "{what}"
            );
        }
        // A file saved for another collection's settings is not used either.
        std::fs::write(&file, &good).unwrap();
        let mut config = CollectionConfig::new("docs", DIM + 1);
        config.metric = Metric::L2;
        let other = Shard::open(
            Arc::new(config),
            "docs/0@1",
            Arc::clone(&storage),
            Arc::new(IndexWorker::new(1).unwrap()),
            options(),
        )
        .unwrap();
        assert_eq!(other.figures().graph_loaded, 0);
        assert!(!file.exists());
    }

    #[test]
    fn without_saving_no_file_is_written_and_an_old_one_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, shard) = loaded_shard(dir.path());
        shard.save_graph(WAIT).unwrap().unwrap();
        drop(shard);
        let off = IndexOptions {
            graph_save_interval: None,
            ..options()
        };
        let shard = open(&storage, off);
        assert!(!graph_file(&storage).exists());
        assert_eq!(shard.figures().graph_loaded, 0);
        indexed(&shard);
        assert_eq!(shard.save_graph(WAIT).unwrap(), None);
        assert!(!graph_file(&storage).exists());
        // Dropping a replica deletes its saved graph.
        let shard = open(&storage, options());
        indexed(&shard);
        shard.save_graph(WAIT).unwrap().unwrap();
        assert!(graph_file(&storage).exists());
        shard.destroy().unwrap();
        assert!(!graph_file(&storage).exists());
    }

    #[test]
    fn a_save_is_due_after_the_interval_or_once_a_bulk_load_is_indexed() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(dir.path());
        let interval = Duration::from_secs(1);
        let opened = std::time::Instant::now();
        let shard = open(
            &storage,
            IndexOptions {
                graph_save_interval: Some(interval),
                ..options()
            },
        );
        assert_eq!(shard.save_graph_if_due().unwrap(), None, "nothing to save");
        upsert(&shard, (0..500).map(|i| (i, 0)), "a");
        indexed(&shard);
        // On a loaded machine indexing can outlast the interval; "too soon" is only checked
        // while it is.
        let due = shard.save_graph_if_due().unwrap();
        if opened.elapsed() < interval {
            assert_eq!(due, None, "too soon");
        }
        if due.is_none() {
            std::thread::sleep(interval + Duration::from_millis(100));
            assert!(shard.save_graph_if_due().unwrap().is_some());
        }
        assert_eq!(shard.save_graph_if_due().unwrap(), None, "saved already");
    }

    #[test]
    fn leftovers_and_graphs_of_replicas_no_longer_held_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let graphs = dir.path().join(saved_graph::DIR);
        std::fs::create_dir_all(&graphs).unwrap();
        for name in [
            "kept.0.1.graph",
            "dropped.0.1.graph",
            ".kept.0.1.graph.ab12.tmp",
        ] {
            std::fs::write(graphs.join(name), b"x").unwrap();
        }
        // While nodes run, only whole files of replicas not held go; an in-flight save's
        // temporary file stays.
        saved_graph::remove_unless(dir.path(), |stem| stem == "kept.0.1");
        let names = || {
            let mut names: Vec<String> = std::fs::read_dir(&graphs)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        assert_eq!(names(), [".kept.0.1.graph.ab12.tmp", "kept.0.1.graph"]);
        // At start, before any save, temporary files go.
        saved_graph::clean_temporary(dir.path());
        assert_eq!(names(), ["kept.0.1.graph"]);
    }

    #[test]
    fn indexing_resumes_after_a_save_that_paused_it() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(dir.path());
        let shard = open(&storage, options());
        upsert(&shard, (0..20_000).map(|i| (i, 0)), "a");
        // Saved while the worker is inserting, and no write comes after: the worker finds the
        // index busy and stops, and the save must hand the work back to it.
        while shard.figures().index.indexed == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(shard.figures().index.pending > 0);
        shard.save_graph(WAIT).unwrap().unwrap();
        indexed(&shard);
        assert_eq!(shard.figures().index.live, 20_000);
    }

    #[test]
    fn a_header_claiming_more_nodes_than_the_file_holds_is_refused_before_allocating() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, file, good) = saved_file(dir.path());
        let head_len = u32::from_le_bytes(good[12..16].try_into().unwrap()) as usize;
        let mut header: serde_json::Value =
            serde_json::from_slice(&good[16..16 + head_len]).unwrap();
        header["nodes"] = json!(1u64 << 40);
        let head = serde_json::to_vec(&header).unwrap();
        let crafted = [
            &good[..12],
            &(head.len() as u32).to_le_bytes(),
            &head,
            &good[16 + head_len..],
        ]
        .concat();
        std::fs::write(&file, crafted).unwrap();
        let mut config = CollectionConfig::new("docs", DIM);
        config.metric = Metric::L2;
        let error = saved_graph::read(&file, &config, options()).err().unwrap();
        assert!(
            error.to_string().contains("1099511627776 nodes in"),
            "{error}"
        );
        let shard = open(&storage, options());
        assert_eq!(shard.figures().graph_loaded, 0);
        assert!(!file.exists());
    }
}

mod payload_indexes {
    use super::*;
    use grape_client::{Filter, PayloadIndex, PayloadIndexKind};
    use rand::{Rng, SeedableRng};

    fn shard(storage: &Arc<Storage>, namespace: &str, indexed: bool) -> Shard {
        let mut config = CollectionConfig::new("docs", 4);
        config.metric = Metric::L2;
        if indexed {
            config.payload_indexes = [
                ("tag", PayloadIndexKind::Keyword),
                ("tags", PayloadIndexKind::Keyword),
                ("n", PayloadIndexKind::Numeric),
                ("a.b", PayloadIndexKind::Numeric),
                ("flag", PayloadIndexKind::Keyword),
            ]
            .into_iter()
            .map(|(key, kind)| PayloadIndex {
                key: key.into(),
                kind,
            })
            .collect();
        }
        Shard::open(
            Arc::new(config),
            namespace,
            Arc::clone(storage),
            Arc::new(IndexWorker::new(1).unwrap()),
            IndexOptions::default(),
        )
        .unwrap()
    }

    fn metadata(rng: &mut impl Rng) -> serde_json::Value {
        let tag = format!("t{}", rng.random_range(0..8));
        let mut m = json!({
            "tag": tag,
            "tags": [format!("t{}", rng.random_range(0..8)), format!("t{}", rng.random_range(0..8))],
            "n": rng.random_range(-50..50) as f64 / 2.0,
            "a": {"b": rng.random_range(0..10)},
            "flag": rng.random_bool(0.3),
        });
        // Values of other types under indexed keys are stored, never indexed.
        if rng.random_bool(0.05) {
            m["tag"] = json!(7);
        }
        if rng.random_bool(0.05) {
            m["n"] = json!("seven");
        }
        m
    }

    fn condition(rng: &mut impl Rng) -> serde_json::Value {
        let t = |rng: &mut dyn rand::RngCore| format!("t{}", rng.random_range(0..9));
        match rng.random_range(0..9) {
            0 => json!({"key": "tag", "match": t(rng)}),
            1 => json!({"key": "tags", "match_any": [t(rng), t(rng)]}),
            2 => {
                json!({"key": "n", "range": {"gte": rng.random_range(-30..10), "lt": rng.random_range(-10..30)}})
            }
            3 => json!({"key": "n", "range": {"gt": rng.random_range(-30..30)}}),
            4 => json!({"key": "a.b", "match": rng.random_range(0..10)}),
            5 => json!({"key": "a.b", "match_any": [1, 2.0, 3]}),
            6 => json!({"key": "flag", "match": true}),
            7 => json!({"key": "tag", "match_any": [t(rng), 7]}),
            _ => json!({"key": "n", "match": rng.random_range(-25..25) as f64 / 2.0}),
        }
    }

    #[test]
    fn filtered_searches_answer_alike_with_and_without_payload_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(dir.path());
        let plain = shard(&storage, "plain/0", false);
        let indexed = shard(&storage, "indexed/0", true);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let vector = |rng: &mut rand_chacha::ChaCha8Rng| -> Vec<f32> {
            (0..4).map(|_| rng.random_range(-1.0..1.0)).collect()
        };
        // Writes, rewrites (metadata and vectors change) and deletes.
        for round in 0..6 {
            let documents: Vec<NewDocument> = (0..400)
                .map(|i| {
                    let i = (i * 7 + round * 131) % 1500;
                    let meta = metadata(&mut rng);
                    doc(&format!("d{i}"), vector(&mut rng), meta)
                })
                .collect();
            let command = ShardCommand::Upsert {
                request: None,
                documents,
            };
            let delete = ShardCommand::Delete {
                request: None,
                ids: (0..40)
                    .map(|i| format!("d{}", (i * 13 + round * 7) % 1500))
                    .collect(),
            };
            for shard in [&plain, &indexed] {
                shard.apply(&[&command, &delete], b"m").unwrap();
            }
        }
        let limits = filter::FilterLimits {
            conditions: 8,
            values: 64,
        };
        let mut checked = 0;
        for _ in 0..300 {
            let must: Vec<serde_json::Value> = (0..rng.random_range(1..3))
                .map(|_| condition(&mut rng))
                .collect();
            let mut filter = json!({ "must": must });
            if rng.random_bool(0.3) {
                filter["must_not"] = json!([condition(&mut rng)]);
            }
            let filter: Filter = serde_json::from_value(filter).unwrap();
            let compiled = CompiledFilter::new(&filter, limits).unwrap();
            let query = vector(&mut rng);
            // Wide enough that both answer exactly (the collection is small).
            let ids = |shard: &Shard| -> Vec<String> {
                let mut ids: Vec<String> = shard
                    .search(&query, 2000, 2000, Some(&compiled), None)
                    .unwrap()
                    .iter()
                    .map(|h| h.id.to_string())
                    .collect();
                ids.sort();
                ids
            };
            let want = ids(&plain);
            assert_eq!(ids(&indexed), want, "{filter:?}");
            checked += usize::from(!want.is_empty());
        }
        assert!(checked > 100, "too few filters matched anything: {checked}");
    }

    #[test]
    fn bad_payload_indexes_are_refused_naming_the_entry() {
        let mut config = CollectionConfig::new("docs", 4);
        let index = |key: &str| PayloadIndex {
            key: key.into(),
            kind: PayloadIndexKind::Keyword,
        };
        for (indexes, says) in [
            (vec![index("")], "payload_indexes[0]: key must not be empty"),
            (
                vec![index("a..b")],
                "payload_indexes[0]: key \"a..b\" has an empty segment",
            ),
            (
                vec![index("a"), index("a")],
                "payload_indexes[1]: key \"a\" is indexed twice",
            ),
            (
                (0..17).map(|i| index(&format!("k{i}"))).collect(),
                "payload_indexes lists 17 keys; at most 16 are allowed",
            ),
        ] {
            config.payload_indexes = indexes;
            let error = crate::collection::validate_collection_config(&config).unwrap_err();
            assert_eq!(error.code(), ErrorCode::InvalidCollection);
            assert!(error.to_string().contains(says), "{error}");
        }
    }
}
