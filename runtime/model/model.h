/* model: what the model is, with no MPI and no communication in it (loading weights only polls
 * comm.h's watch, so that waiting ranks hear from this one): its configuration (YAML, one table of
 * settings, errors naming file:line:key; the Hugging Face config.json it may come from), the weights of
 * the experts a rank hosts in a backend's store (seeded, or read from a checkpoint), the inputs and
 * routing that do not come from the model (a trace, the synthetic generator) and the single-process
 * dense reference.
 *
 * The store. Every tensor of a rank's weights lives in its backend's store (runtime/backend.h): host
 * float32 for the cpu backend, device memory for the cuda backend (bf16 matrices; norms, routers,
 * biases and the shared gate in fp32 so that expert choices match the cpu's). Weights are written into
 * it from the seeded rule or from a checkpoint's bytes in their own dtype, converted where they land
 * (for cuda, on the device), so no host copy of a converted tensor is ever kept. An expert slot (one
 * (layer, expert): gate_up [2f][d], then down [d][f]) is one allocation, so that a plan change
 * allocates the slots it gains and releases the ones it loses, and moves slots whole.
 *
 *   config.c     the settings table, loader, validation, printer (library moe_config)
 *   hf_config.c  a checkpoint's config.json; checkpoint.c its tensors
 *   weights.c    a rank's weights under a plan; model.c the seeded rule's tensors, inputs, routing
 *   reference.c  the dense reference (each token through its k experts directly) */
#ifndef MOE_RUNTIME_MODEL_H
#define MOE_RUNTIME_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "common/common.h"
#include "io/io.h"
#include "kernels/kernels.h"
#include "placement/placement.h"

typedef struct moe_watch_s *moe_watch_h; /* comm.h: liveness of the job's ranks */

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

/* ---------------------------------------------------------------- store */

typedef enum { MOE_ELEM_F32 = 0, MOE_ELEM_BF16 } moe_elem_t;

static inline size_t moe_elem_size(moe_elem_t e) { return e == MOE_ELEM_F32 ? 4 : 2; }

/* A block-quantised FP8 (e4m3) matrix as DeepSeek-V3 publishes it: value [r][c] = data[r][c] *
 * scale_inv[r / block][c / block]. */
typedef struct {
    const uint8_t *data;
    int64_t rows, cols;
    const float *scale_inv; /* [ceil(rows / block)][ceil(cols / block)] */
    int block;
} moe_fp8_matrix_t;

typedef struct moe_store_s moe_store_t; /* each backend's own */

typedef struct {
    moe_elem_t matrix_elem; /* expert and shared-expert matrices; everything else is F32 */
    bool host_memory;       /* its pointers are host memory (MPI may send from them) */
    moe_status_t (*create)(moe_store_t **out);
    void (*destroy)(moe_store_t *store); /* NULL-safe; after every allocation is released */
    /* Uninitialised memory of `bytes`; release takes what alloc gave (NULL-safe). */
    moe_status_t (*alloc)(moe_store_t *store, size_t bytes, void **out);
    void (*release)(moe_store_t *store, void *ptr);
    /* Elements first .. first+n-1 of dst (elements of type elem) from n values of src in dtype
     * (F32, BF16, F16), converted. src may be reused when it returns. */
    moe_status_t (*write)(moe_store_t *store, void *dst, moe_elem_t elem, size_t first, const void *src,
                          moe_dtype_t dtype, size_t n);
    /* The rows x cols elements from first, dequantised from FP8 with block scales. */
    moe_status_t (*write_fp8)(moe_store_t *store, void *dst, moe_elem_t elem, size_t first,
                              const moe_fp8_matrix_t *m);
    /* Elements first .. first+n-1 of dst from the seeded rule (kernels.h), element i of the rule's tensor
     * going to first + i. */
    moe_status_t (*fill)(moe_store_t *store, void *dst, moe_elem_t elem, size_t first, size_t n,
                         const moe_seed_rule_t *rule);
    /* Every write queued so far has landed. */
    moe_status_t (*finish)(moe_store_t *store);
    /* Raw bytes between an allocation and host memory (expert moves over MPI). */
    moe_status_t (*copy_out)(moe_store_t *store, const void *src, size_t bytes, void *host);
    moe_status_t (*copy_in)(moe_store_t *store, void *dst, size_t bytes, const void *host);
} moe_store_ops_t;

