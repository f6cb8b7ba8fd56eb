/* test_dispatch: the scheduler's dispatch and combine, checked by payload, at 1, 2 and 4 ranks, with
 * counted and fixed-capacity buffers.
 *
 * The real scheduler, dispatch layout (kernels/dispatch_cpu.c) and MPI transport run with a payload
 * backend defined here in place of the numerical one: a token's row encodes (source rank, local
 * token, global token); the "experts" stage checks, for every (row, choice) it receives, that the
 * token really chose that expert with that weight and that the plan sends it to this rank, and
 * returns a row encoding what it computed; the home rank then checks that what came back adds up to
 * exactly its token's choices, once per destination rank. The plan gives expert 0 a replica on every
 * rank; the routing is skewed so that some experts (and, at 4 ranks, whole ranks) receive nothing;
 * the last rank owns no tokens. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "runtime/runtime-impl.h"

enum { D = 6 };

struct moe_backend_state_s {
    int rank, P, n, k, chunks, capacity, max_tokens;
    moe_plan_h plan;
    const moe_sources_t *sources;
    moe_dispatch_table_t *table;
    void *table_block;
    int layer;
    int64_t g0;
    float *x, *out;
    int32_t *ids, *rep, *token_row;
    float *w;
    int *rows, *entries, *offset;
    size_t row_bytes, meta_offset;
    char *send, *recv;
    float *partial, *back;
    int cap_send, cap_recv;
    int64_t load; /* (token, expert) pairs computed here, this layer */
};

static struct moe_backend_state_s S_;

static moe_status_t pl_create(const moe_backend_args_t *a, moe_backend_state_t **out) { *out = &S_; return MOE_STATUS_OK; }
static void pl_destroy(moe_backend_state_t *s) {}
static moe_status_t pl_load(moe_backend_state_t *s, const float *x, int n) { return MOE_STATUS_OK; }
static moe_status_t pl_route(moe_backend_state_t *s, int layer, int n, const int32_t *ids, const float *w)
{
    CHECK(ids != NULL); /* synthetic routing comes from the host */
    s->layer = layer;
    memcpy(s->ids, ids, sizeof(int32_t) * (size_t)n * s->k);
    memcpy(s->w, w, sizeof(float) * (size_t)n * s->k);
    return MOE_STATUS_OK;
}
static moe_status_t pl_plan(moe_backend_state_t *s, int layer, int64_t g0, int n)
{
    const moe_dispatch_table_t *t = &s->table[layer];
    moe_dispatch_count_cpu(s->ids, n, s->k, g0, t, s->chunks, s->rep, s->rows, s->entries);
    moe_dispatch_offsets_cpu(s->rows, s->chunks, s->P, s->capacity, s->offset);
    if (s->capacity > 0) moe_dispatch_clear_meta_cpu(s->send, s->cap_send, s->row_bytes, s->meta_offset, s->k);
    moe_dispatch_pack_cpu(s->x, s->ids, s->w, s->rep, n, s->k, D, t, s->chunks, s->offset, s->send, s->row_bytes,
                          s->meta_offset, s->token_row);
    s->load = 0;
    return MOE_STATUS_OK;
}
static moe_status_t pl_counts(moe_backend_state_t *s, const int **rows, const int **entries)
{
    *rows = s->rows;
    *entries = s->entries;
    return MOE_STATUS_OK;
}
static moe_status_t pl_buffers(moe_backend_state_t *s, int n_recv, moe_wire_t *out)
{
    s->recv = realloc(s->recv, s->row_bytes * (size_t)(n_recv + 1));
    s->partial = realloc(s->partial, sizeof(float) * D * (size_t)(n_recv + 1));
    memset(s->recv, 0xff, s->row_bytes * (size_t)(n_recv + 1)); /* poison: NaN / -1 unless received */
    memset(s->back, 0xff, sizeof(float) * D * (size_t)(s->cap_send + 1));
    *out = (moe_wire_t){.send = s->send, .recv = s->recv, .partial = s->partial, .back = s->back,
                        .row_bytes = s->row_bytes, .meta_offset = s->meta_offset, .back_bytes = sizeof(float) * D};
    return MOE_STATUS_OK;
}
/* The routing of global token g at the current layer, as the sources give it. */
static void token_route(int64_t g, int32_t *ids, float *w) { moe_sources_route(S_.sources, S_.layer, g, 1, NULL, ids, w); }

