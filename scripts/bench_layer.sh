#!/usr/bin/env bash
# bench_layer.sh: one MoE layer on 1 and 2 GPUs (one GPU per rank, NCCL), moerun beside the plain
# PyTorch expert-parallel layer (scripts/bench_peers_ep.py) on the same shapes, in one run; then the
# dispatch + combine alone (`moerun bench a2a`) beside ncclAlltoAll. Logs and metrics go to OUT; the
# table is scripts/bench_layer_report.py's.
#
#   scripts/bench_layer.sh [MOERUN] [OUT]
#     GPUS     the GPU counts to run (default: 1, and 2 where there are two)
#     BATCHES  per run (default 10, the first 4 warm-up)
#     CHUNKS   the chunk counts on two GPUs (default "1 2 4")
#     ONLY     an extended regular expression: only the cases whose label matches (e.g. '^(peer-)?dsv3-np2'
#              or 'a2a'); default all
#
# Cases (shapes from configs/, one layer, seeded weights, routing by the router):
#   dsv3       DeepSeek-V3, 4096 tokens per GPU, with the shared expert, and without it (the peer's
#              form); chunks 1 on one GPU, 1, 2, 4 on two (counted buffers);
#   dsv3-narrow  two GPUs, d_ff 128 and no shared expert: communication 40% or more of the layer (the
#              overlap case);
#   mixtral    Mixtral-8x7B, 8192 tokens per GPU, chunks as dsv3;
#   decode     DeepSeek-V3 at 128 tokens per GPU: the low-latency path (fixed buffers, CUDA graphs),
#              and the same without graphs, for its stage times;
#   dsv3-hier  two GPUs as two simulated nodes of one (run.ranks_per_node=1), hierarchical dispatch,
#              chunks 1: its cost against dsv3's flat layer (with a GPU per node it only adds the relay
#              step a rank does for itself; the saving needs nodes of several GPUs).
# The chunks-1 runs of dsv3 and dsv3-narrow also write a Chrome trace (their communication and compute
# measured apart, on one timeline).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
M=${1:-$ROOT/build/launch/moerun}
OUT=${2:-bench-layer}
BATCHES=${BATCHES:-10}
mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
ngpu=$(nvidia-smi -L 2>/dev/null | grep -c GPU)
GPUS=${GPUS:-1 $([ "$ngpu" -ge 2 ] && echo 2)}

wanted() { [[ -z "${ONLY:-}" || "$1" =~ $ONLY ]]; }
moe() { # label np config tokens [sets...]
    local label=$1 np=$2 config=$3 tokens=$4
    shift 4
    wanted "$label" || return 0
    echo "== $label" >&2
    timeout 150 mpirun --oversubscribe -np "$np" "$M" infer -c "$ROOT/configs/$config.yaml" --set model.layers=1 \
        --set run.tokens_per_rank="$tokens" --set run.backend=cuda --set run.transport=nccl \
        --set run.batches="$BATCHES" --set run.warmup_batches=4 --set outputs.progress=false \
        --log-level info --metrics "$OUT/$label.jsonl" "$@" >"$OUT/$label.log" 2>&1 || echo "$label: exit $?" >&2
}
peer() { # label np config tokens [flags...]
    local label=$1 np=$2 config=$3 tokens=$4
    shift 4
    wanted "$label" || return 0
    echo "== $label" >&2
    timeout 150 python3 -m torch.distributed.run --standalone --nproc-per-node="$np" "$ROOT/scripts/bench_peers_ep.py" \
        --config "$ROOT/configs/$config.yaml" --tokens "$tokens" "$@" >"$OUT/$label.log" 2>&1 || echo "$label: exit $?" >&2
}

for np in $GPUS; do
    # one GPU: nothing to overlap, chunks 1; two: the chunk counts
    chunk_list="1"
    [ "$np" -ge 2 ] && chunk_list=${CHUNKS:-1 2 4}
    for c in $chunk_list; do
        trace=() narrow_trace=()
        [ $c -eq 1 ] && trace=(--trace-events "$OUT/trace-dsv3-np$np-c1.json") &&
            narrow_trace=(--trace-events "$OUT/trace-dsv3-narrow-np$np-c1.json")
        moe "dsv3-np$np-c$c" "$np" deepseek-v3 4096 --set run.chunks=$c --set run.buffers=counted "${trace[@]}"
        moe "mixtral-np$np-c$c" "$np" mixtral-8x7b 8192 --set run.chunks=$c --set run.buffers=counted
        [ "$np" -ge 2 ] && moe "dsv3-narrow-np$np-c$c" "$np" deepseek-v3 4096 --set run.chunks=$c \
            --set run.buffers=counted --set model.d_ff=128 --set model.shared_experts=0 "${narrow_trace[@]}"
    done
    [ "$np" -ge 2 ] && moe "dsv3-hier-np$np-c1" "$np" deepseek-v3 4096 --set run.chunks=1 --set run.buffers=counted \
        --set run.dispatch=hierarchical --set run.ranks_per_node=1
    moe "dsv3-noshared-np$np-c1" "$np" deepseek-v3 4096 --set run.chunks=1 --set run.buffers=counted \
        --set model.shared_experts=0
    [ "$np" -ge 2 ] && moe "dsv3-noshared-np$np-c2" "$np" deepseek-v3 4096 --set run.chunks=2 --set run.buffers=counted \
        --set model.shared_experts=0
    moe "decode-np$np-graphs" "$np" deepseek-v3 128 --set run.buffers=fixed --set run.graphs=on --set run.chunks=1 \
        --set run.batches=40 --set run.warmup_batches=8
    moe "decode-np$np-nographs" "$np" deepseek-v3 128 --set run.buffers=fixed --set run.graphs=off --set run.chunks=1 \
        --set run.batches=40 --set run.warmup_batches=8
    peer "peer-dsv3-np$np" "$np" deepseek-v3 4096 128
    peer "peer-dsv3-noshared-np$np" "$np" deepseek-v3 4096 --no-shared
    peer "peer-mixtral-np$np" "$np" mixtral-8x7b 8192
    [ "$np" -ge 2 ] && peer "peer-dsv3-narrow-np$np" "$np" deepseek-v3 4096 --d-ff 128 --no-shared
done
if [ "$ngpu" -ge 2 ] && wanted a2a; then
    echo "== a2a" >&2
    timeout 300 mpirun --oversubscribe -np 2 "$M" bench a2a --rows 128,512,1024,2048,4096,8192 \
        >"$OUT/a2a.log" 2>&1 || echo "a2a: exit $?" >&2
fi
python3 "$ROOT/scripts/bench_layer_report.py" "$OUT"
