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

#include "common/common.h"
#include "kernels/gemm_path.h"
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

/* The grouped expert GEMM (moe_ggemm_run's reference): for each group e < groups, rows offset[e] ..
 * offset[e+1]-1 of x [.][k] times (w[e] + w_offset)^T, a [n_out][k] matrix, into the same rows of
 * y [.][n_out]; with gate (same shape as y), y = silu(gate) * (x . w^T). */
void moe_grouped_gemm_cpu(const float *x, const float *const *w, size_t w_offset, const int *offset,
                          int groups, int n_out, int k, const float *gate, float *y);

/* ---------------------------------------------------------------- weights where they land
 *
 * The seeded weight rule (runtime/model/model.c's moe_model_weight with an affine tail): element i of a
 * tensor is v = u * scale / sqrt(fan_in), u = moe_hash(seed, layer, expert, tensor, i) as a uniform
 * in [-1, 1); the value is offset + factor * v (v itself when offset is 0 and factor 1), in float32
 * arithmetic with no fused multiply-add, so that the GPU computes the host's bits exactly. */
typedef struct {
    uint64_t seed;
    int layer, expert, tensor, fan_in;
    float scale, offset, factor;
} moe_seed_rule_t;
float moe_seed_value(const moe_seed_rule_t *rule, size_t i);
void moe_seed_fill_cpu(const moe_seed_rule_t *rule, size_t n, float *dst);
/* A block-quantised FP8 (e4m3fn) matrix [rows][cols] to float32: value = fp8 x scale_inv[r / block][c /
 * block], scale_inv [ceil(rows / block)][ceil(cols / block)] (DeepSeek-V3's checkpoints). */
void moe_dequant_fp8_cpu(const uint8_t *src, int64_t rows, int64_t cols, const float *scale_inv, int block,
                         float *dst);

/* ---------------------------------------------------------------- the dispatch layout
 *
 * How one layer's routed tokens travel (kernels/dispatch_cpu.c, the GPU versions in dispatch.cu):
 *
 *   count   the replica (host rank) of each (token, choice), per chunk the rows each peer gets (a
 *           token goes once to each distinct rank among its choices) and the (token, expert) pairs
 *           each replica gets;
 *   offsets where chunk c's rows for peer p start in the send buffer (chunk-major, then peer):
 *           packed by the counts, or at fixed capacity (graphs, small batches);
 *   pack    each token's row, once per destination, into the send buffer, with its metadata: the k
 *           expert ids (-1 for choices served elsewhere) and routing weights;
 *   group   at the destination: received (row, choice) pairs grouped by local expert slot, each
 *           received row copied into the expert-major rows the GEMMs read (x_e);
 *   combine each received row's local experts' outputs, weighted, summed in fp32: one row back;
 *   unpermute each token's returned rows added into its output row, in choice order.
 *
 * A wire row is row_bytes long: d elements (float here, bf16 on the GPU), then at meta_offset k int32
 * expert ids and k float weights. Rows returned by the combine are d elements. The CPU reference
 * fills rows in token order; the GPU kernels in an order decided by atomics, so tests compare what
 * does not depend on it. */

#define MOE_DISPATCH_MAX_K 32 /* top_k at most this (kernels keep a token's choices on chip) */

/* The placement of one layer as the dispatch needs it (all arrays on the device for GPU kernels). */
typedef struct {
    int layer;
    int experts;           /* E */
    int ranks;             /* P */
    int replicas;          /* R: hosts over all experts */
    const int *first;      /* [E + 1] the replicas of expert e are first[e] .. first[e+1]-1 */
    const int *rank;       /* [R] the rank of each replica */
    const float *share;    /* [R] its share of the expert's tokens */
    const int *local_slot; /* [E] this rank's slot of expert e, or -1 */
    /* Hierarchical dispatch (NULL for flat dispatch; device arrays for the GPU kernels): the
     * first-hop rank of each replica (the rail: the rank with this rank's local index on the
     * replica's node), which gets the row in place of rank[]; and the replica's local index in its
     * node, written into the row's expert ids as e + experts * code so that the rail can forward. */
    const int *hop;        /* [R] or NULL */
    const int *code;       /* [R] or NULL */
} moe_dispatch_table_t;

