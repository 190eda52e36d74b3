//! Every endpoint of a single node, through the real client against a real node served in the
//! test's process (the same node and HTTP service as the binary).

use grape_client::{
    CollectionConfig, Condition, DocumentInput, Filter, Metric, Range, SearchRequest,
};
use grape_e2e::{LocalNode, NodeOptions, vector};
use serde_json::{Value, json};

fn doc(id: &str, vector: Vec<f32>, metadata: Value) -> DocumentInput {
    DocumentInput {
        id: Some(id.to_string()),
        vector,
        metadata: metadata.as_object().cloned(),
    }
}

#[tokio::test]
async fn documents_can_be_written_read_listed_and_deleted() {
    let node = LocalNode::start(NodeOptions::dimension(4)).await;
    let grape = node.client();
    let docs = grape.default_collection();

    let id = docs
        .upsert(&doc("a", vec![1.0, 0.0, 0.0, 0.0], json!({"lang": "en"})))
        .await
        .unwrap();
    assert_eq!(id, "a");
    // Without an id the server assigns a UUID.
    let assigned = docs
        .upsert(&DocumentInput {
            id: None,
            vector: vec![0.0, 1.0, 0.0, 0.0],
            metadata: None,
        })
        .await
        .unwrap();
    assert!(uuid_shape(&assigned), "{assigned}");

    let fetched = docs.get("a").await.unwrap();
    assert_eq!(fetched.vector, vec![1.0, 0.0, 0.0, 0.0]);
    assert_eq!(fetched.metadata["lang"], "en");

    // Upsert replaces.
    docs.upsert(&doc("a", vec![0.5, 0.5, 0.0, 0.0], json!({"lang": "fr"})))
        .await
        .unwrap();
    let fetched = docs.get("a").await.unwrap();
    assert_eq!(fetched.metadata["lang"], "fr");
    assert_eq!(fetched.vector, vec![0.5, 0.5, 0.0, 0.0]);

    // Batch.
    let batch: Vec<DocumentInput> = (0..25)
        .map(|i| doc(&format!("b{i:02}"), vector(i, 4), json!({"i": i})))
        .collect();
    let answer = docs.upsert_batch(&batch).await.unwrap();
    assert_eq!(answer.inserted, 25);
    assert_eq!(answer.ids[3], "b03");

    // Listing visits every document exactly once, page by page.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = docs.list(7, cursor.as_deref()).await.unwrap();
        assert!(page.documents.len() <= 7);
        seen.extend(page.documents.into_iter().map(|d| d.id));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    seen.sort();
    let mut expected: Vec<String> = (0..25).map(|i| format!("b{i:02}")).collect();
    expected.push("a".into());
    expected.push(assigned.clone());
    expected.sort();
    assert_eq!(seen, expected);

    // Ids with characters that need escaping in a URL.
    docs.upsert(&doc(
        "dir/file name?#%",
        vec![0.0, 0.0, 1.0, 0.0],
        json!({}),
    ))
    .await
    .unwrap();
    assert_eq!(
        docs.get("dir/file name?#%").await.unwrap().id,
        "dir/file name?#%"
    );

    // Delete, then 404.
    assert!(docs.delete("a").await.unwrap().deleted);
    let err = docs.get("a").await.unwrap_err();
    assert_eq!(
        (err.status().map(|s| s.as_u16()), err.code()),
        (Some(404), Some("document_not_found"))
    );
    let err = docs.delete("a").await.unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(404));
}

fn uuid_shape(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4
}

