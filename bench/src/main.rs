//! `grape-bench`: loads a dataset into a Grape node through the HTTP API and measures ingest
//! throughput, search QPS and latency at several client counts, recall@10 against exact brute
//! force, and the same index searched in-process (no HTTP), then writes a report.
//!
//! By default it starts a node in this process (a temporary data directory, a loopback port)
//! so that the in-process numbers use the very index the HTTP numbers used. `--url` measures
//! an external node instead (HTTP numbers only). `--process` starts a `grape` process (the
//! binary at `GRAPE_BIN`, or the workspace's build) and adds its resident memory, and with
//! `--restart` the time it takes to stop and start again with its saved graphs, and without.

use anyhow::{Context, bail};
use clap::Parser;
use grape_bench::dataset::Dataset;
use grape_client::{
    CollectionConfig, DocumentInput, Filter, GrapeClient, HnswParams, Metric, PayloadIndex,
    PayloadIndexKind, Quantization, SearchRequest,
};
use grape_dataplane::cluster::Node;
use grape_dataplane::cluster::route::catalog;
use grape_dataplane::collection::{merge_hits, search_shard};
use grape_dataplane::config::Config;
use grape_dataplane::index::GraphEngine;
use grape_dataplane::shard::filter::FilterLimits;
use grape_e2e::{GrapeNode, NodeOptions};

/// The benchmark's filters have one condition.
const FILTER_LIMITS: FilterLimits = FilterLimits {
    conditions: 1,
    values: 0,
};

/// Every document carries `bucket` = its position modulo this.
const BUCKETS: usize = 100;
use grape_dataplane::server::InProcessNode;
use rayon::prelude::*;
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Parser, Serialize)]
#[command(name = "grape-bench", about = "Grape ingest/search benchmark")]
struct Args {
    /// Documents to load (ignored with --fvecs).
    #[arg(long, default_value_t = 100_000)]
    count: usize,
    /// Vector dimension (ignored with --fvecs).
    #[arg(long, default_value_t = 128)]
    dim: usize,
    /// Gaussian clusters the synthetic data is drawn from.
    #[arg(long, default_value_t = 100)]
    clusters: usize,
    /// Standard deviation of points around their cluster centre.
    #[arg(long, default_value_t = 0.3)]
    sigma: f32,
    /// Queries (drawn like the data, never in it).
    #[arg(long, default_value_t = 1000)]
    queries: usize,
    /// Seed of the synthetic data.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Read base vectors from an .fvecs file instead of generating them.
    #[arg(long)]
    fvecs: Option<std::path::PathBuf>,
    /// Read queries from an .fvecs file (with --fvecs; default: the last --queries base vectors).
    #[arg(long)]
    query_fvecs: Option<std::path::PathBuf>,
    /// Collection metric.
    #[arg(long, default_value = "l2")]
    metric: String,
    /// Shards of the benchmark collection.
    #[arg(long, default_value_t = 2)]
    shards: u32,
    /// HNSW links per node.
    #[arg(long, default_value_t = 16)]
    m: usize,
    /// HNSW build breadth.
    #[arg(long, default_value_t = 200)]
    ef_construction: usize,
    /// Search breadth; default: the collection default.
    #[arg(long)]
    ef_search: Option<usize>,
    /// Neighbours per query.
    #[arg(long, default_value_t = 10)]
    top_k: usize,
    /// Documents per batch request.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Concurrent batch loaders.
    #[arg(long, default_value_t = 4)]
    loaders: usize,
    /// Client counts to measure search at.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    clients: Vec<usize>,
    /// Seconds each search measurement runs.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Graph engine of the in-process node (`index.graph`): `hnsw_rs` or `grape`.
    #[arg(long, default_value = "grape")]
    graph: String,
    /// Measure external nodes at these URLs (comma-separated; load is spread over them)
    /// instead of an in-process node.
    #[arg(long, value_delimiter = ',')]
    url: Vec<String>,
    /// Replicas per shard of the benchmark collection.
    #[arg(long, default_value_t = 1)]
    replication_factor: u32,
    /// API key for --url.
    #[arg(long)]
    api_key: Option<String>,
    /// Write the JSON report here.
    #[arg(long, default_value = "bench-report.json")]
    report: std::path::PathBuf,
    /// Run the node as a `grape` process (GRAPE_BIN, or the workspace's build) on a temporary
    /// data directory: adds its resident memory; no in-process rows.
    #[arg(long)]
    process: bool,
    /// With --process, after the searches: stop the node cleanly and start it again, timing
    /// the stop, the start until ready and until every graph is complete; then once more
    /// with graph saving off (the graphs built from the documents), for comparison.
    #[arg(long)]
    restart: bool,
    /// Filtered searches to measure after the unfiltered ones, by the share of documents the
    /// filter keeps (`bucket < share x 100`; each document's bucket is its position mod 100).
    #[arg(long, value_delimiter = ',')]
    filters: Vec<f64>,
    /// Create the collection with a numeric payload index on `bucket`.
    #[arg(long)]
    payload_index: bool,
    /// Synthetic data: `clustered` (Gaussian clusters in every dimension) or `embedding` (a
    /// mixture in --low-dim dimensions projected up to --dim, with --noise).
    #[arg(long, default_value = "clustered")]
    data: String,
    /// With --data embedding: dimensions of the mixture.
    #[arg(long, default_value_t = 32)]
    low_dim: usize,
    /// With --data embedding: standard deviation of the noise added per component.
    #[arg(long, default_value_t = 1.0)]
    noise: f32,
    /// The collection's quantization: none, scalar or binary.
    #[arg(long, default_value = "none")]
    quantization: String,
    /// Where a quantized collection keeps full vectors (`index.quantized_originals`):
    /// memory or disk.
    #[arg(long, default_value = "memory")]
    originals: String,
}

