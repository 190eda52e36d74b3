//! Collections: looked up in this node's copy of the meta state, created and dropped through
//! the meta group.

use super::{LEADER_WAIT, meta_command};
use crate::cluster::node::Node;
use crate::cluster::raft::meta_commands::{MetaCommand, MetaResponse};
use crate::collection::{Collection, DEFAULT_COLLECTION, validate_collection_config};
use crate::error::{Error, ErrorCode, Result};
use grape_client::{CollectionConfig, CollectionInfo};
use std::time::{Duration, Instant};

/// A collection, or 404.
///
/// Until the node has been ready once, its catalogue may still be catching up: a missing
/// collection is then `503 not_ready` (retry), never a 404 for one that is about to appear.
pub fn collection(node: &Node, name: &str) -> Result<Collection> {
    if let Some(collection) = node.meta_read().collections.get(name) {
        return Ok(collection.clone());
    }
    if !node.has_been_ready() && !node.is_ready() {
        return Err(Error::unavailable(
            ErrorCode::NotReady,
            format!("this node is starting and cannot tell yet whether collection '{name}' exists"),
        ));
    }
    Err(not_found(name))
}

fn not_found(name: &str) -> Error {
    Error::not_found(
        ErrorCode::CollectionNotFound,
        format!("collection '{name}' does not exist"),
    )
}

/// Every collection, by name.
pub fn collections(node: &Node) -> Vec<Collection> {
    node.meta_read().collections.values().cloned().collect()
}

/// A collection's public description, with the documents this node holds of it.
pub fn info(node: &Node, collection: &Collection) -> CollectionInfo {
    let documents = node
        .replicas()
        .all()
        .iter()
        .filter(|g| g.collection.uid == collection.uid)
        .map(|g| g.shard.len() as u64)
        .sum();
    CollectionInfo {
        config: collection.config.clone(),
        documents,
    }
}

/// Creates a collection; 409 if the name is taken. Returns once every shard group has formed.
pub async fn create(node: &Node, config: CollectionConfig) -> Result<CollectionInfo> {
    validate_collection_config(&config)?;
    let name = config.name.clone();
    let collection = match meta_command(
        node,
        MetaCommand::CreateCollection {
            config,
            // One id for every attempt: a retry after a lost answer gets the first one.
            request: Some(rand::random()),
        },
    )
    .await?
    {
        MetaResponse::Created { collection } => collection,
        MetaResponse::AlreadyExists => {
            return Err(Error::conflict(
                ErrorCode::CollectionExists,
                format!("collection '{name}' already exists"),
            ));
        }
        MetaResponse::Invalid { message } => {
            return Err(Error::invalid(ErrorCode::InvalidCollection, message));
        }
        other => return Err(Error::Internal(format!("create answered {other:?}"))),
    };
    wait_formed(node, &collection).await?;
    Ok(info(node, &collection))
}

/// Waits until every shard group of a collection has formed.
async fn wait_formed(node: &Node, collection: &Collection) -> Result<()> {
    let deadline = Instant::now() + LEADER_WAIT;
    loop {
        let formed = {
            let state = node.meta_read();
            collection.shard_ids().all(|s| {
                state
                    .groups
                    .get(&collection.group(s))
                    .is_some_and(|g| g.initialized)
            })
        };
        if formed {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::unavailable(
                ErrorCode::NoLeader,
                format!("the shards of '{}' did not form in time", collection.name()),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Drops a collection and its documents everywhere. The `default` collection stays.
pub async fn drop(node: &Node, name: &str) -> Result<()> {
    if name == DEFAULT_COLLECTION {
        return Err(Error::conflict(
            ErrorCode::DefaultCollection,
            "the default collection is defined by the node configuration and cannot be dropped",
        ));
    }
    collection(node, name)?;
    let command = MetaCommand::DropCollection {
        name: name.to_string(),
        request: Some(rand::random()),
    };
    match meta_command(node, command).await? {
        MetaResponse::NotFound => Err(not_found(name)),
        _ => Ok(()),
    }
}
