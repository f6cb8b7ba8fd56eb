#!/usr/bin/env bash
# infer_vs_reference.sh MOERUN NPY_COMPARE CONFIG [--set KEY=VALUE ...]
# The expert-parallel output at 1, 2 and 4 ranks and 1, 2 and 4 chunks equals the single-process
# dense reference (each token through its k experts directly) within 1e-5 relative (the rank counts
# come from MOE_TEST_RANKS when set, e.g. for a plan made for one world size). Every run
# covers the same 96 global tokens per batch, so token g is the same token in every run.
set -euo pipefail
moerun=$1 compare=$2 config=$3
shift 3
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
tokens=96
"$moerun" infer -c "$config" "$@" --set run.tokens_per_rank=$tokens --set run.batches=2 \
    --reference --output "$dir/ref.npy" >/dev/null
status=0
for np in ${MOE_TEST_RANKS:-1 2 4}; do
    for chunks in 1 2 4; do
        timeout 120 mpirun --oversubscribe -np $np "$moerun" infer -c "$config" "$@" \
            --set run.tokens_per_rank=$((tokens / np)) --set run.batches=2 --set run.chunks=$chunks \
            --output "$dir/out.npy" >/dev/null
        printf 'np %d chunks %d: ' $np $chunks
        "$compare" "$dir/out.npy" "$dir/ref.npy" 1e-5 || status=1
    done
done
exit $status