#[derive(Debug, Serialize)]
struct FilteredFigures {
    /// The share of documents the filter keeps.
    selectivity: f64,
    search: Vec<SearchFigures>,
}

#[derive(Debug, Serialize)]
struct MemoryFigures {
    /// Resident memory of the node process once every graph is complete.
    rss_mb: f64,
    /// Its peak since start.
    peak_mb: f64,
    /// The raw vectors: count x dimension x 4 bytes.
    raw_vectors_mb: f64,
    /// What the node's shard stats count for the vectors in memory (`vector_bytes`: full
    /// vectors and codes, not graph links).
    vector_mb: f64,
}

#[derive(Debug, Serialize)]
struct RestartFigures {
    /// Whether the node loaded saved graphs (or built them from the documents).
    saved_graphs: bool,
    /// SIGTERM to exit (a clean stop saves changed graphs).
    stop_seconds: f64,
    /// Start of the process to `/ready`.
    ready_seconds: f64,
    /// Start of the process until no document waits for a graph.
    graphs_complete_seconds: f64,
    /// Graph entries loaded from saved graphs.
    graph_loaded: u64,
    /// Resident memory once the graphs are complete.
    rss_mb: f64,
    /// Searches right after, 1 client.
    search: SearchFigures,
}

#[derive(Debug, Serialize)]
struct SearchFigures {
    mode: &'static str,
    clients: usize,
    queries: usize,
    qps: f64,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    recall_at_k: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    args: Args,
    machine: String,
    documents: usize,
    dimension: usize,
    ef_search: usize,
    ground_truth_seconds: f64,
    ingest_seconds: f64,
    ingest_docs_per_second: f64,
    index_complete_seconds: f64,
    search: Vec<SearchFigures>,
    memory: Option<MemoryFigures>,
    restarts: Vec<RestartFigures>,
    filtered: Vec<FilteredFigures>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let metric = match args.metric.as_str() {
        "l2" => Metric::L2,
        "cosine" => Metric::Cosine,
        "dot" => Metric::Dot,
        other => bail!("--metric {other}: use l2, cosine or dot"),
    };
    let quantization: Quantization = serde_json::from_value(serde_json::json!(args.quantization))
        .context("--quantization must be none, scalar or binary")?;
    eprintln!("preparing data...");
    let data = match &args.fvecs {
        Some(path) => Dataset::from_fvecs(path, args.query_fvecs.as_deref(), args.queries)?,
        None if args.data == "embedding" => Dataset::embedding(
            args.count,
            args.dim,
            args.low_dim,
            args.clusters,
            args.noise,
            args.queries,
            args.seed,
        ),
        None if args.data != "clustered" => {
            bail!("--data {}: use clustered or embedding", args.data)
        }
        None => Dataset::clustered(
            args.count,
            args.dim,
            args.clusters,
            args.sigma,
            args.queries,
            args.seed,
        ),
    };
    let started = Instant::now();
    let truth = data.ground_truth(metric, args.top_k);
    let ground_truth_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "{} vectors x {} dims, {} queries; exact top-{} in {ground_truth_seconds:.1}s",
        data.len(),
        data.dimension,
        data.queries.len(),
        args.top_k
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut process = None;
    // The node under test, in its own runtime, as the `grape` binary would run it.
    let (clients, node, _server) = if args.process {
        let grape = runtime.block_on(GrapeNode::start(process_options(&args, data.dimension)));
        let client = grape.client();
        process = Some(grape);
        (vec![client], None, None)
    } else if args.url.is_empty() {
        let engine: GraphEngine = serde_json::from_value(serde_json::json!(args.graph))
            .context("--graph must be hnsw_rs or grape")?;
        let (url, node, server) = EmbeddedNode::start(data.dimension, engine)?;
        (vec![GrapeClient::new(&url)], Some(node), Some(server))
    } else {
        let clients = args
            .url
            .iter()
            .map(|url| match &args.api_key {
                Some(key) => GrapeClient::new(url).with_api_key(key),
                None => GrapeClient::new(url),
            })
            .collect();
        (clients, None, None)
    };
    let collection = CollectionConfig {
        metric,
        shard_count: args.shards,
        replication_factor: args.replication_factor,
        hnsw: HnswParams {
            m: args.m,
            ef_construction: args.ef_construction,
            ef_search: args.ef_search.unwrap_or(HnswParams::default().ef_search),
        },
        payload_indexes: if args.payload_index {
            vec![PayloadIndex {
                key: "bucket".into(),
                kind: PayloadIndexKind::Numeric,
            }]
        } else {
            Vec::new()
        },
        quantization,
        ..CollectionConfig::new("bench", data.dimension)
    };
    let ef_search = collection.hnsw.ef_search;
    let (ingest_seconds, index_complete_seconds) =
        runtime.block_on(load(&clients, &collection, &data, &args))?;
    let ingest_docs_per_second = data.len() as f64 / ingest_seconds;
    eprintln!(
        "ingest: {ingest_docs_per_second:.0} docs/s ({ingest_seconds:.1}s); graph complete after {index_complete_seconds:.1}s"
    );

