#!/usr/bin/env bash
# WebSocket benchmark: gateway memory per idle session with N sessions open (default 10,000,
# spread over two gateway processes: each session holds two sockets in a gateway and a process
# may open 20,000 files here), then relayed messages per second through one node (1 worker) to
# an echo upstream, and the gateway's CPU per relayed message.
#
#   bench/websocket.sh [SESSIONS] [SECONDS]
#   CASES=keygate,nginx REPS=3 bench/websocket.sh      # beside nginx, alternately (issue 24)
#
# CASES: keygate alone (default), or keygate,nginx: nginx (worker_processes 1 per node, two
# nodes) proxying WebSocket (proxy_pass + Upgrade) to the same echo upstream, with the same key
# check (a map of the key, 401 without it); the cases alternate REPS times and the driver
# prints medians and keygate / nginx ratios. BUILD=0 reuses the release build.
#
# Loopback only; bounded (about 20 s per case and rep plus the build); every process it starts
# is stopped when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."
sessions="${1:-10000}"
seconds="${2:-5}"
if [ "${BUILD:-1}" = 1 ]; then
  cargo build --release --locked -q -p keygate --bin keygate --example ws_bench
fi
target="${CARGO_TARGET_DIR:-target}"
case "${CASES:-keygate}" in *nginx*)
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null || true; }
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || { echo "nginx is not installed and could not be (apt-get install nginx-light)" >&2; exit 1; };;
esac
"$target/release/examples/ws_bench" --bin "${KG:-$target/release/keygate}" \
  --sessions "$sessions" --nodes 2 --clients 32 --seconds "$seconds" --payload 64 \
  --cases "${CASES:-keygate}" --reps "${REPS:-1}"
