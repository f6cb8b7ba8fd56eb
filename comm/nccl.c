/* nccl: the NCCL row transport (see comm.h): all-to-all-v of rows in device memory as one group of
 * ncclSend/ncclRecv per peer, on a stream of the communicator's own. Its functions are one table,
 * moe_comm_transport_nccl (comm-impl.h, at the end of this file), which mpi.c's public functions
 * dispatch to; the communicator's MPI half (mpi.c) still exchanges the counts and holds the watch.
 *
 * Ordering: the backend's stream (set with moe_comm_set_stream) produces the send buffers and consumes
 * the received ones. A start records an event on that stream and makes the communication stream wait
 * for it, so the transfer sees everything queued before; it then records `done` on the communication
 * stream. A wait makes the backend's stream wait for `done`: the host never blocks, and kernels
 * queued afterwards see the data. Without a backend stream, wait blocks the host. Operations are
 * posted in the same order on every rank (comm.h), as NCCL requires. Events come from a small free
 * list, so that a layer creates none.
 *
 * Liveness. A transfer whose peer stopped never ends on the device, so the host never blocks in CUDA
 * for one: every host wait here (and the backend's, through moe_comm_wait_event) polls its event under
 * the communicator's watch (comm.h), and asks NCCL for an asynchronous error (a failed network, a
 * peer's abort) while it does. When either ends the wait, the communicator is aborted (ncclCommAbort:
 * its kernels stop, nothing of it stays in flight) and later teardown neither synchronises nor
 * destroys it. */
#include <cuda_runtime_api.h>
#include <nccl.h>
#include <stdlib.h>

#include "comm/comm-impl.h"
#include "moe_build_config.h"

#define NCCL_EVENT_POOL 64

typedef struct moe_comm_nccl_s {
    ncclComm_t nccl;
    int rank, size, device;
    cudaStream_t stream;   /* communication stream (ours) */
    cudaStream_t producer; /* the backend's stream, or NULL */
    cudaEvent_t free_events[NCCL_EVENT_POOL];
    int n_free;
    moe_watch_h watch;       /* borrowed, may be NULL */
    int n_peers;             /* the communicator's ranks as ranks of the watch's */
    const int *peers;
    bool aborted;
} moe_comm_nccl_t;

static void nccl_destroy(void *self);

moe_status_t moe_comm_nccl_create(MPI_Comm mpi, int rank, int size, int device, void **out)
{
    moe_status_t status = MOE_STATUS_OK;
    moe_comm_nccl_t *c = calloc(1, sizeof *c);
    MOE_CHECK_ALLOC(c, fail);
    c->rank = rank, c->size = size, c->device = device;
    /* Every rank reaches the broadcast, whatever happens to its device, so none waits alone. */
    cudaError_t dev_err = cudaSetDevice(device);
    ncclUniqueId id;
    ncclResult_t id_err = ncclSuccess;
    if (rank == 0) id_err = ncclGetUniqueId(&id);
    MOE_CHECK_MPI(MPI_Bcast(&id, (int)sizeof id, MPI_BYTE, 0, mpi), fail_free);
    MOE_CHECK_CUDA(dev_err, fail_free);
    MOE_CHECK_NCCL(id_err, fail_free);
    MOE_CHECK_CUDA(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking), fail_free);
    MOE_CHECK_NCCL(ncclCommInitRank(&c->nccl, size, id, rank), fail_free);
    *out = c;
    return MOE_STATUS_OK;
fail_free:
    nccl_destroy(c);
fail:
    return status;
}

/* An aborted communicator is freed, neither synchronised (its transfers may never end) nor destroyed. */
static void nccl_destroy(void *self)
{
    moe_comm_nccl_t *c = self;
    if (!c) return;
    if (!c->aborted && c->stream) cudaStreamSynchronize(c->stream);
    if (c->nccl && !c->aborted) ncclCommDestroy(c->nccl);
    for (int i = 0; i < c->n_free; i++) cudaEventDestroy(c->free_events[i]);
    if (c->stream) cudaStreamDestroy(c->stream);
    free(c);
}

