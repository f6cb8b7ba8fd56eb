/* solve_ilp.c: the decomposed integer program (GLPK), warm-started from greedy, under a time
 * limit.
 *
 * With tokens returning home between layers, layers are independent in the cost model, so each
 * layer is solved on its own, in four steps that keep every subproblem small:
 *
 *   A. replica counts: the redundant slots go to the experts with the largest load per replica,
 *      the load being the largest over the workloads (an expert hot in any workload gets replicas);
 *   B. experts to nodes (GLPK MILP, skipped on one node):
 *        x[e][n] in 0..min(r_e, G)   replicas of e on node n;   sum_n x[e][n] = r_e
 *        sum_e x[e][n] <= G * cap                                slots of a node
 *        sum_e u_w[e] / r_e * x[e][n] <= G * z    for every workload w and node n
 *                                                 (u_w: loads normalised to mean 1 per rank)
 *        v[p][n] <= x[a][n] / r_a,  v[p][n] <= x[b][n] / r_b    pair p = (a, b) together on n
 *        minimise  z + sum_p g_p (1 - sum_n v[p][n])
 *      z is bounded by the warm start's node balance (or 1 + node_slack when that is larger), so
 *      the warm start is feasible and is handed to GLPK as its first incumbent
 *      (glp_ios_heur_sol). The pairs are the most co-activated ones (max_pairs, default
 *      min(8 x experts, 2048 / nodes)); g_p is the pair's weight in the objective (cost.c), scaled
 *      for flat dispatch by the chance that two slots of a node are on one rank. GLPK's relative
 *      gap at the time limit is reported;
 *   C. experts to GPUs inside each node: longest-processing-time packing (a rank never hosts an
 *      expert twice), then a local search over moves and swaps that minimises the node's worst
 *      normalised rank load minus the co-located pair weight (what the flat-dispatch traffic term
 *      rewards), iterated (40 kicks of two hashed swaps, each followed by descent, the best kept).
 *      With flat dispatch the same search then runs over all ranks at once: there only co-location
 *      on a rank saves copies, wherever the rank is, so node boundaries should not limit it;
 *   C''. the hedged solver's local search (solve_hedged.c, hedge 0: the sources' balance) with the
 *      copies counted from the routes (traffic.c), over all ranks and across nodes: B and C price
 *      co-location by pairs, which over-rewards a token's three or more experts on one rank or
 *      node, and B keeps the warm start's node assignment when GLPK finds nothing better in time;
 *   D. replica shares: an LP (GLPK simplex) that minimises the worst workload's max/mean load over
 *      the shares of the replicated experts (each share >= 5% of equal).
 * The layer's result is then compared, on the modelled objective, with the same hosting at equal
 * shares and with the greedy (EPLB) plan itself; the best is kept, so the ILP plan is never worse
 * than its warm start on any layer. With stay residency (options->stay) layers are coupled: they
 * are swept in order with the previous one fixed, which makes "host e where its predecessors sit" a
 * linear term (stay_bonus) in B and C; the guarantee then holds on the total (the greedy plan is
 * returned if it is better). The balance gap is measured against the lower bound
 * max(1, max_w max_e u_w[e] / r_e). Deterministic: no randomness (kicks are hashes); ties go to the
 * lowest index; GLPK is deterministic for a given input. A time limit that cuts GLPK or the local
 * search short can make results depend on machine speed; the warm start bounds the damage. */
#include <glpk.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "placement/place-impl.h"

typedef struct {
    const moe_workload_h *w;
    int n;
    const moe_place_options_t *o;
    const moe_place_layout_t *lay;
    double rank_weight, node_weight;
    double *u;     /* [n][E] normalised loads of the current layer */
    double *pairc; /* [E][E] mean over workloads of coact / pairs */
    double *bonus; /* [E][R] stay residency: objective decrease per unit share of e on rank r, or
                      NULL */
    double *bonus_node; /* [E][N] the same for the node part only */
} layer_ctx_t;

/* ---------------------------------------------------------------- B: experts to nodes */

typedef struct {
    const double *warm; /* 1-based column values */
    bool injected;
    double gap;
} cb_info_t;

static void ilp_callback(glp_tree *tree, void *info)
{
    cb_info_t *cb = info;
    switch (glp_ios_reason(tree)) {
    case GLP_IHEUR:
        if (!cb->injected && cb->warm) {
            glp_ios_heur_sol(tree, cb->warm);
            cb->injected = true;
        }
        break;
    case GLP_ISELECT:
    case GLP_IBINGO: {
        double g = glp_ios_mip_gap(tree);
        if (isfinite(g)) cb->gap = g;
        break;
    }
    default:
        break;
    }
}

typedef struct {
    int a, b;
    double c;
} pair_t;

static int pair_cmp(const void *pa, const void *pb)
{
    const pair_t *a = pa, *b = pb;
    if (a->c != b->c) return a->c > b->c ? -1 : 1;
    if (a->a != b->a) return a->a - b->a;
    return a->b - b->b;
}

/* Node assignment x[E][N] for one layer; warm (same layout) is the start. Returns the GLPK gap
 * (NaN when GLPK was not run) in *gap and whether it was proven in *proven. */
