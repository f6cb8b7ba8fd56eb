/* test_traffic: the copies the model counts against the copies the replay counts, for the plan of
 * every solver on the real ESFT traces (within 5%, flat and hierarchical, 16 = 2 x 8 and 32 = 4 x 8
 * ranks); the incremental form (moe_traffic_t) against a count from scratch after a sequence of
 * moves and swaps, and its read-only delta against the change it predicts. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "placement/place-impl.h"

#ifndef MOE_ROUTING_DIR
#define MOE_ROUTING_DIR "../shared/data/routing"
#endif

static moe_workload_h load(const char *name)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/deepseek-v2-lite-esft/%s", MOE_ROUTING_DIR, name);
    moe_workload_h w = NULL;
    CHECK_STATUS(moe_workload_load_trace(path, 64, &w), MOE_STATUS_OK);
    return w;
}

static double rel(double model, double replay)
{
    return fabs(model - replay) / fmax(1, replay);
}

/* Every solver's plan from `from`, modelled and replayed on `on` (a trace it was not built from
 * and the source itself). */
static void model_vs_replay(moe_workload_h from, moe_workload_h on, int R, int X)
{
    moe_place_solver_t solvers[] = {MOE_PLACE_SOLVER_CONTIGUOUS, MOE_PLACE_SOLVER_ROUND_ROBIN,
                                    MOE_PLACE_SOLVER_GREEDY,     MOE_PLACE_SOLVER_ILP,
                                    MOE_PLACE_SOLVER_HEDGED,     MOE_PLACE_SOLVER_INCREMENTAL};
    moe_plan_h greedy = NULL;
    for (size_t i = 0; i < sizeof(solvers) / sizeof(solvers[0]); i++) {
        moe_place_options_t o = MOE_PLACE_OPTIONS_INIT;
        o.ranks = R;
        o.ranks_per_node = 8;
        o.replicas = X;
        o.time_limit = 3;
        o.solver = solvers[i];
        o.move_cost = 0;
        moe_plan_h plan = NULL;
        CHECK_STATUS(moe_place_solve(&from, 1, &o, greedy, &plan, NULL), MOE_STATUS_OK);
        if (!plan) continue;
        moe_workload_h ws[2] = {from, on};
        for (int k = 0; k < 2; k++) {
            moe_place_figures_t m, r;
            CHECK_STATUS(moe_place_model(plan, ws[k], &o, &m), MOE_STATUS_OK);
            CHECK_STATUS(moe_place_evaluate(plan, ws[k], &o, &r), MOE_STATUS_OK);
            double e1 = rel(m.inter_total, r.inter_total), e2 = rel(m.intra_total, r.intra_total);
            double e3 = rel(m.inter_hier_total, r.inter_hier_total);
            double e4 = rel(m.intra_hier_total, r.intra_hier_total);
            double e5 = rel(m.mean_imbalance, r.mean_imbalance);
            printf("%-11s %2d ranks, %s: model vs replay: inter %.2f%%, intra %.2f%%, "
                   "hierarchical inter %.2f%% intra %.2f%%, max/mean %.2f%%\n",
                   moe_place_solver_name(solvers[i]), R, k ? "other trace" : "source",
                   100 * e1, 100 * e2, 100 * e3, 100 * e4, 100 * e5);
            CHECK(e1 < 0.05 && e2 < 0.05 && e3 < 0.05 && e4 < 0.05 && e5 < 0.05);
            moe_place_figures_free(&m);
            moe_place_figures_free(&r);
        }
        if (solvers[i] == MOE_PLACE_SOLVER_GREEDY)
            greedy = plan; /* the incremental solver starts from it */
        else
            moe_plan_destroy(plan);
    }
    moe_plan_destroy(greedy);
}

