/* engine: a whole `moerun infer` or `moerun elastic` run (see runtime.h): create builds this rank's
 * share of the model, run drives the batches through the scheduler (or the dense reference),
 * finalize reduces and writes what the run produced.
 *
 * Tokens: batch b covers the next P*tpr global tokens (tpr = run.tokens_per_rank, P the ranks serving
 * it), serving rank r owning the r-th block of tpr; when the data ends inside a batch, the last ranks
 * get fewer tokens or none, and still take part in every collective.
 *
 * The serving set is world ranks 0..P-1 on a communicator split from the world; P is the world size
 * unless the run is elastic (a schedule, or rebalance.every), when elastic.c decides, at batch
 * boundaries, to switch to another plan, weights and P. Ranks outside the set hold the dense part of
 * the model (norms, routers, shared experts) and no experts, and wait at the boundaries.
 *
 * Communicators: with NCCL, one world communicator is made at launch; a serving set's is an
 * ncclCommSplit of it (the world's own when all serve), kept by size, so that a switch makes none:
 * the sizes a schedule names are made at launch, others (re-balancing keeps the size) when first
 * prepared. Each is warmed up when made (NCCL connects peers lazily, at a first transfer). Expert
 * moves of an elastic run have a split of their own, so that they never queue behind the serving
 * set's transfers. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "runtime/runtime-impl.h"

struct moe_engine_s {
    moe_config_t config;
    moe_engine_options_t options;
    MPI_Comm comm;            /* the world */
    int rank, size;
    int serving;              /* ranks 0..serving-1 serve */
    MPI_Comm serve_comm;      /* MPI_COMM_NULL outside the serving set (borrowed from sets) */
    /* serving sets' communicators by size (index P), made once, collectively over the world:
     * MPI_COMM_NULL and NULL on ranks outside */
    struct serving_set {
        bool made;
        MPI_Comm mpi;
        moe_comm_h transport, meta;
    } *sets;
    moe_comm_h world_transport; /* NCCL over the world, or NULL */
    moe_comm_h move_transport;  /* NCCL over the world for expert moves (elastic runs), or NULL */
    int device;               /* cuda: this rank's GPU */
    moe_comm_nodes_t *nodes;  /* where the world's ranks run */
    bool hierarchical;        /* run.dispatch resolved (static runs on the cpu backend) */
    moe_elastic_h elastic;    /* NULL for a static run */
    int64_t g_next;           /* first global token of the next batch */
    moe_plan_h plan;
    moe_weights_t *weights;   /* on the heap: backend states keep its address */
    /* the next serving state, prepared on a thread while the old one serves (elastic runs) */
    struct {
        moe_plan_h plan;
        moe_weights_t *weights;
        int size;
        moe_backend_state_t *backend_state;
        pthread_t thread;
        bool running;
        bool warm_up; /* a rank that is not serving yet: run the state once before it serves */
        atomic_int done;
        moe_status_t status;
    } next;
    moe_sources_t sources;
    const moe_backend_t *backend;
    const moe_store_ops_t *store_ops; /* where the weights live: the backend's (the cpu's for --reference) */
    moe_store_t *store;
    moe_backend_state_t *backend_state;
    int capacity;             /* > 0: fixed-capacity buffers (run.buffers) */
    bool graphs;              /* layers as CUDA graphs (run.graphs) */
    moe_trace_h trace;        /* --trace-events, or NULL */
    moe_comm_h transport;      /* the serving set's (borrowed from sets) */
    moe_comm_h meta_transport; /* counts and metadata over MPI when rows go over NCCL, else NULL */
    moe_scheduler_h sched;
    moe_metrics_h metrics;
    moe_stats_h stats;
    int64_t total_tokens; /* -1: not known up front (an elastic run of run.batches batches) */
    int batches;          /* -1: until the data ends */
    float *x;           /* [tpr][d] this rank's tokens */
    bool x_pinned;      /* x is page-locked (cuda) */
    int32_t *ids;       /* [L][n][k] this batch's routing */
    float *weights_buf; /* [tpr][k] */
    float *gathered;    /* rank 0: [P*tpr][d] for the output */
    int *gather_counts, *gather_displs;
    moe_npy_writer_t output;
    bool output_open;
    moe_estimate_t estimate; /* a dry run's */
    moe_ctl_h ctl;           /* the control plane over the world (comm.h) */
};

