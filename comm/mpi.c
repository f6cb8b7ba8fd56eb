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
    void *start; /* NCCL point-to-point: a timing event before it */
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

moe_status_t moe_comm_create_mpi(const moe_ctl_h ctl, moe_comm_h *out)
{
    moe_status_t status = MOE_STATUS_OK;
    struct moe_comm_s *comm = calloc(1, sizeof *comm);
    MOE_CHECK_ALLOC(comm, fail);
    comm->mpi = MPI_COMM_NULL;
    MOE_CHECK_MPI(MPI_Comm_dup(moe_ctl_mpi(ctl), &comm->mpi), fail_free);
    MOE_CHECK_MPI(MPI_Comm_rank(comm->mpi, &comm->rank), fail_free);
    MOE_CHECK_MPI(MPI_Comm_size(comm->mpi, &comm->size), fail_free);
    *out = comm;
    return MOE_STATUS_OK;
fail_free:
    moe_comm_destroy(comm);
fail:
    return status;
}

moe_status_t moe_comm_create_nccl(const moe_ctl_h ctl, int device, moe_comm_h *out)
{
#if MOE_HAVE_CUDA
    moe_status_t status = MOE_STATUS_OK;
    moe_comm_h comm = NULL;
    MOE_CHECK(moe_comm_create_mpi(ctl, &comm), fail);
    MOE_CHECK(moe_comm_nccl_create(comm->mpi, comm->rank, comm->size, device, &comm->nccl), fail);
    *out = comm;
    return MOE_STATUS_OK;
fail:
    moe_comm_destroy(comm);
    return status;
#else
    (void)ctl, (void)device, (void)out;
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

moe_status_t moe_comm_wait_event(moe_comm_h comm, void *event, const char *what)
{
#if MOE_HAVE_CUDA
    if (!comm) return moe_comm_nccl_wait_event(NULL, NULL, -1, NULL, event, what);
    return moe_comm_nccl_wait_event(comm->nccl, comm->watch, comm->watch ? comm->size : -1, comm->watch_ranks, event,
                                    what);
#else
    (void)comm, (void)event;
    moe_error("comm: %s: CUDA is not available in this build", what);
    return MOE_STATUS_UNSUPPORTED;
#endif
}

void moe_comm_abort(moe_comm_h comm)
{
#if MOE_HAVE_CUDA
    if (comm) moe_comm_nccl_abort(comm->nccl);
#else
    (void)comm;
#endif
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
#if MOE_HAVE_CUDA
    if (comm->nccl) moe_comm_nccl_set_watch(comm->nccl, NULL, 0, NULL);
#endif
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
#if MOE_HAVE_CUDA
    if (comm->nccl) moe_comm_nccl_set_watch(comm->nccl, watch, comm->size, comm->watch_ranks);
#endif
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

moe_status_t moe_comm_exchange_ints(moe_comm_h comm, const int *send, const int *send_count, int *recv,
                                    const int *recv_count)
{
    moe_status_t status = MOE_STATUS_OK;
    const int P = comm->size;
    MPI_Request request;
    int *displs = malloc(sizeof(int) * 2 * (size_t)P);
    MOE_CHECK_ALLOC(displs, fail);
    for (int p = 0, s = 0, r = 0; p < P; p++) {
        displs[p] = s, displs[P + p] = r;
        s += send_count[p], r += recv_count[p];
    }
    MOE_CHECK_MPI(MPI_Ialltoallv(send, send_count, displs, MPI_INT, recv, recv_count, displs + P, MPI_INT,
                                 comm->mpi, &request), fail);
    status = comm_wait(comm, "counts exchange", 1, &request);
fail:
    free(displs);
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
    return moe_comm_alltoallv_start_timed(comm, send, send_rows, recv, recv_rows, row_bytes, NULL, NULL, out);
}

moe_status_t moe_comm_alltoallv_start_timed(moe_comm_h comm, const void *send, const int *send_rows, void *recv,
                                            const int *recv_rows, size_t row_bytes, void *start_event,
                                            void *done_event, moe_comm_op_h *out)
{
    moe_status_t status = MOE_STATUS_OK;
    const int P = comm->size;
#if MOE_HAVE_CUDA
    if (comm->nccl) {
        struct moe_comm_op_s *nop = calloc(1, sizeof *nop);
        MOE_CHECK_ALLOC(nop, fail);
        nop->comm = comm;
        status = moe_comm_nccl_start(comm->nccl, send, send_rows, recv, recv_rows, row_bytes, start_event,
                                     done_event, &nop->event);
        if (status != MOE_STATUS_OK) {
            free(nop);
            return status;
        }
        *out = nop;
        return MOE_STATUS_OK;
    }
#endif
    (void)start_event, (void)done_event;
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
        moe_comm_nccl_event_free(op->start);
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

moe_status_t moe_comm_barrier(moe_comm_h comm)
{
    moe_status_t status = MOE_STATUS_OK;
    MOE_CHECK_MPI(MPI_Barrier(comm->mpi), fail);
fail:
    return status;
}

moe_status_t moe_comm_alltoall_nccl(moe_comm_h comm, const void *send, void *recv, size_t bytes)
{
#if MOE_HAVE_CUDA
    if (comm->nccl) return moe_comm_nccl_alltoall(comm->nccl, send, recv, bytes);
#endif
    (void)send, (void)recv, (void)bytes;
    moe_error("comm: ncclAlltoAll needs the NCCL transport");
    return MOE_STATUS_UNSUPPORTED;
}

moe_status_t moe_comm_split(moe_comm_h parent, bool member, moe_comm_h *out)
{
    moe_status_t status = MOE_STATUS_OK;
    MPI_Comm sub = MPI_COMM_NULL;
    struct moe_comm_s *comm = NULL;
    *out = NULL;
    MOE_CHECK_MPI(MPI_Comm_split(parent->mpi, member ? 0 : MPI_UNDEFINED, parent->rank, &sub), fail);
    if (member) {
        comm = calloc(1, sizeof *comm);
        MOE_CHECK_ALLOC(comm, fail);
        comm->mpi = sub; /* split: our own communicator already */
        sub = MPI_COMM_NULL;
        MPI_Comm_rank(comm->mpi, &comm->rank);
        MPI_Comm_size(comm->mpi, &comm->size);
    }
#if MOE_HAVE_CUDA
    /* collective over the parent's ranks, members or not */
    if (parent->nccl)
        MOE_CHECK(moe_comm_nccl_split(parent->nccl, member, comm ? comm->rank : -1, comm ? comm->size : 0,
                                      comm ? &comm->nccl : &(moe_comm_nccl_t *){NULL}), fail);
#endif
    *out = comm;
    return MOE_STATUS_OK;
fail:
    if (sub != MPI_COMM_NULL) MPI_Comm_free(&sub);
    moe_comm_destroy(comm);
    return status;
}

bool moe_comm_is_device(const moe_comm_h comm)
{
#if MOE_HAVE_CUDA
    return comm->nccl != NULL;
#else
    (void)comm;
    return false;
#endif
}

moe_status_t moe_comm_p2p_start(moe_comm_h comm, const moe_comm_p2p_t *list, int n, moe_comm_op_h *out)
{
#if MOE_HAVE_CUDA
    if (comm->nccl) {
        moe_status_t status = MOE_STATUS_OK;
        struct moe_comm_op_s *op = calloc(1, sizeof *op);
        MOE_CHECK_ALLOC(op, fail);
        op->comm = comm;
        if ((status = moe_comm_nccl_p2p(comm->nccl, list, n, &op->start, &op->event)) != MOE_STATUS_OK) {
            free(op);
            return status;
        }
        *out = op;
    fail:
        return status;
    }
#endif
    (void)list, (void)n, (void)out;
    moe_error("comm: point-to-point transfers of device memory need the NCCL transport");
    return MOE_STATUS_UNSUPPORTED;
}

moe_status_t moe_comm_op_span(moe_comm_op_h first, moe_comm_op_h last, double *seconds)
{
#if MOE_HAVE_CUDA
    if (first->start && last->event && first->done && last->done)
        return moe_comm_nccl_elapsed(first->start, last->event, seconds);
#endif
    (void)first, (void)last, (void)seconds;
    moe_error("comm: a span needs completed NCCL point-to-point transfers");
    return MOE_STATUS_INVALID_ARGUMENT;
}

moe_status_t moe_comm_warm_up(moe_comm_h comm)
{
#if MOE_HAVE_CUDA
    if (comm->nccl) return moe_comm_nccl_warm_up(comm->nccl);
#endif
    (void)comm;
    return MOE_STATUS_OK;
}
