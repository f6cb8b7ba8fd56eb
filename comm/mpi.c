/* mpi: the MPI transport (see comm.h). Rows travel as a contiguous MPI datatype so that counts and
 * displacements stay in rows; types are cached per row size since a run uses only two or three.
 * A communicator created with moe_comm_create_nccl keeps this MPI half for the counts exchange and
 * hands the all-to-all-v of rows to its NCCL half (nccl.c). */
#include "comm/comm-impl.h"
#include "moe_build_config.h"

#include <stdlib.h>
#include <string.h>

#define COMM_TYPE_CACHE 8
#define COMM_MAX_OPS 64

struct moe_comm_op_s {
    moe_comm_h comm;
    MPI_Request request;
    void *event; /* NCCL: the transfer's completion event (no request, counts or tracking) */
    int *counts; /* send counts, send displs, recv counts, recv displs: 4 * size ints */
    bool done;
};

struct moe_comm_s {
    MPI_Comm mpi;
    int rank, size;
    size_t type_bytes[COMM_TYPE_CACHE];
    MPI_Datatype types[COMM_TYPE_CACHE];
    int n_types;
    moe_comm_op_h in_flight[COMM_MAX_OPS]; /* for moe_comm_progress */
    moe_comm_nccl_t *nccl;                 /* rows over NCCL, or NULL */
    moe_watch_h watch;                     /* borrowed; NULL: waits without a deadline */
    int *watch_ranks;                      /* [size]: our ranks as ranks of the watch's communicator */
};

moe_status_t moe_comm_create_mpi(MPI_Comm mpi, moe_comm_h *out)
{
    moe_status_t status = MOE_STATUS_OK;
    struct moe_comm_s *comm = calloc(1, sizeof *comm);
    MOE_CHECK_ALLOC(comm, fail);
    comm->mpi = MPI_COMM_NULL;
    MOE_CHECK_MPI(MPI_Comm_dup(mpi, &comm->mpi), fail_free);
    MOE_CHECK_MPI(MPI_Comm_rank(comm->mpi, &comm->rank), fail_free);
    MOE_CHECK_MPI(MPI_Comm_size(comm->mpi, &comm->size), fail_free);
    *out = comm;
    return MOE_STATUS_OK;
fail_free:
    moe_comm_destroy(comm);
fail:
    return status;
}

moe_status_t moe_comm_create_nccl(MPI_Comm mpi, int device, moe_comm_h *out)
{
#if MOE_HAVE_CUDA
    moe_status_t status = MOE_STATUS_OK;
    moe_comm_h comm = NULL;
    MOE_CHECK(moe_comm_create_mpi(mpi, &comm), fail);
    MOE_CHECK(moe_comm_nccl_create(comm->mpi, comm->rank, comm->size, device, &comm->nccl), fail);
    *out = comm;
    return MOE_STATUS_OK;
fail:
    moe_comm_destroy(comm);
    return status;
#else
    (void)mpi, (void)device, (void)out;
    moe_error("comm: NCCL is not available in this build (no CUDA)");
    return MOE_STATUS_UNSUPPORTED;
#endif
}

void moe_comm_set_stream(moe_comm_h comm, void *stream)
{
#if MOE_HAVE_CUDA
    if (comm->nccl) moe_comm_nccl_set_stream(comm->nccl, stream);
#else
    (void)comm, (void)stream;
#endif
}

void moe_comm_destroy(moe_comm_h comm)
{
    if (!comm) return;
#if MOE_HAVE_CUDA
    moe_comm_nccl_destroy(comm->nccl);
#endif
    for (int i = 0; i < comm->n_types; i++) MPI_Type_free(&comm->types[i]);
    if (comm->mpi != MPI_COMM_NULL) MPI_Comm_free(&comm->mpi);
    free(comm->watch_ranks);
    free(comm);
}

int moe_comm_rank(const moe_comm_h comm) { return comm->rank; }
int moe_comm_size(const moe_comm_h comm) { return comm->size; }

moe_status_t moe_comm_set_watch(moe_comm_h comm, moe_watch_h watch)
{
    moe_status_t status = MOE_STATUS_OK;
    MPI_Group mine = MPI_GROUP_NULL, theirs = MPI_GROUP_NULL;
    free(comm->watch_ranks);
    comm->watch_ranks = NULL;
    comm->watch = watch;
    if (!watch) return MOE_STATUS_OK;
    int *ranks = malloc(sizeof(int) * 2 * (size_t)comm->size);
    MOE_CHECK_ALLOC(ranks, fail);
    for (int p = 0; p < comm->size; p++) ranks[p] = p;
    MPI_Comm watch_comm = moe_watch_comm(watch);
    MOE_CHECK_MPI(MPI_Comm_group(comm->mpi, &mine), fail);
    MOE_CHECK_MPI(MPI_Comm_group(watch_comm, &theirs), fail);
    MOE_CHECK_MPI(MPI_Group_translate_ranks(mine, comm->size, ranks, theirs, ranks + comm->size), fail);
    memmove(ranks, ranks + comm->size, sizeof(int) * (size_t)comm->size);
    comm->watch_ranks = ranks;
    ranks = NULL;
fail:
    free(ranks);
    if (mine != MPI_GROUP_NULL) MPI_Group_free(&mine);
    if (theirs != MPI_GROUP_NULL) MPI_Group_free(&theirs);
    if (status != MOE_STATUS_OK) comm->watch = NULL;
    return status;
}

moe_watch_h moe_comm_watch(const moe_comm_h comm) { return comm->watch; }

/* Wait for this communicator's requests under its watch. */
static moe_status_t comm_wait(moe_comm_h comm, const char *what, int n, MPI_Request *requests)
{
    return moe_watch_wait(comm->watch, comm->size, comm->watch_ranks, what, n, requests);
}

