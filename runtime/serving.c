/* serving: the serving set of a run (runtime-impl.h): world ranks 0..P-1, their communicators and,
 * on those ranks, the backend state on this rank's weights and the scheduler on the plan. The engine
 * (engine.c) drives batches through it; an elastic run prepares the next set's state while the
 * current one serves, then swaps (runtime/elastic/elastic.c decides when).
 *
 * Communicators: every set has a ctl of its ranks (the batches' barriers) and a transport (MPI, or
 * NCCL for rows with an MPI one beside it for counts). With NCCL, one world communicator is made at
 * create; a serving set's is an ncclCommSplit of it (the world's own when all serve), kept by size,
 * so that a switch makes none: the sizes a schedule names are made at create, others (re-balancing
 * keeps the size) when first prepared. Each is warmed up when made (NCCL connects peers lazily, at a
 * first transfer). Expert moves of an elastic run have a split of their own, so that they never
 * queue behind the serving set's transfers.
 *
 * The next state is built on a thread while the old one serves, except where that is not safe: see
 * moe_serving_prepare. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/runtime-impl.h"

/* A serving set's communicators, made once, collectively over the world; NULL on ranks outside. */
typedef struct {
    bool made;
    moe_ctl_h ctl;
    moe_comm_h transport, meta;
} serving_set_t;

struct moe_serving_s {
    moe_serving_args_t args;
    moe_serving_build_args_t build; /* set by start */
    int rank, size;                 /* in the world */
    int serving;                    /* ranks 0..serving-1 serve */
    serving_set_t *sets;            /* [size + 1], by size */
    moe_comm_h world_transport;     /* NCCL over the world, or NULL */
    moe_comm_h move_transport;      /* NCCL over the world for expert moves (elastic runs), or NULL */
    /* the current set: its communicators (borrowed from sets; NULL outside) and state */
    moe_ctl_h ctl;
    moe_comm_h transport;
    moe_comm_h meta_transport; /* counts and metadata over MPI when rows go over NCCL, else NULL */
    moe_plan_h plan;
    moe_weights_t *weights; /* on the heap: backend states keep its address */
    moe_backend_state_t *backend_state;
    moe_scheduler_h sched;
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
};

/* Collective over the world (a no-op once made): the communicators of the serving set of ranks
 * 0..P-1. The collectives come before anything one rank may fail alone, so that such a failure
 * cannot leave the others waiting in them. */
static moe_status_t set_make(moe_serving_h s, int P)
{
    moe_status_t status = MOE_STATUS_OK;
    serving_set_t *set = &s->sets[P];
    if (set->made) return MOE_STATUS_OK;
    set->made = true;
    const bool member = s->rank < P;
    MOE_CHECK(moe_ctl_split(s->args.world, member, &set->ctl), fail);
    if (s->world_transport) {
        if (P == s->size)
            set->transport = s->world_transport;
        else
            MOE_CHECK(moe_comm_split(s->world_transport, member, &set->transport), fail);
        if (member) {
            MOE_CHECK(moe_comm_create_mpi(set->ctl, &set->meta), fail);
            MOE_CHECK(moe_comm_warm_up(set->transport), fail);
        }
    } else if (member) {
        MOE_CHECK(moe_comm_create_mpi(set->ctl, &set->transport), fail);
    }
    if (set->transport) MOE_CHECK(moe_comm_set_watch(set->transport, s->args.watch), fail);
    if (set->meta) MOE_CHECK(moe_comm_set_watch(set->meta, s->args.watch), fail);
fail:
    return status;
}

/* Collective over the world: serve with the set of ranks 0..serving-1 (made now if not ahead). */
static moe_status_t set_connect(moe_serving_h s)
{
    moe_status_t status = MOE_STATUS_OK;
    MOE_CHECK(set_make(s, s->serving), fail);
    const serving_set_t *set = &s->sets[s->serving];
    s->ctl = set->ctl;
    s->transport = set->transport;
    s->meta_transport = set->meta;
fail:
    return status;
}

/* The serving state's backend state and scheduler (local); its communicators stay in sets. */
static void state_destroy(moe_serving_h s)
{
    moe_scheduler_destroy(s->sched);
    if (s->build.backend && s->backend_state) s->build.backend->destroy(s->backend_state);
    s->sched = NULL;
    s->backend_state = NULL;
    s->ctl = NULL;
    s->transport = s->meta_transport = NULL;
}

