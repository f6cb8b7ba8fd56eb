/* cpu: reference implementations of the MoE stages (see kernels.h). GEMMs go through OpenBLAS;
 * the rest is plain loops, written for clarity first since they are also the GPU references. */
#include "kernels/kernels.h"
#include "io/io.h"

#include <cblas.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void moe_rmsnorm_cpu(const float *x, const float *weight, int n, int d, float eps, float *out)
{
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * d;
        float *oi = out + (size_t)i * d;
        double ss = 0;
        for (int j = 0; j < d; j++) ss += (double)xi[j] * xi[j];
        float inv = (float)(1.0 / sqrt(ss / d + eps));
        for (int j = 0; j < d; j++) oi[j] = xi[j] * inv * weight[j];
    }
}

void moe_router_logits_cpu(const float *h, const float *w_router, int n, int d, int experts,
                           float *logits)
{
    if (n == 0) return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, experts, d, 1.0f, h, d, w_router, d, 0.0f,
                logits, experts);
}

/* Index of the largest value among the allowed entries (ties to the lower index), or -1. */
static int argmax_allowed(const float *v, const bool *allowed, int n)
{
    int best = -1;
    for (int i = 0; i < n; i++)
        if (allowed[i] && (best < 0 || v[i] > v[best])) best = i;
    return best;
}

void moe_router_topk_cpu(const float *logits, int n, const moe_router_params_t *p, int32_t *ids,
                         float *weights)
{
    const int E = p->experts, k = p->top_k;
    const int groups = p->groups > 1 ? p->groups : 1, per_group = E / groups;
    /* per-expert scratch on the heap: E may be large enough to overflow a thread's stack */
    float *scores = malloc(sizeof(float) * ((size_t)2 * E + groups));
    bool *allowed = malloc((size_t)E + 2 * (size_t)groups);
    if (!scores || !allowed) {
        free(scores);
        free(allowed);
        fprintf(stderr, "moerun: router: out of memory for the scores of %d experts\n", E);
        for (size_t i = 0; i < (size_t)n * k; i++) ids[i] = -1, weights[i] = 0.0f;
        return;
    }
    float *choice = scores + E, *group_score = choice + E;
    bool *group_allowed = allowed + E, *kept = group_allowed + groups;

    for (int t = 0; t < n; t++) {
        const float *lg = logits + (size_t)t * E;
        if (p->scoring == MOE_ROUTER_SOFTMAX) {
            float mx = -FLT_MAX;
            for (int e = 0; e < E; e++) mx = fmaxf(mx, lg[e]);
            double sum = 0;
            for (int e = 0; e < E; e++) sum += scores[e] = expf(lg[e] - mx);
            for (int e = 0; e < E; e++) scores[e] = (float)(scores[e] / sum);
        } else {
            for (int e = 0; e < E; e++) scores[e] = 1.0f / (1.0f + expf(-lg[e]));
        }
        for (int e = 0; e < E; e++) {
            choice[e] = scores[e] + (p->bias ? p->bias[e] : 0.0f);
            allowed[e] = true;
        }
        if (groups > 1) {
            /* Softmax groups are ranked by their best expert (DeepSeek-V2), sigmoid groups by the sum
             * of their two best (DeepSeek-V3). */
            for (int g = 0; g < groups; g++) {
                const float *c = choice + g * per_group;
                float best = -FLT_MAX, second = -FLT_MAX;
                for (int j = 0; j < per_group; j++) {
                    if (c[j] > best) { second = best; best = c[j]; }
                    else if (c[j] > second) second = c[j];
                }
                group_score[g] = p->scoring == MOE_ROUTER_SIGMOID && per_group > 1 ? best + second : best;
                group_allowed[g] = true;
            }
            memset(kept, 0, sizeof(bool) * (size_t)groups);
            for (int i = 0; i < p->groups_kept; i++) {
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
        float norm = p->renormalize ? (float)(1.0 / (wsum + 1e-20)) : 1.0f;
        for (int i = 0; i < k; i++) w[i] = w[i] * norm * p->scaling;
    }
    free(scores);
    free(allowed);
}

void moe_gather_rows_cpu(const float *src, int d, const int32_t *rows, int n, float *dst)
{
    for (int i = 0; i < n; i++)
        memcpy(dst + (size_t)i * d, src + (size_t)rows[i] * d, sizeof(float) * d);
}

void moe_swiglu_cpu(const float *gate_up, int n, int f, float *act)
{
    for (int i = 0; i < n; i++) {
        const float *g = gate_up + (size_t)i * 2 * f, *u = g + f;
        float *a = act + (size_t)i * f;
        for (int j = 0; j < f; j++) a[j] = g[j] / (1.0f + expf(-g[j])) * u[j];
    }
}

void moe_expert_ffn_cpu(const float *x, const float *w_gate_up, const float *w_down, int n, int d,
                        int f, float *scratch, float *y)
{
    if (n == 0) return;
    float *gate_up = scratch, *act = scratch + (size_t)n * 2 * f;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, 2 * f, d, 1.0f, x, d, w_gate_up, d, 0.0f,
                gate_up, 2 * f);
    moe_swiglu_cpu(gate_up, n, f, act);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, d, f, 1.0f, act, f, w_down, f, 0.0f, y, d);
}

void moe_scatter_add_cpu(const float *y, const int32_t *rows, const float *weights, int n, int d,
                         float *out)
{
    for (int i = 0; i < n; i++) {
        const float *yi = y + (size_t)i * d;
        float *o = out + (size_t)rows[i] * d;
        const float w = weights[i];
        for (int j = 0; j < d; j++) o[j] += w * yi[j];
    }
}

float moe_seed_value(const moe_seed_rule_t *r, size_t i)
{
    const float u = moe_hash_to_symmetric(moe_hash(r->seed, (uint64_t)r->layer, (uint64_t)r->expert,
                                                   (uint64_t)r->tensor, (uint64_t)i));
    const float v = u * r->scale / sqrtf((float)r->fan_in);
    return r->offset == 0.0f && r->factor == 1.0f ? v : r->offset + r->factor * v;
}

void moe_seed_fill_cpu(const moe_seed_rule_t *rule, size_t n, float *dst)
{
    for (size_t i = 0; i < n; i++) dst[i] = moe_seed_value(rule, i);
}

void moe_dequant_fp8_cpu(const uint8_t *src, int64_t rows, int64_t cols, const float *scale_inv, int block,
                         float *dst)
{
    const int64_t scale_cols = (cols + block - 1) / block;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++)
            dst[r * cols + c] = moe_f8e4m3_to_f32(src[r * cols + c]) * scale_inv[(r / block) * scale_cols + c / block];
}
