//! What Grape's graph stores per node and compares: full `f32` vectors, or quantized codes
//! (a collection's `quantization`), each a whole number of 32-bit words:
//!
//! ```text
//!   float   dimension x f32                                     4 bytes per component
//!   scalar  sum of codes (u32) | dimension x u8, padded to a word  1 byte per component
//!   binary  dimension bits, padded to a word                    1 bit per component
//! ```
//!
//! Scalar codes map each component linearly onto 0..=255 between two bounds learnt from the
//! shard's vectors (the 0.5 and 99.5 percentiles of all components; values outside are
//! clamped). Binary codes keep one bit per component: whether it is above that component's
//! mean over the training vectors. The graph is built and walked on the codes; the index
//! then re-scores the walk's candidates with the full vectors (see `VectorIndex::search`), so
//! the answers' distances are exact and only the candidate set is approximate.
//!
//! Code distances keep the order of the metric's graph distance: for scalar codes the
//! squared distance or dot product is estimated from integer sums (`x ~ low + step * code`),
//! then mapped as [`GraphDistance`] maps the exact one; binary codes compare by Hamming
//! distance, which approximates the angle between the centred vectors.

use super::distance::GraphDistance;
use grape_client::{Metric, Quantization};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// How a graph's nodes hold their vectors, and the distance between two of them.
#[derive(Clone, Debug)]
pub enum Space {
    /// Full vectors.
    Float(GraphDistance),
    /// One byte per component.
    Scalar(Arc<ScalarCodec>),
    /// One bit per component.
    Binary(Arc<BinaryCodec>),
}

/// What a quantized graph's codes were learnt from: saved with the graph, so a graph read back
/// encodes new vectors as it did before.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Codebook {
    Scalar {
        low: f32,
        step: f32,
        /// Vectors it was learnt from.
        #[serde(default)]
        sample: usize,
    },
    Binary {
        means: Vec<f32>,
        #[serde(default)]
        sample: usize,
    },
}

/// Vectors a codebook is learnt from, at most (a sample beyond this changes little).
pub const TRAINING_SAMPLE: usize = 10_000;

/// Vectors a codebook of `dimension` is learnt from, at most: [`TRAINING_SAMPLE`], fewer for
/// long vectors so that a sample holds at most 16M components (64 MiB), at least 256.
pub fn training_sample(dimension: usize) -> usize {
    ((16 << 20) / dimension.max(1)).clamp(256, TRAINING_SAMPLE)
}

impl Space {
    /// The space of a collection: full vectors without quantization, otherwise codes learnt
    /// from `sample` (prepared vectors; may be empty, then a neutral codebook is used).
    pub fn train(
        quantization: Quantization,
        metric: Metric,
        dimension: usize,
        sample: &[&[f32]],
    ) -> Space {
        let distance = GraphDistance::new(metric);
        match quantization {
            Quantization::None => Space::Float(distance),
            Quantization::Scalar => {
                let (low, step) = scalar_bounds(sample);
                Space::Scalar(Arc::new(ScalarCodec::new(
                    distance,
                    dimension,
                    low,
                    step,
                    sample.len(),
                )))
            }
            Quantization::Binary => {
                let mut means = vec![0f32; dimension];
                for v in sample {
                    for (m, x) in means.iter_mut().zip(v.iter()) {
                        *m += x;
                    }
                }
                let n = sample.len().max(1) as f32;
                means.iter_mut().for_each(|m| *m /= n);
                Space::Binary(Arc::new(BinaryCodec::new(means, sample.len())))
            }
        }
    }

