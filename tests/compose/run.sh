#!/usr/bin/env bash
# The compose cluster on a real Docker daemon: builds the images (Grape from binaries built
# here, nginx and the monitoring from Debian packages, all on a local Debian base: nothing is
# pulled), brings up the three nodes, nginx, Prometheus, Alertmanager and the node and nginx
# exporters with docker-compose.cluster.yml, loads documents through nginx, stops a node and
# checks that reads and writes through nginx continue, restarts it and checks that it catches
# up; backs up and restores; then checks the monitoring: every target up, every dashboard query
# answered with data during a load run, and a stopped node's GrapeNodeDown reaching
# Alertmanager within the rule's `for` and resolving when the node is back.
# Needs root (dockerd). Installs docker.io, docker-compose and debootstrap when missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"
project=grapecompose
compose=(docker-compose -p "$project" -f docker-compose.cluster.yml -f tests/compose/override.yml)
key="grape-dev-admin-key"

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
if ! docker info >/dev/null 2>&1; then
  (dockerd >/tmp/grape-dockerd.log 2>&1 &)
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
fi
if ! docker image inspect grape-base:bookworm >/dev/null 2>&1; then
  rootfs=$(mktemp -d)
  debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >/dev/null
  tar -C "$rootfs" -c . | docker import - grape-base:bookworm >/dev/null
  rm -rf "$rootfs"
fi

cargo build --release --bin grape --bin grape-operator
mkdir -p dist
cp target/release/grape target/release/grape-operator dist/
docker build -q -t grape-vector-db:compose-test --target prebuilt \
  --build-arg RUNTIME_IMAGE=grape-base:bookworm . >/dev/null
docker build -q -t grape-nginx:compose-test -f tests/compose/nginx.Dockerfile tests/compose >/dev/null
for target in prometheus alertmanager node-exporter nginx-exporter; do
  docker build -q -f docker/monitoring.Dockerfile --target "$target" \
    --build-arg BASE_IMAGE=grape-base:bookworm -t "grape-$target:compose-test" docker >/dev/null
done

cleanup() {
  if [ "${KEEP_COMPOSE:-}" = "" ]; then
    "${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
    rm -rf backups
  fi
}
trap cleanup EXIT
cleanup
# The backups folder the nodes share (docs/compose.md#backups), writable by the image's user.
rm -rf backups && mkdir -p backups && chown 10001:10001 backups
# Everything but Grafana, whose image cannot be built from Debian's packages.
"${compose[@]}" up -d --no-build grape-node-1 grape-node-2 grape-node-3 nginx \
  prometheus alertmanager node-exporter nginx-exporter

python3 - "$key" <<'PY'
import json, sys, time, urllib.request, urllib.error, random

KEY = sys.argv[1]
LB = "http://127.0.0.1"
NODES = {"node-1": "http://127.0.0.1:8080", "node-2": "http://127.0.0.1:8081", "node-3": "http://127.0.0.1:8082"}
DIM = 1536

def call(method, url, body=None, timeout=10):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"X-API-Key": KEY, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except Exception as e:
        return 0, str(e)

def wait(what, check, within=180):
    deadline = time.time() + within
    while time.time() < deadline:
        if check():
            print(f"ok: {what}")
            return
        time.sleep(1)
    sys.exit(f"FAILED: {what} within {within}s")

def vector(seed):
    rnd = random.Random(seed)
    return [rnd.uniform(-1, 1) for _ in range(DIM)]

def ready(url):
    return call("GET", url + "/ready")[0] == 200

wait("three nodes ready", lambda: all(ready(u) for u in NODES.values()))
wait("nginx answers /ready", lambda: ready(LB))

acked = {}
def write_batch(prefix, start, count):
    docs = [{"id": f"{prefix}-{i}", "vector": vector(i), "metadata": {"i": i}} for i in range(start, start + count)]
    status, body = call("POST", LB + "/api/v1/documents/batch", {"documents": docs}, timeout=30)
    if status == 200:
        for d in docs:
            acked[d["id"]] = d["metadata"]["i"]
    return status

for b in range(10):
    status = write_batch("base", b * 100, 100)
    assert status == 200, f"batch {b}: {status}"
print(f"ok: loaded {len(acked)} documents through nginx")
status, body = call("POST", LB + "/api/v1/search", {"vector": vector(7), "top_k": 3})
assert status == 200 and body["results"][0]["id"] == "base-7", (status, body)
print("ok: search through nginx finds base-7 first")