#[tokio::test]
async fn search_ranks_by_the_collection_metric_and_filters_metadata() {
    let node = LocalNode::start(NodeOptions::dimension(2)).await;
    let grape = node.client();
    grape
        .create_collection(&CollectionConfig {
            metric: Metric::L2,
            ..CollectionConfig::new("places", 2)
        })
        .await
        .unwrap();
    let places = grape.collection("places");
    let points = [
        (
            "paris",
            [0.0, 0.0],
            json!({"country": "fr", "year": 2019, "tags": ["capital", "big"], "info": {"river": "seine"}}),
        ),
        (
            "lyon",
            [1.0, 0.0],
            json!({"country": "fr", "year": 2022, "tags": ["big"], "info": {"river": "rhone"}}),
        ),
        (
            "berlin",
            [3.0, 0.0],
            json!({"country": "de", "year": 2023, "tags": ["capital"], "info": {"river": "spree"}}),
        ),
        (
            "bonn",
            [4.0, 0.0],
            json!({"country": "de", "year": 2018, "tags": [], "info": {"river": "rhine"}}),
        ),
    ];
    let batch: Vec<DocumentInput> = points
        .iter()
        .map(|(id, v, m)| doc(id, v.to_vec(), m.clone()))
        .collect();
    places.upsert_batch(&batch).await.unwrap();

    let ids = |response: &grape_client::SearchResponse| -> Vec<String> {
        response.results.iter().map(|r| r.id.clone()).collect()
    };
    let all = places
        .search(&SearchRequest::new(vec![0.9, 0.0], 4))
        .await
        .unwrap();
    assert_eq!(ids(&all), ["lyon", "paris", "berlin", "bonn"]);
    // l2 scores are distances: lower first.
    assert!(
        (all.results[0].score - 0.1).abs() < 1e-5,
        "{:?}",
        all.results[0]
    );
    assert!(all.results[0].vector.is_none());
    assert!(all.took_ms >= 0.0);

    let with = |filter: Filter| SearchRequest {
        filter: Some(filter),
        ..SearchRequest::new(vec![0.0, 0.0], 10)
    };
    let must_de = Filter {
        must: vec![Condition::matches("country", "de")],
        ..Default::default()
    };
    assert_eq!(
        ids(&places.search(&with(must_de)).await.unwrap()),
        ["berlin", "bonn"]
    );
    let range = Filter {
        must: vec![Condition::in_range(
            "year",
            Range {
                gte: Some(2020.0),
                lt: Some(2025.0),
                ..Default::default()
            },
        )],
        ..Default::default()
    };
    assert_eq!(
        ids(&places.search(&with(range)).await.unwrap()),
        ["lyon", "berlin"]
    );
    let any = Filter {
        should: vec![Condition::matches_any("tags", vec![json!("capital")])],
        ..Default::default()
    };
    assert_eq!(
        ids(&places.search(&with(any)).await.unwrap()),
        ["paris", "berlin"]
    );
    let nested_not = Filter {
        must_not: vec![Condition::matches("info.river", "seine")],
        ..Default::default()
    };
    assert_eq!(
        ids(&places.search(&with(nested_not)).await.unwrap()),
        ["lyon", "berlin", "bonn"]
    );

    // The alias path, include_vectors and an explicit ef.
    let response: Value = grape
        .request(reqwest::Method::POST, "/api/v1/collections/places/vectors/search")
        .json(&json!({"vector": [4.0, 0.1], "top_k": 1, "include_vectors": true, "ef": 16, "consistency": "strong"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(response["results"][0]["id"], "bonn");
    assert_eq!(response["results"][0]["vector"], json!([4.0, 0.0]));

    // Cosine (the default collection's metric) scores are similarities: higher first.
    let docs = grape.default_collection();
    docs.upsert_batch(&[
        doc("east", vec![1.0, 0.0], json!({})),
        doc("north", vec![0.0, 1.0], json!({})),
    ])
    .await
    .unwrap();
    let response = grape
        .request(reqwest::Method::POST, "/api/v1/vectors/search")
        .json(&json!({"vector": [2.0, 0.2], "top_k": 2}))
        .send()
        .await
        .unwrap()
        .json::<grape_client::SearchResponse>()
        .await
        .unwrap();
    assert_eq!(ids(&response), ["east", "north"]);
    assert!(response.results[0].score > 0.99 && response.results[1].score < 0.2);
}

#[tokio::test]
async fn collections_can_be_created_inspected_used_and_dropped() {
    let node = LocalNode::start(NodeOptions::dimension(8)).await;
    let grape = node.client();
    let list = grape.list_collections().await.unwrap();
    assert_eq!(list.collections.len(), 1);
    assert_eq!(list.collections[0].config.name, "default");
    assert_eq!(list.collections[0].config.dimension, 8);

    let mut config = CollectionConfig::new("images", 3);
    config.shard_count = 4;
    config.metric = Metric::Dot;
    config.hnsw.m = 8;
    let created = grape.create_collection(&config).await.unwrap();
    assert_eq!(created.config, config);
    assert_eq!(created.documents, 0);
    let err = grape.create_collection(&config).await.unwrap_err();
    assert_eq!(
        (err.status().map(|s| s.as_u16()), err.code()),
        (Some(409), Some("collection_exists"))
    );

    let images = grape.collection("images");
    images
        .upsert(&doc("x", vec![1.0, 2.0, 3.0], json!({})))
        .await
        .unwrap();
    assert_eq!(grape.get_collection("images").await.unwrap().documents, 1);
    let hit = images
        .search(&SearchRequest::new(vec![1.0, 1.0, 1.0], 1))
        .await
        .unwrap();
    assert_eq!(hit.results[0].score, 6.0, "dot scores are inner products");
    // The default collection is unaffected.
    let err = grape.default_collection().get("x").await.unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(404));

    assert!(grape.delete_collection("images").await.unwrap().deleted);
    let err = grape.get_collection("images").await.unwrap_err();
    assert_eq!(
        (err.status().map(|s| s.as_u16()), err.code()),
        (Some(404), Some("collection_not_found"))
    );
    let err = images.get("x").await.unwrap_err();
    assert_eq!(err.code(), Some("collection_not_found"));
    // A re-created collection starts empty.
    grape.create_collection(&config).await.unwrap();
    assert_eq!(grape.get_collection("images").await.unwrap().documents, 0);
    let err = grape.delete_collection("default").await.unwrap_err();
    assert_eq!(
        (err.status().map(|s| s.as_u16()), err.code()),
        (Some(409), Some("default_collection"))
    );
}

#[tokio::test]
async fn health_readiness_stats_checksums_and_metrics_report_the_node() {
    let node = LocalNode::start(NodeOptions::dimension(3).arg("--node-id").arg("probe-7")).await;
    let grape = node.client();
    let health = grape.health().await.unwrap();
    assert_eq!(
        (health.status.as_str(), health.node_id.as_str()),
        ("healthy", "probe-7")
    );
    assert!(grape.ready().await.unwrap());

    let docs = grape.default_collection();
    let batch: Vec<DocumentInput> = (0..40)
        .map(|i| doc(&format!("d{i}"), vector(i, 3), json!({})))
        .collect();
    docs.upsert_batch(&batch).await.unwrap();
    docs.search(&SearchRequest::new(vector(1, 3), 3))
        .await
        .unwrap();

    let stats = grape.stats().await.unwrap();
    assert_eq!(stats.node_id, "probe-7");
    assert_eq!(stats.documents, 40);
    assert_eq!(stats.collections, 1);
    let per_shard: u64 = stats.shard_distribution["default"].values().sum();
    assert_eq!(per_shard, 40);
    assert_eq!(
        stats.shard_distribution["default"].len(),
        2,
        "the default shard_count is 2"
    );

    let shards = grape.shard_stats().await.unwrap();
    assert_eq!(shards.shards.len(), 2);
    assert_eq!(shards.shards.iter().map(|s| s.documents).sum::<u64>(), 40);
    assert!(
        shards
            .shards
            .iter()
            .all(|s| s.leader.as_deref() == Some("probe-7"))
    );
    assert_eq!(shards.shard_distribution, stats.shard_distribution);

    let before = grape.checksum().await.unwrap();
    assert_eq!(before.shards.iter().map(|s| s.documents).sum::<u64>(), 40);
    assert_eq!(
        grape.checksum().await.unwrap(),
        before,
        "checksums are deterministic"
    );
    docs.upsert(&doc("d0", vector(999, 3), json!({})))
        .await
        .unwrap();
    assert_ne!(
        grape.checksum().await.unwrap(),
        before,
        "a changed document changes a checksum"
    );

    let slow = grape.slow_queries().await.unwrap();
    assert_eq!(
        slow.threshold_ms, 100,
        "performance.slow_query_ms's default"
    );
    let status = grape.cluster_status().await.unwrap();
    assert_eq!(status.nodes[0].id, "probe-7");
    let leader = grape.cluster_leader().await.unwrap();
    assert_eq!(leader.leader.as_deref(), Some("probe-7"));

    for text in [
        grape.metrics_text().await.unwrap(),
        reqwest::get(format!("{}/metrics", node.metrics_url.as_ref().unwrap()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    ] {
        for name in [
            "grape_http_requests_total",
            "grape_http_request_duration_seconds_bucket",
            "grape_search_requests_total",
            "grape_search_duration_seconds_bucket",
            "grape_db_memory_usage_bytes",
            "grape_db_memory_limit_bytes",
            "grape_db_disk_usage_bytes",
            "grape_db_disk_free_bytes",
            "grape_db_disk_total_bytes",
            "grape_db_disk_reads_total",
            "grape_db_disk_writes_total",
            "grape_raft_log_entries_total",
            "grape_raft_election_count_total",
            "grape_raft_leadership_changes_total",
            "grape_cluster_leader_status",
            "grape_cluster_nodes_connected",
            "process_resident_memory_bytes",
        ] {
            assert!(text.contains(name), "missing {name}");
        }
        assert!(
            text.contains(r#"grape_db_documents_total{collection="default",node_id="probe-7"} 40"#)
        );
        assert!(
            text.contains(
                r#"grape_search_requests_total{collection="default",node_id="probe-7"} 1"#
            )
        );
        assert!(text.contains(r#"path="/api/v1/documents/batch",status="200""#));
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json_errors() {
    let node = LocalNode::start(NodeOptions::dimension(3)).await;
    let grape = node.client();
    let response = grape
        .request(reqwest::Method::GET, "/api/v1/nothing")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    let response = grape
        .request(reqwest::Method::PUT, "/api/v1/documents")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");
}