    let mb = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    let vector_bytes: u64 = runtime
        .block_on(clients[0].shard_stats())?
        .shards
        .iter()
        .filter(|s| s.collection == "bench")
        .map(|s| s.vector_bytes)
        .sum();
    let memory = process
        .as_ref()
        .and_then(GrapeNode::memory)
        .map(|(rss, peak)| {
            let figures = MemoryFigures {
                rss_mb: mb(rss),
                peak_mb: mb(peak),
                raw_vectors_mb: mb((data.len() * data.dimension * 4) as u64),
                vector_mb: mb(vector_bytes),
            };
            eprintln!("{figures:?}");
            figures
        });

    let nodes = clients;
    let measure =
        |filter: Option<&Filter>, truth: &[Vec<usize>]| -> anyhow::Result<Vec<SearchFigures>> {
            let mut search = Vec::new();
            for &clients in &args.clients {
                let figures =
                    runtime.block_on(http_search(&nodes, &data, truth, clients, &args, filter))?;
                eprintln!("{figures:?}");
                search.push(figures);
                if let Some(node) = &node {
                    let figures = in_process_search(node, &data, truth, clients, &args, filter)?;
                    eprintln!("{figures:?}");
                    search.push(figures);
                }
            }
            Ok(search)
        };
    let search = measure(None, &truth)?;
    let mut filtered = Vec::new();
    for &selectivity in &args.filters {
        let below = (selectivity * BUCKETS as f64).round();
        let truth = data.ground_truth_where(metric, args.top_k, |i| ((i % BUCKETS) as f64) < below);
        let filter: Filter = serde_json::from_value(
            serde_json::json!({"must": [{"key": "bucket", "range": {"lt": below}}]}),
        )?;
        eprintln!(
            "filter keeping {selectivity}: {}",
            serde_json::to_string(&filter)?
        );
        filtered.push(FilteredFigures {
            selectivity,
            search: measure(Some(&filter), &truth)?,
        });
    }

