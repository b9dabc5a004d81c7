#!/usr/bin/env bash
# The scale-out incident, end to end, as CI runs it: builds both images
# (nothing pulled), runs the crowd against three ledger replicas on one
# PostgreSQL in each case given, and requires the referee's verdict:
#   mutex/process  the per-process lock breaks across replicas: anomalies
#   mutex/database the lock in PostgreSQL holds: clean
#   cas            the version-guarded UPDATE holds: clean
#   actor          one owner per account by lease, calls forwarded to it,
#                  writes fenced: clean
# The project's containers, network and volumes are removed after each case,
# and on any failure.
# Usage: scripts/compose-replicas.sh [CASE...]   (default: mutex/process mutex/database)
# Environment: ATMS (crowd size, default 6), DURATION (each ATM's run, default 10s).
set -euo pipefail
cd "$(dirname "$0")/.."
cases=("$@")
[ ${#cases[@]} -gt 0 ] || cases=(mutex/process mutex/database)
project="overdraft-replicas-$$"
compose() { docker-compose -f docker-compose.replicas.yml -p "$project" "$@"; }
cleanup() { compose down -v --remove-orphans >/dev/null 2>&1 || true; }
trap cleanup EXIT

bash scripts/docker-image.sh
bash scripts/postgres-image.sh
for case in "${cases[@]}"; do
  mode="${case%%/*}"
  scope="process"
  [ "$case" != "$mode" ] && scope="${case#*/}"
  case "$mode/$scope" in
    unsafe/* | mutex/process) expect=anomalies ;;
    *) expect=clean ;;
  esac
  echo "== replicas: MODE=$mode LOCK_SCOPE=$scope, 3 replicas, ${ATMS:-6} ATM containers, expecting $expect"
  started=$(date +%s)
  status=0
  MODE="$mode" LOCK_SCOPE="$scope" EXPECT="$expect" ATMS="${ATMS:-6}" DURATION="${DURATION:-10s}" VIEW_PORT=0 \
    compose up --abort-on-container-exit --exit-code-from referee referee || status=$?
  if [ "$status" -ne 0 ]; then
    echo "== replicas: $case FAILED (referee exit $status); last words:" >&2
    compose logs --tail 20 postgres ledger-1 ledger-2 ledger-3 atm >&2 || true
    exit 1
  fi
  echo "== replicas: $case passed in $(( $(date +%s) - started )) s"
  cleanup
done
