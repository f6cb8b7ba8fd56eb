/* test_place_eval: the evaluator's counts against a direct count on small hand-made traces
 * (replicas, co-located experts, several nodes), plan YAML round trips, malformed plans / CSVs /
 * traces, and infeasible requests. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "io/io.h"
#include "placement/placement.h"

static char tmpdir[256];

static const char *tmp_path(const char *name)
{
    static char buf[8][512];
    static int i = 0;
    i = (i + 1) % 8;
    snprintf(buf[i], sizeof(buf[i]), "%s/%s", tmpdir, name);
    return buf[i];
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

/* ---------------------------------------------------------------- evaluator */

/* A hand-made case computed by hand: 4 ranks, 2 per node, 4 experts, one layer, no replicas.
 * expert e on rank e. tokens_per_rank 1: token t's home is t % 4. */
static void test_hand_counts(void)
{
    moe_plan_h plan = NULL;
    CHECK_STATUS(moe_plan_create_empty(1, 4, 4, 2, &plan), MOE_STATUS_OK);
    for (int e = 0; e < 4; e++) moe_plan_add_replica(plan, 0, e, e, 1.0f);
    /* token 0 (home 0): experts 0,1 -> rank 0 free, rank 1 intra
     * token 1 (home 1): experts 2,3 -> ranks 2,3 both inter
     * token 2 (home 2): experts 0,2 -> rank 0 inter, rank 2 free
     * token 3 (home 3): experts 3,3 (repeat counts once) -> free */
    int32_t ids[] = {0, 1, 2, 3, 0, 2, 3, 3};
    moe_workload_h w = NULL;
    CHECK_STATUS(moe_workload_from_ids(ids, 1, 4, 2, 4, "hand", &w), MOE_STATUS_OK);
    moe_place_options_t o = MOE_PLACE_OPTIONS_INIT;
    o.tokens_per_rank = 1;
    moe_place_figures_t f;
    CHECK_STATUS(moe_place_evaluate(plan, w, &o, &f), MOE_STATUS_OK);
    CHECK_NEAR(f.intra_total, 1, 0);
    CHECK_NEAR(f.inter_total, 3, 0);
    /* hierarchical: token 1 sends once to node 1 (rail rank 3, which is a destination: rank 2 gets
     * a forward), token 2 once to node 0 (rail rank 0 = destination) */
    CHECK_NEAR(f.inter_hier_total, 2, 0);
    CHECK_NEAR(f.intra_hier_total, 2, 0);
    /* loads: rank0: t0,t2 = 2; rank1: 1; rank2: t1,t2 = 2; rank3: t1,t3 = 2 -> 7 pairs */
    CHECK_NEAR(f.max_load[0], 2, 0);
    CHECK_NEAR(f.mean_load[0], 7.0 / 4, 1e-12);
    CHECK_NEAR(f.imbalance[0], 2 / 1.75, 1e-12);
    moe_place_figures_free(&f);
    moe_workload_destroy(w);
    moe_plan_destroy(plan);
}

/* Direct count, written independently: a destination matrix per token. */
static void direct_count(moe_plan_h plan, const int32_t *ids, int L, int T, int K, int tpr,
                         double *inter, double *intra, double *load_max, double *pairs)
{
    int R = moe_plan_ranks(plan), G = moe_plan_ranks_per_node(plan);
    *inter = *intra = 0;
    for (int l = 0; l < L; l++) {
        double load[64] = {0};
        for (int t = 0; t < T; t++) {
            int hit[64] = {0};
            int home = (t / tpr) % R;
            for (int j = 0; j < K; j++) {
                int e = ids[(l * T + t) * K + j];
                bool dup = false;
                for (int i = 0; i < j; i++) dup |= ids[(l * T + t) * K + i] == e;
                if (dup) continue;
                int r = moe_plan_pick_replica(plan, l, e, t);
                hit[r] = 1;
                load[r] += 1;
                pairs[l] += 1;
            }
            for (int r = 0; r < R; r++) {
                if (!hit[r] || r == home) continue;
                if (r / G == home / G)
                    *intra += 1;
                else
                    *inter += 1;
            }
        }
        load_max[l] = 0;
        for (int r = 0; r < R; r++) load_max[l] = fmax(load_max[l], load[r]);
    }
}

