/* cost.c: the cost model of a placement, the replay evaluator and the objective the solvers
 * minimise.
 *
 * What the runtime does, and so what is counted (see docs/placement.md):
 *   - token t lives on its home rank h(t) = (t / tokens_per_rank) % ranks (the runtime hands out
 *     tokens in contiguous blocks); node(r) = r / ranks_per_node;
 *   - at layer l the token's k experts are looked up; for a replicated expert the replica is
 *     moe_plan_pick_replica(plan, l, e, t); the token's hidden state travels ONCE to each distinct
 *     destination rank; the destination applies all its local experts to it and sends one combined
 *     vector back (combine mirrors dispatch, so only dispatch copies are counted);
 *   - a copy to h(t) itself is free, a copy to another rank of h's node is intra-node, any other is
 *     inter-node;
 *   - hierarchical dispatch (modelled, not in the runtime): one inter-node copy per remote node,
 *     to the rank with h's local index there (the "rail"), forwarded inside that node to the other
 *     destinations (intra-node copies);
 *   - "stay" residency (modelled): instead of returning home after a layer, the token stays on the
 *     destination rank that applied most of its experts (ties: where it was, else the lowest
 *     rank), which is where layer l+1's copies then start (MoETuner / ExFlow);
 *   - load of a rank = token-expert pairs it receives (uniform experts: x one expert's FLOPs).
 *
 * Figures per layer: max load, mean load (= pairs / ranks), max/mean, copies; summed / worst / mean
 * over layers.
 *
 * The modelled cost of one layer for workloads w = 1..n (what the ilp, exact and greedy-compared
 * solvers minimise; the hedged solver's balance term is its own, solve_hedged.c):
 *
 *   cost_l = max_w (max_r load_w(r) / mean_w)
 *          + copy_cost * (1/n) sum_w (inter_factor * inter_w + intra_w) / pairs_w
 *
 * with load_w(r) = sum_e loads_w[l][e] * share(e, r), pairs_w = sum_e loads_w[l][e] (token-expert
 * pairs). Copies (inter_w, intra_w; hierarchical ones with options->hierarchical):
 *   - a workload with routes (a trace): counted token by token from its routes and home ranks,
 *     in expectation over the replica hash (traffic.c) -- what the replay counts, within a few
 *     per cent;
 *   - a workload with pairwise statistics only (a statistics file): with the home rank taken as
 *     uniform and independent of the routes,
 *       inter = (1 - G/R) * sum_r touched_r,   intra = ((G - 1)/R) * sum_r touched_r      (flat)
 *       inter = (1 - G/R) * sum_n touched_n                                        (hierarchical)
 *     with touched_r, the tokens sending to rank r, at second order (Bonferroni)
 *       touched_r ~ sum_e loads[e] share(e, r) - sum_{a<b} coact[a][b] share(a, r) share(b, r),
 *     exact when no token has three or more experts on one rank and otherwise an under-estimate
 *     (by half and more for plans that co-locate co-activated experts): pairwise counts cannot say
 *     more;
 *   - a workload of loads only (a CSV): no copies are known; the term is the constant it would be
 *     with every co-activation zero.
 * Copy cost 1 says an intra-node copy there and back costs one token-expert FFN (a 2048-wide bf16
 * hidden state over NVLink vs a 2048x1408 SwiGLU expert on an H100-class GPU); inter_factor 3.2 is
 * NVLink vs InfiniBand per GPU in the DeepSeek-V3 report. The objective is the mean over layers.
 * With stay residency (tokens stay on the rank of their last expert) copies come from the
 * transitions at second order (stay_mass below), for every workload. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "placement/place-impl.h"

/* ---------------------------------------------------------------- figures */

static moe_status_t figures_alloc(int layers, int ranks, int ranks_per_node, moe_place_figures_t *f)
{
    memset(f, 0, sizeof(*f));
    double *block = moe_calloc((size_t)layers * 9, sizeof(double));
    if (!block) {
        moe_error("out of memory for figures of %d layers", layers);
        return MOE_STATUS_NO_MEMORY;
    }
    f->layers = layers;
    f->ranks = ranks;
    f->ranks_per_node = ranks_per_node;
    double **arrays[9] = {&f->max_load,   &f->mean_load,  &f->imbalance,  &f->inter,     &f->intra,
                          &f->inter_hier, &f->intra_hier, &f->inter_stay, &f->intra_stay};
    for (int i = 0; i < 9; i++) *arrays[i] = block + (size_t)i * layers;
    return MOE_STATUS_OK;
}

