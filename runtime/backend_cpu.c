/* backend_cpu: the stages on the host in float32, with OpenBLAS GEMMs (see backend.h), and its store:
 * host memory, float32 everywhere. It is also what the cuda backend is checked against: every stage
 * is the CPU reference of the GPU kernels (kernels/cpu.c, kernels/dispatch_cpu.c). Stage times are
 * host clock readings. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/runtime-impl.h"

/* ---------------------------------------------------------------- store: host float32 */

struct moe_store_s {
    int unused; /* host memory needs no state */
};

static moe_status_t host_store_create(moe_store_t **out)
{
    moe_store_t *s = calloc(1, sizeof *s);
    if (!s) return MOE_STATUS_NO_MEMORY;
    *out = s;
    return MOE_STATUS_OK;
}

static void host_store_destroy(moe_store_t *s) { free(s); }

static moe_status_t host_alloc(moe_store_t *s, size_t bytes, void **out)
{
    (void)s;
    void *p = moe_malloc(bytes, 1);
    if (!p) {
        moe_error("weights: out of host memory for %zu bytes", bytes);
        return MOE_STATUS_NO_MEMORY;
    }
    *out = p;
    return MOE_STATUS_OK;
}

static void host_release(moe_store_t *s, void *ptr)
{
    (void)s;
    moe_free(ptr);
}

static moe_status_t host_write(moe_store_t *s, void *dst, moe_elem_t elem, size_t first, const void *src,
                               moe_dtype_t dtype, size_t n)
{
    (void)s, (void)elem; /* host elements are always F32 */
    /* the weight dtypes the device store takes too (checkpoint.c reads no others) */
    if (dtype != MOE_DTYPE_F32 && dtype != MOE_DTYPE_BF16 && dtype != MOE_DTYPE_F16) {
        moe_error("weights: cannot convert %s to float32", moe_dtype_name(dtype));
        return MOE_STATUS_UNSUPPORTED;
    }
    const moe_array_t view = {.dtype = dtype, .ndim = 1, .shape = {(int64_t)n}, .data = (void *)src,
                              .nbytes = n * moe_dtype_size(dtype)};
    return moe_array_to_f32(&view, "weights", (float *)dst + first);
}

static moe_status_t host_write_fp8(moe_store_t *s, void *dst, moe_elem_t elem, size_t first,
                                   const moe_fp8_matrix_t *m)
{
    (void)s, (void)elem;
    moe_dequant_fp8_cpu(m->data, m->rows, m->cols, m->scale_inv, m->block, (float *)dst + first);
    return MOE_STATUS_OK;
}

static moe_status_t host_fill(moe_store_t *s, void *dst, moe_elem_t elem, size_t first, size_t n,
                              const moe_seed_rule_t *r)
{
    (void)s, (void)elem;
    moe_seed_fill_cpu(r, n, (float *)dst + first);
    return MOE_STATUS_OK;
}

static moe_status_t host_finish(moe_store_t *s) { (void)s; return MOE_STATUS_OK; }

static moe_status_t host_copy_out(moe_store_t *s, const void *src, size_t bytes, void *host)
{
    (void)s;
    memcpy(host, src, bytes);
    return MOE_STATUS_OK;
}

static moe_status_t host_copy_in(moe_store_t *s, void *dst, size_t bytes, const void *host)
{
    (void)s;
    memcpy(dst, host, bytes);
    return MOE_STATUS_OK;
}

static const moe_store_ops_t host_store = {
    .matrix_elem = MOE_ELEM_F32,
    .host_memory = true,
    .create = host_store_create,
    .destroy = host_store_destroy,
    .alloc = host_alloc,
    .release = host_release,
    .write = host_write,
    .write_fp8 = host_write_fp8,
    .fill = host_fill,
    .finish = host_finish,
    .copy_out = host_copy_out,
    .copy_in = host_copy_in,
};

/* ---------------------------------------------------------------- state */

typedef struct {
    int stage, layer, chunk;
    double start, end; /* seconds from the batch's start */
} span_t;