static void nccl_set_stream(void *self, void *stream)
{
    moe_comm_nccl_t *c = self;
    c->producer = (cudaStream_t)stream;
}

static void nccl_set_watch(void *self, moe_watch_h watch, int n_peers, const int *peers)
{
    moe_comm_nccl_t *c = self;
    c->watch = watch;
    c->n_peers = n_peers;
    c->peers = peers;
}

/* ---------------------------------------------------------------- liveness */

/* ncclCommAbort, once; afterwards destroy only frees. NULL-safe. */
static void nccl_abort(void *self)
{
    moe_comm_nccl_t *c = self;
    if (!c || c->aborted) return;
    c->aborted = true;
    ncclResult_t r = c->nccl ? ncclCommAbort(c->nccl) : ncclSuccess;
    moe_warn("NCCL: rank %d's communicator of %d ranks aborted%s%s", c->rank, c->size,
             r == ncclSuccess ? "" : ": ", r == ncclSuccess ? "" : ncclGetErrorString(r));
}

/* NCCL's asynchronous error of the communicator, as a status (logged once). */
static moe_status_t async_error(moe_comm_nccl_t *c)
{
    ncclResult_t r = ncclSuccess;
    if (!c || !c->nccl || c->aborted) return MOE_STATUS_OK;
    ncclResult_t q = ncclCommGetAsyncError(c->nccl, &r);
    if (q != ncclSuccess) r = q;
    if (r == ncclSuccess || r == ncclInProgress) return MOE_STATUS_OK;
    moe_error("NCCL: asynchronous error on rank %d's communicator of %d ranks: %s (%s)", c->rank, c->size,
              ncclGetErrorString(r), ncclGetLastError(c->nccl));
    return MOE_STATUS_NCCL_ERROR;
}

typedef struct {
    moe_comm_nccl_t *c;
    cudaEvent_t event;
} event_wait_t;

static moe_status_t event_done(void *arg, bool *done)
{
    event_wait_t *w = arg;
    cudaError_t err = cudaEventQuery(w->event);
    if (err == cudaErrorNotReady) {
        *done = false;
        return async_error(w->c);
    }
    if (err != cudaSuccess) {
        cudaGetLastError(); /* not sticky unless the context is lost */
        moe_error("cudaEventQuery failed: %s", cudaGetErrorString(err));
        return MOE_STATUS_CUDA_ERROR;
    }
    *done = true;
    return MOE_STATUS_OK;
}

moe_status_t moe_comm_nccl_wait_event(void *nccl, moe_watch_h watch, int n_peers, const int *peers, void *event,
                                      const char *what)
{
    moe_comm_nccl_t *c = nccl;
    event_wait_t w = {.c = c, .event = (cudaEvent_t)event};
    moe_status_t status = moe_watch_until(watch, n_peers, peers, what, event_done, &w);
    if (status != MOE_STATUS_OK) nccl_abort(c);
    return status;
}

/* The host waits for one of our events: polled under the communicator's watch. */
static moe_status_t host_wait(moe_comm_nccl_t *c, cudaEvent_t event, const char *what)
{
    return moe_comm_nccl_wait_event(c, c->watch, c->watch ? c->n_peers : -1, c->peers, event, what);
}

/* The backend's waits (moe_comm_wait_event) are the same, for any event. */
static moe_status_t nccl_wait_event(void *self, void *event, const char *what)
{
    return host_wait(self, (cudaEvent_t)event, what);
}

static moe_status_t event_get(moe_comm_nccl_t *c, cudaEvent_t *out)
{
    moe_status_t status = MOE_STATUS_OK;
    if (c->n_free > 0) {
        *out = c->free_events[--c->n_free];
        return MOE_STATUS_OK;
    }
    MOE_CHECK_CUDA(cudaEventCreateWithFlags(out, cudaEventDisableTiming), fail);
fail:
    return status;
}

