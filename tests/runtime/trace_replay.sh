#!/usr/bin/env bash
# trace_replay.sh MOERUN NPY_COMPARE STATS_COMPARE CONFIG TRACE
# Replays a real routing trace (DeepSeek-V2-Lite routing shape, scaled-down widths) at 4 ranks:
# the statistics the run records equal `moerun stats` on the same trace, and the output equals the
# dense reference's.
set -euo pipefail
moerun=$1 compare=$2 stats_compare=$3 config=$4 trace=$5
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
timeout 300 mpirun --oversubscribe -np 4 "$moerun" infer -c "$config" --set run.chunks=2 \
    --stats "$dir/run.safetensors" --output "$dir/out.npy" --metrics "$dir/m.jsonl" | tail -n 12
"$moerun" stats --trace "$trace" --experts 64 -o "$dir/trace.safetensors"
"$stats_compare" "$dir/run.safetensors" "$dir/trace.safetensors"
"$moerun" infer -c "$config" --set run.tokens_per_rank=2048 --reference --output "$dir/ref.npy" >/dev/null
"$compare" "$dir/out.npy" "$dir/ref.npy" 1e-5
grep -q '"summary":true' "$dir/m.jsonl"
