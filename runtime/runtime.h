/* runtime: the engine that runs the MoE model (runtime/model/model.h: its configuration, weights and
 * routing sources) expert-parallel.
 *
 * A run is: load a configuration (model.h: YAML, one table of settings, errors naming file:line:key), create an
 * engine over the world's ranks (a ctl, comm.h; each rank builds only the experts the placement gives it), run the
 * batches (route -> plan -> permute -> dispatch -> expert GEMMs -> combine -> un-permute, chunked so that
 * communication overlaps compute), then finalize (collective: reduces statistics and metrics to rank 0
 * and writes the outputs) and destroy. */
#ifndef MOE_RUNTIME_H
#define MOE_RUNTIME_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "common/common.h"
#include "moe_build_config.h"
#include "runtime/model/model.h"

/* ---------------------------------------------------------------- engine */

typedef struct moe_engine_s *moe_engine_h;
typedef struct moe_watch_s *moe_watch_h; /* comm.h: liveness of the job's ranks */
typedef struct moe_ctl_s *moe_ctl_h;     /* comm.h: the control plane over a group of ranks */

typedef struct {
    bool reference;   /* run the single-process dense reference instead (world size must be 1) */
    /* Elastic runs (runtime/elastic/elastic.c): the serving size over batches or seconds, "0:2,20:4,40:2"
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
     * ranks as the engine's world, the one the world's ctl waits under. NULL: waits without a deadline. */
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

/* Collective over world's ranks (borrowed: the engine makes its own ctl from it). Builds this rank's
 * experts, routing source, inputs and buffers. With a schedule, world is the world launched at the
 * largest size, and the first entry's ranks serve. */
moe_status_t moe_engine_create(const moe_config_t *config, const moe_engine_options_t *options, moe_ctl_h world,
                               moe_engine_h *out);

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
moe_status_t moe_bench_a2a(moe_ctl_h world, int device, int d, int k, const int *rows, int n_sizes, int iters,
                           bool json, FILE *out);

/* ---------------------------------------------------------------- devices (backend_cuda.c) */

#if MOE_HAVE_CUDA
/* The GPUs this process sees (0 when none or on an error): launch/ chooses a rank's among them. */
int moe_cuda_device_count(void);
#endif

#endif