static void event_put(moe_comm_nccl_t *c, cudaEvent_t ev)
{
    if (c->n_free < NCCL_EVENT_POOL)
        c->free_events[c->n_free++] = ev;
    else
        cudaEventDestroy(ev);
}

/* ---------------------------------------------------------------- rows */

/* op->event: a CUDA event recorded on the communicator's stream after the transfer; start_event and
 * done_event (the caller's, may be NULL) are recorded just before and after it. */
static moe_status_t nccl_alltoallv_start(void *self, const void *send, const int *send_rows, void *recv,
                                         const int *recv_rows, size_t row_bytes, void *start_event,
                                         void *done_event, moe_comm_op_h op)
{
    moe_status_t status = MOE_STATUS_OK;
    moe_comm_nccl_t *c = self;
    cudaEvent_t ready = NULL, done = NULL;
    MOE_CHECK(event_get(c, &done), fail);
    if (c->producer) {
        MOE_CHECK(event_get(c, &ready), fail);
        MOE_CHECK_CUDA(cudaEventRecord(ready, c->producer), fail);
        MOE_CHECK_CUDA(cudaStreamWaitEvent(c->stream, ready, 0), fail);
    }
    if (start_event) MOE_CHECK_CUDA(cudaEventRecord((cudaEvent_t)start_event, c->stream), fail);
    MOE_CHECK_NCCL(ncclGroupStart(), fail);
    size_t s_off = 0, r_off = 0;
    ncclResult_t rc = ncclSuccess;
    for (int p = 0; p < c->size && rc == ncclSuccess; p++) {
        size_t s_bytes = (size_t)send_rows[p] * row_bytes, r_bytes = (size_t)recv_rows[p] * row_bytes;
        if (s_bytes) rc = ncclSend((const char *)send + s_off, s_bytes, ncclUint8, p, c->nccl, c->stream);
        if (rc == ncclSuccess && r_bytes)
            rc = ncclRecv((char *)recv + r_off, r_bytes, ncclUint8, p, c->nccl, c->stream);
        s_off += s_bytes;
        r_off += r_bytes;
    }
    ncclResult_t end = ncclGroupEnd();
    MOE_CHECK_NCCL(rc, fail);
    MOE_CHECK_NCCL(end, fail);
    if (done_event) MOE_CHECK_CUDA(cudaEventRecord((cudaEvent_t)done_event, c->stream), fail);
    MOE_CHECK_CUDA(cudaEventRecord(done, c->stream), fail);
    if (ready) event_put(c, ready); /* recorded work stays ordered; the handle may be reused */
    op->event = done;
    return MOE_STATUS_OK;
fail:
    if (ready) cudaEventDestroy(ready);
    if (done) cudaEventDestroy(done);
    return status;
}

static moe_status_t nccl_test(void *self, moe_comm_op_h op, bool *done)
{
    moe_status_t status = MOE_STATUS_OK;
    moe_comm_nccl_t *c = self;
    cudaError_t err = cudaEventQuery((cudaEvent_t)op->event);
    if (err == cudaErrorNotReady) {
        *done = false;
        if ((status = async_error(c)) != MOE_STATUS_OK) nccl_abort(c);
        return status;
    }
    MOE_CHECK_CUDA(err, fail);
    *done = true;
fail:
    return status;
}

static void event_free(void *event)
{
    if (event) cudaEventDestroy((cudaEvent_t)event);
}

/* Orders the producer stream after the op's event (or, without one, the host waits under the watch),
 * then releases the events and frees op. */
static moe_status_t nccl_wait(void *self, moe_comm_op_h op)
{
    moe_status_t status = MOE_STATUS_OK;
    moe_comm_nccl_t *c = self;
    cudaEvent_t ev = (cudaEvent_t)op->event;
    event_free(op->start);
    free(op);
    if (c->producer)
        MOE_CHECK_CUDA(cudaStreamWaitEvent(c->producer, ev, 0), fail);
    else
        MOE_CHECK(host_wait(c, ev, "an NCCL all-to-all-v"), fail);
    event_put(c, ev);
    return MOE_STATUS_OK;
fail:
    cudaEventDestroy(ev);
    return status;
}

