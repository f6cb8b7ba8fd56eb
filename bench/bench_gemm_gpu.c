/* bench_gemm_gpu: G1, the grouped SwiGLU expert GEMMs (gate/up, SwiGLU, down) against dense cuBLAS at
 * the same FLOPs, measured in the same process, plus the card's two ceilings: the dense bf16 GEMM rate
 * (8192^3) and the device copy bandwidth (bytes read + written).
 *
 * Cases (name, local experts x rows per expert, d, f): Mixtral-8x7B layer 8 x 2048 (d 4096, f 14336);
 * DeepSeek-V3 (d 7168, f 2048) at a rank of EP8 prefill 32 x 256, of EP2 128 x 256 (also with skewed
 * group sizes), and weight-bound: 32 x 64, decode at EP2 128 x 8 and at one GPU 256 x 4. Each expert's
 * weights are an allocation of their own (as the device store keeps them). Paths: CUTLASS grouped
 * (wide tiles, swapped narrow tiles) and a cuBLAS GEMM per expert (moe_expert_ffn_cuda). The dense
 * baseline runs all rows through one expert's weights: the same FLOPs in two large GEMMs and an
 * unfused SwiGLU. The weight floor is the experts' bytes over the measured copy bandwidth. Times are
 * medians of REPS runs timed with CUDA events after a warm-up, on seeded random bf16 data.
 *
 * The dense baseline runs before and after the paths and the faster of the two counts (the card's
 * clocks drift with its temperature over a case). `best` is the fastest path, the one the cuda
 * backend's tuner picks (it times every path on a layer's first chunks, runtime/backend_cuda.c);
 * `chosen` is the static rule it falls back on before anything is timed.
 *
 * Output: one line per measurement, `key value` pairs, grep-able by scripts/device_run.sh. CASE and
 * PATH (names as printed) restrict the run to one case and one path, e.g. under ncu.
 *   bench_gemm_gpu [REPS [CASE [PATH]]] */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "kernels/kernels.h"

#define CK(call)                                                                                  \
    do {                                                                                          \
        cudaError_t e_ = (call);                                                                  \
        if (e_ != cudaSuccess) {                                                                  \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
            exit(1);                                                                              \
        }                                                                                         \
    } while (0)
