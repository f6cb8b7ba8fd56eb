/* bench_gemm_gpu: G1, the grouped SwiGLU expert GEMMs (gate/up, SwiGLU, down) against dense cuBLAS at
 * the same FLOPs, measured in the same process, plus the card's two ceilings: the dense bf16 GEMM rate
 * (8192^3) and the device copy bandwidth (bytes read + written).
 *
 * Cases (name, local experts, tokens per expert, d, f): Mixtral-8x7B layer 8 x 2048, d 4096, f 14336;
 * DeepSeek-V3 rank 32 x 256 and 32 x 64, d 7168, f 2048. The dense baseline runs all E*T tokens
 * through one expert's weights: the same FLOPs in two large GEMMs. Times are medians of REPS runs
 * timed with CUDA events after a warm-up, on seeded random bf16 data (never zeros). For the 64-token
 * case, the floor is the expert weights' bytes over the measured copy bandwidth.
 *
 * Output: one line per measurement, `key value` pairs, grep-able by scripts/device_run.sh.
 *   bench_gemm_gpu [REPS] */
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>

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

typedef struct {
    moe_gemm_h gemm;
    moe_bf16_t *x, *wgu, *wd, *gu, *act, *y;
    int *offset;
    int groups, d, f;
} ffn_arg_t;
static void ffn_work(void *arg)
{
    ffn_arg_t *a = arg;
    OK(moe_expert_ffn_grouped_cuda(a->gemm, a->x, a->wgu, a->wd, a->offset, a->groups, a->d, a->f, a->gu,
                                   a->act, a->y));
}

typedef struct {
    ffn_arg_t a;
    int stride;
} padded_arg_t;
static void padded_work(void *arg)
{
    padded_arg_t *p = arg;
    OK(moe_expert_ffn_padded_cuda(p->a.gemm, p->a.x, p->a.wgu, p->a.wd, p->a.groups, p->stride, p->a.d, p->a.f,
                                  p->a.gu, p->a.act, p->a.y));
}

int main(int argc, char **argv)
{
    if (argc > 1) reps = atoi(argv[1]);
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
    OK(moe_gemm_create(stream, MOE_GEMM_LOOP, &gemm));

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

    struct { const char *name; int experts, tokens, d, f; } cases[] = {
        {"mixtral_8x2048", 8, 2048, 4096, 14336},
        {"dsv3_32x256", 32, 256, 7168, 2048},
        {"dsv3_32x64", 32, 64, 7168, 2048},
    };
    for (int ci = 0; ci < 3; ci++) {
        const int E = cases[ci].experts, T = cases[ci].tokens, d = cases[ci].d, f = cases[ci].f;
        const size_t M = (size_t)E * T;
        ffn_arg_t a = {.gemm = gemm, .groups = E, .d = d, .f = f};
        a.x = dev_random(M * d, 1.0f, 10 + ci);
        a.wgu = dev_random((size_t)E * 2 * f * d, 1.0f / 64, 20 + ci);
        a.wd = dev_random((size_t)E * d * f, 1.0f / 64, 30 + ci);
        CK(cudaMalloc((void **)&a.gu, 2 * M * 2 * f));
        CK(cudaMalloc((void **)&a.act, 2 * M * f));
        CK(cudaMalloc((void **)&a.y, 2 * M * d));
        a.offset = malloc(sizeof(int) * (E + 1));
        for (int e = 0; e <= E; e++) a.offset[e] = e * T;
        const double flops = 2.0 * M * d * 3.0 * f;
        const double weight_bytes = 2.0 * E * 3.0 * f * d;
        /* dense: every token through expert 0, one group */
        int dense_offset[2] = {0, (int)M};
        ffn_arg_t dense = a;
        dense.groups = 1;
        dense.offset = dense_offset;
        moe_gemm_set_mode(gemm, MOE_GEMM_LOOP);
        float t_dense = time_ms(ffn_work, &dense);
        printf("g1 %s mode dense ms %.4f tflops %.1f\n", cases[ci].name, t_dense, flops / (t_dense * 1e-3) / 1e12);
        static const char *const names[] = {"loop", "grouped", "streams", "auto"};
        for (int mode = 0; mode < 4; mode++) {
            moe_gemm_set_mode(gemm, (moe_gemm_mode_t)mode);
            float tm = time_ms(ffn_work, &a);
            printf("g1 %s mode %s ms %.4f tflops %.1f of_dense %.3f weight_floor_ms %.4f of_weight_floor %.3f\n",
                   cases[ci].name, names[mode], tm, flops / (tm * 1e-3) / 1e12, t_dense / tm,
                   weight_bytes / copy_bw * 1e3, weight_bytes / copy_bw * 1e3 / tm);
        }
        {   /* padded layout; equal groups here, so no padding rows */
            float tp = 0;
            padded_arg_t pa = {a, T};
            tp = time_ms(padded_work, &pa);
            printf("g1 %s mode padded ms %.4f tflops %.1f of_dense %.3f weight_floor_ms %.4f of_weight_floor %.3f\n",
                   cases[ci].name, tp, flops / (tp * 1e-3) / 1e12, t_dense / tp, weight_bytes / copy_bw * 1e3,
                   weight_bytes / copy_bw * 1e3 / tp);
        }
        CK(cudaFree(a.x));
        CK(cudaFree(a.wgu));
        CK(cudaFree(a.wd));
        CK(cudaFree(a.gu));
        CK(cudaFree(a.act));
        CK(cudaFree(a.y));
        free(a.offset);
    }
    moe_gemm_destroy(gemm);
    CK(cudaDeviceSynchronize());
    return 0;
}
