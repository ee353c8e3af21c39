#!/usr/bin/env bash
# The host tuning's effect, measured: one shard at the harness defaults (50k events/s, B = 1,
# 100k keys, 10 s), with the host as it is, then after `sluice host apply` (same shard map:
# shards.cores = [0]), alternated PAIRS times; every apply is reverted before the next
# untuned run and at exit (root only). Usage: bench/tuned-vs-untuned.sh [PAIRS] [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/env.sh
. scripts/env.sh
pairs="${1:-3}"
out="${2:-bench/results/tuned-vs-untuned}"
b="$CARGO_TARGET_DIR/release/sluice-bench"
s="$CARGO_TARGET_DIR/release/sluice"
journal="$(mktemp -u /tmp/sluice-host-bench-XXXXXX.json)"
revert() { [ ! -e "$journal" ] || "$s" host revert --journal "$journal" >/dev/null; }
trap revert EXIT
mkdir -p "$out"
for i in $(seq 1 "$pairs"); do
  "$b" sluice --shards 1 --seconds 10 --out "$out/untuned-$i" 2>&1 | grep -E 'sluice @' | sed "s/^/untuned-$i: /"
  "$s" host apply --journal "$journal" --set 'shards.cores=[0]' >"$out/apply-$i.txt"
  "$b" sluice --shards 1 --seconds 10 --out "$out/tuned-$i" 2>&1 | grep -E 'sluice @' | sed "s/^/tuned-$i: /"
  revert
done
