/* comm: the data-plane transport of expert parallelism, all-to-all-v of fixed-size rows.
 *
 * Buffers are grouped by peer in rank order: peer p's rows follow peer p-1's. Counts are in rows, so
 * no byte count overflows an int. Operations are non-blocking: start returns a handle, and test/wait
 * complete it; several may be in flight at once (the chunked pipeline keeps two), and every rank
 * must start them in the same order. Two transports: MPI (MPI_Ialltoallv on a duplicated
 * communicator, so that our traffic never matches anyone else's; host buffers), and NCCL (comm/nccl.c,
 * builds with CUDA: device buffers, grouped ncclSend/ncclRecv per peer on a stream of its own, counts
 * still over MPI; completion in stream order, see moe_comm_set_stream). Each is a table of functions
 * behind this header (comm-impl.h: what a row transport does), chosen at create; the counts exchange,
 * barriers and the watch are MPI's for every transport (comm/mpi.c).
 * Progress: MPI advances non-blocking collectives inside MPI calls, so compute loops call
 * moe_comm_progress() between pieces of work.
 * Liveness (watch.c): every blocking wait of the runtime goes through a watch (the few blocking MPI
 * calls that move large messages come after a watched barrier: ctl below), which backs off instead
 * of spinning and fails a wait, naming the rank and step, when a rank it waits on stops answering for
 * run.timeout seconds.
 * Control plane (ctl.c): the small messages the runtime exchanges with itself (boundary agreements,
 * figures, plans, the trace's spans, expert moves over MPI, batch barriers, the output gather), and
 * the groups of ranks everything else is made over: launch/ makes the world's ctl (moe_ctl_create, on
 * an MPI communicator), and the runtime makes transports, node maps and serving sets' ctls from a
 * ctl, so that MPI is called in comm/ and launch/ alone (tests/cli/mpi_boundary.sh). */
#ifndef MOE_COMM_H
#define MOE_COMM_H

#include <mpi.h>
#include <stdbool.h>
#include <stddef.h>

#include "common/common.h"

typedef struct moe_comm_s *moe_comm_h;
typedef struct moe_comm_op_s *moe_comm_op_h;
typedef struct moe_watch_s *moe_watch_h;
typedef struct moe_ctl_s *moe_ctl_h; /* the control plane (below): a group of ranks */

/* Collective over ctl's ranks: a transport over them (an MPI communicator of its own). */
moe_status_t moe_comm_create_mpi(const moe_ctl_h ctl, moe_comm_h *out);
/* Collective over ctl's ranks: MPI as above for counts, plus an NCCL communicator over the same ranks
 * on CUDA device `device` (made current), bootstrapped by an MPI_Bcast of rank 0's ncclUniqueId. One
 * GPU per rank: NCCL refuses two ranks on one GPU. MOE_STATUS_UNSUPPORTED in a build without CUDA. */
moe_status_t moe_comm_create_nccl(const moe_ctl_h ctl, int device, moe_comm_h *out);

/* Collective over parent's ranks: the communicator of the members (ranks with member true, in
 * parent's order), MPI and, when parent has one, NCCL (ncclCommSplit of parent's: no new bootstrap,
 * so that an elastic run makes its serving sets' communicators ahead of a switch, cheaply). *out is
 * NULL on the others. */
moe_status_t moe_comm_split(moe_comm_h parent, bool member, moe_comm_h *out);

/* A point-to-point transfer of `bytes` at buf, to (send) or from `peer`. */
typedef struct {
    void *buf;
    size_t bytes;
    int peer;
    bool send;
} moe_comm_p2p_t;
/* NCCL only: the transfers (device buffers) as one group on the communicator's own stream, beside
 * whatever else runs (expert moves while a serving set serves); matched per peer pair in the order
 * posted, so every rank posts its share of one list in the list's order. Complete with
 * moe_comm_op_test / moe_comm_op_wait. MOE_STATUS_UNSUPPORTED without NCCL. */
moe_status_t moe_comm_p2p_start(moe_comm_h comm, const moe_comm_p2p_t *list, int n, moe_comm_op_h *out);
/* The device time from the start of point-to-point op `first` to the end of `last` (same communicator,
 * both tested done, not yet waited). */
moe_status_t moe_comm_op_span(moe_comm_op_h first, moe_comm_op_h last, double *seconds);
/* Collective: NCCL connects to every peer now (a small exchange), so that the first transfer that
 * counts does not pay for it. No-op for MPI. */
moe_status_t moe_comm_warm_up(moe_comm_h comm);
/* Whether comm moves device memory (has an NCCL half). */
bool moe_comm_is_device(const moe_comm_h comm);

/* NCCL: the stream (a cudaStream_t) that produces the buffers to send and consumes those received.
 * A started operation first waits for the work queued on it so far; its wait makes that stream wait
 * for the transfer (the host does not block), and its test polls. No-op for MPI. */
void moe_comm_set_stream(moe_comm_h comm, void *stream);

