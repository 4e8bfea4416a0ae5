# Shared steps of the device benchmarks (bench/longpoll.sh,
# bench/reports.sh, bench/poll304.sh). Source, do not execute, after
# scripts/lib.sh and after setting `work` (a scratch folder).
# shellcheck shell=bash

# bench_database: set `db_url` for BENCH_DB (sqlite, the default, or
# postgres: a fresh database otadepot_bench_<pid> on BENCH_PG_URL, dropped
# by bench_cleanup).
bench_database() {
  db=${BENCH_DB:-sqlite}
  pg_admin=${BENCH_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}
  pg_db="otadepot_bench_$$"
  case "$db" in
    sqlite) db_url="sqlite://$work/data/otadepot.db?mode=rwc" ;;
    postgres)
      apt_install postgresql-client
      psql -q "$pg_admin" -c "CREATE DATABASE $pg_db" >/dev/null ||
        die "cannot create a database at $pg_admin (set BENCH_PG_URL)"
      db_url="${pg_admin%/*}/$pg_db"
      ;;
    *) die "BENCH_DB must be sqlite or postgres" ;;
  esac
}

bench_cleanup() {
  [ -n "${server:-}" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null || true
  [ "${db:-}" = postgres ] && psql -q "$pg_admin" -c "DROP DATABASE IF EXISTS $pg_db WITH (FORCE)" >/dev/null 2>&1
  rm -rf "$work"
}

# bench_build: set `bin` and `loadgen` (built in release unless
# BENCH_OTADEPOT_BIN and BENCH_LOADGEN_BIN name them), and build the
# examples named as arguments too.
bench_build() {
  bin=${BENCH_OTADEPOT_BIN:-}
  loadgen=${BENCH_LOADGEN_BIN:-}
  local examples=() e
  for e in "$@"; do examples+=(--example "$e"); done
  if [ -z "$bin" ] || [ -z "$loadgen" ] || [ $# -gt 0 ]; then
    log "building otadepot and the load generator (release)"
    cargo build --release -q --bin otadepot --example loadgen "${examples[@]}"
    bin=${bin:-target/release/otadepot}
    loadgen=${loadgen:-target/release/examples/loadgen}
  fi
}

# bench_serve [NAME=VALUE...]: start `otadepot serve` on a free port with
# the scanner off and the extra environment given (and BENCH_SERVER_ENV);
# sets `server` (its pid), `base` and `token` (an admin's).
bench_serve() {
  local secret=bench-secret-bench-secret-bench-secret-0123 port
  port=$(free_port)
  base="http://127.0.0.1:$port"
  mkdir -p "$work/data"
  export OTADEPOT_DATA_DIR="$work/data" OTADEPOT_DATABASE__URL="$db_url" OTADEPOT_AUTH__JWT_SECRET=$secret
  # shellcheck disable=SC2086 # BENCH_SERVER_ENV is a list of NAME=VALUE words
  env "$@" ${BENCH_SERVER_ENV:-} OTADEPOT_LISTEN=127.0.0.1:$port OTADEPOT_SCANNER__MODE=disabled \
    OTADEPOT_LOG_FORMAT=json RUST_LOG=warn "$bin" serve >"$work/server.log" 2>&1 &
  server=$!
  for _ in $(seq 100); do curl -sf "$base/healthz" >/dev/null && break; sleep 0.1; done
  curl -sf "$base/healthz" >/dev/null || { cat "$work/server.log" >&2; die "the server did not start"; }
  token=$("$bin" token issue --subject bench --role admin)
}

# gql QUERY [PATH]: run a GraphQL operation as the admin; print the value
# at PATH (dot-separated keys) of its data.
gql() {
  python3 - "$base/graphql" "$token" "$1" "${2:-}" <<'PY'
import json, sys, urllib.request
url, token, query, path = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
req = urllib.request.Request(url, json.dumps({"query": query}).encode(),
                             {"Authorization": "Bearer " + token, "Content-Type": "application/json"})
with urllib.request.urlopen(req, timeout=600) as r:
    out = json.load(r)
if "errors" in out:
    sys.exit(f"GraphQL: {out['errors'][0]}")
value = out["data"]
for key in filter(None, path.split(".")):
    value = value[key]
print(value)
PY
}

# bench_fleet DEVICES: model X100, DEVICES devices of it imported (their
# secrets in $work/secrets.csv), a dynamic group `all` of the model, and a
# package fw 2.0.0 of one promoted 64 KiB file (so every answer signs a
# file URL, as real ones do); sets `package` and `group`.
bench_fleet() {
  local devices=$1 content url state
  gql 'mutation { createDeviceModel(input: {name: "X100"}) { deviceModel { id } } }' >/dev/null
  log "$db: importing $devices devices"
  {
    echo "endpoint_id,model"
    seq -f "dev-%07g" 0 $((devices - 1)) | sed 's/$/,X100/'
  } >"$work/devices.csv"
  "$bin" devices import "$work/devices.csv" --secrets-out "$work/secrets.csv" >&2
  head -c 65536 /dev/urandom >"$work/fw.bin"
  content=$(gql 'mutation { createContent(content: {name: "fw.bin", content_type: "application/octet-stream", type: "firmware", length: 65536}) { id url } }' createContent)
  url=$(python3 -c 'import ast, sys; print(ast.literal_eval(sys.argv[1])["url"])' "$content")
  content=$(python3 -c 'import ast, sys; print(ast.literal_eval(sys.argv[1])["id"])' "$content")
  curl -sSf -T "$work/fw.bin" "$url" >/dev/null
  for _ in $(seq 100); do
    state=$(gql "{ content(id: \"$content\") { state } }" content.state)
    [ "$state" = PROMOTED ] && break
    sleep 0.1
  done
  [ "$state" = PROMOTED ] || die "the package file is $state, not PROMOTED"
  package=$(gql "mutation { createSoftwarePackage(input: {name: \"fw\", version: \"2.0.0\", type: \"URL_LIST\", models: [\"X100\"], files: [\"$content\"]}) { package { id } } }" createSoftwarePackage.package.id)
  group=$(gql 'mutation { createDeviceGroup(input: {name: "all", model: "X100", kind: DYNAMIC}) { deviceGroup { id } } }' createDeviceGroup.deviceGroup.id)
}

# rss_kib: the server's VmRSS.
rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$server/status"; }
mib() { awk -v k="$1" 'BEGIN { printf "%.0f", k / 1024 }'; }
