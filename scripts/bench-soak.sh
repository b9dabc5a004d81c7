#!/usr/bin/env bash
# A long run with bounded memory: a full-speed deposit load against a sled
# ledger for DURATION, the ledger's resident memory sampled every 10 s, then
# a restart on the same data directory (time to serve, peak memory) and an
# Admin.Audit of everything the run wrote (its peak). Goal: under 1 GB
# resident throughout. Needs h2load (nghttp2-client) to send the two
# bare gRPC calls (GetMode to see the restart serve, Audit).
# Usage: scripts/bench-soak.sh [DURATION] [MODE]   (default 30m, mutex)
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-30m}"
mode="${2:-mutex}"
command -v h2load >/dev/null || { echo "h2load missing: apt-get install nghttp2-client" >&2; exit 2; }
cargo build --release --bin ledger --bin atm >&2
port=50131
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
printf '\x00\x00\x00\x00\x00' >"$work/empty"
call() { # port method -> succeeds when the call got an HTTP 200 (h2load does
  # not read gRPC trailers; a failed Audit would show as a missing peak, not here)
  h2load -n 1 -c 1 -H 'content-type: application/grpc' -H 'te: trailers' -d "$work/empty" \
    "http://127.0.0.1:$1/overdraft.v1.Admin/$2" 2>/dev/null | grep -q "1 succeeded"
}
serving() { # port pid: waits up to 10 minutes for the ledger to answer (a reopen replays)
  for _ in $(seq 6000); do
    call "$1" GetMode && return 0
    kill -0 "$2" 2>/dev/null || { echo "the ledger on port $1 exited" >&2; exit 1; }
    sleep 0.1
  done
  echo "the ledger on port $1 did not serve within 10 minutes" >&2; exit 1
}
memory() { # pid -> "resident MiB / peak MiB"
  awk '/VmRSS/ { rss = $2 } /VmHWM/ { hwm = $2 } END { printf "%d MiB resident, peak %d MiB", rss / 1024, hwm / 1024 }' "/proc/$1/status"
}
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%F); mode $mode, sled, --durability none, 64 ATMs, 1000 accounts, deposits, $duration"
./target/release/ledger --listen "127.0.0.1:$port" --mode "$mode" --data-dir "$work/data" >/dev/null 2>&1 &
ledger=$!
serving "$port" "$ledger"
started=$(date +%s)
(
  while kill -0 "$ledger" 2>/dev/null; do
    echo "  t=$(( $(date +%s) - started ))s $(memory "$ledger") (data $(du -sm "$work/data" | cut -f1) MB)"
    sleep 10
  done
) &
sampler=$!
# load exits 1 when its audit or reconciliation is not clean; the figures stand.
./target/release/atm load --target "127.0.0.1:$port" --atms 64 --connections 4 --accounts 1000 \
  --mix deposit=100 --duration "$duration" --json 2>/dev/null >"$work/load.json" || true
kill "$sampler" 2>/dev/null || true
echo "load: $(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("%d deposits at %.0f/s, p99.9 %.1f ms" % (r["operations"], r["ops_per_sec"], r["latency_us"]["all"]["p999"] / 1000))' "$work/load.json")"
echo "ledger at the end of the load (after its audit): $(memory "$ledger")"
kill "$ledger"; wait "$ledger" 2>/dev/null || true
echo "data directory: $(du -sm "$work/data" | cut -f1) MB"
port=$((port + 1))
./target/release/ledger --listen "127.0.0.1:$port" --mode "$mode" --data-dir "$work/data" >/dev/null 2>&1 &
ledger=$!
reopened=$(date +%s.%N)
serving "$port" "$ledger"
echo "reopen: serving after $(python3 -c "import time; print('%.1f' % (time.time() - $reopened))") s, $(memory "$ledger")"
call "$port" Audit
echo "after an Admin.Audit of it all: $(memory "$ledger")"
