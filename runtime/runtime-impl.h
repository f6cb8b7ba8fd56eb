/* runtime-impl.h: declarations private to runtime/ (no other module includes this).
 *
 * The engine is split by concern:
 *   model.c      seeded weights of the experts a rank hosts, inputs, routing sources (trace, synthetic)
 *   checkpoint.c the same weights read from a Hugging Face checkpoint (hf_config.c reads its config.json)
 *   backend.h    the stage interface a backend implements; backend_cpu.c is the first
 *   layer.c      the scheduler: one MoE layer as a chunked pipeline over the stage interface
 *   reference.c  the single-process dense reference (each token through its k experts directly)
 *   metrics.c    stage timers, loads, JSON lines and the summary table
 *   engine.c     create / run / finalize: batches, outputs, statistics */
#ifndef MOE_RUNTIME_IMPL_H
#define MOE_RUNTIME_IMPL_H

#include "comm/comm.h"
#include "io/io.h"
#include "kernels/kernels.h"
#include "placement/placement.h"
#include "runtime/runtime.h"
#include "runtime/backend.h"

/* ---------------------------------------------------------------- model (model.c) */

/* Tensor ids of the seeded rule (moe_seed_rule_t.tensor). */
enum {
    MOE_TENSOR_NORM = 1,
    MOE_TENSOR_ROUTER,
    MOE_TENSOR_BIAS,
    MOE_TENSOR_SHARED_GATE_UP,
    MOE_TENSOR_SHARED_DOWN,
    MOE_TENSOR_GATE_UP,
    MOE_TENSOR_DOWN,
    MOE_TENSOR_INPUT,
    MOE_TENSOR_SYNTH_ORDER,
    MOE_TENSOR_SYNTH_NEXT,
    MOE_TENSOR_SYNTH_PICK,
    MOE_TENSOR_SYNTH_WEIGHT,
    MOE_TENSOR_SHARED_GATE,
};

/* ---------------------------------------------------------------- weights (weights.c) */

/* The weights of `rank` under plan in `store` (the backend's), filled (seeded, or read from the
 * checkpoint). A rank beyond the plan's ranks (standby in an elastic run) gets the dense part only.
 * Polls watch (may be NULL) between experts, so that ranks waiting meanwhile hear from this one. */
moe_status_t moe_weights_create(const moe_config_t *config, const moe_plan_h plan, int rank,
                                const moe_store_ops_t *ops, moe_store_t *store, moe_watch_h watch,
                                moe_weights_t *out);
/* The same layout, unfilled. With share_dense, the dense part (the same under every plan) is
 * share_dense's, not copied, and no expert is allocated (the migration hands kept ones over and
 * allocates received ones); without, everything is allocated, uninitialised. */
moe_status_t moe_weights_layout(const moe_config_t *config, const moe_plan_h plan, int rank,
                                const moe_store_ops_t *ops, moe_store_t *store,
                                const moe_weights_t *share_dense, moe_weights_t *out);
/* `to` was laid out from `from` (the dense part and kept experts are from's): make `to` the owner
 * of all of them, so that destroying from frees only what `to` does not use. */
void moe_weights_hand_over(moe_weights_t *to, moe_weights_t *from);
void moe_weights_destroy(moe_weights_t *weights);
/* Bytes this rank's weights hold in their store (dense part and owned experts). */
size_t moe_weights_bytes(const moe_weights_t *weights);

/* estimate.c: this rank's figures for a dry run (runtime.h, moe_estimate_t): the weights laid out and
 * loaded on a counting store (no allocation, no copy) under the plan; the buffers counted; serving and
 * world the ranks that serve and all ranks. */
moe_status_t moe_estimate_run(const moe_config_t *config, const moe_plan_h plan, int rank, int serving, int world,
                              const moe_store_ops_t *store_ops, moe_watch_h watch, moe_estimate_t *out);

/* ---------------------------------------------------------------- checkpoints (checkpoint.c, hf_config.c) */

typedef enum {
    MOE_HF_MIXTRAL = 0,
    MOE_HF_QWEN2_MOE,
    MOE_HF_QWEN3_MOE,
    MOE_HF_OLMOE,
    MOE_HF_DEEPSEEK_V2,
    MOE_HF_DEEPSEEK_V3,
} moe_hf_family_t;

#define MOE_HF_MAX_LAYERS 1024