/* rep[t][j]: the replica of choice j of token t (global token g0 + t), -1 for an id outside
 * [0, E); rows [C][P] and entries [C][R] are counted from zero. */
void moe_dispatch_count_cpu(const int32_t *ids, int n, int k, int64_t g0, const moe_dispatch_table_t *table,
                            int chunks, int32_t *rep, int *rows, int *entries);
/* offset[c][p]: the first send row of chunk c for peer p: the exclusive sum of rows in (c, p)
 * order, or (c P + p) * capacity when capacity > 0; offset[C P] is the sum of all rows. */
void moe_dispatch_offsets_cpu(const int *rows, int chunks, int ranks, int capacity, int *offset);
/* Fill the send rows (see above) and token_row[t][j]: the send row of choice j when j is the first
 * choice of token t going to its rank, else -1. */
void moe_dispatch_pack_cpu(const float *h, const int32_t *ids, const float *weights, const int32_t *rep, int n,
                           int k, int d, const moe_dispatch_table_t *table, int chunks, const int *offset,
                           void *send, size_t row_bytes, size_t meta_offset, int32_t *token_row);
/* Hierarchical dispatch (runtime/hier.c), host only. rows [C][P]: per chunk, the rows each final
 * rank (table->rank) gets, a token once per distinct rank among its choices, whatever its first hop;
 * counted from count's rep. */
void moe_dispatch_final_rows_cpu(const int32_t *rep, int n, int k, const moe_dispatch_table_t *table, int chunks,
                                 int *rows);
/* At the rail rank: n_rows first-hop rows (ids e + experts * g, g the local index of the rank of this
 * node that serves the choice, node_rank[g] that rank, g < per_node) each copied once to every
 * distinct rank among its choices, with those choices' expert ids and weights and -1 elsewhere, at
 * row next[rank] of send (next advanced); relay_row[r][j]: the send row of choice j when it is the
 * first of row r for its rank, else -1. MOE_STATUS_INTERNAL (logged) for an id out of range. */
moe_status_t moe_relay_pack_cpu(const void *recv, int n_rows, size_t row_bytes, size_t meta_offset, int k,
                                int experts, const int *node_rank, int per_node, int *next, void *send,
                                int32_t *relay_row);
/* Expert ids of n_rows rows set to -1: rows of a fixed-capacity buffer that pack leaves unused. */
void moe_dispatch_clear_meta_cpu(void *rows, int n_rows, size_t row_bytes, size_t meta_offset, int k);
/* Group n_rows received rows by local slot (local_slot [experts]: this rank's table): offset
 * [slots + 1], entry_pos[r][j] the expert-major row of (row r, choice j) or -1, and x_e
 * [offset[slots]][d] the rows in that order. MOE_STATUS_INTERNAL (logged) if a row names an expert
 * this rank lacks. */
moe_status_t moe_expert_group_cpu(const void *recv, int n_rows, size_t row_bytes, size_t meta_offset, int k,
                                  const int *local_slot, int experts, int slots, int d, int *offset,
                                  int32_t *entry_pos, float *x_e);
/* partial[r] = sum over j of weight[r][j] * y_e[entry_pos[r][j]] (0 for rows with none). */
void moe_expert_combine_cpu(const float *y_e, const int32_t *entry_pos, const void *recv, int n_rows,
                            size_t row_bytes, size_t meta_offset, int k, int d, float *partial);
/* out[t] += sum over j with token_row[t][j] >= 0 of back[token_row[t][j]], t in [t_begin, t_end). */
void moe_unpermute_tokens_cpu(const float *back, const int32_t *token_row, int t_begin, int t_end, int k, int d,
                              float *out);

/* ---------------------------------------------------------------- GPU kernels (kernels/cuda.cu)
 *
 * Each stage above has a GPU version with the same arguments on device pointers, bf16 (moe_bf16_t,
 * the raw 16 bits) wherever the data is bf16, fp32 accumulation, and the stream last. They return a
 * status (a failed launch is logged once) and complete in stream order; outputs are ready on the
 * stream. The residual stream x, the MoE output and router logits stay fp32; normed hidden states,
 * rows on the wire and expert weights are bf16. */
