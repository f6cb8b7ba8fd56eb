#!/usr/bin/env bash
# device_run.sh: the GPU workflow, one command per step, on the GPU machine (H100/H200, CUDA 13):
#   deps      unpack the carried GLPK, libyaml and jansson packages (.deb/, from `apt-get download`
#             on a machine with network) into /opt/deps; CUTLASS's headers from the carried wheel in
#             third_party/ (scripts/fetch_cutlass.sh);
#   build     meson with CUDA for sm_90a into build-gpu (kept while the machine is);
#   test      every GPU kernel against its CPU reference, and the gpu suite (cuda vs cpu backend over
#             NCCL at 1 and 2 GPUs and host-staged MPI, graphs, replicas, checkpoints, elastic);
#   fixture   the FP8 checkpoint fixture (scripts/hf_reference.py ... deepseek_v3_fp8, needs torch
#             and transformers) into OUT/fixture/;
#   bench     G1 (grouped expert GEMMs, every path, vs dense cuBLAS; the card's two ceilings) and the
#             PyTorch peers of G1; one MoE layer against the PyTorch EP layer at 1 and 2 GPUs, decode,
#             overlap and dispatch + combine vs ncclAlltoAll (scripts/bench_layer.sh); DeepSeek-V3 with
#             as many layers as fit (memory, start-up); QUICK=1: the layer table only (chunks 1, 2);
#   elastic   scripts/bench_elastic.sh on two GPUs over NCCL: bench-mid 1 -> 2 -> 1 as issue 13 ran it,
#             and DeepSeek-V3 with 3 layers; the point-to-point rate beside them.
# Logs go to $OUT (the device tool's folder) or device-out/.
#   scripts/device_run.sh [deps|build|test|fixture|bench|elastic|all]...   (build implies deps)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-device-out}
mkdir -p "$out"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 PYTHONUNBUFFERED=1
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(all)
[ "${steps[*]}" = all ] && steps=(build test fixture bench)
deps=/opt/deps
lib=$deps/usr/lib/x86_64-linux-gnu

