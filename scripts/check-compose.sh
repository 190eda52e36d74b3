#!/usr/bin/env bash
# Static checks of the compose deployment: docker-compose config, nginx -t, promtool check
# config/rules, the Grafana dashboard parses (that every query names a metric Grape exports is
# a test: tests/tests/monitoring_config.rs). Installs docker-compose, nginx-light and
# prometheus (for promtool) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
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
for dashboard in config/grafana/dashboards/*.json; do
  python3 -c "import json, sys; d = json.load(open(sys.argv[1])); assert d['panels'], 'no panels'" "$dashboard"
done
echo "compose configuration: OK"
