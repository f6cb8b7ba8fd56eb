#!/usr/bin/env bash
# liveness.sh MOERUN SRCDIR [gpu]: a rank stopped with SIGSTOP does not hang the job (comm.h, liveness).
#   1. `infer` at 4 ranks, rank 2 stopped in the middle of the batches; again with hierarchical
#      dispatch (2 simulated nodes), rank 1 stopped;
#   2. `elastic` at 4 ranks, rank 3 stopped during a scale event 2 -> 4 (after its decision).
# Each time the job must exit non-zero within run.timeout + 10 s of the stop, with a message naming
# the stopped rank and the step, and the other ranks must use little CPU while they wait; the
# aborted job leaves no temporary output behind.
#   3. a long, unbalanced batch is not a hang: ranks wait longer than run.timeout for a busy one
#      in every layer, and the run still ends well.
# Runs about 30 s; about 1 GB of memory for the third case.
# With `gpu` (the gpu suite; exits 77 with fewer than two GPUs) instead: `infer` at 2 ranks on the cuda
# backend over NCCL, rank 1 stopped between batches. Its peer's GPU then waits for a transfer that
# never comes; its host, polling under the watch rather than blocking in CUDA, must end the job the
# same way, having aborted its NCCL communicator.
set -uo pipefail
moerun=$(realpath "$1") src=$(realpath "$2") mode=${3:-cpu}
np=4
if [ "$mode" = gpu ]; then
    gpus=$(nvidia-smi -L 2>/dev/null | grep -c GPU || true)
    if [ "${gpus:-0}" -lt 2 ]; then echo "fewer than two GPUs: skipped"; exit 77; fi
    np=2
    export NCCL_NVLS_ENABLE=0
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
dir=$(mktemp -d)
timeout_s=6
job=
cleanup() {
    [ -n "$job" ] && { pkill -KILL -P "$job" 2>/dev/null; kill -KILL "$job" 2>/dev/null; }
    rm -rf "$dir"
}
trap cleanup EXIT
failures=0
fail() { echo "FAIL $*"; failures=$((failures + 1)); }
tick=$(getconf CLK_TCK)

# pid of rank R among the children of the mpirun $job
rank_pid() {
    for c in $(pgrep -P "$job"); do
        if tr '\0' '\n' < "/proc/$c/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$1"; then
            echo "$c"; return
        fi
    done
}
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

# case NAME STOPPED_RANK READY_PATTERN MOERUN_ARGS...: start the job, stop the rank once the
# output matches READY_PATTERN, then check what happens.
case_run() {
    local name=$1 stopped=$2 ready=$3
    shift 3
    local out="$dir/$name.out"
    : > "$out"
    mpirun --oversubscribe -np $np "$moerun" "$@" --set run.timeout=$timeout_s --set outputs.progress=false \
        --log-level info > "$out" 2>&1 &
    job=$!
    local t=0
    until grep -qE "$ready" "$out"; do
        sleep 0.05; t=$((t + 1))
        if [ $t -gt 1200 ] || ! kill -0 "$job" 2>/dev/null; then
            fail "$name: the job did not reach '$ready'"; tail -5 "$out"; job=; return
        fi
    done
    sleep "${STOP_DELAY:-0}"
    local pid
    pid=$(rank_pid "$stopped")
    [ -n "$pid" ] || { fail "$name: no process for rank $stopped"; return; }
    kill -STOP "$pid"
    local t_stop others=() o
    t_stop=$(now_ms)
    for r in $(seq 0 $((np - 1))); do [ "$r" = "$stopped" ] || others+=("$(rank_pid "$r")"); done
    # CPU of the others while they wait, from 1 s after the stop to 1 s before the deadline
    sleep 1
    local before=() after=() i
    for o in "${others[@]}"; do before+=("$(cpu_ticks "$o")"); done
    local window=$((timeout_s - 2))
    sleep "$window"
    for o in "${others[@]}"; do after+=("$(cpu_ticks "$o")"); done
    local limit=$(( (timeout_s + 10) * 1000 ))
    while kill -0 "$job" 2>/dev/null && [ $(( $(now_ms) - t_stop )) -le $((limit + 5000)) ]; do
        sleep 0.1
    done
    local took=$(( $(now_ms) - t_stop ))
    if kill -0 "$job" 2>/dev/null; then
        fail "$name: still running $took ms after rank $stopped stopped (hang)"
        kill -KILL "$pid" 2>/dev/null; pkill -KILL -P "$job"; kill -KILL "$job"; wait "$job"; job=; return
    fi
    wait "$job"; local rc=$?
    job=
    kill -KILL "$pid" 2>/dev/null
    [ "$rc" -ne 0 ] || fail "$name: exited 0"
    [ "$took" -le "$limit" ] || fail "$name: ended $took ms after the stop (limit $limit ms)"
    grep -E "timeout: rank $stopped has not answered" "$out" > "$dir/msg" ||
        { fail "$name: no message naming rank $stopped:"; grep -iE "error|timeout" "$out" | head -5; }
    for i in "${!others[@]}"; do
        local used=$(( ${after[$i]} - ${before[$i]} ))
        # at most 10% of one core over the window
        if [ $((used * 10)) -gt $((window * tick)) ]; then
            fail "$name: a waiting rank used $used ticks of CPU in $window s"
        fi
        echo "     $name: waiting rank ${others[$i]}: $used CPU ticks in $window s (limit $((window * tick / 10)))"
    done
    echo "ok   $name: exit $rc $took ms after the stop: $(head -1 "$dir/msg" | cut -c1-300)"
}