    /// The space a saved codebook describes (`None`: full vectors). Refuses a codebook that
    /// does not fit `dimension` or holds numbers no training produces.
    pub fn from_codebook(
        codebook: Option<&Codebook>,
        metric: Metric,
        dimension: usize,
    ) -> Result<Space, String> {
        let distance = GraphDistance::new(metric);
        match codebook {
            None => Ok(Space::Float(distance)),
            Some(Codebook::Scalar { low, step, sample }) => {
                if !low.is_finite() || !step.is_finite() || *step <= 0.0 {
                    return Err(format!("scalar codebook low {low}, step {step}"));
                }
                Ok(Space::Scalar(Arc::new(ScalarCodec::new(
                    distance, dimension, *low, *step, *sample,
                ))))
            }
            Some(Codebook::Binary { means, sample }) => {
                if means.len() != dimension || means.iter().any(|m| !m.is_finite()) {
                    return Err(format!(
                        "binary codebook of {} means for dimension {dimension}",
                        means.len()
                    ));
                }
                Ok(Space::Binary(Arc::new(BinaryCodec::new(
                    means.clone(),
                    *sample,
                ))))
            }
        }
    }

    /// What to save so that [`Space::from_codebook`] gives this space back.
    pub fn codebook(&self) -> Option<Codebook> {
        match self {
            Space::Float(_) => None,
            Space::Scalar(c) => Some(Codebook::Scalar {
                low: c.low,
                step: c.step,
                sample: c.sample,
            }),
            Space::Binary(c) => Some(Codebook::Binary {
                means: c.means.clone(),
                sample: c.sample,
            }),
        }
    }

    /// Vectors the codes were learnt from (`None`: full vectors).
    pub fn sample(&self) -> Option<usize> {
        match self {
            Space::Float(_) => None,
            Space::Scalar(c) => Some(c.sample),
            Space::Binary(c) => Some(c.sample),
        }
    }

    /// Whether nodes hold full vectors (which the index then reads there).
    pub fn is_float(&self) -> bool {
        matches!(self, Space::Float(_))
    }

    /// Words per node for vectors of `dimension`.
    pub fn words(&self, dimension: usize) -> usize {
        match self {
            Space::Float(_) => dimension,
            Space::Scalar(_) => 1 + dimension.div_ceil(4),
            Space::Binary(_) => dimension.div_ceil(32),
        }
    }

    /// Writes the code of a prepared vector into `out` (`words(vector.len())` long).
    pub fn encode(&self, vector: &[f32], out: &mut [u32]) {
        match self {
            Space::Float(_) => {
                for (w, x) in out.iter_mut().zip(vector) {
                    *w = x.to_bits();
                }
            }
            Space::Scalar(c) => c.encode(vector, out),
            Space::Binary(c) => c.encode(vector, out),
        }
    }

    /// The code of a prepared vector.
    pub fn encoded(&self, vector: &[f32]) -> Vec<u32> {
        let mut out = vec![0; self.words(vector.len())];
        self.encode(vector, &mut out);
        out
    }

    /// Distance between two codes (smaller is closer).
    #[inline]
    pub fn distance(&self, a: &[u32], b: &[u32]) -> f32 {
        match self {
            Space::Float(d) => d.distance(as_floats(a), as_floats(b)),
            Space::Scalar(c) => c.distance(a, b),
            Space::Binary(c) => c.distance(a, b),
        }
    }

    /// Whether a stored code is one this space can produce (checked when a saved graph is
    /// read: a float code must be finite, a scalar code's sum must match its bytes).
    pub fn valid(&self, code: &[u32]) -> bool {
        match self {
            Space::Float(_) => as_floats(code).iter().all(|x| x.is_finite()),
            Space::Scalar(c) => code[0] == byte_sum(&code[1..], c.dimension),
            Space::Binary(c) => {
                let spare = code.len() * 32 - c.means.len();
                spare == 0 || code.last().is_some_and(|w| w >> (32 - spare) == 0)
            }
        }
    }
}

/// The words of a float code as floats.
#[inline]
pub fn as_floats(words: &[u32]) -> &[f32] {
    // SAFETY: `f32` and `u32` have the same size and alignment, and every bit pattern is a
    // valid `f32`.
    unsafe { std::slice::from_raw_parts(words.as_ptr() as *const f32, words.len()) }
}

