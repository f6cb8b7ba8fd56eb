/* test_dispatch: the scheduler's dispatch and combine, checked by payload, at 1, 2 and 4 ranks.
 *
 * The real scheduler and MPI transport run with a payload backend defined here in place of the
 * numerical one: a token's row encodes (source rank, local token, global token); the "experts" stage
 * checks, for every (row, expert) pair it receives, that the token really chose that expert with that
 * weight and that the plan sends it to this rank, and returns a row encoding what it computed; the
 * home rank then checks that what came back adds up to exactly its token's choices. The plan gives
 * expert 0 a replica on every rank; the routing is skewed so that some experts (and, at 4 ranks,
 * whole ranks) receive nothing; the last rank owns no tokens. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "runtime/runtime-impl.h"

enum { D = 6 };

typedef struct {
    int rank, n, k;
    moe_plan_h plan;
    const moe_sources_t *sources;
    int layer;
    int64_t g0;
    float *x, *out;
    float *send[4], *recv[4], *partial[4], *back[4];
} payload_t;

static payload_t P_;

static moe_status_t pl_create(const void *c, const void *w, int max_tokens, int chunks, void **st)
{
    *st = &P_;
    return MOE_STATUS_OK;
}
static void pl_destroy(void *st) {}
static moe_status_t pl_load(void *st, const float *x, int n)
{
    memcpy(P_.x, x, sizeof(float) * n * D);
    memset(P_.out, 0, sizeof(float) * n * D);
    return MOE_STATUS_OK;
}
static moe_status_t pl_route(void *st, int layer, int n, bool r, int32_t *ids, float *w)
{
    P_.layer = layer;
    return MOE_STATUS_OK;
}
static moe_status_t pl_buffers(void *st, int c, int n_send, int n_recv, moe_chunk_buffers_t *out)
{
    P_.send[c] = realloc(P_.send[c], sizeof(float) * (n_send + 1) * D);
    P_.back[c] = realloc(P_.back[c], sizeof(float) * (n_send + 1) * D);
    P_.recv[c] = realloc(P_.recv[c], sizeof(float) * (n_recv + 1) * D);
    P_.partial[c] = realloc(P_.partial[c], sizeof(float) * (n_recv + 1) * D);
    memset(P_.recv[c], 0xff, sizeof(float) * (n_recv + 1) * D); /* poison: NaN unless received */
    memset(P_.back[c], 0xff, sizeof(float) * (n_send + 1) * D);
    *out = (moe_chunk_buffers_t){P_.send[c], P_.recv[c], P_.partial[c], P_.back[c]};
    return MOE_STATUS_OK;
}
static moe_status_t pl_permute(void *st, int c, const int32_t *rows, int n_send)
{
    for (int i = 0; i < n_send; i++) memcpy(P_.send[c] + i * D, P_.x + rows[i] * D, sizeof(float) * D);
    return MOE_STATUS_OK;
}
/* The routing of global token g at the current layer, as the sources give it. */
static void token_route(int64_t g, int32_t *ids, float *w)
{
    moe_sources_route(P_.sources, P_.layer, g, 1, NULL, ids, w);
}
static moe_status_t pl_experts(void *st, int layer, int c, int n_recv, const moe_expert_groups_t *g,
                               moe_progress_fn progress, void *arg)
{
    const int *local;
    int slots = moe_plan_local_experts(P_.plan, layer, P_.rank, &local);
    CHECK_EQ_INT(g->slots, slots);
    memset(P_.partial[c], 0, sizeof(float) * n_recv * D);
    for (int s = 0; s < g->slots; s++) {
        for (int i = g->offset[s]; i < g->offset[s + 1]; i++) {
            const float *row = P_.recv[c] + g->row[i] * D;
            int64_t tok = (int64_t)row[2];
            int32_t ids[16];
            float w[16];
            token_route(tok, ids, w);
            int j = 0;
            while (j < P_.k && ids[j] != local[s]) j++;
            CHECK(j < P_.k); /* the token chose this expert */
            if (j < P_.k) CHECK(g->weight[i] == w[j]);
            CHECK_EQ_INT(moe_plan_pick_replica(P_.plan, layer, local[s], tok), P_.rank);
            float *p = P_.partial[c] + g->row[i] * D;
            p[0] += g->weight[i] * (float)(local[s] + 1);
            p[1] += g->weight[i];
            p[3] += 1.0f;                  /* (token, expert) pairs counted here */
            p[4] = (float)(P_.rank + 1);   /* who computed it */
            p[5] = row[2];                 /* the token, sent back */
        }
    }
    if (progress) progress(arg);
    return MOE_STATUS_OK;
}
static moe_status_t pl_shared(void *st, int layer, int b, int e) { return MOE_STATUS_OK; }
static moe_status_t pl_unpermute(void *st, int c, const int32_t *rows, int n_send)
{
    for (int i = 0; i < n_send; i++) {
        const float *b = P_.back[c] + i * D;
        float *o = P_.out + rows[i] * D;
        CHECK_EQ_INT((int64_t)b[5], P_.g0 + rows[i]); /* the row came back to its own token */
        o[0] += b[0], o[1] += b[1], o[3] += b[3], o[4] += b[4];
    }
    return MOE_STATUS_OK;
}
static moe_status_t pl_residual(void *st, int n)
{
    for (int t = 0; t < n; t++) {
        int64_t tok = P_.g0 + t;
        int32_t ids[16];
        float w[16];
        token_route(tok, ids, w);
        double e_sum = 0, w_sum = 0, ranks_sum = 0;
        bool seen[64] = {false};
        for (int j = 0; j < P_.k; j++) {
            e_sum += (double)w[j] * (ids[j] + 1);
            w_sum += w[j];
            int r = moe_plan_pick_replica(P_.plan, P_.layer, ids[j], tok);
            if (!seen[r]) ranks_sum += r + 1;
            seen[r] = true;
        }
        const float *o = P_.out + t * D;
        CHECK_NEAR(o[0], e_sum, 1e-5 * (1 + e_sum));
        CHECK_NEAR(o[1], w_sum, 1e-5);
        CHECK_EQ_INT((int)o[3], P_.k);          /* every choice computed exactly once */
        CHECK_EQ_INT((int)o[4], (int)ranks_sum); /* once per destination rank */
    }
    memset(P_.out, 0, sizeof(float) * n * D);
    return MOE_STATUS_OK;
}
static moe_status_t pl_store(void *st, float *x, int n) { return MOE_STATUS_OK; }

