/* runtime-impl.h: declarations private to runtime/ (no other module includes this).
 *
 * The engine is split by concern (the model is runtime/model/, the serving set's changes
 * runtime/elastic/):
 *   backend.h    the stage interface a backend implements; backend_cpu.c is the first
 *   layer.c      the scheduler: one MoE layer as a chunked pipeline over the stage interface (hier.c:
 *                hierarchical dispatch)
 *   metrics.c    stage timers, loads, JSON lines and the summary table; trace.c one batch's Chrome trace
 *   estimate.c   what a run would take (--dry-run)
 *   serving.c    the serving set: its communicators, backend state, scheduler and plan; the next one
 *                prepared and swapped in (elastic runs)
 *   engine.c     create / run / finalize: batches, outputs, statistics */
#ifndef MOE_RUNTIME_IMPL_H
#define MOE_RUNTIME_IMPL_H

#include "comm/comm.h"
#include "io/io.h"
#include "kernels/kernels.h"
#include "placement/placement.h"
#include "runtime/runtime.h"
#include "runtime/backend.h"
#include "runtime/elastic/elastic.h"

/* estimate.c: this rank's figures for a dry run (runtime.h, moe_estimate_t): the weights laid out and
 * loaded on a counting store (no allocation, no copy) under the plan; the buffers counted; serving and
 * world the ranks that serve and all ranks. */
moe_status_t moe_estimate_run(const moe_config_t *config, const moe_plan_h plan, int rank, int serving, int world,
                              const moe_store_ops_t *store_ops, moe_watch_h watch, moe_estimate_t *out);

/* ---------------------------------------------------------------- metrics (metrics.c) */

typedef enum {
    MOE_STAGE_ROUTE = 0, /* norm, router, top-k */
    MOE_STAGE_PLAN,      /* destinations, counts exchange */
    MOE_STAGE_PERMUTE,
    MOE_STAGE_DISPATCH,  /* time spent waiting for dispatch: the part compute did not hide */
    MOE_STAGE_EXPERTS,
    MOE_STAGE_SHARED,
    MOE_STAGE_COMBINE,   /* time spent waiting for combine */
    MOE_STAGE_UNPERMUTE,
    MOE_STAGE_COUNT,
} moe_stage_t;

const char *moe_stage_name(moe_stage_t stage);

/* Per layer of the current batch, on this rank. */
typedef struct moe_layer_metrics_s {
    double time[MOE_STAGE_COUNT];
    double layer_time;
    int64_t tokens;                   /* tokens this rank owns */
    int64_t rows_sent, rows_received; /* token copies, this rank's out and in */
    int64_t load;                     /* (token, expert) pairs computed here */
    /* token copies this rank sent to another rank of its node, or of another node (a row to itself
     * is no copy); with hierarchical dispatch inter-node copies are first-hop rows to rails and
     * intra-node ones the rows the rails forward (docs/multinode.md) */
    int64_t copies_intra, copies_inter;
} moe_layer_metrics_t;

typedef struct moe_metrics_s *moe_metrics_h;

moe_status_t moe_metrics_create(const moe_config_t *config, moe_ctl_h ctl, moe_metrics_h *out);
void moe_metrics_destroy(moe_metrics_h metrics);
moe_layer_metrics_t *moe_metrics_layer(moe_metrics_h metrics, int layer);
/* Collective: reduce this batch's layer metrics to rank 0, write its JSON lines, accumulate. The
 * first `serving` ranks served the batch (the others are standby in an elastic run); rank 0 gets
 * the batch's mean over layers of the max/mean load in *load_max_mean (may be NULL). */
moe_status_t moe_metrics_end_batch(moe_metrics_h metrics, int batch, int64_t batch_tokens,
                                   double batch_time, bool warmup, int serving,
                                   double *load_max_mean);
/* Where rank 0 gathers the checkpoint tensor bytes each rank read, [P][2] (all, routed experts);
 * once asked for, the summary reports them. */
int64_t *moe_metrics_read_bytes(moe_metrics_h metrics);
/* Where rank 0 gathers each rank's memory, [P][3]: host RSS peak, weight bytes in its backend's store,
 * GPU bytes used (0 without one); once asked for, the summary reports them. */
