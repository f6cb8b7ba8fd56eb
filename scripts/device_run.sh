#!/usr/bin/env bash
# device_run.sh: the whole GPU workflow in one command, on the GPU machine (H100/H200, CUDA 13):
#   1. unpack the carried GLPK, libyaml and jansson packages (.deb/, from `apt-get download` on a
#      machine with network) into /opt/deps and point the compilers at them;
#   2. build with CUDA for sm_90a into build-gpu;
#   3. run the gpu test suite (kernels vs CPU references; cuda backend vs cpu backend at 1 rank over
#      NCCL and 2 and 4 ranks over host-staged MPI, C = 1 and 4);
#   4. benchmarks: G1 (bench_gemm_gpu: grouped expert GEMMs vs dense cuBLAS, copy bandwidth, dense
#      rate), G2 (moerun infer, Mixtral-8x7B layer at 8192 tokens on one rank), and the PyTorch peers
#      (scripts/bench_gpu.py);
#   5. print a table (scripts/device_report.py).
# `elastic` instead builds and runs scripts/bench_elastic.sh on the cuda backend (ranks share the GPU
# over the MPI transport: scale events between 2 and 4 ranks, and the relaunch baseline).
# Logs go to $OUT (the device tool's folder) or device-out/.
#   scripts/device_run.sh [all|test|bench|elastic]
set -uo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
out=${OUT:-device-out}
mkdir -p "$out"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
nvidia-smi -L || true

