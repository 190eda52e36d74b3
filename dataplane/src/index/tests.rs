use super::*;
use distance::prepare;

fn grid(n: usize) -> Vec<Vec<f32>> {
    (0..n)
        .map(|i| vec![i as f32, (i % 7) as f32, 1.0])
        .collect()
}

fn exact_top(
    vectors: &[Vec<f32>],
    query: &[f32],
    k: usize,
    live: impl Fn(usize) -> bool,
) -> Vec<usize> {
    let d = GraphDistance::new(Metric::L2);
    let mut all: Vec<(f32, usize)> = vectors
        .iter()
        .enumerate()
        .filter(|(i, _)| live(*i))
        .map(|(i, v)| (d.distance(query, v), i))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    all.into_iter().take(k).map(|(_, i)| i).collect()
}

/// A graph engine, and how Grape's graph holds vectors.
#[derive(Debug, Clone, Copy)]
struct Setup {
    engine: GraphEngine,
    quantization: Quantization,
    originals: OriginalsPlace,
}

const HNSW_RS: Setup = Setup {
    engine: GraphEngine::HnswRs,
    quantization: Quantization::None,
    originals: OriginalsPlace::Memory,
};
const GRAPE: Setup = Setup {
    engine: GraphEngine::Grape,
    ..HNSW_RS
};
const SCALAR_IN_MEMORY: Setup = Setup {
    quantization: Quantization::Scalar,
    ..GRAPE
};
const SCALAR_ON_DISK: Setup = Setup {
    originals: OriginalsPlace::Disk,
    ..SCALAR_IN_MEMORY
};

impl Setup {
    fn index(self, dimension: usize, metric: Metric, threshold: usize) -> VectorIndex {
        let options = IndexOptions {
            engine: self.engine,
            rebuild_threshold: threshold,
            quantized_originals: self.originals,
            ..Default::default()
        };
        VectorIndex::quantized(
            dimension,
            metric,
            HnswParams::default(),
            options,
            self.quantization,
            Some(&std::env::temp_dir()),
        )
    }
}

fn index_of(vectors: &[Vec<f32>], threshold: usize, setup: Setup) -> VectorIndex {
    let index = setup.index(3, Metric::L2, threshold);
    for v in vectors {
        index.add(v);
    }
    index
}

fn maintaining_without_a_limit_indexes_everything_once(engine: Setup) {
    let vectors = grid(300);
    let index = index_of(&vectors, 1000, engine);
    assert_eq!(index.maintain(usize::MAX), 300);
    assert_eq!(index.stats().pending, 0);
    // Nothing left: no work reported (an unbounded limit must not overflow).
    assert_eq!(index.maintain(usize::MAX), 0);
}

fn unindexed_vectors_are_found_by_exact_scan(engine: Setup) {
    let vectors = grid(300);
    let index = index_of(&vectors, 1000, engine);
    assert_eq!(index.stats().pending, 300);
    let hits = index.search(&[42.0, 0.0, 1.0], 3, 64, None);
    let ids: Vec<usize> = hits.iter().map(|c| c.id).collect();
    assert_eq!(ids, exact_top(&vectors, &[42.0, 0.0, 1.0], 3, |_| true));
}

fn graph_and_tail_answers_agree_with_brute_force(engine: Setup) {
    let vectors = grid(2000);
    let index = index_of(&vectors, 10_000, engine);
    while index.maintain(700) > 0 {}
    let stats = index.stats();
    assert_eq!((stats.indexed, stats.pending), (2000, 0));
    // Half in the graph, half pending.
    for v in grid(2200).into_iter().skip(2000) {
        index.add(&v);
    }
    let all = grid(2200);
    let mut agree = 0;
    for q in [5.0f32, 500.0, 1500.0, 2100.0, 2199.0] {
        let query = [q, 3.0, 1.0];
        let got: Vec<usize> = index
            .search(&query, 5, 128, None)
            .iter()
            .map(|c| c.id)
            .collect();
        let want = exact_top(&all, &query, 5, |_| true);
        agree += got.iter().filter(|id| want.contains(id)).count();
    }
    assert!(agree >= 24, "recall too low: {agree}/25");
}

