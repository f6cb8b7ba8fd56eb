/* layer: the scheduler. One MoE layer on one rank over the backend's stages (backend.h):
 *
 *   route -> plan (the dispatch layout: destinations, counts, every chunk's send rows packed)
 *   -> shared experts, queued while the counts come back
 *   -> counts exchange (host, MPI; skipped at fixed capacity)
 *   -> for each chunk: dispatch (chunk c+1 posted before chunk c computes) -> experts -> combine
 *      posted -> wait for the previous chunk's combine -> un-permute it
 *   -> residual.
 *
 * A token travels once to each destination rank, however many of its k experts live there: its
 * wire row carries its k (expert, weight) pairs, -1 where a choice goes elsewhere, and the
 * destination returns one row, the weighted sum of its local experts' outputs. Per direction and
 * chunk there is one all-to-all-v of rows, posted in the same order on every rank whatever the
 * counts, so that no rank waits on a collective another never posts. The counts exchange carries,
 * per peer and chunk, the rows it will get and the (token, expert) pairs each of its expert slots
 * will get, so that the receiver can size its buffers and knows its experts' rows without
 * reading them back. At fixed capacity (run.buffers: fixed) every (chunk, peer) block is full size
 * and unused rows say "no expert": nothing is exchanged, and a layer never waits for the host.
 * C = 1 is the plain, non-overlapped schedule. */
#include <stdlib.h>
#include <string.h>

#include "runtime/runtime-impl.h"


struct moe_scheduler_s {
    const moe_config_t *config;
    moe_plan_h plan;
    const moe_sources_t *sources;
    const moe_backend_t *backend;
    moe_backend_state_t *state;
    moe_comm_h comm, meta_comm;
    int rank, P, k, L, chunks, max_tokens, capacity;
    bool graphs;
    moe_slot_table_t *table;  /* [L] */
    /* counts of the current layer, host */
    int *send_rows;        /* [C][P] */
    int *recv_rows;        /* [C][P] */
    int *send_first;       /* [C] first send row of chunk c */
    int *recv_first;       /* [C + 1] */
    int *slot_rows;        /* [C][slots] */
    int *msg_send, *msg_recv, *msg_send_count, *msg_recv_count; /* counts exchange */
    int max_slots, max_msg;
    moe_comm_op_h *op_rows; /* [C] in flight */
    const moe_comm_nodes_t *nodes; /* borrowed: the copies' intra/inter split */
    moe_hier_h hier;        /* hierarchical dispatch (hier.c), or NULL: flat */
};

void moe_scheduler_destroy(moe_scheduler_h s)
{
    if (!s) return;
    for (int l = 0; s->table && l < s->L; l++) {
        free(s->table[l].peer_first);
        free(s->table[l].peer_rep);
    }
    free(s->table);
    free(s->send_rows);
    free(s->recv_rows);
    free(s->send_first);
    free(s->recv_first);
    free(s->slot_rows);
    free(s->msg_send);
    free(s->msg_recv);
    free(s->msg_send_count);
    free(s->msg_recv_count);
    free(s->op_rows);
    moe_hier_destroy(s->hier);
    free(s);
}

moe_status_t moe_slot_table_build(const moe_plan_h plan, int layer, int rank, moe_slot_table_t *t)
{
    const int E = moe_plan_experts(plan), P = moe_plan_ranks(plan);
    int *first = malloc(sizeof(int) * ((size_t)E + 1));
    if (!first) return MOE_STATUS_NO_MEMORY;
    first[0] = 0;
    for (int e = 0; e < E; e++) first[e + 1] = first[e] + moe_plan_replicas(plan, layer, e, NULL, NULL);
    t->replicas = first[E];
    t->peer_first = malloc(sizeof(int) * ((size_t)P + 1));
    t->peer_rep = malloc(sizeof(int) * ((size_t)t->replicas + 1));
    if (!t->peer_first || !t->peer_rep) {
        free(first);
        return MOE_STATUS_NO_MEMORY;
    }
    t->peer_first[0] = 0;
    for (int p = 0; p < P; p++) {
        const int *experts;
        const int n = moe_plan_local_experts(plan, layer, p, &experts);
        for (int i = 0; i < n; i++) {
            const int *ranks;
            const int e = experts[i], nr = moe_plan_replicas(plan, layer, e, &ranks, NULL);
            int r = 0;
            while (r < nr && ranks[r] != p) r++;
            t->peer_rep[t->peer_first[p] + i] = first[e] + r;
        }
        t->peer_first[p + 1] = t->peer_first[p] + n;
    }
    t->slots = t->peer_first[rank + 1] - t->peer_first[rank];
    free(first);
    return MOE_STATUS_OK;
}

