#!/usr/bin/env bash
# bench/gateway.sh — keygate beside nginx, HAProxy and Envoy on loopback (127.0.0.1 only).
#
# Reuses bench/peers.sh (a copy of the shared peer benchmark) for everything the peers need:
# installing them (Debian packages, PyPI venv for Envoy), the 10,000-key tables, their configs,
# the one `return 200` nginx upstream, the wrk script (a random key of 10,000 per request) and
# start/stop by PID. Adds keygate (release build, the same 10,000 keys in a SQLite store, a
# per-key rate limit configured but never triggered), keygate with authentication off, keygate's
# verify API, and nginx using keygate as its auth_request service. Cases run round-robin for
# REPS repetitions per worker count; one table per worker count with medians, CPU per request
# (user and kernel), RSS, and the ratios keygate / peer against the targets in BENCHMARKS.md.
#
#   bench/gateway.sh                          # W=1 and W=2, 3 reps, 10 s per case (~20 min)
#   WORKERS_LIST=1 REPS=1 DUR=5s bench/gateway.sh
#   CASES="nginx-gate keygate-gate" bench/gateway.sh
#
# Knobs: WORKERS_LIST ("1 2"), REPS (3), DUR (10s), WARMUP (2s), THREADS (2), CONNS (64),
# CASES (below), INSTALL (1), BUILD (1: cargo build --release first), RUN (/tmp/kg-gateway),
# CARGO_TARGET_DIR (where the release build lives; default <repo>/target), REPORT_ONLY=1 (print
# the tables again from the last run's rows in $RUN/gateway.tsv, measuring nothing).
#
# Cases (ports):
#   nginx-proxy nginx-gate nginx-authreq haproxy-proxy haproxy-gate envoy-proxy envoy-gate
#                  as in peers.sh (18081-18091)
#   keygate-gate   keygate serve, bench/keygate-gate.toml                    (18094)
#   keygate-proxy  keygate serve, bench/keygate-proxy.toml (public route)    (18095)
#   keygate-verify POST /v1/keys/verify {"key": ...} on keygate-gate         (18094)
#   nginx-keygate  nginx auth_request -> keygate /v1/auth/nginx -> upstream  (18096)
#   keygate-gate-direct keygate-gate with `upstream_engine = "direct"` (18099), not in the
#                  default list: CASES="nginx-gate keygate-gate keygate-gate-direct"
#   nginx-gate-tls nginx-gate terminating TLS (ECDSA P-256, TLS 1.3), https  (18097)
#   keygate-gate-tls keygate-gate with [server.tls] on the same certificate    (18098)
#                  (both TLS cases are not in the default list: CASES="nginx-gate-tls keygate-gate-tls")
#   nginx-gate-tls-new keygate-gate-tls-new  the same two servers, each request on a new
#                  connection with a full TLS handshake (no resumption), by
#                  examples/tls_handshakes (HANDSHAKES=path), CONNS at once: new handshakes
#                  per second, and the server's CPU per handshake; not in the default list
#   keygate-gate-base  keygate-gate with another build (KG_BASE=path), not in the default list;
#                  KG_BASE_DB=path gives it a store of its own schema (seeded by its own bench_keys)
#   keygate-gate-analytics-off keygate-gate with `[analytics] enabled = false` (analytics is on
#                  by default: keygate-gate is "on"), not in the default list           (18094)
#   keygate-gate-pg  keygate-gate on a PostgreSQL store (KG_PG, the database `kgbench`, made
#                  afresh), local limits: one node, the cluster's baseline               (18100)
#   keygate-gate-cluster three nodes of keygate-gate on that PostgreSQL store with
#                  `[limits] backend = "redis"` (KG_REDIS): exact cluster-wide limits, one
#                  Redis round trip per request; wrk drives node 1 while nodes 2 and 3 run
#                  beside it (feed, leases, the shared limiter), as one node of a cluster
#                  (18101-18103); neither is in the default list:
#                  CASES="keygate-gate-pg keygate-gate-cluster"
#   nginx-gate-log nginx-gate with its access log on: `access_log FILE combined buffer=64k` (18099)
#   keygate-gate-log keygate-gate with its access log on (RUST_LOG=info, stderr to a file) (18094)
#   keygate-gate-log-base  keygate-gate-log with the KG_BASE build
#                  (the three log cases are not in the default list:
#                  CASES="nginx-gate nginx-gate-log keygate-gate keygate-gate-log")
#
# "Workers" is nginx worker_processes, HAProxy nbthread, Envoy --concurrency and keygate
# --workers (its per-core runtimes). Every process started here is stopped by PID, also on exit.
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
PEERS=${PEERS:-$HERE/peers.sh}
RUN=${RUN:-${TMPDIR:-/tmp}/kg-gateway}
WORKERS_LIST=${WORKERS_LIST:-"1 2"}
REPS=${REPS:-3}
BUILD=${BUILD:-1}
CASES=${CASES:-"nginx-proxy nginx-gate haproxy-proxy haproxy-gate envoy-gate nginx-authreq keygate-gate keygate-proxy keygate-verify nginx-keygate"}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
KG=${KG:-$TARGET_DIR/release/keygate}
SEED=${SEED:-$TARGET_DIR/release/examples/bench_keys}
HANDSHAKES=${HANDSHAKES:-$TARGET_DIR/release/examples/tls_handshakes}
# The cluster cases' PostgreSQL server (its database `kgbench` is dropped and made afresh) and
# Redis (its keys are the limiter's own, named by keygate; nothing else is touched).
KG_PG=${KG_PG:-postgres://postgres@127.0.0.1:5432}
KG_REDIS=${KG_REDIS:-redis://127.0.0.1:6379}
export RUN REPS

# peers.sh's functions and settings, without running its main.
# shellcheck source=/dev/null
source <(sed 's/^main "\$@"$//' "$PEERS")
ROWS="$RUN/gateway.tsv"

kg_log() { printf '[gateway] %s\n' "$*" >&2; }

# ---------------------------------------------------------------- keygate
build_keygate() {
  if [ "$BUILD" = 1 ]; then
    kg_log "cargo build --release (keygate, bench_keys, tls_handshakes)"
    (cd "$ROOT" && cargo build --release --locked -q -p keygate --bin keygate --example bench_keys --example tls_handshakes) || exit 1
  fi
  [ -x "$KG" ] && [ -x "$SEED" ] || { kg_log "missing $KG or $SEED (BUILD=1 builds them)"; exit 1; }
}

seed_store() {
  rm -f "$RUN"/kg.db "$RUN"/kg.db-*
  "$SEED" --db "$RUN/kg.db" --keys "$RUN/keys.txt" --clients 100 --plan bench || exit 1
}

# start_kg NAME CONFIG PORT [BINARY [DB]] -> STARTED_PID
start_kg() {
  local name=$1 config=$2 port=$3 bin=${4:-$KG} db=${5:-$RUN/kg.db}
  # RUST_LOG=warn: no per-request access log line, as the peers run with access_log off
  # (KG_RUST_LOG=info for the *-log cases: the default, one access line per request).
  start "$name" "$port" env RUST_LOG="${KG_RUST_LOG:-warn}" "$bin" --db "$db" serve \
    --config "$config" --workers "$WORKERS"
}

write_kg_files() {
  python3 - "$RUN" <<'PY'
import sys
run = sys.argv[1]
src = open(f"{run}/keys.lua").read()
old = 'return wrk.format("GET", "/", { ["X-API-Key"] = keys[math.random(n)] })'
new = ('return wrk.format("POST", "/v1/keys/verify", { ["Content-Type"] = "application/json" }, '
       '\'{"key":"\' .. keys[math.random(n)] .. \'"}\')')
assert old in src, "peers.sh's wrk script changed"
open(f"{run}/verify.lua", "w").write(src.replace(old, new))
PY
  # nginx with keygate as its auth_request service (the peers' nginx-authreq, with keygate in
  # place of the static map): the sub-request goes to keygate over kept-alive connections.
  { nginx_common kgauth "$WORKERS"
    cat <<EOF
  upstream kgauth {
    server 127.0.0.1:18094;
    keepalive 256;
    keepalive_requests 10000000;
  }
  server {
    listen 127.0.0.1:18096 backlog=4096;
    location = /_auth {
      internal;
      proxy_pass http://kgauth/v1/auth/nginx;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URI \$request_uri;
      proxy_set_header X-Original-Method \$request_method;
    }
    location / {
      auth_request /_auth;
      auth_request_set \$client \$upstream_http_x_keygate_client_id;
      proxy_set_header X-Client-Id \$client;
      $NGINX_PROXY
    }
  }
}
EOF
  } >"$RUN/nginx-kgauth.conf"
  # nginx-gate with its access log on, buffered as nginx's documentation advises for load
  sed -e "s|listen 127.0.0.1:18082 backlog=4096;|listen 127.0.0.1:18099 backlog=4096; access_log $RUN/nginx-gate-log.access combined buffer=64k flush=1s;|" \
      -e "s|nginx-gate\.|nginx-gate-log.|g" "$RUN/nginx-gate.conf" >"$RUN/nginx-gate-log.conf"
}

# ---------------------------------------------------------------- measuring
rss_kib() {   # VmRSS of pids and their direct children, KiB
  local total=0 p v
  for p in "$@" $(for q in "$@"; do pgrep -P "$q" 2>/dev/null; done); do
    v=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null) || continue
    total=$(( total + ${v:-0} ))
  done
  echo "$total"
}