#define OK(call)                                                                                  \
    do {                                                                                          \
        if ((call) != MOE_STATUS_OK) {                                                            \
            fprintf(stderr, "%s:%d: %s failed\n", __FILE__, __LINE__, #call);                     \
            exit(1);                                                                              \
        }                                                                                         \
    } while (0)

static cudaStream_t stream;
static int reps = 20;

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

typedef void (*work_fn)(void *arg);

/* Median milliseconds of fn over reps, after 3 warm-up runs. */
static float time_ms(work_fn fn, void *arg)
{
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    for (int i = 0; i < 3; i++) fn(arg);
    float *t = malloc(sizeof(float) * reps);
    for (int i = 0; i < reps; i++) {
        CK(cudaEventRecord(a, stream));
        fn(arg);
        CK(cudaEventRecord(b, stream));
        CK(cudaEventSynchronize(b));
        CK(cudaEventElapsedTime(&t[i], a, b));
    }
    qsort(t, reps, sizeof(float), cmp_float);
    float med = t[reps / 2];
    free(t);
    CK(cudaEventDestroy(a));
    CK(cudaEventDestroy(b));
    return med;
}

static void *dev_random(size_t n, float scale, uint64_t seed)
{
    void *p;
    CK(cudaMalloc(&p, 2 * n));
    OK(moe_fill_random_bf16_cuda(seed, n, scale, p, stream));
    return p;
}

/* ---------------------------------------------------------------- ceilings */

typedef struct {
    void *src, *dst;
    size_t bytes;
} copy_arg_t;
static void copy_work(void *arg)
{
    copy_arg_t *c = arg;
    CK(cudaMemcpyAsync(c->dst, c->src, c->bytes, cudaMemcpyDeviceToDevice, stream));
}

typedef struct {
    moe_gemm_h gemm;
    moe_bf16_t *a, *b, *c;
    int m, n, k;
} gemm_arg_t;
static void gemm_work(void *arg)
{
    gemm_arg_t *g = arg;
    OK(moe_gemm_cuda(g->gemm, g->a, g->b, g->m, g->n, g->k, g->c, false));
}

/* ---------------------------------------------------------------- SwiGLU experts */

/* The dense baseline: every row through one expert's weights, cuBLAS gate_up, SwiGLU, down. */
typedef struct {
    moe_gemm_h gemm;
    moe_bf16_t *x, *wgu, *wd, *gu, *act, *y;
    int rows, d, f;
} dense_arg_t;
static void dense_work(void *arg)
{
    dense_arg_t *a = arg;
    OK(moe_gemm_cuda(a->gemm, a->x, a->wgu, a->rows, 2 * a->f, a->d, a->gu, false));
    OK(moe_swiglu_cuda(a->gu, a->rows, a->f, a->act, stream));
    OK(moe_gemm_cuda(a->gemm, a->act, a->wd, a->rows, a->d, a->f, a->y, false));
}

typedef struct {
    moe_gemm_h gemm;
    moe_ggemm_h gg;
    moe_gemm_path_t path;
    moe_expert_weights_t w;
    moe_bf16_t *x, *gu, *act, *y;
    int *offset, *host_offset, rows;
} ffn_arg_t;
/* The two halves of the grouped paths' sequence (moe_expert_ffn_cuda), timed apart: gate, then up
 * with the SwiGLU epilogue; down. */
static void in_work(void *arg)
{
    ffn_arg_t *a = arg;
    const int d = a->w.d, f = a->w.f;
    OK(moe_ggemm_run(a->gg, a->path, a->x, a->w.gate_up, 0, a->offset, a->w.slots, a->rows, f, d, NULL, a->gu,
                     stream));
    OK(moe_ggemm_run(a->gg, a->path, a->x, a->w.gate_up, (size_t)f * d, a->offset, a->w.slots, a->rows, f, d, a->gu,
                     a->act, stream));
}
static void down_work(void *arg)
{
    ffn_arg_t *a = arg;
    OK(moe_ggemm_run(a->gg, a->path, a->act, a->w.down, 0, a->offset, a->w.slots, a->rows, a->w.d, a->w.f, NULL,
                     a->y, stream));
}
static void ffn_work(void *arg)
{
    ffn_arg_t *a = arg;
    OK(moe_expert_ffn_cuda(a->gemm, a->gg, a->path, &a->w, a->x, a->offset, a->host_offset, a->rows, a->gu, a->act,
                           a->y));
}

int main(int argc, char **argv)
{
    if (argc > 1) reps = atoi(argv[1]);
    const char *only_case = argc > 2 ? argv[2] : NULL, *only_path = argc > 3 ? argv[3] : NULL;
    if (reps < 1) {
        fprintf(stderr, "usage: bench_gemm_gpu [REPS [CASE [PATH]]]: REPS must be a positive count\n");
        return 2;
    }
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices < 1) {
        printf("bench_gemm_gpu: no CUDA device\n");
        return 77;
    }
    moe_log_init(0, MOE_LOG_WARN);
    struct cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("device %s sms %d l2_mb %d\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);
    CK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    moe_gemm_h gemm;
    moe_ggemm_h gg;
    OK(moe_gemm_create(stream, &gemm));
    OK(moe_ggemm_create(256, &gg));

    /* copy bandwidth: 2 GiB device to device */
    copy_arg_t c = {.bytes = (size_t)2 << 30};
    CK(cudaMalloc(&c.src, c.bytes));
    CK(cudaMalloc(&c.dst, c.bytes));
    CK(cudaMemset(c.src, 1, c.bytes));
    float t = time_ms(copy_work, &c);
    double copy_bw = 2.0 * c.bytes / (t * 1e-3);
    printf("copy_bw_tbs %.3f bytes %zu ms %.3f\n", copy_bw / 1e12, c.bytes, t);
    CK(cudaFree(c.src));
    CK(cudaFree(c.dst));

    /* dense bf16 GEMM rate, 8192^3, random data */
    {
        const int n = 8192;
        gemm_arg_t g = {gemm, dev_random((size_t)n * n, 1.0f, 1), dev_random((size_t)n * n, 1.0f, 2), NULL,
                        n, n, n};
        CK(cudaMalloc((void **)&g.c, 2 * (size_t)n * n));
        t = time_ms(gemm_work, &g);
        printf("dense_tflops %.1f shape 8192^3 ms %.3f\n", 2.0 * n * n * (double)n / (t * 1e-3) / 1e12, t);
        CK(cudaFree(g.a));
        CK(cudaFree(g.b));
        CK(cudaFree(g.c));
    }

    /* name, local experts, mean rows per expert, d, f, skew (0: equal groups; else group e gets a
     * share proportional to 1 / (e + 1)^skew, shuffled: a routed layer's spread) */
    struct { const char *name; int experts, tokens, d, f; double skew; } cases[] = {
        {"mixtral_8x2048", 8, 2048, 4096, 14336, 0},
        {"dsv3_32x256", 32, 256, 7168, 2048, 0},
        {"dsv3_128x256", 128, 256, 7168, 2048, 0},
        {"dsv3_128x256_skew", 128, 256, 7168, 2048, 0.8},
        {"dsv3_32x64", 32, 64, 7168, 2048, 0},
        {"dsv3_128x8", 128, 8, 7168, 2048, 0},
        {"dsv3_256x4", 256, 4, 7168, 2048, 0},
    };
    const int n_cases = (int)(sizeof cases / sizeof cases[0]);
    for (int ci = 0; ci < n_cases; ci++) {
        if (only_case && strcmp(only_case, cases[ci].name) != 0) continue;
        const int E = cases[ci].experts, d = cases[ci].d, f = cases[ci].f;
        int *offset = malloc(sizeof(int) * (E + 1));
        offset[0] = 0;
        double norm = 0;
        for (int e = 0; e < E; e++) norm += cases[ci].skew > 0 ? pow(1.0 / (e + 1), cases[ci].skew) : 1.0;
        for (int e = 0; e < E; e++) {
            const int rank = (e * 37) % E; /* shuffled popularity */
            const double share = (cases[ci].skew > 0 ? pow(1.0 / (rank + 1), cases[ci].skew) : 1.0) / norm;
            offset[e + 1] = offset[e] + (int)(share * E * cases[ci].tokens + 0.5);
        }
        const int M = offset[E];
        const size_t slot_elems = (size_t)3 * f * d;
        moe_bf16_t **host_gu = malloc(sizeof(void *) * E), **host_down = malloc(sizeof(void *) * E);
        for (int e = 0; e < E; e++) {
            host_gu[e] = dev_random(slot_elems, 1.0f / 64, 20 + 1000 * ci + e);
            host_down[e] = host_gu[e] + (size_t)2 * f * d;
        }
        ffn_arg_t a = {.gemm = gemm, .gg = gg, .rows = M, .host_offset = offset};
        a.w = (moe_expert_weights_t){.slots = E, .d = d, .f = f, .host_gate_up = (const moe_bf16_t *const *)host_gu,
                                     .host_down = (const moe_bf16_t *const *)host_down};
        CK(cudaMalloc((void **)&a.w.gate_up, sizeof(void *) * E));
        CK(cudaMalloc((void **)&a.w.down, sizeof(void *) * E));
        CK(cudaMemcpy((void *)a.w.gate_up, host_gu, sizeof(void *) * E, cudaMemcpyHostToDevice));
        CK(cudaMemcpy((void *)a.w.down, host_down, sizeof(void *) * E, cudaMemcpyHostToDevice));
        CK(cudaMalloc((void **)&a.offset, sizeof(int) * (E + 1)));
        CK(cudaMemcpy(a.offset, offset, sizeof(int) * (E + 1), cudaMemcpyHostToDevice));
        a.x = dev_random((size_t)M * d, 1.0f, 10 + ci);
        CK(cudaMalloc((void **)&a.gu, 2 * (size_t)M * 2 * f));
        CK(cudaMalloc((void **)&a.act, 2 * (size_t)M * f));
        CK(cudaMalloc((void **)&a.y, 2 * (size_t)M * d));
        const double flops = 2.0 * M * d * 3.0 * f;
        const double weight_bytes = 2.0 * E * 3.0 * f * d;
        const double floor_ms = weight_bytes / copy_bw * 1e3;
        dense_arg_t dense = {gemm, a.x, host_gu[0], host_down[0], a.gu, a.act, a.y, M, d, f};
        const float t_dense_before = time_ms(dense_work, &dense);
        float t_path[MOE_GEMM_PATH_COUNT] = {0};
        for (int path = MOE_GEMM_PATH_128x128; path <= MOE_GEMM_PATH_CUBLAS; path++) {
            if (path == MOE_GEMM_PATH_CUDA_CORES) continue;
            if (only_path && strcmp(only_path, moe_gemm_path_name((moe_gemm_path_t)path)) != 0) continue;
            a.path = (moe_gemm_path_t)path;
            t_path[path] = time_ms(ffn_work, &a);
        }
        const float t_dense_after = time_ms(dense_work, &dense);
        const float t_dense = t_dense_before < t_dense_after ? t_dense_before : t_dense_after;
        printf("g1 %s mode dense ms %.4f tflops %.1f rows %d before_ms %.4f after_ms %.4f\n", cases[ci].name,
               t_dense, flops / (t_dense * 1e-3) / 1e12, M, t_dense_before, t_dense_after);
        int best = -1;
        for (int path = MOE_GEMM_PATH_128x128; path <= MOE_GEMM_PATH_CUBLAS; path++) {
            const float tm = t_path[path];
            if (tm <= 0) continue;
            if (best < 0 || tm < t_path[best]) best = path;
            printf("g1 %s mode %s ms %.4f tflops %.1f of_dense %.3f weight_floor_ms %.4f of_weight_floor %.3f\n",
                   cases[ci].name, moe_gemm_path_name((moe_gemm_path_t)path), tm, flops / (tm * 1e-3) / 1e12,
                   t_dense / tm, floor_ms, floor_ms / tm);
        }
        if (best >= 0)
            printf("g1 %s mode best:%s ms %.4f tflops %.1f of_dense %.3f weight_floor_ms %.4f of_weight_floor %.3f\n",
                   cases[ci].name, moe_gemm_path_name((moe_gemm_path_t)best), t_path[best],
                   flops / (t_path[best] * 1e-3) / 1e12, t_dense / t_path[best], floor_ms, floor_ms / t_path[best]);
        /* per projection: could a path for gate/up and another for down beat one path for all three? */
        int best_in = -1, best_down = -1;
        float t_in[MOE_GEMM_PATH_COUNT] = {0}, t_down[MOE_GEMM_PATH_COUNT] = {0};
        for (int path = MOE_GEMM_PATH_CUTLASS_FIRST; path <= MOE_GEMM_PATH_CUTLASS_LAST; path++) {
            if (t_path[path] <= 0) continue;
            a.path = (moe_gemm_path_t)path;
            t_in[path] = time_ms(in_work, &a);
            t_down[path] = time_ms(down_work, &a);
            if (best_in < 0 || t_in[path] < t_in[best_in]) best_in = path;
            if (best_down < 0 || t_down[path] < t_down[best_down]) best_down = path;
            printf("g1 %s split %s gate_up_ms %.4f down_ms %.4f\n", cases[ci].name,
                   moe_gemm_path_name((moe_gemm_path_t)path), t_in[path], t_down[path]);
        }
        if (best_in >= 0)
            printf("g1 %s split best gate_up %s %.4f down %s %.4f sum_ms %.4f of_dense %.3f\n", cases[ci].name,
                   moe_gemm_path_name((moe_gemm_path_t)best_in), t_in[best_in],
                   moe_gemm_path_name((moe_gemm_path_t)best_down), t_down[best_down],
                   t_in[best_in] + t_down[best_down], t_dense / (t_in[best_in] + t_down[best_down]));
        if (!only_path) { /* what the backend would choose for these groups (the host knows their sizes) */
            int active = 0;
            for (int e = 0; e < E; e++) active += offset[e + 1] > offset[e];
            a.path = moe_gemm_path_choose((double)M / (active ? active : 1), true);
            float tm = time_ms(ffn_work, &a);
            printf("g1 %s mode chosen:%s ms %.4f tflops %.1f of_dense %.3f weight_floor_ms %.4f of_weight_floor %.3f\n",
                   cases[ci].name, moe_gemm_path_name(a.path), tm, flops / (tm * 1e-3) / 1e12, t_dense / tm, floor_ms,
                   floor_ms / tm);
        }
        for (int e = 0; e < E; e++) CK(cudaFree(host_gu[e]));
        CK(cudaFree((void *)a.w.gate_up));
        CK(cudaFree((void *)a.w.down));
        CK(cudaFree(a.offset));
        CK(cudaFree(a.x));
        CK(cudaFree(a.gu));
        CK(cudaFree(a.act));
        CK(cudaFree(a.y));
        free(offset), free(host_gu), free(host_down);
    }
    moe_ggemm_destroy(gg);
    moe_gemm_destroy(gemm);
    CK(cudaDeviceSynchronize());
    return 0;
}
