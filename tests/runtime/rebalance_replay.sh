#!/usr/bin/env bash
# rebalance_replay.sh MOERUN NPY_COMPARE STATS_COMPARE NPY_CONCAT CONFIG ESFT_DIR
# Online re-balancing on a workload that shifts: the real ESFT routing of DeepSeek-V2-Lite, the
# "intent" set then the "law" set, replayed at 4 ranks from a plan made for intent alone. Against
# the same run without re-balancing:
# - the outputs are equal (1e-5 relative) and the routing statistics equal exactly, although experts
#   moved several times during the run;
# - over the batches that are wholly law, the mean per-layer max/mean load is lower: the plan
#   follows the workload.
# RANKS (default 4), TOL (default 1e-5) and EXTRA (more --set options: the gpu suite runs it on two
# GPUs over NCCL, experts moving GPU to GPU, at 1e-2) vary it; MIN_GPUS skips it (77) on fewer GPUs.
set -euo pipefail
ranks=${RANKS:-4} tol=${TOL:-1e-5}
read -r -a extra <<<"${EXTRA:-}"
if [ -n "${MIN_GPUS:-}" ] && [ "$(nvidia-smi -L 2>/dev/null | grep -c GPU || true)" -lt "$MIN_GPUS" ]; then
    echo "fewer than $MIN_GPUS GPUs: skipped"
    exit 77
fi
moerun=$1 compare=$2 stats_compare=$3 concat=$4 config=$5 esft=$6
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
"$concat" 1 "$dir/ids.npy" "$esft/intent.topk_ids.npy" "$esft/law.topk_ids.npy"
"$concat" 1 "$dir/weights.npy" "$esft/intent.topk_weights.npy" "$esft/law.topk_weights.npy"
"$moerun" place --trace "$esft/intent.topk_ids.npy" --ranks "$ranks" --ranks-per-node "$ranks" --solver greedy \
    -o "$dir/intent-plan.yaml" >/dev/null
tpr=256 intent_tokens=8222
sets=(--set routing.trace_ids="$dir/ids.npy" --set routing.trace_weights="$dir/weights.npy"
      --set run.tokens_per_rank=$tpr --plan "$dir/intent-plan.yaml" ${extra[@]+"${extra[@]}"})
timeout 300 mpirun --oversubscribe -np "$ranks" "$moerun" infer -c "$config" "${sets[@]}" \
    --output "$dir/static.npy" --stats "$dir/static.safetensors" --timeline "$dir/static.csv" >/dev/null
timeout 300 mpirun --oversubscribe -np "$ranks" "$moerun" infer -c "$config" "${sets[@]}" \
    --set rebalance.every=2 --set rebalance.window=2 --output "$dir/rebalanced.npy" \
    --stats "$dir/rebalanced.safetensors" --timeline "$dir/rebalanced.csv" --events "$dir/events.csv" |
    tail -n 12
"$compare" "$dir/rebalanced.npy" "$dir/static.npy" "$tol"
"$stats_compare" "$dir/rebalanced.safetensors" "$dir/static.safetensors"
moves=$(awk -F, 'NR > 1 && $2 == "rebalance" && $6 >= 0' "$dir/events.csv" | wc -l)
# batches of ranks x tpr tokens that start after the intent tokens
first_law=$(( (intent_tokens + ranks * tpr - 1) / (ranks * tpr) ))
law_mean() { awk -F, -v b="$first_law" 'NR > 1 && $2 >= b {s += $7; n++} END {printf "%.4f", s / n}' "$1"; }
static=$(law_mean "$dir/static.csv") rebalanced=$(law_mean "$dir/rebalanced.csv")
intent_static=$(awk -F, -v b="$first_law" 'NR > 1 && $2 < b {s += $7; n++} END {printf "%.4f", s / n}' "$dir/static.csv")
echo "re-placements that moved experts: $moves"
echo "mean per-layer max/mean load: intent half, static plan: $intent_static;" \
     "law half: static plan $static, re-balanced $rebalanced"
test "$moves" -ge 1 || { echo "FAIL: nothing was re-placed"; exit 1; }
awk -v s="$static" -v r="$rebalanced" 'BEGIN {exit !(r < s)}' ||
    { echo "FAIL: re-balancing did not lower the law half's load"; exit 1; }