/* Between experts on host backends: transfers in flight advance (MPI progresses non-blocking
 * collectives only inside MPI calls) and waiting ranks are answered. */
static void progress(void *arg)
{
    moe_scheduler_h s = arg;
    moe_comm_progress(s->comm);
    if (s->meta_comm != s->comm) moe_comm_progress(s->meta_comm);
}

moe_status_t moe_scheduler_create(const moe_scheduler_args_t *a, moe_scheduler_h *out)
{
    moe_status_t status = MOE_STATUS_OK;
    struct moe_scheduler_s *s = calloc(1, sizeof *s);
    MOE_CHECK_ALLOC(s, fail);
    s->config = a->config;
    s->plan = a->plan;
    s->sources = a->sources;
    s->backend = a->backend;
    s->state = a->backend_state;
    s->comm = a->comm;
    s->meta_comm = a->meta_comm ? a->meta_comm : a->comm;
    s->rank = moe_comm_rank(a->comm);
    s->P = moe_comm_size(a->comm);
    s->k = a->config->model.top_k;
    s->L = a->config->model.layers;
    s->chunks = a->config->run.chunks;
    s->max_tokens = a->max_tokens;
    s->capacity = a->capacity;
    s->graphs = a->graphs && a->capacity > 0 && a->backend->graph;
    if (s->backend->set_progress) s->backend->set_progress(s->state, progress, s);
    const int P = s->P, C = s->chunks;
    s->table = calloc((size_t)s->L, sizeof(moe_slot_table_t));
    MOE_CHECK_ALLOC(s->table, fail_free);
    for (int l = 0; l < s->L; l++) {
        MOE_CHECK(moe_slot_table_build(s->plan, l, s->rank, &s->table[l]), fail_free);
        if (s->table[l].slots > s->max_slots) s->max_slots = s->table[l].slots;
        for (int p = 0; p < P; p++) {
            const int n = s->table[l].peer_first[p + 1] - s->table[l].peer_first[p];
            if (C * (1 + n) > s->max_msg) s->max_msg = C * (1 + n);
        }
    }
    s->send_rows = calloc((size_t)C * P, sizeof(int));
    s->recv_rows = calloc((size_t)C * P, sizeof(int));
    s->send_first = calloc((size_t)C + 1, sizeof(int));
    s->recv_first = calloc((size_t)C + 1, sizeof(int));
    s->slot_rows = calloc((size_t)C * (s->max_slots + 1), sizeof(int));
    s->msg_send = calloc((size_t)P * s->max_msg + 1, sizeof(int));
    s->msg_recv = calloc((size_t)P * (C * (1 + s->max_slots)) + 1, sizeof(int));
    s->msg_send_count = calloc((size_t)P, sizeof(int));
    s->msg_recv_count = calloc((size_t)P, sizeof(int));
    s->op_rows = calloc((size_t)C, sizeof(moe_comm_op_h));
    if (!s->send_rows || !s->recv_rows || !s->send_first || !s->recv_first || !s->slot_rows || !s->msg_send ||
        !s->msg_recv || !s->msg_send_count || !s->msg_recv_count || !s->op_rows)
        MOE_FAIL(MOE_STATUS_NO_MEMORY, fail_free, "scheduler: out of memory for %d ranks and %d chunks", P, C);
    s->nodes = a->nodes;
    if (a->hierarchical) MOE_CHECK(moe_hier_create(a, s->table, &s->hier), fail_free);
    *out = s;
    return MOE_STATUS_OK;
fail_free:
    if (status == MOE_STATUS_NO_MEMORY) moe_error("scheduler: out of memory");
    moe_scheduler_destroy(s);
fail:
    return status;
}

/* The counts of this layer on every rank: rows each peer sends this rank per chunk, entries each
 * local slot gets per chunk; and where each chunk's rows start on both sides. */
