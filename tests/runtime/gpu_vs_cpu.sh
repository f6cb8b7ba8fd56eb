#!/usr/bin/env bash
# gpu_vs_cpu.sh MOERUN NPY_COMPARE CONFIG [--set KEY=VALUE ...]
# The cuda backend gives the cpu backend's output within bf16 error (relative 1e-2 over the final
# hidden states): with NCCL at 1 rank, and with the host-staged MPI transport at 2 and 4 ranks
# sharing one GPU; each at 1 and 4 chunks. And C = 4 equals C = 1 (1e-3: only the GEMM shapes, so
# cuBLAS's kernel choice, differ). Every run covers the same global tokens. Exits 77 without a GPU.
set -euo pipefail
moerun=$1 compare=$2 config=$3
shift 3
extra=("$@")
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L 2>/dev/null | grep -q GPU; then
    echo "no GPU: skipped"
    exit 77
fi
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
tokens=${GPU_TEST_TOKENS:-96}
common=(--set run.batches=2 --set outputs.progress=false)
mpirun --oversubscribe -np 1 "$moerun" infer -c "$config" "${extra[@]}" "${common[@]}" --set run.tokens_per_rank=$tokens \
    --set run.backend=cpu --set run.transport=mpi --output "$dir/cpu.npy" >/dev/null
status=0
run() { # label np transport chunks
    local np=$2 transport=$3 chunks=$4
    if ! timeout 180 mpirun --oversubscribe -np "$np" "$moerun" infer -c "$config" "${extra[@]}" "${common[@]}" \
        --set run.tokens_per_rank=$((tokens / np)) --set run.backend=cuda --set run.transport="$transport" \
        --set run.chunks="$chunks" --output "$dir/$1.npy" >"$dir/$1.log" 2>&1; then
        echo "$1: moerun failed"; cat "$dir/$1.log"; status=1; return 1
    fi
}
for spec in "nccl-np1 1 nccl" "mpi-np2 2 mpi" "mpi-np4 4 mpi"; do
    read -r label np transport <<<"$spec"
    for chunks in 1 4; do
        run "$label-c$chunks" "$np" "$transport" "$chunks" || continue
        printf '%s chunks %d vs cpu: ' "$label" "$chunks"
        "$compare" "$dir/$label-c$chunks.npy" "$dir/cpu.npy" 1e-2 || status=1
    done
    if [ -f "$dir/$label-c1.npy" ] && [ -f "$dir/$label-c4.npy" ]; then
        printf '%s chunks 4 vs chunks 1: ' "$label"
        "$compare" "$dir/$label-c4.npy" "$dir/$label-c1.npy" 1e-3 || status=1
    fi
done
exit $status
