//! The status of rebalances, drains and repairs, from the meta state.

use crate::cluster::node::Node;
use crate::cluster::raft::meta_commands::{MovePhase, MoveRecord, Operation};
use crate::cluster::raft::meta_state::MetaState;
use crate::cluster::status::display_group;
use grape_client::{MoveStatus, OperationStatus, OperationsStatus};

/// The moves of recent operations of the given kinds, with totals and an estimate of what is
/// left.
pub fn operations_status(node: &Node, kinds: &[&str]) -> OperationsStatus {
    let state = node.meta_state();
    let operations = state
        .operations
        .values()
        .rev()
        .filter(|o| kinds.contains(&o.kind.name()))
        .map(|o| {
            let moves = moves_of(&state, o);
            let open = || moves.iter().filter(|m| m.phase != MovePhase::Done);
            OperationStatus {
                operation: o.id,
                kind: o.kind.clone(),
                state: o.state.clone(),
                moves_total: moves.len(),
                moves_done: moves.len() - open().count(),
                moves_in_progress: open().filter(|m| m.phase != MovePhase::Pending).count(),
                documents_left: open()
                    .map(|m| {
                        m.progress
                            .documents_total
                            .saturating_sub(m.progress.documents_copied)
                    })
                    .sum(),
                bytes_left: open()
                    .map(|m| {
                        m.progress
                            .bytes_total
                            .saturating_sub(m.progress.bytes_copied)
                    })
                    .sum(),
                moves: moves
                    .iter()
                    .map(|m| MoveStatus {
                        id: m.id,
                        shard: display_group(&m.group),
                        from: m.from.clone(),
                        to: m.to.clone(),
                        phase: m.phase,
                        documents_copied: m.progress.documents_copied,
                        documents_total: m.progress.documents_total,
                        bytes_copied: m.progress.bytes_copied,
                        bytes_total: m.progress.bytes_total,
                    })
                    .collect(),
                leaders: o
                    .leaders
                    .iter()
                    .map(|(g, n)| (display_group(g), n.clone()))
                    .collect(),
            }
        })
        .collect();
    OperationsStatus {
        node_id: node.id().to_string(),
        running: state.running_operation().map(|o| o.id),
        operations,
    }
}

/// The running operation's progress, for metrics: its kind, its moves, how many are done,
/// and the bytes copied so far by all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningProgress {
    pub kind: &'static str,
    pub moves_total: usize,
    pub moves_done: usize,
    pub bytes_copied: u64,
}

/// The operation running now, if any.
pub fn running_progress(node: &Node) -> Option<RunningProgress> {
    let state = node.meta_read();
    let operation = state.running_operation()?;
    let moves = moves_of(&state, operation);
    Some(RunningProgress {
        kind: operation.kind.name(),
        moves_total: moves.len(),
        moves_done: moves.iter().filter(|m| m.phase == MovePhase::Done).count(),
        bytes_copied: moves.iter().map(|m| m.progress.bytes_copied).sum(),
    })
}

/// The move records of `operation`.
fn moves_of<'a>(state: &'a MetaState, operation: &Operation) -> Vec<&'a MoveRecord> {
    operation
        .moves
        .iter()
        .filter_map(|id| state.moves.get(id))
        .collect()
}
