/* layer: the scheduler. One MoE layer on one rank as a pipeline of chunks over the backend stages:
 *
 *   route -> plan (destinations, counts exchange) -> for each chunk:
 *     permute + dispatch start (chunk c+1 while chunk c computes) -> shared experts -> dispatch wait
 *     -> expert GEMMs -> combine start -> (combine wait + un-permute of the chunk before)
 *   -> residual.
 *
 * A token travels once to each destination rank, however many of its k experts live there: its row
 * carries a metadata row of k (expert, weight) pairs, -1 where that choice goes elsewhere, and the
 * destination returns one row, the weighted sum of its local experts' outputs. Two collectives per
 * direction and chunk (rows, metadata) are posted in the same order on every rank, whatever the
 * counts, so that no rank waits on a collective another never posts. C = 1 is the plain schedule. */
#include <stdlib.h>
#include <string.h>

#include "runtime/runtime-impl.h"

typedef struct {
    int begin, end;         /* local tokens [begin, end) */
    int *send_count;        /* [P] rows to each peer */
    int *recv_count;        /* [P] rows from each peer */
    int n_send, n_recv;
    int32_t *send_token;    /* [n_send] local token of each send row, grouped by peer */
    uint32_t *send_meta;    /* [n_send][2k]: k expert ids, then k float weights (bits) */
    uint32_t *recv_meta;    /* [n_recv][2k] */
    int cap_recv;
    moe_chunk_buffers_t buf;
    moe_comm_op_h op_rows, op_meta;
} chunk_t;

struct moe_scheduler_s {
    const moe_config_t *config;
    moe_plan_h plan;
    const moe_sources_t *sources;
    const moe_backend_t *backend;
    void *backend_state;
    moe_comm_h comm, meta_comm;
    int rank, P, k, d, chunks, max_tokens;
    size_t row_bytes;       /* one hidden-state row on the wire */
    chunk_t *chunk;
    int32_t *dest;          /* [max_tokens][k] destination rank of each choice */
    int *count_send;        /* [P][C] counts exchange layout */
    int *count_recv;
    /* expert grouping of one chunk */
    int *group_offset;      /* [max local experts + 1] */
    int32_t *group_row;
    float *group_weight;
    int cap_group;
};

void moe_scheduler_destroy(moe_scheduler_h s)
{
    if (!s) return;
    for (int c = 0; s->chunk && c < s->chunks; c++) {
        free(s->chunk[c].send_count);
        free(s->chunk[c].recv_count);
        free(s->chunk[c].send_token);
        free(s->chunk[c].send_meta);
        free(s->chunk[c].recv_meta);
    }
    free(s->chunk);
    free(s->dest);
    free(s->count_send);
    free(s->count_recv);
    free(s->group_offset);
    free(s->group_row);
    free(s->group_weight);
    free(s);
}

