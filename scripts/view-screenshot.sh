#!/usr/bin/env bash
# The live view's picture for the README (docs/live-view.png): the compose
# demo's parts as local processes (an unsafe ledger, the chaos proxy, the
# network-storm schedule, four ATMs of a crowd, `atm view`), and headless
# Chromium's screenshot of the page in the middle of the storm.
# Usage: scripts/view-screenshot.sh [OUTPUT.png]
set -euo pipefail
cd "$(dirname "$0")/.."
out="$(realpath -m "${1:-docs/live-view.png}")"
command -v chromium >/dev/null || { echo "chromium missing: apt-get install chromium" >&2; exit 2; }
cargo build --release --bin ledger --bin atm --bin chaos >&2
bin=target/release
work="$(mktemp -d)"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT
# Below the ephemeral range (32768 and up), so no client socket takes them first.
ledger=127.0.0.1:28097 proxy=127.0.0.1:28098 control=127.0.0.1:28099 view=127.0.0.1:28100

$bin/ledger --listen $ledger --mode unsafe >"$work/ledger.log" 2>&1 & pids+=($!)
$bin/chaos proxy --listen $proxy --upstream "http://$ledger" --control $control --seed 7 >"$work/proxy.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do $bin/atm health --target "http://$ledger" --timeout 1s >/dev/null 2>&1 && break; sleep 0.1; done
$bin/atm reset --target "http://$ledger" --accounts 20 --opening-cents 100000 --fresh-histories "$work/histories"
$bin/atm view --target "http://$ledger" --histories "$work/histories" --fault-log "$work/faults.jsonl" --http $view >"$work/view.log" 2>&1 & pids+=($!)
$bin/chaos run chaos/schedules/network-storm.toml --target "http://$ledger" --proxy "http://$control" --seed 7 \
  --fault-log "$work/faults.jsonl" >"$work/faults.out" 2>&1 & pids+=($!)
for n in 1 2 3 4; do
  $bin/atm load --join --name "atm-$n" --target "http://$proxy" --atms 1 --accounts 20 --opening-cents 100000 \
    --duration 15s --deadline 2s --attempts 8 --seed 7 --history "$work/histories" >"$work/atm-$n.log" 2>&1 & pids+=($!)
done
sleep "${AT_SECONDS:-6.5}"
mkdir -p "$(dirname "$out")"
chromium --headless --no-sandbox --disable-gpu --disable-background-networking --hide-scrollbars \
  --virtual-time-budget=3000 --window-size=1280,900 --screenshot="$out" "http://$view/?updates=2" 2>&1 | grep -v dbus || true
[ -s "$out" ] || { echo "chromium wrote no screenshot; the view's log:" >&2; cat "$work/view.log" >&2; exit 1; }
echo "wrote $out"
