//! A write answered 2xx survives `kill -9`: after a restart every acknowledged document is
//! readable and found by search, and every acknowledged delete stays deleted.

use grape_client::{CollectionConfig, DocumentInput, Metric, SearchRequest};
use grape_e2e::{GrapeNode, NodeOptions, vector};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const DIMENSION: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_kill_9_during_ingest() {
    let mut node = GrapeNode::start(NodeOptions::dimension(DIMENSION)).await;
    let acked: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let deleted: Arc<Mutex<Vec<String>>> = Arc::default();

    let mut writers = Vec::new();
    for writer in 0..4u64 {
        let client = node.client();
        let acked = Arc::clone(&acked);
        let deleted = Arc::clone(&deleted);
        writers.push(tokio::spawn(async move {
            let docs = client.default_collection();
            for round in 0u64.. {
                let seed = writer * 1_000_000 + round * 100;
                let result = if round % 3 == 0 {
                    let id = format!("w{writer}-r{round}");
                    docs.upsert(&DocumentInput {
                        id: Some(id.clone()),
                        vector: vector(seed, DIMENSION),
                        metadata: json!({"seed": seed}).as_object().cloned(),
                    })
                    .await
                    .map(|_| vec![(id, seed)])
                } else {
                    let batch: Vec<DocumentInput> = (0..40)
                        .map(|i| DocumentInput {
                            id: Some(format!("w{writer}-r{round}-{i}")),
                            vector: vector(seed + i, DIMENSION),
                            metadata: json!({"seed": seed + i}).as_object().cloned(),
                        })
                        .collect();
                    docs.upsert_batch(&batch).await.map(|_| {
                        batch
                            .iter()
                            .enumerate()
                            .map(|(i, d)| (d.id.clone().unwrap(), seed + i as u64))
                            .collect()
                    })
                };
                match result {
                    Ok(written) => acked.lock().unwrap().extend(written),
                    Err(_) => break,
                }
                if round % 5 == 4 {
                    // Delete one earlier single document and remember the acknowledgement.
                    let id = format!("w{writer}-r{}", round - 4 + (3 - (round - 4) % 3) % 3);
                    match docs.delete(&id).await {
                        Ok(answer) => {
                            if answer.deleted {
                                acked.lock().unwrap().remove(&id);
                                deleted.lock().unwrap().push(id);
                            }
                        }
                        Err(_) => {
                            // Unknown outcome (the node may have applied it before dying):
                            // the document may be there or not.
                            acked.lock().unwrap().remove(&id);
                            break;
                        }
                    }
                }
            }
        }));
    }
    // Let ingest run, then pull the plug mid-flight.
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if acked.lock().unwrap().len() >= 3000 {
            break;
        }
    }
    node.kill9();
    for writer in writers {
        let _ = writer.await;
    }
    let acked = acked.lock().unwrap().clone();
    let deleted = deleted.lock().unwrap().clone();
    assert!(acked.len() >= 3000 && !deleted.is_empty());

    node.restart().await;
    let client = node.client();
    let docs = client.default_collection();
    let mut missing = Vec::new();
    let mut not_found_by_search = Vec::new();
    for (i, (id, seed)) in acked.iter().enumerate() {
        match docs.get(id).await {
            Ok(doc) => {
                assert_eq!(
                    doc.vector,
                    vector(*seed, DIMENSION),
                    "{id} has the acknowledged vector"
                );
                assert_eq!(doc.metadata["seed"], *seed);
            }
            Err(_) => missing.push(id.clone()),
        }
        // Search for a sample (every document would take long in a debug build).
        if i % 7 == 0 {
            let hits = docs
                .search(&SearchRequest::new(vector(*seed, DIMENSION), 5))
                .await
                .unwrap();
            if !hits.results.iter().any(|h| &h.id == id) {
                not_found_by_search.push(id.clone());
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{} acknowledged documents lost: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(
        not_found_by_search.is_empty(),
        "not found by search: {not_found_by_search:?}"
    );
    for id in &deleted {
        assert!(
            docs.get(id).await.is_err(),
            "acknowledged delete of {id} came back"
        );
    }
}

#[tokio::test]
async fn collections_settings_and_documents_survive_restarts() {
    let mut node = GrapeNode::start(NodeOptions::dimension(3)).await;
    let grape = node.client();
    let mut config = CollectionConfig::new("kept", 2);
    config.metric = Metric::L2;
    config.shard_count = 3;
    config.hnsw.ef_search = 40;
    grape.create_collection(&config).await.unwrap();
    let kept = grape.collection("kept");
    let batch: Vec<DocumentInput> = (0..300)
        .map(|i| DocumentInput {
            id: Some(format!("k{i}")),
            vector: vec![i as f32, 0.0],
            metadata: None,
        })
        .collect();
    kept.upsert_batch(&batch).await.unwrap();
    kept.delete("k7").await.unwrap();
    let checksum = grape.checksum().await.unwrap();

    // A clean stop, then a crash: both come back the same.
    assert_eq!(
        node.terminate(),
        Some(0),
        "SIGTERM exits cleanly:\n{}",
        node.log_text()
    );
    node.restart().await;
    node.kill9();
    node.restart().await;
    let grape = node.client();
    assert_eq!(grape.get_collection("kept").await.unwrap().config, config);
    assert_eq!(grape.checksum().await.unwrap().shards, checksum.shards);
    let kept = grape.collection("kept");
    let hits = kept
        .search(&SearchRequest::new(vec![7.2, 0.0], 2))
        .await
        .unwrap();
    let ids: Vec<&str> = hits.results.iter().map(|h| h.id.as_str()).collect();
    assert_eq!(ids, ["k8", "k6"]);
}

#[tokio::test]
async fn a_stored_default_collection_that_disagrees_with_the_config_stops_startup() {
    let mut node = GrapeNode::start(NodeOptions::dimension(3)).await;
    node.kill9();
    let options = NodeOptions::dimension(5)
        .arg("--data-dir")
        .arg(node.data_dir.path().to_string_lossy().into_owned())
        .arg("--listen-address")
        .arg("127.0.0.1:0")
        .arg("--metrics-port")
        .arg("0")
        .arg("--raft-address")
        .arg("127.0.0.1:0");
    let (code, output) = GrapeNode::run_to_exit(&options, &[]);
    assert_ne!(code, 0);
    assert!(output.contains("vector_dimension"), "{output}");
}