void moe_place_figures_free(moe_place_figures_t *f)
{
    if (!f) return;
    moe_free(f->max_load);
    memset(f, 0, sizeof(*f));
}

static void figures_summarise(moe_place_figures_t *f, const moe_place_options_t *o)
{
    double worst = 0, sum = 0, cost = 0;
    f->inter_total = f->intra_total = f->inter_hier_total = f->intra_hier_total = 0;
    f->inter_stay_total = f->intra_stay_total = 0;
    for (int l = 0; l < f->layers; l++) {
        f->imbalance[l] = f->mean_load[l] > 0 ? f->max_load[l] / f->mean_load[l] : 1.0;
        if (f->imbalance[l] > worst) worst = f->imbalance[l];
        sum += f->imbalance[l];
        f->inter_total += f->inter[l];
        f->intra_total += f->intra[l];
        f->inter_hier_total += f->inter_hier[l];
        f->intra_hier_total += f->intra_hier[l];
        f->inter_stay_total += f->inter_stay[l];
        f->intra_stay_total += f->intra_stay[l];
        double pairs = f->mean_load[l] * f->ranks;
        double inter = o->hierarchical ? f->inter_hier[l] : f->inter[l];
        double intra = o->hierarchical ? f->intra_hier[l] : f->intra[l];
        cost += f->imbalance[l] +
                (pairs > 0 ? o->copy_cost * (o->inter_factor * inter + intra) / pairs : 0);
    }
    f->worst_imbalance = worst;
    f->mean_imbalance = sum / f->layers;
    f->cost = cost / f->layers;
}

/* ---------------------------------------------------------------- layout and dense shares */

moe_status_t moe_place_layout_make(const moe_workload_h *w, int n, const moe_place_options_t *o,
                                   moe_place_layout_t *out)
{
    if (n < 1) {
        moe_error("place: no statistics source given");
        return MOE_STATUS_INVALID_ARGUMENT;
    }
    for (int i = 1; i < n; i++) {
        if (w[i]->layers != w[0]->layers || w[i]->experts != w[0]->experts) {
            moe_error("place: %s has %d layers x %d experts but %s has %d x %d", w[i]->name,
                      w[i]->layers, w[i]->experts, w[0]->name, w[0]->layers, w[0]->experts);
            return MOE_STATUS_INVALID_ARGUMENT;
        }
    }
    int R = o->ranks, G = o->ranks_per_node, E = w[0]->experts;
    if (R < 1 || G < 1 || R % G != 0) {
        moe_error("place: --ranks (%d) must be a positive multiple of --ranks-per-node (%d)", R, G);
        return MOE_STATUS_INVALID_ARGUMENT;
    }
    if (o->replicas < 0 || (long)o->replicas > (long)E * (R - 1)) {
        moe_error(
            "place: %d redundant experts cannot be hosted: each of the %d experts can have at "
            "most one replica per rank (at most %ld redundant)",
            o->replicas, E, (long)E * (R - 1));
        return MOE_STATUS_INVALID_ARGUMENT;
    }
    int slots = E + o->replicas;
    int cap = (slots + R - 1) / R;
    if (o->slots_per_rank > 0 && cap > o->slots_per_rank) {
        moe_error("place: %d slots (%d experts + %d redundant) need %d per rank, but a rank holds "
                  "%d (--slots-per-rank); use fewer replicas or more ranks",
                  slots, E, o->replicas, cap, o->slots_per_rank);
        return MOE_STATUS_INVALID_ARGUMENT;
    }
    *out = (moe_place_layout_t){.layers = w[0]->layers,
                                .experts = E,
                                .ranks = R,
                                .ranks_per_node = G,
                                .nodes = R / G,
                                .slots = slots,
                                .rank_cap = cap};
    return MOE_STATUS_OK;
}

void moe_place_plan_layer_shares(const moe_plan_h plan, int layer, double *share)
{
    int E = moe_plan_experts(plan), R = moe_plan_ranks(plan);
    memset(share, 0, sizeof(double) * E * R);
    for (int e = 0; e < E; e++) {
        const int *ranks;
        const float *shares;
        int n = moe_plan_replicas(plan, layer, e, &ranks, &shares);
        for (int i = 0; i < n; i++) share[(size_t)e * R + ranks[i]] = shares[i];
    }
}

