/* solve_hedged.c: the hedged solver (the default): a plan meant to hold on routing its sources do
 * not show -- another domain, another task -- and not only on the sources themselves.
 *
 * Why: on the ESFT traces the expert loads of two domains are uncorrelated (per layer, intent vs
 * law: correlation 0.04 on average) while within one domain they barely move between blocks of
 * tokens, so a plan tuned to the sources' loads (replicas on the source-hottest experts, uneven
 * shares, co-activated experts packed together) bets on loads that a new domain redraws. What
 * carries over is the co-activation structure (correlation 0.29 between the domains), and with it
 * a hazard: experts that tokens pick together rise together when the domain moves (pairs with lift
 * 2-3 in one domain have loads correlated by about 0.2 in the other), so co-locating them
 * co-locates load that rises together.
 *
 * Balance is therefore judged over scenarios, per layer:
 *   - the sources: the blocks of every trace, the labels of a CSV, a statistics file as one (each
 *     source weighs alike), together weighing 1 - hedge;
 *   - redrawn domains, together weighing hedge / 2: the source's loads dealt to the experts in a
 *     random (hashed, fixed) order, 64 of them: a new domain as skewed as the source whose hot
 *     experts are any. Their expected most loaded rank rewards spreading replicas over more
 *     experts and giving every rank the same exposure (a rank of three full experts carries more
 *     of whatever turns hot than one of a full expert and two halves);
 *   - shifted domains, together weighing hedge / 2: for each expert a (at most 64 per source,
 *     evenly spread), the source re-weighted so that the tokens that pick a become as frequent as
 *     the source's most frequent expert is, w(t) = 1 + g [a in t]; the loads are L(e) + g C(a, e)
 *     with C the co-activation, so a's partners rise with it (a CSV has no co-activation: a rises
 *     alone). Co-locating an expert with its partners shows here as a hot rank;
 * with u_s[e] the normalised load of e in scenario s (a rank of mean load has 1) and
 * l_s(r) = sum_e u_s[e] share(e, r), the objective of a layer is
 *     J = sum_s pi_s max_r l_s(r) + eps sum_r (m(r) - 1)^2 / R + lambda C
 * the expected most loaded rank over the scenarios, a small term (eps = 0.05) that keeps every rank,
 * not only the most loaded one, near the sources' mean m(r) (and lets the search progress when
 * ranks tie), and C the copies the runtime sends, counted from the routes of the trace sources
 * (traffic.c; flat or hierarchical dispatch) in the cost model's units (copy_cost x (inter_factor x
 * inter + intra) / pairs, averaged over the traces), weighted by lambda (--traffic-weight). hedge
 * and lambda are chosen by cross-validation across sources (crossval.c); the defaults come from
 * that on the shared traces (docs/placement.md).
 *
 * Steps per layer: replica counts: the redundant slots one at a time to the expert with the
 * largest root-mean-square scenario load per replica (replicas go where load is high or varies
 * most); shares equal (the EPLB split: shares tuned to the sources are a bet on their loads);
 * hosting: greedy (LPT on the same weight), then a local search of moves and swaps, first
 * improvement in a fixed order, over candidate ranks (those hosting the expert's most co-activated
 * partners, the two least loaded, and every rank for experts on the two ranks that are most often
 * the most loaded) until no change pays or the time is up. Moves across nodes are priced like any
 * other, so with hierarchical dispatch experts go to the node of their partners when that cuts
 * inter-node copies. With a current plan each host it does not have costs move_cost.
 * Deterministic (no random numbers; ties to the lowest index) unless the time limit stops the
 * search. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "placement/place-impl.h"

#define HEDGE_EPS 0.05    /* weight of the spread of all ranks' mean loads */
#define HEDGE_SHIFTS 64   /* shifted and redrawn domains per source at most (each) */
#define HEDGE_MIX 0.5     /* the shifted domains' part of the hedge (the redrawn ones: the rest) */
#define HEDGE_PARTNERS 6  /* co-activated partners whose ranks are candidates for a move */
#define HEDGE_LOW_RANKS 2 /* least loaded ranks that are candidates for every move */
#define HEDGE_HOT 2       /* ranks whose experts may move to any rank */
#define HEDGE_PASSES 60   /* passes of the local search at most */
#define HEDGE_TOL 1e-9    /* a change that gains less is no change */
#define HEDGE_TOKENS 4096 /* tokens of each trace the search counts copies on (a stride sample) */

