/* elastic: how the serving set changes. A schedule of serving sizes over batches or seconds, and
 * re-balancing when the live routing drifts: at each event the incremental solver plans the new set,
 * experts move point to point while the old set serves (migrate.c), and the engine switches at a
 * batch boundary when this module says so (moe_elastic_boundary). */
#ifndef MOE_RUNTIME_ELASTIC_H
#define MOE_RUNTIME_ELASTIC_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "comm/comm.h"
#include "common/common.h"
#include "placement/placement.h"
#include "runtime/model/model.h"

/* Checks an elastic schedule (moe_engine_options_t.schedule) for a world of world_size ranks; errors
 * name the entry. */
moe_status_t moe_schedule_check(const char *spec, int world_size);

/* ---------------------------------------------------------------- elastic control (elastic.c) */

typedef struct moe_elastic_s *moe_elastic_h;

typedef struct {
    const char *schedule;  /* NULL: the world serves throughout (re-balancing only) */
    const char *timeline, *events, *plans_dir; /* outputs, NULL or "" for none */
    moe_watch_h watch;     /* its waits' deadline (comm.h); borrowed, may be NULL */
} moe_elastic_args_t;

/* Checks the schedule against the world size (the same answer on every rank) and makes the plans
 * folder (rank 0, the verdict broadcast): collective over world. */
moe_status_t moe_elastic_create(const moe_config_t *config, const moe_elastic_args_t *args,
                                moe_ctl_h ctl, moe_elastic_h *out);
void moe_elastic_destroy(moe_elastic_h elastic);
int moe_elastic_initial_size(const moe_elastic_h elastic);
/* The serving size of the schedule's entry i, 0 past its end (or without a schedule). */
int moe_elastic_schedule_size(const moe_elastic_h elastic, int i);

/* What a boundary asks of the engine. prepare_now: take plan and weights (they are the engine's
 * now) for `size` ranks and prepare the backend state on them, in the background; busy is true at
 * later boundaries until that is done. switch_now: serve from this batch on with them, and free the
 * old ones. */
typedef struct {
    bool prepare_now, switch_now;
    moe_plan_h plan;
    moe_weights_t weights;
    int size;
} moe_elastic_switch_t;

/* Collective over the world, before every batch: decides, starts and finishes events. */
moe_status_t moe_elastic_boundary(moe_elastic_h elastic, int batch, const moe_plan_h plan,
                                  const moe_weights_t *weights, int serving, bool busy,
                                  moe_elastic_switch_t *sw);
/* The engine has switched, in `seconds`. */
void moe_elastic_switched(moe_elastic_h elastic, double seconds);
/* Expert moves between device stores go over comm (NCCL, the world's ranks in order, a communicator
 * of the moves' own, borrowed), not through host memory over MPI. */
void moe_elastic_set_device_comm(moe_elastic_h elastic, moe_comm_h comm);
/* What the serving set is doing in this batch: serve, plan, move, prepare or switch (the
 * timeline's phase column). */
const char *moe_elastic_phase(const moe_elastic_h elastic);
/* Between layers: lets transfers progress. NULL-safe. */
void moe_elastic_progress(moe_elastic_h elastic);
/* After each batch: this rank's routing ids [L][n][k] for the statistics window; rank 0 also
 * records the batch's tokens, serving ranks and mean per-layer max/mean load. */
moe_status_t moe_elastic_end_batch(moe_elastic_h elastic, int batch, const int32_t *ids, int n,
                                   int64_t tokens, int serving, double load_max_mean);
/* Collective: completes what is in flight; rank 0 writes the timeline and events. */
moe_status_t moe_elastic_finish(moe_elastic_h elastic);
/* Rank 0: the events table of the summary. */
void moe_elastic_print(const moe_elastic_h elastic, FILE *out);
/* Rank 0: the events as JSON lines (type "event"), for --json. */
moe_status_t moe_elastic_print_json(const moe_elastic_h elastic, FILE *out);

#endif
