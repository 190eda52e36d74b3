//! Both graph engines (`index.graph: hnsw_rs | grape`) behind a real node: searches agree with
//! brute force, updated documents are found at their new vectors, deleted ones never come
//! back (also after the graphs are rebuilt without them), and all of it holds after `kill -9`
//! and a restart that rebuilds the graphs from storage. Grape's graphs are saved and loaded
//! at the next start instead of being built again, after `kill -9` and after a clean stop.

use grape_client::{CollectionClient, CollectionConfig, DocumentInput, Metric, SearchRequest};
use grape_e2e::recall::{load_points, recall_at_10, shard_sum, squared_l2, wait_indexed};
use grape_e2e::{GrapeNode, NodeOptions, vector};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const DIMENSION: usize = 16;
const DOCUMENTS: u64 = 4_000;

const QUERIES: std::ops::Range<u64> = 900_000..900_040;

/// Writes `DOCUMENTS` points (`p0`, `p1`, ...) and answers them by id.
async fn load(docs: &CollectionClient<'_>) -> BTreeMap<String, Vec<f32>> {
    load_points(docs, "p", DOCUMENTS, DIMENSION).await
}

/// recall@10 against brute force over `live`; every score must be the exact distance.
async fn recall(docs: &CollectionClient<'_>, live: &BTreeMap<String, Vec<f32>>) -> f64 {
    recall_at_10(docs, live, QUERIES, true).await
}

/// Updated documents come first at their new vectors; deleted ones are never returned.
async fn check_changes(
    docs: &CollectionClient<'_>,
    updated: &BTreeMap<String, Vec<f32>>,
    deleted: &BTreeMap<String, Vec<f32>>,
) {
    for (id, v) in updated.iter().step_by(10) {
        let found = docs
            .search(&SearchRequest::new(v.clone(), 1))
            .await
            .unwrap();
        assert_eq!(&found.results[0].id, id);
    }
    for v in deleted.values().step_by(10) {
        let found = docs
            .search(&SearchRequest::new(v.clone(), 20))
            .await
            .unwrap();
        for r in &found.results {
            assert!(!deleted.contains_key(&r.id), "deleted {} returned", r.id);
        }
    }
}

async fn engine_serves_correct_searches(engine: &str) {
    let options = NodeOptions::dimension(DIMENSION)
        .setting("INDEX__GRAPH", engine)
        .setting("INDEX__REBUILD_THRESHOLD", "100");
    let mut node = GrapeNode::start(options).await;
    let grape = node.client();
    grape
        .create_collection(&CollectionConfig {
            metric: Metric::L2,
            ..CollectionConfig::new("points", DIMENSION)
        })
        .await
        .unwrap();
    let docs = grape.collection("points");
    let mut live = load(&docs).await;
    wait_indexed(&node.client()).await;
    let first = recall(&docs, &live).await;
    assert!(first >= 0.95, "{engine}: recall@10 {first}");

    // Replace 300 vectors and delete 300 documents: 600 dead graph entries, past the rebuild
    // threshold of every shard.
    let mut updated = BTreeMap::new();
    for i in 0..300u64 {
        let id = format!("p{i}");
        let v = vector(500_000 + i, DIMENSION);
        docs.upsert(&DocumentInput {
            id: Some(id.clone()),
            vector: v.clone(),
            metadata: None,
        })
        .await
        .unwrap();
        live.insert(id.clone(), v.clone());
        updated.insert(id, v);
    }
    let mut deleted = BTreeMap::new();
    for i in 300..600u64 {
        let id = format!("p{i}");
        docs.delete(&id).await.unwrap();
        deleted.insert(id.clone(), live.remove(&id).unwrap());
    }
    check_changes(&docs, &updated, &deleted).await;
    wait_indexed(&node.client()).await;
    let shards = grape.shard_stats().await.unwrap().shards;
    let points: Vec<_> = shards.iter().filter(|s| s.collection == "points").collect();
    assert!(
        points.iter().all(|s| s.rebuilds >= 1),
        "{engine}: every shard's graph should have been rebuilt: {points:?}"
    );
    check_changes(&docs, &updated, &deleted).await;
    let after_changes = recall(&docs, &live).await;
    assert!(after_changes >= 0.95, "{engine}: recall@10 {after_changes}");

    node.kill9();
    node.restart().await;
    wait_indexed(&node.client()).await;
    let docs = node.client();
    let docs = docs.collection("points");
    check_changes(&docs, &updated, &deleted).await;
    let after_restart = recall(&docs, &live).await;
    assert!(after_restart >= 0.95, "{engine}: recall@10 {after_restart}");
}

