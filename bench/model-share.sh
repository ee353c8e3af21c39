#!/usr/bin/env bash
# The model's share of sluice's own latency (#17): one shard at 50k events/s, B = 1, sluice's
# receive -> emit (Score latency_ns, "internal") with the linear placeholder (no model call),
# the builtin LR and 100-tree GBDT on the native engine, and the GBDT on ONNX Runtime,
# alternated ROUNDS times (5 s each). Prints each run and the medians over rounds with their
# ratio to the placeholder's. Usage: bench/model-share.sh [ROUNDS] [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/env.sh
. scripts/env.sh
rounds="${1:-3}"
out="${2:-bench/results/model-share}"
b="$CARGO_TARGET_DIR/release/sluice-bench"
declare -A sets=(
  [linear]="model.kind=linear"
  [lr-native]="model.path=builtin:fraud_lr"
  [gbdt-native]="model.path=builtin:fraud_gbdt"
  [gbdt-ort]="model.path=builtin:fraud_gbdt model.engine=ort"
)
order=(linear lr-native gbdt-native gbdt-ort)
for i in $(seq 1 "$rounds"); do
  for name in "${order[@]}"; do
    args=()
    for s in ${sets[$name]}; do args+=(--set "$s"); done
    "$b" sluice --rate 50000 --seconds 5 "${args[@]}" --out "$out/$name-$i" >/dev/null
    echo "round $i $name done"
  done
done
python3 - "$out" "$rounds" "${order[@]}" <<'PY'
import json, statistics, sys
out, rounds, order = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def pct(run, key, p):
    return next(v for q, v in run[key] if q == p)
med = {}
print(f"{'model':<12} {'internal p50 (runs)':<28} {'internal p99 (runs)':<30} replies lost")
for name in order:
    runs = [json.load(open(f"{out}/{name}-{i}/results.json"))["runs"][0] for i in range(1, rounds + 1)]
    p50 = [pct(r, "internal_us", 50.0) for r in runs]
    p99 = [pct(r, "internal_us", 99.0) for r in runs]
    med[name] = (statistics.median(p50), statistics.median(p99))
    lost = sum(r["lost"] for r in runs)
    print(f"{name:<12} {', '.join(f'{x:.1f}' for x in p50):<28} {', '.join(f'{x:.0f}' for x in p99):<30} {lost}")
base = med[order[0]]
for name in order[1:]:
    print(f"{name}: median p50 {med[name][0]:.1f} us = {med[name][0] / base[0]:.2f}x, median p99 {med[name][1]:.0f} us = {med[name][1] / base[1]:.2f}x the placeholder's")
PY
