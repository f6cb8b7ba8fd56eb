/* ctl: the control plane (see comm.h): small collectives and broadcasts of bytes between the ranks
 * of a communicator, every wait under the job's watch. The data plane (all-to-all-v of tokens) is the
 * transports' (mpi.c, nccl.c); this is what the runtime says to itself around it: agreements at batch
 * boundaries, reductions of figures, plans, hosts. MPI stays behind this file. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm/comm.h"

struct moe_ctl_s {
    MPI_Comm comm; /* a duplicate: our own */
    moe_watch_h watch;
    int rank, size;
    int n_peers; /* the ranks a wait names: -1 all of the watch's, else 0..size-1 of it */
};

moe_status_t moe_ctl_create(MPI_Comm comm, moe_watch_h watch, moe_ctl_h *out)
{
    moe_status_t status = MOE_STATUS_OK;
    moe_ctl_h c = calloc(1, sizeof *c);
    MOE_CHECK_ALLOC(c, fail);
    c->comm = MPI_COMM_NULL;
    MOE_CHECK_MPI(MPI_Comm_dup(comm, &c->comm), fail_free);
    MPI_Comm_rank(c->comm, &c->rank);
    MPI_Comm_size(c->comm, &c->size);
    c->watch = watch;
    int world = c->size;
    if (watch) MPI_Comm_size(moe_watch_comm(watch), &world);
    c->n_peers = c->size == world ? -1 : c->size;
    *out = c;
    return MOE_STATUS_OK;
fail_free:
    free(c);
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
MPI_Comm moe_ctl_comm(const moe_ctl_h c) { return c->comm; }

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

void moe_ctl_host(char *buf, size_t size)
{
    char name[MPI_MAX_PROCESSOR_NAME + 1] = {0};
    int len = 0;
    if (MPI_Get_processor_name(name, &len) != MPI_SUCCESS) snprintf(name, sizeof name, "?");
    snprintf(buf, size, "%s", name);
}