static moe_status_t pl_experts(moe_backend_state_t *s, int layer, int c, int first, int n_recv, const int *slot_rows)
{
    const int k = s->k, slots = moe_plan_local_experts(s->plan, layer, s->rank, NULL);
    int *got = calloc((size_t)slots + 1, sizeof(int));
    for (int r = first; r < first + n_recv; r++) {
        const char *row = s->recv + (size_t)r * s->row_bytes;
        const float *v = (const float *)row;
        float *p = s->partial + (size_t)r * D;
        memset(p, 0, sizeof(float) * D);
        bool any = false;
        for (int j = 0; j < k; j++) {
            int32_t e;
            float wt;
            memcpy(&e, row + s->meta_offset + 4 * (size_t)j, 4);
            memcpy(&wt, row + s->meta_offset + 4 * ((size_t)k + j), 4);
            if (e < 0) continue;
            any = true;
            const int64_t tok = (int64_t)v[2];
            int32_t ids[16];
            float w[16];
            token_route(tok, ids, w);
            CHECK_EQ_INT(ids[j], e);   /* choice j of the token is this expert */
            CHECK(w[j] == wt);         /* with its weight */
            CHECK_EQ_INT(moe_plan_pick_replica(s->plan, layer, e, tok), s->rank);
            const int slot = moe_plan_local_slot(s->plan, layer, s->rank, e);
            CHECK(slot >= 0);
            if (slot >= 0) got[slot]++;
            p[0] += wt * (float)(e + 1);
            p[1] += wt;
            p[3] += 1.0f;                /* (token, expert) pairs counted here */
            s->load++;
        }
        if (any) {
            p[4] = (float)(s->rank + 1); /* who computed it */
            p[5] = v[2];                 /* the token, sent back */
        }
    }
    if (slot_rows) /* what the counts exchange said each slot would get */
        for (int i = 0; i < slots; i++) CHECK_EQ_INT(got[i], slot_rows[i]);
    free(got);
    return MOE_STATUS_OK;
}
static moe_status_t pl_shared(moe_backend_state_t *s, int layer, int n) { return MOE_STATUS_OK; }
static moe_status_t pl_unpermute(moe_backend_state_t *s, int c, int n)
{
    const int begin = (int)((int64_t)n * c / s->chunks), end = (int)((int64_t)n * (c + 1) / s->chunks);
    for (int t = begin; t < end; t++)
        for (int j = 0; j < s->k; j++) {
            const int32_t row = s->token_row[(size_t)t * s->k + j];
            if (row < 0) continue;
            const float *b = s->back + (size_t)row * D;
            CHECK_EQ_INT((int64_t)b[5], s->g0 + t); /* the row came back to its own token */
            float *o = s->out + (size_t)t * D;
            o[0] += b[0], o[1] += b[1], o[3] += b[3], o[4] += b[4];
        }
    return MOE_STATUS_OK;
}
static moe_status_t pl_residual(moe_backend_state_t *s, int n)
{
    for (int t = 0; t < n; t++) {
        const int64_t tok = s->g0 + t;
        int32_t ids[16];
        float w[16];
        token_route(tok, ids, w);
        double e_sum = 0, w_sum = 0, ranks_sum = 0;
        bool seen[64] = {false};
        for (int j = 0; j < s->k; j++) {
            e_sum += (double)w[j] * (ids[j] + 1);
            w_sum += w[j];
            int r = moe_plan_pick_replica(s->plan, s->layer, ids[j], tok);
            if (!seen[r]) ranks_sum += r + 1;
            seen[r] = true;
        }
        const float *o = s->out + (size_t)t * D;
        CHECK_NEAR(o[0], e_sum, 1e-5 * (1 + e_sum));
        CHECK_NEAR(o[1], w_sum, 1e-5);
        CHECK_EQ_INT((int)o[3], s->k);          /* every choice computed exactly once */
        CHECK_EQ_INT((int)o[4], (int)ranks_sum); /* once per destination rank */
    }
    memset(s->out, 0, sizeof(float) * (size_t)n * D);
    return MOE_STATUS_OK;
}
static moe_status_t pl_store(moe_backend_state_t *s, float *x, int n) { return MOE_STATUS_OK; }
static moe_status_t pl_routes(moe_backend_state_t *s, int n, int32_t *ids) { return MOE_STATUS_OK; }
static void pl_mark(moe_backend_state_t *s, int stage, int layer, int chunk, bool begin) {}
static moe_status_t pl_timeline(moe_backend_state_t *s, int n, struct moe_layer_metrics_s *m, moe_trace_h t)
{
    return MOE_STATUS_OK;
}

