#!/usr/bin/env bash
# An independent check of the load generator: the same ledger driven by
# `atm load` and by h2load (nghttp2-client) sending real gRPC frames
# (content-type: application/grpc, te: trailers, a length-prefixed
# protobuf body), 64 calls in flight over 4 connections. If the atm were
# the bottleneck, h2load would get far more through; the goal is atm at
# 0.9 of h2load or better. Also: reads against writes, on one hot account
# and on 1,000 accounts.
# The ledger's CPU per call is printed for both clients (the atm's from
# Admin.Stats, h2load's from /proc), so a client that makes the ledger work
# harder shows.
# Usage: scripts/bench-h2load.sh [SECONDS] [MODE] [ROUNDS]   (default 8 s, mutex, 3)
# OVERDRAFT_THREADS=N sets the ledger's runtime threads (ledger --threads).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-8}"
mode="${2:-mutex}"
rounds="${3:-3}"
command -v h2load >/dev/null || { echo "h2load missing: apt-get install nghttp2-client" >&2; exit 2; }
cargo build --release --bin ledger --bin atm >&2
port=50095
metrics=50096
work="$(mktemp -d)"
command -v curl >/dev/null || { echo "curl missing: apt-get install curl" >&2; exit 2; }
./target/release/ledger --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$metrics" \
  --mode "$mode" --idempotency off >"$work/ledger.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 300); do
  curl -sf "http://127.0.0.1:$metrics/metrics" >/dev/null && break
  kill -0 "$pid" 2>/dev/null || { echo "the ledger exited:" >&2; cat "$work/ledger.log" >&2; exit 1; }
  sleep 0.1
done

# A gRPC message: a zero compression flag, a 4-byte big-endian length, the protobuf.
# DepositRequest{account_id: "acct-0", amount_cents: 100}; no request_id: the
# body cannot vary per request. The ledger runs with --idempotency off so
# that the atm's request_ids cost it nothing either: both drive the same work.
printf '\x00\x00\x00\x00\x0a\x0a\x06acct-0\x10\x64' >"$work/deposit"
# GetBalanceRequest{account_id: "acct-0"}.
printf '\x00\x00\x00\x00\x08\x0a\x06acct-0' >"$work/balance"
# HealthCheckRequest{} (empty).
printf '\x00\x00\x00\x00\x00' >"$work/health"

atm() { # accounts mix -> "ops/s p99_ms ledger_us" (load exits 1 on a mismatch; the figures stand)
  { ./target/release/atm load --target "127.0.0.1:$port" --atms 64 --connections 4 \
    --accounts "$1" --mix "$2" --duration "${seconds}s" --json 2>/dev/null || true; } |
    python3 -c 'import json,sys; r=json.load(sys.stdin); print("%.0f %.1f %.1f" % (r["ops_per_sec"], r["latency_us"]["all"]["p99"] / 1000, r["cpu_per_op"]["ledger_us"]))'
}
ticks() { # the ledger's CPU time so far, in clock ticks (utime + stime)
  awk '{ print $14 + $15 }' "/proc/$pid/stat"
}
h2() { # path body -> "req/s ledger_us": the ledger's CPU per request, from /proc
  local before after rate
  before=$(ticks)
  rate=$(h2load -c 4 -m 16 -t 1 -D "$seconds" -H 'content-type: application/grpc' -H 'te: trailers' \
    -d "$work/$2" "http://127.0.0.1:$port$1" 2>/dev/null |
    awk '/^finished in/ { gsub(",", "", $4); print int($4) }')
  after=$(ticks)
  python3 -c 'import os, sys; rate, ticks, seconds = (float(x) for x in sys.argv[1:]); print("%.0f %.1f" % (rate, ticks / os.sysconf("SC_CLK_TCK") * 1e6 / max(rate * seconds, 1)))' \
    "$rate" "$((after - before))" "$seconds"
}
ok_deposits() {
  curl -s "http://127.0.0.1:$metrics/metrics" |
    awk '/^overdraft_operations_total\{/ && /method="deposit"/ && /code="Ok"/ { n += $2 } END { print n + 0 }'
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%F); mode $mode; ${seconds} s per run; ledger threads: ${OVERDRAFT_THREADS:-one per core}"
# Deposits on one account, atm and h2load alternating ROUNDS times: the host
# drifts by 10-30% between runs, so each pair is compared on its own.
printf '%-7s %12s %8s %14s %15s %14s %10s\n' "round" "atm ops/s" "p99 ms" "ledger µs/op" "h2load ops/s" "ledger µs/op" "atm/h2load"
ratios=()
applied_total=0
for round in $(seq "$rounds"); do
  read -r atm_dep atm_dep_p99 atm_dep_cpu < <(atm 1 deposit=100)
  before=$(ok_deposits)
  read -r h2_dep h2_dep_cpu < <(h2 /overdraft.v1.Ledger/Deposit deposit)
  applied=$(( $(ok_deposits) - before ))
  applied_total=$((applied_total + applied))
  ratio=$(python3 -c 'import sys; a, h = (float(x) for x in sys.argv[1:]); print("%.2f" % (a / max(h, 1)))' "$atm_dep" "$h2_dep")
  ratios+=("$ratio")
  printf '%-7s %12s %8s %14s %15s %14s %10s\n' "$round" "$atm_dep" "$atm_dep_p99" "$atm_dep_cpu" "$h2_dep" "$h2_dep_cpu" "$ratio"
done
read -r h2_health h2_health_cpu < <(h2 /grpc.health.v1.Health/Check health)
read -r atm_bal1 atm_bal1_p99 atm_bal1_cpu < <(atm 1 balance=100)
read -r h2_bal h2_bal_cpu < <(h2 /overdraft.v1.Ledger/GetBalance balance)
read -r atm_dep1k atm_dep1k_p99 atm_dep1k_cpu < <(atm 1000 deposit=100)
read -r atm_bal1k atm_bal1k_p99 atm_bal1k_cpu < <(atm 1000 balance=100)
printf '%-40s %10s %8s %14s\n' "run" "ops/s" "p99 ms" "ledger µs/op"
printf '%-40s %10s %8s %14s\n' "h2load health checks" "$h2_health" "" "$h2_health_cpu"
printf '%-40s %10s %8s %14s\n' "atm balance reads, 1 account" "$atm_bal1" "$atm_bal1_p99" "$atm_bal1_cpu"
printf '%-40s %10s %8s %14s\n' "h2load balance reads, 1 account" "$h2_bal" "" "$h2_bal_cpu"
printf '%-40s %10s %8s %14s\n' "atm deposits, 1000 accounts" "$atm_dep1k" "$atm_dep1k_p99" "$atm_dep1k_cpu"
printf '%-40s %10s %8s %14s\n' "atm balance reads, 1000 accounts" "$atm_bal1k" "$atm_bal1k_p99" "$atm_bal1k_cpu"
python3 - "$applied_total" "$seconds" "$rounds" "${ratios[@]}" <<'PY'
import sys
applied, seconds, rounds = (float(x) for x in sys.argv[1:4])
ratios = [float(x) for x in sys.argv[4:]]
print(f"atm / h2load (deposits): {min(ratios):.2f}-{max(ratios):.2f} over {len(ratios)} rounds   (goal: at least 0.90)")
print(f"h2load deposits the ledger counted Ok: {applied:.0f} ({applied / seconds / rounds:.0f}/s over {rounds:.0f} x {seconds:.0f} s)")
PY
