use super::*;
use crate::index::distance::GraphDistance;
use grape_client::Metric;

fn points(n: usize, dimension: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut state = seed.max(1);
    (0..n)
        .map(|_| {
            (0..dimension)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state % 10_000) as f32 / 10_000.0
                })
                .collect()
        })
        .collect()
}

fn exact(vectors: &[Vec<f32>], query: &[f32], k: usize) -> Vec<usize> {
    let d = GraphDistance::new(Metric::L2);
    let mut all: Vec<(f32, usize)> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| (d.distance(query, v), i))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    all.into_iter().take(k).map(|(_, i)| i).collect()
}

fn graph(capacity: usize, dimension: usize) -> HnswGraph {
    HnswGraph::new(
        dimension,
        Space::Float(GraphDistance::new(Metric::L2)),
        GraphParams {
            m: 8,
            ef_construction: 64,
        },
        capacity,
    )
}

fn recall(g: &HnswGraph, vectors: &[Vec<f32>], queries: &[Vec<f32>], ef: usize) -> f64 {
    let mut hits = 0;
    for q in queries {
        let want = exact(vectors, q, 10);
        let got = g.search(q, 10, ef, None);
        hits += got
            .iter()
            .filter(|n| want.contains(&g.label(n.node)))
            .count();
    }
    hits as f64 / (10 * queries.len()) as f64
}

#[test]
fn an_empty_graph_finds_nothing_and_one_node_finds_itself() {
    let g = graph(4, 3);
    assert!(g.search(&[0.0, 0.0, 0.0], 5, 10, None).is_empty());
    g.insert(77, &[1.0, 2.0, 3.0]);
    let found = g.search(&[0.0, 0.0, 0.0], 5, 10, None);
    assert_eq!(found.len(), 1);
    assert_eq!(g.label(found[0].node), 77);
    assert_eq!(found[0].distance, 14.0);
}

#[test]
fn search_matches_brute_force_closely() {
    let vectors = points(3000, 16, 7);
    let g = graph(3000, 16);
    for (i, v) in vectors.iter().enumerate() {
        g.insert(i, v);
    }
    let queries = points(50, 16, 99);
    let r = recall(&g, &vectors, &queries, 100);
    assert!(r >= 0.95, "recall@10 {r}");
    // Results come nearest first, each with its true distance.
    let q = &queries[0];
    let found = g.search(q, 10, 100, None);
    assert!(found.windows(2).all(|w| w[0].distance <= w[1].distance));
    let d = GraphDistance::new(Metric::L2);
    for n in &found {
        assert_eq!(n.distance, d.distance(q, &vectors[g.label(n.node)]));
    }
}

#[test]
fn lists_stay_within_their_size_and_never_point_at_themselves() {
    let vectors = points(2000, 8, 3);
    let g = graph(2000, 8);
    for (i, v) in vectors.iter().enumerate() {
        g.insert(i, v);
    }
    for node in 0..2000u32 {
        let level = g.levels[node as usize].load(Mem::Relaxed) as usize;
        for layer in 0..=level {
            let list = g.list(node, layer);
            let len = list[0].load(Mem::Relaxed) as usize;
            assert!(len < list.len());
            assert!(len > 0, "node {node} unlinked on layer {layer}");
            for slot in &list[1..=len] {
                let n = slot.load(Mem::Relaxed);
                assert_ne!(n, node);
                assert!(g.levels[n as usize].load(Mem::Relaxed) as usize >= layer);
            }
        }
    }
}

#[test]
fn concurrent_inserts_and_searches_build_a_good_graph() {
    let vectors = points(4000, 16, 11);
    let g = graph(4000, 16);
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Mem::Relaxed);
                    if i >= vectors.len() {
                        break;
                    }
                    g.insert(i, &vectors[i]);
                    if i.is_multiple_of(50) {
                        // Searching while others insert sees only whole nodes.
                        for n in g.search(&vectors[i], 5, 32, None) {
                            assert!(g.label(n.node) < vectors.len());
                        }
                    }
                }
            });
        }
    });
    assert_eq!(g.len(), 4000);
    let queries = points(50, 16, 5);
    let r = recall(&g, &vectors, &queries, 100);
    assert!(r >= 0.95, "recall@10 {r}");
}

