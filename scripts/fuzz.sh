#!/usr/bin/env bash
# fuzz.sh [SECONDS]: build the libFuzzer harnesses of tests/fuzz (the .npy, safetensors, statistics,
# config, plan and CSV readers) with clang, ASan and UBSan into build-fuzz, and run each for SECONDS
# (default $MOE_FUZZ_SECONDS, else 60) over a copy of its seed corpus tests/fuzz/corpus/NAME. An
# input that crashes, trips a sanitizer, leaks, runs over 10 s or over 2 GB of memory fails the
# target; its reproducer is left in build-fuzz/artifacts (replay: build-fuzz/tests/fuzz/fuzz_NAME
# FILE). Installs clang and libFuzzer with apt-get when missing. Ends with `fuzz: N passed, N failed`.
set -uo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-${MOE_FUZZ_SECONDS:-60}}
targets=(npy safetensors stats config plan csv)

packages=(clang libclang-rt-dev)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "fuzz: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# the project's own dependencies come from scripts/setup.sh (scripts/test.sh runs it first)
options=(-Dfuzz=true -Dcuda=disabled -Db_sanitize=address,undefined -Dbuildtype=debugoptimized -Db_lundef=false)
if [ -f build-fuzz/build.ninja ]; then
    meson setup --reconfigure build-fuzz "${options[@]}" > /dev/null
else
    CC=clang meson setup build-fuzz "${options[@]}" > /dev/null ||
        { echo "fuzz: cannot configure build-fuzz (scripts/setup.sh installs the dependencies)"; echo "fuzz: 0 passed, 1 failed"; exit 1; }
fi
ninja -C build-fuzz "${targets[@]/#/tests/fuzz/fuzz_}" > build-fuzz/fuzz-build.log 2>&1 ||
    { tail -20 build-fuzz/fuzz-build.log; echo "fuzz: 0 passed, 1 failed (build)"; exit 1; }

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
mkdir -p build-fuzz/artifacts
passed=0 failed=0
for t in "${targets[@]}"; do
    work=$(mktemp -d)
    log=build-fuzz/fuzz_$t.log
    build-fuzz/tests/fuzz/fuzz_$t -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -artifact_prefix="build-fuzz/artifacts/$t-" -print_final_stats=1 "$work" "tests/fuzz/corpus/$t" > "$log" 2>&1
    rc=$?
    runs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log")
    if [ $rc -eq 0 ]; then
        passed=$((passed + 1))
        echo "ok   fuzz_$t: ${runs:-?} inputs in ${seconds} s, corpus of $(ls "tests/fuzz/corpus/$t" | wc -l) seeds"
    else
        failed=$((failed + 1))
        echo "FAIL fuzz_$t (exit $rc): $(grep -m1 -E 'ERROR|SUMMARY|runtime error|out-of-memory|timeout' "$log")"
        ls build-fuzz/artifacts/"$t"-* 2>/dev/null | head -3
    fi
    rm -rf "$work"
done
echo "fuzz: $passed passed, $failed failed"
[ $failed -eq 0 ]
