/* test_place_solve: the exact model against brute-force enumeration (over replica counts and
 * hosts) on small instances; the hedged plan from one ESFT domain no worse than greedy on the other;
 * the ILP
 * never worse than its greedy warm start on the modelled objective (every layer) on the real ESFT
 * traces; the baselines' shapes; determinism; --current keeps experts in place. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "placement/placement.h"

#ifndef MOE_ROUTING_DIR
#define MOE_ROUTING_DIR "../shared/data/routing"
#endif

/* ---------------------------------------------------------------- brute force */

#define BF_TPR 16 /* tokens per rank: homes vary over the few tokens */

typedef struct {
    int L, E, R, G, W, K, T, X;
    bool hier;
    const int32_t *ids[2]; /* per workload [L][T][K] */
    int layer;
    int counts[16];
    int item_expert[64];
    int n_items;
    double best;
    int rank_of[64];
    int used[16];
    double u[2][16]; /* normalised loads of the layer */
    double pairs[2];
} bf_t;

/* A copy from home h to rank r, weighted as the cost model says (docs/placement.md). */
static double bf_weight(const bf_t *b, int h, int r, double phi)
{
    if (r == h) return 0;
    if (r / b->G == h / b->G) return 1;
    if (b->hier) return r % b->G == h % b->G ? 0 : 1;
    return phi;
}

/* The cost of one layer with equal shares, straight from the definition: the worst normalised
 * rank load, plus copy_cost x the mean over workloads of the expected weighted copies / pairs. */
static double bf_cost(const bf_t *b, double phi)
{
    double s[16][16] = {{0}};
    for (int i = 0; i < b->n_items; i++)
        s[b->item_expert[i]][b->rank_of[i]] = 1.0 / b->counts[b->item_expert[i]];
    double worst = 0, traffic = 0;
    for (int w = 0; w < b->W; w++) {
        for (int r = 0; r < b->R; r++) {
            double load = 0;
            for (int e = 0; e < b->E; e++) load += b->u[w][e] * s[e][r];
            worst = fmax(worst, load);
        }
        double copies = 0;
        for (int t = 0; t < b->T; t++) {
            const int32_t *row = b->ids[w] + (b->layer * b->T + t) * b->K;
            int h = (t / BF_TPR) % b->R;
            for (int r = 0; r < b->R; r++) {
                double miss = 1;
                for (int j = 0; j < b->K; j++) miss *= 1 - s[row[j]][r];
                copies += bf_weight(b, h, r, phi) * (1 - miss);
            }
            for (int n = 0; b->hier && n < b->R / b->G; n++) {
                if (n == h / b->G) continue;
                double miss = 1;
                for (int j = 0; j < b->K; j++) {
                    double f = 0;
                    for (int r = n * b->G; r < n * b->G + b->G; r++) f += s[row[j]][r];
                    miss *= 1 - f;
                }
                copies += phi * (1 - miss);
            }
        }
        traffic += copies / b->pairs[w];
    }
    return worst + traffic / b->W;
}

static void bf_hosts(bf_t *b, int i, double phi)
{
    if (i == b->n_items) {
        double c = bf_cost(b, phi);
        if (c < b->best) b->best = c;
        return;
    }
    int cap = (b->n_items + b->R - 1) / b->R;
    for (int r = 0; r < b->R; r++) {
        if (b->used[r] >= cap) continue;
        /* replicas of one expert on distinct ranks, in increasing order (interchangeable) */
        if (i > 0 && b->item_expert[i - 1] == b->item_expert[i] && r <= b->rank_of[i - 1]) continue;
        b->rank_of[i] = r;
        b->used[r]++;
        bf_hosts(b, i + 1, phi);
        b->used[r]--;
    }
}

/* Every count vector (each >= 1 and <= ranks, summing to experts + replicas), every hosting. */
static void bf_counts(bf_t *b, int e, int left, double phi)
{
    if (e == b->E - 1) {
        if (left < 1 || left > b->R) return;
        b->counts[e] = left;
        b->n_items = 0;
        for (int x = 0; x < b->E; x++)
            for (int k = 0; k < b->counts[x]; k++) b->item_expert[b->n_items++] = x;
        bf_hosts(b, 0, phi);
        return;
    }
    for (int c = 1; c <= b->R && c <= left - (b->E - 1 - e); c++) {
        b->counts[e] = c;
        bf_counts(b, e + 1, left - c, phi);
    }
}

