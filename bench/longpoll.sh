#!/usr/bin/env bash
# Long polls at fleet scale (issue 13, item 7): DEVICES devices each hold
# `GET /device/v1/poll?wait=WAIT` on a connection of its own (the compiled
# generator of examples/loadgen.rs), then a package is applied to a
# dynamic group of all of them (no maxInFlight). Prints the server's RSS
# (VmRSS of /proc/<pid>/status) before, while the polls are held, once
# every device has its answer (the connections still open, idle), and after
# the connections close; the memory per held poll (from "before", when
# every device has polled once and is cached); and when the devices got
# their 200 after applyPackage was called (p50, p99, last).
#
#   bench/longpoll.sh [DEVICES=2000] [WAIT=300]
#   BENCH_OTADEPOT_BIN=target/release/otadepot BENCH_LOADGEN_BIN=target/release/examples/loadgen \
#       bench/longpoll.sh 10000           (no build)
#   BENCH_DB=postgres bench/longpoll.sh   (a database otadepot_bench_<pid> on BENCH_PG_URL,
#       default postgres://postgres@127.0.0.1:5432/postgres, created and dropped)
#   BENCH_SERVER_ENV="MALLOC_ARENA_MAX=2" bench/longpoll.sh   (extra environment of the server)
#
# Open files: the server and the generator each need DEVICES + a few; the
# hard limit here is 20,000 per process, so DEVICES ≤ ~19,000.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

devices=${1:-2000}
wait_s=${2:-300}

ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" -gt $((devices + 200)) ] || die "open files are capped at $(ulimit -n); $devices devices need more"

ensure_cargo
apt_install python3 curl
work=$(mktemp -d /tmp/otadepot-bench-longpoll.XXXXXX)
. bench/fleet.sh
generator=""
cleanup() {
  [ -n "$generator" ] && kill "$generator" 2>/dev/null && wait "$generator" 2>/dev/null
  bench_cleanup
}
trap cleanup EXIT
bench_build
bench_database
bench_serve OTADEPOT_DEPLOYMENTS__MAX_POLL_WAIT="${wait_s}s"
fds() { find "/proc/$server/fd" -mindepth 1 -maxdepth 1 | wc -l; }
bench_fleet "$devices"

sleep 2
rss_start=$(rss_kib)
log "every device polls once (its first contact)"
"$loadgen" warm "$base" "$work/secrets.csv" >&2
sleep 2
rss_before=$(rss_kib)
log "holding $devices long polls (wait=${wait_s}s)"
"$loadgen" hold "$base" "$work/secrets.csv" --wait "$wait_s" --ready-file "$work/ready" --t0-file "$work/t0" \
  --linger 10 >"$work/answers" 2>"$work/loadgen.log" &
generator=$!
until [ -s "$work/ready" ]; do
  kill -0 "$generator" 2>/dev/null || { cat "$work/loadgen.log" >&2; die "the load generator stopped"; }
  sleep 0.5
done
# Until the server has accepted every connection and the RSS settles.
for _ in $(seq 60); do
  a=$(rss_kib); sleep 2; b=$(rss_kib)
  [ "$(fds)" -ge "$devices" ] && [ $((b - a)) -lt 1024 ] && break
done
held_fds=$(fds)
rss_held=$(rss_kib)
note "server: $held_fds open files, VmRSS $(mib "$rss_held") MiB"

log "applyPackage to the group of $devices devices"
date +%s.%N >"$work/t0"
gql "mutation { applyPackage(input: {package: \"$package\", group: \"$group\"}) { deployment { targetCount } } }" \
  applyPackage.deployment.targetCount >/dev/null
apply_s=$(awk -v t0="$(cat "$work/t0")" -v t1="$(date +%s.%N)" 'BEGIN { printf "%.1f", t1 - t0 }')
until [ -s "$work/answers" ]; do
  kill -0 "$generator" 2>/dev/null || { cat "$work/loadgen.log" >&2; die "the load generator stopped"; }
  sleep 0.5
done
sleep 3
rss_answered=$(rss_kib)
wait "$generator" || die "the load generator failed: $(cat "$work/loadgen.log")"
generator=""
sleep 5
rss_after=$(rss_kib)
answers=$(cat "$work/answers")
echo "$answers" >&2
grep -v '^holding' "$work/loadgen.log" | head -5 >&2 || true

field() { echo "$answers" | tr ' ' '\n' | awk -F= -v k="$1" '$1 == k { print $2 }'; }
per_poll=$(awk -v a="$rss_before" -v b="$rss_held" -v n="$devices" 'BEGIN { printf "%.1f", (b - a) / n }')
echo
echo "| backend | held polls | RSS at start | before (every device polled once) | held | per held poll | all answered (idle conns) | conns closed | applyPackage call | 200 p50 / p99 / last (s after the call) |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
echo "| $db | $devices | $(mib "$rss_start") MiB | $(mib "$rss_before") MiB | $(mib "$rss_held") MiB | $per_poll KiB | $(mib "$rss_answered") MiB | $(mib "$rss_after") MiB | $apply_s s | $(field p50) / $(field p99) / $(field last) ($(field ok200) × 200) |"