typedef struct {
    const moe_place_layout_t *lay;
    const moe_place_options_t *o;
    int S;          /* scenarios */
    double *u;      /* [S][E] normalised loads */
    double *pi;     /* [S] weights in the expected max, summing to 1 */
    double *pm;     /* [S] weights in the sources' mean (source scenarios only), summing to 1 */
    double *ls;     /* [S][R] load of each rank in each scenario */
    int *top;       /* [S][3] the three most loaded ranks of each scenario */
    double *m;      /* [R] the sources' mean load of each rank */
    double *share;  /* [E][R] */
    int *counts;    /* [E] */
    int *item_e;    /* [n] expert of each replica */
    int *item_r;    /* [n] its rank */
    int *host;      /* [E][R] item of e on r, or -1 */
    int *used;      /* [R] */
    int n_items;
    moe_traffic_t **tr; /* traffic of each trace source */
    int n_tr;
    double lambda;  /* weight of the traffic term per trace source */
    const double *cur; /* [E][R] current plan or NULL */
    int *partners;  /* [E][HEDGE_PARTNERS] or -1 */
    unsigned char *hot; /* [R] the rank is among the HEDGE_HOT most often most loaded */
    double *hot_weight; /* [R] scratch */
} hedge_t;

/* ---------------------------------------------------------------- scenarios */

static int scenario_count(const moe_workload_h w, double hedge)
{
    int nw = w->windows > 0 ? w->windows : 1;
    return nw + (hedge > 0 ? 2 * (w->experts < HEDGE_SHIFTS ? w->experts : HEDGE_SHIFTS) : 0);
}

/* Normalise a scenario's loads (a rank of mean load has 1); false when it has no tokens. */
static bool normalise(double *u, int E, int R)
{
    double total = 0;
    for (int e = 0; e < E; e++) total += u[e];
    if (!(total > 0)) return false;
    for (int e = 0; e < E; e++) u[e] *= R / total;
    return true;
}