# stat_ticks AWK-EXPR PIDS... : an expression of /proc/PID/stat's fields (counted from the
# state, after the command name), summed over pids and their direct children
stat_ticks() {
  local expr=$1 t=0 p; shift
  for p in "$@" $(for q in "$@"; do pgrep -P "$q" 2>/dev/null; done); do
    [ -r "/proc/$p/stat" ] || continue
    t=$(( t + $(awk "{sub(/^.*\\) /,\"\"); print $expr}" "/proc/$p/stat") ))
  done
  echo "$t"
}

# CPU ticks (user and kernel) and user-space ticks alone: the split between the process's own
# code and the kernel's work on its behalf (sockets, scheduling)
cpu_all() { stat_ticks '$12 + $13' "$@"; }
user_all() { stat_ticks '$12' "$@"; }

# busy and total CPU ticks of the whole machine (/proc/stat), to tell whether a run used all
# cores: only then is req/s bounded by CPU per request, as the targets' ceilings assume
machine_ticks() { awk '/^cpu / { print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8; exit }' /proc/stat; }

# measure CASE PORT LUA SANITY PIDS... : one bounded wrk run, one row in $ROWS
measure() {
  local c=$1 port=$2 lua=$3 sanity=$4; shift 4
  local pids=("$@") out line hz c0 c1 u0 u1 rss m0 m1 scheme=${SCHEME:-http}
  if [ "${NEW_CONNS:-0}" = 1 ]; then
    # A new TLS connection (full handshake) per request: wrk would resume its last session.
    "$HANDSHAKES" --addr "127.0.0.1:$port" --ca "$RUN/tls-ca.pem" --keys "$RUN/keys.txt" \
      --concurrency "$CONNS" --seconds "${WARMUP%s}" --warmup 0 >/dev/null 2>&1
    c0=$(cpu_all "${pids[@]}"); u0=$(user_all "${pids[@]}"); m0=$(machine_ticks)
    out=$("$HANDSHAKES" --addr "127.0.0.1:$port" --ca "$RUN/tls-ca.pem" --keys "$RUN/keys.txt" \
      --concurrency "$CONNS" --seconds "${DUR%s}" --warmup 0 2>"$RUN/$c.handshakes.err")
  else
    wrk -t"$THREADS" -c"$CONNS" -d"$WARMUP" -s "$lua" "$scheme://127.0.0.1:$port/" >/dev/null 2>&1
    c0=$(cpu_all "${pids[@]}"); u0=$(user_all "${pids[@]}"); m0=$(machine_ticks)
    out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DUR" --latency -s "$lua" "$scheme://127.0.0.1:$port/" 2>&1)
  fi
  c1=$(cpu_all "${pids[@]}"); u1=$(user_all "${pids[@]}"); m1=$(machine_ticks)
  rss=$(rss_kib "${pids[@]}")
  echo "$out" >"$RUN/wrk-$c-w$WORKERS.txt"
  line=$(echo "$out" | grep '^RESULT') || { kg_log "$c: no RESULT line"; echo "$out" >&2; return; }
  hz=$(getconf CLK_TCK)
  local kv R_requests R_rps R_p50_us R_p99_us R_non2xx R_sockerr
  for kv in ${line#RESULT }; do
    case $kv in requests=*|rps=*|p50_us=*|p99_us=*|non2xx=*|sockerr=*) eval "R_$kv";; esac
  done
  awk -v c="$c" -v w="$WORKERS" -v rps="$R_rps" -v p50="$R_p50_us" -v p99="$R_p99_us" \
      -v n="$R_requests" -v t=$((c1 - c0)) -v hz="$hz" -v rss="$rss" -v bad="$R_non2xx" \
      -v err="$R_sockerr" -v s="$sanity" -v u=$((u1 - u0)) -v m0="$m0" -v m1="$m1" 'BEGIN {
    split(m0, a, " "); split(m1, b, " "); busy = b[1] - a[1]; all = b[2] - a[2]
    printf "%s\t%s\t%.0f\t%.3f\t%.3f\t%.2f\t%.1f\t%s\t%s\t%s\t%.2f\t%.3f\n", c, w, rps, p50/1000, p99/1000,
      (n > 0 ? t / hz * 1e6 / n : 0), rss / 1024, bad, err, s, (n > 0 ? u / hz * 1e6 / n : 0),
      (all > 0 ? busy / all : 0) }' >>"$ROWS"
}

