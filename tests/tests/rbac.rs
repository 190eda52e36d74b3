//! The guide's RBAC against real nodes: roles and users from its `rbac` block (in the node's
//! configuration file, or in `security.rbac_file`), users logging in with HTTP Basic and
//! bcrypt hashes made by `grape hash-password`, API keys naming custom roles, wrong and
//! malformed credentials, per-user lock-out, and users removed without a restart.

use grape_e2e::actions::{
    Action, Action::*, READER, SEARCHER, WRITER, Who, perform, wrong_answers,
};
use grape_e2e::{GrapeNode, NodeOptions, hash_password, temp_file};
use std::time::{Duration, Instant};

/// The guide's block, verbatim but for real hashes in place of `$2b$12$...`.
fn guide_rbac(admin: &str, api_service: &str, readonly_app: &str) -> String {
    format!(
        r#"# RBAC configuration
rbac:
  roles:
    - name: "admin"
      permissions:
        - "cluster:*"
        - "data:*"
        - "metrics:read"
        
    - name: "writer"
      permissions:
        - "data:write"
        - "data:read"
        - "search:execute"
        
    - name: "reader"
      permissions:
        - "data:read"
        - "search:execute"
        
    - name: "searcher"
      permissions:
        - "search:execute"

  users:
    - username: "admin"
      password_hash: "{admin}"
      roles: ["admin"]
      
    - username: "api_service"
      password_hash: "{api_service}"
      roles: ["writer"]
      
    - username: "readonly_app"
      password_hash: "{readonly_app}"
      roles: ["reader"]
"#
    )
}

/// What each of the guide's roles may do, as the guide defines them (its admin has no
/// `search:execute`).
fn allowed(role: &str) -> &'static [Action] {
    match role {
        "admin" => &[
            Upsert,
            Batch,
            Get,
            List,
            Delete,
            ListCollections,
            CreateCollection,
            DropCollection,
            AdminStats,
            AdminShards,
            Checksum,
            ClusterStatus,
            Rebalance,
            Metrics,
        ],
        "writer" => WRITER,
        "reader" => READER,
        "searcher" => SEARCHER,
        "ingest" => &[Upsert, Batch, Delete],
        other => panic!("no such role {other}"),
    }
}

/// Runs every action as `who` and lists the answers that differ from what `role` allows
/// (2xx when allowed, 403 when not).
async fn check_role(node: &GrapeNode, who: Who<'_>, role: &str) -> Vec<String> {
    wrong_answers(node, who, allowed(role), role).await
}

/// Writes the document `seed`, which the read actions read, as `who`; answers the status.
async fn write_seed(node: &GrapeNode, who: Who<'_>) -> u16 {
    let mut request = node
        .client()
        .request(reqwest::Method::POST, "/api/v1/documents")
        .json(&serde_json::json!({"id": "seed", "vector": [1, 0]}));
    match who {
        Who::User(user, password) => request = request.basic_auth(user, Some(password)),
        Who::Key(key) => request = request.header("x-api-key", key),
        Who::Nobody => {}
    }
    request.send().await.unwrap().status().as_u16()
}

/// A node with authentication on and these extra options.
async fn start(options: NodeOptions) -> GrapeNode {
    GrapeNode::start(
        options
            .setting("SECURITY__ENABLE_AUTH", "true")
            .setting("SECURITY__FAILED_AUTH_PER_MINUTE", "0"),
    )
    .await
}

