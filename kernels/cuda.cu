/* cuda: the GPU versions of the MoE stages (see kernels.h, "GPU kernels"). Each takes the arguments of
 * its CPU reference in kernels/cpu.c, on device pointers, with bf16 wherever the data is bf16, and
 * accumulates in fp32. Every launch is checked (cudaGetLastError) and turned into a moe_status_t.
 *
 * Assumptions: rows are contiguous (leading dimension = width); row counts fit an int; n == 0 is a
 * no-op everywhere. Dense GEMMs (router, shared experts, the per-expert loop) go through cuBLAS
 * (moe_gemm_*): bf16 operands, fp32 accumulation (CUBLAS_COMPUTE_32F); the routed experts' grouped
 * GEMMs through kernels/grouped_gemm.cu (moe_expert_ffn_cuda chooses; docs/cuda.md says when). */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <float.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/dispatch_rules.h"
#include "kernels/kernels.h"

#define MOE_ROUTER_MAX_EXPERTS 512
#define MOE_ROUTER_MAX_GROUPS 64
#define MOE_ROUTER_MAX_TOPK 32

typedef __nv_bfloat16 bf16;

/* After a launch: the launch error as a status, logged once. */
static moe_status_t launch_status(const char *what, const char *file, int line)
{
    cudaError_t err = cudaGetLastError();
    if (err == cudaSuccess) return MOE_STATUS_OK;
    moe_log_write(MOE_LOG_ERROR, file, line, "%s: %s", what, cudaGetErrorString(err));
    return MOE_STATUS_CUDA_ERROR;
}
#define LAUNCHED(what) launch_status(what, __FILE__, __LINE__)

static unsigned blocks_for(size_t n, unsigned threads)
{
    size_t b = (n + threads - 1) / threads;
    return (unsigned)(b > 65535u * 8 ? 65535u * 8 : b);
}

/* ---------------------------------------------------------------- conversions, fill */

__global__ void k_f32_to_bf16(const float *x, size_t n, bf16 *y)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        y[i] = __float2bfloat16(x[i]);
}

moe_status_t moe_f32_to_bf16_cuda(const float *x, size_t n, moe_bf16_t *y, cudaStream_t s)
{
    if (n == 0) return MOE_STATUS_OK;
    k_f32_to_bf16<<<blocks_for(n, 256), 256, 0, s>>>(x, n, (bf16 *)y);
    return LAUNCHED("f32_to_bf16");
}

/* splitmix64 finaliser, as in common.c's moe_hash rounds (the values need not match the host's). */
__device__ static uint64_t mix64(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

__global__ void k_fill_random(uint64_t seed, size_t n, float scale, bf16 *y)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint64_t h = mix64(seed ^ mix64(i));
        float u = (float)((double)(h >> 11) * (1.0 / 9007199254740992.0) * 2.0 - 1.0);
        y[i] = __float2bfloat16(u * scale);
    }
}

moe_status_t moe_fill_random_bf16_cuda(uint64_t seed, size_t n, float scale, moe_bf16_t *y,
                                                  cudaStream_t s)
{
    if (n == 0) return MOE_STATUS_OK;
    k_fill_random<<<blocks_for(n, 256), 256, 0, s>>>(seed, n, scale, (bf16 *)y);
    return LAUNCHED("fill_random");
}

/* ---------------------------------------------------------------- weights where they land */

__device__ static float raw_at(const void *src, moe_raw_t raw, size_t i)
{
    if (raw == MOE_RAW_F32) return ((const float *)src)[i];
    const uint16_t b = ((const uint16_t *)src)[i];
    if (raw == MOE_RAW_BF16) return __uint_as_float((uint32_t)b << 16);
    return __half2float(__ushort_as_half(b));
}

__device__ static void store_as(void *dst, bool to_bf16, size_t i, float v)
{
    if (to_bf16)
        ((bf16 *)dst)[i] = __float2bfloat16(v);
    else
        ((float *)dst)[i] = v;
}

__global__ void k_convert(const void *src, moe_raw_t raw, size_t n, void *dst, bool to_bf16)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        store_as(dst, to_bf16, i, raw_at(src, raw, i));
}

moe_status_t moe_convert_cuda(const void *src, moe_raw_t raw, size_t n, void *dst, bool to_bf16, cudaStream_t s)
{
    if (n == 0) return MOE_STATUS_OK;
    k_convert<<<blocks_for(n, 256), 256, 0, s>>>(src, raw, n, dst, to_bf16);
    return LAUNCHED("convert");
}

