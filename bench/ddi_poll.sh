#!/usr/bin/env bash
# The hawkBit DDI base poll with nothing pending (issue 14, item 11):
# DEVICES devices poll `GET /DEFAULT/controller/v1/<endpoint id>` with
# `Authorization: TargetToken <secret>` over CONNECTIONS connections for
# SECONDS (examples/loadgen.rs `rate --ddi`, rotating through the
# devices); the reference is a bare axum route on the same path answering
# the same JSON (examples/bare.rs), driven the same way in the same run.
# The steps are bench/poll304.sh's.
#
#   bench/ddi_poll.sh [DEVICES=2000] [CONNECTIONS=64] [SECONDS=15]
#   BENCH_DB=postgres bench/ddi_poll.sh
#   BENCH_OTADEPOT_BIN=… BENCH_LOADGEN_BIN=… BENCH_BARE_BIN=… bench/ddi_poll.sh   (no build)
set -euo pipefail
BENCH_POLL=ddi exec "$(dirname "$0")/poll304.sh" "$@"
