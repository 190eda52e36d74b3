//! Bad input gets a 4xx JSON error that names the problem, and changes nothing stored.

use grape_e2e::{LocalNode, NodeOptions};
use reqwest::Method;
use serde_json::{Value, json};

struct Case {
    what: &'static str,
    method: Method,
    path: &'static str,
    body: Body,
    status: u16,
    code: &'static str,
    /// Text the message must contain, so that it names the problem.
    mentions: &'static str,
}

enum Body {
    Json(Value),
    Raw(&'static str),
    None,
}

fn case(
    what: &'static str,
    path: &'static str,
    body: Value,
    status: u16,
    code: &'static str,
    mentions: &'static str,
) -> Case {
    Case {
        what,
        method: Method::POST,
        path,
        body: Body::Json(body),
        status,
        code,
        mentions,
    }
}

fn raw(
    what: &'static str,
    path: &'static str,
    body: &'static str,
    code: &'static str,
    mentions: &'static str,
) -> Case {
    Case {
        what,
        method: Method::POST,
        path,
        body: Body::Raw(body),
        status: 400,
        code,
        mentions,
    }
}

fn get(
    what: &'static str,
    path: &'static str,
    status: u16,
    code: &'static str,
    mentions: &'static str,
) -> Case {
    Case {
        what,
        method: Method::GET,
        path,
        body: Body::None,
        status,
        code,
        mentions,
    }
}

#[tokio::test]
async fn every_bad_request_is_a_clear_4xx_and_changes_nothing() {
    let node =
        LocalNode::start(NodeOptions::dimension(3).setting("PERFORMANCE__MAX_BATCH_SIZE", "5"))
            .await;
    let grape = node.client();
    let docs = grape.default_collection();
    docs.upsert_batch(&[
        grape_client::DocumentInput {
            id: Some("keep".into()),
            vector: vec![1.0, 2.0, 3.0],
            metadata: None,
        },
        grape_client::DocumentInput {
            id: Some("also".into()),
            vector: vec![3.0, 2.0, 1.0],
            metadata: None,
        },
    ])
    .await
    .unwrap();
    let before = grape.checksum().await.unwrap();

    let big_metadata = "x".repeat(70 * 1024);
    let long_id = "i".repeat(257);
    let six: Vec<Value> = (0..6)
        .map(|i| json!({"id": format!("n{i}"), "vector": [1, 2, 3]}))
        .collect();
    let cases = vec![
        case(
            "wrong dimension",
            "/api/v1/documents",
            json!({"id": "n", "vector": [1, 2]}),
            400,
            "dimension_mismatch",
            "2 dimensions, collection 'default' expects 3",
        ),
        case(
            "non-numeric value",
            "/api/v1/documents",
            json!({"id": "n", "vector": [1, "two", 3]}),
            400,
            "invalid_request",
            "vector[1]",
        ),
        case(
            "null value",
            "/api/v1/documents",
            json!({"id": "n", "vector": [1, null, 3]}),
            400,
            "invalid_request",
            "vector[1]",
        ),
        raw(
            "value too large for f32",
            "/api/v1/documents",
            r#"{"id": "n", "vector": [1, 1e39, 3]}"#,
            "invalid_vector",
            "vector[1] is not a finite number",
        ),
        raw(
            "NaN literal",
            "/api/v1/documents",
            r#"{"id": "n", "vector": [1, NaN, 3]}"#,
            "invalid_json",
            "line 1",
        ),
        case(
            "missing vector",
            "/api/v1/documents",
            json!({"id": "n"}),
            400,
            "invalid_request",
            "missing field `vector`",
        ),
        case(
            "unknown field",
            "/api/v1/documents",
            json!({"id": "n", "vector": [1, 2, 3], "vectr": 1}),
            400,
            "invalid_request",
            "unknown field `vectr`",
        ),
        case(
            "metadata not an object",
            "/api/v1/documents",
            json!({"id": "n", "vector": [1, 2, 3], "metadata": [1]}),
            400,
            "invalid_request",
            "metadata",
        ),
        case(
            "metadata over 64 KiB",
            "/api/v1/documents",
            json!({"id": "n", "vector": [1, 2, 3], "metadata": {"blob": big_metadata}}),
            400,
            "metadata_too_large",
            "65536",
        ),
        case(
            "id over 256 bytes",
            "/api/v1/documents",
            json!({"id": long_id, "vector": [1, 2, 3]}),
            400,
            "invalid_id",
            "257 bytes",
        ),
        case(
            "empty id",
            "/api/v1/documents",
            json!({"id": "", "vector": [1, 2, 3]}),
            400,
            "invalid_id",
            "empty",
        ),
        case(
            "zero vector under cosine",
            "/api/v1/documents",
            json!({"id": "n", "vector": [0, 0, 0]}),
            400,
            "invalid_vector",
            "zero vector",
        ),
        raw(
            "malformed JSON",
            "/api/v1/documents",
            r#"{"id": "n", "vector": [1, 2, 3"#,
            "invalid_json",
            "EOF",
        ),
        raw(
            "empty body",
            "/api/v1/documents",
            "",
            "invalid_json",
            "empty",
        ),
        raw(
            "trailing garbage",
            "/api/v1/documents",
            r#"{"id": "n", "vector": [1, 2, 3]} x"#,
            "invalid_json",
            "trailing",
        ),
        case(
            "unknown collection",
            "/api/v1/collections/nope/documents",
            json!({"id": "n", "vector": [1, 2, 3]}),
            404,
            "collection_not_found",
            "'nope'",
        ),
        case(
            "empty batch",
            "/api/v1/documents/batch",
            json!({"documents": []}),
            400,
            "empty_batch",
            "empty",
        ),
        case(
            "batch over max_batch_size",
            "/api/v1/documents/batch",
            json!({"documents": six}),
            400,
            "batch_too_large",
            "at most 5",
        ),
        case(
            "invalid item in a batch",
            "/api/v1/documents/batch",
            json!({"documents": [
                {"id": "n1", "vector": [1, 2, 3]}, {"id": "n2", "vector": [1, 2, 3]}, {"id": "n3", "vector": [1, 2]}
            ]}),
            400,
            "dimension_mismatch",
            "documents[2]",
        ),
        case(
            "mistyped item in a batch",
            "/api/v1/documents/batch",
            json!({"documents": [
                {"id": "n1", "vector": [1, 2, 3]}, {"id": "n2", "vector": "abc"}
            ]}),
            400,
            "invalid_request",
            "documents[1].vector",
        ),
        case(
            "batch without documents",
            "/api/v1/documents/batch",
            json!({"docs": []}),
            400,
            "invalid_request",
            "docs",
        ),
        case(
            "top_k 0",
            "/api/v1/search",
            json!({"vector": [1, 2, 3], "top_k": 0}),
            400,
            "invalid_top_k",
            "top_k 0",
        ),
        case(
            "top_k above 10000",
            "/api/v1/search",
            json!({"vector": [1, 2, 3], "top_k": 10001}),
            400,
            "invalid_top_k",
            "10000",
        ),
        case(
            "negative top_k",
            "/api/v1/search",
            json!({"vector": [1, 2, 3], "top_k": -1}),
            400,
            "invalid_request",
            "top_k",
        ),
        case(
            "ef 0",
            "/api/v1/search",
            json!({"vector": [1, 2, 3], "ef": 0}),
            400,
            "invalid_ef",
            "ef 0",
        ),
        case(
            "search dimension",
            "/api/v1/search",
            json!({"vector": [1, 2, 3, 4]}),
            400,
            "dimension_mismatch",
            "4 dimensions",
        ),
        case(
            "search without vector",
            "/api/v1/search",
            json!({"top_k": 3}),
            400,
            "invalid_request",
            "missing field `vector`",
        ),
        case(
            "bad consistency",
            "/api/v1/search",
            json!({"vector": [1, 2, 3], "consistency": "always"}),
            400,
            "invalid_request",
            "consistency",
        ),
        case(
            "filter condition without test",
            "/api/v1/search",
            json!({"vector": [1, 2, 3], "filter": {"must": [{"key": "a"}]}}),
            400,
            "invalid_filter",
            "filter.must[0]",
        ),
        case(
            "filter with two tests",
            "/api/v1/search",
            json!({"vector": [1, 2, 3], "filter": {"should": [{"key": "a", "match": 1, "match_any": [1]}]}}),
            400,
            "invalid_filter",
            "exactly one",
        ),
        case(
            "filter range without bounds",
            "/api/v1/search",
            json!({"vector": [1, 2, 3], "filter": {"must": [{"key": "a", "range": {}}]}}),
            400,
            "invalid_filter",
            "range",
        ),
        case(
            "filter range with a string bound",
            "/api/v1/search",
            json!({"vector": [1, 2, 3], "filter": {"must": [{"key": "a", "range": {"gt": "x"}}]}}),
            400,
            "invalid_request",
            "filter.must[0].range.gt",
        ),
        case(
            "filter unknown clause",
            "/api/v1/search",
            json!({"vector": [1, 2, 3], "filter": {"maybe": []}}),
            400,
            "invalid_request",
            "unknown field `maybe`",
        ),
        case(
            "filter matching an object",
            "/api/v1/search",
            json!({"vector": [1, 2, 3], "filter": {"must": [{"key": "a", "match": {"b": 1}}]}}),
            400,
            "invalid_filter",
            "string, number or boolean",
        ),
        case(
            "search unknown collection",
            "/api/v1/collections/nope/search",
            json!({"vector": [1, 2, 3]}),
            404,
            "collection_not_found",
            "'nope'",
        ),
        case(
            "collection with dimension 0",
            "/api/v1/collections",
            json!({"name": "c", "dimension": 0}),
            400,
            "invalid_collection",
            "dimension 0",
        ),
        case(
            "collection with a bad name",
            "/api/v1/collections",
            json!({"name": "a/b", "dimension": 3}),
            400,
            "invalid_collection",
            "name",
        ),
        case(
            "collection with 0 shards",
            "/api/v1/collections",
            json!({"name": "c", "dimension": 3, "shard_count": 0}),
            400,
            "invalid_collection",
            "shard_count",
        ),
        case(
            "collection indexing a key twice",
            "/api/v1/collections",
            json!({"name": "c", "dimension": 3, "payload_indexes": [
                {"key": "a", "type": "keyword"}, {"key": "a", "type": "numeric"}]}),
            400,
            "invalid_collection",
            "payload_indexes[1]: key \"a\" is indexed twice",
        ),
        case(
            "collection indexing an empty key segment",
            "/api/v1/collections",
            json!({"name": "c", "dimension": 3, "payload_indexes": [{"key": "a.", "type": "keyword"}]}),
            400,
            "invalid_collection",
            "empty segment",
        ),
        case(
            "collection with an unknown payload index type",
            "/api/v1/collections",
            json!({"name": "c", "dimension": 3, "payload_indexes": [{"key": "a", "type": "geo"}]}),
            400,
            "invalid_request",
            "geo",
        ),
        case(
            "collection with a payload index of unknown fields",
            "/api/v1/collections",
            json!({"name": "c", "dimension": 3, "payload_indexes": [{"key": "a", "type": "keyword", "x": 1}]}),
            400,
            "invalid_request",
            "x",
        ),
        case(
            "collection with a bad metric",
            "/api/v1/collections",
            json!({"name": "c", "dimension": 3, "metric": "hamming"}),
            400,
            "invalid_request",
            "metric",
        ),
        case(
            "collection that exists",
            "/api/v1/collections",
            json!({"name": "default", "dimension": 3}),
            409,
            "collection_exists",
            "default",
        ),
        get(
            "list with limit 0",
            "/api/v1/documents?limit=0",
            400,
            "invalid_limit",
            "limit 0",
        ),
        get(
            "list with a forged cursor",
            "/api/v1/documents?cursor=zz",
            400,
            "invalid_cursor",
            "zz",
        ),
        get(
            "list with a non-numeric limit",
            "/api/v1/documents?limit=many",
            400,
            "invalid_query",
            "limit",
        ),
        get(
            "missing document",
            "/api/v1/documents/ghost",
            404,
            "document_not_found",
            "'ghost'",
        ),
        Case {
            what: "delete missing document",
            method: Method::DELETE,
            path: "/api/v1/documents/ghost",
            body: Body::None,
            status: 404,
            code: "document_not_found",
            mentions: "'ghost'",
        },
        Case {
            what: "drop missing collection",
            method: Method::DELETE,
            path: "/api/v1/collections/ghost",
            body: Body::None,
            status: 404,
            code: "collection_not_found",
            mentions: "'ghost'",
        },
    ];

    let mut failures = Vec::new();
    for case in cases {
        let mut request = grape.request(case.method.clone(), case.path);
        request = match &case.body {
            Body::Json(value) => request.json(value),
            // No Content-Type: the seed's curl examples send none.
            Body::Raw(text) => request.body(text.to_string()),
            Body::None => request,
        };
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let code = body["error"]["code"].as_str().unwrap_or("");
        let message = body["error"]["message"].as_str().unwrap_or("");
        if status != case.status || code != case.code || !message.contains(case.mentions) {
            failures.push(format!(
                "{}: got {status} {code:?} {message:?}, want {} {:?} mentioning {:?}",
                case.what, case.status, case.code, case.mentions
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    assert_eq!(
        grape.checksum().await.unwrap(),
        before,
        "a rejected request changed stored data"
    );
    assert_eq!(grape.stats().await.unwrap().documents, 2);
    assert_eq!(grape.list_collections().await.unwrap().collections.len(), 1);
}

#[tokio::test]
async fn a_body_over_the_size_cap_is_413_and_changes_nothing() {
    let node = LocalNode::start(
        NodeOptions::dimension(3).setting("PERFORMANCE__MAX_REQUEST_BODY_MB", "1"),
    )
    .await;
    let grape = node.client();
    let before = grape.checksum().await.unwrap();
    let documents: Vec<Value> = (0..40_000)
        .map(|i| json!({"id": format!("doc-{i}"), "vector": [1.5, 2.5, 3.5]}))
        .collect();
    let body = serde_json::to_vec(&json!({"documents": documents})).unwrap();
    assert!(body.len() > 1024 * 1024);
    let response = grape
        .request(Method::POST, "/api/v1/documents/batch")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_request_body_mb")
    );
    assert_eq!(grape.checksum().await.unwrap(), before);
}