#[tokio::test]
async fn the_guides_block_verbatim_starts_a_node_whose_users_may_do_exactly_what_their_roles_allow()
{
    // Real hashes at the guide's cost, 12, made the way a user would.
    let config = guide_rbac(
        &hash_password("admin-secret", 12),
        &hash_password("service-secret", 12),
        &hash_password("readonly-secret", 12),
    );
    let (dir, config_path) = temp_file("config.yaml", &config);
    // API keys naming the guide's roles, in their own file beside it.
    let keys = dir.path().join("keys.yaml");
    std::fs::write(
        &keys,
        "api_keys:\n  - {key: \"sk-reader-0001\", name: reader, permissions: [\"reader\"]}\n  - {key: \"sk-search-0001\", name: finder, permissions: [\"searcher\"]}\n",
    )
    .unwrap();
    let node = start(
        NodeOptions::dimension(2)
            .arg("--config")
            .arg(config_path.to_string_lossy().into_owned())
            .arg("--api-keys-file")
            .arg(keys.to_string_lossy().into_owned()),
    )
    .await;
    assert_eq!(
        write_seed(&node, Who::User("api_service", "service-secret")).await,
        201
    );
    let mut wrong = Vec::new();
    for (user, password, role) in [
        ("admin", "admin-secret", "admin"),
        ("api_service", "service-secret", "writer"),
        ("readonly_app", "readonly-secret", "reader"),
    ] {
        wrong.extend(check_role(&node, Who::User(user, password), role).await);
    }
    wrong.extend(check_role(&node, Who::Key("sk-reader-0001"), "reader").await);
    wrong.extend(check_role(&node, Who::Key("sk-search-0001"), "searcher").await);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // Another user's password, a wrong one, an unknown user: 401, and an invitation to Basic.
    for (user, password) in [
        ("admin", "service-secret"),
        ("readonly_app", "readonly-secret "),
        ("root", "admin-secret"),
    ] {
        let response = node
            .client()
            .request(reqwest::Method::GET, "/api/v1/collections")
            .basic_auth(user, Some(password))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{user}:{password}");
        assert_eq!(
            response.headers()["www-authenticate"],
            "Basic realm=\"grape\", charset=\"UTF-8\""
        );
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(
            body["error"]["message"], "unknown user or wrong password",
            "the same answer for an unknown user and a wrong password"
        );
    }
    // The hashes never show in the printed configuration.
    let printed = std::process::Command::new(grape_e2e::grape_binary())
        .args(["--config", &config_path.to_string_lossy(), "--print-config"])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&printed.stdout);
    assert!(
        printed.contains("rbac_file") && !printed.contains("$2b$"),
        "{printed}"
    );
}

#[tokio::test]
async fn a_custom_role_works_as_defined_for_users_and_keys() {
    let rbac = format!(
        r#"rbac:
  roles:
    - {{name: ingest, permissions: ["data:write"]}}
    - {{name: reader, permissions: ["data:read", "search:execute"]}}
  users:
    - {{username: loader, password_hash: "{}", roles: [ingest]}}
"#,
        hash_password("loader-secret", 4)
    );
    let (dir, rbac_file) = temp_file("rbac.yaml", &rbac);
    let keys = dir.path().join("keys.yaml");
    std::fs::write(
        &keys,
        "api_keys:\n  - {key: \"sk-ingest-0001\", name: pipeline, permissions: [\"ingest\"]}\n  - {key: \"sk-reader-0001\", name: reader, permissions: [\"reader\"]}\n",
    )
    .unwrap();
    let node = start(
        NodeOptions::dimension(2)
            .setting("SECURITY__RBAC_FILE", &rbac_file.to_string_lossy())
            .arg("--api-keys-file")
            .arg(keys.to_string_lossy().into_owned()),
    )
    .await;
    // A document for the reads to find, written as the loader.
    assert_eq!(
        write_seed(&node, Who::User("loader", "loader-secret")).await,
        201
    );
    let mut wrong = check_role(&node, Who::User("loader", "loader-secret"), "ingest").await;
    wrong.extend(check_role(&node, Who::Key("sk-ingest-0001"), "ingest").await);
    wrong.extend(check_role(&node, Who::Key("sk-reader-0001"), "reader").await);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test]
async fn unknown_roles_and_permissions_refuse_start_up_naming_the_entry() {
    let hash = hash_password("pw", 4);
    for (rbac, names) in [
        (
            format!(
                "rbac:\n  users:\n    - {{username: ann, password_hash: \"{hash}\", roles: [superuser]}}\n"
            ),
            "rbac.users[0].roles[0]",
        ),
        (
            "rbac:\n  roles:\n    - {name: ops, permissions: [\"cluster:*\", \"backups:write\"]}\n"
                .to_string(),
            "rbac.roles[0].permissions[1]",
        ),
        (
            "rbac:\n  users:\n    - {username: ann, password_hash: \"$2b$12$...\", roles: [reader]}\n"
                .to_string(),
            "rbac.users[0].password_hash",
        ),
        (
            format!(
                "rbac:\n  users:\n    - {{username: ann, password_hash: \"{}\", roles: [reader]}}\n",
                hash.replacen("$04$", "$15$", 1)
            ),
            "cost 15",
        ),
    ] {
        let (dir, config) = temp_file("config.yaml", &rbac);
        let data = dir.path().join("data");
        let options = NodeOptions::dimension(2)
            .setting("SECURITY__ENABLE_AUTH", "true")
            .arg("--config")
            .arg(config.to_string_lossy().into_owned())
            .arg("--data-dir")
            .arg(data.to_string_lossy().into_owned())
            .arg("--listen-address")
            .arg("127.0.0.1:0")
            .arg("--raft-address")
            .arg("127.0.0.1:0")
            .arg("--metrics-port")
            .arg("0");
        let (code, output) = GrapeNode::run_to_exit(&options, &[]);
        assert_ne!(code, 0, "{output}");
        assert!(output.contains(names), "{names}: {output}");
        assert!(!data.exists(), "refused before the data directory was made");
    }
}

