/* test_incremental: the incremental solver (online re-balancing, scale events). Exact move counts
 * where the minimum is known (2 -> 4 and 4 -> 3 ranks on uniform loads), balance against the
 * current plan and greedy on skewed loads, a huge move cost that keeps everything in place, plans
 * with replicas and uneven shares scaled down and up, the errors (no current plan, shapes, slots),
 * determinism, and the time of a DeepSeek-V3-sized solve (printed, not asserted). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "placement/placement.h"

/* ---------------------------------------------------------------- helpers */

/* A workload with the given loads [L][E] (a statistics object, no co-activation). */
static moe_workload_h workload_from_loads(int L, int E, const int64_t *loads)
{
    moe_stats_h s = NULL;
    moe_workload_h w = NULL;
    CHECK_STATUS(moe_stats_create(L, E, 2, &s), MOE_STATUS_OK);
    if (!s) return NULL;
    int64_t tokens = 0;
    for (int i = 0; i < L * E; i++) {
        moe_stats_loads(s)[i] = loads[i];
        tokens += loads[i];
    }
    moe_stats_set_tokens(s, tokens / (2 * L) + 1);
    CHECK_STATUS(moe_workload_from_stats(s, "loads", &w), MOE_STATUS_OK);
    moe_stats_destroy(s);
    return w;
}

static moe_workload_h uniform_workload(int L, int E)
{
    int64_t *loads = malloc(sizeof(int64_t) * L * E);
    for (int i = 0; i < L * E; i++) loads[i] = 1000;
    moe_workload_h w = workload_from_loads(L, E, loads);
    free(loads);
    return w;
}

/* Zipf-like loads over a permutation of the experts that changes with the layer and the seed, each
 * scaled by a hashed factor in [1 - drift, 1 + drift] (drift: the routing has moved on since). */
static moe_workload_h skewed_workload(int L, int E, int seed, double drift)
{
    int64_t *loads = malloc(sizeof(int64_t) * L * E);
    for (int l = 0; l < L; l++)
        for (int e = 0; e < E; e++) {
            int rank = (e * 37 + l * 11 + seed * 5) % E;
            double u = moe_hash_to_unit(moe_hash(99, (uint64_t)l, (uint64_t)e, 0, 0));
            loads[l * E + e] = (int64_t)(1e6 / pow(1.0 + rank, 0.8) * (1 + drift * (2 * u - 1)));
        }
    moe_workload_h w = workload_from_loads(L, E, loads);
    free(loads);
    return w;
}

/* Hosts of layer l in plan that current does not have. */
static int new_hosts(const moe_plan_h plan, const moe_plan_h current, int l)
{
    int moved = 0;
    for (int e = 0; e < moe_plan_experts(plan); e++) {
        const int *rk, *ck;
        int nr = moe_plan_replicas(plan, l, e, &rk, NULL);
        int nc = moe_plan_replicas(current, l, e, &ck, NULL);
        for (int i = 0; i < nr; i++) {
            bool hosted = false;
            for (int j = 0; j < nc; j++) hosted |= ck[j] == rk[i];
            moved += !hosted;
        }
    }
    return moved;
}

/* Experts that rank r hosts at layer l in both plans. */
static int kept_on_rank(const moe_plan_h plan, const moe_plan_h current, int l, int r)
{
    const int *ex;
    int n = moe_plan_local_experts(plan, l, r, &ex), kept = 0;
    for (int i = 0; i < n; i++) kept += moe_plan_local_slot(current, l, r, ex[i]) >= 0;
    return kept;
}

/* No two replicas of one expert on one rank; shares positive and summing to 1. */
static void check_replicas(const moe_plan_h plan)
{
    CHECK_STATUS(moe_plan_check(plan, "incremental result"), MOE_STATUS_OK);
    for (int l = 0; l < moe_plan_layers(plan); l++)
        for (int e = 0; e < moe_plan_experts(plan); e++) {
            const int *rk;
            const float *sh;
            int n = moe_plan_replicas(plan, l, e, &rk, &sh);
            double sum = 0;
            for (int i = 0; i < n; i++) {
                sum += sh[i];
                CHECK(sh[i] > 0);
                for (int j = i + 1; j < n; j++) CHECK(rk[i] != rk[j]);
            }
            CHECK_NEAR(sum, 1.0, 1e-5);
        }
}

