/* placement: which rank hosts which expert, and the routing statistics plans are made from.
 *
 * A plan says, for every layer and expert, the rank(s) that host it and the share of the expert's
 * tokens each replica takes (shares of one expert sum to 1). A rank hosts an expert at most once per
 * layer. The runtime sends a token to the replica moe_plan_pick_replica() names, and the placement
 * evaluator uses the same function, so that what is modelled is what is sent.
 *
 * Statistics, per run or per trace (counts over tokens):
 *   loads        [L][E]      tokens that picked expert e at layer l;
 *   coactivation [L][E][E]   tokens that picked both a and b at layer l (diagonal = loads);
 *   transitions  [L-1][E][E] tokens that picked a at layer l and b at layer l+1.
 * Stored as safetensors (I64 tensors "loads", "coactivation", "transitions") with metadata
 * model, layers, experts, top_k, tokens. */
#ifndef MOE_PLACEMENT_H
#define MOE_PLACEMENT_H

#include <stdbool.h>
#include <stdint.h>

#include "common/common.h"

/* ---------------------------------------------------------------- plans */

typedef struct moe_plan_s *moe_plan_h;

/* Contiguous blocks: expert e of every layer on rank e / (experts / ranks). experts % ranks == 0. */
moe_status_t moe_plan_create_contiguous(int layers, int experts, int ranks, int ranks_per_node,
                                        moe_plan_h *out);

/* An empty plan to fill with moe_plan_add_replica (solvers, the loader). */
moe_status_t moe_plan_create_empty(int layers, int experts, int ranks, int ranks_per_node,
                                   moe_plan_h *out);
/* Add rank as a host of (layer, expert) with the given share. Errors if the rank already hosts it. */
moe_status_t moe_plan_add_replica(moe_plan_h plan, int layer, int expert, int rank, float share);

/* Checks every expert has >= 1 replica, shares are positive and sum to 1 (within 1e-4), ranks are in
 * range. `what` names the plan in messages (its file). */
moe_status_t moe_plan_check(const moe_plan_h plan, const char *what);

/* Checks that the plan fits a model and world (layers, experts, ranks), naming what differs. */
moe_status_t moe_plan_check_fits(const moe_plan_h plan, int layers, int experts, int ranks,
                                 const char *what);

void moe_plan_destroy(moe_plan_h plan); /* NULL-safe */

/* A plan as bytes, to send between the ranks of a job (malloc'd, the caller's to free), and back
 * (checked: sizes, counts, moe_plan_check; errors name `what`). */
moe_status_t moe_plan_pack(const moe_plan_h plan, void **out, size_t *bytes);
moe_status_t moe_plan_unpack(const void *data, size_t bytes, const char *what, moe_plan_h *out);

/* Plan files (YAML, human-readable; format documented in plan_yaml.c). Load errors name file:line and
 * the key; save is atomic. */
moe_status_t moe_plan_load(const char *path, moe_plan_h *out);
moe_status_t moe_plan_save(const moe_plan_h plan, const char *path);

int moe_plan_layers(const moe_plan_h plan);
int moe_plan_experts(const moe_plan_h plan);
int moe_plan_ranks(const moe_plan_h plan);
int moe_plan_ranks_per_node(const moe_plan_h plan);

/* Replicas of (layer, expert): returns their count; ranks and shares point into the plan. */
int moe_plan_replicas(const moe_plan_h plan, int layer, int expert, const int **ranks,
                      const float **shares);

/* Experts that rank hosts at layer, ascending: returns the count; experts points into the plan. A
 * rank beyond the plan's ranks hosts none. The first call builds a cache: make it before sharing
 * the plan between threads. */
int moe_plan_local_experts(const moe_plan_h plan, int layer, int rank, const int **experts);

/* Index of expert in rank's local list at layer, or -1 if the rank does not host it (or is beyond
 * the plan's ranks). */
int moe_plan_local_slot(const moe_plan_h plan, int layer, int rank, int expert);

/* (layer, expert, rank) hosts of `to` whose rank does not host that (layer, expert) in `from`: the
 * experts that must move to go from one plan to the other (the plans may have different ranks; a
 * rank beyond from's hosts nothing there). Reads the replica lists only, not the lookup cache. */
int64_t moe_plan_new_hosts(const moe_plan_h from, const moe_plan_h to);

/* The replica (a rank) that token `token` (global index) uses for (layer, expert): a hash of
 * (layer, expert, token) against the cumulative shares, so that every rank and the evaluator agree. */
