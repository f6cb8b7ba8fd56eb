/* test_kernels: each CPU kernel against a direct, naive computation in double precision, over
 * several shapes, with fresh seeded inputs. The router is checked against a brute-force selection
 * written here from the model families' definitions. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "common/common.h"
#include "kernels/kernels.h"

static uint64_t draw = 0;
static void fill(float *x, size_t n, float scale)
{
    for (size_t i = 0; i < n; i++) x[i] = scale * moe_hash_to_symmetric(moe_hash(77, draw, i, 0, 0));
    draw++;
}

static void test_rmsnorm(int n, int d)
{
    float *x = malloc(sizeof(float) * n * d), *w = malloc(sizeof(float) * d), *o = malloc(sizeof(float) * n * d);
    fill(x, (size_t)n * d, 2.0f);
    fill(w, d, 1.0f);
    moe_rmsnorm_cpu(x, w, n, d, 1e-6f, o);
    for (int i = 0; i < n; i++) {
        double ss = 0;
        for (int j = 0; j < d; j++) ss += (double)x[i * d + j] * x[i * d + j];
        double r = 1.0 / sqrt(ss / d + 1e-6);
        for (int j = 0; j < d; j++) CHECK_NEAR(o[i * d + j], x[i * d + j] * r * w[j], 1e-5);
    }
    free(x), free(w), free(o);
}

static double silu(double v) { return v / (1.0 + exp(-v)); }

static void test_expert_ffn(int n, int d, int f)
{
    float *x = malloc(sizeof(float) * n * d), *wgu = malloc(sizeof(float) * 2 * f * d);
    float *wd = malloc(sizeof(float) * d * f), *y = malloc(sizeof(float) * n * d);
    float *scratch = malloc(sizeof(float) * n * 3 * f), *ref = malloc(sizeof(float) * n * d);
    double *act = malloc(sizeof(double) * f);
    fill(x, (size_t)n * d, 1.0f);
    fill(wgu, (size_t)2 * f * d, 0.3f);
    fill(wd, (size_t)d * f, 0.3f);
    memset(y, 0xff, sizeof(float) * n * d); /* poison: NaN unless written */
    moe_expert_ffn_cpu(x, wgu, wd, n, d, f, scratch, y);
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < f; j++) {
            double g = 0, u = 0;
            for (int c = 0; c < d; c++) {
                g += (double)x[i * d + c] * wgu[(size_t)j * d + c];
                u += (double)x[i * d + c] * wgu[(size_t)(f + j) * d + c];
            }
            act[j] = silu(g) * u;
        }
        for (int c = 0; c < d; c++) {
            double s = 0;
            for (int j = 0; j < f; j++) s += act[j] * wd[(size_t)c * f + j];
            ref[i * d + c] = (float)s;
        }
    }
    double rel = moe_test_rel_error(y, ref, (size_t)n * d);
    CHECK(rel <= 1e-5);
    if (rel > 1e-5) fprintf(stderr, "expert ffn %dx%dx%d: relative error %g\n", n, d, f, rel);
    free(x), free(wgu), free(wd), free(y), free(scratch), free(ref), free(act);
}

/* Brute force: score every expert, keep the best groups, take the k best allowed, in order. */
static void router_naive(const float *lg, const moe_router_params_t *p, int32_t *ids, float *w)
{
    int E = p->experts, G = p->groups, per = E / G;
    double s[512], c[512], gs[64];
    int allowed[512], gk[64] = {0};
    double mx = -1e300, sum = 0;
    for (int e = 0; e < E; e++) mx = lg[e] > mx ? lg[e] : mx;
    for (int e = 0; e < E; e++) sum += exp(lg[e] - mx);
    for (int e = 0; e < E; e++) {
        s[e] = p->scoring == MOE_ROUTER_SOFTMAX ? exp(lg[e] - mx) / sum : 1.0 / (1.0 + exp(-lg[e]));
        c[e] = s[e] + (p->bias ? p->bias[e] : 0);
    }
    for (int g = 0; g < G; g++) {
        double b1 = -1e300, b2 = -1e300;
        for (int j = 0; j < per; j++) {
            double v = c[g * per + j];
            if (v > b1) b2 = b1, b1 = v; else if (v > b2) b2 = v;
        }
        gs[g] = p->scoring == MOE_ROUTER_SIGMOID && per > 1 ? b1 + b2 : b1;
    }
    for (int i = 0; i < (G > 1 ? p->groups_kept : G); i++) {
        int best = -1;
        for (int g = 0; g < G; g++) if (!gk[g] && (best < 0 || gs[g] > gs[best])) best = g;
        gk[best] = 1;
    }
    for (int e = 0; e < E; e++) allowed[e] = G > 1 ? gk[e / per] : 1;
    double wsum = 0;
    for (int i = 0; i < p->top_k; i++) {
        int best = -1;
        for (int e = 0; e < E; e++) if (allowed[e] && (best < 0 || c[e] > c[best])) best = e;
        allowed[best] = 0;
        ids[i] = best;
        w[i] = (float)s[best];
        wsum += s[best];
    }
    for (int i = 0; i < p->top_k; i++)
        w[i] = (float)(w[i] * (p->renormalize ? 1.0 / (wsum + 1e-20) : 1.0) * p->scaling);
}