# A node goes away: reads and writes through nginx keep working.
import subprocess
subprocess.run(["docker", "stop", "grape-node-2"], check=True, stdout=subprocess.DEVNULL)
time.sleep(2)
failures = 0
for b in range(20):
    if write_batch("during", b * 10, 10) != 200:
        failures += 1
    s, body = call("POST", LB + "/api/v1/search", {"vector": vector(b), "top_k": 1})
    if s != 200:
        failures += 1
    s, _ = call("GET", LB + f"/api/v1/documents/base-{b}")
    if s != 200:
        failures += 1
print(f"ok: with grape-node-2 stopped, {60 - failures} of 60 requests through nginx succeeded")
assert failures <= 3, f"{failures} of 60 requests failed with a node down"

subprocess.run(["docker", "start", "grape-node-2"], check=True, stdout=subprocess.DEVNULL)
wait("grape-node-2 ready again", lambda: ready(NODES["node-2"]), within=120)

def checksums():
    sums = []
    for url in NODES.values():
        s, body = call("GET", url + "/admin/checksum")
        if s != 200:
            return None
        sums.append(json.dumps(body["shards"], sort_keys=True))
    return sums

wait("grape-node-2 caught up (checksums equal)", lambda: (c := checksums()) is not None and len(set(c)) == 1, within=120)
missing = [i for i in acked if call("GET", NODES["node-2"] + f"/api/v1/documents/{i}")[0] != 200]
assert not missing, f"{len(missing)} acknowledged documents missing on node-2: {missing[:5]}"
print(f"ok: all {len(acked)} acknowledged documents are on the restarted node")

# Backup to the host folder, then restore it beside the original under another name.
s, started = call("POST", NODES["node-1"] + "/admin/backups", {"destination": "file:///backups"})
assert s == 202, (s, started)
def backup_state():
    s, body = call("GET", NODES["node-3"] + "/admin/backups/" + started["id"])
    return body if s == 200 and body["state"] != "running" else None
wait("the backup done", lambda: backup_state() is not None, within=120)
done = backup_state()
assert done["state"] == "done", done
s, _ = call("POST", NODES["node-2"] + "/admin/restore",
            {"source": "file:///backups", "backup_id": done["id"], "rename": {"default": "restored"}})
assert s == 202, s
def restore_state():
    s, body = call("GET", NODES["node-2"] + "/admin/restore")
    found = [r for r in body.get("restores", []) if r["backup_id"] == done["id"] and r["state"] != "running"]
    return found[0] if found else None
wait("the restore done", lambda: restore_state() is not None, within=180)
assert restore_state()["state"] == "done", restore_state()
def by_collection(name):
    s, body = call("GET", NODES["node-1"] + "/admin/checksum")
    return sorted((c["shard"], c["documents"], c["checksum"]) for c in body["shards"] if c["collection"] == name)
wait("the restored copy matches", lambda: by_collection("restored") == by_collection("default"), within=60)
print(f"ok: backup {done['id']} ({done['documents']} documents) to ./backups restored as 'restored', checksums equal")
s, _ = call("GET", LB + "/metrics")
assert s == 403, f"/metrics through nginx from outside should be refused, got {s}"
inside = subprocess.run(["docker", "exec", "grape-node-1", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                         "-H", f"X-API-Key: {KEY}", "http://nginx/metrics"], capture_output=True, text=True).stdout
assert inside == "200", f"/metrics through nginx from inside the network: {inside}"
print("ok: /metrics is internal only (403 from the host, 200 from the compose network)")

import base64
def with_authorization(url, authorization):
    req = urllib.request.Request(url, headers={"Authorization": authorization})
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, response.headers
    except urllib.error.HTTPError as e:
        return e.code, e.headers
def basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
s, _ = with_authorization(LB + "/admin/cluster/status", basic("admin", "grape-dev-admin-password"))
assert s == 200, f"/admin through nginx with the development user's basic auth: {s}"
s, headers = with_authorization(LB + "/admin/cluster/status", basic("admin", "not-the-password"))
assert s == 401 and headers.get("WWW-Authenticate", "").startswith("Basic"), f"wrong password: {s} {dict(headers)}"
print("ok: /admin through nginx takes a user's basic auth (200) and refuses a wrong password (401)")
PY

python3 - "$key" <<'PY'
import json, math, random, subprocess, sys, threading, time, urllib.parse, urllib.request, urllib.error, glob

KEY = sys.argv[1]
LB = "http://127.0.0.1"
PROM = "http://127.0.0.1:9090"
AM = "http://127.0.0.1:9093"
DIM = 1536

