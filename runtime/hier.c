/* hier: one MoE layer with hierarchical dispatch (run.dispatch: hierarchical; docs/multinode.md).
 *
 * Across nodes the network is several times slower than inside one, so a token crosses it once per
 * remote node its choices touch, not once per destination rank. With G ranks per node, rank h's
 * rail on node n is the rank of n with h's local index:
 *
 *   hop 1    h sends each token one row per node its choices touch, to its rail there (to itself
 *            for its own node); the row carries the choices that node serves, each expert id
 *            written as e + E * g, g the local index of the rank that serves it (kernels.h);
 *   hop 2    each rank repacks the first-hop rows it got into one row per distinct serving rank of
 *            its node (itself included) with plain expert ids: what the experts stage reads;
 *   combine  the experts' partial sums go back to the rail (hop 2 reversed), the rail adds them
 *            into one row per first-hop row and returns it (hop 1 reversed): one row per (token,
 *            node) crosses the network back; the home adds its rows into the token's output.
 *
 * Copies: hop-1 rows to another rank are inter-node (rails are on other nodes), hop-2 rows to another
 * rank intra-node; rows a rank sends itself are no copies. This is what `moerun place --evaluate`
 * replays as inter_hier / intra_hier (placement/cost.c), exactly, for the same plan and tokens.
 *
 * Counts: the home knows where all its tokens' rows will go, on both hops, so one exchange before
 * any row moves tells every rank all it receives and forwards: per chunk, from home h to rank x,
 * the first-hop rows h sends x, the second-hop rows x will get of h's tokens (from h's rail on x's
 * node), when x is that rail the rows it forwards to each rank of its node, and the entries of each
 * of x's expert slots. Chunks pipeline as in the flat schedule (layer.c): chunk c+1's first hop is
 * in flight while chunk c goes through hop 2, the experts and the combine, and chunk c-1's return
 * is un-permuted once chunk c's is posted. Every transfer is an all-to-all-v posted in the same
 * order on every rank, whatever the counts. */
#include <stdlib.h>
#include <string.h>

#include "runtime/runtime-impl.h"

struct moe_hier_s {
    const moe_backend_t *b;
    moe_backend_state_t *state;
    moe_comm_h comm, meta_comm;
    const moe_comm_nodes_t *nodes;
    const moe_slot_table_t *table; /* [L], the scheduler's */
    int rank, P, G, C, max_slots;
    /* [C][P] rows: hop 1 sent / received, hop 2 sent / received; [C][slots] entries per slot */
    int *send1, *recv1, *send2, *recv2, *slot_rows;
    int *send1_first, *recv1_first, *send2_first, *recv2_first; /* [C + 1] */
    int *next;      /* [P] where relay_pack puts the next row for each rank */
    int *msg_send, *msg_recv, *msg_send_count, *msg_recv_count;
    moe_comm_op_h *op1; /* [C] hop 1 (dispatch, then combine) in flight */
    moe_comm_op_h op2;  /* hop 2 */
};

moe_status_t moe_hier_hops(const moe_plan_h plan, const moe_comm_nodes_t *nodes, int rank, int *block)
{
    const int L = moe_plan_layers(plan), E = moe_plan_experts(plan), P = moe_plan_ranks(plan);
    if (nodes->per_node <= 0 || nodes->ranks != P) {
        moe_error("hierarchical dispatch needs nodes of equal size over the %d ranks", P);
        return MOE_STATUS_INVALID_ARGUMENT;
    }
    const int G = nodes->per_node, mine = nodes->local[rank];
    int *at = block;
    for (int l = 0; l < L; l++) {
        int R = 0;
        for (int e = 0; e < E; e++) R += moe_plan_replicas(plan, l, e, NULL, NULL);
        for (int e = 0, r = 0; e < E; e++) {
            const int *ranks;
            const int n = moe_plan_replicas(plan, l, e, &ranks, NULL);
            for (int i = 0; i < n; i++, r++) {
                at[r] = nodes->rank_at[nodes->node[ranks[i]] * G + mine];
                at[R + r] = nodes->local[ranks[i]];
            }
        }
        at += 2 * R;
    }
    return MOE_STATUS_OK;
}

void moe_hier_destroy(moe_hier_h h)
{
    if (!h) return;
    free(h->send1), free(h->recv1), free(h->send2), free(h->recv2), free(h->slot_rows);
    free(h->send1_first), free(h->recv1_first), free(h->send2_first), free(h->recv2_first);
    free(h->next);
    free(h->msg_send), free(h->msg_recv), free(h->msg_send_count), free(h->msg_recv_count);
    free(h->op1);
    free(h);
}

