/* solve_exact.c: `moerun place --exact`, the cost model of cost.c solved to proven optimality for
 * small instances, over replica counts and hosts together, with equal shares.
 *
 * The model, per layer (layers are independent when tokens go home between layers):
 *   choose counts c_e >= 1 (sum = experts + replicas, each <= ranks) and hosts y[e][r] in {0, 1}
 *   (sum_r y[e][r] = c_e, at most ceil(slots / ranks) per rank), every replica of e taking 1 / c_e
 *   of its tokens (the runtime's equal split, EPLB's), to minimise moe_place_layer_cost():
 *     max_w max_r sum_e u_w[e] y[e][r] / c_e
 *     + copy_cost (1/n) sum_w (inter_factor inter_w + intra_w) / pairs_w.
 * Shares are not free: with them the copies of the runtime's hashed replica choice,
 * 1 - prod_e (1 - share(e, r)) per token and rank, are products of continuous variables, which no
 * MILP states exactly; with shares 1 / c_e fixed by the counts they are products of binaries,
 * which it does. Unequal shares tuned to the sources are also what held-out domains punish
 * (solve_hedged.c), so the exact model keeps the EPLB split.
 *
 * Copies, exactly as cost.c counts them:
 *   - a trace: for each token (home h) and rank r, P(touch r) = 1 - prod_{e in t} (1 - y[e][r]/c_e)
 *     = sum over non-empty subsets T of the token's experts of (-1)^{|T|+1} prod_{e in T} y[e][r]/c_e
 *     (inclusion-exclusion), weighted as the replay weighs a copy from h to r; hierarchical
 *     dispatch adds, per remote node n, the same over f(e, n) = sum_{r in n} y[e][r] / c_e, whose
 *     products expand into products of y at ranks of n;
 *   - a statistics file: the second-order expression of cost.c (pairs of experts);
 *   - a CSV: a constant.
 * Each product of y's becomes a variable p with p <= y for each factor when its coefficient is
 * negative (the objective pushes p up to the product), p >= sum y - (|T| - 1) when positive (pushed
 * down to it): exact for binaries. Balance: z >= sum_e u_w[e] / c_e y[e][r] for every w and r.
 *
 * Counts are enumerated (every vector of c_e, with a bound: a layer cannot cost less than
 * max_w max_e u_w[e] / c_e plus the constant part), one GLPK MILP per vector with presolve and no
 * gap tolerance; the best is kept. The test compares the result with an independent MILP that
 * keeps the counts as variables, solved by HiGHS (tests/placement/exact_vs_milp.py), and with
 * brute force. Small instances only: slots x ranks <= 256, at most 20000 count vectors per layer,
 * tokens x subsets bounded (an error says which limit was hit). */
#include <glpk.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "placement/place-impl.h"

#define EXACT_MAX_CELLS 256     /* slots x ranks */
#define EXACT_MAX_VECTORS 20000 /* count vectors per layer */
#define EXACT_MAX_FACTORS 8     /* experts per product term (top-k) */
#define EXACT_MAX_TERMS 200000  /* product terms per MILP */

/* A product of host indicators y[e][r] (at most EXACT_MAX_FACTORS), sorted, with its
 * coefficient in the objective. */
typedef struct {
    int n;
    int cell[EXACT_MAX_FACTORS]; /* e * R + r, ascending */
    double coef;
} term_t;

typedef struct {
    term_t *t;
    int n, cap;
    int *slot; /* open addressing over term indices, -1 empty */
    int slots;
} terms_t;

static uint64_t term_hash(const int *cell, int n)
{
    uint64_t h = 1469598103934665603ULL;
    for (int i = 0; i < n; i++) h = (h ^ (uint64_t)cell[i]) * 1099511628211ULL;
    return h;
}

static void terms_clear(terms_t *ts)
{
    ts->n = 0;
    for (int i = 0; i < ts->slots; i++) ts->slot[i] = -1;
}

static void terms_free(terms_t *ts)
{
    free(ts->t);
    free(ts->slot);
    memset(ts, 0, sizeof(*ts));
}

