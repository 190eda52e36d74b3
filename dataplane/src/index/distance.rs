//! Distance kernels: dot product and squared Euclidean distance, with AVX-512 and AVX2+FMA
//! versions chosen at run time on CPUs that have them, and the graph distance each metric uses.
//!
//! hnsw_rs requires non-negative distances (it asserts on them), and its graph heuristics only
//! ever compare distances, so each metric maps to a non-negative, order-preserving distance:
//! - `l2`: squared distance;
//! - `cosine`: `1 - dot` on vectors normalised at insert, clamped at 0;
//! - `dot`: `-dot` mapped monotonically onto (0, inf).

use grape_client::Metric;

/// A kernel over two equal-length slices.
pub type Kernel = fn(&[f32], &[f32]) -> f32;

/// The fastest dot-product kernel this CPU runs.
pub fn dot_kernel() -> Kernel {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return |a, b| {
                // SAFETY: the CPU supports AVX-512F (checked above).
                unsafe { x86_512::dot_avx512(a, b) }
            };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return |a, b| {
                // SAFETY: the CPU supports AVX2 and FMA (checked above).
                unsafe { x86::dot_avx2(a, b) }
            };
        }
    }
    dot_scalar
}

/// The fastest squared-L2 kernel this CPU runs.
pub fn l2_kernel() -> Kernel {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return |a, b| {
                // SAFETY: the CPU supports AVX-512F (checked above).
                unsafe { x86_512::l2_avx512(a, b) }
            };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return |a, b| {
                // SAFETY: the CPU supports AVX2 and FMA (checked above).
                unsafe { x86::l2_avx2(a, b) }
            };
        }
    }
    l2_scalar
}

/// Portable dot product (four accumulators so the compiler can vectorise it).
pub fn dot_scalar(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let chunks = n / 8;
    for i in 0..chunks {
        for j in 0..8 {
            acc[j] += a[i * 8 + j] * b[i * 8 + j];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for i in chunks * 8..n {
        sum += a[i] * b[i];
    }
    sum
}

/// Portable squared Euclidean distance.
pub fn l2_scalar(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let chunks = n / 8;
    for i in 0..chunks {
        for j in 0..8 {
            let d = a[i * 8 + j] - b[i * 8 + j];
            acc[j] += d * d;
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for i in chunks * 8..n {
        let d = a[i] - b[i];
        sum += d * d;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let hi = _mm256_extractf128_ps(v, 1);
        let lo = _mm256_castps256_ps128(v);
        let s = _mm_add_ps(hi, lo);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        // SAFETY: every load reads 8 floats at offsets below `n`.
        unsafe {
            while i + 16 <= n {
                acc0 =
                    _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
                acc1 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(pa.add(i + 8)),
                    _mm256_loadu_ps(pb.add(i + 8)),
                    acc1,
                );
                i += 16;
            }
            if i + 8 <= n {
                acc0 =
                    _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
                i += 8;
            }
        }
        let mut sum = hsum(_mm256_add_ps(acc0, acc1));
        while i < n {
            sum += a[i] * b[i];
            i += 1;
        }
        sum
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn l2_avx2(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        // SAFETY: every load reads 8 floats at offsets below `n`.
        unsafe {
            while i + 16 <= n {
                let d0 = _mm256_sub_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)));
                let d1 = _mm256_sub_ps(
                    _mm256_loadu_ps(pa.add(i + 8)),
                    _mm256_loadu_ps(pb.add(i + 8)),
                );
                acc0 = _mm256_fmadd_ps(d0, d0, acc0);
                acc1 = _mm256_fmadd_ps(d1, d1, acc1);
                i += 16;
            }
            if i + 8 <= n {
                let d0 = _mm256_sub_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)));
                acc0 = _mm256_fmadd_ps(d0, d0, acc0);
                i += 8;
            }
        }
        let mut sum = hsum(_mm256_add_ps(acc0, acc1));
        while i < n {
            let d = a[i] - b[i];
            sum += d * d;
            i += 1;
        }
        sum
    }
}

#[cfg(target_arch = "x86_64")]
mod x86_512 {
    use std::arch::x86_64::*;

