#!/usr/bin/env bash
# bench_hierarchical.sh [MOERUN] [OUTDIR]
# Flat vs hierarchical dispatch on the real ESFT traces (DeepSeek-V2-Lite routing: 26 layers, 64
# experts, top-6; ../shared/data/routing/): plans made from the intent trace with --hierarchical
# (greedy and ilp), 16 ranks as 2 nodes x 8 and 32 as 4 x 8 (cpu backend, oversubscribed, the small
# widths of configs/deepseek-v2-lite-trace.yaml, nodes simulated with run.ranks_per_node), each run
# on the intent trace (the plans' source) and on law (held out), 8192 tokens, one batch. Reports the
# inter-node copies per token and layer, flat vs hierarchical, as `moerun place --evaluate` predicts them and
# as the runtime counts them (and fails unless they agree in every layer), and the intra-node copies
# hierarchical dispatch adds; OUTDIR/report.md.
# Env: TIME_LIMIT (ilp seconds, default 60), RANKS (default "16 32").
set -euo pipefail
cd "$(dirname "$0")/.."
moerun=$(readlink -f "${1:-build/launch/moerun}")
out=$(mkdir -p "${2:-/tmp/bench_hierarchical}" && readlink -f "${2:-/tmp/bench_hierarchical}")
esft=../shared/data/routing/deepseek-v2-lite-esft
config=configs/deepseek-v2-lite-trace.yaml
tokens=8192 per_node=8
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
report=$out/report.md
{
    echo "| ranks | plan | trace | inter-node copies per token and layer, flat: predicted, counted | hierarchical: predicted, counted | flat / hierarchical | intra-node copies per token and layer, flat, hierarchical (counted) |"
    echo "|---|---|---|---|---|---|---|"
} >"$report"
for np in ${RANKS:-16 32}; do
    tpr=$((tokens / np))
    for solver in greedy ilp; do
        plan=$out/$solver-$np.yaml
        "$moerun" place --trace "$esft/intent.topk_ids.npy@0:$tokens" --ranks "$np" --ranks-per-node $per_node \
            --replicas "$np" --solver $solver --hierarchical --tokens-per-rank $tpr --time-limit "${TIME_LIMIT:-60}" \
            --no-baselines -o "$plan" >"$out/place-$solver-$np.txt"
        for trace in intent law; do
            ids=$esft/$trace.topk_ids.npy
            "$moerun" place --evaluate --plan "$plan" --trace "$ids@0:$tokens" --tokens-per-rank $tpr --json \
                >"$out/eval-$solver-$np-$trace.json"
            for dispatch in flat hierarchical; do
                timeout 600 mpirun --oversubscribe -np "$np" "$moerun" infer -c "$config" \
                    --set routing.trace_ids="$(readlink -f "$ids")" \
                    --set routing.trace_weights="$(readlink -f "$esft/$trace.topk_weights.npy")" \
                    --set placement.plan="$plan" --set run.ranks_per_node=$per_node --set run.dispatch=$dispatch \
                    --set run.tokens_per_rank=$tpr --set run.batches=1 \
                    --metrics "$out/run-$solver-$np-$trace-$dispatch.jsonl" >/dev/null
            done
            python3 - "$out" $solver $np $trace $tokens >>"$report" <<'PY'
import json, sys
out, solver, np, trace, tokens = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
ev = json.load(open(f"{out}/eval-{solver}-{np}-{trace}.json"))["scored"][0]["replayed"]
def summary(d):
    return [json.loads(l) for l in open(f"{out}/run-{solver}-{np}-{trace}-{d}.jsonl") if '"summary"' in l][0]
flat, hier = summary("flat"), summary("hierarchical")
assert flat["dispatch"] == "flat" and hier["dispatch"] == "hierarchical"
for d, run in (("", flat), ("_hier", hier)):  # the replay predicts every layer's count exactly
    for kind in ("inter", "intra"):
        counted = run[f"copies_{kind}_per_layer_all_batches"]
        predicted = [round(x) for x in ev[f"per_layer_{kind}{d}"]]
        if counted != predicted:
            sys.exit(f"{solver} {np} {trace}: {kind}{d} copies counted {counted} != replayed {predicted}")
cf, ch = flat["copies_inter"], hier["copies_inter"]
per = tokens * len(ev["per_layer_inter"])  # copies per token and layer
print(f"| {np} = {np // 8} x 8 | {solver} | {trace}{' (source)' if trace == 'intent' else ' (held out)'} "
      f"| {ev['inter'] / per:.3f}, {cf / per:.3f} | {ev['inter_hier'] / per:.3f}, {ch / per:.3f} "
      f"| {cf / ch:.2f} | {flat['copies_intra'] / per:.3f}, {hier['copies_intra'] / per:.3f} |")
PY
        done
    done
done
cat "$report"
