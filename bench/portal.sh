#!/usr/bin/env bash
# bench/portal.sh — does the customer portal, loaded hard, slow the gateway on the same node?
#
# One keygate node (release build, SQLite, `--workers W`) with [portal] on. The gateway case is
# an authenticated GET of keygate's own whoami endpoint (the whole key check, no upstream to
# measure); the portal case is the signed-in Keys page (a session lookup and a key listing in
# the store per request). wrk drives the gateway alone, then the gateway and the portal at the
# same time; the ratio is gateway requests/s under portal load over gateway requests/s alone
# (and the same for p99 latency), each the median of REPS runs.
#
#   bench/portal.sh                      # W=1, 3 reps, 10 s per run
#   REPS=1 DUR=5s bench/portal.sh
#
# Two portal loads: a flood (PCONNS connections, each asking again as soon as answered) and a
# paced one, heavy for a portal but not a flood (PACED connections, each waiting PACE_MS between
# pages: at most PACED * 1000 / PACE_MS pages a second, 400 by default).
#
# The portal's load generator runs at `nice` PORTAL_WRK_NICE (19): it stands in for browsers on
# other machines, and on a shared two-core rig its own CPU would otherwise be counted against the
# portal. PORTAL_WRK_NICE=0 measures the rig as it is. "portal alone" is the portal's rate with
# the gateway idle, to show the portal thread's lower priority costs it nothing then.
#
# "portal thread CPU per page" is the portal thread's user and system time over the portal-alone
# runs divided by the pages served: what one page costs the node, and the figure least moved by
# whatever else shares the machine (the ratios above move by a tenth from run to run on a
# shared two-core rig).
#
# The portal's per-source limit (`[portal] requests_per_source`) would answer most of these
# loads 429 (wrk is one address); SOURCE_LIMIT (1000000 by default) stands in for the many
# addresses of real visitors. SOURCE_LIMIT=600 (the default of a real node) measures a flood from
# one address, which the limit answers from memory; SOURCE_LIMIT= (empty) writes no such line,
# for a build from before the setting.
#
# Knobs: W (1), REPS (3), DUR (10s), THREADS (1 per wrk), CONNS (32 gateway), PCONNS (32
# portal flood), PACED (4), PACE_MS (10), LOADS ("flood paced": which portal loads run; each
# repetition measures the gateway alone, the portal alone, each load, then each load's control),
# PORTAL_WRK_NICE (19), PRIORITY (unset: the default; else [portal] priority), BUILD (1:
# cargo build --release first), KG (the binary), PAGE_PATH (/keys: the portal page loaded;
# /assets/portal.css, a page with no work, separates a page's cost from the portal's wake-ups). Ports 18300-18302, loopback.
# Every process started here is stopped by PID, also on exit.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
W=${W:-1}
REPS=${REPS:-3}
DUR=${DUR:-10s}
THREADS=${THREADS:-1}
CONNS=${CONNS:-32}
PCONNS=${PCONNS:-32}
PORTAL_WRK_NICE=${PORTAL_WRK_NICE:-19}
PACED=${PACED:-4}
PACE_MS=${PACE_MS:-10}
LOADS=${LOADS:-flood paced}
PAGE_PATH=${PAGE_PATH:-/keys}
BUILD=${BUILD:-1}
SOURCE_LIMIT=${SOURCE_LIMIT-1000000}
SOURCE_LINE=${SOURCE_LIMIT:+requests_per_source = $SOURCE_LIMIT}
KG=${KG:-${CARGO_TARGET_DIR:-$ROOT/target}/release/keygate}
RUN=$(mktemp -d "${TMPDIR:-/tmp}/kg-portal-bench.XXXXXX")
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$RUN"
}
trap cleanup EXIT

# wrk (and nginx, for the control) from Debian's packages when missing, as bench/peers.sh does.
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null || true; }
command -v wrk >/dev/null || { echo "wrk is needed and could not be installed (apt-get install wrk)" >&2; exit 1; }
if [ "$BUILD" = 1 ]; then
  (cd "$ROOT" && cargo build --release --locked -q -p keygate --bin keygate)
fi

