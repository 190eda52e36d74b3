//! Benchmark data: a deterministic clustered dataset or `.fvecs` files, and exact ground truth.

use anyhow::{Context, bail};
use grape_client::Metric;
use grape_dataplane::index::distance::{GraphDistance, prepare};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Uniform};
use rayon::prelude::*;
use std::path::Path;

pub struct Dataset {
    pub dimension: usize,
    pub vectors: Vec<Vec<f32>>,
    pub queries: Vec<Vec<f32>>,
}

impl Dataset {
    /// `count` points and `queries` query points around `clusters` centres drawn from N(0, 1)
    /// per coordinate, each point N(centre, sigma). Same seed, same data, on every machine.
    pub fn clustered(
        count: usize,
        dimension: usize,
        clusters: usize,
        sigma: f32,
        queries: usize,
        seed: u64,
    ) -> Dataset {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let unit = Normal::new(0.0f32, 1.0).expect("valid normal");
        let noise = Normal::new(0.0f32, sigma).expect("valid sigma");
        let centres: Vec<Vec<f32>> = (0..clusters.max(1))
            .map(|_| (0..dimension).map(|_| unit.sample(&mut rng)).collect())
            .collect();
        let pick = Uniform::new(0, centres.len()).expect("at least one cluster");
        let point = |rng: &mut ChaCha8Rng| -> Vec<f32> {
            let centre = &centres[pick.sample(rng)];
            centre.iter().map(|c| c + noise.sample(rng)).collect()
        };
        let vectors = (0..count).map(|_| point(&mut rng)).collect();
        let queries = (0..queries).map(|_| point(&mut rng)).collect();
        Dataset {
            dimension,
            vectors,
            queries,
        }
    }

    /// Embedding-like data: `count` and `queries` points of a Gaussian mixture (`clusters`
    /// centres from N(0, 1) per coordinate, points N(centre, 1)) in `low` dimensions, each
    /// mapped to `dimension` components by one fixed random N(0, 1) matrix, plus
    /// N(0, `noise`) per component. Like text embeddings, the vectors are spread over every
    /// component yet lie near a low-dimensional subspace.
    pub fn embedding(
        count: usize,
        dimension: usize,
        low: usize,
        clusters: usize,
        noise: f32,
        queries: usize,
        seed: u64,
    ) -> Dataset {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let unit = Normal::new(0.0f32, 1.0).expect("valid normal");
        let projection: Vec<Vec<f32>> = (0..dimension)
            .map(|_| (0..low).map(|_| unit.sample(&mut rng)).collect())
            .collect();
        let centres: Vec<Vec<f32>> = (0..clusters.max(1))
            .map(|_| (0..low).map(|_| unit.sample(&mut rng)).collect())
            .collect();
        let pick = Uniform::new(0, centres.len()).expect("at least one cluster");
        // Low-dimensional points and per-point noise seeds drawn in order, projected in
        // parallel (the projection is most of the work at 1536 dimensions).
        let total = count + queries;
        let points: Vec<(Vec<f32>, u64)> = (0..total)
            .map(|_| {
                let centre = &centres[pick.sample(&mut rng)];
                let point = centre.iter().map(|c| c + unit.sample(&mut rng)).collect();
                (point, rand::Rng::random(&mut rng))
            })
            .collect();
        let noise = Normal::new(0.0f32, noise.max(0.0)).expect("valid noise");
        let mut vectors: Vec<Vec<f32>> = points
            .par_iter()
            .map(|(point, seed)| {
                let mut rng = ChaCha8Rng::seed_from_u64(*seed);
                projection
                    .iter()
                    .map(|row| {
                        row.iter().zip(point).map(|(a, b)| a * b).sum::<f32>()
                            + noise.sample(&mut rng)
                    })
                    .collect()
            })
            .collect();
        let queries = vectors.split_off(count);
        Dataset {
            dimension,
            vectors,
            queries,
        }
    }

    /// Base vectors from an `.fvecs` file; queries from a second file, or the last `queries`
    /// base vectors (removed from the base).
    pub fn from_fvecs(
        base: &Path,
        queries_file: Option<&Path>,
        queries: usize,
    ) -> anyhow::Result<Dataset> {
        let mut vectors = read_fvecs(base)?;
        let queries = match queries_file {
            Some(path) => read_fvecs(path)?,
            None => {
                if vectors.len() <= queries {
                    bail!("{} has only {} vectors", base.display(), vectors.len());
                }
                vectors.split_off(vectors.len() - queries)
            }
        };
        let dimension = vectors.first().map(Vec::len).unwrap_or(0);
        Ok(Dataset {
            dimension,
            vectors,
            queries,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.vectors.is_empty()
    }

    pub fn len(&self) -> usize {
        self.vectors.len()
    }

    /// Exact top-`k` base indexes of every query under `metric`, nearest first.
    pub fn ground_truth(&self, metric: Metric, k: usize) -> Vec<Vec<usize>> {
        self.ground_truth_where(metric, k, |_| true)
    }

    /// The exact `k` nearest of each query among the vectors whose position `keep` accepts.
    pub fn ground_truth_where(
        &self,
        metric: Metric,
        k: usize,
        keep: impl Fn(usize) -> bool + Sync,
    ) -> Vec<Vec<usize>> {
        let distance = GraphDistance::new(metric);
        let base: Vec<Vec<f32>> = self
            .vectors
            .par_iter()
            .map(|v| prepare(metric, v).unwrap_or_else(|| v.clone()))
            .collect();
        self.queries
            .par_iter()
            .map(|q| {
                let q = prepare(metric, q).unwrap_or_else(|| q.clone());
                let mut best: Vec<(f32, usize)> = Vec::with_capacity(k + 1);
                for (i, v) in base.iter().enumerate() {
                    if !keep(i) {
                        continue;
                    }
                    let d = distance.distance(&q, v);
                    if best.len() < k || d < best[best.len() - 1].0 {
                        let at = best.partition_point(|(bd, _)| *bd <= d);
                        best.insert(at, (d, i));
                        best.truncate(k);
                    }
                }
                best.into_iter().map(|(_, i)| i).collect()
            })
            .collect()
    }
}

/// Reads the `.fvecs` format: per vector, a little-endian i32 dimension then that many f32.
pub fn read_fvecs(path: &Path) -> anyhow::Result<Vec<Vec<f32>>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut vectors = Vec::new();
    let mut at = 0;
    while at + 4 <= bytes.len() {
        let dimension =
            i32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
        at += 4;
        let end = at + dimension * 4;
        if dimension == 0 || end > bytes.len() {
            bail!(
                "{} is not an .fvecs file (bad record at byte {})",
                path.display(),
                at - 4
            );
        }
        vectors.push(
            bytes[at..end]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        );
        at = end;
    }
    Ok(vectors)
}

/// Reads the `.ivecs` format (ground truth): per row, a little-endian i32 count then that many
/// i32.
pub fn read_ivecs(path: &Path) -> anyhow::Result<Vec<Vec<usize>>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut rows = Vec::new();
    let mut at = 0;
    while at + 4 <= bytes.len() {
        let n = i32::from_le_bytes(bytes[at..at + 4].try_into()?) as usize;
        at += 4;
        if at + 4 * n > bytes.len() {
            bail!("{} is truncated", path.display());
        }
        rows.push(
            bytes[at..at + 4 * n]
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize)
                .collect(),
        );
        at += 4 * n;
    }
    Ok(rows)
}