#[tokio::test]
async fn a_user_guessed_at_is_locked_out_but_its_recent_logins_still_work() {
    let rbac = format!(
        "rbac:\n  users:\n    - {{username: ann, password_hash: \"{}\", roles: [reader]}}\n    - {{username: bob, password_hash: \"{}\", roles: [reader]}}\n",
        hash_password("ann-secret", 4),
        hash_password("bob-secret", 4)
    );
    let (_dir, rbac_file) = temp_file("rbac.yaml", &rbac);
    let node = start(
        NodeOptions::dimension(2)
            .setting("SECURITY__RBAC_FILE", &rbac_file.to_string_lossy())
            .setting("SECURITY__FAILED_LOGINS_PER_USER_PER_MINUTE", "3"),
    )
    .await;
    assert_eq!(
        perform(&node, Who::User("ann", "ann-secret"), List, "a").await,
        200
    );
    for guess in ["guess-1", "guess-2", "guess-3"] {
        assert_eq!(
            perform(&node, Who::User("ann", guess), List, "a").await,
            401
        );
    }
    let response = node
        .client()
        .request(reqwest::Method::GET, "/api/v1/documents")
        .basic_auth("ann", Some("guess-4"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let retry = grape_e2e::retry_after_secs(&response);
    assert!((1..=60).contains(&retry), "{retry}");
    // Credentials verified a moment ago still work; another user is not affected.
    assert_eq!(
        perform(&node, Who::User("ann", "ann-secret"), List, "a").await,
        200
    );
    assert_eq!(
        perform(&node, Who::User("bob", "bob-secret"), List, "b").await,
        200
    );
}

#[tokio::test]
async fn a_user_removed_from_the_file_is_locked_out_without_a_restart() {
    let user = |name: &str, password: &str| {
        format!(
            "    - {{username: {name}, password_hash: \"{}\", roles: [writer]}}\n",
            hash_password(password, 4)
        )
    };
    let ann = user("ann", "ann-secret");
    let bob = user("bob", "bob-secret");
    let (dir, rbac_file) = temp_file("rbac.yaml", &format!("rbac:\n  users:\n{ann}{bob}"));
    let node = start(
        NodeOptions::dimension(2).setting("SECURITY__RBAC_FILE", &rbac_file.to_string_lossy()),
    )
    .await;
    let ann_lists = || perform(&node, Who::User("ann", "ann-secret"), List, "a");
    assert_eq!(ann_lists().await, 200);
    // A new file moved into place without ann: she is out at the next reload, although her
    // credentials were verified a moment ago.
    let staging = dir.path().join("next.yaml");
    std::fs::write(&staging, format!("rbac:\n  users:\n{bob}")).unwrap();
    std::fs::rename(&staging, &rbac_file).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while ann_lists().await != 401 {
        assert!(
            Instant::now() < deadline,
            "the file change did not take effect"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        perform(&node, Who::User("bob", "bob-secret"), List, "b").await,
        200
    );
}

#[tokio::test]
async fn sighup_reloads_users_at_once_when_the_files_are_not_polled() {
    let ann = format!(
        "    - {{username: ann, password_hash: \"{}\", roles: [reader]}}\n",
        hash_password("ann-secret", 4)
    );
    let (_dir, rbac_file) = temp_file("rbac.yaml", &format!("rbac:\n  users:\n{ann}"));
    let node = start(
        NodeOptions::dimension(2)
            .setting("SECURITY__RBAC_FILE", &rbac_file.to_string_lossy())
            .setting("SECURITY__RELOAD_INTERVAL_SECS", "0"),
    )
    .await;
    let ann_lists = || perform(&node, Who::User("ann", "ann-secret"), List, "a");
    assert_eq!(ann_lists().await, 200);
    // Without polling, a changed file changes nothing until SIGHUP.
    std::fs::write(&rbac_file, "rbac:\n  users: []\n").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(ann_lists().await, 200, "reloaded without SIGHUP");
    node.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while ann_lists().await != 401 {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(node.log_text().contains("reloaded (SIGHUP)"));
}