fn removed_vectors_never_come_back_and_a_rebuild_drops_them(engine: Setup) {
    let vectors = grid(1000);
    let index = index_of(&vectors, 50, engine);
    while index.maintain(1000) > 0 {}
    for id in 100..160 {
        index.remove(id);
    }
    let hits = index.search(&[130.0, 4.0, 1.0], 10, 64, None);
    assert!(hits.iter().all(|c| !(100..160).contains(&c.id)), "{hits:?}");
    assert_eq!(hits.len(), 10);
    assert_eq!(index.stats().dead_in_graph, 60);
    assert!(index.needs_maintenance());
    index.maintain(1000);
    let stats = index.stats();
    assert_eq!(
        (stats.rebuilds, stats.dead_in_graph, stats.live),
        (1, 0, 940)
    );
    let hits = index.search(&[130.0, 4.0, 1.0], 10, 64, None);
    assert!(hits.iter().all(|c| !(100..160).contains(&c.id)));
    assert_eq!(hits[0].id, 160, "{hits:?}");
}

fn accept_filter_restricts_results(engine: Setup) {
    let vectors = grid(1500);
    let index = index_of(&vectors, 10_000, engine);
    while index.maintain(1000) > 0 {}
    let even = |id: usize| id.is_multiple_of(2);
    let hits = index.search(&[701.0, 1.0, 1.0], 10, 200, Some(&even));
    assert_eq!(hits.len(), 10);
    assert!(hits.iter().all(|c| c.id % 2 == 0));
    let exact = index.exact_search(&[701.0, 1.0, 1.0], 4, (0..1500).filter(|i| i % 2 == 0));
    assert_eq!(exact.len(), 4);
}

fn cosine_index_ranks_by_angle(engine: Setup) {
    let index = engine.index(2, Metric::Cosine, 100);
    let a = index.add(&prepare(Metric::Cosine, &[1.0, 0.0]).unwrap());
    let b = index.add(&prepare(Metric::Cosine, &[0.0, 5.0]).unwrap());
    let q = prepare(Metric::Cosine, &[10.0, 1.0]).unwrap();
    let hits = index.search(&q, 2, 16, None);
    assert_eq!(hits.iter().map(|c| c.id).collect::<Vec<_>>(), vec![a, b]);
}

