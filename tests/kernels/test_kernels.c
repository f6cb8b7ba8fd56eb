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

int main(void)
{
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
