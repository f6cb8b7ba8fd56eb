#!/usr/bin/env bash
# bench_infer.sh: tokens/s of `moerun infer` on the cpu backend for the tiny and a mid-size model
# (configs/tiny.yaml, configs/bench-mid.yaml) at 1 and 2 ranks with 1 and 4 chunks, and the share of
# layer time in each stage. One OpenBLAS thread per rank, so that ranks do not fight over cores.
# Prints a markdown table; the per-run JSON lines are kept under $OUT_DIR (default bench-out/).
#   scripts/bench_infer.sh [REPEATS]
set -euo pipefail
cd "$(dirname "$0")/.."
repeats=${1:-3}
out=${OUT_DIR:-bench-out}
mkdir -p "$out"
[ -x build/launch/moerun ] || scripts/setup.sh build
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo
echo "| model | ranks | chunks | tokens/s (median of $repeats) | route | plan | permute | dispatch wait | experts | shared | combine wait | unpermute |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for model in tiny bench-mid; do
    for np in 1 2; do
        for chunks in 1 4; do
            files=()
            for r in $(seq "$repeats"); do
                f="$out/$model-np$np-c$chunks-$r.jsonl"
                # The same global batch at every rank count: tokens_per_rank scales down.
                tpr=$([ "$model" = tiny ] && echo $((256 / np)) || echo $((1024 / np)))
                mpirun --oversubscribe -np "$np" build/launch/moerun infer -c "configs/$model.yaml" \
                    --set run.chunks="$chunks" --set run.tokens_per_rank="$tpr" \
                    --set run.batches=6 --set run.warmup_batches=1 --set outputs.progress=false \
                    --metrics "$f" >/dev/null
                files+=("$f")
            done
            python3 - "$model" "$np" "$chunks" "${files[@]}" <<'PY'
import json, statistics, sys
model, np_, chunks, files = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
runs = []
for f in files:
    for line in open(f):
        rec = json.loads(line)
        if rec.get("summary"):
            runs.append(rec)
runs.sort(key=lambda r: r["tokens_per_s"])
mid = runs[len(runs) // 2]
st = mid["stage_ms_per_batch"]
shares = " | ".join(f"{100 * st[s] / st['layers']:.1f}%" for s in
                    ["route", "plan", "permute", "dispatch", "experts", "shared", "combine", "unpermute"])
print(f"| {model} | {np_} | {chunks} | {mid['tokens_per_s']:.0f} | {shares} |")
PY
        done
    done
done
