/* weights: a rank's weights laid out in its backend's store (backend.h): the dense part of every
 * layer in one allocation cut by offsets, the routed experts one slot (gate_up, then down) per
 * allocation. Seeded weights are computed by the store where they live (for cuda, on the device, by
 * the same rule as the host, kernels.h's moe_seed_rule_t); checkpoint weights come from checkpoint.c through the same
 * store. A plan change shares the dense part and the experts a rank keeps between the old and the
 * new weights (moe_weights_hand_over), so nothing is copied or uploaded twice. */
#include <stdlib.h>
#include <string.h>

#include "runtime/model/model-impl.h"

/* 256-byte aligned pieces of the dense block. */
static size_t round256(size_t bytes) { return (bytes + 255) / 256 * 256; }

moe_status_t moe_weights_layout(const moe_config_t *config, const moe_plan_h plan, int rank,
                                const moe_store_ops_t *ops, moe_store_t *store, const moe_weights_t *share_dense,
                                moe_weights_t *out)
{
    moe_status_t status = MOE_STATUS_OK;
    const moe_model_config_t *m = &config->model;
    moe_weights_t w = {.ops = ops, .store = store, .layers = m->layers, .d = m->d_model, .f = m->d_ff,
                       .fs = m->shared_experts * m->shared_d_ff, .experts = m->experts};
    const size_t L = (size_t)w.layers, d = (size_t)w.d, f = (size_t)w.f, fs = (size_t)w.fs, E = (size_t)w.experts;
    const size_t melem = moe_elem_size(ops->matrix_elem);
    w.local_count = calloc(L, sizeof(int));
    w.local_offset = calloc(L, sizeof(int));
    if (!w.local_count || !w.local_offset) goto oom;
    size_t slots = 0;
    for (size_t l = 0; l < L; l++) {
        w.local_offset[l] = (int)slots;
        w.local_count[l] = moe_plan_local_experts(plan, (int)l, rank, NULL);
        slots += (size_t)w.local_count[l];
    }
    w.slots = (int)slots;
    w.expert_bytes = 3 * f * d * melem;
    w.expert = calloc(slots + 1, sizeof(void *));
    w.owned = calloc(slots + 1, sizeof(bool));
    if (!w.expert || !w.owned) goto oom;

    /* The dense part: norms, routers, biases and shared gates in f32; shared experts in matrices. */
    const size_t n_norm = L * d, n_router = L * E * d, n_bias = m->score_bias ? L * E : 0,
                 n_sgu = L * 2 * fs * d, n_sd = L * d * fs, n_gate = m->shared_gate && fs ? L * d : 0;
    const size_t parts[6] = {round256(4 * n_norm), round256(4 * n_router), round256(4 * n_bias),
                             round256(melem * n_sgu), round256(melem * n_sd), round256(4 * n_gate)};
    w.dense_bytes = 0;
    for (int i = 0; i < 6; i++) w.dense_bytes += parts[i];
    if (share_dense) {
        w.dense_block = share_dense->dense_block;
        w.dense_shared = true;
    } else {
        MOE_CHECK(ops->alloc(store, w.dense_bytes, &w.dense_block), fail);
        for (size_t i = 0; i < slots; i++) {
            MOE_CHECK(ops->alloc(store, w.expert_bytes, &w.expert[i]), fail);
            w.owned[i] = true;
        }
    }
    char *p = w.dense_block;
    w.norm = p, p += parts[0];
    w.router = p, p += parts[1];
    w.score_bias = n_bias ? p : NULL, p += parts[2];
    w.shared_gate_up = fs ? p : NULL, p += parts[3];
    w.shared_down = fs ? p : NULL, p += parts[4];
    w.shared_gate = n_gate ? p : NULL;
    *out = w;
    return MOE_STATUS_OK;
oom:
    status = MOE_STATUS_NO_MEMORY;
    moe_error("weights: out of memory (%s: %d layers, d_model %d, d_ff %d)", config->source_path, m->layers,
              m->d_model, m->d_ff);
fail:
    moe_weights_destroy(&w);
    return status;
}

/* The seeded rule of one tensor, whole, into dst from element `first`. */
static moe_status_t fill(const moe_weights_t *w, void *dst, moe_elem_t elem, size_t first, size_t n, uint64_t seed,
                         int layer, int expert, int tensor, int fan_in, float scale, float offset, float factor)
{
    const moe_seed_rule_t rule = {.seed = seed, .layer = layer, .expert = expert, .tensor = tensor, .fan_in = fan_in,
                                  .scale = scale, .offset = offset, .factor = factor};
    return w->ops->fill(w->store, dst, elem, first, n, &rule);
}

