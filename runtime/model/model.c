/* model: what the engine computes with, besides its own state.
 *
 * Weights are seeded: element i of tensor T of (layer, expert) is a pure function of
 * (seed, layer, expert, T, i), uniform in [-1, 1) times scale / sqrt(fan_in) (kernels.h's seeded rule), so
 * every rank builds exactly the experts it hosts and a run's numbers do not depend on the world size
 * or placement; weights.c lays them out in the backend's store, which computes them where they live.
 * RMSNorm weights are 1 + 0.1 u, sigmoid correction biases 0.05 u. With weights.kind checkpoint the
 * same layout is filled from the checkpoint instead (checkpoint.c).
 *
 * Inputs: rows of input.path, or seeded values per global token (uniform in [-1, 1)).
 *
 * Routing sources besides the router:
 * - trace: token g of the run takes row g of routing.trace_ids [L, T, k] (any integer dtype);
 *   weights from routing.trace_weights (float16/32, taken as recorded), or 1/k each without it.
 * - synthetic: at each layer, expert popularity follows a Zipf law with exponent routing.skew over
 *   a seeded per-layer order of the experts; each of a token's k choices follows, with probability
 *   routing.affinity, the seeded successor of its choice at the previous layer (cross-layer
 *   affinity), else it is drawn from the popularity; a repeated expert is redrawn. Weights are
 *   seeded values in [0.5, 1.5) normalised to sum 1. Everything is a function of (seed, token,
 *   layer, choice), so it is the same at any world size. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/model/model-impl.h"

moe_router_params_t moe_model_router_params(const moe_config_t *config, const moe_weights_t *w,
                                            int layer)
{
    const moe_model_config_t *m = &config->model;
    return (moe_router_params_t){
        .experts = m->experts,
        .top_k = m->top_k,
        .scoring = m->scoring == MOE_SCORING_SIGMOID ? MOE_ROUTER_SIGMOID : MOE_ROUTER_SOFTMAX,
        .renormalize = m->renormalize,
        .groups = m->groups,
        .groups_kept = m->groups_kept,
        .scaling = m->routed_scaling,
        .bias = w->score_bias ? (const float *)w->score_bias + (size_t)layer * m->experts : NULL,
    };
}

/* ---------------------------------------------------------------- sources */

/* "[2, 3]": an array's shape, for messages. */
static void shape_text(const moe_array_t *a, char *buf, size_t size)
{
    int n = snprintf(buf, size, "[");
    for (int i = 0; i < a->ndim && n > 0 && (size_t)n < size; i++)
        n += snprintf(buf + n, size - (size_t)n, "%s%lld", i ? ", " : "", (long long)a->shape[i]);
    if (n > 0 && (size_t)n < size) snprintf(buf + n, size - (size_t)n, "]");
}

static moe_status_t load_input(const moe_config_t *c, moe_sources_t *s)
{
    moe_status_t status = MOE_STATUS_OK;
    moe_array_t a = {0};
    MOE_CHECK(moe_npy_read(c->input.path, &a), fail);
    if (a.ndim != 2 || a.shape[1] != c->model.d_model || !moe_dtype_is_float(a.dtype)) {
        char shape[128];
        shape_text(&a, shape, sizeof shape);
        MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, fail, "input.path: %s must be a float array [T, %d] "
                 "(model.d_model), got %s %s", c->input.path, c->model.d_model,
                 moe_dtype_name(a.dtype), shape);
    }
    s->input_tokens = a.shape[0];
    s->input = moe_calloc((size_t)moe_array_numel(&a), sizeof(float));
    if (!s->input)
        MOE_FAIL(MOE_STATUS_NO_MEMORY, fail, "input.path: %s: out of memory for %lld x %d floats",
                 c->input.path, (long long)a.shape[0], c->model.d_model);
    MOE_CHECK(moe_array_to_f32(&a, c->input.path, s->input), fail);
    const size_t d = (size_t)c->model.d_model;
    for (size_t i = 0; i < (size_t)moe_array_numel(&a); i++)
        if (!isfinite(s->input[i]))
            MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, fail, "input.path: %s: token %zu, element %zu is %g, "
                     "not a finite number", c->input.path, i / d, i % d, (double)s->input[i]);
