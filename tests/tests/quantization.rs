//! A quantized collection behind a real node: scalar codes in the graph, full vectors on disk
//! (`index.quantized_originals: disk`). Searches agree with brute force and carry exact
//! scores (re-scored with the full vectors), memory holds only the codes, and all of it
//! holds after `kill -9` (graphs built again from storage) and after a clean stop (the saved
//! graph and its codebook loaded).

use grape_client::{CollectionConfig, GrapeClient, Metric, Quantization};
use grape_e2e::recall::{load_points, recall_at_10, shard_sum, wait_indexed};
use grape_e2e::{GrapeNode, NodeOptions};

const DIMENSION: usize = 24;
const DOCUMENTS: u64 = 3_000;
const QUERIES: std::ops::Range<u64> = 800_000..800_030;

/// Bytes of vectors and codes the collection's shards hold in memory.
async fn vector_bytes(grape: &GrapeClient) -> u64 {
    shard_sum(grape, "codes", |s| s.vector_bytes).await
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
    let live = load_points(&docs, "q", DOCUMENTS, DIMENSION).await;
    wait_indexed(&grape).await;
    let first = recall_at_10(&docs, &live, QUERIES, true).await;
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
    let after_crash = recall_at_10(&docs, &live, QUERIES, true).await;
    assert!(after_crash >= 0.95, "recall@10 {after_crash}");

    // A clean stop saves the graph with its codebook; the next start loads it.
    node.terminate();
    node.restart().await;
    let grape = node.client();
    let docs = grape.collection("codes");
    assert_eq!(
        shard_sum(&grape, "codes", |s| s.graph_loaded).await,
        DOCUMENTS
    );
    assert_eq!(grape.stats().await.unwrap().indexing_pending, 0);
    let after_stop = recall_at_10(&docs, &live, QUERIES, true).await;
    assert!(after_stop >= 0.95, "recall@10 {after_stop}");
    assert_eq!(vector_bytes(&grape).await, codes);
}
