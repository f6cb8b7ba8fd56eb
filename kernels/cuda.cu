/* cuda: the GPU versions of the MoE stages (see kernels.h, "GPU kernels"). Each takes the arguments of
 * its CPU reference in kernels/cpu.c, on device pointers, with bf16 wherever the data is bf16, and
 * accumulates in fp32. Every launch is checked (cudaGetLastError) and turned into a moe_status_t.
 *
 * Assumptions: rows are contiguous (leading dimension = width); row counts fit an int; n == 0 is a
 * no-op everywhere. The expert GEMMs go through cuBLAS (see moe_gemm_*): bf16 operands, fp32
 * accumulation (CUBLAS_COMPUTE_32F), either one cublasGemmEx per expert on the stream or one
 * cublasGemmGroupedBatchedEx call (docs/cuda.md records which is faster, and the default). */
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <float.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"

#define MOE_ROUTER_MAX_EXPERTS 512
#define MOE_ROUTER_MAX_GROUPS 64

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

__global__ void k_bf16_to_f32(const bf16 *x, size_t n, float *y)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        y[i] = __bfloat162float(x[i]);
}

moe_status_t moe_f32_to_bf16_cuda(const float *x, size_t n, moe_bf16_t *y, cudaStream_t s)
{
    if (n == 0) return MOE_STATUS_OK;
    k_f32_to_bf16<<<blocks_for(n, 256), 256, 0, s>>>(x, n, (bf16 *)y);
    return LAUNCHED("f32_to_bf16");
}

moe_status_t moe_bf16_to_f32_cuda(const moe_bf16_t *x, size_t n, float *y, cudaStream_t s)
{
    if (n == 0) return MOE_STATUS_OK;
    k_bf16_to_f32<<<blocks_for(n, 256), 256, 0, s>>>((const bf16 *)x, n, y);
    return LAUNCHED("bf16_to_f32");
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

/* Index of the largest allowed value (ties to the lower index), or -1. */
__device__ static int argmax_allowed(const float *v, const bool *allowed, int n)
{
    int best = -1;
    for (int i = 0; i < n; i++)
        if (allowed[i] && (best < 0 || v[i] > v[best])) best = i;
    return best;
}

/* One thread per token: the CPU reference's algorithm, step for step (same order of operations). */
__global__ void k_router_topk(const float *logits, int n, moe_router_params_t p, int32_t *ids,
                              float *weights)
{
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n) return;
    const int E = p.experts, k = p.top_k;
    const int groups = p.groups > 1 ? p.groups : 1, per_group = E / groups;
    float scores[MOE_ROUTER_MAX_EXPERTS], choice[MOE_ROUTER_MAX_EXPERTS];
    bool allowed[MOE_ROUTER_MAX_EXPERTS];
    float group_score[MOE_ROUTER_MAX_GROUPS];
    bool group_allowed[MOE_ROUTER_MAX_GROUPS], kept[MOE_ROUTER_MAX_GROUPS];
    const float *lg = logits + (size_t)t * E;
    if (p.scoring == MOE_ROUTER_SOFTMAX) {
        float mx = -FLT_MAX;
        for (int e = 0; e < E; e++) mx = fmaxf(mx, lg[e]);
        double sum = 0;
        for (int e = 0; e < E; e++) sum += scores[e] = expf(lg[e] - mx);
        for (int e = 0; e < E; e++) scores[e] = (float)(scores[e] / sum);
    } else {
        for (int e = 0; e < E; e++) scores[e] = 1.0f / (1.0f + expf(-lg[e]));
    }
    for (int e = 0; e < E; e++) {
        choice[e] = scores[e] + (p.bias ? p.bias[e] : 0.0f);
        allowed[e] = true;
    }
    if (groups > 1) {
        for (int g = 0; g < groups; g++) {
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
            group_score[g] = p.scoring == MOE_ROUTER_SIGMOID && per_group > 1 ? best + second : best;
            group_allowed[g] = true;
            kept[g] = false;
        }
        for (int i = 0; i < p.groups_kept; i++) {
            int g = argmax_allowed(group_score, group_allowed, groups);
            kept[g] = true;
            group_allowed[g] = false;
        }
        for (int e = 0; e < E; e++) allowed[e] = kept[e / per_group];
    }
    int32_t *id = ids + (size_t)t * k;
    float *w = weights + (size_t)t * k;
    double wsum = 0;
    for (int i = 0; i < k; i++) {
        int e = argmax_allowed(choice, allowed, E);
        allowed[e] = false;
        id[i] = e;
        w[i] = scores[e];
        wsum += w[i];
    }
    float norm = p.renormalize ? (float)(1.0 / (wsum + 1e-20)) : 1.0f;
    for (int i = 0; i < k; i++) w[i] = w[i] * norm * p.scaling;
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
    k_router_topk<<<(n + 127) / 128, 128, 0, s>>>(logits, n, *params, ids, weights);
    return LAUNCHED("router_topk");
}