static moe_status_t terms_grow(terms_t *ts)
{
    int cap = ts->cap ? 2 * ts->cap : 1024, slots = 4 * cap;
    term_t *t = realloc(ts->t, sizeof(term_t) * cap);
    int *slot = malloc(sizeof(int) * slots);
    if (!t || !slot) {
        free(slot);
        if (t) ts->t = t;
        moe_error("place --exact: out of memory for %d product terms", cap);
        return MOE_STATUS_NO_MEMORY;
    }
    ts->t = t;
    ts->cap = cap;
    free(ts->slot);
    ts->slot = slot;
    ts->slots = slots;
    for (int i = 0; i < slots; i++) slot[i] = -1;
    for (int i = 0; i < ts->n; i++) {
        uint64_t h = term_hash(t[i].cell, t[i].n) & (uint64_t)(slots - 1);
        while (slot[h] >= 0) h = (h + 1) & (uint64_t)(slots - 1);
        slot[h] = i;
    }
    return MOE_STATUS_OK;
}

/* Add coef to the product of the given cells (any order; n >= 2). */
static moe_status_t terms_add(terms_t *ts, const int *cells, int n, double coef)
{
    int c[EXACT_MAX_FACTORS];
    for (int i = 0; i < n; i++) { /* insertion sort */
        int v = cells[i], j = i;
        while (j > 0 && c[j - 1] > v) c[j] = c[j - 1], j--;
        c[j] = v;
    }
    if (!ts->slot || ts->n + 1 > ts->cap) {
        moe_status_t st = terms_grow(ts);
        if (st != MOE_STATUS_OK) return st;
    }
    if (ts->n >= EXACT_MAX_TERMS) {
        moe_error("place --exact: more than %d product terms; the instance is too large for the "
                  "exact model (use --solver hedged or ilp)",
                  EXACT_MAX_TERMS);
        return MOE_STATUS_INVALID_ARGUMENT;
    }
    uint64_t h = term_hash(c, n) & (uint64_t)(ts->slots - 1);
    while (ts->slot[h] >= 0) {
        term_t *t = &ts->t[ts->slot[h]];
        if (t->n == n && !memcmp(t->cell, c, sizeof(int) * n)) {
            t->coef += coef;
            return MOE_STATUS_OK;
        }
        h = (h + 1) & (uint64_t)(ts->slots - 1);
    }
    ts->slot[h] = ts->n;
    term_t *t = &ts->t[ts->n++];
    t->n = n;
    memcpy(t->cell, c, sizeof(int) * n);
    t->coef = coef;
    return MOE_STATUS_OK;
}

/* ---------------------------------------------------------------- building the objective */

typedef struct {
    const moe_workload_h *w;
    int n, layer;
    const moe_place_options_t *o;
    const moe_place_layout_t *lay;
    const int *counts;
    double *lin;      /* [E][R] linear coefficients of y */
    double constant;
    terms_t terms;
} build_t;

/* Weight of a copy from home h to rank r (flat) or of the rank part of hierarchical dispatch, as
 * traffic.c weighs it. */
static double copy_weight(int h, int r, int G, bool hier, double phi)
{
    if (r == h) return 0;
    if (r / G == h / G) return 1;
    if (hier) return r % G == h % G ? 0 : 1;
    return phi;
}

/* Add coef x prod_{e in T} f(e, ranks) where f(e, .) = sum over the given ranks of y[e][r] / c_e:
 * a sum over rank tuples. */
static moe_status_t add_product(build_t *b, const int *T, int nt, const int *ranks, int nr,
                                double coef)
{
    int R = b->lay->ranks, idx[EXACT_MAX_FACTORS] = {0}, cells[EXACT_MAX_FACTORS];
    double scale = coef;
    for (int i = 0; i < nt; i++) scale /= b->counts[T[i]];
    for (;;) {
        for (int i = 0; i < nt; i++) cells[i] = T[i] * R + ranks[idx[i]];
        if (nt == 1) {
            b->lin[cells[0]] += scale;
        } else {
            moe_status_t st = terms_add(&b->terms, cells, nt, scale);
            if (st != MOE_STATUS_OK) return st;
        }
        int i = 0;
        while (i < nt && ++idx[i] == nr) idx[i++] = 0;
        if (i == nt) break;
    }
    return MOE_STATUS_OK;
}