codes() {  # valid / missing / bogus on GET /
  local port=$1 key scheme=${SCHEME:-http}; key=$(head -1 "$RUN/keys.txt")
  local url="$scheme://127.0.0.1:$port/" tls=()
  [ "$scheme" = https ] && tls=(--cacert "$RUN/tls-ca.pem")
  echo "$(http_code "${tls[@]}" -H "X-API-Key: $key" "$url")/$(http_code "${tls[@]}" "$url")/$(http_code "${tls[@]}" -H "X-API-Key: nope" "$url")"
}

# The TLS cases' one certificate (ECDSA P-256 for 127.0.0.1, issued by a CA made here, as a
# real server's is: a self-signed certificate is a CA, which rustls's client refuses as a
# server's) and configurations: nginx-gate's with `ssl` on its listener, keygate-gate's with
# [server.tls]; the same files for both. Clients trust tls-ca.pem.
write_tls_files() {
  if [ ! -s "$RUN/tls-ca.pem" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$RUN/tls-ca-key.pem" \
      -out "$RUN/tls-ca.pem" -days 2 -subj "/CN=keygate bench CA" 2>/dev/null &&
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$RUN/tls-key.pem" \
      -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 2>/dev/null |
      openssl x509 -req -CA "$RUN/tls-ca.pem" -CAkey "$RUN/tls-ca-key.pem" -days 2 \
        -copy_extensions copy -out "$RUN/tls.pem" 2>/dev/null ||
      { rm -f "$RUN/tls-ca.pem"; kg_log "openssl could not make the certificates"; return 1; }
  fi
  sed -e "s|listen 127.0.0.1:18082 backlog=4096;|listen 127.0.0.1:18097 ssl backlog=4096; ssl_certificate $RUN/tls.pem; ssl_certificate_key $RUN/tls-key.pem; ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:tls:10m;|" \
      -e "s|nginx-gate\.|nginx-gate-tls.|g" "$RUN/nginx-gate.conf" >"$RUN/nginx-gate-tls.conf"
  { sed -e 's/127.0.0.1:18094/127.0.0.1:18098/; s/127.0.0.1:18194/127.0.0.1:18198/' "$HERE/keygate-gate.toml"; printf '\n[server.tls]\ncert = "%s"\nkey = "%s"\n' "$RUN/tls.pem" "$RUN/tls-key.pem"; } \
    >"$RUN/keygate-gate-tls.toml"
}

# The *-tls-new cases' load generator (crates/keygate/examples/tls_handshakes.rs), built with
# keygate when BUILD=1.
have_handshakes() {
  [ -x "$HANDSHAKES" ] || { kg_log "the *-tls-new cases need $HANDSHAKES (cargo build --release -p keygate --example tls_handshakes)"; return 1; }
}

# The PostgreSQL store of the cluster cases, seeded once per run with the same keys.
seed_pg() {
  [ -n "${PG_SEEDED:-}" ] && return
  psql "$KG_PG/postgres" -q -c 'DROP DATABASE IF EXISTS kgbench' -c 'CREATE DATABASE kgbench' \
    >/dev/null || { kg_log "cannot make the database kgbench on $KG_PG"; return 1; }
  "$SEED" --db "$KG_PG/kgbench" --keys "$RUN/keys.txt" --clients 100 --plan bench || return 1
  PG_SEEDED=1
}

# keygate-gate.toml on PORT (admin on PORT+100), with extra lines at the end
kg_variant() {   # kg_variant PORT FILE [TOML...]
  local port=$1 out=$2; shift 2
  { sed -e "s/127.0.0.1:18094/127.0.0.1:$port/; s/127.0.0.1:18194/127.0.0.1:$((port + 100))/" \
      "$HERE/keygate-gate.toml"; printf '%s\n' "$@"; } >"$out"
}

run_one() {
  local c=$1 port pid kgpid
  case $c in
    keygate-gate-analytics-off)
      kg_variant 18094 "$RUN/$c.toml" '' '[analytics]' 'enabled = false'
      start_kg "$c" "$RUN/$c.toml" 18094 || return
      measure "$c" 18094 "$RUN/keys.lua" "$(codes 18094)" "$STARTED_PID"
      stop_pid "$STARTED_PID";;
    keygate-gate-pg)
      seed_pg || return
      kg_variant 18100 "$RUN/$c.toml"
      start_kg "$c" "$RUN/$c.toml" 18100 "$KG" "$KG_PG/kgbench" || return
      measure "$c" 18100 "$RUN/keys.lua" "$(codes 18100)" "$STARTED_PID"
      stop_pid "$STARTED_PID";;
    keygate-gate-cluster)
      seed_pg || return
      local n pids=()
      for n in 1 2 3; do
        kg_variant $((18100 + n)) "$RUN/$c-$n.toml" '' '[limits]' 'backend = "redis"' \
          "redis_url = \"$KG_REDIS\""
        start_kg "$c-$n" "$RUN/$c-$n.toml" $((18100 + n)) "$KG" "$KG_PG/kgbench" || break
        pids+=("$STARTED_PID")
      done
      # CPU and memory are node 1's: the node under load, as one of three
      [ ${#pids[@]} = 3 ] && measure "$c" 18101 "$RUN/keys.lua" "$(codes 18101)" "${pids[0]}"
      for pid in "${pids[@]}"; do stop_pid "$pid"; done;;
    keygate-gate)
      start_kg "$c" "$HERE/keygate-gate.toml" 18094 || return
      measure "$c" 18094 "$RUN/keys.lua" "$(codes 18094)" "$STARTED_PID"
      stop_pid "$STARTED_PID";;
    keygate-gate-base)   # another keygate build (KG_BASE), to compare two builds in one run
      [ -x "${KG_BASE:-}" ] || { kg_log "keygate-gate-base needs KG_BASE=path/to/keygate"; return; }
      start_kg "$c" "$HERE/keygate-gate.toml" 18094 "$KG_BASE" "${KG_BASE_DB:-$RUN/kg.db}" || return
      measure "$c" 18094 "$RUN/keys.lua" "$(codes 18094)" "$STARTED_PID"
      stop_pid "$STARTED_PID";;
    keygate-gate-direct)   # keygate-gate with [server] upstream_engine = "direct"
      sed -e 's/127.0.0.1:18094/127.0.0.1:18099/; s/127.0.0.1:18194/127.0.0.1:18199/' \
          -e 's/^\[server\]$/[server]\nupstream_engine = "direct"/' "$HERE/keygate-gate.toml" \
          >"$RUN/keygate-gate-direct.toml"
      start_kg "$c" "$RUN/keygate-gate-direct.toml" 18099 || return
      measure "$c" 18099 "$RUN/keys.lua" "$(codes 18099)" "$STARTED_PID"
      stop_pid "$STARTED_PID";;
    keygate-gate-log|keygate-gate-log-base)   # the access log on, to $RUN/$c.log
      local bin=$KG db=$RUN/kg.db
      if [ "$c" = keygate-gate-log-base ]; then
        [ -x "${KG_BASE:-}" ] || { kg_log "$c needs KG_BASE=path/to/keygate"; return; }
        bin=$KG_BASE db=${KG_BASE_DB:-$RUN/kg.db}
      fi
      KG_RUST_LOG=info start_kg "$c" "$HERE/keygate-gate.toml" 18094 "$bin" "$db" || return
      measure "$c" 18094 "$RUN/keys.lua" "$(codes 18094)" "$STARTED_PID"
      stop_pid "$STARTED_PID"
      kg_log "$c: $(grep -c 'keygate::access' "$RUN/$c.log") access lines"
      rm -f "$RUN/$c.log";;
    nginx-gate-log)
      start "$c" 18099 nginx -c "$RUN/nginx-gate-log.conf" -g 'daemon off;' || return
      measure "$c" 18099 "$RUN/keys.lua" "$(codes 18099)" "$STARTED_PID"
      stop_pid "$STARTED_PID"
      kg_log "$c: $(wc -l <"$RUN/nginx-gate-log.access") access lines"
      rm -f "$RUN/nginx-gate-log.access";;
    nginx-gate-tls|nginx-gate-tls-new)
      write_tls_files || return
      local new=0; [ "$c" = nginx-gate-tls-new ] && { new=1; have_handshakes || return; }
      SCHEME=https start "$c" 18097 nginx -c "$RUN/nginx-gate-tls.conf" -g 'daemon off;' || return
      NEW_CONNS=$new SCHEME=https measure "$c" 18097 "$RUN/keys.lua" "$(SCHEME=https codes 18097)" "$STARTED_PID"
      [ "$new" = 1 ] && kg_log "$(cat "$RUN/$c.handshakes.err")"
      stop_pid "$STARTED_PID";;
    keygate-gate-tls|keygate-gate-tls-new)
      write_tls_files || return
      local new=0; [ "$c" = keygate-gate-tls-new ] && { new=1; have_handshakes || return; }
      SCHEME=https start_kg "$c" "$RUN/keygate-gate-tls.toml" 18098 || return
      NEW_CONNS=$new SCHEME=https measure "$c" 18098 "$RUN/keys.lua" "$(SCHEME=https codes 18098)" "$STARTED_PID"
      [ "$new" = 1 ] && kg_log "$(cat "$RUN/$c.handshakes.err")"
      stop_pid "$STARTED_PID";;
    keygate-proxy)
      start_kg "$c" "$HERE/keygate-proxy.toml" 18095 || return
      measure "$c" 18095 "$RUN/keys.lua" "$(codes 18095)" "$STARTED_PID"
      stop_pid "$STARTED_PID";;
    keygate-verify)
      start_kg "$c" "$HERE/keygate-gate.toml" 18094 || return
      local key sanity; key=$(head -1 "$RUN/keys.txt")
      sanity=$(curl -s --max-time 2 -H 'content-type: application/json' \
        -d "{\"key\":\"$key\"}" http://127.0.0.1:18094/v1/keys/verify | grep -o '"valid":[a-z]*')
      measure "$c" 18094 "$RUN/verify.lua" "$sanity" "$STARTED_PID"
      stop_pid "$STARTED_PID";;
    nginx-keygate)
      start_kg keygate-auth "$HERE/keygate-gate.toml" 18094 || return
      kgpid=$STARTED_PID
      start "$c" 18096 nginx -c "$RUN/nginx-kgauth.conf" -g 'daemon off;' || { stop_pid "$kgpid"; return; }
      pid=$STARTED_PID
      measure "$c" 18096 "$RUN/keys.lua" "$(codes 18096)" "$pid" "$kgpid"
      stop_pid "$pid"; stop_pid "$kgpid";;
    *)
      port=$(case_port "$c") || { kg_log "unknown case $c"; return; }
      start_case "$c" || return
      measure "$c" "$port" "$RUN/keys.lua" "$(codes "$port")" "$STARTED_PID"
      stop_pid "$STARTED_PID";;
  esac
}