fail:
    moe_array_free(&a);
    return status;
}

static moe_status_t load_trace(const moe_config_t *c, moe_sources_t *s)
{
    moe_status_t status = MOE_STATUS_OK;
    const int L = c->model.layers, E = c->model.experts, k = c->model.top_k;
    const char *path = c->routing.trace_ids;
    moe_array_t ids = {0}, w = {0};
    MOE_CHECK(moe_npy_read(path, &ids), fail);
    if (ids.ndim != 3 || !moe_dtype_is_integer(ids.dtype))
        MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, fail, "routing.trace_ids: %s must be an integer array "
                 "[layers, tokens, top_k], got %s with %d dimensions", path, moe_dtype_name(ids.dtype),
                 ids.ndim);
    if (ids.shape[0] != L || ids.shape[2] != k)
        MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, fail, "routing.trace_ids: %s has %lld layers and top_k "
                 "%lld, but the model has %d layers (model.layers) and top_k %d (model.top_k)", path,
                 (long long)ids.shape[0], (long long)ids.shape[2], L, k);
    s->trace_tokens = ids.shape[1];
    s->trace_ids = moe_calloc((size_t)moe_array_numel(&ids), sizeof(int32_t));
    if (!s->trace_ids)
        MOE_FAIL(MOE_STATUS_NO_MEMORY, fail, "routing.trace_ids: %s: out of memory for %lld ids", path,
                 (long long)moe_array_numel(&ids));
    MOE_CHECK(moe_array_to_i32(&ids, path, s->trace_ids), fail);
    for (int64_t l = 0; l < L; l++)
        for (int64_t t = 0; t < s->trace_tokens; t++) {
            const int32_t *row = s->trace_ids + ((size_t)l * s->trace_tokens + t) * k;
            for (int j = 0; j < k; j++) {
                if (row[j] < 0 || row[j] >= E)
                    MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, fail, "routing.trace_ids: %s: layer %lld, "
                             "token %lld: expert id %d out of range [0, %d) (model.experts)", path,
                             (long long)l, (long long)t, row[j], E);
                for (int i = 0; i < j; i++)
                    if (row[i] == row[j])
                        MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, fail, "routing.trace_ids: %s: layer "
                                 "%lld, token %lld: expert %d chosen twice", path, (long long)l,
                                 (long long)t, row[j]);
            }
        }
    if (c->routing.trace_weights[0]) {
        const char *wpath = c->routing.trace_weights;
        MOE_CHECK(moe_npy_read(wpath, &w), fail);
        if (w.ndim != 3 || w.shape[0] != L || w.shape[1] != s->trace_tokens || w.shape[2] != k ||
            !moe_dtype_is_float(w.dtype))
            MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, fail, "routing.trace_weights: %s must be a float "
                     "array of the ids' shape [%d, %lld, %d]", wpath, L, (long long)s->trace_tokens, k);
        s->trace_weights = moe_calloc((size_t)moe_array_numel(&w), sizeof(float));
        if (!s->trace_weights)
            MOE_FAIL(MOE_STATUS_NO_MEMORY, fail, "routing.trace_weights: %s: out of memory for %lld "
                     "weights", wpath, (long long)moe_array_numel(&w));
        MOE_CHECK(moe_array_to_f32(&w, wpath, s->trace_weights), fail);
        const size_t per_layer = (size_t)s->trace_tokens * k;
        for (size_t i = 0; i < (size_t)moe_array_numel(&w); i++)
            if (!isfinite(s->trace_weights[i]) || s->trace_weights[i] < 0)
                MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, fail, "routing.trace_weights: %s: layer %zu, "
                         "token %zu, choice %zu: weight %g is not a finite number >= 0", wpath,
                         i / per_layer, i % per_layer / k, i % k, (double)s->trace_weights[i]);
    }