/* Stay residency, counted directly: the token starts at home and then sits on the rank that applied
 * most of its experts (ties: where it was, else the lowest rank). */
static void direct_stay(moe_plan_h plan, const int32_t *ids, int L, int T, int K, int tpr,
                        double *inter, double *intra)
{
    int R = moe_plan_ranks(plan), G = moe_plan_ranks_per_node(plan);
    *inter = *intra = 0;
    for (int t = 0; t < T; t++) {
        int at = (t / tpr) % R;
        for (int l = 0; l < L; l++) {
            int cnt[64] = {0};
            for (int j = 0; j < K; j++) {
                int e = ids[(l * T + t) * K + j];
                bool dup = false;
                for (int i = 0; i < j; i++) dup |= ids[(l * T + t) * K + i] == e;
                if (!dup) cnt[moe_plan_pick_replica(plan, l, e, t)]++;
            }
            int best = at;
            for (int r = 0; r < R; r++) {
                if (cnt[r] && r != at) *(r / G == at / G ? intra : inter) += 1;
                if (cnt[r] > cnt[best]) best = r;
            }
            at = best;
        }
    }
}

static void test_direct_counts(void)
{
    /* 3 nodes x 2 ranks, 8 experts, 2 layers, top-3, 60 tokens; replicas with unequal shares and
     * several experts per rank. */
    const int L = 2, E = 8, R = 6, G = 2, T = 60, K = 3;
    moe_plan_h plan = NULL;
    CHECK_STATUS(moe_plan_create_empty(L, E, R, G, &plan), MOE_STATUS_OK);
    for (int l = 0; l < L; l++) {
        for (int e = 0; e < E; e++)
            moe_plan_add_replica(plan, l, e, (e + l) % R, e < 2 ? 0.5f : 1.0f);
        moe_plan_add_replica(plan, l, 0, 5 - l, 0.25f);
        moe_plan_add_replica(plan, l, 0, 3 - l, 0.25f);
        moe_plan_add_replica(plan, l, 1, 4, 0.5f);
    }
    CHECK_STATUS(moe_plan_check(plan, "test"), MOE_STATUS_OK);
    int32_t ids[2 * 60 * 3];
    for (int i = 0; i < L * T * K; i++) ids[i] = (int32_t)(moe_hash(7, (uint64_t)i, 0, 0, 0) % E);
    moe_workload_h w = NULL;
    CHECK_STATUS(moe_workload_from_ids(ids, L, T, K, E, "direct", &w), MOE_STATUS_OK);
    for (int tpr = 1; tpr <= 16; tpr *= 4) {
        moe_place_options_t o = MOE_PLACE_OPTIONS_INIT;
        o.tokens_per_rank = tpr;
        moe_place_figures_t f;
        CHECK_STATUS(moe_place_evaluate(plan, w, &o, &f), MOE_STATUS_OK);
        double inter, intra, mx[2], pairs[2] = {0, 0};
        direct_count(plan, ids, L, T, K, tpr, &inter, &intra, mx, pairs);
        CHECK_NEAR(f.inter_total, inter, 0);
        CHECK_NEAR(f.intra_total, intra, 0);
        for (int l = 0; l < L; l++) {
            CHECK_NEAR(f.max_load[l], mx[l], 0);
            CHECK_NEAR(f.mean_load[l] * R, pairs[l], 1e-9);
        }
        CHECK(f.inter_total > 0 && f.intra_total > 0);
        double si, sa;
        direct_stay(plan, ids, L, T, K, tpr, &si, &sa);
        CHECK_NEAR(f.inter_stay_total, si, 0);
        CHECK_NEAR(f.intra_stay_total, sa, 0);
        moe_place_figures_free(&f);
    }
    /* the model's loads equal the expected loads (shares x counts) */
    moe_place_options_t o = MOE_PLACE_OPTIONS_INIT;
    moe_place_figures_t m;
    CHECK_STATUS(moe_place_model(plan, w, &o, &m), MOE_STATUS_OK);
    CHECK(!m.replayed);
    CHECK(m.max_load[0] > 0);
    moe_place_figures_free(&m);
    moe_workload_destroy(w);
    moe_plan_destroy(plan);
}

