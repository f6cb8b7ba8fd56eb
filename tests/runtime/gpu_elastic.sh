#!/usr/bin/env bash
# gpu_elastic.sh MOERUN NPY_COMPARE NPY_CONCAT CONFIG INPUT
# The cuda backend through scale events (ranks share the GPU over the MPI transport; experts move
# host to host, the next backend state is prepared and warmed on a thread): at 4 ranks on the
# schedule 0:2,4:4,400:2, the output equals the cpu backend's static run within bf16 error (1e-2
# relative), and both events switched. GPU batches take milliseconds and an event takes a few
# hundred of them, so the input is INPUT 60 times over. Exits 77 without a GPU.
set -euo pipefail
moerun=$1 compare=$2 concat=$3 config=$4 input=$5
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L 2>/dev/null | grep -q GPU; then
    echo "no GPU: skipped"
    exit 77
fi
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
"$concat" 0 "$dir/input.npy" $(for i in $(seq 60); do echo "$input"; done)
sets=(--set input.kind=npy --set input.path="$dir/input.npy" --set run.batches=0 --set run.tokens_per_rank=4
      --set routing.source=synthetic --set rebalance.window=2 --set outputs.progress=false)
timeout 120 mpirun --oversubscribe -np 4 "$moerun" infer -c "$config" "${sets[@]}" --output "$dir/cpu.npy" >/dev/null
timeout 300 mpirun --oversubscribe -np 4 "$moerun" elastic -c "$config" "${sets[@]}" --set run.backend=cuda \
    --schedule 0:2,4:4,400:2 --output "$dir/cuda.npy" --events "$dir/events.csv" | tail -n 3
"$compare" "$dir/cuda.npy" "$dir/cpu.npy" 1e-2
switched=$(awk -F, 'NR > 1 && $2 == "scale" && $6 >= 0' "$dir/events.csv" | wc -l)
test "$switched" -eq 2 || { echo "FAIL: $switched of 2 scale events switched"; cat "$dir/events.csv"; exit 1; }
