/* place-impl.h: declarations private to placement/ (the solvers, the cost model and the source
 * loaders share them); no other module includes this header. */
#ifndef MOE_PLACE_IMPL_H
#define MOE_PLACE_IMPL_H

#include <stdint.h>

#include "placement/placement.h"

struct moe_workload_s {
    char name[512];
    int layers;
    int experts;
    int top_k;
    double tokens;
    double *loads; /* [L][E] */
    double *coact; /* [L][E][E] (symmetric, diagonal = loads) or NULL */
    double *trans; /* [L-1][E][E] or NULL */
    int32_t *ids;  /* [L][T][k] routes, or NULL */
    int64_t route_tokens;
    /* Scenarios the hedged objective judges balance over: blocks of a trace's tokens, the rows
     * (labels) of a CSV, or the whole statistics file; [windows][L][E] token counts. */
    int windows;
    double *window_loads;
};

/* Token blocks a trace is cut into for the hedged objective (fewer when it has few tokens). */
#define MOE_WORKLOAD_WINDOWS 8
#define MOE_WORKLOAD_WINDOW_MIN_TOKENS 256

/* Allocate a workload with zeroed loads (and co-activation / transitions when asked). */
moe_status_t moe_workload_alloc(const char *name, int layers, int experts, int top_k, bool pairs,
                                moe_workload_h *out);
/* Allocate `windows` zeroed scenario loads (replacing any). */
moe_status_t moe_workload_alloc_windows(moe_workload_h w, int windows);

/* The layout of ranks and slots that every solver shares. */
typedef struct {
    int layers, experts, ranks, ranks_per_node, nodes;
    int slots;    /* experts + replicas per layer */
    int rank_cap; /* ceil(slots / ranks): slots one rank may host */
} moe_place_layout_t;

moe_status_t moe_place_layout_make(const moe_workload_h *w, int n, const moe_place_options_t *o,
                                   moe_place_layout_t *out);

/* Normalised weight of expert e at layer l in workload w: its tokens over the workload's mean
 * load per rank (so that a rank with weight 1 is exactly average). */
static inline double moe_place_norm_load(const moe_workload_h w, int layer, int expert, int ranks)
{
    double total = 0;
    const double *row = w->loads + (size_t)layer * w->experts;
    for (int e = 0; e < w->experts; e++) total += row[e];
    return total > 0 ? row[expert] * ranks / total : 0;
}

/* Solvers work on dense share matrices: share[e * ranks + r] is the share of expert e's tokens that
 * rank r takes at one layer (0: not hosted). */

/* The objective's term for one layer (see cost.c); prev: the previous layer's shares (used with
 * stay residency; may be NULL). */
double moe_place_layer_cost(const double *share, const double *prev, int layer,
                            const moe_workload_h *w, int n, const moe_place_options_t *o);
/* Its balance part: the worst workload's max/mean load. */
double moe_place_layer_balance(const double *share, int layer, const moe_workload_h *w, int n,
                               int ranks);
/* The weight of co-locating a and b on one rank, and on one node, per unit of
 * sum_w coact_w(a, b) / pairs_w / n (the objective decreases by this much per co-located pair). */
void moe_place_pair_weights(const moe_place_options_t *o, double *rank_weight, double *node_weight);

/* ---- copies counted from routes (traffic.c) */

typedef struct {
    double inter, intra;           /* flat dispatch */
    double inter_hier, intra_hier; /* hierarchical dispatch */
} moe_place_copies_t;

/* Copies of one layer of a workload with routes under shares [E][R] (R ranks, G per node),
 * expected over the runtime's replica hash, each token from its own home rank. */
moe_status_t moe_place_route_copies(const double *share, int layer, const moe_workload_h w, int R,
                                    int G, int64_t tokens_per_rank, moe_place_copies_t *out);

