/* migrate: the routed experts that move when the plan in service changes (a scale event or a
 * re-balance), by point-to-point transfers while the old plan keeps serving.
 *
 * Every rank computes the same transfer list from the two plans: for each (layer, expert) and each
 * rank that hosts it in the new plan but not in the old, one source among the old hosts, the one
 * that has been given the fewest experts to send so far (so that sends spread over the holders).
 * An expert a rank already holds is handed over, never resent, so the bytes moved are the minimum
 * the two plans imply. Each transfer is one message, the expert's slot (gate_up then down, in the
 * store's element type: bf16 for cuda), with tag 0 on a communicator of the migration's own; sender
 * and receiver post them in the same (layer, expert) order, and MPI keeps messages between a pair in
 * order, so they match without per-expert tags. Slots in device memory go GPU to GPU when the caller
 * gives a device communicator (NCCL): every transfer is posted at the start, in the same list order,
 * as NCCL send/receive groups on that communicator's own stream, beside the serving stream; without
 * one they travel through host buffers (the store's copy_out / copy_in).
 *
 * The old weights are read by the sends: they stay alive, and keep serving, until every rank's
 * transfers are done. Progress comes from moe_migration_test, called between layers and at batch
 * boundaries (and from any other MPI call). Nothing heavy happens at the start, which the serving
 * ranks wait for, and nothing is copied in memory: the new weights share the old ones' dense part
 * and the experts the rank keeps (moe_weights_hand_over makes them the owner at the switch), and
 * only received experts get new memory in the store, uninitialised. A receiver keeps at most
 * `window` experts in flight (a large message moves when its receive is posted), which bounds the
 * bandwidth and, on shared cores, the CPU a migration takes from serving. */
#include <stdlib.h>
#include <string.h>

#include "runtime/elastic/elastic-impl.h"

/* An expert slot this rank receives or sends: the slot in the store, and for stores the network
 * cannot read (device memory) a host buffer it travels through. */
typedef struct {
    void *slot;
    int peer;
    void *host;
} transfer_t;

struct moe_migration_s {
    moe_ctl_p2p_h p2p;          /* expert slots over MPI (comm.h's control plane) */
    moe_weights_t *to;
    const moe_weights_t *from;
    size_t expert_bytes;
    bool staged;                /* the store is not host memory: slots travel through host buffers */
    /* receives and sends, each in the order every rank computes, at most `window` in flight */
    transfer_t *incoming, *outgoing;
    /* GPU to GPU: the groups posted on the device communicator, complete in stream order */
    moe_comm_h device_comm;
    moe_comm_op_h *groups;
    int n_groups;
    int *completed_index;       /* moe_ctl_p2p_test's out array */
    int n_incoming, recv_posted, recv_done;
    int n_outgoing, send_posted, send_done;
    int window;
    double t_start, t_done;     /* moe_now(); t_done 0 until done */
    double device_s;            /* GPU to GPU: the transfers' own time on the device (events), or -1 */
    bool done;
};

void moe_migration_destroy(moe_migration_h m)
{
    if (!m) return;
    for (int i = 0; i < m->n_groups; i++) (void)moe_comm_op_wait(m->groups[i]);
    free(m->groups);
    for (int i = 0; m->incoming && i < m->n_incoming; i++) free(m->incoming[i].host);
    for (int i = 0; m->outgoing && i < m->n_outgoing; i++) free(m->outgoing[i].host);
    free(m->incoming);
    free(m->outgoing);
    free(m->completed_index);
    moe_ctl_p2p_destroy(m->p2p);
    free(m);
}

/* Requests of `list` that completed since the last call: landed receives are copied into their
 * slots, finished sends' host buffers are freed. */
static moe_status_t collect(struct moe_migration_s *m, bool recv)
{
    moe_status_t status = MOE_STATUS_OK;
    const int posted = recv ? m->recv_posted : m->send_posted;
    int *done = recv ? &m->recv_done : &m->send_done;
    if (*done == posted) return MOE_STATUS_OK;
    int completed = 0;
    MOE_CHECK(moe_ctl_p2p_test(m->p2p, recv, posted, &completed, m->completed_index), fail);
    for (int i = 0; i < completed; i++) {
        transfer_t *t = (recv ? m->incoming : m->outgoing) + m->completed_index[i];
        if (recv && t->host) MOE_CHECK(m->to->ops->copy_in(m->to->store, t->slot, m->expert_bytes, t->host), fail);
        free(t->host);
        t->host = NULL;
    }
    *done += completed;
fail:
    return status;
}

