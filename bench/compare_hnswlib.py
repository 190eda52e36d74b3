#!/usr/bin/env python3
"""Grape's index layer against hnswlib, side by side on the same data, in one run.

    python3 -m venv .venv && .venv/bin/pip install hnswlib numpy
    cargo build --release -p grape-bench --bin grape-index
    .venv/bin/python bench/compare_hnswlib.py            # 100,000 x 128, 100 clusters, sigma 0.3

The dataset is generated deterministically (numpy seed), exact ground truth is computed by
brute force, then hnswlib and Grape (`target/release/grape-index`, once per graph engine in
--graphs) build and search in alternating rounds: build time on --build-threads threads
(Grape's hnsw_rs engine inserts on one), and for each ef recall@10 and queries/s on one search
thread. hnswlib answers all queries in one knn_query call on one thread, so no Python overhead
is counted per query. Medians over rounds. "index MiB" is the resident memory the index added
to its process (vectors and graph), read from /proc/self/status before and after the build.

Quantization (200,000 x 1536 embedding-like vectors, cosine):

    .venv/bin/pip install hnswlib numpy faiss-cpu
    .venv/bin/python bench/compare_hnswlib.py --data embedding --count 200000 --dim 1536 \
        --metric cosine --queries 300 --rounds 1 --ef 64,128,256 --quantization none,scalar,binary

runs Grape with each quantization (full vectors in memory, and --originals for where else),
hnswlib (full vectors only), and faiss when it is installed: IndexHNSWFlat, IndexHNSWSQ
(8-bit codes) wrapped in IndexRefineFlat so its candidates are re-scored with the full vectors
as Grape's are, and IndexBinaryHNSW (sign bits after centring) with its ef candidates
re-scored exactly in numpy. faiss is given the same build threads and one search thread.
"""
import argparse, json, os, statistics, subprocess, sys, tempfile, time

import hnswlib
from importlib.metadata import version
import numpy as np


def dataset(n, dim, clusters, sigma, queries, seed):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    pick = rng.integers(0, clusters, n + queries)
    points = centres[pick] + rng.normal(0.0, sigma, (n + queries, dim)).astype(np.float32)
    return points[:n].copy(), points[n:].copy()


def embedding(n, dim, low, clusters, noise, queries, seed):
    """A Gaussian mixture in `low` dimensions projected to `dim` by one random matrix, plus
    noise: spread over every component yet near a low-dimensional subspace, like embeddings."""
    rng = np.random.default_rng(seed)
    projection = rng.standard_normal((low, dim)).astype(np.float32)
    centres = rng.standard_normal((clusters, low)).astype(np.float32)
    pick = rng.integers(0, clusters, n + queries)
    out = np.empty((n + queries, dim), dtype=np.float32)
    for start in range(0, n + queries, 10_000):
        end = min(start + 10_000, n + queries)
        points = centres[pick[start:end]] + rng.standard_normal((end - start, low)).astype(np.float32)
        out[start:end] = points @ projection + rng.normal(0.0, noise, (end - start, dim)).astype(np.float32)
    return out[:n].copy(), out[n:].copy()