#if MOE_HAVE_CUDA
typedef uint16_t moe_bf16_t;

moe_status_t moe_f32_to_bf16_cuda(const float *x, size_t n, moe_bf16_t *y, cudaStream_t stream);
/* Source elements a store converts from (the dtypes of checkpoints). */
typedef enum { MOE_RAW_F32 = 0, MOE_RAW_BF16, MOE_RAW_F16 } moe_raw_t;
/* n values of src (raw) to dst as float32 or, with to_bf16, bf16 (round to nearest even). */
moe_status_t moe_convert_cuda(const void *src, moe_raw_t raw, size_t n, void *dst, bool to_bf16, cudaStream_t stream);
/* moe_seed_fill_cpu / moe_dequant_fp8_cpu on the device, into float32 or bf16 (rounded once). */
moe_status_t moe_seed_fill_cuda(const moe_seed_rule_t *rule, size_t n, void *dst, bool to_bf16, cudaStream_t stream);
moe_status_t moe_dequant_fp8_cuda(const uint8_t *src, int64_t rows, int64_t cols, const float *scale_inv, int block,
                                  void *dst, bool to_bf16, cudaStream_t stream);
/* Seeded uniform values in [-scale, scale) (benchmarks and tests; never zeros). */
moe_status_t moe_fill_random_bf16_cuda(uint64_t seed, size_t n, float scale, moe_bf16_t *y,
                                       cudaStream_t stream);

/* rmsnorm of fp32 x into out_f32 (fp32, for the router) and/or out (bf16); either may be NULL. */
moe_status_t moe_rmsnorm_cuda(const float *x, const float *weight, int n, int d, float eps,
                              float *out_f32, moe_bf16_t *out, cudaStream_t stream);
/* fp32 cuBLAS SGEMM on the handle's stream (no TF32), so expert choices match the CPU's. */
moe_status_t moe_router_logits_cuda(cublasHandle_t cublas, const float *h, const float *w_router,
                                    int n, int d, int experts, float *logits);
/* params on the host; params->bias, if set, on the device. At most 512 experts, 64 groups, top-32. */
moe_status_t moe_router_topk_cuda(const float *logits, int n, const moe_router_params_t *params,
                                  int32_t *ids, float *weights, cudaStream_t stream);
moe_status_t moe_swiglu_cuda(const moe_bf16_t *gate_up, int n, int f, moe_bf16_t *act,
                             cudaStream_t stream);
/* out[t] += sigmoid(h[t] . gate) * y[t] for t < n: the gated shared expert (Qwen2-MoE); h and gate fp32
 * (the reference is the loop in backend_cpu.c's shared stage). */
moe_status_t moe_gated_add_cuda(const moe_bf16_t *y, const float *h, const float *gate, int n, int d,
                                float *out, cudaStream_t stream);
/* x += out; out = 0 (n floats). */
moe_status_t moe_residual_cuda(float *x, float *out, size_t n, cudaStream_t stream);

/* The dispatch layout (kernels/dispatch.cu): the CPU references' arguments on the device, rows of
 * bf16 (count takes g0 from device memory, where a CUDA graph finds each batch's), and scratch: `fill` ([C P] ints for pack, [slots] for grouping; cleared by the calls that need
 * it clear: offsets clears pack's, grouping its own) and `bad`, a device int set to 1 when a received
 * row names an expert this rank lacks (the caller checks it after the batch). The counts are cleared
 * by count itself. */
moe_status_t moe_dispatch_count_cuda(const int32_t *ids, int n, int k, const int64_t *g0,
                                     const moe_dispatch_table_t *table, int chunks, int32_t *rep, int *rows,
                                     int *entries, cudaStream_t stream);
moe_status_t moe_dispatch_offsets_cuda(const int *rows, int chunks, int ranks, int capacity, int *offset, int *fill,
                                       cudaStream_t stream);