/// The bytes of a word slice, in memory order.
#[inline]
fn as_bytes(words: &[u32]) -> &[u8] {
    // SAFETY: any initialised memory can be read as bytes; the length is the slice's size.
    unsafe { std::slice::from_raw_parts(words.as_ptr() as *const u8, words.len() * 4) }
}

fn byte_sum(words: &[u32], dimension: usize) -> u32 {
    as_bytes(words)[..dimension].iter().map(|b| *b as u32).sum()
}

/// Bounds of the scalar code: the 0.5 and 99.5 percentiles of every component of `sample`,
/// as (low, step) with 255 steps; a sample too small or too flat gets the unit range.
fn scalar_bounds(sample: &[&[f32]]) -> (f32, f32) {
    let mut all: Vec<f32> = sample.iter().flat_map(|v| v.iter().copied()).collect();
    if all.is_empty() {
        return (-1.0, 2.0 / 255.0);
    }
    let at = |q: f64, all: &mut Vec<f32>| -> f32 {
        let i = ((all.len() - 1) as f64 * q).round() as usize;
        *all.select_nth_unstable_by(i, f32::total_cmp).1
    };
    let low = at(0.005, &mut all);
    let high = at(0.995, &mut all);
    let width = high - low;
    if !(width.is_finite() && width > f32::EPSILON * low.abs().max(high.abs()).max(1e-30)) {
        return (low - 1.0, 2.0 / 255.0);
    }
    (low, width / 255.0)
}

/// One byte per component: `x ~ low + step * code`.
pub struct ScalarCodec {
    distance: GraphDistance,
    metric: Metric,
    dimension: usize,
    low: f32,
    step: f32,
    sample: usize,
    l2: ByteKernel,
    dot: ByteKernel,
}

impl std::fmt::Debug for ScalarCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScalarCodec")
            .field("low", &self.low)
            .field("step", &self.step)
            .finish()
    }
}

impl ScalarCodec {
    fn new(
        distance: GraphDistance,
        dimension: usize,
        low: f32,
        step: f32,
        sample: usize,
    ) -> ScalarCodec {
        let (l2, dot) = byte_kernels();
        ScalarCodec {
            distance,
            metric: distance.metric(),
            dimension,
            low,
            step,
            sample,
            l2,
            dot,
        }
    }

    fn encode(&self, vector: &[f32], out: &mut [u32]) {
        out.fill(0);
        let (sum, bytes) = out.split_first_mut().expect("a scalar code has a sum word");
        let mut total = 0u32;
        for (i, x) in vector.iter().enumerate() {
            let code = ((x - self.low) / self.step).round().clamp(0.0, 255.0) as u32;
            bytes[i / 4] |= code << (8 * (i % 4));
            total += code;
        }
        // Little-endian packing puts component i at byte i of the words on every platform
        // this builds for; `as_bytes` reads them back in that order.
        if cfg!(target_endian = "big") {
            bytes.iter_mut().for_each(|w| *w = w.swap_bytes());
        }
        *sum = total;
    }

    #[inline]
    fn distance(&self, a: &[u32], b: &[u32]) -> f32 {
        let (ba, bb) = (
            &as_bytes(&a[1..])[..self.dimension],
            &as_bytes(&b[1..])[..self.dimension],
        );
        let step = self.step;
        match self.metric {
            Metric::L2 => step * step * (self.l2)(ba, bb) as f32,
            Metric::Cosine | Metric::Dot => {
                let dot = step * step * (self.dot)(ba, bb) as f32
                    + self.low * step * (a[0] as f32 + b[0] as f32)
                    + self.dimension as f32 * self.low * self.low;
                self.distance.of_dot(dot)
            }
        }
    }
}

/// One bit per component: above the component's training mean or not.
pub struct BinaryCodec {
    means: Vec<f32>,
    sample: usize,
    hamming: fn(&[u32], &[u32]) -> u32,
}

impl std::fmt::Debug for BinaryCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BinaryCodec")
            .field("dimension", &self.means.len())
            .finish()
    }
}

impl BinaryCodec {
    fn new(means: Vec<f32>, sample: usize) -> BinaryCodec {
        BinaryCodec {
            means,
            sample,
            hamming: hamming_kernel(),
        }
    }

