#!/usr/bin/env bash
# Delayed tiers: gateway memory per delayed WebSocket session while the upstream sends RATE
# messages per second of PAYLOAD bytes to each session for longer than the delay; rounds of
# real-time and delayed sessions alternate (crates/keygate/examples/ws_delay_bench.rs).
#
#   bench/websocket-delay.sh [SESSIONS] [RATE] [DELAY_SECONDS] [PAYLOAD] [ROUNDS]
#
# Loopback only; bounded (ROUNDS x 2 x (DELAY + 5) s plus the build); every process it starts
# is stopped when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."
sessions="${1:-20}"
rate="${2:-1000}"
delay="${3:-10}"
payload="${4:-200}"
rounds="${5:-2}"
cargo build --release --locked -q -p keygate --bin keygate --example ws_delay_bench
target="${CARGO_TARGET_DIR:-target}"
"$target/release/examples/ws_delay_bench" --bin "$target/release/keygate" \
  --sessions "$sessions" --rate "$rate" --delay "$delay" --payload "$payload" --rounds "$rounds"