/* ---------------------------------------------------------------- permute, combine */

/* One block per row; 16-byte copies when the row allows it. */
__global__ void k_gather_rows16(const uint4 *src, int words, const int32_t *rows, uint4 *dst)
{
    const int32_t r = rows[blockIdx.x];
    uint4 *o = dst + (size_t)blockIdx.x * words;
    if (r < 0) {
        for (int j = threadIdx.x; j < words; j += blockDim.x) o[j] = make_uint4(0, 0, 0, 0);
        return;
    }
    const uint4 *s = src + (size_t)r * words;
    for (int j = threadIdx.x; j < words; j += blockDim.x) o[j] = s[j];
}

__global__ void k_gather_rows2(const uint16_t *src, int d, const int32_t *rows, uint16_t *dst)
{
    const int32_t r = rows[blockIdx.x];
    uint16_t *o = dst + (size_t)blockIdx.x * d;
    for (int j = threadIdx.x; j < d; j += blockDim.x) o[j] = r < 0 ? 0 : src[(size_t)r * d + j];
}

moe_status_t moe_gather_rows_cuda(const moe_bf16_t *src, int d, const int32_t *rows, int n,
                                             moe_bf16_t *dst, cudaStream_t s)
{
    if (n == 0) return MOE_STATUS_OK;
    bool wide = d % 8 == 0 && ((uintptr_t)src % 16) == 0 && ((uintptr_t)dst % 16) == 0;
    if (wide) {
        int words = d / 8;
        k_gather_rows16<<<n, words < 256 ? (words + 31) / 32 * 32 : 256, 0, s>>>((const uint4 *)src, words,
                                                                              rows, (uint4 *)dst);
    } else {
        k_gather_rows2<<<n, 128, 0, s>>>(src, d, rows, dst);
    }
    return LAUNCHED("gather_rows");
}

/* Two bf16 per thread per step. */
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

/* One block per input row; fp32 atomics, since several rows may land on one output row. */
__global__ void k_scatter_add(const bf16 *y, const int32_t *rows, const float *weights, int d, float *out)
{
    const int i = blockIdx.x;
    const float w = weights ? weights[i] : 1.0f;
    const bf16 *yi = y + (size_t)i * d;
    float *o = out + (size_t)rows[i] * d;
    for (int j = threadIdx.x; j < d; j += blockDim.x) atomicAdd(&o[j], w * __bfloat162float(yi[j]));
}

moe_status_t moe_scatter_add_cuda(const moe_bf16_t *y, const int32_t *rows, const float *weights,
                                             int n, int d, float *out, cudaStream_t s)
{
    if (n == 0) return MOE_STATUS_OK;
    k_scatter_add<<<n, 256, 0, s>>>((const bf16 *)y, rows, weights, d, out);
    return LAUNCHED("scatter_add");
}