    let mut restarts = Vec::new();
    if let (Some(grape), true) = (process.as_mut(), args.restart) {
        for saved_graphs in [true, false] {
            if !saved_graphs {
                grape.set_options(
                    process_options(&args, data.dimension)
                        .setting("INDEX__GRAPH_SAVE_INTERVAL_SECS", "0"),
                );
            }
            let figures = runtime.block_on(restart(grape, saved_graphs, &data, &truth, &args))?;
            eprintln!("{figures:?}");
            restarts.push(figures);
        }
    }

    let report = Report {
        machine: machine(),
        documents: data.len(),
        dimension: data.dimension,
        ef_search,
        ground_truth_seconds,
        ingest_seconds,
        ingest_docs_per_second,
        index_complete_seconds,
        search,
        memory,
        restarts,
        filtered,
        args: args.clone(),
    };
    std::fs::write(&args.report, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("cannot write {}", args.report.display()))?;
    println!("{}", markdown(&report));
    Ok(())
}

/// Settings of a `grape` process under test.
fn process_options(args: &Args, dimension: usize) -> NodeOptions {
    NodeOptions::dimension(dimension)
        .setting("PERFORMANCE__MAX_BATCH_SIZE", "10000")
        .setting("INDEX__GRAPH", &args.graph)
        .setting("INDEX__QUANTIZED_ORIGINALS", &args.originals)
}

