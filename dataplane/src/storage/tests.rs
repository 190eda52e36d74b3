use super::*;

#[test]
fn documents_round_trip_and_scan_in_order_per_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
    let mut metadata = Metadata::new();
    metadata.insert("lang".into(), "en".into());
    let mut changes = Changes::default();
    for id in ["b", "a", "c"] {
        changes.put_document(
            &storage,
            "docs/1",
            id,
            &encode_document(&[1.0, 2.5], &metadata),
        );
    }
    changes.put_document(
        &storage,
        "docs/2",
        "z",
        &encode_document(&[0.0, 0.0], &metadata),
    );
    changes.put_document(
        &storage,
        "docs/10",
        "x",
        &encode_document(&[0.0, 0.0], &metadata),
    );
    changes.set_applied(&storage, "docs/1", b"seven");
    storage.commit(changes).unwrap();
    storage.sync().unwrap();

    let mut seen = Vec::new();
    storage
        .scan_documents("docs/1", None, |id, _| {
            seen.push(id.to_string());
            Ok(true)
        })
        .unwrap();
    assert_eq!(seen, ["a", "b", "c"]);
    let mut after = Vec::new();
    storage
        .scan_documents("docs/1", Some("a"), |id, _| {
            after.push(id.to_string());
            Ok(true)
        })
        .unwrap();
    assert_eq!(after, ["b", "c"]);
    let value = storage.get_document("docs/1", "a").unwrap().unwrap();
    assert_eq!(decode_document(&value).unwrap(), (vec![1.0, 2.5], metadata));
    assert_eq!(
        storage.applied("docs/1").unwrap().as_deref(),
        Some(&b"seven"[..])
    );

    let viewed = storage
        .with_consistent_view("docs/1", |marker, _requests, scan| {
            let mut ids = Vec::new();
            scan(&mut |id, _| {
                ids.push(id.to_string());
                Ok(true)
            })?;
            Ok((marker, ids))
        })
        .unwrap();
    assert_eq!(
        viewed,
        (
            Some(b"seven".to_vec()),
            vec!["a".to_string(), "b".into(), "c".into()]
        )
    );

    let mut clear = Changes::default();
    clear.clear_namespace(&storage, "docs/1");
    storage.commit(clear).unwrap();
    assert!(storage.get_document("docs/1", "a").unwrap().is_none());
    assert!(storage.get_document("docs/2", "z").unwrap().is_some());
    assert!(storage.get_document("docs/10", "x").unwrap().is_some());
    assert_eq!(storage.applied("docs/1").unwrap(), None);
}

#[test]
fn raft_logs_are_kept_per_group() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
    let mut changes = Changes::default();
    for i in 1..=5 {
        changes.put_log_entry(&storage, "g1", i, format!("g1-{i}").as_bytes());
        changes.put_log_entry(&storage, "g2", i * 10, format!("g2-{i}").as_bytes());
    }
    changes.put_raft_state(&storage, "g1", "vote", b"v");
    changes.put_raft_state(&storage, "g2", "vote", b"w");
    storage.commit(changes).unwrap();
    let range = storage.log_entries("g1", 2, 4).unwrap();
    assert_eq!(range, vec![(2, b"g1-2".to_vec()), (3, b"g1-3".to_vec())]);
    assert_eq!(storage.last_log_entry("g1").unwrap().unwrap().0, 5);
    assert_eq!(storage.last_log_entry("g2").unwrap().unwrap().0, 50);
    assert_eq!(storage.last_log_entry("g3").unwrap(), None);
    assert_eq!(storage.raft_groups().unwrap(), ["g1", "g2"]);
    let mut changes = Changes::default();
    changes.delete_log_range(&storage, "g1", 4, u64::MAX);
    changes.clear_raft_group(&storage, "g2");
    storage.commit(changes).unwrap();
    assert_eq!(storage.last_log_entry("g1").unwrap().unwrap().0, 3);
    assert_eq!(storage.last_log_entry("g2").unwrap(), None);
    assert_eq!(storage.raft_state("g2", "vote").unwrap(), None);
    assert_eq!(
        storage.raft_state("g1", "vote").unwrap().as_deref(),
        Some(&b"v"[..])
    );
}

#[test]
fn corrupt_values_are_reported_not_panicked_on() {
    assert!(decode_document(&[]).is_err());
    assert!(decode_document(&[1, 9, 0, 0, 0, 1]).is_err());
}

#[test]
fn a_bulk_load_lands_whole_and_refuses_ids_out_of_order() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
    let value = encode_document(&[1.0], &Metadata::new());
    let stored = generation_namespace("docs/1", 3);
    storage
        .bulk_load(&stored, |put| {
            for i in 0..1000 {
                put(&format!("id-{i:04}"), &value)?;
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(storage.rows_under(&stored), 1000);
    // Invisible under the namespace until its generation is current.
    assert!(storage.get_document("docs/1", "id-0007").unwrap().is_none());
    let mut changes = Changes::default();
    changes.set_generations(
        &storage,
        "docs/1",
        &Generations {
            current: 3,
            stale: vec![],
        },
    );
    storage.commit(changes).unwrap();
    assert!(storage.get_document("docs/1", "id-0007").unwrap().is_some());
    let mut seen = 0;
    storage
        .scan_documents("docs/1", None, |_, _| {
            seen += 1;
            Ok(true)
        })
        .unwrap();
    assert_eq!(seen, 1000);

    let refused = storage.bulk_load(&generation_namespace("docs/2", 1), |put| {
        put("b", &value)?;
        put("a", &value)
    });
    assert!(refused.is_err());
    assert_eq!(storage.rows_under(&generation_namespace("docs/2", 1)), 0);
    assert_eq!(
        std::fs::read_dir(dir.path().join("ingest"))
            .unwrap()
            .count(),
        0
    );

    // Clearing the namespace removes every generation and the record.
    let mut clear = Changes::default();
    clear.clear_namespace(&storage, "docs/1");
    storage.commit(clear).unwrap();
    assert_eq!(storage.rows_under(&stored), 0);
    assert_eq!(
        storage.generations("docs/1").unwrap(),
        Generations::default()
    );
}
