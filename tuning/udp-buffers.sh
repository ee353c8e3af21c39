#!/usr/bin/env bash
# Socket receive buffers for sluice: raise net.core.rmem_max so each shard socket gets the
# ingest.udp.socket_rcvbuf_bytes it asks for without CAP_NET_ADMIN (sluice logs a warning
# when the kernel caps it). Usage: tuning/udp-buffers.sh [--check | --apply] [BYTES]
# --check (default) only reports; --apply writes the sysctls (root) for this boot.
set -euo pipefail
mode="${1:---check}"
want="${2:-16777216}"
cur_max=$(cat /proc/sys/net/core/rmem_max)
cur_backlog=$(cat /proc/sys/net/core/netdev_max_backlog)
printf 'net.core.rmem_max          = %s (want >= %s)\n' "$cur_max" "$want"
printf 'net.core.netdev_max_backlog = %s (want >= 10000 for bursts)\n' "$cur_backlog"
case "$mode" in
  --check)
    [ "$cur_max" -ge "$want" ] || { echo "rmem_max is below the wanted size: run with --apply as root"; exit 1; }
    ;;
  --apply)
    sysctl -w net.core.rmem_max="$want" net.core.rmem_default=262144 net.core.netdev_max_backlog=10000
    echo "applied for this boot; persist in /etc/sysctl.d/90-sluice.conf"
    ;;
  *)
    echo "usage: $0 [--check | --apply] [BYTES]" >&2
    exit 2
    ;;
esac
