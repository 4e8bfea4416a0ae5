#!/usr/bin/env bash
# Content pipeline benchmark (issue 3): upload and download throughput
# against nginx serving the same file, server memory under 100 concurrent
# downloads, and scan + promote against a direct clamd INSTREAM.
#
#   bench/content.sh [SIZE_MIB=1024] [CONCURRENT=100] [CONCURRENT_MIB=256]
#   BENCH_OTADEPOT_BIN=target/release/otadepot bench/content.sh   (no build)
#
# Everything runs on loopback; the figures go to stdout as a Markdown table
# (copy them into docs/benchmarks.md with the date and the machine).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
. scripts/lib.sh

size_mib=${1:-1024}
concurrent=${2:-100}
concurrent_mib=${3:-256}

ensure_cargo
apt_install nginx-light clamav-daemon curl python3
# BENCH_OTADEPOT_BIN=path/to/otadepot measures that binary instead of building one.
bin=${BENCH_OTADEPOT_BIN:-}
if [ -z "$bin" ]; then
  log "building otadepot (release)"
  cargo build --release -q --bin otadepot
  bin=target/release/otadepot
fi

work=$(mktemp -d /tmp/otadepot-bench.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -s stop 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# A private clamd that accepts the large objects (libclamav caps at 2 GiB).
mkdir -p "$work/clamtmp"
cat >"$work/clamd.conf" <<CONF
LocalSocket $work/clamd.sock
DatabaseDirectory $repo/tests/fixtures/clamav
TemporaryDirectory $work/clamtmp
Foreground yes
AlertExceedsMax yes
StreamMaxLength 2000M
MaxFileSize 2000M
MaxScanSize 2000M
DisableCache yes
CONF
clamd -c "$work/clamd.conf" >/dev/null 2>&1 &
pids+=($!)
wait_for_clamd "$work/clamd.sock" 60 || die "clamd did not start"

port=$(free_port)
OTADEPOT_LISTEN=127.0.0.1:$port OTADEPOT_DATA_DIR="$work/data" OTADEPOT_SCANNER__CLAMD="unix:$work/clamd.sock" \
  OTADEPOT_AUTH__JWT_SECRET=bench-secret-bench-secret-bench-secret-0123 OTADEPOT_LOG_FORMAT=json \
  "$bin" serve >"$work/server.log" 2>&1 &
server=$!
pids+=($server)
base="http://127.0.0.1:$port"
for _ in $(seq 100); do curl -sf "$base/healthz" >/dev/null && break; sleep 0.1; done
token=$(OTADEPOT_DATA_DIR="$work/data" OTADEPOT_AUTH__JWT_SECRET=bench-secret-bench-secret-bench-secret-0123 \
  "$bin" token issue --subject bench --role admin)

rss_peak_mib() { awk '/VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$server/status"; }
now() { date +%s.%N; }
mbps() { python3 -c "import sys; print(f'{$1 / 1048576 / ($3 - $2):.0f}')"; }

gql() {
  curl -sf "$base/graphql" -H "Authorization: Bearer $token" -H 'Content-Type: application/json' -d "$1"
}

# Create a content of FILE's size and upload it with a PUT; prints the id.
upload() {
  local file=$1 length
  length=$(stat -c %s "$file")
  local form
  form=$(gql "{\"query\":\"mutation(\$c: ContentInput) { createContent(content: \$c) { id url } }\",\"variables\":{\"c\":{\"name\":\"bench.bin\",\"content_type\":\"application/octet-stream\",\"type\":\"firmware\",\"length\":$length}}}")
  local url id
  url=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["data"]["createContent"]["url"])' "$form")
  id=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["data"]["createContent"]["id"])' "$form")
  curl -sf -T "$file" "$url" >/dev/null
  echo "$id"
}

state_of() {
  gql "{\"query\":\"{ content(id: \\\"$1\\\") { state downloadUrl(ttlSeconds: 3600) } }\"}"
}

wait_promoted() {
  for _ in $(seq 6000); do
    local c
    c=$(state_of "$1")
    case "$c" in *PROMOTED*) python3 -c 'import json,sys; print(json.loads(sys.argv[1])["data"]["content"]["downloadUrl"])' "$c"; return 0 ;; esac
    case "$c" in *QUARANTINED*|*SCAN_FAILED*) die "content $1: $c" ;; esac
    sleep 0.1
  done
  die "content $1 never promoted"
}

log "making a ${size_mib} MiB file"
big="$work/big.bin"
head -c "$((size_mib * 1048576))" /dev/urandom >"$big"
bytes=$(stat -c %s "$big")

