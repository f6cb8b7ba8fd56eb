/* engine: a whole `moerun infer` or `moerun elastic` run (see runtime.h): create builds this rank's
 * share of the model, run drives the batches through the scheduler (or the dense reference),
 * finalize reduces and writes what the run produced.
 *
 * Tokens: batch b covers the next P*tpr global tokens (tpr = run.tokens_per_rank, P the ranks serving
 * it), serving rank r owning the r-th block of tpr; when the data ends inside a batch, the last ranks
 * get fewer tokens or none, and still take part in every collective.
 *
 * The serving set (serving.c: its communicators, backend state, scheduler, plan and weights) is
 * world ranks 0..P-1; P is the world size unless the run is elastic (a schedule, or
 * rebalance.every), when elastic.c decides, at batch boundaries, to switch to another plan, weights
 * and P, and serving.c prepares and swaps in the next set. Ranks outside the set hold the dense part
 * of the model (norms, routers, shared experts) and no experts, and wait at the boundaries.
 *
 * Every collective goes through comm/'s control plane (comm.h, ctl): the engine's own ctl over the
 * world, split from the one launch/ gives it, and the serving set's. */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "runtime/runtime-impl.h"

struct moe_engine_s {
    moe_config_t config;
    moe_engine_options_t options;
    moe_ctl_h ctl;            /* the control plane over the world (comm.h): the engine's own */
    int rank, size;
    moe_serving_h set;        /* the serving set (serving.c) */
    int device;               /* cuda: this rank's GPU */
    moe_comm_nodes_t *nodes;  /* where the world's ranks run */
    bool hierarchical;        /* run.dispatch resolved (static runs on the cpu backend) */
    moe_elastic_h elastic;    /* NULL for a static run */
    int64_t g_next;           /* first global token of the next batch */
    /* made by create and handed to the serving set (moe_serving_start): NULL then */
    moe_plan_h plan;
    moe_weights_t *weights;
    moe_sources_t sources;
    const moe_backend_t *backend;
    const moe_store_ops_t *store_ops; /* where the weights live: the backend's (the cpu's for --reference) */
    moe_store_t *store;
    int capacity;             /* > 0: fixed-capacity buffers (run.buffers) */
    bool graphs;              /* layers as CUDA graphs (run.graphs) */
    moe_trace_h trace;        /* --trace-events, or NULL */
    moe_metrics_h metrics;
    moe_stats_h stats;
    int64_t total_tokens; /* -1: not known up front (an elastic run of run.batches batches) */
    int batches;          /* -1: until the data ends */
    float *x;           /* [tpr][d] this rank's tokens */
    bool x_pinned;      /* x is page-locked (cuda) */
    int32_t *ids;       /* [L][n][k] this batch's routing */
    float *weights_buf; /* [tpr][k] */
    float *gathered;    /* rank 0: [P*tpr][d] for the output */
    int *gather_counts; /* rank 0: [P] the batch's rows of each rank */
    moe_npy_writer_t output;
    bool output_open;
    moe_estimate_t estimate; /* a dry run's */
};

void moe_engine_abort(moe_engine_h e)
{
    if (e) moe_serving_abort(e->set);
}

void moe_engine_destroy(moe_engine_h e)
{
    if (!e) return;
    if (e->output_open) moe_npy_writer_abort(&e->output);
    moe_metrics_destroy(e->metrics);
    moe_serving_destroy(e->set); /* before the store: its weights live there */
    moe_elastic_destroy(e->elastic);
    moe_stats_destroy(e->stats);
    moe_sources_destroy(&e->sources);
    moe_weights_destroy(e->weights);
    free(e->weights);
    if (e->store_ops) e->store_ops->destroy(e->store);
    moe_trace_destroy(e->trace);
    moe_plan_destroy(e->plan);
#if MOE_HAVE_CUDA
    if (e->x_pinned) moe_cuda_unpin(e->x);
#endif
    moe_comm_nodes_destroy(e->nodes);
    moe_free(e->x);
    moe_free(e->ids);
    moe_free(e->weights_buf);
    moe_free(e->gathered);
    free(e->gather_counts);
    moe_ctl_destroy(e->ctl);
    free(e);
}

/* Rows per (chunk, peer) of fixed-capacity buffers, or 0 for counted ones (run.buffers; auto: fixed
 * for small batches on GPUs over NCCL, where a layer then never waits for the host). */
