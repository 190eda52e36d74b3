//! Faults, chosen at random from a seed: kill -9 and restart, SIGSTOP/SIGCONT pauses,
//! partitions (one node cut off, a minority from a majority, a bridge), leadership transfers,
//! a node added and another removed with a rebalance, a wiped node replaced as a new one (removed and added again), and a slow link
//! (`tc` on loopback). One fault at a time, each held for a while and then healed.

use super::workload::{Recorder, Targets};
use crate::Cluster;
use grape_client::{
    AddNodeRequest, ErrorCode, GrapeClient, OperationState, RebalanceRequest, RemoveNodeRequest,
    TransferLeadershipRequest,
};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The kinds of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    Kill,
    Pause,
    PartitionOne,
    PartitionHalves,
    Bridge,
    Transfer,
    Membership,
    Wipe,
    Slow,
}

impl Fault {
    pub const ALL: [Fault; 9] = [
        Fault::Kill,
        Fault::Pause,
        Fault::PartitionOne,
        Fault::PartitionHalves,
        Fault::Bridge,
        Fault::Transfer,
        Fault::Membership,
        Fault::Wipe,
        Fault::Slow,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Pause => "pause",
            Fault::PartitionOne => "partition-one",
            Fault::PartitionHalves => "partition-halves",
            Fault::Bridge => "bridge",
            Fault::Transfer => "transfer",
            Fault::Membership => "membership",
            Fault::Wipe => "wipe",
            Fault::Slow => "slow",
        }
    }

    pub fn parse(name: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// Injects faults into a cluster and keeps the clients' targets current.
pub struct Nemesis {
    pub cluster: Cluster,
    rng: ChaCha8Rng,
    recorder: Arc<Recorder>,
    targets: Targets,
    /// Indices of the nodes that are members now.
    members: Vec<usize>,
    /// The most members the membership fault grows to.
    max_members: usize,
    cuts: Vec<(usize, usize)>,
    delayed: bool,
    /// Faults still to run in this round (every fault once per round, in a seeded order).
    round: Vec<Fault>,
}

impl Nemesis {
    pub fn new(
        cluster: Cluster,
        seed: u64,
        recorder: Arc<Recorder>,
        targets: Targets,
        max_members: usize,
    ) -> Nemesis {
        let members = (1..=cluster.nodes.len()).collect();
        let nemesis = Nemesis {
            cluster,
            rng: ChaCha8Rng::seed_from_u64(seed),
            recorder,
            targets,
            members,
            max_members,
            cuts: Vec::new(),
            delayed: false,
            round: Vec::new(),
        };
        nemesis.refresh_targets();
        nemesis
    }

    /// Points the clients at the running members.
    fn refresh_targets(&self) {
        let live: Vec<(String, String)> = self
            .members
            .iter()
            .filter(|i| self.cluster.node(**i).is_running())
            .map(|i| (format!("node-{i}"), self.cluster.node(*i).url.clone()))
            .collect();
        *self.targets.lock().expect("targets") = live;
    }

    fn pick_member(&mut self) -> usize {
        self.members[self.rng.random_range(0..self.members.len())]
    }

    fn hold(&mut self) -> Duration {
        Duration::from_millis(self.rng.random_range(1500..=5000))
    }

    /// A client of a running member (admin calls are forwarded to the meta leader).
    fn admin(&self) -> Option<GrapeClient> {
        self.members
            .iter()
            .map(|i| self.cluster.node(*i))
            .find(|n| n.is_running())
            .map(|n| n.client())
    }

    /// Runs the next of `faults`, inject, hold, heal: every fault once per round, each round
    /// in a new order. Returns the fault, and whether it could be injected.
    pub async fn cycle(&mut self, faults: &[Fault]) -> (Fault, bool) {
        let mut injected = true;
        if self.round.is_empty() {
            self.round = faults.to_vec();
            self.round.shuffle(&mut self.rng);
        }
        let fault = self.round.pop().expect("faults is not empty");
        let hold = self.hold();
        match fault {
            Fault::Kill | Fault::Wipe => {
                let i = self.pick_member();
                let name = fault.name();
                self.recorder.fault(name, "start", format!("node-{i}"));
                self.cluster.node_mut(i).kill9();
                if fault == Fault::Wipe {
                    self.cluster.node_mut(i).wipe();
                }
                self.refresh_targets();
                tokio::time::sleep(hold).await;
                if fault == Fault::Wipe {
                    // The cluster keeps a member with a new data directory out until it is
                    // removed and added again as a new node.
                    self.cluster.node_mut(i).restart_unready().await;
                    let replaced = crate::load::replace_lost_member(
                        &self.cluster,
                        i,
                        Duration::from_secs(180),
                    )
                    .await;
                    self.refresh_targets();
                    self.recorder.fault(
                        name,
                        "end",
                        format!("node-{i} replaced as a new node: {replaced:?}"),
                    );
                } else {
                    self.restart(i).await;
                    self.recorder
                        .fault(name, "end", format!("node-{i} restarted"));
                }
            }
            Fault::Pause => {
                let i = self.pick_member();
                self.recorder.fault("pause", "start", format!("node-{i}"));
                self.cluster.node(i).signal("STOP");
                tokio::time::sleep(hold).await;
                self.cluster.node(i).signal("CONT");
                self.recorder.fault("pause", "end", format!("node-{i}"));
            }
            Fault::PartitionOne => {
                let i = self.pick_member();
                let others: Vec<usize> = self.members.iter().copied().filter(|j| *j != i).collect();
                self.partition(fault, &[i], &others, "", hold).await;
            }
            Fault::PartitionHalves => {
                let mut shuffled = self.members.clone();
                shuffled.shuffle(&mut self.rng);
                let (minority, majority) = shuffled.split_at(shuffled.len() / 2);
                let (minority, majority) = (minority.to_vec(), majority.to_vec());
                self.partition(fault, &minority, &majority, "", hold).await;
            }
            Fault::Bridge => {
                // Two sides that see only the bridge node between them.
                let mut shuffled = self.members.clone();
                shuffled.shuffle(&mut self.rng);
                let bridge = shuffled.pop().expect("members");
                let (left, right) = shuffled.split_at(shuffled.len() / 2);
                let (left, right) = (left.to_vec(), right.to_vec());
                let note = format!(" (node-{bridge} sees both)");
                self.partition(fault, &left, &right, &note, hold).await;
            }
            Fault::Transfer => injected = self.transfer().await,
            Fault::Membership => injected = self.membership().await,
            Fault::Slow => {
                let i = self.pick_member();
                let ip = format!("{}.{i}", self.cluster.network);
                match slow_link(&ip) {
                    Ok(()) => {
                        self.delayed = true;
                        self.recorder.fault(
                            "slow",
                            "start",
                            format!("node-{i}: 256 kbit/s each way"),
                        );
                        tokio::time::sleep(hold).await;
                        clear_slow_link();
                        self.delayed = false;
                        self.recorder.fault("slow", "end", format!("node-{i}"));
                    }
                    Err(e) => {
                        injected = false;
                        self.recorder.fault("slow", "skipped", e)
                    }
                }
            }
        }
        (fault, injected)
    }

    async fn partition(
        &mut self,
        fault: Fault,
        a: &[usize],
        b: &[usize],
        note: &str,
        hold: Duration,
    ) {
        let describe = |side: &[usize]| {
            side.iter()
                .map(|i| format!("node-{i}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        self.recorder.fault(
            fault.name(),
            "start",
            format!("[{}] | [{}]{note}", describe(a), describe(b)),
        );
        for &i in a {
            for &j in b {
                self.cluster.cut(i, j);
                self.cuts.push((i, j));
            }
        }
        tokio::time::sleep(hold).await;
        self.heal_cuts();
        self.recorder.fault(fault.name(), "end", "healed".into());
    }

    fn heal_cuts(&mut self) {
        for (i, j) in std::mem::take(&mut self.cuts) {
            self.cluster.uncut(i, j);
        }
    }

    /// Restarts a stopped node and waits (up to 60 s) until it is ready.
    async fn restart(&mut self, i: usize) {
        self.cluster.node_mut(i).restart_unready().await;
        self.refresh_targets();
        if !wait_ready(&self.cluster.node(i).client(), Duration::from_secs(60)).await {
            self.recorder
                .fault("restart", "slow", format!("node-{i} not ready after 60 s"));
        }
    }

    /// Moves the leadership of a random shard (or of the meta group) to another of its voters.
    async fn transfer(&mut self) -> bool {
        let Some(admin) = self.admin() else {
            return false;
        };
        let Ok(status) = admin.cluster_status().await else {
            self.recorder
                .fault("transfer", "skipped", "no cluster status".into());
            return false;
        };
        let groups: Vec<_> = status
            .groups
            .iter()
            .filter(|g| g.leader.is_some())
            .collect();
        if groups.is_empty() {
            return false;
        }
        let group = groups[self.rng.random_range(0..groups.len())];
        let others: Vec<&str> = group
            .members
            .iter()
            .map(|m| m.node.as_str())
            .filter(|n| Some(*n) != group.leader.as_deref())
            .collect();
        if others.is_empty() {
            return false;
        }
        let target = others[self.rng.random_range(0..others.len())].to_string();
        let request = TransferLeadershipRequest {
            target_node: Some(target.clone()),
            shard: Some(group.name.clone()),
            from_node: None,
        };
        self.recorder
            .fault("transfer", "start", format!("{} to {target}", group.name));
        let result = admin.transfer_leadership(&request).await;
        self.recorder.fault(
            "transfer",
            "end",
            format!("{:?}", result.as_ref().map(|_| "ok")),
        );
        result.is_ok()
    }

    /// Adds a node and rebalances while below the most members, else drains and removes the
    /// most recently added one.
    async fn membership(&mut self) -> bool {
        let Some(admin) = self.admin() else {
            return false;
        };
        if self.members.len() < self.max_members {
            let i = self.cluster.start_extra_node().await;
            let id = format!("node-{i}");
            self.recorder
                .fault("membership", "start", format!("add {id}"));
            let added = admin
                .add_node(&AddNodeRequest {
                    node_id: id.clone(),
                    address: self.cluster.raft_address(i),
                    role: None,
                })
                .await;
            if let Err(e) = added {
                self.recorder
                    .fault("membership", "failed", format!("add {id}: {e}"));
                self.cluster.node_mut(i).kill9();
                return false;
            }
            self.members.push(i);
            wait_ready(&self.cluster.node(i).client(), Duration::from_secs(60)).await;
            self.refresh_targets();
            let rebalance = RebalanceRequest {
                strategy: Some("even_distribution".into()),
            };
            let outcome = self.retry_admin(|c| {
                let rebalance = rebalance.clone();
                async move { c.rebalance(&rebalance).await.map(|_| ()) }
            });
            let outcome = outcome.await;
            self.recorder
                .fault("membership", "rebalance", format!("{outcome:?}"));
            let done = self.wait_operation(Duration::from_secs(120)).await;
            self.recorder.fault("membership", "end", done);
            outcome.is_ok()
        } else {
            let i = *self.members.iter().max().expect("members");
            let id = format!("node-{i}");
            self.recorder
                .fault("membership", "start", format!("remove {id}"));
            let request = RemoveNodeRequest {
                node_id: id.clone(),
                force: false,
            };
            let outcome = self
                .retry_admin(|c| {
                    let request = request.clone();
                    async move { c.remove_node(&request).await.map(|_| ()) }
                })
                .await;
            self.recorder
                .fault("membership", "remove", format!("{outcome:?}"));
            if outcome.is_err() {
                return false;
            }
            let done = self.wait_operation(Duration::from_secs(120)).await;
            // The node leaves once its replicas have moved: wait until it is no member.
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if let Some(admin) = self.admin()
                    && let Ok(status) = admin.cluster_status().await
                    && status.nodes.iter().all(|n| n.id != id)
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            self.members.retain(|m| *m != i);
            self.refresh_targets();
            self.cluster.node_mut(i).terminate();
            self.recorder
                .fault("membership", "end", format!("{id} removed: {done}"));
            true
        }
    }

    /// Runs an admin call, retrying (up to 60 s) while another operation runs or the cluster
    /// has no leader.
    async fn retry_admin<F, Fut>(&self, call: F) -> Result<(), String>
    where
        F: Fn(GrapeClient) -> Fut,
        Fut: std::future::Future<Output = grape_client::Result<()>>,
    {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let Some(admin) = self.admin() else {
                return Err("no node runs".into());
            };
            match call(admin).await {
                Ok(()) => return Ok(()),
                Err(e)
                    if Instant::now() < deadline
                        && (e.status().is_none_or(|s| s.is_server_error())
                            || e.error_code() == Some(ErrorCode::OperationRunning)) =>
                {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// Waits until no operation runs and the latest is done; describes how it ended.
    async fn wait_operation(&self, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(admin) = self.admin()
                && let Ok(status) = admin.migration_status().await
                && status.running.is_none()
            {
                return match status.operations.first() {
                    Some(o) if o.state == OperationState::Done => {
                        format!("operation {} done ({} moves)", o.operation, o.moves_total)
                    }
                    Some(o) => format!("operation {} ended {:?}", o.operation, o.state),
                    None => "no operation".into(),
                };
            }
            if Instant::now() > deadline {
                return format!("still running after {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Ends every fault: partitions healed, paused nodes resumed, delay removed, stopped
    /// members restarted; waits until every member is ready.
    pub async fn heal_all(&mut self) {
        self.heal_cuts();
        if self.delayed {
            clear_slow_link();
            self.delayed = false;
        }
        for i in self.members.clone() {
            if self.cluster.node(i).is_running() {
                self.cluster.node(i).signal("CONT");
            } else {
                self.restart(i).await;
            }
        }
        for i in self.members.clone() {
            wait_ready(&self.cluster.node(i).client(), Duration::from_secs(60)).await;
        }
        self.refresh_targets();
    }

    /// Indices of the current members.
    pub fn members(&self) -> &[usize] {
        &self.members
    }
}

impl Drop for Nemesis {
    /// Leaves no firewall rule or traffic control behind, even when a run fails.
    fn drop(&mut self) {
        self.heal_cuts();
        if self.delayed {
            clear_slow_link();
        }
    }
}

/// Waits until `/ready` answers 200; false after `within`.
pub async fn wait_ready(client: &GrapeClient, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(true) = client.ready().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Slows every packet to or from `ip` on loopback to a 256 kbit/s link (an `htb` class chosen
/// by address filters; other loopback traffic goes through a 100 Gbit/s class): under load,
/// packets queue for hundreds of milliseconds. (`netem`, which would add a fixed delay, is not
/// in every kernel; this one is.)
fn slow_link(ip: &str) -> Result<(), String> {
    let tc = |args: &[&str]| -> Result<(), String> {
        let output = Command::new("tc")
            .args(args)
            .output()
            .map_err(|e| format!("tc: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "tc {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    };
    clear_slow_link();
    let host = format!("{ip}/32");
    let result = tc(&[
        "qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "1",
    ])
    .and_then(|()| {
        tc(&[
            "class", "add", "dev", "lo", "parent", "1:", "classid", "1:1", "htb", "rate",
            "100gbit", "quantum", "200000",
        ])
    })
    .and_then(|()| {
        tc(&[
            "class", "add", "dev", "lo", "parent", "1:", "classid", "1:2", "htb", "rate",
            "256kbit", "burst", "4k",
        ])
    })
    .and_then(|()| {
        tc(&[
            "filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1", "u32",
            "match", "ip", "dst", &host, "flowid", "1:2",
        ])
    })
    .and_then(|()| {
        tc(&[
            "filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1", "u32",
            "match", "ip", "src", &host, "flowid", "1:2",
        ])
    });
    if result.is_err() {
        clear_slow_link();
    }
    result
}

/// Removes the slow link ([`slow_link`]).
fn clear_slow_link() {
    let _ = Command::new("tc")
        .args(["qdisc", "del", "dev", "lo", "root"])
        .output();
}