static moe_status_t exchange_counts(moe_scheduler_h s, int layer)
{
    moe_status_t status = MOE_STATUS_OK;
    const int P = s->P, C = s->chunks;
    const moe_slot_table_t *t = &s->table[layer];
    const int *rows, *entries;
    MOE_CHECK(s->backend->counts(s->state, &rows, &entries), fail);
    memcpy(s->send_rows, rows, sizeof(int) * (size_t)C * P);
    /* to peer p, per chunk: the rows, then the entries of each of p's slots */
    int at = 0;
    for (int p = 0; p < P; p++) {
        const int n = t->peer_first[p + 1] - t->peer_first[p];
        for (int c = 0; c < C; c++) {
            s->msg_send[at++] = rows[c * P + p];
            for (int i = 0; i < n; i++) s->msg_send[at++] = entries[(size_t)c * t->replicas + t->peer_rep[t->peer_first[p] + i]];
        }
        s->msg_send_count[p] = C * (1 + n);
        s->msg_recv_count[p] = C * (1 + t->slots);
    }
    MOE_CHECK(moe_comm_exchange_ints(s->meta_comm, s->msg_send, s->msg_send_count, s->msg_recv, s->msg_recv_count),
              fail);
    memset(s->slot_rows, 0, sizeof(int) * (size_t)C * (t->slots + 1));
    for (int q = 0, from = 0; q < P; q++)
        for (int c = 0; c < C; c++) {
            s->recv_rows[c * P + q] = s->msg_recv[from++];
            for (int i = 0; i < t->slots; i++) s->slot_rows[c * t->slots + i] += s->msg_recv[from++];
        }
fail:
    return status;
}

/* Where each chunk's rows start: counted, or at fixed capacity. */
static void chunk_layout(moe_scheduler_h s)
{
    const int P = s->P, C = s->chunks;
    if (s->capacity > 0)
        for (int i = 0; i < C * P; i++) s->send_rows[i] = s->recv_rows[i] = s->capacity;
    s->send_first[0] = s->recv_first[0] = 0;
    for (int c = 0; c < C; c++) {
        int sent = 0, got = 0;
        for (int p = 0; p < P; p++) sent += s->send_rows[c * P + p], got += s->recv_rows[c * P + p];
        s->send_first[c + 1] = s->send_first[c] + sent;
        s->recv_first[c + 1] = s->recv_first[c] + got;
    }
}

static moe_status_t transfer(moe_scheduler_h s, int stage, int layer, int c, const void *send, const int *send_rows,
                             void *recv, const int *recv_rows, size_t row_bytes, moe_comm_op_h *op)
{
    void *start = NULL, *done = NULL;
    if (s->backend->transfer_events) s->backend->transfer_events(s->state, stage, layer, c, &start, &done);
    return moe_comm_alltoallv_start_timed(s->comm, send, send_rows, recv, recv_rows, row_bytes, start, done, op);
}

static moe_status_t dispatch_start(moe_scheduler_h s, int layer, int c, const moe_wire_t *w)
{
    const int P = s->P;
    return transfer(s, MOE_STAGE_DISPATCH, layer, c, (const char *)w->send + (size_t)s->send_first[c] * w->row_bytes,
                    s->send_rows + c * P, (char *)w->recv + (size_t)s->recv_first[c] * w->row_bytes,
                    s->recv_rows + c * P, w->row_bytes, &s->op_rows[c]);
}

static moe_status_t combine_start(moe_scheduler_h s, int layer, int c, const moe_wire_t *w)
{
    const int P = s->P;
    return transfer(s, MOE_STAGE_COMBINE, layer, c,
                    (const char *)w->partial + (size_t)s->recv_first[c] * w->back_bytes, s->recv_rows + c * P,
                    (char *)w->back + (size_t)s->send_first[c] * w->back_bytes, s->send_rows + c * P, w->back_bytes,
                    &s->op_rows[c]);
}

/* Wait for chunk c's transfer in flight (the compute stream waits, for device transports). */
static moe_status_t wait_transfer(moe_scheduler_h s, int stage, int layer, int c)
{
    moe_comm_op_h op = s->op_rows[c];
    s->op_rows[c] = NULL;
    s->backend->mark(s->state, stage, layer, c, true);
    moe_status_t status = moe_comm_op_wait(op);
    s->backend->mark(s->state, stage, layer, c, false);
    return status;
}

static moe_status_t combine_finish(moe_scheduler_h s, int layer, int c, int n)
{
    moe_status_t status = wait_transfer(s, MOE_STAGE_COMBINE, layer, c);
    if (status != MOE_STATUS_OK) return status;
    s->backend->mark(s->state, MOE_STAGE_UNPERMUTE, layer, c, true);
    status = s->backend->unpermute(s->state, c, n);
    s->backend->mark(s->state, MOE_STAGE_UNPERMUTE, layer, c, false);
    return status;
}

