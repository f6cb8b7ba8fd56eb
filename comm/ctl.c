/* ctl: the control plane (see comm.h): groups of ranks (the world's, launch/'s; serving sets split
 * from it) and small collectives and broadcasts of bytes between them, every wait under the job's
 * watch (but the blocking calls after a watched barrier: the batch start, the output gather). The
 * data plane (all-to-all-v of tokens) is the transports' (mpi.c, nccl.c); this is what the runtime
 * says to itself around it: agreements and barriers at batch boundaries, reductions of figures,
 * plans, hosts, the output. MPI stays behind this file. */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm/comm-impl.h"

struct moe_ctl_s {
    MPI_Comm comm; /* a duplicate: our own */
    moe_watch_h watch;
    int rank, size;
    int n_peers; /* the ranks a wait names: -1 all of the watch's, else 0..size-1 of it */
};

/* A ctl on comm, which it takes (freed by destroy, also on failure). */
static moe_status_t ctl_make(MPI_Comm comm, moe_watch_h watch, moe_ctl_h *out)
{
    moe_status_t status = MOE_STATUS_OK;
    moe_ctl_h c = calloc(1, sizeof *c);
    if (!c) {
        MPI_Comm_free(&comm);
        MOE_FAIL(MOE_STATUS_NO_MEMORY, fail, "ctl: out of memory");
    }
    c->comm = comm;
    MPI_Comm_rank(c->comm, &c->rank);
    MPI_Comm_size(c->comm, &c->size);
    c->watch = watch;
    int world = c->size;
    if (watch) MPI_Comm_size(moe_watch_comm(watch), &world);
    c->n_peers = c->size == world ? -1 : c->size;
    *out = c;
fail:
    return status;
}

moe_status_t moe_ctl_create(MPI_Comm comm, moe_watch_h watch, moe_ctl_h *out)
{
    moe_status_t status = MOE_STATUS_OK;
    MPI_Comm dup = MPI_COMM_NULL;
    MOE_CHECK_MPI(MPI_Comm_dup(comm, &dup), fail);
    status = ctl_make(dup, watch, out);
fail:
    return status;
}

moe_status_t moe_ctl_split(moe_ctl_h parent, bool member, moe_ctl_h *out)
{
    moe_status_t status = MOE_STATUS_OK;
    MPI_Comm comm = MPI_COMM_NULL;
    moe_ctl_h c = NULL;
    MOE_CHECK(moe_ctl_barrier(parent, "a split of the ranks"), fail);
    MOE_CHECK_MPI(MPI_Comm_split(parent->comm, member ? 0 : MPI_UNDEFINED, parent->rank, &comm), fail);
    if (!member) {
        *out = NULL;
        return MOE_STATUS_OK;
    }
    MOE_CHECK(ctl_make(comm, parent->watch, &c), fail);
    /* the waits name the members as the watch's ranks 0..size-1 */
    if (c->rank != parent->rank)
        MOE_FAIL(MOE_STATUS_INTERNAL, fail_destroy, "ctl split: rank %d is not among the first ranks", parent->rank);
    *out = c;
    return MOE_STATUS_OK;
fail_destroy:
    moe_ctl_destroy(c);
fail:
    return status;
}

void moe_ctl_destroy(moe_ctl_h c)
{
    if (!c) return;
    if (c->comm != MPI_COMM_NULL) MPI_Comm_free(&c->comm);
    free(c);
}

int moe_ctl_rank(const moe_ctl_h c) { return c->rank; }
int moe_ctl_size(const moe_ctl_h c) { return c->size; }
MPI_Comm moe_ctl_mpi(const moe_ctl_h c) { return c->comm; }
moe_watch_h moe_ctl_watch(const moe_ctl_h c) { return c->watch; }

static moe_status_t wait_one(moe_ctl_h c, const char *what, MPI_Request *request)
{
    return moe_watch_wait(c->watch, c->n_peers, NULL, what, 1, request);
}

static MPI_Datatype mpi_type(moe_ctl_type_t type)
{
    return type == MOE_CTL_INT64 ? MPI_INT64_T : type == MOE_CTL_DOUBLE ? MPI_DOUBLE : MPI_BYTE;
}

