//! A quantized collection behind a real node: scalar codes in the graph, full vectors on disk
//! (`index.quantized_originals: disk`). Searches agree with brute force and carry exact
//! scores (re-scored with the full vectors), memory holds only the codes, and all of it
//! holds after `kill -9` (graphs built again from storage) and after a clean stop (the saved
//! graph and its codebook loaded).

use grape_client::{
    CollectionClient, CollectionConfig, DocumentInput, GrapeClient, Metric, Quantization,
    SearchRequest,
};
use grape_e2e::{GrapeNode, NodeOptions, vector};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const DIMENSION: usize = 24;
const DOCUMENTS: u64 = 3_000;

fn l2(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

async fn wait_indexed(grape: &GrapeClient) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stats = grape.stats().await.unwrap();
        if stats.indexing_pending == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "still pending: {stats:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// recall@10 over 30 queries against brute force; every score must be the exact Euclidean
/// distance to the document's stored vector.
async fn recall(docs: &CollectionClient<'_>, live: &BTreeMap<String, Vec<f32>>) -> f64 {
    let mut hits = 0;
    for q in 0..30u64 {
        let query = vector(800_000 + q, DIMENSION);
        let mut exact: Vec<(f32, &String)> =
            live.iter().map(|(id, v)| (l2(&query, v), id)).collect();
        exact.sort_by(|a, b| a.0.total_cmp(&b.0));
        let want: BTreeSet<&String> = exact.iter().take(10).map(|(_, id)| *id).collect();
        let request = SearchRequest {
            ef: Some(128),
            ..SearchRequest::new(query.clone(), 10)
        };
        let found = docs.search(&request).await.unwrap();
        assert_eq!(found.results.len(), 10);
        for r in &found.results {
            let distance = l2(&query, &live[&r.id]).sqrt();
            assert!(
                (r.score - distance).abs() <= 1e-4 * distance.max(1.0),
                "{}: score {} for a distance of {distance}",
                r.id,
                r.score
            );
        }
        hits += found
            .results
            .iter()
            .filter(|r| want.contains(&r.id))
            .count();
    }
    hits as f64 / 300.0
}

async fn vector_bytes(grape: &GrapeClient) -> u64 {
    let shards = grape.shard_stats().await.unwrap().shards;
    shards
        .iter()
        .filter(|s| s.collection == "codes")
        .map(|s| s.vector_bytes)
        .sum()
}

async fn graph_loaded(grape: &GrapeClient) -> u64 {
    let shards = grape.shard_stats().await.unwrap().shards;
    shards
        .iter()
        .filter(|s| s.collection == "codes")
        .map(|s| s.graph_loaded)
        .sum()
}

#[tokio::test]
async fn a_scalar_quantized_collection_answers_exactly_scored_searches_across_restarts() {
    let options = NodeOptions::dimension(DIMENSION).setting("INDEX__QUANTIZED_ORIGINALS", "disk");
    let mut node = GrapeNode::start(options).await;
    let grape = node.client();
    let created = grape
        .create_collection(&CollectionConfig {
            metric: Metric::L2,
            quantization: Quantization::Scalar,
            ..CollectionConfig::new("codes", DIMENSION)
        })
        .await
        .unwrap();
    assert_eq!(created.config.quantization, Quantization::Scalar);
    let docs = grape.collection("codes");
    let live: BTreeMap<String, Vec<f32>> = (0..DOCUMENTS)
        .map(|i| (format!("q{i}"), vector(i, DIMENSION)))
        .collect();
    let batch: Vec<DocumentInput> = live
        .iter()
        .map(|(id, v)| DocumentInput {
            id: Some(id.clone()),
            vector: v.clone(),
            metadata: None,
        })
        .collect();
    for chunk in batch.chunks(500) {
        docs.upsert_batch(chunk).await.unwrap();
    }
    wait_indexed(&grape).await;
    let first = recall(&docs, &live).await;
    assert!(first >= 0.95, "recall@10 {first}");
    // Memory holds one byte per component and a 4-byte sum per document; the full vectors
    // are on disk.
    let codes = DOCUMENTS * (DIMENSION as u64 + 4);
    assert_eq!(vector_bytes(&grape).await, codes);
    // A stored document reads back its exact vector.
    let doc = docs.get("q123").await.unwrap();
    assert_eq!(doc.vector, live["q123"]);

    // A crash: the graph is built again from storage (no save was due), codes learnt anew.
    node.kill9();
    node.restart().await;
    let grape = node.client();
    let docs = grape.collection("codes");
    wait_indexed(&grape).await;
    let after_crash = recall(&docs, &live).await;
    assert!(after_crash >= 0.95, "recall@10 {after_crash}");

    // A clean stop saves the graph with its codebook; the next start loads it.
    node.terminate();
    node.restart().await;
    let grape = node.client();
    let docs = grape.collection("codes");
    assert_eq!(graph_loaded(&grape).await, DOCUMENTS);
    assert_eq!(grape.stats().await.unwrap().indexing_pending, 0);
    let after_stop = recall(&docs, &live).await;
    assert!(after_stop >= 0.95, "recall@10 {after_stop}");
    assert_eq!(vector_bytes(&grape).await, codes);
}
