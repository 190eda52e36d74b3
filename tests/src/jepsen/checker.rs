//! Checks a history ([`super::history`]) against what Grape promises:
//!
//! - strong reads, writes and deletes of each document are linearizable: a register model
//!   (the document's value, or none) searched per key, Wing & Gong's algorithm with Lowe's
//!   memoization of (operations linearized, state). Writes of unknown outcome may take effect
//!   at any time after they were invoked, or never;
//! - nothing read (strongly, eventually or by a search) that was never written, and nothing
//!   read whose write was answered with a failure;
//! - no acknowledged write lost: the last write to a key, acknowledged, is what the final
//!   read finds;
//! - no value read after a later write had completed (a stale read, or a write applied twice).
//!
//! The last three are special cases of the first, reported apart because they say what went
//! wrong.

use super::history::{Call, Observed, Op, Outcome};
use std::collections::{BTreeMap, HashMap, HashSet};

/// The value given to every unread write of unknown outcome (no write carries it).
const UNREAD: u64 = u64::MAX;

/// How a key's operation changes or reads the register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Write(u64),
    /// A delete; `Some(existed)` when its answer is known.
    Delete(Option<bool>),
    Read(Option<u64>),
}

/// One operation on one key, as the linearizability search sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyOp {
    /// Index of the operation in the history.
    pub op: usize,
    pub invoke: u64,
    /// `u64::MAX` when the outcome is unknown: it may take effect at any later time.
    pub complete: u64,
    /// Whether it must be linearized (its outcome is known to be success).
    pub required: bool,
    pub step: Step,
}

/// The state after `step`, if the step is allowed in `state`.
fn apply(state: Option<u64>, step: Step) -> Option<Option<u64>> {
    match step {
        Step::Write(value) => Some(Some(value)),
        Step::Delete(None) => Some(None),
        Step::Delete(Some(existed)) => (state.is_some() == existed).then_some(None),
        Step::Read(seen) => (seen == state).then_some(state),
    }
}

/// The verdict on one key's operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order exists. `stuck` is a required operation that could not be placed at the
    /// deepest point the search reached, with the register's value there.
    Violation {
        stuck: Option<usize>,
        state: Option<u64>,
        placed: usize,
    },
    /// The search gave up after `budget` states (too many overlapping unknown operations).
    Undecided,
}

