#!/usr/bin/env bash
# Soak: sustained mixed load (valid keys, unknown keys from many sources, a rate-limited client,
# WebSocket sessions) against one gateway node (1 worker) for a bounded time; prints errors and
# p50/p99 latency per interval and the node's RSS at the start and the end.
#
#   bench/soak.sh [SECONDS] [CONCURRENCY] [REPORT_EVERY_SECONDS]
#
# Loopback only; the gateway and the upstreams stop when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-120}"
concurrency="${2:-32}"
every="${3:-10}"
cargo build --release --locked -q -p keygate --bin keygate --example soak
target="${CARGO_TARGET_DIR:-target}"
"$target/release/examples/soak" --bin "$target/release/keygate" \
  --seconds "$seconds" --concurrency "$concurrency" --every "$every"
