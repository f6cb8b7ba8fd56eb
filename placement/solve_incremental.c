/* solve_incremental.c: the incremental solver, for online use (elastic scale events, re-balancing
 * while serving): from the plan in service (`current`, on any number of ranks) and the loads seen,
 * a plan for options->ranks ranks that moves few experts.
 *
 * Per layer, every replica of the current plan is an item (expert, share) whose weight is the share
 * times the expert's load (several sources are merged as greedy merges them: normalised loads
 * added, then divided by the number of sources, so that the mean rank weighs 1 and the heaviest
 * rank is the layer's max/mean). Replica counts and shares are the current plan's; only where an
 * expert has more replicas than the new world has ranks are its surplus orphans (smallest shares
 * first) dropped and the others' shares scaled up to sum to 1.
 *   1. items on ranks that remain stay; items on removed ranks are orphans;
 *   2. cap = ceil(items / ranks) per rank (an error if above slots_per_rank); a rank above cap
 *      sheds the items that leave its weight closest to the mean into the orphans;
 *   3. orphans, heaviest first, go to the least loaded rank with room that does not host the
 *      expert (if every such rank is full, one of its items is first moved on to a rank with room);
 *   4. local search from the most loaded rank: move one of its items to a rank with room, or swap
 *      one with a lighter item of another rank, the best change first, while the drop in load
 *      exceeds move_cost x the hosts the change adds that the current plan does not have (moving an
 *      item back to a rank that hosted it in `current` adds none); iterations are bounded. The drop
 *      is the top rank's (so that several ranks near the max can be lowered one after the other),
 *      and the walk then returns to its earliest state with the least max/mean + move_cost x new
 *      hosts: what is kept lowers the layer's max/mean by more than move_cost per new host.
 * Balance only: co-activation and token copies are not looked at. No random numbers, fixed scan
 * orders and ties to the lowest index: the same input gives the same plan on every rank. Cost per
 * layer is about iterations x cap x (ranks + items), milliseconds for 58 layers x 256 experts. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "placement/place-impl.h"

#define INC_EPS 1e-9 /* weights are normalised (mean rank 1): below this a change is no change */

/* The working state of one layer. Items are numbered by expert, then by the current plan's replica
 * order, so that scans (and ties) follow a fixed order. */
typedef struct {
    int E, R, Rc;       /* experts, new ranks, the current plan's ranks */
    int n;              /* items */
    int cap;            /* items one rank may hold */
    int *expert;        /* [n] */
    int *rank;          /* [n] rank, or -1 while an orphan */
    double *share;      /* [n] */
    double *weight;     /* [n] share x the expert's weight */
    int *host;          /* [E][R] the item of e on r, or -1 */
    unsigned char *was; /* [E][Rc] current hosts */
    double *load;       /* [R] */
    int *used;          /* [R] */
    int *order;         /* [n] scratch */
} layer_t;

static bool is_new(const layer_t *s, int e, int r)
{
    return r >= s->Rc || !s->was[(size_t)e * s->Rc + r];
}

static void item_place(layer_t *s, int i, int r)
{
    s->rank[i] = r;
    s->host[(size_t)s->expert[i] * s->R + r] = i;
    s->load[r] += s->weight[i];
    s->used[r]++;
}

static void item_remove(layer_t *s, int i)
{
    int r = s->rank[i];
    s->host[(size_t)s->expert[i] * s->R + r] = -1;
    s->load[r] -= s->weight[i];
    s->used[r]--;
    s->rank[i] = -1;
}

/* ---------------------------------------------------------------- items from the current plan */

/* The items of one layer from the current plan; a surplus over R replicas of one expert is dropped
 * (orphans with the smallest shares first; kept shares scaled to sum to 1). */