def normalised(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def ground_truth(base, queries, k):
    norms = (base * base).sum(1)
    out = np.empty((len(queries), k), dtype=np.int32)
    for start in range(0, len(queries), 100):
        q = queries[start:start + 100]
        d = norms[None, :] - 2.0 * q @ base.T
        part = np.argpartition(d, k, axis=1)[:, :k]
        rows = np.take_along_axis(d, part, 1)
        out[start:start + 100] = np.take_along_axis(part, np.argsort(rows, 1), 1)
    return out


def write_fvecs(path, x):
    with open(path, "wb") as f:
        for row in x:
            f.write(np.int32(len(row)).tobytes())
            f.write(row.astype(np.float32).tobytes())


def write_ivecs(path, x):
    with open(path, "wb") as f:
        for row in x:
            f.write(np.int32(len(row)).tobytes())
            f.write(row.astype(np.int32).tobytes())


def resident_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def run_hnswlib(base, queries, truth, args):
    before = resident_mb()
    index = hnswlib.Index(space="cosine" if args.metric == "cosine" else "l2", dim=base.shape[1])
    index.init_index(max_elements=len(base), M=args.m, ef_construction=args.ef_construction, random_seed=100)
    index.set_num_threads(args.build_threads)
    start = time.perf_counter()
    index.add_items(base, np.arange(len(base)))
    build = time.perf_counter() - start
    index_mb = resident_mb() - before
    index.set_num_threads(1)
    results = []
    for ef in args.ef:
        index.set_ef(ef)
        index.knn_query(queries[:100], k=10, num_threads=1)
        start = time.perf_counter()
        found, _ = index.knn_query(queries, k=10, num_threads=1)
        for _ in range(1, args.passes):
            index.knn_query(queries, k=10, num_threads=1)
        seconds = time.perf_counter() - start
        hits = sum(len(set(f) & set(t[:10])) for f, t in zip(found, truth))
        results.append({"ef": ef, "recall": hits / (10 * len(queries)), "qps": args.passes * len(queries) / seconds})
    return {"library": "hnswlib " + version("hnswlib"), "build_seconds": build,
            "build_threads": args.build_threads, "index_mb": index_mb, "results": results}


def timed_searches(search, queries, truth, args):
    results = []
    for ef in args.ef:
        search(queries[:100], ef)
        start = time.perf_counter()
        found = search(queries, ef)
        for _ in range(1, args.passes):
            search(queries, ef)
        seconds = time.perf_counter() - start
        hits = sum(len(set(f) & set(t[:10])) for f, t in zip(found, truth))
        results.append({"ef": ef, "recall": hits / (10 * len(queries)), "qps": args.passes * len(queries) / seconds})
    return results


def run_faiss(kind, base, queries, truth, args):
    """faiss's HNSW over full vectors, 8-bit scalar codes re-scored (IndexRefineFlat), or
    binary codes re-scored in numpy. Cosine runs on normalised vectors with inner product."""
    import faiss
    faiss.omp_set_num_threads(args.build_threads)
    cosine = args.metric == "cosine"
    x = normalised(base) if cosine else base
    q = normalised(queries) if cosine else queries
    dim = x.shape[1]
    metric = faiss.METRIC_INNER_PRODUCT if cosine else faiss.METRIC_L2
    before = resident_mb()
    start = time.perf_counter()
    if kind == "binary":
        means = x[:10_000].mean(0)
        codes = lambda v: np.packbits(v > means, axis=1)
        index = faiss.IndexBinaryHNSW(dim, args.m)
        index.hnsw.efConstruction = args.ef_construction
        index.add(codes(x))
    else:
        if kind == "scalar":
            index = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit_uniform, args.m, metric)
        else:
            index = faiss.IndexHNSWFlat(dim, args.m, metric)
        index.hnsw.efConstruction = args.ef_construction
        index.train(x)
        index.add(x)
        if kind == "scalar":
            index = faiss.IndexRefineFlat(index, faiss.swig_ptr(x))
    build = time.perf_counter() - start
    index_mb = resident_mb() - before
    faiss.omp_set_num_threads(1)

    def search(qs, ef):
        if kind == "binary":
            index.hnsw.efSearch = ef
            _, found = index.search(codes(qs), ef)
            # Exact re-scoring of the ef candidates, as Grape does.
            sims = np.einsum("qd,qkd->qk", qs, x[found]) if cosine else -((x[found] - qs[:, None, :]) ** 2).sum(2)
            return np.take_along_axis(found, np.argsort(-sims, 1)[:, :10], 1)
        if kind == "scalar":
            params = faiss.IndexRefineSearchParameters(k_factor=ef / 10.0,
                                                       base_index_params=faiss.SearchParametersHNSW(efSearch=ef))
            return index.search(qs, 10, params=params)[1]
        index.hnsw.efSearch = ef
        return index.search(qs, 10)[1]

    results = timed_searches(search, q, truth, args)
    return {"library": f"faiss {faiss.__version__} ({kind})", "build_seconds": build,
            "build_threads": args.build_threads, "index_mb": index_mb, "results": results}


