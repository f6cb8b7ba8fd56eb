#!/bin/sh
# test_place_cli: `moerun place` end to end on the real ESFT traces: plans, --evaluate, JSON, and the
# errors that must exit non-zero (malformed plans, statistics and CSVs, infeasible requests, a plan for
# another model or world size). Usage: test_place_cli.sh MOERUN ROUTING_DIR FIXTURES_DIR
set -u
M=$1
D=$2/deepseek-v2-lite-esft
Q=$2/qwen3-30b-a3b
F=$3
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0
ok() { # expect exit 0
    if ! "$@" >"$T/out" 2>"$T/err"; then echo "FAILED (expected success): $*"; cat "$T/err"; fails=$((fails + 1)); fi
}
bad() { # expect a non-zero exit and a message on stderr
    if "$@" >"$T/out" 2>"$T/err"; then echo "FAILED (expected an error): $*"; fails=$((fails + 1));
    elif [ ! -s "$T/err" ]; then echo "FAILED (no message): $*"; fails=$((fails + 1)); fi
}

ok "$M" place --trace "$D/intent.topk_ids.npy" --ranks 16 --ranks-per-node 8 --replicas 16 \
    --solver greedy -o "$T/greedy.yaml" --model deepseek-v2-lite
ok "$M" place --trace "$D/intent.topk_ids.npy@0:2000" --trace "$D/law.topk_ids.npy@0:2000" \
    --ranks 16 --ranks-per-node 8 --replicas 16 --time-limit 3 -o "$T/ilp.yaml" --solver ilp \
    --score "$D/law.topk_ids.npy@2000:4000" --json
grep -q '"solver": "ilp"' "$T/out" || { echo "FAILED: no JSON from place"; fails=$((fails + 1)); }
ok "$M" place --evaluate --plan "$T/ilp.yaml" --trace "$D/law.topk_ids.npy" --json
# the default solver (hedged), its weights in the JSON; the replay row comes before the model row
ok "$M" place --trace "$D/intent.topk_ids.npy@0:3000" --ranks 16 --ranks-per-node 8 --replicas 16 \
    --time-limit 10 -o "$T/hedged.yaml" --no-baselines --json
grep -q '"solver": "hedged"' "$T/out" && grep -q '"hedge": 0.75, "traffic_weight": 0.25' "$T/out" ||
    { echo "FAILED: hedged JSON"; fails=$((fails + 1)); }
ok "$M" place --trace "$D/intent.topk_ids.npy@0:3000" --ranks 16 --ranks-per-node 8 --replicas 16 \
    --time-limit 10 -o "$T/hedged.yaml" --no-baselines
grep -A1 ' replay ' "$T/out" | grep -q ' model ' || { echo "FAILED: replay row before model row"; fails=$((fails + 1)); }
# cross-validation on the halves of one trace: a table, a choice, the plan built with it
ok "$M" place --trace "$D/law.topk_ids.npy@0:2000" --ranks 8 --ranks-per-node 8 --cross-validate \
    --time-limit 5 -o "$T/cv.yaml" --no-baselines --json
grep -q '"cross_validation": {"folds": 2, "chosen": ' "$T/out" ||
    { echo "FAILED: no cross-validation in the JSON"; fails=$((fails + 1)); }
grep -q '"max_mean_worst"' "$T/out" || { echo "FAILED: no figures from --evaluate"; fails=$((fails + 1)); }
ok "$M" place --evaluate --plan "$T/greedy.yaml" --trace "$D/law.topk_ids.npy" --model deepseek-v2-lite
ok "$M" place --trace "$D/law.topk_ids.npy" --ranks 8 --ranks-per-node 8 --solver ilp --time-limit 2 \
    --current "$T/greedy.yaml" -o "$T/replan.yaml"
# the incremental solver from the 16-rank plan: a scale event to 8 ranks and one to 24, re-balancing
# on 16; the result evaluates on the new world size
ok "$M" place --trace "$D/law.topk_ids.npy" --ranks 8 --ranks-per-node 8 --solver incremental \
    --current "$T/greedy.yaml" -o "$T/inc8.yaml" --json --no-baselines
grep -q '"solver": "incremental"' "$T/out" || { echo "FAILED: no incremental JSON"; fails=$((fails + 1)); }
ok "$M" place --evaluate --plan "$T/inc8.yaml" --trace "$D/law.topk_ids.npy" --ranks 8
ok "$M" place --trace "$D/law.topk_ids.npy" --ranks 24 --ranks-per-node 8 --solver incremental \
    --current "$T/greedy.yaml" -o "$T/inc24.yaml"