static void layer_items(layer_t *s, const moe_plan_h current, int layer,
                        const double *expert_weight)
{
    int E = s->E, R = s->R, Rc = s->Rc;
    s->n = 0;
    memset(s->was, 0, (size_t)E * Rc);
    for (int e = 0; e < E; e++) {
        const int *rk;
        const float *sh;
        int c = moe_plan_replicas(current, layer, e, &rk, &sh);
        int first = s->n;
        for (int j = 0; j < c; j++) {
            s->was[(size_t)e * Rc + rk[j]] = 1;
            s->expert[s->n] = e;
            s->rank[s->n] = rk[j] < R ? rk[j] : -1;
            s->share[s->n++] = sh[j];
        }
        int drop = c - R; /* <= orphans of e: at most R replicas sit on the remaining ranks */
        if (drop <= 0) continue;
        double dropped = 0;
        for (int k = 0; k < drop; k++) {
            int worst = -1;
            for (int i = first; i < s->n; i++)
                if (s->rank[i] < 0 && (worst < 0 || s->share[i] < s->share[worst])) worst = i;
            dropped += s->share[worst];
            for (int i = worst; i + 1 < s->n; i++) {
                s->rank[i] = s->rank[i + 1];
                s->share[i] = s->share[i + 1];
            }
            s->n--;
        }
        double scale = dropped < 1 ? 1.0 / (1.0 - dropped) : 1.0;
        for (int i = first; i < s->n; i++) s->share[i] *= scale;
    }
    for (int i = 0; i < s->n; i++) s->weight[i] = s->share[i] * expert_weight[s->expert[i]];
}

/* ---------------------------------------------------------------- steps 2 and 3 */

/* A rank above cap sheds the items that leave its weight closest to the mean: one at a time, the
 * item nearest to the mean share of what is still to shed. */
static void shed_over_cap(layer_t *s, double target)
{
    for (int r = 0; r < s->R; r++) {
        int m = s->used[r] - s->cap;
        double want = s->load[r] - target, shed = 0;
        for (int j = 0; j < m; j++) {
            double ideal = (want - shed) / (m - j);
            int best = -1;
            for (int i = 0; i < s->n; i++)
                if (s->rank[i] == r &&
                    (best < 0 || fabs(s->weight[i] - ideal) < fabs(s->weight[best] - ideal)))
                    best = i;
            shed += s->weight[best];
            item_remove(s, best);
        }
    }
}

/* Insertion sort of item ids, heaviest first, then by item index (n is a few hundred, and C11's
 * qsort has no context argument for the weights). */
static void sort_heaviest_first(const layer_t *s, int *ids, int k)
{
    for (int i = 1; i < k; i++) {
        int v = ids[i], j = i - 1;
        while (j >= 0 && (s->weight[ids[j]] < s->weight[v] ||
                          (s->weight[ids[j]] == s->weight[v] && ids[j] > v))) {
            ids[j + 1] = ids[j];
            j--;
        }
        ids[j + 1] = v;
    }
}

/* The least loaded rank with room that does not host e (ties: a rank that hosted e in the current
 * plan, then the lowest index); -1 if none. */
static int best_rank_for(const layer_t *s, int e, int except)
{
    int best = -1;
    for (int r = 0; r < s->R; r++) {
        if (r == except || s->used[r] >= s->cap || s->host[(size_t)e * s->R + r] >= 0) continue;
        if (best < 0 || s->load[r] < s->load[best] ||
            (s->load[r] == s->load[best] && is_new(s, e, best) && !is_new(s, e, r)))
            best = r;
    }
    return best;
}

/* Orphan i fits nowhere directly: every rank with room hosts its expert. Free a slot on the least
 * loaded rank r without it by moving one of r's items on to a rank with room. */
static bool place_by_eviction(layer_t *s, int i)
{
    int e = s->expert[i], best_r = -1, best_x = -1, best_to = -1;
    for (int r = 0; r < s->R; r++) {
        if (s->host[(size_t)e * s->R + r] >= 0) continue;
        if (best_r >= 0 && s->load[r] >= s->load[best_r]) continue;
        for (int x = 0; x < s->n; x++) {
            if (s->rank[x] != r) continue;
            int to = best_rank_for(s, s->expert[x], r);
            if (to < 0) continue;
            best_r = r, best_x = x, best_to = to;
            break;
        }
    }
    if (best_r < 0) return false;
    item_remove(s, best_x);
    item_place(s, best_x, best_to);
    item_place(s, i, best_r);
    return true;
}

static moe_status_t place_orphans(layer_t *s, int layer)
{
    int k = 0;
    for (int i = 0; i < s->n; i++)
        if (s->rank[i] < 0) s->order[k++] = i;
    sort_heaviest_first(s, s->order, k);
    for (int j = 0; j < k; j++) {
        int i = s->order[j], r = best_rank_for(s, s->expert[i], -1);
        if (r >= 0)
            item_place(s, i, r);
        else if (!place_by_eviction(s, i)) {
            moe_error("place incremental: layer %d: no rank has room for a replica of expert %d "
                      "(%d per rank on %d ranks)",
                      layer, s->expert[i], s->cap, s->R);
            return MOE_STATUS_SOLVER_ERROR;
        }
    }
    return MOE_STATUS_OK;
}