/* NCCL advances on its own (its kernels and proxy thread): nothing to poll. */
static void nccl_progress(void *self) { (void)self; }

/* ncclAlltoAll (or, where NCCL lacks it, a group of equal sends and receives) of `bytes` per peer on the
 * communicator's stream, ordered after the producer stream and before what it queues next. */
static moe_status_t nccl_alltoall(void *self, const void *send, void *recv, size_t bytes)
{
    moe_status_t status = MOE_STATUS_OK;
    moe_comm_nccl_t *c = self;
    cudaEvent_t ready = NULL, done = NULL;
    MOE_CHECK(event_get(c, &ready), fail);
    MOE_CHECK(event_get(c, &done), fail);
    if (c->producer) {
        MOE_CHECK_CUDA(cudaEventRecord(ready, c->producer), fail);
        MOE_CHECK_CUDA(cudaStreamWaitEvent(c->stream, ready, 0), fail);
    }
#if MOE_HAVE_NCCL_ALLTOALL
    MOE_CHECK_NCCL(ncclAlltoAll(send, recv, bytes, ncclUint8, c->nccl, c->stream), fail);
#else
    MOE_CHECK_NCCL(ncclGroupStart(), fail);
    ncclResult_t rc = ncclSuccess;
    for (int p = 0; p < c->size && rc == ncclSuccess; p++) {
        rc = ncclSend((const char *)send + (size_t)p * bytes, bytes, ncclUint8, p, c->nccl, c->stream);
        if (rc == ncclSuccess) rc = ncclRecv((char *)recv + (size_t)p * bytes, bytes, ncclUint8, p, c->nccl, c->stream);
    }
    ncclResult_t end = ncclGroupEnd();
    MOE_CHECK_NCCL(rc, fail);
    MOE_CHECK_NCCL(end, fail);
#endif
    MOE_CHECK_CUDA(cudaEventRecord(done, c->stream), fail);
    if (c->producer)
        MOE_CHECK_CUDA(cudaStreamWaitEvent(c->producer, done, 0), fail);
    else
        MOE_CHECK(host_wait(c, done, "ncclAlltoAll"), fail);
fail:
    if (ready) event_put(c, ready);
    if (done) event_put(c, done);
    return status;
}

/* ncclCommSplit of parent: collective over parent's ranks (no new bootstrap); the members' MPI
 * communicator is the MPI half's business. */
static moe_status_t nccl_split(void *self, bool member, MPI_Comm mpi, int new_rank, int new_size, void **out)
{
    moe_status_t status = MOE_STATUS_OK;
    moe_comm_nccl_t *parent = self, *c = NULL;
    (void)mpi;
    ncclComm_t child = NULL;
    *out = NULL;
    /* every rank of the parent takes part; non-members ask for no communicator */
    MOE_CHECK_NCCL(ncclCommSplit(parent->nccl, member ? 0 : NCCL_SPLIT_NOCOLOR, parent->rank, &child, NULL), fail);
    if (!member) return MOE_STATUS_OK;
    c = calloc(1, sizeof *c);
    MOE_CHECK_ALLOC(c, fail);
    c->nccl = child;
    child = NULL;
    c->rank = new_rank, c->size = new_size, c->device = parent->device;
    MOE_CHECK_CUDA(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking), fail);
    *out = c;
    return MOE_STATUS_OK;
fail:
    if (child) ncclCommDestroy(child);
    nccl_destroy(c);
    return status;
}

/* ---------------------------------------------------------------- point to point */

/* One group of sends and receives on the communicator's stream, between two timing events: *start
 * before it, *event after it. */
