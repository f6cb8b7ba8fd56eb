/* test_kernels_cuda: every GPU kernel against its CPU reference (kernels/cpu.c), over several shapes.
 *
 * Each check draws fresh random inputs, poisons the GPU output (all ones bits: NaN in fp32 and bf16,
 * so an element left unwritten fails), and compares by ||out - ref|| / ||ref||: at most 1e-2 where
 * bf16 operands or outputs are involved, 1e-5 in fp32; router ids must match exactly. The CPU
 * reference runs on the bf16-rounded values the GPU sees. Exits 77 (skipped) without a GPU. */
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "common/common.h"
#include "io/io.h"
#include "kernels/kernels.h"

#define TOL_BF16 1e-2
#define TOL_F32 1e-5

static uint64_t draw = 1;
static cudaStream_t stream;

static void fill(float *x, size_t n, float scale)
{
    for (size_t i = 0; i < n; i++) x[i] = scale * moe_hash_to_symmetric(moe_hash(4242, draw, i, 0, 0));
    draw++;
}

static uint16_t to_bf16(float v)
{
    uint32_t u;
    memcpy(&u, &v, 4);
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even (no NaN inputs here) */
    return (uint16_t)(u >> 16);
}
static float from_bf16(uint16_t b)
{
    uint32_t u = (uint32_t)b << 16;
    float v;
    memcpy(&v, &u, 4);
    return v;
}
/* Round x to bf16 in place and return the bits. */
static uint16_t *round_bf16(float *x, size_t n)
{
    uint16_t *b = malloc(2 * n + 2);
    for (size_t i = 0; i < n; i++) {
        b[i] = to_bf16(x[i]);
        x[i] = from_bf16(b[i]);
    }
    return b;
}

static void *dev_copy(const void *src, size_t bytes)
{
    void *p = NULL;
    if (cudaMalloc(&p, bytes + 16) != cudaSuccess) {
        fprintf(stderr, "cudaMalloc of %zu bytes failed\n", bytes);
        exit(1);
    }
    if (src) cudaMemcpy(p, src, bytes, cudaMemcpyHostToDevice);
    return p;
}
static void *dev_poisoned(size_t bytes)
{
    void *p = dev_copy(NULL, bytes);
    cudaMemset(p, 0xff, bytes + 16);
    return p;
}
static void host_f32(float *dst, const void *dev, size_t n)
{
    cudaStreamSynchronize(stream);
    cudaMemcpy(dst, dev, 4 * n, cudaMemcpyDeviceToHost);
}
static void host_from_bf16(float *dst, const void *dev, size_t n)
{
    cudaStreamSynchronize(stream);
    uint16_t *b = malloc(2 * n + 2);
    cudaMemcpy(b, dev, 2 * n, cudaMemcpyDeviceToHost);
    for (size_t i = 0; i < n; i++) dst[i] = from_bf16(b[i]);
    free(b);
}

static void check_rel(const char *what, const float *out, const float *ref, size_t n, double tol)
{
    double rel = moe_test_rel_error(out, ref, n);
    bool nan = false;
    for (size_t i = 0; i < n; i++) nan |= out[i] != out[i];
    CHECK(!nan && rel <= tol);
    if (nan || rel > tol || getenv("MOE_TEST_VERBOSE"))
        fprintf(nan || rel > tol ? stderr : stdout, "%-40s rel err %.3e (tol %.0e)%s\n", what, rel, tol,
                nan ? " NaN" : "");
}

static void test_rmsnorm(int n, int d)
{
    size_t nd = (size_t)n * d;
    float *x = malloc(4 * nd), *w = malloc(4 * d), *ref = malloc(4 * nd), *o = malloc(4 * nd);
    fill(x, nd, 2.0f);
    fill(w, d, 1.0f);
    moe_rmsnorm_cpu(x, w, n, d, 1e-6f, ref);
    float *dx = dev_copy(x, 4 * nd), *dw = dev_copy(w, 4 * d), *o32 = dev_poisoned(4 * nd);
    moe_bf16_t *o16 = dev_poisoned(2 * nd);
    CHECK_STATUS(moe_rmsnorm_cuda(dx, dw, n, d, 1e-6f, o32, o16, stream), MOE_STATUS_OK);
    char what[96];
    host_f32(o, o32, nd);
    snprintf(what, sizeof what, "rmsnorm fp32 %dx%d", n, d);
    check_rel(what, o, ref, nd, TOL_F32);
    host_from_bf16(o, o16, nd);
    snprintf(what, sizeof what, "rmsnorm bf16 %dx%d", n, d);
    check_rel(what, o, ref, nd, TOL_BF16);
    cudaFree(dx), cudaFree(dw), cudaFree(o32), cudaFree(o16);
    free(x), free(w), free(ref), free(o);
}

