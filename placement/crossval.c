/* crossval.c: choosing the hedged solver's two weights (hedge, traffic weight) by cross-validation
 * across the sources given: build on some, score on the others.
 *
 * Folds: with two or more sources, each source is held out in turn and the plan is built from the
 * rest; with one trace, its two halves (by tokens) are the folds. The held-out source is scored by
 * the replay when it has routes (a trace), by the model otherwise (a CSV of loads: balance only).
 * Each point of a small grid is scored on every fold against greedy (EPLB) built from the same
 * training sources, and chosen by the rule: among the points whose held-out mean and worst
 * per-layer max/mean are no worse than greedy's on every fold, the one with the lowest held-out
 * cost (mean max/mean + copy_cost x copies, the cost model's units); if none qualifies, the one
 * that exceeds greedy's balance least (summed over folds), then the cheapest. The same sources
 * give the same choice (the solver is deterministic unless a time limit stops it). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "placement/place-impl.h"

static const double grid_hedge[] = {0, 0.25, 0.5, 0.75};
static const double grid_traffic[] = {0, 0.1, 0.25, 0.5};

/* Half of a trace workload's tokens (half 0 or 1) as a workload of its own. */
static moe_status_t trace_half(const moe_workload_h w, int half, moe_workload_h *out)
{
    moe_status_t status = MOE_STATUS_OK;
    int L = w->layers, K = w->top_k;
    int64_t T = w->route_tokens, a = half ? T / 2 : 0, b = half ? T : T / 2;
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)L * (b - a) * K + 1);
    MOE_CHECK_ALLOC(ids, fail);
    for (int l = 0; l < L; l++)
        memcpy(ids + (size_t)l * (b - a) * K, w->ids + ((size_t)l * T + a) * K,
               sizeof(int32_t) * (b - a) * K);
    char name[600];
    snprintf(name, sizeof(name), "%s (%s half)", w->name, half ? "second" : "first");
    status = moe_workload_from_ids(ids, L, b - a, K, w->experts, name, out);
    free(ids);
fail:
    return status;
}

/* Held-out figures: mean and worst per-layer max/mean, and the copies term (cost - balance). */
static moe_status_t score(const moe_plan_h plan, const moe_workload_h held,
                          const moe_place_options_t *o, double *mean, double *worst,
                          double *copies)
{
    moe_status_t status = MOE_STATUS_OK;
    moe_place_figures_t f;
    if (held->ids)
        MOE_CHECK(moe_place_evaluate(plan, held, o, &f), fail);
    else
        MOE_CHECK(moe_place_model(plan, held, o, &f), fail);
    *mean = f.mean_imbalance;
    *worst = f.worst_imbalance;
    *copies = f.cost - f.mean_imbalance;
    moe_place_figures_free(&f);
fail:
    return status;
}

moe_status_t moe_place_cross_validate(const moe_workload_h *w, int n,
                                      const moe_place_options_t *options, moe_place_cv_t *out)
{
    moe_status_t status = MOE_STATUS_OK;
    moe_workload_h halves[2] = {NULL, NULL};
    const moe_workload_h *src = w;
    int folds = n;
    moe_plan_h plan = NULL;
    moe_workload_h *train = NULL;
    memset(out, 0, sizeof(*out));
    if (n == 1) {
        if (!w[0]->ids)
            MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, done,
                     "place --cross-validate: one source without routes (%s) cannot be split; "
                     "give two or more sources, or a trace",
                     w[0]->name);
        MOE_CHECK(trace_half(w[0], 0, &halves[0]), done);
        MOE_CHECK(trace_half(w[0], 1, &halves[1]), done);
        src = halves;
        folds = 2;
    }
    if (folds > MOE_PLACE_CV_FOLDS)
        MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, done,
                 "place --cross-validate: at most %d sources", MOE_PLACE_CV_FOLDS);
    train = malloc(sizeof(moe_workload_h) * folds);
    MOE_CHECK_ALLOC(train, done);
    moe_place_options_t o = *options; /* each solve has the time limit of one */
    out->folds = folds;
    /* greedy from the same training sources: the reference on every fold */
    for (int f = 0; f < folds; f++) {
        int nt = 0;
        for (int i = 0; i < folds; i++)
            if (i != f) train[nt++] = src[i];
        o.solver = MOE_PLACE_SOLVER_GREEDY;
        MOE_CHECK(moe_place_solve(train, nt, &o, NULL, &plan, NULL), done);
        MOE_CHECK(score(plan, src[f], &o, &out->greedy_mean[f], &out->greedy_worst[f],
                        &out->greedy_copies[f]),
                  done);
        moe_plan_destroy(plan);
        plan = NULL;
    }
    for (size_t a = 0; a < sizeof(grid_hedge) / sizeof(grid_hedge[0]); a++)
        for (size_t b = 0; b < sizeof(grid_traffic) / sizeof(grid_traffic[0]); b++) {
            moe_place_cv_point_t *p = &out->points[out->n_points++];
            p->hedge = grid_hedge[a];
            p->traffic_weight = grid_traffic[b];
            p->feasible = true;
            for (int f = 0; f < folds; f++) {
                int nt = 0;
                for (int i = 0; i < folds; i++)
                    if (i != f) train[nt++] = src[i];
                o.solver = MOE_PLACE_SOLVER_HEDGED;
                o.hedge = p->hedge;
                o.traffic_weight = p->traffic_weight;
                MOE_CHECK(moe_place_solve(train, nt, &o, NULL, &plan, NULL), done);
                MOE_CHECK(score(plan, src[f], &o, &p->mean[f], &p->worst[f], &p->copies[f]), done);
                moe_plan_destroy(plan);
                plan = NULL;
                p->cost += (p->mean[f] + p->copies[f]) / folds;
                p->excess += fmax(0, p->mean[f] - out->greedy_mean[f]) +
                             fmax(0, p->worst[f] - out->greedy_worst[f]);
                p->feasible &= p->mean[f] <= out->greedy_mean[f] &&
                               p->worst[f] <= out->greedy_worst[f];
            }
        }
    int best = 0;
    for (int i = 1; i < out->n_points; i++) {
        const moe_place_cv_point_t *p = &out->points[i], *q = &out->points[best];
        bool better = p->feasible != q->feasible ? p->feasible
                      : p->feasible              ? p->cost < q->cost
                      : p->excess != q->excess   ? p->excess < q->excess
                                                 : p->cost < q->cost;
        if (better) best = i;
    }
    out->chosen = best;
done:
    moe_plan_destroy(plan);
    free(train);
    moe_workload_destroy(halves[0]);
    moe_workload_destroy(halves[1]);
    return status;
}
