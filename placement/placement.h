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

/* Experts that rank hosts at layer, ascending: returns the count; experts points into the plan. */
int moe_plan_local_experts(const moe_plan_h plan, int layer, int rank, const int **experts);

/* Index of expert in rank's local list at layer, or -1 if the rank does not host it. */
int moe_plan_local_slot(const moe_plan_h plan, int layer, int rank, int expert);

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

/* Sum another object of the same shape into this one. */
moe_status_t moe_stats_merge(moe_stats_h into, const moe_stats_h from);

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

#endif