/* An expert's rows go through its FFN in blocks of at most this many: the scratch stays small (rows x
 * 3 d_ff floats) and transfers progress between blocks. */
#define CPU_EXPERT_ROWS 512

struct moe_backend_state_s {
    void (*progress)(void *arg); /* between experts (set_progress), or NULL */
    void *progress_arg;
    const moe_config_t *config;
    const moe_weights_t *w;
    int rank, P, d, k, L, E, chunks, capacity, max_tokens;
    moe_dispatch_table_t *table; /* [L], host */
    void *table_block;
    float *x, *h, *out, *logits;
    int32_t *ids;      /* [L][max_tokens][k] this batch's routing */
    float *weights;    /* [L][max_tokens][k] */
    int32_t *rep, *token_row; /* [max_tokens][k] of the layer in flight */
    int *rows, *entries, *offset; /* [C][P], [C][R], [C P + 1] */
    size_t row_bytes, meta_offset;
    int cap_send;      /* send (and back) rows */
    char *send;
    float *back;
    int cap_recv;
    char *recv;
    float *partial;
    int cap_entries;   /* expert-major rows */
    float *x_e, *y_e, *scratch;
    int cap_rows;      /* received rows of a chunk */
    int32_t *entry_pos;
    int *group_offset;
    float *shared_y, *shared_scratch;
    /* timing: host clock */
    double batch_start;
    double begin[MOE_STAGE_COUNT + 1];
    span_t *spans;
    int n_spans, cap_spans;
    int64_t *fixed_counts; /* [L][3] rows sent, rows received, entries (fixed capacity) */
    /* hierarchical dispatch (args.nodes), else unused */
    const moe_comm_nodes_t *nodes;
    int *hop_block;        /* [L][2][R]: first hop and code of each replica */
    int *final_rows;       /* [C][P] */
    int cap_recv1, cap_send2;
    char *recv1, *send2;   /* first-hop rows received, second-hop rows forwarded */
    float *partial1, *back2;
    int32_t *relay_row;    /* [cap_recv1][k] */
};

static void cpu_destroy(moe_backend_state_t *s)
{
    if (!s) return;
    free(s->table);
    free(s->table_block);
    moe_free(s->x), moe_free(s->h), moe_free(s->out), moe_free(s->logits);
    moe_free(s->ids), moe_free(s->weights), moe_free(s->rep), moe_free(s->token_row);
    free(s->rows), free(s->entries), free(s->offset);
    moe_free(s->send), moe_free(s->back), moe_free(s->recv), moe_free(s->partial);
    moe_free(s->x_e), moe_free(s->y_e), moe_free(s->scratch), moe_free(s->entry_pos);
    free(s->group_offset);
    moe_free(s->shared_y), moe_free(s->shared_scratch);
    free(s->spans);
    free(s->fixed_counts);
    free(s->hop_block), free(s->final_rows);
    moe_free(s->recv1), moe_free(s->send2), moe_free(s->partial1), moe_free(s->back2), moe_free(s->relay_row);
    free(s);
}

/* Hierarchical dispatch: each replica's first hop and its local index there (moe_hier_hops), into
 * every layer's table. */
static moe_status_t hop_tables(moe_backend_state_t *s, moe_plan_h plan, const moe_comm_nodes_t *nodes)
{
    moe_status_t status = MOE_STATUS_OK;
    size_t R = 0;
    for (int l = 0; l < s->L; l++) R += (size_t)s->table[l].replicas;
    s->nodes = nodes;
    s->hop_block = malloc(sizeof(int) * (2 * R + 1));
    s->final_rows = calloc((size_t)s->chunks * s->P, sizeof(int));
    if (!s->hop_block || !s->final_rows)
        MOE_FAIL(MOE_STATUS_NO_MEMORY, fail, "cpu backend: out of memory for the hierarchical dispatch tables");
    MOE_CHECK(moe_hier_hops(plan, nodes, s->rank, s->hop_block), fail);
    int *at = s->hop_block;
    for (int l = 0; l < s->L; l++) {
        s->table[l].hop = at, s->table[l].code = at + s->table[l].replicas;
        at += 2 * s->table[l].replicas;
    }
fail:
    return status;
}