moe_status_t moe_comm_exchange_counts(moe_comm_h comm, const int *send, int *recv, int per_peer)
{
    moe_status_t status = MOE_STATUS_OK;
    MPI_Request request;
    MOE_CHECK_MPI(MPI_Ialltoall(send, per_peer, MPI_INT, recv, per_peer, MPI_INT, comm->mpi, &request),
                  fail);
    status = comm_wait(comm, "counts exchange", 1, &request);
fail:
    return status;
}

static moe_status_t comm_row_type(moe_comm_h comm, size_t row_bytes, MPI_Datatype *out)
{
    moe_status_t status = MOE_STATUS_OK;
    for (int i = 0; i < comm->n_types; i++) {
        if (comm->type_bytes[i] == row_bytes) {
            *out = comm->types[i];
            return MOE_STATUS_OK;
        }
    }
    if (comm->n_types == COMM_TYPE_CACHE || row_bytes > (size_t)INT32_MAX)
        MOE_FAIL(MOE_STATUS_INTERNAL, fail, "comm: too many row sizes or a row of %zu bytes",
                 row_bytes);
    MPI_Datatype type;
    MOE_CHECK_MPI(MPI_Type_contiguous((int)row_bytes, MPI_BYTE, &type), fail);
    MOE_CHECK_MPI(MPI_Type_commit(&type), fail);
    comm->type_bytes[comm->n_types] = row_bytes;
    comm->types[comm->n_types++] = type;
    *out = type;
fail:
    return status;
}

static void comm_track(moe_comm_h comm, moe_comm_op_h op, bool add)
{
    for (int i = 0; i < COMM_MAX_OPS; i++) {
        if (add ? comm->in_flight[i] == NULL : comm->in_flight[i] == op) {
            comm->in_flight[i] = add ? op : NULL;
            return;
        }
    }
}

moe_status_t moe_comm_alltoallv_start(moe_comm_h comm, const void *send, const int *send_rows,
                                      void *recv, const int *recv_rows, size_t row_bytes,
                                      moe_comm_op_h *out)
{
    moe_status_t status = MOE_STATUS_OK;
    const int P = comm->size;
#if MOE_HAVE_CUDA
    if (comm->nccl) {
        struct moe_comm_op_s *nop = calloc(1, sizeof *nop);
        MOE_CHECK_ALLOC(nop, fail);
        nop->comm = comm;
        status = moe_comm_nccl_start(comm->nccl, send, send_rows, recv, recv_rows, row_bytes, &nop->event);
        if (status != MOE_STATUS_OK) {
            free(nop);
            return status;
        }
        *out = nop;
        return MOE_STATUS_OK;
    }
#endif
    MPI_Datatype type;
    MOE_CHECK(comm_row_type(comm, row_bytes, &type), fail);
    struct moe_comm_op_s *op = calloc(1, sizeof *op);
    MOE_CHECK_ALLOC(op, fail);
    op->comm = comm;
    op->counts = malloc(sizeof(int) * 4 * (size_t)P);
    if (!op->counts) {
        free(op);
        MOE_FAIL(MOE_STATUS_NO_MEMORY, fail, "comm: out of memory");
    }
    int *sc = op->counts, *sd = sc + P, *rc = sd + P, *rd = rc + P;
    for (int p = 0, s = 0, r = 0; p < P; p++) {
        sc[p] = send_rows[p];
        rc[p] = recv_rows[p];
        sd[p] = s;
        rd[p] = r;
        s += sc[p];
        r += rc[p];
    }
    int rc_mpi = MPI_Ialltoallv(send, sc, sd, type, recv, rc, rd, type, comm->mpi, &op->request);
    if (rc_mpi != MPI_SUCCESS) {
        free(op->counts);
        free(op);
        MOE_CHECK_MPI(rc_mpi, fail);
    }
    comm_track(comm, op, true);
    *out = op;
fail:
    return status;
}

moe_status_t moe_comm_op_test(moe_comm_op_h op, bool *done)
{
    moe_status_t status = MOE_STATUS_OK;
#if MOE_HAVE_CUDA
    if (op->event) {
        if (!op->done) MOE_CHECK(moe_comm_nccl_test(op->comm->nccl, op->event, &op->done), fail);
        *done = op->done;
        return MOE_STATUS_OK;
    }
#endif
    if (!op->done) {
        int flag = 0;
        MOE_CHECK_MPI(MPI_Test(&op->request, &flag, MPI_STATUS_IGNORE), fail);
        op->done = flag != 0;
    }
    *done = op->done;
fail:
    return status;
}

moe_status_t moe_comm_op_wait(moe_comm_op_h op)
{
    moe_status_t status = MOE_STATUS_OK;
    if (!op) return MOE_STATUS_OK;
#if MOE_HAVE_CUDA
    if (op->event) {
        status = moe_comm_nccl_wait(op->comm->nccl, op->event);
        free(op);
        return status;
    }
#endif
    if (!op->done) status = comm_wait(op->comm, "all-to-all-v", 1, &op->request);
    /* A wait that timed out leaves the request in flight: the job is ending, and MPI may still
     * write through it, so nothing it uses is freed. */
    if (status == MOE_STATUS_TIMEOUT) return status;
    comm_track(op->comm, op, false);
    free(op->counts);
    free(op);
    return status;
}

void moe_comm_progress(moe_comm_h comm)
{
    moe_watch_poll(comm->watch);
    for (int i = 0; i < COMM_MAX_OPS; i++) {
        moe_comm_op_h op = comm->in_flight[i];
        if (op && !op->done) {
            int flag = 0;
            if (MPI_Test(&op->request, &flag, MPI_STATUS_IGNORE) == MPI_SUCCESS && flag) op->done = true;
        }
    }
}