/* The model is exact when no token has 3+ experts on one rank: top-2, no replicas. */
static void test_model_exact_top2(void)
{
    const int E = 6, R = 4, G = 2, T = 4000, K = 2;
    moe_plan_h plan = NULL;
    CHECK_STATUS(moe_plan_create_empty(1, E, R, G, &plan), MOE_STATUS_OK);
    int host[6] = {0, 0, 1, 2, 3, 3};
    for (int e = 0; e < E; e++) moe_plan_add_replica(plan, 0, e, host[e], 1.0f);
    int32_t *ids = malloc(sizeof(int32_t) * T * K);
    for (int t = 0; t < T; t++) {
        ids[t * K] = (int32_t)(moe_hash(3, (uint64_t)t, 0, 0, 0) % E);
        ids[t * K + 1] =
            (ids[t * K] + 1 + (int32_t)(moe_hash(3, (uint64_t)t, 1, 0, 0) % (E - 1))) % E;
    }
    moe_workload_h w = NULL;
    CHECK_STATUS(moe_workload_from_ids(ids, 1, T, K, E, "top2", &w), MOE_STATUS_OK);
    moe_place_options_t o = MOE_PLACE_OPTIONS_INIT;
    o.tokens_per_rank = 1; /* homes cycle over ranks: close to uniform */
    moe_place_figures_t f, m;
    CHECK_STATUS(moe_place_evaluate(plan, w, &o, &f), MOE_STATUS_OK);
    CHECK_STATUS(moe_place_model(plan, w, &o, &m), MOE_STATUS_OK);
    CHECK_NEAR(m.max_load[0], f.max_load[0], 1e-9);
    CHECK_NEAR(m.inter_total / f.inter_total, 1.0, 0.05);
    CHECK_NEAR(m.intra_total / f.intra_total, 1.0, 0.08);
    moe_place_figures_free(&f);
    moe_place_figures_free(&m);
    moe_workload_destroy(w);
    moe_plan_destroy(plan);
    free(ids);
}

/* ---------------------------------------------------------------- YAML */

static void test_round_trip(void)
{
    moe_plan_h plan = NULL, back = NULL;
    CHECK_STATUS(moe_plan_create_empty(3, 5, 4, 2, &plan), MOE_STATUS_OK);
    for (int l = 0; l < 3; l++) {
        for (int e = 0; e < 5; e++)
            moe_plan_add_replica(plan, l, e, (e * 3 + l) % 4, e == 1 ? 0.3f : 1.0f);
        moe_plan_add_replica(plan, l, 1, (3 + l + 1) % 4 == (1 * 3 + l) % 4 ? 0 : (3 + l + 1) % 4,
                             0.7f);
    }
    CHECK_STATUS(moe_plan_check(plan, "rt"), MOE_STATUS_OK);
    const char *p1 = tmp_path("rt1.yaml"), *p2 = tmp_path("rt2.yaml");
    CHECK_STATUS(moe_plan_save_annotated(plan, p1, "tiny", "solver: greedy\npredicted: {x: 1}\n"),
                 MOE_STATUS_OK);
    char model[64];
    CHECK_STATUS(moe_plan_load_annotated(p1, model, sizeof(model), &back), MOE_STATUS_OK);
    CHECK(strcmp(model, "tiny") == 0);
    CHECK_EQ_INT(moe_plan_layers(back), 3);
    CHECK_EQ_INT(moe_plan_experts(back), 5);
    CHECK_EQ_INT(moe_plan_ranks(back), 4);
    CHECK_EQ_INT(moe_plan_ranks_per_node(back), 2);
    for (int l = 0; l < 3; l++)
        for (int e = 0; e < 5; e++) {
            const int *ra, *rb;
            const float *sa, *sb;
            int na = moe_plan_replicas(plan, l, e, &ra, &sa);
            int nb = moe_plan_replicas(back, l, e, &rb, &sb);
            CHECK_EQ_INT(na, nb);
            for (int i = 0; i < na && i < nb; i++) {
                CHECK_EQ_INT(ra[i], rb[i]);
                CHECK_NEAR(sa[i], sb[i], 1e-6);
            }
        }
    /* saving the loaded plan gives the same bytes */
    CHECK_STATUS(moe_plan_save_annotated(back, p2, "tiny", "solver: greedy\npredicted: {x: 1}\n"),
                 MOE_STATUS_OK);
    FILE *a = fopen(p1, "rb"), *b = fopen(p2, "rb");
    char ba[8192], bb[8192];
    size_t la = fread(ba, 1, sizeof(ba), a), lb = fread(bb, 1, sizeof(bb), b);
    fclose(a);
    fclose(b);
    CHECK(la == lb && memcmp(ba, bb, la) == 0);
    moe_plan_destroy(back);
    back = NULL;
    /* plain save/load; default equal shares in a hand-written plan */
    write_text(p1, "format: 1\nlayers: 1\nexperts: 3\nranks: 2\nranks_per_node: 2\nplacement:\n"
                   "  - layer: 0\n    ranks:\n      - {rank: 0, experts: [0, 2]}\n"
                   "      - {rank: 1, experts: [1, 2]}\n");
    CHECK_STATUS(moe_plan_load(p1, &back), MOE_STATUS_OK);
    if (back) {
        const float *sh;
        CHECK_EQ_INT(moe_plan_replicas(back, 0, 2, NULL, &sh), 2);
        CHECK_NEAR(sh[0], 0.5, 1e-7);
        CHECK_STATUS(moe_plan_save(back, p2), MOE_STATUS_OK);
    }
    moe_plan_destroy(back);
    moe_plan_destroy(plan);
}