static int engine_capacity(const moe_config_t *c)
{
    bool fixed = c->run.buffers == MOE_BUFFERS_FIXED;
    if (c->run.buffers == MOE_BUFFERS_AUTO)
        fixed = c->run.backend == MOE_BACKEND_CUDA && c->run.transport == MOE_TRANSPORT_NCCL &&
                c->run.tokens_per_rank <= MOE_LOW_LATENCY_TOKENS;
    return fixed ? (c->run.tokens_per_rank + c->run.chunks - 1) / c->run.chunks : 0;
}

/* run.dispatch resolved on the node map: hierarchical when asked, or (auto) when the ranks span more
 * than one node and the run can (a static run with counted buffers, nodes of equal size). The same verdict on every rank: the map and the config are the same everywhere. */
static moe_status_t engine_dispatch(moe_engine_h e)
{
    moe_status_t status = MOE_STATUS_OK;
    const moe_config_t *c = &e->config;
    const moe_comm_nodes_t *nd = e->nodes;
    const char *why = NULL;
    if (e->options.reference) { /* one rank, no dispatch */
        e->hierarchical = false;
        return MOE_STATUS_OK;
    }
    if (e->elastic)
        why = "elastic and re-balancing runs dispatch flat";
    else if (e->capacity > 0)
        why = "fixed-capacity buffers (run.buffers) dispatch flat";
    else if (nd->per_node <= 0)
        why = "the nodes have different numbers of ranks";
    if (c->run.dispatch == MOE_DISPATCH_HIERARCHICAL && why)
        MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, fail, "run.dispatch: hierarchical is not possible here: %s", why);
    e->hierarchical = c->run.dispatch == MOE_DISPATCH_HIERARCHICAL ||
                      (c->run.dispatch == MOE_DISPATCH_AUTO && !why && nd->nodes > 1);
    moe_info("rank %d: node %d of %d, local index %d (nodes from %s); %s dispatch", e->rank, nd->node[e->rank],
             nd->nodes, nd->local[e->rank], nd->source, e->hierarchical ? "hierarchical" : "flat");
fail:
    return status;
}

/* The first serving set's plan, of `serving` ranks. */
static moe_status_t engine_plan(moe_engine_h e, int serving)
{
    moe_status_t status = MOE_STATUS_OK;
    const moe_config_t *c = &e->config;
    /* The reference has no placement: every expert is local. */
    if (!c->placement.plan[0] || e->options.reference)
        return moe_plan_create_contiguous(c->model.layers, c->model.experts, serving,
                                          moe_ranks_per_node(c, serving), &e->plan);
    MOE_CHECK(moe_plan_load(c->placement.plan, &e->plan), fail);
    MOE_CHECK(moe_plan_check(e->plan, c->placement.plan), fail);
    MOE_CHECK(moe_plan_check_fits(e->plan, c->model.layers, c->model.experts, serving,
                                  c->placement.plan), fail);
fail:
    return status;
}

moe_status_t moe_engine_create(const moe_config_t *config, const moe_engine_options_t *options,
                               moe_ctl_h world, moe_engine_h *out)
{
    moe_status_t status = MOE_STATUS_OK;
    const double t_create = moe_now();
    struct moe_engine_s *e = calloc(1, sizeof *e);
    MOE_CHECK_ALLOC(e, fail);
    e->config = *config;
    e->options = options ? *options : (moe_engine_options_t)MOE_ENGINE_OPTIONS_INIT;
    MOE_CHECK(moe_ctl_split(world, true, &e->ctl), fail); /* our own: collectives that match no one else's */
    e->rank = moe_ctl_rank(e->ctl);
    e->size = moe_ctl_size(e->ctl);
    const moe_config_t *c = &e->config;
    const int tpr = c->run.tokens_per_rank, d = c->model.d_model, k = c->model.top_k,
              L = c->model.layers;

    /* Checks that need no communication come first: every rank reaches the same verdict, so a
     * failure here cannot leave another rank waiting in a collective below. */
    int serving = e->size;
    /* a static run asked for a timeline or events takes the elastic path too (with no events) */
    const moe_engine_options_t *o = &e->options;
    if (o->schedule || c->rebalance.every > 0 || (o->timeline && o->timeline[0]) ||
        (o->events && o->events[0])) {
        if (o->reference)
            MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, fail,
                     "--reference runs one rank; it has no schedule, re-balancing or timeline");
        moe_elastic_args_t args = {.schedule = e->options.schedule, .timeline = e->options.timeline,
                                   .events = e->options.events, .plans_dir = e->options.plans_dir,
                                   .watch = e->options.watch};
        MOE_CHECK(moe_elastic_create(c, &args, e->ctl, &e->elastic), fail);
        serving = moe_elastic_initial_size(e->elastic);
    }
    MOE_CHECK(moe_config_validate(c, serving), fail);