moe_status_t moe_scheduler_create(const moe_scheduler_args_t *a, moe_scheduler_h *out)
{
    struct moe_scheduler_s *s = calloc(1, sizeof *s);
    if (!s) return MOE_STATUS_NO_MEMORY;
    s->config = a->config;
    s->plan = a->plan;
    s->sources = a->sources;
    s->backend = a->backend;
    s->backend_state = a->backend_state;
    s->comm = a->comm;
    s->meta_comm = a->meta_comm ? a->meta_comm : a->comm;
    s->rank = moe_comm_rank(a->comm);
    s->P = moe_comm_size(a->comm);
    s->k = a->config->model.top_k;
    s->d = a->config->model.d_model;
    s->row_bytes = a->backend->elem_bytes * (size_t)s->d;
    s->chunks = a->config->run.chunks;
    s->max_tokens = a->max_tokens;
    const int P = s->P, k = s->k, C = s->chunks;
    /* A chunk sends at most min(k, P) rows per token. */
    const int fan = k < P ? k : P;
    const int chunk_max = (a->max_tokens + C - 1) / C;
    s->chunk = calloc((size_t)C, sizeof(chunk_t));
    s->dest = malloc(sizeof(int32_t) * ((size_t)a->max_tokens * k + 1));
    s->count_send = malloc(sizeof(int) * (size_t)P * C);
    s->count_recv = malloc(sizeof(int) * (size_t)P * C);
    int max_local = 0;
    for (int l = 0; l < a->config->model.layers; l++) {
        int n = moe_plan_local_experts(a->plan, l, s->rank, NULL);
        if (n > max_local) max_local = n;
    }
    s->group_offset = malloc(sizeof(int) * ((size_t)max_local + 2));
    bool ok = s->chunk && s->dest && s->count_send && s->count_recv && s->group_offset;
    for (int c = 0; ok && c < C; c++) {
        chunk_t *ch = &s->chunk[c];
        ch->send_count = calloc((size_t)P, sizeof(int));
        ch->recv_count = calloc((size_t)P, sizeof(int));
        ch->send_token = malloc(sizeof(int32_t) * ((size_t)chunk_max * fan + 1));
        ch->send_meta = malloc(sizeof(uint32_t) * 2 * k * ((size_t)chunk_max * fan + 1));
        ok = ch->send_count && ch->recv_count && ch->send_token && ch->send_meta;
    }
    if (!ok) {
        moe_scheduler_destroy(s);
        moe_error("scheduler: out of memory for %d tokens", a->max_tokens);
        return MOE_STATUS_NO_MEMORY;
    }
    *out = s;
    return MOE_STATUS_OK;
}

/* Destinations of every choice, then per chunk the send rows grouped by peer (a counting sort),
 * each with its metadata row; then one counts exchange for all chunks. */
static moe_status_t plan_chunks(moe_scheduler_h s, int layer, int64_t g0, int n, const int32_t *ids,
                                const float *weights)
{
    moe_status_t status = MOE_STATUS_OK;
    const int P = s->P, k = s->k, C = s->chunks;
    for (int t = 0; t < n; t++)
        for (int j = 0; j < k; j++)
            s->dest[t * k + j] = moe_plan_pick_replica(s->plan, layer, ids[t * k + j], g0 + t);

    for (int c = 0; c < C; c++) {
        chunk_t *ch = &s->chunk[c];
        ch->begin = (int)((int64_t)n * c / C);
        ch->end = (int)((int64_t)n * (c + 1) / C);
        memset(ch->send_count, 0, sizeof(int) * P);
        /* count: one row per distinct destination of a token */
        for (int t = ch->begin; t < ch->end; t++)
            for (int j = 0; j < k; j++) {
                bool first = true;
                for (int i = 0; i < j; i++) first &= s->dest[t * k + i] != s->dest[t * k + j];
                if (first) ch->send_count[s->dest[t * k + j]]++;
            }
        int offset[P];
        ch->n_send = 0;
        for (int p = 0; p < P; p++) {
            offset[p] = ch->n_send;
            ch->n_send += ch->send_count[p];
        }
        for (int t = ch->begin; t < ch->end; t++)
            for (int j = 0; j < k; j++) {
                int p = s->dest[t * k + j];
                bool first = true;
                for (int i = 0; i < j; i++) first &= s->dest[t * k + i] != p;
                if (!first) continue;
                int row = offset[p]++;
                ch->send_token[row] = t;
                uint32_t *meta = ch->send_meta + (size_t)row * 2 * k;
                for (int i = 0; i < k; i++) {
                    bool here = s->dest[t * k + i] == p;
                    int32_t e = here ? ids[t * k + i] : -1;
                    float w = here ? weights[t * k + i] : 0.0f;
                    memcpy(&meta[i], &e, 4);
                    memcpy(&meta[k + i], &w, 4);
                }
            }
        for (int p = 0; p < P; p++) s->count_send[p * C + c] = ch->send_count[p];
    }
    MOE_CHECK(moe_comm_exchange_counts(s->meta_comm, s->count_send, s->count_recv, C), fail);
    for (int c = 0; c < C; c++) {
        chunk_t *ch = &s->chunk[c];
        ch->n_recv = 0;
        for (int p = 0; p < P; p++) ch->n_recv += ch->recv_count[p] = s->count_recv[p * C + c];
        if (ch->n_recv > ch->cap_recv) {
            free(ch->recv_meta);
            ch->recv_meta = malloc(sizeof(uint32_t) * 2 * k * (size_t)ch->n_recv);
            if (!ch->recv_meta) {
                ch->cap_recv = 0;
                MOE_FAIL(MOE_STATUS_NO_MEMORY, fail, "scheduler: out of memory for %d rows", ch->n_recv);
            }
            ch->cap_recv = ch->n_recv;
        }
    }
fail:
    return status;
}

