/* comm: the data-plane transport of expert parallelism, all-to-all-v of fixed-size rows.
 *
 * Buffers are grouped by peer in rank order: peer p's rows follow peer p-1's. Counts are in rows, so
 * no byte count overflows an int. Operations are non-blocking: start returns a handle, and test/wait
 * complete it; several may be in flight at once (the chunked pipeline keeps two), and every rank
 * must start them in the same order. Two transports: MPI (MPI_Ialltoallv on a duplicated
 * communicator, so that our traffic never matches anyone else's; host buffers), and NCCL (comm/nccl.c,
 * builds with CUDA: device buffers, grouped ncclSend/ncclRecv per peer on a stream of its own, counts
 * still over MPI; completion in stream order, see moe_comm_set_stream).
 * Progress: MPI advances non-blocking collectives inside MPI calls, so compute loops call
 * moe_comm_progress() between pieces of work.
 * Liveness (watch.c): every blocking wait of the runtime, here and in the engine, goes through a
 * watch, which backs off instead of spinning and fails a wait, naming the rank and step, when a rank
 * it waits on stops answering for run.timeout seconds. */
#ifndef MOE_COMM_H
#define MOE_COMM_H

#include <mpi.h>
#include <stdbool.h>
#include <stddef.h>

#include "common/common.h"

typedef struct moe_comm_s *moe_comm_h;
typedef struct moe_comm_op_s *moe_comm_op_h;
typedef struct moe_watch_s *moe_watch_h;

/* Collective over comm: duplicates it. */
moe_status_t moe_comm_create_mpi(MPI_Comm comm, moe_comm_h *out);
/* Collective over comm: MPI as above for counts, plus an NCCL communicator over the same ranks on
 * CUDA device `device` (made current), bootstrapped by an MPI_Bcast of rank 0's ncclUniqueId. One GPU
 * per rank: NCCL refuses two ranks on one GPU. MOE_STATUS_UNSUPPORTED in a build without CUDA. */
moe_status_t moe_comm_create_nccl(MPI_Comm comm, int device, moe_comm_h *out);

/* NCCL: the stream (a cudaStream_t) that produces the buffers to send and consumes those received.
 * A started operation first waits for the work queued on it so far; its wait makes that stream wait
 * for the transfer (the host does not block), and its test polls. No-op for MPI. */
void moe_comm_set_stream(moe_comm_h comm, void *stream);

/* Collective: frees the duplicate. NULL-safe. Operations must have completed. */
void moe_comm_destroy(moe_comm_h comm);

int moe_comm_rank(const moe_comm_h comm);
int moe_comm_size(const moe_comm_h comm);

/* Blocking: each rank sends per_peer ints to every peer (send[p*per_peer ...]) and receives the
 * same from each (recv[p*per_peer ...]). */
moe_status_t moe_comm_exchange_counts(moe_comm_h comm, const int *send, int *recv, int per_peer);

/* Start an all-to-all-v of rows of row_bytes. send_rows[p] rows go to peer p; recv_rows[p] come from
 * p (the caller learned them from exchange_counts). Buffers and count arrays are borrowed until the
 * operation completes. */
moe_status_t moe_comm_alltoallv_start(moe_comm_h comm, const void *send, const int *send_rows,
                                      void *recv, const int *recv_rows, size_t row_bytes,
                                      moe_comm_op_h *out);

/* Poll: *done is true once the operation has completed (the handle stays valid until wait). */
moe_status_t moe_comm_op_test(moe_comm_op_h op, bool *done);
/* Block until complete, then free the handle. NULL-safe. */
moe_status_t moe_comm_op_wait(moe_comm_op_h op);

/* Let in-flight operations advance and answer peers that wait (a cheap poll). */
void moe_comm_progress(moe_comm_h comm);

/* Waits of this communicator (op_wait, exchange_counts) go through watch (borrowed; NULL: no
 * deadline). Local. */
moe_status_t moe_comm_set_watch(moe_comm_h comm, moe_watch_h watch);
moe_watch_h moe_comm_watch(const moe_comm_h comm);

/* ---------------------------------------------------------------- liveness (watch.c)
 * One watch per job, over the whole job's communicator. A wait names the ranks it waits on as ranks
 * of that communicator: `peers` (n_peers of them), or, with peers NULL, ranks 0..n_peers-1, or, with
 * n_peers < 0, all. Waits fail with MOE_STATUS_TIMEOUT (logged once, naming the silent rank, where
 * it was last seen and this rank's step) when a rank they wait on has not been heard from for
 * `timeout` seconds, or when nobody has made progress for that long (a deadlock); after that every
 * wait fails at once. A NULL watch waits without a deadline, still backing off. Main thread only. */

/* Collective over comm (duplicated). timeout in seconds; 0: no deadline. */
moe_status_t moe_watch_create(MPI_Comm comm, double timeout, moe_watch_h *out);
void moe_watch_set_timeout(moe_watch_h watch, double timeout);
double moe_watch_timeout(const moe_watch_h watch);
MPI_Comm moe_watch_comm(const moe_watch_h watch); /* its duplicate: ranks as in the job's */
/* Local; NULL-safe. After the job's last wait. */
void moe_watch_destroy(moe_watch_h watch);

/* What this rank is doing, for the messages: phase (a static string), batch and layer (-1: none). */
void moe_watch_step(moe_watch_h watch, const char *phase, int batch, int layer);
/* Between pieces of work: answers ranks that wait on this one (cheap; NULL-safe). */
void moe_watch_poll(moe_watch_h watch);

/* Until test says done (or fails): the generic wait, e.g. for a CUDA event or NCCL's async error. */
typedef moe_status_t (*moe_watch_test_fn)(void *arg, bool *done);
moe_status_t moe_watch_until(moe_watch_h watch, int n_peers, const int *peers, const char *what,
                             moe_watch_test_fn test, void *arg);
/* Until all n requests complete (MPI_Testall). */
moe_status_t moe_watch_wait(moe_watch_h watch, int n_peers, const int *peers, const char *what, int n,
                            MPI_Request *requests);
/* MPI_Ibarrier over comm, waited. */
moe_status_t moe_watch_barrier(moe_watch_h watch, MPI_Comm comm, int n_peers, const int *peers,
                               const char *what);

#endif