#if !MOE_HAVE_CUDA
    if (c->run.backend != MOE_BACKEND_CPU)
        MOE_FAIL(MOE_STATUS_UNSUPPORTED, fail, "run.backend: cuda is not available in this build");
#endif
    if (c->run.transport != MOE_TRANSPORT_MPI && c->run.backend != MOE_BACKEND_CUDA)
        MOE_FAIL(MOE_STATUS_UNSUPPORTED, fail, "run.transport: nccl needs run.backend cuda");
    if (e->options.reference && e->size != 1)
        MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, fail, "--reference runs on one rank, not %d", e->size);

#if MOE_HAVE_CUDA
    if (c->run.backend == MOE_BACKEND_CUDA) { /* the GPU first: the NCCL communicator is made on it */
        if (e->options.device < 0)
            MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, fail, "run.backend cuda: no GPU chosen for this rank");
        e->device = e->options.device;
        MOE_CHECK(moe_cuda_start_device(e->device), fail);
    }
#endif
    const moe_serving_args_t sargs = {.config = &e->config, .world = e->ctl, .watch = e->options.watch,
                                      .elastic = e->elastic, .size = serving, .device = e->device};
    MOE_CHECK(moe_serving_create(&sargs, &e->set), fail);
    MOE_CHECK(moe_comm_nodes_create(e->ctl, c->run.ranks_per_node, e->options.node_hint, &e->nodes), fail);

    MOE_CHECK(engine_plan(e, serving), fail);
    MOE_CHECK(moe_sources_create(c, &e->sources), fail);
    e->backend = &moe_backend_cpu;
#if MOE_HAVE_CUDA
    if (c->run.backend == MOE_BACKEND_CUDA) e->backend = &moe_backend_cuda;
#endif
    /* the reference computes on the host whatever the backend */
    e->store_ops = e->options.reference ? moe_backend_cpu.memory : e->backend->memory;
    MOE_CHECK(e->store_ops->create(&e->store), fail);
    e->capacity = engine_capacity(c);
    e->graphs = e->capacity > 0 && c->run.backend == MOE_BACKEND_CUDA && c->run.transport == MOE_TRANSPORT_NCCL &&
                c->run.graphs != MOE_SWITCH_OFF && !e->options.reference;
    if (c->run.buffers == MOE_BUFFERS_AUTO && e->capacity > 0 && c->run.chunks > 1) {
        /* the low-latency path of decode-sized batches: one chunk, nothing to pipeline */
        e->config.run.chunks = 1;
        e->capacity = engine_capacity(&e->config);
    }
    /* An elastic run's batches change size: the data must hold run.batches batches of the whole
     * world, and the tokens are counted as they are served. */
    MOE_CHECK(moe_sources_total_tokens(&e->sources, e->elastic ? e->size : serving,
                                       &e->total_tokens, &e->batches), fail);
    if (e->elastic) {
        if (c->run.batches > 0)
            e->total_tokens = -1;
        else
            e->batches = -1;
    }
    if (e->options.dry_run) { /* the figures, and nothing allocated for the run */
        MOE_CHECK(moe_estimate_run(c, e->plan, e->rank, serving, e->size, e->store_ops, e->options.watch,
                                   &e->estimate), fail);
        *out = e;
        return MOE_STATUS_OK;
    }
    MOE_CHECK(engine_dispatch(e), fail);
    e->weights = calloc(1, sizeof *e->weights);
    MOE_CHECK_ALLOC(e->weights, fail);
    MOE_CHECK(moe_weights_create(c, e->plan, e->rank, e->store_ops, e->store, e->options.watch, e->weights), fail);

    e->x = moe_calloc((size_t)tpr * d, sizeof(float));
    e->ids = moe_calloc((size_t)L * tpr * k, sizeof(int32_t));
    e->weights_buf = moe_calloc((size_t)tpr * k, sizeof(float));
    if (!e->x || !e->ids || !e->weights_buf)
        MOE_FAIL(MOE_STATUS_NO_MEMORY, fail, "out of memory for a batch: run.tokens_per_rank (%d) x "
                 "model.d_model (%d), and x model.layers (%d) x model.top_k (%d)", tpr, d, L, k);