static moe_status_t dispatch_start(moe_scheduler_h s, int c)
{
    moe_status_t status = MOE_STATUS_OK;
    chunk_t *ch = &s->chunk[c];
    MOE_CHECK(s->backend->chunk_buffers(s->backend_state, c, ch->n_send, ch->n_recv, &ch->buf), fail);
    MOE_CHECK(s->backend->permute(s->backend_state, c, ch->send_token, ch->n_send), fail);
    MOE_CHECK(moe_comm_alltoallv_start(s->comm, ch->buf.send, ch->send_count, ch->buf.recv,
                                       ch->recv_count, s->row_bytes, &ch->op_rows), fail);
    MOE_CHECK(moe_comm_alltoallv_start(s->meta_comm, ch->send_meta, ch->send_count, ch->recv_meta,
                                       ch->recv_count, sizeof(uint32_t) * 2 * s->k, &ch->op_meta),
              fail);
fail:
    return status;
}

/* Group chunk c's received (row, choice) pairs by local expert slot. */
static moe_status_t group_by_expert(moe_scheduler_h s, int layer, int c, moe_expert_groups_t *g,
                                    int64_t *load)
{
    chunk_t *ch = &s->chunk[c];
    const int k = s->k;
    const int slots = moe_plan_local_experts(s->plan, layer, s->rank, NULL);
    int need = ch->n_recv * k;
    if (need > s->cap_group) {
        free(s->group_row);
        free(s->group_weight);
        s->group_row = malloc(sizeof(int32_t) * (size_t)need);
        s->group_weight = malloc(sizeof(float) * (size_t)need);
        s->cap_group = need;
        if (!s->group_row || !s->group_weight) {
            s->cap_group = 0;
            moe_error("scheduler: out of memory for %d expert entries", need);
            return MOE_STATUS_NO_MEMORY;
        }
    }
    int *offset = s->group_offset;
    memset(offset, 0, sizeof(int) * (slots + 2));
    for (int pass = 0; pass < 2; pass++) {
        for (int r = 0; r < ch->n_recv; r++) {
            const uint32_t *meta = ch->recv_meta + (size_t)r * 2 * k;
            for (int j = 0; j < k; j++) {
                int32_t e;
                memcpy(&e, &meta[j], 4);
                if (e < 0) continue;
                int slot = moe_plan_local_slot(s->plan, layer, s->rank, e);
                if (slot < 0) {
                    moe_error("scheduler: layer %d: received a token for expert %d, which this rank "
                              "does not host", layer, e);
                    return MOE_STATUS_INTERNAL;
                }
                if (pass == 0) {
                    offset[slot + 2]++;
                } else {
                    int at = offset[slot + 1]++;
                    s->group_row[at] = r;
                    memcpy(&s->group_weight[at], &meta[k + j], 4);
                }
            }
        }
        if (pass == 0) /* offset[s + 2] counts slot s; shift into starts at offset[s + 1] */
            for (int i = 2; i < slots + 2; i++) offset[i] += offset[i - 1];
    }
    *g = (moe_expert_groups_t){.slots = slots, .offset = offset, .row = s->group_row,
                               .weight = s->group_weight};
    *load += offset[slots];
    return MOE_STATUS_OK;
}

static void progress(void *arg)
{
    moe_scheduler_h s = arg;
    moe_comm_progress(s->comm);
    if (s->meta_comm != s->comm) moe_comm_progress(s->meta_comm);
}

