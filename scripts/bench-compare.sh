#!/usr/bin/env bash
# The ATM benchmark: a real `ledger` process and `atm compare` against it, for
# 64 ATMs on 1,000 uncontended accounts and on one hot account, with sled and
# with the memory store (to show what storage costs). Prints the tables.
# Usage: scripts/bench-compare.sh [DURATION]   (default 5s per run)
# OVERDRAFT_THREADS=N sets the ledger's runtime threads (ledger --threads).
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-5s}"
cargo build --release --bin ledger --bin atm >&2
port=50091
run() {
  local store="$1" durability="$2"
  ./target/release/ledger --listen "127.0.0.1:$port" --store "$store" --durability "$durability" >/dev/null 2>&1 &
  local pid=$!
  trap 'kill $pid 2>/dev/null || true' RETURN
  sleep 1
  for accounts in 1000 1; do
    echo "== store $store, durability $durability, 64 ATMs, $accounts account(s), deposits, $duration per mode"
    ./target/release/atm compare --target "127.0.0.1:$port" --atms 64 --connections 4 \
      --accounts "$accounts" --mix deposit=100 --duration "$duration" 2>/dev/null
  done
  kill "$pid"; wait "$pid" 2>/dev/null || true
  port=$((port + 1))
}
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%F); ledger threads: ${OVERDRAFT_THREADS:-one per core}"
run sled none
run sled sync
run memory none
