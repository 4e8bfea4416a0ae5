#!/usr/bin/env bash
# Deployment benchmark (issue 6), on SQLite:
#  1. DEVICES registered devices poll with nothing pending, with the
#     If-None-Match of the idle answer (the 304 path): requests/s and p99
#     with wrk, against a bare axum route answering 204 (examples/bare.rs)
#     driven the same way in the same run;
#  2. applyPackage to all of them (a dynamic group of the model);
#  3. a deployment to SIM devices driven to INSTALLED by simulated devices
#     (Python threads): wall time, and database statements per status
#     report (db_queries_total of /metrics).
#
#   bench/deployments.sh [DEVICES=100000] [SIM=10000] [SECONDS=15]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

devices=${1:-100000}
sim=${2:-10000}
seconds=${3:-15}

ensure_cargo
apt_install python3 wrk curl
log "building otadepot and the bare reference (release)"
cargo build --release -q --bin otadepot --example bare
bin=target/release/otadepot

work=$(mktemp -d /tmp/otadepot-bench-deploy.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

secret=bench-secret-bench-secret-bench-secret-0123
port=$(free_port)
OTADEPOT_LISTEN=127.0.0.1:$port OTADEPOT_DATA_DIR="$work/data" OTADEPOT_SCANNER__MODE=disabled \
  OTADEPOT_AUTH__JWT_SECRET=$secret OTADEPOT_LOG_FORMAT=json RUST_LOG=warn \
  "$bin" serve >"$work/server.log" 2>&1 &
server=$!
pids+=("$server")
base="http://127.0.0.1:$port"
for _ in $(seq 100); do curl -sf "$base/healthz" >/dev/null && break; sleep 0.1; done
token=$(OTADEPOT_DATA_DIR="$work/data" OTADEPOT_AUTH__JWT_SECRET=$secret "$bin" token issue --subject bench --role admin)

bare_port=$(free_port)
target/release/examples/bare "127.0.0.1:$bare_port" &
pids+=($!)

log "registering $devices devices"
python3 - "$base" "$token" "$devices" "$work/secrets" <<'PY'
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

cat >"$work/poll.lua" <<'LUA'
local tokens = {}
for line in io.lines(os.getenv("TOKENS")) do tokens[#tokens + 1] = line end
local i = math.random(#tokens)
request = function()
  i = i % #tokens + 1
  return wrk.format("GET", "/device/v1/poll", { ["Authorization"] = "Bearer " .. tokens[i], ["If-None-Match"] = '"idle"' })
end
LUA
# Every device polls once first (its first contact writes last_seen_at).
run_wrk() { TOKENS="$work/secrets" wrk -t2 -c64 -d"${seconds}s" --latency -s "$work/poll.lua" "$1" 2>&1; }
# Until every device has polled once (its credential and idleness are then
# cached, as in a fleet that polls steadily).
warm=$((devices / 1000 + 10))
log "warm-up (${warm}s)"
TOKENS="$work/secrets" wrk -t2 -c64 -d"${warm}s" -s "$work/poll.lua" "$base" >/dev/null 2>&1
log "otadepot: polls with nothing pending (304)"
ours=$(run_wrk "$base")
echo "$ours" | grep -E "Requests/sec|99%|Non-2xx" >&2 || true
log "bare axum route answering 204"
bare=$(run_wrk "http://127.0.0.1:$bare_port")
echo "$bare" | grep -E "Requests/sec|99%" >&2 || true
rps() { echo "$1" | awk '/Requests\/sec/ { print $2 }'; }
p99() { echo "$1" | awk '$1 == "99%" { print $2 }'; }

log "applyPackage to $devices devices, then $sim devices driven to INSTALLED"
python3 - "$base" "$token" "$sim" "$work/secrets" "$ours" "$bare" <<'PY'
import json, sys, time, urllib.request, concurrent.futures
base, token, sim, secrets_file = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
secrets = [l.strip() for l in open(secrets_file)]
def gql(query, variables=None):
    req = urllib.request.Request(base + "/graphql", json.dumps({"query": query, "variables": variables or {}}).encode(),
                                 {"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        data = json.load(r)
    if "errors" in data:
        sys.exit(str(data["errors"][0]))
    return data["data"]
def queries():
    with urllib.request.urlopen(base + "/metrics") as r:
        for line in r.read().decode().splitlines():
            if line.startswith("db_queries_total"):
                return float(line.split()[-1])
    return 0.0
pkg = gql('mutation { createSoftwarePackage(input: {name: "fw", version: "2.0.0", type: "URL_LIST", models: ["X100"], links: ["https://example.com/fw.bin"]}) { package { id } } }')["createSoftwarePackage"]["package"]["id"]
group = gql('mutation { createDeviceGroup(input: {name: "all", model: "X100", kind: DYNAMIC}) { deviceGroup { id } } }')["createDeviceGroup"]["deviceGroup"]["id"]
t = time.monotonic()
big = gql("mutation($p: ID!, $g: ID!) { applyPackage(input: {package: $p, group: $g, policy: {maxInFlight: 1}}) { deployment { id targetCount } } }", {"p": pkg, "g": group})["applyPackage"]["deployment"]
apply_s = time.monotonic() - t
gql("mutation($id: ID!) { cancelDeployment(input: {id: $id}) { deployment { state } } }", {"id": big["id"]})
# A fresh version for the simulated devices.
pkg2 = gql('mutation { createSoftwarePackage(input: {name: "fw", version: "2.0.1", type: "URL_LIST", models: ["X100"], links: ["https://example.com/fw.bin"]}) { package { id } } }')["createSoftwarePackage"]["package"]["id"]
ids = [f"dev-{i:07d}" for i in range(sim)]
dep = gql("mutation($p: ID!, $d: [ID!]!) { applyPackage(input: {package: $p, devices: $d}) { deployment { id } } }", {"p": pkg2, "d": ids})["applyPackage"]["deployment"]["id"]
def call(method, path, secret, body=None):
    req = urllib.request.Request(base + path, None if body is None else json.dumps(body).encode(),
                                 {"Authorization": "Bearer " + secret, "Content-Type": "application/json"}, method=method)
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r) if r.status == 200 else None
reports = 0
def device(secret):
    update = call("GET", "/device/v1/poll", secret)["update"]
    for body in ({"status": "DOWNLOADED"}, {"status": "INSTALLED_VERSION", "version": "2.0.1"}):
        call("POST", f"/device/v1/updates/{update['id']}/status", secret, body)
    return 2
q0 = queries()
t = time.monotonic()
with concurrent.futures.ThreadPoolExecutor(32) as pool:
    reports = sum(pool.map(device, secrets[:sim]))
while gql("query($id: ID!) { deployment(id: $id) { state } }", {"id": dep})["deployment"]["state"] != "COMPLETED":
    time.sleep(0.2)
sim_s = time.monotonic() - t
per_report = (queries() - q0) / reports
ours, bare = sys.argv[5], sys.argv[6]
def field(text, key):
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] == key:
            return parts[1]
    return "?"
ours_rps, bare_rps = field(ours, "Requests/sec:"), field(bare, "Requests/sec:")
print()
print("| measure | otadepot | reference | ratio |")
print("| --- | --- | --- | --- |")
print(f"| poll, nothing pending (304), {len(secrets)} devices, 64 connections | {float(ours_rps):.0f} req/s, p99 {field(ours, '99%')} | bare axum 204: {float(bare_rps):.0f} req/s, p99 {field(bare, '99%')} | {float(ours_rps) / float(bare_rps):.0%} |")
print(f"| applyPackage to {big['targetCount']} devices (a dynamic group) | {apply_s:.1f} s | – | – |")
print(f"| {sim} devices driven to INSTALLED (poll, DOWNLOADED, INSTALLED_VERSION; 32 client threads) | {sim_s:.1f} s | – | – |")
print(f"| database statements per status report (incl. the polls and the reconciler) | {per_report:.1f} | – | – |")
PY