static const moe_backend_t payload_backend = {
    "payload", sizeof(float), pl_create, pl_destroy, pl_load, pl_route, pl_buffers, pl_permute, pl_experts,
    pl_shared, pl_unpermute, pl_residual, pl_store,
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
    CHECK_STATUS(moe_plan_create_empty(config.model.layers, config.model.experts, size, 2, &plan),
                 MOE_STATUS_OK);
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
    CHECK_STATUS(moe_comm_create_mpi(MPI_COMM_WORLD, &comm), MOE_STATUS_OK);
    const int tpr = config.run.tokens_per_rank, k = config.model.top_k;
    P_ = (payload_t){.rank = rank, .k = k, .plan = plan, .sources = &sources};
    P_.x = calloc(tpr * D, sizeof(float));
    P_.out = calloc(tpr * D, sizeof(float));
    int32_t *ids = calloc((size_t)config.model.layers * tpr * k, sizeof(int32_t));
    float *w = calloc((size_t)tpr * k, sizeof(float));
    for (int chunks = 1; chunks <= 3; chunks++) {
        config.run.chunks = chunks;
        moe_scheduler_args_t args = {.config = &config, .plan = plan, .sources = &sources,
                                     .backend = &payload_backend, .backend_state = &P_,
                                     .comm = comm, .max_tokens = tpr};
        moe_scheduler_h sched;
        CHECK_STATUS(moe_scheduler_create(&args, &sched), MOE_STATUS_OK);
        /* The last rank owns no tokens (when there are several); the others a rank-dependent count. */
        int n = size > 1 && rank == size - 1 ? 0 : tpr - 7 * rank;
        P_.g0 = (int64_t)rank * tpr;
        for (int t = 0; t < n; t++) {
            float *row = P_.x + t * D;
            row[0] = (float)rank, row[1] = (float)t, row[2] = (float)(P_.g0 + t);
        }
        pl_load(&P_, P_.x, n);
        for (int l = 0; l < config.model.layers; l++) {
            moe_layer_metrics_t m = {0};
            CHECK_STATUS(moe_scheduler_layer(sched, l, P_.g0, n, NULL, ids + (size_t)l * n * k, w, &m),
                         MOE_STATUS_OK);
            CHECK_EQ_INT(m.rows_sent >= 0, 1);
            int64_t load = m.load, total = 0, expected = (int64_t)n * k, expected_total = 0;
            MPI_Allreduce(&load, &total, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
            MPI_Allreduce(&expected, &expected_total, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
            CHECK_EQ_INT(total, expected_total); /* no pair lost or computed twice */
        }
        moe_scheduler_destroy(sched);
    }
    for (int c = 0; c < 4; c++) free(P_.send[c]), free(P_.recv[c]), free(P_.partial[c]), free(P_.back[c]);
    free(P_.x), free(P_.out), free(ids), free(w);
    moe_comm_destroy(comm);
    moe_sources_destroy(&sources);
    moe_plan_destroy(plan);
    int failures = moe_test_failures, total = 0;
    MPI_Allreduce(&failures, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    MPI_Finalize();
    if (rank != 0) return failures ? 1 : 0;
    moe_test_failures = total;
    return moe_test_result("dispatch");
}
