/* runtime: the MoE model, its configuration and the engine that runs it expert-parallel.
 *
 * A run is: load a configuration (YAML, one table of settings, errors naming file:line:key), create an
 * engine on an MPI communicator (each rank builds only the experts the placement gives it), run the
 * batches (route -> plan -> permute -> dispatch -> expert GEMMs -> combine -> un-permute, chunked so that
 * communication overlaps compute), then finalize (collective: reduces statistics and metrics to rank 0
 * and writes the outputs) and destroy. */
#ifndef MOE_RUNTIME_H
#define MOE_RUNTIME_H

#include <mpi.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "common/common.h"

/* ---------------------------------------------------------------- configuration */

typedef enum { MOE_SCORING_SOFTMAX = 0, MOE_SCORING_SIGMOID } moe_scoring_t;
typedef enum { MOE_ROUTING_ROUTER = 0, MOE_ROUTING_TRACE, MOE_ROUTING_SYNTHETIC } moe_routing_source_t;
typedef enum { MOE_BACKEND_CPU = 0, MOE_BACKEND_CUDA } moe_backend_kind_t;
typedef enum { MOE_TRANSPORT_MPI = 0, MOE_TRANSPORT_NCCL } moe_transport_kind_t;
typedef enum { MOE_INPUT_SYNTHETIC = 0, MOE_INPUT_NPY } moe_input_kind_t;
typedef enum { MOE_WEIGHTS_RANDOM = 0, MOE_WEIGHTS_CHECKPOINT } moe_weights_kind_t;
typedef enum { MOE_BUFFERS_AUTO = 0, MOE_BUFFERS_COUNTED, MOE_BUFFERS_FIXED } moe_buffers_t;
/* run.dispatch: auto = hierarchical when the world spans more than one node (docs/multinode.md) */
typedef enum { MOE_DISPATCH_AUTO = 0, MOE_DISPATCH_FLAT, MOE_DISPATCH_HIERARCHICAL } moe_dispatch_t;
typedef enum { MOE_SWITCH_AUTO = 0, MOE_SWITCH_ON, MOE_SWITCH_OFF } moe_switch_t;
/* outputs.progress; false and true are the words of older configs (off, auto) */
typedef enum {
    MOE_PROGRESS_OFF = 0, MOE_PROGRESS_AUTO, MOE_PROGRESS_ON, MOE_PROGRESS_FALSE, MOE_PROGRESS_TRUE
} moe_progress_t;

/* Batches of at most this many tokens per rank are decode-sized: run.buffers auto makes them fixed
 * capacity, one chunk (the low-latency path). */
#define MOE_LOW_LATENCY_TOKENS 256
/* model.top_k at most this (kernels.h's MOE_DISPATCH_MAX_K: a token's choices stay on chip) */
#define MOE_DISPATCH_TOP_K_MAX 32

#define MOE_PATH_MAX 4096
#define MOE_NAME_MAX 128
#define MOE_CONFIG_SETTINGS_MAX 64 /* rows the settings table may have (see moe_config_t.line) */

typedef struct {
    char name[MOE_NAME_MAX];   /* model.name: shown in reports and statistics metadata */
    int layers;                /* model.layers: MoE blocks in the stack */
    int d_model;               /* model.d_model: hidden size d */
    int d_ff;                  /* model.d_ff: routed expert width f */
    int experts;               /* model.experts: routed experts E per layer */
    int top_k;                 /* model.top_k */
    int shared_experts;        /* model.shared_experts: 0 for none */
    int shared_d_ff;           /* model.shared_d_ff: width of each shared expert */
    moe_scoring_t scoring;     /* model.scoring: softmax | sigmoid */
    bool renormalize;          /* model.renormalize: rescale the k weights to sum 1 */
    int groups;                /* model.groups: expert groups for group-limited top-k (1 = off) */
    int groups_kept;           /* model.groups_kept: groups a token may pick from */
    float routed_scaling;      /* model.routed_scaling: factor on the routed output weights */
    bool score_bias;           /* model.score_bias: sigmoid correction bias added for selection only */
    bool shared_gate;          /* model.shared_gate: shared output scaled by sigmoid(h . w) (Qwen2-MoE) */
    float norm_eps;            /* model.norm_eps: RMSNorm epsilon */
} moe_model_config_t;

