/* engine: a whole `moerun infer` run (see runtime.h): create builds this rank's share of the model,
 * run drives the batches through the scheduler (or the dense reference), finalize reduces and
 * writes what the run produced.
 *
 * Tokens: batch b covers global tokens [b*P*tpr, (b+1)*P*tpr) (tpr = run.tokens_per_rank), rank r
 * owning the r-th block of tpr; when the data ends inside a batch, the last ranks get fewer tokens or
 * none, and still take part in every collective. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/runtime-impl.h"

struct moe_engine_s {
    moe_config_t config;
    moe_engine_options_t options;
    MPI_Comm comm;
    int rank, size;
    moe_plan_h plan;
    moe_weights_t weights;
    moe_sources_t sources;
    const moe_backend_t *backend;
    void *backend_state;
    moe_comm_h transport;
    moe_comm_h meta_transport; /* counts and metadata over MPI when rows go over NCCL, else NULL */
    moe_scheduler_h sched;
    moe_metrics_h metrics;
    moe_stats_h stats;
    int64_t total_tokens;
    int batches;
    float *x;           /* [tpr][d] this rank's tokens */
    int32_t *ids;       /* [L][n][k] this batch's routing */
    float *weights_buf; /* [tpr][k] */
    float *gathered;    /* rank 0: [P*tpr][d] for the output */
    int *gather_counts, *gather_displs;
    moe_npy_writer_t output;
    bool output_open;
};

void moe_engine_destroy(moe_engine_h e)
{
    if (!e) return;
    if (e->output_open) moe_npy_writer_abort(&e->output);
    moe_metrics_destroy(e->metrics);
    moe_scheduler_destroy(e->sched);
    if (e->backend && e->backend_state) e->backend->destroy(e->backend_state);
    moe_comm_destroy(e->transport);
    moe_comm_destroy(e->meta_transport);
    moe_stats_destroy(e->stats);
    moe_sources_destroy(&e->sources);
    moe_weights_destroy(&e->weights);
    moe_plan_destroy(e->plan);
    moe_free(e->x);
    moe_free(e->ids);
    moe_free(e->weights_buf);
    moe_free(e->gathered);
    free(e->gather_counts);
    free(e->gather_displs);
    if (e->comm != MPI_COMM_NULL) MPI_Comm_free(&e->comm);
    free(e);
}

static moe_status_t engine_plan(moe_engine_h e)
{
    moe_status_t status = MOE_STATUS_OK;
    const moe_config_t *c = &e->config;
    /* The reference has no placement: every expert is local. */
    if (!c->placement.plan[0] || e->options.reference)
        return moe_plan_create_contiguous(c->model.layers, c->model.experts, e->size,
                                          c->placement.ranks_per_node, &e->plan);
    MOE_CHECK(moe_plan_load(c->placement.plan, &e->plan), fail);
    MOE_CHECK(moe_plan_check(e->plan, c->placement.plan), fail);
    MOE_CHECK(moe_plan_check_fits(e->plan, c->model.layers, c->model.experts, e->size,
                                  c->placement.plan), fail);
fail:
    return status;
}

moe_status_t moe_engine_create(const moe_config_t *config, const moe_engine_options_t *options,
                               MPI_Comm comm, moe_engine_h *out)
{
    moe_status_t status = MOE_STATUS_OK;
    struct moe_engine_s *e = calloc(1, sizeof *e);
    MOE_CHECK_ALLOC(e, fail);
    e->config = *config;
    e->options = options ? *options : (moe_engine_options_t)MOE_ENGINE_OPTIONS_INIT;
    e->comm = MPI_COMM_NULL;
    MOE_CHECK_MPI(MPI_Comm_dup(comm, &e->comm), fail);
    MPI_Comm_rank(e->comm, &e->rank);
    MPI_Comm_size(e->comm, &e->size);
    /* The only collective of create comes first, so that a rank failing below cannot leave the
     * others waiting in it. */
    const moe_config_t *c = &e->config;
#if MOE_HAVE_CUDA
    /* cuda: the GPU first (the NCCL communicator is created on it); then, as for cpu, the
     * transports are the collectives of create. */
    if (c->run.backend == MOE_BACKEND_CUDA) {
        int device = 0;
        MOE_CHECK(moe_cuda_select_device(e->comm, &device), fail);
        if (c->run.transport == MOE_TRANSPORT_NCCL) {
            MOE_CHECK(moe_comm_create_nccl(e->comm, device, &e->transport), fail);
            MOE_CHECK(moe_comm_create_mpi(e->comm, &e->meta_transport), fail);
        }
    }
#endif
    if (!e->transport) MOE_CHECK(moe_comm_create_mpi(e->comm, &e->transport), fail);
    const int tpr = c->run.tokens_per_rank, d = c->model.d_model, k = c->model.top_k,
              L = c->model.layers;

    MOE_CHECK(moe_config_validate(c, e->size), fail);
#if !MOE_HAVE_CUDA
    if (c->run.backend != MOE_BACKEND_CPU)
        MOE_FAIL(MOE_STATUS_UNSUPPORTED, fail, "run.backend: cuda is not available in this build");
#endif
    if (c->run.transport != MOE_TRANSPORT_MPI && c->run.backend != MOE_BACKEND_CUDA)
        MOE_FAIL(MOE_STATUS_UNSUPPORTED, fail, "run.transport: nccl needs run.backend cuda");
    if (e->options.reference && e->size != 1)
        MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, fail, "--reference runs on one rank, not %d", e->size);

    MOE_CHECK(engine_plan(e), fail);
    MOE_CHECK(moe_sources_create(c, &e->sources), fail);
    MOE_CHECK(moe_sources_total_tokens(&e->sources, e->size, &e->total_tokens, &e->batches), fail);
    MOE_CHECK(moe_weights_create(c, e->plan, e->rank, &e->weights), fail);

    e->x = moe_calloc((size_t)tpr * d, sizeof(float));
    e->ids = moe_calloc((size_t)L * tpr * k, sizeof(int32_t));
    e->weights_buf = moe_calloc((size_t)tpr * k, sizeof(float));
    MOE_CHECK_ALLOC(e->x, fail);
    MOE_CHECK_ALLOC(e->ids, fail);
    MOE_CHECK_ALLOC(e->weights_buf, fail);

    e->backend = &moe_backend_cpu;