def get(url, timeout=10):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return json.loads(r.read())
    except Exception as e:
        return {"error": str(e)}

def call(method, url, body=None):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method=method,
                                 headers={"X-API-Key": KEY, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except Exception:
        return 0

def wait(what, check, within):
    start = time.time()
    while time.time() - start < within:
        if check():
            took = time.time() - start
            print(f"ok: {what} ({took:.0f} s)")
            return took
        time.sleep(1)
    sys.exit(f"FAILED: {what} within {within}s")

# Every target Prometheus scrapes is up: the three nodes, the node exporter and nginx's.
def targets():
    body = get(PROM + "/api/v1/targets")
    return body.get("data", {}).get("activeTargets", [])
def all_up():
    found = targets()
    return len(found) == 5 and all(t["health"] == "up" for t in found)
wait("Prometheus scrapes 5 targets, all up", all_up, 120)
print("   " + ", ".join(f'{t["labels"]["job"]}/{t["labels"]["instance"]}' for t in targets()))

# A load run through nginx: writes and searches for as long as the dashboards are checked.
stop = threading.Event()
done = {"writes": 0, "searches": 0}
def vector(seed):
    rnd = random.Random(seed)
    return [rnd.uniform(-1, 1) for _ in range(DIM)]
def load():
    i = 0
    while not stop.is_set():
        docs = [{"id": f"load-{i}-{j}", "vector": vector(i * 10 + j)} for j in range(10)]
        if call("POST", LB + "/api/v1/documents/batch", {"documents": docs}) == 200:
            done["writes"] += 1
        for k in range(3):
            if call("POST", LB + "/api/v1/search", {"vector": vector(i + k), "top_k": 5}) == 200:
                done["searches"] += 1
        i += 1
        time.sleep(0.1)
loader = threading.Thread(target=load, daemon=True)
loader.start()
time.sleep(30)

# Every PromQL expression of every shipped dashboard answers with data from the real
# Prometheus during the load (NaN counts as no data: a panel would show nothing useful).
def answers(expr):
    body = get(PROM + "/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    if body.get("status") != "success":
        return None, body.get("error", body)
    series = body["data"]["result"]
    values = [float(s["value"][1]) for s in series]
    return [v for v in values if not math.isnan(v)], None
queries = []
for path in sorted(glob.glob("config/grafana/dashboards/*.json")):
    for panel in json.load(open(path))["panels"]:
        for target in panel["targets"]:
            queries.append((path.split("/")[-1], panel["title"], target["expr"]))
empty = {}
deadline = time.time() + 90
while True:
    empty = {}
    for dashboard, title, expr in queries:
        values, error = answers(expr)
        if not values:
            empty[(dashboard, title, expr)] = error or "no data"
    if not empty or time.time() > deadline:
        break
    time.sleep(5)
stop.set()
loader.join()
for (dashboard, title, expr), why in empty.items():
    print(f"   NO DATA: {dashboard} / {title}: {expr}: {why}")
assert not empty, f"{len(empty)} dashboard queries returned nothing"
print(f"ok: all {len(queries)} dashboard queries returned data during a load run "
      f"({done['writes']} batches written, {done['searches']} searches through nginx)")

# A node stops: GrapeNodeDown reaches Alertmanager within its `for` (30 s), one scrape (5 s),
# one rule evaluation (5 s) and 10 s for a loaded machine, and resolves once the node is back.
def node_down_alerts():
    query = urllib.parse.urlencode({"filter": 'alertname="GrapeNodeDown"', "active": "true"})
    body = get(AM + "/api/v2/alerts?" + query)
    if not isinstance(body, list):
        return None
    now = time.time()
    return [a["labels"].get("instance") for a in body if a["status"]["state"] == "active"]
assert node_down_alerts() == [], f"GrapeNodeDown already active: {node_down_alerts()}"
subprocess.run(["docker", "stop", "grape-node-3"], check=True, stdout=subprocess.DEVNULL)
took = wait("GrapeNodeDown for grape-node-3 active in Alertmanager",
            lambda: node_down_alerts() == ["grape-node-3:9091"], 30 + 5 + 5 + 20)
assert took <= 30 + 5 + 5 + 10, f"GrapeNodeDown took {took:.0f} s to reach Alertmanager"
subprocess.run(["docker", "start", "grape-node-3"], check=True, stdout=subprocess.DEVNULL)
wait("GrapeNodeDown resolved in Alertmanager after grape-node-3 returned",
     lambda: node_down_alerts() == [], 60)
PY
echo "compose cluster: OK"