#[tokio::test]
async fn hnsw_rs_engine_serves_correct_searches() {
    engine_serves_correct_searches("hnsw_rs").await;
}

#[tokio::test]
async fn grape_engine_serves_correct_searches() {
    engine_serves_correct_searches("grape").await;
}

/// Graph entries the `points` shards loaded from their saved graphs at start.
async fn graph_loaded(node: &GrapeNode) -> u64 {
    shard_sum(&node.client(), "points", |s| s.graph_loaded).await
}

#[tokio::test]
async fn a_restart_loads_the_saved_graphs_instead_of_building_them() {
    let options = NodeOptions::dimension(DIMENSION).setting("INDEX__GRAPH_SAVE_INTERVAL_SECS", "1");
    let mut node = GrapeNode::start(options).await;
    let grape = node.client();
    grape
        .create_collection(&CollectionConfig {
            metric: Metric::L2,
            ..CollectionConfig::new("points", DIMENSION)
        })
        .await
        .unwrap();
    let shards = grape
        .get_collection("points")
        .await
        .unwrap()
        .config
        .shard_count as usize;
    let docs = grape.collection("points");
    let mut live = load(&docs).await;
    wait_indexed(&node.client()).await;
    // Each shard's graph is saved within the interval plus a tick of the saver.
    let graphs = node.data_dir.path().join("graphs");
    let saved = || {
        std::fs::read_dir(&graphs)
            .map(|dir| {
                dir.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".graph"))
                    .count()
            })
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while saved() < shards {
        assert!(
            Instant::now() < deadline,
            "{} of {shards} graphs saved",
            saved()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Changes after the save, then a crash: whatever the last save held is reused, what
    // changed since is inserted again, and answers are right either way.
    let mut updated = BTreeMap::new();
    let mut deleted = BTreeMap::new();
    for i in 0..100u64 {
        let id = format!("p{i}");
        let v = vector(700_000 + i, DIMENSION);
        docs.upsert(&DocumentInput {
            id: Some(id.clone()),
            vector: v.clone(),
            metadata: None,
        })
        .await
        .unwrap();
        live.insert(id.clone(), v.clone());
        updated.insert(id, v);
        let gone = format!("p{}", 1000 + i);
        docs.delete(&gone).await.unwrap();
        deleted.insert(gone.clone(), live.remove(&gone).unwrap());
    }
    node.kill9();
    // From here on, only a clean stop saves (the interval is never up).
    node.set_options(
        NodeOptions::dimension(DIMENSION).setting("INDEX__GRAPH_SAVE_INTERVAL_SECS", "3600"),
    );
    node.restart().await;
    let loaded = graph_loaded(&node).await;
    assert!(
        (DOCUMENTS - 200..=DOCUMENTS).contains(&loaded),
        "{loaded} graph entries loaded"
    );
    assert!(node.log_text().contains("read the saved graph"));
    let grape = node.client();
    let docs = grape.collection("points");
    check_changes(&docs, &updated, &deleted).await;
    wait_indexed(&node.client()).await;
    let after_crash = recall(&docs, &live).await;
    assert!(after_crash >= 0.95, "recall@10 {after_crash}");

    // A clean stop saves every changed graph: the next start loads all of it.
    node.terminate();
    node.restart().await;
    let stats = node.client().stats().await.unwrap();
    assert_eq!(graph_loaded(&node).await, live.len() as u64);
    assert_eq!(stats.indexing_pending, 0, "{stats:?}");
    let grape = node.client();
    let docs = grape.collection("points");
    check_changes(&docs, &updated, &deleted).await;
    let after_stop = recall(&docs, &live).await;
    assert!(after_stop >= 0.95, "recall@10 {after_stop}");
}

/// Ids of the `k` nearest of `docs` to `query` whose metadata `keep` accepts.
fn exact_filtered(
    docs: &BTreeMap<String, (Vec<f32>, u64)>,
    query: &[f32],
    k: usize,
    keep: impl Fn(u64) -> bool,
) -> Vec<String> {
    let mut found: Vec<(f32, &String)> = docs
        .iter()
        .filter(|(_, (_, bucket))| keep(*bucket))
        .map(|(id, (v, _))| (squared_l2(query, v), id))
        .collect();
    found.sort_by(|a, b| a.0.total_cmp(&b.0));
    found
        .into_iter()
        .take(k)
        .map(|(_, id)| id.clone())
        .collect()
}

/// Which buckets a filter keeps.
type BucketTest = Box<dyn Fn(u64) -> bool>;

#[tokio::test]
async fn payload_indexes_answer_filters_and_survive_restarts() {
    let mut node = GrapeNode::start(NodeOptions::dimension(DIMENSION)).await;
    let grape = node.client();
    let config: CollectionConfig = serde_json::from_value(serde_json::json!({
        "name": "tagged", "dimension": DIMENSION, "metric": "l2",
        "payload_indexes": [{"key": "bucket", "type": "numeric"}, {"key": "kind", "type": "keyword"}]
    }))
    .unwrap();
    grape.create_collection(&config).await.unwrap();
    let shown = grape.get_collection("tagged").await.unwrap().config;
    assert_eq!(shown.payload_indexes, config.payload_indexes);
    let docs: BTreeMap<String, (Vec<f32>, u64)> = (0..DOCUMENTS)
        .map(|i| (format!("t{i}"), (vector(i, DIMENSION), i % 100)))
        .collect();
    let batch: Vec<DocumentInput> = docs
        .iter()
        .map(|(id, (v, bucket))| DocumentInput {
            id: Some(id.clone()),
            vector: v.clone(),
            metadata: serde_json::json!({"bucket": bucket, "kind": format!("k{}", bucket % 10)})
                .as_object()
                .cloned(),
        })
        .collect();
    let collection = grape.collection("tagged");
    for chunk in batch.chunks(500) {
        collection.upsert_batch(chunk).await.unwrap();
    }
    wait_indexed(&node.client()).await;
    // 1%, 10% and 50% of the documents, by range and by keyword.
    let cases: Vec<(serde_json::Value, BucketTest)> = vec![
        (
            serde_json::json!({"must": [{"key": "bucket", "match": 42}]}),
            Box::new(|b| b == 42),
        ),
        (
            serde_json::json!({"must": [{"key": "kind", "match": "k3"}]}),
            Box::new(|b| b % 10 == 3),
        ),
        (
            serde_json::json!({"must": [{"key": "bucket", "range": {"gte": 10, "lt": 60}}]}),
            Box::new(|b| (10..60).contains(&b)),
        ),
        (
            serde_json::json!({"must": [{"key": "bucket", "range": {"lt": 50}}], "must_not": [{"key": "kind", "match": "k1"}]}),
            Box::new(|b| b < 50 && b % 10 != 1),
        ),
    ];
    for round in 0..2 {
        let collection = node.client();
        let collection = collection.collection("tagged");
        for (filter, keep) in &cases {
            let mut hits = 0;
            for q in 0..20u64 {
                let query = vector(800_000 + q, DIMENSION);
                let request: SearchRequest = serde_json::from_value(serde_json::json!({
                    "vector": query, "top_k": 10, "ef": 256, "filter": filter
                }))
                .unwrap();
                let found = collection.search(&request).await.unwrap();
                let want = exact_filtered(&docs, &query, 10, keep);
                for r in &found.results {
                    let bucket = docs[&r.id].1;
                    assert!(
                        keep(bucket),
                        "round {round}: {} (bucket {bucket}) does not match {filter}",
                        r.id
                    );
                }
                hits += found
                    .results
                    .iter()
                    .filter(|r| want.contains(&r.id))
                    .count();
            }
            let recall = hits as f64 / 200.0;
            assert!(
                recall >= 0.95,
                "round {round}: recall@10 {recall} for {filter}"
            );
        }
        // The indexes are rebuilt from the documents (and the saved graph) at start.
        node.terminate();
        node.restart().await;
    }
}