/* ---------------------------------------------------------------- step 4: local search */

typedef struct {
    int x, y;     /* item x of the top rank a goes to rank b; y (or -1) of b comes back to a */
    int a, b;
    double gain;  /* drop of the layer's max, less the move cost */
    double value; /* drop of the larger of the two ranks' loads, less the move cost */
    int added;    /* net hosts the current plan does not have */
} change_t;

static double max_load(const layer_t *s)
{
    double mx = 0;
    for (int r = 0; r < s->R; r++) mx = s->load[r] > mx ? s->load[r] : mx;
    return mx;
}

/* Scores a change that leaves the top rank a and rank b at na, nb, adding `added` hosts; keeps it
 * in best when it pays on the two ranks and beats best: the drop of the max first, then that of the
 * two ranks, then fewer added hosts; the first seen on ties. top3: the three most loaded ranks. */
static void consider(const layer_t *s, const int *top3, double move_cost, int x, int y, int b,
                     double na, double nb, int added, change_t *best)
{
    int a = s->rank[x];
    double price = added > 0 ? move_cost * added : 0, high = na > nb ? na : nb, others = 0;
    double value = s->load[a] - high - price;
    if (value <= INC_EPS) return;
    for (int t = 0; t < 3; t++)
        if (top3[t] >= 0 && top3[t] != a && top3[t] != b) {
            others = s->load[top3[t]];
            break;
        }
    double gain = s->load[a] - (high > others ? high : others) - price;
    if (best->x >= 0) {
        if (gain < best->gain - INC_EPS) return;
        if (gain <= best->gain + INC_EPS) {
            if (value < best->value - INC_EPS) return;
            if (value <= best->value + INC_EPS && added >= best->added) return;
        }
    }
    *best = (change_t){x, y, a, b, gain, value, added};
}

static void apply(layer_t *s, int x, int y, int to_x, int to_y)
{
    item_remove(s, x);
    if (y >= 0) {
        item_remove(s, y);
        item_place(s, y, to_y);
    }
    item_place(s, x, to_x);
}

/* Changes are taken while one lowers the top rank's load (and that of the rank it sends to) by more
 * than it costs; the sorted loads then fall lexicographically, so the walk ends. A single change
 * need not lower the max (other ranks may be close to it): the walk keeps its trajectory and
 * returns to the earliest state with the least max/mean + move_cost x new hosts, so a run of
 * changes over several near-top ranks is kept only when together they pay. trail: [max_iter]. */
static void local_search(layer_t *s, double move_cost, change_t *trail, int max_iter)
{
    int steps = 0, best_steps = 0, added = 0;
    double best_f = max_load(s);
    for (; steps < max_iter; steps++) {
        int top3[3] = {-1, -1, -1}; /* ties: the lowest index first */
        for (int r = 0; r < s->R; r++)
            for (int t = 0; t < 3; t++)
                if (top3[t] < 0 || s->load[r] > s->load[top3[t]]) {
                    for (int u = 2; u > t; u--) top3[u] = top3[u - 1];
                    top3[t] = r;
                    break;
                }
        int a = top3[0];
        change_t best = {.x = -1};
        for (int x = 0; x < s->n; x++) {
            if (s->rank[x] != a) continue;
            int ex = s->expert[x];
            double wx = s->weight[x];
            int leave = -(int)is_new(s, ex, a);
            for (int b = 0; b < s->R; b++) { /* moves */
                if (b == a || s->used[b] >= s->cap || s->host[(size_t)ex * s->R + b] >= 0)
                    continue;
                consider(s, top3, move_cost, x, -1, b, s->load[a] - wx, s->load[b] + wx,
                         leave + is_new(s, ex, b), &best);
            }
            for (int y = 0; y < s->n; y++) { /* swaps with a lighter item elsewhere */
                int b = s->rank[y], ey = s->expert[y];
                if (b == a || s->weight[y] >= wx || s->host[(size_t)ex * s->R + b] >= 0 ||
                    s->host[(size_t)ey * s->R + a] >= 0)
                    continue;
                double d = wx - s->weight[y];
                consider(s, top3, move_cost, x, y, b, s->load[a] - d, s->load[b] + d,
                         leave + is_new(s, ex, b) + is_new(s, ey, a) - is_new(s, ey, b), &best);
            }
        }
        if (best.x < 0) break;
        apply(s, best.x, best.y, best.b, best.a);
        trail[steps] = best;
        added += best.added;
        double f = max_load(s) + move_cost * added;
        if (f < best_f - INC_EPS) {
            best_f = f;
            best_steps = steps + 1;
        }
    }
    while (steps > best_steps) { /* undo the changes that did not pay */
        const change_t *c = &trail[--steps];
        apply(s, c->x, c->y, c->a, c->b);
    }
}