static bool plans_equal(const moe_plan_h a, const moe_plan_h b)
{
    if (moe_plan_ranks(a) != moe_plan_ranks(b)) return false;
    for (int l = 0; l < moe_plan_layers(a); l++)
        for (int e = 0; e < moe_plan_experts(a); e++) {
            const int *ra, *rb;
            const float *sa, *sb;
            int na = moe_plan_replicas(a, l, e, &ra, &sa);
            int nb = moe_plan_replicas(b, l, e, &rb, &sb);
            if (na != nb) return false;
            for (int i = 0; i < na; i++)
                if (ra[i] != rb[i] || sa[i] != sb[i]) return false;
        }
    return true;
}

static moe_place_options_t incremental_options(int ranks, int ranks_per_node, double move_cost)
{
    moe_place_options_t o = MOE_PLACE_OPTIONS_INIT;
    o.solver = MOE_PLACE_SOLVER_INCREMENTAL;
    o.ranks = ranks;
    o.ranks_per_node = ranks_per_node;
    o.move_cost = move_cost;
    return o;
}

static double worst_imbalance(const moe_plan_h plan, const moe_workload_h w)
{
    moe_place_options_t o = MOE_PLACE_OPTIONS_INIT;
    moe_place_figures_t f;
    if (moe_place_model(plan, w, &o, &f) != MOE_STATUS_OK) return INFINITY;
    double v = f.worst_imbalance;
    moe_place_figures_free(&f);
    return v;
}

static double layer_imbalance(const moe_plan_h plan, const moe_workload_h w, int l)
{
    moe_place_options_t o = MOE_PLACE_OPTIONS_INIT;
    moe_place_figures_t f;
    if (moe_place_model(plan, w, &o, &f) != MOE_STATUS_OK) return INFINITY;
    double v = f.imbalance[l];
    moe_place_figures_free(&f);
    return v;
}

/* ---------------------------------------------------------------- scale events, uniform loads */

static void scale_up_uniform(void)
{
    const int L = 3, E = 8;
    moe_workload_h w = uniform_workload(L, E);
    moe_plan_h cur = NULL, plan = NULL;
    CHECK_STATUS(moe_plan_create_contiguous(L, E, 2, 2, &cur), MOE_STATUS_OK);
    moe_place_options_t o = incremental_options(4, 2, 0.05);
    moe_place_report_t rep;
    CHECK_STATUS(moe_place_solve(&w, 1, &o, cur, &plan, &rep), MOE_STATUS_OK);
    if (!plan) goto done;
    CHECK_EQ_INT(moe_plan_ranks(plan), 4);
    check_replicas(plan);
    for (int l = 0; l < L; l++) {
        for (int r = 0; r < 4; r++) CHECK_EQ_INT(moe_plan_local_experts(plan, l, r, NULL), 2);
        CHECK_EQ_INT(new_hosts(plan, cur, l), 4); /* the minimum: the new ranks' experts */
        CHECK_EQ_INT(kept_on_rank(plan, cur, l, 0), 2);
        CHECK_EQ_INT(kept_on_rank(plan, cur, l, 1), 2);
        CHECK_NEAR(layer_imbalance(plan, w, l), 1.0, 1e-9);
    }
    CHECK_EQ_INT(rep.experts_moved, 4 * L);
    CHECK_NEAR(rep.bytes_moved, 4.0 * L * o.expert_bytes, 1e-3);
done:
    moe_plan_destroy(plan);
    moe_plan_destroy(cur);
    moe_workload_destroy(w);
}

static void scale_down_uniform(void)
{
    const int L = 3, E = 8;
    moe_workload_h w = uniform_workload(L, E);
    moe_plan_h cur = NULL, plan = NULL;
    CHECK_STATUS(moe_plan_create_contiguous(L, E, 4, 4, &cur), MOE_STATUS_OK);
    moe_place_options_t o = incremental_options(3, 3, 0.05);
    moe_place_report_t rep;
    CHECK_STATUS(moe_place_solve(&w, 1, &o, cur, &plan, &rep), MOE_STATUS_OK);
    if (!plan) goto done;
    CHECK_EQ_INT(moe_plan_ranks(plan), 3);
    check_replicas(plan);
    for (int l = 0; l < L; l++) {
        CHECK_EQ_INT(new_hosts(plan, cur, l), 2); /* rank 3's two experts, nothing else */
        for (int r = 0; r < 3; r++) {
            CHECK(moe_plan_local_experts(plan, l, r, NULL) <= 3);
            CHECK_EQ_INT(kept_on_rank(plan, cur, l, r), 2);
        }
    }
    CHECK_EQ_INT(rep.experts_moved, 2 * L);
done:
    moe_plan_destroy(plan);
    moe_plan_destroy(cur);
    moe_workload_destroy(w);
}