/* A layer as a CUDA graph (fixed capacity): replayed when captured for n tokens, else captured now
 * (around the ordinary path, which then only queues) and run. *done: whether the layer ran here. */
static moe_status_t layer_graph(moe_scheduler_h s, int layer, int64_t g0, int n, const int32_t *ids,
                                const float *weights, bool *done)
{
    moe_status_t status = MOE_STATUS_OK;
    const moe_backend_t *b = s->backend;
    bool ready = false;
    *done = false;
    MOE_CHECK(b->graph(s->state, MOE_GRAPH_READY, layer, n, &ready), fail);
    if (!ready) return MOE_STATUS_OK;
    MOE_CHECK(b->stage(s->state, layer, g0, n, ids, weights), fail);
    MOE_CHECK(b->graph(s->state, MOE_GRAPH_LAUNCH, layer, n, NULL), fail);
    *done = true;
fail:
    return status;
}

moe_status_t moe_scheduler_layer(moe_scheduler_h s, int layer, int64_t g0, int n, const int32_t *prev_ids,
                                 int32_t *ids, float *weights, moe_layer_metrics_t *m)
{
    moe_status_t status = MOE_STATUS_OK;
    const int C = s->chunks, P = s->P;
    const moe_backend_t *b = s->backend;
    const bool use_router = s->config->routing.source == MOE_ROUTING_ROUTER;
    const moe_slot_table_t *t = &s->table[layer];
    bool capturing = false;

    b->mark(s->state, MOE_STAGE_COUNT, layer, 0, true);
    if (!use_router) moe_sources_route(s->sources, layer, g0, n, prev_ids, ids, weights);
    if (s->graphs) {
        bool replayed;
        MOE_CHECK(layer_graph(s, layer, g0, n, use_router ? NULL : ids, use_router ? NULL : weights, &replayed), fail);
        if (replayed) {
            b->mark(s->state, MOE_STAGE_COUNT, layer, 0, false);
            m->tokens += n;
            return MOE_STATUS_OK;
        }
        MOE_CHECK(b->graph(s->state, MOE_GRAPH_BEGIN, layer, n, &capturing), fail);
    }
    b->mark(s->state, MOE_STAGE_ROUTE, layer, 0, true);
    MOE_CHECK(b->route(s->state, layer, n, use_router ? NULL : ids, use_router ? NULL : weights), fail);
    b->mark(s->state, MOE_STAGE_ROUTE, layer, 0, false);
    MOE_CHECK(b->plan(s->state, layer, g0, n), fail);
    if (s->hier) { /* both hops, the experts and the combines (hier.c) */
        MOE_CHECK(moe_hier_layer(s->hier, layer, n, m), fail);
        MOE_CHECK(b->residual(s->state, n), fail);
        b->mark(s->state, MOE_STAGE_COUNT, layer, 0, false);
        m->tokens += n;
        return MOE_STATUS_OK;
    }
    /* the shared experts run while the counts come back and the first chunk is dispatched (queued
     * after the dispatch, as tried in run 10, the GPU idled through the counts' round trip: the
     * DeepSeek-V3 layer on two H200s took 9.9 ms instead of 7.5) */
    b->mark(s->state, MOE_STAGE_SHARED, layer, 0, true);
    MOE_CHECK(b->shared(s->state, layer, n), fail);
    b->mark(s->state, MOE_STAGE_SHARED, layer, 0, false);
    if (s->capacity == 0) {
        b->mark(s->state, MOE_STAGE_PLAN, layer, 0, true);
        MOE_CHECK(exchange_counts(s, layer), fail);
        b->mark(s->state, MOE_STAGE_PLAN, layer, 0, false);
    }
    chunk_layout(s);
    moe_wire_t w;
    MOE_CHECK(b->buffers(s->state, s->recv_first[C], &w), fail);

    MOE_CHECK(dispatch_start(s, layer, 0, &w), fail);
    for (int c = 0; c < C; c++) {
        if (c + 1 < C) MOE_CHECK(dispatch_start(s, layer, c + 1, &w), fail);
        MOE_CHECK(wait_transfer(s, MOE_STAGE_DISPATCH, layer, c), fail);
        const int n_recv = s->recv_first[c + 1] - s->recv_first[c];
        b->mark(s->state, MOE_STAGE_EXPERTS, layer, c, true);
        MOE_CHECK(b->experts(s->state, layer, c, s->recv_first[c], n_recv,
                             s->capacity == 0 ? s->slot_rows + (size_t)c * t->slots : NULL), fail);
        b->mark(s->state, MOE_STAGE_EXPERTS, layer, c, false);
        MOE_CHECK(combine_start(s, layer, c, &w), fail);
        /* the previous chunk's combine, now that this chunk's is posted behind it */
        if (c > 0) MOE_CHECK(combine_finish(s, layer, c - 1, n), fail);
    }
    MOE_CHECK(combine_finish(s, layer, C - 1, n), fail);
    MOE_CHECK(b->residual(s->state, n), fail);
    if (capturing) { /* captured, not run: run it */
        capturing = false;
        MOE_CHECK(b->graph(s->state, MOE_GRAPH_END, layer, n, NULL), fail);
        MOE_CHECK(b->graph(s->state, MOE_GRAPH_LAUNCH, layer, n, NULL), fail);
    }
    b->mark(s->state, MOE_STAGE_COUNT, layer, 0, false);

    m->tokens += n;
    if (s->capacity == 0) { /* counted: the host knows what moved; at fixed capacity the backend tells */
        for (int i = 0; i < C * P; i++) m->rows_sent += s->send_rows[i], m->rows_received += s->recv_rows[i];
        for (int i = 0; s->nodes && i < C * P; i++) {
            const int p = i % P;
            if (p == s->rank) continue;
            if (s->nodes->node[p] == s->nodes->node[s->rank])
                m->copies_intra += s->send_rows[i];
            else
                m->copies_inter += s->send_rows[i];
        }
        for (int i = 0; i < C * t->slots; i++) m->load += s->slot_rows[i];
    }
fail:
    if (capturing) { /* a failed capture: end it, so that the stream is usable for the error path */
        bool ignored;
        b->graph(s->state, MOE_GRAPH_END, layer, n, &ignored);
    }
    for (int c = 0; c < C; c++) /* an error left transfers in flight: the job ends, but not under them */
        if (s->op_rows[c]) {
            moe_comm_op_wait(s->op_rows[c]);
            s->op_rows[c] = NULL;
        }
    return status;
}

