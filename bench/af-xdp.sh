#!/usr/bin/env bash
# AF_XDP against io_uring and recvmmsg (#19), one shard, on a veth pair between two throwaway
# network namespaces (sluice-bench --veth; root): (1) capacity, the highest rate with p99 under
# 1 ms and >= 99% replies (--sweep), for B = 1 and B = 16; (2) latency and CPU per datagram
# (the shard thread's, and the whole machine's: on veth the copy into the UMEM or the socket
# happens in softirq, on whichever CPU) at a fixed rate below every capacity, the three
# drivers alternated ROUNDS times. Usage:
#   bench/af-xdp.sh [ROUNDS] [OUT] [RATE] [all|capacity|fixed] [SET ...]
# SETs are sluice config overrides for every run (e.g. shards.idle_spins=0: the shard parks as
# soon as it is idle instead of spinning, so its CPU per datagram is its work, not its wait).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/env.sh
. scripts/env.sh
rounds="${1:-3}"
out="${2:-bench/results/af-xdp}"
rate="${3:-50000}"
what="${4:-all}"
extra=()
for s in "${@:5}"; do extra+=(--set "$s"); done
b="$CARGO_TARGET_DIR/release/sluice-bench"
drivers=(af_xdp io_uring recvmmsg)
common=(sluice --veth --settle 1 --warmup 1 "${extra[@]}")
for batch in 1 16; do
  [ "$what" = fixed ] && break
  start=$((batch == 1 ? 50000 : 200000))
  for d in "${drivers[@]}"; do
    "$b" "${common[@]}" --sweep --sweep-p99-us 1000 --rate "$start" --batch "$batch" \
      --seconds 3 --set "ingest.udp.driver=$d" --out "$out/capacity-$d-b$batch" >/dev/null
    echo "capacity $d B=$batch done"
  done
done
for i in $(seq 1 "$rounds"); do
  [ "$what" = capacity ] && break
  for d in "${drivers[@]}"; do
    "$b" "${common[@]}" --rate "$rate" --seconds 5 --set "ingest.udp.driver=$d" \
      --out "$out/fixed-$d-$i" >/dev/null
    echo "round $i $d done"
  done
done
python3 - "$out" "$rounds" "$what" "${drivers[@]}" <<'PY'
import json, statistics, sys
out, rounds, what, drivers = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
if what != "fixed":
  print("capacity (events/s with p99 <= 1 ms and >= 99% replies; first rate that missed)")
  for batch in (1, 16):
    for d in drivers:
        s = json.load(open(f"{out}/capacity-{d}-b{batch}/results.json"))["sweep"]
        print(f"  B={batch:<3} {d:<9} {s['sluice_max_events_per_s']} (missed at {s['sluice_first_miss_events_per_s']})")
if what == "capacity":
    sys.exit(0)
def pct(run, key, p):
    return next(v for q, v in run[key] if q == p)
print(f"fixed rate: client p50 / p99 and sluice-inside p50 / p99 (us), median of {rounds}; lost per run")
for d in drivers:
    runs = [json.load(open(f"{out}/fixed-{d}-{i}/results.json"))["runs"][0] for i in range(1, rounds + 1)]
    med = lambda key, p: statistics.median(pct(r, key, p) for r in runs)
    cpu = lambda key: statistics.median(r[key] for r in runs) if all(r.get(key) is not None for r in runs) else float("nan")
    print(f"  {d:<9} client {med('latency_us', 50.0):7.1f} / {med('latency_us', 99.0):8.1f}"
          f"   inside {med('internal_us', 50.0):6.1f} / {med('internal_us', 99.0):7.1f}"
          f"   CPU/datagram shard {cpu('shard_cpu_us_per_datagram'):5.2f} machine {cpu('machine_cpu_us_per_datagram'):5.2f}"
          f"   lost {[r['lost'] for r in runs]}")
PY