moe_status_t moe_ctl_reduce(moe_ctl_h c, int root, moe_ctl_type_t type, moe_ctl_op_t op, void *data, int count,
                            const char *what)
{
    moe_status_t status = MOE_STATUS_OK;
    MPI_Request request;
    const MPI_Op mop = op == MOE_CTL_SUM ? MPI_SUM : MPI_MAX;
    if (root < 0)
        MOE_CHECK_MPI(MPI_Iallreduce(MPI_IN_PLACE, data, count, mpi_type(type), mop, c->comm, &request), fail);
    else
        MOE_CHECK_MPI(MPI_Ireduce(c->rank == root ? MPI_IN_PLACE : data, data, count, mpi_type(type), mop, root,
                                  c->comm, &request), fail);
    status = wait_one(c, what, &request);
fail:
    return status;
}

moe_status_t moe_ctl_gather(moe_ctl_h c, int root, const void *mine, size_t bytes, void *all, const char *what)
{
    moe_status_t status = MOE_STATUS_OK;
    MPI_Request request;
    if (bytes > (size_t)1 << 30) MOE_FAIL(MOE_STATUS_INTERNAL, fail, "%s: %zu bytes a rank is too many", what, bytes);
    if (root < 0)
        MOE_CHECK_MPI(MPI_Iallgather(mine, (int)bytes, MPI_BYTE, all, (int)bytes, MPI_BYTE, c->comm, &request), fail);
    else
        MOE_CHECK_MPI(MPI_Igather(mine, (int)bytes, MPI_BYTE, all, (int)bytes, MPI_BYTE, root, c->comm, &request),
                      fail);
    status = wait_one(c, what, &request);
fail:
    return status;
}

moe_status_t moe_ctl_gather_alloc(moe_ctl_h c, int root, const void *mine, size_t bytes, void **all, size_t *sizes,
                                  const char *what)
{
    moe_status_t status = MOE_STATUS_OK;
    int64_t n = (int64_t)bytes, *each = c->rank == root ? calloc((size_t)c->size, sizeof(int64_t)) : NULL;
    int *counts = NULL, *displs = NULL;
    char *buf = NULL;
    int64_t ok = 1;
    /* (a root out of memory for size numbers leaves the others to the watch) */
    if (c->rank == root && !each) MOE_FAIL(MOE_STATUS_NO_MEMORY, fail, "%s: out of memory on rank %d", what, root);
    if (bytes > (size_t)INT32_MAX) MOE_FAIL(MOE_STATUS_INTERNAL, fail, "%s: %zu bytes a rank is too many", what, bytes);
    MOE_CHECK(moe_ctl_gather(c, root, &n, sizeof n, each, what), fail);
    if (c->rank == root && each) {
        int64_t total = 0;
        counts = calloc((size_t)c->size, sizeof(int));
        displs = calloc((size_t)c->size, sizeof(int));
        for (int p = 0; p < c->size; p++) total += each[p];
        buf = total <= INT32_MAX ? malloc((size_t)total + 1) : NULL;
        ok = counts && displs && buf;
        for (int p = 0, at = 0; ok && p < c->size; p++) counts[p] = (int)each[p], displs[p] = at, at += counts[p];
    }
    /* every rank learns whether root can take the bytes, so that none waits in a gather alone */
    MOE_CHECK(moe_ctl_bcast(c, root, &ok, sizeof ok, what), fail);
    if (!ok) MOE_FAIL(MOE_STATUS_NO_MEMORY, fail, "%s: out of memory on rank %d", what, root);
    MPI_Request request;
    MOE_CHECK_MPI(MPI_Igatherv(mine, (int)bytes, MPI_BYTE, buf, counts, displs, MPI_BYTE, root, c->comm, &request),
                  fail);
    MOE_CHECK(wait_one(c, what, &request), fail);
    if (c->rank == root) {
        for (int p = 0; p < c->size; p++) sizes[p] = (size_t)each[p];
        *all = buf;
        buf = NULL;
    }
fail:
    free(buf);
    free(each);
    free(counts);
    free(displs);
    return status;
}

moe_status_t moe_ctl_bcast(moe_ctl_h c, int root, void *data, size_t bytes, const char *what)
{
    moe_status_t status = MOE_STATUS_OK;
    for (size_t off = 0; off < bytes || (bytes == 0 && off == 0); off += (size_t)1 << 30) {
        const size_t n = bytes - off < ((size_t)1 << 30) ? bytes - off : (size_t)1 << 30;
        MPI_Request request;
        MOE_CHECK_MPI(MPI_Ibcast((char *)data + off, (int)n, MPI_BYTE, root, c->comm, &request), fail);
        MOE_CHECK(wait_one(c, what, &request), fail);
        if (bytes == 0) break;
    }
fail:
    return status;
}