static void test_router(cublasHandle_t cublas, int n, int d, int E, int k, moe_router_scoring_t scoring,
                        int groups, int kept, bool renorm, float scaling, bool bias)
{
    float *h = malloc(4 * (size_t)n * d), *wr = malloc(4 * (size_t)E * d), *b = malloc(4 * E);
    float *lg = malloc(4 * (size_t)n * E), *lg_gpu = malloc(4 * (size_t)n * E);
    int32_t *ids = malloc(4 * (size_t)n * k), *ids_gpu = malloc(4 * (size_t)n * k);
    float *wt = malloc(4 * (size_t)n * k), *wt_gpu = malloc(4 * (size_t)n * k);
    fill(h, (size_t)n * d, 1.0f);
    fill(wr, (size_t)E * d, 0.5f);
    fill(b, E, 0.1f);
    moe_router_params_t p = {.experts = E, .top_k = k, .scoring = scoring, .renormalize = renorm,
                             .groups = groups, .groups_kept = kept, .scaling = scaling,
                             .bias = bias ? b : NULL};
    /* logits */
    moe_router_logits_cpu(h, wr, n, d, E, lg);
    float *dh = dev_copy(h, 4 * (size_t)n * d), *dwr = dev_copy(wr, 4 * (size_t)E * d);
    float *dlg = dev_poisoned(4 * (size_t)n * E);
    CHECK_STATUS(moe_router_logits_cuda(cublas, dh, dwr, n, d, E, dlg), MOE_STATUS_OK);
    host_f32(lg_gpu, dlg, (size_t)n * E);
    char what[96];
    snprintf(what, sizeof what, "router logits %dx%dx%d", n, d, E);
    check_rel(what, lg_gpu, lg, (size_t)n * E, TOL_F32);
    /* top-k on the same logits */
    moe_router_topk_cpu(lg, n, &p, ids, wt);
    cudaMemcpy(dlg, lg, 4 * (size_t)n * E, cudaMemcpyHostToDevice);
    float *db = dev_copy(b, 4 * E), *dwt = dev_poisoned(4 * (size_t)n * k);
    int32_t *dids = dev_poisoned(4 * (size_t)n * k);
    moe_router_params_t pd = p;
    pd.bias = bias ? db : NULL;
    CHECK_STATUS(moe_router_topk_cuda(dlg, n, &pd, dids, dwt, stream), MOE_STATUS_OK);
    cudaStreamSynchronize(stream);
    cudaMemcpy(ids_gpu, dids, 4 * (size_t)n * k, cudaMemcpyDeviceToHost);
    host_f32(wt_gpu, dwt, (size_t)n * k);
    int mismatched = 0;
    for (int i = 0; i < n * k; i++) mismatched += ids[i] != ids_gpu[i];
    CHECK_EQ_INT(mismatched, 0);
    snprintf(what, sizeof what, "router top-%d of %d (%s, %d groups)", k, E,
             scoring == MOE_ROUTER_SOFTMAX ? "softmax" : "sigmoid", groups);
    check_rel(what, wt_gpu, wt, (size_t)n * k, TOL_F32);
    cudaFree(dh), cudaFree(dwr), cudaFree(dlg), cudaFree(db), cudaFree(dwt), cudaFree(dids);
    free(h), free(wr), free(b), free(lg), free(lg_gpu), free(ids), free(ids_gpu), free(wt), free(wt_gpu);
}

static void test_swiglu(int n, int f)
{
    size_t n2 = (size_t)n * 2 * f, nf = (size_t)n * f;
    float *gu = malloc(4 * n2), *ref = malloc(4 * nf), *o = malloc(4 * nf);
    fill(gu, n2, 3.0f);
    uint16_t *gu16 = round_bf16(gu, n2);
    moe_swiglu_cpu(gu, n, f, ref);
    moe_bf16_t *dgu = dev_copy(gu16, 2 * n2), *dact = dev_poisoned(2 * nf);
    CHECK_STATUS(moe_swiglu_cuda(dgu, n, f, dact, stream), MOE_STATUS_OK);
    host_from_bf16(o, dact, nf);
    char what[96];
    snprintf(what, sizeof what, "swiglu %dx%d", n, f);
    check_rel(what, o, ref, nf, TOL_BF16);
    cudaFree(dgu), cudaFree(dact);
    free(gu), free(ref), free(o), free(gu16);
}

/* Gated shared expert: out[t] += sigmoid(h[t] . gate) * y[t], against a double-precision loop. */
static void test_gated_add(int n, int d)
{
    size_t nd = (size_t)n * d;
    float *y = malloc(4 * nd), *h = malloc(4 * nd), *gate = malloc(4 * d), *out = malloc(4 * nd);
    float *ref = malloc(4 * nd), *o = malloc(4 * nd);
    fill(y, nd, 1.0f);
    fill(h, nd, 1.0f);
    fill(gate, d, 1.0f / sqrtf((float)d));
    fill(out, nd, 1.0f);
    uint16_t *y16 = round_bf16(y, nd);
    for (int t = 0; t < n; t++) {
        double dot = 0;
        for (int j = 0; j < d; j++) dot += (double)h[(size_t)t * d + j] * gate[j];
        double g = 1.0 / (1.0 + exp(-dot));
        for (int j = 0; j < d; j++) ref[(size_t)t * d + j] = (float)(out[(size_t)t * d + j] + g * y[(size_t)t * d + j]);
    }
    moe_bf16_t *dy = dev_copy(y16, 2 * nd);
    float *dh = dev_copy(h, 4 * nd), *dg = dev_copy(gate, 4 * d), *dout = dev_copy(out, 4 * nd);
    CHECK_STATUS(moe_gated_add_cuda(dy, dh, dg, n, d, dout, stream), MOE_STATUS_OK);
    host_f32(o, dout, nd);
    char what[96];
    snprintf(what, sizeof what, "gated add %dx%d", n, d);
    check_rel(what, o, ref, nd, TOL_F32);
    cudaFree(dy), cudaFree(dh), cudaFree(dg), cudaFree(dout);
    free(y), free(h), free(gate), free(out), free(ref), free(o), free(y16);
}

static void test_residual(size_t n)
{
    float *x = malloc(4 * n), *y = malloc(4 * n), *ref = malloc(4 * n), *o = malloc(4 * n);
    fill(x, n, 1.0f);
    fill(y, n, 1.0f);
    for (size_t i = 0; i < n; i++) ref[i] = x[i] + y[i];
    float *dx = dev_copy(x, 4 * n), *dy = dev_copy(y, 4 * n);
    CHECK_STATUS(moe_residual_cuda(dx, dy, n, stream), MOE_STATUS_OK);
    host_f32(o, dx, n);
    check_rel("residual", o, ref, n, TOL_F32);
    host_f32(o, dy, n);
    bool zero = true;
    for (size_t i = 0; i < n; i++) zero &= o[i] == 0.0f;
    CHECK(zero);
    cudaFree(dx), cudaFree(dy);
    free(x), free(y), free(ref), free(o);
}


/* ---------------------------------------------------------------- grouped GEMMs, experts */

/* Group sizes from 0 to max_rows (group 1 empty), as the expert grouping leaves them. */
static int *random_offsets(int groups, int max_rows)
{
    int *offset = malloc(sizeof(int) * (groups + 1));
    offset[0] = 0;
    for (int e = 0; e < groups; e++) {
        int m = (int)(moe_hash(11, draw, e, 0, 0) % (uint64_t)(max_rows + 1));
        if (e == 1) m = 0;
        offset[e + 1] = offset[e] + m;
    }
    draw++;
    return offset;
}

