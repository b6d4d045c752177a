#!/usr/bin/env bash
# Installs what the test suite needs when it is missing; skips what is already there, so a
# second run costs nothing. Safe to run as root on a fresh Debian machine.
set -euo pipefail

TANSU_VERSION=0.6.0

log() { printf '[install-test-deps] %s\n' "$*" >&2; }

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
  log "installing nats-server (Debian package)"
  apt_install nats-server
fi

export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v tansu >/dev/null 2>&1; then
  # A Kafka-protocol broker written in Rust, for the Kafka sink tests. Building it takes about
  # ten minutes on two cores; it is installed once per machine.
  log "installing tansu $TANSU_VERSION (cargo install, ~10 min)"
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,postgres
fi

log "test dependencies present"
