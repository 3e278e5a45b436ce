#!/usr/bin/env bash
# Propagation latency: three keygate nodes on one PostgreSQL database; N revocations, each
# timed from commit until every node refuses the key. Prints p50/p90/p99/max.
#
#   bench/propagation.sh [CHANGES]      (default 1000; database from KEYGATE_BENCH_DATABASE_URL)
#
# Loopback only; every node it starts is stopped when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."
changes="${1:-1000}"
db="${KEYGATE_BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
cargo build --release --locked -q -p keygate --bin keygate --example propagation
target/release/examples/propagation --db "$db" --changes "$changes" --bin target/release/keygate