static moe_status_t cpu_create(const moe_backend_args_t *a, moe_backend_state_t **out)
{
    moe_status_t status = MOE_STATUS_OK;
    const moe_config_t *c = a->config;
    moe_backend_state_t *s = calloc(1, sizeof *s);
    MOE_CHECK_ALLOC(s, fail);
    s->config = c;
    s->w = a->weights;
    s->rank = a->rank, s->P = a->ranks;
    s->d = c->model.d_model, s->k = c->model.top_k, s->L = c->model.layers, s->E = c->model.experts;
    s->chunks = a->chunks, s->capacity = a->capacity, s->max_tokens = a->max_tokens;
    size_t table_bytes;
    MOE_CHECK(moe_dispatch_tables(a->plan, a->rank, &s->table, &s->table_block, &table_bytes), fail_free);
    int R = 0, slots = 0;
    for (int l = 0; l < s->L; l++) {
        R = s->table[l].replicas > R ? s->table[l].replicas : R;
        slots = s->w->local_count[l] > slots ? s->w->local_count[l] : slots;
    }
    const size_t T = (size_t)a->max_tokens, d = (size_t)s->d, k = (size_t)s->k, C = (size_t)s->chunks;
    const size_t P = (size_t)s->P;
    s->meta_offset = moe_wire_meta_offset(s->d, sizeof(float));
    s->row_bytes = moe_wire_row_bytes(s->d, s->k, sizeof(float));
    /* a token sends at most one row to each of min(k, P) ranks */
    s->cap_send = a->capacity > 0 ? (int)(C * P * (size_t)a->capacity) : (int)(T * (k < P ? k : P));
    s->x = moe_calloc(T * d, sizeof(float));
    s->h = moe_calloc(T * d, sizeof(float));
    s->out = moe_calloc(T * d, sizeof(float));
    s->logits = moe_calloc(T * (size_t)s->E + 1, sizeof(float));
    s->ids = moe_calloc((size_t)s->L * T * k + 1, sizeof(int32_t));
    s->weights = moe_calloc((size_t)s->L * T * k + 1, sizeof(float));
    s->rep = moe_calloc(T * k + 1, sizeof(int32_t));
    s->token_row = moe_calloc(T * k + 1, sizeof(int32_t));
    s->rows = calloc(C * P, sizeof(int));
    s->entries = calloc(C * (size_t)R + 1, sizeof(int));
    s->offset = calloc(C * P + 1, sizeof(int));
    s->send = moe_calloc((size_t)s->cap_send + 1, s->row_bytes);
    s->back = moe_calloc(((size_t)s->cap_send + 1) * d, sizeof(float));
    s->group_offset = calloc((size_t)slots + 2, sizeof(int));
    s->fixed_counts = calloc((size_t)s->L * 3, sizeof(int64_t));
    if (s->w->fs > 0) {
        s->shared_y = moe_calloc(T * d, sizeof(float));
        s->shared_scratch = moe_calloc(T * 3 * (size_t)s->w->fs, sizeof(float));
        MOE_CHECK_ALLOC(s->shared_y, fail_free);
        MOE_CHECK_ALLOC(s->shared_scratch, fail_free);
    }
    if (a->nodes) MOE_CHECK(hop_tables(s, a->plan, a->nodes), fail_free);
    if (!s->x || !s->h || !s->out || !s->logits || !s->ids || !s->weights || !s->rep || !s->token_row ||
        !s->rows || !s->entries || !s->offset || !s->send || !s->back || !s->group_offset || !s->fixed_counts)
        MOE_FAIL(MOE_STATUS_NO_MEMORY, fail_free, "cpu backend: out of memory for %d tokens", a->max_tokens);
    *out = s;
    return MOE_STATUS_OK;
fail_free:
    cpu_destroy(s);
fail:
    return status;
}

/* ---------------------------------------------------------------- timing */

