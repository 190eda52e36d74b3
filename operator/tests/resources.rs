//! The owned objects rendered for a default and for a fully specified GrapeCluster, and the
//! checked-in CRD.

use grape_operator::crd::GrapeCluster;
use grape_operator::resources::{self, BOOTSTRAP_ANNOTATION, Names, TEMPLATE_HASH_ANNOTATION};
use serde_json::{Value, json};

fn cluster(spec: Value) -> GrapeCluster {
    serde_json::from_value(json!({
        "apiVersion": "grape.io/v1alpha1",
        "kind": "GrapeCluster",
        "metadata": {"name": "vectors", "namespace": "search", "uid": "1234-abcd", "generation": 1},
        "spec": spec,
    }))
    .expect("valid GrapeCluster")
}

fn full_spec() -> Value {
    json!({
        "replicas": 5,
        "image": "registry.example/grape:1.2.3",
        "imagePullPolicy": "IfNotPresent",
        "resources": {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "8Gi"}},
        "storage": {"size": "100Gi", "storageClassName": "fast-ssd"},
        "database": {"vectorDimension": 768, "metric": "l2", "shardCount": 32, "replicationFactor": 3},
        "index": {"m": 32, "efConstruction": 400, "efSearch": 256, "graph": "grape"},
        "raft": {"electionTimeoutMs": 1000, "heartbeatIntervalMs": 200},
        "security": {"apiKeysSecret": "grape-keys", "rbacSecret": "grape-rbac", "tlsSecret": "grape-tls"},
        "monitoring": {"serviceMonitor": true},
        "nodeSelector": {"disktype": "ssd"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "grape", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]}]}}},
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "rack", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "vectors"}}}],
        "priorityClassName": "grape-critical",
        "startupTimeoutSeconds": 3600,
    })
}

fn container_of(pod_spec: &Value) -> &Value {
    &pod_spec["containers"][0]
}

fn to_json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).expect("serializable")
}