/* moe_ggemm_run (each variant) against moe_grouped_gemm_cpu: every group's weights in an allocation
 * of its own (a pointer array, as expert slots are), a weight offset inside it, with and without
 * the SwiGLU epilogue. */
static void test_ggemm(moe_ggemm_h gg, moe_gemm_path_t variant, int groups, int n_out, int k, int max_rows)
{
    int *offset = random_offsets(groups, max_rows);
    const int rows = offset[groups];
    const size_t nx = (size_t)rows * k, ny = (size_t)rows * n_out, nw = (size_t)2 * n_out * k;
    float *x = malloc(4 * nx + 4), *gate = malloc(4 * ny + 4), *ref = malloc(4 * ny + 4), *o = malloc(4 * ny + 4);
    float **w = malloc(sizeof(float *) * groups);
    moe_bf16_t **dw_host = malloc(sizeof(moe_bf16_t *) * groups);
    fill(x, nx, 1.0f);
    fill(gate, ny, 2.0f);
    uint16_t *x16 = round_bf16(x, nx), *g16 = round_bf16(gate, ny);
    for (int e = 0; e < groups; e++) {
        w[e] = malloc(4 * nw);
        fill(w[e], nw, 1.0f / sqrtf((float)k));
        uint16_t *w16 = round_bf16(w[e], nw);
        dw_host[e] = dev_copy(w16, 2 * nw);
        free(w16);
    }
    moe_bf16_t *dx = dev_copy(x16, 2 * nx), *dg = dev_copy(g16, 2 * ny), *dy = dev_poisoned(2 * ny);
    moe_bf16_t **dw = dev_copy(dw_host, sizeof(void *) * groups);
    int *doff = dev_copy(offset, sizeof(int) * (groups + 1));
    for (int with_gate = 0; with_gate < 2; with_gate++) {
        const size_t w_offset = with_gate ? (size_t)n_out * k : 0; /* the second half: "up" */
        moe_grouped_gemm_cpu(x, (const float *const *)w, w_offset, offset, groups, n_out, k, with_gate ? gate : NULL,
                             ref);
        cudaMemset(dy, 0xff, 2 * ny + 16);
        CHECK_STATUS(moe_ggemm_run(gg, variant, dx, (const moe_bf16_t *const *)dw, w_offset, doff, groups, max_rows,
                                   n_out, k, with_gate ? dg : NULL, dy, stream), MOE_STATUS_OK);
        host_from_bf16(o, dy, ny);
        char what[128];
        snprintf(what, sizeof what, "ggemm %s%s %d x %dx%d, %d rows%s", moe_gemm_path_name(variant),
                 with_gate ? " swiglu" : "",
                 groups, n_out, k, rows, moe_ggemm_tensor_cores(gg, n_out, k) ? "" : " (cuda cores)");
        check_rel(what, o, ref, ny, TOL_BF16);
    }
    for (int e = 0; e < groups; e++) free(w[e]), cudaFree(dw_host[e]);
    cudaFree(dx), cudaFree(dg), cudaFree(dy), cudaFree(dw), cudaFree(doff);
    free(offset), free(x), free(gate), free(ref), free(o), free(w), free(dw_host), free(x16), free(g16);
}

/* moe_expert_ffn_cuda on every path against moe_expert_ffn_cpu per slot; each slot one allocation,
 * gate_up then down, as the device store keeps experts. */
static void test_expert_ffn(moe_gemm_h g, moe_ggemm_h gg, int slots, int d, int f, int max_rows)
{
    int *offset = random_offsets(slots, max_rows);
    const int rows = offset[slots];
    const size_t nx = (size_t)rows * d, ns = (size_t)3 * f * d;
    float *x = malloc(4 * nx + 4), *ref = malloc(4 * nx + 4), *o = malloc(4 * nx + 4);
    float *scratch = malloc(4 * (size_t)(max_rows + 1) * 3 * f), **slot = malloc(sizeof(float *) * slots);
    moe_bf16_t **host_gu = malloc(sizeof(void *) * slots), **host_down = malloc(sizeof(void *) * slots);
    fill(x, nx, 1.0f);
    uint16_t *x16 = round_bf16(x, nx);
    for (int e = 0; e < slots; e++) {
        slot[e] = malloc(4 * ns);
        fill(slot[e], 2 * (size_t)f * d, 1.0f / sqrtf((float)d));
        fill(slot[e] + 2 * (size_t)f * d, (size_t)d * f, 1.0f / sqrtf((float)f));
        uint16_t *s16 = round_bf16(slot[e], ns);
        host_gu[e] = dev_copy(s16, 2 * ns);
        host_down[e] = host_gu[e] + 2 * (size_t)f * d;
        free(s16);
        moe_expert_ffn_cpu(x + (size_t)offset[e] * d, slot[e], slot[e] + 2 * (size_t)f * d, offset[e + 1] - offset[e],
                           d, f, scratch, ref + (size_t)offset[e] * d);
    }
    moe_expert_weights_t w = {.slots = slots, .d = d, .f = f,
                              .gate_up = dev_copy(host_gu, sizeof(void *) * slots),
                              .down = dev_copy(host_down, sizeof(void *) * slots),
                              .host_gate_up = (const moe_bf16_t *const *)host_gu,
                              .host_down = (const moe_bf16_t *const *)host_down};
    moe_bf16_t *dx = dev_copy(x16, 2 * nx), *dgu = dev_poisoned(2 * (size_t)rows * 2 * f + 2);
    moe_bf16_t *dact = dev_poisoned(2 * (size_t)rows * f + 2), *dy = dev_poisoned(2 * nx);
    int *doff = dev_copy(offset, sizeof(int) * (slots + 1));
    for (int path = MOE_GEMM_PATH_128x128; path <= MOE_GEMM_PATH_CUBLAS; path++) {
        cudaMemset(dy, 0xff, 2 * nx + 16);
        CHECK_STATUS(moe_expert_ffn_cuda(g, gg, (moe_gemm_path_t)path, &w, dx, doff, offset, rows, dgu, dact, dy),
                     MOE_STATUS_OK);
        host_from_bf16(o, dy, nx);
        char what[128];
        snprintf(what, sizeof what, "experts %s %d x (d %d, f %d), %d rows", moe_gemm_path_name((moe_gemm_path_t)path),
                 slots, d, f, rows);
        check_rel(what, o, ref, nx, TOL_BF16);
    }
    for (int e = 0; e < slots; e++) free(slot[e]), cudaFree(host_gu[e]);
    cudaFree((void *)w.gate_up), cudaFree((void *)w.down), cudaFree(dx), cudaFree(dgu), cudaFree(dact), cudaFree(dy);
    cudaFree(doff);
    free(offset), free(x), free(ref), free(o), free(scratch), free(slot), free(host_gu), free(host_down), free(x16);
}

