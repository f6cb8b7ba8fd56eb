/* backend_cpu: the stages on the host in float32, with OpenBLAS GEMMs (see backend.h). It is also
 * what the cuda backend is checked against. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/runtime-impl.h"

typedef struct {
    float *send, *recv, *partial, *back;
    int cap_send, cap_recv;
} cpu_chunk_t;

typedef struct {
    const moe_config_t *config;
    const moe_weights_t *w;
    int d, k, max_tokens, chunks;
    float *x, *h, *out, *logits;
    float *expert_in, *expert_out, *scratch; /* grown to the largest expert group */
    int cap_expert;
    float *shared_y, *shared_scratch; /* [max_tokens][d], [max_tokens][3 fs] */
    cpu_chunk_t *chunk;
} cpu_state_t;

static void cpu_destroy(void *state)
{
    cpu_state_t *s = state;
    if (!s) return;
    for (int c = 0; s->chunk && c < s->chunks; c++) {
        moe_free(s->chunk[c].send);
        moe_free(s->chunk[c].recv);
        moe_free(s->chunk[c].partial);
        moe_free(s->chunk[c].back);
    }
    free(s->chunk);
    moe_free(s->x);
    moe_free(s->h);
    moe_free(s->out);
    moe_free(s->logits);
    moe_free(s->expert_in);
    moe_free(s->expert_out);
    moe_free(s->scratch);
    moe_free(s->shared_y);
    moe_free(s->shared_scratch);
    free(s);
}

static moe_status_t cpu_create(const void *config, const void *weights, int max_tokens, int chunks,
                               void **state)
{
    const moe_config_t *cfg = config;
    cpu_state_t *s = calloc(1, sizeof *s);
    if (!s) return MOE_STATUS_NO_MEMORY;
    s->config = cfg;
    s->w = weights;
    s->d = cfg->model.d_model;
    s->k = cfg->model.top_k;
    s->max_tokens = max_tokens;
    s->chunks = chunks;
    size_t nd = (size_t)max_tokens * s->d;
    s->x = moe_calloc(nd, sizeof(float));
    s->h = moe_calloc(nd, sizeof(float));
    s->out = moe_calloc(nd, sizeof(float));
    s->logits = moe_calloc((size_t)max_tokens * cfg->model.experts, sizeof(float));
    s->chunk = calloc((size_t)chunks, sizeof(cpu_chunk_t));
    const moe_weights_t *w = weights;
    if (w->fs > 0) {
        s->shared_y = moe_calloc(nd, sizeof(float));
        s->shared_scratch = moe_calloc((size_t)max_tokens * 3 * w->fs, sizeof(float));
    }
    if (!s->x || !s->h || !s->out || !s->logits || !s->chunk ||
        (w->fs > 0 && (!s->shared_y || !s->shared_scratch))) {
        cpu_destroy(s);
        moe_error("cpu backend: out of memory for %d tokens", max_tokens);
        return MOE_STATUS_NO_MEMORY;
    }
    *state = s;
    return MOE_STATUS_OK;
}

static moe_status_t cpu_load(void *state, const float *x, int n)
{
    cpu_state_t *s = state;
    memcpy(s->x, x, sizeof(float) * (size_t)n * s->d);
    memset(s->out, 0, sizeof(float) * (size_t)n * s->d);
    return MOE_STATUS_OK;
}

static moe_status_t cpu_route(void *state, int layer, int n, bool use_router, int32_t *ids,
                              float *weights)
{
    cpu_state_t *s = state;
    const moe_weights_t *w = s->w;
    moe_rmsnorm_cpu(s->x, w->norm + (size_t)layer * s->d, n, s->d, s->config->model.norm_eps, s->h);
    if (use_router) {
        moe_router_params_t p = moe_model_router_params(s->config, w, layer);
        moe_router_logits_cpu(s->h, w->router + (size_t)layer * w->experts * s->d, n, s->d,
                              w->experts, s->logits);
        moe_router_topk_cpu(s->logits, n, &p, ids, weights);
    }
    return MOE_STATUS_OK;
}

/* Grow a pair of row buffers that share a row count (send/back, recv/partial) to at least `rows`
 * rows of d floats, doubling so that growth is rare. On failure both keep their old size. */
static moe_status_t grow_pair(float **a, float **b, int *cap, int rows, int d)
{
    if (rows <= *cap && *a && *b) return MOE_STATUS_OK;
    int cap_new = *cap > 0 ? *cap : 64;
    while (cap_new < rows) cap_new *= 2;
    float *pa = moe_calloc((size_t)cap_new * d, sizeof(float));
    float *pb = moe_calloc((size_t)cap_new * d, sizeof(float));
    if (!pa || !pb) {
        moe_free(pa);
        moe_free(pb);
        moe_error("cpu backend: out of memory for %d rows of %d", cap_new, d);
        return MOE_STATUS_NO_MEMORY;
    }
    moe_free(*a);
    moe_free(*b);
    *a = pa;
    *b = pb;
    *cap = cap_new;
    return MOE_STATUS_OK;
}

static moe_status_t cpu_chunk_buffers(void *state, int chunk, int n_send, int n_recv,
                                      moe_chunk_buffers_t *out)
{
    moe_status_t status = MOE_STATUS_OK;
    cpu_state_t *s = state;
    cpu_chunk_t *c = &s->chunk[chunk];
    MOE_CHECK(grow_pair(&c->send, &c->back, &c->cap_send, n_send, s->d), fail);
    MOE_CHECK(grow_pair(&c->recv, &c->partial, &c->cap_recv, n_recv, s->d), fail);
    *out = (moe_chunk_buffers_t){c->send, c->recv, c->partial, c->back};
fail:
    return status;
}