/* coef x P(a token with experts S touches the ranks `ranks` as one unit), by inclusion-exclusion. */
static moe_status_t add_touch(build_t *b, const int *S, int ns, const int *ranks, int nr,
                              double coef)
{
    int T[EXACT_MAX_FACTORS];
    for (unsigned mask = 1; mask < (1u << ns); mask++) {
        int nt = 0;
        for (int i = 0; i < ns; i++)
            if (mask & (1u << i)) T[nt++] = S[i];
        double sign = (nt % 2) ? 1 : -1;
        moe_status_t st = add_product(b, T, nt, ranks, nr, sign * coef);
        if (st != MOE_STATUS_OK) return st;
    }
    return MOE_STATUS_OK;
}

static moe_status_t build_routes(build_t *b, const moe_workload_h w, double weight)
{
    const moe_place_options_t *o = b->o;
    int E = w->experts, K = w->top_k, R = b->lay->ranks, G = b->lay->ranks_per_node;
    int64_t T = w->route_tokens;
    double pairs = 0;
    for (int e = 0; e < E; e++) pairs += w->loads[(size_t)b->layer * E + e];
    if (pairs <= 0) return MOE_STATUS_OK;
    double scale = weight * o->copy_cost / pairs;
    int ranks[256];
    for (int64_t t = 0; t < T; t++) {
        const int32_t *row = w->ids + ((size_t)b->layer * T + t) * K;
        int S[EXACT_MAX_FACTORS], ns = 0;
        for (int j = 0; j < K; j++) {
            int e = row[j];
            bool seen = e < 0;
            for (int i = 0; i < ns; i++) seen |= S[i] == e;
            if (!seen) S[ns++] = e;
        }
        int h = (int)((t / o->tokens_per_rank) % R);
        for (int r = 0; r < R; r++) {
            double wgt = copy_weight(h, r, G, o->hierarchical, o->inter_factor);
            if (wgt <= 0) continue;
            ranks[0] = r;
            moe_status_t st = add_touch(b, S, ns, ranks, 1, scale * wgt);
            if (st != MOE_STATUS_OK) return st;
        }
        if (!o->hierarchical) continue;
        for (int n = 0; n < R / G; n++) {
            if (n == h / G) continue;
            for (int g = 0; g < G; g++) ranks[g] = n * G + g;
            moe_status_t st = add_touch(b, S, ns, ranks, G, scale * o->inter_factor);
            if (st != MOE_STATUS_OK) return st;
        }
    }
    return MOE_STATUS_OK;
}

/* The second-order expression of cost.c for a statistics file: constant (wr + wn) minus the pair
 * weights times the co-located pair mass. */
static moe_status_t build_pairs(build_t *b, const moe_workload_h w, double weight)
{
    int E = w->experts, R = b->lay->ranks, G = b->lay->ranks_per_node;
    double wr, wn;
    moe_place_pair_weights(b->o, &wr, &wn);
    b->constant += weight * (wr + wn);
    double pairs = 0;
    for (int e = 0; e < E; e++) pairs += w->loads[(size_t)b->layer * E + e];
    if (pairs <= 0 || !w->coact) return MOE_STATUS_OK;
    const double *C = w->coact + (size_t)b->layer * E * E;
    int ranks[256];
    for (int a = 0; a < E; a++)
        for (int c = a + 1; c < E; c++) {
            double v = C[(size_t)a * E + c] * weight / pairs;
            if (v <= 0) continue;
            int T[2] = {a, c};
            for (int r = 0; r < R && wr > 0; r++) {
                ranks[0] = r;
                moe_status_t st = add_product(b, T, 2, ranks, 1, -wr * v);
                if (st != MOE_STATUS_OK) return st;
            }
            for (int n = 0; n < R / G && wn > 0; n++) {
                for (int g = 0; g < G; g++) ranks[g] = n * G + g;
                moe_status_t st = add_product(b, T, 2, ranks, G, -wn * v);
                if (st != MOE_STATUS_OK) return st;
            }
        }
    return MOE_STATUS_OK;
}