/* The scenarios of one layer from every source: normalised loads and weights. */
static moe_status_t scenarios_make(const moe_workload_h *w, int n, int layer, int R, hedge_t *s)
{
    int E = w[0]->experts, S = 0;
    double hedge = s->o->hedge;
    for (int i = 0; i < n; i++) S += scenario_count(w[i], hedge);
    s->u = calloc((size_t)S * E, sizeof(double));
    s->pi = calloc((size_t)S, sizeof(double));
    s->pm = calloc((size_t)S, sizeof(double));
    if (!s->u || !s->pi || !s->pm) {
        moe_error("place: out of memory for %d scenarios", S);
        return MOE_STATUS_NO_MEMORY;
    }
    int k = 0;
    for (int i = 0; i < n; i++) {
        const double *L = w[i]->loads + (size_t)layer * E;
        int nw = w[i]->windows > 0 ? w[i]->windows : 1;
        for (int j = 0; j < nw; j++, k++) {
            const double *row =
                w[i]->windows > 0 ? w[i]->window_loads + ((size_t)j * w[i]->layers + layer) * E : L;
            memcpy(s->u + (size_t)k * E, row, sizeof(double) * E);
            if (normalise(s->u + (size_t)k * E, E, R)) {
                s->pm[k] = 1.0 / nw;
                s->pi[k] = (1 - hedge) / nw;
            }
        }
        if (!(hedge > 0)) continue;
        /* shifted domains: tokens of expert a as frequent as the source's most frequent expert */
        double T = w[i]->tokens, top = 0;
        for (int e = 0; e < E; e++) top = fmax(top, L[e]);
        double f = T > 0 ? fmin(top / T, 0.99) : 0;
        int M = E < HEDGE_SHIFTS ? E : HEDGE_SHIFTS;
        const double *C = w[i]->coact ? w[i]->coact + (size_t)layer * E * E : NULL;
        for (int j = 0; j < M; j++, k++) {
            int a = (int)((long)j * E / M);
            double La = fmax(L[a], 1), g = fmax(0, (f * T - La) / (La * (1 - f)));
            double *u = s->u + (size_t)k * E;
            for (int e = 0; e < E; e++)
                u[e] = L[e] + g * (C ? C[(size_t)a * E + e] : (e == a ? La : 0));
            if (!C || L[a] < 1) u[a] = L[a] + g * La;
            if (normalise(u, E, R)) s->pi[k] = hedge * HEDGE_MIX / M;
        }
        /* redrawn domains: the source's loads dealt to the experts in a random (hashed) order */
        int *perm = malloc(sizeof(int) * E);
        if (!perm) {
            moe_error("place: out of memory for %d experts", E);
            return MOE_STATUS_NO_MEMORY;
        }
        for (int j = 0; j < M; j++, k++) {
            double *u = s->u + (size_t)k * E;
            for (int e = 0; e < E; e++) perm[e] = e;
            for (int e = E - 1; e > 0; e--) {
                int q = (int)(moe_hash(0x7265647261ULL, (uint64_t)layer, (uint64_t)j, (uint64_t)e, 0) %
                              (uint64_t)(e + 1));
                int t = perm[e];
                perm[e] = perm[q];
                perm[q] = t;
            }
            for (int e = 0; e < E; e++) u[e] = L[perm[e]];
            if (normalise(u, E, R)) s->pi[k] = hedge * (1 - HEDGE_MIX) / M;
        }
        free(perm);
    }
    double sum = 0, msum = 0;
    for (k = 0; k < S; k++) sum += s->pi[k], msum += s->pm[k];
    if (!(sum > 0)) { /* no tokens at all at this layer: every expert alike */
        for (k = 0; k < S; k++) {
            for (int e = 0; e < E; e++) s->u[(size_t)k * E + e] = (double)R / E;
            s->pi[k] = s->pm[k] = 1;
        }
        sum = msum = S;
    }
    for (k = 0; k < S; k++) {
        s->pi[k] /= sum;
        s->pm[k] = msum > 0 ? s->pm[k] / msum : s->pi[k];
    }
    s->S = S;
    return MOE_STATUS_OK;
}

/* Weight of each expert for counts and packing: its root-mean-square scenario load. */
static void expert_weights(const hedge_t *s, int E, double *v)
{
    for (int e = 0; e < E; e++) {
        double q = 0;
        for (int k = 0; k < s->S; k++) q += s->pi[k] * s->u[(size_t)k * E + e] * s->u[(size_t)k * E + e];
        v[e] = sqrt(q);
    }
}

/* ---------------------------------------------------------------- balance state */

static void top_update(hedge_t *s, int k)
{
    int R = s->lay->ranks, *t = s->top + (size_t)k * 3;
    const double *l = s->ls + (size_t)k * R;
    t[0] = t[1] = t[2] = -1;
    for (int r = 0; r < R; r++) {
        if (t[0] < 0 || l[r] > l[t[0]]) {
            t[2] = t[1], t[1] = t[0], t[0] = r;
        } else if (t[1] < 0 || l[r] > l[t[1]]) {
            t[2] = t[1], t[1] = r;
        } else if (t[2] < 0 || l[r] > l[t[2]]) {
            t[2] = r;
        }
    }
}

/* The HEDGE_HOT ranks that are the most loaded in the largest weight of scenarios: their experts
 * may move to any rank. */
static void hot_update(hedge_t *s)
{
    int R = s->lay->ranks;
    double *w = s->hot_weight;
    memset(s->hot, 0, (size_t)R);
    memset(w, 0, sizeof(double) * R);
    for (int k = 0; k < s->S; k++) w[s->top[(size_t)k * 3]] += s->pi[k];
    for (int h = 0; h < HEDGE_HOT; h++) {
        int best = -1;
        for (int r = 0; r < R; r++)
            if (!s->hot[r] && w[r] > 0 && (best < 0 || w[r] > w[best])) best = r;
        if (best >= 0) s->hot[best] = 1;
    }
}

