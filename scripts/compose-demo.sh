#!/usr/bin/env bash
# The compose demo, end to end, as CI runs it: builds the image (nothing
# pulled), runs the crowd in each mode given and requires the referee's
# verdict (unsafe: anomalies, exit 0; the safe modes: none, exit 0). The
# project's containers, network and volumes are removed after each mode,
# and on any failure.
# Usage: scripts/compose-demo.sh [MODE...]        (default: unsafe mutex)
# Environment: ATMS (crowd size, default 8), DURATION (each ATM's run).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v curl >/dev/null || { echo "curl missing: apt-get install curl" >&2; exit 2; }
modes=("$@")
[ ${#modes[@]} -gt 0 ] || modes=(unsafe mutex)
project="overdraft-demo-$$"
compose() { docker-compose -p "$project" "$@"; }
up=""
cleanup() {
  # A failure while `up` runs in the background: stop it before removing.
  if [ -n "$up" ]; then kill "$up" 2>/dev/null || true; wait "$up" 2>/dev/null || true; fi
  compose down -v --remove-orphans >/dev/null 2>&1 || true
}
trap cleanup EXIT

bash scripts/docker-image.sh
for mode in "${modes[@]}"; do
  echo "== compose demo: MODE=$mode, ${ATMS:-8} ATM containers"
  started=$(date +%s)
  status=0
  # VIEW_PORT=0: the live view on a free host port, asked for its snapshot
  # from the host while the crowd runs.
  MODE="$mode" VIEW_PORT=0 compose up --abort-on-container-exit --exit-code-from referee referee &
  up=$!
  view=""
  for _ in $(seq 240); do
    port="$(compose port view 8080 2>/dev/null | sed -n 's/.*:\([0-9]*\)$/\1/p' || true)"
    # Not `curl | grep -q`: grep would stop reading early, and under
    # pipefail curl's broken pipe would fail the check.
    body="$( [ -n "$port" ] && curl -sf "http://127.0.0.1:$port/snapshot" || true)"
    if grep -q "\"mode\":\"$mode\"" <<<"$body"; then
      view="http://127.0.0.1:$port/"
      break
    fi
    kill -0 "$up" 2>/dev/null || break
    sleep 0.5
  done
  wait "$up" || status=$?
  up=""
  if [ "$status" -ne 0 ]; then
    echo "== compose demo: MODE=$mode FAILED (referee exit $status); the crowd's last words:" >&2
    compose logs --tail 20 ledger chaos faults atm view >&2 || true
    exit 1
  fi
  if [ -z "$view" ]; then
    echo "== compose demo: MODE=$mode FAILED: the live view never answered on the host" >&2
    compose logs --tail 20 view >&2 || true
    exit 1
  fi
  echo "== compose demo: the live view answered at $view"
  echo "== compose demo: MODE=$mode passed in $(( $(date +%s) - started )) s"
  cleanup
done