moe_status_t moe_hier_create(const moe_scheduler_args_t *a, const moe_slot_table_t *tables, moe_hier_h *out)
{
    moe_status_t status = MOE_STATUS_OK;
    const moe_backend_t *b = a->backend;
    if (!b->final_rows || !b->relay_buffers || !b->relay_pack || !b->relay_sum)
        MOE_FAIL(MOE_STATUS_UNSUPPORTED, fail, "run.dispatch: the %s backend has no hierarchical dispatch", b->name);
    if (a->capacity > 0)
        MOE_FAIL(MOE_STATUS_UNSUPPORTED, fail, "run.dispatch: hierarchical needs counted buffers (run.buffers)");
    const int P = moe_comm_size(a->comm), C = a->config->run.chunks;
    if (!a->nodes || a->nodes->per_node <= 0 || a->nodes->ranks != P)
        MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, fail, "run.dispatch: hierarchical needs nodes of equal size over "
                 "the %d ranks", P);
    struct moe_hier_s *h = calloc(1, sizeof *h);
    MOE_CHECK_ALLOC(h, fail);
    h->b = b;
    h->state = a->backend_state;
    h->comm = a->comm;
    h->meta_comm = a->meta_comm ? a->meta_comm : a->comm;
    h->nodes = a->nodes;
    h->table = tables;
    h->rank = moe_comm_rank(a->comm);
    h->P = P, h->G = a->nodes->per_node, h->C = C;
    for (int l = 0; l < a->config->model.layers; l++)
        for (int p = 0; p < P; p++) {
            const int n = tables[l].peer_first[p + 1] - tables[l].peer_first[p];
            if (n > h->max_slots) h->max_slots = n;
        }
    const size_t CP = (size_t)C * P, per_msg = (size_t)C * (2 + h->G + h->max_slots);
    h->send1 = calloc(CP, sizeof(int)), h->recv1 = calloc(CP, sizeof(int));
    h->send2 = calloc(CP, sizeof(int)), h->recv2 = calloc(CP, sizeof(int));
    h->slot_rows = calloc((size_t)C * (h->max_slots + 1), sizeof(int));
    h->send1_first = calloc((size_t)C + 1, sizeof(int)), h->recv1_first = calloc((size_t)C + 1, sizeof(int));
    h->send2_first = calloc((size_t)C + 1, sizeof(int)), h->recv2_first = calloc((size_t)C + 1, sizeof(int));
    h->next = calloc((size_t)P, sizeof(int));
    h->msg_send = calloc((size_t)P * per_msg + 1, sizeof(int));
    h->msg_recv = calloc((size_t)P * per_msg + 1, sizeof(int));
    h->msg_send_count = calloc((size_t)P, sizeof(int)), h->msg_recv_count = calloc((size_t)P, sizeof(int));
    h->op1 = calloc((size_t)C, sizeof(moe_comm_op_h));
    if (!h->send1 || !h->recv1 || !h->send2 || !h->recv2 || !h->slot_rows || !h->send1_first || !h->recv1_first ||
        !h->send2_first || !h->recv2_first || !h->next || !h->msg_send || !h->msg_recv || !h->msg_send_count ||
        !h->msg_recv_count || !h->op1) {
        moe_hier_destroy(h);
        MOE_FAIL(MOE_STATUS_NO_MEMORY, fail, "hierarchical dispatch: out of memory for %d ranks and %d chunks", P, C);
    }
    *out = h;
fail:
    return status;
}

/* The rank of node `node` with local index g. */
static inline int rank_at(const moe_hier_h h, int node, int g) { return h->nodes->rank_at[node * h->G + g]; }

/* Both hops' counts for this layer on every rank (see the top of the file), and where each chunk's
 * rows start. */
