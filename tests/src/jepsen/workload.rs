//! The clients: each makes one request at a time against a random live node, on a small key
//! space, and records what it invoked, when, and what came back.

use super::history::{Call, FaultEvent, Observed, Op, Outcome};
use crate::vector;
use grape_client::{
    ClientError, Consistency, DocumentInput, ErrorCode, GrapeClient, SearchRequest,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Dimension of the documents the clients write.
pub const DIMENSION: usize = 4;

/// How long a client waits for an answer before it records the outcome as unknown (the node
/// may still apply it: it waits up to 10 s for a leader).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The history being recorded.
pub struct Recorder {
    start: Instant,
    ops: Mutex<Vec<Op>>,
    faults: Mutex<Vec<FaultEvent>>,
}

impl Recorder {
    pub fn new() -> Arc<Recorder> {
        Arc::new(Recorder {
            start: Instant::now(),
            ops: Mutex::new(Vec::new()),
            faults: Mutex::new(Vec::new()),
        })
    }

    /// Microseconds since the run started.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    pub fn record(&self, op: Op) {
        self.ops.lock().expect("ops").push(op);
    }

    pub fn fault(&self, fault: &str, phase: &str, detail: String) {
        let event = FaultEvent {
            at: self.now(),
            fault: fault.into(),
            phase: phase.into(),
            detail,
        };
        eprintln!(
            "{:>8.1} s  {fault} {phase}: {}",
            event.at as f64 / 1e6,
            event.detail
        );
        self.faults.lock().expect("faults").push(event);
    }

    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().expect("ops").clone()
    }

    pub fn faults(&self) -> Vec<FaultEvent> {
        self.faults.lock().expect("faults").clone()
    }
}

/// The nodes clients may send to: `(node id, API URL)`, kept current by the nemesis.
pub type Targets = Arc<Mutex<Vec<(String, String)>>>;

/// The document of `key` carrying `value` (in its metadata, and as its vector's seed).
pub fn document(key: &str, value: u64) -> DocumentInput {
    DocumentInput {
        id: Some(key.to_string()),
        vector: vector(value, DIMENSION),
        metadata: json!({ "v": value }).as_object().cloned(),
    }
}

/// The outcome an error means: `Fail` only when nothing can have changed.
pub fn outcome_of(error: &ClientError) -> Outcome {
    match error {
        // Never connected: nothing was sent.
        ClientError::Transport(e) if e.is_connect() => Outcome::Fail,
        ClientError::Transport(_) | ClientError::UnexpectedAnswer { .. } => Outcome::Unknown,
        ClientError::Api { status, .. } if status.is_client_error() => Outcome::Fail,
        // Answered before anything was proposed.
        ClientError::Api { .. }
            if matches!(
                error.error_code(),
                Some(ErrorCode::NotReady | ErrorCode::Overloaded)
            ) =>
        {
            Outcome::Fail
        }
        // `no_leader` after a proposal, a peer that went away, a 500: it may have happened.
        ClientError::Api { .. } => Outcome::Unknown,
    }
}

/// Running clients.
pub struct Clients {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Client settings.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    pub clients: usize,
    pub keys: usize,
    pub seed: u64,
}

/// The key of index `k`.
pub fn key(k: usize) -> String {
    format!("k{k}")
}

impl Clients {
    /// Starts `workload.clients` clients recording into `recorder`.
    pub fn start(workload: Workload, targets: Targets, recorder: Arc<Recorder>) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let values = Arc::new(AtomicU64::new(1));
        let http = grape_client::reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(1))
            .build()
            .expect("an HTTP client");
        let tasks = (0..workload.clients)
            .map(|process| {
                let client = Client {
                    process,
                    rng: ChaCha8Rng::seed_from_u64(workload.seed ^ (process as u64 + 1) << 32),
                    keys: workload.keys,
                    targets: Arc::clone(&targets),
                    recorder: Arc::clone(&recorder),
                    values: Arc::clone(&values),
                    http: http.clone(),
                };
                let stop = Arc::clone(&stop);
                tokio::spawn(client.run(stop))
            })
            .collect();
        Clients { stop, tasks }
    }

    /// Stops the clients after their current request.
    pub async fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

