/* elastic: the serving set grows and shrinks, and experts are re-placed, while inference runs.
 *
 * The world is launched at its largest size; the serving set is world ranks 0..P-1 (a
 * sub-communicator the engine splits), the others wait at batch boundaries. At every boundary the
 * world agrees, in one small reduction (boundary_t, over the control plane of comm.h), on: the size the schedule asks for (rank 0's clock for
 * time schedules), whether a re-balance is due (rebalance.every), whether rank 0's solver is done,
 * and how many ranks still have transfers in flight or a state to prepare. An event then goes
 * through:
 *
 *   decide   the routing loads of the last rebalance.window batches (for a re-balance: of the
 *            batches since the routing last drifted, see "drift" below) are summed on rank 0, which
 *            starts the incremental placement solver (placement.h) on a thread of its own, with the
 *            plan in service as `current`, so that it moves few experts; serving goes on;
 *   move     at the first boundary after the solver is done, rank 0 broadcasts the plan and every
 *            rank posts its transfers (migrate.c); serving goes on with the old plan;
 *   prepare  at the first boundary where no rank has transfers in flight, the engine takes the
 *            plan and weights and builds its next backend state on a thread (for cuda, the upload
 *            of the weights); serving goes on;
 *   switch   at the first boundary where every rank is prepared, the engine swaps plan, weights,
 *            backend state and serving set (the only time serving stops) and frees the old ones.
 *
 * Rank 0 keeps the timeline (one row per batch) and the events, written at the end as CSV (formats
 * in docs/elastic.md). Every other decision is taken identically on every rank from the reduced
 * values, so the ranks never disagree on the state. */
#include <errno.h>
#include <math.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "runtime/elastic/elastic-impl.h"

#define SCHEDULE_MAX 256

typedef enum { STATE_IDLE = 0, STATE_PLANNING, STATE_MOVING, STATE_PREPARING } state_t;
typedef enum { EVENT_SCALE = 0, EVENT_REBALANCE } event_kind_t;

typedef struct {
    event_kind_t kind;
    int from, to;
    int decision_batch, switch_batch; /* switch_batch: the first batch served after it; -1 */
    double decision_t, plan_s, transfer_s, switch_s, done_t;
    double longest_gap, batch_time;
    int64_t experts_moved, bytes_moved, bytes_min;
    bool kept;                        /* re-balance found nothing worth moving: no switch */
} event_t;

typedef struct {
    double time, tokens_per_s, load_max_mean;
    int batch, serving, event;
    int64_t tokens, bytes_in_flight;
    const char *phase;
} timeline_row_t;

/* The solver, on a thread of rank 0. */
typedef struct {
    pthread_t thread;
    bool running;
    atomic_int done;
    moe_stats_h stats;
    moe_plan_h current, plan;
    moe_place_options_t options;
    moe_status_t status;
    double seconds;
} solver_t;

/* The batch boundary's agreement: every field an int64 summed over the world's ranks. */
typedef struct {
    int64_t bytes_pending;  /* expert bytes still to arrive, all ranks */
    int64_t ranks_busy;     /* ranks with transfers in flight or a state still being prepared */
    int64_t schedule_size;  /* rank 0's: the serving size the schedule asks for now */
    int64_t rebalance_due;  /* rank 0's: the routing drifted, a re-balance is due */
    int64_t solver_done;    /* rank 0's: the placement solver has a plan */
} boundary_t;
#define BOUNDARY_FIELDS ((int)(sizeof(boundary_t) / sizeof(int64_t)))

struct moe_elastic_s {
    const moe_config_t *config;
    moe_ctl_h ctl; /* borrowed: the engine's control plane over the world */
    int rank, size;
    moe_elastic_args_t args;
    /* schedule */
    int n_steps;
    double step_at[SCHEDULE_MAX];
    int step_size[SCHEDULE_MAX];
    bool in_seconds;
    /* window of per-batch loads [W][L][E] */
    int window;
    int64_t *window_loads, *window_tokens;
    /* rank 0, with rebalance.every: the world's loads of the last `window` batches (a ring, by
     * batch) and the drift window chosen at the last check */
    int64_t *hist_loads, *hist_tokens;
    int *hist_batch;
    int drift_batches;
    double drift_gain;
    /* state */
    state_t state;
    int last_decision_batch;
    double t0;
    bool started;
    solver_t solver;
    moe_plan_h new_plan;
    moe_weights_t new_weights;
    moe_migration_h migration;
    moe_comm_h device_comm; /* expert moves GPU to GPU, or NULL (the engine's) */
    int64_t pending_bytes;          /* world sum, at the last boundary */
    const char *phase;              /* of the batch about to run */
    /* rank 0: what is reported */
    event_t *events;
    int n_events, cap_events;
    timeline_row_t *rows;
    int n_rows, cap_rows;
    double last_end;
    int plans_saved;
};

/* Every collective here goes over the control plane (comm.h), waited under the run's watch, so
 * that a rank that stops answering in an event ends the job instead of hanging it. */

/* ---------------------------------------------------------------- the schedule */

