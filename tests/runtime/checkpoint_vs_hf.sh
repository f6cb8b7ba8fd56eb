#!/usr/bin/env bash
# checkpoint_vs_hf.sh MOERUN NPY_COMPARE CASE_DIR [PLAN EXPERTS_PER_RANK]
# A Hugging Face checkpoint fixture (tests/data/hf/CASE, made by scripts/hf_reference.py): the
# configuration `moerun config --from-hf` writes is accepted by `moerun infer -c` as it is; infer at
# 1 and 4 ranks (2 chunks) reproduces transformers' output (expected.npy) within 1e-4 relative, as
# does the dense reference; and each rank reads exactly its share of the checkpoint: the routers,
# norms and shared experts (common_bytes) plus expert_bytes for each expert it hosts per layer
# (fixture.txt), as the summary of the metrics file reports. With PLAN (a plan for 4 ranks) and
# EXPERTS_PER_RANK ("6,6,5,2": experts hosted per rank over all layers, replicas included) the
# 4-rank run uses that plan.
set -euo pipefail
moerun=$1 compare=$2 case=$3 plan=${4:-} plan_counts=${5:-}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# shellcheck disable=SC1091
source "$case/fixture.txt" # layers experts tokens expert_bytes common_bytes
"$moerun" config --from-hf "$case/config.json" -o "$dir/model.yaml" 2>/dev/null
# The written configuration runs as it is (seeded inputs, its own batches).
"$moerun" infer -c "$dir/model.yaml" >/dev/null
common=(--set input.kind=npy --set "input.path=$case/input.npy" --set run.batches=0 --set run.chunks=2)
status=0

"$moerun" infer -c "$dir/model.yaml" "${common[@]}" --set run.tokens_per_rank=$tokens --reference \
    --output "$dir/ref.npy" >/dev/null
printf 'reference: '
"$compare" "$dir/ref.npy" "$case/expected.npy" 1e-4 || status=1

for np in 1 4; do
    extra=()
    if [ -n "$plan" ] && [ $np -eq 4 ]; then extra=(--plan "$plan"); fi
    timeout 120 mpirun --oversubscribe -np $np "$moerun" infer -c "$dir/model.yaml" "${common[@]}" \
        --set run.tokens_per_rank=$((tokens / np)) "${extra[@]}" --output "$dir/out.npy" \
        --metrics "$dir/metrics.jsonl" >/dev/null
    printf 'np %d: ' $np
    "$compare" "$dir/out.npy" "$case/expected.npy" 1e-4 || status=1
    summary=$(grep '"summary":true' "$dir/metrics.jsonl")
    got_all=$(grep -o '"checkpoint_bytes_read":\[[0-9,]*\]' <<<"$summary" | grep -o '\[.*\]' | tr -d '[]')
    got_exp=$(grep -o '"checkpoint_expert_bytes_read":\[[0-9,]*\]' <<<"$summary" | grep -o '\[.*\]' | tr -d '[]')
    IFS=, read -r -a all <<<"$got_all"
    IFS=, read -r -a exp <<<"$got_exp"
    if [ -n "${extra[*]}" ]; then IFS=, read -r -a hosted <<<"$plan_counts"; fi
    for ((r = 0; r < np; r++)); do
        if [ -n "${extra[*]}" ]; then n=${hosted[$r]}; else n=$((layers * experts / np)); fi
        want_exp=$((n * expert_bytes)) want_all=$((n * expert_bytes + common_bytes))
        if [ "${exp[$r]:-}" != "$want_exp" ] || [ "${all[$r]:-}" != "$want_all" ]; then
            echo "  rank $r read ${all[$r]:-?} bytes (${exp[$r]:-?} of experts), expected $want_all ($want_exp: $n experts x $expert_bytes)"
            status=1
        else
            echo "  rank $r read $want_all bytes: $n experts x $expert_bytes + $common_bytes"
        fi
    done
done
exit $status
