#!/usr/bin/env bash
# Device write flood benchmark (issue 11, item 11), on SQLite: DEVICES
# registered devices poll with nothing pending (the 304 path, as in
# bench/deployments.sh: wrk -t1 -c32, rotating through every device's
# secret with If-None-Match: "idle"), measured three ways:
#  1. alone;
#  2. while ONE device posts changed inventory in a loop (wrk -t1 -c8,
#     every request a new attribute value), with the default
#     devices.max_writes_per_minute (60): its writes past the quota are 429;
#  3. the same flood with the limit off (max_writes_per_minute = 0), on a
#     second server: every request is a write and an audit event.
# Prints the polls' requests/s and p99 for each, the flood's request rate,
# its answers by status and the audit events it wrote.
#
#   bench/flood.sh [DEVICES=10000] [SECONDS=15]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

devices=${1:-10000}
seconds=${2:-15}

ensure_cargo
apt_install python3 wrk curl
log "building otadepot (release)"
cargo build --release -q --bin otadepot
bin=target/release/otadepot

work=$(mktemp -d /tmp/otadepot-bench-flood.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

secret=bench-secret-bench-secret-bench-secret-0123

cat >"$work/poll.lua" <<'LUA'
local tokens = {}
for line in io.lines(os.getenv("TOKENS")) do tokens[#tokens + 1] = line end
local i = math.random(#tokens)
request = function()
  i = i % #tokens + 1
  return wrk.format("GET", "/device/v1/poll", { ["Authorization"] = "Bearer " .. tokens[i], ["If-None-Match"] = '"idle"' })
end
LUA
cat >"$work/flood.lua" <<'LUA'
local secret = os.getenv("FLOODER")
local n = 0
request = function()
  n = n + 1
  return wrk.format("POST", "/device/v1/inventory",
    { ["Authorization"] = "Bearer " .. secret, ["Content-Type"] = "application/json" },
    '{"attributes": {"counter": "' .. n .. '"}}')
end
LUA

# start NAME LIMIT: a server with devices.max_writes_per_minute = LIMIT;
# sets base and the token, registers the fleet into $work/NAME.secrets.
start() {
  local name=$1 limit=$2 port
  port=$(free_port)
  OTADEPOT_LISTEN=127.0.0.1:$port OTADEPOT_DATA_DIR="$work/$name" OTADEPOT_SCANNER__MODE=disabled \
    OTADEPOT_AUTH__JWT_SECRET=$secret OTADEPOT_LOG_FORMAT=json RUST_LOG=warn \
    OTADEPOT_DEVICES__MAX_WRITES_PER_MINUTE=$limit \
    "$bin" serve >"$work/$name.log" 2>&1 &
  server=$!
  pids+=("$server")
  base="http://127.0.0.1:$port"
  for _ in $(seq 100); do curl -sf "$base/healthz" >/dev/null && break; sleep 0.1; done
  token=$(OTADEPOT_DATA_DIR="$work/$name" OTADEPOT_AUTH__JWT_SECRET=$secret "$bin" token issue --subject bench --role admin)
  log "$name: registering $devices devices (max_writes_per_minute = $limit)"
  python3 - "$base" "$token" "$devices" "$work/$name.secrets" <<'PY'
import json, sys, urllib.request
base, token, total, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
def gql(query, variables=None):
    req = urllib.request.Request(base + "/graphql", json.dumps({"query": query, "variables": variables or {}}).encode(),
                                 {"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        data = json.load(r)
    if "errors" in data:
        sys.exit(str(data["errors"][0]))
    return data["data"]
gql('mutation { createDeviceModel(input: {name: "X100"}) { deviceModel { id } } }')
with open(out, "w") as f:
    for b in range(0, total, 10000):
        rows = [{"endpointId": f"dev-{i:07d}", "model": "X100"} for i in range(b, min(b + 10000, total))]
        data = gql("mutation($d: [RegisterDeviceInput!]!) { registerDevices(input: {devices: $d}) { devices { secret } } }", {"d": rows})
        for d in data["registerDevices"]["devices"]:
            f.write(d["secret"] + "\n")
PY
  # The flooding device is not among the pollers.
  head -n 1 "$work/$name.secrets" >"$work/$name.flooder"
  tail -n +2 "$work/$name.secrets" >"$work/$name.pollers"
  local warm=$((devices / 1000 + 10))
  log "$name: warm-up (${warm}s)"
  TOKENS="$work/$name.pollers" wrk -t1 -c32 -d"${warm}s" -s "$work/poll.lua" "$base" >/dev/null 2>&1
}

polls() { TOKENS="$work/$1.pollers" wrk -t1 -c32 -d"${seconds}s" --latency -s "$work/poll.lua" "$base" 2>&1; }
# flood NAME: one device posting changed inventory for SECONDS + 2 s.
flood() {
  FLOODER=$(cat "$work/$1.flooder") wrk -t1 -c8 -d"$((seconds + 2))s" -s "$work/flood.lua" "$base" >"$work/$1.flood" 2>&1 &
  flood_pid=$!
  pids+=("$flood_pid")
  sleep 1
}
audits() {
  python3 - "$base" "$token" <<'PY'
import json, sys, urllib.request
base, token = sys.argv[1], sys.argv[2]
req = urllib.request.Request(base + "/graphql", json.dumps({"query": '{ auditEvents(filter: {action: "device.inventory"}) { totalCount } }'}).encode(),
                             {"Authorization": "Bearer " + token, "Content-Type": "application/json"})
print(json.load(urllib.request.urlopen(req))["data"]["auditEvents"]["totalCount"])
PY
}
rps() { echo "$1" | awk '/Requests\/sec/ { printf "%.0f", $2 }'; }
p99() { echo "$1" | awk '$1 == "99%" { print $2 }'; }
flood_rps() { awk '/Requests\/sec/ { printf "%.0f", $2 }' "$work/$1.flood"; }
flood_non2xx() { awk '/Non-2xx/ { print $5 }' "$work/$1.flood"; }
flood_total() { awk '/requests in/ { print $1 }' "$work/$1.flood"; }

start limited 60
log "limited: polls alone"
alone=$(polls limited)
echo "$alone" | grep -E "Requests/sec|99%" >&2
log "limited: polls while one device floods inventory"
flood limited
limited=$(polls limited)
wait "$flood_pid" || true
echo "$limited" | grep -E "Requests/sec|99%" >&2
limited_audits=$(audits)
kill "$server"

start unlimited 0
log "unlimited: polls while one device floods inventory"
flood unlimited
unlimited=$(polls unlimited)
wait "$flood_pid" || true
echo "$unlimited" | grep -E "Requests/sec|99%" >&2
unlimited_audits=$(audits)

echo
echo "| $((devices - 1)) devices polling (304), wrk -t1 -c32, ${seconds} s | polls | p99 | the flooding device (wrk -t1 -c8) |"
echo "| --- | --- | --- | --- |"
echo "| no flood | $(rps "$alone") req/s | $(p99 "$alone") | – |"
echo "| flood, max_writes_per_minute = 60 (default) | $(rps "$limited") req/s | $(p99 "$limited") | $(flood_rps limited) req/s, $(flood_total limited) requests, $(flood_non2xx limited) answered 429, $limited_audits audit events |"
echo "| flood, no limit (max_writes_per_minute = 0) | $(rps "$unlimited") req/s | $(p99 "$unlimited") | $(flood_rps unlimited) req/s, $(flood_total unlimited) requests, all written: $unlimited_audits audit events |"