moe_status_t moe_ctl_bcast_alloc(moe_ctl_h c, int root, void **data, size_t *bytes, const char *what)
{
    moe_status_t status = MOE_STATUS_OK;
    int64_t n = c->rank == root ? (int64_t)*bytes : 0;
    MOE_CHECK(moe_ctl_bcast(c, root, &n, sizeof n, what), fail);
    if (c->rank != root) {
        *data = malloc((size_t)n + 1);
        if (!*data) MOE_FAIL(MOE_STATUS_NO_MEMORY, fail, "%s: out of memory for %lld bytes", what, (long long)n);
        *bytes = (size_t)n;
    }
    MOE_CHECK(moe_ctl_bcast(c, root, *data, (size_t)n, what), fail);
fail:
    return status;
}

moe_status_t moe_ctl_agree(moe_ctl_h c, bool mine, bool *any, const char *what)
{
    int64_t v = mine;
    moe_status_t status = moe_ctl_reduce(c, -1, MOE_CTL_INT64, MOE_CTL_MAX, &v, 1, what);
    if (status == MOE_STATUS_OK) *any = v != 0;
    return status;
}

moe_status_t moe_ctl_barrier(moe_ctl_h c, const char *what)
{
    return moe_watch_barrier(c->watch, c->comm, c->n_peers, NULL, what);
}

typedef struct {
    MPI_Request request;
    void (*poll)(void *arg);
    void *arg;
} barrier_poll_t;

static moe_status_t barrier_polled(void *arg, bool *done)
{
    barrier_poll_t *b = arg;
    int flag = 0;
    if (MPI_Test(&b->request, &flag, MPI_STATUS_IGNORE) != MPI_SUCCESS) {
        moe_error("MPI_Test of a barrier failed");
        return MOE_STATUS_MPI_ERROR;
    }
    b->poll(b->arg);
    *done = flag != 0;
    return MOE_STATUS_OK;
}

moe_status_t moe_ctl_barrier_poll(moe_ctl_h c, const char *what, void (*poll)(void *arg), void *arg)
{
    moe_status_t status = MOE_STATUS_OK;
    barrier_poll_t b = {.poll = poll, .arg = arg};
    MOE_CHECK_MPI(MPI_Ibarrier(c->comm, &b.request), fail);
    status = moe_watch_until(c->watch, c->n_peers, NULL, what, barrier_polled, &b);
fail:
    return status;
}

/* Before a blocking call (comm.h, moe_ctl_barrier_strict): every rank is here, or the watch names the
 * one that is not; the call itself has no deadline. */
static moe_status_t before_blocking(moe_ctl_h c, const char *what) { return moe_ctl_barrier(c, what); }

moe_status_t moe_ctl_barrier_strict(moe_ctl_h c, const char *what)
{
    moe_status_t status = MOE_STATUS_OK;
    MOE_CHECK(before_blocking(c, what), fail);
    MOE_CHECK_MPI(MPI_Barrier(c->comm), fail);
fail:
    return status;
}

moe_status_t moe_ctl_gatherv(moe_ctl_h c, int root, const void *mine, int rows, size_t row_bytes, void *all,
                             int *counts, const char *what)
{
    moe_status_t status = MOE_STATUS_OK;
    MPI_Datatype row = MPI_DATATYPE_NULL;
    int *displs = NULL;
    if (row_bytes == 0 || row_bytes > (size_t)INT32_MAX)
        MOE_FAIL(MOE_STATUS_INTERNAL, fail, "%s: rows of %zu bytes", what, row_bytes);
    MOE_CHECK(moe_ctl_gather(c, root, &rows, sizeof rows, counts, what), fail);
    if (c->rank == root) {
        displs = malloc(sizeof(int) * (size_t)c->size);
        MOE_CHECK_ALLOC(displs, fail);
        int64_t total = 0;
        for (int p = 0; p < c->size; p++) {
            displs[p] = (int)total;
            total += counts[p];
        }
        /* (a local failure here leaves the others in the gather: the job ends on it, as on any
         * rank's failure) */
        if (total > INT32_MAX) MOE_FAIL(MOE_STATUS_INTERNAL, fail, "%s: %lld rows", what, (long long)total);
    }
    MOE_CHECK_MPI(MPI_Type_contiguous((int)row_bytes, MPI_BYTE, &row), fail);
    MOE_CHECK_MPI(MPI_Type_commit(&row), fail);
    MOE_CHECK(before_blocking(c, what), fail);
    MOE_CHECK_MPI(MPI_Gatherv(mine, rows, row, all, counts, displs, row, root, c->comm), fail);
fail:
    if (row != MPI_DATATYPE_NULL) MPI_Type_free(&row);
    free(displs);
    return status;
}