static moe_status_t nodes_ilp(const layer_ctx_t *c, const int *counts, const int *warm_x,
                              const int *current_x, double seconds, int *x, double *gap,
                              bool *proven)
{
    moe_status_t status = MOE_STATUS_OK;
    const moe_place_layout_t *lay = c->lay;
    int E = lay->experts, N = lay->nodes, G = lay->ranks_per_node, W = c->n;
    memcpy(x, warm_x, sizeof(int) * E * N);
    *gap = NAN;
    *proven = false;
    if (N == 1) {
        *gap = 0;
        *proven = true;
        return MOE_STATUS_OK;
    }
    /* pairs */
    /* keep the subproblem small: at most 8 pairs per expert and 2048 pair columns in all */
    int max_pairs = c->o->max_pairs > 0 ? c->o->max_pairs : (8 * E < 2048 / N ? 8 * E : 2048 / N);
    pair_t *pairs = malloc(sizeof(pair_t) * ((size_t)E * (E - 1) / 2 + 1));
    int *ia = NULL, *ja = NULL;
    double *ar = NULL, *warm = NULL;
    glp_prob *P = NULL;
    MOE_CHECK_ALLOC(pairs, done);
    int np = 0;
    for (int a = 0; a < E; a++)
        for (int b = a + 1; b < E; b++)
            if (c->pairc[(size_t)a * E + b] > 0)
                pairs[np++] = (pair_t){a, b, c->pairc[(size_t)a * E + b]};
    qsort(pairs, (size_t)np, sizeof(pair_t), pair_cmp);
    if (np > max_pairs) np = max_pairs;
    double slots_node = (double)G * lay->rank_cap;
    double rho = c->o->hierarchical ? 0 : (lay->rank_cap - 1.0) / fmax(1.0, slots_node - 1.0);
    double gscale = c->node_weight + c->rank_weight * rho;

    /* columns: x[e][n] (E*N), z, v[p][n] (np*N), keep[e][n] for current (E*N) */
    bool mig = current_x != NULL && c->o->move_cost > 0;
    int col_x = 1, col_z = 1 + E * N, col_v = col_z + 1, col_k = col_v + np * N;
    int ncols = col_k - 1 + (mig ? E * N : 0);
    /* rows: E (replicas) + N (slots) + W*N (balance) + 2*np*N (pairs) + 2*E*N (keep) */
    int nrows = E + N + W * N + 2 * np * N + (mig ? 2 * E * N : 0);
    size_t nnz = (size_t)E * N + (size_t)E * N + (size_t)W * N * (E + 1) + (size_t)4 * np * N +
                 (mig ? (size_t)2 * E * N : 0) + 1;
    ia = malloc(sizeof(int) * (nnz + 1));
    ja = malloc(sizeof(int) * (nnz + 1));
    ar = malloc(sizeof(double) * (nnz + 1));
    warm = calloc((size_t)ncols + 1, sizeof(double));
    MOE_CHECK_ALLOC(ia, done);
    MOE_CHECK_ALLOC(ja, done);
    MOE_CHECK_ALLOC(ar, done);
    MOE_CHECK_ALLOC(warm, done);

    /* the warm start's node balance bounds z */
    double zwarm = 0;
    for (int w = 0; w < W; w++)
        for (int n = 0; n < N; n++) {
            double s = 0;
            for (int e = 0; e < E; e++)
                s += c->u[(size_t)w * E + e] / counts[e] * warm_x[e * N + n];
            zwarm = fmax(zwarm, s / G);
        }
    double zmax = fmax(zwarm, 1.0 + c->o->node_slack) + 1e-9;

    P = glp_create_prob();
    glp_set_obj_dir(P, GLP_MIN);
    glp_add_cols(P, ncols);
    for (int e = 0; e < E; e++)
        for (int n = 0; n < N; n++) {
            int j = col_x + e * N + n, hi = counts[e] < G ? counts[e] : G;
            glp_set_col_kind(P, j, GLP_IV);
            if (hi > 0)
                glp_set_col_bnds(P, j, GLP_DB, 0, hi);
            else
                glp_set_col_bnds(P, j, GLP_FX, 0, 0);
            warm[j] = warm_x[e * N + n];
            if (c->bonus_node) glp_set_obj_coef(P, j, -c->bonus_node[e * N + n] / counts[e]);
        }
    glp_set_col_bnds(P, col_z, GLP_DB, 0, zmax);
    glp_set_obj_coef(P, col_z, 1.0);
    warm[col_z] = zwarm;
    double const_obj = 0;
    for (int p = 0; p < np; p++) {
        double g = gscale * pairs[p].c;
        const_obj += g;
        for (int n = 0; n < N; n++) {
            int j = col_v + p * N + n;
            glp_set_col_bnds(P, j, GLP_DB, 0, 1);
            glp_set_obj_coef(P, j, -g);
            int a = pairs[p].a, b = pairs[p].b;
            warm[j] =
                fmin((double)warm_x[a * N + n] / counts[a], (double)warm_x[b * N + n] / counts[b]);
        }
    }
    glp_set_obj_coef(P, 0, const_obj);
    if (mig)
        for (int e = 0; e < E; e++)
            for (int n = 0; n < N; n++) {
                int j = col_k + e * N + n;
                int cur = current_x[e * N + n];
                if (cur > 0)
                    glp_set_col_bnds(P, j, GLP_DB, 0, cur);
                else
                    glp_set_col_bnds(P, j, GLP_FX, 0, 0);
                glp_set_obj_coef(P, j, -c->o->move_cost);
                glp_set_obj_coef(P, 0, glp_get_obj_coef(P, 0) + c->o->move_cost * cur);
                warm[j] = fmin(cur, warm_x[e * N + n]);
            }

    glp_add_rows(P, nrows);
    size_t k = 0;
    int row = 1;
    for (int e = 0; e < E; e++, row++) {
        glp_set_row_bnds(P, row, GLP_FX, counts[e], counts[e]);
        for (int n = 0; n < N; n++) ia[++k] = row, ja[k] = col_x + e * N + n, ar[k] = 1;
    }
    for (int n = 0; n < N; n++, row++) {
        glp_set_row_bnds(P, row, GLP_UP, 0, slots_node);
        for (int e = 0; e < E; e++) ia[++k] = row, ja[k] = col_x + e * N + n, ar[k] = 1;
    }
    for (int w = 0; w < W; w++)
        for (int n = 0; n < N; n++, row++) {
            glp_set_row_bnds(P, row, GLP_UP, 0, 0);
            for (int e = 0; e < E; e++) {
                double coef = c->u[(size_t)w * E + e] / counts[e];
                if (coef != 0) ia[++k] = row, ja[k] = col_x + e * N + n, ar[k] = coef;
            }
            ia[++k] = row, ja[k] = col_z, ar[k] = -G;
        }
    for (int p = 0; p < np; p++)
        for (int n = 0; n < N; n++)
            for (int side = 0; side < 2; side++, row++) {
                int e = side ? pairs[p].b : pairs[p].a;
                glp_set_row_bnds(P, row, GLP_UP, 0, 0);
                ia[++k] = row, ja[k] = col_v + p * N + n, ar[k] = 1;
                ia[++k] = row, ja[k] = col_x + e * N + n, ar[k] = -1.0 / counts[e];
            }
    if (mig)
        for (int e = 0; e < E; e++)
            for (int n = 0; n < N; n++, row++) {
                glp_set_row_bnds(P, row, GLP_UP, 0, 0);
                ia[++k] = row, ja[k] = col_k + e * N + n, ar[k] = 1;
                ia[++k] = row, ja[k] = col_x + e * N + n, ar[k] = -1;
            }
    /* rows reserved for symmetry with nrows when mig: the second block is unused */
    for (; row <= nrows; row++) glp_set_row_bnds(P, row, GLP_FR, 0, 0);
    glp_load_matrix(P, (int)k, ia, ja, ar);

    glp_smcp smcp;
    glp_init_smcp(&smcp);
    smcp.msg_lev = GLP_MSG_OFF;
    smcp.tm_lim = (int)fmax(20, seconds * 800);
    int rc = glp_simplex(P, &smcp);
    if (rc != 0 || glp_get_status(P) != GLP_OPT) {
        moe_info("place: node LP relaxation stopped (GLPK %d); keeping the warm start", rc);
        goto done;
    }
    glp_iocp iocp;
    glp_init_iocp(&iocp);
    iocp.msg_lev = GLP_MSG_OFF;
    iocp.presolve = GLP_OFF;
    iocp.mip_gap = 1e-4;
    iocp.tm_lim = (int)fmax(10, seconds * 1000);
    iocp.fp_heur = GLP_OFF;
    iocp.br_tech = GLP_BR_DTH;
    iocp.bt_tech = GLP_BT_BLB;
    cb_info_t cb = {.warm = warm, .injected = false, .gap = NAN};
    iocp.cb_func = ilp_callback;
    iocp.cb_info = &cb;
    rc = glp_intopt(P, &iocp);
    int ms = glp_mip_status(P);
    if (ms == GLP_OPT || ms == GLP_FEAS) {
        for (int e = 0; e < E; e++)
            for (int n = 0; n < N; n++)
                x[e * N + n] = (int)lround(glp_mip_col_val(P, col_x + e * N + n));
        /* sanity: counts and slots (GLPK's tolerances) */
        bool ok = true;
        for (int e = 0; e < E; e++) {
            int s = 0;
            for (int n = 0; n < N; n++) s += x[e * N + n];
            ok &= s == counts[e];
        }
        for (int n = 0; n < N; n++) {
            int s = 0;
            for (int e = 0; e < E; e++) s += x[e * N + n];
            ok &= s <= slots_node;
        }
        if (!ok) memcpy(x, warm_x, sizeof(int) * E * N);
        *proven = ms == GLP_OPT && rc == 0;
        *gap = *proven ? 0 : cb.gap;
        if (!isfinite(*gap)) {
            double best = glp_mip_obj_val(P), bound = glp_get_obj_val(P);
            *gap = fabs(best) > 1e-12 ? fmax(0, (best - bound) / fabs(best)) : 0;
        }
    }
done:
    if (P) glp_delete_prob(P);
    free(warm);
    free(ar);
    free(ja);
    free(ia);
    free(pairs);
    return status;
}

