/* comm-impl.h: private to comm/. The NCCL half of a communicator (nccl.c), driven by the public
 * functions in mpi.c, which own the MPI half (counts exchange, metadata) and dispatch on it. */
#ifndef MOE_COMM_IMPL_H
#define MOE_COMM_IMPL_H

#include "comm/comm.h"

typedef struct moe_comm_nccl_s moe_comm_nccl_t;

/* ctl.c: a ctl's communicator (its own: transports and node maps made over its ranks duplicate it or
 * use it for waited collectives) and its watch (may be NULL). */
MPI_Comm moe_ctl_mpi(const moe_ctl_h ctl);
moe_watch_h moe_ctl_watch(const moe_ctl_h ctl);

/* Collective over mpi (rank and size as in it); sets the current CUDA device. */
moe_status_t moe_comm_nccl_create(MPI_Comm mpi, int rank, int size, int device, moe_comm_nccl_t **out);
void moe_comm_nccl_destroy(moe_comm_nccl_t *nccl);
void moe_comm_nccl_set_stream(moe_comm_nccl_t *nccl, void *stream);
/* *event: a CUDA event recorded on the communicator's stream after the transfer; start_event and
 * done_event (the caller's, may be NULL) are recorded just before and after it. */
moe_status_t moe_comm_nccl_start(moe_comm_nccl_t *nccl, const void *send, const int *send_rows, void *recv,
                                 const int *recv_rows, size_t row_bytes, void *start_event, void *done_event,
                                 void **event);
moe_status_t moe_comm_nccl_test(moe_comm_nccl_t *nccl, void *event, bool *done);
/* ncclCommSplit of parent: collective over parent's ranks; *out NULL where not a member. */
moe_status_t moe_comm_nccl_split(moe_comm_nccl_t *parent, bool member, int new_rank, int new_size,
                                 moe_comm_nccl_t **out);
/* One group of sends and receives on the communicator's stream, between two timing events: *start
 * before it, *event after it. */
moe_status_t moe_comm_nccl_p2p(moe_comm_nccl_t *nccl, const moe_comm_p2p_t *list, int n, void **start, void **event);
/* Seconds between two completed timing events. */
moe_status_t moe_comm_nccl_elapsed(void *start, void *end, double *seconds);
void moe_comm_nccl_event_free(void *event);
/* Collective: 1 MiB each way with every peer, so that NCCL connects its peers now, not in the first
 * transfer that counts. */
moe_status_t moe_comm_nccl_warm_up(moe_comm_nccl_t *nccl);
/* ncclAlltoAll (or, where NCCL lacks it, a group of equal sends and receives) of `bytes` per peer on the
 * communicator's stream, ordered after the producer stream and before what it queues next. */
moe_status_t moe_comm_nccl_alltoall(moe_comm_nccl_t *nccl, const void *send, void *recv, size_t bytes);
/* Orders the producer stream after the event (or, without one, the host waits as below), then
 * releases the event. */
moe_status_t moe_comm_nccl_wait(moe_comm_nccl_t *nccl, void *event);
/* The watch and the communicator's ranks in it (borrowed) for the host waits below. */
void moe_comm_nccl_set_watch(moe_comm_nccl_t *nccl, moe_watch_h watch, int n_peers, const int *peers);
/* The host waits for a CUDA event, polled under watch, with NCCL's asynchronous error of nccl (may
 * be NULL) checked meanwhile; on a timeout or an error, nccl is aborted. */
moe_status_t moe_comm_nccl_wait_event(moe_comm_nccl_t *nccl, moe_watch_h watch, int n_peers, const int *peers,
                                      void *event, const char *what);
/* ncclCommAbort, once; afterwards destroy only frees. NULL-safe. */
void moe_comm_nccl_abort(moe_comm_nccl_t *nccl);

#endif