static moe_status_t exchange_counts(moe_hier_h h, int layer)
{
    moe_status_t status = MOE_STATUS_OK;
    const int P = h->P, C = h->C, G = h->G;
    const moe_comm_nodes_t *nd = h->nodes;
    const moe_slot_table_t *t = &h->table[layer];
    const int *rows1, *entries, *final;
    MOE_CHECK(h->b->counts(h->state, &rows1, &entries), fail);
    MOE_CHECK(h->b->final_rows(h->state, &final), fail);
    memcpy(h->send1, rows1, sizeof(int) * (size_t)C * P);
    const int me = h->rank, my_local = nd->local[me], my_node = nd->node[me];
    int at = 0;
    for (int x = 0; x < P; x++) {
        const int n = t->peer_first[x + 1] - t->peer_first[x];
        const bool rail = nd->local[x] == my_local; /* x is my rail on its node */
        for (int c = 0; c < C; c++) {
            h->msg_send[at++] = rows1[c * P + x];
            h->msg_send[at++] = final[c * P + x];
            for (int g = 0; g < G; g++) h->msg_send[at++] = rail ? final[c * P + rank_at(h, nd->node[x], g)] : 0;
            for (int i = 0; i < n; i++)
                h->msg_send[at++] = entries[(size_t)c * t->replicas + t->peer_rep[t->peer_first[x] + i]];
        }
        h->msg_send_count[x] = C * (2 + G + n);
        h->msg_recv_count[x] = C * (2 + G + t->slots);
    }
    MOE_CHECK(moe_comm_exchange_ints(h->meta_comm, h->msg_send, h->msg_send_count, h->msg_recv, h->msg_recv_count),
              fail);
    memset(h->recv2, 0, sizeof(int) * (size_t)C * P);
    memset(h->send2, 0, sizeof(int) * (size_t)C * P);
    memset(h->slot_rows, 0, sizeof(int) * (size_t)C * (t->slots + 1));
    for (int q = 0, from = 0; q < P; q++) {
        const int via = rank_at(h, my_node, nd->local[q]); /* q's rail on my node */
        for (int c = 0; c < C; c++) {
            h->recv1[c * P + q] = h->msg_recv[from++];
            h->recv2[c * P + via] += h->msg_recv[from++];
            for (int g = 0; g < G; g++) h->send2[c * P + rank_at(h, my_node, g)] += h->msg_recv[from++];
            for (int i = 0; i < t->slots; i++) h->slot_rows[c * t->slots + i] += h->msg_recv[from++];
        }
    }
    int *counts[4] = {h->send1, h->recv1, h->send2, h->recv2};
    int *first[4] = {h->send1_first, h->recv1_first, h->send2_first, h->recv2_first};
    for (int i = 0; i < 4; i++) {
        first[i][0] = 0;
        for (int c = 0; c < C; c++) {
            int sum = 0;
            for (int p = 0; p < P; p++) sum += counts[i][c * P + p];
            first[i][c + 1] = first[i][c] + sum;
        }
    }
fail:
    return status;
}

/* An all-to-all-v of chunk c's rows: send rows from send_first[c] on, grouped by peer (counts
 * send[c][.]), into recv from recv_first[c]. */
static moe_status_t post(moe_hier_h h, int c, const void *send, const int *send_first, const int *send_counts,
                         void *recv, const int *recv_first, const int *recv_counts, size_t row_bytes,
                         moe_comm_op_h *op)
{
    const int P = h->P;
    return moe_comm_alltoallv_start(h->comm, (const char *)send + (size_t)send_first[c] * row_bytes,
                                    send_counts + c * P, (char *)recv + (size_t)recv_first[c] * row_bytes,
                                    recv_counts + c * P, row_bytes, op);
}

/* Wait for op, bracketed as `stage` of (layer, chunk). */
static moe_status_t wait_op(moe_hier_h h, moe_comm_op_h *op, int stage, int layer, int c)
{
    moe_comm_op_h o = *op;
    *op = NULL;
    h->b->mark(h->state, stage, layer, c, true);
    moe_status_t status = moe_comm_op_wait(o);
    h->b->mark(h->state, stage, layer, c, false);
    return status;
}

/* Chunk c's return: wait for its first-hop combine, add the rows into its tokens' outputs. */
static moe_status_t finish_chunk(moe_hier_h h, int layer, int c, int n)
{
    moe_status_t status = wait_op(h, &h->op1[c], MOE_STAGE_COMBINE, layer, c);
    if (status != MOE_STATUS_OK) return status;
    h->b->mark(h->state, MOE_STAGE_UNPERMUTE, layer, c, true);
    status = h->b->unpermute(h->state, c, n);
    h->b->mark(h->state, MOE_STAGE_UNPERMUTE, layer, c, false);
    return status;
}