static void make_ids(int32_t *ids, int L, int T, int K, int E, uint64_t seed)
{
    for (int l = 0; l < L; l++)
        for (int t = 0; t < T; t++)
            for (int j = 0; j < K; j++) {
                int e;
                bool dup;
                int tries = 0;
                do {
                    /* skewed: low ids are hot */
                    double x = moe_hash_to_unit(
                        moe_hash(seed, (uint64_t)l, (uint64_t)t, (uint64_t)j, (uint64_t)tries++));
                    e = (int)(E * x * x);
                    dup = false;
                    for (int i = 0; i < j; i++) dup |= ids[(l * T + t) * K + i] == e;
                } while (dup);
                ids[(l * T + t) * K + j] = e;
            }
}

/* --exact against brute force over replica counts and hosts (equal shares), copies counted from
 * the routes. */
static void exact_vs_brute(int W, bool hierarchical, int replicas)
{
    const int L = 2, E = 5, R = 4, G = 2, T = 120, K = 2;
    int32_t *ids[2];
    moe_workload_h w[2];
    for (int i = 0; i < W; i++) {
        ids[i] = malloc(sizeof(int32_t) * L * T * K);
        make_ids(ids[i], L, T, K, E, 11 + (uint64_t)i * 7);
        CHECK_STATUS(moe_workload_from_ids(ids[i], L, T, K, E, "bf", &w[i]), MOE_STATUS_OK);
    }
    moe_place_options_t o = MOE_PLACE_OPTIONS_INIT;
    o.ranks = R;
    o.ranks_per_node = G;
    o.replicas = replicas;
    o.solver = MOE_PLACE_SOLVER_EXACT;
    o.hierarchical = hierarchical;
    o.tokens_per_rank = BF_TPR;
    o.time_limit = 60;
    moe_plan_h plan = NULL;
    moe_place_report_t rep;
    CHECK_STATUS(moe_place_solve(w, W, &o, NULL, &plan, &rep), MOE_STATUS_OK);
    if (!plan) return;
    CHECK_EQ_INT(rep.subproblems_proven, L);
    double per_layer[2];
    moe_place_objective(plan, w, W, &o, per_layer);
    for (int l = 0; l < L; l++) {
        bf_t b = {.L = L, .E = E, .R = R, .G = G, .W = W, .K = K, .T = T, .X = replicas,
                  .hier = hierarchical, .layer = l, .best = INFINITY};
        for (int i = 0; i < W; i++) {
            b.ids[i] = ids[i];
            double loads[16] = {0};
            for (int t = 0; t < T; t++)
                for (int j = 0; j < K; j++) loads[ids[i][(l * T + t) * K + j]] += 1;
            b.pairs[i] = (double)T * K;
            for (int e = 0; e < E; e++) b.u[i][e] = loads[e] * R / b.pairs[i];
        }
        bf_counts(&b, 0, E + replicas, o.inter_factor);
        CHECK_NEAR(per_layer[l], b.best, 1e-6); /* shares are floats in a plan */
        /* and the test's formula agrees with the library's on the exact plan */
        int k = 0;
        for (int e = 0; e < E; e++) {
            const int *rk;
            int nr = moe_plan_replicas(plan, l, e, &rk, NULL);
            b.counts[e] = nr;
            for (int i = 0; i < nr; i++) b.item_expert[k] = e, b.rank_of[k++] = rk[i];
        }
        b.n_items = k;
        CHECK_NEAR(bf_cost(&b, o.inter_factor), per_layer[l], 1e-6);
    }
    moe_plan_destroy(plan);
    for (int i = 0; i < W; i++) {
        moe_workload_destroy(w[i]);
        free(ids[i]);
    }
}

/* ---------------------------------------------------------------- real traces */

static moe_workload_h load(const char *name)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/deepseek-v2-lite-esft/%s", MOE_ROUTING_DIR, name);
    moe_workload_h w = NULL;
    CHECK_STATUS(moe_workload_load_trace(path, 64, &w), MOE_STATUS_OK);
    return w;
}