static moe_status_t combine_finish(moe_scheduler_h s, int c, moe_layer_metrics_t *m)
{
    moe_status_t status = MOE_STATUS_OK;
    chunk_t *ch = &s->chunk[c];
    double t0 = moe_now();
    moe_comm_op_h op = ch->op_rows;
    ch->op_rows = NULL;
    MOE_CHECK(moe_comm_op_wait(op), fail);
    double t1 = moe_now();
    MOE_CHECK(s->backend->unpermute(s->backend_state, c, ch->send_token, ch->n_send), fail);
    m->time[MOE_STAGE_COMBINE] += t1 - t0;
    m->time[MOE_STAGE_UNPERMUTE] += moe_now() - t1;
fail:
    return status;
}

moe_status_t moe_scheduler_layer(moe_scheduler_h s, int layer, int64_t g0, int n,
                                 const int32_t *prev_ids, int32_t *ids, float *weights,
                                 moe_layer_metrics_t *m)
{
    moe_status_t status = MOE_STATUS_OK;
    const int C = s->chunks;
    const bool use_router = s->config->routing.source == MOE_ROUTING_ROUTER;
    double t_layer = moe_now(), t = t_layer;

    MOE_CHECK(s->backend->route(s->backend_state, layer, n, use_router, ids, weights), fail);
    if (!use_router) moe_sources_route(s->sources, layer, g0, n, prev_ids, ids, weights);
    m->time[MOE_STAGE_ROUTE] += moe_now() - t;

    t = moe_now();
    MOE_CHECK(plan_chunks(s, layer, g0, n, ids, weights), fail);
    m->time[MOE_STAGE_PLAN] += moe_now() - t;

    t = moe_now();
    MOE_CHECK(dispatch_start(s, 0), fail);
    m->time[MOE_STAGE_PERMUTE] += moe_now() - t;
    for (int c = 0; c < C; c++) {
        chunk_t *ch = &s->chunk[c];
        if (c + 1 < C) {
            t = moe_now();
            MOE_CHECK(dispatch_start(s, c + 1), fail);
            m->time[MOE_STAGE_PERMUTE] += moe_now() - t;
        }
        /* Shared experts of this chunk's own tokens run while its dispatch is in flight. */
        t = moe_now();
        MOE_CHECK(s->backend->shared(s->backend_state, layer, ch->begin, ch->end), fail);
        m->time[MOE_STAGE_SHARED] += moe_now() - t;

        t = moe_now();
        moe_comm_op_h rows = ch->op_rows, meta = ch->op_meta;
        ch->op_rows = ch->op_meta = NULL;
        status = moe_comm_op_wait(rows);
        moe_status_t status_meta = moe_comm_op_wait(meta);
        if (status == MOE_STATUS_OK) status = status_meta;
        if (status != MOE_STATUS_OK) goto fail;
        m->time[MOE_STAGE_DISPATCH] += moe_now() - t;

        t = moe_now();
        moe_expert_groups_t groups;
        MOE_CHECK(group_by_expert(s, layer, c, &groups, &m->load), fail);
        MOE_CHECK(s->backend->experts(s->backend_state, layer, c, ch->n_recv, &groups, progress, s),
                  fail);
        m->time[MOE_STAGE_EXPERTS] += moe_now() - t;
        MOE_CHECK(moe_comm_alltoallv_start(s->comm, ch->buf.partial, ch->recv_count, ch->buf.back,
                                           ch->send_count, s->row_bytes, &ch->op_rows), fail);
        m->rows_sent += ch->n_send;
        m->rows_received += ch->n_recv;
        /* Finish the previous chunk's combine now that this chunk's is posted behind it. */
        if (c > 0) MOE_CHECK(combine_finish(s, c - 1, m), fail);
    }
    MOE_CHECK(combine_finish(s, C - 1, m), fail);
    MOE_CHECK(s->backend->residual(s->backend_state, n), fail);
    m->tokens += n;
    m->layer_time += moe_now() - t_layer;
fail:
    return status;
}
