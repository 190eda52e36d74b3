//! API keys and roles against a real node with authentication on: each role's allowed and
//! denied actions, 401/403/429, and the endpoints that never need a key.

use grape_e2e::actions::{
    ALL, Action, Action::*, READER, SEARCHER, WRITER, Who, perform, wrong_answers,
};
use grape_e2e::{GrapeNode, NodeOptions, temp_file};
use reqwest::Method;
use serde_json::Value;

const KEYS: &str = r#"
api_keys:
  - key: "sk-admin-0001"
    name: "Admin"
    permissions: ["admin"]
  - key: "sk-writer-0001"
    name: "Writer"
    permissions: ["writer"]
  - key: "sk-reader-0001"
    name: "Reader"
    permissions: ["reader"]
  - key: "sk-searcher-0001"
    name: "Searcher"
    permissions: ["searcher"]
  - key: "sk-expired-0001"
    name: "Expired"
    permissions: ["admin"]
    expires_at: "2024-12-31T23:59:59Z"
  - key: "sk-office-0001"
    name: "Office only"
    permissions: ["admin"]
    ip_whitelist: ["10.0.0.0/8", "172.16.0.0/12"]
  - key: "sk-local-0001"
    name: "Loopback only"
    permissions: ["reader"]
    ip_whitelist: ["127.0.0.0/8"]
  - key: "sk-slow-0001"
    name: "Rate limited"
    permissions: ["reader"]
    rate_limits:
      requests_per_second: 1
      burst_size: 2
  - key: "sk-quota-0001"
    name: "Quota"
    permissions: ["writer"]
    quotas:
      documents_per_day: 3
      searches_per_day: 2
    expires_at: null
"#;

async fn start() -> (GrapeNode, tempfile::TempDir) {
    let (dir, path) = temp_file("api_keys.yaml", KEYS);
    let node = GrapeNode::start(
        NodeOptions::dimension(2)
            .setting("SECURITY__ENABLE_AUTH", "true")
            .arg("--api-keys-file")
            .arg(path.to_string_lossy().into_owned()),
    )
    .await;
    (node, dir)
}

#[tokio::test]
async fn each_role_may_do_exactly_what_the_seed_grants() {
    let (node, _keys) = start().await;
    // A document every role can try to read.
    assert_eq!(
        perform(&node, Who::Key("sk-admin-0001"), Upsert, "x").await,
        201
    );
    node.client_with_key("sk-admin-0001")
        .default_collection()
        .upsert(&grape_client::DocumentInput {
            id: Some("seed".into()),
            vector: vec![1.0, 0.0],
            metadata: None,
        })
        .await
        .unwrap();

    let roles: [(&str, &[Action]); 4] = [
        ("sk-admin-0001", &ALL),
        ("sk-writer-0001", WRITER),
        ("sk-reader-0001", READER),
        ("sk-searcher-0001", SEARCHER),
    ];
    let mut wrong = Vec::new();
    for (key, allowed) in roles {
        wrong.extend(wrong_answers(&node, Who::Key(key), allowed, key).await);
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test]
async fn missing_unknown_and_expired_keys_are_401_and_probes_need_none() {
    let (node, _keys) = start().await;
    for action in ALL {
        assert_eq!(
            perform(&node, Who::Nobody, action, "anon").await,
            401,
            "{action:?} without a key"
        );
        assert_eq!(
            perform(&node, Who::Key("sk-made-up-key"), action, "anon").await,
            401,
            "{action:?} unknown key"
        );
    }
    let response = node
        .client_with_key("sk-expired-0001")
        .request(Method::GET, "/api/v1/collections")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{body}"
    );

    // Probes and the internal metrics port need no key.
    assert!(node.client().health().await.is_ok());
    assert!(node.client().ready().await.unwrap());
    let metrics = reqwest::get(format!("{}/metrics", node.metrics_url.as_ref().unwrap()))
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(
        metrics
            .text()
            .await
            .unwrap()
            .contains("grape_http_requests_total")
    );
}

