/* solve_simple.c: the baseline solvers and the entry point that dispatches to every solver.
 *
 *   contiguous   expert e on rank floor(e * R / E): what a runtime does without a plan;
 *   round-robin  expert e on rank e % R;
 *   greedy       DeepSeek's EPLB (global policy): the redundant slots go one at a time to the
 *                expert with the largest load per replica; replicas (equal shares) are then packed
 *                heaviest first onto the least loaded rank that still has a free slot and does not
 *                already host that expert. Several workloads are merged by adding their normalised
 *                loads (what a user of EPLB would do with several statistics files).
 * contiguous and round-robin host one copy of each expert (no redundant experts). Ties are broken
 * by the lowest index, so results are deterministic. The ILP, the exact model and the incremental
 * solver have files of their own. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "placement/place-impl.h"

static const char *const solver_names[] = {"contiguous", "round-robin", "greedy", "ilp",
                                           "exact",      "incremental", "hedged"};
#define N_SOLVERS ((int)(sizeof(solver_names) / sizeof(solver_names[0])))

moe_status_t moe_place_solver_parse(const char *name, moe_place_solver_t *out)
{
    for (int i = 0; i < N_SOLVERS; i++) {
        if (strcmp(name, solver_names[i]) == 0) {
            *out = (moe_place_solver_t)i;
            return MOE_STATUS_OK;
        }
    }
    moe_error("unknown solver '%s' (contiguous, round-robin, greedy, ilp, exact, incremental, "
              "hedged)",
              name);
    return MOE_STATUS_INVALID_ARGUMENT;
}

const char *moe_place_solver_name(moe_place_solver_t solver)
{
    return (unsigned)solver < (unsigned)N_SOLVERS ? solver_names[solver] : "?";
}

void moe_place_merged_weight(const moe_workload_h *w, int n, int layer, int ranks, double *weight)
{
    int E = w[0]->experts;
    for (int e = 0; e < E; e++) {
        weight[e] = 0;
        for (int i = 0; i < n; i++) weight[e] += moe_place_norm_load(w[i], layer, e, ranks);
    }
}

/* Redundant slots to the expert with the largest weight per replica (at most `ranks` each). */
void moe_place_counts_from_weight(const double *weight, int E, int replicas, int ranks,
                                  int *counts)
{
    for (int e = 0; e < E; e++) counts[e] = 1;
    for (int i = 0; i < replicas; i++) {
        int best = -1;
        double best_v = -1;
        for (int e = 0; e < E; e++) {
            if (counts[e] >= ranks) continue;
            double v = weight[e] / counts[e];
            if (v > best_v) {
                best_v = v;
                best = e;
            }
        }
        if (best < 0) break;
        counts[best]++;
    }
}

void moe_place_replica_counts(const moe_workload_h *w, int n, int layer, int replicas, int ranks,
                              int *counts)
{
    int E = w[0]->experts;
    double *hot = malloc(sizeof(double) * E);
    if (!hot) {
        for (int e = 0; e < E; e++) counts[e] = 1;
        return;
    }
    for (int e = 0; e < E; e++) {
        hot[e] = 0;
        for (int i = 0; i < n; i++) {
            double v = moe_place_norm_load(w[i], layer, e, ranks);
            hot[e] = v > hot[e] ? v : hot[e];
        }
    }
    moe_place_counts_from_weight(hot, E, replicas, ranks, counts);
    free(hot);
}

typedef struct {
    int expert;
    double weight;
} item_t;

static int item_cmp(const void *pa, const void *pb)
{
    const item_t *a = pa, *b = pb;
    if (a->weight != b->weight) return a->weight > b->weight ? -1 : 1;
    return a->expert - b->expert;
}

moe_status_t moe_place_greedy_layer(const moe_place_layout_t *lay, const int *counts,
                                    const double *weight, double *share)
{
    moe_status_t status = MOE_STATUS_OK;
    int E = lay->experts, R = lay->ranks;
    int n_items = 0;
    for (int e = 0; e < E; e++) n_items += counts[e];
    item_t *items = malloc(sizeof(item_t) * n_items);
    double *load = calloc((size_t)R, sizeof(double));
    int *used = calloc((size_t)R, sizeof(int));
    MOE_CHECK_ALLOC(items, done);
    MOE_CHECK_ALLOC(load, done);
    MOE_CHECK_ALLOC(used, done);
    memset(share, 0, sizeof(double) * E * R);
    for (int e = 0, k = 0; e < E; e++)
        for (int c = 0; c < counts[e]; c++) items[k++] = (item_t){e, weight[e] / counts[e]};
    qsort(items, (size_t)n_items, sizeof(item_t), item_cmp);
    for (int i = 0; i < n_items; i++) {
        int e = items[i].expert, best = -1;
        for (int r = 0; r < R; r++) {
            if (used[r] >= lay->rank_cap || share[(size_t)e * R + r] > 0) continue;
            if (best < 0 || load[r] < load[best]) best = r;
        }
        if (best < 0)
            MOE_FAIL(MOE_STATUS_SOLVER_ERROR, done,
                     "greedy: no rank has a free slot for a replica of expert %d", e);
        share[(size_t)e * R + best] = 1.0 / counts[e];
        load[best] += items[i].weight;
        used[best]++;
    }
done:
    free(used);
    free(load);
    free(items);
    return status;
}