/* Local: this rank's backend state on `weights` under `plan`, in a serving set of `ranks`. */
static moe_status_t backend_create(moe_serving_h s, const moe_weights_t *weights, const moe_plan_h plan, int ranks,
                                   moe_backend_state_t **out)
{
    const moe_config_t *c = s->args.config;
    const moe_serving_build_args_t *b = &s->build;
    const moe_backend_args_t args = {.config = c, .weights = weights, .plan = plan, .rank = s->rank, .ranks = ranks,
                                     .max_tokens = c->run.tokens_per_rank, .chunks = c->run.chunks,
                                     .capacity = b->capacity, .device = s->args.device,
                                     .comm = s->sets[ranks].transport, .nodes = b->hierarchical ? b->nodes : NULL};
    return b->backend->create(&args, out);
}

/* Local: on a serving rank, the backend state on this rank's weights and the scheduler on the plan. */
static moe_status_t state_build(moe_serving_h s)
{
    moe_status_t status = MOE_STATUS_OK;
    const moe_config_t *c = s->args.config;
    const moe_serving_build_args_t *b = &s->build;
    if (s->rank >= s->serving) return MOE_STATUS_OK;
    if (!s->backend_state) /* not prepared ahead (moe_serving_prepare) */
        MOE_CHECK(backend_create(s, s->weights, s->plan, s->serving, &s->backend_state), fail);
#if MOE_HAVE_CUDA
    if (b->backend == &moe_backend_cuda) moe_comm_set_stream(s->transport, moe_backend_cuda_stream(s->backend_state));
#endif
    moe_scheduler_args_t args = {.config = c, .plan = s->plan, .sources = b->sources,
                                 .backend = b->backend, .backend_state = s->backend_state,
                                 .comm = s->transport, .meta_comm = s->meta_transport,
                                 .max_tokens = c->run.tokens_per_rank, .capacity = b->capacity, .graphs = b->graphs,
                                 .nodes = b->nodes, .hierarchical = b->hierarchical};
    MOE_CHECK(moe_scheduler_create(&args, &s->sched), fail);
fail:
    return status;
}

/* The next serving state, if any, is not going to be used: wait for its thread, free it. */
static void next_discard(moe_serving_h s)
{
    if (s->next.running) pthread_join(s->next.thread, NULL);
    s->next.running = false;
    if (s->next.backend_state) s->build.backend->destroy(s->next.backend_state);
    moe_weights_destroy(s->next.weights); /* frees only what it owns: received experts */
    free(s->next.weights);
    moe_plan_destroy(s->next.plan);
    memset(&s->next, 0, sizeof s->next);
}

moe_status_t moe_serving_create(const moe_serving_args_t *args, moe_serving_h *out)
{
    moe_status_t status = MOE_STATUS_OK;
    moe_serving_h s = calloc(1, sizeof *s);
    MOE_CHECK_ALLOC(s, fail);
    s->args = *args;
    s->rank = moe_ctl_rank(args->world);
    s->size = moe_ctl_size(args->world);
    s->serving = args->size;
    s->sets = calloc((size_t)s->size + 1, sizeof *s->sets);
    MOE_CHECK_ALLOC(s->sets, fail_destroy);
#if MOE_HAVE_CUDA
    const moe_config_t *c = args->config;
    if (c->run.backend == MOE_BACKEND_CUDA && c->run.transport == MOE_TRANSPORT_NCCL) {
        MOE_CHECK(moe_comm_create_nccl(args->world, args->device, &s->world_transport), fail_destroy);
        MOE_CHECK(moe_comm_set_watch(s->world_transport, args->watch), fail_destroy);
        if (args->elastic) {
            MOE_CHECK(moe_comm_split(s->world_transport, true, &s->move_transport), fail_destroy);
            MOE_CHECK(moe_comm_set_watch(s->move_transport, args->watch), fail_destroy);
            MOE_CHECK(moe_comm_warm_up(s->move_transport), fail_destroy);
            moe_elastic_set_device_comm(args->elastic, s->move_transport);
        }
    }
#endif
    for (int i = 0; args->elastic && moe_elastic_schedule_size(args->elastic, i) > 0; i++)
        MOE_CHECK(set_make(s, moe_elastic_schedule_size(args->elastic, i)), fail_destroy);
    MOE_CHECK(set_connect(s), fail_destroy);
    *out = s;
    return MOE_STATUS_OK;
fail_destroy:
    moe_serving_destroy(s);
fail:
    return status;
}

moe_status_t moe_serving_start(moe_serving_h s, const moe_serving_build_args_t *args, moe_plan_h plan,
                               moe_weights_t *weights)
{
    s->build = *args;
    s->plan = plan;
    s->weights = weights;
    return state_build(s);
}

int moe_serving_size(const moe_serving_h s) { return s->serving; }
moe_ctl_h moe_serving_ctl(const moe_serving_h s) { return s->ctl; }
moe_plan_h moe_serving_plan(const moe_serving_h s) { return s->plan; }
moe_weights_t *moe_serving_weights(const moe_serving_h s) { return s->weights; }
moe_backend_state_t *moe_serving_state(const moe_serving_h s) { return s->backend_state; }
moe_scheduler_h moe_serving_scheduler(const moe_serving_h s) { return s->sched; }
bool moe_serving_busy(const moe_serving_h s) { return s->next.weights && !atomic_load(&s->next.done); }

