#!/usr/bin/env bash
# Faults the containers add, under the crowd's load, judged by the referee:
#   1. `docker-compose kill -s KILL ledger`, then `start ledger`: with
#      --durability sync nothing acknowledged may be lost (the referee looks
#      every acknowledged operation up in the journal);
#   2. `docker-compose pause ledger` for longer than the ATMs' 2 s deadline:
#      the ATMs time out and resend with the same request_id, and nothing
#      applies twice (the checker finds no double application).
# A safe mode must come back clean. Removes the project's containers,
# network and volumes at the end and on failure.
# Usage: scripts/compose-crash.sh [MODE]          (default mutex)
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-mutex}"
project="overdraft-crash-$$"
compose() { MODE="$mode" DURATION=30s docker-compose -p "$project" "$@"; }
cleanup() { compose down -v --remove-orphans >/dev/null 2>&1 || true; }
trap cleanup EXIT
say() { echo "== compose crash ($mode, +$(( $(date +%s) - started )) s): $*"; }

healthy() { # waits up to 60 s for the ledger's health check to pass
  for _ in $(seq 120); do
    id="$(compose ps -q ledger)"
    [ "$(docker inspect -f '{{.State.Health.Status}}' "$id" 2>/dev/null)" = healthy ] && return 0
    sleep 0.5
  done
  echo "the ledger did not become healthy again within 60 s" >&2
  compose logs --tail 30 ledger >&2
  return 1
}

bash scripts/docker-image.sh
started=$(date +%s)
say "starting the ledger, the proxy, the schedule and ${ATMS:-8} ATM containers (30 s each)"
compose up -d atm faults
sleep 10
say "kill -s KILL ledger"
compose kill -s KILL ledger
compose start ledger
healthy
say "the ledger serves again; pausing it for 5 s (the ATMs' deadline is 2 s)"
sleep 3
compose pause ledger
sleep 5
compose unpause ledger
say "unpaused; the referee judges once every ATM is done"
status=0
# --no-deps: `up` would start the exited bank again (a Reset) and rerun the
# crowd; the referee waits for every ATM's history itself (ATMS of them).
ruling="$(mktemp)"
compose up --no-deps --abort-on-container-exit --exit-code-from referee referee 2>&1 | tee "$ruling" || status=$?
if [ "$status" -ne 0 ]; then
  say "FAILED (referee exit $status)"
  compose logs --tail 20 ledger atm >&2 || true
  exit 1
fi
# The faults must have caught operations in flight: some were resent.
resends="$(sed -n 's/.*resent (no reply), answered as replays *\([0-9]*\),.*/\1/p' "$ruling" | head -1)"
rm -f "$ruling"
[ "${resends:-0}" -gt 0 ] || { say "FAILED: no operation was resent; the kill and the pause caught nothing in flight"; exit 1; }
starts="$(compose logs ledger 2>/dev/null | grep -c 'ledger serving' || true)"
[ "$starts" -ge 2 ] || { say "FAILED: the ledger started $starts time(s), expected a restart"; exit 1; }
say "passed: the ledger started $starts times, $resends operations were resent; nothing acknowledged lost, nothing applied twice"