/* ---------------------------------------------------------------- C: GPUs inside a node */

typedef struct {
    int expert;
    double s; /* share 1 / r_e */
    int rank; /* local rank index 0..G-1 */
} slot_item_t;

/* Worst normalised load over the node's ranks and workloads. */
static double node_max(const double *load, int G, int W)
{
    double m = 0;
    for (int i = 0; i < G * W; i++) m = load[i] > m ? load[i] : m;
    return m;
}

/* Pack the replicas xn[e] onto the G ranks base..base+G-1 (LPT, or as in `init` when given), then
 * improve by local search; writes their shares into share. */
static moe_status_t pack_group(const layer_ctx_t *c, const int *counts, const int *xn /* [E] */,
                               int base, int G, const double *init /* [E][R] or NULL */,
                               double deadline, const double *cur /* [E][R] or NULL */,
                               double *share /* [E][R] */)
{
    moe_status_t status = MOE_STATUS_OK;
    const moe_place_layout_t *lay = c->lay;
    int E = lay->experts, R = lay->ranks, W = c->n, cap = lay->rank_cap;
    const int node = base; /* for messages */
    int ni = 0;
    for (int e = 0; e < E; e++) ni += xn[e];
    slot_item_t *it = malloc(sizeof(slot_item_t) * (ni + 1));
    double *load = calloc((size_t)G * W, sizeof(double));
    double *A = calloc((size_t)ni * ni + 1, sizeof(double));
    double *aff = calloc((size_t)ni * G + 1, sizeof(double));
    int *used = calloc((size_t)G, sizeof(int));
    double *tmp = malloc(sizeof(double) * G * W);
    MOE_CHECK_ALLOC(it, done);
    MOE_CHECK_ALLOC(load, done);
    MOE_CHECK_ALLOC(A, done);
    MOE_CHECK_ALLOC(aff, done);
    MOE_CHECK_ALLOC(used, done);
    MOE_CHECK_ALLOC(tmp, done);
    int k = 0;
    for (int e = 0; e < E; e++)
        for (int i = 0; i < xn[e]; i++) it[k++] = (slot_item_t){e, 1.0 / counts[e], -1};
    /* LPT on the summed normalised weight */
    for (int a = 0; a < ni; a++) { /* insertion sort: heaviest first, then by expert */
        for (int b = a; b > 0; b--) {
            double wa = 0, wb = 0;
            for (int w = 0; w < W; w++) {
                wa += c->u[(size_t)w * E + it[b].expert] * it[b].s;
                wb += c->u[(size_t)w * E + it[b - 1].expert] * it[b - 1].s;
            }
            if (wa > wb || (wa == wb && it[b].expert < it[b - 1].expert)) {
                slot_item_t t = it[b];
                it[b] = it[b - 1];
                it[b - 1] = t;
            } else {
                break;
            }
        }
    }
#define U(i, w) (c->u[(size_t)(w)*E + it[i].expert] * it[i].s)
    /* moving an expert onto a rank that does not host it in the current plan costs move_cost */
    double mc = cur ? c->o->move_cost : 0;
    /* ... and with stay residency, hosting an expert where its predecessors sit saves copies: both
     * are linear per (item, rank), so they share one term */
#define MOVE(i, g)                                                                                 \
    ((mc > 0 && !(cur[(size_t)it[i].expert * R + base + (g)] > 0) ? mc : 0) -                      \
     (c->bonus ? it[i].s * c->bonus[(size_t)it[i].expert * R + base + (g)] : 0))
    for (int i = 0; i < ni && init; i++) { /* start from init: the k-th replica on the k-th host */
        int kth = 0;
        for (int j = 0; j < i; j++) kth += it[j].expert == it[i].expert;
        for (int g = 0; g < G && it[i].rank < 0; g++)
            if (init[(size_t)it[i].expert * R + base + g] > 0 && kth-- == 0) it[i].rank = g;
        if (it[i].rank < 0)
            MOE_FAIL(MOE_STATUS_INTERNAL, done, "place: start has too few hosts of expert %d",
                     it[i].expert);
        used[it[i].rank]++;
        for (int w = 0; w < W; w++) load[it[i].rank * W + w] += U(i, w);
    }
    for (int i = 0; i < ni && !init; i++) {
        int best = -1;
        double best_v = 0;
        for (int g = 0; g < G; g++) {
            if (used[g] >= cap) continue;
            bool dup = false;
            for (int j = 0; j < i; j++) dup |= it[j].rank == g && it[j].expert == it[i].expert;
            if (dup) continue;
            double v = 0;
            for (int w = 0; w < W; w++) v = fmax(v, load[g * W + w] + U(i, w));
            v += MOVE(i, g);
            if (best < 0 || v < best_v) best = g, best_v = v;
        }
        if (best < 0)
            MOE_FAIL(MOE_STATUS_SOLVER_ERROR, done,
                     "place: ranks %d..: no rank can take a replica "
                     "of expert %d",
                     node, it[i].expert);
        it[i].rank = best;
        used[best]++;
        for (int w = 0; w < W; w++) load[best * W + w] += U(i, w);
    }
    /* pair weights among the node's items, and affinity of each item to each rank */
    for (int i = 0; i < ni; i++)
        for (int j = 0; j < ni; j++)
            if (i != j && it[i].expert != it[j].expert)
                A[(size_t)i * ni + j] = c->rank_weight * it[i].s * it[j].s *
                                        c->pairc[(size_t)it[i].expert * E + it[j].expert];
    for (int i = 0; i < ni; i++)
        for (int j = 0; j < ni; j++) aff[(size_t)i * G + it[j].rank] += A[(size_t)i * ni + j];
    /* local search: first-improvement moves and swaps to a local optimum, then an iterated local
     * search: a fixed number of kicks (two hashed swaps each, so the result does not depend on the
     * machine unless the deadline stops it), each followed by descent, keeping the best. */
    unsigned char *host = calloc((size_t)E * G, 1); /* replicas of e on local rank g */
    int *best_rank = malloc(sizeof(int) * (ni + 1));
    int *best_used = malloc(sizeof(int) * G);
    double *best_load = malloc(sizeof(double) * G * W);
    double *best_aff = malloc(sizeof(double) * ((size_t)ni * G + 1));
    MOE_CHECK_ALLOC(host, done_ls);
    MOE_CHECK_ALLOC(best_rank, done_ls);
    MOE_CHECK_ALLOC(best_used, done_ls);
    MOE_CHECK_ALLOC(best_load, done_ls);
    MOE_CHECK_ALLOC(best_aff, done_ls);
    for (int i = 0; i < ni; i++) host[(size_t)it[i].expert * G + it[i].rank]++;
    double gain = 0, moves = 0;
    for (int i = 0; i < ni; i++) {
        gain += 0.5 * aff[(size_t)i * G + it[i].rank];
        moves += MOVE(i, it[i].rank);
    }
    double cur_max = node_max(load, G, W);
    double best_f = INFINITY;
    const int kicks = ni < 8 ? 0 : 40;
    for (int kick = 0; kick <= kicks && moe_now() < deadline; kick++) {
        /* kick: two legal swaps chosen by a hash */
        for (int s2 = 0, tries = 0; kick > 0 && s2 < 2 && tries < 50; tries++) {
            uint64_t h = moe_hash(0x6b69636bULL, (uint64_t)kick, (uint64_t)tries, (uint64_t)base,
                                  (uint64_t)ni);
            int i = (int)(h % (uint64_t)ni), j = (int)((h >> 24) % (uint64_t)ni);
            int r1 = it[i].rank, r2 = it[j].rank;
            if (r1 == r2 || it[i].expert == it[j].expert || host[(size_t)it[i].expert * G + r2] ||
                host[(size_t)it[j].expert * G + r1])
                continue;
            for (int w = 0; w < W; w++) {
                load[r1 * W + w] += U(j, w) - U(i, w);
                load[r2 * W + w] += U(i, w) - U(j, w);
            }
            gain += aff[(size_t)i * G + r2] - aff[(size_t)i * G + r1] + aff[(size_t)j * G + r1] -
                    aff[(size_t)j * G + r2] - 2 * A[(size_t)i * ni + j];
            moves += MOVE(i, r2) - MOVE(i, r1) + MOVE(j, r1) - MOVE(j, r2);
            for (int m = 0; m < ni; m++) {
                aff[(size_t)m * G + r1] += A[(size_t)m * ni + j] - A[(size_t)m * ni + i];
                aff[(size_t)m * G + r2] += A[(size_t)m * ni + i] - A[(size_t)m * ni + j];
            }
            host[(size_t)it[i].expert * G + r1]--, host[(size_t)it[i].expert * G + r2]++;
            host[(size_t)it[j].expert * G + r2]--, host[(size_t)it[j].expert * G + r1]++;
            it[i].rank = r2;
            it[j].rank = r1;
            cur_max = node_max(load, G, W);
            s2++;
        }
        bool improved = true;
        int rounds = 0;
        while (improved && moe_now() < deadline && rounds < 200) {
            improved = false;
            rounds++;
            for (int i = 0; i < ni; i++) {
                for (int j = -G; j < ni; j++) {
                    /* j < 0: move i to local rank j + G (if it has a free slot) */
                    int r1 = it[i].rank, r2 = j < 0 ? j + G : it[j].rank;
                    if (r1 == r2) continue;
                    if (j < 0 && used[r2] >= cap) continue;
                    if (j >= 0 && it[j].expert == it[i].expert) continue;
                    if (host[(size_t)it[i].expert * G + r2]) continue;
                    if (j >= 0 && host[(size_t)it[j].expert * G + r1]) continue;
                    memcpy(tmp, load, sizeof(double) * G * W);
                    for (int w = 0; w < W; w++) {
                        tmp[r1 * W + w] -= U(i, w);
                        tmp[r2 * W + w] += U(i, w);
                        if (j >= 0) {
                            tmp[r2 * W + w] -= U(j, w);
                            tmp[r1 * W + w] += U(j, w);
                        }
                    }
                    double new_max = node_max(tmp, G, W);
                    double dgain = aff[(size_t)i * G + r2] - aff[(size_t)i * G + r1];
                    if (j >= 0)
                        dgain += aff[(size_t)j * G + r1] - aff[(size_t)j * G + r2] -
                                 2 * A[(size_t)i * ni + j];
                    double dmove = MOVE(i, r2) - MOVE(i, r1);
                    if (j >= 0) dmove += MOVE(j, r1) - MOVE(j, r2);
                    double delta = (new_max - cur_max) - dgain + dmove;
                    if (delta >= -1e-12) continue;
                    /* apply */
                    memcpy(load, tmp, sizeof(double) * G * W);
                    cur_max = new_max;
                    gain += dgain;
                    moves += dmove;
                    for (int m = 0; m < ni; m++) {
                        aff[(size_t)m * G + r1] -= A[(size_t)m * ni + i];
                        aff[(size_t)m * G + r2] += A[(size_t)m * ni + i];
                        if (j >= 0) {
                            aff[(size_t)m * G + r2] -= A[(size_t)m * ni + j];
                            aff[(size_t)m * G + r1] += A[(size_t)m * ni + j];
                        }
                    }
                    host[(size_t)it[i].expert * G + r1]--, host[(size_t)it[i].expert * G + r2]++;
                    it[i].rank = r2;
                    if (j >= 0) {
                        host[(size_t)it[j].expert * G + r2]--,
                            host[(size_t)it[j].expert * G + r1]++;
                        it[j].rank = r1;
                    } else {
                        used[r1]--;
                        used[r2]++;
                    }
                    improved = true;
                }
            }
        }
        double f = cur_max - gain + moves;
        if (f < best_f - 1e-12) { /* keep */
            best_f = f;
            for (int i = 0; i < ni; i++) best_rank[i] = it[i].rank;
            memcpy(best_used, used, sizeof(int) * G);
            memcpy(best_load, load, sizeof(double) * G * W);
            memcpy(best_aff, aff, sizeof(double) * ni * G);
        } else { /* back to the best */
            for (int i = 0; i < ni; i++) {
                host[(size_t)it[i].expert * G + it[i].rank]--;
                it[i].rank = best_rank[i];
                host[(size_t)it[i].expert * G + it[i].rank]++;
            }
            memcpy(used, best_used, sizeof(int) * G);
            memcpy(load, best_load, sizeof(double) * G * W);
            memcpy(aff, best_aff, sizeof(double) * ni * G);
            cur_max = node_max(load, G, W);
            gain = 0;
            moves = 0;
            for (int i = 0; i < ni; i++) {
                gain += 0.5 * aff[(size_t)i * G + it[i].rank];
                moves += MOVE(i, it[i].rank);
            }
        }
    }
done_ls:
    free(best_aff);
    free(best_load);
    free(best_used);
    free(best_rank);
    free(host);
    if (status != MOE_STATUS_OK) goto done;
#undef U
#undef MOVE
    for (int i = 0; i < ni; i++) share[(size_t)it[i].expert * R + base + it[i].rank] = it[i].s;
done:
    free(tmp);
    free(used);
    free(aff);
    free(A);
    free(load);
    free(it);
    return status;
}

