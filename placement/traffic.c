/* traffic.c: the token copies a plan makes the runtime send, counted from a source's routes.
 *
 * The runtime sends token t's hidden state once to every distinct rank that serves one of its
 * experts at a layer; for a replicated expert the rank is moe_plan_pick_replica(), a hash of
 * (layer, expert, token) against the shares, so different experts of one token pick independently.
 * Token t touches rank r with probability
 *     1 - q(t, r),   q(t, r) = prod_{e in t} (1 - share(e, r)),
 * and node n with probability 1 - Q(t, n), Q(t, n) = prod_{e in t} (1 - f(e, n)), f(e, n) the share
 * of e on n's ranks. Summing these over the source's own tokens, each with its own home rank
 * h(t) = (t / tokens_per_rank) % ranks, gives the replay's copies in expectation over the hash,
 * with no approximation in the counting (the second-order estimate of cost.c under-counts when a
 * token has three or more experts on one rank, which is what co-locating plans produce):
 *   flat          a copy to h is free, to another rank of h's node intra, else inter;
 *   hierarchical  one inter-node copy per remote node touched; inside a remote node the rank on
 *                 h's rail (local index h % G) receives it and forwards to the other touched ranks
 *                 (intra), as does h for its own node.
 * The replay draws one outcome of the hash per (layer, expert, token); on thousands of tokens the
 * two agree within a few per cent (tested for every solver's plan).
 *
 * Two forms: moe_place_route_copies() counts a layer from scratch (the model's figures, the
 * objective); moe_traffic_t keeps q and Q per token so that a local search can price moving one
 * replica in time proportional to the tokens that pick the expert. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "placement/place-impl.h"

#define FACTOR_ZERO 1e-12 /* a factor 1 - share below this is an expert that always lands there */

/* Weight of a copy from home h to rank r (and to node n) in the objective's units: an intra-node
 * copy 1, an inter-node one phi. */
static inline double rank_weight(int h, int r, int G, bool hier, double phi)
{
    if (r == h) return 0;
    if (r / G == h / G) return 1;
    if (hier) return r % G == h % G ? 0 : 1; /* the rail rank gets the node's one inter copy */
    return phi;
}

/* Distinct valid experts of a token (a repeated id counts once). */
static int token_experts(const int32_t *row, int k, int E, int *set)
{
    int n = 0;
    for (int j = 0; j < k; j++) {
        int e = row[j];
        if (e < 0 || e >= E) continue;
        bool seen = false;
        for (int i = 0; i < n; i++) seen |= set[i] == e;
        if (!seen) set[n++] = e;
    }
    return n;
}

/* ---------------------------------------------------------------- from scratch */