#[test]
fn default_spec_renders_every_owned_object() {
    let c = cluster(json!({}));
    assert_eq!(c.spec.replicas, 3);
    let d = resources::desired(&c, 3, 3);

    // Every object is owned by the cluster (controller reference) and labelled.
    for meta in [
        &d.config_map.metadata,
        &d.headless.metadata,
        &d.client_service.metadata,
        &d.statefulset.metadata,
        &d.pdb.metadata,
    ] {
        let owner = &meta.owner_references.as_ref().expect("owner")[0];
        assert_eq!(owner.kind, "GrapeCluster");
        assert_eq!(owner.uid, "1234-abcd");
        assert_eq!(owner.controller, Some(true));
        assert_eq!(meta.namespace.as_deref(), Some("search"));
        assert_eq!(
            meta.labels.as_ref().unwrap()["app.kubernetes.io/instance"],
            "vectors"
        );
    }
    assert!(d.service_monitor.is_none());

    // ConfigMap: the node configuration, peers = the bootstrap pods by stable DNS name.
    let yaml = &d.config_map.data.as_ref().unwrap()["server.yaml"];
    let config: Value = serde_yaml::from_str(yaml).unwrap();
    // Immutable, named by its content; the pods mount that one.
    let name = d.config_map.metadata.name.clone().unwrap();
    assert_eq!(
        name,
        format!("vectors-config-{}", &resources::hash(yaml)[..10])
    );
    assert_eq!(d.config_map.immutable, Some(true));
    assert_eq!(
        to_json(&d.statefulset)["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"],
        name.as_str()
    );
    assert_eq!(config["cluster"]["enabled"], true);
    assert_eq!(
        config["cluster"]["peers"],
        json!([
            {"id": "vectors-0", "address": "vectors-0.vectors-headless.search.svc:9000"},
            {"id": "vectors-1", "address": "vectors-1.vectors-headless.search.svc:9000"},
            {"id": "vectors-2", "address": "vectors-2.vectors-headless.search.svc:9000"},
        ])
    );
    assert_eq!(config["database"]["vector_dimension"], 1536);
    assert_eq!(config["database"]["metric"], "cosine");
    assert_eq!(config["database"]["shard_count"], 16);
    assert_eq!(config["database"]["replication_factor"], 3);
    assert_eq!(config["cluster"]["election_timeout_ms"], 500);
    // Node-to-node calls prove the cluster Secret the operator creates, mounted read-only.
    assert_eq!(
        config["cluster"]["secret_file"],
        "/etc/grape-vector-db/cluster/cluster.secret"
    );
    assert_eq!(config["node"]["data_dir"], "/var/lib/grape-vector-db");
    // Secure by default: TLS for clients, probes and nodes (verified both ways), with the
    // certificate the operator issues into `<cluster>-tls`.
    assert_eq!(config["security"]["enable_tls"], true);
    assert_eq!(config["cluster"]["enable_tls"], true);
    assert_eq!(config["cluster"]["tls_config"]["verify_peer"], true);
    assert_eq!(
        config["security"]["cert_file"],
        "/etc/grape-vector-db/tls/tls.crt"
    );
    let probe =
        &to_json(&d.statefulset)["spec"]["template"]["spec"]["containers"][0]["readinessProbe"];
    assert_eq!(probe["httpGet"]["scheme"], "HTTPS", "{probe}");
    // Authentication on, with the key Secret the operator generates.
    assert_eq!(config["security"]["enable_auth"], true);
    assert_eq!(
        config["security"]["api_keys_file"],
        "/etc/grape-vector-db/keys/api_keys.yaml"
    );
    let pod_volumes = to_json(&d.statefulset)["spec"]["template"]["spec"]["volumes"].clone();
    assert!(
        pod_volumes
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["secret"]["secretName"] == "vectors-api-keys"),
        "{pod_volumes}"
    );
    assert!(
        pod_volumes
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["secret"]["secretName"] == "vectors-tls"),
        "{pod_volumes}"
    );

    // Headless Service: peer DNS, not-ready pods published (joining nodes must be reachable).
    let headless = to_json(&d.headless);
    assert_eq!(headless["metadata"]["name"], "vectors-headless");
    assert_eq!(headless["spec"]["clusterIP"], "None");
    assert_eq!(headless["spec"]["publishNotReadyAddresses"], true);
    let ports: Vec<i64> = headless["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_i64().unwrap())
        .collect();
    assert_eq!(ports, vec![8080, 9000, 9091]);

    // Client Service: the API only, ready pods only.
    let client = to_json(&d.client_service);
    assert_eq!(client["metadata"]["name"], "vectors");
    assert_eq!(client["spec"]["ports"][0]["port"], 8080);
    assert!(client["spec"].get("publishNotReadyAddresses").is_none());

    // StatefulSet.
    let sts = to_json(&d.statefulset);
    assert_eq!(sts["spec"]["replicas"], 3);
    assert_eq!(sts["spec"]["serviceName"], "vectors-headless");
    assert_eq!(sts["spec"]["podManagementPolicy"], "Parallel");
    assert_eq!(sts["spec"]["updateStrategy"]["type"], "OnDelete");
    assert_eq!(
        sts["spec"]["persistentVolumeClaimRetentionPolicy"],
        json!({"whenScaled": "Delete", "whenDeleted": "Retain"})
    );
    assert_eq!(sts["metadata"]["annotations"][BOOTSTRAP_ANNOTATION], "3");
    let pod = &sts["spec"]["template"];
    assert_eq!(
        pod["metadata"]["annotations"][TEMPLATE_HASH_ANNOTATION]
            .as_str()
            .unwrap()
            .len(),
        16
    );
    let container = &pod["spec"]["containers"][0];
    // The image of the operator's own version, never a moving tag.
    assert_eq!(
        container["image"],
        format!("grape-vector-db:{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        container["args"],
        json!(["--config", "/etc/grape-vector-db/server.yaml"])
    );
    assert_eq!(container["env"][0]["name"], "GRAPE_NODE_ID");
    assert_eq!(
        container["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(
        container["env"][1]["value"],
        "$(GRAPE_NODE_ID).vectors-headless.search.svc:9000"
    );
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/health");
    assert_eq!(container["startupProbe"]["httpGet"]["path"], "/health");
    assert_eq!(container["readinessProbe"]["httpGet"]["scheme"], "HTTPS");
    assert_eq!(container["securityContext"]["runAsNonRoot"], true);
    // Pod Security "restricted" (checked field by field on the rendered sample by
    // scripts/check-k8s.sh): RuntimeDefault seccomp; volumes re-owned only on a mismatch.
    let pod_security = &pod["spec"]["securityContext"];
    assert_eq!(pod_security["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(pod_security["fsGroupChangePolicy"], "OnRootMismatch");
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert_eq!(
        container["securityContext"]["capabilities"]["drop"],
        json!(["ALL"])
    );
    assert_eq!(
        container["volumeMounts"][0]["mountPath"],
        "/var/lib/grape-vector-db"
    );
    assert!(container.get("resources").is_none());
    // One pod per host by default (losing a host loses one replica of a shard at most),
    // and zones evened out as far as the scheduler can.
    let anti = &pod["spec"]["affinity"]["podAntiAffinity"];
    assert_eq!(
        anti["requiredDuringSchedulingIgnoredDuringExecution"][0]["topologyKey"],
        "kubernetes.io/hostname"
    );
    assert!(
        anti.get("preferredDuringSchedulingIgnoredDuringExecution")
            .is_none()
    );
    let spread = &pod["spec"]["topologySpreadConstraints"][0];
    assert_eq!(spread["topologyKey"], "topology.kubernetes.io/zone");
    assert_eq!(spread["maxSkew"], 1);
    assert_eq!(spread["whenUnsatisfiable"], "ScheduleAnyway");
    assert_eq!(
        spread["labelSelector"]["matchLabels"],
        sts["spec"]["selector"]["matchLabels"]
    );
    assert!(pod["spec"].get("priorityClassName").is_none());
    // The startup probe allows spec.startupTimeoutSeconds (600 s) to open the storage.
    let startup = &container["startupProbe"];
    assert_eq!(
        startup["periodSeconds"].as_i64().unwrap() * startup["failureThreshold"].as_i64().unwrap(),
        600
    );
    let claim = &sts["spec"]["volumeClaimTemplates"][0];
    assert_eq!(claim["metadata"]["name"], "data");
    assert_eq!(claim["spec"]["resources"]["requests"]["storage"], "10Gi");
    assert!(claim["spec"].get("storageClassName").is_none());

    // PDB: one pod down at a time (RF 3), and a pod that is not ready may always go.
    let pdb = to_json(&d.pdb);
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(pdb["spec"]["unhealthyPodEvictionPolicy"], "AlwaysAllow");
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        sts["spec"]["selector"]["matchLabels"]
    );
}

#[test]
fn full_spec_renders_resources_security_placement_and_monitoring() {
    let c = cluster(full_spec());
    let d = resources::desired(&c, 5, 3);
    let yaml = &d.config_map.data.as_ref().unwrap()["server.yaml"];
    let config: Value = serde_yaml::from_str(yaml).unwrap();
    // Peers stay the three that formed the cluster even at five replicas.
    assert_eq!(config["cluster"]["peers"].as_array().unwrap().len(), 3);
    assert_eq!(config["database"]["vector_dimension"], 768);
    assert_eq!(config["database"]["shard_count"], 32);
    assert_eq!(config["index"]["hnsw_m"], 32);
    assert_eq!(config["index"]["hnsw_ef_construction"], 400);
    assert_eq!(config["index"]["hnsw_ef_search"], 256);
    assert_eq!(config["index"]["graph"], "grape");
    assert_eq!(config["cluster"]["heartbeat_interval_ms"], 200);
    assert_eq!(config["cluster"]["enable_tls"], true);
    assert_eq!(
        config["cluster"]["tls_config"]["ca_file"],
        "/etc/grape-vector-db/tls/ca.crt"
    );
    assert_eq!(config["security"]["enable_tls"], true);
    assert_eq!(config["security"]["enable_auth"], true);
    assert_eq!(
        config["security"]["api_keys_file"],
        "/etc/grape-vector-db/keys/api_keys.yaml"
    );
    assert_eq!(
        config["security"]["rbac_file"],
        "/etc/grape-vector-db/rbac/rbac.yaml"
    );

    let sts = to_json(&d.statefulset);
    assert_eq!(sts["spec"]["replicas"], 5);
    let pod = &sts["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["image"], "registry.example/grape:1.2.3");
    assert_eq!(container["imagePullPolicy"], "IfNotPresent");
    assert_eq!(container["resources"]["requests"]["memory"], "8Gi");
    assert_eq!(container["readinessProbe"]["httpGet"]["scheme"], "HTTPS");
    let mounts: Vec<&str> = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    assert!(mounts.contains(&"/etc/grape-vector-db/keys"));
    assert!(mounts.contains(&"/etc/grape-vector-db/rbac"));
    assert!(mounts.contains(&"/etc/grape-vector-db/tls"));
    let secrets: Vec<&str> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["secret"]["secretName"].as_str())
        .collect();
    assert_eq!(
        secrets,
        vec![
            "vectors-cluster-secret",
            "grape-keys",
            "grape-rbac",
            "grape-tls"
        ]
    );
    assert_eq!(pod["nodeSelector"]["disktype"], "ssd");
    assert_eq!(pod["tolerations"][0]["value"], "grape");
    // The given affinity and spread replace the defaults.
    assert!(pod["affinity"].get("podAntiAffinity").is_none());
    assert_eq!(pod["topologySpreadConstraints"][0]["topologyKey"], "rack");
    assert_eq!(
        pod["topologySpreadConstraints"].as_array().unwrap().len(),
        1
    );
    assert_eq!(pod["priorityClassName"], "grape-critical");
    assert_eq!(container_of(pod)["startupProbe"]["failureThreshold"], 1800);
    assert_eq!(
        pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
            [0]["matchExpressions"][0]["key"],
        "zone"
    );
    let claim = &sts["spec"]["volumeClaimTemplates"][0]["spec"];
    assert_eq!(claim["storageClassName"], "fast-ssd");
    assert_eq!(claim["resources"]["requests"]["storage"], "100Gi");

    let monitor = d.service_monitor.expect("ServiceMonitor asked for");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], "metrics");
    // The shipped alerting rules match job="grape-cluster".
    let rules = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/grape_rules.yml"),
    )
    .unwrap();
    assert!(rules.contains(r#"up{job="grape-cluster"}"#));
    assert_eq!(
        endpoint["relabelings"][0],
        json!({"action": "replace", "targetLabel": "job", "replacement": "grape-cluster"})
    );
    assert_eq!(monitor["metadata"]["ownerReferences"][0]["name"], "vectors");
}

#[test]
fn a_config_change_changes_the_pod_template_and_a_replica_change_does_not() {
    let c = cluster(json!({}));
    let base = resources::desired(&c, 3, 3);
    let scaled = resources::desired(&c, 5, 3);
    assert_eq!(
        base.statefulset.spec.template, scaled.statefulset.spec.template,
        "scaling must not restart pods"
    );
    let mut changed = c.clone();
    changed.spec.index.ef_search = 64;
    let updated = resources::desired(&changed, 3, 3);
    let hash = |d: &resources::Desired| {
        d.statefulset
            .spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()[TEMPLATE_HASH_ANNOTATION]
            .clone()
    };
    assert_ne!(
        hash(&base),
        hash(&updated),
        "a config change must roll the pods"
    );
}

#[test]
fn checked_in_crd_matches_the_types() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/grapecluster.yaml");
    let on_disk = std::fs::read_to_string(path).expect("crds/grapecluster.yaml");
    assert!(
        on_disk == grape_operator::crd::crd_yaml(),
        "crds/grapecluster.yaml is stale: run `cargo run -p grape-operator --bin crdgen -- --write`"
    );
    let crd: Value = serde_yaml::from_str(&on_disk).unwrap();
    assert_eq!(crd["spec"]["group"], "grape.io");
    assert_eq!(crd["spec"]["names"]["shortNames"], json!(["grape"]));
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, vec!["Replicas", "Ready", "Leader", "Phase", "Age"]);
    assert!(version["subresources"]["status"].is_object());
    assert_eq!(
        version["subresources"]["scale"]["specReplicasPath"],
        ".spec.replicas"
    );
    let text = on_disk.as_str();
    for rule in [
        "self.database.replicationFactor <= self.replicas",
        "vectorDimension is immutable",
        "shardCount is immutable",
    ] {
        assert!(text.contains(rule), "CRD lacks the rule {rule}");
    }
}

