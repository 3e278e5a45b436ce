#!/usr/bin/env bash
# bench/callgrind.sh — user-space instructions per request of a keygate build on the gate path,
# counted by valgrind's callgrind (steady on a shared, noisy machine, unlike req/s).
#
#   bench/callgrind.sh [KEYGATE_BINARY...]     (default: the release build)
#
# For each binary: starts `keygate serve` (bench/keygate-gate.toml or CONFIG, 1 worker) under callgrind
# on the store bench/gateway.sh seeds, warms up, zeroes the counters, drives REQUESTS-ish
# requests with wrk (a random key of 10,000 per request, CONNS connections), dumps, and prints
# the worker thread's instructions per request and the top functions (inclusive). Needs the upstream and key files
# of a bench/gateway.sh run (RUN, default /tmp/kg-gateway); starts and stops its own upstream.
# Loopback only; every process it starts is stopped by PID.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
RUN=${RUN:-${TMPDIR:-/tmp}/kg-gateway}
DUR=${DUR:-10s}
CONNS=${CONNS:-8}
TOP=${TOP:-25}
CONFIG=${CONFIG:-$HERE/keygate-gate.toml}   # another gate configuration on the same port
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BINS=("$@")
[ ${#BINS[@]} -gt 0 ] || BINS=("$TARGET_DIR/release/keygate")
command -v valgrind >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null; }
for f in "$RUN/kg.db" "$RUN/keys.lua" "$RUN/nginx-upstream.conf"; do
  [ -e "$f" ] || { echo "missing $f: run bench/gateway.sh once first" >&2; exit 1; }
done

PIDS=()
stop() { kill -TERM "$1" 2>/dev/null; for _ in $(seq 1 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done; kill -KILL "$1" 2>/dev/null; wait "$1" 2>/dev/null; }
cleanup() { local p; for p in "${PIDS[@]}"; do stop "$p"; done; }
trap cleanup EXIT

nginx -c "$RUN/nginx-upstream.conf" -g 'daemon off;' >"$RUN/cg-upstream.log" 2>&1 &
UP=$!; PIDS+=("$UP")
sleep 0.5

for bin in "${BINS[@]}"; do
  out="$RUN/callgrind.$(basename "$bin").$$"
  # One file per thread, and only the worker thread's counted: the main runtime's periodic
  # work (usage flushes to the store, the change feed) runs by the clock, not per request, and
  # made the per-request figure wander by ±700 between runs of one build.
  env RUST_LOG=warn valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$out.%p" \
    "$bin" --db "$RUN/kg.db" serve --config "$CONFIG" --workers 1 \
    >"$RUN/cg-keygate.log" 2>&1 &
  pid=$!; PIDS+=("$pid")
  for _ in $(seq 1 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 http://127.0.0.1:18094/)" = 401 ] && break
    sleep 0.2
  done
  wrk -t1 -c"$CONNS" -d3s -s "$RUN/keys.lua" http://127.0.0.1:18094/ >/dev/null 2>&1
  callgrind_control -z "$pid" >/dev/null
  res=$(wrk -t1 -c"$CONNS" -d"$DUR" -s "$RUN/keys.lua" http://127.0.0.1:18094/ 2>&1 | grep '^RESULT')
  callgrind_control -d "$pid" >/dev/null
  sleep 1
  stop "$pid"
  n=$(echo "$res" | sed 's/.*requests=\([0-9]*\).*/\1/')
  # The dump taken after zeroing is part 1 (the unnumbered files are what ran after it, the
  # shutdown); of its per-thread files, the worker's is the one that ran the requests.
  part=$(for f in "$out.$pid.1"-*; do
    printf '%s %s\n' "$(callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')" "$f"
  done | sort -n | tail -1 | cut -d' ' -f2)
  total=$(callgrind_annotate "$part" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')
  echo "== $bin"
  echo "requests: $n  (${res#RESULT })"
  awk -v t="$total" -v n="$n" 'BEGIN { if (n > 0) printf "instructions (user space): %d total, %.0f per request\n", t, t / n }'
  callgrind_annotate --inclusive=yes "$part" 2>/dev/null | sed -n '/file:function/,$p' | head -"$TOP"
done