/* ---------------------------------------------------------------- D: replica shares */

static void shares_lp(const layer_ctx_t *c, const int *counts, double seconds, double *share)
{
    const moe_place_layout_t *lay = c->lay;
    int E = lay->experts, R = lay->ranks, W = c->n;
    int nv = 0;
    for (int e = 0; e < E; e++)
        if (counts[e] > 1) nv += counts[e];
    if (nv == 0) return;
    int *ve = malloc(sizeof(int) * nv), *vr = malloc(sizeof(int) * nv);
    size_t nnz = (size_t)nv + (size_t)W * (nv + R) + 1;
    int *ia = malloc(sizeof(int) * (nnz + 1)), *ja = malloc(sizeof(int) * (nnz + 1));
    double *ar = malloc(sizeof(double) * (nnz + 1));
    double *fixed = calloc((size_t)W * R, sizeof(double));
    glp_prob *P = NULL;
    if (!ve || !vr || !ia || !ja || !ar || !fixed) goto done;
    int v = 0;
    for (int e = 0; e < E; e++) {
        for (int r = 0; r < R; r++) {
            double s = share[(size_t)e * R + r];
            if (s <= 0) continue;
            if (counts[e] > 1)
                ve[v] = e, vr[v++] = r;
            else
                for (int w = 0; w < W; w++) fixed[(size_t)w * R + r] += c->u[(size_t)w * E + e] * s;
        }
    }
    P = glp_create_prob();
    glp_set_obj_dir(P, GLP_MIN);
    glp_add_cols(P, nv + 1);
    int col_z = nv + 1;
    for (int i = 0; i < nv; i++) glp_set_col_bnds(P, i + 1, GLP_DB, 0.05 / counts[ve[i]], 1.0);
    glp_set_col_bnds(P, col_z, GLP_LO, 0, 0);
    glp_set_obj_coef(P, col_z, 1.0);
    /* rows: one per replicated expert (sum = 1), W*R balance rows */
    int nexp = 0;
    for (int e = 0; e < E; e++) nexp += counts[e] > 1;
    glp_add_rows(P, nexp + W * R);
    size_t k = 0;
    int row = 1;
    for (int e = 0; e < E; e++) {
        if (counts[e] <= 1) continue;
        glp_set_row_bnds(P, row, GLP_FX, 1, 1);
        for (int i = 0; i < nv; i++)
            if (ve[i] == e) ia[++k] = row, ja[k] = i + 1, ar[k] = 1;
        row++;
    }
    for (int w = 0; w < W; w++)
        for (int r = 0; r < R; r++, row++) {
            glp_set_row_bnds(P, row, GLP_UP, 0, -fixed[(size_t)w * R + r]);
            for (int i = 0; i < nv; i++)
                if (vr[i] == r && c->u[(size_t)w * E + ve[i]] != 0)
                    ia[++k] = row, ja[k] = i + 1, ar[k] = c->u[(size_t)w * E + ve[i]];
            ia[++k] = row, ja[k] = col_z, ar[k] = -1;
        }
    glp_load_matrix(P, (int)k, ia, ja, ar);
    glp_smcp smcp;
    glp_init_smcp(&smcp);
    smcp.msg_lev = GLP_MSG_OFF;
    smcp.tm_lim = (int)fmax(50, seconds * 1000);
    if (glp_simplex(P, &smcp) == 0 && glp_get_status(P) == GLP_OPT) {
        for (int i = 0; i < nv; i++) share[(size_t)ve[i] * R + vr[i]] = glp_get_col_prim(P, i + 1);
        /* renormalise (simplex tolerances) */
        for (int e = 0; e < E; e++) {
            if (counts[e] <= 1) continue;
            double s = 0;
            for (int r = 0; r < R; r++) s += share[(size_t)e * R + r];
            for (int r = 0; r < R; r++) share[(size_t)e * R + r] /= s;
        }
    }
done:
    if (P) glp_delete_prob(P);
    free(fixed);
    free(ar);
    free(ja);
    free(ia);
    free(vr);
    free(ve);
}

