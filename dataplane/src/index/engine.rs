//! The two graph engines behind one interface: hnsw_rs, and Grape's own [`HnswGraph`], each
//! labelled with [`VectorId`]s.

use super::distance::GraphDistance;
use super::graph::{self, GraphParams, HnswGraph};
use super::quantize::Space;
use super::{Candidate, GraphEngine, VectorId};
use grape_client::HnswParams;
use hnsw_rs::prelude::Hnsw;
use rayon::prelude::*;
use std::sync::Arc;

type HnswRsGraph = Hnsw<'static, f32, GraphDistance>;

/// A graph of either engine, labelled with [`VectorId`]s.
pub(super) enum Graph {
    HnswRs(Arc<HnswRsGraph>),
    Grape(Arc<HnswGraph>),
}

impl Graph {
    pub(super) fn new(
        engine: GraphEngine,
        dimension: usize,
        params: HnswParams,
        distance: GraphDistance,
        space: Space,
        capacity: usize,
    ) -> Graph {
        match engine {
            GraphEngine::HnswRs => Graph::HnswRs(Arc::new(Hnsw::new(
                params.m,
                capacity,
                MAX_LAYERS,
                params.ef_construction,
                distance,
            ))),
            GraphEngine::Grape => Graph::Grape(Arc::new(HnswGraph::new(
                dimension,
                space,
                GraphParams {
                    m: params.m,
                    ef_construction: params.ef_construction,
                },
                capacity,
            ))),
        }
    }

    pub(super) fn share(&self) -> Graph {
        match self {
            Graph::HnswRs(g) => Graph::HnswRs(Arc::clone(g)),
            Graph::Grape(g) => Graph::Grape(Arc::clone(g)),
        }
    }

    /// The nearest graph entries to `query` (at least `k` of them when the graph has them,
    /// up to `ef` for hnsw_rs), nearest first; with a filter, only ids it lets through.
    pub(super) fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        filter: Option<&dyn Fn(VectorId) -> bool>,
    ) -> Vec<Candidate> {
        match self {
            Graph::HnswRs(g) => {
                let hits = match filter {
                    None => g.search(query, ef, ef),
                    Some(f) => g.search_filter(query, ef, ef, Some(&|id: &usize| f(*id))),
                };
                hits.into_iter()
                    .map(|n| Candidate {
                        id: n.d_id,
                        distance: n.distance,
                    })
                    .collect()
            }
            Graph::Grape(g) => {
                let accept = filter.map(|f| move |node: graph::Node| f(g.label(node)));
                g.search(
                    query,
                    k,
                    ef,
                    accept.as_ref().map(|f| f as &dyn Fn(graph::Node) -> bool),
                )
                .into_iter()
                .map(|n| Candidate {
                    id: g.label(n.node),
                    distance: n.distance,
                })
                .collect()
            }
        }
    }

    /// Inserts a batch: hnsw_rs on this thread, Grape's graph on every thread of the current
    /// rayon pool. Answers the node of each entry in Grape's graph, in batch order (nothing for
    /// hnsw_rs, whose nodes are not addressable).
    pub(super) fn insert(&self, batch: &[(VectorId, Vec<f32>)]) -> Vec<graph::Node> {
        match self {
            Graph::HnswRs(g) => {
                for (id, vector) in batch {
                    g.insert_slice((vector, *id));
                }
                Vec::new()
            }
            Graph::Grape(g) => batch
                .par_iter()
                .map(|(id, vector)| g.insert(*id, vector))
                .collect(),
        }
    }

    /// Grape's graph, which holds its vectors where the index can read them.
    pub(super) fn grape(&self) -> Option<&Arc<HnswGraph>> {
        match self {
            Graph::Grape(g) => Some(g),
            Graph::HnswRs(_) => None,
        }
    }
}

/// Layers hnsw_rs may use (its maximum).
const MAX_LAYERS: usize = 16;
