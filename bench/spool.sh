#!/usr/bin/env bash
# Spooled against direct mode: CPU per callback, latency at 50% and 90% load, fsync and group
# commit, drain rate after an outage (BENCH_OUTAGE seconds, default 60). ~8 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:/usr/sbin:$PATH"
scripts/install-test-deps.sh
cargo build --release --locked --workspace --bins
exec python3 bench/spool.py "$@"
