#!/usr/bin/env bash
# WebSocket benchmark: gateway memory per idle session with N sessions open (default 10,000,
# spread over two gateway processes: each session holds two sockets and a process may open
# 20,000 files here), then relayed messages per second through one node (1 worker) to an echo
# upstream.
#
#   bench/websocket.sh [SESSIONS] [SECONDS]
#
# Loopback only; bounded (about 20 s plus the build); every process it starts is stopped when
# it ends.
set -euo pipefail
cd "$(dirname "$0")/.."
sessions="${1:-10000}"
seconds="${2:-5}"
cargo build --release --locked -q -p keygate --bin keygate --example ws_bench
target="${CARGO_TARGET_DIR:-target}"
"$target/release/examples/ws_bench" --bin "$target/release/keygate" \
  --sessions "$sessions" --nodes 2 --clients 32 --seconds "$seconds" --payload 64