/* ---------------------------------------------------------------- driver */

/* Stay residency (cost.c): with the previous layer fixed, the traffic term per workload is, to
 * first order, phi - ((phi - 1) ln + lr) / P, linear in this layer's shares: bonus[e][r] is what a
 * unit share of e on rank r takes off the objective; bonus_node[e][n] its node part. */
static void stay_bonus(const moe_workload_h *w, int n, int l, const double *prev,
                       const moe_place_layout_t *lay, const moe_place_options_t *o, double *fprev,
                       double *bonus, double *bonus_node)
{
    int E = lay->experts, R = lay->ranks, G = lay->ranks_per_node, N = lay->nodes;
    memset(bonus, 0, sizeof(double) * E * R);
    memset(bonus_node, 0, sizeof(double) * E * N);
    memset(fprev, 0, sizeof(double) * E * N);
    for (int a = 0; a < E; a++)
        for (int r = 0; r < R; r++) fprev[(size_t)a * N + r / G] += prev[(size_t)a * R + r];
    for (int i = 0; i < n; i++) {
        if (!w[i]->trans || w[i]->tokens <= 0) continue;
        double pairs = 0, prev_pairs = 0;
        for (int e = 0; e < E; e++) {
            pairs += w[i]->loads[(size_t)l * E + e];
            prev_pairs += w[i]->loads[(size_t)(l - 1) * E + e];
        }
        double kp = prev_pairs / w[i]->tokens;
        if (pairs <= 0 || kp <= 0) continue;
        double scale = o->copy_cost / (n * kp * pairs);
        const double *T = w[i]->trans + (size_t)(l - 1) * E * E;
        for (int a = 0; a < E; a++) {
            for (int b = 0; b < E; b++) {
                double t = T[(size_t)a * E + b] * scale;
                if (t <= 0) continue;
                for (int nd = 0; nd < N; nd++) {
                    double f = fprev[(size_t)a * N + nd];
                    if (f <= 0) continue;
                    double v = t * (o->inter_factor - 1) * f;
                    bonus_node[(size_t)b * N + nd] += v;
                    for (int r = nd * G; r < nd * G + G; r++)
                        bonus[(size_t)b * R + r] += v + t * prev[(size_t)a * R + r];
                }
            }
        }
    }
}