moe_status_t moe_dispatch_pack_cuda(const moe_bf16_t *h, const int32_t *ids, const float *weights, const int32_t *rep,
                                    int n, int k, int d, const moe_dispatch_table_t *table, int chunks,
                                    const int *offset, int *fill, void *send, size_t row_bytes, size_t meta_offset,
                                    int32_t *token_row, cudaStream_t stream);
moe_status_t moe_dispatch_clear_meta_cuda(void *rows, int n_rows, size_t row_bytes, size_t meta_offset, int k,
                                          cudaStream_t stream);
moe_status_t moe_expert_group_cuda(const void *recv, int n_rows, size_t row_bytes, size_t meta_offset, int k,
                                   const int *local_slot, int experts, int slots, int d, int *offset,
                                   int32_t *entry_pos, moe_bf16_t *x_e, int *fill, int *bad, cudaStream_t stream);
moe_status_t moe_expert_combine_cuda(const moe_bf16_t *y_e, const int32_t *entry_pos, const void *recv, int n_rows,
                                     size_t row_bytes, size_t meta_offset, int k, int d, moe_bf16_t *partial,
                                     cudaStream_t stream);
moe_status_t moe_unpermute_tokens_cuda(const moe_bf16_t *back, const int32_t *token_row, int t_begin, int t_end,
                                       int k, int d, float *out, cudaStream_t stream);
/* Hierarchical dispatch: moe_dispatch_final_rows_cpu and moe_relay_pack_cpu on the device (node_rank
 * and next device arrays; rows placed by atomics), and the relay's sum: partial[r] = the sum over j of
 * back[relay_row[r][j]] for relay_row >= 0 (fp32, rounded to bf16 once; the cpu backend's is
 * moe_unpermute_tokens_cpu into zeroed rows). */
moe_status_t moe_dispatch_final_rows_cuda(const int32_t *rep, int n, int k, const moe_dispatch_table_t *table,
                                          int chunks, int *rows, cudaStream_t stream);
moe_status_t moe_relay_pack_cuda(const void *recv, int n_rows, size_t row_bytes, size_t meta_offset, int k, int d,
                                 int experts, const int *node_rank, int *next, void *send, int32_t *relay_row,
                                 cudaStream_t stream);
moe_status_t moe_relay_sum_cuda(const moe_bf16_t *back, const int32_t *relay_row, int n_rows, int k, int d,
                                moe_bf16_t *partial, cudaStream_t stream);
/* Counts kept on the device where the host does not read them (fixed capacity): *dst += the sum of
 * n values; and for a grouping, dst[1] += received rows with a local choice, dst[2] += *entries. */
moe_status_t moe_count_add_cuda(const int *values, int n, int *dst, cudaStream_t stream);
moe_status_t moe_count_group_cuda(const int32_t *entry_pos, int n_rows, int k, const int *entries, int *dst,
                                  cudaStream_t stream);

/* ---- Grouped expert GEMMs (kernels/grouped_gemm.cu), sizes on the device.
 *
 * For each group e < groups, rows offset[e] .. offset[e+1]-1 (offset: a DEVICE array of groups + 1,
 * written by an earlier kernel; the host need not know it) of x [rows][k] times W^T, W = w[e] +
 * w_offset a [n_out][k] matrix (w: a DEVICE array of groups pointers), into the same rows of
 * y [rows][n_out]:
 *   y = x . w^T                      (gate == NULL)
 *   y = silu(gate) * (x . w^T)       (gate [rows][n_out] bf16: the SwiGLU of the up projection)
 * fp32 accumulation, bf16 output rounded once. max_rows bounds every group's rows (the CUDA-core
 * grid). Paths: CUTLASS sm90 grouped GEMMs with tiles of rows x outputs (128x128, 128x256, the same
 * in clusters of two row tiles that share the weight tile, 256x128), or computing y^T = w . x^T with
 * 128 outputs x 32 or 64 rows per tile (SWAP: groups of few rows, where the GEMM streams weights); a
 * CUDA-core kernel (any widths; the reference path); and, for moe_expert_ffn_cuda only, a cuBLAS
 * GEMM per group. CUTLASS paths need n_out and k multiples of 8 and an sm_90 device
 * (moe_ggemm_tensor_cores), else the CUDA-core kernel runs. docs/cuda.md gives the measurements
 * behind moe_gemm_path_choose. A handle holds the argument arrays and the CUTLASS arguments per
 * shape, for calls in order on one stream. */
