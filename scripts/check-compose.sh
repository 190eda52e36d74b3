#!/usr/bin/env bash
# Static checks of the compose deployment: docker-compose config, nginx -t, promtool check
# config/rules and the alert rules' unit tests (promtool test rules), amtool check-config, the
# Grafana dashboards parse (that every query names a metric Grape exports is a test:
# tests/tests/monitoring_config.rs; that each returns data is tests/compose/run.sh).
# Installs docker-compose, nginx-light, prometheus (promtool) and prometheus-alertmanager
# (amtool) when missing; their services are not started.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v amtool >/dev/null 2>&1 || need+=(prometheus-alertmanager)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  # The prometheus package must not start a server here.
  DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
docker-compose -f docker-compose.cluster.yml config -q
docker-compose -f docker-compose.cluster.yml -f tests/compose/override.yml config -q

# nginx -t resolves upstream names: check a copy whose upstreams point at loopback.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sed -E 's/grape-node-[0-9]+:8080/127.0.0.1:8080/' config/nginx.conf > "$work/nginx.conf"
nginx -t -q -c "$work/nginx.conf" -g "pid $work/nginx.pid; error_log stderr;"

promtool check config config/prometheus.yml
promtool check rules config/grape_rules.yml
amtool check-config config/alertmanager.yml
# Every alert fires on its data after its `for`, not on healthy data, and has a unit test and
# a runbook paragraph.
(cd tests/monitoring && promtool test rules grape_rules_test.yml)
# PyYAML: the venv scripts/check-k8s.sh makes, else the system's.
py=python3
[ -x .tools/venv/bin/python ] && py=.tools/venv/bin/python
"$py" - <<'PY'
import re, yaml
rules = yaml.safe_load(open("config/grape_rules.yml"))
alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
tests = yaml.safe_load(open("tests/monitoring/grape_rules_test.yml"))
tested = {t["alertname"] for case in tests["tests"] for t in case.get("alert_rule_test", [])
          if t.get("exp_alerts")}
runbooks = set(re.findall(r"^## (Grape\w+)", open("docs/alerts.md").read(), re.M))
missing = [(a, what) for a in sorted(alerts) for what, have in
           (("a firing unit test", tested), ("a runbook in docs/alerts.md", runbooks)) if a not in have]
assert not missing, missing
print(f"alert rules: {len(alerts)} tested and documented")
PY
for dashboard in config/grafana/dashboards/*.json; do
  python3 -c "import json, sys; d = json.load(open(sys.argv[1])); assert d['panels'], 'no panels'" "$dashboard"
done
echo "compose configuration: OK"
