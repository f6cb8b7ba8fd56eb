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

static void test_gather_scatter(int n_src, int n, int d)
{
    size_t sd = (size_t)n_src * d, nd = (size_t)n * d;
    float *src = malloc(4 * sd), *ref = malloc(4 * nd), *o = malloc(4 * nd), *wt = malloc(4 * n);
    float *acc = malloc(4 * sd), *acc_ref = malloc(4 * sd);
    int32_t *rows = malloc(4 * (size_t)n);
    fill(src, sd, 1.0f);
    fill(wt, n, 1.0f);
    fill(acc_ref, sd, 1.0f);
    for (int i = 0; i < n; i++) rows[i] = (int32_t)(moe_hash(9, draw, i, 0, 0) % (uint64_t)n_src);
    draw++;
    uint16_t *src16 = round_bf16(src, sd);
    moe_gather_rows_cpu(src, d, rows, n, ref);
    {   /* padding rows (-1) come out as zeros */
        int32_t *prow = malloc(4 * (size_t)n);
        for (int i = 0; i < n; i++) prow[i] = i % 3 == 1 ? -1 : rows[i];
        moe_bf16_t *ds = dev_copy(src16, 2 * sd), *dd = dev_poisoned(2 * nd);
        int32_t *dp = dev_copy(prow, 4 * (size_t)n);
        CHECK_STATUS(moe_gather_rows_cuda(ds, d, dp, n, dd, stream), MOE_STATUS_OK);
        host_from_bf16(o, dd, nd);
        int bad = 0;
        for (int i = 0; i < n; i++)
            for (int j = 0; j < d; j++)
                bad += o[(size_t)i * d + j] != (prow[i] < 0 ? 0.0f : ref[(size_t)i * d + j]);
        CHECK_EQ_INT(bad, 0);
        cudaFree(ds), cudaFree(dd), cudaFree(dp);
        free(prow);
    }
    moe_bf16_t *dsrc = dev_copy(src16, 2 * sd), *ddst = dev_poisoned(2 * nd);
    int32_t *drows = dev_copy(rows, 4 * (size_t)n);
    CHECK_STATUS(moe_gather_rows_cuda(dsrc, d, drows, n, ddst, stream), MOE_STATUS_OK);
    host_from_bf16(o, ddst, nd);
    CHECK(memcmp(o, ref, 4 * nd) == 0);
    /* scatter-add of the gathered rows back, weighted, onto a random accumulator (rows repeat) */
    float *dacc = dev_copy(acc_ref, 4 * sd), *dwt = dev_copy(wt, 4 * (size_t)n);
    moe_scatter_add_cpu(ref, rows, wt, n, d, acc_ref);
    CHECK_STATUS(moe_scatter_add_cuda(ddst, drows, dwt, n, d, dacc, stream), MOE_STATUS_OK);
    host_f32(acc, dacc, sd);
    char what[96];
    snprintf(what, sizeof what, "scatter-add %d rows -> %dx%d", n, n_src, d);
    check_rel(what, acc, acc_ref, sd, TOL_F32);
    /* unweighted (weights NULL: the un-permute) */
    float *ones = malloc(4 * (size_t)n);
    for (int i = 0; i < n; i++) ones[i] = 1.0f;
    moe_scatter_add_cpu(ref, rows, ones, n, d, acc_ref);
    CHECK_STATUS(moe_scatter_add_cuda(ddst, drows, NULL, n, d, dacc, stream), MOE_STATUS_OK);
    host_f32(acc, dacc, sd);
    snprintf(what, sizeof what, "unpermute %d rows -> %dx%d", n, n_src, d);
    check_rel(what, acc, acc_ref, sd, TOL_F32);
    cudaFree(dsrc), cudaFree(ddst), cudaFree(drows), cudaFree(dacc), cudaFree(dwt);
    free(src), free(ref), free(o), free(wt), free(acc), free(acc_ref), free(rows), free(src16), free(ones);
}