void moe_ctl_host(char *buf, size_t size)
{
    char name[MPI_MAX_PROCESSOR_NAME + 1] = {0};
    int len = 0;
    if (MPI_Get_processor_name(name, &len) != MPI_SUCCESS) snprintf(name, sizeof name, "?");
    snprintf(buf, size, "%s", name);
}

/* ---------------------------------------------------------------- point to point */

struct moe_ctl_p2p_s {
    MPI_Comm comm; /* a channel of its own: these messages match nothing else */
    MPI_Datatype type;
    MPI_Request *requests[2]; /* [0] receives, [1] sends */
    int max;
};

moe_status_t moe_ctl_p2p_create(moe_ctl_h c, size_t message_bytes, int max_messages, moe_ctl_p2p_h *out)
{
    moe_status_t status = MOE_STATUS_OK;
    moe_ctl_p2p_h p = calloc(1, sizeof *p);
    MOE_CHECK_ALLOC(p, fail);
    p->comm = MPI_COMM_NULL;
    p->type = MPI_DATATYPE_NULL;
    p->max = max_messages;
    MPI_Request dup;
    MOE_CHECK_MPI(MPI_Comm_idup(c->comm, &p->comm, &dup), fail_destroy);
    MOE_CHECK(wait_one(c, "the point-to-point channel's start", &dup), fail_destroy);
    if (message_bytes > (size_t)INT32_MAX)
        MOE_FAIL(MOE_STATUS_UNSUPPORTED, fail_destroy, "point to point: a message of %zu bytes is over 2 GB", message_bytes);
    MOE_CHECK_MPI(MPI_Type_contiguous((int)message_bytes, MPI_BYTE, &p->type), fail_destroy);
    MOE_CHECK_MPI(MPI_Type_commit(&p->type), fail_destroy);
    for (int d = 0; d < 2; d++) {
        p->requests[d] = malloc(sizeof(MPI_Request) * ((size_t)max_messages + 1));
        if (!p->requests[d])
            MOE_FAIL(MOE_STATUS_NO_MEMORY, fail_destroy, "point to point: out of memory for %d messages", max_messages);
        for (int i = 0; i <= max_messages; i++) p->requests[d][i] = MPI_REQUEST_NULL;
    }
    *out = p;
    return MOE_STATUS_OK;
fail_destroy:
    moe_ctl_p2p_destroy(p);
fail:
    return status;
}

void moe_ctl_p2p_destroy(moe_ctl_p2p_h p)
{
    if (!p) return;
    free(p->requests[0]);
    free(p->requests[1]);
    if (p->type != MPI_DATATYPE_NULL) MPI_Type_free(&p->type);
    if (p->comm != MPI_COMM_NULL) MPI_Comm_free(&p->comm);
    free(p);
}

moe_status_t moe_ctl_p2p_post(moe_ctl_p2p_h p, bool recv, int index, int peer, void *buf)
{
    moe_status_t status = MOE_STATUS_OK;
    if (index < 0 || index >= p->max) MOE_FAIL(MOE_STATUS_INTERNAL, fail, "point to point: message %d of %d", index, p->max);
    if (recv)
        MOE_CHECK_MPI(MPI_Irecv(buf, 1, p->type, peer, 0, p->comm, &p->requests[0][index]), fail);
    else
        MOE_CHECK_MPI(MPI_Isend(buf, 1, p->type, peer, 0, p->comm, &p->requests[1][index]), fail);
fail:
    return status;
}

moe_status_t moe_ctl_p2p_test(moe_ctl_p2p_h p, bool recv, int posted, int *completed, int *indices)
{
    moe_status_t status = MOE_STATUS_OK;
    int n = 0;
    *completed = 0;
    if (posted == 0) return MOE_STATUS_OK;
    MOE_CHECK_MPI(MPI_Testsome(posted, p->requests[recv ? 0 : 1], &n, indices, MPI_STATUSES_IGNORE), fail);
    *completed = n == MPI_UNDEFINED ? 0 : n;
fail:
    return status;
}