/* ---------------------------------------------------------------- dispatch layout */

/* A placement of E experts on P ranks, expert e first on rank e % P, every third expert with a
 * second replica on the next rank (shares 0.3 / 0.7), as host arrays; local_slot for `rank`. */
typedef struct {
    int first[257], rank[600], local_slot[256];
    float share[600];
    moe_dispatch_table_t t;
} table_t;

static void make_table(table_t *tb, int layer, int E, int P, int rank, int *slots)
{
    int r = 0;
    *slots = 0;
    for (int e = 0; e < E; e++) {
        tb->first[e] = r;
        tb->local_slot[e] = -1;
        const int n = e % 3 == 0 && P > 1 ? 2 : 1;
        for (int i = 0; i < n; i++) {
            tb->rank[r] = (e + i) % P;
            tb->share[r] = n == 1 ? 1.0f : i == 0 ? 0.3f : 0.7f;
            if (tb->rank[r] == rank) tb->local_slot[e] = (*slots)++;
            r++;
        }
    }
    tb->first[E] = r;
    tb->t = (moe_dispatch_table_t){.layer = layer, .experts = E, .ranks = P, .replicas = r, .first = tb->first,
                                   .rank = tb->rank, .share = tb->share, .local_slot = tb->local_slot};
}

/* The same table with its arrays on the device. */
static moe_dispatch_table_t table_on_device(const table_t *tb)
{
    moe_dispatch_table_t d = tb->t;
    d.first = dev_copy(tb->first, sizeof(int) * (tb->t.experts + 1));
    d.rank = dev_copy(tb->rank, sizeof(int) * tb->t.replicas);
    d.share = dev_copy(tb->share, sizeof(float) * tb->t.replicas);
    d.local_slot = dev_copy(tb->local_slot, sizeof(int) * tb->t.experts);
    return d;
}
static void table_free(moe_dispatch_table_t *d)
{
    cudaFree((void *)d->first), cudaFree((void *)d->rank), cudaFree((void *)d->share), cudaFree((void *)d->local_slot);
}

/* count, offsets and pack on the GPU against the CPU: identical replicas, counts and offsets; every
 * (token, choice) that sends gets a row in its (chunk, peer) block holding the token's bf16 row and
 * the CPU's metadata for it; no row is used twice. capacity > 0: the fixed-capacity layout. */
