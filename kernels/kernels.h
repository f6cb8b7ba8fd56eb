/* kernels: the numerical stages of an MoE layer, as CPU reference functions.
 *
 * These are the cpu backend's stage implementations and the references that every GPU kernel is
 * compared with (a GPU kernel takes the same arguments, on device pointers). All float32, row-major.
 * Expert weights use one layout everywhere: w_gate_up [2f][d] (gate rows, then up rows, as
 * nn.Linear stores them) and w_down [d][f]. */
#ifndef MOE_KERNELS_H
#define MOE_KERNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moe_build_config.h"
#if MOE_HAVE_CUDA
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { MOE_ROUTER_SOFTMAX = 0, MOE_ROUTER_SIGMOID } moe_router_scoring_t;

typedef struct {
    int experts;
    int top_k;
    moe_router_scoring_t scoring;
    bool renormalize;     /* divide the k weights by their sum */
    int groups;           /* group-limited top-k: experts split into `groups` equal groups (1 = off) */
    int groups_kept;      /* top groups a token may choose from */
    float scaling;        /* multiplies the final weights */
    const float *bias;    /* [experts] added to the scores for selection only (sigmoid), or NULL */
} moe_router_params_t;

/* out[i] = x[i] / rms(x[i]) * weight, rms over d with eps. x and out may alias. */
void moe_rmsnorm_cpu(const float *x, const float *weight, int n, int d, float eps, float *out);

/* logits[n][E] = h[n][d] . w_router[E][d]^T */
void moe_router_logits_cpu(const float *h, const float *w_router, int n, int d, int experts,
                           float *logits);

/* Scores, group limit, top-k (ties to the lower expert id), weights, as Mixtral / Qwen / OLMoE
 * (softmax), DeepSeek-V2 (softmax, group max) and DeepSeek-V3 (sigmoid, bias, group top-2 sum) do.
 * ids[n][k] in descending score order; weights[n][k]. */
void moe_router_topk_cpu(const float *logits, int n, const moe_router_params_t *params, int32_t *ids,
                         float *weights);

/* dst[i] = src[rows[i]] for i < n (rows of d floats): the permute into a send buffer. */
void moe_gather_rows_cpu(const float *src, int d, const int32_t *rows, int n, float *dst);

/* act[i][j] = silu(gate_up[i][j]) * gate_up[i][f + j] */
void moe_swiglu_cpu(const float *gate_up, int n, int f, float *act);

/* One SwiGLU expert on n rows: y = (silu(x Wg^T) * (x Wu^T)) Wd^T. scratch holds n*3f floats. */
void moe_expert_ffn_cpu(const float *x, const float *w_gate_up, const float *w_down, int n, int d,
                        int f, float *scratch, float *y);

/* out[rows[i]] += weights[i] * y[i] for i < n (rows of d floats): the weighted combine. */
void moe_scatter_add_cpu(const float *y, const int32_t *rows, const float *weights, int n, int d,
                         float *out);

/* ---------------------------------------------------------------- GPU kernels (kernels/cuda.cu)
 *
 * Each stage above has a GPU version with the same arguments on device pointers, bf16 (moe_bf16_t,
 * the raw 16 bits) wherever the data is bf16, fp32 accumulation, and the stream last. They return a
 * status (a failed launch is logged once) and complete in stream order; outputs are ready on the
 * stream. The residual stream x, the MoE output and router logits stay fp32; normed hidden states,
 * rows on the wire and expert weights are bf16. */
#if MOE_HAVE_CUDA
#include "common/common.h"

typedef uint16_t moe_bf16_t;

moe_status_t moe_f32_to_bf16_cuda(const float *x, size_t n, moe_bf16_t *y, cudaStream_t stream);
moe_status_t moe_bf16_to_f32_cuda(const moe_bf16_t *x, size_t n, float *y, cudaStream_t stream);
/* Seeded uniform values in [-scale, scale) (benchmarks and tests; never zeros). */
moe_status_t moe_fill_random_bf16_cuda(uint64_t seed, size_t n, float scale, moe_bf16_t *y,
                                       cudaStream_t stream);

/* rmsnorm of fp32 x into out_f32 (fp32, for the router) and/or out (bf16); either may be NULL. */
moe_status_t moe_rmsnorm_cuda(const float *x, const float *weight, int n, int d, float eps,
                              float *out_f32, moe_bf16_t *out, cudaStream_t stream);
/* fp32 cuBLAS SGEMM on the handle's stream (no TF32), so expert choices match the CPU's. */
moe_status_t moe_router_logits_cuda(cublasHandle_t cublas, const float *h, const float *w_router,
                                    int n, int d, int experts, float *logits);
/* params on the host; params->bias, if set, on the device. At most 512 experts, 64 groups. */
moe_status_t moe_router_topk_cuda(const float *logits, int n, const moe_router_params_t *params,
                                  int32_t *ids, float *weights, cudaStream_t stream);
/* As moe_gather_rows_cpu; a negative rows[i] writes a zero row (padding of the padded expert layout). */
moe_status_t moe_gather_rows_cuda(const moe_bf16_t *src, int d, const int32_t *rows, int n,
                                  moe_bf16_t *dst, cudaStream_t stream);