static void test_malformed_plans(void)
{
    static const char *head = "format: 1\nlayers: 1\nexperts: 2\nranks: 2\nranks_per_node: 1\n";
    static const char *bodies[] = {
        /* unknown key */
        "placement:\n  - layer: 0\n    ranks:\n      - {rank: 0, experts: [0, 1]}\nextra: 1\n",
        /* shares do not sum to 1 */
        "placement:\n  - layer: 0\n    ranks:\n      - {rank: 0, experts: [0, 1], shares: [0.5, "
        "1]}\n",
        /* expert out of range */
        "placement:\n  - layer: 0\n    ranks:\n      - {rank: 0, experts: [0, 2]}\n",
        /* rank out of range */
        "placement:\n  - layer: 0\n    ranks:\n      - {rank: 2, experts: [0, 1]}\n",
        /* expert 1 not hosted */
        "placement:\n  - layer: 0\n    ranks:\n      - {rank: 0, experts: [0]}\n",
        /* a rank lists an expert twice */
        "placement:\n  - layer: 0\n    ranks:\n      - {rank: 0, experts: [0, 0, 1]}\n",
        /* layer twice */
        "placement:\n  - layer: 0\n    ranks:\n      - {rank: 0, experts: [0, 1]}\n"
        "  - layer: 0\n    ranks:\n      - {rank: 0, experts: [0, 1]}\n",
        /* layer out of range */
        "placement:\n  - layer: 1\n    ranks:\n      - {rank: 0, experts: [0, 1]}\n",
        /* not a number */
        "placement:\n  - layer: 0\n    ranks:\n      - {rank: 0, experts: [zero, 1]}\n",
        /* shares of the wrong length */
        "placement:\n  - layer: 0\n    ranks:\n      - {rank: 0, experts: [0, 1], shares: [1]}\n",
        /* YAML syntax error */
        "placement:\n  - layer: 0\n    ranks: [\n",
        /* no placement */
        "solver: x\n",
        /* negative share */
        "placement:\n  - layer: 0\n    ranks:\n      - {rank: 0, experts: [0, 1], shares: [-1, "
        "1]}\n"
        "      - {rank: 1, experts: [0], shares: [2]}\n",
    };
    char text[1024];
    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
        snprintf(text, sizeof(text), "%s%s", head, bodies[i]);
        write_text(tmp_path("bad.yaml"), text);
        moe_plan_h p = NULL;
        moe_status_t s = moe_plan_load(tmp_path("bad.yaml"), &p);
        if (s == MOE_STATUS_OK) fprintf(stderr, "malformed plan %zu was accepted\n", i);
        CHECK(s != MOE_STATUS_OK);
        CHECK(p == NULL);
    }
    /* header errors */
    const char *heads[] = {"format: 2\nlayers: 1\nexperts: 2\nranks: 2\nranks_per_node: 1\n",
                           "format: 1\nlayers: 1\nexperts: 2\nranks: 3\nranks_per_node: 2\n",
                           "format: 1\nexperts: 2\nranks: 2\nranks_per_node: 1\n", "- a list\n"};
    for (int i = 0; i < 4; i++) {
        snprintf(
            text, sizeof(text), "%s%s", heads[i],
            i == 3 ? ""
                   : "placement:\n  - layer: 0\n    ranks:\n      - {rank: 0, experts: [0, 1]}\n");
        write_text(tmp_path("bad.yaml"), text);
        moe_plan_h p = NULL;
        CHECK(moe_plan_load(tmp_path("bad.yaml"), &p) != MOE_STATUS_OK);
    }
    moe_plan_h p = NULL;
    CHECK_STATUS(moe_plan_load(tmp_path("does-not-exist.yaml"), &p), MOE_STATUS_IO_ERROR);
}