int64_t *moe_metrics_memory(moe_metrics_h metrics);
/* Which dispatch the run uses, for the summary and the JSON. */
void moe_metrics_set_dispatch(moe_metrics_h metrics, bool hierarchical);
/* This rank's start-up: the engine's creation (weights made or read, buffers, communicators), in s. */
void moe_metrics_set_startup(moe_metrics_h metrics, double seconds);
/* Rank 0: the summary table. */
void moe_metrics_print_summary(moe_metrics_h metrics, const char *command, FILE *out);
/* Rank 0: tokens/s over the measured batches so far, as the summary reports it. */
double moe_metrics_tokens_per_s(const moe_metrics_h metrics);
/* Rank 0: the summary line, to the metrics log (then closed) and with json to stdout (no-op elsewhere). */
moe_status_t moe_metrics_commit(moe_metrics_h metrics, const char *command);
/* Collective, once after create: gathers each rank's host and device (a name: "cpu", "cuda:0") and
 * writes the run header (version, commit, world, hosts, devices, the configuration) to the metrics
 * log and, with json, to stdout, where the batches and the summary follow as JSON lines. */
moe_status_t moe_metrics_start(moe_metrics_h metrics, const char *command, const char *device, bool json);

/* ---------------------------------------------------------------- trace (trace.c)
 *
 * Spans of one batch (stage, layer, chunk, stream, start and length in microseconds from the batch's
 * start) from every rank, written by rank 0 as Chrome trace JSON (chrome://tracing, Perfetto). */
moe_status_t moe_trace_create(const char *path, int batch, moe_trace_h *out);
void moe_trace_destroy(moe_trace_h trace);
/* The batch traced (the others are not recorded). */
int moe_trace_batch(const moe_trace_h trace);
void moe_trace_span(moe_trace_h trace, const char *name, int layer, int chunk, const char *stream, double start_us,
                    double length_us);
/* Collective: rank 0 gathers every rank's spans and writes the file. */
moe_status_t moe_trace_commit(moe_trace_h trace, moe_ctl_h ctl);


/* ---------------------------------------------------------------- scheduler (layer.c) */

typedef struct moe_scheduler_s *moe_scheduler_h;

typedef struct {
    const moe_config_t *config;
    moe_plan_h plan;
    const moe_sources_t *sources;
    const moe_backend_t *backend;
    moe_backend_state_t *backend_state;
    moe_comm_h comm;          /* rows, in the backend's memory */
    moe_comm_h meta_comm;     /* counts, host memory (MPI); may equal comm */
    int max_tokens;           /* per rank per batch */
    int capacity;             /* > 0: fixed-capacity buffers (rows per chunk and peer); 0: counted */
    bool graphs;              /* layers as CUDA graphs (fixed capacity, a backend with graph support) */
    /* Where the ranks run (the copies' intra/inter split); the serving set's ranks are its first
     * ranks. Borrowed. */
    const moe_comm_nodes_t *nodes;
    bool hierarchical;        /* hierarchical dispatch (hier.c): the backend state was made with nodes */
} moe_scheduler_args_t;

/* One layer's plan as the counts exchange needs it: for each peer the replica that each of its
 * slots is, in slot order (what the counts exchange sends it). */
typedef struct {
    int replicas;
    int *peer_first; /* [P + 1] into peer_rep */
    int *peer_rep;   /* [R] */
    int slots;       /* rank's */
} moe_slot_table_t;
/* Fills t for `rank` (free peer_first and peer_rep). */
moe_status_t moe_slot_table_build(const moe_plan_h plan, int layer, int rank, moe_slot_table_t *t);

/* hier.c: a layer with hierarchical dispatch, for the scheduler: after the backend planned the
 * layer's first-hop rows, the counts exchange, both hops and their combines, chunk by chunk, the
 * shared experts meanwhile, and the un-permute; metrics counted into m. */
typedef struct moe_hier_s *moe_hier_h;
moe_status_t moe_hier_create(const moe_scheduler_args_t *args, const moe_slot_table_t *tables, moe_hier_h *out);
void moe_hier_destroy(moe_hier_h hier);
moe_status_t moe_hier_layer(moe_hier_h hier, int layer, int n, moe_layer_metrics_t *m);
/* The backends' relay tables: for every layer, each replica's first hop (the rank of the replica's node
 * with `rank`'s local index) and then each replica's local index on its node, into block ([replicas]
 * hops, then [replicas] indices, layer after layer; replicas in moe_dispatch_tables' order,
 * expert-major). Nodes must be of equal size over the plan's ranks. */
moe_status_t moe_hier_hops(const moe_plan_h plan, const moe_comm_nodes_t *nodes, int rank, int *block);

moe_status_t moe_scheduler_create(const moe_scheduler_args_t *args, moe_scheduler_h *out);
void moe_scheduler_destroy(moe_scheduler_h sched);

/* One layer over this rank's n tokens (global indices g0..). Routing from a trace or the synthetic
 * generator is computed here into ids/weights [n][k] (prev_ids: the previous layer's, NULL at layer
 * 0); the router's choices reach the host after the batch (backend routes()). */
