/* mpi: the communicator (see comm.h) and the MPI row transport.
 *
 * A communicator is an MPI half, which every transport keeps: a duplicate of the ctl's communicator
 * for the counts exchange and barriers, and the watch with our ranks as ranks of its communicator.
 * Rows go through the communicator's row transport, a table of functions (comm-impl.h) chosen at
 * create: MPI rows (below) or NCCL rows (nccl.c). The public functions of the data plane only
 * dispatch to the table; none asks which transport it holds.
 *
 * MPI rows: MPI_Ialltoallv of host buffers on the communicator's duplicate. Rows travel as a
 * contiguous MPI datatype so that counts and displacements stay in rows; types are cached per row
 * size since a run uses only two or three. Operations in flight are tracked so that
 * moe_comm_progress can test them (MPI advances non-blocking collectives only inside its calls). */
#include "comm/comm-impl.h"

#include <stdlib.h>
#include <string.h>

#define COMM_TYPE_CACHE 8
#define COMM_MAX_OPS 64

struct moe_comm_s {
    MPI_Comm mpi;
    int rank, size;
    const moe_comm_transport_t *transport; /* the row transport: MPI or NCCL */
    void *rows;                            /* its state (ours) */
    moe_watch_h watch;                     /* borrowed; NULL: waits without a deadline */
    int *watch_ranks;                      /* [size]: our ranks as ranks of the watch's communicator */
};

static moe_status_t mpi_rows_create(MPI_Comm mpi, int size, void **out);

/* ---------------------------------------------------------------- the communicator */

/* The MPI half, without a row transport. */
static moe_status_t comm_create(const moe_ctl_h ctl, moe_comm_h *out)
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

moe_status_t moe_comm_create_mpi(const moe_ctl_h ctl, moe_comm_h *out)
{
    moe_status_t status = MOE_STATUS_OK;
    moe_comm_h comm = NULL;
    MOE_CHECK(comm_create(ctl, &comm), fail);
    comm->transport = &moe_comm_transport_mpi;
    MOE_CHECK(mpi_rows_create(comm->mpi, comm->size, &comm->rows), fail);
    *out = comm;
    return MOE_STATUS_OK;
fail:
    moe_comm_destroy(comm);
    return status;
}

moe_status_t moe_comm_create_nccl(const moe_ctl_h ctl, int device, moe_comm_h *out)
{
#if MOE_HAVE_CUDA
    moe_status_t status = MOE_STATUS_OK;
    moe_comm_h comm = NULL;
    MOE_CHECK(comm_create(ctl, &comm), fail);
    comm->transport = &moe_comm_transport_nccl;
    MOE_CHECK(moe_comm_nccl_create(comm->mpi, comm->rank, comm->size, device, &comm->rows), fail);
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
        comm->transport = parent->transport;
    }
    /* collective over the parent's ranks, members or not (NCCL's split is) */
    MOE_CHECK(parent->transport->split(parent->rows, member, comm ? comm->mpi : MPI_COMM_NULL, comm ? comm->rank : -1,
                                       comm ? comm->size : 0, comm ? &comm->rows : &(void *){NULL}), fail);
    *out = comm;
    return MOE_STATUS_OK;
fail:
    if (sub != MPI_COMM_NULL) MPI_Comm_free(&sub);
    moe_comm_destroy(comm);
    return status;
}

void moe_comm_destroy(moe_comm_h comm)
{
    if (!comm) return;
    if (comm->transport) comm->transport->destroy(comm->rows);
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
    comm->transport->set_watch(comm->rows, NULL, 0, NULL);
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
    comm->transport->set_watch(comm->rows, watch, comm->size, comm->watch_ranks);
fail:
    free(ranks);
    if (mine != MPI_GROUP_NULL) MPI_Group_free(&mine);
    if (theirs != MPI_GROUP_NULL) MPI_Group_free(&theirs);
    if (status != MOE_STATUS_OK) comm->watch = NULL;
    return status;
}

moe_watch_h moe_comm_watch(const moe_comm_h comm) { return comm->watch; }

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
    status = moe_watch_wait(comm->watch, comm->size, comm->watch_ranks, "counts exchange", 1, &request);