log "upload (${size_mib} MiB, PUT)"
t0=$(now); id=$(upload "$big"); t1=$(now)
upload_mbps=$(mbps "$bytes" "$t0" "$t1")
t2=$(now); url=$(wait_promoted "$id"); t3=$(now)
scan_promote_s=$(python3 -c "print(f'{$t3 - $t1:.1f}')")

# The reference: the same bytes straight to clamd INSTREAM.
clamd_instream() {
  python3 - "$work/clamd.sock" "$1" <<'PY'
import socket, struct, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b"zINSTREAM\0")
with open(sys.argv[2], "rb") as f:
    while chunk := f.read(262144):
        s.sendall(struct.pack(">I", len(chunk)) + chunk)
s.sendall(struct.pack(">I", 0))
reply = s.recv(4096)
if not reply.startswith(b"stream: OK"):
    sys.exit(f"clamd: {reply!r}")
PY
}

log "direct clamd INSTREAM of the same file"
t4=$(now); clamd_instream "$big"; t5=$(now)
clamd_s=$(python3 -c "print(f'{$t5 - $t4:.1f}')")

log "download from otadepot vs nginx"
t0=$(now); curl -sS -f -o /dev/null "$url" || die "download of $url failed"; t1=$(now)
download_mbps=$(mbps "$bytes" "$t0" "$t1")
mkdir -p "$work/nginx/logs" "$work/www"
# nginx's workers run as www-data: let them through to the file.
chmod 711 "$work"
chmod 755 "$work/www"
chmod 644 "$big"
ln "$big" "$work/www/big.bin" 2>/dev/null || cp "$big" "$work/www/big.bin"
nginx_port=$(free_port)
cat >"$work/nginx/nginx.conf" <<CONF
worker_processes 2;
pid $work/nginx/nginx.pid;
error_log $work/nginx/logs/error.log;
events { worker_connections 1024; }
http { access_log off; sendfile on; server { listen 127.0.0.1:$nginx_port; root $work/www; } }
CONF
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf"
t0=$(now); curl -sS -f -o /dev/null "http://127.0.0.1:$nginx_port/big.bin" || die "nginx download failed"; t1=$(now)
nginx_mbps=$(mbps "$bytes" "$t0" "$t1")