static moe_status_t parse_schedule(struct moe_elastic_s *el, const char *spec)
{
    const int world = el->size;
    char buf[4096];
    if (!spec[0]) {
        moe_error("--schedule: empty; give POSITION:RANKS entries, e.g. 0:2,20:4,40:2");
        return MOE_STATUS_INVALID_ARGUMENT;
    }
    if (strlen(spec) >= sizeof buf) {
        moe_error("--schedule: longer than %zu characters", sizeof buf - 1);
        return MOE_STATUS_INVALID_ARGUMENT;
    }
    strcpy(buf, spec);
    int n = 0, units = -1;
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save), n++) {
        if (n == SCHEDULE_MAX) {
            moe_error("--schedule: more than %d entries", SCHEDULE_MAX);
            return MOE_STATUS_INVALID_ARGUMENT;
        }
        char *colon = strchr(tok, ':'), *end = NULL;
        errno = 0;
        double at = colon ? strtod(tok, &end) : NAN;
        bool seconds = end && *end == 's';
        if (seconds) end++;
        long size = 0;
        char *size_end = NULL;
        if (colon) size = strtol(colon + 1, &size_end, 10);
        if (!colon || end != colon || !isfinite(at) || at < 0 || errno ||
            (!seconds && at != floor(at)) || !size_end || size_end == colon + 1 || *size_end) {
            moe_error("--schedule: entry %d '%s': expected POSITION:RANKS, a batch (20:8) or seconds "
                      "(30s:8)", n + 1, tok);
            return MOE_STATUS_INVALID_ARGUMENT;
        }
        if (units >= 0 && units != (int)seconds) {
            moe_error("--schedule: entry %d '%s': mixes batches and seconds", n + 1, tok);
            return MOE_STATUS_INVALID_ARGUMENT;
        }
        units = seconds;
        if (size < 1) {
            moe_error("--schedule: entry %d '%s': %ld ranks; a serving set needs at least one", n + 1,
                      tok, size);
            return MOE_STATUS_INVALID_ARGUMENT;
        }
        if (size > world) {
            moe_error("--schedule: entry %d '%s' asks for %ld ranks, but the job has %d: launch at the "
                      "largest size (mpirun -np %ld)", n + 1, tok, size, world, size);
            return MOE_STATUS_INVALID_ARGUMENT;
        }
        if (n == 0 && at != 0) {
            moe_error("--schedule: the first entry '%s' must be at 0 (the size the run starts with)",
                      tok);
            return MOE_STATUS_INVALID_ARGUMENT;
        }
        if (n > 0 && at <= el->step_at[n - 1]) {
            moe_error("--schedule: entry %d '%s' is not after the entry before it", n + 1, tok);
            return MOE_STATUS_INVALID_ARGUMENT;
        }
        el->step_at[n] = at;
        el->step_size[n] = (int)size;
    }
    el->n_steps = n;
    el->in_seconds = units == 1;
    return MOE_STATUS_OK;
}

moe_status_t moe_schedule_check(const char *spec, int world_size)
{
    struct moe_elastic_s el = {.size = world_size};
    return parse_schedule(&el, spec);
}

/* The size the schedule asks for at batch b / time t. */
static int schedule_size(const struct moe_elastic_s *el, int batch, double t)
{
    double x = el->in_seconds ? t : (double)batch;
    int size = el->step_size[0];
    for (int i = 1; i < el->n_steps; i++)
        if (x >= el->step_at[i]) size = el->step_size[i];
    return size;
}

/* ---------------------------------------------------------------- create / destroy */

moe_status_t moe_elastic_create(const moe_config_t *config, const moe_elastic_args_t *args,
                                moe_ctl_h ctl, moe_elastic_h *out)
{
    moe_status_t status = MOE_STATUS_OK;
    struct moe_elastic_s *el = calloc(1, sizeof *el);
    MOE_CHECK_ALLOC(el, fail);
    el->config = config;
    el->ctl = ctl;
    el->args = *args;
    el->rank = moe_ctl_rank(ctl);
    el->size = moe_ctl_size(ctl);
    if (args->schedule) {
        MOE_CHECK(parse_schedule(el, args->schedule), fail);
    } else {
        el->n_steps = 1;
        el->step_size[0] = el->size;
    }
    const int L = config->model.layers, E = config->model.experts;
    el->window = config->rebalance.window;
    el->window_loads = calloc((size_t)el->window * L * E, sizeof(int64_t));
    el->window_tokens = calloc((size_t)el->window, sizeof(int64_t));
    MOE_CHECK_ALLOC(el->window_loads, fail);
    MOE_CHECK_ALLOC(el->window_tokens, fail);
    if (config->rebalance.every > 0 && el->rank == 0) {
        el->hist_loads = calloc((size_t)el->window * L * E, sizeof(int64_t));
        el->hist_tokens = calloc((size_t)el->window, sizeof(int64_t));
        el->hist_batch = malloc(sizeof(int) * (size_t)el->window);
        MOE_CHECK_ALLOC(el->hist_loads, fail);
        MOE_CHECK_ALLOC(el->hist_tokens, fail);
        MOE_CHECK_ALLOC(el->hist_batch, fail);
        for (int w = 0; w < el->window; w++) el->hist_batch[w] = -1;
    }
    el->phase = "serve";
    if (args->plans_dir && args->plans_dir[0]) {
        /* rank 0 writes the plans; every rank learns whether it can, so that none goes on alone */
        int64_t made = 1;
        if (el->rank == 0 && mkdir(args->plans_dir, 0777) != 0 && errno != EEXIST) {
            moe_error("--plans %s: cannot create the directory: %s", args->plans_dir, strerror(errno));
            made = 0;
        }
        MOE_CHECK(moe_ctl_bcast(ctl, 0, &made, sizeof made, "the plans folder check"), fail);
        if (!made) {
            status = MOE_STATUS_IO_ERROR;
            goto fail;
        }
    }
    *out = el;
    return MOE_STATUS_OK;
fail:
    moe_elastic_destroy(el);
    return status;
}