fail:
    free(displs);
    return status;
}

moe_status_t moe_comm_barrier(moe_comm_h comm)
{
    moe_status_t status = MOE_STATUS_OK;
    MOE_CHECK_MPI(MPI_Barrier(comm->mpi), fail);
fail:
    return status;
}

void moe_comm_progress(moe_comm_h comm)
{
    moe_watch_poll(comm->watch);
    comm->transport->progress(comm->rows);
}

/* ---------------------------------------------------------------- the data plane: to the transport */

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
    struct moe_comm_op_s *op = calloc(1, sizeof *op);
    MOE_CHECK_ALLOC(op, fail);
    op->comm = comm;
    status = comm->transport->alltoallv_start(comm->rows, send, send_rows, recv, recv_rows, row_bytes, start_event,
                                              done_event, op);
    if (status != MOE_STATUS_OK) {
        free(op);
        return status;
    }
    *out = op;
fail:
    return status;
}

moe_status_t moe_comm_p2p_start(moe_comm_h comm, const moe_comm_p2p_t *list, int n, moe_comm_op_h *out)
{
    moe_status_t status = MOE_STATUS_OK;
    struct moe_comm_op_s *op = calloc(1, sizeof *op);
    MOE_CHECK_ALLOC(op, fail);
    op->comm = comm;
    if ((status = comm->transport->p2p_start(comm->rows, list, n, op)) != MOE_STATUS_OK) {
        free(op);
        return status;
    }
    *out = op;
fail:
    return status;
}

moe_status_t moe_comm_op_test(moe_comm_op_h op, bool *done)
{
    moe_status_t status = MOE_STATUS_OK;
    if (!op->done) MOE_CHECK(op->comm->transport->test(op->comm->rows, op, &op->done), fail);
    *done = op->done;
fail:
    return status;
}

moe_status_t moe_comm_op_wait(moe_comm_op_h op)
{
    if (!op) return MOE_STATUS_OK;
    return op->comm->transport->wait(op->comm->rows, op);
}

moe_status_t moe_comm_op_span(moe_comm_op_h first, moe_comm_op_h last, double *seconds)
{
    return first->comm->transport->span(first->comm->rows, first, last, seconds);
}

moe_status_t moe_comm_alltoall_nccl(moe_comm_h comm, const void *send, void *recv, size_t bytes)
{
    return comm->transport->alltoall(comm->rows, send, recv, bytes);
}

void moe_comm_set_stream(moe_comm_h comm, void *stream) { comm->transport->set_stream(comm->rows, stream); }

moe_status_t moe_comm_wait_event(moe_comm_h comm, void *event, const char *what)
{
    if (comm) return comm->transport->wait_event(comm->rows, event, what);
#if MOE_HAVE_CUDA
    return moe_comm_nccl_wait_event(NULL, NULL, -1, NULL, event, what);
#else
    (void)event;
    moe_error("comm: %s: CUDA is not available in this build", what);
    return MOE_STATUS_UNSUPPORTED;
#endif
}

moe_status_t moe_comm_warm_up(moe_comm_h comm) { return comm->transport->warm_up(comm->rows); }

bool moe_comm_is_device(const moe_comm_h comm) { return comm->transport->device; }

void moe_comm_abort(moe_comm_h comm)
{
    if (comm) comm->transport->abort(comm->rows);
}

/* ---------------------------------------------------------------- MPI rows */

typedef struct {
    MPI_Comm mpi; /* the communicator's duplicate (borrowed) */
    int size;
    size_t type_bytes[COMM_TYPE_CACHE];
    MPI_Datatype types[COMM_TYPE_CACHE];
    int n_types;
    moe_comm_op_h in_flight[COMM_MAX_OPS]; /* for moe_comm_progress */
    moe_watch_h watch;                     /* borrowed; NULL: waits without a deadline */
    int n_peers;                           /* the communicator's ranks as ranks of the watch's */
    const int *peers;
} mpi_rows_t;