static void balance_set(hedge_t *s)
{
    int E = s->lay->experts, R = s->lay->ranks;
    memset(s->ls, 0, sizeof(double) * s->S * R);
    for (int e = 0; e < E; e++)
        for (int r = 0; r < R; r++) {
            double x = s->share[(size_t)e * R + r];
            if (x <= 0) continue;
            for (int k = 0; k < s->S; k++) s->ls[(size_t)k * R + r] += s->u[(size_t)k * E + e] * x;
        }
    for (int r = 0; r < R; r++) {
        s->m[r] = 0;
        for (int k = 0; k < s->S; k++) s->m[r] += s->pm[k] * s->ls[(size_t)k * R + r];
    }
    for (int k = 0; k < s->S; k++) top_update(s, k);
    hot_update(s);
}

static double sq(double x) { return x * x; }

/* Change of the balance terms if rank r1 gains e_in1 (share x1) and loses e_out1 (share x2)
 * while r2 gains e_out1 and loses e_in1 (a swap; e_out1 < 0: a move of e_in1 from r2 to r1). */
static double balance_delta(const hedge_t *s, int r1, int r2, int e12, double x12, int e21,
                            double x21)
{
    /* e12 moves from r1 to r2 (share x12); e21 from r2 to r1 (x21; e21 < 0: none) */
    int E = s->lay->experts, R = s->lay->ranks;
    double d = 0, m1 = 0, m2 = 0;
    for (int k = 0; k < s->S; k++) {
        double dk = s->u[(size_t)k * E + e12] * x12 - (e21 >= 0 ? s->u[(size_t)k * E + e21] * x21 : 0);
        double l1 = s->ls[(size_t)k * R + r1] - dk, l2 = s->ls[(size_t)k * R + r2] + dk;
        m1 += s->pm[k] * l1;
        m2 += s->pm[k] * l2;
        if (!(s->pi[k] > 0)) continue;
        const int *t = s->top + (size_t)k * 3;
        double old = s->ls[(size_t)k * R + t[0]], other = 0;
        for (int q = 0; q < 3; q++)
            if (t[q] >= 0 && t[q] != r1 && t[q] != r2) {
                other = s->ls[(size_t)k * R + t[q]];
                break;
            }
        d += s->pi[k] * (fmax(other, fmax(l1, l2)) - old);
    }
    d += HEDGE_EPS / R * (sq(m1 - 1) + sq(m2 - 1) - sq(s->m[r1] - 1) - sq(s->m[r2] - 1));
    return d;
}

static void balance_apply(hedge_t *s, int r1, int r2, int e12, double x12, int e21, double x21)
{
    int E = s->lay->experts, R = s->lay->ranks;
    s->m[r1] = s->m[r2] = 0;
    for (int k = 0; k < s->S; k++) {
        double dk = s->u[(size_t)k * E + e12] * x12 - (e21 >= 0 ? s->u[(size_t)k * E + e21] * x21 : 0);
        s->ls[(size_t)k * R + r1] -= dk;
        s->ls[(size_t)k * R + r2] += dk;
        s->m[r1] += s->pm[k] * s->ls[(size_t)k * R + r1];
        s->m[r2] += s->pm[k] * s->ls[(size_t)k * R + r2];
        top_update(s, k);
    }
    hot_update(s);
}

/* ---------------------------------------------------------------- moves */

static double move_cost_of(const hedge_t *s, int e, int r)
{
    if (!s->cur || s->o->move_cost <= 0) return 0;
    return s->cur[(size_t)e * s->lay->ranks + r] > 0 ? 0 : s->o->move_cost;
}

static double traffic_move(hedge_t *s, int e, double x, int from, int to)
{
    double d = 0;
    for (int i = 0; i < s->n_tr; i++) d += moe_traffic_move(s->tr[i], e, x, from, to);
    return d * s->lambda;
}

static double traffic_bound(const hedge_t *s, int e, double x)
{
    double b = 0;
    for (int i = 0; i < s->n_tr; i++) b += moe_traffic_move_bound(s->tr[i], e, x);
    return b * s->lambda;
}

static void item_move(hedge_t *s, int i, int to)
{
    int R = s->lay->ranks, e = s->item_e[i], from = s->item_r[i];
    double x = s->share[(size_t)e * R + from];
    s->share[(size_t)e * R + from] = 0;
    s->share[(size_t)e * R + to] = x;
    s->host[(size_t)e * R + from] = -1;
    s->host[(size_t)e * R + to] = i;
    s->item_r[i] = to;
    s->used[from]--;
    s->used[to]++;
}