moe_status_t moe_weights_create(const moe_config_t *config, const moe_plan_h plan, int rank,
                                const moe_store_ops_t *ops, moe_store_t *store, moe_watch_h watch,
                                moe_weights_t *out)
{
    moe_status_t status = MOE_STATUS_OK;
    const uint64_t seed = config->run.seed;
    const float scale = config->weights.scale;
    moe_weights_t w;
    MOE_CHECK(moe_weights_layout(config, plan, rank, ops, store, NULL, &w), fail);
    const size_t L = (size_t)w.layers, d = (size_t)w.d, f = (size_t)w.f, fs = (size_t)w.fs, E = (size_t)w.experts;
    const moe_elem_t F32 = MOE_ELEM_F32, M = ops->matrix_elem;

    if (config->weights.kind == MOE_WEIGHTS_CHECKPOINT) {
        MOE_CHECK(moe_checkpoint_load(config, plan, rank, watch, &w), fail_destroy);
    } else {
        for (size_t l = 0; l < L; l++) {
            const int li = (int)l;
            MOE_CHECK(fill(&w, w.norm, F32, l * d, d, seed, li, 0, MOE_TENSOR_NORM, 1, 1.0f, 1.0f, 0.1f), fail_destroy);
            MOE_CHECK(fill(&w, w.router, F32, l * E * d, E * d, seed, li, 0, MOE_TENSOR_ROUTER, (int)d, 1.0f, 0.0f,
                           1.0f), fail_destroy);
            if (w.score_bias)
                MOE_CHECK(fill(&w, w.score_bias, F32, l * E, E, seed, li, 0, MOE_TENSOR_BIAS, 1, 1.0f, 0.0f, 0.05f),
                          fail_destroy);
            if (fs) {
                MOE_CHECK(fill(&w, w.shared_gate_up, M, l * 2 * fs * d, 2 * fs * d, seed, li, 0,
                               MOE_TENSOR_SHARED_GATE_UP, (int)d, scale, 0.0f, 1.0f), fail_destroy);
                MOE_CHECK(fill(&w, w.shared_down, M, l * d * fs, d * fs, seed, li, 0, MOE_TENSOR_SHARED_DOWN, (int)fs,
                               scale, 0.0f, 1.0f), fail_destroy);
            }
            if (w.shared_gate)
                MOE_CHECK(fill(&w, w.shared_gate, F32, l * d, d, seed, li, 0, MOE_TENSOR_SHARED_GATE, (int)d, 1.0f,
                               0.0f, 1.0f), fail_destroy);
            const int *experts;
            const int n = moe_plan_local_experts(plan, li, rank, &experts);
            for (int s = 0; s < n; s++) {
                moe_watch_poll(watch); /* seeding a shard takes a while: answer ranks that wait */
                void *slot = moe_weights_slot(&w, li, s);
                MOE_CHECK(fill(&w, slot, M, 0, 2 * f * d, seed, li, experts[s], MOE_TENSOR_GATE_UP, (int)d, scale,
                               0.0f, 1.0f), fail_destroy);
                MOE_CHECK(fill(&w, slot, M, 2 * f * d, d * f, seed, li, experts[s], MOE_TENSOR_DOWN, (int)f, scale,
                               0.0f, 1.0f), fail_destroy);
            }
        }
    }
    MOE_CHECK(ops->finish(store), fail_destroy);
    *out = w;
    return MOE_STATUS_OK;
fail_destroy:
    moe_weights_destroy(&w);
fail:
    return status;
}

typedef struct {
    const void *ptr;
    int slot;
} slot_ptr_t;

static int cmp_slot_ptr(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t)((const slot_ptr_t *)a)->ptr, y = (uintptr_t)((const slot_ptr_t *)b)->ptr;
    return (x > y) - (x < y);
}

void moe_weights_hand_over(moe_weights_t *to, moe_weights_t *from)
{
    to->dense_shared = from->dense_shared;
    from->dense_shared = true;
    /* from's experts sorted by address, so that each borrowed one is found by bisection */
    slot_ptr_t *index = malloc(sizeof(slot_ptr_t) * ((size_t)from->slots + 1));
    for (int j = 0; index && j < from->slots; j++) index[j] = (slot_ptr_t){from->expert[j], j};
    if (index) qsort(index, (size_t)from->slots, sizeof(slot_ptr_t), cmp_slot_ptr);
    for (int i = 0; i < to->slots; i++) {
        if (to->owned[i]) continue;
        slot_ptr_t key = {to->expert[i], 0}, *hit = NULL;
        if (index)
            hit = bsearch(&key, index, (size_t)from->slots, sizeof(slot_ptr_t), cmp_slot_ptr);
        else /* no memory for the index: the plain search */
            for (int j = 0; j < from->slots; j++)
                if (from->expert[j] == to->expert[i]) from->owned[j] = false;
        if (hit) from->owned[hit->slot] = false;
        to->owned[i] = true;
    }
    free(index);
}

void moe_weights_destroy(moe_weights_t *w)
{
    if (!w) return;
    if (w->ops) {
        if (!w->dense_shared) w->ops->release(w->store, w->dense_block);
        for (int i = 0; w->owned && i < w->slots; i++)
            if (w->owned[i]) w->ops->release(w->store, w->expert[i]);
    }
    free(w->expert);
    free(w->owned);
    free(w->local_count);
    free(w->local_offset);
    memset(w, 0, sizeof *w);
}

size_t moe_weights_bytes(const moe_weights_t *w)
{
    size_t bytes = w->dense_shared ? 0 : w->dense_bytes;
    for (int i = 0; i < w->slots; i++)
        if (w->owned[i]) bytes += w->expert_bytes;
    return bytes;
}
