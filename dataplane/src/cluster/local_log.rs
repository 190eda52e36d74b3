//! The single-node log: numbers one shard's commands and applies them with group commit.
//!
//! Concurrent writers to a shard queue their commands here; one task takes whatever has
//! queued, applies it as one fsynced RocksDB batch, and answers each writer. Under load this
//! turns many small fsyncs into few large ones. A Raft group takes this role in a cluster.

use crate::error::{Error, Result};
use crate::shard::{Shard, ShardCommand, ShardResponse};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{mpsc, oneshot};

/// Commands taken into one group commit, at most.
const MAX_GROUP_COMMANDS: usize = 256;
/// Documents taken into one group commit, at most (a single larger command still goes alone).
const MAX_GROUP_DOCUMENTS: usize = 8192;

struct Proposal {
    command: ShardCommand,
    reply: oneshot::Sender<Result<ShardResponse>>,
}

/// Handle on one shard's log; dropping every handle stops its task.
#[derive(Debug, Clone)]
pub struct LocalLog {
    proposals: mpsc::Sender<Proposal>,
}

impl std::fmt::Debug for Proposal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proposal").finish_non_exhaustive()
    }
}

impl LocalLog {
    /// Starts the log task of `shard`. `applied_total` counts every applied command.
    pub fn start(shard: Arc<Shard>, applied_total: Arc<AtomicU64>) -> LocalLog {
        let (proposals, receiver) = mpsc::channel(1024);
        tokio::spawn(run(shard, receiver, applied_total));
        LocalLog { proposals }
    }

    /// Appends a command, waits until it is durable and applied, and returns its outcome.
    pub async fn propose(&self, command: ShardCommand) -> Result<ShardResponse> {
        let (reply, answer) = oneshot::channel();
        self.proposals
            .send(Proposal { command, reply })
            .await
            .map_err(|_| Error::unavailable("shard_closed", "the collection was dropped"))?;
        answer
            .await
            .map_err(|_| Error::unavailable("shard_closed", "the shard stopped before answering"))?
    }
}

async fn run(
    shard: Arc<Shard>,
    mut receiver: mpsc::Receiver<Proposal>,
    applied_total: Arc<AtomicU64>,
) {
    while let Some(first) = receiver.recv().await {
        let mut documents = first.command.len();
        let mut group = vec![first];
        while group.len() < MAX_GROUP_COMMANDS && documents < MAX_GROUP_DOCUMENTS {
            match receiver.try_recv() {
                Ok(next) => {
                    documents += next.command.len();
                    group.push(next);
                }
                Err(_) => break,
            }
        }
        let shard = Arc::clone(&shard);
        let outcome = tokio::task::spawn_blocking(move || {
            let first = shard.applied_index() + 1;
            let entries: Vec<(u64, &ShardCommand)> = group
                .iter()
                .enumerate()
                .map(|(i, p)| (first + i as u64, &p.command))
                .collect();
            let result = shard.apply(&entries);
            (group, result)
        })
        .await;
        let (group, result) = match outcome {
            Ok(done) => done,
            Err(panic) => {
                tracing::error!(error = %panic, "applying a command group panicked");
                continue;
            }
        };
        match result {
            Ok(responses) => {
                applied_total.fetch_add(group.len() as u64, Ordering::Relaxed);
                for (proposal, response) in group.into_iter().zip(responses) {
                    let _ = proposal.reply.send(Ok(response));
                }
            }
            Err(error) => {
                tracing::error!(%error, "a write failed; nothing of it was applied");
                let message = error.to_string();
                for proposal in group {
                    let _ = proposal
                        .reply
                        .send(Err(Error::unavailable("storage_error", message.clone())));
                }
            }
        }
    }
}
