#!/usr/bin/env bash
# gpu_elastic_nccl.sh MOERUN NPY_COMPARE NPY_CONCAT PLAN_DIFF CONFIG INPUT
# Elastic serving on two GPUs over NCCL (one GPU per rank; exits 77 with fewer than two): the
# schedule 0:1,4:2,400:1 at -np 2, experts moving GPU to GPU on the world communicator's split,
# serving sets split from the world at launch. Against the cpu backend's static run over the same
# tokens:
# - the output equals it for every token within bf16 error (1e-2 relative);
# - both events switched, and each moved the minimum the two plans imply: new (layer, expert, rank)
#   hosts (plan_diff) x one bf16 expert slot (3 x d_ff x d_model x 2 bytes), nothing resent.
set -euo pipefail
moerun=$1 compare=$2 concat=$3 plan_diff=$4 config=$5 input=$6
gpus=$(nvidia-smi -L 2>/dev/null | grep -c GPU || true)
if [ "${gpus:-0}" -lt 2 ]; then
    echo "fewer than two GPUs: skipped"
    exit 77
fi
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 NCCL_NVLS_ENABLE=0
"$concat" 0 "$dir/input.npy" $(for i in $(seq 60); do echo "$input"; done)
sets=(--set input.kind=npy --set input.path="$dir/input.npy" --set run.batches=0 --set run.tokens_per_rank=4
      --set routing.source=synthetic --set rebalance.window=2 --set outputs.progress=false)
timeout 120 mpirun --oversubscribe -np 2 "$moerun" infer -c "$config" "${sets[@]}" --output "$dir/cpu.npy" >/dev/null
timeout 300 mpirun --oversubscribe -np 2 "$moerun" elastic -c "$config" "${sets[@]}" --set run.backend=cuda \
    --set run.transport=nccl --schedule 0:1,4:2,400:1 --output "$dir/cuda.npy" --events "$dir/events.csv" \
    --plans "$dir/plans" | tail -n 4
"$compare" "$dir/cuda.npy" "$dir/cpu.npy" 1e-2
cat "$dir/events.csv"
switched=$(awk -F, 'NR > 1 && $2 == "scale" && $6 >= 0' "$dir/events.csv" | wc -l)
test "$switched" -eq 2 || { echo "FAIL: $switched of 2 scale events switched"; exit 1; }
expert_bytes=$("$moerun" infer -c "$config" "${sets[@]}" --print-config |
    awk '$1 == "d_model:" {d = $2} $1 == "d_ff:" {f = $2} END {print 3 * d * f * 2}')
tail -n +2 "$dir/events.csv" | while IFS=, read -r ev kind from to dec sw _ _ _ _ _ _ _ moved bytes min _; do
    hosts=$("$plan_diff" "$dir/plans/plan-$ev.yaml" "$dir/plans/plan-$((ev + 1)).yaml" | awk '{print $2}')
    echo "event $ev ($from -> $to): $moved experts moved, $bytes bytes received; plans imply $hosts new hosts"
    test "$hosts" -gt 0 && test "$hosts" -eq "$moved" && test "$bytes" -eq $((hosts * expert_bytes)) &&
        test "$min" -eq "$bytes" || { echo "FAIL: event $ev moved $bytes bytes, the minimum is $((hosts * expert_bytes))"; exit 1; }
done