/* The serving set's backend state and scheduler (local); its communicators stay in sets. */
static void serving_destroy(moe_engine_h e)
{
    moe_scheduler_destroy(e->sched);
    if (e->backend && e->backend_state) e->backend->destroy(e->backend_state);
    e->sched = NULL;
    e->backend_state = NULL;
    e->transport = e->meta_transport = NULL;
    e->serve_comm = MPI_COMM_NULL;
}

/* Collective over the world (a no-op once made): the communicators of the serving set of ranks
 * 0..P-1. The collectives come before anything one rank may fail alone, so that such a failure
 * cannot leave the others waiting in them. */
static moe_status_t serving_set_make(moe_engine_h e, int P)
{
    moe_status_t status = MOE_STATUS_OK;
    struct serving_set *set = &e->sets[P];
    if (set->made) return MOE_STATUS_OK;
    set->made = true;
    const bool member = e->rank < P;
    /* MPI_Comm_split has no deadline: meet under the watch first, so a rank stopped before it is
     * found rather than waited for */
    MOE_CHECK(moe_watch_barrier(e->options.watch, e->comm, -1, NULL, "the serving set's start"), fail);
    MOE_CHECK_MPI(MPI_Comm_split(e->comm, member ? 0 : MPI_UNDEFINED, e->rank, &set->mpi), fail);
    if (e->world_transport) {
        if (P == e->size)
            set->transport = e->world_transport;
        else
            MOE_CHECK(moe_comm_split(e->world_transport, member, &set->transport), fail);
        if (member) {
            MOE_CHECK(moe_comm_create_mpi(set->mpi, &set->meta), fail);
            MOE_CHECK(moe_comm_warm_up(set->transport), fail);
        }
    } else if (member) {
        MOE_CHECK(moe_comm_create_mpi(set->mpi, &set->transport), fail);
    }
    if (set->transport) MOE_CHECK(moe_comm_set_watch(set->transport, e->options.watch), fail);
    if (set->meta) MOE_CHECK(moe_comm_set_watch(set->meta, e->options.watch), fail);
fail:
    return status;
}

static void serving_sets_destroy(moe_engine_h e)
{
    for (int P = 1; e->sets && P <= e->size; P++) {
        struct serving_set *set = &e->sets[P];
        if (set->transport != e->world_transport) moe_comm_destroy(set->transport);
        moe_comm_destroy(set->meta);
        if (set->mpi != MPI_COMM_NULL) MPI_Comm_free(&set->mpi);
    }
    free(e->sets);
    e->sets = NULL;
    moe_comm_destroy(e->move_transport);
    moe_comm_destroy(e->world_transport);
    e->move_transport = e->world_transport = NULL;
}

void moe_engine_abort(moe_engine_h e)
{
    if (!e) return;
    for (int P = 1; e->sets && P <= e->size; P++) moe_comm_abort(e->sets[P].transport);
    moe_comm_abort(e->move_transport);
    moe_comm_abort(e->world_transport);
}

/* Collective over the world: serve with the set of ranks 0..serving-1 (made now if not ahead). */
static moe_status_t serving_connect(moe_engine_h e)
{
    moe_status_t status = MOE_STATUS_OK;
    MOE_CHECK(serving_set_make(e, e->serving), fail);
    const struct serving_set *set = &e->sets[e->serving];
    e->serve_comm = set->mpi;
    e->transport = set->transport;
    e->meta_transport = set->meta;
fail:
    return status;
}

/* Local: this rank's backend state on `weights` under `plan`, in a serving set of `ranks`. */
static moe_status_t backend_create(moe_engine_h e, const moe_weights_t *weights, const moe_plan_h plan, int ranks,
                                   moe_backend_state_t **out)
{
    const moe_config_t *c = &e->config;
    const moe_backend_args_t args = {.config = c, .weights = weights, .plan = plan, .rank = e->rank, .ranks = ranks,
                                     .max_tokens = c->run.tokens_per_rank, .chunks = c->run.chunks,
                                     .capacity = e->capacity, .device = e->device, .comm = e->sets[ranks].transport,
                                     .nodes = e->hierarchical ? e->nodes : NULL};
    return e->backend->create(&args, out);
}