moe_status_t moe_place_solve_simple(const moe_workload_h *w, int n, const moe_place_options_t *o,
                                    moe_plan_h *out)
{
    moe_status_t status = MOE_STATUS_OK;
    moe_place_layout_t lay;
    MOE_CHECK(moe_place_layout_make(w, n, o, &lay), fail);
    int L = lay.layers, E = lay.experts, R = lay.ranks;
    double *shares = moe_calloc((size_t)L * E * R, sizeof(double));
    double *weight = malloc(sizeof(double) * E);
    int *counts = malloc(sizeof(int) * E);
    MOE_CHECK_ALLOC(shares, done);
    MOE_CHECK_ALLOC(weight, done);
    MOE_CHECK_ALLOC(counts, done);
    for (int l = 0; l < L; l++) {
        double *share = shares + (size_t)l * E * R;
        switch (o->solver) {
        case MOE_PLACE_SOLVER_CONTIGUOUS:
            for (int e = 0; e < E; e++) share[(size_t)e * R + (int)((long)e * R / E)] = 1.0;
            break;
        case MOE_PLACE_SOLVER_ROUND_ROBIN:
            for (int e = 0; e < E; e++) share[(size_t)e * R + e % R] = 1.0;
            break;
        default:
            moe_place_merged_weight(w, n, l, R, weight);
            moe_place_counts_from_weight(weight, E, o->replicas, R, counts);
            MOE_CHECK(moe_place_greedy_layer(&lay, counts, weight, share), done);
            break;
        }
    }
    MOE_CHECK(moe_place_plan_from_shares(L, E, R, lay.ranks_per_node, shares, out), done);
done:
    free(counts);
    free(weight);
    moe_free(shares);
fail:
    return status;
}

moe_status_t moe_place_solve(const moe_workload_h *w, int n, const moe_place_options_t *o,
                             const moe_plan_h current, moe_plan_h *out, moe_place_report_t *report)
{
    moe_status_t status = MOE_STATUS_OK;
    moe_place_report_t rep = {.warm_objective = NAN, .mip_gap = NAN, .balance_gap = NAN};
    moe_place_layout_t lay;
    moe_plan_h plan = NULL;
    bool incremental = o->solver == MOE_PLACE_SOLVER_INCREMENTAL;
    /* the incremental solver keeps the current plan's replicas: --replicas does not apply */
    moe_place_options_t lo = *o;
    if (incremental) lo.replicas = 0;
    MOE_CHECK(moe_place_layout_make(w, n, &lo, &lay), fail);
    if (incremental && !current)
        MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, fail,
                 "place: the incremental solver starts from the plan in service: give it "
                 "(--current PLAN)");
    if (incremental && o->replicas > 0)
        moe_warn("place: the incremental solver keeps the current plan's replicas; --replicas %d "
                 "is ignored",
                 o->replicas);
    if (current) {
        if (moe_plan_layers(current) != lay.layers || moe_plan_experts(current) != lay.experts)
            MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, fail,
                     "--current plan is for %d layers x %d experts; the statistics have %d x %d",
                     moe_plan_layers(current), moe_plan_experts(current), lay.layers, lay.experts);
    }
    double t0 = moe_now();
    switch (o->solver) {
    case MOE_PLACE_SOLVER_ILP:
        MOE_CHECK(moe_place_solve_ilp(w, n, o, current, &plan, &rep), fail);
        break;
    case MOE_PLACE_SOLVER_EXACT:
        MOE_CHECK(moe_place_solve_exact(w, n, o, &plan, &rep), fail);
        break;
    case MOE_PLACE_SOLVER_HEDGED:
        MOE_CHECK(moe_place_solve_hedged(w, n, o, current, &plan, &rep), fail);
        break;
    case MOE_PLACE_SOLVER_INCREMENTAL:
        MOE_CHECK(moe_place_solve_incremental(w, n, o, current, &plan), fail);
        break;
    default:
        MOE_CHECK(moe_place_solve_simple(w, n, o, &plan), fail);
        break;
    }
    rep.solve_seconds = moe_now() - t0;
    rep.objective = moe_place_objective(plan, w, n, o, NULL);
    if (current) {
        /* hosts that are new compared with the plan in service (current is only read: the
         * solver may run on a thread) */
        rep.experts_moved = (int)moe_plan_new_hosts(current, plan);
        rep.bytes_moved = rep.experts_moved * o->expert_bytes;
    }
    if (report) *report = rep;
    *out = plan;
    return MOE_STATUS_OK;
fail:
    moe_plan_destroy(plan);
    return status;
}