/* ---------------------------------------------------------------- one MILP */

/* Solve the layer for fixed counts; *value = the optimum (INFINITY if GLPK found none), the hosts
 * into y[E][R] when it beats *best. */
static moe_status_t solve_counts(build_t *b, double seconds, double *value, bool *proven,
                                 unsigned char *y)
{
    moe_status_t status = MOE_STATUS_OK;
    const moe_place_layout_t *lay = b->lay;
    int E = lay->experts, R = lay->ranks, W = b->n;
    const int *counts = b->counts;
    memset(b->lin, 0, sizeof(double) * E * R);
    b->constant = 0;
    terms_clear(&b->terms);
    for (int i = 0; i < W; i++) {
        if (b->w[i]->ids)
            MOE_CHECK(build_routes(b, b->w[i], 1.0 / W), done_build);
        else
            MOE_CHECK(build_pairs(b, b->w[i], 1.0 / W), done_build);
    }
done_build:
    if (status != MOE_STATUS_OK) return status;
    int nt = b->terms.n, col_z = E * R + 1, col_p = col_z + 1, ncols = E * R + 1 + nt;
    size_t nnz = (size_t)E * R * 2 + (size_t)W * R * (E + 1) + 1;
    int nrows = E + R + W * R;
    for (int i = 0; i < nt; i++) {
        nrows += b->terms.t[i].coef < 0 ? b->terms.t[i].n : 1;
        nnz += 2 * (size_t)b->terms.t[i].n + 1;
    }
    int *ia = malloc(sizeof(int) * (nnz + 1)), *ja = malloc(sizeof(int) * (nnz + 1));
    double *ar = malloc(sizeof(double) * (nnz + 1));
    glp_prob *P = NULL;
    if (!ia || !ja || !ar) MOE_FAIL(MOE_STATUS_NO_MEMORY, done, "place --exact: out of memory");
    P = glp_create_prob();
    glp_set_obj_dir(P, GLP_MIN);
    glp_add_cols(P, ncols);
    for (int j = 1; j <= E * R; j++) {
        glp_set_col_kind(P, j, GLP_BV);
        glp_set_obj_coef(P, j, b->lin[j - 1]);
    }
    glp_set_col_bnds(P, col_z, GLP_LO, 0, 0);
    glp_set_obj_coef(P, col_z, 1);
    glp_set_obj_coef(P, 0, b->constant);
    for (int i = 0; i < nt; i++) {
        glp_set_col_bnds(P, col_p + i, GLP_DB, 0, 1);
        glp_set_obj_coef(P, col_p + i, b->terms.t[i].coef);
    }
    glp_add_rows(P, nrows);
    size_t k = 0;
    int row = 1;
    for (int e = 0; e < E; e++, row++) {
        glp_set_row_bnds(P, row, GLP_FX, counts[e], counts[e]);
        for (int r = 0; r < R; r++) ia[++k] = row, ja[k] = 1 + e * R + r, ar[k] = 1;
    }
    for (int r = 0; r < R; r++, row++) {
        glp_set_row_bnds(P, row, GLP_UP, 0, lay->rank_cap);
        for (int e = 0; e < E; e++) ia[++k] = row, ja[k] = 1 + e * R + r, ar[k] = 1;
    }
    for (int i = 0; i < W; i++) {
        double total = 0;
        for (int e = 0; e < E; e++) total += b->w[i]->loads[(size_t)b->layer * E + e];
        for (int r = 0; r < R; r++, row++) {
            glp_set_row_bnds(P, row, GLP_UP, 0, 0);
            for (int e = 0; e < E && total > 0; e++) {
                double u = b->w[i]->loads[(size_t)b->layer * E + e] * R / total;
                if (u != 0) ia[++k] = row, ja[k] = 1 + e * R + r, ar[k] = u / counts[e];
            }
            ia[++k] = row, ja[k] = col_z, ar[k] = -1;
        }
    }
    for (int i = 0; i < nt; i++) {
        const term_t *t = &b->terms.t[i];
        if (t->coef < 0) { /* p <= y for each factor */
            for (int f = 0; f < t->n; f++, row++) {
                glp_set_row_bnds(P, row, GLP_UP, 0, 0);
                ia[++k] = row, ja[k] = col_p + i, ar[k] = 1;
                ia[++k] = row, ja[k] = 1 + t->cell[f], ar[k] = -1;
            }
        } else { /* p >= sum y - (n - 1) */
            glp_set_row_bnds(P, row, GLP_LO, -(t->n - 1), 0);
            ia[++k] = row, ja[k] = col_p + i, ar[k] = 1;
            for (int f = 0; f < t->n; f++) ia[++k] = row, ja[k] = 1 + t->cell[f], ar[k] = -1;
            row++;
        }
    }
    glp_load_matrix(P, (int)k, ia, ja, ar);
    glp_iocp iocp;
    glp_init_iocp(&iocp);
    iocp.msg_lev = GLP_MSG_OFF;
    iocp.presolve = GLP_ON;
    iocp.mip_gap = 0;
    iocp.tm_lim = (int)fmax(100, seconds * 1000);
    int rc = glp_intopt(P, &iocp);
    int ms = glp_mip_status(P);
    *value = INFINITY;
    *proven = false;
    if (ms == GLP_OPT || ms == GLP_FEAS) {
        *value = glp_mip_obj_val(P);
        *proven = ms == GLP_OPT && rc == 0;
        for (int q = 0; q < E * R; q++) y[q] = glp_mip_col_val(P, 1 + q) > 0.5;
    }
done:
    if (P) glp_delete_prob(P);
    free(ar);
    free(ja);
    free(ia);
    return status;
}