static moe_status_t p2p_group(moe_comm_nccl_t *c, const moe_comm_p2p_t *list, int n, void **start, void **event)
{
    moe_status_t status = MOE_STATUS_OK;
    cudaEvent_t begin = NULL, done = NULL;
    MOE_CHECK_CUDA(cudaEventCreate(&begin), fail);
    MOE_CHECK_CUDA(cudaEventCreate(&done), fail);
    MOE_CHECK_CUDA(cudaEventRecord(begin, c->stream), fail);
    MOE_CHECK_NCCL(ncclGroupStart(), fail);
    ncclResult_t rc = ncclSuccess;
    for (int i = 0; i < n && rc == ncclSuccess; i++)
        rc = list[i].send ? ncclSend(list[i].buf, list[i].bytes, ncclUint8, list[i].peer, c->nccl, c->stream)
                          : ncclRecv(list[i].buf, list[i].bytes, ncclUint8, list[i].peer, c->nccl, c->stream);
    ncclResult_t end = ncclGroupEnd();
    MOE_CHECK_NCCL(rc, fail);
    MOE_CHECK_NCCL(end, fail);
    MOE_CHECK_CUDA(cudaEventRecord(done, c->stream), fail);
    *start = begin;
    *event = done;
    return MOE_STATUS_OK;
fail:
    if (begin) cudaEventDestroy(begin);
    if (done) cudaEventDestroy(done);
    return status;
}

static moe_status_t nccl_p2p_start(void *self, const moe_comm_p2p_t *list, int n, moe_comm_op_h op)
{
    return p2p_group(self, list, n, &op->start, &op->event);
}

/* Seconds between first's start event and last's completion event (both completed). */
static moe_status_t nccl_span(void *self, moe_comm_op_h first, moe_comm_op_h last, double *seconds)
{
    moe_status_t status = MOE_STATUS_OK;
    float ms = 0;
    (void)self;
    if (!(first->start && last->event && first->done && last->done))
        MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, fail, "comm: a span needs completed NCCL point-to-point transfers");
    MOE_CHECK_CUDA(cudaEventElapsedTime(&ms, (cudaEvent_t)first->start, (cudaEvent_t)last->event), fail);
    *seconds = 1e-3 * ms;
fail:
    return status;
}

/* Collective: 1 MiB each way with every peer, so that NCCL connects its peers now, not in the first
 * transfer that counts. */
static moe_status_t nccl_warm_up(void *self)
{
    moe_status_t status = MOE_STATUS_OK;
    moe_comm_nccl_t *c = self;
    const size_t bytes = (size_t)1 << 20;
    void *buf = NULL, *start = NULL, *done = NULL;
    moe_comm_p2p_t *list = malloc(sizeof *list * 2 * (size_t)c->size);
    MOE_CHECK_ALLOC(list, fail);
    MOE_CHECK_CUDA(cudaMalloc(&buf, 2 * bytes * (size_t)c->size), fail);
    int n = 0;
    for (int p = 0; p < c->size; p++) {
        if (p == c->rank) continue;
        char *mine = (char *)buf + 2 * bytes * (size_t)p;
        list[n++] = (moe_comm_p2p_t){.buf = mine, .bytes = bytes, .peer = p, .send = true};
        list[n++] = (moe_comm_p2p_t){.buf = mine + bytes, .bytes = bytes, .peer = p, .send = false};
    }
    MOE_CHECK(p2p_group(c, list, n, &start, &done), fail);
    MOE_CHECK(host_wait(c, (cudaEvent_t)done, "NCCL's warm-up exchange"), fail);
fail:
    event_free(start);
    event_free(done);
    if (buf) cudaFree(buf);
    free(list);
    return status;
}

const moe_comm_transport_t moe_comm_transport_nccl = {
    .device = true,
    .alltoallv_start = nccl_alltoallv_start,
    .p2p_start = nccl_p2p_start,
    .test = nccl_test,
    .wait = nccl_wait,
    .progress = nccl_progress,
    .span = nccl_span,
    .alltoall = nccl_alltoall,
    .set_stream = nccl_set_stream,
    .set_watch = nccl_set_watch,
    .wait_event = nccl_wait_event,
    .warm_up = nccl_warm_up,
    .split = nccl_split,
    .abort = nccl_abort,
    .destroy = nccl_destroy,
};
