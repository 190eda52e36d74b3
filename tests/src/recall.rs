//! Searches checked against brute force: points written by id, waiting for the graphs to
//! hold them, recall@10 of a node's answers, and sums over a collection's shard stats.

use crate::vector;
use grape_client::{CollectionClient, DocumentInput, GrapeClient, SearchRequest, ShardStats};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::time::{Duration, Instant};

/// Squared Euclidean distance.
pub fn squared_l2(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Waits (at most a minute) until no write waits for a graph on the node.
pub async fn wait_indexed(grape: &GrapeClient) {
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

/// Writes `count` points `{prefix}0`, `{prefix}1`, ... (point i at [`vector`]`(i, dimension)`)
/// in batches of 500, and answers them by id.
pub async fn load_points(
    docs: &CollectionClient<'_>,
    prefix: &str,
    count: u64,
    dimension: usize,
) -> BTreeMap<String, Vec<f32>> {
    let live: BTreeMap<String, Vec<f32>> = (0..count)
        .map(|i| (format!("{prefix}{i}"), vector(i, dimension)))
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
    live
}

/// recall@10 (ef 128) of an l2 collection holding exactly `live`, over one query per seed in
/// `queries`, against brute force. With `exact_scores`, every answer's score must also be the
/// exact distance to the document's vector.
pub async fn recall_at_10(
    docs: &CollectionClient<'_>,
    live: &BTreeMap<String, Vec<f32>>,
    queries: Range<u64>,
    exact_scores: bool,
) -> f64 {
    let dimension = live.values().next().map_or(0, Vec::len);
    let mut hits = 0;
    let mut wanted = 0;
    for seed in queries {
        let query = vector(seed, dimension);
        let mut exact: Vec<(f32, &String)> = live
            .iter()
            .map(|(id, v)| (squared_l2(&query, v), id))
            .collect();
        exact.sort_by(|a, b| a.0.total_cmp(&b.0));
        let want: BTreeSet<&String> = exact.iter().take(10).map(|(_, id)| *id).collect();
        let request = SearchRequest {
            ef: Some(128),
            ..SearchRequest::new(query.clone(), 10)
        };
        let found = docs.search(&request).await.unwrap();
        assert_eq!(found.results.len(), 10);
        if exact_scores {
            for r in &found.results {
                let distance = squared_l2(&query, &live[&r.id]).sqrt();
                assert!(
                    (r.score - distance).abs() <= 1e-4 * distance.max(1.0),
                    "{}: score {} for a distance of {distance}",
                    r.id,
                    r.score
                );
            }
        }
        wanted += want.len();
        hits += found
            .results
            .iter()
            .filter(|r| want.contains(&r.id))
            .count();
    }
    hits as f64 / wanted as f64
}

/// Sum of one figure over a collection's shards on the node.
pub async fn shard_sum(
    grape: &GrapeClient,
    collection: &str,
    figure: impl Fn(&ShardStats) -> u64,
) -> u64 {
    let shards = grape.shard_stats().await.unwrap().shards;
    shards
        .iter()
        .filter(|s| s.collection == collection)
        .map(figure)
        .sum()
}