typedef struct {
    moe_backend_kind_t backend;     /* run.backend: cpu | cuda */
    moe_transport_kind_t transport; /* run.transport: mpi | nccl */
    int chunks;                     /* run.chunks: pipeline chunks C (1 = no overlap) */
    int tokens_per_rank;            /* run.tokens_per_rank: tokens each rank owns per batch */
    moe_buffers_t buffers;          /* run.buffers: auto | counted | fixed */
    moe_dispatch_t dispatch;        /* run.dispatch: auto | flat | hierarchical */
    int ranks_per_node;             /* run.ranks_per_node: simulated nodes of N consecutive ranks (0: the launcher's) */
    moe_switch_t graphs;            /* run.graphs: CUDA graphs auto | on | off */
    int gemm;                       /* run.gemm: the expert GEMM path, 0 = auto (kernels.h moe_gemm_path_t) */
    int batches;                    /* run.batches: 0 = as many as the trace or input holds */
    uint64_t seed;                  /* run.seed: weights, inputs, synthetic routing */
    int warmup_batches;             /* run.warmup_batches: excluded from tokens/s */
    float timeout;                  /* run.timeout: seconds a rank may go unheard (comm.h, liveness) */
} moe_run_config_t;

typedef struct {
    moe_routing_source_t source;  /* routing.source: router | trace | synthetic */
    char trace_ids[MOE_PATH_MAX]; /* routing.trace_ids: .npy ids [L, T, k] */
    char trace_weights[MOE_PATH_MAX]; /* routing.trace_weights: optional .npy [L, T, k] */
    float skew;                   /* routing.skew: Zipf exponent of synthetic expert popularity */
    float affinity;               /* routing.affinity: chance a choice follows the previous layer's */
} moe_routing_config_t;

typedef struct {
    moe_input_kind_t kind;        /* input.kind: synthetic | npy */
    char path[MOE_PATH_MAX];      /* input.path: .npy [T, d] float32/float16 */
} moe_input_config_t;

typedef struct {
    moe_weights_kind_t kind;      /* weights.kind: random | checkpoint (implied by weights.checkpoint) */
    float scale;                  /* weights.scale: multiplies 1/sqrt(fan_in) */
    char checkpoint[MOE_PATH_MAX]; /* weights.checkpoint: Hugging Face checkpoint directory */
} moe_weights_config_t;

typedef struct {
    char plan[MOE_PATH_MAX];      /* placement.plan: plan YAML; empty = contiguous blocks */
    int ranks_per_node;           /* placement.ranks_per_node: for the default plan and reports */
} moe_placement_config_t;

typedef struct {
    int every;                    /* rebalance.every: batches between re-placements (0 = off) */
    int window;                   /* rebalance.window: batches of routing statistics planned from */
    float move_cost;              /* rebalance.move_cost: objective cost of one expert moved */
    int transfer_window;          /* rebalance.transfer_window: experts received at once */
} moe_rebalance_config_t;

typedef struct {
    char output[MOE_PATH_MAX];    /* outputs.output: final hidden states .npy [T, d] float32 */
    char metrics[MOE_PATH_MAX];   /* outputs.metrics: JSON lines */
    char stats[MOE_PATH_MAX];     /* outputs.stats: routing statistics .safetensors */
    moe_progress_t progress;      /* outputs.progress: rank 0's progress line: auto (its output a
                                     terminal), on, off */
} moe_outputs_config_t;

typedef struct {
    char source_path[MOE_PATH_MAX]; /* the YAML file it was read from, for messages */
    moe_model_config_t model;
    moe_run_config_t run;
    moe_routing_config_t routing;
    moe_input_config_t input;
    moe_weights_config_t weights;
    moe_placement_config_t placement;
    moe_rebalance_config_t rebalance;
    moe_outputs_config_t outputs;
    /* Where each setting's value came from, one entry per row of the settings table (in the order of
     * moe_config_settings()): its line in source_path, 0 = the default, -1 = a --set override.
     * moe_config_validate uses it to name file:line:key. */
    int line[MOE_CONFIG_SETTINGS_MAX];
} moe_config_t;

/* Fill every setting with its default (the table in config.c). */
void moe_config_defaults(moe_config_t *config);

/* Read YAML over the defaults. Errors name file:line and the dotted key: unknown key, wrong type,
 * impossible value (checked by moe_config_validate). */
moe_status_t moe_config_load(const char *path, moe_config_t *config);

/* Apply one `key=value` override (dotted key), as `--set` gives it; same checks as the file. */
moe_status_t moe_config_set(moe_config_t *config, const char *assignment);

/* Cross-field checks (top_k <= experts, groups divide experts, ...), naming the key and, where the
 * value came from the file, its line. Call after all overrides. world_size <= 0 skips the checks that
 * need it (experts that the ranks cannot split). */
moe_status_t moe_config_validate(const moe_config_t *config, int world_size);

/* The effective configuration as YAML that moe_config_load reads back. */
void moe_config_print(const moe_config_t *config, FILE *out);

/* The model settings and weights.checkpoint for the Hugging Face checkpoint whose config.json is at
 * config_json (hf_config.c), over the defaults: what `moerun config --from-hf` writes. Errors name the
 * file and the key: missing or mistyped keys, an unsupported architecture. The checkpoint directory
 * is stored as an absolute path. */
moe_status_t moe_config_from_hf(const char *config_json, moe_config_t *config);