PRIORITY_LINE=${PRIORITY:+priority = \"$PRIORITY\"}
cat > "$RUN/keygate.toml" <<TOML
[server]
listen = "127.0.0.1:18300"
admin_listen = "127.0.0.1:18301"
db = "$RUN/keygate.db"

[plans.bench]
limits = { rps = 1000000, by = "key" }

[profile]
whoami = "/v1/whoami"

[[routes]]
path = "/{*rest}"

[portal]
listen = "127.0.0.1:18302"
name = "Bench"
$SOURCE_LINE
$PRIORITY_LINE
TOML

kg() { "$KG" --config "$RUN/keygate.toml" --json "$@"; }
kg client create bench --plan bench >/dev/null
KEY=$(kg key create --client bench --label gateway | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
for i in $(seq 1 20); do kg key create --client bench --label "key $i" >/dev/null; done
LINK=$(kg portal invite bench --email bench@example.test | python3 -c 'import json,sys; print(json.load(sys.stdin)["link"])')

"$KG" --config "$RUN/keygate.toml" serve --workers "$W" --upstream http://127.0.0.1:9 \
  >"$RUN/serve.log" 2>&1 &
PIDS+=($!)
KG_PID=$!
for _ in $(seq 1 100); do
  curl -sf http://127.0.0.1:18301/ready >/dev/null && break
  sleep 0.1
done

# Sign in as a browser would: the link's page, then its "Sign in" button.
JAR="$RUN/cookies"
PAGE=$(curl -s -c "$JAR" "$LINK")
CSRF=$(printf '%s' "$PAGE" | sed -n 's/.*name="csrf" value="\([0-9a-f]*\)".*/\1/p' | head -1)
TOKEN=$(printf '%s' "$PAGE" | sed -n 's/.*name="token" value="\([0-9a-f]*\)".*/\1/p' | head -1)
curl -s -b "$JAR" -c "$JAR" -o /dev/null -d "csrf=$CSRF&token=$TOKEN" http://127.0.0.1:18302/sign-in/link
SESSION=$(awk '$6 == "session" { print $7 }' "$JAR")
COOKIE="session=$SESSION; csrf=$CSRF"
test "$(curl -s -o /dev/null -w '%{http_code}' -H "Cookie: $COOKIE" http://127.0.0.1:18302/keys)" = 200
test "$(curl -s -o /dev/null -w '%{http_code}' -H "X-API-Key: $KEY" http://127.0.0.1:18300/v1/whoami)" = 200

# rps and p99 (ms) of one wrk run, at niceness NICE (0), with an optional wrk Lua script.
measure() { # url header conns [script]
  nice -n "${NICE:-0}" wrk -t"$THREADS" -c"$3" -d"$DUR" --latency ${4:+-s "$4"} -H "$2" "$1" | awk '
    /Requests\/sec/ { rps = $2 }
    /^ +99%/ { v = $2; if (v ~ /us$/) { sub(/us/, "", v); v /= 1000 } else if (v ~ /ms$/) { sub(/ms/, "", v) } else if (v ~ /s$/) { sub(/s/, "", v); v *= 1000 } p99 = v }
    END { printf "%s %s\n", rps, p99 }'
}
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
gateway() { measure http://127.0.0.1:18300/v1/whoami "X-API-Key: $KEY" "$CONNS"; }
portal() { NICE=$PORTAL_WRK_NICE measure "http://127.0.0.1:18302$PAGE_PATH" "Cookie: $COOKIE" "$@"; }
# The gateway measured while the portal is loaded: case name, portal connections, [script].
under_portal() {
  portal "$2" "${3:-}" > "$RUN/$1.portal.$rep" &
  local pw=$!
  sleep 0.2
  gateway >> "$RUN/$1"
  wait "$pw"
  cat "$RUN/$1.portal.$rep" >> "$RUN/$1.portal"
}
# CPU time (user + system, clock ticks) of the node's portal thread so far: what a page costs,
# whatever else shares the machine.
portal_cpu() {
  local t
  for t in /proc/"$KG_PID"/task/*; do
    if [ "$(cat "$t/comm")" = keygate-portal ]; then
      awk '{ print $14 + $15 }' "$t/stat"
      return
    fi
  done
  echo 0
}
TICKS=$(getconf CLK_TCK)
# The paced portal load: each connection waits PACE_MS between pages.
printf 'function delay() return %s end\n' "$PACE_MS" > "$RUN/pace.lua"

# The controls: each portal load on a copy of the Keys page served by nginx (no keygate
# work at all), which is what the load generator, loopback TCP and a second server cost the
# gateway on this machine anyway. Skipped without nginx.
CONTROL=0
if command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; then
  CONTROL=1
  mkdir -p "$RUN/www" "$RUN/nginx"
  curl -s -H "Cookie: $COOKIE" http://127.0.0.1:18302/keys > "$RUN/www/keys"
  cat > "$RUN/nginx/nginx.conf" <<NGINX
daemon off;
worker_processes 1;
pid $RUN/nginx/nginx.pid;
error_log $RUN/nginx/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $RUN/nginx;
  server { listen 127.0.0.1:18303; root $RUN/www; default_type text/html; }
}
NGINX
  "$(command -v nginx || echo /usr/sbin/nginx)" -p "$RUN/nginx" -c "$RUN/nginx/nginx.conf" &
  PIDS+=($!)
  for _ in $(seq 1 50); do curl -sf http://127.0.0.1:18303/keys >/dev/null && break; sleep 0.1; done
fi
control() { # a portal load on nginx, while the gateway is measured: case name, connections, [script]
  NICE=$PORTAL_WRK_NICE measure http://127.0.0.1:18303/keys "Cookie: x" "$2" "${3:-}" > "$RUN/$1.portal.$rep" &
  local pw=$!
  sleep 0.2
  gateway >> "$RUN/$1"
  wait "$pw"
  cat "$RUN/$1.portal.$rep" >> "$RUN/$1.portal"
}

for rep in $(seq 1 "$REPS"); do
  gateway >> "$RUN/alone"
  before=$(portal_cpu)
  portal "$PCONNS" >> "$RUN/portal-alone"
  echo "$before $(portal_cpu) $(tail -1 "$RUN/portal-alone" | cut -d' ' -f1)" >> "$RUN/portal-cpu"
  for load in $LOADS; do
    case $load in
      flood) under_portal flood "$PCONNS" ;;
      paced) under_portal paced "$PACED" "$RUN/pace.lua" ;;
      *) echo "unknown load $load (flood, paced)" >&2; exit 2 ;;
    esac
  done
  if [ "$CONTROL" = 1 ]; then
    for load in $LOADS; do
      case $load in
        flood) control control-flood "$PCONNS" ;;
        paced) control control-paced "$PACED" "$RUN/pace.lua" ;;
      esac
    done
  fi
done

col() { cut -d' ' -f"$2" "$RUN/$1" | median; }
A_RPS=$(col alone 1); A_P99=$(col alone 2)
printf '| case | gateway req/s | gateway p99 ms | pages/s | gateway ratio (req/s, p99) |\n|---|---|---|---|---|\n'
printf '| gateway alone | %s | %s | - | 1 |\n' "$A_RPS" "$A_P99"
printf '| portal alone | - | - | %s | - |\n' "$(col portal-alone 1)"
# CPU per page: the portal thread's ticks over a portal-alone run, over the pages it served.
PER_PAGE=$(awk -v t="$TICKS" -v d="${DUR%s}" '{ print ($2 - $1) / t * 1e6 / ($3 * d) }' "$RUN/portal-cpu" | median)
printf '| portal thread CPU per page, µs (portal alone) | - | - | %.0f | - |\n' "$PER_PAGE"
CASES="$LOADS"; [ "$CONTROL" = 1 ] && for load in $LOADS; do CASES="$CASES control-$load"; done
for c in $CASES; do
  L_RPS=$(col $c 1); L_P99=$(col $c 2)
  awk -v c="$c" -v a="$A_RPS" -v l="$L_RPS" -v ap="$A_P99" -v lp="$L_P99" -v p="$(col $c.portal 1)" \
    -v n="$(case $c in flood) echo "portal, $PCONNS connections back to back" ;; paced) echo "portal, $PACED connections ${PACE_MS} ms apart" ;; control-flood) echo "control: the same flood on nginx" ;; *) echo "control: the same paced load on nginx" ;; esac)" \
    'BEGIN { printf "| gateway + %s | %s | %s | %s | %.2f, %.2f |\n", n, l, lp, p, l / a, lp / ap }'
done