step_deps() {
    nvidia-smi -L || true
    if [ -d .deb ] && [ ! -f "$deps/.done" ]; then
        for f in .deb/*.deb; do dpkg -x "$f" "$deps"; done
        sed -i "s|^prefix=/usr\$|prefix=$deps/usr|" "$lib"/pkgconfig/*.pc
        touch "$deps/.done"
    fi
    # NCCL: wherever the image has it, visible where meson looks (/usr/local/cuda/lib64).
    if ! ls /usr/local/cuda/lib64/libnccl.so >/dev/null 2>&1 && ! ls /usr/lib/x86_64-linux-gnu/libnccl.so >/dev/null 2>&1; then
        so=$(find /usr /opt -name 'libnccl.so*' 2>/dev/null | head -1)
        hdr=$(find /usr /opt -name nccl.h 2>/dev/null | head -1)
        echo "nccl: $so $hdr"
        [ -n "$so" ] && ln -sf "$so" /usr/local/cuda/lib64/libnccl.so
        [ -n "$hdr" ] && [ ! -f /usr/local/cuda/include/nccl.h ] && ln -sf "$hdr" /usr/local/cuda/include/nccl.h
    fi
    scripts/fetch_cutlass.sh >/dev/null || { echo "fetch_cutlass.sh failed"; return 1; }
}
export PKG_CONFIG_PATH=$lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
export LIBRARY_PATH=$lib${LIBRARY_PATH:+:$LIBRARY_PATH}
export CPATH=$deps/usr/include${CPATH:+:$CPATH}
export LD_LIBRARY_PATH=$lib:$(dirname "$(find /usr /opt -name 'libnccl.so*' 2>/dev/null | head -1)" 2>/dev/null)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PATH=/usr/local/cuda/bin:$PATH

step_build() {
    step_deps || return 1
    if [ ! -f build-gpu/build.ninja ]; then
        meson setup build-gpu -Dcuda=enabled -Dcutlass=enabled -Dgpu_arch=90a -Dc_args="-I$deps/usr/include" \
            -Dc_link_args="-L$lib -Wl,-rpath,$lib" >"$out/build.log" 2>&1 || { tail -40 "$out/build.log"; return 1; }
    fi
    local t0=$SECONDS
    if ! ninja -C build-gpu >>"$out/build.log" 2>&1; then tail -60 "$out/build.log"; return 1; fi
    grep -i "warning" "$out/build.log" | head -20
    echo "build: ok in $((SECONDS - t0)) s ($(grep -ci warning "$out/build.log") warning lines)"
}

step_test() {
    MOE_TEST_VERBOSE=1 build-gpu/tests/kernels/test_kernels_cuda >"$out/kernels_cuda.log" 2>&1
    echo "test_kernels_cuda: exit $? ($(tail -1 "$out/kernels_cuda.log"))"
    grep -E "failed|FAIL" "$out/kernels_cuda.log" | head -20
    meson test -C build-gpu --suite gpu --print-errorlogs --num-processes 1 >"$out/gpu_tests.log" 2>&1
    grep -E "^ *[0-9]+/[0-9]+ |^(Ok|Fail|Skipped|Timeout):" "$out/gpu_tests.log"
    grep -E "vs cpu|vs chunks|moerun failed" build-gpu/meson-logs/testlog.txt >"$out/e2e.log"
    grep -E "vs cpu" "$out/e2e.log" | awk '{for (i = 1; i <= NF; i++) if ($i == "rel") print $(i+2)}' |
        sort -g | tail -1 | sed 's/^/worst gpu-vs-cpu relative error: /'
}

step_fixture() {
    mkdir -p "$out/fixture"
    timeout 300 python3 scripts/hf_reference.py "$out/fixture" deepseek_v3_fp8 >"$out/fixture.log" 2>&1
    echo "hf_reference.py deepseek_v3_fp8: exit $?"; tail -3 "$out/fixture.log"
}

step_bench() {
    build-gpu/bench/bench_gemm_gpu ${REPS:-10} >"$out/g1.log" 2>&1
    echo "bench_gemm_gpu: exit $?"
    grep -E "^g1|tflops|copy" "$out/g1.log"
    mkdir -p "$out/layer"
    if [ -n "${QUICK:-}" ]; then # the layer table only, chunks 1 and 2
        CHUNKS="1 2" scripts/bench_layer.sh build-gpu/launch/moerun "$out/layer" 2>"$out/layer.err" | tee "$out/layer.md"
        return 0
    fi
    timeout 300 python3 scripts/bench_gpu.py >"$out/torch.log" 2>&1
    echo "bench_gpu.py: exit $?"; grep torch_g1 "$out/torch.log"
    scripts/bench_layer.sh build-gpu/launch/moerun "$out/layer" 2>"$out/layer.err" | tee "$out/layer.md"
    # DeepSeek-V3 with as many of its 58 layers as fit: seeded weights made on the device
    local ngpu
    ngpu=$(nvidia-smi -L | grep -c GPU)
    for spec in 1:5 $([ "$ngpu" -ge 2 ] && echo 2:11); do
        local np=${spec%%:*} layers=${spec##*:}
        timeout 300 mpirun -np "$np" build-gpu/launch/moerun infer -c configs/deepseek-v3.yaml \
            --set model.layers="$layers" --set run.tokens_per_rank=4096 --set run.backend=cuda \
            --set run.transport=nccl --set run.chunks=2 --set run.buffers=counted --set run.batches=4 \
            --set run.warmup_batches=1 --set outputs.progress=false \
            --metrics "$out/dsv3-full-np$np.jsonl" >"$out/dsv3-full-np$np.log" 2>&1
        echo "deepseek-v3 $layers layers on $np GPU: exit $?"
        grep -E "start-up|memory|tokens/s|layers " "$out/dsv3-full-np$np.log"
    done
}

step_elastic() {
    # on every GPU over NCCL: bench-mid as the issue ran it, and DeepSeek-V3 with 3 of its layers
    local n
    n=$(nvidia-smi -L | grep -c GPU)
    [ "$n" -ge 2 ] || { echo "elastic: needs two GPUs"; return 0; }
    NMAX=2 SCHEDULE=0:1,300:2,2000:1 BATCHES=3000 REPEATS=2 CONFIG=configs/bench-mid.yaml \
        EXTRA_SETS="run.backend=cuda run.transport=nccl" \
        scripts/bench_elastic.sh build-gpu/launch/moerun "$out/elastic-mid" 2>"$out/elastic-mid.err" ||
        tail -20 "$out/elastic-mid.err"
    NMAX=2 SCHEDULE=0:1,20:2,150:1 BATCHES=220 REPEATS=2 CONFIG=configs/deepseek-v3.yaml \
        EXTRA_SETS="run.backend=cuda run.transport=nccl model.layers=3 run.tokens_per_rank=4096 run.chunks=1" \
        scripts/bench_elastic.sh build-gpu/launch/moerun "$out/elastic-dsv3" 2>"$out/elastic-dsv3.err" ||
        tail -20 "$out/elastic-dsv3.err"
}

for s in "${steps[@]}"; do
    case $s in
    deps | build | test | fixture | bench | elastic) "step_$s" || { echo "device_run.sh: $s failed"; exit 1; } ;;
    *) echo "device_run.sh: unknown step '$s'"; exit 2 ;;
    esac
done
