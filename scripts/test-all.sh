#!/usr/bin/env bash
# The whole test suite: installs its dependencies first (once), then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:/usr/sbin:$PATH"

scripts/install-test-deps.sh
cargo test --locked --all-targets