/* Keep `window` transfers in flight each way, in list order (MPI keeps a pair's messages in order,
 * so they match without tags). A receive posted against a ready sender may move a whole slot. */
static moe_status_t post_some(struct moe_migration_s *m)
{
    moe_status_t status = MOE_STATUS_OK;
    MOE_CHECK(collect(m, true), fail);
    MOE_CHECK(collect(m, false), fail);
    while (m->recv_posted < m->n_incoming && m->recv_posted - m->recv_done < m->window) {
        transfer_t *t = &m->incoming[m->recv_posted];
        void *buf = t->slot;
        if (m->staged) {
            t->host = malloc(m->expert_bytes);
            if (!t->host) MOE_FAIL(MOE_STATUS_NO_MEMORY, fail, "migration: out of memory for an expert");
            buf = t->host;
        }
        MOE_CHECK(moe_ctl_p2p_post(m->p2p, true, m->recv_posted, t->peer, buf), fail);
        m->recv_posted++;
    }
    /* sends from host memory are all posted at once; staged ones a window at a time */
    const int send_window = m->staged ? m->window : m->n_outgoing;
    while (m->send_posted < m->n_outgoing && m->send_posted - m->send_done < send_window) {
        transfer_t *t = &m->outgoing[m->send_posted];
        const void *buf = t->slot;
        if (m->staged) {
            t->host = malloc(m->expert_bytes);
            if (!t->host) MOE_FAIL(MOE_STATUS_NO_MEMORY, fail, "migration: out of memory for an expert");
            MOE_CHECK(m->from->ops->copy_out(m->from->store, t->slot, m->expert_bytes, t->host), fail);
            buf = t->host;
        }
        MOE_CHECK(moe_ctl_p2p_post(m->p2p, false, m->send_posted, t->peer, (void *)buf), fail);
        m->send_posted++;
    }
fail:
    return status;
}

/* Every transfer at once, GPU to GPU: groups of at most MIGRATION_GROUP sends and receives, in list
 * order (NCCL matches a pair's transfers in the order posted), queued on the device communicator's
 * stream; the serving stream never waits for them. */
#define MIGRATION_GROUP 256
static moe_status_t post_device(struct moe_migration_s *m)
{
    moe_status_t status = MOE_STATUS_OK;
    const int n = m->n_incoming + m->n_outgoing;
    moe_comm_p2p_t *list = malloc(sizeof *list * (size_t)(n + 1));
    m->groups = calloc((size_t)(n / MIGRATION_GROUP + 1), sizeof *m->groups);
    MOE_CHECK_ALLOC(list, fail);
    MOE_CHECK_ALLOC(m->groups, fail);
    for (int i = 0; i < m->n_incoming; i++)
        list[i] = (moe_comm_p2p_t){.buf = m->incoming[i].slot, .bytes = m->expert_bytes,
                                   .peer = m->incoming[i].peer, .send = false};
    for (int i = 0; i < m->n_outgoing; i++)
        list[m->n_incoming + i] = (moe_comm_p2p_t){.buf = m->outgoing[i].slot, .bytes = m->expert_bytes,
                                                   .peer = m->outgoing[i].peer, .send = true};
    for (int at = 0; at < n; at += MIGRATION_GROUP) {
        const int count = n - at < MIGRATION_GROUP ? n - at : MIGRATION_GROUP;
        MOE_CHECK(moe_comm_p2p_start(m->device_comm, list + at, count, &m->groups[m->n_groups]), fail);
        m->n_groups++;
    }
fail:
    free(list);
    return status;
}