/* ---------------------------------------------------------------- re-balancing, skewed loads */

static void rebalance_skewed(int L, int E, int R)
{
    moe_workload_h w = skewed_workload(L, E, 1, 0);
    moe_plan_h cur = NULL, keep = NULL, free_plan = NULL, free_again = NULL, mid = NULL;
    moe_plan_h greedy = NULL;
    CHECK_STATUS(moe_plan_create_contiguous(L, E, R, R, &cur), MOE_STATUS_OK);
    double before = worst_imbalance(cur, w);

    /* a huge move cost: nothing moves */
    moe_place_options_t o = incremental_options(R, R, 1e9);
    moe_place_report_t rep;
    CHECK_STATUS(moe_place_solve(&w, 1, &o, cur, &keep, &rep), MOE_STATUS_OK);
    if (!keep) goto done;
    CHECK_EQ_INT(rep.experts_moved, 0);
    CHECK(plans_equal(keep, cur));

    /* no move cost: close to greedy's balance, well below the current plan's */
    o.move_cost = 0;
    CHECK_STATUS(moe_place_solve(&w, 1, &o, cur, &free_plan, &rep), MOE_STATUS_OK);
    CHECK_STATUS(moe_place_solve(&w, 1, &o, cur, &free_again, NULL), MOE_STATUS_OK);
    if (!free_plan || !free_again) goto done;
    check_replicas(free_plan);
    CHECK(plans_equal(free_plan, free_again)); /* deterministic */
    int moved_free = rep.experts_moved;
    moe_place_options_t og = MOE_PLACE_OPTIONS_INIT;
    og.solver = MOE_PLACE_SOLVER_GREEDY;
    og.ranks = R;
    og.ranks_per_node = R;
    CHECK_STATUS(moe_place_solve(&w, 1, &og, NULL, &greedy, NULL), MOE_STATUS_OK);
    if (!greedy) goto done;
    double after = worst_imbalance(free_plan, w), g = worst_imbalance(greedy, w);
    printf("skewed %dx%d on %d ranks: max/mean current %.4f, incremental (move cost 0) %.4f, "
           "greedy %.4f; %d hosts moved\n",
           L, E, R, before, after, g, moved_free);
    CHECK(after < before);
    CHECK(after <= g * 1.03);
    for (int l = 0; l < L; l++)
        CHECK(layer_imbalance(free_plan, w, l) <= layer_imbalance(cur, w, l));

    /* the default move cost: between the two */
    o.move_cost = 0.05;
    CHECK_STATUS(moe_place_solve(&w, 1, &o, cur, &mid, &rep), MOE_STATUS_OK);
    if (!mid) goto done;
    double mid_imb = worst_imbalance(mid, w);
    printf("  move cost 0.05: max/mean %.4f, %d hosts moved\n", mid_imb, rep.experts_moved);
    CHECK(mid_imb < before);
    CHECK(rep.experts_moved <= moved_free);
    CHECK(rep.experts_moved > 0);
done:
    moe_plan_destroy(greedy);
    moe_plan_destroy(mid);
    moe_plan_destroy(free_again);
    moe_plan_destroy(free_plan);
    moe_plan_destroy(keep);
    moe_plan_destroy(cur);
    moe_workload_destroy(w);
}

/* ---------------------------------------------------------------- replicas and shares */

/* Layer plan on 4 ranks: expert 0 on every rank (shares 0.4, 0.3, 0.2, 0.1), expert 1 on ranks 1
 * and 3 (0.6, 0.4), the others alone on rank e % 4. */
static moe_plan_h replicated_plan(int L, int E)
{
    moe_plan_h p = NULL;
    CHECK_STATUS(moe_plan_create_empty(L, E, 4, 2, &p), MOE_STATUS_OK);
    if (!p) return NULL;
    for (int l = 0; l < L; l++) {
        const float s0[4] = {0.4f, 0.3f, 0.2f, 0.1f};
        for (int r = 0; r < 4; r++) moe_plan_add_replica(p, l, 0, r, s0[r]);
        moe_plan_add_replica(p, l, 1, 1, 0.6f);
        moe_plan_add_replica(p, l, 1, 3, 0.4f);
        for (int e = 2; e < E; e++) moe_plan_add_replica(p, l, e, e % 4, 1.0f);
    }
    CHECK_STATUS(moe_plan_check(p, "replicated"), MOE_STATUS_OK);
    return p;
}

