use super::*;
use crate::storage::StorageOptions;
use grape_client::Metric;
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
            documents: vec![
                doc("a", vec![0.0, 0.0], json!({"k": 1})),
                doc("b", vec![1.0, 0.0], json!({})),
                doc("a", vec![5.0, 5.0], json!({"k": 2})),
            ],
        };
        let delete = ShardCommand::Delete {
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
    let hits = shard.search(&[5.0, 5.0], 5, 16, None);
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
        .apply(&[&ShardCommand::Upsert { documents }], b"1")
        .unwrap();
    let filter: grape_client::Filter = serde_json::from_value(json!({
        "must": [{"key": "even", "match": false}, {"key": "i", "range": {"gte": 100}}]
    }))
    .unwrap();
    let filter = CompiledFilter::new(&filter).unwrap();
    let hits = shard.search(&[0.0, 0.0], 3, 16, Some(&filter));
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
            documents: vec![d1.clone(), d2.clone()],
        }],
        b"1",
    )
    .unwrap();
    sb.apply(
        &[&ShardCommand::Upsert {
            documents: vec![d2],
        }],
        b"1",
    )
    .unwrap();
    sb.apply(
        &[&ShardCommand::Upsert {
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
        .apply(&[&ShardCommand::Upsert { documents }], b"at-7")
        .unwrap();
    source
        .apply(
            &[&ShardCommand::Delete {
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
    let hits = target.search(&[42.0, 1.0], 1, 16, None);
    assert_eq!(&*hits[0].id, "d42");
    assert!(
        target.restore(b"x", &data[..data.len() - 3]).is_err(),
        "a truncated snapshot is refused"
    );
    assert_eq!(target.len(), 299, "and leaves the replica as it was");
}
