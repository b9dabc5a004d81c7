#!/usr/bin/env bash
# Group commit's cost: the same load against `--durability none` and
# `--durability sync`, back to back, ROUNDS times (the machine drifts between
# runs; pairs taken together compare fairly). Prints, per mode, throughput
# with sync over throughput without, and what group commit did: flushes per
# second, operations per flush, flush time (mean, max) and the share of
# time a flush was in progress. Goal: sync at 0.8 of none or better.
# Usage: scripts/bench-durability.sh [DURATION] [ROUNDS]   (default 5s, 3)
# OVERDRAFT_THREADS=N sets the ledger's runtime threads (ledger --threads).
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-5s}"
rounds="${2:-3}"
cargo build --release --bin ledger --bin atm >&2
port=50097
work="$(mktemp -d)"
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
listening() { # port: waits up to 30 s for the ledger to accept connections
  for _ in $(seq 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || { echo "the ledger on port $1 exited" >&2; exit 1; }
    sleep 0.1
  done
  echo "the ledger on port $1 did not listen within 30 s" >&2; exit 1
}
run() { # durability round -> JSON file
  ./target/release/ledger --listen "127.0.0.1:$port" --durability "$1" --data-dir "$work/data-$1-$2" >/dev/null 2>&1 &
  pid=$!
  listening "$port"
  # compare exits 1 when a mode fails to reconcile; its JSON is still the figures.
  ./target/release/atm compare --target "127.0.0.1:$port" --modes mutex,cas,actor --atms 64 --connections 4 \
    --accounts 1000 --mix deposit=100 --duration "$duration" --json >"$work/$1-$2.json" 2>/dev/null || true
  kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  pid=""
  port=$((port + 1))
}
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%F); sled, 64 ATMs, 1000 accounts, deposits, $duration per run; ledger threads: ${OVERDRAFT_THREADS:-one per core}"
for round in $(seq "$rounds"); do
  run none "$round"
  run sync "$round"
done
python3 - "$work" "$rounds" <<'PY'
import json, sys
work, rounds = sys.argv[1], int(sys.argv[2])
print(f"{'round':>5} {'mode':<6} {'none ops/s':>10} {'sync ops/s':>10} {'sync/none':>9} {'flushes/s':>9} {'ops/flush':>9} {'flush ms':>8} {'max ms':>7} {'busy':>5} {'ledger µs/op none/sync':>22}")
ratios = {}
for r in range(1, rounds + 1):
    none = {run["mode"]: run for run in json.load(open(f"{work}/none-{r}.json"))["runs"]}
    sync = {run["mode"]: run for run in json.load(open(f"{work}/sync-{r}.json"))["runs"]}
    for mode, s in sync.items():
        n = none[mode]
        f = s.get("flushes") or {}
        ratio = s["ops_per_sec"] / max(n["ops_per_sec"], 1)
        ratios.setdefault(mode, []).append(ratio)
        print(f"{r:>5} {mode:<6} {n['ops_per_sec']:>10.0f} {s['ops_per_sec']:>10.0f} {ratio:>9.2f} "
              f"{f.get('flushes_per_sec', 0):>9.0f} {f.get('operations_per_flush', 0):>9.1f} "
              f"{f.get('flush_us_mean', 0) / 1e3:>8.2f} {f.get('flush_us_max', 0) / 1e3:>7.1f} "
              f"{100 * f.get('busy_fraction', 0):>4.0f}% "
              f"{n['cpu_per_op']['ledger_us']:>10.1f} / {s['cpu_per_op']['ledger_us']:<9.1f}")
for mode, values in ratios.items():
    print(f"{mode}: sync/none {min(values):.2f}-{max(values):.2f} over {len(values)} rounds (goal: 0.80)")
PY