static float share_on(const moe_plan_h p, int l, int e, int r)
{
    const int *rk;
    const float *sh;
    int n = moe_plan_replicas(p, l, e, &rk, &sh);
    for (int i = 0; i < n; i++)
        if (rk[i] == r) return sh[i];
    return 0;
}

static void replicas_scaled(void)
{
    const int L = 2, E = 8;
    moe_workload_h w = skewed_workload(L, E, 2, 0);
    moe_plan_h four = replicated_plan(L, E), two = NULL, two_keep = NULL, back = NULL;
    if (!four) goto done;

    /* 4 -> 2: expert 0 keeps its replicas on ranks 0 and 1 (shares 0.4 : 0.3 scaled to sum to 1);
     * the five replicas of ranks 2 and 3 that remain (expert 1's, experts 2, 3, 6, 7) move */
    moe_place_options_t o = incremental_options(2, 2, 1e9);
    moe_place_report_t rep;
    CHECK_STATUS(moe_place_solve(&w, 1, &o, four, &two_keep, &rep), MOE_STATUS_OK);
    if (!two_keep) goto done;
    check_replicas(two_keep);
    CHECK_EQ_INT(rep.experts_moved, 5 * L);
    for (int l = 0; l < L; l++) {
        CHECK_EQ_INT(new_hosts(two_keep, four, l), 5);
        CHECK_EQ_INT(moe_plan_replicas(two_keep, l, 0, NULL, NULL), 2);
        CHECK_NEAR(share_on(two_keep, l, 0, 0), 0.4 / 0.7, 1e-6);
        CHECK_NEAR(share_on(two_keep, l, 0, 1), 0.3 / 0.7, 1e-6);
        CHECK_EQ_INT(moe_plan_replicas(two_keep, l, 1, NULL, NULL), 2);
        CHECK_NEAR(share_on(two_keep, l, 1, 1), 0.6, 1e-6);
        CHECK_NEAR(share_on(two_keep, l, 1, 0), 0.4, 1e-6);
        for (int r = 0; r < 2; r++) CHECK_EQ_INT(moe_plan_local_experts(two_keep, l, r, NULL), 5);
    }

    /* the default move cost: the same invariants */
    o.move_cost = 0.05;
    CHECK_STATUS(moe_place_solve(&w, 1, &o, four, &two, &rep), MOE_STATUS_OK);
    if (!two) goto done;
    check_replicas(two);
    CHECK(rep.experts_moved >= 5 * L);
    int moved = 0;
    for (int l = 0; l < L; l++) moved += new_hosts(two, four, l);
    CHECK_EQ_INT(rep.experts_moved, moved);

    /* 2 -> 4: every replica keeps its share, counts unchanged, no expert twice on a rank */
    o.ranks = 4;
    CHECK_STATUS(moe_place_solve(&w, 1, &o, two, &back, &rep), MOE_STATUS_OK);
    if (!back) goto done;
    check_replicas(back);
    moved = 0;
    for (int l = 0; l < L; l++) {
        moved += new_hosts(back, two, l);
        for (int e = 0; e < E; e++) {
            const int *rk, *rk2;
            const float *sh, *sh2;
            int n = moe_plan_replicas(back, l, e, &rk, &sh);
            int n2 = moe_plan_replicas(two, l, e, &rk2, &sh2);
            CHECK_EQ_INT(n, n2);
            /* the same multiset of shares */
            double a = 0, b = 0, a2 = 0, b2 = 0;
            for (int i = 0; i < n; i++) a += sh[i], a2 += (double)sh[i] * sh[i];
            for (int i = 0; i < n2; i++) b += sh2[i], b2 += (double)sh2[i] * sh2[i];
            CHECK_NEAR(a, b, 1e-6);
            CHECK_NEAR(a2, b2, 1e-6);
        }
        /* 10 items on 4 ranks: at most 3 each */
        for (int r = 0; r < 4; r++) CHECK(moe_plan_local_experts(back, l, r, NULL) <= 3);
        CHECK(new_hosts(back, two, l) >= 4); /* ranks 0 and 1 keep at most 3 of their 5 each */
    }
    CHECK_EQ_INT(rep.experts_moved, moved);
done:
    moe_plan_destroy(back);
    moe_plan_destroy(two);
    moe_plan_destroy(two_keep);
    moe_plan_destroy(four);
    moe_workload_destroy(w);
}