static void test_dispatch(int n, int k, int E, int P, int chunks, int d, int capacity)
{
    table_t tb;
    int slots;
    make_table(&tb, 3, E, P, 0, &slots);
    const int R = tb.t.replicas, CP = chunks * P;
    const size_t meta_offset = ((size_t)d * 2 + 15) / 16 * 16, row_bytes = meta_offset + ((size_t)8 * k + 15) / 16 * 16;
    const size_t meta_offset32 = (size_t)d * 4, row_bytes32 = meta_offset32 + (size_t)8 * k;
    int32_t *ids = malloc(4 * (size_t)n * k), *rep = malloc(4 * (size_t)n * k), *trow = malloc(4 * (size_t)n * k);
    float *wt = malloc(4 * (size_t)n * k), *h = malloc(4 * (size_t)n * d + 4);
    int *rows = malloc(sizeof(int) * CP), *entries = malloc(sizeof(int) * chunks * R), *offset = malloc(sizeof(int) * (CP + 1));
    for (int i = 0; i < n * k; i++) {
        uint64_t v = moe_hash(21, draw, i, 0, 0);
        ids[i] = v % 17 == 0 ? -1 : (int32_t)(v % (uint64_t)E); /* some choices dropped, repeats allowed */
    }
    draw++;
    fill(wt, (size_t)n * k, 1.0f);
    fill(h, (size_t)n * d, 1.0f);
    uint16_t *h16 = round_bf16(h, (size_t)n * d);
    const int64_t g0 = 1000 + n;
    moe_dispatch_count_cpu(ids, n, k, g0, &tb.t, chunks, rep, rows, entries);
    int total = 0;
    for (int i = 0; i < CP; i++) total += rows[i];
    const int cap_rows = capacity > 0 ? CP * capacity : total;
    moe_dispatch_offsets_cpu(rows, chunks, P, capacity, offset);
    char *send = malloc(row_bytes32 * (size_t)(cap_rows + 1));
    moe_dispatch_pack_cpu(h, ids, wt, rep, n, k, d, &tb.t, chunks, offset, send, row_bytes32, meta_offset32, trow);

    moe_dispatch_table_t dt = table_on_device(&tb);
    int32_t *d_ids = dev_copy(ids, 4 * (size_t)n * k), *d_rep = dev_poisoned(4 * (size_t)n * k);
    int32_t *d_trow = dev_poisoned(4 * (size_t)n * k);
    float *d_wt = dev_copy(wt, 4 * (size_t)n * k);
    moe_bf16_t *d_h = dev_copy(h16, 2 * (size_t)n * d);
    int *d_rows = dev_poisoned(sizeof(int) * CP), *d_entries = dev_poisoned(sizeof(int) * chunks * R);
    int *d_offset = dev_poisoned(sizeof(int) * (CP + 1)), *d_fill = dev_poisoned(sizeof(int) * CP);
    char *d_send = dev_poisoned(row_bytes * (size_t)(cap_rows + 1));
    int64_t *d_g0 = dev_copy(&g0, sizeof g0);
    CHECK_STATUS(moe_dispatch_count_cuda(d_ids, n, k, d_g0, &dt, chunks, d_rep, d_rows, d_entries, stream), MOE_STATUS_OK);
    CHECK_STATUS(moe_dispatch_offsets_cuda(d_rows, chunks, P, capacity, d_offset, d_fill, stream), MOE_STATUS_OK);
    if (capacity > 0)
        CHECK_STATUS(moe_dispatch_clear_meta_cuda(d_send, cap_rows, row_bytes, meta_offset, k, stream), MOE_STATUS_OK);
    CHECK_STATUS(moe_dispatch_pack_cuda(d_h, d_ids, d_wt, d_rep, n, k, d, &dt, chunks, d_offset, d_fill, d_send,
                                        row_bytes, meta_offset, d_trow, stream), MOE_STATUS_OK);
    cudaStreamSynchronize(stream);
    int32_t *g_rep = malloc(4 * (size_t)n * k), *g_trow = malloc(4 * (size_t)n * k);
    int *g_rows = malloc(sizeof(int) * CP), *g_entries = malloc(sizeof(int) * chunks * R), *g_offset = malloc(sizeof(int) * (CP + 1));
    char *g_send = malloc(row_bytes * (size_t)(cap_rows + 1));
    cudaMemcpy(g_rep, d_rep, 4 * (size_t)n * k, cudaMemcpyDeviceToHost);
    cudaMemcpy(g_trow, d_trow, 4 * (size_t)n * k, cudaMemcpyDeviceToHost);
    cudaMemcpy(g_rows, d_rows, sizeof(int) * CP, cudaMemcpyDeviceToHost);
    cudaMemcpy(g_entries, d_entries, sizeof(int) * chunks * R, cudaMemcpyDeviceToHost);
    cudaMemcpy(g_offset, d_offset, sizeof(int) * (CP + 1), cudaMemcpyDeviceToHost);
    cudaMemcpy(g_send, d_send, row_bytes * (size_t)cap_rows, cudaMemcpyDeviceToHost);
    CHECK(memcmp(g_rep, rep, 4 * (size_t)n * k) == 0);
    CHECK(memcmp(g_rows, rows, sizeof(int) * CP) == 0);
    CHECK(memcmp(g_entries, entries, sizeof(int) * chunks * R) == 0);
    CHECK(memcmp(g_offset, offset, sizeof(int) * (CP + 1)) == 0);
    int bad_rows = 0, bad_data = 0, bad_meta = 0, used = 0;
    char *taken = calloc((size_t)cap_rows + 1, 1);
    for (int t = 0; t < n; t++)
        for (int j = 0; j < k; j++) {
            const int cr = trow[t * k + j], gr = g_trow[t * k + j];
            if ((cr < 0) != (gr < 0)) { bad_rows++; continue; }
            if (cr < 0) continue;
            /* the same (chunk, peer) block: the CPU row's block */
            int blk = 0;
            while (blk < CP && !(cr >= offset[blk] && cr < offset[blk] + rows[blk])) blk++;
            if (blk == CP || gr < offset[blk] || gr >= offset[blk] + rows[blk] || taken[gr]) { bad_rows++; continue; }
            taken[gr] = 1;
            used++;
            const uint16_t *gd = (const uint16_t *)(g_send + (size_t)gr * row_bytes);
            bad_data += memcmp(gd, h16 + (size_t)t * d, 2 * (size_t)d) != 0;
            bad_meta += memcmp(g_send + (size_t)gr * row_bytes + meta_offset, send + (size_t)cr * row_bytes32 + meta_offset32,
                               (size_t)8 * k) != 0;
        }
    CHECK_EQ_INT(bad_rows, 0);
    CHECK_EQ_INT(bad_data, 0);
    CHECK_EQ_INT(bad_meta, 0);
    CHECK_EQ_INT(used, total);
    if (capacity > 0) { /* unused rows of the fixed layout say "no expert" */
        int dirty = 0;
        for (int r = 0; r < cap_rows; r++)
            if (!taken[r])
                for (int j = 0; j < k; j++) dirty += ((const int32_t *)(g_send + (size_t)r * row_bytes + meta_offset))[j] != -1;
        CHECK_EQ_INT(dirty, 0);
    }
    if (getenv("MOE_TEST_VERBOSE"))
        printf("dispatch %d tokens top-%d, %d experts (%d replicas) on %d ranks, %d chunks%s: %d rows\n", n, k, E, R, P,
               chunks, capacity > 0 ? ", fixed capacity" : "", total);
    table_free(&dt);
    cudaFree(d_ids), cudaFree(d_rep), cudaFree(d_trow), cudaFree(d_wt), cudaFree(d_h), cudaFree(d_rows);
    cudaFree(d_entries), cudaFree(d_offset), cudaFree(d_fill), cudaFree(d_send), cudaFree(d_g0);
    free(ids), free(rep), free(trow), free(wt), free(h), free(rows), free(entries), free(offset), free(h16), free(send);
    free(g_rep), free(g_trow), free(g_rows), free(g_entries), free(g_offset), free(g_send), free(taken);
}

/* Grouping, combine and un-permute at the destination: n_rows received rows whose metadata names
 * local experts (or -1); the GPU's offsets equal the CPU's, every local (row, choice) has an
 * expert-major row holding the received row; combining with the identity as the expert gives
 * partial[r] = sum of weights x row r; a row naming an expert the rank lacks sets the flag. Then the
 * un-permute of returned rows into fp32 outputs. */