moe_status_t moe_place_plan_from_shares(int layers, int experts, int ranks, int ranks_per_node,
                                        const double *shares, moe_plan_h *out)
{
    moe_status_t status = MOE_STATUS_OK;
    moe_plan_h plan = NULL;
    MOE_CHECK(moe_plan_create_empty(layers, experts, ranks, ranks_per_node, &plan), fail);
    for (int l = 0; l < layers; l++)
        for (int e = 0; e < experts; e++)
            for (int r = 0; r < ranks; r++) {
                double s = shares[((size_t)l * experts + e) * ranks + r];
                if (s > 0) MOE_CHECK(moe_plan_add_replica(plan, l, e, r, (float)s), fail);
            }
    MOE_CHECK(moe_plan_check(plan, "solver result"), fail);
    *out = plan;
    return MOE_STATUS_OK;
fail:
    moe_plan_destroy(plan);
    return status;
}

/* ---------------------------------------------------------------- modelled cost */

void moe_place_pair_weights(const moe_place_options_t *o, double *rank_weight, double *node_weight)
{
    double R = o->ranks, G = o->ranks_per_node;
    double inter = o->inter_factor * (1.0 - G / R), intra = (G - 1.0) / R;
    *rank_weight = o->copy_cost * (intra + (o->hierarchical ? 0 : inter));
    *node_weight = o->copy_cost * (o->hierarchical ? inter : 0);
}

/* Modelled figures of one layer for one workload: loads per rank into load[R] (may be NULL);
 * returns pairs; co-located pair mass on ranks and on nodes into *pi_rank, *pi_node. */
static double layer_model(const double *share, int layer, const moe_workload_h w, int R, int G,
                          double *load, double *max_load, double *pi_rank, double *pi_node)
{
    int E = w->experts;
    const double *L = w->loads + (size_t)layer * E;
    double pairs = 0, mx = 0;
    double local[4096];
    double *ld = load ? load : (R <= 4096 ? local : NULL);
    if (ld) memset(ld, 0, sizeof(double) * R);
    for (int e = 0; e < E; e++) {
        pairs += L[e];
        if (!ld) continue;
        for (int r = 0; r < R; r++) ld[r] += L[e] * share[(size_t)e * R + r];
    }
    if (ld)
        for (int r = 0; r < R; r++) mx = ld[r] > mx ? ld[r] : mx;
    *max_load = mx;
    double pr = 0, pn = 0;
    if (w->coact) {
        const double *C = w->coact + (size_t)layer * E * E;
        for (int a = 0; a < E; a++) {
            const double *sa = share + (size_t)a * R;
            for (int b = a + 1; b < E; b++) {
                double c = C[(size_t)a * E + b];
                if (c <= 0) continue;
                const double *sb = share + (size_t)b * R;
                double same_rank = 0, same_node = 0;
                for (int n0 = 0; n0 < R; n0 += G) {
                    double fa = 0, fb = 0;
                    for (int r = n0; r < n0 + G; r++) {
                        fa += sa[r];
                        fb += sb[r];
                        same_rank += sa[r] * sb[r];
                    }
                    same_node += fa * fb;
                }
                pr += c * same_rank;
                pn += c * same_node;
            }
        }
    }
    *pi_rank = pr;
    *pi_node = pn;
    return pairs;
}

double moe_place_layer_balance(const double *share, int layer, const moe_workload_h *w, int n,
                               int ranks)
{
    double worst = 0;
    int E = w[0]->experts;
    for (int i = 0; i < n; i++) {
        const double *L = w[i]->loads + (size_t)layer * E;
        double pairs = 0, mx = 0;
        for (int e = 0; e < E; e++) pairs += L[e];
        for (int r = 0; r < ranks; r++) {
            double s = 0;
            for (int e = 0; e < E; e++) s += L[e] * share[(size_t)e * ranks + r];
            mx = s > mx ? s : mx;
        }
        double imb = pairs > 0 ? mx * ranks / pairs : 1.0;
        worst = imb > worst ? imb : worst;
    }
    return worst;
}

/* Stay residency, for layer >= 1 given the previous layer's shares prev: of the token-expert pairs
 * of this layer, how many start on the node (ln) and on the rank (lr) of the replica that serves
 * them. The token sits on the rank of one of its k' previous experts (k' = previous pairs /
 * tokens), each taken as equally likely: ln = sum_{a,b} T[a][b] / k' sum_r share(b, r) f_prev(a, node(r)),
 * with T the transitions from layer - 1 to layer. Returns false without transitions. */