moe_status_t moe_swiglu_cuda(const moe_bf16_t *gate_up, int n, int f, moe_bf16_t *act,
                             cudaStream_t stream);
/* out[rows[i]] += weights[i] * y[i] in fp32 (atomics: rows may repeat); weights NULL means 1. */
moe_status_t moe_scatter_add_cuda(const moe_bf16_t *y, const int32_t *rows, const float *weights,
                                  int n, int d, float *out, cudaStream_t stream);
/* The weighted combine at the destination, without atomics: out[r] = sum over i in
 * row_offset[r] .. row_offset[r+1]-1 of weights[i] * y[pos[i]], in fp32, rounded once to bf16.
 * (CPU reference: moe_scatter_add_cpu onto zeros, with the entries grouped by output row.) */
moe_status_t moe_combine_rows_cuda(const moe_bf16_t *y, const int *row_offset, const int32_t *pos,
                                   const float *weights, int n_rows, int d, moe_bf16_t *out,
                                   cudaStream_t stream);
/* out[t] += sigmoid(h[t] . gate) * y[t] for t < n: the gated shared expert (Qwen2-MoE); h and gate fp32
 * (the reference is the loop in backend_cpu.c's shared stage). */
moe_status_t moe_gated_add_cuda(const moe_bf16_t *y, const float *h, const float *gate, int n, int d,
                                float *out, cudaStream_t stream);
/* x += out; out = 0 (n floats). */
moe_status_t moe_residual_cuda(float *x, float *out, size_t n, cudaStream_t stream);

/* Expert GEMMs through cuBLAS: bf16 operands, fp32 accumulation. A moe_gemm_h owns a cuBLAS handle
 * bound to one stream, its workspace and the argument arrays of the grouped call. */
typedef enum {
    MOE_GEMM_LOOP = 0, /* one cublasGemmEx per expert, in order on the stream */
    MOE_GEMM_GROUPED,  /* one cublasGemmGroupedBatchedEx over the experts */
    MOE_GEMM_STREAMS,  /* one cublasGemmEx per expert, round-robin over 4 side streams */
    MOE_GEMM_AUTO,     /* STREAMS when experts average under MOE_GEMM_AUTO_ROWS rows, else LOOP */
} moe_gemm_mode_t;
#define MOE_GEMM_AUTO_ROWS 1024
typedef struct moe_gemm_s *moe_gemm_h;

moe_status_t moe_gemm_create(cudaStream_t stream, moe_gemm_mode_t mode, moe_gemm_h *out);
void moe_gemm_destroy(moe_gemm_h gemm);
cublasHandle_t moe_gemm_cublas(moe_gemm_h gemm);
void moe_gemm_set_mode(moe_gemm_h gemm, moe_gemm_mode_t mode);
/* Row-major y[m][n_out] = x[m][k] . w[n_out][k]^T: y bf16, or with y_f32_accumulate y fp32 += . */
moe_status_t moe_gemm_cuda(moe_gemm_h gemm, const moe_bf16_t *x, const moe_bf16_t *w, int m, int n_out,
                           int k, void *y, bool y_f32_accumulate);
/* For each group e: rows offset[e] .. offset[e+1]-1 of x times (w + e * w_stride)^T into the same
 * rows of y [offset[groups]][n_out]. offset is a host array of groups + 1. */
moe_status_t moe_grouped_gemm_cuda(moe_gemm_h gemm, const moe_bf16_t *x, const moe_bf16_t *w,
                                   size_t w_stride, const int *offset, int groups, int n_out, int k,
                                   moe_bf16_t *y);
/* moe_expert_ffn_cpu over groups of rows, expert e's weights at w_gate_up + e*2f*d and
 * w_down + e*d*f; gate_up [rows][2f] and act [rows][f] are scratch; y [rows][d]. */
moe_status_t moe_expert_ffn_grouped_cuda(moe_gemm_h gemm, const moe_bf16_t *x,
                                         const moe_bf16_t *w_gate_up, const moe_bf16_t *w_down,
                                         const int *offset, int groups, int d, int f,
                                         moe_bf16_t *gate_up, moe_bf16_t *act, moe_bf16_t *y);
/* The same on the padded layout: expert e's rows at e*stride_rows .. (e+1)*stride_rows-1 of x, gate_up,
 * act and y (rows past its count are padding, best zeros); each projection is one strided-batched
 * cuBLAS GEMM over all experts. Pays stride_rows*groups - rows padding rows, saves the per-expert
 * launches and fills the GPU with small groups (docs/cuda.md: when the backend takes it). */
moe_status_t moe_expert_ffn_padded_cuda(moe_gemm_h gemm, const moe_bf16_t *x, const moe_bf16_t *w_gate_up,
                                        const moe_bf16_t *w_down, int groups, int stride_rows, int d, int f,
                                        moe_bf16_t *gate_up, moe_bf16_t *act, moe_bf16_t *y);
#endif

#ifdef __cplusplus
}
#endif

#endif