static const moe_backend_t payload_backend = {
    .name = "payload", .create = pl_create, .destroy = pl_destroy, .load = pl_load, .route = pl_route,
    .plan = pl_plan, .counts = pl_counts, .buffers = pl_buffers, .experts = pl_experts, .shared = pl_shared,
    .unpermute = pl_unpermute, .residual = pl_residual, .store = pl_store, .routes = pl_routes, .mark = pl_mark,
    .timeline = pl_timeline,
};

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    moe_log_init(rank, MOE_LOG_WARN);

    moe_config_t config;
    moe_config_defaults(&config);
    config.model.layers = 3;
    config.model.d_model = D;
    config.model.experts = 16;
    config.model.top_k = 4;
    config.routing.source = MOE_ROUTING_SYNTHETIC;
    config.routing.skew = 2.5f;  /* the tail experts get few or no tokens */
    config.routing.affinity = 0; /* routing of a token at a layer depends on nothing else */
    config.run.tokens_per_rank = 40;

    moe_plan_h plan;
    CHECK_STATUS(moe_plan_create_empty(config.model.layers, config.model.experts, size, 2, &plan), MOE_STATUS_OK);
    for (int l = 0; l < config.model.layers; l++)
        for (int e = 0; e < config.model.experts; e++) {
            if (e == 0)
                for (int r = 0; r < size; r++) moe_plan_add_replica(plan, l, e, r, 1.0f / size);
            else /* at 4 ranks, rank 3 hosts only the replica of expert 0 */
                moe_plan_add_replica(plan, l, e, size == 4 ? e % 3 : e % size, 1.0f);
        }
    CHECK_STATUS(moe_plan_check(plan, "test plan"), MOE_STATUS_OK);
    moe_sources_t sources;
    CHECK_STATUS(moe_sources_create(&config, &sources), MOE_STATUS_OK);

    moe_comm_h comm;
    moe_ctl_h world;
    CHECK_STATUS(moe_ctl_create(MPI_COMM_WORLD, NULL, &world), MOE_STATUS_OK);
    CHECK_STATUS(moe_comm_create_mpi(world, &comm), MOE_STATUS_OK);
    const int tpr = config.run.tokens_per_rank, k = config.model.top_k;
    size_t table_bytes;
    struct moe_backend_state_s *s = &S_;
    *s = (struct moe_backend_state_s){.rank = rank, .P = size, .k = k, .plan = plan, .sources = &sources,
                                      .max_tokens = tpr};
    CHECK_STATUS(moe_dispatch_tables(plan, rank, &s->table, &s->table_block, &table_bytes), MOE_STATUS_OK);
    s->meta_offset = moe_wire_meta_offset(D, sizeof(float));
    s->row_bytes = moe_wire_row_bytes(D, k, sizeof(float));
    s->x = calloc((size_t)tpr * D, sizeof(float));
    s->out = calloc((size_t)tpr * D, sizeof(float));
    s->ids = calloc((size_t)tpr * k, sizeof(int32_t));
    s->w = calloc((size_t)tpr * k, sizeof(float));
    s->rep = calloc((size_t)tpr * k, sizeof(int32_t));
    s->token_row = calloc((size_t)tpr * k, sizeof(int32_t));
    int32_t *ids = calloc((size_t)config.model.layers * tpr * k, sizeof(int32_t));
    float *w = calloc((size_t)tpr * k, sizeof(float));
    for (int fixed = 0; fixed < 2; fixed++)
        for (int chunks = 1; chunks <= 3; chunks++) {
            config.run.chunks = chunks;
            s->chunks = chunks;
            s->capacity = fixed ? (tpr + chunks - 1) / chunks : 0;
            s->cap_send = fixed ? chunks * size * s->capacity : tpr * (k < size ? k : size);
            s->rows = realloc(s->rows, sizeof(int) * (size_t)chunks * size);
            s->entries = realloc(s->entries, sizeof(int) * (size_t)chunks * (config.model.experts + size));
            s->offset = realloc(s->offset, sizeof(int) * ((size_t)chunks * size + 1));
            s->send = realloc(s->send, s->row_bytes * (size_t)(s->cap_send + 1));
            s->back = realloc(s->back, sizeof(float) * D * (size_t)(s->cap_send + 1));
            moe_scheduler_args_t args = {.config = &config, .plan = plan, .sources = &sources,
                                         .backend = &payload_backend, .backend_state = s, .comm = comm,
                                         .max_tokens = tpr, .capacity = s->capacity};
            moe_scheduler_h sched;
            CHECK_STATUS(moe_scheduler_create(&args, &sched), MOE_STATUS_OK);
            /* The last rank owns no tokens (when there are several); the others a rank-dependent count. */
            const int n = size > 1 && rank == size - 1 ? 0 : tpr - 7 * rank;
            s->g0 = (int64_t)rank * tpr;
            for (int t = 0; t < n; t++) {
                float *row = s->x + (size_t)t * D;
                row[0] = (float)rank, row[1] = (float)t, row[2] = (float)(s->g0 + t);
            }
            for (int l = 0; l < config.model.layers; l++) {
                moe_layer_metrics_t m = {0};
                CHECK_STATUS(moe_scheduler_layer(sched, l, s->g0, n, NULL, ids + (size_t)l * n * k, w, &m), MOE_STATUS_OK);
                if (!fixed) CHECK_EQ_INT(m.load, s->load); /* the counts exchange told the truth */
                int64_t load = s->load, total = 0, expected = (int64_t)n * k, expected_total = 0;
                MPI_Allreduce(&load, &total, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
                MPI_Allreduce(&expected, &expected_total, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
                CHECK_EQ_INT(total, expected_total); /* no pair lost or computed twice */
            }
            moe_scheduler_destroy(sched);
        }
    free(s->x), free(s->out), free(s->ids), free(s->w), free(s->rep), free(s->token_row), free(s->rows);
    free(s->entries), free(s->offset), free(s->send), free(s->recv), free(s->partial), free(s->back);
    free(s->table), free(s->table_block), free(ids), free(w);
    moe_comm_destroy(comm);
    moe_ctl_destroy(world);
    moe_sources_destroy(&sources);
    moe_plan_destroy(plan);
    int failures = moe_test_failures, total = 0;
    MPI_Allreduce(&failures, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    MPI_Finalize();
    if (rank != 0) return failures ? 1 : 0;
    moe_test_failures = total;
    return moe_test_result("dispatch");
}