static void test_router(int n, int E, int k, moe_router_scoring_t scoring, int groups, int kept,
                        bool renorm, float scaling, bool bias)
{
    float *lg = malloc(sizeof(float) * n * E), *b = malloc(sizeof(float) * E);
    int32_t *ids = malloc(sizeof(int32_t) * n * k), ref_ids[64];
    float *w = malloc(sizeof(float) * n * k), ref_w[64];
    fill(lg, (size_t)n * E, 3.0f);
    fill(b, E, 0.1f);
    moe_router_params_t p = {.experts = E, .top_k = k, .scoring = scoring, .renormalize = renorm,
                             .groups = groups, .groups_kept = kept, .scaling = scaling,
                             .bias = bias ? b : NULL};
    moe_router_topk_cpu(lg, n, &p, ids, w);
    for (int t = 0; t < n; t++) {
        router_naive(lg + (size_t)t * E, &p, ref_ids, ref_w);
        double wsum = 0;
        for (int i = 0; i < k; i++) {
            CHECK_EQ_INT(ids[t * k + i], ref_ids[i]);
            CHECK_NEAR(w[t * k + i], ref_w[i], 1e-6 * (1 + fabs(ref_w[i])));
            wsum += w[t * k + i];
            if (groups > 1) { /* every choice lies in one of the kept groups */
                int kept_groups = 0, g = ids[t * k + i] / (E / groups);
                for (int j = 0; j < k; j++) kept_groups += ids[t * k + j] / (E / groups) == g;
                CHECK(kept_groups >= 1);
            }
        }
        if (renorm) CHECK_NEAR(wsum, scaling, 1e-5 * scaling);
    }
    free(lg), free(b), free(ids), free(w);
}

static void test_gather_scatter(int n, int d)
{
    float *src = malloc(sizeof(float) * n * d), *dst = malloc(sizeof(float) * n * d);
    float *out = calloc((size_t)n * d, sizeof(float)), *wt = malloc(sizeof(float) * n);
    int32_t *rows = malloc(sizeof(int32_t) * n);
    fill(src, (size_t)n * d, 1.0f);
    fill(wt, n, 1.0f);
    for (int i = 0; i < n; i++) rows[i] = (int32_t)((i * 7 + 3) % n);
    moe_gather_rows_cpu(src, d, rows, n, dst);
    for (int i = 0; i < n; i++)
        CHECK(memcmp(dst + (size_t)i * d, src + (size_t)rows[i] * d, sizeof(float) * d) == 0);
    moe_scatter_add_cpu(dst, rows, wt, n, d, out);
    moe_scatter_add_cpu(dst, rows, wt, n, d, out);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < d; j++)
            CHECK_NEAR(out[(size_t)rows[i] * d + j], 2.0 * wt[i] * dst[(size_t)i * d + j], 1e-6);
    free(src), free(dst), free(out), free(wt), free(rows);
}

/* Hierarchical dispatch on a hand-made case: 4 ranks as 2 nodes of 2, experts 0..3 on ranks 0..3, the
 * home is rank 1 (local index 1): its first hop goes to itself for node 0 and to rank 3 for node 1,
 * with ids e + 4 * (local index of e's rank); rank 3 forwards to 2 and keeps its own. */
