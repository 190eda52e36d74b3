//! The CRD as the API server would enforce it: OpenAPI defaults and the CEL rules, evaluated
//! offline with kube-cel on the checked-in `crds/grapecluster.yaml`; the samples shipped in
//! `manifests/` and the chart pass them; the copies of the CRD in the chart and in
//! `manifests/` are the generated one.

use grape_operator::crd::GrapeCluster;
use serde_json::{Value, json};

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn schema_of(stem: &str) -> Value {
    let crd: Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join(format!("crds/{stem}.yaml"))).unwrap(),
    )
    .unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

fn check_against(stem: &str, object: &Value, old: Option<&Value>) -> Result<(), Vec<String>> {
    // `validate` applies the schema's defaults first, as the API server does.
    kube_cel::validate(&schema_of(stem), object, old)
        .map_err(|e| e.into_vec().into_iter().map(|e| e.message).collect())
}

fn check(object: &Value, old: Option<&Value>) -> Result<(), Vec<String>> {
    check_against("grapecluster", object, old)
}

/// Asserts that the API server would refuse `object` with an error mentioning `message`.
fn assert_refused(object: &Value, old: Option<&Value>, message: &str) {
    let errors = check(object, old).unwrap_err();
    assert!(errors.iter().any(|e| e.contains(message)), "{errors:?}");
}

fn cluster(spec: Value) -> Value {
    json!({"apiVersion": "grape.io/v1alpha1", "kind": "GrapeCluster", "metadata": {"name": "g"}, "spec": spec})
}

#[test]
fn defaults_and_valid_specs_pass() {
    check(&cluster(json!({})), None).unwrap();
    check(
        &cluster(json!({"replicas": 5, "database": {"replicationFactor": 5}})),
        None,
    )
    .unwrap();
}

#[test]
fn replication_factor_above_replicas_is_refused() {
    assert_refused(
        &cluster(json!({"replicas": 2, "database": {"replicationFactor": 3}})),
        None,
        "replicationFactor must not exceed replicas",
    );
    // The default replication factor (3) with one replica is refused too.
    assert!(check(&cluster(json!({"replicas": 1})), None).is_err());
}

#[test]
fn dimension_shard_count_and_metric_are_immutable() {
    let old = cluster(
        json!({"database": {"vectorDimension": 768, "shardCount": 16, "metric": "cosine"}}),
    );
    for (change, message) in [
        (
            json!({"vectorDimension": 1024, "shardCount": 16, "metric": "cosine"}),
            "vectorDimension is immutable",
        ),
        (
            json!({"vectorDimension": 768, "shardCount": 32, "metric": "cosine"}),
            "shardCount is immutable",
        ),
        (
            json!({"vectorDimension": 768, "shardCount": 16, "metric": "l2"}),
            "metric is immutable",
        ),
    ] {
        assert_refused(&cluster(json!({"database": change})), Some(&old), message);
    }
    // Scaling is not a change of those.
    check(&cluster(json!({"replicas": 5, "database": {"vectorDimension": 768, "shardCount": 16, "metric": "cosine"}})), Some(&old)).unwrap();
}

#[test]
fn settings_that_only_shape_the_default_collection_at_creation_are_immutable() {
    let old = cluster(
        json!({"database": {"replicationFactor": 3}, "index": {"m": 16, "efConstruction": 200, "efSearch": 128}}),
    );
    for (change, message) in [
        (
            json!({"database": {"replicationFactor": 1}, "index": {"m": 16, "efConstruction": 200, "efSearch": 128}}),
            "replicationFactor is immutable",
        ),
        (
            json!({"database": {"replicationFactor": 3}, "index": {"m": 32, "efConstruction": 200, "efSearch": 128}}),
            "index.m is immutable",
        ),
        (
            json!({"database": {"replicationFactor": 3}, "index": {"m": 16, "efConstruction": 400, "efSearch": 128}}),
            "index.efConstruction is immutable",
        ),
        (
            json!({"database": {"replicationFactor": 3}, "index": {"m": 16, "efConstruction": 200, "efSearch": 64}}),
            "index.efSearch is immutable",
        ),
    ] {
        assert_refused(&cluster(change), Some(&old), message);
    }
    // What the nodes do apply may change: the engine, where full vectors live.
    check(
        &cluster(json!({"database": {"replicationFactor": 3}, "index": {"m": 16, "efConstruction": 200, "efSearch": 128, "graph": "hnsw_rs", "quantizedOriginals": "disk"}})),
        Some(&old),
    )
    .unwrap();
}