static void ilp_not_worse(moe_workload_h *w, int n, int R, int G, int replicas, double seconds)
{
    moe_place_options_t o = MOE_PLACE_OPTIONS_INIT;
    o.ranks = R;
    o.ranks_per_node = G;
    o.replicas = replicas;
    o.time_limit = seconds;
    o.solver = MOE_PLACE_SOLVER_ILP;
    moe_plan_h ilp = NULL, greedy = NULL;
    moe_place_report_t rep;
    CHECK_STATUS(moe_place_solve(w, n, &o, NULL, &ilp, &rep), MOE_STATUS_OK);
    o.solver = MOE_PLACE_SOLVER_GREEDY;
    CHECK_STATUS(moe_place_solve(w, n, &o, NULL, &greedy, NULL), MOE_STATUS_OK);
    if (!ilp || !greedy) return;
    int L = moe_plan_layers(ilp);
    double *a = malloc(sizeof(double) * L), *b = malloc(sizeof(double) * L);
    double ja = moe_place_objective(ilp, w, n, &o, a),
           jb = moe_place_objective(greedy, w, n, &o, b);
    for (int l = 0; l < L; l++) CHECK(a[l] <= b[l] + 1e-12);
    CHECK(ja <= jb + 1e-12);
    CHECK_NEAR(rep.warm_objective, jb, 1e-9);
    printf("ilp vs greedy, %d source(s), %d ranks (%d per node), %d redundant: objective %.4f vs "
           "%.4f, %.2f s, %d layers kept greedy\n",
           n, R, G, replicas, ja, jb, rep.solve_seconds, rep.layers_kept_warm);
    /* every rank holds at most ceil(slots / ranks) experts */
    int cap = (moe_plan_experts(ilp) + replicas + R - 1) / R;
    for (int l = 0; l < L; l++)
        for (int r = 0; r < R; r++) CHECK(moe_plan_local_experts(ilp, l, r, NULL) <= cap);
    free(a);
    free(b);
    moe_plan_destroy(ilp);
    moe_plan_destroy(greedy);
}

/* Stay residency couples layers: the ILP keeps the greedy plan if it cannot beat it in total, and
 * (tested on the replay) cuts the copies that leave the node the token sits on. */
static void stay_not_worse(moe_workload_h *w, int n, moe_workload_h scored)
{
    moe_place_options_t o = MOE_PLACE_OPTIONS_INIT;
    o.ranks = 16;
    o.ranks_per_node = 8;
    o.replicas = 16;
    o.time_limit = 4;
    o.stay = true;
    o.solver = MOE_PLACE_SOLVER_ILP;
    moe_plan_h ilp = NULL, greedy = NULL;
    moe_place_report_t rep;
    CHECK_STATUS(moe_place_solve(w, n, &o, NULL, &ilp, &rep), MOE_STATUS_OK);
    o.solver = MOE_PLACE_SOLVER_GREEDY;
    CHECK_STATUS(moe_place_solve(w, n, &o, NULL, &greedy, NULL), MOE_STATUS_OK);
    if (!ilp || !greedy) return;
    double ja = moe_place_objective(ilp, w, n, &o, NULL),
           jb = moe_place_objective(greedy, w, n, &o, NULL);
    CHECK(ja <= jb + 1e-12);
    CHECK_NEAR(rep.warm_objective, jb, 1e-9);
    moe_place_figures_t fa, fb;
    CHECK_STATUS(moe_place_evaluate(ilp, scored, &o, &fa), MOE_STATUS_OK);
    CHECK_STATUS(moe_place_evaluate(greedy, scored, &o, &fb), MOE_STATUS_OK);
    printf(
        "stay residency: objective %.4f vs greedy %.4f; replayed inter-node copies %.0f vs %.0f\n",
        ja, jb, fa.inter_stay_total, fb.inter_stay_total);
    /* (unless a starved machine left no time to improve on greedy at all) */
    if (rep.layers_kept_warm < moe_plan_layers(ilp)) CHECK(fa.inter_stay_total < fb.inter_stay_total);
    moe_place_figures_free(&fa);
    moe_place_figures_free(&fb);
    /* the exact model is per layer: it refuses stay residency */
    o.solver = MOE_PLACE_SOLVER_EXACT;
    moe_plan_h ex = NULL;
    CHECK_STATUS(moe_place_solve(w, n, &o, NULL, &ex, NULL), MOE_STATUS_INVALID_ARGUMENT);
    moe_plan_destroy(ilp);
    moe_plan_destroy(greedy);
}

/* Cross-domain: the default (hedged) plan from one domain, replayed on the other, against greedy
 * (EPLB) from the same source: mean and worst per-layer max/mean no worse; the model agrees with
 * the replay on the held-out domain within 5%. */
