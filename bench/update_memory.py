#!/usr/bin/env python3
"""Memory of a node under updates: one real `grape` process, a collection of N documents,
every document replaced R times (each update gives it a new internal id), then the node's
resident memory and the vectors its indexes hold (`stored_vectors` in /admin/stats/shards).

    cargo build --release --bin grape
    python3 bench/update_memory.py --docs 20000 --dim 128 --rounds 10

Standard library only. Prints one line per measurement point.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request


def call(base, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        base + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read() or b"null")


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def settled(base):
    """Waits until every shard's graph holds all its documents and no rebuild is due."""
    while True:
        shards = call(base, "GET", "/admin/stats/shards")
        shards = shards.get("shards", shards) if isinstance(shards, dict) else shards
        if all(s["pending"] == 0 for s in shards):
            time.sleep(2.0)
            again = call(base, "GET", "/admin/stats/shards")
            again = again.get("shards", again) if isinstance(again, dict) else again
            if all(s["pending"] == 0 for s in again) and [s["rebuilds"] for s in again] == [
                s["rebuilds"] for s in shards
            ]:
                return again
        time.sleep(0.5)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grape", default="target/release/grape")
    parser.add_argument("--docs", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--rebuild-threshold", type=int, default=100000)
    parser.add_argument("--port", type=int, default=18480)
    args = parser.parse_args()

    data_dir = tempfile.mkdtemp(prefix="grape-update-memory-")
    env = dict(
        os.environ,
        GRAPE__DATABASE__VECTOR_DIMENSION=str(args.dim),
        GRAPE__INDEX__REBUILD_THRESHOLD=str(args.rebuild_threshold),
        GRAPE__NODE__LISTEN_ADDRESS=f"127.0.0.1:{args.port}",
        GRAPE__NODE__RAFT_ADDRESS=f"127.0.0.1:{args.port + 1}",
        GRAPE__MONITORING__METRICS_PORT=str(args.port + 2),
        GRAPE__NODE__DATA_DIR=data_dir,
        GRAPE__MONITORING__LOG_LEVEL="warn",
    )
    node = subprocess.Popen([args.grape], env=env)
    base = f"http://127.0.0.1:{args.port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(base + "/ready", timeout=1)
                break
            except Exception:
                time.sleep(0.1)
        rng = random.Random(7)
        started = time.time()
        for version in range(args.rounds + 1):
            for first in range(0, args.docs, 1000):
                documents = [
                    {
                        "id": f"doc-{i}",
                        "vector": [rng.random() for _ in range(args.dim)],
                        "metadata": {"version": version},
                    }
                    for i in range(first, min(first + 1000, args.docs))
                ]
                call(base, "POST", "/api/v1/documents/batch", {"documents": documents})
            if version in (0, args.rounds) or version % 5 == 0:
                shards = settled(base)
                print(
                    f"after {version:>3} rounds of updates ({(version + 1) * args.docs:>8} writes): "
                    f"rss {rss_mib(node.pid):8.1f} MiB, stored vectors "
                    f"{sum(s.get('stored_vectors', 0) for s in shards):>8}, live "
                    f"{sum(s['documents'] for s in shards):>8}, rebuilds "
                    f"{sum(s['rebuilds'] for s in shards)}, {time.time() - started:.0f} s",
                    flush=True,
                )
    finally:
        node.terminate()
        node.wait()
        subprocess.run(["rm", "-rf", data_dir])


if __name__ == "__main__":
    sys.exit(main())