/* ---------------------------------------------------------------- CSV, traces */

static void test_csv(void)
{
    const char *path = tmp_path("loads.csv");
    write_text(path, "Layer,Language,Expert_0,Expert_1,Expert_2,Expert_3\n"
                     "0,English,0.5,0.5,0.5,0.5\n0,Hebrew,1,0,1,0\n"
                     "1,English,0.25,0.75,0.5,0.5\n1,Hebrew,0,1,1,0\n");
    moe_workload_h w = NULL;
    CHECK_STATUS(moe_workload_load_csv(path, 100, &w), MOE_STATUS_OK);
    if (w) {
        CHECK_EQ_INT(moe_workload_layers(w), 2);
        CHECK_EQ_INT(moe_workload_experts(w), 4);
        CHECK_EQ_INT(moe_workload_top_k(w), 2);
        CHECK_NEAR(moe_workload_tokens(w), 200, 0);
        CHECK_NEAR(moe_workload_loads(w)[0], 150, 1e-9);
        CHECK_NEAR(moe_workload_loads(w)[5], 175, 1e-9);
        CHECK(moe_workload_coactivation(w) == NULL);
    }
    moe_workload_destroy(w);
    char spec[600];
    snprintf(spec, sizeof(spec), "%s@Hebrew", path);
    w = NULL;
    CHECK_STATUS(moe_workload_load_csv(spec, 10, &w), MOE_STATUS_OK);
    if (w) CHECK_NEAR(moe_workload_loads(w)[1], 0, 0);
    moe_workload_destroy(w);
    const char *bad[] = {
        "Layer,Language,Expert_0,Expert_2\n0,a,0.5,0.5\n",               /* column names */
        "Layer,Language,Expert_0,Expert_1\n0,a,0.5\n",                   /* short row */
        "Layer,Language,Expert_0,Expert_1\n0,a,0.5,x\n",                 /* not a number */
        "Layer,Language,Expert_0,Expert_1\nz,a,0.5,0.5\n",               /* bad layer */
        "Layer,Language,Expert_0,Expert_1\n0,a,0.5,1.5\n",               /* not a fraction */
        "Layer,Language,Expert_0,Expert_1\n0,a,1,1\n0,b,1,1\n1,a,1,1\n", /* uneven layers */
        "",                                                              /* empty */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        write_text(path, bad[i]);
        w = NULL;
        CHECK(moe_workload_load_csv(path, 10, &w) != MOE_STATUS_OK);
        CHECK(w == NULL);
    }
}