#if MOE_HAVE_CUDA
    /* pinned once for the run: a serving state made by an elastic switch finds it so, rather than
     * pinning it (tens of ms for a large batch) in its first batch */
    if (e->backend == &moe_backend_cuda && !e->options.reference) {
        MOE_CHECK(moe_cuda_pin(e->x, sizeof(float) * (size_t)tpr * d), fail);
        e->x_pinned = true;
    }
#endif

    const moe_serving_build_args_t bargs = {.backend = e->backend, .sources = &e->sources, .nodes = e->nodes,
                                            .hierarchical = e->hierarchical, .capacity = e->capacity,
                                            .graphs = e->graphs, .reference = e->options.reference, .x = e->x};
    status = moe_serving_start(e->set, &bargs, e->plan, e->weights);
    e->plan = NULL; /* the serving set's now */
    e->weights = NULL;
    MOE_CHECK(status, fail);
    MOE_CHECK(moe_metrics_create(c, e->ctl, &e->metrics), fail);
    moe_metrics_set_dispatch(e->metrics, e->hierarchical);
    {
        char device[32] = "cpu";
        if (c->run.backend == MOE_BACKEND_CUDA && !e->options.reference) snprintf(device, sizeof device, "cuda:%d", e->device);
        MOE_CHECK(moe_metrics_start(e->metrics, e->options.command, device, e->options.json), fail);
    }
    if (c->outputs.stats[0]) MOE_CHECK(moe_stats_create(L, c->model.experts, k, &e->stats), fail);

    if (c->outputs.output[0]) {
        if (e->rank == 0) {
            e->gathered = moe_calloc((size_t)e->size * tpr * d, sizeof(float));
            e->gather_counts = calloc((size_t)e->size, sizeof(int));
            if (!e->gathered || !e->gather_counts)
                MOE_FAIL(MOE_STATUS_NO_MEMORY, fail, "outputs.output: out of memory to gather %d ranks x "
                         "run.tokens_per_rank (%d) x model.d_model (%d) floats on rank 0", e->size, tpr, d);
            int64_t shape[2] = {e->total_tokens, d}; /* -1: declared at commit */
            MOE_CHECK(moe_npy_writer_open(c->outputs.output, MOE_DTYPE_F32, 2, shape, &e->output), fail);
            e->output_open = true;
        }
    }
    /* Outputs written only at the end: a typo in their folder fails now, not after the run. Rank 0
     * alone, after the last collective of create (the launcher agrees on the verdict). */
    const char *late[] = {c->outputs.stats, o->timeline, o->events};
    for (int i = 0; i < 3 && e->rank == 0; i++)
        if (late[i] && late[i][0]) MOE_CHECK(moe_atomic_file_check(late[i]), fail);
    moe_metrics_set_startup(e->metrics, moe_now() - t_create);
    if (e->options.trace_events && e->options.trace_events[0])
        MOE_CHECK(moe_trace_create(e->options.trace_events, e->options.trace_batch >= 0 ? e->options.trace_batch
                                                                                        : c->run.warmup_batches,
                                   &e->trace), fail);
    moe_info("rank %d: %zu bytes of weights (%s), %lld tokens in %d batches, %d of %d ranks serving%s",
             e->rank, moe_weights_bytes(moe_serving_weights(e->set)), e->store_ops->host_memory ? "host" : "device",
             (long long)e->total_tokens, e->batches, serving, e->size,
             e->capacity > 0 ? ", fixed-capacity buffers" : "");
    *out = e;
    return MOE_STATUS_OK;
fail:
    moe_engine_destroy(e);
    return status;
}

void moe_engine_estimate(const moe_engine_h e, moe_estimate_t *out) { *out = e->estimate; }

/* Rank 0 collects the batch's rows in global token order and appends them to the output: a
 * blocking gather (comm.h: MPI moves large messages only inside its calls). */
static moe_status_t engine_write_output(moe_engine_h e, int n)
{
    moe_status_t status = MOE_STATUS_OK;
    const int d = e->config.model.d_model;
    MOE_CHECK(moe_ctl_gatherv(e->ctl, 0, e->x, n, sizeof(float) * (size_t)d, e->gathered, e->gather_counts,
                              "the output gather"), fail);
    if (e->rank == 0) {
        int64_t rows = 0;
        for (int p = 0; p < e->size; p++) rows += e->gather_counts[p];
        MOE_CHECK(moe_npy_writer_append(&e->output, e->gathered, rows), fail);
    }
fail:
    return status;
}