/* move_cost x hosts in share that the current plan does not have. */
static double move_penalty(const double *share, const double *cur, int E, int R,
                           const moe_place_options_t *o)
{
    if (!cur || o->move_cost <= 0) return 0;
    int moved = 0;
    for (size_t q = 0; q < (size_t)E * R; q++) moved += share[q] > 0 && !(cur[q] > 0);
    return o->move_cost * moved;
}

/* The current plan's layer is a candidate only if it respects this request's slots. */
static bool counts_fit(const double *share, int E, int R, int cap)
{
    for (int r = 0; r < R; r++) {
        int k = 0;
        for (int e = 0; e < E; e++) k += share[(size_t)e * R + r] > 0;
        if (k > cap) return false;
    }
    return true;
}

static void node_counts(const double *share, int E, int R, int G, int *x)
{
    int N = R / G;
    memset(x, 0, sizeof(int) * E * N);
    for (int e = 0; e < E; e++)
        for (int r = 0; r < R; r++)
            if (share[(size_t)e * R + r] > 0) x[e * N + r / G]++;
}

moe_status_t moe_place_solve_ilp(const moe_workload_h *w, int n, const moe_place_options_t *o,
                                 const moe_plan_h current, moe_plan_h *out, moe_place_report_t *rep)
{
    moe_status_t status = MOE_STATUS_OK;
    /* 5% of the limit is kept for what follows the layers (building the plan, the caller's figures)
     */
    double t0 = moe_now(), deadline = t0 + 0.95 * o->time_limit;
    moe_place_layout_t lay;
    MOE_CHECK(moe_place_layout_make(w, n, o, &lay), fail);
    int L = lay.layers, E = lay.experts, R = lay.ranks, G = lay.ranks_per_node, N = lay.nodes;
    moe_plan_h warm_plan = NULL;
    moe_place_options_t og = *o;
    og.solver = MOE_PLACE_SOLVER_GREEDY;
    MOE_CHECK(moe_place_solve_simple(w, n, &og, &warm_plan), fail);
    double *shares = moe_calloc((size_t)L * E * R, sizeof(double));
    double *cand = malloc(sizeof(double) * E * R), *equal = malloc(sizeof(double) * E * R);
    double *warm_share = malloc(sizeof(double) * E * R),
           *cur_share = malloc(sizeof(double) * E * R);
    double *weight = malloc(sizeof(double) * E);
    int *counts = malloc(sizeof(int) * E);
    int *wx = malloc(sizeof(int) * E * N), *x = malloc(sizeof(int) * E * N);
    int *cx = malloc(sizeof(int) * E * N), *xn = malloc(sizeof(int) * E);
    layer_ctx_t c = {.w = w, .n = n, .o = o, .lay = &lay};
    c.u = malloc(sizeof(double) * n * E);
    c.pairc = malloc(sizeof(double) * E * E);
    double *bonus = o->stay ? malloc(sizeof(double) * E * R) : NULL;
    double *bonus_node = o->stay ? malloc(sizeof(double) * E * N) : NULL;
    double *fprev = o->stay ? malloc(sizeof(double) * E * N) : NULL;
    moe_place_pair_weights(o, &c.rank_weight, &c.node_weight);
    MOE_CHECK_ALLOC(shares, done);
    if (!cand || !equal || !warm_share || !cur_share || !weight || !counts || !wx || !x || !cx ||
        !xn || !c.u || !c.pairc || (o->stay && (!bonus || !bonus_node || !fprev)))
        MOE_FAIL(MOE_STATUS_NO_MEMORY, done, "place: out of memory for %d experts x %d ranks", E,
                 R);
    double gap_max = 0, bal_gap = 0, warm_total = 0;
    int proven = 0, subproblems = 0, kept_warm = 0, unsolved = 0;
    for (int l = 0; l < L; l++) {
        double left = deadline - moe_now(), per_layer = fmax(0.02, left / (L - l));
        /* context: normalised loads and pair weights */
        for (int i = 0; i < n; i++)
            for (int e = 0; e < E; e++) c.u[(size_t)i * E + e] = moe_place_norm_load(w[i], l, e, R);
        memset(c.pairc, 0, sizeof(double) * E * E);
        for (int i = 0; i < n; i++) {
            if (!w[i]->coact) continue;
            double pairs = 0;
            for (int e = 0; e < E; e++) pairs += w[i]->loads[(size_t)l * E + e];
            if (pairs <= 0) continue;
            const double *C = w[i]->coact + (size_t)l * E * E;
            for (size_t q = 0; q < (size_t)E * E; q++) c.pairc[q] += C[q] / pairs / n;
        }
        /* stay residency: what hosting e on rank r saves, given the previous layer as decided */
        c.bonus = c.bonus_node = NULL;
        if (o->stay && l > 0) {
            const double *prev = shares + (size_t)(l - 1) * E * R;
            stay_bonus(w, n, l, prev, &lay, o, fprev, bonus, bonus_node);
            c.bonus = bonus;
            c.bonus_node = bonus_node;
        }
        const double *prev_l = l > 0 ? shares + (size_t)(l - 1) * E * R : NULL;
        /* A: counts; the start: greedy packing with these counts */
        moe_place_replica_counts(w, n, l, o->replicas, R, counts);
        for (int e = 0; e < E; e++) {
            weight[e] = 0;
            for (int i = 0; i < n; i++) weight[e] = fmax(weight[e], c.u[(size_t)i * E + e]);
        }
        MOE_CHECK(moe_place_greedy_layer(&lay, counts, weight, cand), done);
        node_counts(cand, E, R, G, wx);
        int *cxp = NULL;
        if (current && moe_plan_ranks(current) == R) {
            moe_place_plan_layer_shares(current, l, cur_share);
            node_counts(cur_share, E, R, G, cx);
            cxp = cx;
        }
        /* B */
        double gap;
        bool pr;
        MOE_CHECK(nodes_ilp(&c, counts, wx, cxp, fmin(per_layer * 0.7, 2.0), x, &gap, &pr), done);
        if (N > 1) {
            subproblems++;
            proven += pr;
            if (isfinite(gap))
                gap_max = fmax(gap_max, gap);
            else
                unsolved++;
        }
        /* C */
        memset(cand, 0, sizeof(double) * E * R);
        double node_deadline = moe_now() + per_layer * (N > 1 && !o->hierarchical ? 0.1 : 0.25);
        for (int nd = 0; nd < N; nd++) {
            for (int e = 0; e < E; e++) xn[e] = x[e * N + nd];
            MOE_CHECK(pack_group(&c, counts, xn, nd * G, G, NULL, node_deadline,
                                 cxp ? cur_share : NULL, cand),
                      done);
        }
        /* C': with flat dispatch only co-location on a rank saves copies, wherever the ranks are:
         * a local search over all ranks from there */
        if (N > 1 && !o->hierarchical) {
            double glob_deadline = moe_now() + per_layer * 0.25;
            memcpy(equal, cand, sizeof(double) * E * R);
            memset(cand, 0, sizeof(double) * E * R);
            MOE_CHECK(pack_group(&c, counts, counts, 0, R, equal, glob_deadline,
                                 cxp ? cur_share : NULL, cand),
                      done);
        }
        /* C'': the pair terms above are second order (they over-reward three or more experts of
         * a token on one rank or node); the hedged solver's search with the copies counted from
         * the routes, across nodes, corrects that (with hedge 0: the sources' balance) */
        moe_place_options_t oh = *o;
        oh.hedge = 0;
        oh.traffic_weight = 1;
        MOE_CHECK(moe_place_hedged_improve(w, n, &oh, l, cand, moe_now() + per_layer * 0.25),
                  done);
        memcpy(equal, cand, sizeof(double) * E * R);
        /* D */
        if (o->share_lp) shares_lp(&c, counts, per_layer * 0.05 + 0.01, cand);
        /* keep the best of: LP shares, equal shares, the greedy plan (and the current plan), with
         * the move cost when there is a current plan */
        moe_place_plan_layer_shares(warm_plan, l, warm_share);
        const double *cur = cxp ? cur_share : NULL;
        double c_lp =
            moe_place_layer_cost(cand, prev_l, l, w, n, o) + move_penalty(cand, cur, E, R, o);
        double c_eq =
            moe_place_layer_cost(equal, prev_l, l, w, n, o) + move_penalty(equal, cur, E, R, o);
        double c_warm = moe_place_layer_cost(warm_share, prev_l, l, w, n, o) +
                        move_penalty(warm_share, cur, E, R, o);
        const double *best = cand;
        double c_best = c_lp;
        if (c_eq < c_best) best = equal, c_best = c_eq;
        if (c_warm < c_best) best = warm_share, c_best = c_warm, kept_warm++;
        if (cur) {
            double c_cur = moe_place_layer_cost(cur_share, prev_l, l, w, n, o);
            if (c_cur < c_best && counts_fit(cur_share, E, R, lay.rank_cap))
                best = cur_share, c_best = c_cur;
        }
        memcpy(shares + (size_t)l * E * R, best, sizeof(double) * E * R);
        /* balance gap against max(1, max_w max_e u / r) */
        double lb = 1.0;
        for (int i = 0; i < n; i++)
            for (int e = 0; e < E; e++) lb = fmax(lb, c.u[(size_t)i * E + e] / counts[e]);
        double bal = moe_place_layer_balance(best, l, w, n, R);
        bal_gap += bal > 0 ? (bal - lb) / bal : 0;
        if (o->verbose)
            moe_info("place: layer %d: cost %.4f (lp %.4f, equal %.4f, greedy %.4f), gap %.3g, "
                     "%.2f s",
                     l, c_best, c_lp, c_eq, c_warm, gap, moe_now() - t0);
    }
    MOE_CHECK(moe_place_plan_from_shares(L, E, R, G, shares, out), done);
    warm_total = moe_place_objective(warm_plan, w, n, o, NULL);
    if (o->stay && !current && moe_place_objective(*out, w, n, o, NULL) > warm_total) {
        /* with stay residency layers interact: the per-layer choice does not guarantee the total */
        moe_plan_destroy(*out);
        *out = warm_plan;
        warm_plan = NULL;
        kept_warm = L;
    }
    if (rep) {
        rep->warm_objective = warm_total;
        rep->mip_gap = subproblems == 0 ? 0 : (unsolved == subproblems ? NAN : gap_max);
        rep->balance_gap = fmax(0, bal_gap / L);
        rep->subproblems = subproblems;
        rep->subproblems_proven = proven;
        rep->subproblems_unsolved = unsolved;
        rep->layers_kept_warm = kept_warm;
    }
done:
    free(fprev);
    free(bonus_node);
    free(bonus);
    free(c.pairc);
    free(c.u);
    free(xn);
    free(cx);
    free(x);
    free(wx);
    free(counts);
    free(weight);
    free(cur_share);
    free(warm_share);
    free(equal);
    free(cand);
    moe_free(shares);
    moe_plan_destroy(warm_plan);
fail:
    return status;
}