/// Searches for an order of `ops` that respects real time (an operation that completed
/// before another was invoked comes first) and the register's rules, starting from an absent
/// document. Operations that are not required may be left out.
pub fn linearize(ops: &[KeyOp], budget: usize) -> Verdict {
    let mut ops = ops.to_vec();
    ops.sort_by_key(|o| (o.invoke, o.complete));
    let n = ops.len();
    let words = n.div_ceil(64).max(1);
    let mut done = vec![0u64; words];
    let is_done = |done: &[u64], i: usize| done[i / 64] & (1 << (i % 64)) != 0;
    let flip = |done: &mut [u64], i: usize| done[i / 64] ^= 1 << (i % 64);
    let mut required_left = ops.iter().filter(|o| o.required).count();
    if required_left == 0 {
        return Verdict::Linearizable;
    }
    // The operations that may come next: invoked before every pending required operation
    // completed; earliest completion first.
    // Scans start at the first operation not placed, and stop at the first invoked after the
    // horizon (operations are sorted by invocation, and none completes before it begins).
    let candidates = |done: &[u64]| -> Vec<usize> {
        let first = done
            .iter()
            .position(|w| *w != u64::MAX)
            .map(|w| w * 64 + done[w].trailing_ones() as usize)
            .unwrap_or(n);
        let mut horizon = u64::MAX;
        for (i, op) in ops.iter().enumerate().skip(first) {
            if op.invoke > horizon {
                break;
            }
            if op.required && !is_done(done, i) {
                horizon = horizon.min(op.complete);
            }
        }
        let mut next: Vec<usize> = (first..n)
            .take_while(|&i| ops[i].invoke <= horizon)
            .filter(|&i| !is_done(done, i))
            .collect();
        next.sort_by_key(|&i| (ops[i].complete, i));
        next
    };
    struct Frame {
        state: Option<u64>,
        candidates: Vec<usize>,
        next: usize,
        chosen: Option<usize>,
    }
    let mut seen: HashSet<(Vec<u64>, Option<u64>)> = HashSet::new();
    let mut stack = vec![Frame {
        state: None,
        candidates: candidates(&done),
        next: 0,
        chosen: None,
    }];
    let mut deepest = (0usize, None, None);
    loop {
        let Some(frame) = stack.last_mut() else {
            let (placed, state, stuck) = deepest;
            return Verdict::Violation {
                stuck,
                state,
                placed,
            };
        };
        if frame.next < frame.candidates.len() {
            let i = frame.candidates[frame.next];
            frame.next += 1;
            let state = frame.state;
            let Some(after) = apply(state, ops[i].step) else {
                continue;
            };
            flip(&mut done, i);
            if ops[i].required {
                required_left -= 1;
                if required_left == 0 {
                    return Verdict::Linearizable;
                }
            }
            if seen.len() >= budget {
                return Verdict::Undecided;
            }
            if seen.insert((done.clone(), after)) {
                let next = candidates(&done);
                let depth = stack.len();
                if depth > deepest.0 {
                    let stuck = (0..n)
                        .filter(|&j| !is_done(&done, j) && ops[j].required)
                        .min_by_key(|&j| ops[j].complete)
                        .map(|j| ops[j].op);
                    deepest = (depth, after, stuck);
                }
                stack.push(Frame {
                    state: after,
                    candidates: next,
                    next: 0,
                    chosen: Some(i),
                });
            } else {
                flip(&mut done, i);
                if ops[i].required {
                    required_left += 1;
                }
            }
        } else {
            let frame = stack.pop().expect("not empty");
            if let Some(i) = frame.chosen {
                flip(&mut done, i);
                if ops[i].required {
                    required_left += 1;
                }
            }
        }
    }
}

/// Operation counts of one kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub ok: usize,
    pub fail: usize,
    pub unknown: usize,
}

/// What [`check`] found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    /// Operations by kind (`write`, `batch`, `delete`, `strong_read`, `eventual_read`,
    /// `search`).
    pub operations: BTreeMap<String, Counts>,
    pub keys: usize,
    /// Keys whose strong operations have no linearization, with what the search found.
    pub violations: Vec<String>,
    /// Keys the search could not decide within its budget.
    pub undecided: Vec<String>,
    /// Reads of values never written.
    pub phantoms: Vec<String>,
    /// Reads of values whose write was answered with a failure.
    pub failed_writes_seen: Vec<String>,
    /// Acknowledged last writes the final read did not find.
    pub lost: Vec<String>,
    /// Values read after a later write had completed.
    pub stale: Vec<String>,
}

impl Report {
    /// Whether the history shows no violation of any kind (undecided keys included).
    pub fn valid(&self) -> bool {
        self.violations.is_empty()
            && self.undecided.is_empty()
            && self.phantoms.is_empty()
            && self.failed_writes_seen.is_empty()
            && self.lost.is_empty()
            && self.stale.is_empty()
    }
}

fn kind(call: &Call) -> &'static str {
    match call {
        Call::Write { .. } => "write",
        Call::Batch { .. } => "batch",
        Call::Delete { .. } => "delete",
        Call::Read { strong: true, .. } => "strong_read",
        Call::Read { strong: false, .. } => "eventual_read",
        Call::Search => "search",
    }
}

