#!/usr/bin/env bash
# One shard at the harness defaults (50k events/s, B = 1, 100k keys), without and with
# state.dir (200 ms checkpoints), alternated PAIRS times: the durability-without-pauses goal
# compares the two p99s. Usage: bench/state-vs-plain.sh [PAIRS] [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/env.sh
. scripts/env.sh
pairs="${1:-3}"
out="${2:-bench/results/state-vs-plain}"
b="$CARGO_TARGET_DIR/release/sluice-bench"
state="$(mktemp -d)"
trap 'rm -rf "$state"' EXIT
for i in $(seq 1 "$pairs"); do
  "$b" --seconds 10 --out "$out/plain-$i" | grep -E '^sluice ' | sed "s/^/plain-$i: /"
  rm -rf "${state:?}"/*
  "$b" --seconds 10 --set "state.dir=$state" --out "$out/state-$i" | grep -E '^sluice ' | sed "s/^/state-$i: /"
done
