#!/usr/bin/env bash
# gpu_vs_cpu.sh MOERUN NPY_COMPARE CONFIG [--set KEY=VALUE | --plan PLAN ...]
# The cuda backend gives the cpu backend's output within bf16 error (relative GPU_TEST_TOL over the
# final hidden states, default 1e-2: router-driven cases flip near-tie choices; 3e-3 with routing
# given, as synthetic routing is): over NCCL at 1 rank and, on a machine with two GPUs, at 2 ranks
# (one GPU each), and over the host-staged MPI transport with ranks sharing one GPU. Every run
# covers the same global tokens. Exits 77 without a GPU.
#   GPU_TEST_MATRIX=short (default): chunks 2 over NCCL, chunks 1 over MPI at 2 ranks.
#   GPU_TEST_MATRIX=full: chunks 1, 2 and 4 over NCCL; fixed-capacity buffers with CUDA graphs (4
#     batches: the layers are captured in the second and replayed after); MPI at 2 and 4 ranks; and
#     chunks 2 and 4 equal chunks 1 within 1e-3.
#   GPU_TEST_NPS: the rank counts to run (a plan is made for one), default "1 2 4".
#   GPU_TEST_TOKENS: global tokens per batch (default 96).
set -euo pipefail
moerun=$1 compare=$2 config=$3
shift 3
extra=("$@")
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L 2>/dev/null | grep -q GPU; then
    echo "no GPU: skipped"
    exit 77
fi
gpus=$(nvidia-smi -L | grep -c GPU)
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 NCCL_NVLS_ENABLE=0
tokens=${GPU_TEST_TOKENS:-96} tol=${GPU_TEST_TOL:-1e-2} matrix=${GPU_TEST_MATRIX:-short} nps=${GPU_TEST_NPS:-1 2 4}
batches=2
[ "$matrix" = full ] && batches=4
common=(--set run.batches=$batches --set outputs.progress=false)
ref_np=${nps%% *} # the cpu reference at the first rank count (a plan fixes it)
timeout 120 mpirun --oversubscribe -np "$ref_np" "$moerun" infer -c "$config" "${extra[@]}" "${common[@]}" \
    --set run.tokens_per_rank=$((tokens / ref_np)) --set run.backend=cpu --set run.transport=mpi \
    --output "$dir/cpu.npy" >/dev/null
status=0
run() { # label np transport chunks [sets...]
    local label=$1 np=$2 transport=$3 chunks=$4
    shift 4
    if ! timeout 120 mpirun --oversubscribe -np "$np" "$moerun" infer -c "$config" "${extra[@]}" "${common[@]}" \
        --set run.tokens_per_rank=$((tokens / np)) --set run.backend=cuda --set run.transport="$transport" \
        --set run.chunks="$chunks" "$@" --output "$dir/$label.npy" >"$dir/$label.log" 2>&1; then
        echo "$label: moerun failed"; cat "$dir/$label.log"; status=1; return 1
    fi
    printf '%s vs cpu: ' "$label"
    "$compare" "$dir/$label.npy" "$dir/cpu.npy" "$tol" || status=1
}
has_np() { [[ " $nps " == *" $1 "* ]]; }
nccl_chunks="2" mpi_runs="2:1"
[ "$matrix" = full ] && nccl_chunks="1 2 4" mpi_runs="2:1 2:4 4:4"
for np in 1 2; do
    has_np $np || continue
    [ $np -le "$gpus" ] || { echo "nccl np $np: skipped ($gpus GPU)"; continue; }
    for c in $nccl_chunks; do run "nccl-np$np-c$c" $np nccl $c --set run.buffers=counted || true; done
    if [ "$matrix" = full ]; then
        run "nccl-np$np-fixed-graphs" $np nccl 1 --set run.buffers=fixed --set run.graphs=on || true
        run "nccl-np$np-fixed-c2" $np nccl 2 --set run.buffers=fixed --set run.graphs=off || true
        for c in 2 4; do
            if [ -f "$dir/nccl-np$np-c$c.npy" ] && [ -f "$dir/nccl-np$np-c1.npy" ]; then
                printf 'nccl-np%d chunks %d vs chunks 1: ' $np $c
                "$compare" "$dir/nccl-np$np-c$c.npy" "$dir/nccl-np$np-c1.npy" 1e-3 || status=1
            fi
        done
    fi
done
for spec in $mpi_runs; do
    np=${spec%%:*} c=${spec##*:}
    has_np "$np" || continue
    run "mpi-np$np-c$c" "$np" mpi "$c" || true
done
exit $status