moe_status_t moe_place_route_copies(const double *share, int layer, const moe_workload_h w, int R,
                                    int G, int64_t tokens_per_rank, moe_place_copies_t *out)
{
    memset(out, 0, sizeof(*out));
    int E = w->experts, K = w->top_k, N = R / G;
    int64_t T = w->route_tokens;
    /* replicas per expert: offsets into (rank, share) lists */
    int *off = malloc(sizeof(int) * (E + 1));
    int *rk = malloc(sizeof(int) * ((size_t)E * R + 1));
    double *sh = malloc(sizeof(double) * ((size_t)E * R + 1));
    int *trk = malloc(sizeof(int) * ((size_t)K * R + 1)), *tnd = malloc(sizeof(int) * (N + 1));
    double *tq = malloc(sizeof(double) * ((size_t)K * R + 1));
    double *fq = malloc(sizeof(double) * (N + 1)), *fe = malloc(sizeof(double) * (N + 1));
    int *slot = malloc(sizeof(int) * R), *nslot = malloc(sizeof(int) * N);
    if (!off || !rk || !sh || !trk || !tnd || !tq || !fq || !fe || !slot || !nslot) {
        free(off), free(rk), free(sh), free(trk), free(tnd), free(tq), free(fq), free(fe);
        free(slot), free(nslot);
        moe_error("place: out of memory counting copies");
        return MOE_STATUS_NO_MEMORY;
    }
    off[0] = 0;
    for (int e = 0; e < E; e++) {
        off[e + 1] = off[e];
        for (int r = 0; r < R; r++) {
            double s = share[(size_t)e * R + r];
            if (s > 0) rk[off[e + 1]] = r, sh[off[e + 1]++] = s;
        }
    }
    for (int r = 0; r < R; r++) slot[r] = -1;
    for (int n = 0; n < N; n++) nslot[n] = -1;
    int set[64];
    for (int64_t t = 0; t < T; t++) {
        int h = (int)((t / tokens_per_rank) % R), hn = h / G;
        int ne = token_experts(w->ids + ((size_t)layer * T + t) * K, K, E, set);
        int nr = 0, nn = 0;
        for (int i = 0; i < ne; i++) {
            int e = set[i];
            for (int n = 0; n < nn; n++) fe[n] = 0;
            for (int j = off[e]; j < off[e + 1]; j++) {
                int r = rk[j], n = r / G;
                if (slot[r] < 0) slot[r] = nr, trk[nr] = r, tq[nr++] = 1;
                tq[slot[r]] *= 1 - sh[j];
                if (nslot[n] < 0) nslot[n] = nn, tnd[nn] = n, fq[nn] = 1, fe[nn++] = 0;
                fe[nslot[n]] += sh[j];
            }
            for (int n = 0; n < nn; n++) fq[n] *= fmax(0, 1 - fe[n]);
        }
        for (int i = 0; i < nr; i++) {
            int r = trk[i];
            double p = 1 - tq[i];
            slot[r] = -1;
            if (r == h) continue;
            if (r / G == hn) {
                out->intra += p;
                out->intra_hier += p;
            } else {
                out->inter += p;
                if (r % G != h % G) out->intra_hier += p;
            }
        }
        for (int i = 0; i < nn; i++) {
            nslot[tnd[i]] = -1;
            if (tnd[i] != hn) out->inter_hier += 1 - fq[i];
        }
    }
    free(off), free(rk), free(sh), free(trk), free(tnd), free(tq), free(fq), free(fe);
    free(slot), free(nslot);
    return MOE_STATUS_OK;
}

/* ---------------------------------------------------------------- incremental */

/* A product of factors (1 - share) in which factors that are zero are counted apart, so that
 * one can be divided out again. */
typedef struct {
    double p;
    int zeros;
} product_t;

static inline double product_value(product_t a) { return a.zeros ? 0 : a.p; }

static inline void product_swap_factor(product_t *a, double old_f, double new_f)
{
    if (old_f < FACTOR_ZERO)
        a->zeros--;
    else
        a->p /= old_f;
    if (new_f < FACTOR_ZERO)
        a->zeros++;
    else
        a->p *= new_f;
}

struct moe_traffic_s {
    int E, R, G, N;
    bool hier;
    double phi, scale; /* scale: copy_cost / pairs, so that cost() is in objective units */
    int64_t T;         /* tokens kept (all, or a stride sample) */
    int *home;         /* [T] */
    int *tok_off, *tok; /* tokens of each expert (CSR over experts) */
    int K;              /* experts per token at most */
    int *tok_exp;       /* [T][K] the token's distinct experts, -1 padded */
    product_t *q;       /* [T][R] */
    product_t *Q;       /* [T][N] */
    double *f;          /* [E][N] share of e on each node */
    double *share;      /* [E][R] the hosting the state describes */
    double cost;        /* sum over tokens of weighted copies */
};

static double token_rank_cost(const moe_traffic_t *s, int64_t t, int r)
{
    return rank_weight(s->home[t], r, s->G, s->hier, s->phi) *
           (1 - product_value(s->q[(size_t)t * s->R + r]));
}

static double token_node_cost(const moe_traffic_t *s, int64_t t, int n)
{
    if (!s->hier || n == s->home[t] / s->G) return 0;
    return s->phi * (1 - product_value(s->Q[(size_t)t * s->N + n]));
}