static void test_traces(void)
{
    /* a float array is not a trace; a 2-d array is not a trace; ids out of range */
    float fdata[2 * 3 * 2] = {0};
    moe_array_t a = {.dtype = MOE_DTYPE_F32,
                     .ndim = 3,
                     .shape = {2, 3, 2},
                     .data = fdata,
                     .nbytes = sizeof(fdata)};
    const char *p = tmp_path("float.npy");
    CHECK_STATUS(moe_npy_write(p, &a), MOE_STATUS_OK);
    moe_workload_h w = NULL;
    CHECK(moe_workload_load_trace(p, 0, &w) != MOE_STATUS_OK);
    int8_t idata[2 * 3 * 2] = {0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3};
    moe_array_t b = {.dtype = MOE_DTYPE_I8,
                     .ndim = 3,
                     .shape = {2, 3, 2},
                     .data = idata,
                     .nbytes = sizeof(idata)};
    p = tmp_path("ids.npy");
    CHECK_STATUS(moe_npy_write(p, &b), MOE_STATUS_OK);
    CHECK_STATUS(moe_workload_load_trace(p, 0, &w), MOE_STATUS_OK);
    if (w) {
        CHECK_EQ_INT(moe_workload_experts(w), 8);
        CHECK_NEAR(moe_workload_tokens(w), 3, 0);
        /* co-activation of experts 0 and 1 at layer 0: token 0 */
        CHECK_NEAR(moe_workload_coactivation(w)[0 * 8 + 1], 1, 0);
    }
    moe_workload_destroy(w);
    w = NULL;
    CHECK(moe_workload_load_trace(p, 4, &w) != MOE_STATUS_OK); /* id 7 >= 4 experts */
    char spec[600];
    snprintf(spec, sizeof(spec), "%s@1:3", p);
    CHECK_STATUS(moe_workload_load_trace(spec, 8, &w), MOE_STATUS_OK);
    if (w) {
        CHECK_NEAR(moe_workload_tokens(w), 2, 0);
        CHECK_NEAR(moe_workload_loads(w)[2], 1, 0); /* layer 0, token 1 = {2, 3} */
        CHECK_NEAR(moe_workload_loads(w)[0], 0, 0);
    }
    moe_workload_destroy(w);
    w = NULL;
    snprintf(spec, sizeof(spec), "%s@2:9", p);
    CHECK(moe_workload_load_trace(spec, 8, &w) != MOE_STATUS_OK);
    snprintf(spec, sizeof(spec), "%s@x", p);
    CHECK(moe_workload_load_trace(spec, 8, &w) != MOE_STATUS_OK);
}

static void test_infeasible(void)
{
    int32_t ids[1 * 4 * 2] = {0, 1, 2, 3, 0, 2, 1, 3};
    moe_workload_h w = NULL;
    CHECK_STATUS(moe_workload_from_ids(ids, 1, 4, 2, 4, "small", &w), MOE_STATUS_OK);
    moe_place_options_t o = MOE_PLACE_OPTIONS_INIT;
    o.solver = MOE_PLACE_SOLVER_GREEDY;
    moe_plan_h plan = NULL;
    o.ranks = 4;
    o.ranks_per_node = 3; /* 4 % 3 */
    CHECK_STATUS(moe_place_solve(&w, 1, &o, NULL, &plan, NULL), MOE_STATUS_INVALID_ARGUMENT);
    o.ranks_per_node = 2;
    o.replicas = 13; /* at most 4 x 3 */
    CHECK_STATUS(moe_place_solve(&w, 1, &o, NULL, &plan, NULL), MOE_STATUS_INVALID_ARGUMENT);
    o.replicas = 4;
    o.slots_per_rank = 1; /* 8 slots on 4 ranks need 2 */
    CHECK_STATUS(moe_place_solve(&w, 1, &o, NULL, &plan, NULL), MOE_STATUS_INVALID_ARGUMENT);
    o.slots_per_rank = 2;
    CHECK_STATUS(moe_place_solve(&w, 1, &o, NULL, &plan, NULL), MOE_STATUS_OK);
    CHECK(plan != NULL);
    /* a plan for another model / world */
    if (plan) {
        CHECK(moe_plan_check_fits(plan, 1, 4, 8, "p") != MOE_STATUS_OK);
        CHECK(moe_plan_check_fits(plan, 2, 4, 4, "p") != MOE_STATUS_OK);
        int32_t ids2[2 * 4 * 2] = {0};
        moe_workload_h w2 = NULL;
        CHECK_STATUS(moe_workload_from_ids(ids2, 2, 4, 2, 4, "two-layers", &w2), MOE_STATUS_OK);
        moe_place_figures_t f;
        CHECK(moe_place_evaluate(plan, w2, &o, &f) != MOE_STATUS_OK);
        moe_workload_destroy(w2);
    }
    moe_plan_destroy(plan);
    moe_workload_destroy(w);
}

int main(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/moe_test_place_%d", (int)getpid());
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "mkdir -p %s", tmpdir);
    if (system(cmd) != 0) return 1;
    moe_log_init(0, MOE_LOG_ERROR);
    test_hand_counts();
    test_direct_counts();
    test_model_exact_top2();
    test_round_trip();
    test_malformed_plans();
    test_csv();
    test_traces();
    test_infeasible();
    snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
    if (system(cmd) != 0) return 1;
    return moe_test_result("test_place_eval");
}