moe_status_t moe_migration_start(const moe_config_t *config, const moe_plan_h old_plan,
                                 const moe_weights_t *from, const moe_plan_h new_plan, int rank,
                                 int window, moe_ctl_h ctl, moe_comm_h device_comm, moe_watch_h watch,
                                 moe_weights_t *to, moe_migration_h *out)
{
    moe_status_t status = MOE_STATUS_OK;
    const int L = config->model.layers, E = config->model.experts;
    const int old_ranks = moe_plan_ranks(old_plan);
    struct moe_migration_s *m = calloc(1, sizeof *m);
    int *given = calloc((size_t)old_ranks, sizeof(int));
    memset(to, 0, sizeof *to);
    MOE_CHECK_ALLOC(m, fail);
    MOE_CHECK_ALLOC(given, fail);
    m->t_start = moe_now();
    m->device_s = -1;
    m->from = from;
    m->to = to;
    m->expert_bytes = from->expert_bytes;
    m->staged = !from->ops->host_memory;
    m->device_comm = m->staged && device_comm && moe_comm_is_device(device_comm) ? device_comm : NULL;
    m->window = window > 0 ? window : 1;
    /* At most every expert that moves comes to, or leaves, this rank. */
    const size_t moving = (size_t)moe_plan_new_hosts(old_plan, new_plan);
    if (moving > (size_t)INT32_MAX) MOE_FAIL(MOE_STATUS_UNSUPPORTED, fail, "migration: %zu moves", moving);
    MOE_CHECK(moe_ctl_p2p_create(ctl, m->expert_bytes, (int)moving + 1, &m->p2p), fail);
    MOE_CHECK(moe_weights_layout(config, new_plan, rank, from->ops, from->store, from, to), fail);
    to->read_bytes = from->read_bytes;
    to->read_expert_bytes = from->read_expert_bytes;
    to->read_files = from->read_files;

    m->incoming = calloc(moving + 1, sizeof(transfer_t));
    m->outgoing = calloc(moving + 1, sizeof(transfer_t));
    m->completed_index = malloc(sizeof(int) * (moving + 1));
    if (!m->incoming || !m->outgoing || !m->completed_index)
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
                    if (dst == rank) to->expert[to_slot] = moe_weights_slot(from, l, old_slot);
                    continue;
                }
                int src = holders[0];
                for (int j = 1; j < n_old; j++)
                    if (given[holders[j]] < given[src]) src = holders[j];
                given[src]++;
                if (dst == rank) {
                    MOE_CHECK(to->ops->alloc(to->store, to->expert_bytes, &to->expert[to_slot]), fail);
                    to->owned[to_slot] = true;
                    m->incoming[m->n_incoming++] = (transfer_t){.slot = to->expert[to_slot], .peer = src};
                }
                if (src == rank)
                    m->outgoing[m->n_outgoing++] = (transfer_t){
                        .slot = moe_weights_slot(from, l, moe_plan_local_slot(old_plan, l, src, e)), .peer = dst};
            }
        }
    free(given);
    given = NULL;
    if (m->device_comm)
        MOE_CHECK(post_device(m), fail);
    else
        MOE_CHECK(post_some(m), fail); /* the first window */
    *out = m;
    return MOE_STATUS_OK;
fail:
    /* A failure after requests were posted ends the job (the caller aborts): nothing is freed under
     * a request in flight before that. */
    free(given);
    if (status == MOE_STATUS_TIMEOUT) return status; /* the job ends; the duplicate may be in flight */
    if (m && m->send_posted == 0 && m->recv_posted == 0 && m->n_groups == 0) {
        moe_weights_destroy(to);
        moe_migration_destroy(m);
    }
    return status;
}

moe_status_t moe_migration_test(moe_migration_h m, bool *done)
{
    moe_status_t status = MOE_STATUS_OK;
    if (!m->done && m->device_comm) {
        bool last = true; /* the groups complete in stream order: the last one says for all */
        if (m->n_groups > 0) MOE_CHECK(moe_comm_op_test(m->groups[m->n_groups - 1], &last), fail);
        if (last && m->n_groups > 0) {
            bool first = true;
            MOE_CHECK(moe_comm_op_test(m->groups[0], &first), fail); /* done: marks it so */
            MOE_CHECK(moe_comm_op_span(m->groups[0], m->groups[m->n_groups - 1], &m->device_s), fail);
        }
        if (last) {
            if (m->device_s < 0) m->device_s = 0; /* nothing to move here */
            while (m->n_groups > 0) MOE_CHECK(moe_comm_op_wait(m->groups[--m->n_groups]), fail);
            m->recv_done = m->n_incoming;
            m->send_done = m->n_outgoing;
            m->done = true;
            m->t_done = moe_now();
        }
    } else if (!m->done) {
        MOE_CHECK(post_some(m), fail);
        if (m->recv_done == m->n_incoming && m->send_done == m->n_outgoing) {
            if (m->staged) MOE_CHECK(m->to->ops->finish(m->to->store), fail); /* copies into slots landed */
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
    return (int64_t)(m->n_incoming - m->recv_done) * (int64_t)m->expert_bytes;
}
int64_t moe_migration_bytes_in(const moe_migration_h m) { return (int64_t)m->n_incoming * (int64_t)m->expert_bytes; }
double moe_migration_seconds(const moe_migration_h m)
{
    if (m->done && m->device_s >= 0) return m->device_s;
    return m->done ? m->t_done - m->t_start : moe_now() - m->t_start;
}