struct Client {
    process: usize,
    rng: ChaCha8Rng,
    keys: usize,
    targets: Targets,
    recorder: Arc<Recorder>,
    values: Arc<AtomicU64>,
    http: grape_client::reqwest::Client,
}

impl Client {
    async fn run(mut self, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::SeqCst) {
            let target = {
                let targets = self.targets.lock().expect("targets");
                if targets.is_empty() {
                    None
                } else {
                    Some(targets[self.rng.random_range(0..targets.len())].clone())
                }
            };
            let Some((node, url)) = target else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let call = self.next_call();
            let client = GrapeClient::with_http_client(&url, self.http.clone());
            let op = perform(&client, &self.recorder, self.process, node, call).await;
            let failed = op.outcome != Outcome::Ok;
            self.recorder.record(op);
            if failed {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    fn next_call(&mut self) -> Call {
        let k = self.rng.random_range(0..self.keys);
        let roll = self.rng.random_range(0..100);
        let value = || self.values.fetch_add(1, Ordering::SeqCst);
        match roll {
            0..35 => Call::Write {
                key: key(k),
                value: value(),
            },
            35..45 => {
                let mut keys: Vec<usize> = vec![k, self.rng.random_range(0..self.keys)];
                keys.push(self.rng.random_range(0..self.keys));
                keys.sort();
                keys.dedup();
                Call::Batch {
                    writes: keys.into_iter().map(|k| (key(k), value())).collect(),
                }
            }
            45..50 => Call::Delete { key: key(k) },
            50..85 => Call::Read {
                key: key(k),
                strong: true,
            },
            85..95 => Call::Read {
                key: key(k),
                strong: false,
            },
            _ => Call::Search,
        }
    }
}

/// Sends one request and records what came back.
pub async fn perform(
    client: &GrapeClient,
    recorder: &Recorder,
    process: usize,
    node: String,
    call: Call,
) -> Op {
    let collection = client.default_collection();
    let invoke = recorder.now();
    let result: Result<Option<Observed>, ClientError> = match &call {
        Call::Write { key, value } => collection
            .upsert(&document(key, *value))
            .await
            .map(|_| None),
        Call::Batch { writes } => {
            let documents: Vec<DocumentInput> =
                writes.iter().map(|(k, v)| document(k, *v)).collect();
            collection.upsert_batch(&documents).await.map(|_| None)
        }
        Call::Delete { key } => match collection.delete(key).await {
            Ok(answer) => Ok(Some(Observed::Deleted(answer.deleted))),
            Err(e) if e.error_code() == Some(ErrorCode::DocumentNotFound) => {
                Ok(Some(Observed::Deleted(false)))
            }
            Err(e) => Err(e),
        },
        Call::Read { key, strong } => {
            let consistency = if *strong {
                Consistency::Strong
            } else {
                Consistency::Eventual
            };
            match collection.get_with(key, consistency).await {
                Ok(document) => Ok(Some(Observed::Read(value_of(&document.metadata)))),
                Err(e) if e.error_code() == Some(ErrorCode::DocumentNotFound) => {
                    Ok(Some(Observed::Read(None)))
                }
                Err(e) => Err(e),
            }
        }
        Call::Search => {
            let request = SearchRequest::new(vector(invoke, DIMENSION), 10);
            collection.search(&request).await.map(|answer| {
                Some(Observed::Found(
                    answer
                        .results
                        .into_iter()
                        .map(|hit| (hit.id, value_of(&hit.metadata).unwrap_or(0)))
                        .collect(),
                ))
            })
        }
    };
    let complete = recorder.now();
    let (outcome, observed, error) = match result {
        Ok(observed) => (Outcome::Ok, observed, None),
        Err(e) => (outcome_of(&e), None, Some(e.to_string())),
    };
    Op {
        process,
        node,
        call,
        invoke,
        complete,
        outcome,
        observed,
        error,
    }
}

/// `metadata.v`, the value a document carries.
fn value_of(metadata: &grape_client::Metadata) -> Option<u64> {
    metadata.get("v").and_then(|v| v.as_u64())
}