/* Local: on a serving rank, the backend state on this rank's weights and the scheduler on the plan. */
static moe_status_t serving_build(moe_engine_h e)
{
    moe_status_t status = MOE_STATUS_OK;
    const moe_config_t *c = &e->config;
    if (e->rank >= e->serving) return MOE_STATUS_OK;
    const int tpr = c->run.tokens_per_rank;
    if (!e->backend_state) /* not prepared ahead (engine_prepare) */
        MOE_CHECK(backend_create(e, e->weights, e->plan, e->serving, &e->backend_state), fail);
#if MOE_HAVE_CUDA
    if (e->backend == &moe_backend_cuda)
        moe_comm_set_stream(e->transport, moe_backend_cuda_stream(e->backend_state));
#endif
    moe_scheduler_args_t args = {.config = c, .plan = e->plan, .sources = &e->sources,
                                 .backend = e->backend, .backend_state = e->backend_state,
                                 .comm = e->transport, .meta_comm = e->meta_transport,
                                 .max_tokens = tpr, .capacity = e->capacity, .graphs = e->graphs,
                                 .nodes = e->nodes, .hierarchical = e->hierarchical};
    MOE_CHECK(moe_scheduler_create(&args, &e->sched), fail);
fail:
    return status;
}

/* The next serving state, if any, is not going to be used: wait for its thread, free it. */
static void engine_next_discard(moe_engine_h e)
{
    if (e->next.running) pthread_join(e->next.thread, NULL);
    e->next.running = false;
    if (e->next.backend_state) e->backend->destroy(e->next.backend_state);
    moe_weights_destroy(e->next.weights); /* frees only what it owns: received experts */
    free(e->next.weights);
    moe_plan_destroy(e->next.plan);
    memset(&e->next, 0, sizeof e->next);
}

void moe_engine_destroy(moe_engine_h e)
{
    if (!e) return;
    if (e->output_open) moe_npy_writer_abort(&e->output);
    moe_metrics_destroy(e->metrics);
    serving_destroy(e);
    serving_sets_destroy(e);
    moe_elastic_destroy(e->elastic);
    moe_stats_destroy(e->stats);
    moe_sources_destroy(&e->sources);
    engine_next_discard(e);
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
    free(e->gather_displs);
    moe_ctl_destroy(e->ctl);
    if (e->comm != MPI_COMM_NULL) MPI_Comm_free(&e->comm);
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

static moe_status_t engine_plan(moe_engine_h e)
{
    moe_status_t status = MOE_STATUS_OK;
    const moe_config_t *c = &e->config;
    /* The reference has no placement: every expert is local. */
    if (!c->placement.plan[0] || e->options.reference)
        return moe_plan_create_contiguous(c->model.layers, c->model.experts, e->serving,
                                          moe_ranks_per_node(c, e->serving), &e->plan);
    MOE_CHECK(moe_plan_load(c->placement.plan, &e->plan), fail);
    MOE_CHECK(moe_plan_check(e->plan, c->placement.plan), fail);
    MOE_CHECK(moe_plan_check_fits(e->plan, c->model.layers, c->model.experts, e->serving,
                                  c->placement.plan), fail);
fail:
    return status;
}

moe_status_t moe_engine_create(const moe_config_t *config, const moe_engine_options_t *options,
                               MPI_Comm comm, moe_engine_h *out)
{
    moe_status_t status = MOE_STATUS_OK;
    const double t_create = moe_now();
    struct moe_engine_s *e = calloc(1, sizeof *e);
    MOE_CHECK_ALLOC(e, fail);
    e->config = *config;
    e->options = options ? *options : (moe_engine_options_t)MOE_ENGINE_OPTIONS_INIT;
    e->comm = e->serve_comm = MPI_COMM_NULL;
    MOE_CHECK_MPI(MPI_Comm_dup(comm, &e->comm), fail);
    MPI_Comm_rank(e->comm, &e->rank);
    MPI_Comm_size(e->comm, &e->size);
    MOE_CHECK(moe_ctl_create(e->comm, e->options.watch, &e->ctl), fail);
    const moe_config_t *c = &e->config;
    const int tpr = c->run.tokens_per_rank, d = c->model.d_model, k = c->model.top_k,
              L = c->model.layers;

    /* Checks that need no communication come first: every rank reaches the same verdict, so a
     * failure here cannot leave another rank waiting in a collective below. */
    e->serving = e->size;
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
        e->serving = moe_elastic_initial_size(e->elastic);
    }
    MOE_CHECK(moe_config_validate(c, e->serving), fail);
#if !MOE_HAVE_CUDA
    if (c->run.backend != MOE_BACKEND_CPU)
        MOE_FAIL(MOE_STATUS_UNSUPPORTED, fail, "run.backend: cuda is not available in this build");
#endif
    if (c->run.transport != MOE_TRANSPORT_MPI && c->run.backend != MOE_BACKEND_CUDA)
        MOE_FAIL(MOE_STATUS_UNSUPPORTED, fail, "run.transport: nccl needs run.backend cuda");
    if (e->options.reference && e->size != 1)
        MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, fail, "--reference runs on one rank, not %d", e->size);

    e->sets = calloc((size_t)e->size + 1, sizeof *e->sets);
    MOE_CHECK_ALLOC(e->sets, fail);
    for (int P = 0; P <= e->size; P++) e->sets[P].mpi = MPI_COMM_NULL;