static void *prepare_main(void *arg)
{
    moe_serving_h s = arg;
#if MOE_HAVE_CUDA
    if (s->build.backend == &moe_backend_cuda) moe_cuda_use_device(s->args.device); /* per thread */
#endif
    s->next.status = backend_create(s, s->next.weights, s->next.plan, s->next.size, &s->next.backend_state);
#if MOE_HAVE_CUDA
    if (s->next.status == MOE_STATUS_OK && s->next.warm_up && s->build.backend == &moe_backend_cuda)
        s->next.status = moe_backend_cuda_warm_up(s->next.backend_state, s->build.x);
#endif
    atomic_store(&s->next.done, 1);
    return NULL;
}

moe_status_t moe_serving_prepare(moe_serving_h s, moe_elastic_switch_t *sw)
{
    moe_status_t status = MOE_STATUS_OK;
    s->next.plan = sw->plan;
    s->next.size = sw->size;
    /* collective over the world, while the old set serves: the switch then makes no communicator */
    const moe_status_t made = set_make(s, sw->size);
    s->next.weights = malloc(sizeof *s->next.weights);
    if (!s->next.weights) {
        moe_weights_destroy(&sw->weights);
        MOE_FAIL(MOE_STATUS_NO_MEMORY, fail, "elastic: out of memory");
    }
    *s->next.weights = sw->weights;
    atomic_store(&s->next.done, 1);
    MOE_CHECK(made, fail);
    if (s->rank >= sw->size || s->build.reference) return MOE_STATUS_OK;
    /* A rank that joins has no transfers of its own in flight (its experts have arrived) and serves no
     * batch meanwhile: its state is built and run once on the thread, so that its first batch is like
     * any other (no CUDA module to load, no GEMM path to time) and nobody waits for it. */
    s->next.warm_up = s->rank >= s->serving;
    if (s->args.config->run.transport == MOE_TRANSPORT_NCCL && !s->next.warm_up) {
        /* not beside NCCL kernels in flight: cudaMalloc/cudaFree on another thread can hang them */
        prepare_main(s);
        return MOE_STATUS_OK;
    }
    atomic_store(&s->next.done, 0);
    if (pthread_create(&s->next.thread, NULL, prepare_main, s) != 0)
        MOE_FAIL(MOE_STATUS_INTERNAL, fail, "elastic: cannot start a thread");
    s->next.running = true;
fail:
    return status;
}

moe_status_t moe_serving_swap(moe_serving_h s)
{
    moe_status_t status = MOE_STATUS_OK;
    if (s->next.running) pthread_join(s->next.thread, NULL);
    s->next.running = false;
    MOE_CHECK(s->next.status, fail);
#if MOE_HAVE_CUDA
    if (s->build.backend == &moe_backend_cuda) MOE_CHECK(moe_backend_cuda_share_tuning(s->args.world), fail);
#endif
    state_destroy(s);
    moe_weights_hand_over(s->next.weights, s->weights); /* kept experts and the dense part: shared */
    moe_weights_destroy(s->weights);
    free(s->weights);
    s->weights = s->next.weights;
    moe_plan_destroy(s->plan);
    s->plan = s->next.plan;
    s->serving = s->next.size;
    s->backend_state = s->next.backend_state;
    memset(&s->next, 0, sizeof s->next);
    MOE_CHECK(set_connect(s), fail);
    MOE_CHECK(state_build(s), fail);
fail:
    return status;
}

void moe_serving_abort(moe_serving_h s)
{
    if (!s) return;
    for (int P = 1; s->sets && P <= s->size; P++) moe_comm_abort(s->sets[P].transport);
    moe_comm_abort(s->move_transport);
    moe_comm_abort(s->world_transport);
}

void moe_serving_destroy(moe_serving_h s)
{
    if (!s) return;
    next_discard(s); /* first: its thread may use the communicators below */
    state_destroy(s);
    moe_weights_destroy(s->weights);
    free(s->weights);
    moe_plan_destroy(s->plan);
    for (int P = 1; s->sets && P <= s->size; P++) {
        serving_set_t *set = &s->sets[P];
        if (set->transport != s->world_transport) moe_comm_destroy(set->transport);
        moe_comm_destroy(set->meta);
        moe_ctl_destroy(set->ctl);
    }
    free(s->sets);
    moe_comm_destroy(s->move_transport);
    moe_comm_destroy(s->world_transport);
    free(s);
}