    /// Sums `f(a, b)` over 16-float lanes: two accumulators over 32 floats at a time, then one
    /// more full lane, then a masked lane for the rest.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn reduce(a: &[f32], b: &[f32], f: impl Fn(__m512, __m512, __m512) -> __m512) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc0 = _mm512_setzero_ps();
        let mut acc1 = _mm512_setzero_ps();
        let mut i = 0;
        // SAFETY: full loads read 16 floats at offsets below `n`; the masked load reads only
        // the `n - i` floats left.
        unsafe {
            while i + 32 <= n {
                acc0 = f(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), acc0);
                acc1 = f(
                    _mm512_loadu_ps(pa.add(i + 16)),
                    _mm512_loadu_ps(pb.add(i + 16)),
                    acc1,
                );
                i += 32;
            }
            if i + 16 <= n {
                acc0 = f(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), acc0);
                i += 16;
            }
            if i < n {
                let mask: __mmask16 = (1u16 << (n - i)) - 1;
                acc1 = f(
                    _mm512_maskz_loadu_ps(mask, pa.add(i)),
                    _mm512_maskz_loadu_ps(mask, pb.add(i)),
                    acc1,
                );
            }
        }
        _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1))
    }

    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
        reduce(a, b, |x, y, acc| _mm512_fmadd_ps(x, y, acc))
    }

    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn l2_avx512(a: &[f32], b: &[f32]) -> f32 {
        reduce(a, b, |x, y, acc| {
            let d = _mm512_sub_ps(x, y);
            _mm512_fmadd_ps(d, d, acc)
        })
    }
}

/// The distance a collection's graph is built with: non-negative, smaller is closer.
#[derive(Clone, Copy)]
pub struct GraphDistance {
    metric: Metric,
    dot: Kernel,
    l2: Kernel,
}

impl Default for GraphDistance {
    fn default() -> Self {
        GraphDistance::new(Metric::L2)
    }
}

impl std::fmt::Debug for GraphDistance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GraphDistance({})", self.metric.as_str())
    }
}

impl GraphDistance {
    pub fn new(metric: Metric) -> Self {
        GraphDistance {
            metric,
            dot: dot_kernel(),
            l2: l2_kernel(),
        }
    }

    /// Distance between two prepared vectors (see [`prepare`]).
    #[inline]
    pub fn distance(&self, a: &[f32], b: &[f32]) -> f32 {
        match self.metric {
            Metric::L2 => (self.l2)(a, b),
            Metric::Cosine | Metric::Dot => self.of_dot((self.dot)(a, b)),
        }
    }

    /// The graph distance of two vectors of cosine or dot metric, from their dot product.
    #[inline]
    pub fn of_dot(&self, dot: f32) -> f32 {
        match self.metric {
            Metric::Cosine => (1.0 - dot).max(0.0),
            _ => {
                let d = -dot;
                if d >= 0.0 { 1.0 + d } else { 1.0 / (1.0 - d) }
            }
        }
    }

    pub fn metric(&self) -> Metric {
        self.metric
    }

    /// The user-facing score of two prepared vectors: similarity for cosine and dot, Euclidean
    /// distance for l2.
    #[inline]
    pub fn score(&self, a: &[f32], b: &[f32]) -> f32 {
        match self.metric {
            Metric::L2 => (self.l2)(a, b).sqrt(),
            Metric::Cosine | Metric::Dot => (self.dot)(a, b),
        }
    }
}

impl hnsw_rs::prelude::Distance<f32> for GraphDistance {
    #[inline]
    fn eval(&self, va: &[f32], vb: &[f32]) -> f32 {
        self.distance(va, vb)
    }
}

/// The largest squared length a vector may have: distances between two such vectors stay
/// finite in `f32` (|a - b|² <= 4 max(|a|², |b|²)).
pub const MAX_SQUARED_NORM: f64 = f32::MAX as f64 / 4.0;
/// The smallest squared length of a vector under cosine: shorter ones cannot be normalised
/// reliably in `f32` (their squared components underflow).
pub const MIN_COSINE_SQUARED_NORM: f64 = 1e-30;

