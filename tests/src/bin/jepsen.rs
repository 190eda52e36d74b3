//! `grape-jepsen`: clients write, delete, read and search a small key space on every node of
//! a real cluster while a nemesis injects faults chosen from a seed; then the faults end, the
//! replicas must converge, and the recorded history is checked (linearizable strong reads,
//! nothing lost, nothing read that was never written, no stale read). The history and the
//! report are saved under `--out`; a failing run prints its seed.
//!
//! ```sh
//! cargo build --release --bin grape --bin grape-jepsen
//! target/release/grape-jepsen --nodes 3 --cycles 18                # a short run
//! target/release/grape-jepsen --nodes 5 --max-nodes 6 --cycles 108 --seed 20261202
//! target/release/grape-jepsen --check target/jepsen/20261202/history.jsonl
//! ```
//!
//! It needs root: partitions are iptables rules, the slow link is `tc` on loopback.

use grape_client::{Consistency, GrapeClient};
use grape_e2e::jepsen::checker::{self, Report};
use grape_e2e::jepsen::history::{self, Call, Line, Observed, Op, Outcome};
use grape_e2e::jepsen::nemesis::{Fault, Nemesis};
use grape_e2e::jepsen::workload::{self, Clients, DIMENSION, Recorder, Workload};
use grape_e2e::{Cluster, NodeOptions};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// States the linearizability search may visit per key before it gives up (`--budget`).
const BUDGET: usize = 2_000_000;

struct Args {
    seed: u64,
    cycles: usize,
    nodes: usize,
    max_nodes: usize,
    clients: usize,
    keys: usize,
    faults: Vec<Fault>,
    out: PathBuf,
    check: Option<PathBuf>,
    budget: usize,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(1),
        cycles: 10,
        nodes: 3,
        max_nodes: 0,
        clients: 0,
        keys: 12,
        faults: Fault::ALL.to_vec(),
        out: PathBuf::from("target/jepsen"),
        check: None,
        budget: BUDGET,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        let number = |v: String| v.parse::<u64>().map_err(|e| format!("{v}: {e}"));
        match arg.as_str() {
            "--seed" => args.seed = number(value()?)?,
            "--cycles" => args.cycles = number(value()?)? as usize,
            "--nodes" => args.nodes = number(value()?)? as usize,
            "--max-nodes" => args.max_nodes = number(value()?)? as usize,
            "--clients" => args.clients = number(value()?)? as usize,
            "--keys" => args.keys = number(value()?)? as usize,
            "--out" => args.out = PathBuf::from(value()?),
            "--check" => args.check = Some(PathBuf::from(value()?)),
            "--budget" => args.budget = number(value()?)? as usize,
            "--faults" => {
                args.faults = value()?
                    .split(',')
                    .map(|f| {
                        Fault::parse(f).ok_or_else(|| {
                            format!(
                                "unknown fault {f}; known: {}",
                                Fault::ALL.map(|f| f.name()).join(",")
                            )
                        })
                    })
                    .collect::<Result<_, _>>()?
            }
            other => {
                return Err(format!(
                    "unknown argument {other}; use --seed N --cycles N --nodes N --max-nodes N --clients N --keys N --faults a,b --out DIR | --check FILE; --budget N (states per key, default 2000000)"
                ));
            }
        }
    }
    if args.nodes < 3 {
        return Err("--nodes must be at least 3".into());
    }
    if args.max_nodes == 0 {
        args.max_nodes = args.nodes + 1;
    }
    if args.clients == 0 {
        args.clients = 2 * args.nodes;
    }
    Ok(args)
}

fn main() {
    let args = match parse() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let valid = if let Some(file) = &args.check {
        recheck(file, args.budget)
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(run(&args))
    };
    std::process::exit(if valid { 0 } else { 1 });
}

/// Checks a saved history again.
fn recheck(file: &Path, budget: usize) -> bool {
    let lines = match history::load(file) {
        Ok(lines) => lines,
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            return false;
        }
    };
    let ops: Vec<Op> = lines
        .into_iter()
        .filter_map(|l| match l {
            Line::Op(op) => Some(op),
            _ => None,
        })
        .collect();
    let report = check_in_thread(ops, budget);
    print_report(&report);
    report.valid()
}