/// Checks a history; `budget` bounds the linearizability search per key (states visited).
pub fn check(history: &[Op], budget: usize) -> Report {
    let mut report = Report::default();
    // Values written per key, by outcome.
    let mut written: HashMap<(String, u64), Outcome> = HashMap::new();
    let mut per_key: BTreeMap<String, Vec<KeyOp>> = BTreeMap::new();
    let mut observed_values: HashSet<(String, u64)> = HashSet::new();
    for (index, op) in history.iter().enumerate() {
        let counts = report.operations.entry(kind(&op.call).into()).or_default();
        match op.outcome {
            Outcome::Ok => counts.ok += 1,
            Outcome::Fail => counts.fail += 1,
            Outcome::Unknown => counts.unknown += 1,
        }
        let complete = if op.outcome == Outcome::Unknown {
            u64::MAX
        } else {
            op.complete
        };
        let mut push = |key: &str, step: Step| {
            per_key.entry(key.to_string()).or_default().push(KeyOp {
                op: index,
                invoke: op.invoke,
                complete,
                required: op.outcome == Outcome::Ok,
                step,
            })
        };
        match (&op.call, op.outcome, &op.observed) {
            (Call::Write { key, value }, outcome, _) => {
                written.insert((key.clone(), *value), outcome);
                if outcome != Outcome::Fail {
                    push(key, Step::Write(*value));
                }
            }
            (Call::Batch { writes }, outcome, _) => {
                for (key, value) in writes {
                    written.insert((key.clone(), *value), outcome);
                    if outcome != Outcome::Fail {
                        push(key, Step::Write(*value));
                    }
                }
            }
            (Call::Delete { key }, Outcome::Ok, Some(Observed::Deleted(existed))) => {
                push(key, Step::Delete(Some(*existed)))
            }
            (Call::Delete { key }, Outcome::Unknown, _) => push(key, Step::Delete(None)),
            (Call::Read { key, strong }, Outcome::Ok, Some(Observed::Read(value))) => {
                if let Some(v) = value {
                    observed_values.insert((key.clone(), *v));
                }
                if *strong {
                    push(key, Step::Read(*value));
                }
            }
            (Call::Search, Outcome::Ok, Some(Observed::Found(found))) => {
                observed_values.extend(found.iter().cloned());
            }
            _ => {}
        }
    }
    for (key, value) in &observed_values {
        match written.get(&(key.clone(), *value)) {
            None => report
                .phantoms
                .push(format!("{key} = {value}: never written")),
            Some(Outcome::Fail) => report.failed_writes_seen.push(format!(
                "{key} = {value}: its write was answered with a failure"
            )),
            Some(_) => {}
        }
    }
    report.phantoms.sort();
    report.failed_writes_seen.sort();
    report.keys = per_key.len();
    for (key, ops) in &mut per_key {
        // Writes of unknown outcome that nobody read are interchangeable: no read tells
        // their values apart, but they may still explain a delete that found the document.
        // One value for all of them keeps the search small.
        for o in ops.iter_mut() {
            if let Step::Write(v) = o.step
                && !o.required
                && !observed_values.contains(&(key.clone(), v))
            {
                o.step = Step::Write(UNREAD);
            }
        }
        stale_reads(key, ops, &mut report.stale);
        lost_writes(key, ops, &mut report.lost);
        match linearize(ops, budget) {
            Verdict::Linearizable => {}
            Verdict::Undecided => report.undecided.push(key.clone()),
            Verdict::Violation {
                stuck,
                state,
                placed,
            } => report.violations.push(format!(
                "{key}: {} operations; the longest valid order places {placed}, with the value {state:?}, and then cannot place operation #{}",
                ops.len(),
                stuck.map(|s| s.to_string()).unwrap_or_else(|| "?".into())
            )),
        }
    }
    report
}

/// Strong reads of a value after another acknowledged write or delete of the key had
/// completed, having begun after that value's write completed.
fn stale_reads(key: &str, ops: &[KeyOp], out: &mut Vec<String>) {
    let writes: BTreeMap<u64, &KeyOp> = ops
        .iter()
        .filter_map(|o| match o.step {
            Step::Write(v) => Some((v, o)),
            _ => None,
        })
        .collect();
    for read in ops.iter().filter(|o| o.required) {
        let Step::Read(Some(value)) = read.step else {
            continue;
        };
        let Some(write) = writes.get(&value) else {
            continue;
        };
        let newer = ops.iter().find(|m| {
            m.required
                && m.op != write.op
                && matches!(m.step, Step::Write(_) | Step::Delete(_))
                && m.invoke > write.complete
                && m.complete < read.invoke
        });
        if let Some(newer) = newer {
            out.push(format!(
                "{key}: operation #{} read {value} (written by #{}) after #{} had replaced it",
                read.op, write.op, newer.op
            ));
        }
    }
}

