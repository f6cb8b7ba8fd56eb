/* migrate: the routed experts that move when the plan in service changes (a scale event or a
 * re-balance), by point-to-point transfers while the old plan keeps serving.
 *
 * Every rank computes the same transfer list from the two plans: for each (layer, expert) and each
 * rank that hosts it in the new plan but not in the old, one source among the old hosts, the one
 * that has been given the fewest experts to send so far (so that sends spread over the holders).
 * An expert a rank already holds is handed over, never resent, so the bytes moved are the minimum
 * the two plans imply. Each transfer is two messages (gate_up, down) with tag 0 on a
 * communicator of the migration's own; sender and receiver post them in the same (layer, expert)
 * order, and MPI keeps messages between a pair in order, so they match without per-expert tags.
 *
 * The old weights are read by the sends: they stay alive, and keep serving, until every rank's
 * transfers are done. Progress comes from moe_migration_test, called between layers and at batch
 * boundaries (and from any other MPI call). Nothing heavy happens at the start, which the serving
 * ranks wait for, and nothing is copied in memory: the new weights share the old ones' dense part
 * and the experts the rank keeps (moe_weights_hand_over makes them the owner at the switch), and
 * only received experts get new memory, not zeroed (its pages are touched as it is filled). A
 * receiver keeps at most `window` experts in flight (a large message moves when its receive is
 * posted), which bounds the bandwidth and, on shared cores, the CPU a migration takes from
 * serving. */
#include <stdlib.h>
#include <string.h>

#include "runtime/runtime-impl.h"

/* An expert this rank receives. */
typedef struct {
    float *gate_up, *down;
    int source;
} incoming_t;

struct moe_migration_s {
    MPI_Comm comm;
    size_t expert_floats[2];    /* gate_up, down */
    int64_t expert_bytes;
    /* receives: posted in order, at most `window` experts in flight */
    incoming_t *incoming;
    MPI_Request *recv_requests; /* [2 n_incoming] */
    int *completed_index;       /* MPI_Testsome's out array */
    int n_incoming, posted, window;
    int recv_done;              /* receive requests completed */
    /* sends: all posted at the start */
    MPI_Request *send_requests;
    int n_sends;
    double t_start, t_done;     /* moe_now(); t_done 0 until done */
    bool done;
};

void moe_migration_destroy(moe_migration_h m)
{
    if (!m) return;
    free(m->incoming);
    free(m->recv_requests);
    free(m->completed_index);
    free(m->send_requests);
    if (m->comm != MPI_COMM_NULL) MPI_Comm_free(&m->comm);
    free(m);
}

/* Collect what arrived and keep `window` experts' receives in flight, in the senders' order. Once
 * per call: a receive posted against a sender that is ready may copy the whole expert at once. */
static moe_status_t receive_some(struct moe_migration_s *m)
{
    moe_status_t status = MOE_STATUS_OK;
    if (m->recv_done < 2 * m->posted) {
        int completed = 0;
        MOE_CHECK_MPI(MPI_Testsome(2 * m->posted, m->recv_requests, &completed, m->completed_index,
                                   MPI_STATUSES_IGNORE), fail);
        if (completed != MPI_UNDEFINED) m->recv_done += completed;
    }
    while (m->posted < m->n_incoming && 2 * m->posted - m->recv_done < 2 * m->window) {
        const incoming_t *in = &m->incoming[m->posted];
        MPI_Request *r = m->recv_requests + 2 * m->posted;
        MOE_CHECK_MPI(MPI_Irecv(in->gate_up, (int)m->expert_floats[0], MPI_FLOAT, in->source, 0,
                                m->comm, &r[0]), fail);
        MOE_CHECK_MPI(MPI_Irecv(in->down, (int)m->expert_floats[1], MPI_FLOAT, in->source, 0,
                                m->comm, &r[1]), fail);
        m->posted++;
    }
fail:
    return status;
}

