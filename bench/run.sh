#!/usr/bin/env bash
# Benchmarks timbridge side by side with a baseline HTTP+JSON server, on this machine, in one run:
# builds release binaries, starts nats-server and tansu itself, writes docs/benchmarks.md.
# Environment: BENCH_DURATION (seconds per phase, default 10), BENCH_CONNECTIONS (default 16),
# BENCH_GROUPS (default 200), BENCH_TARGETS (default "baseline stdout nats kafka").
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:/usr/sbin:$PATH"
scripts/install-test-deps.sh
cargo build --release --locked --workspace --bins
exec python3 bench/bench.py "$@"