/* moe_seed_value with explicit round-to-nearest operations: no contraction into FMAs, so that the
 * bits are the host's. */
__device__ static float seed_value(const moe_seed_rule_t r, size_t i)
{
    const uint64_t h = moe_rules_hash(r.seed, (uint64_t)r.layer, (uint64_t)r.expert, (uint64_t)r.tensor, (uint64_t)i);
    const double unit = __dmul_rn((double)(h >> 11), 1.0 / 9007199254740992.0);
    const float u = (float)__dadd_rn(__dmul_rn(unit, 2.0), -1.0);
    const float v = __fdiv_rn(__fmul_rn(u, r.scale), __fsqrt_rn((float)r.fan_in));
    return r.offset == 0.0f && r.factor == 1.0f ? v : __fadd_rn(r.offset, __fmul_rn(r.factor, v));
}

__global__ void k_seed_fill(const moe_seed_rule_t r, size_t n, void *dst, bool to_bf16)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        store_as(dst, to_bf16, i, seed_value(r, i));
}

moe_status_t moe_seed_fill_cuda(const moe_seed_rule_t *rule, size_t n, void *dst, bool to_bf16, cudaStream_t s)
{
    if (n == 0) return MOE_STATUS_OK;
    k_seed_fill<<<blocks_for(n, 256), 256, 0, s>>>(*rule, n, dst, to_bf16);
    return LAUNCHED("seed_fill");
}

/* e4m3fn to float32 (io/dtype.c's moe_f8e4m3_to_f32, bit for bit). */
__device__ static float f8e4m3_to_f32(uint8_t b)
{
    const uint32_t sign = (uint32_t)(b & 0x80u) << 24, exp = (b >> 3) & 0xfu, mant = b & 0x7u;
    if (exp == 0xf && mant == 0x7) return __uint_as_float(sign | 0x7fc00000u);
    if (exp != 0) return __uint_as_float(sign | ((exp + 120) << 23) | (mant << 20));
    const float v = (float)mant * (1.0f / 512.0f);
    return sign ? -v : v;
}

__global__ void k_dequant_fp8(const uint8_t *src, int64_t rows, int64_t cols, const float *scale_inv, int block,
                              void *dst, bool to_bf16)
{
    const size_t n = (size_t)rows * cols;
    const int64_t scale_cols = (cols + block - 1) / block;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const int64_t r = (int64_t)(i / cols), c = (int64_t)(i % cols);
        store_as(dst, to_bf16, i, __fmul_rn(f8e4m3_to_f32(src[i]), scale_inv[(r / block) * scale_cols + c / block]));
    }
}

moe_status_t moe_dequant_fp8_cuda(const uint8_t *src, int64_t rows, int64_t cols, const float *scale_inv, int block,
                                  void *dst, bool to_bf16, cudaStream_t s)
{
    const size_t n = (size_t)rows * cols;
    if (n == 0) return MOE_STATUS_OK;
    k_dequant_fp8<<<blocks_for(n, 256), 256, 0, s>>>(src, rows, cols, scale_inv, block, dst, to_bf16);
    return LAUNCHED("dequant_fp8");
}

/* ---------------------------------------------------------------- rmsnorm */

/* Block-wide sum of one float per thread (blockDim.x a multiple of 32, at most 1024). */
__device__ static float block_sum(float v)
{
    __shared__ float part[32];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) part[warp] = v;
    __syncthreads();
    int warps = blockDim.x / 32;
    v = lane < warps ? part[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads(); /* part may be reused by a later call */
    return v;
}

__global__ void k_rmsnorm(const float *x, const float *w, int d, float eps, float *out_f32, bf16 *out)
{
    const float *xi = x + (size_t)blockIdx.x * d;
    float ss = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) ss += xi[j] * xi[j];
    ss = block_sum(ss);
    const float inv = rsqrtf(ss / d + eps);
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        float v = xi[j] * inv * w[j];
        if (out_f32) out_f32[(size_t)blockIdx.x * d + j] = v;
        if (out) out[(size_t)blockIdx.x * d + j] = __float2bfloat16(v);
    }
}

moe_status_t moe_rmsnorm_cuda(const float *x, const float *weight, int n, int d, float eps,
                                         float *out_f32, moe_bf16_t *out, cudaStream_t s)
{
    if (n == 0) return MOE_STATUS_OK;
    k_rmsnorm<<<n, 256, 0, s>>>(x, weight, d, eps, out_f32, (bf16 *)out);
    return LAUNCHED("rmsnorm");
}

