#!/usr/bin/env bash
# The fuzzing smoke run (docs/fuzzing.md): installs cargo-fuzz if it is missing, builds every
# target in fuzz/, runs each for SECONDS (default 20) and prints its executions.
#
#   scripts/fuzz.sh [SECONDS]
#
# The targets are built without a sanitizer (`-s none`): that needs no nightly compiler, and
# the AddressSanitizer build fails at librdkafka's configure step anyway. A toolchain that cannot
# build them (no cargo, no C++ compiler for libFuzzer, rustc without SanitizerCoverage, no
# registry to install cargo-fuzz from) is skipped with a message and exit 0; a target that
# fails to compile, or finds a crash, fails the run.
#
# CARGO_LOCK=FILE wraps each cargo command (not the runs) in `flock FILE`, for a machine
# where builds take turns. Do not also wrap the whole script in that flock: it would wait on
# itself.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

seconds=${1:-20}
targets=(query body record frame recovery config)

skip() {
    echo "fuzz: skipped: $*"
    echo "fuzz: 0 passed, 0 failed, ${#targets[@]} skipped"
    exit 0
}

cargo_() {
    if [ -n "${CARGO_LOCK:-}" ]; then
        flock "$CARGO_LOCK" cargo "$@"
    else
        cargo "$@"
    fi
}

command -v cargo >/dev/null || skip "no cargo"
command -v c++ >/dev/null || skip "no C++ compiler (libfuzzer-sys builds libFuzzer)"
# The instrumentation cargo-fuzz asks of rustc; stable takes it without any -Z flag.
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
if ! echo 'pub fn f(x: u8) -> bool { x == 7 }' | rustc --edition 2021 --crate-type lib \
    -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
    -Cllvm-args=-sanitizer-coverage-trace-compares --out-dir "$probe" - 2>"$probe/err"; then
    skip "rustc $(rustc --version) does not take SanitizerCoverage: $(head -1 "$probe/err")"
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    start=$SECONDS
    cargo_ install cargo-fuzz --locked || skip "cargo-fuzz could not be installed"
    echo "fuzz: cargo-fuzz installed in $((SECONDS - start)) s"
fi

start=$SECONDS
cargo_ fuzz build -s none
echo "fuzz: targets built in $((SECONDS - start)) s"

bin=fuzz/target/$(rustc -vV | sed -n 's/^host: //p')/release
failed=()
for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
    log=fuzz/artifacts/$target/last-run.log
    if "$bin/$target" -max_total_time="$seconds" -timeout=10 -print_final_stats=1 \
        -artifact_prefix="fuzz/artifacts/$target/" \
        "fuzz/corpus/$target" "fuzz/seeds/$target" >"$log" 2>&1; then
        status=ok
    else
        status=FAILED
        failed+=("$target")
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    printf 'fuzz: %-9s %-6s %10s executions %8s exec/s\n' "$target" "$status" "${runs:-?}" "${rate:-?}"
done

if [ ${#failed[@]} -gt 0 ]; then
    for target in "${failed[@]}"; do
        echo "fuzz: $target failed; its input and log are in fuzz/artifacts/$target/:"
        grep -E -A3 'panicked at|ERROR: libFuzzer|SUMMARY' "fuzz/artifacts/$target/last-run.log" | head -20
    done
    echo "fuzz: $((${#targets[@]} - ${#failed[@]})) passed, ${#failed[@]} failed"
    exit 1
fi
echo "fuzz: ${#targets[@]} passed, 0 failed"