# ---- 1. dependencies
deps=/opt/deps
if [ -d .deb ]; then
    for f in .deb/*.deb; do dpkg -x "$f" "$deps"; done
    sed -i "s|^prefix=/usr\$|prefix=$deps/usr|" "$deps"/usr/lib/x86_64-linux-gnu/pkgconfig/*.pc
fi
lib=$deps/usr/lib/x86_64-linux-gnu
export PKG_CONFIG_PATH=$lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
export LIBRARY_PATH=$lib${LIBRARY_PATH:+:$LIBRARY_PATH}
export CPATH=$deps/usr/include${CPATH:+:$CPATH}
export LD_LIBRARY_PATH=$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PATH=/usr/local/cuda/bin:$PATH
# NCCL: wherever the image has it, visible where meson looks (/usr/local/cuda/lib64).
if ! ls /usr/local/cuda/lib64/libnccl.so >/dev/null 2>&1 && ! ls /usr/lib/x86_64-linux-gnu/libnccl.so >/dev/null 2>&1; then
    so=$(find /usr /opt -name 'libnccl.so*' 2>/dev/null | head -1)
    hdr=$(find /usr /opt -name nccl.h 2>/dev/null | head -1)
    echo "nccl: $so $hdr"
    [ -n "$so" ] && ln -sf "$so" /usr/local/cuda/lib64/libnccl.so && export LD_LIBRARY_PATH=$(dirname "$so"):$LD_LIBRARY_PATH
    [ -n "$hdr" ] && [ ! -f /usr/local/cuda/include/nccl.h ] && ln -sf "$hdr" /usr/local/cuda/include/nccl.h
fi

# ---- 2. build (CUTLASS's headers from the carried wheel in third_party/, or downloaded)
scripts/fetch_cutlass.sh >/dev/null || { echo "fetch_cutlass.sh failed"; exit 1; }
if [ "$what" = kernels ]; then
    # the kernels alone: their tests against the CPU references, G1, and the PyTorch peers
    if [ ! -f build-gpu/build.ninja ]; then
        meson setup build-gpu -Dcuda=enabled -Dcutlass=enabled -Dgpu_arch=90a -Dc_args="-I$deps/usr/include" \
            -Dc_link_args="-L$lib -Wl,-rpath,$lib" >"$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
    fi
    ninja -C build-gpu tests/kernels/test_kernels_cuda bench/bench_gemm_gpu >>"$out/build.log" 2>&1 ||
        { tail -60 "$out/build.log"; exit 1; }
    MOE_TEST_VERBOSE=1 build-gpu/tests/kernels/test_kernels_cuda >"$out/kernels_cuda.log" 2>&1
    echo "test_kernels_cuda: exit $?"; grep -E "failed|FAIL|checks" "$out/kernels_cuda.log" | head -30
    build-gpu/bench/bench_gemm_gpu ${REPS:-10} >"$out/g1.log" 2>&1; echo "bench_gemm_gpu: exit $?"; cat "$out/g1.log"
    timeout 300 python3 scripts/bench_gpu.py >"$out/torch.log" 2>&1; echo "bench_gpu.py: exit $?"; grep torch_g1 "$out/torch.log"
    ngpu=$(nvidia-smi -L | grep -c GPU)
    for p in 1 $([ "$ngpu" -ge 2 ] && echo 2); do
        for cfg in "configs/deepseek-v3.yaml 4096 128" "configs/mixtral-8x7b.yaml 8192"; do
            set -- $cfg
            timeout 300 python3 -m torch.distributed.run --standalone --nproc-per-node=$p scripts/bench_peers_ep.py \
                --config "$1" --tokens "${@:2}" >>"$out/peers.log" 2>&1 || echo "peers $p $1: failed"
        done
        timeout 200 python3 -m torch.distributed.run --standalone --nproc-per-node=$p scripts/bench_peers_ep.py \
            --config configs/deepseek-v3.yaml --tokens 4096 --no-shared >>"$out/peers.log" 2>&1
    done
    grep -E "peer_ep|Error|error" "$out/peers.log" | head -20
    exit 0
fi
if [ ! -f build-gpu/build.ninja ]; then
    meson setup build-gpu -Dcuda=enabled -Dgpu_arch=90a -Dc_args="-I$deps/usr/include" \
        -Dc_link_args="-L$lib -Wl,-rpath,$lib" >"$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
fi
if ! ninja -C build-gpu >>"$out/build.log" 2>&1; then tail -60 "$out/build.log"; exit 1; fi
grep -i "warning" "$out/build.log" | head -20
echo "build: ok ($(grep -ci warning "$out/build.log") warning lines)"

if [ "$what" = elastic ]; then
    CONFIG=${CONFIG:-configs/bench-mid.yaml} EXTRA_SETS="run.backend=cuda ${EXTRA_SETS:-}" \
        scripts/bench_elastic.sh build-gpu/launch/moerun "$out/elastic"
    exit $?
fi

# ---- 3. tests
if [ "$what" != bench ]; then
    MOE_TEST_VERBOSE=1 build-gpu/tests/kernels/test_kernels_cuda >"$out/kernels_cuda.log" 2>&1
    echo "test_kernels_cuda: exit $?"
    meson test -C build-gpu --suite gpu --print-errorlogs --num-processes 1 >"$out/gpu_tests.log" 2>&1
    grep -E "^ *[0-9]+/[0-9]+ |^(Ok|Fail|Skipped|Timeout):" "$out/gpu_tests.log"
    grep -E "^>>>|vs cpu|vs chunks" build-gpu/meson-logs/testlog.txt | sed 's/^>>>.*configs\/tiny.yaml/case:/' >"$out/e2e.log"
    # which expert path the uniform-routing case took (padded strided-batched or per-expert)
    mpirun -np 1 build-gpu/launch/moerun infer -c configs/tiny.yaml --set routing.source=synthetic \
        --set routing.skew=0 --set routing.affinity=0 --set run.tokens_per_rank=768 --set run.batches=1 \
        --set run.backend=cuda --set run.transport=nccl --set outputs.progress=false --log-level debug 2>&1 |
        grep -o "rows to [^;]*" | sort | uniq -c >>"$out/e2e.log"
fi

# ---- 4. benchmarks
if [ "$what" != test ]; then
    build-gpu/bench/bench_gemm_gpu 20 >"$out/g1.log" 2>&1
    echo "bench_gemm_gpu: exit $?"
    for chunks in 1 4; do
        timeout 300 mpirun -np 1 build-gpu/launch/moerun infer -c configs/mixtral-8x7b.yaml \
            --set model.layers=1 --set run.tokens_per_rank=8192 --set run.backend=cuda \
            --set run.transport=nccl --set run.chunks=$chunks --set run.batches=16 \
            --set run.warmup_batches=6 --set outputs.progress=false \
            --metrics "$out/g2_c$chunks.jsonl" >"/tmp/g2_c$chunks.log" 2>&1
        echo "g2 chunks $chunks: exit $?"
    done
    # where the host time of the experts stage goes (debug timers), one G2 batch set
    timeout 300 mpirun -np 1 build-gpu/launch/moerun infer -c configs/mixtral-8x7b.yaml \
        --set model.layers=1 --set run.tokens_per_rank=8192 --set run.backend=cuda \
        --set run.transport=nccl --set run.batches=4 --set outputs.progress=false --log-level debug 2>&1 |
        grep -E "cuda experts|layers " >>"$out/e2e.log"
    timeout 400 python3 scripts/bench_gpu.py >"$out/torch.log" 2>&1
    echo "bench_gpu.py: exit $?"
fi

# ---- 5. report
python3 scripts/device_report.py "$out"