/* ---------------------------------------------------------------- the solver */

moe_status_t moe_place_solve_incremental(const moe_workload_h *w, int n,
                                         const moe_place_options_t *o, const moe_plan_h current,
                                         moe_plan_h *out)
{
    moe_status_t status = MOE_STATUS_OK;
    layer_t s = {0};
    double *shares = NULL, *expert_weight = NULL;
    change_t *trail = NULL;
    int L = w[0]->layers, E = w[0]->experts, R = o->ranks, Rc = moe_plan_ranks(current);
    int max_items = 0;
    for (int l = 0; l < L; l++) {
        int k = 0;
        for (int e = 0; e < E; e++) k += moe_plan_replicas(current, l, e, NULL, NULL);
        max_items = k > max_items ? k : max_items;
    }
    int max_iter = 4 * max_items + 64; /* changes per layer */
    s.E = E, s.R = R, s.Rc = Rc;
    shares = moe_calloc((size_t)L * E * R, sizeof(double));
    expert_weight = malloc(sizeof(double) * E);
    s.expert = malloc(sizeof(int) * max_items);
    s.rank = malloc(sizeof(int) * max_items);
    s.order = malloc(sizeof(int) * max_items);
    s.share = malloc(sizeof(double) * max_items);
    s.weight = malloc(sizeof(double) * max_items);
    s.host = malloc(sizeof(int) * E * R);
    s.was = malloc((size_t)E * Rc);
    s.load = malloc(sizeof(double) * R);
    s.used = malloc(sizeof(int) * R);
    trail = malloc(sizeof(change_t) * max_iter);
    if (!trail || !shares || !expert_weight || !s.expert || !s.rank || !s.order || !s.share ||
        !s.weight || !s.host || !s.was || !s.load || !s.used)
        MOE_FAIL(MOE_STATUS_NO_MEMORY, done, "place incremental: out of memory");
    for (int l = 0; l < L; l++) {
        moe_place_merged_weight(w, n, l, R, expert_weight);
        for (int e = 0; e < E; e++) expert_weight[e] /= n;
        layer_items(&s, current, l, expert_weight);
        s.cap = (s.n + R - 1) / R;
        if (o->slots_per_rank > 0 && s.cap > o->slots_per_rank)
            MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, done,
                     "place incremental: layer %d has %d replicas in the current plan: %d per rank "
                     "on %d ranks, but a rank holds %d (--slots-per-rank)",
                     l, s.n, s.cap, R, o->slots_per_rank);
        for (int q = 0; q < E * R; q++) s.host[q] = -1;
        memset(s.load, 0, sizeof(double) * R);
        memset(s.used, 0, sizeof(int) * R);
        double total = 0;
        for (int i = 0; i < s.n; i++) {
            total += s.weight[i];
            int r = s.rank[i];
            if (r >= 0) item_place(&s, i, r);
        }
        shed_over_cap(&s, total / R);
        MOE_CHECK(place_orphans(&s, l), done);
        local_search(&s, o->move_cost, trail, max_iter);
        double *share = shares + (size_t)l * E * R;
        for (int i = 0; i < s.n; i++) share[(size_t)s.expert[i] * R + s.rank[i]] = s.share[i];
        if (o->verbose)
            moe_info("place incremental: layer %d: %d replicas, max/mean %.4f", l, s.n,
                     max_load(&s));
    }
    MOE_CHECK(moe_place_plan_from_shares(L, E, R, o->ranks_per_node, shares, out), done);
done:
    free(trail);
    free(s.used);
    free(s.load);
    free(s.was);
    free(s.host);
    free(s.weight);
    free(s.share);
    free(s.order);
    free(s.rank);
    free(s.expert);
    free(expert_weight);
    moe_free(shares);
    return status;
}