#[test]
fn the_disruption_budget_keeps_every_quorum() {
    let budget = |replicas: i32, rf: i32| {
        let c = cluster(json!({"replicas": replicas, "database": {"replicationFactor": rf}}));
        to_json(&resources::desired(&c, replicas, replicas).pdb)["spec"]["maxUnavailable"]
            .as_i64()
            .unwrap()
    };
    // A majority of RF voters must stay: RF 3 loses one, RF 5 two; RF 2 or 1 none (a
    // drain waits rather than take a shard's quorum or its only copy).
    assert_eq!(budget(3, 3), 1);
    assert_eq!(budget(9, 3), 1);
    assert_eq!(budget(5, 5), 2);
    assert_eq!(budget(7, 5), 2);
    assert_eq!(budget(4, 2), 0);
    assert_eq!(budget(3, 1), 0);
    // The meta group (every member) needs its majority too.
    assert_eq!(budget(2, 1), 0);
}

#[test]
fn preferred_anti_affinity_lets_a_small_cluster_share_hosts() {
    let c = cluster(json!({"podAntiAffinityType": "preferred"}));
    let sts = to_json(&resources::desired(&c, 3, 3).statefulset);
    let anti = &sts["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"];
    assert!(
        anti.get("requiredDuringSchedulingIgnoredDuringExecution")
            .is_none()
    );
    assert_eq!(
        anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]["topologyKey"],
        "kubernetes.io/hostname"
    );
}