fn a_rebuild_reclaims_the_vectors_of_replaced_documents(engine: Setup) {
    let vectors = grid(1000);
    let index = index_of(&vectors, 50, engine);
    while index.maintain(1000) > 0 {}
    // 300 updates: each document gets a new id and a moved vector; 10 of the new ones are
    // deleted again before they reach the graph.
    // Spread through a cube (hnsw_rs leaves points of a second parallel line unreachable).
    let moved = |i: usize| {
        let at = |step: f64| ((i as f64 * step).fract() * 1000.0) as f32;
        vec![at(0.618_034), at(0.414_214), at(0.732_051)]
    };
    for i in 0..300 {
        index.remove(i);
        assert_eq!(index.add(&moved(i)), 1000 + i);
    }
    for id in 1000..1010 {
        index.remove(id);
    }
    assert_eq!(index.stats().stored, 1300);
    index.maintain(1000);
    let stats = index.stats();
    assert_eq!(
        (stats.rebuilds, stats.live, stats.stored, stats.pending),
        (1, 990, 990, 290),
        "{stats:?}"
    );
    // Every live id still reads its own vector; reclaimed ones are gone.
    for id in [300, 301, 650, 999] {
        assert_eq!(
            index.with_vector(id, <[f32]>::to_vec),
            Some(vectors[id].clone())
        );
    }
    for id in [1010, 1150, 1299] {
        assert_eq!(
            index.with_vector(id, <[f32]>::to_vec),
            Some(moved(id - 1000))
        );
    }
    for id in [0, 299, 1000, 1009] {
        assert_eq!(index.with_vector(id, |_| ()), None);
    }
    while index.maintain(1000) > 0 {}
    // A second compaction over an already compacted store.
    for id in 400..500 {
        index.remove(id);
    }
    while index.maintain(1000) > 0 {}
    let stats = index.stats();
    assert_eq!(
        (
            stats.rebuilds,
            stats.live,
            stats.stored,
            stats.dead_in_graph
        ),
        (2, 890, 890, 0),
        "{stats:?}"
    );
    for (query, want) in [
        (vectors[650].clone(), 650),
        (moved(150), 1150),
        (moved(20), 1020),
    ] {
        // A wide search: what is checked here is which vectors remain, not recall (the graph
        // is built by parallel inserts, and a narrow walk misses an exact match now and then).
        let hits = index.search(&query, 3, 512, None);
        assert_eq!((hits[0].id, hits[0].distance), (want, 0.0), "{hits:?}");
    }
    let hits = index.search(&[450.0, 2.0, 1.0], 10, 512, None);
    assert!(hits.iter().all(|c| !(400..500).contains(&c.id)), "{hits:?}");
}

fn as_many_dead_vectors_as_live_ones_are_reclaimed_below_the_threshold(engine: Setup) {
    let vectors = grid(1500);
    let index = index_of(&vectors, 1_000_000, engine);
    while index.maintain(usize::MAX) > 0 {}
    for id in 0..700 {
        index.remove(id);
    }
    while index.maintain(usize::MAX) > 0 {}
    let stats = index.stats();
    assert_eq!((stats.rebuilds, stats.stored), (0, 1500), "{stats:?}");
    // 1,000 dead and 500 live: past RECLAIM_MIN and past the live count.
    for id in 700..1000 {
        index.remove(id);
    }
    assert!(index.needs_maintenance());
    while index.maintain(usize::MAX) > 0 {}
    let stats = index.stats();
    assert_eq!(
        (stats.rebuilds, stats.stored, stats.live),
        (1, 500, 500),
        "{stats:?}"
    );
    assert_eq!(index.search(&vectors[1200], 1, 32, None)[0].id, 1200);
}

fn updates_during_rebuilds_keep_every_vector_right(engine: Setup) {
    let docs = 200;
    let vector_of =
        |doc: usize, version: usize| vec![doc as f32, (version % 13) as f32, (version % 5) as f32];
    let index = Arc::new(index_of(
        &(0..docs).map(|d| vector_of(d, 0)).collect::<Vec<_>>(),
        20,
        engine,
    ));
    while index.maintain(usize::MAX) > 0 {}
    let updates = 2000;
    let writer = {
        let index = Arc::clone(&index);
        std::thread::spawn(move || {
            let mut current: Vec<(VectorId, Vec<f32>)> =
                (0..docs).map(|d| (d, vector_of(d, 0))).collect();
            for version in 1..=updates {
                let doc = (version * 37) % docs;
                let vector = vector_of(doc, version);
                index.remove(current[doc].0);
                current[doc] = (index.add(&vector), vector);
                if version % 100 == 0 {
                    // Wait for the indexer to catch up, so that the next 100 updates remove
                    // graph entries: each such round starts a rebuild that races with it.
                    let waited = std::time::Instant::now();
                    while index.stats().pending > 0
                        && waited.elapsed() < std::time::Duration::from_secs(10)
                    {
                        std::thread::sleep(std::time::Duration::from_micros(200));
                    }
                }
            }
            current
        })
    };
    let d = GraphDistance::new(Metric::L2);
    while !writer.is_finished() {
        index.maintain(64);
        let query = vector_of(77, 3);
        for hit in index.search(&query, 5, 32, None) {
            // A hit may die right after the search; while live it reads its own vector.
            if let Some(exact) = index.with_vector(hit.id, |v| d.distance(&query, v)) {
                assert!((exact - hit.distance).abs() < 1e-4, "{hit:?} vs {exact}");
            }
        }
    }
    let current = writer.join().unwrap();
    while index.maintain(usize::MAX) > 0 {}
    let stats = index.stats();
    assert_eq!(stats.live, docs as u64);
    assert!(stats.rebuilds >= 20, "{stats:?}");
    let issued = (docs + updates) as u64;
    assert!(stats.stored < issued / 2, "nothing reclaimed: {stats:?}");
    for (id, vector) in current {
        assert_eq!(index.with_vector(id, <[f32]>::to_vec), Some(vector.clone()));
        let hits = index.search(&vector, 1, docs, None);
        assert_eq!((hits[0].id, hits[0].distance), (id, 0.0));
    }
}