static bool stay_mass(const double *share, const double *prev, int layer, const moe_workload_h w,
                      int R, int G, double *ln, double *lr)
{
    *ln = *lr = 0;
    if (!prev || layer < 1 || !w->trans || w->tokens <= 0) return false;
    int E = w->experts, N = R / G;
    double prev_pairs = 0;
    for (int e = 0; e < E; e++) prev_pairs += w->loads[(size_t)(layer - 1) * E + e];
    double kp = prev_pairs / w->tokens;
    if (kp <= 0) return false;
    double *fp = calloc((size_t)E * N, sizeof(double));
    if (!fp) return false;
    for (int a = 0; a < E; a++)
        for (int r = 0; r < R; r++) fp[(size_t)a * N + r / G] += prev[(size_t)a * R + r];
    const double *T = w->trans + (size_t)(layer - 1) * E * E;
    for (int b = 0; b < E; b++) {
        for (int r = 0; r < R; r++) {
            double sb = share[(size_t)b * R + r];
            if (sb <= 0) continue;
            double on_node = 0, on_rank = 0;
            for (int a = 0; a < E; a++) {
                double t = T[(size_t)a * E + b];
                if (t <= 0) continue;
                on_node += t * fp[(size_t)a * N + r / G];
                on_rank += t * prev[(size_t)a * R + r];
            }
            *ln += sb * on_node / kp;
            *lr += sb * on_rank / kp;
        }
    }
    free(fp);
    return true;
}

/* Copies under stay residency from the location masses and the co-located pair mass: per
 * (token, expert) pair a copy is inter-node unless the token starts on the serving rank's node,
 * and each co-located pair saves one copy, split like the others:
 *   inter = (P - ln) - pi_r (1 - ln / P),   intra = (ln - lr) - pi_r (ln - lr) / P. */
static void stay_copies(double pairs, double ln, double lr, double pi_rank, double *inter,
                        double *intra)
{
    *inter = (pairs - ln) - pi_rank * (1 - ln / pairs);
    *intra = (ln - lr) - pi_rank * (ln - lr) / pairs;
}

double moe_place_layer_cost(const double *share, const double *prev, int layer,
                            const moe_workload_h *w, int n, const moe_place_options_t *o)
{
    int R = o->ranks, G = o->ranks_per_node;
    double worst = 0, traffic = 0;
    double wr, wn;
    moe_place_pair_weights(o, &wr, &wn);
    double *load = malloc(sizeof(double) * R);
    if (!load) return INFINITY;
    for (int i = 0; i < n; i++) {
        double mx, pr, pn, ln, lr;
        double pairs = layer_model(share, layer, w[i], R, G, load, &mx, &pr, &pn);
        if (pairs <= 0) continue;
        double imb = mx * R / pairs;
        worst = imb > worst ? imb : worst;
        moe_place_copies_t c;
        if (o->stay && stay_mass(share, prev, layer, w[i], R, G, &ln, &lr)) {
            double inter, intra;
            stay_copies(pairs, ln, lr, pr, &inter, &intra);
            traffic += o->copy_cost * (o->inter_factor * inter + intra) / pairs;
        } else if (w[i]->ids) {
            if (moe_place_route_copies(share, layer, w[i], R, G, o->tokens_per_rank, &c) !=
                MOE_STATUS_OK) {
                free(load);
                return INFINITY;
            }
            double inter = o->hierarchical ? c.inter_hier : c.inter;
            double intra = o->hierarchical ? c.intra_hier : c.intra;
            traffic += o->copy_cost * (o->inter_factor * inter + intra) / pairs;
        } else {
            /* (phi * inter + intra) / pairs, written with the pair weights: */
            traffic += (wr + wn) - (wr * pr + wn * pn) / pairs;
        }
    }
    free(load);
    return worst + traffic / n;
}

