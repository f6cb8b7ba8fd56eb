/* kernels: the numerical stages of an MoE layer, as CPU reference functions.
 *
 * These are the cpu backend's stage implementations and the references that every GPU kernel is
 * compared with (a GPU kernel takes the same arguments, on device pointers). All float32, row-major.
 * Expert weights use one layout everywhere: w_gate_up [2f][d] (gate rows, then up rows, as
 * nn.Linear stores them) and w_down [d][f]. */
#ifndef MOE_KERNELS_H
#define MOE_KERNELS_H

#include <stdbool.h>
#include <stdint.h>

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

#endif