tiny="$src/configs/tiny.yaml"
if [ "$mode" = gpu ]; then
    # 16 layers of 1024 x 4096 experts at 8192 tokens a rank: the host waits for its GPU in every layer
    # (the counts), so that the stop may find rank 0 there, its GPU waiting for rank 1's transfers; the
    # message says which wait it was
    STOP_DELAY=3 case_run gpu-infer-sigstop 1 "rank 1: .* bytes of weights" infer -c "$tiny" --set run.batches=1000000 \
        --set run.backend=cuda --set run.transport=nccl --set run.tokens_per_rank=8192 --set model.d_model=1024 \
        --set model.d_ff=4096 --set model.layers=16
    grep -qE "NCCL: rank 0's communicator of 2 ranks aborted" "$dir/gpu-infer-sigstop.out" ||
        fail "gpu-infer-sigstop: rank 0 did not abort its NCCL communicator"
    grep -E "NCCL: rank 0's|timeout: rank 1" "$dir/gpu-infer-sigstop.out" | cut -c1-200
    echo "liveness: $failures failures"
    [ $failures -eq 0 ]
    exit
fi
STOP_DELAY=1 case_run infer-sigstop 2 "rank 3: .* bytes of weights" infer -c "$tiny" --set run.batches=1000000 \
    --output "$dir/out.npy"
left=$(find "$dir" -name 'out.npy*')
[ -z "$left" ] || fail "infer-sigstop: the aborted job left $left"
grep -qE "rank 2 has not answered .* while this rank was waiting in .*batch [0-9]+" "$dir/msg" ||
    fail "infer-sigstop: the message does not name the batch"

# The same with hierarchical dispatch (2 simulated nodes of 2): rank 1 stopped; the others wait for it in
# the first or the second hop, the counts exchange or the combines, and must not hang either.
STOP_DELAY=1 case_run infer-hierarchical-sigstop 1 "rank 3: .* bytes of weights" infer -c "$tiny" \
    --set run.batches=1000000 --set run.dispatch=hierarchical --set run.ranks_per_node=2 --set run.chunks=2

# A scale event 2 -> 4 at batch 4 spans several batches of about half a second; rank 3 (joining)
# is stopped right after the decision, while the experts are planned and move to it.
case_run elastic-sigstop 3 "scale 2 -> 4 ranks, planning" elastic -c "$tiny" --schedule 0:2,4:4 \
    --set run.batches=1000 --set run.tokens_per_rank=4096 --set model.d_ff=1024
grep -qE "rank 3 has not answered .*(plan|move|prepare|switch), batch [0-9]+" "$dir/msg" ||
    fail "elastic-sigstop: the message does not name the event's step"

# A plan that puts 61 of 64 experts on rank 0: the others wait for it in both layers, nearly twice
# run.timeout, while it computes (and answers between experts, every few tens of ms); the run must
# end well. (Tested under three such jobs at once on two cores.)
plan="$dir/busy0.yaml"
{
    printf 'format: 1\nlayers: 2\nexperts: 64\nranks: 4\nranks_per_node: 4\nplacement:\n'
    for l in 0 1; do
        printf '  - layer: %d\n    ranks:\n      - {rank: 0, experts: [%s]}\n' $l "$(seq -s ', ' 0 60)"
        printf '      - {rank: 1, experts: [61]}\n      - {rank: 2, experts: [62]}\n      - {rank: 3, experts: [63]}\n'
    done
} > "$plan"
out="$dir/long.out"
mpirun --oversubscribe -np 4 "$moerun" infer -c "$tiny" --set model.experts=64 --set model.layers=2 \
    --plan "$plan" --set run.batches=1 --set run.tokens_per_rank=49152 --set model.d_ff=2048 \
    --set run.chunks=1 --set run.timeout=2 --set outputs.progress=false --log-level info > "$out" 2>&1
rc=$?
long=$(grep -c "longer than run.timeout (2 s), while waiting in all-to-all-v" "$out")
if [ $rc -ne 0 ]; then
    fail "long-waits: exit $rc"; grep -E "error" "$out" | head -3
elif [ "$long" -lt 3 ]; then
    fail "long-waits: only $long all-to-all waits were longer than run.timeout (the case does not test it)"
else
    echo "ok   long-waits: exit 0 after $long waits longer than run.timeout, e.g. $(grep -m1 "kept answering" "$out" | cut -c1-130)"
fi

echo "liveness: $failures failures"
[ $failures -eq 0 ]