int moe_plan_pick_replica(const moe_plan_h plan, int layer, int expert, int64_t token);

/* ---------------------------------------------------------------- statistics */

typedef struct moe_stats_s *moe_stats_h;

moe_status_t moe_stats_create(int layers, int experts, int top_k, moe_stats_h *out);
void moe_stats_destroy(moe_stats_h stats); /* NULL-safe */

/* Add n tokens' routes: ids is [layers][n][top_k] (layer-major, as traces store them); entries < 0
 * are ignored. */
void moe_stats_add(moe_stats_h stats, const int32_t *ids, int64_t n);

int moe_stats_layers(const moe_stats_h stats);
int moe_stats_experts(const moe_stats_h stats);
int moe_stats_top_k(const moe_stats_h stats);
int64_t moe_stats_tokens(const moe_stats_h stats);
int64_t *moe_stats_loads(moe_stats_h stats);        /* [L][E] */
int64_t *moe_stats_coactivation(moe_stats_h stats); /* [L][E][E] */
int64_t *moe_stats_transitions(moe_stats_h stats);  /* [L-1][E][E] */
void moe_stats_set_tokens(moe_stats_h stats, int64_t tokens);

moe_status_t moe_stats_save(const moe_stats_h stats, const char *model_name, const char *path);
moe_status_t moe_stats_load(const char *path, moe_stats_h *out);

/* ---- solvers and evaluation
 *
 * The cost model is written down in docs/placement.md and at the top of placement/cost.c. In short,
 * per layer: the most loaded rank's token-expert pairs (x expert cost) over the mean, plus the token
 * copies the runtime sends (once per distinct destination rank; copies to the home rank are free;
 * copies leaving the home node cost inter_factor times an intra-node copy), weighted by copy_cost. */

/* A workload: the routing statistics of one source (a statistics file, a trace or a CSV of loads),
 * held as doubles. A workload made from a trace also keeps the routes, so that plans can be replayed
 * against it exactly. */
typedef struct moe_workload_s *moe_workload_h;

/* A trace: PATH[@START:END] names ids [L][T][k] (.npy, any integer type), optionally a token range
 * (END may be empty for "to the end"). Entries < 0 are ignored; a repeated id in one token counts once.
 * experts: experts per layer, or 0 for the largest id + 1 rounded up to a multiple of 8. */
moe_status_t moe_workload_load_trace(const char *spec, int experts, moe_workload_h *out);
/* A statistics file (safetensors written by moe_stats_save). */
moe_status_t moe_workload_load_stats(const char *path, moe_workload_h *out);
/* A CSV of loads "Layer,<label>,Expert_0..Expert_{E-1}" (rows: fraction of tokens that picked the expert;
 * a row sums to top_k). SPEC is PATH[@LABEL]: with a label only rows whose second column equals it are
 * read, otherwise rows of one layer are added up. `tokens` tokens per row. No co-activation. */
moe_status_t moe_workload_load_csv(const char *spec, double tokens, moe_workload_h *out);
/* From routes in memory: ids [layers][tokens][top_k] (copied). */
moe_status_t moe_workload_from_ids(const int32_t *ids, int layers, int64_t tokens, int top_k,
                                   int experts, const char *name, moe_workload_h *out);
/* From a statistics object (copied). */
moe_status_t moe_workload_from_stats(const moe_stats_h stats, const char *name, moe_workload_h *out);
void moe_workload_destroy(moe_workload_h workload); /* NULL-safe */

const char *moe_workload_name(const moe_workload_h workload);
int moe_workload_layers(const moe_workload_h workload);
int moe_workload_experts(const moe_workload_h workload);
int moe_workload_top_k(const moe_workload_h workload);
double moe_workload_tokens(const moe_workload_h workload);
bool moe_workload_has_routes(const moe_workload_h workload);
/* Read-only views, [L][E] and [L][E][E] (NULL when the source has no co-activation). */
const double *moe_workload_loads(const moe_workload_h workload);
const double *moe_workload_coactivation(const moe_workload_h workload);

