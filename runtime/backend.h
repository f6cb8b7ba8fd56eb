/* backend.h: what a backend is to the rest of runtime/ (private to it): a weight store (model.h's
 * interface), which owns the memory and the element type of a rank's weights, and the stages of an
 * MoE layer, which the scheduler (layer.c) drives the same way for every backend.
 *
 * The store's interface (moe_store_ops_t) and the rank's weights held in it are runtime/model/model.h's:
 * the weights are laid out and filled without knowing which backend holds them.
 *
 * The stages. A backend state is built on a rank's weights and plan for one serving set. Per layer:
 *   route     norm, then the router on the device or the routing given by the host;
 *   plan      the dispatch layout (kernels.h): destinations, counts, the send rows of every chunk
 *             packed with their metadata; the counts travel back to the host (counts waits for them)
 *             unless the buffers are at fixed capacity;
 *   experts   a chunk's received rows grouped by local expert, the SwiGLU GEMMs, the weighted
 *             combine into one row back per received row;
 *   shared    the shared experts over every token;
 *   unpermute a chunk's returned rows added into its tokens' outputs;
 *   residual  x += out.
 * Stages queue work and may return before it ran (cuda); completion is in the order they were
 * called, on the backend's stream, which the transport orders itself against (comm.h). store()
 * returns with the batch done. Buffers handed to the transport are in the backend's memory. */
#ifndef MOE_RUNTIME_BACKEND_H
#define MOE_RUNTIME_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "comm/comm.h"
#include "common/common.h"
#include "io/io.h"
#include "kernels/kernels.h"
#include "placement/placement.h"
#include "runtime/runtime.h"

struct moe_layer_metrics_s;                /* runtime-impl.h */
typedef struct moe_trace_s *moe_trace_h; /* runtime-impl.h, trace.c */

/* ---------------------------------------------------------------- stages */

/* Where a layer's rows are, in the backend's memory. Chunk c's rows for peer p start at send row
 * offset[c][p] (from the counts, or at fixed capacity); received rows of chunk c follow chunk c-1's,
 * grouped by source. `wire` rows carry a token's hidden state and its metadata (kernels.h);
 * `back` rows, what the combine returns, hidden states only. */
typedef struct {
    void *send, *recv;      /* wire rows: row_bytes each */
    void *partial, *back;   /* returned rows: back_bytes each (back: same rows as send) */
    size_t row_bytes, meta_offset, back_bytes;
} moe_wire_t;

/* What a backend state is built for. */
typedef struct {
    const moe_config_t *config;
    const moe_weights_t *weights;
    moe_plan_h plan;
    int rank, ranks;        /* in the serving set */
    int max_tokens, chunks; /* per batch on this rank; pipeline depth */
    int capacity;           /* > 0: fixed-capacity buffers, rows per (chunk, peer); 0: counted */
    int device;             /* cuda: the GPU (made current by the caller) */
    moe_comm_h comm;        /* the serving set's transport, borrowed: cuda's host waits go through its
                             * watch (moe_comm_wait_event), since they may wait on its transfers */
    /* Hierarchical dispatch over these nodes (runtime/hier.c; equal nodes, per_node > 0), or NULL:
     * flat. Borrowed for the state's life. */
    const moe_comm_nodes_t *nodes;
} moe_backend_args_t;

typedef struct moe_backend_state_s moe_backend_state_t; /* each backend's own */

typedef enum {
    MOE_GRAPH_READY,  /* *yes: layer `layer` has a graph for n tokens */
    MOE_GRAPH_BEGIN,  /* start capturing the layer's work (*yes: capturing; no before the first batch ran) */
    MOE_GRAPH_END,    /* end the capture: the layer's graph */
    MOE_GRAPH_LAUNCH, /* run the layer's graph */
} moe_graph_op_t;

