//! `grape-index`: Grape's index layer alone, in-process: builds a shard index from an `.fvecs`
//! file the way a shard does (vectors appended, then moved into the HNSW graph by the
//! maintainer) and searches it on one thread at several `ef`, reporting recall@10 against an
//! `.ivecs` ground truth and queries per second, as one JSON object, with the resident memory
//! the index added. `bench/compare_hnswlib.py` runs it beside hnswlib on the same files. With
//! `--quantization`, the graph holds codes and the full vectors stay in memory or go to an
//! unnamed file in the temporary directory (`--originals`), as `index.quantized_originals`.

use anyhow::bail;
use clap::Parser;
use grape_bench::dataset::{read_fvecs, read_ivecs};
use grape_client::{HnswParams, Metric, Quantization};
use grape_dataplane::index::distance::prepare;
use grape_dataplane::index::{GraphEngine, IndexOptions, OriginalsPlace, VectorIndex};
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long)]
    base: PathBuf,
    #[arg(long)]
    queries: PathBuf,
    /// Exact neighbours of each query (at least 10 per row).
    #[arg(long)]
    truth: PathBuf,
    /// `l2`, `cosine` or `dot`.
    #[arg(long, default_value = "l2")]
    metric: String,
    #[arg(long, default_value_t = 16)]
    m: usize,
    #[arg(long, default_value_t = 200)]
    ef_construction: usize,
    /// Graph engine: `hnsw_rs` or `grape`.
    #[arg(long, default_value = "grape")]
    graph: String,
    /// Threads inserting into the graph (Grape's engine; hnsw_rs inserts on one).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Timed passes over the queries at each ef (recall comes from the first).
    #[arg(long, default_value_t = 1)]
    passes: usize,
    /// Search breadths to measure.
    #[arg(long, value_delimiter = ',', default_value = "32,64,128,256")]
    ef: Vec<usize>,
    /// `none`, `scalar` or `binary`.
    #[arg(long, default_value = "none")]
    quantization: String,
    /// Where a quantized index keeps full vectors: `memory` or `disk`.
    #[arg(long, default_value = "memory")]
    originals: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let metric: Metric = serde_json::from_value(json!(args.metric))?;
    let engine: GraphEngine = serde_json::from_value(json!(args.graph))?;
    let quantization: Quantization = serde_json::from_value(json!(args.quantization))?;
    let originals: OriginalsPlace = serde_json::from_value(json!(args.originals))?;
    let build_threads = match engine {
        GraphEngine::HnswRs => 1,
        GraphEngine::Grape => args.threads.max(1),
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(build_threads)
        .build()?;
    let base = read_fvecs(&args.base)?;
    let queries = read_fvecs(&args.queries)?;
    let truth = read_ivecs(&args.truth)?;
    if truth.len() != queries.len() || truth.iter().any(|t| t.len() < 10) {
        bail!(
            "the ground truth needs 10 neighbours for each of {} queries",
            queries.len()
        );
    }
    let dimension = base.first().map(Vec::len).unwrap_or(0);
    let params = HnswParams {
        m: args.m,
        ef_construction: args.ef_construction,
        ef_search: 128,
    };
    let options = IndexOptions {
        engine,
        rebuild_threshold: usize::MAX,
        quantized_originals: originals,
        ..Default::default()
    };
    let before = resident_bytes();
    let index = VectorIndex::quantized(
        dimension,
        metric,
        params,
        options,
        quantization,
        Some(&std::env::temp_dir()),
    );
    let prepared = |v: &Vec<f32>| prepare(metric, v).unwrap_or_else(|| v.clone());
    let start = Instant::now();
    for vector in &base {
        index.add(&prepared(vector));
    }
    // As a node does: the maintainer runs on the index pool, whose threads Grape's graph
    // inserts on, in steps.
    pool.install(|| while index.maintain(4096) > 0 {});
    let build_seconds = start.elapsed().as_secs_f64();
    let index_mb = resident_bytes().saturating_sub(before) as f64 / (1 << 20) as f64;
    let queries: Vec<Vec<f32>> = queries.iter().map(prepared).collect();

    let mut results = Vec::new();
    for &ef in &args.ef {
        // A hundred untimed queries warm caches, then the timed passes.
        for q in queries.iter().take(100) {
            std::hint::black_box(index.search(q, 10, ef, None));
        }
        let start = Instant::now();
        let mut found = Vec::with_capacity(queries.len());
        for q in &queries {
            found.push(index.search(q, 10, ef, None));
        }
        for _ in 1..args.passes {
            for q in &queries {
                std::hint::black_box(index.search(q, 10, ef, None));
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        let hits: usize = found
            .iter()
            .zip(&truth)
            .map(|(f, t)| f.iter().filter(|c| t[..10].contains(&c.id)).count())
            .sum();
        results.push(json!({
            "ef": ef,
            "recall": hits as f64 / (10 * queries.len()) as f64,
            "qps": (queries.len() * args.passes.max(1)) as f64 / seconds,
        }));
    }
    println!(
        "{}",
        json!({
            "library": match quantization {
                Quantization::None => format!("grape ({})", args.graph),
                _ => format!(
                    "grape ({}, {}, full vectors in {})",
                    args.graph, args.quantization, args.originals
                ),
            },
            "build_seconds": build_seconds,
            "build_threads": build_threads,
            "index_mb": index_mb,
            "results": results,
        })
    );
    Ok(())
}

/// This process's resident memory (`VmRSS`), in bytes.
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib * 1024)
}