static void cpu_mark(moe_backend_state_t *s, int stage, int layer, int chunk, bool begin)
{
    const double now = moe_now() - s->batch_start;
    if (begin) {
        s->begin[stage] = now;
        return;
    }
    if (s->n_spans == s->cap_spans) {
        int cap = s->cap_spans ? 2 * s->cap_spans : 256;
        span_t *p = realloc(s->spans, sizeof(span_t) * (size_t)cap);
        if (!p) return; /* a span lost: timing only */
        s->spans = p;
        s->cap_spans = cap;
    }
    s->spans[s->n_spans++] = (span_t){stage, layer, chunk, s->begin[stage], now};
}

static moe_status_t cpu_timeline(moe_backend_state_t *s, int n, moe_layer_metrics_t *m, moe_trace_h trace)
{
    (void)n;
    for (int i = 0; i < s->n_spans; i++) {
        const span_t *sp = &s->spans[i];
        const double t = sp->end - sp->start;
        if (sp->stage == MOE_STAGE_COUNT)
            m[sp->layer].layer_time += t;
        else
            m[sp->layer].time[sp->stage] += t;
        if (trace)
            moe_trace_span(trace, sp->stage == MOE_STAGE_COUNT ? "layer" : moe_stage_name(sp->stage), sp->layer,
                           sp->chunk, "host", 1e6 * sp->start, 1e6 * t);
    }
    if (s->capacity > 0)
        for (int l = 0; l < s->L; l++) {
            m[l].rows_sent += s->fixed_counts[3 * l];
            m[l].rows_received += s->fixed_counts[3 * l + 1];
            m[l].load += s->fixed_counts[3 * l + 2];
        }
    return MOE_STATUS_OK;
}

/* ---------------------------------------------------------------- stages */

static moe_status_t cpu_load(moe_backend_state_t *s, const float *x, int n)
{
    s->batch_start = moe_now();
    s->n_spans = 0;
    memset(s->fixed_counts, 0, sizeof(int64_t) * 3 * (size_t)s->L);
    memcpy(s->x, x, sizeof(float) * (size_t)n * s->d);
    memset(s->out, 0, sizeof(float) * (size_t)n * s->d);
    return MOE_STATUS_OK;
}

static moe_status_t cpu_route(moe_backend_state_t *s, int layer, int n, const int32_t *ids, const float *weights)
{
    const moe_weights_t *w = s->w;
    const size_t at = (size_t)layer * s->max_tokens * s->k;
    moe_rmsnorm_cpu(s->x, (const float *)w->norm + (size_t)layer * s->d, n, s->d, s->config->model.norm_eps, s->h);
    if (ids) {
        memcpy(s->ids + at, ids, sizeof(int32_t) * (size_t)n * s->k);
        memcpy(s->weights + at, weights, sizeof(float) * (size_t)n * s->k);
        return MOE_STATUS_OK;
    }
    moe_router_params_t p = moe_model_router_params(s->config, w, layer);
    moe_router_logits_cpu(s->h, (const float *)w->router + (size_t)layer * s->E * s->d, n, s->d, s->E, s->logits);
    moe_router_topk_cpu(s->logits, n, &p, s->ids + at, s->weights + at);
    return MOE_STATUS_OK;
}

static moe_status_t cpu_plan(moe_backend_state_t *s, int layer, int64_t g0, int n)
{
    const moe_dispatch_table_t *t = &s->table[layer];
    const size_t at = (size_t)layer * s->max_tokens * s->k;
    cpu_mark(s, MOE_STAGE_PLAN, layer, 0, true);
    moe_dispatch_count_cpu(s->ids + at, n, s->k, g0, t, s->chunks, s->rep, s->rows, s->entries);
    moe_dispatch_offsets_cpu(s->rows, s->chunks, s->P, s->capacity, s->offset);
    if (s->nodes) moe_dispatch_final_rows_cpu(s->rep, n, s->k, t, s->chunks, s->final_rows);
    cpu_mark(s, MOE_STAGE_PLAN, layer, 0, false);
    cpu_mark(s, MOE_STAGE_PERMUTE, layer, 0, true);
    if (s->capacity > 0) {
        moe_dispatch_clear_meta_cpu(s->send, s->cap_send, s->row_bytes, s->meta_offset, s->k);
        for (int i = 0; i < s->chunks * s->P; i++) s->fixed_counts[3 * layer] += s->rows[i];
    }
    moe_dispatch_pack_cpu(s->h, s->ids + at, s->weights + at, s->rep, n, s->k, s->d, t, s->chunks, s->offset, s->send,
                          s->row_bytes, s->meta_offset, s->token_row);
    cpu_mark(s, MOE_STAGE_PERMUTE, layer, 0, false);
    return MOE_STATUS_OK;
}

