#!/usr/bin/env bash
# bad_checkpoints.sh MOERUN SRCDIR
# The corrupt-checkpoint corpus (tests/data/bad_checkpoints, made by scripts/make_bad_checkpoints.py):
# the configuration of good/ runs; pointed at each broken copy, `moerun infer` under mpirun (2 ranks)
# exits non-zero within the timeout and its message names the file and the tensor or key (the lines
# of the case's expect.txt). `moerun config --from-hf` fails likewise on the broken config.json files.
set -uo pipefail
moerun=$1 src=$2
corpus="$src/tests/data/bad_checkpoints"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
failures=0
run2() { timeout 60 mpirun --oversubscribe -np 2 "$moerun" infer -c "$dir/good.yaml" --set run.batches=1 \
    --set run.tokens_per_rank=8 "$@"; }

if ! "$moerun" config --from-hf "$corpus/good/config.json" -o "$dir/good.yaml" 2>/dev/null; then
    echo "FAIL good: moerun config --from-hf failed"; exit 1
fi
if out=$(run2 2>&1); then echo "ok   good runs"; else echo "FAIL good: $out" | head -5; failures=$((failures + 1)); fi

check() { # name, output, exit code
    local name=$1 out=$2 rc=$3
    if [ "$rc" -eq 124 ]; then echo "FAIL $name: timed out (a rank hung)"; failures=$((failures + 1)); return; fi
    if [ "$rc" -eq 0 ]; then echo "FAIL $name: exited 0"; failures=$((failures + 1)); return; fi
    if grep -qE 'AddressSanitizer|runtime error:|Segmentation|signal' <<<"$out"; then
        echo "FAIL $name: crashed:"; grep -m3 -E 'AddressSanitizer|runtime error:|Segmentation|signal' <<<"$out"
        failures=$((failures + 1)); return
    fi
    while IFS= read -r want; do
        [ -z "$want" ] && continue
        if ! grep -qF -- "$want" <<<"$out"; then
            echo "FAIL $name: message lacks '$want':"; echo "$out" | head -5; failures=$((failures + 1)); return
        fi
    done <"$corpus/$name/expect.txt"
    echo "ok   $name (exit $rc): $(grep -m1 'error' <<<"$out")"
}

for case in "$corpus"/*/; do
    case=${case%/}
    name=$(basename "$case")
    [ "$name" = good ] && continue
    out=$(run2 --set "weights.checkpoint=$case" 2>&1); rc=$?
    check "$name" "$out" $rc
done
for name in unsupported_architecture config_missing_key no_config; do
    out=$(timeout 60 "$moerun" config --from-hf "$corpus/$name/config.json" -o "$dir/x.yaml" 2>&1); rc=$?
    check "$name" "$out" $rc
done
[ $failures -eq 0 ]
