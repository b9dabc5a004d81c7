#!/usr/bin/env bash
# Replicas over PostgreSQL against the single sled ledger, on one machine in
# one run: throughput and p99 per mode for 1, 2 and 3 `ledger` processes on
# one database, on one hot account and on 1,000 (uncontended), beside sled.
# In actor mode a replica forwards a call whose account another one owns.
# `atm load --target A,B,C` keeps ATM i on replica i mod n.
#
# PostgreSQL runs from a fresh `initdb` in a temporary directory (as the
# postgres user when this is root), on a unix socket there, with fsync on and
# synchronous_commit off: a commit returns before its WAL is flushed, which is
# what sled's `--durability none` does.
# Usage: scripts/bench-replicas.sh [DURATION] [ATMS]   (default 4s, 64)
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-4s}"
atms="${2:-64}"
cargo build --release --bin ledger --bin atm >&2

pgbin() { command -v "$1" 2>/dev/null || ls -d /usr/lib/postgresql/*/bin/"$1" 2>/dev/null | sort -V | tail -1 || true; }
initdb="$(pgbin initdb)"; postgres="$(pgbin postgres)"; psql="$(pgbin psql)"
[ -x "$initdb" ] && [ -x "$postgres" ] || { echo "needs PostgreSQL: apt-get install -y postgresql-15" >&2; exit 1; }
as_pg=()
[ "$(id -u)" -eq 0 ] && as_pg=(runuser -u postgres --)

work="$(mktemp -d)"
[ "$(id -u)" -eq 0 ] && chown postgres:postgres "$work"
pids=()
pgpid=""
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  # runuser does not pass signals on: stop postgres itself (its pid file), then reap runuser.
  if [ -n "$pgpid" ]; then
    kill -INT "$(head -1 "$work/data/postmaster.pid" 2>/dev/null)" 2>/dev/null || kill "$pgpid" 2>/dev/null || true
    wait "$pgpid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
"${as_pg[@]}" "$initdb" -D "$work/data" -U postgres --auth=trust -E UTF8 >/dev/null
"${as_pg[@]}" "$postgres" -D "$work/data" -k "$work" -c listen_addresses= -c synchronous_commit=off \
  -c max_connections=200 -c shared_buffers=256MB >"$work/postgres.log" 2>&1 &
pgpid=$!
for _ in $(seq 300); do [ -S "$work/.s.PGSQL.5432" ] && break; sleep 0.1; done
sleep 0.5
fresh_db() { # name -> a connection string to a new database of that name
  "${as_pg[@]}" "$psql" -h "$work" -U postgres -q -c "CREATE DATABASE $1" postgres >/dev/null
  echo "host=$work port=5432 user=postgres dbname=$1"
}

port=26100
listening() { # port pid: waits up to 30 s for a ledger to accept connections
  for _ in $(seq 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || { echo "the ledger on port $1 exited" >&2; exit 1; }
    sleep 0.1
  done
  echo "the ledger on port $1 did not listen within 30 s" >&2; exit 1
}
start() { # store replicas extra-args... -> sets targets
  local store="$1" n="$2"; shift 2
  local url=""
  [ "$store" = postgres ] && url="$(fresh_db "bench$port")"
  targets=""
  pids=()
  for i in $(seq "$n"); do
    if [ "$store" = postgres ]; then
      ./target/release/ledger --listen "127.0.0.1:$port" --store postgres --database-url "$url" \
        --replica "r$i" --pool-size 32 "$@" >/dev/null 2>&1 &
    else
      ./target/release/ledger --listen "127.0.0.1:$port" "$@" >/dev/null 2>&1 &
    fi
    pids+=($!)
    listening "$port" "$!"
    targets="${targets:+$targets,}127.0.0.1:$port"
    port=$((port + 1))
  done
}
stop() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  pids=()
}
measure() { # label mode accounts -> a JSON line
  local label="$1" mode="$2" accounts="$3"
  # load exits 1 when a run does not reconcile (unsafe, process mutex): its JSON is still the figures.
  ./target/release/atm load --target "$targets" --mode "$mode" --atms "$atms" --connections 1 \
    --accounts "$accounts" --mix deposit=100 --duration "$duration" --json 2>/dev/null \
    | python3 -c 'import json,sys; r=json.load(sys.stdin); a=r.get("audit") or {}; print(json.dumps({"label":sys.argv[1],"accounts":int(sys.argv[2]),"ops":r["ops_per_sec"],"p50":r["latency_us"]["all"]["p50"],"p99":r["latency_us"]["all"]["p99"],"codes":r["status_counts"],"lost":a.get("lost_updates",0)}))' "$label" "$accounts" \
    >>"$work/results.jsonl" || true
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%F); $atms ATMs, deposits, $duration per run"
for accounts in 1000 1; do
  start sled 1
  for mode in unsafe mutex cas actor; do measure "sled $mode" "$mode" "$accounts"; done
  stop
  for n in 1 2 3; do
    start postgres "$n"
    for mode in unsafe mutex cas actor; do measure "pg x$n $mode" "$mode" "$accounts"; done
    stop
    start postgres "$n" --lock-scope database
    measure "pg x$n mutex/db" mutex "$accounts"
    stop
  done
done
python3 - "$work/results.jsonl" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print(f"{'accounts':>8} {'run':<18} {'ops/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'lost updates':>12}  codes")
for r in rows:
    codes = ", ".join(f"{k} {v}" for k, v in sorted(r["codes"].items()))
    print(f"{r['accounts']:>8} {r['label']:<18} {r['ops']:>8.0f} {r['p50'] / 1e3:>7.2f} {r['p99'] / 1e3:>7.2f} {r['lost']:>12}  {codes}")
PY
