#!/usr/bin/env bash
# Schema-driven fuzz of the admin API: schemathesis (PyPI, pinned) generates requests from the
# live /openapi.json of a real keygate node on a fresh SQLite file and fails on any 5xx or any
# answer that contradicts the document. Bounded: a fixed number of examples per operation.
#
#   scripts/admin-api-fuzz.sh [path/to/keygate] [examples per operation]
#
# Loopback only; the node it starts is stopped by PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN="${1:-target/debug/keygate}"
EXAMPLES="${2:-${KEYGATE_FUZZ_EXAMPLES:-25}}"
SCHEMATHESIS_VERSION="4.32.5"
VENV="${KEYGATE_FUZZ_VENV:-target/schemathesis-venv}"

[ -x "$BIN" ] || cargo build --locked -p keygate
if [ ! -x "$VENV/bin/schemathesis" ] || ! "$VENV/bin/schemathesis" --version | grep -q "$SCHEMATHESIS_VERSION"; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
fi

WORK="$(mktemp -d)"
PID=""
cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT="$(free_port)"; ADMIN="$(free_port)"
DB="$WORK/keygate.db"
cat > "$WORK/keygate.toml" <<'TOML'
[plans.free]
limits = { per_day = 200 }

[plans.pro]
features = ["live"]
TOML

TOKEN="$("$BIN" --db "$DB" --json admin-token create --name fuzz | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')"
"$BIN" --db "$DB" client create Acme --plan pro --scopes odds:read >/dev/null
"$BIN" --db "$DB" key create --client Acme >/dev/null

"$BIN" --db "$DB" --config "$WORK/keygate.toml" serve --upstream http://127.0.0.1:9 \
  --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$ADMIN" --workers 1 \
  >"$WORK/node.log" 2>&1 &
PID=$!
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$ADMIN/ready" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs "http://127.0.0.1:$ADMIN/ready" >/dev/null || { cat "$WORK/node.log"; exit 1; }

# not_a_server_error: no 5xx. status_code_conformance and response_schema_conformance: every
# answer is one the document lists, with the documented shape.
"$VENV/bin/schemathesis" run "http://127.0.0.1:$ADMIN/openapi.json" \
  --header "Authorization: Bearer $TOKEN" \
  --checks not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance \
  --max-examples "$EXAMPLES" \
  --seed 20261123 \
  --workers 1 \
  --request-timeout 10

if grep -q "panicked" "$WORK/node.log"; then
  echo "the node panicked during the fuzz:"; grep -A5 panicked "$WORK/node.log"; exit 1
fi
echo "admin API fuzz: no server errors, every answer as documented ($EXAMPLES examples per operation)."
