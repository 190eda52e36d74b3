//! Search: one replica per shard (the shards held here together, the others on peers),
//! results merged into the best `top_k`, within `performance.query_timeout_ms`.

use super::catalog::collection;
use super::{Target, blocking, local_read, route};
use crate::cluster::node::Node;
use crate::cluster::raft::rpc::{RemoteHit, SearchRpc};
use crate::cluster::replicas::LocalGroup;
use crate::collection::{Collection, PreparedSearch, merge_hits, search_shard, to_search_hit};
use crate::error::{Error, ErrorCode, Result};
use crate::shard::filter::FilterLimits;
use futures::future::{BoxFuture, join_all};
use grape_client::{Consistency, SearchHit, SearchRequest};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Breadth times shards, weighted by [`GraphEngine::search_cost_per_ef`], up to which a
/// search runs on the request's own thread (about a tenth of a millisecond of graph work on
/// one core).
///
/// [`GraphEngine::search_cost_per_ef`]: crate::index::GraphEngine::search_cost_per_ef
const INLINE_SEARCH_WORK: usize = 256;

/// Searches a collection: one replica per shard, results merged, within
/// `performance.query_timeout_ms`. `admit` runs once the request is known to be valid (the
/// caller's quota).
pub async fn search(
    node: &Node,
    name: &str,
    request: &SearchRequest,
    admit: impl FnOnce() -> Result<()>,
) -> Result<Vec<SearchHit>> {
    let collection = collection(node, name)?;
    // Validate here first: bad input is a 400 before any fan-out.
    collection.prepare_search(request, filter_limits(node), None)?;
    admit()?;
    let timeout = Duration::from_millis(node.config().performance.query_timeout_ms);
    match tokio::time::timeout(timeout, fan_out(node, &collection, request)).await {
        Ok(result) => result,
        Err(_) => Err(Error::unavailable(
            ErrorCode::QueryTimeout,
            format!(
                "the search took longer than {} ms (performance.query_timeout_ms)",
                timeout.as_millis()
            ),
        )),
    }
}

async fn fan_out(
    node: &Node,
    collection: &Collection,
    request: &SearchRequest,
) -> Result<Vec<SearchHit>> {
    let strong = request.consistency == Some(Consistency::Strong);
    let rpc = |shards: Vec<u32>| SearchRpc {
        collection: collection.clone(),
        shards,
        request: request.clone(),
        strong,
    };
    // Shards with a local replica are searched together in one blocking task.
    let (local, remote): (Vec<u32>, Vec<u32>) = collection.shard_ids().partition(|s| {
        !strong
            && node
                .replicas()
                .get(&collection.group(*s))
                .is_some_and(|local| local.shard.failure().is_none())
    });
    let mut searches: Vec<BoxFuture<'_, Result<Vec<RemoteHit>>>> = Vec::new();
    if !local.is_empty() {
        let rpc = rpc(local);
        searches.push(Box::pin(async move { search_here(node, rpc).await }));
    }
    for shard in remote {
        let group = collection.group(shard);
        let rpc = &rpc;
        searches.push(Box::pin(async move {
            let target = if strong {
                Target::StrongRead
            } else {
                Target::AnyReplica
            };
            route(
                node,
                &group,
                target,
                || search_here(node, rpc(vec![shard])),
                |peer, timeout| async move {
                    node.peers()
                        .call(&peer, &rpc(vec![shard]), timeout)
                        .await
                        .map_err(Error::from)
                },
            )
            .await
        }));
    }
    let mut hits = Vec::new();
    for result in join_all(searches).await {
        hits.extend(result?);
    }
    let mut vectors: HashMap<String, Vec<f32>> = HashMap::new();
    let shard_hits = hits
        .into_iter()
        .map(|h| {
            if let Some(v) = h.vector {
                vectors.insert(h.hit.id.to_string(), v);
            }
            h.hit
        })
        .collect();
    Ok(merge_hits(shard_hits, request.top_k)
        .into_iter()
        .map(|hit| {
            let vector = vectors.remove(&*hit.id);
            to_search_hit(hit, vector)
        })
        .collect())
}

/// Searches this node's replicas of the given shards (for our own fan-out or a peer's).
pub async fn search_here(node: &Node, rpc: SearchRpc) -> Result<Vec<RemoteHit>> {
    let timeout = Duration::from_millis(node.config().performance.query_timeout_ms);
    let prepared = rpc.collection.prepare_search(
        &rpc.request,
        filter_limits(node),
        Some(Instant::now() + timeout),
    )?;
    // Searches of this node's replicas, for its own clients and its peers' alike, are
    // bounded; the permit is held until the work ends, even past a caller's timeout.
    let permit = node.search_permit().ok_or_else(|| {
        Error::unavailable(
            ErrorCode::Overloaded,
            format!(
                "this node is running {} searches, its limit (performance.max_concurrent_searches)",
                node.config().performance.max_concurrent_searches
            ),
        )
    })?;
    let mut locals = Vec::with_capacity(rpc.shards.len());
    for shard in &rpc.shards {
        locals.push(local_read(node, &rpc.collection.group(*shard), rpc.strong).await?);
    }
    // A small search (few shards x small ef, no filter scan, no vectors to read from
    // storage) costs less than the two thread hand-offs of the blocking pool: it runs right
    // here. Larger ones go to the blocking pool and search their shards in parallel.
    let cost = node.config().index.graph.search_cost_per_ef();
    let small = prepared.filter.is_none()
        && !prepared.include_vectors
        && cost * locals.len() * prepared.ef.max(prepared.top_k) <= INLINE_SEARCH_WORK;
    if small {
        return search_locals(&locals, &prepared, false);
    }
    blocking(move || {
        let _permit = permit;
        search_locals(&locals, &prepared, true)
    })
    .await
}

/// What one search's filter may ask for on this node.
fn filter_limits(node: &Node) -> FilterLimits {
    let performance = &node.config().performance;
    FilterLimits {
        conditions: performance.max_filter_conditions,
        values: performance.max_filter_values,
    }
}

/// Keeps the best `top_k` of hits gathered from several shards.
fn merge_remote(mut hits: Vec<RemoteHit>, top_k: usize) -> Vec<RemoteHit> {
    hits.sort_by(|a, b| {
        a.hit
            .distance
            .total_cmp(&b.hit.distance)
            .then_with(|| a.hit.id.cmp(&b.hit.id))
    });
    hits.truncate(top_k);
    hits
}

/// Searches local replicas, in parallel on the rayon pool when `parallel`, and merges their
/// hits into the best `top_k`.
fn search_locals(
    locals: &[Arc<LocalGroup>],
    prepared: &PreparedSearch,
    parallel: bool,
) -> Result<Vec<RemoteHit>> {
    use rayon::prelude::*;
    let search = |local: &Arc<LocalGroup>| -> Result<Vec<RemoteHit>> {
        search_shard(&local.shard, prepared)?
            .into_iter()
            .map(|hit| {
                let vector = if prepared.include_vectors {
                    local.shard.get(&hit.id)?.map(|d| d.vector)
                } else {
                    None
                };
                Ok(RemoteHit { hit, vector })
            })
            .collect()
    };
    let per_shard: Vec<Result<Vec<RemoteHit>>> = if parallel && locals.len() > 1 {
        locals.par_iter().map(search).collect()
    } else {
        locals.iter().map(search).collect()
    };
    let mut hits = Vec::new();
    for result in per_shard {
        hits.extend(result?);
    }
    Ok(merge_remote(hits, prepared.top_k))
}