static void test_group(int n_rows, int k, int E, int d)
{
    table_t tb;
    int slots;
    make_table(&tb, 0, E, 2, 1, &slots); /* this rank is rank 1 of 2 */
    const size_t meta_offset = ((size_t)d * 2 + 15) / 16 * 16, row_bytes = meta_offset + ((size_t)8 * k + 15) / 16 * 16;
    const size_t meta_offset32 = (size_t)d * 4, row_bytes32 = meta_offset32 + (size_t)8 * k;
    char *recv = malloc(row_bytes * (size_t)n_rows + 16), *recv32 = malloc(row_bytes32 * (size_t)n_rows + 16);
    float *data = malloc(4 * (size_t)n_rows * d + 4);
    fill(data, (size_t)n_rows * d, 1.0f);
    uint16_t *data16 = round_bf16(data, (size_t)n_rows * d);
    int local[256], n_local = 0;
    for (int e = 0; e < E; e++)
        if (tb.local_slot[e] >= 0) local[n_local++] = e;
    for (int r = 0; r < n_rows; r++) {
        memcpy(recv + (size_t)r * row_bytes, data16 + (size_t)r * d, 2 * (size_t)d);
        memcpy(recv32 + (size_t)r * row_bytes32, data + (size_t)r * d, 4 * (size_t)d);
        for (int j = 0; j < k; j++) {
            uint64_t v = moe_hash(31, draw, r, j, 0);
            int32_t e = j == 0 || v % 3 ? local[v % (uint64_t)n_local] : -1; /* at least one local choice */
            float w = moe_hash_to_symmetric(moe_hash(32, draw, r, j, 0));
            memcpy(recv + (size_t)r * row_bytes + meta_offset + 4 * (size_t)j, &e, 4);
            memcpy(recv + (size_t)r * row_bytes + meta_offset + 4 * ((size_t)k + j), &w, 4);
            memcpy(recv32 + (size_t)r * row_bytes32 + meta_offset32 + 4 * (size_t)j, &e, 4);
            memcpy(recv32 + (size_t)r * row_bytes32 + meta_offset32 + 4 * ((size_t)k + j), &w, 4);
        }
    }
    draw++;
    const int max_entries = n_rows * k;
    int *offset = malloc(sizeof(int) * (slots + 1));
    int32_t *epos = malloc(4 * (size_t)max_entries);
    float *x_e = malloc(4 * (size_t)max_entries * d + 4), *partial = malloc(4 * (size_t)n_rows * d + 4);
    CHECK_STATUS(moe_expert_group_cpu(recv32, n_rows, row_bytes32, meta_offset32, k, tb.local_slot, E, slots, d, offset,
                                      epos, x_e), MOE_STATUS_OK);
    moe_expert_combine_cpu(x_e, epos, recv32, n_rows, row_bytes32, meta_offset32, k, d, partial);

    moe_dispatch_table_t dt = table_on_device(&tb);
    char *d_recv = dev_copy(recv, row_bytes * (size_t)n_rows);
    int *d_offset = dev_poisoned(sizeof(int) * (slots + 1)), *d_fill = dev_poisoned(sizeof(int) * (slots + 1));
    int *d_bad = dev_copy((int[]){0}, sizeof(int));
    int32_t *d_epos = dev_poisoned(4 * (size_t)max_entries);
    moe_bf16_t *d_xe = dev_poisoned(2 * (size_t)max_entries * d), *d_partial = dev_poisoned(2 * (size_t)n_rows * d);
    CHECK_STATUS(moe_expert_group_cuda(d_recv, n_rows, row_bytes, meta_offset, k, dt.local_slot, E, slots, d, d_offset,
                                       d_epos, d_xe, d_fill, d_bad, stream), MOE_STATUS_OK);
    CHECK_STATUS(moe_expert_combine_cuda(d_xe, d_epos, d_recv, n_rows, row_bytes, meta_offset, k, d, d_partial, stream),
                 MOE_STATUS_OK);
    cudaStreamSynchronize(stream);
    int *g_offset = malloc(sizeof(int) * (slots + 1)), g_bad = -1;
    int32_t *g_epos = malloc(4 * (size_t)max_entries);
    uint16_t *g_xe = malloc(2 * (size_t)max_entries * d + 2);
    cudaMemcpy(g_offset, d_offset, sizeof(int) * (slots + 1), cudaMemcpyDeviceToHost);
    cudaMemcpy(g_epos, d_epos, 4 * (size_t)n_rows * k, cudaMemcpyDeviceToHost);
    cudaMemcpy(g_xe, d_xe, 2 * (size_t)offset[slots] * d, cudaMemcpyDeviceToHost);
    cudaMemcpy(&g_bad, d_bad, sizeof(int), cudaMemcpyDeviceToHost);
    CHECK(memcmp(g_offset, offset, sizeof(int) * (slots + 1)) == 0);
    CHECK_EQ_INT(g_bad, 0);
    int bad = 0;
    char *taken = calloc((size_t)offset[slots] + 1, 1);
    for (int r = 0; r < n_rows; r++)
        for (int j = 0; j < k; j++) {
            const int cp = epos[r * k + j], gp = g_epos[r * k + j];
            if ((cp < 0) != (gp < 0)) { bad++; continue; }
            if (cp < 0) continue;
            int slot = 0; /* the CPU position's slot: the GPU's must lie in the same range */
            while (offset[slot + 1] <= cp) slot++;
            if (gp < offset[slot] || gp >= offset[slot + 1] || taken[gp]) { bad++; continue; }
            taken[gp] = 1;
            bad += memcmp(g_xe + (size_t)gp * d, data16 + (size_t)r * d, 2 * (size_t)d) != 0;
        }
    CHECK_EQ_INT(bad, 0);
    float *o = malloc(4 * (size_t)n_rows * d + 4);
    host_from_bf16(o, d_partial, (size_t)n_rows * d);
    char what[128];
    snprintf(what, sizeof what, "group + combine %d rows top-%d, %d slots, d %d", n_rows, k, slots, d);
    check_rel(what, o, partial, (size_t)n_rows * d, TOL_BF16);

    /* a row naming an expert this rank does not host */
    int32_t foreign = -1;
    for (int e = 0; e < E && foreign < 0; e++)
        if (tb.local_slot[e] < 0) foreign = e;
    cudaMemcpy(d_recv + meta_offset, &foreign, 4, cudaMemcpyHostToDevice);
    CHECK_STATUS(moe_expert_group_cuda(d_recv, n_rows, row_bytes, meta_offset, k, dt.local_slot, E, slots, d, d_offset,
                                       d_epos, d_xe, d_fill, d_bad, stream), MOE_STATUS_OK);
    cudaStreamSynchronize(stream);
    cudaMemcpy(&g_bad, d_bad, sizeof(int), cudaMemcpyDeviceToHost);
    CHECK_EQ_INT(g_bad, 1);

    /* un-permute: n_rows returned rows into n_tok token rows, each token taking up to k of them */
    const int n_tok = n_rows / 2 + 1;
    int32_t *trow = malloc(4 * (size_t)n_tok * k);
    for (int i = 0; i < n_tok * k; i++) {
        uint64_t v = moe_hash(33, draw, i, 0, 0);
        trow[i] = v % 3 == 0 ? -1 : (int32_t)(v % (uint64_t)n_rows);
    }
    draw++;
    float *out = malloc(4 * (size_t)n_tok * d + 4), *out_ref = malloc(4 * (size_t)n_tok * d + 4);
    fill(out, (size_t)n_tok * d, 1.0f);
    memcpy(out_ref, out, 4 * (size_t)n_tok * d);
    moe_unpermute_tokens_cpu(data, trow, 1, n_tok, k, d, out_ref); /* token 0 left alone */
    float *d_out = dev_copy(out, 4 * (size_t)n_tok * d);
    moe_bf16_t *d_back = dev_copy(data16, 2 * (size_t)n_rows * d);
    int32_t *d_trow = dev_copy(trow, 4 * (size_t)n_tok * k);
    CHECK_STATUS(moe_unpermute_tokens_cuda(d_back, d_trow, 1, n_tok, k, d, d_out, stream), MOE_STATUS_OK);
    host_f32(out, d_out, (size_t)n_tok * d);
    snprintf(what, sizeof what, "unpermute %d tokens top-%d, d %d", n_tok, k, d);
    check_rel(what, out, out_ref, (size_t)n_tok * d, TOL_F32);

    table_free(&dt);
    cudaFree(d_recv), cudaFree(d_offset), cudaFree(d_fill), cudaFree(d_bad), cudaFree(d_epos), cudaFree(d_xe);
    cudaFree(d_partial), cudaFree(d_out), cudaFree(d_back), cudaFree(d_trow);
    free(recv), free(recv32), free(data), free(data16), free(offset), free(epos), free(x_e), free(partial);
    free(g_offset), free(g_epos), free(g_xe), free(taken), free(o), free(trow), free(out), free(out_ref);
}