int moe_elastic_initial_size(const moe_elastic_h el) { return el->step_size[0]; }

int moe_elastic_schedule_size(const moe_elastic_h el, int i) { return i < el->n_steps ? el->step_size[i] : 0; }

void moe_elastic_destroy(moe_elastic_h el)
{
    if (!el) return;
    if (el->solver.running) pthread_join(el->solver.thread, NULL);
    moe_stats_destroy(el->solver.stats);
    moe_plan_destroy(el->solver.plan);
    moe_plan_destroy(el->new_plan);
    moe_weights_destroy(&el->new_weights);
    moe_migration_destroy(el->migration);
    free(el->window_loads);
    free(el->window_tokens);
    free(el->hist_loads);
    free(el->hist_tokens);
    free(el->hist_batch);
    free(el->events);
    free(el->rows);
    free(el);
}

/* ---------------------------------------------------------------- the solver thread */


static void *solver_main(void *arg)
{
    solver_t *s = arg;
    double t0 = moe_now();
    moe_workload_h w = NULL;
    s->status = moe_workload_from_stats(s->stats, "live routing window", &w);
    if (s->status == MOE_STATUS_OK)
        s->status = moe_place_solve(&w, 1, &s->options, s->current, &s->plan, NULL);
    moe_workload_destroy(w);
    s->seconds = moe_now() - t0;
    atomic_store(&s->done, 1);
    return NULL;
}

/* Rank 0: the world's loads of the last n batches of the history into sum[LE + 1] (tokens last). */
static void history_sum(const struct moe_elastic_s *el, int batch, int n, int64_t *sum)
{
    const size_t LE = (size_t)el->config->model.layers * el->config->model.experts;
    memset(sum, 0, sizeof(int64_t) * (LE + 1));
    for (int k = 1; k <= n; k++) {
        int slot = (batch - k) % el->window;
        if (batch - k < 0 || el->hist_batch[slot] != batch - k) break;
        for (size_t i = 0; i < LE; i++) sum[i] += el->hist_loads[(size_t)slot * LE + i];
        sum[LE] += el->hist_tokens[slot];
    }
}

static moe_place_options_t solver_options(const moe_config_t *c, int size)
{
    moe_place_options_t o = MOE_PLACE_OPTIONS_INIT;
    o.ranks = size;
    o.ranks_per_node = moe_ranks_per_node(c, size);
    o.solver = MOE_PLACE_SOLVER_INCREMENTAL;
    o.move_cost = c->rebalance.move_cost;
    o.expert_bytes = 3.0 * c->model.d_ff * c->model.d_model * sizeof(float);
    o.tokens_per_rank = c->run.tokens_per_rank;
    return o;
}

/* Rank 0: sum the window's loads over the world and start the solver for `size` ranks. The other
 * ranks only take part in the reduction. A re-balance plans from rank 0's history of the batches
 * since the routing drifted (el->drift_batches; every rank knows the event, so none reduces). */
static moe_status_t start_solver(struct moe_elastic_s *el, const moe_plan_h current, int size,
                                 event_kind_t kind, int batch)
{
    moe_status_t status = MOE_STATUS_OK;
    const moe_config_t *c = el->config;
    const int L = c->model.layers, E = c->model.experts;
    const size_t LE = (size_t)L * E;
    int64_t *sum = calloc(LE + 1, sizeof(int64_t));
    MOE_CHECK_ALLOC(sum, fail);
    if (kind == EVENT_REBALANCE) {
        if (el->rank == 0) history_sum(el, batch, el->drift_batches, sum);
    } else {
        for (int w = 0; w < el->window; w++) {
            for (size_t i = 0; i < LE; i++) sum[i] += el->window_loads[(size_t)w * LE + i];
            sum[LE] += el->window_tokens[w];
        }
        status = moe_ctl_reduce(el->ctl, 0, MOE_CTL_INT64, MOE_CTL_SUM, sum, (int)LE + 1,
                                "the routing window's reduction");
        if (status == MOE_STATUS_TIMEOUT) return status; /* the request may still write into sum */
        if (status != MOE_STATUS_OK) goto fail;
    }
    if (el->rank == 0) {
        solver_t *s = &el->solver;
        MOE_CHECK(moe_stats_create(L, E, c->model.top_k, &s->stats), fail);
        memcpy(moe_stats_loads(s->stats), sum, sizeof(int64_t) * LE);
        /* With no routing seen yet (an event before the first batch ends) every expert weighs alike. */
        if (sum[LE] == 0)
            for (size_t i = 0; i < LE; i++) moe_stats_loads(s->stats)[i] = 1;
        moe_stats_set_tokens(s->stats, sum[LE] > 0 ? sum[LE] : E);
        s->options = solver_options(c, size);
        /* the plan's lookup cache is built here, before the thread reads the plan */
        moe_plan_local_experts(current, 0, 0, NULL);
        s->current = current;
        s->plan = NULL;
        atomic_store(&s->done, 0);
        if (pthread_create(&s->thread, NULL, solver_main, s) != 0)
            MOE_FAIL(MOE_STATUS_INTERNAL, fail, "elastic: cannot start the solver thread");
        s->running = true;
    }
fail:
    free(sum);
    return status;
}