fail:
    moe_array_free(&ids);
    moe_array_free(&w);
    return status;
}

/* The synthetic generator's tables: a popularity order, its Zipf CDF, and successors per layer. */
static moe_status_t build_synthetic(const moe_config_t *c, moe_sources_t *s)
{
    const int L = c->model.layers, E = c->model.experts;
    const uint64_t seed = c->run.seed;
    s->synth_cdf = calloc((size_t)L * E, sizeof(double));
    s->synth_order = calloc((size_t)L * E, sizeof(int32_t));
    s->synth_next = calloc((size_t)L * E, sizeof(int32_t));
    if (!s->synth_cdf || !s->synth_order || !s->synth_next) return MOE_STATUS_NO_MEMORY;
    for (int l = 0; l < L; l++) {
        int32_t *order = s->synth_order + (size_t)l * E, *next = s->synth_next + (size_t)l * E;
        for (int e = 0; e < E; e++) order[e] = next[e] = e;
        for (int e = E - 1; e > 0; e--) { /* Fisher-Yates with hashed draws */
            int i = (int)(moe_hash(seed, l, e, MOE_TENSOR_SYNTH_ORDER, 0) % (uint64_t)(e + 1));
            int32_t tmp = order[e]; order[e] = order[i]; order[i] = tmp;
            i = (int)(moe_hash(seed, l, e, MOE_TENSOR_SYNTH_NEXT, 0) % (uint64_t)(e + 1));
            tmp = next[e]; next[e] = next[i]; next[i] = tmp;
        }
        double *cdf = s->synth_cdf + (size_t)l * E, acc = 0;
        for (int i = 0; i < E; i++) cdf[i] = acc += pow((double)(i + 1), -(double)c->routing.skew);
        for (int i = 0; i < E; i++) cdf[i] /= acc;
    }
    return MOE_STATUS_OK;
}

moe_status_t moe_sources_create(const moe_config_t *config, moe_sources_t *out)
{
    moe_status_t status = MOE_STATUS_OK;
    moe_sources_t s = {.config = config};
    if (config->input.kind == MOE_INPUT_NPY) MOE_CHECK(load_input(config, &s), fail);
    if (config->routing.source == MOE_ROUTING_TRACE) MOE_CHECK(load_trace(config, &s), fail);
    if (config->routing.source == MOE_ROUTING_SYNTHETIC) {
        status = build_synthetic(config, &s);
        if (status != MOE_STATUS_OK) MOE_FAIL(status, fail, "synthetic routing: out of memory");
    }
    *out = s;
    return MOE_STATUS_OK;
fail:
    moe_sources_destroy(&s);
    return status;
}

void moe_sources_destroy(moe_sources_t *s)
{
    if (!s) return;
    moe_free(s->input);
    moe_free(s->trace_ids);
    moe_free(s->trace_weights);
    free(s->synth_cdf);
    free(s->synth_order);
    free(s->synth_next);
    memset(s, 0, sizeof *s);
}

moe_status_t moe_sources_total_tokens(const moe_sources_t *s, int world, int64_t *tokens,
                                      int *batches)
{
    const moe_config_t *c = s->config;
    const int64_t per_batch = (int64_t)c->run.tokens_per_rank * world;
    int64_t limit = -1; /* tokens the data holds, -1 = unlimited */
    const char *key = NULL, *path = NULL;
    if (s->trace_ids) limit = s->trace_tokens, key = "routing.trace_ids", path = c->routing.trace_ids;
    if (s->input && (limit < 0 || s->input_tokens < limit))
        limit = s->input_tokens, key = "input.path", path = c->input.path;
    if (c->run.batches == 0) {
        if (limit < 0) {
            moe_error("run.batches: 0 (as many as the data holds) needs a trace or an input file");
            return MOE_STATUS_INVALID_ARGUMENT;
        }
        *tokens = limit;
        *batches = (int)((limit + per_batch - 1) / per_batch);
        return MOE_STATUS_OK;
    }
    *tokens = per_batch * c->run.batches;
    *batches = c->run.batches;
    if (limit >= 0 && *tokens > limit) {
        moe_error("%s: %s holds %lld tokens, but %d batches of %d ranks x %d tokens need %lld "
                  "(lower run.batches, or set it to 0 to run what the data holds)", key, path,
                  (long long)limit, c->run.batches, world, c->run.tokens_per_rank, (long long)*tokens);
        return MOE_STATUS_INVALID_ARGUMENT;
    }
    return MOE_STATUS_OK;
}