/* What moerun takes from a checkpoint's config.json. */
typedef struct {
    moe_hf_family_t family;
    char architecture[MOE_NAME_MAX]; /* architectures[0], or model_type */
    moe_model_config_t model;        /* the model settings it implies (name: the model_type) */
    int hidden_layers;               /* num_hidden_layers */
    int moe_layers;                  /* layers with an MoE block ... */
    int fp8_block;                   /* quantization_config fp8 weight_block_size (0: not quantised) */
    int moe_layer[MOE_HF_MAX_LAYERS]; /* ... and their indices in the checkpoint */
} moe_hf_config_t;

/* Parse DIR/config.json. Errors name the file and the key. */
moe_status_t moe_hf_config_read(const char *config_json, moe_hf_config_t *out);
const char *moe_hf_family_name(moe_hf_family_t family);

/* Fill w (laid out for this rank: norms, routers, biases, shared experts, shared gates, and the
 * experts the plan gives this rank) from weights.checkpoint, reading only those tensors (an expert's
 * slice of a fused per-layer tensor) and writing them through w's store, converted where they land.
 * Checks the model settings against config.json and every tensor's name, shape and dtype (F32, BF16,
 * F16, and FP8 e4m3 with block scales as DeepSeek-V3 publishes); errors name the file and tensor. */
moe_status_t moe_checkpoint_load(const moe_config_t *config, const moe_plan_h plan, int rank,
                                 moe_watch_h watch, moe_weights_t *w);

/* Inputs and routing that do not come from the model itself. */
typedef struct {
    const moe_config_t *config;
    float *input;            /* [T][d] from input.path, or NULL for synthetic inputs */
    int64_t input_tokens;
    int32_t *trace_ids;      /* [L][T][k] from routing.trace_ids, or NULL */
    float *trace_weights;    /* [L][T][k], or NULL (each choice then weighs 1/k) */
    int64_t trace_tokens;
    double *synth_cdf;       /* [L][E] cumulative popularity of the synthetic generator */
    int32_t *synth_order;    /* [L][E] expert of popularity rank i */
    int32_t *synth_next;     /* [L][E] the expert that follows e into layer l+1 */
} moe_sources_t;

moe_status_t moe_sources_create(const moe_config_t *config, moe_sources_t *out);
void moe_sources_destroy(moe_sources_t *sources);

/* Tokens the run covers: batches x ranks x tokens_per_rank, or what the trace/input holds when
 * run.batches is 0. Errors name the key whose data is too short. */
moe_status_t moe_sources_total_tokens(const moe_sources_t *sources, int world, int64_t *tokens,
                                      int *batches);

/* Hidden states of n global tokens starting at g0: rows of the input file or seeded values. */
void moe_sources_input(const moe_sources_t *sources, int64_t g0, int n, float *x);

/* Routing of n tokens from g0 at layer l when it comes from a trace or the synthetic generator.
 * prev_ids are these tokens' ids at layer l-1 (NULL at layer 0). */
void moe_sources_route(const moe_sources_t *sources, int layer, int64_t g0, int n,
                       const int32_t *prev_ids, int32_t *ids, float *weights);

/* Router parameters of the kernels for layer l. */
moe_router_params_t moe_model_router_params(const moe_config_t *config, const moe_weights_t *w,
                                            int layer);

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

/* placement.ranks_per_node for a serving set of `size` ranks: at most size, dividing it (nodes of
 * equal size), as a plan requires. */
static inline int moe_ranks_per_node(const moe_config_t *c, int size)
{
    int g = c->placement.ranks_per_node < size ? c->placement.ranks_per_node : size;
    while (g > 1 && size % g) g--;
    return g;
}

/* ---------------------------------------------------------------- migration (migrate.c) */

typedef struct moe_migration_s *moe_migration_h;

/* Collective over comm (all ranks, the same plans): lays out `to` for new_plan on this rank (the
 * dense part and the experts it already holds shared with `from`) and posts the
 * point-to-point transfers of the experts it gains or gives, at most `window` incoming experts in
 * flight. `from` stays alive until every rank is done. device_comm (may be NULL): an NCCL
 * communicator over comm's ranks, in the same order, of the migration's own; with it, slots in device
 * memory go GPU to GPU, all posted at once. */
moe_status_t moe_migration_start(const moe_config_t *config, const moe_plan_h old_plan,
                                 const moe_weights_t *from, const moe_plan_h new_plan, int rank,
                                 int window, moe_ctl_h ctl, moe_comm_h device_comm, moe_watch_h watch,
                                 moe_weights_t *to,
                                 moe_migration_h *out);