static void cross_domain(moe_workload_h from, moe_workload_h on, int R, int X)
{
    moe_place_options_t o = MOE_PLACE_OPTIONS_INIT;
    o.ranks = R;
    o.ranks_per_node = 8;
    o.replicas = X;
    o.time_limit = 120; /* the search ends well before: the result does not depend on speed */
    moe_plan_h hedged = NULL, greedy = NULL;
    moe_place_report_t rep;
    CHECK_STATUS(moe_place_solve(&from, 1, &o, NULL, &hedged, &rep), MOE_STATUS_OK);
    o.solver = MOE_PLACE_SOLVER_GREEDY;
    CHECK_STATUS(moe_place_solve(&from, 1, &o, NULL, &greedy, NULL), MOE_STATUS_OK);
    if (!hedged || !greedy) return;
    moe_place_figures_t h, g, m;
    CHECK_STATUS(moe_place_evaluate(hedged, on, &o, &h), MOE_STATUS_OK);
    CHECK_STATUS(moe_place_evaluate(greedy, on, &o, &g), MOE_STATUS_OK);
    CHECK_STATUS(moe_place_model(hedged, on, &o, &m), MOE_STATUS_OK);
    printf("cross-domain, %d ranks: hedged %.3f (worst %.3f), greedy %.3f (worst %.3f); inter-node "
           "copies %.0f vs %.0f; model vs replay: max/mean %.3f vs %.3f, inter %.0f vs %.0f "
           "(%.1f s)\n",
           R, h.mean_imbalance, h.worst_imbalance, g.mean_imbalance, g.worst_imbalance,
           h.inter_total, g.inter_total, m.mean_imbalance, h.mean_imbalance, m.inter_total,
           h.inter_total, rep.solve_seconds);
    CHECK(h.mean_imbalance <= g.mean_imbalance);
    CHECK(h.worst_imbalance <= g.worst_imbalance);
    CHECK(fabs(m.mean_imbalance - h.mean_imbalance) <= 0.05 * h.mean_imbalance);
    CHECK(fabs(m.inter_total - h.inter_total) <= 0.05 * h.inter_total);
    CHECK(fabs(m.intra_total - h.intra_total) <= 0.05 * h.intra_total);
    moe_place_figures_free(&h);
    moe_place_figures_free(&g);
    moe_place_figures_free(&m);
    moe_plan_destroy(hedged);
    moe_plan_destroy(greedy);
}

/* Hierarchical dispatch at 4 nodes x 8: the plan moves experts between nodes (its node assignment
 * differs from greedy's in most layers) and the replayed inter-node copies (one per remote node)
 * fall below greedy's. */
static void hierarchical_moves(moe_workload_h w, moe_place_solver_t solver)
{
    moe_place_options_t o = MOE_PLACE_OPTIONS_INIT;
    o.ranks = 32;
    o.ranks_per_node = 8;
    o.replicas = 32;
    o.hierarchical = true;
    o.solver = solver;
    o.time_limit = solver == MOE_PLACE_SOLVER_ILP ? 8 : 120;
    moe_plan_h plan = NULL, greedy = NULL;
    CHECK_STATUS(moe_place_solve(&w, 1, &o, NULL, &plan, NULL), MOE_STATUS_OK);
    o.solver = MOE_PLACE_SOLVER_GREEDY;
    CHECK_STATUS(moe_place_solve(&w, 1, &o, NULL, &greedy, NULL), MOE_STATUS_OK);
    if (!plan || !greedy) return;
    int L = moe_plan_layers(plan), E = moe_plan_experts(plan), moved_layers = 0;
    for (int l = 0; l < L; l++) {
        bool differs = false;
        for (int e = 0; e < E; e++) {
            int na[4] = {0}, nb[4] = {0};
            const int *ra, *rb;
            int ka = moe_plan_replicas(plan, l, e, &ra, NULL), kb = moe_plan_replicas(greedy, l, e, &rb, NULL);
            for (int i = 0; i < ka; i++) na[ra[i] / 8]++;
            for (int i = 0; i < kb; i++) nb[rb[i] / 8]++;
            differs |= memcmp(na, nb, sizeof(na)) != 0;
        }
        moved_layers += differs;
    }
    moe_place_figures_t a, b;
    CHECK_STATUS(moe_place_evaluate(plan, w, &o, &a), MOE_STATUS_OK);
    CHECK_STATUS(moe_place_evaluate(greedy, w, &o, &b), MOE_STATUS_OK);
    printf("%s --hierarchical, 4 x 8: node assignment differs from greedy's in %d of %d layers; "
           "inter-node copies %.0f vs greedy %.0f (%.1f%% fewer)\n",
           moe_place_solver_name(solver), moved_layers, L, a.inter_hier_total, b.inter_hier_total,
           100 * (1 - a.inter_hier_total / b.inter_hier_total));
    CHECK(moved_layers >= L / 2);
    CHECK(a.inter_hier_total < b.inter_hier_total);
    moe_place_figures_free(&a);
    moe_place_figures_free(&b);
    moe_plan_destroy(plan);
    moe_plan_destroy(greedy);
}