/* Try moving item i to rank `to` (j < 0) or swapping it with item j on `to`; keep it if the
 * objective drops. Returns whether it was kept. */
static bool try_change(hedge_t *s, int i, int j, int to)
{
    int R = s->lay->ranks, from = s->item_r[i], ei = s->item_e[i], ej = j >= 0 ? s->item_e[j] : -1;
    double xi = s->share[(size_t)ei * R + from], xj = j >= 0 ? s->share[(size_t)ej * R + to] : 0;
    double d = balance_delta(s, from, to, ei, xi, ej, xj);
    d += move_cost_of(s, ei, to) - move_cost_of(s, ei, from);
    if (j >= 0) d += move_cost_of(s, ej, from) - move_cost_of(s, ej, to);
    double bound = traffic_bound(s, ei, xi) + (j >= 0 ? traffic_bound(s, ej, xj) : 0);
    if (d - bound >= -HEDGE_TOL) return false;
    double dt = 0;
    for (int k = 0; k < s->n_tr; k++)
        dt += s->lambda * moe_traffic_delta(s->tr[k], ei, xi, from, to, ej, xj);
    if (d + dt >= -HEDGE_TOL) return false;
    traffic_move(s, ei, xi, from, to);
    if (j >= 0) traffic_move(s, ej, xj, to, from);
    balance_apply(s, from, to, ei, xi, ej, xj);
    item_move(s, i, to);
    if (j >= 0) item_move(s, j, from);
    return true;
}

/* Candidate ranks for moving expert e away from rank `from` (mark[R]: scratch); returns the
 * count written into list. */
static int candidates(const hedge_t *s, int e, int from, int *list, unsigned char *mark)
{
    int R = s->lay->ranks, n = 0;
    memset(mark, 0, (size_t)R);
    mark[from] = 1;
    bool all = s->hot[from];
    for (int r = 0; r < R && all; r++)
        if (!mark[r]) mark[r] = 1, list[n++] = r;
    for (int k = 0; k < HEDGE_PARTNERS && !all; k++) {
        int b = s->partners[(size_t)e * HEDGE_PARTNERS + k];
        if (b < 0) break;
        for (int r = 0; r < R; r++)
            if (s->host[(size_t)b * R + r] >= 0 && !mark[r]) mark[r] = 1, list[n++] = r;
    }
    for (int k = 0; k < HEDGE_LOW_RANKS && !all; k++) {
        int best = -1;
        for (int r = 0; r < R; r++)
            if (!mark[r] && (best < 0 || s->m[r] < s->m[best])) best = r;
        if (best >= 0) mark[best] = 1, list[n++] = best;
    }
    return n;
}

/* First-improvement local search over moves and swaps; returns the passes made. */
static int local_search(hedge_t *s, double deadline)
{
    int R = s->lay->ranks, E = s->lay->experts, cap = s->lay->rank_cap;
    int *list = malloc(sizeof(int) * R);
    unsigned char *mark = malloc((size_t)R);
    int pass = 0;
    if (!list || !mark) goto done; /* no search: the greedy start stands */
    for (bool improved = true; improved && pass < HEDGE_PASSES && moe_now() < deadline; pass++) {
        improved = false;
        for (int i = 0; i < s->n_items; i++) {
            int e = s->item_e[i];
            int nc = candidates(s, e, s->item_r[i], list, mark);
            for (int c = 0; c < nc; c++) {
                int to = list[c], from = s->item_r[i];
                if (s->host[(size_t)e * R + to] >= 0) continue;
                if (s->used[to] < cap && try_change(s, i, -1, to)) {
                    improved = true;
                    break;
                }
                bool swapped = false;
                for (int b = 0; b < E && !swapped; b++) {
                    int j = s->host[(size_t)b * R + to];
                    if (j < 0 || b == e || s->host[(size_t)b * R + from] >= 0) continue;
                    swapped = try_change(s, i, j, to);
                }
                if (swapped) {
                    improved = true;
                    break;
                }
            }
        }
    }
done:
    free(mark);
    free(list);
    return pass;
}

/* ---------------------------------------------------------------- driver */