/* ---------------------------------------------------------------- the rank's weights */

/* The weights of one rank: the dense part of every layer (norms, routers, score biases, shared
 * experts and gates: one allocation cut by offsets) and the routed experts the plan gives it, one
 * allocation per expert slot, all in one store. Expert slot s of layer l is the s-th entry of
 * moe_plan_local_experts(plan, l, rank). Matrices are of the store's matrix element type, the rest
 * float32. */
typedef struct {
    const moe_store_ops_t *ops;
    moe_store_t *store;     /* borrowed: the engine's */
    int layers, d, f, fs, experts;
    void *norm;             /* [L][d] f32 */
    void *router;           /* [L][E][d] f32 */
    void *score_bias;       /* [L][E] f32, or NULL without model.score_bias */
    void *shared_gate_up;   /* [L][2 fs][d], or NULL without shared experts */
    void *shared_down;      /* [L][d][fs] */
    void *shared_gate;      /* [L][d] f32, or NULL without model.shared_gate */
    int *local_count;       /* [L] experts hosted per layer */
    int *local_offset;      /* [L] first slot of layer l */
    int slots;              /* experts hosted, all layers */
    void **expert;          /* [slots] -> gate_up [2f][d], then down [d][f] */
    bool *owned;            /* [slots] false: another moe_weights_t's (see moe_weights_hand_over) */
    void *dense_block;
    bool dense_shared;      /* dense_block is another moe_weights_t's */
    size_t dense_bytes, expert_bytes; /* one expert slot */
    /* Read from a checkpoint (0 for seeded weights): tensor bytes on disk this rank copied, of which
     * routed-expert bytes, and the files it mapped. */
    int64_t read_bytes, read_expert_bytes;
    int read_files;
} moe_weights_t;

/* Elements of one expert slot (gate_up then down). */
static inline size_t moe_weights_slot_elems(const moe_weights_t *w) { return (size_t)3 * w->f * w->d; }

/* The slot of layer l's s-th local expert, in the store's memory. */
static inline void *moe_weights_slot(const moe_weights_t *w, int layer, int slot)
{
    return w->expert[w->local_offset[layer] + slot];
}

/* For host stores (cpu backend, the reference): float32 views. */
static inline const float *moe_weights_expert_gate_up(const moe_weights_t *w, int layer, int slot)
{
    return (const float *)moe_weights_slot(w, layer, slot);
}
static inline const float *moe_weights_expert_down(const moe_weights_t *w, int layer, int slot)
{
    return (const float *)moe_weights_slot(w, layer, slot) + (size_t)2 * w->f * w->d;
}

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

/* ---------------------------------------------------------------- inputs and routing sources (model.c) */

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

/* ---------------------------------------------------------------- configuration helpers */

/* placement.ranks_per_node for a serving set of `size` ranks: at most size, dividing it (nodes of
 * equal size), as a plan requires. */
static inline int moe_ranks_per_node(const moe_config_t *c, int size)
{
    int g = c->placement.ranks_per_node < size ? c->placement.ranks_per_node : size;
    while (g > 1 && size % g) g--;
    return g;
}

/* ---------------------------------------------------------------- reference (reference.c) */

/* The dense reference over n tokens from g0: x [n][d] in, out in place; all experts must be local
 * (world size 1). ids [L][n][k] receives the routing. */
moe_status_t moe_reference_forward(const moe_config_t *config, const moe_weights_t *weights,
                                   const moe_sources_t *sources, int64_t g0, int n, float *x,
                                   int32_t *ids);

#endif