/* The destination's combine: each output row the weighted sum of its entries (some rows have
 * several, every row at least one), against moe_scatter_add_cpu onto zeros. */
static void test_combine(int n_rows, int d)
{
    int entries = 0;
    int *per_row = malloc(sizeof(int) * n_rows);
    for (int r = 0; r < n_rows; r++) entries += per_row[r] = 1 + (int)(moe_hash(5, draw, r, 0, 0) % 3);
    draw++;
    size_t ed = (size_t)entries * d, rd = (size_t)n_rows * d;
    float *y = malloc(4 * ed), *wt = malloc(4 * (size_t)entries), *ref = calloc(rd, 4), *o = malloc(4 * rd);
    int32_t *rows = malloc(4 * (size_t)entries), *entry = malloc(4 * (size_t)entries);
    int *row_offset = malloc(sizeof(int) * (n_rows + 1));
    fill(y, ed, 1.0f);
    fill(wt, (size_t)entries, 1.0f);
    /* entries in a scrambled order, as the expert grouping leaves them */
    for (int i = 0; i < entries; i++) entry[i] = i;
    for (int i = entries - 1; i > 0; i--) {
        int j = (int)(moe_hash(6, draw, i, 0, 0) % (uint64_t)(i + 1)), t = entry[i];
        entry[i] = entry[j], entry[j] = t;
    }
    draw++;
    row_offset[0] = 0;
    float *wlist = malloc(4 * (size_t)entries);
    for (int r = 0, i = 0; r < n_rows; r++) {
        for (int q = 0; q < per_row[r]; q++, i++) {
            rows[entry[i]] = r;
            wlist[i] = wt[entry[i]];
        }
        row_offset[r + 1] = row_offset[r] + per_row[r];
    }
    uint16_t *y16 = round_bf16(y, ed);
    moe_scatter_add_cpu(y, rows, wt, entries, d, ref);
    moe_bf16_t *dy = dev_copy(y16, 2 * ed), *dout = dev_poisoned(2 * rd);
    float *dwt = dev_copy(wlist, 4 * (size_t)entries);
    free(wlist);
    int32_t *dentry = dev_copy(entry, 4 * (size_t)entries);
    int *doff = dev_copy(row_offset, sizeof(int) * (n_rows + 1));
    CHECK_STATUS(moe_combine_rows_cuda(dy, doff, dentry, dwt, n_rows, d, dout, stream), MOE_STATUS_OK);
    host_from_bf16(o, dout, rd);
    char what[96];
    snprintf(what, sizeof what, "combine %d entries -> %dx%d", entries, n_rows, d);
    check_rel(what, o, ref, rd, TOL_BF16);
    cudaFree(dy), cudaFree(dout), cudaFree(dwt), cudaFree(dentry), cudaFree(doff);
    free(per_row), free(y), free(wt), free(ref), free(o), free(rows), free(entry), free(row_offset), free(y16);
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

/* Grouped SwiGLU experts (both GEMM modes) against moe_expert_ffn_cpu per expert; group sizes
 * include zero. Also the single GEMM that accumulates into fp32 (shared experts). */
static void test_experts(moe_gemm_h gemm, int groups, int d, int f, int max_rows)
{
    int *offset = malloc(sizeof(int) * (groups + 1));
    offset[0] = 0;
    for (int e = 0; e < groups; e++) {
        int m = (int)(moe_hash(11, draw, e, 0, 0) % (uint64_t)(max_rows + 1));
        if (e == 1) m = 0;
        offset[e + 1] = offset[e] + m;
    }
    draw++;
    const int rows = offset[groups];
    size_t nx = (size_t)rows * d, ngu = (size_t)groups * 2 * f * d, nd = (size_t)groups * d * f;
    float *x = malloc(4 * nx + 4), *wgu = malloc(4 * ngu), *wd = malloc(4 * nd);
    float *ref = malloc(4 * nx + 4), *o = malloc(4 * nx + 4), *scratch = malloc(4 * (size_t)max_rows * 3 * f + 4);
    fill(x, nx, 1.0f);
    fill(wgu, ngu, 1.0f / sqrtf((float)d));
    fill(wd, nd, 1.0f / sqrtf((float)f));
    uint16_t *x16 = round_bf16(x, nx), *wgu16 = round_bf16(wgu, ngu), *wd16 = round_bf16(wd, nd);
    for (int e = 0; e < groups; e++)
        moe_expert_ffn_cpu(x + (size_t)offset[e] * d, wgu + (size_t)e * 2 * f * d, wd + (size_t)e * d * f,
                           offset[e + 1] - offset[e], d, f, scratch, ref + (size_t)offset[e] * d);
    moe_bf16_t *dx = dev_copy(x16, 2 * nx), *dwgu = dev_copy(wgu16, 2 * ngu), *dwd = dev_copy(wd16, 2 * nd);
    moe_bf16_t *dgu = dev_poisoned(2 * (size_t)rows * 2 * f), *dact = dev_poisoned(2 * (size_t)rows * f);
    moe_bf16_t *dy = dev_poisoned(2 * nx);
    static const char *const mode_names[] = {"loop", "grouped", "streams", "auto"};
    for (int mode = 0; mode < 4; mode++) {
        moe_gemm_set_mode(gemm, (moe_gemm_mode_t)mode);
        cudaMemset(dy, 0xff, 2 * nx);
        CHECK_STATUS(moe_expert_ffn_grouped_cuda(gemm, dx, dwgu, dwd, offset, groups, d, f, dgu, dact, dy),
                     MOE_STATUS_OK);
        host_from_bf16(o, dy, nx);
        char what[96];
        snprintf(what, sizeof what, "experts %s %d x (d %d, f %d), %d rows", mode_names[mode],
                 groups, d, f, rows);
        check_rel(what, o, ref, nx, TOL_BF16);
    }
    moe_gemm_set_mode(gemm, MOE_GEMM_LOOP);
    {   /* padded layout: expert e's rows at e*stride, padding rows zero */
        int stride = 0;
        for (int e = 0; e < groups; e++)
            stride = offset[e + 1] - offset[e] > stride ? offset[e + 1] - offset[e] : stride;
        stride = (stride + 7) / 8 * 8;
        size_t np_ = (size_t)groups * stride;
        uint16_t *xp = calloc(np_ * d + 1, 2);
        for (int e = 0; e < groups; e++)
            memcpy(xp + (size_t)e * stride * d, x16 + (size_t)offset[e] * d,
                   2 * (size_t)(offset[e + 1] - offset[e]) * d);
        moe_bf16_t *dxp = dev_copy(xp, 2 * np_ * d), *dgup = dev_poisoned(2 * np_ * 2 * f);
        moe_bf16_t *dactp = dev_poisoned(2 * np_ * f), *dyp = dev_poisoned(2 * np_ * d);
        CHECK_STATUS(moe_expert_ffn_padded_cuda(gemm, dxp, dwgu, dwd, groups, stride, d, f, dgup, dactp, dyp),
                     MOE_STATUS_OK);
        float *op = malloc(4 * np_ * d + 4);
        host_from_bf16(op, dyp, np_ * d);
        for (int e = 0; e < groups; e++) /* back to the contiguous layout */
            memmove(o + (size_t)offset[e] * d, op + (size_t)e * stride * d,
                    4 * (size_t)(offset[e + 1] - offset[e]) * d);
        char what[96];
        snprintf(what, sizeof what, "experts padded %d x (d %d, f %d), stride %d", groups, d, f, stride);
        check_rel(what, o, ref, nx, TOL_BF16);
        cudaFree(dxp), cudaFree(dgup), cudaFree(dactp), cudaFree(dyp);
        free(xp), free(op);
    }
    /* fp32 accumulate: acc += x0 . wd0^T over the first group's rows (k = d, n_out = f here) */
    int m = offset[1];
    if (m > 0) {
        float *acc = malloc(4 * (size_t)m * f), *acc_ref = malloc(4 * (size_t)m * f);
        fill(acc, (size_t)m * f, 1.0f);
        memcpy(acc_ref, acc, 4 * (size_t)m * f);
        for (int i = 0; i < m; i++)
            for (int j = 0; j < f; j++) {
                double s = 0;
                for (int c = 0; c < d; c++) s += (double)x[(size_t)i * d + c] * wgu[(size_t)j * d + c];
                acc_ref[(size_t)i * f + j] += (float)s;
            }
        float *dacc = dev_copy(acc, 4 * (size_t)m * f);
        CHECK_STATUS(moe_gemm_cuda(gemm, dx, dwgu, m, f, d, dacc, true), MOE_STATUS_OK);
        host_f32(acc, dacc, (size_t)m * f);
        char what[96];
        snprintf(what, sizeof what, "gemm fp32 accumulate %dx%dx%d", m, f, d);
        check_rel(what, acc, acc_ref, (size_t)m * f, TOL_BF16);
        cudaFree(dacc);
        free(acc), free(acc_ref);
    }
    cudaFree(dx), cudaFree(dwgu), cudaFree(dwd), cudaFree(dgu), cudaFree(dact), cudaFree(dy);
    free(offset), free(x), free(wgu), free(wd), free(ref), free(o), free(scratch);
    free(x16), free(wgu16), free(wd16);
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
    if (moe_gemm_create(stream, MOE_GEMM_LOOP, &gemm) != MOE_STATUS_OK) return 1;
    cublasHandle_t cublas = moe_gemm_cublas(gemm);

    const int shapes[][2] = {{1, 8}, {7, 64}, {33, 96}, {64, 128}, {300, 4096}, {5, 100}};
    for (int i = 0; i < 6; i++) {
        test_rmsnorm(shapes[i][0], shapes[i][1]);
        test_gather_scatter(shapes[i][0] + 3, shapes[i][0] * 2 + 1, shapes[i][1]);
        test_swiglu(shapes[i][0], shapes[i][1] + 1);
        test_combine(shapes[i][0] * 3 + 1, shapes[i][1]);
        test_gated_add(shapes[i][0], shapes[i][1]);
        test_swiglu(shapes[i][0], shapes[i][1]);
    }
    test_residual(12345);
    test_router(cublas, 50, 64, 8, 2, MOE_ROUTER_SOFTMAX, 1, 1, true, 1.0f, false);     /* Mixtral */
    test_router(cublas, 200, 128, 64, 8, MOE_ROUTER_SOFTMAX, 1, 1, false, 1.0f, false); /* OLMoE */
    test_router(cublas, 77, 96, 64, 6, MOE_ROUTER_SOFTMAX, 8, 3, false, 16.0f, false);  /* DeepSeek-V2 */
    test_router(cublas, 130, 256, 256, 8, MOE_ROUTER_SIGMOID, 8, 4, true, 2.5f, true);  /* DeepSeek-V3 */
    test_router(cublas, 9, 32, 16, 3, MOE_ROUTER_SIGMOID, 1, 1, false, 1.0f, true);
    test_experts(gemm, 1, 64, 128, 17);
    test_experts(gemm, 4, 64, 128, 40);
    test_experts(gemm, 8, 96, 40, 33);
    test_experts(gemm, 5, 256, 512, 130);
    test_experts(gemm, 16, 512, 256, 70);
    test_experts(gemm, 3, 256, 256, 2500); /* AUTO takes the loop here */

    moe_gemm_destroy(gemm);
    cudaError_t err = cudaDeviceSynchronize();
    CHECK(err == cudaSuccess);
    cudaStreamDestroy(stream);
    return moe_test_result("kernels_cuda");
}
