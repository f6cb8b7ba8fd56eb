/* reference: the single-process dense MoE stack, the ground truth the distributed engine is tested
 * against. No plan, no dispatch: each token goes through its k experts directly, one at a time, in
 * the order of its choices. It shares only the kernels (each tested on its own) and the seeded
 * sources with the engine. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/model/model.h"

moe_status_t moe_reference_forward(const moe_config_t *config, const moe_weights_t *w,
                                   const moe_sources_t *sources, int64_t g0, int n, float *x,
                                   int32_t *ids)
{
    const moe_model_config_t *m = &config->model;
    const int d = m->d_model, f = m->d_ff, fs = w->fs, k = m->top_k, E = m->experts;
    for (int l = 0; l < m->layers; l++)
        if (w->local_count[l] != E) {
            moe_error("reference: needs every expert local (run it with one rank)");
            return MOE_STATUS_INVALID_ARGUMENT;
        }
    int width = f > fs ? f : fs;
    float *h = moe_calloc((size_t)n * d, sizeof(float));
    float *logits = moe_calloc((size_t)n * E + 1, sizeof(float));
    float *weights = moe_calloc((size_t)n * k, sizeof(float));
    float *y = moe_calloc((size_t)d, sizeof(float));
    float *acc = moe_calloc((size_t)d, sizeof(float));
    float *scratch = moe_calloc((size_t)3 * width, sizeof(float));
    if (!h || !logits || !weights || !y || !acc || !scratch) {
        moe_free(h), moe_free(logits), moe_free(weights), moe_free(y), moe_free(acc), moe_free(scratch);
        moe_error("reference: out of memory for %d tokens", n);
        return MOE_STATUS_NO_MEMORY;
    }
    for (int l = 0; l < m->layers; l++) {
        int32_t *id = ids + (size_t)l * n * k;
        moe_rmsnorm_cpu(x, (const float *)w->norm + (size_t)l * d, n, d, m->norm_eps, h);
        if (config->routing.source == MOE_ROUTING_ROUTER) {
            moe_router_params_t p = moe_model_router_params(config, w, l);
            moe_router_logits_cpu(h, (const float *)w->router + (size_t)l * E * d, n, d, E, logits);
            moe_router_topk_cpu(logits, n, &p, id, weights);
        } else {
            moe_sources_route(sources, l, g0, n, l > 0 ? ids + (size_t)(l - 1) * n * k : NULL, id,
                              weights);
        }
        for (int t = 0; t < n; t++) {
            const float *ht = h + (size_t)t * d;
            memset(acc, 0, sizeof(float) * d);
            for (int j = 0; j < k; j++) {
                int e = id[t * k + j]; /* all experts local: slot == expert */
                moe_expert_ffn_cpu(ht, moe_weights_expert_gate_up(w, l, e),
                                   moe_weights_expert_down(w, l, e), 1, d, f, scratch, y);
                for (int i = 0; i < d; i++) acc[i] += weights[t * k + j] * y[i];
            }
            if (fs) {
                moe_expert_ffn_cpu(ht, (const float *)w->shared_gate_up + (size_t)l * 2 * fs * d,
                                   (const float *)w->shared_down + (size_t)l * d * fs, 1, d, fs, scratch, y);
                float g = 1.0f;
                if (w->shared_gate) { /* Qwen2-MoE's sigmoid gate on the shared expert */
                    double dot = 0;
                    for (int i = 0; i < d; i++) dot += (double)ht[i] * ((const float *)w->shared_gate)[(size_t)l * d + i];
                    g = 1.0f / (1.0f + expf(-(float)dot));
                }
                for (int i = 0; i < d; i++) acc[i] += g * y[i];
            }
            for (int i = 0; i < d; i++) x[(size_t)t * d + i] += acc[i];
        }
    }
    moe_free(h), moe_free(logits), moe_free(weights), moe_free(y), moe_free(acc), moe_free(scratch);
    return MOE_STATUS_OK;
}