moe_status_t moe_migration_start(const moe_config_t *config, const moe_plan_h old_plan,
                                 const moe_weights_t *from, const moe_plan_h new_plan, int rank,
                                 int window, MPI_Comm comm, moe_watch_h watch, moe_weights_t *to,
                                 moe_migration_h *out)
{
    moe_status_t status = MOE_STATUS_OK;
    const int L = config->model.layers, E = config->model.experts;
    const size_t f = (size_t)config->model.d_ff, d = (size_t)config->model.d_model;
    const size_t n_gate_up = 2 * f * d, n_down = d * f;
    const int old_ranks = moe_plan_ranks(old_plan);
    struct moe_migration_s *m = calloc(1, sizeof *m);
    int *given = calloc((size_t)old_ranks, sizeof(int));
    memset(to, 0, sizeof *to);
    MOE_CHECK_ALLOC(m, fail);
    MOE_CHECK_ALLOC(given, fail);
    m->comm = MPI_COMM_NULL;
    m->t_start = moe_now();
    m->expert_floats[0] = n_gate_up;
    m->expert_floats[1] = n_down;
    m->expert_bytes = (int64_t)(sizeof(float) * (n_gate_up + n_down));
    m->window = window > 0 ? window : 1;
    MPI_Request dup;
    MOE_CHECK_MPI(MPI_Comm_idup(comm, &m->comm, &dup), fail);
    MOE_CHECK(moe_watch_wait(watch, -1, NULL, "the migration's start", 1, &dup), fail);
    MOE_CHECK(moe_weights_layout(config, new_plan, rank, from, to), fail);
    to->read_bytes = from->read_bytes;
    to->read_expert_bytes = from->read_expert_bytes;
    to->read_files = from->read_files;

    /* At most every expert that moves comes to, or leaves, this rank. */
    const size_t moving = (size_t)moe_plan_new_hosts(old_plan, new_plan);
    m->incoming = malloc(sizeof(incoming_t) * (moving + 1));
    m->recv_requests = malloc(sizeof(MPI_Request) * (2 * moving + 1));
    m->completed_index = malloc(sizeof(int) * (2 * moving + 1));
    m->send_requests = malloc(sizeof(MPI_Request) * (2 * moving + 1));
    if (!m->incoming || !m->recv_requests || !m->completed_index || !m->send_requests)
        MOE_FAIL(MOE_STATUS_NO_MEMORY, fail, "migration: out of memory for %zu transfers", moving);

    for (int l = 0; l < L; l++)
        for (int e = 0; e < E; e++) {
            const int *hosts, *holders;
            int n = moe_plan_replicas(new_plan, l, e, &hosts, NULL);
            int n_old = moe_plan_replicas(old_plan, l, e, &holders, NULL);
            for (int i = 0; i < n; i++) {
                const int dst = hosts[i];
                const int new_slot = moe_plan_local_slot(new_plan, l, dst, e);
                const int old_slot = moe_plan_local_slot(old_plan, l, dst, e);
                const int to_slot = to->local_offset[l] + new_slot;
                if (old_slot >= 0) { /* already here: handed over, not copied */
                    if (dst == rank) {
                        to->gate_up[to_slot] = (float *)moe_weights_expert_gate_up(from, l, old_slot);
                        to->down[to_slot] = (float *)moe_weights_expert_down(from, l, old_slot);
                    }
                    continue;
                }
                int src = holders[0];
                for (int j = 1; j < n_old; j++)
                    if (given[holders[j]] < given[src]) src = holders[j];
                given[src]++;
                if (dst == rank) {
                    to->owned[to_slot] = true;
                    to->gate_up[to_slot] = moe_malloc(n_gate_up, sizeof(float));
                    to->down[to_slot] = moe_malloc(n_down, sizeof(float));
                    if (!to->gate_up[to_slot] || !to->down[to_slot])
                        MOE_FAIL(MOE_STATUS_NO_MEMORY, fail, "migration: out of memory for an expert");
                    m->incoming[m->n_incoming++] = (incoming_t){
                        .gate_up = to->gate_up[to_slot], .down = to->down[to_slot], .source = src};
                }
                if (src == rank) {
                    int slot = moe_plan_local_slot(old_plan, l, src, e);
                    MPI_Request *r = m->send_requests + m->n_sends;
                    MOE_CHECK_MPI(MPI_Isend(moe_weights_expert_gate_up(from, l, slot), (int)n_gate_up,
                                            MPI_FLOAT, dst, 0, m->comm, &r[0]), fail);
                    MOE_CHECK_MPI(MPI_Isend(moe_weights_expert_down(from, l, slot), (int)n_down,
                                            MPI_FLOAT, dst, 0, m->comm, &r[1]), fail);
                    m->n_sends += 2;
                }
            }
        }
    free(given);
    given = NULL;
    MOE_CHECK(receive_some(m), fail); /* the first window */
    *out = m;
    return MOE_STATUS_OK;
fail:
    /* A failure after requests were posted ends the job (the caller aborts): nothing is freed under
     * a request in flight before that. */
    free(given);
    if (status == MOE_STATUS_TIMEOUT) return status; /* the job ends; the duplicate may be in flight */
    if (m && m->n_sends == 0 && m->posted == 0) {
        moe_weights_destroy(to);
        moe_migration_destroy(m);
    }
    return status;
}

moe_status_t moe_migration_test(moe_migration_h m, bool *done)
{
    moe_status_t status = MOE_STATUS_OK;
    if (!m->done) {
        MOE_CHECK(receive_some(m), fail);
        int sent = 0;
        MOE_CHECK_MPI(MPI_Testall(m->n_sends, m->send_requests, &sent, MPI_STATUSES_IGNORE), fail);
        if (sent && m->recv_done == 2 * m->n_incoming) {
            m->done = true;
            m->t_done = moe_now();
        }
    }
    *done = m->done;
fail:
    return status;
}

static moe_status_t migration_done(void *arg, bool *done) { return moe_migration_test(arg, done); }

moe_status_t moe_migration_wait(moe_migration_h m, moe_watch_h watch)
{
    return moe_watch_until(watch, -1, NULL, "the expert transfers", migration_done, m);
}

int64_t moe_migration_bytes_pending(const moe_migration_h m)
{
    return (int64_t)(2 * m->n_incoming - m->recv_done) / 2 * m->expert_bytes;
}
int64_t moe_migration_bytes_in(const moe_migration_h m) { return m->n_incoming * m->expert_bytes; }
double moe_migration_seconds(const moe_migration_h m)
{
    return m->done ? m->t_done - m->t_start : moe_now() - m->t_start;
}