/* The host waits for a CUDA event (a cudaEvent_t) that may depend on this communicator's transfers
 * (comm may be NULL: no watch, no NCCL): polled under the communicator's watch, never blocking in
 * CUDA, with NCCL's asynchronous error checked meanwhile. On a timeout or an NCCL error the NCCL
 * half is aborted (moe_comm_abort) and the wait fails. Builds with CUDA only. */
moe_status_t moe_comm_wait_event(moe_comm_h comm, void *event, const char *what);
/* Emergency exit: aborts the NCCL half (ncclCommAbort; its transfers stop), once. The communicator
 * must still be destroyed, which then frees without synchronising. No-op for MPI; NULL-safe. */
void moe_comm_abort(moe_comm_h comm);

/* Collective: frees the duplicate. NULL-safe. Operations must have completed (or been aborted). */
void moe_comm_destroy(moe_comm_h comm);

int moe_comm_rank(const moe_comm_h comm);
int moe_comm_size(const moe_comm_h comm);

/* Blocking: send_count[p] ints from send (peer after peer) to each peer p, recv_count[p] from each
 * (the caller knows them). */
moe_status_t moe_comm_exchange_ints(moe_comm_h comm, const int *send, const int *send_count, int *recv,
                                    const int *recv_count);

/* Start an all-to-all-v of rows of row_bytes. send_rows[p] rows go to peer p; recv_rows[p] come from
 * p (the caller learned them from moe_comm_exchange_ints). Buffers and count arrays are borrowed until the
 * operation completes. */
moe_status_t moe_comm_alltoallv_start(moe_comm_h comm, const void *send, const int *send_rows,
                                      void *recv, const int *recv_rows, size_t row_bytes,
                                      moe_comm_op_h *out);

/* The same, and for NCCL two CUDA events (cudaEvent_t, may be NULL) recorded on the transfer's stream
 * just before and after it (timelines); MPI ignores them. */
moe_status_t moe_comm_alltoallv_start_timed(moe_comm_h comm, const void *send, const int *send_rows, void *recv,
                                            const int *recv_rows, size_t row_bytes, void *start_event,
                                            void *done_event, moe_comm_op_h *out);

/* NCCL only, blocking the producer stream like a wait: NCCL's own all-to-all of `bytes` to each peer
 * (benchmarks' baseline). MOE_STATUS_UNSUPPORTED without NCCL. */
moe_status_t moe_comm_alltoall_nccl(moe_comm_h comm, const void *send, void *recv, size_t bytes);
/* Collective: every rank reaches it (MPI barrier on the communicator's ranks). */
moe_status_t moe_comm_barrier(moe_comm_h comm);

/* Poll: *done is true once the operation has completed (the handle stays valid until wait). */
moe_status_t moe_comm_op_test(moe_comm_op_h op, bool *done);
/* Block until complete, then free the handle. NULL-safe. */
moe_status_t moe_comm_op_wait(moe_comm_op_h op);

/* Let in-flight operations advance and answer peers that wait (a cheap poll). */
void moe_comm_progress(moe_comm_h comm);

/* Waits of this communicator (op_wait, exchange_ints) go through watch (borrowed; NULL: no
 * deadline). Local. */
moe_status_t moe_comm_set_watch(moe_comm_h comm, moe_watch_h watch);
moe_watch_h moe_comm_watch(const moe_comm_h comm);

/* ---------------------------------------------------------------- nodes (nodes.c) */

/* Where the ranks of a communicator run: node[r] (0 .. nodes-1, numbered by their lowest rank) and
 * local[r], r's index among its node's ranks (in rank order). */
typedef struct {
    int ranks, nodes;
    int per_node;       /* ranks on every node when all nodes have as many, else 0 */
    int *node, *local;  /* [ranks] */
    int *rank_at;       /* [nodes][per_node]: the rank of (node, local index); NULL unless per_node > 0 */
    const char *source; /* where the map came from (a static string) */
} moe_comm_nodes_t;

/* Collective over ctl's ranks (waits under its watch). simulate > 0: nodes of `simulate`
 * consecutive ranks (no communication). Else node_hint when every rank has one (>= 0: the
 * launcher's node number, Slurm's SLURM_NODEID), else MPI's shared-memory split (the host the
 * launcher started the rank on), else the processor name. Free with moe_comm_nodes_destroy. */
moe_status_t moe_comm_nodes_create(const moe_ctl_h ctl, int simulate, int node_hint, moe_comm_nodes_t **out);
void moe_comm_nodes_destroy(moe_comm_nodes_t *nodes); /* NULL-safe */

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

/* ---------------------------------------------------------------- control plane (ctl.c)
 * A group of ranks (an MPI communicator of its own), and small messages between them, for the runtime
 * to agree with itself (batch boundaries, figures, plans), every wait under the watch: a rank that
 * stops answering ends the job rather than hanging it. A ctl over fewer ranks than the watch's must
 * hold its ranks 0..size-1 (as serving sets do). Transports and node maps are made over a ctl's
 * ranks. Collective calls: every rank of the ctl, in the same order. */