static void baselines_and_determinism(moe_workload_h w)
{
    moe_place_options_t o = MOE_PLACE_OPTIONS_INIT;
    o.ranks = 16;
    o.ranks_per_node = 8;
    o.replicas = 16;
    for (int s = 0; s < 3; s++) {
        o.solver = (moe_place_solver_t)s;
        moe_plan_h p1 = NULL, p2 = NULL;
        CHECK_STATUS(moe_place_solve(&w, 1, &o, NULL, &p1, NULL), MOE_STATUS_OK);
        CHECK_STATUS(moe_place_solve(&w, 1, &o, NULL, &p2, NULL), MOE_STATUS_OK);
        if (!p1 || !p2) continue;
        CHECK_STATUS(moe_plan_check(p1, "baseline"), MOE_STATUS_OK);
        int L = moe_plan_layers(p1), E = moe_plan_experts(p1), same = 1, total = 0;
        for (int l = 0; l < L; l++)
            for (int e = 0; e < E; e++) {
                const int *r1, *r2;
                const float *s1, *s2;
                int n1 = moe_plan_replicas(p1, l, e, &r1, &s1),
                    n2 = moe_plan_replicas(p2, l, e, &r2, &s2);
                total += n1;
                same &= n1 == n2;
                for (int i = 0; i < n1 && i < n2; i++) same &= r1[i] == r2[i] && s1[i] == s2[i];
            }
        CHECK(same);
        CHECK_EQ_INT(total, L * (E + (s == MOE_PLACE_SOLVER_GREEDY ? 16 : 0)));
        if (s == MOE_PLACE_SOLVER_CONTIGUOUS) CHECK_EQ_INT(moe_plan_pick_replica(p1, 0, 5, 0), 1);
        if (s == MOE_PLACE_SOLVER_ROUND_ROBIN) CHECK_EQ_INT(moe_plan_pick_replica(p1, 0, 17, 0), 1);
        moe_plan_destroy(p1);
        moe_plan_destroy(p2);
    }
}

static void current_plan(moe_workload_h from, moe_workload_h to)
{
    /* re-plan for a new workload starting from a plan in service: with a move cost, fewer experts
     * move */
    moe_place_options_t o = MOE_PLACE_OPTIONS_INIT;
    o.ranks = 16;
    o.ranks_per_node = 8;
    o.replicas = 16;
    o.time_limit = 4;
    o.solver = MOE_PLACE_SOLVER_ILP;
    moe_plan_h cur = NULL, cheap = NULL, free_move = NULL;
    CHECK_STATUS(moe_place_solve(&from, 1, &o, NULL, &cur, NULL), MOE_STATUS_OK);
    moe_place_report_t r1, r2;
    o.move_cost = 0;
    CHECK_STATUS(moe_place_solve(&to, 1, &o, cur, &free_move, &r1), MOE_STATUS_OK);
    o.move_cost = 0.5;
    CHECK_STATUS(moe_place_solve(&to, 1, &o, cur, &cheap, &r2), MOE_STATUS_OK);
    printf("--current: %d hosts moved without a move cost, %d with\n", r1.experts_moved,
           r2.experts_moved);
    CHECK(r2.experts_moved <= r1.experts_moved);
    CHECK_NEAR(r2.bytes_moved, r2.experts_moved * o.expert_bytes, 1e-3);
    moe_plan_destroy(cur);
    moe_plan_destroy(cheap);
    moe_plan_destroy(free_move);
}

int main(void)
{
    moe_log_init(0, MOE_LOG_ERROR);
    exact_vs_brute(1, false, 0);
    exact_vs_brute(1, false, 3);
    exact_vs_brute(2, true, 3);
    exact_vs_brute(2, false, 2);
    moe_workload_h intent = load("intent.topk_ids.npy");
    moe_workload_h law = load("law.topk_ids.npy");
    if (intent && law) {
        baselines_and_determinism(intent);
        ilp_not_worse(&intent, 1, 8, 8, 0, 3);
        ilp_not_worse(&law, 1, 16, 8, 16, 4);
        moe_workload_h both[2] = {intent, law};
        ilp_not_worse(both, 2, 32, 8, 32, 6);
        current_plan(intent, law);
        stay_not_worse(&intent, 1, law);
        hierarchical_moves(intent, MOE_PLACE_SOLVER_HEDGED);
        hierarchical_moves(law, MOE_PLACE_SOLVER_ILP);
        cross_domain(intent, law, 16, 16);
        cross_domain(law, intent, 16, 16);
        cross_domain(intent, law, 32, 32);
        cross_domain(law, intent, 32, 32);
    }
    moe_workload_destroy(intent);
    moe_workload_destroy(law);
    return moe_test_result("test_place_solve");
}