/* ---------------------------------------------------------------- counts */

/* The next count vector (c_e >= 1, each <= cmax, summing to total) in lexicographic order;
 * false after the last. Starts from counts all 1 except the last holding the rest when first. */
static bool next_counts(int *c, int E, int total, int cmax, bool first)
{
    if (first) {
        int left = total;
        for (int e = 0; e < E; e++) c[e] = 1, left--;
        for (int e = E - 1; e >= 0 && left > 0; e--) {
            int add = left < cmax - 1 ? left : cmax - 1;
            c[e] += add;
            left -= add;
        }
        return left == 0;
    }
    /* find the rightmost position that can grow while a later one shrinks */
    for (int i = E - 2; i >= 0; i--) {
        int rest = 0;
        for (int j = i + 1; j < E; j++) rest += c[j];
        if (c[i] < cmax && rest - 1 >= E - 1 - i) {
            c[i]++;
            rest--;
            /* fill i+1.. with the smallest vector (lexicographically) summing to rest */
            for (int j = i + 1; j < E; j++) c[j] = 1;
            int left = rest - (E - 1 - i);
            for (int j = E - 1; j > i && left > 0; j--) {
                int add = left < cmax - 1 ? left : cmax - 1;
                c[j] += add;
                left -= add;
            }
            if (left == 0) return true;
        }
    }
    return false;
}