typedef enum {
    MOE_PLACE_SOLVER_CONTIGUOUS = 0,
    MOE_PLACE_SOLVER_ROUND_ROBIN,
    MOE_PLACE_SOLVER_GREEDY,
    MOE_PLACE_SOLVER_ILP,
    MOE_PLACE_SOLVER_EXACT,       /* the cost model to optimality over counts and hosts, equal shares */
    MOE_PLACE_SOLVER_INCREMENTAL, /* online: from `current` (any ranks), few moves; balance only */
    MOE_PLACE_SOLVER_HEDGED,      /* for routing the sources do not show (solve_hedged.c) */
} moe_place_solver_t;

moe_status_t moe_place_solver_parse(const char *name, moe_place_solver_t *out);
const char *moe_place_solver_name(moe_place_solver_t solver);

typedef struct {
    int ranks;
    int ranks_per_node;
    int replicas;            /* redundant expert slots per layer (slots = experts + replicas) */
    moe_place_solver_t solver;
    double time_limit;       /* seconds for the whole solve (ILP, exact) */
    double copy_cost;        /* an intra-node token copy (dispatch + combine) in units of one
                                token-expert FFN */
    double hedge;            /* hedged solver: weight in [0, 1] of the shifted domains against the
                                sources in the balance term */
    double traffic_weight;   /* hedged solver: weight of the copies against balance (x copy_cost) */
    double inter_factor;     /* an inter-node copy / an intra-node copy (NVLink vs InfiniBand) */
    int64_t tokens_per_rank; /* replay: token t's home rank is (t / tokens_per_rank) % ranks */
    double node_slack;       /* ILP: node loads within (1 + slack) of the best node balance */
    int max_pairs;           /* ILP: co-activation pairs kept per node subproblem (0: all) */
    bool share_lp;           /* ILP: re-balance replica shares with an LP at the end */
    double expert_bytes;     /* weight bytes of one expert (for --current) */
    double move_cost;        /* objective units per expert moved away from the current plan */
    int slots_per_rank;      /* experts one rank can hold (memory); 0: no limit */
    bool hierarchical;       /* model hierarchical dispatch (once per remote node) in the objective */
    bool stay;               /* model stay residency (tokens stay on the rank of their last expert
                                between layers) in the objective: transitions count */
    int verbose;
} moe_place_options_t;

#define MOE_PLACE_OPTIONS_INIT                                                                    \
    {                                                                                             \
        .ranks = 0, .ranks_per_node = 0, .replicas = 0, .solver = MOE_PLACE_SOLVER_HEDGED,        \
        .time_limit = 60.0, .copy_cost = 1.0, .hedge = 0.75, .traffic_weight = 0.25,              \
        .inter_factor = 3.2, .tokens_per_rank = 512,                                              \
        .node_slack = 0.01, .max_pairs = 0, .share_lp = true, .expert_bytes = 17301504.0,         \
        .move_cost = 0.05, .slots_per_rank = 0, .hierarchical = false, .stay = false,             \
        .verbose = 0,                                                                             \
    }

/* Figures of one plan on one workload, per layer and summed. Replayed (exact, from routes) or
 * modelled (from statistics; copies are then second-order estimates, see cost.c). Arrays are one
 * allocation owned by the struct; free with moe_place_figures_free. */
typedef struct {
    int layers;
    int ranks;
    int ranks_per_node;
    bool replayed;
    double tokens;
    double *max_load;   /* [L] token-expert pairs on the most loaded rank */
    double *mean_load;  /* [L] pairs / ranks */
    double *imbalance;  /* [L] max / mean */
    double *inter;      /* [L] copies leaving the home node (dispatch; combine mirrors it) */
    double *intra;      /* [L] copies to another rank of the home node */
    double *inter_hier; /* [L] hierarchical dispatch: once per remote node */
    double *intra_hier; /* [L] ... plus forwarding inside the remote node */
    double *inter_stay; /* [L] tokens stay on the rank of their last expert between layers */
    double *intra_stay; /* [L] */
    double worst_imbalance, mean_imbalance;
    double inter_total, intra_total, inter_hier_total, intra_hier_total;
    double inter_stay_total, intra_stay_total;
    double cost;        /* modelled per-layer cost, mean over layers (see cost.c) */
} moe_place_figures_t;

void moe_place_figures_free(moe_place_figures_t *figures); /* NULL-safe */

/* Replay a workload's routes against a plan (the runtime's replica choice and home ranks). */
moe_status_t moe_place_evaluate(const moe_plan_h plan, const moe_workload_h routes,
                                const moe_place_options_t *options, moe_place_figures_t *out);