/* Rank 0's plan to every rank, packed (placement.h), with the solve time. A failed solve is
 * broadcast as an empty message so that every rank returns the error. */
static moe_status_t broadcast_plan(struct moe_elastic_s *el, int size, moe_plan_h *out)
{
    moe_status_t status = MOE_STATUS_OK;
    solver_t *s = &el->solver;
    void *bytes = NULL;
    size_t n = 0;
    double plan_s = s->seconds;
    if (el->rank == 0) {
        pthread_join(s->thread, NULL);
        s->running = false;
        moe_stats_destroy(s->stats);
        s->stats = NULL;
        plan_s = s->seconds;
        if (s->status == MOE_STATUS_OK) MOE_CHECK(moe_plan_pack(s->plan, &bytes, &n), fail);
        if (!bytes) bytes = malloc(1); /* the empty message: the solve failed */
        MOE_CHECK_ALLOC(bytes, fail);
    }
    MOE_CHECK(moe_ctl_bcast_alloc(el->ctl, 0, &bytes, &n, "the plan broadcast"), fail);
    MOE_CHECK(moe_ctl_bcast(el->ctl, 0, &plan_s, sizeof plan_s, "the plan broadcast"), fail);
    if (n == 0) MOE_FAIL(MOE_STATUS_INTERNAL, fail, "elastic: the placement solver failed");
    MOE_CHECK(moe_plan_unpack(bytes, n, "the broadcast plan", out), fail);
    if (moe_plan_ranks(*out) != size || moe_plan_layers(*out) != el->config->model.layers ||
        moe_plan_experts(*out) != el->config->model.experts) {
        moe_plan_destroy(*out);
        *out = NULL;
        MOE_FAIL(MOE_STATUS_INTERNAL, fail, "elastic: the broadcast plan is not for %d ranks", size);
    }
    if (el->n_events > 0) el->events[el->n_events - 1].plan_s = plan_s;
    if (el->rank == 0) {
        moe_plan_destroy(s->plan);
        s->plan = NULL;
    }
fail:
    free(bytes);
    return status;
}

/* ---------------------------------------------------------------- reports (rank 0) */

static event_t *current_event(struct moe_elastic_s *el)
{
    return el->n_events > 0 ? &el->events[el->n_events - 1] : NULL;
}