#[tokio::test]
async fn ip_whitelists_are_enforced_against_the_caller_address() {
    let (node, _keys) = start().await;
    // Tests connect from 127.0.0.1.
    let status = perform(&node, Who::Key("sk-office-0001"), ListCollections, "o").await;
    assert_eq!(
        status, 403,
        "a key limited to 10/8 and 172.16/12 must not work from loopback"
    );
    let status = perform(&node, Who::Key("sk-local-0001"), ListCollections, "l").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn rate_limits_and_daily_quotas_answer_429_with_retry_after() {
    let (node, _keys) = start().await;
    let slow = node.client_with_key("sk-slow-0001");
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..4 {
        let response = slow
            .request(Method::GET, "/api/v1/collections")
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
        }
    }
    assert_eq!(
        &statuses[..2],
        &[200, 200],
        "the burst of 2 passes: {statuses:?}"
    );
    assert!(statuses[2..].contains(&429), "past the burst: {statuses:?}");
    let seconds: u64 = retry_after.expect("Retry-After on 429").parse().unwrap();
    assert!((1..=2).contains(&seconds));

    // documents_per_day: 3; searches_per_day: 2. Invalid requests are refused before they
    // count; deletes count.
    let quota = node.client_with_key("sk-quota-0001");
    let docs = quota.default_collection();
    let doc = |i: u32| grape_client::DocumentInput {
        id: Some(format!("q{i}")),
        vector: vec![1.0, i as f32],
        metadata: None,
    };
    for _ in 0..4 {
        let wrong = grape_client::DocumentInput {
            vector: vec![1.0, 2.0, 3.0],
            ..doc(9)
        };
        let err = docs.upsert(&wrong).await.unwrap_err();
        assert_eq!(err.code(), Some("dimension_mismatch"));
        let err = docs
            .search(&grape_client::SearchRequest::new(vec![1.0], 1))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some("dimension_mismatch"));
    }
    docs.upsert_batch(&[doc(1), doc(2)]).await.unwrap();
    docs.delete("q2").await.unwrap();
    let err = docs.upsert(&doc(3)).await.unwrap_err();
    assert_eq!(
        (err.status().map(|s| s.as_u16()), err.code()),
        (Some(429), Some("quota_exceeded"))
    );
    assert!(
        node.client_with_key("sk-admin-0001")
            .default_collection()
            .get("q3")
            .await
            .is_err(),
        "nothing written past the quota"
    );
    let search = grape_client::SearchRequest::new(vec![1.0, 1.0], 1);
    docs.search(&search).await.unwrap();
    docs.search(&search).await.unwrap();
    let response = quota
        .request(Method::POST, "/api/v1/search")
        .json(&search)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let retry = grape_e2e::retry_after_secs(&response);
    assert!(
        (1..=86_400).contains(&retry),
        "quota resets at UTC midnight: {retry}"
    );
}

#[tokio::test]
async fn a_key_removed_from_the_file_stops_working_without_a_restart() {
    let (dir, path) = temp_file("api_keys.yaml", KEYS);
    let node = GrapeNode::start(
        NodeOptions::dimension(2)
            .setting("SECURITY__ENABLE_AUTH", "true")
            .arg("--api-keys-file")
            .arg(path.to_string_lossy().into_owned()),
    )
    .await;
    assert_eq!(
        perform(&node, Who::Key("sk-reader-0001"), List, "r").await,
        200
    );
    // Revoke the reader and add a key, as an operator rotating keys would (a new file moved
    // into place, so the node never reads half a file).
    let rotated = KEYS.replace("sk-reader-0001", "sk-reader-0002");
    let staging = dir.path().join("next.yaml");
    std::fs::write(&staging, &rotated).unwrap();
    std::fs::rename(&staging, &path).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let old = perform(&node, Who::Key("sk-reader-0001"), List, "r").await;
        let new = perform(&node, Who::Key("sk-reader-0002"), List, "r").await;
        if (old, new) == (401, 200) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the file change did not take effect: old key {old}, new key {new}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // SIGHUP reloads at once; a broken file leaves the keys in force.
    std::fs::write(&path, "api_keys: [broken").unwrap();
    node.signal("HUP");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        perform(&node, Who::Key("sk-reader-0002"), List, "r").await,
        200
    );
    std::fs::write(&path, KEYS).unwrap();
    node.signal("HUP");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while perform(&node, Who::Key("sk-reader-0002"), List, "r").await != 401 {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP did not reload"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        perform(&node, Who::Key("sk-reader-0001"), List, "r").await,
        200
    );
    assert!(node.is_running());
}

#[tokio::test]
async fn an_address_guessing_keys_is_blocked_for_the_rest_of_the_minute() {
    let (_dir, path) = temp_file("api_keys.yaml", KEYS);
    let node = GrapeNode::start(
        NodeOptions::dimension(2)
            .setting("SECURITY__ENABLE_AUTH", "true")
            .setting("SECURITY__FAILED_AUTH_PER_MINUTE", "5")
            .arg("--api-keys-file")
            .arg(path.to_string_lossy().into_owned()),
    )
    .await;
    for i in 0..5 {
        let key = format!("sk-guess-{i:04}");
        assert_eq!(perform(&node, Who::Key(&key), List, "g").await, 401);
    }
    let response = node
        .client_with_key("sk-admin-0001")
        .request(Method::GET, "/api/v1/documents")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        429,
        "blocked whatever key it shows, so guessing learns nothing"
    );
    let retry = grape_e2e::retry_after_secs(&response);
    assert!((1..=60).contains(&retry), "{retry}");
    // Probes need no key and stay open.
    assert!(node.client().health().await.is_ok());
}

#[tokio::test]
async fn a_node_beyond_loopback_refuses_to_start_without_keys() {
    let options = NodeOptions::dimension(2)
        .arg("--listen-address")
        .arg("0.0.0.0:0");
    let (code, output) = GrapeNode::run_to_exit(&options, &[]);
    assert_eq!(code, 2, "{output}");
    assert!(output.contains("security.api_keys_file"), "{output}");
}