#if MOE_HAVE_CUDA
    if (c->run.backend == MOE_BACKEND_CUDA) { /* the GPU first: the NCCL communicator is made on it */
        if (e->options.device < 0)
            MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, fail, "run.backend cuda: no GPU chosen for this rank");
        e->device = e->options.device;
        MOE_CHECK(moe_cuda_start_device(e->device), fail);
    }
    if (c->run.backend == MOE_BACKEND_CUDA && c->run.transport == MOE_TRANSPORT_NCCL) {
        MOE_CHECK(moe_comm_create_nccl(e->comm, e->device, &e->world_transport), fail);
        MOE_CHECK(moe_comm_set_watch(e->world_transport, e->options.watch), fail);
        if (e->elastic) {
            MOE_CHECK(moe_comm_split(e->world_transport, true, &e->move_transport), fail);
            MOE_CHECK(moe_comm_set_watch(e->move_transport, e->options.watch), fail);
            MOE_CHECK(moe_comm_warm_up(e->move_transport), fail);
            moe_elastic_set_device_comm(e->elastic, e->move_transport);
        }
    }
#endif
    for (int i = 0; e->elastic && moe_elastic_schedule_size(e->elastic, i) > 0; i++)
        MOE_CHECK(serving_set_make(e, moe_elastic_schedule_size(e->elastic, i)), fail);
    MOE_CHECK(serving_connect(e), fail);
    MOE_CHECK(moe_comm_nodes_create(e->comm, c->run.ranks_per_node, e->options.node_hint, e->options.watch,
                                    &e->nodes), fail);

    MOE_CHECK(engine_plan(e), fail);
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
    MOE_CHECK(moe_sources_total_tokens(&e->sources, e->elastic ? e->size : e->serving,
                                       &e->total_tokens, &e->batches), fail);
    if (e->elastic) {
        if (c->run.batches > 0)
            e->total_tokens = -1;
        else
            e->batches = -1;
    }
    if (e->options.dry_run) { /* the figures, and nothing allocated for the run */
        MOE_CHECK(moe_estimate_run(c, e->plan, e->rank, e->serving, e->size, e->store_ops, e->options.watch,
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

    MOE_CHECK(serving_build(e), fail);
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
            e->gather_displs = calloc((size_t)e->size, sizeof(int));
            if (!e->gathered || !e->gather_counts || !e->gather_displs)
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
             e->rank, moe_weights_bytes(e->weights), e->store_ops->host_memory ? "host" : "device",
             (long long)e->total_tokens, e->batches, e->serving, e->size,
             e->capacity > 0 ? ", fixed-capacity buffers" : "");
    *out = e;
    return MOE_STATUS_OK;
fail:
    moe_engine_destroy(e);
    return status;
}

void moe_engine_estimate(const moe_engine_h e, moe_estimate_t *out) { *out = e->estimate; }

/* Rank 0 collects the batch's rows in global token order and appends them to the output. */
static moe_status_t engine_write_output(moe_engine_h e, int n)
{
    moe_status_t status = MOE_STATUS_OK;
    const int d = e->config.model.d_model;
    int count = n * d;
    MPI_Request request;
    MOE_CHECK_MPI(MPI_Igather(&count, 1, MPI_INT, e->gather_counts, 1, MPI_INT, 0, e->comm, &request),
                  fail);
    MOE_CHECK(moe_watch_wait(e->options.watch, -1, NULL, "the output gather", 1, &request), fail);
    int total = 0;
    if (e->rank == 0)
        for (int p = 0; p < e->size; p++) {
            e->gather_displs[p] = total;
            total += e->gather_counts[p];
        }
    /* Blocking, once every rank is here: MPI moves large messages only inside its calls, and a polled
     * wait, which sleeps between calls, took seconds for 128 MB a rank (measured on two H200s). The
     * barrier before it finds a rank stopped before the gather; one stopped inside it is not found. */
    MOE_CHECK(moe_watch_barrier(e->options.watch, e->comm, -1, NULL, "the output gather"), fail);
    MOE_CHECK_MPI(MPI_Gatherv(e->x, count, MPI_FLOAT, e->gathered, e->gather_counts, e->gather_displs, MPI_FLOAT, 0,
                              e->comm), fail);
    if (e->rank == 0) MOE_CHECK(moe_npy_writer_append(&e->output, e->gathered, total / d), fail);
fail:
    return status;
}

static void *prepare_main(void *arg)
{
    moe_engine_h e = arg;
#if MOE_HAVE_CUDA
    if (e->backend == &moe_backend_cuda) moe_cuda_use_device(e->device); /* per thread */
#endif
    e->next.status = backend_create(e, e->next.weights, e->next.plan, e->next.size, &e->next.backend_state);
#if MOE_HAVE_CUDA
    if (e->next.status == MOE_STATUS_OK && e->next.warm_up && e->backend == &moe_backend_cuda)
        e->next.status = moe_backend_cuda_warm_up(e->next.backend_state, e->x);
#endif
    atomic_store(&e->next.done, 1);
    return NULL;
}

/* Local: take the next plan and weights from the elastic controller and, on a rank that will
 * serve, build the backend state on them on a thread (for cuda: the weights' upload), while the
 * old state serves. */
static moe_status_t engine_prepare(moe_engine_h e, moe_elastic_switch_t *sw)
{
    moe_status_t status = MOE_STATUS_OK;
    e->next.plan = sw->plan;
    e->next.size = sw->size;
    /* collective over the world, while the old set serves: the switch then makes no communicator */
    const moe_status_t made = serving_set_make(e, sw->size);
    e->next.weights = malloc(sizeof *e->next.weights);
    if (!e->next.weights) {
        moe_weights_destroy(&sw->weights);
        MOE_FAIL(MOE_STATUS_NO_MEMORY, fail, "elastic: out of memory");
    }
    *e->next.weights = sw->weights;
    atomic_store(&e->next.done, 1);
    MOE_CHECK(made, fail);
    if (e->rank >= sw->size || e->options.reference) return MOE_STATUS_OK;
    /* A rank that joins has no transfers of its own in flight (its experts have arrived) and serves no
     * batch meanwhile: its state is built and run once on the thread, so that its first batch is like
     * any other (no CUDA module to load, no GEMM path to time) and nobody waits for it. */
    e->next.warm_up = e->rank >= e->serving;
    if (e->config.run.transport == MOE_TRANSPORT_NCCL && !e->next.warm_up) {
        /* not beside NCCL kernels in flight: cudaMalloc/cudaFree on another thread can hang them */
        prepare_main(e);
        return MOE_STATUS_OK;
    }
    atomic_store(&e->next.done, 0);
    if (pthread_create(&e->next.thread, NULL, prepare_main, e) != 0)
        MOE_FAIL(MOE_STATUS_INTERNAL, fail, "elastic: cannot start a thread");
    e->next.running = true;
fail:
    return status;
}

/* Collective over the world: serve from now on with the prepared plan, weights and size; the old
 * ones are freed. */
static moe_status_t engine_switch(moe_engine_h e)
{
    moe_status_t status = MOE_STATUS_OK;
    double t0 = moe_now();
    if (e->next.running) pthread_join(e->next.thread, NULL);
    e->next.running = false;
    MOE_CHECK(e->next.status, fail);
#if MOE_HAVE_CUDA
    if (e->backend == &moe_backend_cuda) MOE_CHECK(moe_backend_cuda_share_tuning(e->ctl), fail);
#endif
    serving_destroy(e);
    moe_weights_hand_over(e->next.weights, e->weights); /* kept experts and the dense part: shared */
    moe_weights_destroy(e->weights);
    free(e->weights);
    e->weights = e->next.weights;
    moe_plan_destroy(e->plan);
    e->plan = e->next.plan;
    e->serving = e->next.size;
    e->backend_state = e->next.backend_state;
    memset(&e->next, 0, sizeof e->next);
    MOE_CHECK(serving_connect(e), fail);
    MOE_CHECK(serving_build(e), fail);
    moe_elastic_switched(e->elastic, moe_now() - t0);
fail:
    return status;
}

/* Elastic runs: every rank meets the others after the batch. Ranks outside the serving set wait
 * here for a whole batch, backing off (comm.h) rather than spinning on cores the serving ranks may
 * share; their polls also move incoming experts on. */
typedef struct {
    moe_engine_h e;
    MPI_Request request;
} batch_wait_t;

static moe_status_t batch_done(void *arg, bool *done)
{
    batch_wait_t *b = arg;
    int flag = 0;
    if (MPI_Test(&b->request, &flag, MPI_STATUS_IGNORE) != MPI_SUCCESS) {
        moe_error("MPI_Test of the batch's end failed");
        return MOE_STATUS_MPI_ERROR;
    }
    moe_elastic_progress(b->e->elastic);
    *done = flag != 0;
    return MOE_STATUS_OK;
}

static moe_status_t engine_wait_batch(moe_engine_h e)
{
    moe_status_t status = MOE_STATUS_OK;
    batch_wait_t b = {.e = e};
    MOE_CHECK_MPI(MPI_Ibarrier(e->comm, &b.request), fail);
    status = moe_watch_until(e->options.watch, -1, NULL, "the batch's end", batch_done, &b);
fail:
    return status;
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
            bool busy = e->next.weights && !atomic_load(&e->next.done);
            MOE_CHECK(moe_elastic_boundary(e->elastic, b, e->plan, e->weights, e->serving, busy, &sw),
                      fail);
            if (sw.prepare_now) MOE_CHECK(engine_prepare(e, &sw), fail);
            if (sw.switch_now) MOE_CHECK(engine_switch(e), fail);
            moe_watch_step(e->options.watch, moe_elastic_phase(e->elastic), b, -1);
        }
        const int64_t per_batch = (int64_t)tpr * e->serving;
        const int64_t g_batch = e->g_next;
        const int64_t g0 = g_batch + (int64_t)e->rank * tpr;
        const int64_t end = e->total_tokens < 0 ? g_batch + per_batch : e->total_tokens;
        int64_t left = end - g0;
        const bool serves = e->rank < e->serving;
        const int n = !serves || left <= 0 ? 0 : left < tpr ? (int)left : tpr;
        int64_t batch_tokens = end - g_batch < per_batch ? end - g_batch : per_batch;
        moe_sources_input(&e->sources, g0, n, e->x);

        /* batches start together, so that times compare; ranks outside the serving set (busy with
         * incoming experts, maybe) are not waited for */
        if (serves) {
            MOE_CHECK(moe_watch_barrier(e->options.watch, e->serve_comm, e->serving, NULL,
                                        "the batch's start"), fail);
            /* leave together: the polled barrier lets a rank that came early sleep through the
             * others' arrival (up to a ms), and the first counts exchange would wait for it */
            MOE_CHECK_MPI(MPI_Barrier(e->serve_comm), fail);
        }
        double t0 = moe_now();
        if (e->options.reference) {
            MOE_CHECK(moe_reference_forward(c, e->weights, &e->sources, g0, n, e->x, e->ids), fail);
        } else if (serves) {
            const moe_backend_t *bk = e->backend;
            MOE_CHECK(bk->load(e->backend_state, e->x, n), fail);
            for (int l = 0; l < L; l++) {
                moe_watch_step(e->options.watch, e->elastic ? moe_elastic_phase(e->elastic) : "serve", b, l);
                MOE_CHECK(moe_scheduler_layer(e->sched, l, g0, n,
                                              l > 0 ? e->ids + (size_t)(l - 1) * n * k : NULL,
                                              e->ids + (size_t)l * n * k, e->weights_buf,
                                              moe_metrics_layer(e->metrics, l)), fail);
                moe_elastic_progress(e->elastic); /* expert transfers move on */
            }
            MOE_CHECK(bk->store(e->backend_state, e->x, n), fail);
            if (c->routing.source == MOE_ROUTING_ROUTER) MOE_CHECK(bk->routes(e->backend_state, n, e->ids), fail);
            MOE_CHECK(bk->timeline(e->backend_state, n, moe_metrics_layer(e->metrics, 0),
                                   e->trace && moe_trace_batch(e->trace) == b ? e->trace : NULL), fail);
            moe_watch_step(e->options.watch, e->elastic ? moe_elastic_phase(e->elastic) : "serve", b, -1);
        }
        double batch_time = moe_now() - t0;
        if (e->elastic) MOE_CHECK(engine_wait_batch(e), fail);
        e->g_next += batch_tokens;

        if (e->stats) moe_stats_add(e->stats, e->ids, n);
        double load_max_mean = 0;
        MOE_CHECK(moe_metrics_end_batch(e->metrics, b, batch_tokens, batch_time,
                                        b < c->run.warmup_batches, e->serving, &load_max_mean), fail);
        if (e->elastic)
            MOE_CHECK(moe_elastic_end_batch(e->elastic, b, e->ids, n, batch_tokens, e->serving,
                                            load_max_mean), fail);
        if (e->output_open || (c->outputs.output[0] && e->rank != 0))
            MOE_CHECK(engine_write_output(e, n), fail);
        if (progress) { /* the summary's tokens/s so far (metrics.c), warm-up batches left out */
            printf("\r  batch %d", b + 1);
            if (e->batches >= 0) printf("/%d", e->batches);
            if (b < c->run.warmup_batches)
                printf("  %d ranks  warm-up        ", e->serving);
            else
                printf("  %d ranks  %.0f tokens/s   ", e->serving, moe_metrics_tokens_per_s(e->metrics));
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
            MPI_Request request;
            MOE_CHECK_MPI(MPI_Ireduce(e->rank == 0 ? MPI_IN_PLACE : buf, buf, n, MPI_INT64_T, MPI_SUM, 0,
                                      e->comm, &request), fail);
            MOE_CHECK(moe_watch_wait(e->options.watch, -1, NULL, "the statistics reduction", 1, &request),
                      fail);
        }
    }
    int64_t tokens = moe_stats_tokens(s), sum = 0;
    MPI_Request request;
    MOE_CHECK_MPI(MPI_Ireduce(&tokens, &sum, 1, MPI_INT64_T, MPI_SUM, 0, e->comm, &request), fail);
    MOE_CHECK(moe_watch_wait(e->options.watch, -1, NULL, "the statistics reduction", 1, &request), fail);
    if (e->rank == 0) moe_stats_set_tokens(s, sum);