def run_grape(files, graph, args, quantization="none"):
    cmd = [args.grape_index, "--base", files["base"], "--queries", files["queries"], "--truth", files["truth"],
           "--metric", args.metric, "--m", str(args.m), "--ef-construction", str(args.ef_construction),
           "--graph", graph, "--threads", str(args.build_threads), "--passes", str(args.passes),
           "--ef", ",".join(map(str, args.ef)), "--quantization", quantization, "--originals", args.originals]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--clusters", type=int, default=100)
    p.add_argument("--sigma", type=float, default=0.3)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--m", type=int, default=16)
    p.add_argument("--ef-construction", type=int, default=200)
    p.add_argument("--ef", type=lambda s: [int(x) for x in s.split(",")], default=[32, 64, 128, 256])
    p.add_argument("--build-threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--passes", type=int, default=5, help="timed passes over the queries at each ef")
    p.add_argument("--graphs", type=lambda s: s.split(","), default=["grape"],
                   help="Grape graph engines to run: grape, hnsw_rs (slow to build)")
    p.add_argument("--data", choices=["clustered", "embedding"], default="clustered")
    p.add_argument("--low-dim", type=int, default=64, help="embedding: dimensions of the mixture")
    p.add_argument("--noise", type=float, default=2.0, help="embedding: noise per component")
    p.add_argument("--metric", choices=["l2", "cosine"], default="l2")
    p.add_argument("--quantization", type=lambda s: s.split(","), default=["none"],
                   help="Grape (and faiss) runs: none, scalar, binary")
    p.add_argument("--originals", choices=["memory", "disk"], default="memory")
    p.add_argument("--grape-index", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "grape-index"))
    args = p.parse_args()

    if args.data == "embedding":
        base, queries = embedding(args.count, args.dim, args.low_dim, args.clusters, args.noise, args.queries, args.seed)
    else:
        base, queries = dataset(args.count, args.dim, args.clusters, args.sigma, args.queries, args.seed)
    if args.metric == "cosine":
        truth = ground_truth(normalised(base), normalised(queries), 10)
    else:
        truth = ground_truth(base, queries, 10)
    try:
        import faiss  # noqa: F401
        have_faiss = args.metric == "cosine" or args.quantization != ["none"]
    except ImportError:
        have_faiss = False
    tmp = tempfile.mkdtemp(prefix="grape-compare-")
    files = {k: os.path.join(tmp, f"{k}.{'ivecs' if k == 'truth' else 'fvecs'}") for k in ("base", "queries", "truth")}
    write_fvecs(files["base"], base)
    write_fvecs(files["queries"], queries)
    write_ivecs(files["truth"], truth)

    runs = {"hnswlib": []}
    for g in args.graphs:
        for qz in args.quantization:
            runs[(g, qz)] = []
    if have_faiss:
        for qz in args.quantization:
            runs[("faiss", qz)] = []
    for r in range(args.rounds):
        runs["hnswlib"].append(run_hnswlib(base, queries, truth, args))
        for g in args.graphs:
            for qz in args.quantization:
                runs[(g, qz)].append(run_grape(files, g, args, qz))
        if have_faiss:
            for qz in args.quantization:
                runs[("faiss", qz)].append(run_faiss(qz, base, queries, truth, args))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)

    shape = (f"embedding-like ({args.low_dim}-dimensional mixture, noise {args.noise})" if args.data == "embedding"
             else f"sigma {args.sigma}")
    print(f"dataset: {args.count} x {args.dim} {args.metric}, {args.clusters} clusters, {shape}, "
          f"{args.queries} queries, seed {args.seed}; M={args.m}, ef_construction={args.ef_construction}; "
          f"medians of {args.rounds} alternating rounds; search on 1 thread")
    print()
    print("| library | build (s) | build threads | index MiB | " + " | ".join(f"ef={ef} recall / QPS" for ef in args.ef) + " |")
    print("|---" * (4 + len(args.ef)) + "|")
    for name, rs in runs.items():
        build = statistics.median(r["build_seconds"] for r in rs)
        memory = statistics.median(r["index_mb"] for r in rs)
        cells = []
        for i, ef in enumerate(args.ef):
            recall = statistics.median(r["results"][i]["recall"] for r in rs)
            qps = statistics.median(r["results"][i]["qps"] for r in rs)
            cells.append(f"{recall:.3f} / {qps:,.0f}")
        print(f"| {rs[0]['library']} | {build:.1f} | {rs[0]['build_threads']} | {memory:,.0f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