/* Each expert's most co-activated partners, over the sources with pairwise statistics. */
static void partners_make(const moe_workload_h *w, int n, int layer, int E, int *partners)
{
    double *c = calloc((size_t)E, sizeof(double));
    for (int e = 0; e < E; e++) {
        for (int k = 0; k < HEDGE_PARTNERS; k++) partners[(size_t)e * HEDGE_PARTNERS + k] = -1;
        if (!c) continue;
        memset(c, 0, sizeof(double) * E);
        for (int i = 0; i < n; i++) {
            if (!w[i]->coact) continue;
            const double *row = w[i]->coact + ((size_t)layer * E + e) * E;
            double total = 0;
            for (int b = 0; b < E; b++) total += w[i]->loads[(size_t)layer * E + b];
            for (int b = 0; b < E; b++)
                if (b != e && total > 0) c[b] += row[b] / total;
        }
        for (int k = 0; k < HEDGE_PARTNERS; k++) {
            int best = -1;
            for (int b = 0; b < E; b++)
                if (c[b] > 0 && (best < 0 || c[b] > c[best])) best = b;
            if (best < 0) break;
            partners[(size_t)e * HEDGE_PARTNERS + k] = best;
            c[best] = 0;
        }
    }
    free(c);
}

static void hedge_free_layer(hedge_t *s)
{
    for (int i = 0; i < s->n_tr; i++) moe_traffic_destroy(s->tr[i]);
    s->n_tr = 0;
    free(s->u);
    free(s->pi);
    free(s->pm);
    free(s->ls);
    free(s->top);
    s->u = s->pi = s->pm = s->ls = NULL;
    s->top = NULL;
}

/* Allocate the per-run arrays of the state. */
static moe_status_t hedge_alloc(hedge_t *s, int n)
{
    int E = s->lay->experts, R = s->lay->ranks;
    s->m = malloc(sizeof(double) * R);
    s->hot = malloc((size_t)R);
    s->hot_weight = malloc(sizeof(double) * R);
    s->counts = malloc(sizeof(int) * E);
    s->item_e = malloc(sizeof(int) * E * R);
    s->item_r = malloc(sizeof(int) * E * R);
    s->host = malloc(sizeof(int) * E * R);
    s->used = malloc(sizeof(int) * R);
    s->tr = calloc((size_t)n + 1, sizeof(moe_traffic_t *));
    s->partners = malloc(sizeof(int) * E * HEDGE_PARTNERS);
    if (!s->m || !s->hot || !s->hot_weight || !s->counts || !s->item_e || !s->item_r || !s->host || !s->used ||
        !s->tr || !s->partners) {
        moe_error("place: out of memory for %d experts x %d ranks", E, R);
        return MOE_STATUS_NO_MEMORY;
    }
    return MOE_STATUS_OK;
}

static void hedge_free(hedge_t *s)
{
    hedge_free_layer(s);
    free(s->partners);
    free(s->tr);
    free(s->used);
    free(s->host);
    free(s->item_r);
    free(s->item_e);
    free(s->counts);
    free(s->hot_weight);
    free(s->hot);
    free(s->m);
}

/* One layer: scenarios, traffic states, and (with start == NULL) counts and the greedy start in
 * s->share; then the local search from s->share. */