moe_status_t moe_place_solve_exact(const moe_workload_h *w, int n, const moe_place_options_t *o,
                                   moe_plan_h *out, moe_place_report_t *rep)
{
    moe_status_t status = MOE_STATUS_OK;
    moe_place_layout_t lay;
    MOE_CHECK(moe_place_layout_make(w, n, o, &lay), fail);
    int L = lay.layers, E = lay.experts, R = lay.ranks;
    if (o->stay)
        MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, fail,
                 "place --exact: the model is per layer; stay residency couples layers (use "
                 "--solver ilp)");
    if ((long)lay.slots * R > EXACT_MAX_CELLS)
        MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, fail,
                 "place --exact: %d slots x %d ranks is too large for the exact model (at most "
                 "%d); use --solver hedged or ilp",
                 lay.slots, R, EXACT_MAX_CELLS);
    for (int i = 0; i < n; i++)
        if (w[i]->ids && w[i]->top_k > EXACT_MAX_FACTORS)
            MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, fail,
                     "place --exact: %s routes top-%d; the exact model takes at most top-%d",
                     w[i]->name, w[i]->top_k, EXACT_MAX_FACTORS);
    int cmax = R < 1 + o->replicas ? R : 1 + o->replicas;
    long vectors = 0;
    int *c = malloc(sizeof(int) * E);
    MOE_CHECK_ALLOC(c, fail);
    for (bool ok = next_counts(c, E, lay.slots, cmax, true); ok;
         ok = next_counts(c, E, lay.slots, cmax, false))
        if (++vectors > EXACT_MAX_VECTORS) break;
    if (vectors > EXACT_MAX_VECTORS || vectors == 0) {
        free(c);
        MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, fail,
                 vectors ? "place --exact: more than %d replica count vectors per layer; use "
                           "fewer replicas or --solver hedged"
                         : "place --exact: no replica counts fit (%d)",
                 EXACT_MAX_VECTORS);
    }
    double deadline = moe_now() + o->time_limit;
    double *shares = moe_calloc((size_t)L * E * R, sizeof(double));
    unsigned char *y = malloc((size_t)E * R), *best_y = malloc((size_t)E * R);
    int *best_c = malloc(sizeof(int) * E);
    build_t b = {.w = w, .n = n, .o = o, .lay = &lay, .counts = c};
    b.lin = malloc(sizeof(double) * E * R);
    MOE_CHECK_ALLOC(shares, done);
    if (!y || !best_y || !best_c || !b.lin)
        MOE_FAIL(MOE_STATUS_NO_MEMORY, done, "place --exact: out of memory");
    /* the balance bound prunes count vectors only where copies cannot be negative (the
     * second-order estimate of a statistics file can be) */
    bool prune = true;
    for (int i = 0; i < n; i++) prune &= w[i]->ids != NULL || w[i]->coact == NULL;
    int proven_layers = 0;
    for (int l = 0; l < L; l++) {
        b.layer = l;
        double best = INFINITY;
        bool all_proven = true;
        /* the balance bound of a count vector: some rank hosts each replica */
        for (bool ok = next_counts(c, E, lay.slots, cmax, true); ok;
             ok = next_counts(c, E, lay.slots, cmax, false)) {
            double lb = 1.0;
            for (int i = 0; i < n; i++) {
                double total = 0;
                for (int e = 0; e < E; e++) total += w[i]->loads[(size_t)l * E + e];
                for (int e = 0; e < E && total > 0; e++)
                    lb = fmax(lb, w[i]->loads[(size_t)l * E + e] * R / total / c[e]);
            }
            if (prune && lb >= best) continue;
            double left = deadline - moe_now(), value;
            bool proven;
            MOE_CHECK(solve_counts(&b, left / (L - l), &value, &proven, y), done);
            all_proven &= proven;
            if (value < best) {
                best = value;
                memcpy(best_y, y, (size_t)E * R);
                memcpy(best_c, c, sizeof(int) * E);
            }
        }
        if (!isfinite(best))
            MOE_FAIL(MOE_STATUS_SOLVER_ERROR, done,
                     "place --exact: layer %d: GLPK found no solution in time; raise "
                     "--time-limit",
                     l);
        if (!all_proven)
            moe_warn("place --exact: layer %d not proven optimal within the time limit", l);
        proven_layers += all_proven;
        for (int e = 0; e < E; e++)
            for (int r = 0; r < R; r++)
                if (best_y[(size_t)e * R + r]) shares[((size_t)l * E + e) * R + r] = 1.0 / best_c[e];
    }
    MOE_CHECK(moe_place_plan_from_shares(L, E, R, lay.ranks_per_node, shares, out), done);
    if (rep) {
        rep->mip_gap = proven_layers == L ? 0 : NAN;
        rep->subproblems = L;
        rep->subproblems_proven = proven_layers;
    }
done:
    terms_free(&b.terms);
    free(b.lin);
    free(best_c);
    free(best_y);
    free(y);
    moe_free(shares);
    free(c);
fail:
    return status;
}
