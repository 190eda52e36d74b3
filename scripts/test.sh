#!/usr/bin/env bash
# The whole test suite from a fresh checkout: system packages, formatting, lints, unit tests and
# black-box tests against real grape processes.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The Helm chart and the kustomize manifests: helm lint/template, Kubernetes schema validation.
./scripts/check-k8s.sh
# The compose deployment: docker-compose config, nginx -t, promtool.
./scripts/check-compose.sh
# The black-box tests start the real binary: the release build, as users run it (debug builds
# of the HNSW graphs make the multi-node tests several times slower).
cargo build --workspace --bins
cargo build --release --bin grape --bin grape-operator
export GRAPE_BIN="$PWD/target/release/grape"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
  # The cluster suite again, its nodes trusting each other through verified TLS, not a secret.
  GRAPE_TEST_CLUSTER_TLS=1 cargo nextest run -p grape-e2e --test cluster --no-fail-fast
else
  cargo test --workspace --no-fail-fast
  GRAPE_TEST_CLUSTER_TLS=1 cargo test -p grape-e2e --test cluster --no-fail-fast
fi
# The compose cluster on a real Docker daemon (builds the image from the release binaries).
./tests/compose/run.sh