static moe_status_t cpu_counts(moe_backend_state_t *s, const int **rows, const int **entries)
{
    *rows = s->rows;
    *entries = s->entries;
    return MOE_STATUS_OK;
}

static moe_status_t cpu_buffers(moe_backend_state_t *s, int n_recv, moe_wire_t *out)
{
    if (n_recv > s->cap_recv || !s->recv) {
        int cap = s->cap_recv > 0 ? s->cap_recv : 64;
        while (cap < n_recv) cap *= 2;
        char *recv = moe_malloc((size_t)cap, s->row_bytes);
        float *partial = moe_malloc((size_t)cap * s->d, sizeof(float));
        if (!recv || !partial) {
            moe_free(recv), moe_free(partial);
            moe_error("cpu backend: out of memory for %d received rows", cap);
            return MOE_STATUS_NO_MEMORY;
        }
        moe_free(s->recv), moe_free(s->partial);
        s->recv = recv, s->partial = partial, s->cap_recv = cap;
    }
    *out = (moe_wire_t){.send = s->send, .recv = s->recv, .partial = s->partial, .back = s->back,
                        .row_bytes = s->row_bytes, .meta_offset = s->meta_offset,
                        .back_bytes = sizeof(float) * (size_t)s->d};
    return MOE_STATUS_OK;
}

/* ---------------------------------------------------------------- hierarchical dispatch: the relay */

static moe_status_t cpu_final_rows(moe_backend_state_t *s, const int **rows)
{
    if (!s->nodes) {
        moe_error("cpu backend: final_rows without hierarchical dispatch");
        return MOE_STATUS_INTERNAL;
    }
    *rows = s->final_rows;
    return MOE_STATUS_OK;
}

static moe_status_t cpu_relay_buffers(moe_backend_state_t *s, int n_recv1, int n_send2, moe_wire_t *out)
{
    const size_t d = (size_t)s->d, k = (size_t)s->k;
    if (n_recv1 > s->cap_recv1 || !s->recv1) {
        int cap = s->cap_recv1 > 0 ? s->cap_recv1 : 64;
        while (cap < n_recv1) cap *= 2;
        moe_free(s->recv1), moe_free(s->partial1), moe_free(s->relay_row);
        s->recv1 = moe_malloc((size_t)cap, s->row_bytes);
        s->partial1 = moe_malloc((size_t)cap * d, sizeof(float));
        s->relay_row = moe_malloc((size_t)cap * k, sizeof(int32_t));
        s->cap_recv1 = cap;
        if (!s->recv1 || !s->partial1 || !s->relay_row) {
            s->cap_recv1 = 0;
            moe_error("cpu backend: out of memory for %d first-hop rows", cap);
            return MOE_STATUS_NO_MEMORY;
        }
    }
    if (n_send2 > s->cap_send2 || !s->send2) {
        int cap = s->cap_send2 > 0 ? s->cap_send2 : 64;
        while (cap < n_send2) cap *= 2;
        moe_free(s->send2), moe_free(s->back2);
        s->send2 = moe_malloc((size_t)cap, s->row_bytes);
        s->back2 = moe_malloc((size_t)cap * d, sizeof(float));
        s->cap_send2 = cap;
        if (!s->send2 || !s->back2) {
            s->cap_send2 = 0;
            moe_error("cpu backend: out of memory for %d second-hop rows", cap);
            return MOE_STATUS_NO_MEMORY;
        }
    }
    *out = (moe_wire_t){.send = s->send2, .recv = s->recv1, .partial = s->partial1, .back = s->back2,
                        .row_bytes = s->row_bytes, .meta_offset = s->meta_offset,
                        .back_bytes = sizeof(float) * d};
    return MOE_STATUS_OK;
}