/* Progress; *done once this rank's sends and receives have completed. */
moe_status_t moe_migration_test(moe_migration_h migration, bool *done);
moe_status_t moe_migration_wait(moe_migration_h migration, moe_watch_h watch);
int64_t moe_migration_bytes_pending(const moe_migration_h migration); /* receives not yet arrived */
int64_t moe_migration_bytes_in(const moe_migration_h migration);      /* all this rank receives */
double moe_migration_seconds(const moe_migration_h migration);        /* from start to done (GPU to GPU: on the device) */
void moe_migration_destroy(moe_migration_h migration);                /* NULL-safe; after done */

/* ---------------------------------------------------------------- elastic control (elastic.c) */

typedef struct moe_elastic_s *moe_elastic_h;

typedef struct {
    const char *schedule;  /* NULL: the world serves throughout (re-balancing only) */
    const char *timeline, *events, *plans_dir; /* outputs, NULL or "" for none */
    moe_watch_h watch;     /* its waits' deadline (comm.h); borrowed, may be NULL */
} moe_elastic_args_t;

/* Checks the schedule against the world size (the same answer on every rank) and makes the plans
 * folder (rank 0, the verdict broadcast): collective over world. */
moe_status_t moe_elastic_create(const moe_config_t *config, const moe_elastic_args_t *args,
                                moe_ctl_h ctl, moe_elastic_h *out);
void moe_elastic_destroy(moe_elastic_h elastic);
int moe_elastic_initial_size(const moe_elastic_h elastic);
/* The serving size of the schedule's entry i, 0 past its end (or without a schedule). */
int moe_elastic_schedule_size(const moe_elastic_h elastic, int i);

/* What a boundary asks of the engine. prepare_now: take plan and weights (they are the engine's
 * now) for `size` ranks and prepare the backend state on them, in the background; busy is true at
 * later boundaries until that is done. switch_now: serve from this batch on with them, and free the
 * old ones. */
typedef struct {
    bool prepare_now, switch_now;
    moe_plan_h plan;
    moe_weights_t weights;
    int size;
} moe_elastic_switch_t;

/* Collective over the world, before every batch: decides, starts and finishes events. */
moe_status_t moe_elastic_boundary(moe_elastic_h elastic, int batch, const moe_plan_h plan,
                                  const moe_weights_t *weights, int serving, bool busy,
                                  moe_elastic_switch_t *sw);
/* The engine has switched, in `seconds`. */
void moe_elastic_switched(moe_elastic_h elastic, double seconds);
/* Expert moves between device stores go over comm (NCCL, the world's ranks in order, a communicator
 * of the moves' own, borrowed), not through host memory over MPI. */
void moe_elastic_set_device_comm(moe_elastic_h elastic, moe_comm_h comm);
/* What the serving set is doing in this batch: serve, plan, move, prepare or switch (the
 * timeline's phase column). */
const char *moe_elastic_phase(const moe_elastic_h elastic);
/* Between layers: lets transfers progress. NULL-safe. */
void moe_elastic_progress(moe_elastic_h elastic);
/* After each batch: this rank's routing ids [L][n][k] for the statistics window; rank 0 also
 * records the batch's tokens, serving ranks and mean per-layer max/mean load. */
moe_status_t moe_elastic_end_batch(moe_elastic_h elastic, int batch, const int32_t *ids, int n,
                                   int64_t tokens, int serving, double load_max_mean);
/* Collective: completes what is in flight; rank 0 writes the timeline and events. */
moe_status_t moe_elastic_finish(moe_elastic_h elastic);
/* Rank 0: the events table of the summary. */
void moe_elastic_print(const moe_elastic_h elastic, FILE *out);
/* Rank 0: the events as JSON lines (type "event"), for --json. */
moe_status_t moe_elastic_print_json(const moe_elastic_h elastic, FILE *out);

/* ---------------------------------------------------------------- reference (reference.c) */

/* The dense reference over n tokens from g0: x [n][d] in, out in place; all experts must be local
 * (world size 1). ids [L][n][k] receives the routing. */
moe_status_t moe_reference_forward(const moe_config_t *config, const moe_weights_t *weights,
                                   const moe_sources_t *sources, int64_t g0, int n, float *x,
                                   int32_t *ids);

#endif