/* ---------------------------------------------------------------- errors and names */

static void errors(void)
{
    const int L = 3, E = 8;
    moe_workload_h w = uniform_workload(L, E);
    moe_plan_h cur = NULL, other = NULL, plan = NULL;
    moe_place_options_t o = incremental_options(4, 2, 0.05);
    printf("(errors expected below)\n");
    CHECK_STATUS(moe_place_solve(&w, 1, &o, NULL, &plan, NULL), MOE_STATUS_INVALID_ARGUMENT);
    CHECK(plan == NULL);
    CHECK_STATUS(moe_plan_create_contiguous(L, 16, 2, 2, &other), MOE_STATUS_OK);
    CHECK_STATUS(moe_place_solve(&w, 1, &o, other, &plan, NULL), MOE_STATUS_INVALID_ARGUMENT);
    /* 8 experts on 2 ranks need 4 slots each */
    CHECK_STATUS(moe_plan_create_contiguous(L, E, 4, 4, &cur), MOE_STATUS_OK);
    o.ranks = 2;
    o.slots_per_rank = 3;
    CHECK_STATUS(moe_place_solve(&w, 1, &o, cur, &plan, NULL), MOE_STATUS_INVALID_ARGUMENT);
    CHECK(plan == NULL);
    o.slots_per_rank = 4;
    CHECK_STATUS(moe_place_solve(&w, 1, &o, cur, &plan, NULL), MOE_STATUS_OK);
    moe_plan_destroy(plan);
    plan = NULL;
    /* the current plan's 10 replicas per layer need 5 slots on 2 ranks */
    moe_plan_h replicated = replicated_plan(L, E);
    CHECK_STATUS(moe_place_solve(&w, 1, &o, replicated, &plan, NULL), MOE_STATUS_INVALID_ARGUMENT);
    CHECK(plan == NULL);
    moe_plan_destroy(replicated);

    moe_place_solver_t s = MOE_PLACE_SOLVER_GREEDY;
    CHECK_STATUS(moe_place_solver_parse("incremental", &s), MOE_STATUS_OK);
    CHECK_EQ_INT(s, MOE_PLACE_SOLVER_INCREMENTAL);
    CHECK(strcmp(moe_place_solver_name(MOE_PLACE_SOLVER_INCREMENTAL), "incremental") == 0);
    moe_plan_destroy(cur);
    moe_plan_destroy(other);
    moe_workload_destroy(w);
}

/* ---------------------------------------------------------------- DeepSeek-V3 size, timed */

static void v3_timing(void)
{
    const int L = 58, E = 256;
    moe_workload_h before = skewed_workload(L, E, 3, 0), after = skewed_workload(L, E, 3, 0.5);
    moe_plan_h cur = NULL;
    moe_place_options_t og = MOE_PLACE_OPTIONS_INIT;
    og.solver = MOE_PLACE_SOLVER_GREEDY;
    og.ranks = 64;
    og.ranks_per_node = 8;
    og.replicas = 32;
    CHECK_STATUS(moe_place_solve(&before, 1, &og, NULL, &cur, NULL), MOE_STATUS_OK);
    if (!cur) goto done;
    const int targets[3] = {56, 64, 72};
    for (int i = 0; i < 3; i++) {
        moe_place_options_t o = incremental_options(targets[i], 8, 0.05);
        moe_plan_h plan = NULL;
        moe_place_report_t rep;
        double t0 = moe_now();
        CHECK_STATUS(moe_place_solve(&after, 1, &o, cur, &plan, &rep), MOE_STATUS_OK);
        double total = moe_now() - t0;
        if (!plan) continue;
        check_replicas(plan);
        printf("58x256 (+32 redundant), 64 -> %d ranks: solve %.1f ms (with figures %.1f ms), "
               "max/mean %.4f (current plan %.4f), %d hosts moved\n",
               targets[i], 1e3 * rep.solve_seconds, 1e3 * total, worst_imbalance(plan, after),
               worst_imbalance(cur, after), rep.experts_moved);
        moe_plan_destroy(plan);
    }
done:
    moe_plan_destroy(cur);
    moe_workload_destroy(after);
    moe_workload_destroy(before);
}

int main(void)
{
    moe_log_init(0, MOE_LOG_WARN);
    scale_up_uniform();
    scale_down_uniform();
    rebalance_skewed(3, 16, 4);
    rebalance_skewed(4, 64, 8);
    replicas_scaled();
    errors();
    v3_timing();
    return moe_test_result("test_incremental");
}