#[test]
fn storage_may_grow_but_not_shrink_or_change_class() {
    let old = cluster(json!({"storage": {"size": "10Gi", "storageClassName": "fast"}}));
    check(
        &cluster(json!({"storage": {"size": "20Gi", "storageClassName": "fast"}})),
        Some(&old),
    )
    .unwrap();
    check(
        &cluster(json!({"storage": {"size": "10737418240", "storageClassName": "fast"}})),
        Some(&old),
    )
    .unwrap();
    assert_refused(
        &cluster(json!({"storage": {"size": "5Gi", "storageClassName": "fast"}})),
        Some(&old),
        "storage.size cannot shrink",
    );
    assert_refused(
        &cluster(json!({"storage": {"size": "10Gi", "storageClassName": "slow"}})),
        Some(&old),
        "storageClassName is immutable",
    );
    // Neither given where there was none, nor dropped.
    let unset = cluster(json!({"storage": {"size": "10Gi"}}));
    assert_refused(
        &cluster(json!({"storage": {"size": "10Gi", "storageClassName": "fast"}})),
        Some(&unset),
        "storageClassName is immutable",
    );
    assert_refused(&unset, Some(&old), "storageClassName is immutable");
    assert_refused(
        &cluster(json!({"storage": {"size": "ten gigs"}})),
        None,
        "storage.size must be a quantity",
    );
}

#[test]
fn placement_choices_are_checked() {
    assert_refused(
        &cluster(json!({"podAntiAffinityType": "sometimes"})),
        None,
        "podAntiAffinityType must be required or preferred",
    );
    check(&cluster(json!({"podAntiAffinityType": "preferred", "priorityClassName": "db", "progressDeadlineSeconds": 120, "startupTimeoutSeconds": 3600})), None).unwrap();
}

#[test]
fn bad_metric_and_raft_timing_are_refused() {
    assert_refused(
        &cluster(json!({"database": {"metric": "hamming"}})),
        None,
        "metric must be cosine, l2 or dot",
    );
    assert_refused(
        &cluster(json!({"index": {"graph": "faiss"}})),
        None,
        "graph must be hnsw_rs or grape",
    );
    check(&cluster(json!({"index": {"graph": "grape"}})), None).unwrap();
    assert_refused(
        &cluster(json!({"raft": {"electionTimeoutMs": 150, "heartbeatIntervalMs": 100}})),
        None,
        "at least twice",
    );
}

#[test]
fn conditions_merge_by_type_and_an_hpa_can_find_the_pods() {
    let crd: Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join("crds/grapecluster.yaml")).unwrap(),
    )
    .unwrap();
    let version = &crd["spec"]["versions"][0];
    let conditions =
        &version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"];
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(conditions["x-kubernetes-list-map-keys"], json!(["type"]));
    assert_eq!(
        version["subresources"]["scale"]["labelSelectorPath"],
        ".status.selector"
    );
}

#[test]
fn authentication_is_off_only_when_asked_and_then_without_keys() {
    // Users and roles alone: the operator generates the API keys it calls the nodes with.
    check(
        &cluster(json!({"security": {"rbacSecret": "grape-rbac"}})),
        None,
    )
    .unwrap();
    check(
        &cluster(json!({"security": {"allowUnauthenticated": true}})),
        None,
    )
    .unwrap();
    for security in [
        json!({"allowUnauthenticated": true, "apiKeysSecret": "grape-keys"}),
        json!({"allowUnauthenticated": true, "rbacSecret": "grape-rbac"}),
    ] {
        assert_refused(
            &cluster(json!({"security": security})),
            None,
            "allowUnauthenticated turns authentication off",
        );
    }
    // Certificates: one of three sources; cert-manager needs an issuer.
    for certificates in ["operator", "none"] {
        check(
            &cluster(json!({"security": {"certificates": certificates}})),
            None,
        )
        .unwrap();
    }
    check(
        &cluster(json!({"security": {"certificates": "cert-manager", "certManagerIssuer": {"name": "corp"}}})),
        None,
    )
    .unwrap();
    assert_refused(
        &cluster(json!({"security": {"certificates": "self-signed"}})),
        None,
        "certificates must be operator, cert-manager or none",
    );
    assert_refused(
        &cluster(json!({"security": {"certificates": "cert-manager"}})),
        None,
        "certificates: cert-manager needs certManagerIssuer",
    );
}

#[test]
fn shipped_samples_are_valid_grapeclusters() {
    let sample: Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join("manifests/samples/grapecluster.yaml")).unwrap(),
    )
    .unwrap();
    check(&sample, None).unwrap();
    let parsed: GrapeCluster = serde_json::from_value(sample).unwrap();
    assert_eq!(parsed.spec.replicas, 3);
    let values: Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join("charts/grape-operator/values.yaml")).unwrap(),
    )
    .unwrap();
    check(&cluster(values["sampleCluster"]["spec"].clone()), None).unwrap();
}