#if MOE_HAVE_CUDA
    if (c->run.backend == MOE_BACKEND_CUDA) e->backend = &moe_backend_cuda;
#endif
    MOE_CHECK(e->backend->create(c, &e->weights, tpr, c->run.chunks, &e->backend_state), fail);
#if MOE_HAVE_CUDA
    if (e->backend == &moe_backend_cuda)
        moe_comm_set_stream(e->transport, moe_backend_cuda_stream(e->backend_state));
#endif
    moe_scheduler_args_t args = {.config = c, .plan = e->plan, .sources = &e->sources,
                                 .backend = e->backend, .backend_state = e->backend_state,
                                 .comm = e->transport, .meta_comm = e->meta_transport,
                                 .max_tokens = tpr};
    MOE_CHECK(moe_scheduler_create(&args, &e->sched), fail);
    MOE_CHECK(moe_metrics_create(c, e->comm, &e->metrics), fail);
    if (c->outputs.stats[0]) MOE_CHECK(moe_stats_create(L, c->model.experts, k, &e->stats), fail);

    if (c->outputs.output[0]) {
        if (e->rank == 0) {
            e->gathered = moe_calloc((size_t)e->size * tpr * d, sizeof(float));
            e->gather_counts = calloc((size_t)e->size, sizeof(int));
            e->gather_displs = calloc((size_t)e->size, sizeof(int));
            MOE_CHECK_ALLOC(e->gathered, fail);
            MOE_CHECK_ALLOC(e->gather_counts, fail);
            MOE_CHECK_ALLOC(e->gather_displs, fail);
            int64_t shape[2] = {e->total_tokens, d};
            MOE_CHECK(moe_npy_writer_open(c->outputs.output, MOE_DTYPE_F32, 2, shape, &e->output), fail);
            e->output_open = true;
        }
    }
    moe_info("rank %d: %zu bytes of weights, %lld tokens in %d batches", e->rank, e->weights.bytes,
             (long long)e->total_tokens, e->batches);
    *out = e;
    return MOE_STATUS_OK;
fail:
    moe_engine_destroy(e);
    return status;
}

/* Rank 0 collects the batch's rows in global token order and appends them to the output. */
static moe_status_t engine_write_output(moe_engine_h e, int n)
{
    moe_status_t status = MOE_STATUS_OK;
    const int d = e->config.model.d_model;
    int count = n * d;
    MOE_CHECK_MPI(MPI_Gather(&count, 1, MPI_INT, e->gather_counts, 1, MPI_INT, 0, e->comm), fail);
    int total = 0;
    if (e->rank == 0)
        for (int p = 0; p < e->size; p++) {
            e->gather_displs[p] = total;
            total += e->gather_counts[p];
        }
    MOE_CHECK_MPI(MPI_Gatherv(e->x, count, MPI_FLOAT, e->gathered, e->gather_counts, e->gather_displs,
                              MPI_FLOAT, 0, e->comm), fail);
    if (e->rank == 0) MOE_CHECK(moe_npy_writer_append(&e->output, e->gathered, total / d), fail);
fail:
    return status;
}

