#!/usr/bin/env bash
# The 304 poll (issue 13, item 8): DEVICES devices with nothing pending poll
# with the If-None-Match of the idle answer, over CONNECTIONS connections
# for SECONDS (the compiled generator of examples/loadgen.rs `rate`,
# rotating through the devices' secrets); the reference is a bare axum
# route answering 204 (examples/bare.rs), driven the same way in the same
# run. Prints both rates and the ratio.
#
#   bench/poll304.sh [DEVICES=2000] [CONNECTIONS=64] [SECONDS=15]
#   BENCH_DB=postgres bench/poll304.sh
#   BENCH_POLL=ddi bench/poll304.sh   the hawkBit DDI base poll instead
#                                     (what bench/ddi_poll.sh runs)
#   BENCH_OTADEPOT_BIN=… BENCH_LOADGEN_BIN=… BENCH_BARE_BIN=… bench/poll304.sh   (no build)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

devices=${1:-2000}
connections=${2:-64}
seconds=${3:-15}

ensure_cargo
apt_install python3 curl
work=$(mktemp -d /tmp/otadepot-bench-poll304.XXXXXX)
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
"$loadgen" warm "$base" "$work/secrets.csv" >&2
case "${BENCH_POLL:-device}" in
  device) rate_args=() what="304/s" reference_what="204/s" ;;
  # One DDI poll each first, so every device's base-poll facts are cached.
  ddi)
    rate_args=(--ddi DEFAULT) what="DDI polls/s" reference_what="same JSON/s"
    "$loadgen" rate "$base" "$work/secrets.csv" "${rate_args[@]}" --connections 8 --seconds 3 >&2
    ;;
  *) die "BENCH_POLL must be device or ddi" ;;
esac
sleep 2

rate_of() { echo "$1" | tr ' ' '\n' | awk -F= '$1 == "rps" { print $2 }'; }
log "$db: otadepot, $connections connections, ${seconds}s"
ours=$("$loadgen" rate "$base" "$work/secrets.csv" "${rate_args[@]}" --connections "$connections" --seconds "$seconds")
echo "$ours" >&2
kill "$server" && wait "$server" 2>/dev/null || true
server=""
bare_port=$(free_port)
"${BENCH_BARE_BIN:-target/release/examples/bare}" "127.0.0.1:$bare_port" &
bare=$!
for _ in $(seq 50); do curl -s "http://127.0.0.1:$bare_port/device/v1/poll" >/dev/null && break; sleep 0.1; done
log "the bare axum route, $connections connections, ${seconds}s"
reference=$("$loadgen" rate "http://127.0.0.1:$bare_port" "$work/secrets.csv" "${rate_args[@]}" --connections "$connections" --seconds "$seconds")
echo "$reference" >&2
a=$(rate_of "$ours")
b=$(rate_of "$reference")
echo
echo "| backend | devices | connections | otadepot $what | bare axum $reference_what | ratio |"
echo "| --- | --- | --- | --- | --- | --- |"
echo "| $db | $devices | $connections | $a | $b | $(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.0f %%", 100 * a / b }') |"