#[test]
fn grape_holds_each_indexed_vector_once() {
    let vectors = grid(6000);
    let index = index_of(&[], 1_000_000, GRAPE);
    // Writes arriving while the graph is being built: vectors wait outside the graph, then
    // the graph holds them and the copies outside are dropped.
    let mut held_most = 0;
    for chunk in vectors.chunks(700) {
        for v in chunk {
            index.add(v);
        }
        index.maintain(512);
        let stats = index.stats();
        held_most = held_most.max(stats.stored);
        // Never more than the graph's vectors plus twice those waiting (and a small floor).
        assert!(
            stats.stored <= stats.indexed + 2 * stats.pending + RECLAIM_MIN as u64,
            "{stats:?}"
        );
    }
    while index.maintain(512) > 0 {}
    let stats = index.stats();
    assert_eq!((stats.live, stats.stored, stats.pending), (6000, 6000, 0));
    assert!(held_most < 2 * 6000, "{held_most}");
    for (id, v) in vectors.iter().enumerate() {
        assert_eq!(index.with_vector(id, <[f32]>::to_vec).as_ref(), Some(v));
    }
    assert_eq!(index.search(&vectors[4321], 1, 64, None)[0].id, 4321);
}

/// Runs each test against both graph engines, and Grape's graph with scalar codes (full
/// vectors in memory and on disk).
macro_rules! on_every_setup {
    ($($name:ident),* $(,)?) => {
        on_both_engines!($($name),*);
        mod grape_scalar_in_memory {
            $(#[test] fn $name() { super::$name(super::SCALAR_IN_MEMORY) })*
        }
        mod grape_scalar_on_disk {
            $(#[test] fn $name() { super::$name(super::SCALAR_ON_DISK) })*
        }
    };
}

/// Runs each test against both graph engines holding full vectors.
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod hnsw_rs_engine {
            $(#[test] fn $name() { super::$name(super::HNSW_RS) })*
        }
        mod grape_engine {
            $(#[test] fn $name() { super::$name(super::GRAPE) })*
        }
    };
}

on_every_setup!(
    maintaining_without_a_limit_indexes_everything_once,
    unindexed_vectors_are_found_by_exact_scan,
    removed_vectors_never_come_back_and_a_rebuild_drops_them,
    a_rebuild_reclaims_the_vectors_of_replaced_documents,
    as_many_dead_vectors_as_live_ones_are_reclaimed_below_the_threshold,
    updates_during_rebuilds_keep_every_vector_right,
    accept_filter_restricts_results,
    cosine_index_ranks_by_angle,
);

// One scale for every component (see `quantize`) cannot tell this grid's small second
// component apart next to its long first one: scalar codes lose recall on it, which is why
// quantization is per collection. Quantized recall is tested on embedding-like data below.
mod full_vectors {
    use super::*;
    on_both_engines!(graph_and_tail_answers_agree_with_brute_force);
}

const BINARY_IN_MEMORY: Setup = Setup {
    quantization: Quantization::Binary,
    ..GRAPE
};
const BINARY_ON_DISK: Setup = Setup {
    originals: OriginalsPlace::Disk,
    ..BINARY_IN_MEMORY
};

/// Embedding-like vectors, prepared for cosine: points of a few clusters in 12 dimensions,
/// projected up to `dimension` by one fixed random matrix, with noise. The first `n` are
/// the data, the next `queries` the queries (same distribution).
fn embeddings(n: usize, queries: usize, dimension: usize) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    use rand::{Rng, SeedableRng};
    use rand_distr::{Distribution, Normal};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let normal = Normal::new(0.0f32, 1.0).unwrap();
    const LOW: usize = 12;
    let projection: Vec<Vec<f32>> = (0..dimension)
        .map(|_| (0..LOW).map(|_| normal.sample(&mut rng)).collect())
        .collect();
    let centres: Vec<Vec<f32>> = (0..24)
        .map(|_| (0..LOW).map(|_| 2.0 * normal.sample(&mut rng)).collect())
        .collect();
    let mut point = || {
        let centre = &centres[rng.random_range(0..centres.len())];
        let low: Vec<f32> = centre.iter().map(|c| c + normal.sample(&mut rng)).collect();
        let high: Vec<f32> = projection
            .iter()
            .map(|row| {
                row.iter().zip(&low).map(|(a, b)| a * b).sum::<f32>()
                    + 0.5 * normal.sample(&mut rng)
            })
            .collect();
        prepare(Metric::Cosine, &high).unwrap()
    };
    let data = (0..n).map(|_| point()).collect();
    let queries = (0..queries).map(|_| point()).collect();
    (data, queries)
}

/// Recall@10 of `index` against brute force over `data`, at breadth `ef`; checks on the way
/// that every answer's distance is the exact one (re-scored with the full vector).
fn cosine_recall(index: &VectorIndex, data: &[Vec<f32>], queries: &[Vec<f32>], ef: usize) -> f64 {
    let d = GraphDistance::new(Metric::Cosine);
    let mut found = 0;
    for q in queries {
        let mut exact: Vec<(f32, usize)> = data
            .iter()
            .enumerate()
            .map(|(i, v)| (d.distance(q, v), i))
            .collect();
        exact.sort_by(|a, b| a.0.total_cmp(&b.0));
        let want: Vec<usize> = exact.iter().take(10).map(|(_, i)| *i).collect();
        let hits = index.search(q, 10, ef, None);
        for hit in &hits {
            assert_eq!(hit.distance, d.distance(q, &data[hit.id]), "{hit:?}");
        }
        found += hits.iter().filter(|h| want.contains(&h.id)).count();
    }
    found as f64 / (10 * queries.len()) as f64
}

#[test]
fn quantized_graphs_find_the_true_neighbours_after_re_scoring() {
    let dimension = 256;
    let (data, queries) = embeddings(6000, 50, dimension);
    for (setup, ef) in [
        (GRAPE, 64),
        (SCALAR_IN_MEMORY, 64),
        (SCALAR_ON_DISK, 64),
        (BINARY_IN_MEMORY, 256),
        (BINARY_ON_DISK, 256),
    ] {
        let index = setup.index(dimension, Metric::Cosine, 1_000_000);
        for v in &data {
            index.add(v);
        }
        while index.maintain(1000) > 0 {}
        let recall = cosine_recall(&index, &data, &queries, ef);
        assert!(recall >= 0.95, "{setup:?}: recall@10 {recall} at ef {ef}");
        // What memory holds: full vectors, or codes (with the full vectors beside them, or on
        // disk).
        let stats = index.stats();
        let full = 6000 * dimension as u64 * 4;
        let codes = match setup.quantization {
            Quantization::None => full,
            Quantization::Scalar => 6000 * (dimension as u64 + 4),
            Quantization::Binary => 6000 * dimension as u64 / 8,
        };
        let want = match (setup.quantization, setup.originals) {
            (Quantization::None, _) => full,
            (_, OriginalsPlace::Memory) => full + codes,
            (_, OriginalsPlace::Disk) => codes,
        };
        assert_eq!(stats.vector_bytes, want, "{setup:?}: {stats:?}");
        // Every live vector reads back exactly, wherever it is kept.
        for id in [0, 2999, 5999] {
            assert_eq!(
                index.with_vector(id, <[f32]>::to_vec).as_ref(),
                Some(&data[id])
            );
        }
    }
}

#[test]
fn a_small_quantized_collection_is_retrained_as_it_grows() {
    let (data, queries) = embeddings(5000, 30, 64);
    let index = SCALAR_ON_DISK.index(64, Metric::Cosine, 1_000_000);
    // The first codes are learnt from a handful of vectors.
    for v in &data[..20] {
        index.add(v);
    }
    while index.maintain(1000) > 0 {}
    assert_eq!(index.trained_on.load(AtomicOrdering::Relaxed), 20);
    for v in &data[20..] {
        index.add(v);
    }
    while index.maintain(1000) > 0 {}
    let stats = index.stats();
    assert!(stats.rebuilds >= 1, "{stats:?}");
    assert!(index.trained_on.load(AtomicOrdering::Relaxed) >= 1000);
    let recall = cosine_recall(&index, &data, &queries, 64);
    assert!(recall >= 0.95, "recall@10 {recall}");
}

#[test]
fn a_quantized_collection_loaded_in_steps_is_retrained_a_bounded_number_of_times() {
    let (data, _) = embeddings(40_000, 0, 32);
    let index = SCALAR_IN_MEMORY.index(32, Metric::Cosine, 100_000);
    for chunk in data.chunks(1000) {
        for v in chunk {
            index.add(v);
        }
        index.maintain(4096);
    }
    while index.maintain(4096) > 0 {}
    let stats = index.stats();
    // Learnt from the first 1,000, again at 4,000 and at 16,000 (a sample of 10,000): two
    // rebuilds, then none however far the collection grows.
    assert_eq!((stats.rebuilds, stats.pending), (2, 0), "{stats:?}");
    assert_eq!(
        index.trained_on.load(AtomicOrdering::Relaxed),
        quantize::TRAINING_SAMPLE
    );
    assert!(!index.needs_maintenance());
}

#[test]
fn a_rebuild_gives_back_the_disk_blocks_of_dead_full_vectors() {
    let (data, queries) = embeddings(3000, 20, 256);
    let index = SCALAR_ON_DISK.index(256, Metric::Cosine, 1000);
    for v in &data {
        index.add(v);
    }
    while index.maintain(4096) > 0 {}
    let before = index.stats();
    assert!(
        before.vector_disk_bytes >= 3000 * 256 * 4,
        "the full vectors are on disk: {before:?}"
    );
    for id in 0..2000 {
        index.remove(id);
    }
    while index.maintain(4096) > 0 {}
    let after = index.stats();
    assert!(after.rebuilds > before.rebuilds, "{after:?}");
    assert!(
        after.vector_disk_bytes <= 1100 * 256 * 4,
        "blocks of the 2,000 dead vectors given back: {after:?}"
    );
    for id in [2000, 2500, 2999] {
        assert_eq!(
            index.with_vector(id, <[f32]>::to_vec).as_ref(),
            Some(&data[id])
        );
    }
    let live = &data[2000..];
    let hits = index.search(&queries[0], 10, 64, None);
    assert!(hits.iter().all(|h| h.id >= 2000));
    let d = GraphDistance::new(Metric::Cosine);
    for hit in hits {
        assert_eq!(hit.distance, d.distance(&queries[0], &live[hit.id - 2000]));
    }
}