/* ---------------------------------------------------------------- router */

moe_status_t moe_router_logits_cuda(cublasHandle_t cublas, const float *h,
                                               const float *w_router, int n, int d, int experts,
                                               float *logits)
{
    if (n == 0) return MOE_STATUS_OK;
    /* Row-major logits[n][E] = h[n][d] . w[E][d]^T; column-major: logits^T = w^T' ... i.e.
     * C(E x n) = op(A)=W^T(E x d) * B(d x n), W stored as column-major d x E. fp32 throughout (the
     * handle's math mode is left at the default: no TF32), so that the choice of experts matches
     * the CPU reference up to summation order. */
    const float one = 1.0f, zero = 0.0f;
    cublasStatus_t st = cublasSgemm(cublas, CUBLAS_OP_T, CUBLAS_OP_N, experts, n, d, &one, w_router, d, h,
                                    d, &zero, logits, experts);
    if (st != CUBLAS_STATUS_SUCCESS) {
        moe_error("router logits: cublasSgemm failed: %s", cublasGetStatusString(st));
        return MOE_STATUS_CUBLAS_ERROR;
    }
    return MOE_STATUS_OK;
}

#define TOPK_WARPS 8 /* tokens per block: one warp each */

/* The better of two (value, expert) candidates: the larger value, ties to the lower expert, as the
 * CPU reference's first-strict-maximum scan picks. */
__device__ static void better(float &v, int &e, float v2, int e2)
{
    if (v2 > v || (v2 == v && e2 >= 0 && (e < 0 || e2 < e))) v = v2, e = e2;
}

/* One warp per token: the CPU reference's algorithm with the same arithmetic in the same order where
 * order matters (the softmax sum in expert order, the weight sum in choice order, both by lane 0);
 * what is order-free (each expert's score, the maxima) spread over the lanes. Experts a token may not
 * choose (outside its kept groups, or chosen already) have their choice value set to -infinity, which
 * no finite score reaches. */
__global__ void k_router_topk(const float *logits, int n, moe_router_params_t p, int32_t *ids, float *weights)
{
    extern __shared__ float topk_smem[];
    __shared__ float group_score[TOPK_WARPS][MOE_ROUTER_MAX_GROUPS];
    __shared__ bool kept[TOPK_WARPS][MOE_ROUTER_MAX_GROUPS];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int t = blockIdx.x * TOPK_WARPS + warp;
    if (t >= n) return; /* a whole warp leaves: no later __syncwarp waits for it */
    const int E = p.experts, k = p.top_k;
    const int groups = p.groups > 1 ? p.groups : 1, per_group = E / groups;
    float *scores = topk_smem + (size_t)warp * 2 * E, *choice = scores + E;
    const float *lg = logits + (size_t)t * E;
    if (p.scoring == MOE_ROUTER_SOFTMAX) {
        float mx = -FLT_MAX;
        for (int e = lane; e < E; e += 32) mx = fmaxf(mx, lg[e]);
        for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        for (int e = lane; e < E; e += 32) scores[e] = expf(lg[e] - mx);
        __syncwarp();
        double sum = 0;
        if (lane == 0)
            for (int e = 0; e < E; e++) sum += scores[e];
        sum = __shfl_sync(0xffffffffu, sum, 0);
        for (int e = lane; e < E; e += 32) scores[e] = (float)(scores[e] / sum);
    } else {
        for (int e = lane; e < E; e += 32) scores[e] = 1.0f / (1.0f + expf(-lg[e]));
    }
    for (int e = lane; e < E; e += 32) choice[e] = scores[e] + (p.bias ? p.bias[e] : 0.0f);
    __syncwarp();
    if (groups > 1) {
        for (int g = lane; g < groups; g += 32) {
            const float *c = choice + g * per_group;
            float best = -FLT_MAX, second = -FLT_MAX;
            for (int j = 0; j < per_group; j++) {
                if (c[j] > best) {
                    second = best;
                    best = c[j];
                } else if (c[j] > second) {
                    second = c[j];
                }
            }
            group_score[warp][g] = p.scoring == MOE_ROUTER_SIGMOID && per_group > 1 ? best + second : best;
            kept[warp][g] = false;
        }
        __syncwarp();
        if (lane == 0)
            for (int i = 0; i < p.groups_kept; i++) { /* the first maximum among groups not kept yet */
                int best = -1;
                for (int g = 0; g < groups; g++)
                    if (!kept[warp][g] && (best < 0 || group_score[warp][g] > group_score[warp][best])) best = g;
                kept[warp][best] = true;
            }
        __syncwarp();
        for (int e = lane; e < E; e += 32)
            if (!kept[warp][e / per_group]) choice[e] = -INFINITY;
        __syncwarp();
    }
    double wsum = 0;
    float w[MOE_ROUTER_MAX_TOPK];
    int32_t *id = ids + (size_t)t * k;
    for (int i = 0; i < k; i++) {
        float v = -INFINITY;
        int e = -1;
        for (int x = lane; x < E; x += 32) better(v, e, choice[x], choice[x] > -INFINITY ? x : -1);
        for (int o = 16; o > 0; o >>= 1) {
            const float v2 = __shfl_xor_sync(0xffffffffu, v, o);
            const int e2 = __shfl_xor_sync(0xffffffffu, e, o);
            better(v, e, v2, e2);
        }
        __syncwarp();
        if (lane == 0) {
            choice[e] = -INFINITY;
            id[i] = e;
            w[i] = scores[e];
            wsum += w[i];
        }
        __syncwarp();
    }
    if (lane == 0) {
        const float norm = p.renormalize ? (float)(1.0 / (wsum + 1e-20)) : 1.0f;
        for (int i = 0; i < k; i++) weights[(size_t)t * k + i] = w[i] * norm * p.scaling;
    }
}