/* One block per output row: the weighted sum of its entries in fp32, rounded once to bf16. */
__global__ void k_combine8(const uint4 *y, const int *row_offset, const int32_t *pos, const float *weights,
                           int d8, uint4 *out)
{
    const int r = blockIdx.x, begin = row_offset[r], end = row_offset[r + 1];
    for (int j = threadIdx.x; j < d8; j += blockDim.x) {
        float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int i = begin; i < end; i++) {
            const float w = weights[i];
            uint4 v = y[(size_t)pos[i] * d8 + j];
            const __nv_bfloat162 *v2 = (const __nv_bfloat162 *)&v;
#pragma unroll
            for (int q = 0; q < 4; q++) {
                float2 f = __bfloat1622float2(v2[q]);
                acc[2 * q] += w * f.x;
                acc[2 * q + 1] += w * f.y;
            }
        }
        uint4 o;
        __nv_bfloat162 *o2 = (__nv_bfloat162 *)&o;
#pragma unroll
        for (int q = 0; q < 4; q++) o2[q] = __float22bfloat162_rn(make_float2(acc[2 * q], acc[2 * q + 1]));
        out[(size_t)r * d8 + j] = o;
    }
}

__global__ void k_combine(const bf16 *y, const int *row_offset, const int32_t *pos, const float *weights,
                          int d, bf16 *out)
{
    const int r = blockIdx.x, begin = row_offset[r], end = row_offset[r + 1];
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        float acc = 0.0f;
        for (int i = begin; i < end; i++) acc += weights[i] * __bfloat162float(y[(size_t)pos[i] * d + j]);
        out[(size_t)r * d + j] = __float2bfloat16(acc);
    }
}