    fn encode(&self, vector: &[f32], out: &mut [u32]) {
        out.fill(0);
        for (i, (x, m)) in vector.iter().zip(&self.means).enumerate() {
            if x > m {
                out[i / 32] |= 1 << (i % 32);
            }
        }
    }

    #[inline]
    fn distance(&self, a: &[u32], b: &[u32]) -> f32 {
        (self.hamming)(a, b) as f32
    }
}

#[inline(always)]
fn l2_bytes_portable(a: &[u8], b: &[u8]) -> u32 {
    let n = a.len().min(b.len());
    let mut sum = 0u32;
    for i in 0..n {
        let d = a[i] as i32 - b[i] as i32;
        sum += (d * d) as u32;
    }
    sum
}

#[inline(always)]
fn dot_bytes_portable(a: &[u8], b: &[u8]) -> u32 {
    let n = a.len().min(b.len());
    let mut sum = 0u32;
    for i in 0..n {
        sum += a[i] as u32 * b[i] as u32;
    }
    sum
}

#[inline(always)]
fn hamming_portable(a: &[u32], b: &[u32]) -> u32 {
    a.iter().zip(b).map(|(x, y)| (x ^ y).count_ones()).sum()
}

/// A kernel over two equal-length byte codes.
type ByteKernel = fn(&[u8], &[u8]) -> u32;

/// The byte kernels (squared distance, dot product), compiled for AVX2 on CPUs that have it:
/// the same loops, which the compiler vectorises for whichever instructions it may use.
fn byte_kernels() -> (ByteKernel, ByteKernel) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        #[target_feature(enable = "avx2")]
        fn l2_avx2(a: &[u8], b: &[u8]) -> u32 {
            l2_bytes_portable(a, b)
        }
        #[target_feature(enable = "avx2")]
        fn dot_avx2(a: &[u8], b: &[u8]) -> u32 {
            dot_bytes_portable(a, b)
        }
        return (
            // SAFETY: the CPU supports AVX2 (checked above).
            |a, b| unsafe { l2_avx2(a, b) },
            // SAFETY: as above.
            |a, b| unsafe { dot_avx2(a, b) },
        );
    }
    (l2_bytes_portable, dot_bytes_portable)
}

