#!/usr/bin/env bash
# hier_vs_flat.sh MOERUN NPY_COMPARE CONFIG TRACE RANKS RANKS_PER_NODE
# Hierarchical dispatch (run.dispatch: hierarchical) on RANKS ranks simulated as nodes of
# RANKS_PER_NODE (run.ranks_per_node), replaying a real routing trace with a plan that has replicas
# (greedy, made with --hierarchical): at chunks 1 and 4 its output equals flat dispatch's and the
# dense reference's within 1e-5, and the intra- and inter-node copies the run counts, per layer over
# all batches, equal what `moerun place --evaluate` replays for the same trace, plan and tokens,
# exactly, for both dispatches.
set -euo pipefail
moerun=$1 compare=$2 config=$3 trace=$4 np=$5 per_node=$6
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
tpr=32 batches=2
tokens=$((np * tpr * batches))
"$moerun" place --trace "$trace@0:$tokens" --ranks "$np" --ranks-per-node "$per_node" --replicas "$np" \
    --solver greedy --hierarchical --tokens-per-rank $tpr --no-baselines -o "$dir/plan.yaml" >/dev/null
"$moerun" place --evaluate --plan "$dir/plan.yaml" --trace "$trace@0:$tokens" --tokens-per-rank $tpr \
    --json >"$dir/eval.json"
"$moerun" infer -c "$config" --set run.tokens_per_rank=$((np * tpr)) --set run.batches=$batches \
    --reference --output "$dir/ref.npy" >/dev/null
status=0
for dispatch in flat hierarchical; do
    for chunks in 1 4; do
        timeout 300 mpirun --oversubscribe -np "$np" "$moerun" infer -c "$config" \
            --set placement.plan="$dir/plan.yaml" --set run.ranks_per_node="$per_node" \
            --set run.dispatch=$dispatch --set run.chunks=$chunks --set run.tokens_per_rank=$tpr \
            --set run.batches=$batches --output "$dir/$dispatch-$chunks.npy" \
            --metrics "$dir/$dispatch-$chunks.jsonl" >/dev/null
        printf '%s chunks %d vs reference: ' $dispatch $chunks
        "$compare" "$dir/$dispatch-$chunks.npy" "$dir/ref.npy" 1e-5 || status=1
        if [ $dispatch = hierarchical ]; then
            printf '%s chunks %d vs flat: ' $dispatch $chunks
            "$compare" "$dir/$dispatch-$chunks.npy" "$dir/flat-$chunks.npy" 1e-5 || status=1
        fi
        python3 - "$dir/$dispatch-$chunks.jsonl" "$dir/eval.json" $dispatch $chunks <<'PY' || status=1
import json, sys
metrics, evaluation, dispatch, chunks = sys.argv[1:]
summary = [json.loads(l) for l in open(metrics) if '"summary"' in l][0]
replay = json.load(open(evaluation))["scored"][0]["replayed"]
assert summary["dispatch"] == dispatch, summary["dispatch"]
suffix = "_hier" if dispatch == "hierarchical" else ""
ok = True
for kind in ("inter", "intra"):
    counted = summary[f"copies_{kind}_per_layer_all_batches"]
    predicted = [round(x) for x in replay[f"per_layer_{kind}{suffix}"]]
    if counted != predicted:
        ok = False
        print(f"{dispatch} chunks {chunks}: {kind}-node copies counted {counted}, replayed {predicted}")
print(f"{dispatch} chunks {chunks}: copies inter {sum(summary['copies_inter_per_layer_all_batches'])}, "
      f"intra {sum(summary['copies_intra_per_layer_all_batches'])}: "
      + ("equal to the replay's, every layer" if ok else "DIFFER from the replay"))
sys.exit(0 if ok else 1)
PY
    done
done
exit $status
