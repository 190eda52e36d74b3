#!/usr/bin/env bash
# Installs the system packages Grape builds against (Debian/Ubuntu). Idempotent.
# RocksDB is linked from Debian's librocksdb-dev instead of being compiled (minutes, not half
# an hour); bindgen needs libclang.
set -euo pipefail
need=()
dpkg -s librocksdb-dev >/dev/null 2>&1 || need+=(librocksdb-dev)
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)
command -v clang >/dev/null 2>&1 || need+=(clang)
command -v curl >/dev/null 2>&1 || need+=(curl)
# The partition test cuts a node off with iptables rules on loopback addresses (needs root).
command -v iptables >/dev/null 2>&1 || need+=(iptables)
# grape-jepsen's slow-link fault shapes loopback traffic with tc.
command -v tc >/dev/null 2>&1 || need+=(iproute2)
# scripts/check-k8s.sh fetches helm/kubectl from npm and kubernetes-validate from PyPI.
command -v npm >/dev/null 2>&1 || need+=(npm)
python3 -c "import venv, ensurepip" >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
fi
# The backup tests write to a real S3-compatible server: moto's, from PyPI, in .tools/moto.
cd "$(dirname "$0")/.."
if [ ! -x .tools/moto/bin/moto_server ]; then
  mkdir -p .tools
  python3 -m venv .tools/moto
  .tools/moto/bin/pip install -q 'moto[server]'
fi