/// Hamming distance, with the CPU's population-count instruction when it has one.
fn hamming_kernel() -> fn(&[u32], &[u32]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("popcnt") {
        #[target_feature(enable = "popcnt")]
        fn hamming_popcnt(a: &[u32], b: &[u32]) -> u32 {
            hamming_portable(a, b)
        }
        // SAFETY: the CPU supports POPCNT (checked above).
        return |a, b| unsafe { hamming_popcnt(a, b) };
    }
    hamming_portable
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vectors(n: usize, dimension: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut x = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        (0..n)
            .map(|_| (0..dimension).map(|_| next()).collect())
            .collect()
    }

    fn unit(v: &[f32]) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    /// Rank correlation proxy: of the pairs (a, b) and (a, c), how often the code distance
    /// orders them as the exact distance does.
    fn agreement(space: &Space, exact: &GraphDistance, data: &[Vec<f32>]) -> f64 {
        let codes: Vec<Vec<u32>> = data.iter().map(|v| space.encoded(v)).collect();
        let mut same = 0;
        let mut total = 0;
        for i in 0..data.len() - 2 {
            let (a, b, c) = (i, i + 1, i + 2);
            let exact_order =
                exact.distance(&data[a], &data[b]) < exact.distance(&data[a], &data[c]);
            let code_order =
                space.distance(&codes[a], &codes[b]) < space.distance(&codes[a], &codes[c]);
            same += usize::from(exact_order == code_order);
            total += 1;
        }
        same as f64 / total as f64
    }

    #[test]
    fn scalar_codes_estimate_every_metric_closely() {
        for metric in [Metric::L2, Metric::Cosine, Metric::Dot] {
            let data: Vec<Vec<f32>> = vectors(400, 67, 1)
                .iter()
                .map(|v| {
                    if metric == Metric::Cosine {
                        unit(v)
                    } else {
                        v.clone()
                    }
                })
                .collect();
            let sample: Vec<&[f32]> = data.iter().map(|v| v.as_slice()).collect();
            let space = Space::train(Quantization::Scalar, metric, 67, &sample);
            let exact = GraphDistance::new(metric);
            for pair in data.chunks_exact(2) {
                let (a, b) = (space.encoded(&pair[0]), space.encoded(&pair[1]));
                assert!(space.valid(&a));
                let want = exact.distance(&pair[0], &pair[1]);
                let got = space.distance(&a, &b);
                assert!(
                    (got - want).abs() <= 0.03 * want.abs().max(0.1),
                    "{metric:?}: code distance {got}, exact {want}"
                );
            }
            let agree = agreement(&space, &exact, &data);
            assert!(agree > 0.95, "{metric:?}: orders agree {agree}");
        }
    }

    #[test]
    fn binary_codes_order_pairs_mostly_as_the_angle_does() {
        let data: Vec<Vec<f32>> = vectors(600, 512, 2).iter().map(|v| unit(v)).collect();
        let sample: Vec<&[f32]> = data.iter().map(|v| v.as_slice()).collect();
        let space = Space::train(Quantization::Binary, Metric::Cosine, 512, &sample);
        assert_eq!(space.words(512), 16);
        let same = space.encoded(&data[0]);
        assert_eq!(space.distance(&same, &same), 0.0);
        let agree = agreement(&space, &GraphDistance::new(Metric::Cosine), &data);
        // Random vectors make every pair nearly orthogonal, the hardest case for one bit.
        assert!(agree > 0.6, "orders agree {agree}");
    }

    #[test]
    fn codebooks_round_trip_and_bad_ones_are_refused() {
        let data = vectors(50, 33, 3);
        let sample: Vec<&[f32]> = data.iter().map(|v| v.as_slice()).collect();
        for q in [Quantization::Scalar, Quantization::Binary] {
            let space = Space::train(q, Metric::L2, 33, &sample);
            let book = space.codebook().expect("a quantized space has a codebook");
            let again = Space::from_codebook(Some(&book), Metric::L2, 33).unwrap();
            assert_eq!(again.encoded(&data[7]), space.encoded(&data[7]));
        }
        let bad = [
            Codebook::Scalar {
                low: 0.0,
                step: 0.0,
                sample: 1,
            },
            Codebook::Scalar {
                low: f32::NAN,
                step: 1.0,
                sample: 1,
            },
            Codebook::Binary {
                means: vec![0.0; 32],
                sample: 1,
            },
        ];
        for book in bad {
            assert!(Space::from_codebook(Some(&book), Metric::L2, 33).is_err());
        }
        // A scalar code whose sum disagrees with its bytes, a binary code with bits past the
        // dimension: neither is something encoding produces.
        let scalar = Space::train(Quantization::Scalar, Metric::L2, 33, &sample);
        let mut code = scalar.encoded(&data[0]);
        code[0] ^= 1;
        assert!(!scalar.valid(&code));
        let binary = Space::train(Quantization::Binary, Metric::L2, 33, &sample);
        let mut code = binary.encoded(&data[0]);
        *code.last_mut().unwrap() |= 1 << 31;
        assert!(!binary.valid(&code));
    }

    #[test]
    fn a_flat_or_empty_sample_still_gives_a_usable_scalar_range() {
        let flat = [vec![0.5f32; 8], vec![0.5f32; 8]];
        let sample: Vec<&[f32]> = flat.iter().map(|v| v.as_slice()).collect();
        for sample in [&sample[..], &[]] {
            let space = Space::train(Quantization::Scalar, Metric::L2, 8, sample);
            let a = space.encoded(&[0.5; 8]);
            let b = space.encoded(&[0.9; 8]);
            assert!(space.distance(&a, &b) > 0.0);
        }
    }
}
