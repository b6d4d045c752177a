#!/usr/bin/env bash
# The whole test suite: installs its dependencies first (once), then runs every test:
# the Rust unit and integration tests (real nats-server and tansu), then the deployment tests
# (Helm chart, manifests, Prometheus rules and dashboard queries against a running bridge).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:/usr/sbin:$PATH"

scripts/install-test-deps.sh
cargo test --locked --workspace --all-targets
scripts/test-deploy.sh