void moe_sources_input(const moe_sources_t *s, int64_t g0, int n, float *x)
{
    const int d = s->config->model.d_model;
    if (s->input) {
        memcpy(x, s->input + (size_t)g0 * d, sizeof(float) * (size_t)n * d);
        return;
    }
    for (int t = 0; t < n; t++)
        for (int j = 0; j < d; j++)
            x[(size_t)t * d + j] = moe_hash_to_symmetric(
                moe_hash(s->config->run.seed, MOE_TENSOR_INPUT, (uint64_t)(g0 + t), (uint64_t)j, 0));
}

/* One synthetic draw from layer l's popularity. */
static int32_t synth_draw(const moe_sources_t *s, int layer, uint64_t h)
{
    const int E = s->config->model.experts;
    const double *cdf = s->synth_cdf + (size_t)layer * E;
    double u = moe_hash_to_unit(h);
    int lo = 0, hi = E - 1;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (u < cdf[mid]) hi = mid; else lo = mid + 1;
    }
    return s->synth_order[(size_t)layer * E + lo];
}

void moe_sources_route(const moe_sources_t *s, int layer, int64_t g0, int n,
                       const int32_t *prev_ids, int32_t *ids, float *weights)
{
    const moe_config_t *c = s->config;
    const int k = c->model.top_k, E = c->model.experts;
    const uint64_t seed = c->run.seed;
    if (s->trace_ids) {
        const size_t base = ((size_t)layer * s->trace_tokens + (size_t)g0) * k;
        memcpy(ids, s->trace_ids + base, sizeof(int32_t) * (size_t)n * k);
        if (s->trace_weights)
            memcpy(weights, s->trace_weights + base, sizeof(float) * (size_t)n * k);
        else
            for (size_t i = 0; i < (size_t)n * k; i++) weights[i] = 1.0f / (float)k;
        return;
    }
    for (int t = 0; t < n; t++) {
        const uint64_t g = (uint64_t)(g0 + t);
        int32_t *id = ids + (size_t)t * k;
        float *w = weights + (size_t)t * k;
        double sum = 0;
        for (int j = 0; j < k; j++) {
            int32_t e = -1;
            if (prev_ids && moe_hash_to_unit(moe_hash(seed, g, layer, j, MOE_TENSOR_SYNTH_PICK)) <
                                c->routing.affinity)
                e = s->synth_next[(size_t)(layer - 1) * E + prev_ids[(size_t)t * k + j]];
            for (uint64_t attempt = 1;; attempt++) {
                bool repeated = e < 0;
                for (int i = 0; i < j && !repeated; i++) repeated = id[i] == e;
                if (!repeated) break;
                if (attempt > 64) { /* a very skewed law: take the most popular expert left */
                    for (int r = 0; r < E; r++) {
                        e = s->synth_order[(size_t)layer * E + r];
                        bool used = false;
                        for (int i = 0; i < j; i++) used |= id[i] == e;
                        if (!used) break;
                    }
                    break;
                }
                e = synth_draw(s, layer, moe_hash(seed, g, layer, j, MOE_TENSOR_SYNTH_PICK + attempt * 16));
            }
            id[j] = e;
            w[j] = 1.0f + 0.5f * moe_hash_to_symmetric(moe_hash(seed, g, layer, j, MOE_TENSOR_SYNTH_WEIGHT));
            sum += w[j];
        }
        for (int j = 0; j < k; j++) w[j] = (float)(w[j] / sum);
    }
}