#[test]
fn an_existing_statefulset_keeps_its_claim_templates_and_quantities_parse() {
    let old = resources::desired(&cluster(json!({"storage": {"size": "10Gi"}})), 3, 3);
    let mut new = resources::desired(&cluster(json!({"storage": {"size": "50Gi"}})), 3, 3);
    resources::keep_claim_templates(&mut new.statefulset, &old.statefulset);
    let claim = &to_json(&new.statefulset)["spec"]["volumeClaimTemplates"][0];
    assert_eq!(claim["spec"]["resources"]["requests"]["storage"], "10Gi");
    assert_eq!(
        resources::claim(
            &Names {
                cluster: "vectors".into(),
                namespace: "n".into()
            },
            2
        ),
        "data-vectors-2"
    );

    assert_eq!(resources::quantity_bytes("10Gi"), Some(10 << 30));
    assert_eq!(resources::quantity_bytes("1.5Ti"), Some(3 << 39));
    assert_eq!(resources::quantity_bytes("500M"), Some(500_000_000));
    assert_eq!(resources::quantity_bytes("1073741824"), Some(1 << 30));
    assert_eq!(resources::quantity_bytes(" 2k "), Some(2000));
    assert_eq!(resources::quantity_bytes("1e3"), Some(1000));
    assert_eq!(resources::quantity_bytes("2E10"), Some(20_000_000_000));
    assert_eq!(
        resources::quantity_bytes("1E"),
        Some(1_000_000_000_000_000_000)
    );
    for bad in [
        "", "Gi", "10GB", "ten", "1.2.3Gi", "-1Gi", "100m", "10K", "1e-3", "1e99",
    ] {
        assert_eq!(resources::quantity_bytes(bad), None, "{bad}");
    }
}