static moe_status_t cpu_permute(void *state, int chunk, const int32_t *rows, int n_send)
{
    cpu_state_t *s = state;
    moe_gather_rows_cpu(s->h, s->d, rows, n_send, s->chunk[chunk].send);
    return MOE_STATUS_OK;
}

static moe_status_t cpu_experts(void *state, int layer, int chunk, int n_recv,
                                const moe_expert_groups_t *g, moe_progress_fn progress,
                                void *progress_arg)
{
    cpu_state_t *s = state;
    const moe_weights_t *w = s->w;
    cpu_chunk_t *c = &s->chunk[chunk];
    const int d = s->d, f = w->f;
    memset(c->partial, 0, sizeof(float) * (size_t)n_recv * d);
    int largest = 0;
    for (int e = 0; e < g->slots; e++)
        if (g->offset[e + 1] - g->offset[e] > largest) largest = g->offset[e + 1] - g->offset[e];
    if (largest > s->cap_expert) {
        moe_free(s->expert_in);
        moe_free(s->expert_out);
        moe_free(s->scratch);
        s->expert_in = moe_calloc((size_t)largest * d, sizeof(float));
        s->expert_out = moe_calloc((size_t)largest * d, sizeof(float));
        s->scratch = moe_calloc((size_t)largest * 3 * f, sizeof(float));
        s->cap_expert = largest;
        if (!s->expert_in || !s->expert_out || !s->scratch) {
            s->cap_expert = 0;
            moe_error("cpu backend: out of memory for an expert group of %d rows", largest);
            return MOE_STATUS_NO_MEMORY;
        }
    }
    for (int e = 0; e < g->slots; e++) {
        int begin = g->offset[e], n = g->offset[e + 1] - begin;
        if (n == 0) continue;
        moe_gather_rows_cpu(c->recv, d, g->row + begin, n, s->expert_in);
        moe_expert_ffn_cpu(s->expert_in, moe_weights_expert_gate_up(w, layer, e),
                           moe_weights_expert_down(w, layer, e), n, d, f, s->scratch, s->expert_out);
        moe_scatter_add_cpu(s->expert_out, g->row + begin, g->weight + begin, n, d, c->partial);
        if (progress) progress(progress_arg);
    }
    return MOE_STATUS_OK;
}

static moe_status_t cpu_shared(void *state, int layer, int begin, int end)
{
    cpu_state_t *s = state;
    const moe_weights_t *w = s->w;
    const int d = s->d, fs = w->fs, n = end - begin;
    if (fs == 0 || n <= 0) return MOE_STATUS_OK;
    moe_expert_ffn_cpu(s->h + (size_t)begin * d, w->shared_gate_up + (size_t)layer * 2 * fs * d,
                       w->shared_down + (size_t)layer * d * fs, n, d, fs, s->shared_scratch,
                       s->shared_y);
    float *o = s->out + (size_t)begin * d;
    if (w->shared_gate) { /* Qwen2-MoE: out += sigmoid(h . w_gate) * shared(h) */
        const float *gate = w->shared_gate + (size_t)layer * d;
        for (int t = 0; t < n; t++) {
            const float *ht = s->h + (size_t)(begin + t) * d;
            double dot = 0;
            for (int j = 0; j < d; j++) dot += (double)ht[j] * gate[j];
            float g = 1.0f / (1.0f + expf(-(float)dot));
            for (int j = 0; j < d; j++) o[(size_t)t * d + j] += g * s->shared_y[(size_t)t * d + j];
        }
        return MOE_STATUS_OK;
    }
    for (size_t i = 0; i < (size_t)n * d; i++) o[i] += s->shared_y[i];
    return MOE_STATUS_OK;
}

static moe_status_t cpu_unpermute(void *state, int chunk, const int32_t *rows, int n_send)
{
    cpu_state_t *s = state;
    const float *back = s->chunk[chunk].back;
    for (int i = 0; i < n_send; i++) {
        const float *b = back + (size_t)i * s->d;
        float *o = s->out + (size_t)rows[i] * s->d;
        for (int j = 0; j < s->d; j++) o[j] += b[j];
    }
    return MOE_STATUS_OK;
}

static moe_status_t cpu_residual(void *state, int n)
{
    cpu_state_t *s = state;
    for (size_t i = 0; i < (size_t)n * s->d; i++) {
        s->x[i] += s->out[i];
        s->out[i] = 0.0f;
    }
    return MOE_STATUS_OK;
}

static moe_status_t cpu_store(void *state, float *x, int n)
{
    cpu_state_t *s = state;
    memcpy(x, s->x, sizeof(float) * (size_t)n * s->d);
    return MOE_STATUS_OK;
}

const moe_backend_t moe_backend_cpu = {
    .name = "cpu",
    .elem_bytes = sizeof(float),
    .create = cpu_create,
    .destroy = cpu_destroy,
    .load = cpu_load,
    .route = cpu_route,
    .chunk_buffers = cpu_chunk_buffers,
    .permute = cpu_permute,
    .experts = cpu_experts,
    .shared = cpu_shared,
    .unpermute = cpu_unpermute,
    .residual = cpu_residual,
    .store = cpu_store,
};