double moe_place_objective(const moe_plan_h plan, const moe_workload_h *w, int n,
                           const moe_place_options_t *o, double *per_layer)
{
    int L = moe_plan_layers(plan), E = moe_plan_experts(plan), R = moe_plan_ranks(plan);
    moe_place_options_t opt = *o;
    opt.ranks = R;
    opt.ranks_per_node = moe_plan_ranks_per_node(plan);
    double *share = malloc(sizeof(double) * E * R), *prev = malloc(sizeof(double) * E * R);
    if (!share || !prev) {
        free(share);
        free(prev);
        return INFINITY;
    }
    double sum = 0;
    for (int l = 0; l < L; l++) {
        moe_place_plan_layer_shares(plan, l, share);
        double c = moe_place_layer_cost(share, l > 0 ? prev : NULL, l, w, n, &opt);
        if (per_layer) per_layer[l] = c;
        sum += c;
        memcpy(prev, share, sizeof(double) * E * R);
    }
    free(prev);
    free(share);
    return sum / L;
}

static moe_status_t check_shapes(const moe_plan_h plan, const moe_workload_h w)
{
    if (moe_plan_layers(plan) != w->layers || moe_plan_experts(plan) < w->experts) {
        moe_error("%s: %d layers x %d experts, but the plan is for %d layers x %d experts", w->name,
                  w->layers, w->experts, moe_plan_layers(plan), moe_plan_experts(plan));
        return MOE_STATUS_INVALID_ARGUMENT;
    }
    return MOE_STATUS_OK;
}

moe_status_t moe_place_model(const moe_plan_h plan, const moe_workload_h w,
                             const moe_place_options_t *o, moe_place_figures_t *out)
{
    moe_status_t status = MOE_STATUS_OK;
    MOE_CHECK(check_shapes(plan, w), fail);
    if (moe_plan_experts(plan) != w->experts) {
        moe_error("%s: %d experts, the plan has %d", w->name, w->experts, moe_plan_experts(plan));
        return MOE_STATUS_INVALID_ARGUMENT;
    }
    int L = w->layers, E = w->experts, R = moe_plan_ranks(plan), G = moe_plan_ranks_per_node(plan);
    double *share = malloc(sizeof(double) * E * R);
    MOE_CHECK_ALLOC(share, fail);
    MOE_CHECK(figures_alloc(L, R, G, out), fail_share);
    out->tokens = w->tokens;
    double fi = 1.0 - (double)G / R, fa = (G - 1.0) / R;
    double *prev = malloc(sizeof(double) * E * R);
    if (!prev) {
        moe_place_figures_free(out);
        MOE_FAIL(MOE_STATUS_NO_MEMORY, fail_share, "out of memory");
    }
    for (int l = 0; l < L; l++) {
        if (l > 0) memcpy(prev, share, sizeof(double) * E * R);
        moe_place_plan_layer_shares(plan, l, share);
        double mx, pr, pn;
        double pairs = layer_model(share, l, w, R, G, NULL, &mx, &pr, &pn);
        out->max_load[l] = mx;
        out->mean_load[l] = pairs / R;
        if (w->ids) { /* counted from the routes */
            moe_place_copies_t c;
            if (moe_place_route_copies(share, l, w, R, G, o->tokens_per_rank, &c) !=
                MOE_STATUS_OK) {
                free(prev);
                moe_place_figures_free(out);
                MOE_FAIL(MOE_STATUS_NO_MEMORY, fail_share, "out of memory");
            }
            out->inter[l] = c.inter;
            out->intra[l] = c.intra;
            out->inter_hier[l] = c.inter_hier;
            out->intra_hier[l] = c.intra_hier;
        } else {
            out->inter[l] = fi * (pairs - pr);
            out->intra[l] = fa * (pairs - pr);
            /* second order is too crude at node level (tokens often have 3+ experts on a node):
             * without routes hierarchical copies are not modelled */
            out->inter_hier[l] = NAN;
            out->intra_hier[l] = NAN;
        }
        (void)pn;
        double ln, lr;
        if (l > 0 && pairs > 0 && stay_mass(share, prev, l, w, R, G, &ln, &lr)) {
            stay_copies(pairs, ln, lr, pr, &out->inter_stay[l], &out->intra_stay[l]);
        } else if (l == 0 || !w->trans) { /* first layer: tokens start home */
            out->inter_stay[l] = l == 0 ? out->inter[l] : NAN;
            out->intra_stay[l] = l == 0 ? out->intra[l] : NAN;
        }
    }
    free(prev);
    figures_summarise(out, o);
fail_share:
    free(share);
fail:
    return status;
}

/* ---------------------------------------------------------------- replay */