/// The key's last write, acknowledged with nothing concurrent or after it, that the last
/// strong read (begun after it) did not find.
fn lost_writes(key: &str, ops: &[KeyOp], out: &mut Vec<String>) {
    let mutations: Vec<&KeyOp> = ops
        .iter()
        .filter(|o| matches!(o.step, Step::Write(_) | Step::Delete(_)))
        .collect();
    let Some(last) = mutations.iter().max_by_key(|o| o.invoke) else {
        return;
    };
    let Step::Write(value) = last.step else {
        return;
    };
    if !last.required
        || mutations
            .iter()
            .any(|m| m.op != last.op && m.complete > last.invoke)
    {
        return;
    }
    let final_read = ops
        .iter()
        .filter(|o| o.required && matches!(o.step, Step::Read(_)) && o.invoke > last.complete)
        .max_by_key(|o| o.invoke);
    if let Some(read) = final_read
        && read.step != Step::Read(Some(value))
    {
        out.push(format!(
            "{key}: acknowledged write #{} of {value} was the last, yet read #{} found {:?}",
            last.op, read.op, read.step
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: usize = 1_000_000;

    fn op(
        invoke: u64,
        complete: u64,
        outcome: Outcome,
        call: Call,
        observed: Option<Observed>,
    ) -> Op {
        Op {
            process: 0,
            node: "node-1".into(),
            call,
            invoke,
            complete,
            outcome,
            observed,
            error: None,
        }
    }

    fn write(invoke: u64, complete: u64, value: u64) -> Op {
        op(
            invoke,
            complete,
            Outcome::Ok,
            Call::Write {
                key: "k".into(),
                value,
            },
            None,
        )
    }

    fn write_unknown(invoke: u64, value: u64) -> Op {
        let mut w = write(invoke, invoke + 1, value);
        w.outcome = Outcome::Unknown;
        w
    }

    fn read(invoke: u64, complete: u64, value: Option<u64>) -> Op {
        op(
            invoke,
            complete,
            Outcome::Ok,
            Call::Read {
                key: "k".into(),
                strong: true,
            },
            Some(Observed::Read(value)),
        )
    }

    fn delete(invoke: u64, complete: u64, existed: bool) -> Op {
        op(
            invoke,
            complete,
            Outcome::Ok,
            Call::Delete { key: "k".into() },
            Some(Observed::Deleted(existed)),
        )
    }

    #[test]
    fn sequential_and_overlapping_histories_are_accepted() {
        let history = vec![
            read(0, 1, None),
            write(2, 3, 1),
            read(4, 5, Some(1)),
            // Overlapping a write, a read may see the old value or the new one.
            write(6, 10, 2),
            read(7, 8, Some(1)),
            read(7, 9, Some(2)),
            read(11, 12, Some(2)),
            delete(13, 14, true),
            read(15, 16, None),
            delete(17, 18, false),
        ];
        let report = check(&history, BUDGET);
        assert!(report.valid(), "{report:?}");
        assert_eq!(report.operations["strong_read"].ok, 6);
    }

    #[test]
    fn a_stale_strong_read_is_rejected() {
        let history = vec![write(0, 1, 1), write(2, 3, 2), read(4, 5, Some(1))];
        let report = check(&history, BUDGET);
        assert_eq!(report.violations.len(), 1, "{report:?}");
        assert_eq!(report.stale.len(), 1, "{report:?}");
        assert!(!report.valid());
    }

    #[test]
    fn a_lost_acknowledged_write_is_rejected() {
        let history = vec![write(0, 1, 1), write(2, 3, 2), read(10, 11, Some(1))];
        let report = check(&history, BUDGET);
        assert!(!report.valid());
        assert_eq!(report.lost.len(), 1, "{report:?}");
        let history = vec![write(0, 1, 1), read(10, 11, None)];
        let report = check(&history, BUDGET);
        assert_eq!(report.lost.len(), 1, "{report:?}");
        assert_eq!(report.violations.len(), 1, "{report:?}");
    }

    #[test]
    fn a_write_applied_twice_is_rejected() {
        // 1 is written, replaced by 2 (read back), then 1 comes back: applied again.
        let history = vec![
            write(0, 1, 1),
            write(2, 3, 2),
            read(4, 5, Some(2)),
            read(6, 7, Some(1)),
        ];
        let report = check(&history, BUDGET);
        assert_eq!(report.violations.len(), 1, "{report:?}");
        assert_eq!(report.stale.len(), 1, "{report:?}");
    }

    #[test]
    fn reading_a_value_from_the_future_is_rejected() {
        let history = vec![read(0, 1, Some(1)), write(2, 3, 1)];
        let report = check(&history, BUDGET);
        assert_eq!(report.violations.len(), 1, "{report:?}");
    }

    #[test]
    fn phantoms_and_failed_writes_that_show_up_are_rejected() {
        let mut failed = write(0, 1, 1);
        failed.outcome = Outcome::Fail;
        let history = vec![failed, read(2, 3, Some(1)), read(4, 5, Some(7))];
        let report = check(&history, BUDGET);
        assert_eq!(report.failed_writes_seen.len(), 1, "{report:?}");
        assert_eq!(report.phantoms.len(), 1, "{report:?}");
        // A search result counts as a read.
        let search = op(
            6,
            7,
            Outcome::Ok,
            Call::Search,
            Some(Observed::Found(vec![("k".into(), 9)])),
        );
        let report = check(&[write(0, 1, 1), search], BUDGET);
        assert_eq!(report.phantoms, vec!["k = 9: never written".to_string()]);
    }

    #[test]
    fn a_write_of_unknown_outcome_may_take_effect_late_or_never() {
        // The timed-out write of 1 lands after the write of 2: a later read of 1 is fine.
        let history = vec![
            write_unknown(0, 1),
            write(2, 3, 2),
            read(4, 5, Some(2)),
            read(6, 7, Some(1)),
            read(8, 9, Some(1)),
        ];
        let report = check(&history, BUDGET);
        assert!(report.valid(), "{report:?}");
        // ... or never.
        let history = vec![write_unknown(0, 1), write(2, 3, 2), read(4, 5, Some(2))];
        assert!(check(&history, BUDGET).valid());
        // But once it has been read, it cannot be undone except by another write.
        let history = vec![
            write_unknown(0, 1),
            write(2, 3, 2),
            read(4, 5, Some(1)),
            read(6, 7, Some(2)),
        ];
        let report = check(&history, BUDGET);
        assert_eq!(report.violations.len(), 1, "{report:?}");
    }

    #[test]
    fn a_timed_out_write_nobody_read_can_explain_a_delete() {
        let history = vec![
            write_unknown(0, 5),
            delete(10, 20, true),
            read(30, 40, None),
        ];
        let report = check(&history, BUDGET);
        assert!(report.valid(), "{report:?}");
        // Without that write, the same delete contradicts the register.
        let history = vec![delete(10, 20, true), read(30, 40, None)];
        assert_eq!(check(&history, BUDGET).violations.len(), 1);
    }

    #[test]
    fn a_delete_must_agree_with_what_it_found() {
        let history = vec![write(0, 1, 1), delete(2, 3, false)];
        assert_eq!(check(&history, BUDGET).violations.len(), 1);
        let history = vec![delete(0, 1, true)];
        assert_eq!(check(&history, BUDGET).violations.len(), 1);
    }

    #[test]
    fn many_concurrent_clients_are_checked_quickly() {
        // 8 clients, 2,000 operations on one key, each overlapping its neighbours; every
        // read sees the latest write that completed before it began or one overlapping it.
        let mut history = Vec::new();
        let mut value = 0;
        let mut last_done = None;
        for round in 0..250u64 {
            let t = round * 10;
            value += 1;
            history.push(write(t, t + 5, value));
            for c in 0..7 {
                // Reads invoked before the write completes may see either value.
                let seen = if c % 2 == 0 { last_done } else { Some(value) };
                history.push(read(t + 1 + c % 3, t + 6 + c % 3, seen));
            }
            last_done = Some(value);
        }
        let report = check(&history, BUDGET);
        assert!(report.valid(), "{report:?}");
    }
}
