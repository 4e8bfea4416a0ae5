#!/usr/bin/env bash
# Status reports per second (issue 13, item 8): DEVICES devices get an
# update (applyPackage to a dynamic group of all of them), then the
# compiled generator (examples/loadgen.rs `report`) posts DOWNLOADING
# progress for them in turn over CONNECTIONS connections for SECONDS. On
# PostgreSQL, `pgbench -N` (simple-update transactions) runs with the same
# client count on the same server in the same run, as the reference.
# Prints reports/s, the reference's tps and the ratio, and the database
# statements per report (the server's `http_request_db_statements`
# histogram of the report route).
#
#   bench/reports.sh [DEVICES=2000] [CONNECTIONS=64] [SECONDS=15]
#   BENCH_DB=postgres bench/reports.sh    (a database on BENCH_PG_URL, created and dropped)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

devices=${1:-2000}
connections=${2:-64}
seconds=${3:-15}

ensure_cargo
apt_install python3 curl
work=$(mktemp -d /tmp/otadepot-bench-reports.XXXXXX)
. bench/fleet.sh
pgbench_db="otadepot_pgbench_$$"
cleanup() {
  bench_cleanup
  [ "${db:-}" = postgres ] && psql -q "$pg_admin" -c "DROP DATABASE IF EXISTS $pgbench_db WITH (FORCE)" >/dev/null 2>&1
  return 0
}
trap cleanup EXIT
bench_build
bench_database
# No write limit per device: the generator reports for each device about
# once a second.
bench_serve OTADEPOT_DEVICES__MAX_WRITES_PER_MINUTE=1000000
bench_fleet "$devices"
deployment=$(gql "mutation { applyPackage(input: {package: \"$package\", group: \"$group\"}) { deployment { id } } }" \
  applyPackage.deployment.id)
for _ in $(seq 600); do
  released=$(gql "{ deployment(id: \"$deployment\") { counts { released } } }" deployment.counts.released)
  [ "$released" -ge "$devices" ] && break
  sleep 0.2
done
[ "$released" -ge "$devices" ] || die "only $released of $devices devices were released"

statements() {
  curl -sf "$base/metrics" | awk -v want="$1" '
    /^http_request_db_statements_(sum|count)\{/ && /route="\/device\/v1\/updates\/\{id\}\/status"/ && /status="200"/ {
      split($0, a, " "); if ($0 ~ /_sum\{/) s += a[2]; else c += a[2] }
    END { if (want == "sum") print s + 0; else print c + 0 }'
}
sum0=$(statements sum)
count0=$(statements count)
log "$db: $connections connections posting DOWNLOADING reports for $devices devices, ${seconds}s"
out=$("$loadgen" report "$base" "$work/secrets.csv" --connections "$connections" --seconds "$seconds")
echo "$out" >&2
sum1=$(statements sum)
count1=$(statements count)
rps=$(echo "$out" | tr ' ' '\n' | awk -F= '$1 == "rps" { print $2 }')
per_report=$(awk -v s=$((sum1 - sum0)) -v c=$((count1 - count0)) 'BEGIN { printf "%.2f", c ? s / c : 0 }')

reference="–"
ratio="–"
if [ "$db" = postgres ]; then
  log "pgbench -N, $connections clients, ${seconds}s, on the same server"
  psql -q "$pg_admin" -c "CREATE DATABASE $pgbench_db" >/dev/null
  pgbench_url="${pg_admin%/*}/$pgbench_db"
  pgbench -q -i -s 10 "$pgbench_url" >/dev/null 2>&1
  bench_out=$(pgbench -n -N -c "$connections" -j 2 -T "$seconds" "$pgbench_url" 2>&1)
  echo "$bench_out" | grep -E "^(tps|latency average)" >&2
  tps=$(echo "$bench_out" | awk '/^tps/ { printf "%.0f", $3 }')
  reference="$tps tps"
  ratio=$(awk -v a="$rps" -v b="$tps" 'BEGIN { printf "%.0f %%", 100 * a / b }')
fi
echo
echo "| backend | devices | connections | reports/s | pgbench -N (same clients) | ratio | statements per report |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
echo "| $db | $devices | $connections | $rps | $reference | $ratio | $per_report |"
