#!/bin/sh
# bench_placement.sh: the placement benchmark of issue 3, on the real ESFT traces and a synthetic
# DeepSeek-V3-scale instance. Writes JSON per run and report.md (tables) into OUTDIR.
#
#   scripts/bench_placement.sh [MOERUN] [OUTDIR]
#     MOERUN  the binary (default build/launch/moerun); OUTDIR (default bench-placement)
#     TIME_LIMIT  seconds per ILP solve on the ESFT traces (default 20)
#     V3_TIME_LIMIT  seconds for the DeepSeek-V3-scale solve (default 55), run on 2 cores (taskset)
#
# Experiments (8 ranks = 1x8, 16 = 2x8 with 16 redundant experts = 80 slots, 32 = 4x8 with 32):
#   single: plans from intent scored on law, and the reverse (ILP + contiguous, round-robin, greedy);
#   robust: plans from the first halves of intent and law together, scored on the second halves; the
#           same from one half alone; in-domain reference: greedy built from the scored data itself;
#   stay:   the robust case with --residency stay (tokens stay on the rank of their last expert);
#   v3: 58 layers x 256 experts, top-8, 64 ranks (8x8), 32 redundant: solve time.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
M=${1:-$ROOT/build/launch/moerun}
OUT=${2:-bench-placement}
TL=${TIME_LIMIT:-20}
V3TL=${V3_TIME_LIMIT:-55}
D=$ROOT/../shared/data/routing/deepseek-v2-lite-esft
mkdir -p "$OUT"
I=$D/intent.topk_ids.npy
L=$D/law.topk_ids.npy
# halves (intent: 8222 tokens, law: 8327)
IA="$I@0:4111"; IB="$I@4111:"; LA="$L@0:4163"; LB="$L@4163:"

run() { # name, args...
    name=$1
    shift
    echo "== $name" >&2
    "$M" place "$@" --json -o "$OUT/$name.yaml" >"$OUT/$name.json"
}

for cfg in "8 8 0" "16 8 16" "32 8 32"; do
    set -- $cfg
    R=$1 G=$2 X=$3
    W="--ranks $R --ranks-per-node $G --replicas $X --time-limit $TL"
    run "single_intent_to_law_$R" --trace "$I" --score "$L" $W
    run "single_law_to_intent_$R" --trace "$L" --score "$I" $W
    run "indomain_law_$R" --trace "$L" --solver greedy --no-baselines $W
    run "indomain_intent_$R" --trace "$I" --solver greedy --no-baselines $W
    run "robust_both_$R" --trace "$IA" --trace "$LA" --score "$IB" --score "$LB" $W
    run "robust_intent_only_$R" --trace "$IA" --score "$IB" --score "$LB" $W
    run "robust_law_only_$R" --trace "$LA" --score "$IB" --score "$LB" $W
    run "robust_both_stay_$R" --trace "$IA" --trace "$LA" --score "$IB" --score "$LB" \
        --residency stay $W
    run "indomain_intentB_$R" --trace "$IB" --solver greedy --no-baselines $W
    run "indomain_lawB_$R" --trace "$LB" --solver greedy --no-baselines $W
done

python3 "$ROOT/scripts/make_synthetic_trace.py" "$OUT/v3.npy" --layers 58 --experts 256 --top-k 8 \
    --tokens 4096 --seed 1
echo "== v3" >&2
start=$(date +%s.%N)
taskset -c 0,1 "$M" place --trace "$OUT/v3.npy" --ranks 64 --ranks-per-node 8 --replicas 32 \
    --time-limit "$V3TL" --json -o "$OUT/v3.yaml" >"$OUT/v3.json"
end=$(date +%s.%N)
echo "$start $end" >"$OUT/v3.wall"

python3 "$ROOT/scripts/bench_placement_report.py" "$OUT" | tee "$OUT/report.md"
