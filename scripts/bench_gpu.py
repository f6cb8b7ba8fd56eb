#!/usr/bin/env python3
"""bench_gpu.py: the PyTorch peers of moerun's GPU benchmarks (run by scripts/device_run.sh).

G1 peer: torch._grouped_mm SwiGLU experts (gate/up, silu*up, down) on the G1 shapes, with the dense
torch.mm SwiGLU at the same FLOPs in the same process. G2 peers at the Mixtral-8x7B layer, 8192
tokens: transformers' MixtralSparseMoeBlock (router, top-2, experts, combine) and the _grouped_mm
experts alone on balanced routing (16384 rows, 2048 per expert). Seeded random bf16 weights and inputs
of the moerun shapes (not the same values as moerun's seeded weights: timing does not depend on them,
so long as they are not zeros). Medians of CUDA-event timings after warm-up.

Prints `key value` lines like bench_gemm_gpu.
"""
import statistics
import sys

import torch


def timed(fn, reps=20, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def grouped_mm():
    f = getattr(torch.nn.functional, "grouped_mm", None)
    return f if f is not None else torch._grouped_mm


def g1(name, experts, tokens, d, f):
    dev, dt = "cuda", torch.bfloat16
    gen = torch.Generator(device=dev).manual_seed(experts * tokens)
    m = experts * tokens
    x = torch.randn(m, d, device=dev, dtype=dt, generator=gen)
    # nn.Linear layout [E, out, in]; _grouped_mm takes [E, in, out]: a transposed view.
    w_gu = (torch.randn(experts, 2 * f, d, device=dev, dtype=dt, generator=gen) / 64).transpose(1, 2)
    w_d = (torch.randn(experts, d, f, device=dev, dtype=dt, generator=gen) / 64).transpose(1, 2)
    offs = torch.arange(1, experts + 1, device=dev, dtype=torch.int32) * tokens
    gmm = grouped_mm()

    def grouped():
        gu = gmm(x, w_gu, offs=offs)
        act = torch.nn.functional.silu(gu[:, :f]) * gu[:, f:]
        return gmm(act, w_d, offs=offs)

    w0_gu, w0_d = w_gu[0], w_d[0]

    def dense():
        gu = x @ w0_gu
        act = torch.nn.functional.silu(gu[:, :f]) * gu[:, f:]
        return act @ w0_d

    flops = 2.0 * m * d * 3 * f
    t_dense = timed(dense)
    t_grouped = timed(grouped)
    print(f"torch_g1 {name} mode dense ms {t_dense:.4f} tflops {flops / t_dense / 1e9:.1f}")
    print(f"torch_g1 {name} mode grouped_mm ms {t_grouped:.4f} tflops {flops / t_grouped / 1e9:.1f} "
          f"of_dense {t_dense / t_grouped:.3f}")
    del x, w_gu, w_d
    torch.cuda.empty_cache()


def g2_transformers(tokens=8192):
    try:
        import transformers
        from transformers import MixtralConfig
        from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
    except Exception as e:  # noqa: BLE001
        print(f"torch_g2 transformers unavailable: {e!r}")
        return
    cfg = MixtralConfig(hidden_size=4096, intermediate_size=14336, num_local_experts=8,
                        num_experts_per_tok=2)
    with torch.device("cuda"):
        block = MixtralSparseMoeBlock(cfg).to(torch.bfloat16)
    gen = torch.Generator(device="cuda").manual_seed(7)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, device="cuda", dtype=p.dtype, generator=gen) * 0.02)
    x = torch.randn(1, tokens, 4096, device="cuda", dtype=torch.bfloat16, generator=gen)
    impl = getattr(cfg, "_experts_implementation", None)
    with torch.no_grad():
        t = timed(lambda: block(x), reps=10)
    print(f"torch_g2 transformers {transformers.__version__} MixtralSparseMoeBlock tokens {tokens} "
          f"ms {t:.3f} experts_implementation {impl}")
    del block
    torch.cuda.empty_cache()


def main():
    print(f"torch {torch.__version__} device {torch.cuda.get_device_name()}")
    for case in (("mixtral_8x2048", 8, 2048, 4096, 14336), ("dsv3_32x256", 32, 256, 7168, 2048),
                 ("dsv3_128x256", 128, 256, 7168, 2048), ("dsv3_32x64", 32, 64, 7168, 2048),
                 ("dsv3_128x8", 128, 8, 7168, 2048), ("dsv3_256x4", 256, 4, 7168, 2048)):
        try:
            g1(*case)
        except Exception as e:  # noqa: BLE001
            print(f"torch_g1 {case[0]} failed: {e!r}")
    try:
        g2_transformers()
    except Exception as e:  # noqa: BLE001
        print(f"torch_g2 transformers failed: {e!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