#[test]
fn a_filter_keeps_results_to_accepted_nodes() {
    let vectors = points(2000, 8, 21);
    let g = graph(2000, 8);
    for (i, v) in vectors.iter().enumerate() {
        g.insert(i, v);
    }
    let even = |n: Node| g.label(n).is_multiple_of(2);
    let found = g.search(&vectors[101], 10, 64, Some(&even));
    assert_eq!(found.len(), 10);
    assert!(found.iter().all(|n| g.label(n.node).is_multiple_of(2)));
}

#[test]
fn a_grown_graph_answers_like_the_original_and_takes_more() {
    let vectors = points(1500, 8, 17);
    let g = graph(1000, 8);
    for (i, v) in vectors[..1000].iter().enumerate() {
        g.insert(i, v);
    }
    let bigger = g.grown(1500);
    for q in &vectors[..20] {
        assert_eq!(g.search(q, 10, 50, None), bigger.search(q, 10, 50, None));
    }
    for (i, v) in vectors.iter().enumerate().skip(1000) {
        bigger.insert(i, v);
    }
    let queries = points(30, 8, 8);
    let r = recall(&bigger, &vectors, &queries, 100);
    assert!(r >= 0.95, "recall@10 {r}");
}

#[test]
fn a_written_graph_reads_back_the_same_and_a_bad_one_is_refused() {
    let vectors = points(1500, 12, 5);
    let g = graph(2048, 12);
    for (i, v) in vectors.iter().enumerate() {
        // Labels are not written: node i comes back labelled i.
        assert_eq!(g.insert(i, v) as usize, g.len() - 1);
    }
    let mut bytes = Vec::new();
    g.write_to(&mut bytes).unwrap();
    let read = |bytes: &[u8]| {
        HnswGraph::read_from(
            &mut &bytes[..],
            12,
            Space::Float(GraphDistance::new(Metric::L2)),
            GraphParams {
                m: 8,
                ef_construction: 64,
            },
            1500,
        )
    };
    let copy = read(&bytes).unwrap();
    assert_eq!(copy.len(), 1500);
    for q in points(20, 12, 77) {
        let a: Vec<(usize, f32)> = g
            .search(&q, 10, 64, None)
            .iter()
            .map(|n| (g.label(n.node), n.distance))
            .collect();
        let b: Vec<(usize, f32)> = copy
            .search(&q, 10, 64, None)
            .iter()
            .map(|n| (n.node as usize, n.distance))
            .collect();
        assert_eq!(a, b);
    }
    // The copy grows like any graph.
    copy.insert(1500, &vectors[0]);
    assert_eq!(copy.search(&vectors[0], 2, 32, None).len(), 2);
    // A neighbour past the last node (layer-0 list of node 0 starts after the 24-byte head
    // and 1,500 levels), a wrong dimension, a cut stream: refused.
    let mut bad = bytes.clone();
    let first_neighbour = 24 + 1500 + 4;
    bad[first_neighbour..first_neighbour + 4].copy_from_slice(&5000u32.to_le_bytes());
    assert!(
        read(&bad)
            .unwrap_err()
            .to_string()
            .contains("neighbour 5000")
    );
    // An upper-layer link to a node that has no list on that layer, and an entry point below
    // the top layer: a walk would leave the graph.
    let levels: Vec<u8> = bytes[24..24 + 1500].to_vec();
    let block = (17 + 12) * 4;
    let upper_start = 24 + 1500 + 1500 * block;
    let low = levels.iter().position(|l| *l == 0).unwrap() as u32;
    let mut bad = bytes.clone();
    bad[upper_start + 4..upper_start + 8].copy_from_slice(&low.to_le_bytes());
    let error = read(&bad).unwrap_err().to_string();
    assert!(
        error.contains(&format!("neighbour {low} of level 0")),
        "{error}"
    );
    let mut bad = bytes.clone();
    bad[16..24].copy_from_slice(&(low as u64).to_le_bytes());
    assert!(read(&bad).unwrap_err().to_string().contains("entry point"));
    let mut other = bytes.clone();
    other[4] = 13;
    assert!(read(&other).is_err());
    assert!(read(&bytes[..bytes.len() - 1]).is_err());
}
