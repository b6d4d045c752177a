#!/usr/bin/env bash
# The supply-chain check (deny.toml): installs cargo-deny if it is missing, then checks the
# licenses, duplicate versions (warnings) and sources of the dependency tree, offline. The
# advisories are checked against the RustSec database when a copy of it is on the machine or
# can be fetched (it lives on GitHub); otherwise they are skipped with a message.
#
# CARGO_LOCK=FILE wraps each cargo command in `flock FILE` (do not also wrap the script in it).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

cargo_() {
    if [ -n "${CARGO_LOCK:-}" ]; then
        flock "$CARGO_LOCK" cargo "$@"
    else
        cargo "$@"
    fi
}

if ! cargo deny --version >/dev/null 2>&1; then
    echo "supply-chain: installing cargo-deny"
    start=$SECONDS
    cargo_ install cargo-deny --locked
    echo "supply-chain: cargo-deny installed in $((SECONDS - start)) s"
fi

# cargo-deny reads the whole dependency graph (every target's crates, the Windows ones too),
# which a build on this machine never downloads: fetch them first (crates.io, no build).
cargo fetch --locked >/dev/null
cargo_ deny --locked --offline check licenses bans sources

# cargo-deny's default database directory (deny.toml sets no other).
dbs=${CARGO_HOME:-$HOME/.cargo}/advisory-dbs
has_db() { compgen -G "$dbs/advisory-db-*/crates" >/dev/null; }
if ! has_db; then
    # Network only, no build: not under CARGO_LOCK. Where GitHub cannot be resolved it fails
    # at once.
    timeout 120 cargo deny fetch db >/dev/null 2>&1 || true
fi
if has_db; then
    cargo_ deny --locked --offline check advisories
else
    echo "supply-chain: advisories skipped: no advisory database in $dbs, and it cannot be fetched"
fi