/* Collective over the world: serve from now on with the prepared plan, weights and size. */
static moe_status_t engine_switch(moe_engine_h e)
{
    moe_status_t status = MOE_STATUS_OK;
    double t0 = moe_now();
    MOE_CHECK(moe_serving_swap(e->set), fail);
    moe_elastic_switched(e->elastic, moe_now() - t0);
fail:
    return status;
}

/* Elastic runs: every rank meets the others after the batch. Ranks outside the serving set wait
 * here for a whole batch, backing off (comm.h) rather than spinning on cores the serving ranks may
 * share; their polls also move incoming experts on. */
static void batch_wait_poll(void *elastic) { moe_elastic_progress(elastic); }

static moe_status_t engine_wait_batch(moe_engine_h e)
{
    return moe_ctl_barrier_poll(e->ctl, "the batch's end", batch_wait_poll, e->elastic);
}

/* Whether the run has more batches: the same answer on every rank. */
static bool engine_more(const moe_engine_h e, int b)
{
    if (e->batches >= 0 && b >= e->batches) return false;
    return e->total_tokens < 0 || e->g_next < e->total_tokens;
}

moe_status_t moe_engine_run(moe_engine_h e)
{
    moe_status_t status = MOE_STATUS_OK;
    const moe_config_t *c = &e->config;
    const int tpr = c->run.tokens_per_rank, k = c->model.top_k, L = c->model.layers;
    const bool progress = e->options.progress && e->rank == 0;
    for (int b = 0; engine_more(e, b); b++) {
        moe_watch_step(e->options.watch, e->elastic ? moe_elastic_phase(e->elastic) : "serve", b, -1);
        if (e->elastic) {
            moe_elastic_switch_t sw;
            MOE_CHECK(moe_elastic_boundary(e->elastic, b, moe_serving_plan(e->set), moe_serving_weights(e->set),
                                           moe_serving_size(e->set), moe_serving_busy(e->set), &sw), fail);
            if (sw.prepare_now) MOE_CHECK(moe_serving_prepare(e->set, &sw), fail);
            if (sw.switch_now) MOE_CHECK(engine_switch(e), fail);
            moe_watch_step(e->options.watch, moe_elastic_phase(e->elastic), b, -1);
        }
        const int serving = moe_serving_size(e->set);
        const int64_t per_batch = (int64_t)tpr * serving;
        const int64_t g_batch = e->g_next;
        const int64_t g0 = g_batch + (int64_t)e->rank * tpr;
        const int64_t end = e->total_tokens < 0 ? g_batch + per_batch : e->total_tokens;
        int64_t left = end - g0;
        const bool serves = e->rank < serving;
        const int n = !serves || left <= 0 ? 0 : left < tpr ? (int)left : tpr;
        int64_t batch_tokens = end - g_batch < per_batch ? end - g_batch : per_batch;
        moe_sources_input(&e->sources, g0, n, e->x);

        /* batches start together, so that times compare; ranks outside the serving set (busy with
         * incoming experts, maybe) are not waited for. Strict: they leave together, for a polled
         * barrier lets a rank that came early sleep through the others' arrival (up to a ms), and
         * the first counts exchange would wait for it. */
        if (serves) MOE_CHECK(moe_ctl_barrier_strict(moe_serving_ctl(e->set), "the batch's start"), fail);
        double t0 = moe_now();
        if (e->options.reference) {
            MOE_CHECK(moe_reference_forward(c, moe_serving_weights(e->set), &e->sources, g0, n, e->x, e->ids), fail);
        } else if (serves) {
            const moe_backend_t *bk = e->backend;
            moe_backend_state_t *state = moe_serving_state(e->set);
            MOE_CHECK(bk->load(state, e->x, n), fail);
            for (int l = 0; l < L; l++) {
                moe_watch_step(e->options.watch, e->elastic ? moe_elastic_phase(e->elastic) : "serve", b, l);
                MOE_CHECK(moe_scheduler_layer(moe_serving_scheduler(e->set), l, g0, n,
                                              l > 0 ? e->ids + (size_t)(l - 1) * n * k : NULL,
                                              e->ids + (size_t)l * n * k, e->weights_buf,
                                              moe_metrics_layer(e->metrics, l)), fail);
                moe_elastic_progress(e->elastic); /* expert transfers move on */
            }
            MOE_CHECK(bk->store(state, e->x, n), fail);
            if (c->routing.source == MOE_ROUTING_ROUTER) MOE_CHECK(bk->routes(state, n, e->ids), fail);
            MOE_CHECK(bk->timeline(state, n, moe_metrics_layer(e->metrics, 0),
                                   e->trace && moe_trace_batch(e->trace) == b ? e->trace : NULL), fail);
            moe_watch_step(e->options.watch, e->elastic ? moe_elastic_phase(e->elastic) : "serve", b, -1);
        }
        double batch_time = moe_now() - t0;
        if (e->elastic) MOE_CHECK(engine_wait_batch(e), fail);
        e->g_next += batch_tokens;

        if (e->stats) moe_stats_add(e->stats, e->ids, n);
        double load_max_mean = 0;
        MOE_CHECK(moe_metrics_end_batch(e->metrics, b, batch_tokens, batch_time,
                                        b < c->run.warmup_batches, serving, &load_max_mean), fail);
        if (e->elastic)
            MOE_CHECK(moe_elastic_end_batch(e->elastic, b, e->ids, n, batch_tokens, serving,
                                            load_max_mean), fail);
        if (e->output_open || (c->outputs.output[0] && e->rank != 0))
            MOE_CHECK(engine_write_output(e, n), fail);
        if (progress) { /* the summary's tokens/s so far (metrics.c), warm-up batches left out */
            printf("\r  batch %d", b + 1);
            if (e->batches >= 0) printf("/%d", e->batches);
            if (b < c->run.warmup_batches)
                printf("  %d ranks  warm-up        ", serving);
            else
                printf("  %d ranks  %.0f tokens/s   ", serving, moe_metrics_tokens_per_s(e->metrics));
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
            MOE_CHECK(moe_ctl_reduce(e->ctl, 0, MOE_CTL_INT64, MOE_CTL_SUM, parts[i].data + off, n,
                                     "the statistics reduction"), fail);
        }
    }
    int64_t tokens = moe_stats_tokens(s);
    MOE_CHECK(moe_ctl_reduce(e->ctl, 0, MOE_CTL_INT64, MOE_CTL_SUM, &tokens, 1, "the statistics reduction"), fail);
    if (e->rank == 0) moe_stats_set_tokens(s, tokens);
fail:
    return status;
}