/// Stops the process cleanly and starts it again, timing each step.
async fn restart(
    grape: &mut GrapeNode,
    saved_graphs: bool,
    data: &Dataset,
    truth: &[Vec<usize>],
    args: &Args,
) -> anyhow::Result<RestartFigures> {
    let stopping = Instant::now();
    grape.terminate();
    let stop_seconds = stopping.elapsed().as_secs_f64();
    let starting = Instant::now();
    grape.restart().await;
    let ready_seconds = starting.elapsed().as_secs_f64();
    let client = grape.client();
    let (graphs_complete_seconds, graph_loaded) = loop {
        let shards = client.shard_stats().await?.shards;
        let bench = shards.iter().filter(|s| s.collection == "bench");
        if bench.clone().all(|s| s.pending == 0) {
            break (
                starting.elapsed().as_secs_f64(),
                bench.map(|s| s.graph_loaded).sum(),
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let rss_mb = grape
        .memory()
        .map_or(0.0, |(rss, _)| rss as f64 / (1 << 20) as f64);
    let search = http_search(&[client], data, truth, 1, args, None).await?;
    Ok(RestartFigures {
        saved_graphs,
        stop_seconds,
        ready_seconds,
        graphs_complete_seconds,
        graph_loaded,
        rss_mb,
        search,
    })
}

/// A node served from this process on a loopback port, with a temporary data directory.
struct EmbeddedNode {
    /// Stopped (and the node shut down) when this is dropped.
    node: Option<InProcessNode>,
    runtime: tokio::runtime::Runtime,
    _data: tempfile::TempDir,
}

impl EmbeddedNode {
    fn start(
        dimension: usize,
        engine: GraphEngine,
    ) -> anyhow::Result<(String, Arc<Node>, EmbeddedNode)> {
        let data = tempfile::tempdir()?;
        let mut config = Config::default();
        config.node.data_dir = data.path().to_path_buf();
        config.node.listen_address = "127.0.0.1:0".into();
        config.node.raft_address = "127.0.0.1:0".into();
        config.monitoring.enable_metrics = false;
        config.database.vector_dimension = dimension;
        config.performance.max_batch_size = 10_000;
        config.index.graph = engine;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let node = runtime.block_on(InProcessNode::start(config))?;
        Ok((
            node.url().to_string(),
            Arc::clone(node.node()),
            EmbeddedNode {
                node: Some(node),
                runtime,
                _data: data,
            },
        ))
    }
}

impl Drop for EmbeddedNode {
    fn drop(&mut self) {
        if let Some(node) = self.node.take()
            && let Err(error) = self.runtime.block_on(node.stop())
        {
            eprintln!("stopping the node: {error:#}");
        }
    }
}

/// Creates the collection, loads every vector in batches from `loaders` concurrent clients,
/// and waits until every document is in an HNSW graph. Returns (ingest seconds, seconds until
/// the graphs were complete), both from the first request.
async fn load(
    clients: &[GrapeClient],
    collection: &CollectionConfig,
    data: &Dataset,
    args: &Args,
) -> anyhow::Result<(f64, f64)> {
    let client = &clients[0];
    let _ = client.delete_collection(&collection.name).await;
    client.create_collection(collection).await?;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    let batches = data.len().div_ceil(args.batch);
    let data = Arc::new(data.vectors.clone());
    for loader in 0..args.loaders.max(1) {
        let client = clients[loader % clients.len()].clone();
        let next = Arc::clone(&next);
        let data = Arc::clone(&data);
        let name = collection.name.clone();
        let batch = args.batch;
        tasks.push(tokio::spawn(async move {
            loop {
                let b = next.fetch_add(1, Ordering::Relaxed);
                if b >= batches {
                    return Ok::<_, anyhow::Error>(());
                }
                let documents: Vec<DocumentInput> = (b * batch..((b + 1) * batch).min(data.len()))
                    .map(|i| DocumentInput {
                        id: Some(i.to_string()),
                        vector: data[i].clone(),
                        metadata: Some(
                            serde_json::json!({"i": i, "bucket": i % BUCKETS})
                                .as_object()
                                .cloned()
                                .unwrap_or_default(),
                        ),
                    })
                    .collect();
                client.collection(&name).upsert_batch(&documents).await?;
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    let ingest = started.elapsed().as_secs_f64();
    loop {
        let stats = client.shard_stats().await?;
        let pending: u64 = stats
            .shards
            .iter()
            .filter(|s| s.collection == collection.name)
            .map(|s| s.pending)
            .sum();
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((ingest, started.elapsed().as_secs_f64()))
}

fn recall(found: &[String], truth: &[usize]) -> usize {
    found
        .iter()
        .filter(|id| id.parse::<usize>().is_ok_and(|i| truth.contains(&i)))
        .count()
}

/// Runs `clients` concurrent HTTP searchers for `args.seconds`.
async fn http_search(
    nodes: &[GrapeClient],
    data: &Dataset,
    truth: &[Vec<usize>],
    clients: usize,
    args: &Args,
    filter: Option<&Filter>,
) -> anyhow::Result<SearchFigures> {
    let queries = Arc::new(data.queries.clone());
    let truth = Arc::new(truth.to_vec());
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = nodes[c % nodes.len()].clone();
        let queries = Arc::clone(&queries);
        let truth = Arc::clone(&truth);
        let (top_k, ef, filter) = (args.top_k, args.ef_search, filter.cloned());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let (mut hits, mut asked) = (0usize, 0usize);
            let mut q = c * queries.len() / clients.max(1);
            while Instant::now() < deadline {
                let request = SearchRequest {
                    ef,
                    filter: filter.clone(),
                    ..SearchRequest::new(queries[q].clone(), top_k)
                };
                let t = Instant::now();
                let response = client.collection("bench").search(&request).await?;
                latencies.push(t.elapsed());
                let ids: Vec<String> = response.results.into_iter().map(|r| r.id).collect();
                hits += recall(&ids, &truth[q]);
                asked += truth[q].len();
                q = (q + 1) % queries.len();
            }
            Ok::<_, anyhow::Error>((latencies, hits, asked))
        }));
    }
    let mut latencies = Vec::new();
    let (mut hits, mut asked) = (0, 0);
    for task in tasks {
        let (l, h, a) = task.await??;
        latencies.extend(l);
        hits += h;
        asked += a;
    }
    Ok(figures(
        "http",
        clients,
        started.elapsed(),
        latencies,
        hits,
        asked,
    ))
}

/// The same searches straight into the node's shard replicas (no HTTP, no async runtime),
/// from `clients` threads.
fn in_process_search(
    node: &Arc<Node>,
    data: &Dataset,
    truth: &[Vec<usize>],
    clients: usize,
    args: &Args,
    filter: Option<&Filter>,
) -> anyhow::Result<SearchFigures> {
    let collection = catalog::collection(node, "bench")?;
    let shards: Vec<_> = node
        .replicas()
        .all()
        .into_iter()
        .filter(|g| g.collection.uid == collection.uid)
        .map(|g| Arc::clone(&g.shard))
        .collect();
    anyhow::ensure!(
        shards.len() == collection.config.shard_count as usize,
        "not every shard is local"
    );
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let results = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..clients)
            .map(|c| {
                let (collection, shards, stop) = (&collection, &shards, &stop);
                scope.spawn(move || -> anyhow::Result<_> {
                    let mut latencies = Vec::new();
                    let (mut hits, mut asked) = (0usize, 0usize);
                    let mut q = c * data.queries.len() / clients.max(1);
                    while !stop.load(Ordering::Relaxed) {
                        let request = SearchRequest {
                            ef: args.ef_search,
                            filter: filter.cloned(),
                            ..SearchRequest::new(data.queries[q].clone(), args.top_k)
                        };
                        let t = Instant::now();
                        let prepared = collection.prepare_search(&request, FILTER_LIMITS, None)?;
                        let found = shards
                            .par_iter()
                            .map(|shard| search_shard(shard, &prepared))
                            .collect::<Result<Vec<_>, _>>()?
                            .into_iter()
                            .flatten()
                            .collect();
                        let found = merge_hits(found, args.top_k);
                        latencies.push(t.elapsed());
                        let ids: Vec<String> =
                            found.into_iter().map(|h| h.id.to_string()).collect();
                        hits += recall(&ids, &truth[q]);
                        asked += truth[q].len();
                        q = (q + 1) % data.queries.len();
                    }
                    Ok((latencies, hits, asked))
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs_f64(args.seconds));
        stop.store(true, Ordering::Relaxed);
        workers.into_iter().map(|w| w.join()).collect::<Vec<_>>()
    });
    let elapsed = started.elapsed();
    let mut latencies = Vec::new();
    let (mut hits, mut asked) = (0, 0);
    for result in results {
        let (l, h, a) = result.map_err(|_| anyhow::anyhow!("a search thread panicked"))??;
        latencies.extend(l);
        hits += h;
        asked += a;
    }
    Ok(figures(
        "in-process",
        clients,
        elapsed,
        latencies,
        hits,
        asked,
    ))
}

fn figures(
    mode: &'static str,
    clients: usize,
    elapsed: Duration,
    mut latencies: Vec<Duration>,
    hits: usize,
    asked: usize,
) -> SearchFigures {
    latencies.sort();
    let pick = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    };
    SearchFigures {
        mode,
        clients,
        queries: latencies.len(),
        qps: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: pick(0.50),
        p95_ms: pick(0.95),
        p99_ms: pick(0.99),
        recall_at_k: hits as f64 / asked.max(1) as f64,
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} cores, {cpu}")
}

fn markdown(report: &Report) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "Machine: {}\nNodes: {}\nGraph engine: {}\nData: {} x {} ({}, {}), M={}, ef_construction={}, ef_search={}, shards={}, replication factor {}, quantization {} (full vectors in {})\n\n",
        report.machine,
        if report.args.process { "1 (a grape process)".to_string() } else if report.args.url.is_empty() { "1 (in-process)".to_string() } else { report.args.url.join(", ") },
        if report.args.url.is_empty() { report.args.graph.as_str() } else { "as configured on the nodes" },
        report.documents,
        report.dimension,
        report.args.metric,
        report.args.data,
        report.args.m,
        report.args.ef_construction,
        report.ef_search,
        report.args.shards,
        report.args.replication_factor,
        report.args.quantization,
        report.args.originals
    ));
    out.push_str(&format!(
        "Ingest: {:.0} docs/s acknowledged ({} docs in {:.1} s, batches of {}, {} loaders); graphs complete {:.1} s after the first write\n\n",
        report.ingest_docs_per_second, report.documents, report.ingest_seconds, report.args.batch, report.args.loaders, report.index_complete_seconds
    ));
    out.push_str("| mode | clients | queries | QPS | p50 ms | p95 ms | p99 ms | recall@k |\n|---|---|---|---|---|---|---|---|\n");
    for s in &report.search {
        out.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.4} |\n",
            s.mode, s.clients, s.queries, s.qps, s.p50_ms, s.p95_ms, s.p99_ms, s.recall_at_k
        ));
    }
    if let Some(m) = &report.memory {
        out.push_str(&format!(
            "\nResident memory of the node process with every graph complete: {:.0} MiB (peak {:.0} MiB); the raw vectors are {:.0} MiB ({:.2}x); vectors and codes in memory (shard stats): {:.0} MiB, {:.0} bytes per vector\n",
            m.rss_mb, m.peak_mb, m.raw_vectors_mb, m.rss_mb / m.raw_vectors_mb.max(1e-9),
            m.vector_mb, m.vector_mb * (1 << 20) as f64 / report.documents.max(1) as f64
        ));
    }
    if !report.filtered.is_empty() {
        out.push_str(&format!(
            "\nFiltered searches (`bucket < share x 100`), payload index on `bucket`: {}\n\n| share kept | mode | clients | QPS | p50 ms | p99 ms | recall@k |\n|---|---|---|---|---|---|---|\n",
            if report.args.payload_index { "yes" } else { "no" }
        ));
        for f in &report.filtered {
            for s in &f.search {
                out.push_str(&format!(
                    "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.4} |\n",
                    f.selectivity, s.mode, s.clients, s.qps, s.p50_ms, s.p99_ms, s.recall_at_k
                ));
            }
        }
    }
    if !report.restarts.is_empty() {
        out.push_str("\n| restart | stop s | start to ready s | start to graphs complete s | graph entries loaded | RSS MiB | QPS after (1 client) | recall@k after |\n|---|---|---|---|---|---|---|---|\n");
        for r in &report.restarts {
            out.push_str(&format!(
                "| {} | {:.1} | {:.1} | {:.1} | {} | {:.0} | {:.0} | {:.4} |\n",
                if r.saved_graphs {
                    "with saved graphs"
                } else {
                    "graph saving off (built from the documents)"
                },
                r.stop_seconds,
                r.ready_seconds,
                r.graphs_complete_seconds,
                r.graph_loaded,
                r.rss_mb,
                r.search.qps,
                r.search.recall_at_k
            ));
        }
    }
    out
}