ok "$M" place --trace "$D/law.topk_ids.npy" --ranks 16 --ranks-per-node 8 --solver incremental \
    --current "$T/greedy.yaml" --move-cost 1000 -o "$T/inc16.yaml" --json --no-baselines
grep -q '"experts_moved": 0,' "$T/out" || { echo "FAILED: incremental with a huge move cost moved experts"; fails=$((fails + 1)); }
ok "$M" place --tokens 1000 --loads-csv "$Q/arc.activation.csv@English" \
    --tokens 1000 --loads-csv "$Q/gsm8k.activation.csv@English" --ranks 16 --ranks-per-node 8 \
    --replicas 16 --time-limit 3 -o "$T/qwen.yaml"

# errors
bad "$M" place --evaluate --plan "$T/greedy.yaml" --trace "$D/law.topk_ids.npy" --ranks 8
bad "$M" place --evaluate --plan "$T/greedy.yaml" --trace "$D/law.topk_ids.npy" --model other
bad "$M" place --evaluate --plan "$F/bad_plan.yaml" --trace "$D/law.topk_ids.npy"
bad "$M" place --evaluate --plan "$F/tiny_plan.yaml" --trace "$D/law.topk_ids.npy"
bad "$M" place --evaluate --plan "$T/missing.yaml" --trace "$D/law.topk_ids.npy"
bad "$M" place --stats "$F/bad_stats.safetensors" --ranks 16 --ranks-per-node 8 -o "$T/x.yaml"
bad "$M" place --tokens 100 --loads-csv "$F/bad_loads.csv" --ranks 2 --ranks-per-node 1 -o "$T/x.yaml"
bad "$M" place --trace "$D/law.topk_ids.npy" --ranks 16 --ranks-per-node 8 --replicas 100000 -o "$T/x.yaml"
bad "$M" place --trace "$D/law.topk_ids.npy" --ranks 16 --ranks-per-node 8 --replicas 16 \
    --slots-per-rank 4 -o "$T/x.yaml"
bad "$M" place --trace "$D/law.topk_ids.npy" --ranks 12 --ranks-per-node 8 -o "$T/x.yaml"
bad "$M" place --trace "$D/law.topk_ids.npy" --ranks 16 --ranks-per-node 8 --current "$F/tiny_plan.yaml" \
    -o "$T/x.yaml"
bad "$M" place --trace "$D/law.topk_ids.npy" --trace "$F/../placement/tiny_plan.yaml" --ranks 16 \
    --ranks-per-node 8 -o "$T/x.yaml"
bad "$M" place --trace "$D/law.topk_ids.npy" --ranks 16 --ranks-per-node 8 --exact -o "$T/x.yaml"
bad "$M" place --trace "$D/law.topk_ids.npy" --ranks 8 --ranks-per-node 8 --cross-validate \
    --solver ilp -o "$T/x.yaml"
bad "$M" place --trace "$D/law.topk_ids.npy" --ranks 8 --ranks-per-node 8 --residency stay -o "$T/x.yaml"
bad "$M" place --tokens 1000 --loads-csv "$Q/arc.activation.csv@English" --ranks 8 \
    --ranks-per-node 8 --cross-validate -o "$T/x.yaml"
"$M" place --trace "$D/law.topk_ids.npy" --ranks 8 --ranks-per-node 8 --hedge 2 -o "$T/x.yaml" \
    >/dev/null 2>&1
[ $? -eq 2 ] || { echo "FAILED: --hedge outside [0, 1] is a usage error"; fails=$((fails + 1)); }
"$M" place --ranks 16 >/dev/null 2>&1
[ $? -eq 2 ] || { echo "FAILED: usage errors exit 2"; fails=$((fails + 1)); }
"$M" place --trace "$D/law.topk_ids.npy" --ranks 8 --ranks-per-node 8 --solver incremental \
    -o "$T/x.yaml" >/dev/null 2>"$T/err"
[ $? -eq 2 ] && grep -q -- '--current' "$T/err" || { echo "FAILED: incremental without --current"; fails=$((fails + 1)); }
[ -e "$T/x.yaml" ] && { echo "FAILED: a failed run left a plan behind"; fails=$((fails + 1)); }

if [ $fails -ne 0 ]; then echo "test_place_cli: $fails failures"; exit 1; fi
echo "test_place_cli: passed"