moe_status_t moe_engine_finalize(moe_engine_h e)
{
    moe_status_t status = MOE_STATUS_OK;
    const moe_config_t *c = &e->config;
    const moe_weights_t *weights = moe_serving_weights(e->set);
    if (c->weights.kind == MOE_WEIGHTS_CHECKPOINT) { /* checkpoint bytes each rank read, to rank 0 */
        int64_t mine[2] = {weights->read_bytes, weights->read_expert_bytes};
        MOE_CHECK(moe_ctl_gather(e->ctl, 0, mine, sizeof mine, moe_metrics_read_bytes(e->metrics),
                                 "the checkpoint figures"), fail);
    }
    moe_watch_step(e->options.watch, "finalize", -1, -1);
    if (e->output_open) { /* first: a failure below must not cost the run's output */
        e->output_open = false;
        MOE_CHECK(moe_npy_writer_commit(&e->output), fail);
    }
    { /* each rank's memory, to rank 0 */
        int64_t mine[3] = {moe_host_rss_peak(), (int64_t)moe_weights_bytes(weights), 0};
#if MOE_HAVE_CUDA
        if (e->backend == &moe_backend_cuda) mine[2] = (int64_t)moe_cuda_device_bytes();
#endif
        MOE_CHECK(moe_ctl_gather(e->ctl, 0, mine, sizeof mine, moe_metrics_memory(e->metrics), "the memory figures"),
                  fail);
    }
    if (e->trace) MOE_CHECK(moe_trace_commit(e->trace, e->ctl), fail);
    if (e->elastic) MOE_CHECK(moe_elastic_finish(e->elastic), fail);
    if (e->stats) {
        MOE_CHECK(engine_reduce_stats(e), fail);
        if (e->rank == 0) MOE_CHECK(moe_stats_save(e->stats, c->model.name, c->outputs.stats), fail);
    }
    if (e->rank == 0) {
        MOE_CHECK(moe_metrics_commit(e->metrics, e->options.command), fail);
        moe_metrics_print_summary(e->metrics, e->options.command, stdout);
        if (e->elastic && !e->options.json) moe_elastic_print(e->elastic, stdout);
        if (e->elastic && e->options.json) MOE_CHECK(moe_elastic_print_json(e->elastic, stdout), fail);
        fflush(stdout);
    }
fail:
    return status;
}