/// Why a vector cannot be indexed.
#[derive(Debug, Clone, PartialEq)]
pub enum VectorProblem {
    /// Its length is not the collection's dimension.
    Dimension { got: usize, want: usize },
    /// A component is NaN or infinite.
    NotFinite { at: usize },
    /// Its squared length is above [`MAX_SQUARED_NORM`].
    TooLong { squared_norm: f64 },
    /// Under cosine, its squared length is below [`MIN_COSINE_SQUARED_NORM`] (the zero vector
    /// included): it has no usable direction.
    NoDirection { squared_norm: f64 },
}

impl std::fmt::Display for VectorProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VectorProblem::Dimension { got, want } => {
                write!(f, "vector has {got} dimensions, expected {want}")
            }
            VectorProblem::NotFinite { at } => write!(f, "vector[{at}] is not a finite number"),
            VectorProblem::TooLong { squared_norm } => write!(
                f,
                "the vector is too long to compare (|v|² = {squared_norm:e}, at most \
                 {MAX_SQUARED_NORM:e}); scale it down"
            ),
            VectorProblem::NoDirection { squared_norm } if *squared_norm == 0.0 => f.write_str(
                "the zero vector has no direction; cosine similarity is undefined for it",
            ),
            VectorProblem::NoDirection { squared_norm } => write!(
                f,
                "the vector is too short to have a direction under cosine (|v|² = \
                 {squared_norm:e}, at least {MIN_COSINE_SQUARED_NORM:e}); scale it up"
            ),
        }
    }
}

/// Whether `vector` can be stored and searched under `metric` in a collection of
/// `dimension`: the one check writes, searches and the state machine share. Computed in `f64`,
/// so every replica and platform agrees.
pub fn check(metric: Metric, dimension: usize, vector: &[f32]) -> Result<(), VectorProblem> {
    if vector.len() != dimension {
        return Err(VectorProblem::Dimension {
            got: vector.len(),
            want: dimension,
        });
    }
    if let Some(at) = vector.iter().position(|x| !x.is_finite()) {
        return Err(VectorProblem::NotFinite { at });
    }
    let squared_norm: f64 = vector.iter().map(|x| f64::from(*x) * f64::from(*x)).sum();
    if squared_norm > MAX_SQUARED_NORM {
        return Err(VectorProblem::TooLong { squared_norm });
    }
    if metric == Metric::Cosine && squared_norm < MIN_COSINE_SQUARED_NORM {
        return Err(VectorProblem::NoDirection { squared_norm });
    }
    Ok(())
}