const char *moe_gemm_path_name(moe_gemm_path_t path);
typedef struct moe_ggemm_s *moe_ggemm_h;
moe_status_t moe_ggemm_create(int max_groups, moe_ggemm_h *out);
void moe_ggemm_destroy(moe_ggemm_h gemm);
bool moe_ggemm_tensor_cores(const moe_ggemm_h gemm, int n_out, int k);
/* Build path's CUTLASS arguments for (groups, n_out, k) now (plain and SwiGLU epilogues), so that the
 * first run, or a graph capture, does not (a no-op where CUTLASS does not apply). */
moe_status_t moe_ggemm_prepare(moe_ggemm_h gemm, moe_gemm_path_t path, int groups, int n_out, int k);
moe_status_t moe_ggemm_run(moe_ggemm_h gemm, moe_gemm_path_t path, const moe_bf16_t *x,
                           const moe_bf16_t *const *w, size_t w_offset, const int *offset, int groups,
                           int max_rows, int n_out, int k, const moe_bf16_t *gate, moe_bf16_t *y,
                           cudaStream_t stream);

/* Dense GEMMs through cuBLAS: bf16 operands, fp32 accumulation. A moe_gemm_h owns a cuBLAS handle bound
 * to one stream and its workspace. */
typedef struct moe_gemm_s *moe_gemm_h;
moe_status_t moe_gemm_create(cudaStream_t stream, moe_gemm_h *out);
void moe_gemm_destroy(moe_gemm_h gemm);
cublasHandle_t moe_gemm_cublas(moe_gemm_h gemm);
/* Row-major y[m][n_out] = x[m][k] . w[n_out][k]^T: y bf16, or with y_f32_accumulate y fp32 += . */
moe_status_t moe_gemm_cuda(moe_gemm_h gemm, const moe_bf16_t *x, const moe_bf16_t *w, int m, int n_out,
                           int k, void *y, bool y_f32_accumulate);

/* The SwiGLU experts of one layer over expert-major rows (moe_expert_group_cuda's x_e): slot e's rows
 * offset[e] .. offset[e+1]-1 through y = (silu(x Wg^T) * (x Wu^T)) Wd^T with its weights. */
typedef struct {
    int slots, d, f;
    const moe_bf16_t *const *gate_up;      /* DEVICE array [slots] of [2f][d]: gate rows, then up rows */
    const moe_bf16_t *const *down;         /* DEVICE array [slots] of [d][f] */
    const moe_bf16_t *const *host_gate_up; /* the same pointers in host arrays (the cuBLAS loop) */
    const moe_bf16_t *const *host_down;
} moe_expert_weights_t;
/* offset: DEVICE [slots + 1] (grouped paths); host_offset: the same on the host (MOE_GEMM_PATH_CUBLAS
 * only, else may be NULL). max_rows bounds offset[slots]. Scratch: gate_up [max_rows][2f] (the grouped
 * paths use its first max_rows x f for the gate), act [max_rows][f]; y [max_rows][d]. On the
 * stream of gemm; gg's calls go there too. */
moe_status_t moe_expert_ffn_cuda(moe_gemm_h gemm, moe_ggemm_h gg, moe_gemm_path_t path, const moe_expert_weights_t *w,
                                 const moe_bf16_t *x, const int *offset, const int *host_offset, int max_rows,
                                 moe_bf16_t *gate_up, moe_bf16_t *act, moe_bf16_t *y);
/* The path for a layer's experts (docs/cuda.md): mean_rows, the rows an active slot gets on average;
 * host_offsets, whether the host knows each slot's rows (cuBLAS per expert needs them). */
moe_gemm_path_t moe_gemm_path_choose(double mean_rows, bool host_offsets);
#endif

#ifdef __cplusplus
}
#endif

#endif
