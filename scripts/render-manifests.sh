#!/usr/bin/env bash
# Regenerates what deploy/ derives from the chart, with Helm's own engine:
#   deploy/kubernetes/timbridge.yaml  the chart rendered with its default values
#                                     (release "timbridge", namespace "timbridge")
#   deploy/prometheus/alerts.yaml     copy of helm/timbridge/files/alerts.yaml
#   deploy/grafana/timbridge.json     copy of helm/timbridge/files/timbridge.json
# Run it after any change to helm/timbridge/; deploy/tests fails while they differ.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deploy-test-deps.sh
python3 deploy/tests/helmrender.py --write