/* Chunk c from its first hop's arrival to its first-hop combine posted. */
static moe_status_t relay_chunk(moe_hier_h h, int layer, int c, const moe_wire_t *w, const moe_wire_t *rw)
{
    moe_status_t status = MOE_STATUS_OK;
    const int P = h->P;
    const moe_backend_t *b = h->b;
    const moe_slot_table_t *t = &h->table[layer];
    const int n1 = h->recv1_first[c + 1] - h->recv1_first[c], n2 = h->recv2_first[c + 1] - h->recv2_first[c];
    MOE_CHECK(wait_op(h, &h->op1[c], MOE_STAGE_DISPATCH, layer, c), fail);
    /* hop 2: forward inside the node */
    b->mark(h->state, MOE_STAGE_PERMUTE, layer, c, true);
    for (int p = 0, at = h->send2_first[c]; p < P; p++) {
        h->next[p] = at;
        at += h->send2[c * P + p];
    }
    MOE_CHECK(b->relay_pack(h->state, layer, h->recv1_first[c], n1, h->next), fail);
    for (int p = 0, at = h->send2_first[c]; p < P; p++) { /* the homes' counts and the rows must agree */
        at += h->send2[c * P + p];
        if (h->next[p] != at)
            MOE_FAIL(MOE_STATUS_INTERNAL, fail, "hierarchical dispatch: layer %d chunk %d: %d rows forwarded to rank "
                     "%d, the counts said %d", layer, c, h->next[p] - (at - h->send2[c * P + p]), p,
                     h->send2[c * P + p]);
    }
    b->mark(h->state, MOE_STAGE_PERMUTE, layer, c, false);
    MOE_CHECK(post(h, c, rw->send, h->send2_first, h->send2, w->recv, h->recv2_first, h->recv2, w->row_bytes,
                   &h->op2), fail);
    MOE_CHECK(wait_op(h, &h->op2, MOE_STAGE_DISPATCH, layer, c), fail);
    b->mark(h->state, MOE_STAGE_EXPERTS, layer, c, true);
    MOE_CHECK(b->experts(h->state, layer, c, h->recv2_first[c], n2, h->slot_rows + (size_t)c * t->slots), fail);
    b->mark(h->state, MOE_STAGE_EXPERTS, layer, c, false);
    /* back to the rails, summed there, back home */
    MOE_CHECK(post(h, c, w->partial, h->recv2_first, h->recv2, rw->back, h->send2_first, h->send2, w->back_bytes,
                   &h->op2), fail);
    MOE_CHECK(wait_op(h, &h->op2, MOE_STAGE_COMBINE, layer, c), fail);
    b->mark(h->state, MOE_STAGE_UNPERMUTE, layer, c, true);
    MOE_CHECK(b->relay_sum(h->state, h->recv1_first[c], n1), fail);
    b->mark(h->state, MOE_STAGE_UNPERMUTE, layer, c, false);
    MOE_CHECK(post(h, c, rw->partial, h->recv1_first, h->recv1, w->back, h->send1_first, h->send1, w->back_bytes,
                   &h->op1[c]), fail);
fail:
    return status;
}

moe_status_t moe_hier_layer(moe_hier_h h, int layer, int n, moe_layer_metrics_t *m)
{
    moe_status_t status = MOE_STATUS_OK;
    const int P = h->P, C = h->C;
    const moe_backend_t *b = h->b;
    const moe_slot_table_t *t = &h->table[layer];
    b->mark(h->state, MOE_STAGE_PLAN, layer, 0, true);
    MOE_CHECK(exchange_counts(h, layer), fail);
    b->mark(h->state, MOE_STAGE_PLAN, layer, 0, false);
    moe_wire_t w, rw;
    MOE_CHECK(b->buffers(h->state, h->recv2_first[C], &w), fail);
    MOE_CHECK(b->relay_buffers(h->state, h->recv1_first[C], h->send2_first[C], &rw), fail);

    MOE_CHECK(post(h, 0, w.send, h->send1_first, h->send1, rw.recv, h->recv1_first, h->recv1, w.row_bytes, &h->op1[0]),
              fail);
    b->mark(h->state, MOE_STAGE_SHARED, layer, 0, true);
    MOE_CHECK(b->shared(h->state, layer, n), fail);
    b->mark(h->state, MOE_STAGE_SHARED, layer, 0, false);
    for (int c = 0; c < C; c++) {
        if (c + 1 < C)
            MOE_CHECK(post(h, c + 1, w.send, h->send1_first, h->send1, rw.recv, h->recv1_first, h->recv1, w.row_bytes,
                           &h->op1[c + 1]), fail);
        MOE_CHECK(relay_chunk(h, layer, c, &w, &rw), fail);
        if (c > 0) MOE_CHECK(finish_chunk(h, layer, c - 1, n), fail);
    }
    MOE_CHECK(finish_chunk(h, layer, C - 1, n), fail);

    for (int c = 0; c < C; c++) /* first-hop rows cross nodes, second-hop rows stay inside one */
        for (int p = 0; p < P; p++) {
            const int i = c * P + p;
            m->rows_sent += h->send1[i] + h->send2[i];
            m->rows_received += h->recv1[i] + h->recv2[i];
            if (p == h->rank) continue;
            m->copies_inter += h->send1[i];
            m->copies_intra += h->send2[i];
        }
    for (int i = 0; i < C * t->slots; i++) m->load += h->slot_rows[i];
fail:
    for (int c = 0; c < C; c++) /* an error left transfers in flight: the job ends, but not under them */
        if (h->op1[c]) {
            moe_comm_op_wait(h->op1[c]);
            h->op1[c] = NULL;
        }
    if (h->op2) {
        moe_comm_op_wait(h->op2);
        h->op2 = NULL;
    }
    return status;
}