moe_status_t moe_scheduler_layer(moe_scheduler_h sched, int layer, int64_t g0, int n,
                                 const int32_t *prev_ids, int32_t *ids, float *weights,
                                 moe_layer_metrics_t *metrics);

/* The plan as the dispatch kernels take it (kernels.h), for every layer, seen from `rank`: the tables
 * and their host arrays in one allocation (*block, free() it; tables[l]'s pointers point into it,
 * so a copy of the block elsewhere is used by moving each pointer by the same distance). */
moe_status_t moe_dispatch_tables(const moe_plan_h plan, int rank, moe_dispatch_table_t **tables, void **block,
                                 size_t *bytes);
/* The wire row of a backend with elements of elem_bytes: d elements, then the metadata. */
static inline size_t moe_wire_meta_offset(int d, size_t elem_bytes) { return ((size_t)d * elem_bytes + 15) / 16 * 16; }
static inline size_t moe_wire_row_bytes(int d, int k, size_t elem_bytes)
{
    return moe_wire_meta_offset(d, elem_bytes) + ((size_t)8 * k + 15) / 16 * 16;
}

/* ---------------------------------------------------------------- serving sets (serving.c)
 *
 * What serves the batches: the world ranks 0..P-1 on communicators of their own, and on them this
 * rank's backend state (on its weights) and the scheduler (on the plan). An elastic run has the next
 * state prepared while this one serves, then swaps them. */
typedef struct moe_serving_s *moe_serving_h;

typedef struct {
    const moe_config_t *config; /* the engine's, borrowed for the object's life (its run.chunks as resolved
                                   before start) */
    moe_ctl_h world;            /* the engine's control plane over the world, borrowed */
    moe_watch_h watch;          /* the transports' waits (borrowed, may be NULL) */
    moe_elastic_h elastic;      /* borrowed; NULL for a static run */
    int size;                   /* ranks 0..size-1 serve first */
    int device;                 /* run.backend cuda: this rank's GPU, started (moe_cuda_start_device) */
} moe_serving_args_t;

/* What the backend states are built from, borrowed for the object's life. */
typedef struct {
    const moe_backend_t *backend;
    const moe_sources_t *sources;
    const moe_comm_nodes_t *nodes; /* the world's; backend states get it with hierarchical dispatch */
    bool hierarchical;
    int capacity;     /* > 0: fixed-capacity buffers (rows per chunk and peer) */
    bool graphs;      /* layers as CUDA graphs */
    bool reference;   /* the dense reference: nothing prepared ahead */
    const float *x;   /* the engine's rows buffer [max_tokens][d]: a joining rank's warm-up runs on it */
} moe_serving_build_args_t;

/* Collective over the world: the communicators (with run.transport nccl the world's NCCL one and, for
 * an elastic run, the expert moves' one, handed to elastic), the serving sets of the schedule's sizes,
 * and the first set connected. No state yet. */
moe_status_t moe_serving_create(const moe_serving_args_t *args, moe_serving_h *out);
/* Local: takes plan and weights (the object's from now on, also on a failure: destroy frees them)
 * and, on a serving rank, builds the backend state and the scheduler. */
moe_status_t moe_serving_start(moe_serving_h serving, const moe_serving_build_args_t *args, moe_plan_h plan,
                               moe_weights_t *weights);
/* The current set: its size (ranks 0..size-1 serve), its ctl (NULL on ranks outside), and the
 * state serving (borrowed; backend state and scheduler NULL outside). */
int moe_serving_size(const moe_serving_h serving);
moe_ctl_h moe_serving_ctl(const moe_serving_h serving);
moe_plan_h moe_serving_plan(const moe_serving_h serving);
moe_weights_t *moe_serving_weights(const moe_serving_h serving);
moe_backend_state_t *moe_serving_state(const moe_serving_h serving);
moe_scheduler_h moe_serving_scheduler(const moe_serving_h serving);
/* Whether a prepared state is still being built (its thread has not finished). */
bool moe_serving_busy(const moe_serving_h serving);
/* Collective over the world: the set of sw's size made (if not yet: while the old set serves, so that
 * the swap makes no communicator); then, locally, sw's plan and weights taken and, on a rank that
 * will serve, the backend state built on them on a thread (for cuda: the weights' upload), while the
 * old state serves. */
moe_status_t moe_serving_prepare(moe_serving_h serving, moe_elastic_switch_t *sw);
/* Collective over the world: serve from now on with the prepared plan, weights and size; the old
 * ones are freed. */
moe_status_t moe_serving_swap(moe_serving_h serving);
/* Every NCCL communicator aborted (moe_comm_abort). Local, NULL-safe. */
void moe_serving_abort(moe_serving_h serving);
void moe_serving_destroy(moe_serving_h serving); /* local, NULL-safe */

#endif