static void test_hierarchical_dispatch(void)
{
    enum { E = 4, P = 4, K = 3, D = 4, N = 2 };
    const int first[E + 1] = {0, 1, 2, 3, 4}, rank[E] = {0, 1, 2, 3}, local_slot[E] = {-1, 0, -1, -1};
    const int hop[E] = {1, 1, 3, 3}, code[E] = {0, 1, 0, 1};
    const float share[E] = {1, 1, 1, 1};
    moe_dispatch_table_t t = {.layer = 0, .experts = E, .ranks = P, .replicas = E, .first = first, .rank = rank,
                              .share = share, .local_slot = local_slot, .hop = hop, .code = code};
    const int32_t ids[N * K] = {0, 2, 3, 3, 0, 1};
    const float weights[N * K] = {0.5f, 0.25f, 0.125f, 1.0f, 2.0f, 4.0f};
    float h[N * D];
    for (int i = 0; i < N * D; i++) h[i] = (float)(i + 1);
    int32_t rep[N * K], token_row[N * K];
    int rows[P], entries[E], offset[P + 1], final[P];
    moe_dispatch_count_cpu(ids, N, K, 0, &t, 1, rep, rows, entries);
    const int want_rows[P] = {0, 2, 0, 2}, want_final[P] = {2, 1, 1, 2}, want_entries[E] = {2, 1, 1, 2};
    moe_dispatch_final_rows_cpu(rep, N, K, &t, 1, final);
    for (int p = 0; p < P; p++) {
        CHECK_EQ_INT(rows[p], want_rows[p]);
        CHECK_EQ_INT(final[p], want_final[p]);
    }
    for (int e = 0; e < E; e++) CHECK_EQ_INT(entries[e], want_entries[e]);
    moe_dispatch_offsets_cpu(rows, 1, P, 0, offset);
    const size_t mo = 16, rb = 16 + 32; /* D floats, then K ids and K weights (16-byte aligned) */
    char send[4 * rb];
    moe_dispatch_pack_cpu(h, ids, weights, rep, N, K, D, &t, 1, offset, send, rb, mo, token_row);
    /* rows 0, 1 to rank 1 (tokens 0, 1); rows 2, 3 to rank 3 */
    const int32_t want_ids[4][K] = {{0, -1, -1}, {-1, 0, 1 + 4}, {-1, 2, 3 + 4}, {3 + 4, -1, -1}};
    for (int r = 0; r < 4; r++)
        for (int j = 0; j < K; j++) {
            int32_t id;
            memcpy(&id, send + r * rb + mo + 4 * j, 4);
            CHECK_EQ_INT(id, want_ids[r][j]);
        }
    CHECK_EQ_INT(token_row[0], 0); CHECK_EQ_INT(token_row[1], 2); CHECK_EQ_INT(token_row[2], -1);
    CHECK_EQ_INT(token_row[3], 3); CHECK_EQ_INT(token_row[4], 1); CHECK_EQ_INT(token_row[5], -1);
    /* at rank 3: its two first-hop rows forwarded to rank 2 (token 0's expert 2) and to itself */
    const int node_rank[2] = {2, 3};
    int next[P] = {0, 0, 0, 1};
    char fwd[3 * rb];
    int32_t relay_row[2 * K];
    CHECK(moe_relay_pack_cpu(send + 2 * rb, 2, rb, mo, K, E, node_rank, 2, next, fwd, relay_row) == MOE_STATUS_OK);
    CHECK_EQ_INT(next[2], 1); CHECK_EQ_INT(next[3], 3);
    const int32_t want_fwd[3][K] = {{-1, 2, -1}, {-1, -1, 3}, {3, -1, -1}};
    const int want_src[3] = {0, 0, 1}; /* the token whose hidden state each forwarded row carries */
    for (int r = 0; r < 3; r++) {
        for (int j = 0; j < K; j++) {
            int32_t id;
            float w;
            memcpy(&id, fwd + r * rb + mo + 4 * j, 4);
            memcpy(&w, fwd + r * rb + mo + 4 * (K + j), 4);
            CHECK_EQ_INT(id, want_fwd[r][j]);
            CHECK(w == (id >= 0 ? weights[want_src[r] * K + j] : 0.0f));
        }
        CHECK(memcmp(fwd + r * rb, h + want_src[r] * D, sizeof(float) * D) == 0);
    }
    CHECK_EQ_INT(relay_row[0], -1); CHECK_EQ_INT(relay_row[1], 0); CHECK_EQ_INT(relay_row[2], 1);
    CHECK_EQ_INT(relay_row[3], 2); CHECK_EQ_INT(relay_row[4], -1); CHECK_EQ_INT(relay_row[5], -1);
    /* a first-hop id naming a local index the node does not have is an internal error */
    int32_t bad = 2 + 4 * 2;
    memcpy(send + 3 * rb + mo, &bad, 4);
    CHECK(moe_relay_pack_cpu(send + 3 * rb, 1, rb, mo, K, E, node_rank, 2, next, fwd, relay_row) ==
          MOE_STATUS_INTERNAL);
}

int main(void)
{
    test_hierarchical_dispatch();
    int shapes[][3] = {{1, 8, 16}, {7, 64, 128}, {33, 96, 40}, {64, 128, 256}};
    for (int i = 0; i < 4; i++) {
        test_rmsnorm(shapes[i][0], shapes[i][1]);
        test_expert_ffn(shapes[i][0], shapes[i][1], shapes[i][2]);
        test_gather_scatter(shapes[i][0] + 1, shapes[i][1]);
    }
    test_router(50, 8, 2, MOE_ROUTER_SOFTMAX, 1, 1, true, 1.0f, false);    /* Mixtral */
    test_router(50, 64, 8, MOE_ROUTER_SOFTMAX, 1, 1, false, 1.0f, false);  /* OLMoE */
    test_router(50, 64, 6, MOE_ROUTER_SOFTMAX, 8, 3, false, 16.0f, false); /* DeepSeek-V2 */
    test_router(50, 256, 8, MOE_ROUTER_SIGMOID, 8, 4, true, 2.5f, true);   /* DeepSeek-V3 */
    test_router(50, 16, 3, MOE_ROUTER_SIGMOID, 1, 1, false, 1.0f, true);
    return moe_test_result("kernels");
}