static moe_status_t hedge_layer(hedge_t *s, const moe_workload_h *w, int n, int l, bool start,
                                const double *cur, double deadline, int *passes)
{
    moe_status_t status = MOE_STATUS_OK;
    const moe_place_options_t *o = s->o;
    int E = s->lay->experts, R = s->lay->ranks;
    double *v = malloc(sizeof(double) * E);
    MOE_CHECK_ALLOC(v, done);
    MOE_CHECK(scenarios_make(w, n, l, R, s), done);
    s->ls = malloc(sizeof(double) * s->S * R);
    s->top = malloc(sizeof(int) * s->S * 3);
    MOE_CHECK_ALLOC(s->ls, done);
    MOE_CHECK_ALLOC(s->top, done);
    for (int i = 0; i < n; i++) {
        if (!w[i]->ids) continue;
        MOE_CHECK(moe_traffic_create(w[i], l, o, HEDGE_TOKENS, &s->tr[s->n_tr]), done);
        s->n_tr++;
    }
    s->lambda = s->n_tr ? o->traffic_weight / s->n_tr : 0;
    partners_make(w, n, l, E, s->partners);
    if (start) { /* counts and the greedy start on the hedged weights */
        expert_weights(s, E, v);
        moe_place_counts_from_weight(v, E, o->replicas, R, s->counts);
        MOE_CHECK(moe_place_greedy_layer(s->lay, s->counts, v, s->share), done);
    }
    s->n_items = 0;
    for (int q = 0; q < E * R; q++) s->host[q] = -1;
    memset(s->used, 0, sizeof(int) * R);
    for (int e = 0; e < E; e++)
        for (int r = 0; r < R; r++)
            if (s->share[(size_t)e * R + r] > 0) {
                s->item_e[s->n_items] = e;
                s->item_r[s->n_items] = r;
                s->host[(size_t)e * R + r] = s->n_items++;
                s->used[r]++;
            }
    s->cur = cur;
    balance_set(s);
    for (int i = 0; i < s->n_tr; i++) moe_traffic_set(s->tr[i], s->share);
    *passes += local_search(s, deadline);
done:
    free(v);
    return status;
}

moe_status_t moe_place_hedged_improve(const moe_workload_h *w, int n,
                                      const moe_place_options_t *o, int layer, double *share,
                                      double deadline)
{
    moe_status_t status = MOE_STATUS_OK;
    moe_place_layout_t lay;
    MOE_CHECK(moe_place_layout_make(w, n, o, &lay), fail);
    hedge_t s = {.lay = &lay, .o = o, .share = share};
    int passes = 0;
    MOE_CHECK(hedge_alloc(&s, n), done);
    MOE_CHECK(hedge_layer(&s, w, n, layer, false, NULL, deadline, &passes), done);
done:
    hedge_free(&s);
fail:
    return status;
}

moe_status_t moe_place_solve_hedged(const moe_workload_h *w, int n, const moe_place_options_t *o,
                                    const moe_plan_h current, moe_plan_h *out,
                                    moe_place_report_t *rep)
{
    moe_status_t status = MOE_STATUS_OK;
    moe_place_layout_t lay;
    MOE_CHECK(moe_place_layout_make(w, n, o, &lay), fail);
    if (o->stay)
        MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, fail,
                 "place: the hedged solver models tokens going home between layers; for stay "
                 "residency use --solver ilp");
    if (!(o->hedge >= 0 && o->hedge <= 1) || !(o->traffic_weight >= 0))
        MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, fail,
                 "place: --hedge must be in [0, 1] and --traffic-weight >= 0 (got %g, %g)",
                 o->hedge, o->traffic_weight);
    int L = lay.layers, E = lay.experts, R = lay.ranks;
    double t0 = moe_now(), deadline = t0 + 0.95 * o->time_limit;
    hedge_t s = {.lay = &lay, .o = o};
    double *shares = moe_calloc((size_t)L * E * R, sizeof(double)), *cur = NULL;
    MOE_CHECK_ALLOC(shares, done);
    MOE_CHECK(hedge_alloc(&s, n), done);
    if (current && moe_plan_ranks(current) == R) {
        cur = malloc(sizeof(double) * E * R);
        MOE_CHECK_ALLOC(cur, done);
    }
    int passes = 0;
    for (int l = 0; l < L; l++) {
        double layer_deadline = moe_now() + (deadline - moe_now()) / (L - l);
        if (cur) moe_place_plan_layer_shares(current, l, cur);
        s.share = shares + (size_t)l * E * R;
        MOE_CHECK(hedge_layer(&s, w, n, l, true, cur, layer_deadline, &passes), done);
        if (o->verbose)
            moe_info("place: hedged layer %d: traffic %.4f, %.2f s", l,
                     s.n_tr ? moe_traffic_cost(s.tr[0]) : 0, moe_now() - t0);
        hedge_free_layer(&s);
    }
    MOE_CHECK(moe_place_plan_from_shares(L, E, R, lay.ranks_per_node, shares, out), done);
    if (rep) {
        rep->mip_gap = NAN;
        rep->search_passes = passes;
    }
done:
    hedge_free(&s);
    free(cur);
    moe_free(shares);
fail:
    return status;
}