static moe_status_t save_plan(struct moe_elastic_s *el, const moe_plan_h plan)
{
    if (el->rank != 0 || !el->args.plans_dir || !el->args.plans_dir[0]) return MOE_STATUS_OK;
    char path[MOE_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/plan-%d.yaml", el->args.plans_dir, el->plans_saved++);
    return moe_plan_save_annotated(plan, path, el->config->model.name, NULL);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Gaps between consecutive finished batches [first, last] (the gap of b ends with b). */
static double batch_gap(const struct moe_elastic_s *el, int b)
{
    double prev = b > 0 ? el->rows[b - 1].time : 0.0;
    return el->rows[b].time - prev;
}

static void event_gaps(struct moe_elastic_s *el, event_t *ev)
{
    ev->longest_gap = 0;
    for (int b = ev->decision_batch; b <= ev->switch_batch && b < el->n_rows; b++)
        ev->longest_gap = fmax(ev->longest_gap, batch_gap(el, b));
    /* the median gap of the window's batches before the decision (the first batch is left out: it
     * carries the first touches of every buffer) */
    double gaps[1024];
    int n = 0;
    for (int b = ev->decision_batch - el->window; b < ev->decision_batch && n < 1024; b++)
        if (b >= 1 && b < el->n_rows) gaps[n++] = batch_gap(el, b);
    if (n == 0 && ev->decision_batch > 0) gaps[n++] = batch_gap(el, 0);
    qsort(gaps, (size_t)n, sizeof(double), cmp_double);
    ev->batch_time = n ? (n % 2 ? gaps[n / 2] : 0.5 * (gaps[n / 2 - 1] + gaps[n / 2])) : NAN;
}

/* ---------------------------------------------------------------- drift (rank 0)
 *
 * With rebalance.every > 0 the world's loads of every batch are reduced to rank 0 at the next
 * boundary (L x E integers), which keeps the last rebalance.window of them. At each boundary where
 * nothing is in flight and at least rebalance.every batches have passed since the last decision,
 * rank 0 asks whether the routing has drifted from what the plan in service serves well:
 *   window   the latest batches that look like the last one: walking back from it, a batch joins
 *            while its per-layer load distribution is within sampling noise of the last batch's
 *            (half the L1 distance, mean over layers, at most 2x the distance two samples of one
 *            distribution of those sizes would show, plus 0.02), up to rebalance.window batches.
 *            After a change of workload the window is the batches since the change, so the next
 *            plan serves the new workload, not a blend of old and new;
 *   gain     the incremental solver is run on that window (milliseconds) with the configured move
 *            cost, which keeps a move only where it lowers a layer's max/mean by more than
 *            rebalance.move_cost per new host (the move budget follows the gain); the expected gain
 *            is the window's mean per-layer max/mean under the plan in service minus under that
 *            plan;
 *   trigger  a re-balance starts when the gain exceeds rebalance.move_cost + 0.02 (a batch's own
 *            noise in max/mean) and the plan moves something; otherwise the plan stays, and a plan
 *            that serves its workload well is left alone (no periodic churn). */

/* Half the L1 distance between two batches' per-layer load distributions (mean over layers), and
 * the distance two samples of one distribution of those sizes would show, into *noise. */
static double load_distance(const int64_t *a, const int64_t *b, int L, int E, double *noise)
{
    double d = 0, nz = 0;
    for (int l = 0; l < L; l++) {
        double na = 0, nb = 0;
        for (int e = 0; e < E; e++) na += (double)a[(size_t)l * E + e], nb += (double)b[(size_t)l * E + e];
        if (na <= 0 || nb <= 0) continue;
        double dl = 0, zl = 0;
        for (int e = 0; e < E; e++) {
            double pa = (double)a[(size_t)l * E + e] / na, pb = (double)b[(size_t)l * E + e] / nb;
            dl += 0.5 * fabs(pa - pb);
            /* |pa - pb| of two samples of p: sqrt(2/pi) x sqrt(p (1/na + 1/nb)) on average */
            zl += 0.5 * sqrt(2 / M_PI) * sqrt(0.5 * (pa + pb) * (1 / na + 1 / nb));
        }
        d += dl / L;
        nz += zl / L;
    }
    *noise = nz;
    return d;
}

/* Rank 0: the batches before `batch` that look like the last one (at least 1 once there is one). */
static int drift_window(const struct moe_elastic_s *el, int batch)
{
    const int L = el->config->model.layers, E = el->config->model.experts;
    const size_t LE = (size_t)L * E;
    int last = (batch - 1) % el->window, n = 0;
    if (batch < 1 || el->hist_batch[last] != batch - 1) return 0;
    for (n = 1; n < el->window; n++) {
        int b = batch - 1 - n, slot = b % el->window;
        if (b < 0 || el->hist_batch[slot] != b) break;
        double noise, d = load_distance(el->hist_loads + (size_t)slot * LE,
                                        el->hist_loads + (size_t)last * LE, L, E, &noise);
        if (d > 2 * noise + 0.02) break;
    }
    return n;
}

/* Rank 0: whether a re-balance pays: the drift window, and the expected gain of re-planning on it
 * (into el->drift_batches, el->drift_gain). */
static moe_status_t drift_check(struct moe_elastic_s *el, int batch, const moe_plan_h plan,
                                int serving, bool *due)
{
    moe_status_t status = MOE_STATUS_OK;
    const moe_config_t *c = el->config;
    const int L = c->model.layers, E = c->model.experts;
    const size_t LE = (size_t)L * E;
    *due = false;
    el->drift_batches = drift_window(el, batch);
    el->drift_gain = 0;
    if (el->drift_batches == 0) return MOE_STATUS_OK;
    int64_t *sum = calloc(LE + 1, sizeof(int64_t));
    moe_stats_h stats = NULL;
    moe_workload_h w = NULL;
    moe_plan_h next = NULL;
    moe_place_figures_t now = {0}, then = {0};
    MOE_CHECK_ALLOC(sum, done);
    history_sum(el, batch, el->drift_batches, sum);
    if (sum[LE] == 0) goto done;
    MOE_CHECK(moe_stats_create(L, E, c->model.top_k, &stats), done);
    memcpy(moe_stats_loads(stats), sum, sizeof(int64_t) * LE);
    moe_stats_set_tokens(stats, sum[LE]);
    MOE_CHECK(moe_workload_from_stats(stats, "drift window", &w), done);
    moe_place_options_t o = solver_options(c, serving);
    MOE_CHECK(moe_place_solve(&w, 1, &o, plan, &next, NULL), done);
    if (moe_plan_new_hosts(plan, next) == 0) goto done;
    MOE_CHECK(moe_place_model(plan, w, &o, &now), done);
    MOE_CHECK(moe_place_model(next, w, &o, &then), done);
    el->drift_gain = now.mean_imbalance - then.mean_imbalance;
    *due = el->drift_gain > c->rebalance.move_cost + 0.02;
    if (*due)
        moe_info("elastic: batch %d: routing drifted: over the last %d batch(es) max/mean %.3f, "
                 "%.3f after re-planning",
                 batch, el->drift_batches, now.mean_imbalance, then.mean_imbalance);
done:
    moe_place_figures_free(&now);
    moe_place_figures_free(&then);
    moe_plan_destroy(next);
    moe_workload_destroy(w);
    moe_stats_destroy(stats);
    free(sum);
    return status;
}

/* Every rank: the last batch's loads to rank 0's history (a collective). */
static moe_status_t history_add(struct moe_elastic_s *el, int batch)
{
    const size_t LE = (size_t)el->config->model.layers * el->config->model.experts;
    int slot = (batch - 1) % el->window;
    int64_t *mine = malloc(sizeof(int64_t) * (LE + 1));
    if (!mine) {
        moe_error("elastic: out of memory for the routing history");
        return MOE_STATUS_NO_MEMORY;
    }
    memcpy(mine, el->window_loads + (size_t)slot * LE, sizeof(int64_t) * LE);
    mine[LE] = el->window_tokens[slot];
    moe_status_t status = moe_ctl_reduce(el->ctl, 0, MOE_CTL_INT64, MOE_CTL_SUM, mine, (int)LE + 1,
                                         "the routing history");
    if (status == MOE_STATUS_TIMEOUT) return status; /* the reduction may still write into mine */
    if (status == MOE_STATUS_OK && el->rank == 0) {
        memcpy(el->hist_loads + (size_t)slot * LE, mine, sizeof(int64_t) * LE);
        el->hist_tokens[slot] = mine[LE];
        el->hist_batch[slot] = batch - 1;
    }
    free(mine);
    return status;
}

/* ---------------------------------------------------------------- the boundary */

static moe_status_t start_event(struct moe_elastic_s *el, event_kind_t kind, int batch,
                                const moe_plan_h plan, int serving, int target)
{
    moe_status_t status = MOE_STATUS_OK;
    if (el->n_events == el->cap_events) {
        int cap = el->cap_events ? 2 * el->cap_events : 8;
        event_t *grown = realloc(el->events, sizeof(event_t) * (size_t)cap);
        MOE_CHECK_ALLOC(grown, fail);
        el->events = grown;
        el->cap_events = cap;
    }
    event_t *ev = &el->events[el->n_events++];
    *ev = (event_t){.kind = kind, .from = serving, .to = target, .decision_batch = batch,
                    .switch_batch = -1, .decision_t = moe_now() - el->t0, .longest_gap = NAN,
                    .batch_time = NAN};
    el->last_decision_batch = batch;
    MOE_CHECK(start_solver(el, plan, target, kind, batch), fail);
    el->state = STATE_PLANNING;
    moe_info("elastic: batch %d: %s %d -> %d ranks, planning", batch,
             kind == EVENT_SCALE ? "scale" : "re-balance", serving, target);
fail:
    return status;
}

moe_status_t moe_elastic_boundary(moe_elastic_h el, int batch, const moe_plan_h plan,
                                  const moe_weights_t *weights, int serving, bool busy,
                                  moe_elastic_switch_t *sw)
{
    moe_status_t status = MOE_STATUS_OK;
    const moe_config_t *c = el->config;
    memset(sw, 0, sizeof *sw);
    if (!el->started) {
        el->started = true;
        el->t0 = moe_now();
        MOE_CHECK(save_plan(el, plan), fail);
    }
    const double now = moe_now() - el->t0;
    bool done = true;
    if (el->migration) MOE_CHECK(moe_migration_test(el->migration, &done), fail);
    /* what the world agrees on at this boundary: each field summed over the ranks */
    boundary_t agreed = {.bytes_pending = el->migration ? moe_migration_bytes_pending(el->migration) : 0,
                         .ranks_busy = done && !busy ? 0 : 1};
    if (c->rebalance.every > 0 && batch > 0) MOE_CHECK(history_add(el, batch), fail);
    if (el->rank == 0) {
        agreed.schedule_size = schedule_size(el, batch, now);
        bool due = false;
        if (c->rebalance.every > 0 && el->state == STATE_IDLE && agreed.schedule_size == serving &&
            batch - el->last_decision_batch >= c->rebalance.every)
            MOE_CHECK(drift_check(el, batch, plan, serving, &due), fail);
        agreed.rebalance_due = due;
        agreed.solver_done = el->state == STATE_PLANNING && atomic_load(&el->solver.done);
    }
    MOE_CHECK(moe_ctl_reduce(el->ctl, -1, MOE_CTL_INT64, MOE_CTL_SUM, &agreed, BOUNDARY_FIELDS,
                             "the elastic control exchange"), fail);
    el->pending_bytes = agreed.bytes_pending;
    event_t *ev = current_event(el);

    switch (el->state) {
    case STATE_IDLE:
        if (agreed.schedule_size != serving)
            MOE_CHECK(start_event(el, EVENT_SCALE, batch, plan, serving, (int)agreed.schedule_size), fail);
        else if (agreed.rebalance_due)
            MOE_CHECK(start_event(el, EVENT_REBALANCE, batch, plan, serving, serving), fail);
        break;
    case STATE_PLANNING:
        if (!agreed.solver_done) break;
        MOE_CHECK(broadcast_plan(el, ev->to, &el->new_plan), fail);
        ev->experts_moved = moe_plan_new_hosts(plan, el->new_plan);
        ev->bytes_min = ev->experts_moved * (int64_t)weights->expert_bytes; /* in the store's type */
        if (ev->experts_moved == 0 && ev->to == serving) { /* nothing worth moving */
            ev->kept = true;
            ev->done_t = now;
            moe_plan_destroy(el->new_plan);
            el->new_plan = NULL;
            el->state = STATE_IDLE;
            moe_info("elastic: batch %d: re-balance keeps the plan", batch);
            break;
        }
        MOE_CHECK(moe_migration_start(c, plan, weights, el->new_plan, el->rank,
                                      c->rebalance.transfer_window, el->ctl, el->device_comm, el->args.watch,
                                      &el->new_weights,
                                      &el->migration),
                  fail);
        el->state = STATE_MOVING;
        el->pending_bytes = ev->bytes_min; /* nothing has arrived yet */
        break;
    case STATE_MOVING: {
        if (agreed.ranks_busy != 0) break;
        /* every rank's transfers are done: the figures; the engine prepares the new state */
        double seconds = moe_migration_seconds(el->migration);
        int64_t bytes = moe_migration_bytes_in(el->migration);
        MOE_CHECK(moe_ctl_reduce(el->ctl, -1, MOE_CTL_DOUBLE, MOE_CTL_MAX, &seconds, 1, "the transfer figures"), fail);
        MOE_CHECK(moe_ctl_reduce(el->ctl, -1, MOE_CTL_INT64, MOE_CTL_SUM, &bytes, 1, "the transfer figures"), fail);
        ev->transfer_s = seconds;
        ev->bytes_moved = bytes;
        moe_migration_destroy(el->migration);
        el->migration = NULL;
        MOE_CHECK(save_plan(el, el->new_plan), fail);
        sw->prepare_now = true;
        sw->plan = el->new_plan;
        sw->weights = el->new_weights;
        sw->size = ev->to;
        el->new_plan = NULL;
        memset(&el->new_weights, 0, sizeof el->new_weights);
        el->state = STATE_PREPARING;
        break;
    }
    case STATE_PREPARING:
        if (agreed.ranks_busy != 0) break;
        sw->switch_now = true; /* every rank has its new state ready */
        ev->switch_batch = batch;
        el->state = STATE_IDLE;
        break;
    }
    el->phase = sw->switch_now                  ? "switch"
                : el->state == STATE_PLANNING  ? "plan"
                : el->state == STATE_MOVING    ? "move"
                : el->state == STATE_PREPARING ? "prepare"
                                               : "serve";
fail:
    return status;
}

void moe_elastic_switched(moe_elastic_h el, double seconds)
{
    event_t *ev = current_event(el);
    if (!ev) return;
    ev->switch_s = seconds;
    ev->done_t = moe_now() - el->t0;
    moe_info("elastic: switched to %d ranks at batch %d: %lld experts moved in %.3f s, switch %.3f s",
             ev->to, ev->switch_batch, (long long)ev->experts_moved, ev->transfer_s, seconds);
}

void moe_elastic_set_device_comm(moe_elastic_h el, moe_comm_h comm) { el->device_comm = comm; }

const char *moe_elastic_phase(const moe_elastic_h el) { return el->phase; }

void moe_elastic_progress(moe_elastic_h el)
{
    bool done;
    if (el && el->migration) (void)moe_migration_test(el->migration, &done);
}

moe_status_t moe_elastic_end_batch(moe_elastic_h el, int batch, const int32_t *ids, int n,
                                   int64_t tokens, int serving, double load_max_mean)
{
    const moe_config_t *c = el->config;
    const int L = c->model.layers, E = c->model.experts, k = c->model.top_k;
    const size_t LE = (size_t)L * E;
    int64_t *loads = el->window_loads + (size_t)(batch % el->window) * LE;
    memset(loads, 0, sizeof(int64_t) * LE);
    for (int l = 0; l < L; l++)
        for (size_t i = 0; i < (size_t)n * k; i++) {
            int32_t e = ids[(size_t)l * n * k + i];
            if (e >= 0 && e < E) loads[(size_t)l * E + e]++;
        }
    el->window_tokens[batch % el->window] = n;
    if (el->rank != 0) return MOE_STATUS_OK;

    if (el->n_rows == el->cap_rows) {
        int cap = el->cap_rows ? 2 * el->cap_rows : 64;
        timeline_row_t *grown = realloc(el->rows, sizeof(timeline_row_t) * (size_t)cap);
        if (!grown) {
            moe_error("elastic: out of memory for the timeline");
            return MOE_STATUS_NO_MEMORY;
        }
        el->rows = grown;
        el->cap_rows = cap;
    }
    const double t = moe_now() - el->t0;
    event_t *ev = current_event(el);
    bool in_event = ev && !ev->kept && (ev->switch_batch < 0 || ev->switch_batch == batch);
    el->rows[el->n_rows++] = (timeline_row_t){
        .time = t, .batch = batch, .tokens = tokens, .serving = serving,
        .tokens_per_s = t > el->last_end ? (double)tokens / (t - el->last_end) : 0.0,
        .bytes_in_flight = el->pending_bytes, .load_max_mean = load_max_mean, .phase = el->phase,
        .event = in_event ? el->n_events - 1 : -1};
    el->last_end = t;
    if (ev && ev->switch_batch == batch) event_gaps(el, ev);
    return MOE_STATUS_OK;
}

/* ---------------------------------------------------------------- the end */

static moe_status_t write_timeline(const struct moe_elastic_s *el, const char *path)
{
    moe_status_t status = MOE_STATUS_OK;
    moe_atomic_file_t f;
    MOE_CHECK(moe_atomic_file_open(path, &f), fail);
    fprintf(f.fp, "time_s,batch,tokens,tokens_per_s,serving,bytes_in_flight,load_max_mean,phase,event\n");
    for (int i = 0; i < el->n_rows; i++) {
        const timeline_row_t *r = &el->rows[i];
        fprintf(f.fp, "%.6f,%d,%lld,%.1f,%d,%lld,%.6g,%s,", r->time, r->batch, (long long)r->tokens,
                r->tokens_per_s, r->serving, (long long)r->bytes_in_flight, r->load_max_mean, r->phase);
        if (r->event >= 0) fprintf(f.fp, "%d", r->event);
        fputc('\n', f.fp);
    }
    MOE_CHECK(moe_atomic_file_commit(&f), fail);
fail:
    return status;
}

static moe_status_t write_events(const struct moe_elastic_s *el, const char *path)
{
    moe_status_t status = MOE_STATUS_OK;
    moe_atomic_file_t f;
    MOE_CHECK(moe_atomic_file_open(path, &f), fail);
    fprintf(f.fp, "event,kind,from_ranks,to_ranks,decision_batch,switch_batch,decision_s,plan_s,"
                  "transfer_s,switch_s,latency_s,longest_gap_s,batch_time_s,experts_moved,bytes_moved,"
                  "bytes_min,transfer_gbps\n");
    for (int i = 0; i < el->n_events; i++) {
        const event_t *ev = &el->events[i];
        double latency = ev->done_t > 0 ? ev->done_t - ev->decision_t : NAN;
        fprintf(f.fp, "%d,%s,%d,%d,%d,%d,%.6f,%.6f,%.6f,%.6f,%.6f,%.6f,%.6f,%lld,%lld,%lld,%.4f\n", i,
                ev->kind == EVENT_SCALE ? "scale" : ev->kept ? "rebalance-kept" : "rebalance",
                ev->from, ev->to, ev->decision_batch, ev->switch_batch, ev->decision_t, ev->plan_s,
                ev->transfer_s, ev->switch_s, latency, ev->longest_gap, ev->batch_time,
                (long long)ev->experts_moved, (long long)ev->bytes_moved, (long long)ev->bytes_min,
                ev->transfer_s > 0 ? (double)ev->bytes_moved / ev->transfer_s / 1e9 : 0.0);
    }
    MOE_CHECK(moe_atomic_file_commit(&f), fail);
fail:
    return status;
}

moe_status_t moe_elastic_finish(moe_elastic_h el)
{
    moe_status_t status = MOE_STATUS_OK;
    /* an event the run outlived: its transfers complete (every rank posted its side), then go */
    if (el->migration) {
        MOE_CHECK(moe_migration_wait(el->migration, el->args.watch), fail);
        moe_migration_destroy(el->migration);
        el->migration = NULL;
        moe_weights_destroy(&el->new_weights);
    }
    if (el->solver.running) {
        pthread_join(el->solver.thread, NULL);
        el->solver.running = false;
    }
    if (el->rank != 0) return MOE_STATUS_OK;
    if (el->args.timeline && el->args.timeline[0])
        MOE_CHECK(write_timeline(el, el->args.timeline), fail);
    if (el->args.events && el->args.events[0]) MOE_CHECK(write_events(el, el->args.events), fail);
fail:
    return status;
}

void moe_elastic_print(const moe_elastic_h el, FILE *out)
{
    if (el->rank != 0 || el->n_events == 0) return;
    static const moe_table_column_t columns[] = {
        {"event", 6, 'i', 0},        {"kind", 11, 's', 0},       {"ranks", 7, 's', 0},
        {"decided", 7, 'i', 0},      {"switched", 8, 'i', 0},    {"latency s", 9, 'f', 3},
        {"longest gap s", 13, 'f', 3}, {"batch s", 7, 'f', 3},   {"experts moved", 13, 'i', 0},
        {"MB moved", 8, 'f', 1},     {"(min)", 7, 'f', 1},       {"GB/s", 7, 'f', 3},
        {"", 0, 's', 0}};
    const moe_table_t table = {.out = out, .indent = "  ", .columns = columns, .n = 13};
    fprintf(out, "  events\n");
    moe_table_header(&table);
    for (int i = 0; i < el->n_events; i++) {
        const event_t *ev = &el->events[i];
        char ranks[32];
        snprintf(ranks, sizeof ranks, "%d->%d", ev->from, ev->to);
        moe_table_row(&table, (long long)i, ev->kind == EVENT_SCALE ? "scale" : "rebalance", ranks,
                      (long long)ev->decision_batch, (long long)ev->switch_batch,
                      ev->done_t > 0 ? ev->done_t - ev->decision_t : NAN, ev->longest_gap, ev->batch_time,
                      (long long)ev->experts_moved, ev->bytes_moved / 1e6, ev->bytes_min / 1e6,
                      ev->transfer_s > 0 ? (double)ev->bytes_moved / ev->transfer_s / 1e9 : 0.0,
                      ev->kept ? "(kept the plan)" : ev->switch_batch < 0 ? "(run ended first)" : "");
    }
}

moe_status_t moe_elastic_print_json(const moe_elastic_h el, FILE *out)
{
    moe_status_t status = MOE_STATUS_OK;
    for (int i = 0; el->rank == 0 && i < el->n_events && status == MOE_STATUS_OK; i++) {
        const event_t *ev = &el->events[i];
        json_t *r = moe_json_record("event");
        json_object_set_new(r, "event", json_integer(i));
        json_object_set_new(r, "kind", json_string(ev->kind == EVENT_SCALE ? "scale" : ev->kept ? "rebalance-kept"
                                                                                            : "rebalance"));
        json_object_set_new(r, "from_ranks", json_integer(ev->from));
        json_object_set_new(r, "to_ranks", json_integer(ev->to));
        json_object_set_new(r, "decision_batch", json_integer(ev->decision_batch));
        json_object_set_new(r, "switch_batch", json_integer(ev->switch_batch));
        json_object_set_new(r, "latency_s", moe_json_number(ev->done_t > 0 ? ev->done_t - ev->decision_t : NAN));
        json_object_set_new(r, "longest_gap_s", moe_json_number(ev->longest_gap));
        json_object_set_new(r, "batch_time_s", moe_json_number(ev->batch_time));
        json_object_set_new(r, "experts_moved", json_integer(ev->experts_moved));
        json_object_set_new(r, "bytes_moved", json_integer(ev->bytes_moved));
        json_object_set_new(r, "bytes_min", json_integer(ev->bytes_min));
        json_object_set_new(r, "transfer_gb_per_s",
                            moe_json_number(ev->transfer_s > 0 ? (double)ev->bytes_moved / ev->transfer_s / 1e9 : 0.0));
        status = moe_json_line_write(out, NULL, true, r);
    }
    return status;
}