moe_status_t moe_router_topk_cuda(const float *logits, int n, const moe_router_params_t *params,
                                             int32_t *ids, float *weights, cudaStream_t s)
{
    if (n == 0) return MOE_STATUS_OK;
    if (params->experts > MOE_ROUTER_MAX_EXPERTS || params->groups > MOE_ROUTER_MAX_GROUPS ||
        params->top_k > params->experts) {
        moe_error("router top-k: %d experts, %d groups, top-%d: over the GPU kernel's limits (%d, %d)",
                  params->experts, params->groups, params->top_k, MOE_ROUTER_MAX_EXPERTS,
                  MOE_ROUTER_MAX_GROUPS);
        return MOE_STATUS_UNSUPPORTED;
    }
    if (params->top_k > MOE_ROUTER_MAX_TOPK) {
        moe_error("router top-k: top-%d is over the GPU kernel's %d", params->top_k, MOE_ROUTER_MAX_TOPK);
        return MOE_STATUS_UNSUPPORTED;
    }
    const size_t smem = sizeof(float) * 2 * (size_t)params->experts * TOPK_WARPS;
    k_router_topk<<<(n + TOPK_WARPS - 1) / TOPK_WARPS, 32 * TOPK_WARPS, smem, s>>>(logits, n, *params, ids, weights);
    return LAUNCHED("router_topk");
}

/* ---------------------------------------------------------------- SwiGLU */

__global__ void k_swiglu(const bf16 *gate_up, int n, int f, bf16 *act)
{
    const size_t total = (size_t)n * f;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / f, j = i % f;
        float g = __bfloat162float(gate_up[r * 2 * f + j]);
        float u = __bfloat162float(gate_up[r * 2 * f + f + j]);
        act[i] = __float2bfloat16(g / (1.0f + __expf(-g)) * u);
    }
}

/* f even: pairs of bf16. */
__global__ void k_swiglu2(const __nv_bfloat162 *gate_up, int n, int f2, __nv_bfloat162 *act)
{
    const size_t total = (size_t)n * f2;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / f2, j = i % f2;
        float2 g = __bfloat1622float2(gate_up[r * 2 * f2 + j]);
        float2 u = __bfloat1622float2(gate_up[r * 2 * f2 + f2 + j]);
        float2 a = make_float2(g.x / (1.0f + __expf(-g.x)) * u.x, g.y / (1.0f + __expf(-g.y)) * u.y);
        act[i] = __float22bfloat162_rn(a);
    }
}

/* f a multiple of 8: 16-byte loads and stores, 8 bf16 per thread per step. */
__global__ void k_swiglu8(const uint4 *gate_up, int n, int f8, uint4 *act)
{
    const size_t total = (size_t)n * f8;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / f8, j = i % f8;
        uint4 gv = gate_up[r * 2 * f8 + j], uv = gate_up[r * 2 * f8 + f8 + j], av;
        const __nv_bfloat162 *g2 = (const __nv_bfloat162 *)&gv, *u2 = (const __nv_bfloat162 *)&uv;
        __nv_bfloat162 *a2 = (__nv_bfloat162 *)&av;
#pragma unroll
        for (int q = 0; q < 4; q++) {
            float2 g = __bfloat1622float2(g2[q]), u = __bfloat1622float2(u2[q]);
            a2[q] = __float22bfloat162_rn(
                make_float2(g.x / (1.0f + __expf(-g.x)) * u.x, g.y / (1.0f + __expf(-g.y)) * u.y));
        }
        act[i] = av;
    }
}