moe_status_t moe_combine_rows_cuda(const moe_bf16_t *y, const int *row_offset, const int32_t *pos,
                                   const float *weights, int n_rows, int d, moe_bf16_t *out, cudaStream_t s)
{
    if (n_rows == 0) return MOE_STATUS_OK;
    if (d % 8 == 0 && (uintptr_t)y % 16 == 0 && (uintptr_t)out % 16 == 0) {
        int d8 = d / 8, threads = d8 < 128 ? (d8 + 31) / 32 * 32 : 128;
        k_combine8<<<n_rows, threads, 0, s>>>((const uint4 *)y, row_offset, pos, weights, d8, (uint4 *)out);
    } else {
        k_combine<<<n_rows, 128, 0, s>>>((const bf16 *)y, row_offset, pos, weights, d, (bf16 *)out);
    }
    return LAUNCHED("combine_rows");
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

#define GEMM_SIDE_STREAMS 4
#define GEMM_WORKSPACE (32u << 20)

struct moe_gemm_s {
    cublasHandle_t cublas;
    cudaStream_t stream;
    moe_gemm_mode_t mode;
    void *workspace;
    /* streams mode: side streams with a cuBLAS handle and workspace each, created on first use */
    int n_side;
    cudaStream_t side[GEMM_SIDE_STREAMS];
    cublasHandle_t side_cublas[GEMM_SIDE_STREAMS];
    void *side_workspace[GEMM_SIDE_STREAMS];
    cudaEvent_t fork, join[GEMM_SIDE_STREAMS];
    /* grouped mode: per-group arguments on the host, pointer arrays on the device */
    int cap;
    int *m, *nn, *kk, *lda, *ldb, *ldc, *size;
    cublasOperation_t *ta, *tb;
    float *alpha, *beta;
    const void **host_ptrs; /* [3][cap] */
    void **dev_ptrs;
};

static moe_status_t cublas_status(cublasStatus_t st, const char *what)
{
    if (st == CUBLAS_STATUS_SUCCESS) return MOE_STATUS_OK;
    moe_error("%s: %s", what, cublasGetStatusString(st));
    return MOE_STATUS_CUBLAS_ERROR;
}

static void gemm_free_groups(moe_gemm_h g)
{
    free(g->m), free(g->nn), free(g->kk), free(g->lda), free(g->ldb), free(g->ldc), free(g->size);
    free(g->ta), free(g->tb), free(g->alpha), free(g->beta), free(g->host_ptrs);
    if (g->dev_ptrs) cudaFree(g->dev_ptrs);
    g->m = g->nn = g->kk = g->lda = g->ldb = g->ldc = g->size = NULL;
    g->ta = g->tb = NULL;
    g->alpha = g->beta = NULL;
    g->host_ptrs = NULL;
    g->dev_ptrs = NULL;
    g->cap = 0;
}

moe_status_t moe_gemm_create(cudaStream_t stream, moe_gemm_mode_t mode, moe_gemm_h *out)
{
    moe_gemm_h g = (moe_gemm_h)calloc(1, sizeof *g);
    if (!g) return MOE_STATUS_NO_MEMORY;
    g->stream = stream;
    g->mode = mode;
    moe_status_t status = cublas_status(cublasCreate(&g->cublas), "cublasCreate");
    if (status == MOE_STATUS_OK) status = cublas_status(cublasSetStream(g->cublas, stream), "cublasSetStream");
    /* A workspace of our own, so that cuBLAS never allocates during a layer. */
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
    gemm_free_groups(g);
    for (int i = 0; i < g->n_side; i++) {
        cudaStreamSynchronize(g->side[i]);
        cublasDestroy(g->side_cublas[i]);
        cudaFree(g->side_workspace[i]);
        cudaEventDestroy(g->join[i]);
        cudaStreamDestroy(g->side[i]);
    }
    if (g->n_side) cudaEventDestroy(g->fork);
    if (g->cublas) cublasDestroy(g->cublas);
    if (g->workspace) cudaFree(g->workspace);
    free(g);
}

cublasHandle_t moe_gemm_cublas(moe_gemm_h g) { return g->cublas; }

void moe_gemm_set_mode(moe_gemm_h g, moe_gemm_mode_t mode) { g->mode = mode; }

/* Row-major y[m][n_out] = x[m][k] . w[n_out][k]^T, i.e. column-major y^T = w^T' x^T:
 * C(n_out x m) = op_T(A: k x n_out) * B(k x m). */
static moe_status_t gemm_on(cublasHandle_t cublas, const moe_bf16_t *x, const moe_bf16_t *w, int m,
                            int n_out, int k, void *y, bool y_f32_accumulate)
{
    if (m == 0) return MOE_STATUS_OK;
    const float one = 1.0f, zero = 0.0f;
    return cublas_status(cublasGemmEx(cublas, CUBLAS_OP_T, CUBLAS_OP_N, n_out, m, k, &one, w, CUDA_R_16BF,
                                      k, x, CUDA_R_16BF, k, y_f32_accumulate ? &one : &zero, y,
                                      y_f32_accumulate ? CUDA_R_32F : CUDA_R_16BF, n_out, CUBLAS_COMPUTE_32F,
                                      CUBLAS_GEMM_DEFAULT),
                         "cublasGemmEx");
}

moe_status_t moe_gemm_cuda(moe_gemm_h g, const moe_bf16_t *x, const moe_bf16_t *w, int m, int n_out, int k,
                           void *y, bool y_f32_accumulate)
{
    return gemm_on(g->cublas, x, w, m, n_out, k, y, y_f32_accumulate);
}

/* Streams mode: side streams, handles and events on first use. */
static moe_status_t gemm_side_init(moe_gemm_h g)
{
    if (g->n_side) return MOE_STATUS_OK;
    moe_status_t status = MOE_STATUS_OK;
    if (cudaEventCreateWithFlags(&g->fork, cudaEventDisableTiming) != cudaSuccess) goto cuda_fail;
    for (int i = 0; i < GEMM_SIDE_STREAMS; i++) {
        if (cudaStreamCreateWithFlags(&g->side[i], cudaStreamNonBlocking) != cudaSuccess) goto cuda_fail;
        if (cudaEventCreateWithFlags(&g->join[i], cudaEventDisableTiming) != cudaSuccess) {
            cudaStreamDestroy(g->side[i]);
            goto cuda_fail;
        }
        if (cudaMalloc(&g->side_workspace[i], GEMM_WORKSPACE) != cudaSuccess) {
            cudaEventDestroy(g->join[i]);
            cudaStreamDestroy(g->side[i]);
            goto cuda_fail;
        }
        status = cublas_status(cublasCreate(&g->side_cublas[i]), "cublasCreate");
        if (status == MOE_STATUS_OK)
            status = cublas_status(cublasSetStream(g->side_cublas[i], g->side[i]), "cublasSetStream");
        if (status == MOE_STATUS_OK)
            status = cublas_status(cublasSetWorkspace(g->side_cublas[i], g->side_workspace[i], GEMM_WORKSPACE),
                                   "cublasSetWorkspace");
        g->n_side = i + 1;
        if (status != MOE_STATUS_OK) return status;
    }
    return MOE_STATUS_OK;
cuda_fail:
    moe_error("gemm: creating side streams failed: %s", cudaGetErrorString(cudaGetLastError()));
    return MOE_STATUS_CUDA_ERROR;
}

static moe_status_t gemm_fork(moe_gemm_h g)
{
    moe_status_t status = gemm_side_init(g);
    if (status != MOE_STATUS_OK) return status;
    if (cudaEventRecord(g->fork, g->stream) != cudaSuccess) goto fail;
    for (int i = 0; i < g->n_side; i++)
        if (cudaStreamWaitEvent(g->side[i], g->fork, 0) != cudaSuccess) goto fail;
    return MOE_STATUS_OK;
fail:
    moe_error("gemm: fork failed: %s", cudaGetErrorString(cudaGetLastError()));
    return MOE_STATUS_CUDA_ERROR;
}

static moe_status_t gemm_join(moe_gemm_h g)
{
    for (int i = 0; i < g->n_side; i++)
        if (cudaEventRecord(g->join[i], g->side[i]) != cudaSuccess ||
            cudaStreamWaitEvent(g->stream, g->join[i], 0) != cudaSuccess) {
            moe_error("gemm: join failed: %s", cudaGetErrorString(cudaGetLastError()));
            return MOE_STATUS_CUDA_ERROR;
        }
    return MOE_STATUS_OK;
}

/* The mode for a call: AUTO picks streams when the groups are small (see docs/cuda.md). */
static moe_gemm_mode_t gemm_mode_for(const moe_gemm_h g, const int *offset, int groups)
{
    if (g->mode != MOE_GEMM_AUTO) return g->mode;
    int active = 0;
    for (int e = 0; e < groups; e++) active += offset[e + 1] > offset[e];
    return active > 1 && offset[groups] < MOE_GEMM_AUTO_ROWS * active ? MOE_GEMM_STREAMS : MOE_GEMM_LOOP;
}

static moe_status_t gemm_grow_groups(moe_gemm_h g, int groups)
{
    if (groups <= g->cap) return MOE_STATUS_OK;
    gemm_free_groups(g);
    size_t n = (size_t)groups;
    g->m = (int *)malloc(sizeof(int) * n), g->nn = (int *)malloc(sizeof(int) * n);
    g->kk = (int *)malloc(sizeof(int) * n), g->lda = (int *)malloc(sizeof(int) * n);
    g->ldb = (int *)malloc(sizeof(int) * n), g->ldc = (int *)malloc(sizeof(int) * n);
    g->size = (int *)malloc(sizeof(int) * n);
    g->ta = (cublasOperation_t *)malloc(sizeof(cublasOperation_t) * n);
    g->tb = (cublasOperation_t *)malloc(sizeof(cublasOperation_t) * n);
    g->alpha = (float *)malloc(sizeof(float) * n), g->beta = (float *)malloc(sizeof(float) * n);
    g->host_ptrs = (const void **)malloc(sizeof(void *) * 3 * n);
    bool ok = g->m && g->nn && g->kk && g->lda && g->ldb && g->ldc && g->size && g->ta && g->tb &&
              g->alpha && g->beta && g->host_ptrs;
    if (ok && cudaMalloc((void **)&g->dev_ptrs, sizeof(void *) * 3 * n) != cudaSuccess) {
        g->dev_ptrs = NULL;
        ok = false;
    }
    if (!ok) {
        gemm_free_groups(g);
        moe_error("gemm: out of memory for %d groups", groups);
        return MOE_STATUS_NO_MEMORY;
    }
    g->cap = groups;
    return MOE_STATUS_OK;
}

moe_status_t moe_grouped_gemm_cuda(moe_gemm_h g, const moe_bf16_t *x, const moe_bf16_t *w,
                                              size_t w_stride, const int *offset, int groups, int n_out,
                                              int k, moe_bf16_t *y)
{
    moe_status_t status = MOE_STATUS_OK;
    const moe_gemm_mode_t mode = gemm_mode_for(g, offset, groups);
    if (mode == MOE_GEMM_LOOP) {
        for (int e = 0; e < groups && status == MOE_STATUS_OK; e++) {
            int m = offset[e + 1] - offset[e];
            status = moe_gemm_cuda(g, x + (size_t)offset[e] * k, w + (size_t)e * w_stride, m, n_out, k,
                                   y + (size_t)offset[e] * n_out, false);
        }
        return status;
    }
    if (mode == MOE_GEMM_STREAMS) {
        if ((status = gemm_fork(g)) != MOE_STATUS_OK) return status;
        for (int e = 0, i = 0; e < groups && status == MOE_STATUS_OK; e++) {
            int m = offset[e + 1] - offset[e];
            if (m == 0) continue;
            status = gemm_on(g->side_cublas[i++ % g->n_side], x + (size_t)offset[e] * k, w + (size_t)e * w_stride,
                             m, n_out, k, y + (size_t)offset[e] * n_out, false);
        }
        moe_status_t joined = gemm_join(g);
        return status != MOE_STATUS_OK ? status : joined;
    }
    if ((status = gemm_grow_groups(g, groups)) != MOE_STATUS_OK) return status;
    int used = 0;
    for (int e = 0; e < groups; e++) {
        int m = offset[e + 1] - offset[e];
        if (m == 0) continue;
        g->ta[used] = CUBLAS_OP_T, g->tb[used] = CUBLAS_OP_N;
        g->m[used] = n_out, g->nn[used] = m, g->kk[used] = k;
        g->lda[used] = k, g->ldb[used] = k, g->ldc[used] = n_out;
        g->alpha[used] = 1.0f, g->beta[used] = 0.0f, g->size[used] = 1;
        g->host_ptrs[used] = w + (size_t)e * w_stride;
        g->host_ptrs[g->cap + used] = x + (size_t)offset[e] * k;
        g->host_ptrs[2 * g->cap + used] = y + (size_t)offset[e] * n_out;
        used++;
    }
    if (used == 0) return MOE_STATUS_OK;
    /* Pageable source: the copy is staged before the call returns, so the host arrays can be reused
     * at once. */
    if (cudaMemcpyAsync(g->dev_ptrs, g->host_ptrs, sizeof(void *) * 3 * g->cap, cudaMemcpyHostToDevice,
                        g->stream) != cudaSuccess) {
        moe_error("gemm: pointer upload failed: %s", cudaGetErrorString(cudaGetLastError()));
        return MOE_STATUS_CUDA_ERROR;
    }
    return cublas_status(
        cublasGemmGroupedBatchedEx(g->cublas, g->ta, g->tb, g->m, g->nn, g->kk, g->alpha,
                                   (const void *const *)g->dev_ptrs, CUDA_R_16BF, g->lda,
                                   (const void *const *)(g->dev_ptrs + g->cap), CUDA_R_16BF, g->ldb,
                                   g->beta, g->dev_ptrs + 2 * g->cap, CUDA_R_16BF, g->ldc, used, g->size,
                                   CUBLAS_COMPUTE_32F),
        "cublasGemmGroupedBatchedEx");
}

moe_status_t moe_expert_ffn_grouped_cuda(moe_gemm_h g, const moe_bf16_t *x,
                                                    const moe_bf16_t *w_gate_up, const moe_bf16_t *w_down,
                                                    const int *offset, int groups, int d, int f,
                                                    moe_bf16_t *gate_up, moe_bf16_t *act, moe_bf16_t *y)
{
    moe_status_t status = MOE_STATUS_OK;
    const int rows = offset[groups];
    if (rows == 0) return MOE_STATUS_OK;
    if (gemm_mode_for(g, offset, groups) == MOE_GEMM_STREAMS) {
        /* Each expert's gate/up, SwiGLU and down in order on one side stream; experts round-robin
         * over the side streams, so that several small GEMMs fill the GPU together. */
        if ((status = gemm_fork(g)) != MOE_STATUS_OK) return status;
        for (int e = 0, i = 0; e < groups && status == MOE_STATUS_OK; e++) {
            const int m = offset[e + 1] - offset[e], side = i % g->n_side;
            if (m == 0) continue;
            i++;
            const size_t o = (size_t)offset[e];
            status = gemm_on(g->side_cublas[side], x + o * d, w_gate_up + (size_t)e * 2 * f * d, m, 2 * f, d,
                             gate_up + o * 2 * f, false);
            if (status == MOE_STATUS_OK)
                status = moe_swiglu_cuda(gate_up + o * 2 * f, m, f, act + o * f, g->side[side]);
            if (status == MOE_STATUS_OK)
                status = gemm_on(g->side_cublas[side], act + o * f, w_down + (size_t)e * d * f, m, d, f,
                                 y + o * d, false);
        }
        moe_status_t joined = gemm_join(g);
        return status != MOE_STATUS_OK ? status : joined;
    }
    if ((status = moe_grouped_gemm_cuda(g, x, w_gate_up, (size_t)2 * f * d, offset, groups, 2 * f, d,
                                        gate_up)) != MOE_STATUS_OK)
        return status;
    if ((status = moe_swiglu_cuda(gate_up, rows, f, act, g->stream)) != MOE_STATUS_OK) return status;
    return moe_grouped_gemm_cuda(g, act, w_down, (size_t)d * f, offset, groups, d, f, y);
}

/* Row-major y_e[m][n_out] = x_e[m][k] . w_e[n_out][k]^T for e < groups, one strided-batched call. */
static moe_status_t gemm_strided(moe_gemm_h g, const moe_bf16_t *x, const moe_bf16_t *w, int groups, int m,
                                 int n_out, int k, moe_bf16_t *y)
{
    const float one = 1.0f, zero = 0.0f;
    return cublas_status(cublasGemmStridedBatchedEx(g->cublas, CUBLAS_OP_T, CUBLAS_OP_N, n_out, m, k, &one, w,
                                                    CUDA_R_16BF, k, (long long)n_out * k, x, CUDA_R_16BF, k,
                                                    (long long)m * k, &zero, y, CUDA_R_16BF, n_out,
                                                    (long long)m * n_out, groups, CUBLAS_COMPUTE_32F,
                                                    CUBLAS_GEMM_DEFAULT),
                         "cublasGemmStridedBatchedEx");
}

moe_status_t moe_expert_ffn_padded_cuda(moe_gemm_h g, const moe_bf16_t *x, const moe_bf16_t *w_gate_up,
                                        const moe_bf16_t *w_down, int groups, int stride_rows, int d, int f,
                                        moe_bf16_t *gate_up, moe_bf16_t *act, moe_bf16_t *y)
{
    moe_status_t status;
    if (groups == 0 || stride_rows == 0) return MOE_STATUS_OK;
    if ((status = gemm_strided(g, x, w_gate_up, groups, stride_rows, 2 * f, d, gate_up)) != MOE_STATUS_OK)
        return status;
    if ((status = moe_swiglu_cuda(gate_up, groups * stride_rows, f, act, g->stream)) != MOE_STATUS_OK)
        return status;
    return gemm_strided(g, act, w_down, groups, stride_rows, d, f, y);
}