/* The incremental form follows moves and swaps exactly; its delta predicts the change. */
static void incremental_vs_scratch(moe_workload_h w, bool hier)
{
    moe_place_options_t o = MOE_PLACE_OPTIONS_INIT;
    o.ranks = 16;
    o.ranks_per_node = 8;
    o.replicas = 16;
    o.hierarchical = hier;
    o.solver = MOE_PLACE_SOLVER_GREEDY;
    moe_plan_h plan = NULL;
    CHECK_STATUS(moe_place_solve(&w, 1, &o, NULL, &plan, NULL), MOE_STATUS_OK);
    if (!plan) return;
    int E = 64, R = 16, layer = 5;
    double *share = malloc(sizeof(double) * E * R);
    moe_place_plan_layer_shares(plan, layer, share);
    moe_traffic_t *tr = NULL;
    CHECK_STATUS(moe_traffic_create(w, layer, &o, 0, &tr), MOE_STATUS_OK);
    moe_traffic_set(tr, share);
    int changes = 0;
    double worst = 0;
    for (int step = 0; step < 400 && changes < 60; step++) {
        uint64_t h = moe_hash(7, (uint64_t)step, 0, 0, 0);
        int e1 = (int)(h % E), r2 = (int)((h >> 16) % R), r1 = -1;
        for (int r = 0; r < R; r++)
            if (share[e1 * R + r] > 0 && r != r2) r1 = r;
        if (r1 < 0 || share[e1 * R + r2] > 0) continue;
        /* a swap with an expert of r2 that r1 does not host, every other time */
        int e2 = -1;
        for (int e = 0; e < E && (step & 1); e++)
            if (e != e1 && share[e * R + r2] > 0 && share[e * R + r1] == 0) e2 = e;
        double x1 = share[e1 * R + r1], x2 = e2 >= 0 ? share[e2 * R + r2] : 0;
        double predicted = moe_traffic_delta(tr, e1, x1, r1, r2, e2, x2);
        double before = moe_traffic_cost(tr);
        moe_traffic_move(tr, e1, x1, r1, r2);
        if (e2 >= 0) moe_traffic_move(tr, e2, x2, r2, r1);
        share[e1 * R + r2] = x1, share[e1 * R + r1] = 0;
        if (e2 >= 0) share[e2 * R + r1] = x2, share[e2 * R + r2] = 0;
        worst = fmax(worst, fabs(moe_traffic_cost(tr) - before - predicted));
        changes++;
    }
    /* from scratch: the state, a fresh state, and the replay-model function agree */
    moe_traffic_t *fresh = NULL;
    CHECK_STATUS(moe_traffic_create(w, layer, &o, 0, &fresh), MOE_STATUS_OK);
    moe_traffic_set(fresh, share);
    moe_place_copies_t c;
    CHECK_STATUS(moe_place_route_copies(share, layer, w, R, 8, o.tokens_per_rank, &c),
                 MOE_STATUS_OK);
    double pairs = 0;
    for (int e = 0; e < E; e++) pairs += moe_workload_loads(w)[layer * E + e];
    double direct = hier ? o.inter_factor * c.inter_hier + c.intra_hier
                         : o.inter_factor * c.inter + c.intra;
    printf("incremental copies (%s) after %d changes: %.9f, from scratch %.9f, counted %.9f; "
           "largest delta error %.2g\n",
           hier ? "hierarchical" : "flat", changes, moe_traffic_cost(tr), moe_traffic_cost(fresh),
           o.copy_cost * direct / pairs, worst);
    CHECK(changes >= 40);
    CHECK_NEAR(moe_traffic_cost(tr), moe_traffic_cost(fresh), 1e-9);
    CHECK_NEAR(moe_traffic_cost(fresh), o.copy_cost * direct / pairs, 1e-9);
    CHECK(worst < 1e-9);
    moe_traffic_destroy(fresh);
    moe_traffic_destroy(tr);
    free(share);
    moe_plan_destroy(plan);
}

int main(void)
{
    moe_log_init(0, MOE_LOG_ERROR);
    moe_workload_h intent = load("intent.topk_ids.npy"), law = load("law.topk_ids.npy");
    if (intent && law) {
        incremental_vs_scratch(intent, false);
        incremental_vs_scratch(law, true);
        model_vs_replay(intent, law, 16, 16);
        model_vs_replay(law, intent, 32, 32);
    }
    moe_workload_destroy(intent);
    moe_workload_destroy(law);
    return moe_test_result("test_traffic");
}
