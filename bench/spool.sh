#!/usr/bin/env bash
# Spooled against direct mode: CPU per callback, latency at 50% and 90% load, fsync and group
# commit, drain rate after an outage (BENCH_OUTAGE seconds, default 60; 0 skips it). ~8 minutes.
# BENCH_CONNECTIONS (default 16) sets the closed loop's connections: with 16, spooled mode's
# maximum is bound by fsync latency, not CPU; 64 saturates both modes (docs/benchmarks-notes.md).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:/usr/sbin:$PATH"
scripts/install-test-deps.sh
cargo build --release --locked --workspace --bins
exec python3 bench/spool.py "$@"