static moe_status_t mpi_rows_create(MPI_Comm mpi, int size, void **out)
{
    moe_status_t status = MOE_STATUS_OK;
    mpi_rows_t *m = calloc(1, sizeof *m);
    MOE_CHECK_ALLOC(m, fail);
    m->mpi = mpi;
    m->size = size;
    *out = m;
fail:
    return status;
}

static void mpi_rows_destroy(void *self)
{
    mpi_rows_t *m = self;
    if (!m) return;
    for (int i = 0; i < m->n_types; i++) MPI_Type_free(&m->types[i]);
    free(m);
}

/* MPI's duplicate is the members' communicator already: nothing to split but our state. */
static moe_status_t mpi_rows_split(void *parent, bool member, MPI_Comm mpi, int rank, int size, void **out)
{
    (void)parent, (void)rank;
    *out = NULL;
    return member ? mpi_rows_create(mpi, size, out) : MOE_STATUS_OK;
}

static void mpi_rows_set_watch(void *self, moe_watch_h watch, int n_peers, const int *peers)
{
    mpi_rows_t *m = self;
    m->watch = watch;
    m->n_peers = n_peers;
    m->peers = peers;
}

static moe_status_t mpi_rows_type(mpi_rows_t *m, size_t row_bytes, MPI_Datatype *out)
{
    moe_status_t status = MOE_STATUS_OK;
    for (int i = 0; i < m->n_types; i++) {
        if (m->type_bytes[i] == row_bytes) {
            *out = m->types[i];
            return MOE_STATUS_OK;
        }
    }
    if (m->n_types == COMM_TYPE_CACHE || row_bytes > (size_t)INT32_MAX)
        MOE_FAIL(MOE_STATUS_INTERNAL, fail, "comm: too many row sizes or a row of %zu bytes",
                 row_bytes);
    MPI_Datatype type;
    MOE_CHECK_MPI(MPI_Type_contiguous((int)row_bytes, MPI_BYTE, &type), fail);
    MOE_CHECK_MPI(MPI_Type_commit(&type), fail);
    m->type_bytes[m->n_types] = row_bytes;
    m->types[m->n_types++] = type;
    *out = type;
fail:
    return status;
}

static void mpi_rows_track(mpi_rows_t *m, moe_comm_op_h op, bool add)
{
    for (int i = 0; i < COMM_MAX_OPS; i++) {
        if (add ? m->in_flight[i] == NULL : m->in_flight[i] == op) {
            m->in_flight[i] = add ? op : NULL;
            return;
        }
    }
}

/* The timing events are the device transports': MPI ignores them. */
static moe_status_t mpi_rows_alltoallv_start(void *self, const void *send, const int *send_rows, void *recv,
                                             const int *recv_rows, size_t row_bytes, void *start_event,
                                             void *done_event, moe_comm_op_h op)
{
    moe_status_t status = MOE_STATUS_OK;
    mpi_rows_t *m = self;
    const int P = m->size;
    (void)start_event, (void)done_event;
    MPI_Datatype type;
    MOE_CHECK(mpi_rows_type(m, row_bytes, &type), fail);
    op->counts = malloc(sizeof(int) * 4 * (size_t)P);
    MOE_CHECK_ALLOC(op->counts, fail);
    int *sc = op->counts, *sd = sc + P, *rc = sd + P, *rd = rc + P;
    for (int p = 0, s = 0, r = 0; p < P; p++) {
        sc[p] = send_rows[p];
        rc[p] = recv_rows[p];
        sd[p] = s;
        rd[p] = r;
        s += sc[p];
        r += rc[p];
    }
    int rc_mpi = MPI_Ialltoallv(send, sc, sd, type, recv, rc, rd, type, m->mpi, &op->request);
    if (rc_mpi != MPI_SUCCESS) {
        free(op->counts);
        op->counts = NULL;
        MOE_CHECK_MPI(rc_mpi, fail);
    }
    mpi_rows_track(m, op, true);
fail:
    return status;
}