/* ---------------------------------------------------------------- weights where they land */

/* The seeded rule on the device equals the host's bit for bit (fp32), and rounds once to bf16. */
static void test_seed_fill(size_t n, int fan_in, float offset, float factor)
{
    const moe_seed_rule_t r = {.seed = 77, .layer = 3, .expert = 11, .tensor = 6, .fan_in = fan_in, .scale = 1.7f,
                               .offset = offset, .factor = factor};
    float *ref = malloc(4 * n), *o = malloc(4 * n);
    moe_seed_fill_cpu(&r, n, ref);
    float *d32 = dev_poisoned(4 * n);
    moe_bf16_t *d16 = dev_poisoned(2 * n);
    CHECK_STATUS(moe_seed_fill_cuda(&r, n, d32, false, stream), MOE_STATUS_OK);
    CHECK_STATUS(moe_seed_fill_cuda(&r, n, d16, true, stream), MOE_STATUS_OK);
    host_f32(o, d32, n);
    CHECK(memcmp(o, ref, 4 * n) == 0);
    host_from_bf16(o, d16, n);
    int bad = 0;
    for (size_t i = 0; i < n; i++) bad += o[i] != from_bf16(to_bf16(ref[i]));
    CHECK_EQ_INT(bad, 0);
    if (getenv("MOE_TEST_VERBOSE")) printf("seed fill %zu values (fan_in %d): bitwise equal\n", n, fan_in);
    cudaFree(d32), cudaFree(d16);
    free(ref), free(o);
}

/* fp32, bf16 and fp16 sources to fp32 and bf16, against the host's converters. */
static void test_convert(size_t n)
{
    float *v = malloc(4 * n), *o = malloc(4 * n), *ref = malloc(4 * n);
    uint16_t *b = malloc(2 * n), *h = malloc(2 * n);
    fill(v, n, 3.0f);
    for (size_t i = 0; i < n; i++) b[i] = moe_f32_to_bf16(v[i]), h[i] = moe_f32_to_f16(v[i]);
    const void *src[3] = {v, b, h};
    const size_t size[3] = {4, 2, 2};
    for (int raw = 0; raw < 3; raw++) {
        for (size_t i = 0; i < n; i++)
            ref[i] = raw == 0 ? v[i] : raw == 1 ? moe_bf16_to_f32(b[i]) : moe_f16_to_f32(h[i]);
        void *ds = dev_copy(src[raw], size[raw] * n);
        float *d32 = dev_poisoned(4 * n);
        moe_bf16_t *d16 = dev_poisoned(2 * n);
        CHECK_STATUS(moe_convert_cuda(ds, (moe_raw_t)raw, n, d32, false, stream), MOE_STATUS_OK);
        CHECK_STATUS(moe_convert_cuda(ds, (moe_raw_t)raw, n, d16, true, stream), MOE_STATUS_OK);
        host_f32(o, d32, n);
        CHECK(memcmp(o, ref, 4 * n) == 0);
        host_from_bf16(o, d16, n);
        int bad = 0;
        for (size_t i = 0; i < n; i++) bad += o[i] != from_bf16(to_bf16(ref[i]));
        CHECK_EQ_INT(bad, 0);
        cudaFree(ds), cudaFree(d32), cudaFree(d16);
    }
    free(v), free(o), free(ref), free(b), free(h);
}

