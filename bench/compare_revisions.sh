#!/usr/bin/env bash
# Runs grape-bench built from another git revision and from this working tree in alternating
# pairs, so that a change can be checked against noise: compare the medians (and the ratios
# of each pair) printed at the end.
#
#   bench/compare_revisions.sh REV [PAIRS] [-- grape-bench arguments]
#   bench/compare_revisions.sh 2b7baad 3 -- --count 20000 --graph grape --seconds 5
#
# REV is built in a temporary worktree with its own target directory (a first build takes
# minutes); nothing else should run on the machine meanwhile.
set -euo pipefail
cd "$(dirname "$0")/.."
rev="${1:?usage: bench/compare_revisions.sh REV [PAIRS] [-- grape-bench arguments]}"
shift
pairs=3
if [ $# -gt 0 ] && [ "$1" != "--" ]; then
  pairs="$1"
  shift
fi
[ "${1:-}" = "--" ] && shift
args=("$@")
[ ${#args[@]} -eq 0 ] && args=(--count 20000 --dim 128 --clusters 100 --metric l2 --graph grape --seconds 5)

sha="$(git rev-parse --short "$rev")"
tree="target/compare/$sha/src"
if [ ! -d "$tree" ]; then
  mkdir -p "target/compare/$sha"
  git worktree add --detach "$tree" "$sha" >/dev/null
fi
CARGO_TARGET_DIR="target/compare/$sha/target" cargo build --release -q \
  --manifest-path "$tree/Cargo.toml" -p grape-bench --bin grape-bench
cargo build --release -q -p grape-bench --bin grape-bench
old="target/compare/$sha/target/release/grape-bench"
new="target/release/grape-bench"

results="$(mktemp)"
for i in $(seq 1 "$pairs"); do
  for side in old new; do
    binary="$old"
    [ "$side" = new ] && binary="$new"
    "$binary" "${args[@]}" 2>/dev/null | grep -E '^\| (http|in-process) \|' \
      | sed "s/^/$side $i /" | tee -a "$results"
  done
done

echo
echo "QPS per row: median of $sha (old) and of this tree (new), and the median ratio new/old"
python3 - "$results" <<'EOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    side, run, rest = line.split(" ", 2)
    cells = [c.strip() for c in rest.strip().strip("|").split("|")]
    key = (cells[0], cells[1])
    rows.setdefault(key, {}).setdefault(side, {})[run] = float(cells[3])
for (mode, clients), sides in rows.items():
    old, new = sides.get("old", {}), sides.get("new", {})
    ratios = [new[r] / old[r] for r in old if r in new]
    print(f"{mode:10} clients {clients}: old {statistics.median(old.values()):8.0f}  "
          f"new {statistics.median(new.values()):8.0f}  new/old {statistics.median(ratios):.3f} "
          f"(pairs {min(ratios):.2f} to {max(ratios):.2f})")
EOF