#[test]
fn generated_keys_are_a_valid_key_file_and_auth_is_off_only_when_asked() {
    let c = cluster(json!({}));
    let secret = to_json(&resources::generated_api_keys(
        &c,
        "a".repeat(64).as_str(),
        "o".repeat(64).as_str(),
    ));
    assert_eq!(secret["metadata"]["name"], "vectors-api-keys");
    assert_eq!(
        secret["metadata"]["ownerReferences"][0]["kind"],
        "GrapeCluster"
    );
    let data = &secret["stringData"];
    assert_eq!(data["admin-key"], "a".repeat(64));
    assert_eq!(data["operator-key"], "o".repeat(64));
    // The file the nodes read: the seed guide's format, both keys with the admin role.
    let file: Value = serde_yaml::from_str(data["api_keys.yaml"].as_str().unwrap()).unwrap();
    let keys = file["api_keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0]["key"], "a".repeat(64));
    assert_eq!(keys[1]["key"], "o".repeat(64));
    for key in keys {
        assert_eq!(key["permissions"], json!(["admin"]));
    }

    // Explicitly insecure: no keys, authentication off.
    let open = cluster(json!({"security": {"allowUnauthenticated": true}}));
    let d = resources::desired(&open, 3, 3);
    let config: Value =
        serde_yaml::from_str(&d.config_map.data.as_ref().unwrap()["server.yaml"]).unwrap();
    assert_eq!(config["security"]["enable_auth"], false);
    assert!(config["security"].get("api_keys_file").is_none());
    let volumes = to_json(&d.statefulset)["spec"]["template"]["spec"]["volumes"].clone();
    assert!(!volumes.to_string().contains("api-keys"), "{volumes}");
}

#[test]
fn old_configurations_go_once_no_pod_mounts_them() {
    let names = Names {
        cluster: "vectors".into(),
        namespace: "n".into(),
    };
    let existing: Vec<String> = [
        "vectors-config",            // an earlier version's unhashed one
        "vectors-config-0123456789", // the current one
        "vectors-config-abcdefabcd", // the previous one, a pod still runs it
        "vectors-config-fedcba9876", // older, unused
        "vectors-config-extra",      // someone else's
        "vectors-configuration",
        "other-config-0123456789",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let in_use = std::collections::BTreeSet::from(["vectors-config-abcdefabcd".to_string()]);
    assert_eq!(
        resources::stale_config_maps(&names, "vectors-config-0123456789", &existing, &in_use),
        vec!["vectors-config", "vectors-config-fedcba9876"]
    );
}

#[test]
fn certificates_none_turns_tls_off_loudly_and_an_own_secret_wins_over_issued_ones() {
    let names = |c: &GrapeCluster| Names::of(c);
    // `none`: plain HTTP everywhere, no certificate volume.
    let plain = cluster(json!({"security": {"certificates": "none"}}));
    assert_eq!(resources::tls_secret(&plain.spec, &names(&plain)), None);
    let d = resources::desired(&plain, 3, 3);
    let yaml = d.config_map.data.as_ref().unwrap()["server.yaml"].clone();
    let config: Value = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(config["security"]["enable_tls"], false);
    assert_eq!(config["cluster"].get("enable_tls"), None);
    let pod = to_json(&d.statefulset)["spec"]["template"]["spec"].clone();
    assert_eq!(
        container_of(&pod)["readinessProbe"]["httpGet"]["scheme"],
        "HTTP"
    );
    assert!(
        !pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "tls"),
        "{pod}"
    );
    // The default and cert-manager read `<cluster>-tls`; an own Secret is used as given.
    let issued = cluster(json!({}));
    assert_eq!(
        resources::tls_secret(&issued.spec, &names(&issued)).as_deref(),
        Some("vectors-tls")
    );
    let by_cert_manager = cluster(
        json!({"security": {"certificates": "cert-manager", "certManagerIssuer": {"name": "ca"}}}),
    );
    assert_eq!(
        resources::tls_secret(&by_cert_manager.spec, &names(&by_cert_manager)).as_deref(),
        Some("vectors-tls")
    );
    let own = cluster(full_spec());
    assert_eq!(
        resources::tls_secret(&own.spec, &names(&own)).as_deref(),
        Some("grape-tls")
    );
}

#[test]
fn a_cluster_created_before_tls_was_the_default_keeps_plain_http_until_told() {
    let names = |c: &GrapeCluster| Names::of(c);
    let tls_of = |c: &GrapeCluster| resources::tls_secret(&c.spec, &names(c));
    // What an earlier operator ran: no certificate mounted.
    let old = cluster(json!({"security": {"certificates": "none"}}));
    let old_statefulset = resources::desired(&old, 3, 3).statefulset;
    let unset = cluster(json!({}));
    // New (no StatefulSet yet): TLS.
    assert_eq!(
        tls_of(&resources::with_transport_kept(&unset, None, &[])).as_deref(),
        Some("vectors-tls")
    );
    // Existing and plain: kept plain (rolling it onto TLS would split the cluster).
    let kept = resources::with_transport_kept(&unset, Some(&old_statefulset), &[]);
    assert_eq!(tls_of(&kept), None);
    assert_eq!(kept.spec.security.certificates.as_deref(), Some("none"));
    // Existing with TLS: unchanged.
    let tls_statefulset = resources::desired(&unset, 3, 3).statefulset;
    assert_eq!(
        tls_of(&resources::with_transport_kept(
            &unset,
            Some(&tls_statefulset),
            &[]
        ))
        .as_deref(),
        Some("vectors-tls")
    );
    // The StatefulSet deleted with --cascade=orphan, its plain pods still running: kept.
    let orphan = k8s_openapi::api::core::v1::Pod {
        spec: old_statefulset.spec.template.spec.clone(),
        ..Default::default()
    };
    assert_eq!(
        tls_of(&resources::with_transport_kept(&unset, None, &[orphan])),
        None
    );
    // Told explicitly: as told.
    let told = cluster(json!({"security": {"certificates": "operator"}}));
    assert_eq!(
        tls_of(&resources::with_transport_kept(
            &told,
            Some(&old_statefulset),
            &[]
        ))
        .as_deref(),
        Some("vectors-tls")
    );
}

#[test]
fn backup_credentials_and_a_backup_volume_are_mounted_only_when_asked_for() {
    // Without them nothing changes: no `backup` key, so an operator upgrade restarts no pod.
    let plain = resources::desired(&cluster(json!({})), 3, 3);
    let config: Value =
        serde_yaml::from_str(&plain.config_map.data.as_ref().unwrap()["server.yaml"]).unwrap();
    assert!(config.get("backup").is_none(), "{config}");
    let pod = to_json(&plain.statefulset.spec.template.spec);
    let volumes = pod["volumes"].as_array().unwrap();
    assert!(
        volumes
            .iter()
            .all(|v| v["name"] != "backup-credentials" && v["name"] != "backups")
    );

    let with = resources::desired(
        &cluster(
            json!({"backup": {"credentialsSecret": "s3-keys", "volumeClaimName": "shared-backups"}}),
        ),
        3,
        3,
    );
    let config: Value =
        serde_yaml::from_str(&with.config_map.data.as_ref().unwrap()["server.yaml"]).unwrap();
    let file = config["backup"]["credentials_file"].as_str().unwrap();
    let pod = to_json(&with.statefulset.spec.template.spec);
    let volumes = pod["volumes"].as_array().unwrap();
    let secret = volumes
        .iter()
        .find(|v| v["name"] == "backup-credentials")
        .unwrap();
    assert_eq!(secret["secret"]["secretName"], "s3-keys");
    let claim = volumes.iter().find(|v| v["name"] == "backups").unwrap();
    assert_eq!(
        claim["persistentVolumeClaim"]["claimName"],
        "shared-backups"
    );
    let mounts = container_of(&pod)["volumeMounts"].as_array().unwrap();
    let credentials = mounts
        .iter()
        .find(|m| m["name"] == "backup-credentials")
        .unwrap();
    // The node reads the mounted Secret as a directory of one file per key.
    assert_eq!(credentials["mountPath"], file);
    assert_eq!(credentials["readOnly"], true);
    let backups = mounts.iter().find(|m| m["name"] == "backups").unwrap();
    assert_eq!(backups["mountPath"], "/backups");
    // A change of either rolls the pods (they read them at start).
    assert_ne!(
        resources::pod_template_hash(&plain.statefulset.spec.template),
        resources::pod_template_hash(&with.statefulset.spec.template)
    );
}
