#!/usr/bin/env bash
# The hawkBit DDI base poll with nothing pending (issue 14, item 11):
# DEVICES devices poll `GET /DEFAULT/controller/v1/<endpoint id>` with
# `Authorization: TargetToken <secret>` over CONNECTIONS connections for
# SECONDS (the compiled generator of examples/loadgen.rs `rate --ddi`,
# rotating through the devices); the reference is a bare axum route on the
# same path answering the same JSON (examples/bare.rs), driven the same way
# in the same run. Prints both rates and the ratio.
#
#   bench/ddi_poll.sh [DEVICES=2000] [CONNECTIONS=64] [SECONDS=15]
#   BENCH_DB=postgres bench/ddi_poll.sh
#   BENCH_OTADEPOT_BIN=… BENCH_LOADGEN_BIN=… BENCH_BARE_BIN=… bench/ddi_poll.sh   (no build)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

devices=${1:-2000}
connections=${2:-64}
seconds=${3:-15}

ensure_cargo
apt_install python3 curl
work=$(mktemp -d /tmp/otadepot-bench-ddi.XXXXXX)
. bench/fleet.sh
bare=""
cleanup() {
  [ -n "$bare" ] && kill "$bare" 2>/dev/null && wait "$bare" 2>/dev/null || true
  bench_cleanup
}
trap cleanup EXIT
if [ -n "${BENCH_BARE_BIN:-}" ]; then bench_build; else bench_build bare; fi
bench_database
bench_serve
bench_fleet "$devices"
# Each device's first call (activation, its credential cached), then one
# DDI poll each so every device's base-poll facts are cached.
"$loadgen" warm "$base" "$work/secrets.csv" >&2
"$loadgen" rate "$base" "$work/secrets.csv" --ddi DEFAULT --connections 8 --seconds 3 >&2
sleep 2

rate_of() { echo "$1" | tr ' ' '\n' | awk -F= '$1 == "rps" { print $2 }'; }
log "$db: otadepot DDI base poll, $connections connections, ${seconds}s"
ours=$("$loadgen" rate "$base" "$work/secrets.csv" --ddi DEFAULT --connections "$connections" --seconds "$seconds")
echo "$ours" >&2
kill "$server" && wait "$server" 2>/dev/null || true
server=""
bare_port=$(free_port)
"${BENCH_BARE_BIN:-target/release/examples/bare}" "127.0.0.1:$bare_port" &
bare=$!
for _ in $(seq 50); do curl -s "http://127.0.0.1:$bare_port/device/v1/poll" >/dev/null && break; sleep 0.1; done
log "the bare axum route, $connections connections, ${seconds}s"
reference=$("$loadgen" rate "http://127.0.0.1:$bare_port" "$work/secrets.csv" --ddi DEFAULT --connections "$connections" --seconds "$seconds")
echo "$reference" >&2
a=$(rate_of "$ours")
b=$(rate_of "$reference")
echo
echo "| backend | devices | connections | otadepot DDI polls/s | bare axum/s | ratio |"
echo "| --- | --- | --- | --- | --- | --- |"
echo "| $db | $devices | $connections | $a | $b | $(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.0f %%", 100 * a / b }') |"
