//! The monitoring shipped with the compose deployment queries metrics Grape really exports:
//! every `grape_*` / `process_*` name in the Grafana dashboards and the alerting rules is
//! served by a running node's `/metrics` (after some writes and searches).

use grape_client::{DocumentInput, SearchRequest};
use grape_e2e::{GrapeNode, NodeOptions, vector};
use std::collections::BTreeSet;

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Metric names in a PromQL-bearing text: `grape_...` and `process_...` words.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (i, _) in text.match_indices(['g', 'p']) {
        let rest = &text[i..];
        if !(rest.starts_with("grape_") || rest.starts_with("process_")) {
            continue;
        }
        if i > 0 && text.as_bytes()[i - 1].is_ascii_alphanumeric() {
            continue;
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        names.insert(name);
    }
    names
}

#[tokio::test]
async fn dashboards_and_alert_rules_query_exported_metrics() {
    let mut queried = BTreeSet::new();
    let dashboards = std::fs::read_dir(root().join("config/grafana/dashboards")).unwrap();
    for entry in dashboards {
        let path = entry.unwrap().path();
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                queried.extend(metric_names(target["expr"].as_str().unwrap()));
            }
        }
    }
    let rules: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join("config/grape_rules.yml")).unwrap(),
    )
    .unwrap();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            queried.extend(metric_names(rule["expr"].as_str().unwrap()));
        }
    }
    assert!(queried.len() >= 8, "too few metrics found: {queried:?}");

    let node = GrapeNode::start(NodeOptions::dimension(4)).await;
    let client = node.client();
    let docs = client.default_collection();
    for i in 0..20u64 {
        docs.upsert(&DocumentInput {
            id: Some(format!("d{i}")),
            vector: vector(i, 4),
            metadata: None,
        })
        .await
        .unwrap();
    }
    docs.search(&SearchRequest::new(vector(3, 4), 5))
        .await
        .unwrap();
    let exported = client.metrics_text().await.unwrap();
    let missing: Vec<&String> = queried
        .iter()
        .filter(|name| {
            !exported.lines().any(|l| {
                !l.starts_with('#')
                    && l.starts_with(name.as_str())
                    && l[name.len()..].starts_with(['{', ' '])
            })
        })
        .collect();
    assert!(missing.is_empty(), "queried but not exported: {missing:?}");
}
