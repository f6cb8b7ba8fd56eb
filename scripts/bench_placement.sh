#!/bin/sh
# bench_placement.sh: the placement benchmark (issue 16), on routing a plan was not built from: the
# real ESFT traces of DeepSeek-V2-Lite (intent, law), the Qwen3-30B-A3B task loads (arc, gsm8k), a
# synthetic DeepSeek-V3-scale trace, and online re-balancing after a domain switch. Writes JSON per
# run and report.md (tables, targets) into OUTDIR.
#
#   scripts/bench_placement.sh [MOERUN] [OUTDIR]
#     MOERUN  the binary (default build/launch/moerun); OUTDIR (default bench-placement)
#     TIME_LIMIT     seconds per solve on the ESFT traces (default 60: the searches end before)
#     V3_TIME_LIMIT  seconds for the DeepSeek-V3-scale solves (default 55), run on 2 cores (taskset)
#     SKIP_CV=1      skip the cross-validation runs (the slowest part: 2 x 16 solves per case)
#
# Experiments (16 ranks = 2 x 8 with 16 redundant experts, 32 = 4 x 8 with 32):
#   cv:     --cross-validate on intent + law (build on one, score on the other) and on arc + gsm8k:
#           the held-out figures of every (hedge, traffic weight) point, and the choice;
#   cross:  plans from intent scored on law and the reverse: hedged (default weights), greedy (EPLB),
#           ilp, and greedy built from the scored domain itself (in-domain reference);
#   hier:   the same with --hierarchical (copies counted per remote node);
#   stay:   ilp with --residency stay from intent, scored on law (modelled residency);
#   v3:     58 layers x 256 experts, top-8, 64 ranks (8 x 8), 32 redundant: solve time;
#   rebal:  scripts/bench_rebalance.sh at 8 ranks, 128 tokens per rank, drift checks every batch,
#           window 2: intent then law, static intent plan vs re-balanced vs in-domain law plan.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
M=${1:-$ROOT/build/launch/moerun}
M=$(cd "$(dirname "$M")" && pwd)/$(basename "$M")
OUT=${2:-bench-placement}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
TL=${TIME_LIMIT:-60}
V3TL=${V3_TIME_LIMIT:-55}
D=$ROOT/../shared/data/routing/deepseek-v2-lite-esft
Q=$ROOT/../shared/data/routing/qwen3-30b-a3b
mkdir -p "$OUT"
I=$D/intent.topk_ids.npy
L=$D/law.topk_ids.npy

run() { # name, args...
    name=$1
    shift
    echo "== $name" >&2
    "$M" place "$@" --json -o "$OUT/$name.yaml" >"$OUT/$name.json"
}

for cfg in "16 8 16" "32 8 32"; do
    set -- $cfg
    R=$1 G=$2 X=$3
    W="--ranks $R --ranks-per-node $G --replicas $X --time-limit $TL"
    if [ "${SKIP_CV:-0}" != 1 ]; then
        run "cv_esft_$R" --trace "$I" --trace "$L" --cross-validate --no-baselines $W
        run "cv_qwen_$R" --tokens 1000 --loads-csv "$Q/arc.activation.csv" \
            --tokens 1000 --loads-csv "$Q/gsm8k.activation.csv" --cross-validate --no-baselines $W
    fi
    for dir in "intent law" "law intent"; do
        set -- $dir
        src=$D/$1.topk_ids.npy dst=$D/$2.topk_ids.npy
        run "cross_$1_to_$2_$R" --trace "$src" --score "$dst" $W
        run "ilp_$1_to_$2_$R" --trace "$src" --score "$dst" --solver ilp --no-baselines $W
        run "hier_$1_to_$2_$R" --trace "$src" --score "$dst" --hierarchical $W
        run "indomain_$2_$R" --trace "$dst" --solver greedy --no-baselines $W
    done
done
run "stay_intent_to_law_16" --trace "$I" --score "$L" --solver ilp --residency stay \
    --ranks 16 --ranks-per-node 8 --replicas 16 --time-limit "$TL"

python3 "$ROOT/scripts/make_synthetic_trace.py" "$OUT/v3.npy" --layers 58 --experts 256 --top-k 8 \
    --tokens 4096 --seed 1
for solver in hedged ilp; do
    echo "== v3 $solver" >&2
    start=$(date +%s.%N)
    taskset -c 0,1 "$M" place --trace "$OUT/v3.npy" --ranks 64 --ranks-per-node 8 --replicas 32 \
        --solver $solver --time-limit "$V3TL" --json -o "$OUT/v3_$solver.yaml" >"$OUT/v3_$solver.json"
    end=$(date +%s.%N)
    echo "$start $end" >"$OUT/v3_$solver.wall"
done

echo "== rebalance" >&2
NP=8 TPR=128 EVERY=1 WINDOW=2 "$ROOT/scripts/bench_rebalance.sh" "$M" "$OUT/rebalance" \
    >"$OUT/rebalance.txt"

python3 "$ROOT/scripts/bench_placement_report.py" "$OUT" | tee "$OUT/report.md"
