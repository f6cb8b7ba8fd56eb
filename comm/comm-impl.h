/* comm-impl.h: private to comm/. A communicator (mpi.c) is an MPI half, which every transport keeps
 * (the counts exchange, barriers, the watch's ranks), and a row transport, the data plane: a table of
 * functions (moe_comm_transport_t below) and its state, chosen at create. Two tables: MPI rows
 * (mpi.c: MPI_Ialltoallv on the communicator's duplicate, host buffers) and NCCL rows (nccl.c,
 * builds with CUDA: device buffers). A third transport (NVSHMEM, say) writes the functions of one
 * table, a create that fills its state, and a moe_comm_create_* in mpi.c that picks it. */
#ifndef MOE_COMM_IMPL_H
#define MOE_COMM_IMPL_H

#include "comm/comm.h"
#include "moe_build_config.h"

/* ctl.c: a ctl's communicator (its own: transports and node maps made over its ranks duplicate it or
 * use it for waited collectives) and its watch (may be NULL). */
MPI_Comm moe_ctl_mpi(const moe_ctl_h ctl);
moe_watch_h moe_ctl_watch(const moe_ctl_h ctl);

/* ---------------------------------------------------------------- row transports */

/* One operation in flight. mpi.c allocates it zeroed (comm set) and hands it to the transport's
 * start, which fills the transport's fields (and leaves none set when it fails); the transport's wait
 * frees it (MPI's keeps it after a timeout: see mpi_rows_wait). A new transport adds its fields. */
struct moe_comm_op_s {
    moe_comm_h comm;
    bool done; /* set once a test (or MPI's progress) found it complete */
    /* the transport's */
    MPI_Request request; /* MPI rows */
    int *counts;         /* MPI rows: send counts, send displs, recv counts, recv displs: 4 * size ints */
    void *start;         /* NCCL point-to-point: a timing event before it */
    void *event;         /* NCCL: the transfer's completion event */
};

/* What a row transport does. `self` is the transport's state (its create's, or its split's), owned by
 * the communicator. Every entry is set: an operation a transport lacks fails (MOE_STATUS_UNSUPPORTED,
 * naming the transport it needs) or does nothing, as comm.h says of it. */
typedef struct moe_comm_transport {
    bool device; /* moves device memory (moe_comm_is_device) */

    /* moe_comm_alltoallv_start_timed: rows grouped by peer; the timing events (may be NULL) recorded
     * just before and after the transfer, or ignored. */
    moe_status_t (*alltoallv_start)(void *self, const void *send, const int *send_rows, void *recv,
                                    const int *recv_rows, size_t row_bytes, void *start_event, void *done_event,
                                    moe_comm_op_h op);
    /* moe_comm_p2p_start: one group of point-to-point transfers. */
    moe_status_t (*p2p_start)(void *self, const moe_comm_p2p_t *list, int n, moe_comm_op_h op);
    /* Whether op has completed (op->done false when called). */
    moe_status_t (*test)(void *self, moe_comm_op_h op, bool *done);
    /* Completes op (under the watch, where the host waits) and frees it. */
    moe_status_t (*wait)(void *self, moe_comm_op_h op);
    /* moe_comm_progress: let operations in flight advance. */
    void (*progress)(void *self);
    /* moe_comm_op_span: first and last its own, both tested done. */
    moe_status_t (*span)(void *self, moe_comm_op_h first, moe_comm_op_h last, double *seconds);
    /* moe_comm_alltoall_nccl: the library's own all-to-all (benchmarks' baseline). */
    moe_status_t (*alltoall)(void *self, const void *send, void *recv, size_t bytes);
    /* moe_comm_set_stream. */
    void (*set_stream)(void *self, void *stream);
    /* The watch (NULL: none) and the communicator's ranks as ranks of the watch's (borrowed, n_peers
     * of them) for the waits of the transport. */
    void (*set_watch)(void *self, moe_watch_h watch, int n_peers, const int *peers);
    /* moe_comm_wait_event: a CUDA event that may depend on the transport's transfers. */
    moe_status_t (*wait_event)(void *self, void *event, const char *what);
    /* moe_comm_warm_up (collective). */
    moe_status_t (*warm_up)(void *self);
    /* Collective over parent's ranks, as moe_comm_split: the members' transport, over the members' MPI
     * communicator `mpi` (their rank and size); *out NULL on the others (mpi MPI_COMM_NULL). */
    moe_status_t (*split)(void *parent, bool member, MPI_Comm mpi, int rank, int size, void **out);
    /* moe_comm_abort: once; NULL-safe. */
    void (*abort)(void *self);
    /* Frees the state (without synchronising after an abort); NULL-safe. */
    void (*destroy)(void *self);
} moe_comm_transport_t;

/* mpi.c: rows as MPI_Ialltoallv on the communicator's duplicate (host buffers). */
extern const moe_comm_transport_t moe_comm_transport_mpi;

#if MOE_HAVE_CUDA
/* nccl.c: rows in device memory over NCCL. */
extern const moe_comm_transport_t moe_comm_transport_nccl;
/* nccl.c: collective over mpi (rank and size as in it); sets the current CUDA device. The NCCL rows'
 * state, bootstrapped by an MPI_Bcast of rank 0's ncclUniqueId. */
moe_status_t moe_comm_nccl_create(MPI_Comm mpi, int rank, int size, int device, void **out);
/* nccl.c: the host waits for a CUDA event, polled under watch, with NCCL's asynchronous error of
 * nccl (NCCL rows' state; NULL: none, as for MPI rows) checked meanwhile; on a timeout or an error,
 * nccl is aborted. */
moe_status_t moe_comm_nccl_wait_event(void *nccl, moe_watch_h watch, int n_peers, const int *peers, void *event,
                                      const char *what);
#endif

#endif
