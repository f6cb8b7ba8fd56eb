/* backend.h: the stage interface that the scheduler (layer.c) drives. Private to runtime/.
 *
 * A backend owns the hidden states of this rank's tokens and every buffer the stages touch: x (the
 * residual stream), h (normed), out (this layer's MoE output), and per pipeline chunk the send,
 * receive, partial and returned rows. The scheduler owns the plan: which rows go where, which
 * received row feeds which local expert with which weight (host arrays). The same scheduler drives
 * every backend; only these stages differ. Buffer pointers handed to the transport are in the
 * backend's memory (host for cpu). */
#ifndef MOE_RUNTIME_BACKEND_H
#define MOE_RUNTIME_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"

/* Rows of one chunk as the transport sees them (each row d floats). */
typedef struct {
    void *send;    /* [n_send] permuted h rows, to dispatch */
    void *recv;    /* [n_recv] rows dispatched to this rank */
    void *partial; /* [n_recv] this rank's weighted expert sum per received row, to combine */
    void *back;    /* [n_send] combined rows returned to this rank */
} moe_chunk_buffers_t;

/* Received rows of a chunk grouped by local expert slot: entries offset[s] .. offset[s+1]-1. */
typedef struct {
    int slots;
    const int *offset;     /* [slots + 1] */
    const int32_t *row;    /* received row of each entry */
    const float *weight;   /* routing weight of each entry */
} moe_expert_groups_t;

typedef void (*moe_progress_fn)(void *arg);

typedef struct moe_backend_s {
    const char *name;
    size_t elem_bytes; /* bytes of one element of a row on the wire: 4 (float32), 2 (bf16) */
    /* weights: the rank's moe_weights_t; max_tokens: per batch; chunks: pipeline depth. */
    moe_status_t (*create)(const void *config, const void *weights, int max_tokens, int chunks,
                           void **state);
    void (*destroy)(void *state);

    /* x = rows from the host, out = 0. */
    moe_status_t (*load)(void *state, const float *x, int n);
    /* h = rmsnorm_l(x); with use_router, also the router: ids and weights [n][k] to the host. */
    moe_status_t (*route)(void *state, int layer, int n, bool use_router, int32_t *ids,
                          float *weights);
    /* Grow chunk c's buffers to n_send / n_recv rows and return them. */
    moe_status_t (*chunk_buffers)(void *state, int chunk, int n_send, int n_recv,
                                  moe_chunk_buffers_t *out);
    /* send[i] = h[rows[i]] */
    moe_status_t (*permute)(void *state, int chunk, const int32_t *rows, int n_send);
    /* partial = sum over local experts of weight * expert(recv row); progress between experts. */
    moe_status_t (*experts)(void *state, int layer, int chunk, int n_recv,
                            const moe_expert_groups_t *groups, moe_progress_fn progress,
                            void *progress_arg);
    /* out[t] += shared experts(h[t]) for t in [begin, end). */
    moe_status_t (*shared)(void *state, int layer, int begin, int end);
    /* out[rows[i]] += back[i] */
    moe_status_t (*unpermute)(void *state, int chunk, const int32_t *rows, int n_send);
    /* x += out; out = 0. */
    moe_status_t (*residual)(void *state, int n);
    /* rows of x to the host. */
    moe_status_t (*store)(void *state, float *x, int n);
} moe_backend_t;

extern const moe_backend_t moe_backend_cpu;

#include "moe_build_config.h"
#if MOE_HAVE_CUDA
#include <mpi.h>
/* backend_cuda.c: bf16 on one GPU; rows in device memory with the NCCL transport, in pinned host
 * memory with the MPI one (run.transport, read at create). */
extern const moe_backend_t moe_backend_cuda;
/* Collective over comm: this rank's GPU (local rank among the ranks of its node, modulo the GPUs
 * there) made current, and the process bound to the cores near it when each rank has a GPU of its
 * own. Call before creating the NCCL transport and the backend. */
moe_status_t moe_cuda_select_device(MPI_Comm comm, int *device);
/* The backend's compute stream (a cudaStream_t), for moe_comm_set_stream. */
void *moe_backend_cuda_stream(void *state);
/* Make `device` current on the calling thread (a thread that creates a backend state). */
moe_status_t moe_cuda_use_device(int device);
#endif

#endif