moe_status_t moe_engine_run(moe_engine_h e)
{
    moe_status_t status = MOE_STATUS_OK;
    const moe_config_t *c = &e->config;
    const int tpr = c->run.tokens_per_rank, k = c->model.top_k, L = c->model.layers;
    const int64_t per_batch = (int64_t)tpr * e->size;
    const bool progress = c->outputs.progress && e->rank == 0 && isatty(STDOUT_FILENO);
    double t_start = moe_now();
    for (int b = 0; b < e->batches; b++) {
        const int64_t g_batch = (int64_t)b * per_batch;
        const int64_t g0 = g_batch + (int64_t)e->rank * tpr;
        int64_t left = e->total_tokens - g0;
        const int n = left <= 0 ? 0 : left < tpr ? (int)left : tpr;
        int64_t batch_tokens = e->total_tokens - g_batch < per_batch ? e->total_tokens - g_batch
                                                                     : per_batch;
        moe_sources_input(&e->sources, g0, n, e->x);

        MOE_CHECK_MPI(MPI_Barrier(e->comm), fail); /* batches start together, so times compare */
        double t0 = moe_now();
        if (e->options.reference) {
            MOE_CHECK(moe_reference_forward(c, &e->weights, &e->sources, g0, n, e->x, e->ids), fail);
        } else {
            MOE_CHECK(e->backend->load(e->backend_state, e->x, n), fail);
            for (int l = 0; l < L; l++)
                MOE_CHECK(moe_scheduler_layer(e->sched, l, g0, n,
                                              l > 0 ? e->ids + (size_t)(l - 1) * n * k : NULL,
                                              e->ids + (size_t)l * n * k, e->weights_buf,
                                              moe_metrics_layer(e->metrics, l)), fail);
            MOE_CHECK(e->backend->store(e->backend_state, e->x, n), fail);
        }
        double batch_time = moe_now() - t0;

        if (e->stats) moe_stats_add(e->stats, e->ids, n);
        MOE_CHECK(moe_metrics_end_batch(e->metrics, b, batch_tokens, batch_time,
                                        b < c->run.warmup_batches), fail);
        if (e->output_open || (c->outputs.output[0] && e->rank != 0))
            MOE_CHECK(engine_write_output(e, n), fail);
        if (progress) {
            double el = moe_now() - t_start;
            printf("\r  batch %d/%d  %.0f tokens/s   ", b + 1, e->batches,
                   el > 0 ? (double)(g_batch + batch_tokens) / el : 0.0);
            fflush(stdout);
        }
    }
    if (progress) printf("\n");
fail:
    return status;
}

/* Sum the statistics of every rank into rank 0's object. */
static moe_status_t engine_reduce_stats(moe_engine_h e)
{
    moe_status_t status = MOE_STATUS_OK;
    moe_stats_h s = e->stats;
    const size_t L = (size_t)moe_stats_layers(s), E = (size_t)moe_stats_experts(s);
    struct { int64_t *data; size_t n; } parts[3] = {
        {moe_stats_loads(s), L * E},
        {moe_stats_coactivation(s), L * E * E},
        {moe_stats_transitions(s), (L - 1) * E * E},
    };
    for (int i = 0; i < 3; i++) {
        for (size_t off = 0; off < parts[i].n; off += 1 << 28) { /* stay within int counts */
            int n = (int)(parts[i].n - off < (1u << 28) ? parts[i].n - off : (1u << 28));
            void *buf = parts[i].data + off;
            MOE_CHECK_MPI(MPI_Reduce(e->rank == 0 ? MPI_IN_PLACE : buf, buf, n, MPI_INT64_T, MPI_SUM, 0,
                                     e->comm), fail);
        }
    }
    int64_t tokens = moe_stats_tokens(s), sum = 0;
    MOE_CHECK_MPI(MPI_Reduce(&tokens, &sum, 1, MPI_INT64_T, MPI_SUM, 0, e->comm), fail);
    if (e->rank == 0) moe_stats_set_tokens(s, sum);
fail:
    return status;
}

moe_status_t moe_engine_finalize(moe_engine_h e)
{
    moe_status_t status = MOE_STATUS_OK;
    const moe_config_t *c = &e->config;
    if (c->weights.kind == MOE_WEIGHTS_CHECKPOINT) { /* checkpoint bytes each rank read, to rank 0 */
        int64_t mine[2] = {e->weights.read_bytes, e->weights.read_expert_bytes};
        MOE_CHECK_MPI(MPI_Gather(mine, 2, MPI_INT64_T, moe_metrics_read_bytes(e->metrics), 2, MPI_INT64_T,
                                 0, e->comm), fail);
    }
    if (e->stats) {
        MOE_CHECK(engine_reduce_stats(e), fail);
        if (e->rank == 0) MOE_CHECK(moe_stats_save(e->stats, c->model.name, c->outputs.stats), fail);
    }
    if (e->rank == 0) {
        MOE_CHECK(moe_metrics_commit(e->metrics), fail);
        if (e->output_open) {
            e->output_open = false;
            MOE_CHECK(moe_npy_writer_commit(&e->output), fail);
        }
        moe_metrics_print_summary(e->metrics, stdout);
        fflush(stdout);
    }
fail:
    return status;
}