#[test]
fn crd_copies_match_the_generated_crds() {
    let all = grape_operator::crd::crd_yamls();
    assert_eq!(all.len(), 3);
    for (stem, generated) in all {
        for copy in grape_operator::crd::crd_copies(&stem) {
            let text = std::fs::read_to_string(root().join(&copy)).unwrap();
            assert!(
                text == generated,
                "{copy} is stale: cargo run -p grape-operator --bin crdgen -- --write"
            );
        }
    }
    let kustomization =
        std::fs::read_to_string(root().join("manifests/kustomization.yaml")).unwrap();
    for file in [
        "crd.yaml",
        "crd-grapebackup.yaml",
        "crd-grapescheduledbackup.yaml",
    ] {
        assert!(kustomization.contains(file), "kustomization misses {file}");
    }
}

#[test]
fn a_bootstrap_is_fixed_once_the_cluster_exists() {
    let from = json!({"bootstrap": {"fromBackup": {"source": "s3://b/p"}}});
    check(&cluster(from.clone()), None).unwrap();
    assert_refused(
        &cluster(json!({"bootstrap": {"fromBackup": {"source": "gopher://x"}}})),
        None,
        "source must be s3://bucket/prefix or file:///dir",
    );
    // Removed (a bootstrap that cannot succeed is given up): allowed.
    check(&cluster(json!({})), Some(&cluster(from.clone()))).unwrap();
    for (new, old) in [
        (from.clone(), json!({})),
        (
            json!({"bootstrap": {"fromBackup": {"source": "s3://b/other"}}}),
            from.clone(),
        ),
    ] {
        assert_refused(
            &cluster(new),
            Some(&cluster(old)),
            "bootstrap is fixed once the cluster exists",
        );
    }
    check(&cluster(from.clone()), Some(&cluster(from))).unwrap();
}

#[test]
fn backups_name_a_valid_destination_and_a_backup_is_fixed() {
    let backup = |spec: Value| json!({"apiVersion": "grape.io/v1alpha1", "kind": "GrapeBackup", "metadata": {"name": "b"}, "spec": spec});
    let good = backup(json!({"cluster": "g", "destination": "s3://bucket/x"}));
    check_against("grapebackup", &good, None).unwrap();
    let errors = check_against(
        "grapebackup",
        &backup(json!({"cluster": "g", "destination": "/backups"})),
        None,
    )
    .unwrap_err();
    assert!(
        errors.iter().any(|e| e.contains("destination must be")),
        "{errors:?}"
    );
    let errors = check_against(
        "grapebackup",
        &backup(json!({"cluster": "g", "destination": "file:///backups"})),
        Some(&good),
    )
    .unwrap_err();
    assert!(
        errors.iter().any(|e| e.contains("spec is fixed")),
        "{errors:?}"
    );

    let schedule = |spec: Value| json!({"apiVersion": "grape.io/v1alpha1", "kind": "GrapeScheduledBackup", "metadata": {"name": "s"}, "spec": spec});
    check_against(
        "grapescheduledbackup",
        &schedule(json!({"cluster": "g", "schedule": "0 2 * * *", "destination": "s3://b/p"})),
        None,
    )
    .unwrap();
    assert!(
        check_against(
            "grapescheduledbackup",
            &schedule(json!({"cluster": "g", "schedule": "0 2 * * *", "destination": "ftp://b/p"})),
            None
        )
        .is_err()
    );
    // kube-cel checks the CEL rules; the bounds and required fields are plain OpenAPI.
    let spec = &schema_of("grapescheduledbackup")["properties"]["spec"];
    assert_eq!(
        spec["properties"]["successfulBackupsToKeep"]["minimum"],
        1.0
    );
    assert_eq!(spec["properties"]["successfulBackupsToKeep"]["default"], 7);
    assert_eq!(spec["properties"]["failedBackupsToKeep"]["default"], 3);
    assert_eq!(
        spec["required"],
        json!(["cluster", "destination", "schedule"])
    );
}

#[test]
fn the_backup_samples_are_valid_and_parse() {
    let text = std::fs::read_to_string(root().join("manifests/samples/backups.yaml")).unwrap();
    let mut kinds = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let doc: Value = serde::Deserialize::deserialize(doc).unwrap();
        let kind = doc["kind"].as_str().unwrap().to_string();
        let stem = kind.to_lowercase();
        check_against(&stem, &doc, None).unwrap();
        match kind.as_str() {
            "GrapeBackup" => {
                serde_json::from_value::<grape_operator::backup::crd::GrapeBackup>(doc).unwrap();
            }
            "GrapeScheduledBackup" => {
                let parsed: grape_operator::backup::crd::GrapeScheduledBackup =
                    serde_json::from_value(doc).unwrap();
                grape_operator::backup::decide::parse_schedule(&parsed.spec.schedule).unwrap();
            }
            _ => {
                let parsed: GrapeCluster = serde_json::from_value(doc).unwrap();
                assert!(parsed.spec.bootstrap.is_some());
            }
        }
        kinds.push(kind);
    }
    assert_eq!(
        kinds,
        ["GrapeBackup", "GrapeScheduledBackup", "GrapeCluster"]
    );
}