print_tables() {
  python3 - "$ROWS" "$THREADS" "$CONNS" "$DUR" "$WARMUP" "$NKEYS" "$(nproc)" <<'PY'
import sys, statistics as st
rows_file, threads, conns, dur, warm, nkeys, cores = sys.argv[1:]
rows = [l.rstrip("\n").split("\t") for l in open(rows_file) if l.strip()]
by_w = {}
for r in rows:
    by_w.setdefault(r[1], {}).setdefault(r[0], []).append(r)
TARGETS = [  # (keygate case, peer case, what, target, higher is better)
    ("keygate-gate", "nginx-gate", "req/s", 1.1, True),
    ("keygate-gate", "nginx-proxy", "req/s", 1.0, True),
    ("keygate-gate", "haproxy-gate", "req/s", 1.2, True),
    ("keygate-gate", "envoy-gate", "req/s", 3.0, True),
    ("keygate-gate", "nginx-gate", "p99", 1.0, False),
    ("nginx-keygate", "nginx-authreq", "req/s", 1.0, True),
    ("keygate-gate-tls", "nginx-gate-tls", "req/s", 1.1, True),   # issue 24
    ("keygate-gate-tls-new", "nginx-gate-tls-new", "req/s", 1.1, True),
    ("keygate-gate-tls-new", "nginx-gate-tls-new", "cpu", 1.0, False),
    ("keygate-gate-direct", "nginx-gate", "req/s", 1.1, True),
    ("keygate-gate-direct", "nginx-gate", "p99", 1.0, False),
    ("keygate-gate-log", "nginx-gate-log", "req/s", 1.0, True),
]
# What a setting costs: (case, its baseline, what), as ratios without a target.
COSTS = [
    ("keygate-gate", "keygate-gate-analytics-off", "analytics on / off"),
    ("keygate-gate-direct", "keygate-gate", "direct engine / hyper engine"),
    ("keygate-gate-log", "keygate-gate", "access log on / off"),
    ("keygate-gate-cluster", "keygate-gate-pg", "3 nodes, Redis limits / 1 node, local limits (PostgreSQL store)"),
    ("keygate-gate-pg", "keygate-gate", "PostgreSQL store / SQLite store (1 node, local limits)"),
]
for w in sorted(by_w):
    cases = by_w[w]
    med = {c: {k: st.median(float(r[i]) for r in rs)
               for k, i in (("rps", 2), ("p50", 3), ("p99", 4), ("cpu", 5), ("rss", 6), ("usr", 10),
                            ("busy", 11))}
           for c, rs in cases.items()}
    reps = max(len(rs) for rs in cases.values())
    print(f"\n### workers={w}: wrk -t{threads} -c{conns} -d{dur} (+{warm} warm-up), random key of "
          f"{nkeys} per request, {cores} cores, medians of {reps}\n")
    kg = med.get("keygate-gate")
    print("| case | req/s | (min-max) | p50 ms | p99 ms | CPU us/req | user | kernel | machine busy | RSS MiB | keygate-gate req/s / this | sanity | non2xx/sockerr |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for c, rs in cases.items():
        m = med[c]
        rps = [float(r[2]) for r in rs]
        ratio = f"{kg['rps'] / m['rps']:.2f}" if kg and m["rps"] else "-"
        bad = f"{sum(int(r[7]) for r in rs)}/{sum(int(r[8]) for r in rs)}"
        print(f"| {c} | {m['rps']:,.0f} | {min(rps):,.0f}-{max(rps):,.0f} | {m['p50']:.2f} | "
              f"{m['p99']:.2f} | {m['cpu']:.1f} | {m['usr']:.1f} | {m['cpu'] - m['usr']:.1f} | "
              f"{m['busy'] * 100:.0f}% | {m['rss']:.1f} | {ratio} | {rs[0][9]} | {bad} |")
    # A CPU-bound model of each req/s target: with every core busy, req/s = cores / (CPU per
    # request of every process). The peer's run gives what the load generator and the upstream
    # cost per request ("others": the machine's busy time per request less the peer's own).
    # keygate pays at least its kernel time (the same socket calls as the peer). Hence
    # - the ceiling: the ratio keygate could not pass even with no user-space time at all;
    # - the budget: the user-space time per request keygate may spend to meet the target
    #   (also bounded by its worker threads, each at most one core).
    def model(mine, peer, target):
        p, k = med[peer], med[mine]
        ncores, workers = int(cores), int(w)
        others = p["busy"] * ncores * 1e6 / p["rps"] - p["cpu"]
        kernel = k["cpu"] - k["usr"]
        ceiling = ncores * 1e6 / p["rps"] / (others + kernel)
        want = target * p["rps"]
        budget = min(ncores * 1e6 / want - others, workers * 1e6 / want) - kernel
        return ceiling, budget
    print("\n| target | measured | target | met | ceiling (keygate user time 0) | keygate user us/req: budget / spent |")
    print("|---|---:|---:|---|---:|---:|")
    for mine, peer, what, target, higher in TARGETS:
        if mine not in med or peer not in med or not med[peer]["rps"]:
            continue
        if what == "req/s":
            v = med[mine]["rps"] / med[peer]["rps"]
            label = f"{mine} / {peer} req/s"
            ok = v >= target
        elif what == "cpu":
            v = med[mine]["cpu"] / med[peer]["cpu"]
            label = f"{mine} / {peer} CPU per request"
            ok = v <= target
        else:
            v = med[mine]["p99"] / med[peer]["p99"]
            label = f"{mine} / {peer} p99 latency"
            ok = v <= target
        ceil, budget = "-", "-"
        if what == "req/s" and mine == "keygate-gate" and med[peer]["busy"] > 0:
            c, b = model(mine, peer, target)
            ceil = f"{c:.2f}x"
            budget = f"{max(b, 0):.1f} / {med[mine]['usr']:.1f}"
        print(f"| {label} | {v:.2f}x | {'>=' if higher else '<='} {target:.1f}x | {'yes' if ok else 'NO'} | {ceil} | {budget} |")
    costs = [(a, b, what) for a, b, what in COSTS if a in med and b in med]
    if costs:
        print("\n| setting | req/s ratio | p99 ratio | user us/req: this / baseline |")
        print("|---|---:|---:|---:|")
        for a, b, what in costs:
            print(f"| {what} | {med[a]['rps'] / med[b]['rps']:.2f}x | {med[a]['p99'] / med[b]['p99']:.2f}x | "
                  f"{med[a]['usr']:.1f} / {med[b]['usr']:.1f} |")
PY
}

main_gateway() {
  if [ "${REPORT_ONLY:-0}" = 1 ]; then   # the tables again from the last run's rows
    print_tables; return
  fi
  [ "$INSTALL" = 1 ] && install_tools
  for t in nginx wrk curl python3; do command -v $t >/dev/null || { kg_log "missing $t"; exit 1; }; done
  build_keygate
  gen_keys
  write_wrk_lua
  seed_store
  : >"$ROWS"
  for WORKERS in $WORKERS_LIST; do
    write_configs
    write_kg_files
    start upstream $UP_PORT nginx -c "$RUN/nginx-upstream.conf" -g 'daemon off;' || exit 1
    UP_PID=$STARTED_PID
    for rep in $(seq 1 "$REPS"); do
      for c in $CASES; do kg_log "workers $WORKERS, rep $rep/$REPS: $c"; run_one "$c"; done
    done
    stop_pid "$UP_PID"
  done
  print_tables
  echo
  echo "keygate $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null), $(nginx -v 2>&1), $(haproxy -v 2>/dev/null | head -1 | cut -d' ' -f1-3), envoy $("$VENV/bin/envoy" --version 2>/dev/null | grep -o '[0-9]*\.[0-9]*\.[0-9]*/' | head -1 | tr -d /), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2), kernel $(uname -r), $(nproc) cores"
}

main_gateway