void moe_traffic_destroy(moe_traffic_t *s)
{
    if (!s) return;
    free(s->home);
    free(s->tok_off);
    free(s->tok);
    free(s->tok_exp);
    free(s->q);
    free(s->Q);
    free(s->f);
    free(s->share);
    free(s);
}

moe_status_t moe_traffic_create(const moe_workload_h w, int layer, const moe_place_options_t *o,
                                int64_t max_tokens, moe_traffic_t **out)
{
    moe_status_t status = MOE_STATUS_OK;
    int E = w->experts, K = w->top_k, R = o->ranks, G = o->ranks_per_node;
    int64_t T = w->route_tokens;
    int64_t stride = max_tokens > 0 && T > max_tokens ? (T + max_tokens - 1) / max_tokens : 1;
    moe_traffic_t *s = calloc(1, sizeof(*s));
    MOE_CHECK_ALLOC(s, fail);
    s->E = E, s->R = R, s->G = G, s->N = R / G;
    s->hier = o->hierarchical;
    s->phi = o->inter_factor;
    s->T = (T + stride - 1) / stride;
    s->home = malloc(sizeof(int) * s->T);
    s->tok_off = calloc((size_t)E + 1, sizeof(int));
    s->tok = malloc(sizeof(int) * ((size_t)s->T * K + 1));
    s->K = K;
    s->tok_exp = malloc(sizeof(int) * ((size_t)s->T * K + 1));
    s->q = malloc(sizeof(product_t) * (size_t)s->T * R);
    s->Q = malloc(sizeof(product_t) * (size_t)s->T * s->N);
    s->f = calloc((size_t)E * s->N, sizeof(double));
    s->share = calloc((size_t)E * R, sizeof(double));
    if (!s->home || !s->tok_off || !s->tok || !s->tok_exp || !s->q || !s->Q || !s->f || !s->share)
        MOE_FAIL(MOE_STATUS_NO_MEMORY, fail, "place: out of memory for %lld tokens x %d ranks",
                 (long long)s->T, R);
    int set[64];
    double pairs = 0;
    for (int pass = 0; pass < 2; pass++) { /* count, then fill the expert -> tokens lists */
        int *fill = pass ? malloc(sizeof(int) * (E + 1)) : NULL;
        if (pass && !fill) MOE_FAIL(MOE_STATUS_NO_MEMORY, fail, "place: out of memory");
        if (pass) {
            for (int e = 0; e < E; e++) s->tok_off[e + 1] += s->tok_off[e];
            memcpy(fill, s->tok_off, sizeof(int) * (E + 1));
        }
        for (int64_t i = 0; i < s->T; i++) {
            int64_t t = i * stride;
            int ne = token_experts(w->ids + ((size_t)layer * T + t) * K, K, E, set);
            for (int j = 0; j < ne; j++) {
                if (pass)
                    s->tok[fill[set[j]]++] = (int)i;
                else
                    s->tok_off[set[j] + 1]++;
            }
            if (!pass) {
                s->home[i] = (int)((t / o->tokens_per_rank) % R);
                pairs += ne;
                for (int j = 0; j < K; j++) s->tok_exp[(size_t)i * K + j] = j < ne ? set[j] : -1;
            }
        }
        free(fill);
    }
    s->scale = pairs > 0 ? o->copy_cost / pairs : 0;
    *out = s;
    return MOE_STATUS_OK;
fail:
    moe_traffic_destroy(s);
    return status;
}