static moe_status_t cpu_relay_pack(moe_backend_state_t *s, int layer, int recv1_first, int n1, int *next)
{
    (void)layer;
    const moe_comm_nodes_t *nd = s->nodes;
    const int G = nd->per_node;
    return moe_relay_pack_cpu(s->recv1 + (size_t)recv1_first * s->row_bytes, n1, s->row_bytes, s->meta_offset, s->k,
                              s->E, nd->rank_at + (size_t)nd->node[s->rank] * G, G, next, s->send2,
                              s->relay_row + (size_t)recv1_first * s->k);
}

static moe_status_t cpu_relay_sum(moe_backend_state_t *s, int recv1_first, int n1)
{
    float *partial = s->partial1 + (size_t)recv1_first * s->d;
    memset(partial, 0, sizeof(float) * (size_t)n1 * s->d);
    moe_unpermute_tokens_cpu(s->back2, s->relay_row + (size_t)recv1_first * s->k, 0, n1, s->k, s->d, partial);
    return MOE_STATUS_OK;
}

static moe_status_t cpu_experts(moe_backend_state_t *s, int layer, int chunk, int recv_first, int n_recv,
                                const int *slot_rows)
{
    moe_status_t status = MOE_STATUS_OK;
    (void)chunk, (void)slot_rows;
    const moe_weights_t *w = s->w;
    const int d = s->d, f = w->f, k = s->k, slots = w->local_count[layer];
    const int cap = n_recv * (k < slots ? k : slots);
    if (cap > s->cap_entries || !s->x_e) {
        int c = s->cap_entries > 0 ? s->cap_entries : 64;
        while (c < cap) c *= 2;
        moe_free(s->x_e), moe_free(s->y_e), moe_free(s->scratch);
        s->x_e = moe_malloc((size_t)c * d, sizeof(float));
        s->y_e = moe_malloc((size_t)c * d, sizeof(float));
        s->scratch = moe_malloc((size_t)(c < CPU_EXPERT_ROWS ? c : CPU_EXPERT_ROWS) * 3 * f, sizeof(float));
        s->cap_entries = c;
        if (!s->x_e || !s->y_e || !s->scratch) {
            s->cap_entries = 0;
            MOE_FAIL(MOE_STATUS_NO_MEMORY, fail, "cpu backend: out of memory for %d expert rows", c);
        }
    }
    if (n_recv > s->cap_rows || !s->entry_pos) {
        int c = s->cap_rows > 0 ? s->cap_rows : 64;
        while (c < n_recv) c *= 2;
        moe_free(s->entry_pos);
        s->entry_pos = moe_malloc((size_t)c * k, sizeof(int32_t));
        s->cap_rows = s->entry_pos ? c : 0;
        MOE_CHECK_ALLOC(s->entry_pos, fail);
    }
    const char *recv = s->recv + (size_t)recv_first * s->row_bytes;
    float *partial = s->partial + (size_t)recv_first * d;
    int *offset = s->group_offset;
    MOE_CHECK(moe_expert_group_cpu(recv, n_recv, s->row_bytes, s->meta_offset, k, s->table[layer].local_slot, s->E,
                                   slots, d, offset, s->entry_pos, s->x_e), fail);
    for (int e = 0; e < slots; e++)
        for (int r = offset[e]; r < offset[e + 1]; r += CPU_EXPERT_ROWS) {
            const int rows = offset[e + 1] - r < CPU_EXPERT_ROWS ? offset[e + 1] - r : CPU_EXPERT_ROWS;
            moe_expert_ffn_cpu(s->x_e + (size_t)r * d, moe_weights_expert_gate_up(w, layer, e),
                               moe_weights_expert_down(w, layer, e), rows, d, f, s->scratch, s->y_e + (size_t)r * d);
            if (s->progress) s->progress(s->progress_arg);
        }
    moe_expert_combine_cpu(s->y_e, s->entry_pos, recv, n_recv, s->row_bytes, s->meta_offset, k, d, partial);
    if (s->capacity > 0) {
        int used = 0;
        for (int r = 0; r < n_recv; r++) {
            bool any = false;
            for (int j = 0; j < k; j++) any |= s->entry_pos[(size_t)r * k + j] >= 0;
            used += any;
        }
        s->fixed_counts[3 * layer + 1] += used;
        s->fixed_counts[3 * layer + 2] += offset[slots];
    }
fail:
    return status;
}

