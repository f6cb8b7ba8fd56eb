#!/usr/bin/env bash
# bench_rebalance.sh: online re-balancing on a workload that shifts. The real ESFT routing of
# DeepSeek-V2-Lite (../shared/data/routing/deepseek-v2-lite-esft), the intent set then the law set,
# replayed at NP ranks (configs/deepseek-v2-lite-trace.yaml: the routing shape, scaled widths) from a
# plan made for intent alone (moerun place --solver greedy), three ways:
#   static intent plan     the plan is never changed;
#   re-balanced            rebalance.every / rebalance.window batches (experts move while serving);
#   in-domain reference    a plan made from law itself (what re-balancing can approach).
# Prints the mean per-layer max/mean load over the intent half and over the law half (batches wholly
# of law tokens), and what the moves cost (events: experts and bytes moved, longest gap between two
# batches against the batch time). Files are kept under OUTDIR.
#   scripts/bench_rebalance.sh [MOERUN] [OUTDIR]      env: NP (8), TPR (256), EVERY (2), WINDOW (2)
set -euo pipefail
cd "$(dirname "$0")/.."
moerun=${1:-build/launch/moerun}
out=${2:-bench-out/rebalance}
np=${NP:-8} tpr=${TPR:-256} every=${EVERY:-2} window=${WINDOW:-2}
esft=../shared/data/routing/deepseek-v2-lite-esft
concat=$(dirname "$moerun")/../tests/npy_concat
mkdir -p "$out"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
"$concat" 1 "$out/ids.npy" "$esft/intent.topk_ids.npy" "$esft/law.topk_ids.npy"
"$concat" 1 "$out/weights.npy" "$esft/intent.topk_weights.npy" "$esft/law.topk_weights.npy"
for set in intent law; do
    "$moerun" place --trace "$esft/$set.topk_ids.npy" --ranks "$np" --ranks-per-node "$np" \
        --solver greedy -o "$out/$set-plan.yaml" >/dev/null
done
run() { # name plan extra-args...
    local name=$1 plan=$2
    shift 2
    mpirun --oversubscribe -np "$np" "$moerun" infer -c configs/deepseek-v2-lite-trace.yaml \
        --set routing.trace_ids="$out/ids.npy" --set routing.trace_weights="$out/weights.npy" \
        --set run.tokens_per_rank="$tpr" --set outputs.progress=false --plan "$plan" \
        --timeline "$out/$name.csv" "$@" >"$out/$name.txt"
}
run static "$out/intent-plan.yaml"
run rebalanced "$out/intent-plan.yaml" --set rebalance.every="$every" --set rebalance.window="$window" \
    --events "$out/events.csv"
run in-domain "$out/law-plan.yaml"

first_law=$(( (8222 + np * tpr - 1) / (np * tpr) )) # intent holds 8222 tokens
half() { awk -F, -v b="$first_law" -v law="$2" 'NR > 1 && (law ? $2 >= b : $2 < b) {s += $7; n++}
    END {printf "%.3f", s / n}' "$1"; }
echo "ESFT intent then law, $np ranks, $tpr tokens per rank, re-balance every $every batches from" \
     "the last $window (law from batch $first_law)"
echo
echo "| run | intent half: max/mean | law half: max/mean |"
echo "| --- | --- | --- |"
for name in static rebalanced in-domain; do
    echo "| $name | $(half "$out/$name.csv" 0) | $(half "$out/$name.csv" 1) |"
done
echo
echo "| event | decided at batch | switched at batch | experts moved | MB moved | longest gap s | batch s |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
awk -F, 'NR > 1 && $2 == "rebalance" {printf "| %s | %s | %s | %s | %.1f | %.4f | %.4f |\n",
    $1, $5, $6, $14, $15 / 1e6, $12, $13}' "$out/events.csv"
echo
echo "kept the plan (nothing worth its move cost): $(grep -c rebalance-kept "$out/events.csv") re-plans"
