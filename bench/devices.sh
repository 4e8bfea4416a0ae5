#!/usr/bin/env bash
# Device registration benchmark (issue 5): 100,000 devices registered
# through registerDevices calls of 10,000, on SQLite and on PostgreSQL,
# and the time of a filtered page of 100 devices out of them.
#
#   bench/devices.sh [DEVICES=100000] [BATCH=10000]
#   BENCH_OTADEPOT_BIN=target/release/otadepot bench/devices.sh   (no build)
#   BENCH_PG_URL=postgres://user@host:port/db bench/devices.sh     (an admin
#       URL; a database otadepot_bench_<pid> is created there and dropped)
#
# Without BENCH_PG_URL, PostgreSQL on 127.0.0.1:5432 (user postgres) is used.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

devices=${1:-100000}
batch=${2:-10000}
pg_admin=${BENCH_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}

ensure_cargo
apt_install python3 postgresql-client
bin=${BENCH_OTADEPOT_BIN:-}
if [ -z "$bin" ]; then
  log "building otadepot (release)"
  cargo build --release -q --bin otadepot
  bin=target/release/otadepot
fi

work=$(mktemp -d /tmp/otadepot-bench-devices.XXXXXX)
server=""
pg_db="otadepot_bench_$$"
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  psql -q "$pg_admin" -c "DROP DATABASE IF EXISTS $pg_db" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

secret=bench-secret-bench-secret-bench-secret-0123
run_backend() {
  local name=$1 url=$2 port
  port=$(free_port)
  rm -rf "$work/data" && mkdir -p "$work/data"
  OTADEPOT_LISTEN=127.0.0.1:$port OTADEPOT_DATA_DIR="$work/data" OTADEPOT_DATABASE__URL="$url" \
    OTADEPOT_SCANNER__MODE=disabled OTADEPOT_AUTH__JWT_SECRET=$secret OTADEPOT_LOG_FORMAT=json \
    "$bin" serve >"$work/server-$name.log" 2>&1 &
  server=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
  local token
  token=$(OTADEPOT_DATA_DIR="$work/data" OTADEPOT_DATABASE__URL="$url" OTADEPOT_AUTH__JWT_SECRET=$secret \
    "$bin" token issue --subject bench --role admin)
  log "$name: $devices devices in calls of $batch"
  python3 - "http://127.0.0.1:$port/graphql" "$token" "$devices" "$batch" "$name" <<'PY'
import json, sys, time, urllib.request
url, token, total, batch, name = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
def gql(query, variables=None):
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    req = urllib.request.Request(url, body, {"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        out = json.load(r)
    if "errors" in out:
        sys.exit(f"{name}: {out['errors'][0]}")
    return out["data"]
gql('mutation { createDeviceModel(input: {name: "X100"}) { deviceModel { id } } }')
register = "mutation($d: [RegisterDeviceInput!]!) { registerDevices(input: {devices: $d}) { count } }"
start = time.monotonic()
slowest = 0.0
for b in range(0, total, batch):
    rows = [{"endpointId": f"dev-{i:07d}", "model": "X100", "serial": f"SN{i}",
             "attributes": [{"key": "region", "value": ("eu", "us", "apac")[i % 3]}, {"key": "rack", "value": f"r{i % 500}"}]}
            for i in range(b, min(b + batch, total))]
    t = time.monotonic()
    assert gql(register, {"d": rows})["registerDevices"]["count"] == len(rows)
    slowest = max(slowest, time.monotonic() - t)
elapsed = time.monotonic() - start
page = "query { devices(first: 100, filter: {attribute: {key: \"rack\", value: \"r42\"}}) { totalCount edges { node { endpointId attributes { key value } } } } }"
t = time.monotonic()
for _ in range(20):
    data = gql(page)
assert data["devices"]["totalCount"] == len(range(42, total, 500)), data["devices"]["totalCount"]
page_ms = (time.monotonic() - t) / 20 * 1000
print(f"| {name} | {total} | {elapsed:.1f} s | {total / elapsed:.0f} devices/s | {slowest:.1f} s | {page_ms:.0f} ms |")
PY
  kill "$server" && wait "$server" 2>/dev/null || true
  server=""
}

psql -q "$pg_admin" -c "CREATE DATABASE $pg_db" >/dev/null || die "cannot create a database at $pg_admin (set BENCH_PG_URL)"
pg_url="${pg_admin%/*}/$pg_db"
{
  echo
  echo "| backend | devices | total | rate | slowest call | filtered page of 100 (avg of 20) |"
  echo "| --- | --- | --- | --- | --- | --- |"
} >"$work/table"
run_backend sqlite "sqlite://$work/data/otadepot.db?mode=rwc" >>"$work/table"
run_backend postgres "$pg_url" >>"$work/table"
cat "$work/table"