/* Modelled figures from statistics (works for every workload). */
moe_status_t moe_place_model(const moe_plan_h plan, const moe_workload_h workload,
                             const moe_place_options_t *options, moe_place_figures_t *out);
/* The objective the solvers minimise over several workloads: per layer, the worst workload's
 * max/mean load plus copy_cost x the workloads' mean of (inter_factor x inter + intra) / (tokens x
 * top_k) (modelled copies); returns the mean over layers and fills per_layer [L] when not NULL. */
double moe_place_objective(const moe_plan_h plan, const moe_workload_h *workloads, int n_workloads,
                           const moe_place_options_t *options, double *per_layer);

/* Replicas per expert at one layer (counts[E], >= 1, summing to experts + replicas, each <= ranks):
 * the redundant slots go one at a time to the expert with the largest load per replica, the load being
 * the largest over workloads of its share of that workload's tokens (hot in any workload). */
void moe_place_replica_counts(const moe_workload_h *workloads, int n_workloads, int layer,
                              int replicas, int ranks, int *counts);

typedef struct {
    double solve_seconds;
    double objective;        /* moe_place_objective of the result */
    double warm_objective;   /* ... of the greedy warm start (ILP, exact); NaN otherwise */
    double mip_gap;          /* largest relative GLPK gap over subproblems (0: all proven) */
    double balance_gap;      /* mean over layers of (worst max/mean - lower bound) / worst max/mean */
    int subproblems;
    int subproblems_proven;
    int subproblems_unsolved; /* GLPK gave no answer in time: the warm start was kept */
    int layers_kept_warm;    /* layers where the warm start was better and was kept */
    int search_passes;       /* hedged: passes of the local search over all layers */
    int experts_moved;       /* with a current plan: (layer, expert, rank) hosts that are new */
    double bytes_moved;
} moe_place_report_t;

/* Solve: a plan for the workloads (same layers and experts) under options. `current` (may be NULL) is
 * the plan in service: moving an expert then costs options->move_cost. The incremental solver needs
 * it (it may have another number of ranks than options->ranks: a scale event) and keeps its replica
 * counts and shares (options->replicas is ignored). The plan is the caller's. */
moe_status_t moe_place_solve(const moe_workload_h *workloads, int n_workloads,
                             const moe_place_options_t *options, const moe_plan_h current,
                             moe_plan_h *out, moe_place_report_t *report);

/* Cross-validation of the hedged solver's weights across sources (crossval.c): each source held
 * out in turn (one trace: its two halves), plans built from the rest for a grid of (hedge,
 * traffic_weight) and scored on the held-out source (replay, or the model for a CSV) against
 * greedy from the same sources. Chosen: among the points no worse than greedy on held-out mean and
 * worst max/mean in every fold, the lowest held-out cost (max/mean + copies); else the point that
 * exceeds greedy least. options->time_limit applies to each solve. */
#define MOE_PLACE_CV_FOLDS 8
#define MOE_PLACE_CV_POINTS 16
typedef struct {
    double hedge, traffic_weight;
    double mean[MOE_PLACE_CV_FOLDS], worst[MOE_PLACE_CV_FOLDS], copies[MOE_PLACE_CV_FOLDS];
    double cost;   /* mean over folds of held-out max/mean + copies (cost model units) */
    double excess; /* sum over folds of how far mean and worst max/mean exceed greedy's */
    bool feasible; /* no worse than greedy on every fold */
} moe_place_cv_point_t;
typedef struct {
    int folds, n_points, chosen;
    double greedy_mean[MOE_PLACE_CV_FOLDS], greedy_worst[MOE_PLACE_CV_FOLDS];
    double greedy_copies[MOE_PLACE_CV_FOLDS];
    moe_place_cv_point_t points[MOE_PLACE_CV_POINTS];
} moe_place_cv_t;
moe_status_t moe_place_cross_validate(const moe_workload_h *workloads, int n_workloads,
                                      const moe_place_options_t *options, moe_place_cv_t *out);

/* Save with a header: the model name (may be NULL) and extra YAML lines (top-level keys "solver",
 * "sources", "predicted" are the ones the loader accepts and ignores; may be NULL). */
moe_status_t moe_plan_save_annotated(const moe_plan_h plan, const char *path, const char *model,
                                     const char *extra_yaml);
/* Load, and copy the plan's "model" value into model (empty string when absent). */
moe_status_t moe_plan_load_annotated(const char *path, char *model, size_t model_size,
                                     moe_plan_h *out);

#endif
