#!/usr/bin/env bash
# Imports KEYS generated keys (half plaintext, half SHA-256 digests, of a legacy shape, over ten
# clients) into a fresh SQLite database with the release binary (a dry run first, then the
# import, then the same file again: every line unchanged); prints wall time and peak RSS of each run
# (`/usr/bin/time -v`).
#
#   bench/import.sh [KEYS]
#   KEYGATE_IMPORT_PG=postgres://postgres@127.0.0.1:5432/test bench/import.sh [KEYS]
#
# With KEYGATE_IMPORT_PG, the same on PostgreSQL: a fresh schema in that database (`psql`
# creates it, and drops it at the end), the binary connecting with `search_path` set to it.
#
# Set CARGO_TARGET_DIR to build elsewhere, or KEYGATE_BIN to measure a binary already built;
# the temporary directory is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
keys="${1:-100000}"
bin="${KEYGATE_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --release --locked -q -p keygate --bin keygate
  bin="${CARGO_TARGET_DIR:-target}/release/keygate"
fi
work="$(mktemp -d)"
db="$work/keygate.db"
schema=""
cleanup() {
  if [ -n "$schema" ]; then psql -q "$KEYGATE_IMPORT_PG" -c "DROP SCHEMA $schema CASCADE" >/dev/null; fi
  rm -rf "$work"
}
trap cleanup EXIT
if [ -n "${KEYGATE_IMPORT_PG:-}" ]; then
  schema="kg_import_$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
  psql -q "$KEYGATE_IMPORT_PG" -c "CREATE SCHEMA $schema" >/dev/null
  case "$KEYGATE_IMPORT_PG" in *\?*) sep='&' ;; *) sep='?' ;; esac
  db="${KEYGATE_IMPORT_PG}${sep}options[search_path]=$schema"
fi
cat >"$work/keygate.toml" <<'TOML'
[keys]
prefix = "kg_"
length = 30
checksum = true

[[keys.legacy]]
prefix = "sk_live_"
alphabet = "base62"
length = 24
TOML
kg() { "$bin" --db "$db" --config "$work/keygate.toml" "$@"; }
if [ -n "$schema" ]; then kg migrate >/dev/null; fi
for i in $(seq 0 9); do kg client create "client-$i" >/dev/null; done
python3 - "$keys" >"$work/keys.jsonl" <<'PY'
import hashlib, json, secrets, string, sys
alphabet = string.digits + string.ascii_uppercase + string.ascii_lowercase
for i in range(int(sys.argv[1])):
    key = "sk_live_" + "".join(secrets.choice(alphabet) for _ in range(24))
    line = {"client": f"client-{i % 10}", "label": f"legacy {i}"}
    if i % 2:
        line["sha256"] = hashlib.sha256(key.encode()).hexdigest()
    else:
        line["key"] = key
    print(json.dumps(line))
PY
echo "file: $keys lines, $(du -h "$work/keys.jsonl" | cut -f1)"
measure() {
  local what="$1"
  shift
  /usr/bin/time -v -o "$work/time" "$bin" --db "$db" --config "$work/keygate.toml" "$@" >"$work/out"
  local wall rss
  wall=$(grep 'Elapsed (wall clock)' "$work/time" | awk '{print $NF}')
  rss=$(grep 'Maximum resident set size' "$work/time" | awk '{print $NF}')
  printf '%-28s wall %-9s peak RSS %6d MiB   %s\n' "$what" "$wall" "$((rss / 1024))" "$(tail -n1 "$work/out")"
}
measure "import --dry-run" import --dry-run "$work/keys.jsonl"
measure "import (new keys)" import "$work/keys.jsonl"
measure "import again (unchanged)" import "$work/keys.jsonl"
if [ -n "$schema" ]; then
  size=$(psql -qAt "$KEYGATE_IMPORT_PG" -c "SELECT pg_size_pretty(SUM(pg_total_relation_size(c.oid))) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = '$schema' AND c.relkind = 'r'")
else
  size=$(du -h "$db" | cut -f1)
fi
echo "database: $size, keys: $(kg --json key list --limit 1000000 | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')"
