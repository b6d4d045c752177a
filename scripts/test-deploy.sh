#!/usr/bin/env bash
# The deployment tests: the Helm chart rendered by Helm's engine and validated against the
# Kubernetes schemas, the plain manifests checked for drift, the alerts unit-tested with
# promtool, and every dashboard query and alert evaluated by a real Prometheus scraping a
# running bridge. Installs its dependencies first (once). Needs target/debug/timbridge (built
# by `cargo test`; built here when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:/usr/sbin:$PATH"

scripts/install-deploy-test-deps.sh
python3 -m pytest deploy/tests -q -p no:cacheprovider "$@"