void moe_traffic_set(moe_traffic_t *s, const double *share)
{
    int E = s->E, R = s->R, N = s->N, G = s->G;
    memcpy(s->share, share, sizeof(double) * E * R);
    memset(s->f, 0, sizeof(double) * E * N);
    for (int e = 0; e < E; e++)
        for (int r = 0; r < R; r++) s->f[(size_t)e * N + r / G] += share[(size_t)e * R + r];
    for (size_t i = 0; i < (size_t)s->T * R; i++) s->q[i] = (product_t){1, 0};
    for (size_t i = 0; i < (size_t)s->T * N; i++) s->Q[i] = (product_t){1, 0};
    for (int e = 0; e < E; e++)
        for (int j = s->tok_off[e]; j < s->tok_off[e + 1]; j++) {
            int64_t t = s->tok[j];
            for (int r = 0; r < R; r++) {
                double x = share[(size_t)e * R + r];
                if (x > 0) product_swap_factor(&s->q[(size_t)t * R + r], 1, 1 - x);
            }
            for (int n = 0; n < N; n++) {
                double x = s->f[(size_t)e * N + n];
                if (x > 0) product_swap_factor(&s->Q[(size_t)t * N + n], 1, fmax(0, 1 - x));
            }
        }
    s->cost = 0;
    for (int64_t t = 0; t < s->T; t++) {
        for (int r = 0; r < R; r++) s->cost += token_rank_cost(s, t, r);
        for (int n = 0; n < N; n++) s->cost += token_node_cost(s, t, n);
    }
}

double moe_traffic_cost(const moe_traffic_t *s) { return s->cost * s->scale; }

/* Move `amount` of expert e's share from rank `from` to rank `to`; returns the change of
 * moe_traffic_cost(). Applying the opposite move restores the state (up to rounding). */
double moe_traffic_move(moe_traffic_t *s, int e, double amount, int from, int to)
{
    int R = s->R, N = s->N, G = s->G;
    double *sf = &s->share[(size_t)e * R + from], *st = &s->share[(size_t)e * R + to];
    int nf = from / G, nt = to / G;
    double *ff = &s->f[(size_t)e * N + nf], *ft = &s->f[(size_t)e * N + nt];
    double of = 1 - *sf, nf_ = 1 - (*sf - amount), ot = 1 - *st, nt_ = 1 - (*st + amount);
    double onf = fmax(0, 1 - *ff), nnf = fmax(0, 1 - (*ff - amount));
    double ont = fmax(0, 1 - *ft), nnt = fmax(0, 1 - (*ft + amount));
    if (nf_ > 1 - FACTOR_ZERO) nf_ = 1; /* the whole share left: exactly no factor */
    if (nnf > 1 - FACTOR_ZERO && *ff - amount < FACTOR_ZERO) nnf = 1;
    double delta = 0;
    for (int j = s->tok_off[e]; j < s->tok_off[e + 1]; j++) {
        int64_t t = s->tok[j];
        double before = token_rank_cost(s, t, from) + token_rank_cost(s, t, to);
        product_swap_factor(&s->q[(size_t)t * R + from], of, nf_);
        product_swap_factor(&s->q[(size_t)t * R + to], ot, nt_);
        double after = token_rank_cost(s, t, from) + token_rank_cost(s, t, to);
        if (nf != nt) {
            before += token_node_cost(s, t, nf) + token_node_cost(s, t, nt);
            product_swap_factor(&s->Q[(size_t)t * N + nf], onf, nnf);
            product_swap_factor(&s->Q[(size_t)t * N + nt], ont, nnt);
            after += token_node_cost(s, t, nf) + token_node_cost(s, t, nt);
        }
        delta += after - before;
    }
    *sf -= amount;
    if (*sf < FACTOR_ZERO) *sf = 0;
    *st += amount;
    if (nf != nt) {
        *ff -= amount;
        if (*ff < FACTOR_ZERO) *ff = 0;
        *ft += amount;
    }
    s->cost += delta;
    return delta * s->scale;
}

static bool token_has(const moe_traffic_t *s, int64_t t, int e)
{
    const int *x = s->tok_exp + (size_t)t * s->K;
    for (int j = 0; j < s->K && x[j] >= 0; j++)
        if (x[j] == e) return true;
    return false;
}

/* The change one token's copies see when e1 moves x1 of its share from r1 to r2 (has1) and e2
 * moves x2 from r2 to r1 (has2), without changing the state. */