/// The checker runs on a thread of its own with a large stack and without the runtime.
fn check_in_thread(ops: Vec<Op>, budget: usize) -> Report {
    std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(move || checker::check(&ops, budget))
        .expect("a checker thread")
        .join()
        .expect("the checker")
}

async fn run(args: &Args) -> bool {
    let started = Instant::now();
    eprintln!(
        "grape-jepsen: seed {}, {} nodes (up to {}), {} clients, {} keys, {} cycles of {}",
        args.seed,
        args.nodes,
        args.max_nodes,
        args.clients,
        args.keys,
        args.cycles,
        args.faults
            .iter()
            .map(|f| f.name())
            .collect::<Vec<_>>()
            .join(",")
    );
    let options = NodeOptions::dimension(DIMENSION).setting("DATABASE__SHARD_COUNT", "4");
    let cluster = Cluster::start(args.nodes, options).await;
    let recorder = Recorder::new();
    let targets = Arc::new(Mutex::new(Vec::new()));
    let mut nemesis = Nemesis::new(
        cluster,
        args.seed,
        Arc::clone(&recorder),
        Arc::clone(&targets),
        args.max_nodes,
    );
    let clients = Clients::start(
        Workload {
            clients: args.clients,
            keys: args.keys,
            seed: args.seed,
        },
        Arc::clone(&targets),
        Arc::clone(&recorder),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut cycles: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..args.cycles {
        let (fault, injected) = nemesis.cycle(&args.faults).await;
        let name = if injected {
            fault.name().to_string()
        } else {
            format!("{} (not injected)", fault.name())
        };
        *cycles.entry(name).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    recorder.fault("heal", "start", "every fault ends".into());
    nemesis.heal_all().await;
    recorder.fault("heal", "end", "every member ready".into());
    // A quiet spell of load with every node up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    clients.stop().await;

    let mut problems = Vec::new();
    let members: Vec<(String, GrapeClient)> = nemesis
        .members()
        .iter()
        .map(|i| (format!("node-{i}"), nemesis.cluster.node(*i).client()))
        .collect();
    if let Err(e) = replicas_converged(&members, Duration::from_secs(120)).await {
        problems.push(e);
    }
    // Final strong reads, part of the history: the last value of every key.
    let mut finals = BTreeMap::new();
    for k in 0..args.keys {
        let key = workload::key(k);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (node, client) = &members[k % members.len()];
            let call = Call::Read {
                key: key.clone(),
                strong: true,
            };
            let op = workload::perform(client, &recorder, args.clients, node.clone(), call).await;
            let seen = match &op.observed {
                Some(Observed::Read(value)) if op.outcome == Outcome::Ok => Some(*value),
                _ => None,
            };
            recorder.record(op);
            if let Some(value) = seen {
                finals.insert(key.clone(), value);
                break;
            }
            if Instant::now() > deadline {
                problems.push(format!(
                    "no strong read of {key} succeeded after the faults"
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Eventual reads on every member converge to the final values.
    for (node, client) in &members {
        for (key, expected) in &finals {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let got = match client
                    .default_collection()
                    .get_with(key, Consistency::Eventual)
                    .await
                {
                    Ok(d) => Some(d.metadata.get("v").and_then(|v| v.as_u64())),
                    Err(e) if e.status().is_some_and(|s| s == 404) => Some(None),
                    Err(_) => None,
                };
                if got.as_ref() == Some(expected) {
                    break;
                }
                if Instant::now() > deadline {
                    problems.push(format!(
                        "{node}: eventual read of {key} gives {got:?}, not {expected:?}"
                    ));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    let ops = recorder.ops();
    let faults = recorder.faults();
    let report = check_in_thread(ops.clone(), args.budget);
    print_report(&report);
    print_faults(&ops, &faults, &cycles);
    for problem in &problems {
        println!("PROBLEM: {problem}");
    }
    let valid = report.valid() && problems.is_empty();
    let dir = args.out.join(args.seed.to_string());
    let saved = std::fs::create_dir_all(&dir).and_then(|()| {
        let mut lines = vec![Line::Run {
            seed: args.seed,
            nodes: args.nodes,
            cycles: args.cycles,
        }];
        lines.extend(faults.into_iter().map(Line::Fault));
        lines.extend(ops.into_iter().map(Line::Op));
        history::save(&dir.join("history.jsonl"), &lines)?;
        let summary = serde_json::json!({
            "seed": args.seed,
            "valid": valid,
            "problems": problems,
            "report": report,
            "cycles": cycles,
            "seconds": started.elapsed().as_secs(),
        });
        std::fs::write(
            dir.join("report.json"),
            serde_json::to_string_pretty(&summary).unwrap_or_default(),
        )
    });
    match saved {
        Ok(()) => println!("history and report: {}", dir.display()),
        Err(e) => println!("could not save the history in {}: {e}", dir.display()),
    }
    println!(
        "{} in {} s (seed {}): {}",
        if valid { "VALID" } else { "INVALID" },
        started.elapsed().as_secs(),
        args.seed,
        if valid {
            "no violation found".to_string()
        } else {
            format!(
                "replay the faults with --seed {}, check the history again with --check {}",
                args.seed,
                dir.join("history.jsonl").display()
            )
        }
    );
    valid
}

/// Waits until every replica of every shard, on every member, reports the same checksum, and
/// every shard has at least three replicas (the replication factor).
async fn replicas_converged(
    members: &[(String, GrapeClient)],
    within: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        let mut copies: BTreeMap<(String, u32), Vec<(String, String)>> = BTreeMap::new();
        let mut unanswered = Vec::new();
        for (node, client) in members {
            match client.checksum().await {
                Ok(answer) => {
                    for shard in answer.shards {
                        copies
                            .entry((shard.collection, shard.shard))
                            .or_default()
                            .push((node.clone(), shard.checksum));
                    }
                }
                Err(e) => unanswered.push(format!("{node}: {e}")),
            }
        }
        let diverged: Vec<String> = copies
            .iter()
            .filter(|(_, c)| c.len() < 3 || c.windows(2).any(|w| w[0].1 != w[1].1))
            .map(|((collection, shard), c)| format!("{collection}/{shard}: {c:?}"))
            .collect();
        if unanswered.is_empty() && diverged.is_empty() && !copies.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "replicas did not converge within {within:?}: {diverged:?} {unanswered:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn print_report(report: &Report) {
    println!("| operation | ok | failed | unknown |");
    println!("|---|---:|---:|---:|");
    for (kind, c) in &report.operations {
        println!("| {kind} | {} | {} | {} |", c.ok, c.fail, c.unknown);
    }
    println!();
    println!(
        "keys {}; linearizability violations {}; undecided {}; lost {}; stale or re-applied {}; never written {}; failed writes seen {}",
        report.keys,
        report.violations.len(),
        report.undecided.len(),
        report.lost.len(),
        report.stale.len(),
        report.phantoms.len(),
        report.failed_writes_seen.len()
    );
    for line in report
        .violations
        .iter()
        .chain(&report.lost)
        .chain(&report.stale)
        .chain(&report.phantoms)
        .chain(&report.failed_writes_seen)
        .chain(&report.undecided)
    {
        println!("  {line}");
    }
}

/// Operations invoked while each kind of fault was in force.
fn print_faults(
    ops: &[Op],
    faults: &[grape_e2e::jepsen::history::FaultEvent],
    cycles: &BTreeMap<String, usize>,
) {
    let mut windows: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    let mut open: BTreeMap<String, u64> = BTreeMap::new();
    for event in faults {
        match event.phase.as_str() {
            "start" => {
                open.insert(event.fault.clone(), event.at);
            }
            "end" => {
                if let Some(start) = open.remove(&event.fault) {
                    windows
                        .entry(event.fault.clone())
                        .or_default()
                        .push((start, event.at));
                }
            }
            _ => {}
        }
    }
    println!();
    println!("| fault | cycles | operations during | ok | failed | unknown |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (fault, n) in cycles {
        let spans = windows.get(fault).cloned().unwrap_or_default();
        let during: Vec<&Op> = ops
            .iter()
            .filter(|op| {
                spans
                    .iter()
                    .any(|(a, b)| op.invoke >= *a && op.invoke <= *b)
            })
            .collect();
        let count = |o: Outcome| during.iter().filter(|op| op.outcome == o).count();
        println!(
            "| {fault} | {n} | {} | {} | {} | {} |",
            during.len(),
            count(Outcome::Ok),
            count(Outcome::Fail),
            count(Outcome::Unknown)
        );
    }
}
