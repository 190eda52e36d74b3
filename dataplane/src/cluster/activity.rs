//! What this node's Raft groups did since it started: leadership changes (for
//! `/admin/cluster/election-history`) and the counters behind the `grape_raft_*` metrics.

use super::raft::ids::{GroupId, NodeId};
use super::raft::types::{RaftMetrics, TypeConfig};
use grape_client::LeaderEvent;
use openraft::ServerState;
use openraft::type_config::alias::WatchReceiverOf;
use openraft::type_config::async_runtime::WatchReceiver;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Retained leadership events.
const LEADER_EVENTS: usize = 200;

/// Leadership changes and counters of every local group.
#[derive(Debug, Default)]
pub struct Activity {
    /// Recent leadership changes seen here, newest last.
    events: Mutex<VecDeque<LeaderEvent>>,
    /// Elections this node started (`grape_raft_election_count_total`).
    elections: AtomicU64,
    /// Leadership changes seen (`grape_raft_leadership_changes_total`).
    leadership_changes: AtomicU64,
    /// Entries applied by local groups (`grape_raft_log_entries_total`).
    applied_entries: AtomicU64,
    /// The tasks following each group's metrics, stopped at shutdown.
    watchers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Activity {
    /// Follows a group's metrics until the group shuts down. `stopped` is called once if the
    /// group's Raft stops on a fatal error (a log write or fsync that failed: nothing it had
    /// not made durable was acknowledged, and it accepts nothing more until a restart).
    pub fn watch(
        self: &Arc<Self>,
        group: GroupId,
        mut metrics: WatchReceiverOf<TypeConfig, RaftMetrics>,
        stopped: impl FnOnce(String) + Send + 'static,
    ) {
        let mut stopped = Some(stopped);
        let activity = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            let mut last_leader: Option<NodeId> = None;
            let mut last_state = ServerState::Learner;
            let mut last_applied = metrics
                .borrow_watched()
                .last_applied
                .as_ref()
                .map(|l| l.index());
            while metrics.changed().await.is_ok() {
                let Some(activity) = activity.upgrade() else {
                    return;
                };
                let m = metrics.borrow_watched().clone();
                // `Stopped` is a normal shutdown (a replica dropped, the node stopping).
                if let Err(fatal) = &m.running_state
                    && !matches!(fatal, openraft::errors::Fatal::Stopped)
                    && let Some(stopped) = stopped.take()
                {
                    tracing::error!(%group, %fatal, "the group's Raft stopped; restart the node once its disk is healthy");
                    stopped(fatal.to_string());
                }
                if m.state == ServerState::Candidate && last_state != ServerState::Candidate {
                    activity.elections.fetch_add(1, Ordering::Relaxed);
                }
                last_state = m.state;
                let applied = m.last_applied.as_ref().map(|l| l.index());
                if let (Some(now), previous) = (applied, last_applied) {
                    let before = previous.unwrap_or(0);
                    if now > before {
                        activity
                            .applied_entries
                            .fetch_add(now - before, Ordering::Relaxed);
                    }
                }
                last_applied = applied;
                if m.current_leader != last_leader {
                    if m.current_leader.is_some() {
                        activity.leadership_changes.fetch_add(1, Ordering::Relaxed);
                    }
                    last_leader = m.current_leader.clone();
                    let mut events = activity.events.lock();
                    if events.len() == LEADER_EVENTS {
                        events.pop_front();
                    }
                    events.push_back(LeaderEvent {
                        at: chrono::Utc::now().to_rfc3339(),
                        group: group.clone(),
                        term: m.current_term,
                        leader: m.current_leader.clone(),
                    });
                }
                if m.state == ServerState::Shutdown {
                    return;
                }
            }
        });
        let mut watchers = self.watchers.lock();
        watchers.retain(|w| !w.is_finished());
        watchers.push(task);
    }

    /// Stops following every group.
    pub fn stop(&self) {
        for watcher in self.watchers.lock().drain(..) {
            watcher.abort();
        }
    }

    /// Leadership changes seen here, newest first.
    pub fn leader_events(&self) -> Vec<LeaderEvent> {
        self.events.lock().iter().rev().cloned().collect()
    }

    /// Log entries applied by this node's groups since start.
    pub fn applied_total(&self) -> u64 {
        self.applied_entries.load(Ordering::Relaxed)
    }

    /// Elections this node started since start.
    pub fn elections(&self) -> u64 {
        self.elections.load(Ordering::Relaxed)
    }

    /// Leadership changes this node saw since start.
    pub fn leadership_changes(&self) -> u64 {
        self.leadership_changes.load(Ordering::Relaxed)
    }
}