moe_status_t moe_place_evaluate(const moe_plan_h plan, const moe_workload_h w,
                                const moe_place_options_t *o, moe_place_figures_t *out)
{
    moe_status_t status = MOE_STATUS_OK;
    if (!w->ids) {
        moe_error("%s: has no routes to replay (give a trace)", w->name);
        return MOE_STATUS_INVALID_ARGUMENT;
    }
    MOE_CHECK(check_shapes(plan, w), fail);
    if (o->tokens_per_rank < 1)
        MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, fail, "--tokens-per-rank must be >= 1");
    int L = w->layers, K = w->top_k, E = moe_plan_experts(plan);
    int R = moe_plan_ranks(plan), G = moe_plan_ranks_per_node(plan);
    int64_t T = w->route_tokens;
    double *load = moe_calloc((size_t)R, sizeof(double));
    int *stay = moe_calloc((size_t)T, sizeof(int));
    MOE_CHECK_ALLOC(load, fail_alloc);
    MOE_CHECK_ALLOC(stay, fail_alloc);
    MOE_CHECK(figures_alloc(L, R, G, out), fail_alloc);
    out->replayed = true;
    out->tokens = (double)T;
    for (int64_t t = 0; t < T; t++) stay[t] = (int)((t / o->tokens_per_rank) % R);
    for (int l = 0; l < L; l++) {
        memset(load, 0, sizeof(double) * R);
        double pairs = 0, inter = 0, intra = 0, inter_h = 0, intra_h = 0, inter_s = 0, intra_s = 0;
        for (int64_t t = 0; t < T; t++) {
            const int32_t *row = w->ids + ((size_t)l * T + t) * K;
            int dest[64], cnt[64], nd = 0;
            int chosen[64], nc = 0;
            for (int j = 0; j < K && j < 64; j++) {
                int e = row[j];
                if (e < 0) continue;
                if (e >= E) {
                    moe_place_figures_free(out);
                    MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, fail_alloc,
                             "%s: expert %d at layer %d, token %lld, but the plan has %d experts",
                             w->name, e, l, (long long)t, E);
                }
                bool seen = false;
                for (int i = 0; i < nc; i++) seen |= chosen[i] == e;
                if (seen) continue;
                chosen[nc++] = e;
                int r = moe_plan_pick_replica(plan, l, e, t);
                load[r] += 1;
                pairs += 1;
                int i = 0;
                while (i < nd && dest[i] != r) i++;
                if (i == nd) {
                    dest[nd] = r;
                    cnt[nd++] = 0;
                }
                cnt[i]++;
            }
            int home = (int)((t / o->tokens_per_rank) % R), hn = home / G;
            /* flat dispatch, and hierarchical: one copy per remote node, to the rail rank */
            int nodes_seen[64], nn = 0;
            for (int i = 0; i < nd; i++) {
                int r = dest[i], rn = r / G;
                if (r == home) continue;
                if (rn == hn) {
                    intra += 1;
                    intra_h += 1;
                    continue;
                }
                inter += 1;
                bool seen = false;
                for (int j = 0; j < nn; j++) seen |= nodes_seen[j] == rn;
                if (!seen) {
                    nodes_seen[nn++] = rn;
                    inter_h += 1;
                }
                if (r != rn * G + home % G) intra_h += 1; /* forwarded from the rail rank */
            }
            /* stay residency */
            int s = stay[t], sn = s / G, best = -1, best_cnt = 0;
            for (int i = 0; i < nd; i++) {
                int r = dest[i];
                if (r != s) {
                    if (r / G == sn)
                        intra_s += 1;
                    else
                        inter_s += 1;
                }
                if (cnt[i] > best_cnt || (cnt[i] == best_cnt && r != s && best != s && r < best) ||
                    (cnt[i] == best_cnt && r == s)) {
                    best = r;
                    best_cnt = cnt[i];
                }
            }
            if (best >= 0) stay[t] = best;
        }
        double mx = 0;
        for (int r = 0; r < R; r++) mx = load[r] > mx ? load[r] : mx;
        out->max_load[l] = mx;
        out->mean_load[l] = pairs / R;
        out->inter[l] = inter;
        out->intra[l] = intra;
        out->inter_hier[l] = inter_h;
        out->intra_hier[l] = intra_h;
        out->inter_stay[l] = inter_s;
        out->intra_stay[l] = intra_s;
    }
    figures_summarise(out, o);
fail_alloc:
    moe_free(stay);
    moe_free(load);
fail:
    return status;
}