moe_status_t moe_dispatch_tables(const moe_plan_h plan, int rank, moe_dispatch_table_t **tables, void **block,
                                 size_t *bytes)
{
    const int L = moe_plan_layers(plan), E = moe_plan_experts(plan), P = moe_plan_ranks(plan);
    size_t R = 0;
    for (int l = 0; l < L; l++)
        for (int e = 0; e < E; e++) R += (size_t)moe_plan_replicas(plan, l, e, NULL, NULL);
    /* per layer: first [E + 1], local_slot [E]; per replica: rank, share */
    const size_t n_int = (size_t)L * (2 * (size_t)E + 1) + R;
    *bytes = sizeof(int) * n_int + sizeof(float) * (R + 1);
    char *mem = malloc(*bytes);
    moe_dispatch_table_t *t = calloc((size_t)L, sizeof *t);
    if (!mem || !t) {
        free(mem), free(t);
        moe_error("dispatch tables: out of memory for %d layers of %d experts", L, E);
        return MOE_STATUS_NO_MEMORY;
    }
    int *ints = (int *)mem;
    float *floats = (float *)(mem + sizeof(int) * n_int);
    for (int l = 0; l < L; l++) {
        int *first = ints, *local = ints + E + 1, *rank_of = ints + 2 * E + 1;
        float *share = floats;
        int r = 0;
        for (int e = 0; e < E; e++) {
            const int *ranks;
            const float *shares;
            const int n = moe_plan_replicas(plan, l, e, &ranks, &shares);
            first[e] = r;
            for (int i = 0; i < n; i++, r++) rank_of[r] = ranks[i], share[r] = shares[i];
            local[e] = moe_plan_local_slot(plan, l, rank, e);
        }
        first[E] = r;
        t[l] = (moe_dispatch_table_t){.layer = l, .experts = E, .ranks = P, .replicas = r, .first = first,
                                      .rank = rank_of, .share = share, .local_slot = local};
        ints += 2 * E + 1 + r;
        floats += r;
    }
    *tables = t;
    *block = mem;
    return MOE_STATUS_OK;
}