static moe_status_t mpi_rows_test(void *self, moe_comm_op_h op, bool *done)
{
    moe_status_t status = MOE_STATUS_OK;
    int flag = 0;
    (void)self;
    MOE_CHECK_MPI(MPI_Test(&op->request, &flag, MPI_STATUS_IGNORE), fail);
    *done = flag != 0;
fail:
    return status;
}

static moe_status_t mpi_rows_wait(void *self, moe_comm_op_h op)
{
    moe_status_t status = MOE_STATUS_OK;
    mpi_rows_t *m = self;
    if (!op->done) status = moe_watch_wait(m->watch, m->n_peers, m->peers, "all-to-all-v", 1, &op->request);
    /* A wait that timed out leaves the request in flight: the job is ending, and MPI may still
     * write through it, so nothing it uses is freed. */
    if (status == MOE_STATUS_TIMEOUT) return status;
    mpi_rows_track(m, op, false);
    free(op->counts);
    free(op);
    return status;
}

static void mpi_rows_progress(void *self)
{
    mpi_rows_t *m = self;
    for (int i = 0; i < COMM_MAX_OPS; i++) {
        moe_comm_op_h op = m->in_flight[i];
        if (op && !op->done) {
            int flag = 0;
            if (MPI_Test(&op->request, &flag, MPI_STATUS_IGNORE) == MPI_SUCCESS && flag) op->done = true;
        }
    }
}

static moe_status_t mpi_rows_p2p_start(void *self, const moe_comm_p2p_t *list, int n, moe_comm_op_h op)
{
    (void)self, (void)list, (void)n, (void)op;
    moe_error("comm: point-to-point transfers of device memory need the NCCL transport");
    return MOE_STATUS_UNSUPPORTED;
}

static moe_status_t mpi_rows_span(void *self, moe_comm_op_h first, moe_comm_op_h last, double *seconds)
{
    (void)self, (void)first, (void)last, (void)seconds;
    moe_error("comm: a span needs completed NCCL point-to-point transfers");
    return MOE_STATUS_INVALID_ARGUMENT;
}

static moe_status_t mpi_rows_alltoall(void *self, const void *send, void *recv, size_t bytes)
{
    (void)self, (void)send, (void)recv, (void)bytes;
    moe_error("comm: ncclAlltoAll needs the NCCL transport");
    return MOE_STATUS_UNSUPPORTED;
}

/* Host buffers: no stream to order after. */
static void mpi_rows_set_stream(void *self, void *stream) { (void)self, (void)stream; }

/* No transport error to watch for: the event alone, polled under the watch (the poll lives in nccl.c,
 * comm/'s one CUDA file). */
static moe_status_t mpi_rows_wait_event(void *self, void *event, const char *what)
{
#if MOE_HAVE_CUDA
    mpi_rows_t *m = self;
    return moe_comm_nccl_wait_event(NULL, m->watch, m->watch ? m->n_peers : -1, m->peers, event, what);
#else
    (void)self, (void)event;
    moe_error("comm: %s: CUDA is not available in this build", what);
    return MOE_STATUS_UNSUPPORTED;
#endif
}

/* MPI connects on first use, cheaply. */
static moe_status_t mpi_rows_warm_up(void *self)
{
    (void)self;
    return MOE_STATUS_OK;
}

/* MPI cannot abort one communicator's transfers (MPI_Abort ends the job): a wait that timed out
 * leaves its request alone instead (mpi_rows_wait). */
static void mpi_rows_abort(void *self) { (void)self; }

const moe_comm_transport_t moe_comm_transport_mpi = {
    .device = false,
    .alltoallv_start = mpi_rows_alltoallv_start,
    .p2p_start = mpi_rows_p2p_start,
    .test = mpi_rows_test,
    .wait = mpi_rows_wait,
    .progress = mpi_rows_progress,
    .span = mpi_rows_span,
    .alltoall = mpi_rows_alltoall,
    .set_stream = mpi_rows_set_stream,
    .set_watch = mpi_rows_set_watch,
    .wait_event = mpi_rows_wait_event,
    .warm_up = mpi_rows_warm_up,
    .split = mpi_rows_split,
    .abort = mpi_rows_abort,
    .destroy = mpi_rows_destroy,
};
