//! Document writes and reads: validated here, split by shard, and routed to each shard's
//! leader (writes, `strong` reads) or nearest replica (`eventual` reads).

use super::catalog::collection;
use super::{Target, blocking, local_read, low_holders, propose, route};
use crate::cluster::node::Node;
use crate::cluster::raft::rpc::{GetRpc, ListRpc};
use crate::cluster::raft::types::{Request, Response};
use crate::collection::{Cursor, validate_document};
use crate::error::{Error, ErrorCode, Result};
use crate::shard::{ShardCommand, ShardResponse};
use futures::future::join_all;
use grape_client::{Consistency, Document, DocumentInput};
use std::collections::BTreeMap;

/// Validates every document, then writes them, split by shard and committed in parallel, and
/// returns their ids in input order. Nothing is written if any is invalid. `admit` runs once
/// the request is known to be valid, before anything is written (the caller's quota).
pub async fn upsert(
    node: &Node,
    name: &str,
    inputs: Vec<DocumentInput>,
    batch: bool,
    admit: impl FnOnce() -> Result<()>,
) -> Result<Vec<String>> {
    let collection = collection(node, name)?;
    if batch {
        if inputs.is_empty() {
            return Err(Error::invalid(
                ErrorCode::EmptyBatch,
                "documents must not be empty",
            ));
        }
        let max = node.config().performance.max_batch_size;
        if inputs.len() > max {
            return Err(Error::invalid(
                ErrorCode::BatchTooLarge,
                format!(
                    "batch has {} documents; at most {max} are allowed (performance.max_batch_size)",
                    inputs.len()
                ),
            ));
        }
    }
    let documents = inputs
        .into_iter()
        .enumerate()
        .map(|(i, input)| validate_document(&collection.config, input, batch.then_some(i)))
        .collect::<Result<Vec<_>>>()?;
    let max_documents = node.config().database.max_documents;
    let held = node.replicas().document_count();
    if held + documents.len() as u64 > max_documents {
        let new = documents
            .iter()
            .filter(|d| {
                node.replicas()
                    .get(&collection.group(collection.shard_for(&d.id)))
                    .is_none_or(|g| !g.shard.contains(&d.id))
            })
            .count() as u64;
        if new > 0 && held + new > max_documents {
            return Err(Error::conflict(
                ErrorCode::CapacityExceeded,
                format!(
                    "this node holds its maximum of {max_documents} documents (database.max_documents)"
                ),
            ));
        }
    }
    let ids: Vec<String> = documents.iter().map(|d| d.id.clone()).collect();
    let mut by_shard: BTreeMap<u32, Vec<_>> = BTreeMap::new();
    for document in documents {
        by_shard
            .entry(collection.shard_for(&document.id))
            .or_default()
            .push(document);
    }
    // A batch refused for want of disk is refused whole, before any shard is written (each
    // shard's leader checks again when it proposes).
    for shard in by_shard.keys() {
        low_holders(node, &collection.group(*shard))?;
    }
    admit()?;
    let writes = by_shard.into_iter().map(|(shard, documents)| {
        let group = collection.group(shard);
        async move {
            propose(
                node,
                &group,
                Request::Shard(ShardCommand::upsert(documents)),
            )
            .await
        }
    });
    for result in join_all(writes).await {
        if let Response::Shard(ShardResponse::Rejected { code, message }) = result? {
            // The shard's own check refused what the API's let through (another version's
            // rules): the same answer a client would have had before the write.
            return Err(Error::invalid(code, message));
        }
    }
    Ok(ids)
}

/// Deletes a document; false if it did not exist. `admit` runs once the request is known to
/// be valid, before the delete is proposed.
pub async fn delete(
    node: &Node,
    name: &str,
    id: &str,
    admit: impl FnOnce() -> Result<()>,
) -> Result<bool> {
    let collection = collection(node, name)?;
    admit()?;
    let group = collection.group(collection.shard_for(id));
    // One id for every attempt: a retry after a lost answer is answered, not applied again.
    let command = ShardCommand::delete(vec![id.to_string()]);
    match propose(node, &group, Request::Shard(command)).await? {
        Response::Shard(ShardResponse::Deleted { existed }) => {
            Ok(existed.first().copied().unwrap_or(false))
        }
        other => Err(Error::Internal(format!("delete answered {other:?}"))),
    }
}

/// A document by id, or 404.
pub async fn get(node: &Node, name: &str, id: &str, consistency: Consistency) -> Result<Document> {
    let collection = collection(node, name)?;
    let rpc = GetRpc {
        group: collection.group(collection.shard_for(id)),
        id: id.to_string(),
        strong: consistency == Consistency::Strong,
    };
    let target = if rpc.strong {
        Target::StrongRead
    } else {
        Target::AnyReplica
    };
    let found = route(
        node,
        &rpc.group,
        target,
        || get_here(node, &rpc),
        |peer, timeout| {
            let rpc = &rpc;
            async move {
                node.peers()
                    .call(&peer, rpc, timeout)
                    .await
                    .map_err(Error::from)
            }
        },
    )
    .await?;
    found.ok_or_else(|| {
        Error::not_found(
            ErrorCode::DocumentNotFound,
            format!("document '{id}' does not exist"),
        )
    })
}

/// Reads a document from this node's replica (our own read, or a peer's).
pub async fn get_here(node: &Node, rpc: &GetRpc) -> Result<Option<Document>> {
    let local = local_read(node, &rpc.group, rpc.strong).await?;
    let id = rpc.id.clone();
    blocking(move || local.shard.get(&id)).await
}

/// One page of a collection's documents, in (shard, id) order.
pub async fn list(
    node: &Node,
    name: &str,
    cursor: Option<Cursor>,
    limit: usize,
) -> Result<(Vec<Document>, Option<Cursor>)> {
    let collection = collection(node, name)?;
    let mut found: Vec<Document> = Vec::new();
    let (first, mut after) = match cursor {
        Some(c) => (c.shard, Some(c.after)),
        None => (0, None),
    };
    for shard in collection.shard_ids().skip(first as usize) {
        let rpc = ListRpc {
            group: collection.group(shard),
            after: after.take(),
            limit: limit - found.len(),
        };
        let page = route(
            node,
            &rpc.group,
            Target::AnyReplica,
            || list_here(node, &rpc),
            |peer, timeout| {
                let rpc = &rpc;
                async move {
                    node.peers()
                        .call(&peer, rpc, timeout)
                        .await
                        .map_err(Error::from)
                }
            },
        )
        .await?;
        found.extend(page);
        if found.len() == limit {
            let last = found.last().map(|d| d.id.clone()).unwrap_or_default();
            return Ok((found, Some(Cursor { shard, after: last })));
        }
    }
    Ok((found, None))
}

/// Lists documents of this node's replica (our own read, or a peer's).
pub async fn list_here(node: &Node, rpc: &ListRpc) -> Result<Vec<Document>> {
    let local = local_read(node, &rpc.group, false).await?;
    let (after, limit) = (rpc.after.clone(), rpc.limit);
    blocking(move || local.shard.list(after.as_deref(), limit)).await
}