static moe_status_t cpu_shared(moe_backend_state_t *s, int layer, int n)
{
    const moe_weights_t *w = s->w;
    const int d = s->d, fs = w->fs;
    if (fs == 0 || n <= 0) return MOE_STATUS_OK;
    moe_expert_ffn_cpu(s->h, (const float *)w->shared_gate_up + (size_t)layer * 2 * fs * d,
                       (const float *)w->shared_down + (size_t)layer * d * fs, n, d, fs, s->shared_scratch,
                       s->shared_y);
    if (w->shared_gate) { /* Qwen2-MoE: out += sigmoid(h . w_gate) * shared(h) */
        const float *gate = (const float *)w->shared_gate + (size_t)layer * d;
        for (int t = 0; t < n; t++) {
            const float *ht = s->h + (size_t)t * d;
            double dot = 0;
            for (int j = 0; j < d; j++) dot += (double)ht[j] * gate[j];
            float g = 1.0f / (1.0f + expf(-(float)dot));
            for (int j = 0; j < d; j++) s->out[(size_t)t * d + j] += g * s->shared_y[(size_t)t * d + j];
        }
        return MOE_STATUS_OK;
    }
    for (size_t i = 0; i < (size_t)n * d; i++) s->out[i] += s->shared_y[i];
    return MOE_STATUS_OK;
}

static moe_status_t cpu_unpermute(moe_backend_state_t *s, int chunk, int n)
{
    const int begin = (int)((int64_t)n * chunk / s->chunks), end = (int)((int64_t)n * (chunk + 1) / s->chunks);
    moe_unpermute_tokens_cpu(s->back, s->token_row, begin, end, s->k, s->d, s->out);
    return MOE_STATUS_OK;
}

static moe_status_t cpu_residual(moe_backend_state_t *s, int n)
{
    for (size_t i = 0; i < (size_t)n * s->d; i++) {
        s->x[i] += s->out[i];
        s->out[i] = 0.0f;
    }
    return MOE_STATUS_OK;
}

static moe_status_t cpu_store(moe_backend_state_t *s, float *x, int n)
{
    memcpy(x, s->x, sizeof(float) * (size_t)n * s->d);
    return MOE_STATUS_OK;
}

static moe_status_t cpu_routes(moe_backend_state_t *s, int n, int32_t *ids)
{
    for (int l = 0; l < s->L; l++)
        memcpy(ids + (size_t)l * n * s->k, s->ids + (size_t)l * s->max_tokens * s->k, sizeof(int32_t) * (size_t)n * s->k);
    return MOE_STATUS_OK;
}

static void cpu_set_progress(moe_backend_state_t *s, void (*progress)(void *arg), void *arg)
{
    s->progress = progress;
    s->progress_arg = arg;
}

const moe_backend_t moe_backend_cpu = {
    .name = "cpu",
    .memory = &host_store,
    .create = cpu_create,
    .destroy = cpu_destroy,
    .load = cpu_load,
    .route = cpu_route,
    .plan = cpu_plan,
    .counts = cpu_counts,
    .buffers = cpu_buffers,
    .experts = cpu_experts,
    .set_progress = cpu_set_progress,
    .shared = cpu_shared,
    .unpermute = cpu_unpermute,
    .residual = cpu_residual,
    .store = cpu_store,
    .routes = cpu_routes,
    .mark = cpu_mark,
    .timeline = cpu_timeline,
    .transfer_events = NULL,
    .final_rows = cpu_final_rows,
    .relay_buffers = cpu_relay_buffers,
    .relay_pack = cpu_relay_pack,
    .relay_sum = cpu_relay_sum,
};
