#!/usr/bin/env bash
# Installs what the deployment tests (deploy/tests) need when it is missing; skips what is
# there, so a second run costs nothing. Safe to run as root on a fresh Debian machine.
#   - Python packages pinned in deploy/tests/requirements.txt (Helm's engine, Kubernetes
#     schemas, pytest), through pip;
#   - Prometheus and promtool, from Debian's `prometheus` package.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[install-deploy-test-deps] %s\n' "$*" >&2; }

export PATH="/usr/sbin:$PATH"
PYTHON=${PYTHON:-python3}

if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  log "installing prometheus and promtool (Debian package)"
  apt-get update -qq
  # --no-install-recommends: the node exporter and friends are not needed.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

# pip check of the exact pins: installs only when a pin is missing or at another version.
if ! "$PYTHON" - deploy/tests/requirements.txt <<'PY' 2>/dev/null; then
import sys
from importlib.metadata import PackageNotFoundError, version
for line in open(sys.argv[1]):
    spec = line.split("#")[0].strip()
    if not spec:
        continue
    name, pin = spec.split("==")
    try:
        if version(name) != pin:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
PY
  log "installing Python packages of deploy/tests/requirements.txt"
  "$PYTHON" -m pip install -q --disable-pip-version-check --root-user-action=ignore \
    -r deploy/tests/requirements.txt
fi

log "deployment test dependencies present"