/* FP8 e4m3 with block scales (partial blocks at the edges), every byte value, against the host. */
static void test_fp8(int64_t rows, int64_t cols, int block)
{
    const size_t n = (size_t)(rows * cols);
    const int64_t sr = (rows + block - 1) / block, sc = (cols + block - 1) / block;
    uint8_t *q = malloc(n);
    float *scale = malloc(4 * (size_t)(sr * sc)), *ref = malloc(4 * n), *o = malloc(4 * n);
    for (size_t i = 0; i < n; i++) q[i] = (uint8_t)(i * 37 + 11); /* every code, NaN included */
    for (int64_t i = 0; i < sr * sc; i++) scale[i] = 0.001f * (float)(i + 1);
    moe_dequant_fp8_cpu(q, rows, cols, scale, block, ref);
    uint8_t *dq = dev_copy(q, n);
    float *ds = dev_copy(scale, 4 * (size_t)(sr * sc)), *d32 = dev_poisoned(4 * n);
    CHECK_STATUS(moe_dequant_fp8_cuda(dq, rows, cols, ds, block, d32, false, stream), MOE_STATUS_OK);
    host_f32(o, d32, n);
    int bad = 0;
    for (size_t i = 0; i < n; i++) bad += !(o[i] == ref[i] || (o[i] != o[i] && ref[i] != ref[i]));
    CHECK_EQ_INT(bad, 0);
    if (getenv("MOE_TEST_VERBOSE"))
        printf("fp8 dequant %lldx%lld in %d-blocks: %d differ\n", (long long)rows, (long long)cols, block, bad);
    cudaFree(dq), cudaFree(ds), cudaFree(d32);
    free(q), free(scale), free(ref), free(o);
}

int main(void)
{
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices < 1) {
        printf("test_kernels_cuda: no CUDA device, skipped\n");
        return 77;
    }
    moe_log_init(0, MOE_LOG_WARN);
    cudaStreamCreate(&stream);
    moe_gemm_h gemm;
    moe_ggemm_h gg;
    if (moe_gemm_create(stream, &gemm) != MOE_STATUS_OK || moe_ggemm_create(64, &gg) != MOE_STATUS_OK) return 1;
    cublasHandle_t cublas = moe_gemm_cublas(gemm);

    const int shapes[][2] = {{1, 8}, {7, 64}, {33, 96}, {64, 128}, {300, 4096}, {5, 100}};
    for (int i = 0; i < 6; i++) {
        test_rmsnorm(shapes[i][0], shapes[i][1]);
        test_swiglu(shapes[i][0], shapes[i][1] + 1);
        test_group(shapes[i][0] * 3 + 1, 1 + i % 4 * 2, 24, shapes[i][1]);
        test_gated_add(shapes[i][0], shapes[i][1]);
        test_swiglu(shapes[i][0], shapes[i][1]);
    }
    test_residual(12345);
    test_router(cublas, 50, 64, 8, 2, MOE_ROUTER_SOFTMAX, 1, 1, true, 1.0f, false);     /* Mixtral */
    test_router(cublas, 200, 128, 64, 8, MOE_ROUTER_SOFTMAX, 1, 1, false, 1.0f, false); /* OLMoE */
    test_router(cublas, 77, 96, 64, 6, MOE_ROUTER_SOFTMAX, 8, 3, false, 16.0f, false);  /* DeepSeek-V2 */
    test_router(cublas, 130, 256, 256, 8, MOE_ROUTER_SIGMOID, 8, 4, true, 2.5f, true);  /* DeepSeek-V3 */
    test_router(cublas, 9, 32, 16, 3, MOE_ROUTER_SIGMOID, 1, 1, false, 1.0f, true);
    test_seed_fill(100003, 7168, 0.0f, 1.0f);
    test_seed_fill(4096, 1, 1.0f, 0.1f); /* the RMSNorm rule */
    test_seed_fill(777, 1, 0.0f, 0.05f); /* the score-bias rule */
    test_convert(50001);
    test_fp8(40, 70, 12);
    test_fp8(256, 384, 128);
    /* grouped GEMMs: CUTLASS shapes (multiples of 8) with several tiles, and ones it cannot take */
    for (int v = MOE_GEMM_PATH_128x128; v <= MOE_GEMM_PATH_CUDA_CORES; v++) {
        test_ggemm(gg, (moe_gemm_path_t)v, 5, 256, 512, 300);
        test_ggemm(gg, (moe_gemm_path_t)v, 16, 128, 256, 40);
        test_ggemm(gg, (moe_gemm_path_t)v, 3, 520, 136, 700);
        test_ggemm(gg, (moe_gemm_path_t)v, 4, 40, 100, 33); /* not multiples of 8: CUDA cores */
        test_ggemm(gg, (moe_gemm_path_t)v, 1, 64, 64, 1);
    }
    test_expert_ffn(gemm, gg, 1, 64, 128, 17);
    test_expert_ffn(gemm, gg, 8, 96, 40, 33);
    test_expert_ffn(gemm, gg, 5, 256, 512, 130);
    test_expert_ffn(gemm, gg, 32, 512, 256, 70);
    test_expert_ffn(gemm, gg, 3, 256, 256, 2500);
    test_expert_ffn(gemm, gg, 64, 128, 64, 9);
    /* dispatch layout: one and several ranks, chunks, replicas, fixed capacity */
    test_dispatch(1, 2, 8, 1, 1, 64, 0);
    test_dispatch(77, 2, 8, 2, 1, 64, 0);
    test_dispatch(300, 8, 64, 4, 4, 128, 0);
    test_dispatch(1000, 6, 96, 8, 3, 40, 0);
    test_dispatch(129, 8, 256, 2, 1, 7168, 0);
    test_dispatch(300, 8, 64, 4, 2, 128, 150);
    test_dispatch(64, 4, 16, 3, 1, 96, 64);
    test_group(1, 2, 16, 64);
    test_group(500, 8, 128, 1024);
    test_group(37, 6, 60, 100);

    moe_ggemm_destroy(gg);
    moe_gemm_destroy(gemm);
    cudaError_t err = cudaDeviceSynchronize();
    CHECK(err == cudaSuccess);
    cudaStreamDestroy(stream);
    return moe_test_result("kernels_cuda");
}