moe_status_t moe_swiglu_cuda(const moe_bf16_t *gate_up, int n, int f, moe_bf16_t *act,
                                        cudaStream_t s)
{
    if (n == 0) return MOE_STATUS_OK;
    size_t total = (size_t)n * f;
    if (f % 8 == 0 && (uintptr_t)gate_up % 16 == 0 && (uintptr_t)act % 16 == 0)
        k_swiglu8<<<blocks_for(total / 8, 256), 256, 0, s>>>((const uint4 *)gate_up, n, f / 8, (uint4 *)act);
    else if (f % 2 == 0 && (uintptr_t)gate_up % 4 == 0 && (uintptr_t)act % 4 == 0)
        k_swiglu2<<<blocks_for(total / 2, 256), 256, 0, s>>>((const __nv_bfloat162 *)gate_up, n, f / 2,
                                                             (__nv_bfloat162 *)act);
    else
        k_swiglu<<<blocks_for(total, 256), 256, 0, s>>>((const bf16 *)gate_up, n, f, (bf16 *)act);
    return LAUNCHED("swiglu");
}

/* One block per row: out[t] += sigmoid(h[t] . gate) * y[t] (Qwen2-MoE's gated shared expert). */
__global__ void k_gated_add(const bf16 *y, const float *h, const float *gate, int d, float *out)
{
    const size_t t = blockIdx.x;
    float dot = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) dot += h[t * d + j] * gate[j];
    dot = block_sum(dot);
    const float g = 1.0f / (1.0f + expf(-dot));
    for (int j = threadIdx.x; j < d; j += blockDim.x) out[t * d + j] += g * __bfloat162float(y[t * d + j]);
}

moe_status_t moe_gated_add_cuda(const moe_bf16_t *y, const float *h, const float *gate, int n, int d, float *out,
                                cudaStream_t s)
{
    if (n == 0) return MOE_STATUS_OK;
    k_gated_add<<<n, 256, 0, s>>>((const bf16 *)y, h, gate, d, out);
    return LAUNCHED("gated_add");
}

__global__ void k_residual(float *x, float *out, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        x[i] += out[i];
        out[i] = 0.0f;
    }
}

moe_status_t moe_residual_cuda(float *x, float *out, size_t n, cudaStream_t s)
{
    if (n == 0) return MOE_STATUS_OK;
    k_residual<<<blocks_for(n, 256), 256, 0, s>>>(x, out, n);
    return LAUNCHED("residual");
}
/* ---------------------------------------------------------------- GEMMs */

#define GEMM_WORKSPACE (32u << 20)

struct moe_gemm_s {
    cublasHandle_t cublas;
    cudaStream_t stream;
    void *workspace;
};

static moe_status_t cublas_status(cublasStatus_t st, const char *what)
{
    if (st == CUBLAS_STATUS_SUCCESS) return MOE_STATUS_OK;
    moe_error("%s: %s", what, cublasGetStatusString(st));
    return MOE_STATUS_CUBLAS_ERROR;
}

moe_status_t moe_gemm_create(cudaStream_t stream, moe_gemm_h *out)
{
    moe_gemm_h g = (moe_gemm_h)calloc(1, sizeof *g);
    if (!g) return MOE_STATUS_NO_MEMORY;
    g->stream = stream;
    moe_status_t status = cublas_status(cublasCreate(&g->cublas), "cublasCreate");
    if (status == MOE_STATUS_OK) status = cublas_status(cublasSetStream(g->cublas, stream), "cublasSetStream");
    /* A workspace of our own, so that cuBLAS never allocates during a layer (or a graph capture). */
    const size_t ws = GEMM_WORKSPACE;
    if (status == MOE_STATUS_OK && cudaMalloc(&g->workspace, ws) != cudaSuccess) {
        moe_error("gemm: cudaMalloc of a %zu-byte cuBLAS workspace failed", ws);
        status = MOE_STATUS_CUDA_ERROR;
    }
    if (status == MOE_STATUS_OK)
        status = cublas_status(cublasSetWorkspace(g->cublas, g->workspace, ws), "cublasSetWorkspace");
    if (status != MOE_STATUS_OK) {
        moe_gemm_destroy(g);
        return status;
    }
    *out = g;
    return MOE_STATUS_OK;
}