fail:
    return status;
}

moe_status_t moe_engine_finalize(moe_engine_h e)
{
    moe_status_t status = MOE_STATUS_OK;
    const moe_config_t *c = &e->config;
    if (c->weights.kind == MOE_WEIGHTS_CHECKPOINT) { /* checkpoint bytes each rank read, to rank 0 */
        int64_t mine[2] = {e->weights->read_bytes, e->weights->read_expert_bytes};
        MPI_Request request;
        MOE_CHECK_MPI(MPI_Igather(mine, 2, MPI_INT64_T, moe_metrics_read_bytes(e->metrics), 2, MPI_INT64_T,
                                  0, e->comm, &request), fail);
        MOE_CHECK(moe_watch_wait(e->options.watch, -1, NULL, "the checkpoint figures", 1, &request), fail);
    }
    moe_watch_step(e->options.watch, "finalize", -1, -1);
    if (e->output_open) { /* first: a failure below must not cost the run's output */
        e->output_open = false;
        MOE_CHECK(moe_npy_writer_commit(&e->output), fail);
    }
    { /* each rank's memory, to rank 0 */
        int64_t mine[3] = {moe_host_rss_peak(), (int64_t)moe_weights_bytes(e->weights), 0};
#if MOE_HAVE_CUDA
        if (e->backend == &moe_backend_cuda) mine[2] = (int64_t)moe_cuda_device_bytes();
#endif
        MOE_CHECK_MPI(MPI_Gather(mine, 3, MPI_INT64_T, moe_metrics_memory(e->metrics), 3, MPI_INT64_T, 0, e->comm),
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