# The same file through a device's manifest URL (signed for its update and
# checked at download time: device, update and credential, from the caches).
log "download ${size_mib} MiB through a device's manifest URL"
gql_py() { python3 -c "import json,sys; d=json.loads(sys.argv[1]); assert 'errors' not in d, d; print($2)" "$1"; }
gql '{"query":"mutation { createDeviceModel(input: {name: \"BENCH\"}) { deviceModel { id } } }"}' >/dev/null
pkg=$(gql "{\"query\":\"mutation(\$f: ID!) { createSoftwarePackage(input: {name: \\\"bench\\\", version: \\\"1.0.0\\\", type: \\\"URL_LIST\\\", models: [\\\"BENCH\\\"], files: [\$f]}) { package { id } } }\",\"variables\":{\"f\":\"$id\"}}")
pkg=$(gql_py "$pkg" 'd["data"]["createSoftwarePackage"]["package"]["id"]')
dev=$(gql '{"query":"mutation { registerDevice(input: {endpointId: \"bench-0\", model: \"BENCH\"}) { secret } }"}')
secret=$(gql_py "$dev" 'd["data"]["registerDevice"]["secret"]')
gql "{\"query\":\"mutation(\$p: ID!) { applyPackage(input: {package: \$p, devices: [\\\"bench-0\\\"]}) { deployment { id } } }\",\"variables\":{\"p\":\"$pkg\"}}" >/dev/null
durl=""
for _ in $(seq 100); do
  poll=$(curl -s "$base/device/v1/poll" -H "Authorization: Bearer $secret")
  durl=$(python3 -c 'import json,sys
try: print(json.loads(sys.argv[1])["update"]["manifest"]["files"][0]["url"])
except Exception: pass' "$poll")
  [ -n "$durl" ] && break
  sleep 0.1
done
[ -n "$durl" ] || die "the device got no manifest URL"
curl -sS -f -o /dev/null "$durl" || die "device URL download failed" # warm the caches
t0=$(now); curl -sS -f -o /dev/null "$durl" || die "device URL download failed"; t1=$(now)
device_mbps=$(mbps "$bytes" "$t0" "$t1")
# Many small requests, where a per-request database read would show: HEAD
# (the whole access check, headers only; a small streamed body would wait
# on Nagle and the client's delayed ACK, about 40 ms, and hide the rest).
ranges=5000
t0=$(now)
python3 - "$durl" "$ranges" <<'PY' || die "range requests failed"
import http.client, sys, urllib.parse
url = urllib.parse.urlsplit(sys.argv[1]); n = int(sys.argv[2])
c = http.client.HTTPConnection(url.hostname, url.port)
for i in range(n):
    c.request("HEAD", url.path + "?" + url.query)
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
PY
t1=$(now)
device_ranges_rps=$(python3 -c "print(f'{$ranges / ($t1 - $t0):.0f}')")
t0=$(now)
python3 - "$url" "$ranges" <<'PY' || die "range requests failed"
import http.client, sys, urllib.parse
url = urllib.parse.urlsplit(sys.argv[1]); n = int(sys.argv[2])
c = http.client.HTTPConnection(url.hostname, url.port)
for i in range(n):
    c.request("HEAD", url.path + "?" + url.query)
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
PY
t1=$(now)
signed_ranges_rps=$(python3 -c "print(f'{$ranges / ($t1 - $t0):.0f}')")

log "$concurrent concurrent downloads of ${concurrent_mib} MiB"
small="$work/small.bin"
head -c "$((concurrent_mib * 1048576))" /dev/urandom >"$small"
sid=$(upload "$small")
t2=$(now); surl=$(wait_promoted "$sid"); t3=$(now)
small_scan_promote_s=$(python3 -c "print(f'{$t3 - $t2:.1f}')")
t4=$(now); clamd_instream "$small"; t5=$(now)
small_clamd_s=$(python3 -c "print(f'{$t5 - $t4:.1f}')")
rss_before=$(rss_peak_mib)
# Reset the peak (Linux ≥ 4.0), so the next reading is the peak during the downloads.
echo 5 >"/proc/$server/clear_refs"
t0=$(now)
curls=()
for _ in $(seq "$concurrent"); do
  curl -sf -o /dev/null "$surl" &
  curls+=($!)
done
for pid in "${curls[@]}"; do wait "$pid" || die "a concurrent download failed"; done
t1=$(now)
concurrent_mbps=$(mbps "$((concurrent * concurrent_mib * 1048576))" "$t0" "$t1")
rss_peak=$(rss_peak_mib)

log "$concurrent concurrent downloads of ${concurrent_mib} MiB from nginx"
chmod 644 "$small"
ln "$small" "$work/www/small.bin" 2>/dev/null || cp "$small" "$work/www/small.bin"
curls=()
t0=$(now)
for _ in $(seq "$concurrent"); do
  curl -sf -o /dev/null "http://127.0.0.1:$nginx_port/small.bin" &
  curls+=($!)
done
for pid in "${curls[@]}"; do wait "$pid" || die "a concurrent nginx download failed"; done
t1=$(now)
nginx_concurrent_mbps=$(mbps "$((concurrent * concurrent_mib * 1048576))" "$t0" "$t1")

cat <<TABLE

| measure | otadepot | reference | ratio |
| --- | --- | --- | --- |
| upload ${size_mib} MiB (PUT, loopback) | ${upload_mbps} MiB/s | – | – |
| download ${size_mib} MiB | ${download_mbps} MiB/s | nginx ${nginx_mbps} MiB/s | $(python3 -c "print(f'{$download_mbps / $nginx_mbps:.0%}')") |
| download ${size_mib} MiB through a device's manifest URL | ${device_mbps} MiB/s | nginx ${nginx_mbps} MiB/s | $(python3 -c "print(f'{$device_mbps / $nginx_mbps:.0%}')") |
| ${ranges} sequential HEAD requests (one connection), device manifest URL | ${device_ranges_rps} req/s | operator signed URL ${signed_ranges_rps} req/s | $(python3 -c "print(f'{$device_ranges_rps / $signed_ranges_rps:.0%}')") |
| scan + promote ${size_mib} MiB (upload end → PROMOTED) | ${scan_promote_s} s | clamd INSTREAM alone ${clamd_s} s | $(python3 -c "print(f'{$scan_promote_s / $clamd_s:.2f}x')") |
| scan + promote ${concurrent_mib} MiB | ${small_scan_promote_s} s | clamd INSTREAM alone ${small_clamd_s} s | $(python3 -c "print(f'{$small_scan_promote_s / $small_clamd_s:.2f}x')") |
| ${concurrent} concurrent downloads of ${concurrent_mib} MiB | ${concurrent_mbps} MiB/s total | nginx ${nginx_concurrent_mbps} MiB/s total | $(python3 -c "print(f'{$concurrent_mbps / $nginx_concurrent_mbps:.0%}')") |
| server peak RSS (VmHWM) | ${rss_before} MiB up to the concurrent downloads, ${rss_peak} MiB during them | – | – |
TABLE