static double token_delta(const moe_traffic_t *s, int64_t t, bool has1, int e1, double x1,
                          bool has2, int e2, double x2, int r1, int r2)
{
    int R = s->R, N = s->N, G = s->G, n1 = r1 / G, n2 = r2 / G;
    product_t q1 = s->q[(size_t)t * R + r1], q2 = s->q[(size_t)t * R + r2];
    double before = token_rank_cost(s, t, r1) + token_rank_cost(s, t, r2), after = 0;
    if (has1) {
        double a = s->share[(size_t)e1 * R + r1], b = s->share[(size_t)e1 * R + r2];
        product_swap_factor(&q1, 1 - a, a - x1 < FACTOR_ZERO ? 1 : 1 - (a - x1));
        product_swap_factor(&q2, 1 - b, 1 - (b + x1));
    }
    if (has2) {
        double a = s->share[(size_t)e2 * R + r2], b = s->share[(size_t)e2 * R + r1];
        product_swap_factor(&q2, 1 - a, a - x2 < FACTOR_ZERO ? 1 : 1 - (a - x2));
        product_swap_factor(&q1, 1 - b, 1 - (b + x2));
    }
    after += rank_weight(s->home[t], r1, G, s->hier, s->phi) * (1 - product_value(q1));
    after += rank_weight(s->home[t], r2, G, s->hier, s->phi) * (1 - product_value(q2));
    if (s->hier && n1 != n2) {
        product_t Q1 = s->Q[(size_t)t * N + n1], Q2 = s->Q[(size_t)t * N + n2];
        before += token_node_cost(s, t, n1) + token_node_cost(s, t, n2);
        if (has1) {
            double a = s->f[(size_t)e1 * N + n1], b = s->f[(size_t)e1 * N + n2];
            product_swap_factor(&Q1, fmax(0, 1 - a), a - x1 < FACTOR_ZERO ? 1 : fmax(0, 1 - (a - x1)));
            product_swap_factor(&Q2, fmax(0, 1 - b), fmax(0, 1 - (b + x1)));
        }
        if (has2) {
            double a = s->f[(size_t)e2 * N + n2], b = s->f[(size_t)e2 * N + n1];
            product_swap_factor(&Q2, fmax(0, 1 - a), a - x2 < FACTOR_ZERO ? 1 : fmax(0, 1 - (a - x2)));
            product_swap_factor(&Q1, fmax(0, 1 - b), fmax(0, 1 - (b + x2)));
        }
        int hn = s->home[t] / G;
        if (n1 != hn) after += s->phi * (1 - product_value(Q1));
        if (n2 != hn) after += s->phi * (1 - product_value(Q2));
    }
    return after - before;
}

double moe_traffic_delta(const moe_traffic_t *s, int e1, double x1, int r1, int r2, int e2,
                         double x2)
{
    double d = 0;
    for (int j = s->tok_off[e1]; j < s->tok_off[e1 + 1]; j++) {
        int64_t t = s->tok[j];
        d += token_delta(s, t, true, e1, x1, e2 >= 0 && token_has(s, t, e2), e2, x2, r1, r2);
    }
    if (e2 >= 0)
        for (int j = s->tok_off[e2]; j < s->tok_off[e2 + 1]; j++) {
            int64_t t = s->tok[j];
            if (!token_has(s, t, e1)) d += token_delta(s, t, false, e1, x1, true, e2, x2, r1, r2);
        }
    return d * s->scale;
}

/* An upper bound on what moving `amount` of e can save: every token of e lowers its chance to
 * touch the rank (and node) it leaves by at most `amount`. */
double moe_traffic_move_bound(const moe_traffic_t *s, int e, double amount)
{
    /* the copies it can save: those to the rank (and node) it leaves */
    double per_token = amount * (fmax(1, s->phi) + (s->hier ? s->phi : 0));
    return per_token * (s->tok_off[e + 1] - s->tok_off[e]) * s->scale;
}