typedef struct moe_backend_s {
    const char *name;
    const moe_store_ops_t *memory; /* where its weights live */
    moe_status_t (*create)(const moe_backend_args_t *args, moe_backend_state_t **out);
    void (*destroy)(moe_backend_state_t *state);

    /* x = rows from the host, out = 0. */
    moe_status_t (*load)(moe_backend_state_t *state, const float *x, int n);
    /* h = rmsnorm_l(x); then the router (ids NULL) or the routing given [n][k] (copied before return). */
    moe_status_t (*route)(moe_backend_state_t *state, int layer, int n, const int32_t *ids, const float *weights);
    /* The dispatch layout of this layer's n tokens (global token g0 + t) over the chunks. */
    moe_status_t (*plan)(moe_backend_state_t *state, int layer, int64_t g0, int n);
    /* The counts of the layer last planned, on the host: rows [C][P] this rank sends, entries [C][R]
     * (token, expert) pairs per replica (R: the plan's hosts at this layer, in replica order). Waits
     * for them. Counted buffers only. */
    moe_status_t (*counts)(moe_backend_state_t *state, const int **rows, const int **entries);
    /* The layer's wire buffers, the receive side grown to n_recv rows (all chunks). */
    moe_status_t (*buffers)(moe_backend_state_t *state, int n_recv, moe_wire_t *out);
    /* Chunk c: its n_recv received rows from row recv_first on, through the local experts into
     * partial rows at the same positions. slot_rows: the entries each local slot gets (host; NULL
     * when the host does not know them). */
    moe_status_t (*experts)(moe_backend_state_t *state, int layer, int chunk, int recv_first, int n_recv,
                            const int *slot_rows);
    /* Optional (host backends): progress(arg) is called between experts, so that transfers in flight
     * advance and waiting ranks are answered (comm.h) while the host computes. */
    void (*set_progress)(moe_backend_state_t *state, void (*progress)(void *arg), void *arg);
    /* out[t] += shared experts(h[t]) for t < n. */
    moe_status_t (*shared)(moe_backend_state_t *state, int layer, int n);
    /* out[t] += its returned rows, for the tokens of chunk c (of n). */
    moe_status_t (*unpermute)(moe_backend_state_t *state, int chunk, int n);
    /* x += out; out = 0. */
    moe_status_t (*residual)(moe_backend_state_t *state, int n);
    /* Rows of x to the host; the batch is done when it returns. */
    moe_status_t (*store)(moe_backend_state_t *state, float *x, int n);
    /* After store: this batch's routing [L][n][k] to the host (the router's choices). */
    moe_status_t (*routes)(moe_backend_state_t *state, int n, int32_t *ids);

    /* Timing. The scheduler brackets each stage of each layer (stage MOE_STAGE_COUNT: the whole
     * layer); `transfer` gives the events a transport recorded around one of its transfers (NULL
     * for host transports). After store, `timeline` adds this batch's stage times to the metrics
     * (and, with a trace, its spans). A backend times the way its work runs: host clocks, or CUDA
     * events on its streams. */
    void (*mark)(moe_backend_state_t *state, int stage, int layer, int chunk, bool begin);
    moe_status_t (*timeline)(moe_backend_state_t *state, int n, struct moe_layer_metrics_s *layers,
                             moe_trace_h trace);
    /* Events for a transport to record around its next transfer (cuda; NULL elsewhere). */
    void (*transfer_events)(moe_backend_state_t *state, int stage, int layer, int chunk, void **start, void **done);

    /* Hierarchical dispatch (runtime/hier.c; NULL where a backend dispatches flat only). A state
     * created with args.nodes plans first-hop rows: one per token and node its choices touch, to
     * the rail rank there (itself for its own node), carrying the choices that node serves. Counted
     * buffers only.
     *   final_rows     after plan: rows [C][P] that each final rank gets from this rank's tokens
     *                  (host; a token once per distinct rank of its choices);
     *   relay_buffers  the rail's buffers: recv, the first-hop rows it receives (n_recv1); send, the
     *                  second-hop rows it forwards (n_send2); back, what comes back for them (the same
     *                  rows); partial, the sums it returns for its first-hop rows (n_recv1);
     *   relay_pack     first-hop rows recv1_first .. + n1 repacked for the ranks of this node into
     *                  send, the rows for rank p from row next[p] on (next advanced);
     *   relay_sum      partial rows recv1_first .. + n1 = the sum of their second-hop rows in back. */
    moe_status_t (*final_rows)(moe_backend_state_t *state, const int **rows);
    moe_status_t (*relay_buffers)(moe_backend_state_t *state, int n_recv1, int n_send2, moe_wire_t *out);
    moe_status_t (*relay_pack)(moe_backend_state_t *state, int layer, int recv1_first, int n1, int *next);
    moe_status_t (*relay_sum)(moe_backend_state_t *state, int recv1_first, int n1);

    /* CUDA graphs of whole layers at fixed capacity (NULL where not supported). While a layer's graph
     * is captured its stages only queue work; a replay runs it all, after `stage` has put the batch's
     * host inputs (its first global token, the routing given by the host or NULL) where the graph
     * reads them. */
    moe_status_t (*graph)(moe_backend_state_t *state, moe_graph_op_t op, int layer, int n, bool *yes);
    moe_status_t (*stage)(moe_backend_state_t *state, int layer, int64_t g0, int n, const int32_t *ids,
                          const float *weights);
} moe_backend_t;

extern const moe_backend_t moe_backend_cpu;

#include "moe_build_config.h"
#if MOE_HAVE_CUDA
#include "comm/comm.h"
/* backend_cuda.c: bf16 on one GPU; rows in device memory with the NCCL transport, in pinned host
 * memory with the MPI one (run.transport). */
extern const moe_backend_t moe_backend_cuda;
/* The backend's compute stream (a cudaStream_t), for moe_comm_set_stream. */
void *moe_backend_cuda_stream(moe_backend_state_t *state);
/* Collective over ctl: GEMM paths timed by any rank become every rank's (an elastic switch: a rank
 * that starts serving does not time them again in its first batch). */
moe_status_t moe_backend_cuda_share_tuning(moe_ctl_h ctl);
/* `device` made current and its context made; what it holds now is not counted as ours
 * (moe_cuda_device_bytes). Which device, and the binding to its cores, is launch/'s choice
 * (launch/device.c); call before creating the NCCL transport and the backend. */
moe_status_t moe_cuda_start_device(int device);
/* A state about to serve for the first time on a rank that is not serving (an elastic scale-up),
 * on the thread that prepared it: one layer's stages run locally on made-up routing and the GEMM
 * paths timed for the row counts its batches will bring, so that its first batch loads no CUDA
 * module and times nothing. x: the engine's rows buffer [max_tokens][d] (read, and pinned as a batch
 * pins it). Waits without the watch: local work only. */
moe_status_t moe_backend_cuda_warm_up(moe_backend_state_t *state, const float *x);
/* Page-lock host memory for the run (a batch's rows), so that states find it pinned; and release it. */
moe_status_t moe_cuda_pin(void *host, size_t bytes);
void moe_cuda_unpin(void *host);
/* Make `device` current on the calling thread (a thread that creates a backend state). */
moe_status_t moe_cuda_use_device(int device);
/* Bytes of device memory this process holds (cudaMemGetInfo's used, less what was in use at start). */
size_t moe_cuda_device_bytes(void);
#endif

#endif