void moe_gemm_destroy(moe_gemm_h g)
{
    if (!g) return;
    if (g->cublas) cublasDestroy(g->cublas);
    if (g->workspace) cudaFree(g->workspace);
    free(g);
}

cublasHandle_t moe_gemm_cublas(moe_gemm_h g) { return g->cublas; }

/* Row-major y[m][n_out] = x[m][k] . w[n_out][k]^T, i.e. column-major y^T = w^T' x^T:
 * C(n_out x m) = op_T(A: k x n_out) * B(k x m). */
moe_status_t moe_gemm_cuda(moe_gemm_h g, const moe_bf16_t *x, const moe_bf16_t *w, int m, int n_out, int k,
                           void *y, bool y_f32_accumulate)
{
    if (m == 0) return MOE_STATUS_OK;
    const float one = 1.0f, zero = 0.0f;
    return cublas_status(cublasGemmEx(g->cublas, CUBLAS_OP_T, CUBLAS_OP_N, n_out, m, k, &one, w, CUDA_R_16BF,
                                      k, x, CUDA_R_16BF, k, y_f32_accumulate ? &one : &zero, y,
                                      y_f32_accumulate ? CUDA_R_32F : CUDA_R_16BF, n_out, CUBLAS_COMPUTE_32F,
                                      CUBLAS_GEMM_DEFAULT),
                         "cublasGemmEx");
}

/* ---------------------------------------------------------------- SwiGLU experts */

/* The rule where nothing was timed (docs/cuda.md, G1 on an H200). */
moe_gemm_path_t moe_gemm_path_choose(double mean_rows, bool host_offsets)
{
    if (host_offsets && mean_rows >= 1024) return MOE_GEMM_PATH_CUBLAS;
    if (mean_rows > 96) return MOE_GEMM_PATH_128x256;
    if (mean_rows > 32) return MOE_GEMM_PATH_SWAP64;
    return MOE_GEMM_PATH_SWAP32;
}

moe_status_t moe_expert_ffn_cuda(moe_gemm_h g, moe_ggemm_h gg, moe_gemm_path_t path, const moe_expert_weights_t *w,
                                 const moe_bf16_t *x, const int *offset, const int *host_offset, int max_rows,
                                 moe_bf16_t *gate_up, moe_bf16_t *act, moe_bf16_t *y)
{
    moe_status_t status = MOE_STATUS_OK;
    const int d = w->d, f = w->f;
    if (w->slots == 0 || max_rows == 0) return MOE_STATUS_OK;
    if (path == MOE_GEMM_PATH_CUBLAS) {
        /* per slot: gate and up in one GEMM, SwiGLU, down (rows and weights known on the host) */
        for (int e = 0; e < w->slots && status == MOE_STATUS_OK; e++) {
            const int m = host_offset[e + 1] - host_offset[e];
            if (m == 0) continue;
            const size_t o = (size_t)host_offset[e];
            status = moe_gemm_cuda(g, x + o * d, w->host_gate_up[e], m, 2 * f, d, gate_up + o * 2 * f, false);
            if (status == MOE_STATUS_OK) status = moe_swiglu_cuda(gate_up + o * 2 * f, m, f, act + o * f, g->stream);
            if (status == MOE_STATUS_OK)
                status = moe_gemm_cuda(g, act + o * f, w->host_down[e], m, d, f, y + o * d, false);
        }
        return status;
    }
    /* grouped: gate, then up with the SwiGLU epilogue over the gate, then down; the gate lands in
     * the first max_rows x f of the gate_up scratch */
    const moe_gemm_path_t v = path;
    status = moe_ggemm_run(gg, v, x, w->gate_up, 0, offset, w->slots, max_rows, f, d, NULL, gate_up, g->stream);
    if (status == MOE_STATUS_OK)
        status = moe_ggemm_run(gg, v, x, w->gate_up, (size_t)f * d, offset, w->slots, max_rows, f, d, gate_up, act,
                               g->stream);
    if (status == MOE_STATUS_OK)
        status = moe_ggemm_run(gg, v, act, w->down, 0, offset, w->slots, max_rows, d, f, NULL, y, g->stream);
    return status;
}
