#!/usr/bin/env bash
# test.sh: set up, build and run the whole test suite; then again built with AddressSanitizer and
# UndefinedBehaviorSanitizer (cpu and mpi suites); then the readers under libFuzzer for
# MOE_FUZZ_SECONDS each (default 60; scripts/fuzz.sh, installs clang). Ends with the line
# `N passed, N failed`.
#   scripts/test.sh [--no-sanitizers]   (skips the sanitizer build and the fuzzers)
set -uo pipefail
cd "$(dirname "$0")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# Open MPI's own allocations are not ours to fix: leak checking off, the rest of ASan on.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

passed=0 failed=0 skipped=0
run_suite() { # build dir, label
    local log="$1/meson-logs/testlog.txt"
    meson test -C "$1" --print-errorlogs --num-processes 2 2>&1 | tee "$1/test-output.txt" | \
        grep -E "^ *[0-9]+/[0-9]+ |^(Ok|Fail|Skipped|Timeout|Expected Fail|Unexpected Pass):" || true
    local ok fail skip to
    ok=$(awk '/^Ok:/{print $2}' "$1/test-output.txt")
    fail=$(awk '/^Fail:/{print $2}' "$1/test-output.txt")
    to=$(awk '/^Timeout:/{print $2}' "$1/test-output.txt")
    skip=$(awk '/^Skipped:/{print $2}' "$1/test-output.txt")
    if [ -z "$ok" ]; then echo "test.sh: $2: no test summary (build or setup failed)"; failed=$((failed + 1)); return; fi
    passed=$((passed + ok)); failed=$((failed + ${fail:-0} + ${to:-0})); skipped=$((skipped + ${skip:-0}))
}

if scripts/setup.sh build; then run_suite build release; else failed=$((failed + 1)); fi
if [ "${1:-}" != "--no-sanitizers" ]; then
    if scripts/setup.sh build-sanitize -Db_sanitize=address,undefined -Dbuildtype=debugoptimized -Dcuda=disabled; then
        run_suite build-sanitize sanitizers
    else
        failed=$((failed + 1))
    fi
fi
# The readers under libFuzzer, about a minute each (MOE_FUZZ_SECONDS; 0 skips them).
if [ "${1:-}" != "--no-sanitizers" ] && [ "${MOE_FUZZ_SECONDS:-60}" != 0 ]; then
    scripts/fuzz.sh | tee build-fuzz-output.txt | grep -E "^(ok|FAIL)"
    fuzz_ok=$(awk '/^fuzz: /{print $2}' build-fuzz-output.txt); fuzz_fail=$(awk '/^fuzz: /{print $4}' build-fuzz-output.txt)
    if [ -z "$fuzz_ok" ]; then echo "test.sh: fuzz: no summary"; failed=$((failed + 1))
    else passed=$((passed + fuzz_ok)); failed=$((failed + fuzz_fail)); fi
    rm -f build-fuzz-output.txt
fi
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