/// Turns a vector into the form the index stores: unit length for cosine, unchanged otherwise.
/// Returns `None` for a zero vector under cosine, which has no direction.
pub fn prepare(metric: Metric, vector: &[f32]) -> Option<Vec<f32>> {
    match metric {
        Metric::Cosine => {
            let norm = dot_scalar(vector, vector).sqrt();
            if norm == 0.0 || !norm.is_finite() {
                return None;
            }
            Some(vector.iter().map(|x| x / norm).collect())
        }
        Metric::L2 | Metric::Dot => Some(vector.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2654435761).max(1);
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state % 2000) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn every_kernel_this_cpu_runs_agrees_with_scalar() {
        let avx2 = std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma");
        let avx512 = std::arch::is_x86_feature_detected!("avx512f");
        for n in [0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 47, 128, 1536] {
            let a = pseudo_random(n, 3 + n as u32);
            let b = pseudo_random(n, 77 + n as u32);
            let tolerance = 1e-4 * (n as f32 + 1.0);
            let (dot, l2) = (dot_scalar(&a, &b), l2_scalar(&a, &b));
            // SAFETY: each kernel runs only when the CPU has its features.
            unsafe {
                if avx2 {
                    assert!(
                        (x86::dot_avx2(&a, &b) - dot).abs() <= tolerance,
                        "avx2 dot {n}"
                    );
                    assert!(
                        (x86::l2_avx2(&a, &b) - l2).abs() <= tolerance,
                        "avx2 l2 {n}"
                    );
                }
                if avx512 {
                    assert!(
                        (x86_512::dot_avx512(&a, &b) - dot).abs() <= tolerance,
                        "512 dot {n}"
                    );
                    assert!(
                        (x86_512::l2_avx512(&a, &b) - l2).abs() <= tolerance,
                        "512 l2 {n}"
                    );
                }
            }
        }
    }

    #[test]
    fn simd_kernels_agree_with_scalar_for_every_length() {
        for n in [0, 1, 7, 8, 9, 15, 16, 17, 31, 128, 1536] {
            let a = pseudo_random(n, 1 + n as u32);
            let b = pseudo_random(n, 99 + n as u32);
            let tolerance = 1e-4 * (n as f32 + 1.0);
            assert!(
                (dot_kernel()(&a, &b) - dot_scalar(&a, &b)).abs() <= tolerance,
                "dot n={n}"
            );
            assert!(
                (l2_kernel()(&a, &b) - l2_scalar(&a, &b)).abs() <= tolerance,
                "l2 n={n}"
            );
        }
    }

    #[test]
    fn graph_distances_are_non_negative_and_order_preserving() {
        let q = vec![1.0, 2.0, 3.0];
        let near = vec![10.0, 20.0, 30.0];
        let far = vec![-10.0, -20.0, -30.0];
        let d = GraphDistance::new(Metric::Dot);
        let (dn, df) = (d.distance(&q, &near), d.distance(&q, &far));
        assert!(dn > 0.0 && df > 0.0);
        assert!(dn < df, "a larger dot product must be closer");
        assert_eq!(d.score(&q, &near), 140.0);

        let c = GraphDistance::new(Metric::Cosine);
        let a = prepare(Metric::Cosine, &[3.0, 4.0]).unwrap();
        assert!((c.score(&a, &a) - 1.0).abs() < 1e-6);
        assert!(c.distance(&a, &a) >= 0.0);

        let l2 = GraphDistance::new(Metric::L2);
        assert_eq!(l2.score(&[0.0, 0.0], &[3.0, 4.0]), 5.0);
    }

    #[test]
    fn cosine_rejects_the_zero_vector() {
        assert!(prepare(Metric::Cosine, &[0.0, 0.0]).is_none());
    }

    #[test]
    fn vectors_the_index_cannot_use_are_refused_before_it_sees_them() {
        let ok = |m, v: &[f32]| check(m, v.len(), v).is_ok();
        assert!(ok(Metric::Cosine, &[0.1, 0.2, 0.3]));
        assert!(
            ok(Metric::L2, &[0.0, 0.0]),
            "the zero vector is fine for l2"
        );
        assert!(ok(Metric::Dot, &[0.0, 0.0]));
        for ghost in [
            vec![1e-30f32; 4],
            vec![1e-45, 0.0, 0.0, 0.0],
            vec![0.0; 4],
            vec![1e-16, 0.0, 0.0, 0.0],
        ] {
            assert!(
                matches!(
                    check(Metric::Cosine, 4, &ghost),
                    Err(VectorProblem::NoDirection { .. })
                ),
                "{ghost:?}"
            );
            // Every vector that passes normalises to a finite unit vector.
        }
        for huge in [vec![1e20f32; 4], vec![f32::MAX, 0.0], vec![1e19, 1e19]] {
            for metric in [Metric::Cosine, Metric::L2, Metric::Dot] {
                assert!(
                    matches!(
                        check(metric, huge.len(), &huge),
                        Err(VectorProblem::TooLong { .. })
                    ),
                    "{metric:?} {huge:?}"
                );
            }
        }
        assert_eq!(
            check(Metric::L2, 3, &[0.0, f32::NAN, 0.0]),
            Err(VectorProblem::NotFinite { at: 1 })
        );
        assert_eq!(
            check(Metric::L2, 3, &[0.0, 1.0]),
            Err(VectorProblem::Dimension { got: 2, want: 3 })
        );
        // At the edges: the shortest accepted cosine vector normalises, and two of the longest
        // accepted vectors have a finite distance.
        let short = [1.1e-15f32, 0.0, 0.0];
        assert!(check(Metric::Cosine, 3, &short).is_ok());
        let unit = prepare(Metric::Cosine, &short).unwrap();
        assert!((unit[0] - 1.0).abs() < 1e-6, "{unit:?}");
        let long = (MAX_SQUARED_NORM.sqrt() * 0.999) as f32;
        let (a, b) = ([long, 0.0], [-long, 0.0]);
        assert!(check(Metric::L2, 2, &a).is_ok());
        let d: f32 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
        assert!(d.is_finite(), "{d}");
        assert!(prepare(Metric::L2, &[0.0, 0.0]).is_some());
    }
}