typedef enum { MOE_CTL_INT64 = 0, MOE_CTL_DOUBLE } moe_ctl_type_t;
typedef enum { MOE_CTL_SUM = 0, MOE_CTL_MAX } moe_ctl_op_t;

/* Collective over comm (duplicated); watch borrowed (NULL: waits without a deadline). launch/'s,
 * for the world. */
moe_status_t moe_ctl_create(MPI_Comm comm, moe_watch_h watch, moe_ctl_h *out);
/* Collective over parent's ranks: the ctl of the members (member true), ranks in parent's order,
 * under parent's watch; *out NULL on the others. Members are parent's first ranks (a serving set,
 * or all of them: a duplicate). The ranks meet under the watch first: the split itself (MPI's) has
 * no deadline, so a rank stopped before it is found rather than waited for. */
moe_status_t moe_ctl_split(moe_ctl_h parent, bool member, moe_ctl_h *out);
void moe_ctl_destroy(moe_ctl_h ctl); /* NULL-safe */
int moe_ctl_rank(const moe_ctl_h ctl);
int moe_ctl_size(const moe_ctl_h ctl);
/* count values reduced in place: to every rank (root < 0) or to root (others' data unchanged). */
moe_status_t moe_ctl_reduce(moe_ctl_h ctl, int root, moe_ctl_type_t type, moe_ctl_op_t op, void *data, int count,
                            const char *what);
/* bytes from every rank, in rank order, into all (size x bytes) on root, or on every rank (root < 0). */
moe_status_t moe_ctl_gather(moe_ctl_h ctl, int root, const void *mine, size_t bytes, void *all, const char *what);
/* Each rank's bytes (any number) to root, one malloc'd block in rank order (*all, root's to free) with
 * sizes[p] the bytes of rank p (root: size entries). */
moe_status_t moe_ctl_gather_alloc(moe_ctl_h ctl, int root, const void *mine, size_t bytes, void **all,
                                  size_t *sizes, const char *what);
/* root's bytes to every rank (each gives the same bytes). */
moe_status_t moe_ctl_bcast(moe_ctl_h ctl, int root, void *data, size_t bytes, const char *what);
/* root's *data of *bytes to every rank; the others get a malloc'd copy (theirs to free) and its size. */
moe_status_t moe_ctl_bcast_alloc(moe_ctl_h ctl, int root, void **data, size_t *bytes, const char *what);
/* Whether any rank says yes. */
moe_status_t moe_ctl_agree(moe_ctl_h ctl, bool mine, bool *any, const char *what);
moe_status_t moe_ctl_barrier(moe_ctl_h ctl, const char *what);
/* The barrier, waited while poll(arg) runs between tests (a rank that waits a whole batch moves its
 * own work on meanwhile: incoming experts). */
moe_status_t moe_ctl_barrier_poll(moe_ctl_h ctl, const char *what, void (*poll)(void *arg), void *arg);

/* The two below meet in a barrier under the watch, then make a blocking MPI call: a polled wait
 * sleeps between its calls, and MPI moves large messages only inside its calls (a polled gather took
 * seconds for 128 MB a rank, measured on two H200s), while a polled barrier lets a rank that came
 * early sleep through the others' arrival (up to a ms). The watched barrier finds a rank stopped
 * before the call; one stopped inside it is not found. */
/* A barrier every rank leaves together (batches start together: times compare, and the first counts
 * exchange waits for nobody). */
moe_status_t moe_ctl_barrier_strict(moe_ctl_h ctl, const char *what);
/* Each rank's rows (rows of row_bytes, any number; the counts go first, under the watch) to root, in
 * rank order into all (root's: room for every rank's); counts[p] the rows of rank p (root: size
 * entries). Counts in rows: no int overflows for any batch a rank holds. */
moe_status_t moe_ctl_gatherv(moe_ctl_h ctl, int root, const void *mine, int rows, size_t row_bytes, void *all,
                             int *counts, const char *what);
/* This rank's host name (the launcher's). */
void moe_ctl_host(char *buf, size_t size);

/* Point to point (expert moves over MPI, runtime/elastic/migrate.c): messages of one size on a channel of
 * their own (made collectively over the ctl's ranks), at most max_messages each way; message `index`
 * of a direction is posted once. A pair's messages match in the order posted. */
typedef struct moe_ctl_p2p_s *moe_ctl_p2p_h;
moe_status_t moe_ctl_p2p_create(moe_ctl_h ctl, size_t message_bytes, int max_messages, moe_ctl_p2p_h *out);
void moe_ctl_p2p_destroy(moe_ctl_p2p_h p2p); /* NULL-safe; after every message completed */
/* Posts a receive into buf (recv) or a send of buf from/to peer, as message `index`. */
moe_status_t moe_ctl_p2p_post(moe_ctl_p2p_h p2p, bool recv, int index, int peer, void *buf);
/* Of messages 0..posted-1 of a direction, those that completed since the last test: their indices. */
moe_status_t moe_ctl_p2p_test(moe_ctl_p2p_h p2p, bool recv, int posted, int *completed, int *indices);

#endif