/* The same, kept per token so that moving a replica is priced incrementally (local searches).
 * Cost units: options->copy_cost x (inter_factor x inter + intra) / pairs, with hierarchical
 * copies when options->hierarchical. max_tokens > 0 keeps a stride sample of the tokens. */
typedef struct moe_traffic_s moe_traffic_t;
moe_status_t moe_traffic_create(const moe_workload_h w, int layer, const moe_place_options_t *o,
                                int64_t max_tokens, moe_traffic_t **out);
void moe_traffic_destroy(moe_traffic_t *traffic); /* NULL-safe */
/* Start from shares [E][R] (computed from scratch). */
void moe_traffic_set(moe_traffic_t *traffic, const double *share);
double moe_traffic_cost(const moe_traffic_t *traffic);
/* Move `amount` of e's share from rank `from` to `to`; returns the change of the cost. */
double moe_traffic_move(moe_traffic_t *traffic, int e, double amount, int from, int to);
/* The change of the cost if e1 moved x1 from r1 to r2 and e2 (>= 0) moved x2 from r2 to r1,
 * without making it. */
double moe_traffic_delta(const moe_traffic_t *traffic, int e1, double x1, int r1, int r2, int e2,
                         double x2);
/* A bound on the saving a move of `amount` of e can bring, without making it. */
double moe_traffic_move_bound(const moe_traffic_t *traffic, int e, double amount);

/* Dense shares of one layer of a plan into share [E][R]. */
void moe_place_plan_layer_shares(const moe_plan_h plan, int layer, double *share);
/* A plan from dense shares [L][E][R]. */
moe_status_t moe_place_plan_from_shares(int layers, int experts, int ranks, int ranks_per_node,
                                        const double *shares, moe_plan_h *out);

/* Greedy (EPLB) hosting of one layer with equal shares into share [E][R]: counts[E] replicas per
 * expert; weight[E] the expert's load (split equally over its replicas when packing). */
moe_status_t moe_place_greedy_layer(const moe_place_layout_t *lay, const int *counts,
                                    const double *weight, double *share);
/* Replica counts[E]: the redundant slots one at a time to the expert with the largest weight per
 * replica (at most `ranks` replicas each; ties to the lowest index). */
void moe_place_counts_from_weight(const double *weight, int E, int replicas, int ranks,
                                  int *counts);
/* The per-expert weight greedy packs by: the sum over workloads of normalised loads. */
void moe_place_merged_weight(const moe_workload_h *w, int n, int layer, int ranks, double *weight);

/* The simple solvers (contiguous, round-robin, greedy) into a fresh plan. */
moe_status_t moe_place_solve_simple(const moe_workload_h *w, int n, const moe_place_options_t *o,
                                    moe_plan_h *out);
/* The decomposed ILP and the exact joint model. */
moe_status_t moe_place_solve_ilp(const moe_workload_h *w, int n, const moe_place_options_t *o,
                                 const moe_plan_h current, moe_plan_h *out,
                                 moe_place_report_t *rep);
moe_status_t moe_place_solve_hedged(const moe_workload_h *w, int n, const moe_place_options_t *o,
                                    const moe_plan_h current, moe_plan_h *out,
                                    moe_place_report_t *rep);
/* The hedged solver's local search on one layer from the hosting in share [E][R] (improved in
 * place; shares as they are), under o's hedge and traffic weight, until deadline (moe_now()). */
moe_status_t moe_place_hedged_improve(const moe_workload_h *w, int n,
                                      const moe_place_options_t *o, int layer, double *share,
                                      double deadline);
moe_status_t moe_place_solve_exact(const moe_workload_h *w, int n, const moe_place_options_t *o,
                                   moe_plan_h *out, moe_place_report_t *rep);
/* The incremental solver (online re-balancing, scale events): current is required and may have
 * another number of ranks than o->ranks. */
moe_status_t moe_place_solve_incremental(const moe_workload_h *w, int n,
                                         const moe_place_options_t *o, const moe_plan_h current,
                                         moe_plan_h *out);

#endif