/* The settings table, for `--help`: name, default, meaning; NULL name ends it. */
typedef struct {
    const char *name;
    const char *default_value;
    const char *meaning;
} moe_config_setting_info_t;
const moe_config_setting_info_t *moe_config_settings(void);

/* ---------------------------------------------------------------- engine */

typedef struct moe_engine_s *moe_engine_h;
typedef struct moe_watch_s *moe_watch_h; /* comm.h: liveness of the job's ranks */

typedef struct {
    bool reference;   /* run the single-process dense reference instead (world size must be 1) */
    /* Elastic runs (runtime/elastic.c): the serving size over batches or seconds, "0:2,20:4,40:2"
     * or "0s:2,30s:4" (NULL: all ranks serve throughout), and what to write: the timeline (a row
     * per batch), the events (a row per scale or re-balance event), each plan put in service
     * (DIR/plan-N.yaml). Rebalancing (config rebalance.every) uses the same machinery. */
    const char *schedule;
    const char *timeline;
    const char *events;
    const char *plans_dir;
    /* Chrome trace JSON of one batch's stages on every rank (NULL: none); the batch, -1 for the first
     * measured one. */
    const char *trace_events;
    int trace_batch;
    /* Every blocking wait of the run goes through it (comm.h, liveness); borrowed, over the same
     * ranks as the engine's communicator. NULL: waits without a deadline. */
    moe_watch_h watch;
    /* The launcher's node number of this rank (Slurm's SLURM_NODEID), or -1: which ranks share a
     * node (comm.h, moe_comm_nodes_create). */
    int node_hint;
    const char *command; /* "infer" or "elastic": the summary's title */
    bool progress;       /* rank 0 prints a progress line (launch/ decides: outputs.progress, terminal) */
    bool json;           /* rank 0 writes the summary as JSON lines on stdout instead of the table */
    /* create stops before it allocates weights and buffers: moe_engine_estimate says what the run
     * would take; run and finalize are not called */
    bool dry_run;
    int device; /* run.backend cuda: this rank's GPU, chosen (and the cores bound) by launch/ */
} moe_engine_options_t;
#define MOE_ENGINE_OPTIONS_INIT {.reference = false, .trace_batch = -1, .command = "infer", .device = -1, .node_hint = -1}

/* What a run would take on this rank (moe_engine_options_t.dry_run), in the units the run's summary
 * reports (metrics: weight_bytes, host_rss_peak_bytes, gpu_bytes_used). */
typedef struct {
    int64_t experts;                 /* expert slots hosted, all layers */
    int64_t weight_bytes;            /* in the backend's store: the dense part and the experts */
    int64_t host_bytes;              /* the peak resident set: what the process holds now, the host
                                        weights, the batch and backend buffers */
    int64_t device_bytes;            /* GPU memory: weights and the backend's buffers; 0 without */
    int64_t checkpoint_bytes;        /* checkpoint tensor bytes this rank would read (0: seeded) */
    int64_t checkpoint_expert_bytes; /* of which routed experts */
} moe_estimate_t;

/* After a dry-run create: this rank's estimate. */
void moe_engine_estimate(const moe_engine_h engine, moe_estimate_t *out);

/* Checks an elastic schedule (moe_engine_options_t.schedule) for a world of world_size ranks; errors
 * name the entry. */
moe_status_t moe_schedule_check(const char *spec, int world_size);

/* Collective over comm. Builds this rank's experts, routing source, inputs and buffers. With a
 * schedule, comm is the world launched at the largest size, and the first entry's ranks serve. */
moe_status_t moe_engine_create(const moe_config_t *config, const moe_engine_options_t *options,
                               MPI_Comm comm, moe_engine_h *out);

/* Collective: runs all batches. */
moe_status_t moe_engine_run(moe_engine_h engine);

/* Collective: reduces statistics and metrics, writes the outputs, prints the summary on rank 0. */
moe_status_t moe_engine_finalize(moe_engine_h engine);

/* The emergency exit, before the job is ended after a failure: every NCCL communicator is aborted
 * (ncclCommAbort), so that no transfer of this rank keeps a kernel waiting here or at a peer. Local,
 * NULL-safe; destroy still follows. */
void moe_engine_abort(moe_engine_h engine);
void moe_engine_destroy(moe_engine_h engine); /* NULL-safe, local */

/* ---------------------------------------------------------------- benchmarks (bench.c) */

/* Collective over world, one GPU per rank: dispatch + combine of rows[i] wire rows (hidden size d,
 * top_k k) to every rank over the NCCL transport, beside ncclAlltoAll at equal bytes; rank 0 prints
 * the table (nccl-tests' columns), or with json a JSON line per size and one for the point-to-point rate. */
moe_status_t moe_bench_a2a(MPI_Comm world, int device, int d, int k, const int *rows, int n_sizes, int iters,
                           bool json, FILE *out);

#endif
