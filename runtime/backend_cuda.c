/* backend_cuda: the stages on one GPU (see backend.h), bf16 storage with fp32 accumulation.
 *
 * Memory: the rank's weights live on the device in one allocation cut by offsets: norms, routers and
 * score biases in fp32 (the router's choices then match the cpu backend's), expert and shared-expert
 * matrices in bf16. The residual stream x and the layer output `out` are fp32; the normed states h
 * are kept in bf16 (expert input, wire rows) and fp32 (router input). Rows on the wire are bf16
 * (elem_bytes 2).
 *
 * Streams: every stage is queued on one compute stream. With the NCCL transport the chunk buffers
 * are device memory and the transport orders itself against this stream (comm.h,
 * moe_comm_set_stream): the host queues a whole layer without waiting, and NCCL's stream overlaps the
 * expert GEMMs and shared experts of the other chunks. With the MPI transport (several ranks may
 * share a GPU) the chunk buffers are pinned, mapped host memory, which kernels read and write
 * directly; stages that produce rows for MPI synchronise the stream before returning.
 *
 * Experts: received rows are gathered into expert order, run through the grouped SwiGLU GEMMs
 * (kernels, MOE_GEMM_AUTO: per-expert cuBLAS GEMMs, on side streams when the groups are small;
 * docs/cuda.md), and combined per received row (its experts' outputs weighted, summed in fp32,
 * rounded once into the bf16 partial row; no atomics, so the sum order is fixed). route() and residual()
 * synchronise: the first because the host needs the routing, the second so that a layer's host time
 * is its device time. */
#include <hwloc.h>
#include <hwloc/cudart.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/runtime-impl.h"

/* A pinned host buffer for index uploads: the host fills it only once the previous copy out of it
 * has run (its event), so that uploads are truly asynchronous (a pageable source can make
 * cudaMemcpyAsync wait for the stream). */
typedef struct {
    void *host;
    size_t cap;
    cudaEvent_t done;
    bool pending;
} cuda_staging_t;

typedef struct {
    void *send, *recv, *partial, *back; /* bf16 rows: device, or pinned host (MPI transport) */
    int cap_send, cap_recv;
} cuda_chunk_t;

typedef struct {
    const moe_config_t *config;
    const moe_weights_t *w;
    int d, k, f, fs, E, layers, max_tokens, chunks;
    bool host_rows; /* MPI transport: chunk buffers in pinned host memory */
    int device;
    cudaStream_t stream;
    moe_gemm_h gemm;
    /* weights (one allocation) */
    void *wblock;
    float *norm, *router, *bias, *shared_gate;
    moe_bf16_t *expert_gate_up, *expert_down, *shared_gate_up, *shared_down;
    /* activations (one allocation) */
    void *ablock;
    float *x, *out, *h32, *logits, *route_w;
    int32_t *route_ids;
    moe_bf16_t *h, *shared_gu, *shared_act, *shared_y;
    /* expert scratch, grown to the largest chunk */
    int cap_entries, cap_rows;
    void *eblock;
    moe_bf16_t *e_in, *e_gu, *e_act, *e_y;
    int32_t *e_pack;  /* device: received row [entries], weight bits [entries], entry of each
                         received row grouped by row [entries], row offsets [n_recv + 1] */
    cuda_staging_t *pack_stage; /* [chunks] the same, built on the host and uploaded in one copy */
    cuda_staging_t *rows_stage; /* [2 chunks] permute, unpermute rows of each chunk */
    int *host_offset; /* [slots + 1] */
    int cap_slots;
    /* index upload of permute/unpermute per chunk */
    int32_t **rows_dev;
    int *cap_rows_dev;
    cuda_chunk_t *chunk;
} cuda_state_t;

/* ---------------------------------------------------------------- device choice */

moe_status_t moe_cuda_use_device(int device)
{
    moe_status_t status = MOE_STATUS_OK;
    MOE_CHECK_CUDA(cudaSetDevice(device), fail);
fail:
    return status;
}

moe_status_t moe_cuda_select_device(MPI_Comm comm, int *device)
{
    moe_status_t status = MOE_STATUS_OK;
    MPI_Comm local = MPI_COMM_NULL;
    int local_rank = 0, local_size = 1, count = 0;
    MOE_CHECK_MPI(MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &local), fail);
    MPI_Comm_rank(local, &local_rank);
    MPI_Comm_size(local, &local_size);
    MPI_Comm_free(&local);
    MOE_CHECK_CUDA(cudaGetDeviceCount(&count), fail);
    if (count < 1) MOE_FAIL(MOE_STATUS_CUDA_ERROR, fail, "cuda backend: no CUDA device");
    *device = local_rank % count;
    MOE_CHECK_CUDA(cudaSetDevice(*device), fail);
    /* One rank per GPU: bind it to the cores near its GPU. Shared GPUs (tests) keep the launcher's
     * binding. A failed binding costs speed, not correctness: warn and go on. */
    if (local_size <= count) {
        hwloc_topology_t topo;
        if (hwloc_topology_init(&topo) == 0) {
            hwloc_cpuset_t set = hwloc_bitmap_alloc();
            if (hwloc_topology_load(topo) != 0 || !set ||
                hwloc_cudart_get_device_cpuset(topo, *device, set) != 0 ||
                hwloc_set_cpubind(topo, set, HWLOC_CPUBIND_PROCESS) != 0)
                moe_warn("cuda backend: could not bind to the cores near GPU %d", *device);
            hwloc_bitmap_free(set);
            hwloc_topology_destroy(topo);
        }
    }
    moe_debug("cuda backend: local rank %d of %d on GPU %d of %d", local_rank, local_size, *device,
              count);
fail:
    return status;
}

/* ---------------------------------------------------------------- create / destroy */

static void free_rows(cuda_state_t *s, void *p)
{
    if (!p) return;
    if (s->host_rows)
        cudaFreeHost(p);
    else
        cudaFree(p);
}

static void cuda_destroy(void *state)
{
    cuda_state_t *s = state;
    if (!s) return;
    if (s->stream) cudaStreamSynchronize(s->stream);
    for (int c = 0; s->chunk && c < s->chunks; c++) {
        free_rows(s, s->chunk[c].send);
        free_rows(s, s->chunk[c].recv);
        free_rows(s, s->chunk[c].partial);
        free_rows(s, s->chunk[c].back);
    }
    for (int c = 0; s->rows_dev && c < s->chunks; c++) cudaFree(s->rows_dev[c]);
    free(s->rows_dev);
    free(s->cap_rows_dev);
    free(s->chunk);
    cudaFree(s->eblock);
    cudaFree(s->ablock);
    cudaFree(s->wblock);
    free(s->host_offset);
    for (int i = 0; s->rows_stage && i < 3 * s->chunks; i++) {
        cuda_staging_t *st = i < s->chunks ? &s->pack_stage[i] : &s->rows_stage[i - s->chunks];
        if (st->host) cudaFreeHost(st->host);
        if (st->done) cudaEventDestroy(st->done);
    }
    free(s->pack_stage);
    free(s->rows_stage);
    moe_gemm_destroy(s->gemm);
    if (s->stream) cudaStreamDestroy(s->stream);
    free(s);
}

/* Host fp32 -> device bf16, through a device staging buffer. */
static moe_status_t upload_bf16(const float *src, size_t n, moe_bf16_t *dst, float *stage, size_t stage_n,
                                cudaStream_t stream)
{
    moe_status_t status = MOE_STATUS_OK;
    for (size_t off = 0; off < n; off += stage_n) {
        size_t m = n - off < stage_n ? n - off : stage_n;
        MOE_CHECK_CUDA(cudaMemcpyAsync(stage, src + off, sizeof(float) * m, cudaMemcpyHostToDevice, stream),
                       fail);
        MOE_CHECK(moe_f32_to_bf16_cuda(stage, m, dst + off, stream), fail);
        MOE_CHECK_CUDA(cudaStreamSynchronize(stream), fail); /* the stage is reused */
    }
fail:
    return status;
}

/* Cut `bytes` from a block cursor, 256-byte aligned. */
static void *cut(char **cursor, size_t bytes)
{
    void *p = *cursor;
    *cursor += (bytes + 255) / 256 * 256;
    return p;
}

static moe_status_t cuda_create(const void *config, const void *weights, int max_tokens, int chunks,
                                void **state)
{
    moe_status_t status = MOE_STATUS_OK;
    const moe_config_t *cfg = config;
    const moe_weights_t *w = weights;
    float *stage = NULL;
    cuda_state_t *s = calloc(1, sizeof *s);
    MOE_CHECK_ALLOC(s, fail);
    s->config = cfg;
    s->w = w;
    s->d = w->d, s->f = w->f, s->fs = w->fs, s->E = w->experts, s->layers = w->layers;
    s->k = cfg->model.top_k;
    s->max_tokens = max_tokens;
    s->chunks = chunks;
    s->host_rows = cfg->run.transport == MOE_TRANSPORT_MPI;
    MOE_CHECK_CUDA(cudaGetDevice(&s->device), fail_free);
    MOE_CHECK_CUDA(cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking), fail_free);
    MOE_CHECK(moe_gemm_create(s->stream, MOE_GEMM_AUTO, &s->gemm), fail_free);
    s->chunk = calloc((size_t)chunks, sizeof(cuda_chunk_t));
    s->rows_dev = calloc((size_t)chunks, sizeof(int32_t *));
    s->cap_rows_dev = calloc((size_t)chunks, sizeof(int));
    MOE_CHECK_ALLOC(s->chunk, fail_free);
    MOE_CHECK_ALLOC(s->rows_dev, fail_free);
    MOE_CHECK_ALLOC(s->cap_rows_dev, fail_free);
    s->pack_stage = calloc((size_t)chunks, sizeof(cuda_staging_t));
    s->rows_stage = calloc((size_t)2 * chunks, sizeof(cuda_staging_t));
    MOE_CHECK_ALLOC(s->pack_stage, fail_free);
    MOE_CHECK_ALLOC(s->rows_stage, fail_free);

    /* weights */
    const size_t L = (size_t)s->layers, d = (size_t)s->d, f = (size_t)s->f, fs = (size_t)s->fs,
                 E = (size_t)s->E;
    size_t slots = 0;
    for (size_t l = 0; l < L; l++) slots += (size_t)w->local_count[l];
    const size_t n_gate = w->shared_gate ? L * d : 0;
    const size_t n_norm = L * d, n_router = L * E * d, n_bias = w->score_bias ? L * E : 0,
                 n_sgu = L * 2 * fs * d, n_sd = L * d * fs, n_egu = slots * 2 * f * d, n_ed = slots * d * f;
    size_t wbytes = 256 * 9 + 4 * (n_norm + n_router + n_bias + n_gate) + 2 * (n_sgu + n_sd + n_egu + n_ed);
    MOE_CHECK_CUDA(cudaMalloc(&s->wblock, wbytes), fail_free);
    char *cur = s->wblock;
    s->norm = cut(&cur, 4 * n_norm);
    s->router = cut(&cur, 4 * n_router);
    s->bias = n_bias ? cut(&cur, 4 * n_bias) : NULL;
    s->shared_gate = n_gate ? cut(&cur, 4 * n_gate) : NULL;
    s->shared_gate_up = cut(&cur, 2 * n_sgu);
    s->shared_down = cut(&cur, 2 * n_sd);
    s->expert_gate_up = cut(&cur, 2 * n_egu);
    s->expert_down = cut(&cur, 2 * n_ed);
    MOE_CHECK_CUDA(cudaMemcpy(s->norm, w->norm, 4 * n_norm, cudaMemcpyHostToDevice), fail_free);
    MOE_CHECK_CUDA(cudaMemcpy(s->router, w->router, 4 * n_router, cudaMemcpyHostToDevice), fail_free);
    if (n_bias) MOE_CHECK_CUDA(cudaMemcpy(s->bias, w->score_bias, 4 * n_bias, cudaMemcpyHostToDevice), fail_free);
    if (n_gate)
        MOE_CHECK_CUDA(cudaMemcpy(s->shared_gate, w->shared_gate, 4 * n_gate, cudaMemcpyHostToDevice), fail_free);
    const size_t stage_n = 16u << 20;
    MOE_CHECK_CUDA(cudaMalloc((void **)&stage, 4 * stage_n), fail_free);
    if (fs) {
        MOE_CHECK(upload_bf16(w->shared_gate_up, n_sgu, s->shared_gate_up, stage, stage_n, s->stream), fail_free);
        MOE_CHECK(upload_bf16(w->shared_down, n_sd, s->shared_down, stage, stage_n, s->stream), fail_free);
    }
    for (size_t i = 0; i < slots; i++) { /* host experts are allocated one by one (model.c) */
        MOE_CHECK(upload_bf16(w->gate_up[i], 2 * f * d, s->expert_gate_up + i * 2 * f * d, stage, stage_n,
                              s->stream), fail_free);
        MOE_CHECK(upload_bf16(w->down[i], d * f, s->expert_down + i * d * f, stage, stage_n, s->stream),
                  fail_free);
    }
    cudaFree(stage);
    stage = NULL;

    /* activations */
    const size_t T = (size_t)max_tokens;
    size_t abytes = 256 * 11 + 4 * (3 * T * d + T * E + T * s->k) + 4 * T * s->k + 2 * T * d +
                    2 * (T * 3 * fs) + (n_gate ? 2 * T * d : 0);
    MOE_CHECK_CUDA(cudaMalloc(&s->ablock, abytes), fail_free);
    cur = s->ablock;
    s->x = cut(&cur, 4 * T * d);
    s->out = cut(&cur, 4 * T * d);
    s->h32 = cut(&cur, 4 * T * d);
    s->logits = cut(&cur, 4 * T * E);
    s->route_w = cut(&cur, 4 * T * s->k);
    s->route_ids = cut(&cur, 4 * T * s->k);
    s->h = cut(&cur, 2 * T * d);
    s->shared_gu = cut(&cur, 2 * T * 2 * fs);
    s->shared_act = cut(&cur, 2 * T * fs);
    s->shared_y = n_gate ? cut(&cur, 2 * T * d) : NULL;
    MOE_CHECK_CUDA(cudaMemset(s->out, 0, 4 * T * d), fail_free);
    *state = s;
    return MOE_STATUS_OK;
fail_free:
    if (stage) cudaFree(stage);
    cuda_destroy(s);
fail:
    return status;
}

/* ---------------------------------------------------------------- stages */

static moe_status_t cuda_load(void *state, const float *x, int n)
{
    moe_status_t status = MOE_STATUS_OK;
    cuda_state_t *s = state;
    size_t bytes = sizeof(float) * (size_t)n * s->d;
    MOE_CHECK_CUDA(cudaMemcpyAsync(s->x, x, bytes, cudaMemcpyHostToDevice, s->stream), fail);
    MOE_CHECK_CUDA(cudaMemsetAsync(s->out, 0, bytes, s->stream), fail);
fail:
    return status;
}

static moe_status_t cuda_route(void *state, int layer, int n, bool use_router, int32_t *ids,
                               float *weights)
{
    moe_status_t status = MOE_STATUS_OK;
    cuda_state_t *s = state;
    const int d = s->d, k = s->k;
    MOE_CHECK(moe_rmsnorm_cuda(s->x, s->norm + (size_t)layer * d, n, d, s->config->model.norm_eps,
                               use_router || s->shared_gate ? s->h32 : NULL, s->h, s->stream), fail);
    if (use_router && n > 0) {
        moe_router_params_t p = moe_model_router_params(s->config, s->w, layer);
        p.bias = p.bias ? s->bias + (size_t)layer * s->E : NULL;
        MOE_CHECK(moe_router_logits_cuda(moe_gemm_cublas(s->gemm), s->h32,
                                         s->router + (size_t)layer * s->E * d, n, d, s->E, s->logits),
                  fail);
        MOE_CHECK(moe_router_topk_cuda(s->logits, n, &p, s->route_ids, s->route_w, s->stream), fail);
        MOE_CHECK_CUDA(cudaMemcpyAsync(ids, s->route_ids, sizeof(int32_t) * n * k, cudaMemcpyDeviceToHost,
                                       s->stream), fail);
        MOE_CHECK_CUDA(cudaMemcpyAsync(weights, s->route_w, sizeof(float) * n * k, cudaMemcpyDeviceToHost,
                                       s->stream), fail);
    }
    /* Also orders this layer's transfers after everything of the previous layer (MPI transport). */
    MOE_CHECK_CUDA(cudaStreamSynchronize(s->stream), fail);
fail:
    return status;
}

static moe_status_t alloc_rows(cuda_state_t *s, void **p, size_t rows)
{
    moe_status_t status = MOE_STATUS_OK;
    size_t bytes = rows * (size_t)s->d * 2 + 16;
    if (s->host_rows)
        MOE_CHECK_CUDA(cudaHostAlloc(p, bytes, cudaHostAllocMapped | cudaHostAllocPortable), fail);
    else
        MOE_CHECK_CUDA(cudaMalloc(p, bytes), fail);
fail:
    return status;
}

/* Grow a pair of row buffers to at least `rows` (doubling). */
static moe_status_t grow_pair(cuda_state_t *s, void **a, void **b, int *cap, int rows)
{
    moe_status_t status = MOE_STATUS_OK;
    if (rows <= *cap && *a) return MOE_STATUS_OK;
    int cap_new = *cap > 0 ? *cap : 64;
    while (cap_new < rows) cap_new *= 2;
    /* The old buffers may be in use on our stream or the transport's. */
    MOE_CHECK_CUDA(cudaDeviceSynchronize(), fail);
    free_rows(s, *a);
    free_rows(s, *b);
    *a = *b = NULL;
    *cap = 0;
    MOE_CHECK(alloc_rows(s, a, (size_t)cap_new), fail);
    MOE_CHECK(alloc_rows(s, b, (size_t)cap_new), fail);
    *cap = cap_new;
fail:
    return status;
}

static moe_status_t cuda_chunk_buffers(void *state, int chunk, int n_send, int n_recv,
                                       moe_chunk_buffers_t *out)
{
    moe_status_t status = MOE_STATUS_OK;
    cuda_state_t *s = state;
    cuda_chunk_t *c = &s->chunk[chunk];
    MOE_CHECK(grow_pair(s, &c->send, &c->back, &c->cap_send, n_send), fail);
    MOE_CHECK(grow_pair(s, &c->recv, &c->partial, &c->cap_recv, n_recv), fail);
    *out = (moe_chunk_buffers_t){c->send, c->recv, c->partial, c->back};
fail:
    return status;
}

/* Host memory of at least `bytes` to fill, once the previous upload from it has run. */
static moe_status_t staging_get(cuda_staging_t *st, size_t bytes, void **out)
{
    moe_status_t status = MOE_STATUS_OK;
    if (!st->done) MOE_CHECK_CUDA(cudaEventCreateWithFlags(&st->done, cudaEventDisableTiming), fail);
    if (st->pending) MOE_CHECK_CUDA(cudaEventSynchronize(st->done), fail);
    st->pending = false;
    if (bytes > st->cap) {
        size_t cap = st->cap ? st->cap : 4096;
        while (cap < bytes) cap *= 2;
        if (st->host) cudaFreeHost(st->host);
        st->host = NULL;
        st->cap = 0;
        MOE_CHECK_CUDA(cudaHostAlloc(&st->host, cap, cudaHostAllocDefault), fail);
        st->cap = cap;
    }
    *out = st->host;
fail:
    return status;
}

/* Copy `bytes` of the staging buffer to dst on the stream. */
static moe_status_t staging_put(cuda_staging_t *st, void *dst, size_t bytes, cudaStream_t stream)
{
    moe_status_t status = MOE_STATUS_OK;
    MOE_CHECK_CUDA(cudaMemcpyAsync(dst, st->host, bytes, cudaMemcpyHostToDevice, stream), fail);
    MOE_CHECK_CUDA(cudaEventRecord(st->done, stream), fail);
    st->pending = true;
fail:
    return status;
}

/* Upload chunk c's host row indices to its device array (the copy is staged before returning). */
static moe_status_t upload_rows(cuda_state_t *s, int c, bool back, const int32_t *rows, int n)
{
    moe_status_t status = MOE_STATUS_OK;
    if (n > s->cap_rows_dev[c]) {
        int cap = s->cap_rows_dev[c] > 0 ? s->cap_rows_dev[c] : 256;
        while (cap < n) cap *= 2;
        MOE_CHECK_CUDA(cudaStreamSynchronize(s->stream), fail);
        cudaFree(s->rows_dev[c]);
        s->rows_dev[c] = NULL;
        s->cap_rows_dev[c] = 0;
        MOE_CHECK_CUDA(cudaMalloc((void **)&s->rows_dev[c], sizeof(int32_t) * cap), fail);
        s->cap_rows_dev[c] = cap;
    }
    void *host;
    cuda_staging_t *st = &s->rows_stage[2 * c + back];
    MOE_CHECK(staging_get(st, sizeof(int32_t) * n, &host), fail);
    memcpy(host, rows, sizeof(int32_t) * n);
    MOE_CHECK(staging_put(st, s->rows_dev[c], sizeof(int32_t) * n, s->stream), fail);
fail:
    return status;
}

static moe_status_t cuda_permute(void *state, int chunk, const int32_t *rows, int n_send)
{
    moe_status_t status = MOE_STATUS_OK;
    cuda_state_t *s = state;
    if (n_send > 0) {
        MOE_CHECK(upload_rows(s, chunk, false, rows, n_send), fail);
        MOE_CHECK(moe_gather_rows_cuda(s->h, s->d, s->rows_dev[chunk], n_send, s->chunk[chunk].send,
                                       s->stream), fail);
    }
    if (s->host_rows) MOE_CHECK_CUDA(cudaStreamSynchronize(s->stream), fail);
fail:
    return status;
}

/* Expert scratch for `entries` (row, expert) pairs of `rows` received rows. */
static moe_status_t grow_experts(cuda_state_t *s, int entries, int rows, int slots)
{
    moe_status_t status = MOE_STATUS_OK;
    if (slots + 1 > s->cap_slots) {
        free(s->host_offset);
        s->host_offset = malloc(sizeof(int) * (size_t)(slots + 1));
        s->cap_slots = s->host_offset ? slots + 1 : 0;
        MOE_CHECK_ALLOC(s->host_offset, fail);
    }
    if (entries <= s->cap_entries && rows <= s->cap_rows && s->eblock) return MOE_STATUS_OK;
    int ce = s->cap_entries > 0 ? s->cap_entries : 256, cr = s->cap_rows > 0 ? s->cap_rows : 256;
    while (ce < entries) ce *= 2;
    while (cr < rows) cr *= 2;
    MOE_CHECK_CUDA(cudaStreamSynchronize(s->stream), fail);
    cudaFree(s->eblock);
    s->eblock = NULL;
    s->cap_entries = s->cap_rows = 0;
    const size_t E_ = (size_t)ce, R = (size_t)cr, d = (size_t)s->d, f = (size_t)s->f;
    const size_t pack = 3 * E_ + R + 1;
    size_t bytes = 256 * 8 + 2 * E_ * (d + 2 * f + f + d) + 4 * pack;
    MOE_CHECK_CUDA(cudaMalloc(&s->eblock, bytes), fail);
    char *cur = s->eblock;
    s->e_in = cut(&cur, 2 * E_ * d);
    s->e_gu = cut(&cur, 2 * E_ * 2 * f);
    s->e_act = cut(&cur, 2 * E_ * f);
    s->e_y = cut(&cur, 2 * E_ * d);
    s->e_pack = cut(&cur, 4 * pack);
    s->cap_entries = ce;
    s->cap_rows = cr;
fail:
    return status;
}

/* Padded layout (one strided-batched GEMM per projection) when the experts are small on average
 * and evenly loaded enough that padding every expert to the largest costs at most a quarter more
 * rows; else per-expert GEMMs (MOE_GEMM_AUTO). The numbers behind this are in docs/cuda.md. */
static int padded_stride(const moe_expert_groups_t *g)
{
    const int entries = g->offset[g->slots];
    int largest = 0, active = 0;
    for (int e = 0; e < g->slots; e++) {
        int m = g->offset[e + 1] - g->offset[e];
        largest = m > largest ? m : largest;
        active += m > 0;
    }
    if (active < 2 || entries >= MOE_GEMM_AUTO_ROWS * active) return 0;
    largest = (largest + 7) / 8 * 8;
    return (int64_t)largest * g->slots * 4 <= (int64_t)entries * 5 ? largest : 0;
}

static moe_status_t cuda_experts(void *state, int layer, int chunk, int n_recv,
                                 const moe_expert_groups_t *g, moe_progress_fn progress,
                                 void *progress_arg)
{
    moe_status_t status = MOE_STATUS_OK;
    cuda_state_t *s = state;
    cuda_chunk_t *c = &s->chunk[chunk];
    const int d = s->d, f = s->f, entries = g->offset[g->slots];
    if (n_recv > 0) {
        const int stride = padded_stride(g);
        const int n_dst = stride ? stride * g->slots : entries; /* expert-layout rows */
        const double t0 = moe_now();
        MOE_CHECK(grow_experts(s, n_dst, n_recv, g->slots), fail);
        memcpy(s->host_offset, g->offset, sizeof(int) * (size_t)(g->slots + 1));
        /* One upload: the received row of each expert-layout row (-1: padding), then for the
         * combine, grouped by received row (a counting sort), each entry's expert-layout row and
         * weight, and the row offsets. */
        const size_t pack = (size_t)n_dst + 2 * (size_t)entries + n_recv + 1;
        void *host;
        MOE_CHECK(staging_get(&s->pack_stage[chunk], 4 * pack, &host), fail);
        int32_t *src = host, *pos = src + n_dst, *wbits = pos + entries, *row_offset = wbits + entries;
        float wf;
        memset(row_offset, 0, sizeof(int32_t) * (size_t)(n_recv + 1));
        for (int i = 0; i < entries; i++) row_offset[g->row[i] + 1]++;
        for (int r = 0; r < n_recv; r++) row_offset[r + 1] += row_offset[r];
        if (stride)
            for (int i = 0; i < n_dst; i++) src[i] = -1;
        for (int e = 0; e < g->slots; e++)
            for (int i = g->offset[e]; i < g->offset[e + 1]; i++) {
                const int at = stride ? e * stride + (i - g->offset[e]) : i;
                const int slot = row_offset[g->row[i]]++;
                src[at] = g->row[i];
                pos[slot] = at;
                wf = g->weight[i];
                memcpy(&wbits[slot], &wf, 4);
            }
        for (int r = n_recv; r > 0; r--) row_offset[r] = row_offset[r - 1]; /* back to starts */
        row_offset[0] = 0;
        const double t1 = moe_now();
        MOE_CHECK(staging_put(&s->pack_stage[chunk], s->e_pack, 4 * pack, s->stream), fail);
        const int32_t *d_src = s->e_pack, *d_pos = s->e_pack + n_dst,
                      *d_row_offset = s->e_pack + n_dst + 2 * (size_t)entries;
        const float *d_weight = (const float *)(s->e_pack + n_dst + entries);
        MOE_CHECK(moe_gather_rows_cuda(c->recv, d, d_src, n_dst, s->e_in, s->stream), fail);
        const moe_bf16_t *wgu = s->expert_gate_up + (size_t)s->w->local_offset[layer] * 2 * f * d;
        const moe_bf16_t *wd = s->expert_down + (size_t)s->w->local_offset[layer] * (size_t)d * f;
        if (stride)
            MOE_CHECK(moe_expert_ffn_padded_cuda(s->gemm, s->e_in, wgu, wd, g->slots, stride, d, f, s->e_gu,
                                                 s->e_act, s->e_y), fail);
        else
            MOE_CHECK(moe_expert_ffn_grouped_cuda(s->gemm, s->e_in, wgu, wd, s->host_offset, g->slots, d, f,
                                                  s->e_gu, s->e_act, s->e_y), fail);
        const double t2 = moe_now();
        MOE_CHECK(moe_combine_rows_cuda(s->e_y, d_row_offset, d_pos, d_weight, n_recv, d, c->partial,
                                        s->stream), fail);
        /* host time only: building the upload, then queueing the GEMMs */
        moe_debug("cuda experts: layer %d chunk %d: %d rows to %d experts, %s; host %.3f + %.3f ms",
                  layer, chunk, entries, g->slots, stride ? "padded strided-batched" : "per-expert GEMMs",
                  1e3 * (t1 - t0), 1e3 * (t2 - t1));
    }
    if (s->host_rows) MOE_CHECK_CUDA(cudaStreamSynchronize(s->stream), fail);
    if (progress) progress(progress_arg);
fail:
    return status;
}

static moe_status_t cuda_shared(void *state, int layer, int begin, int end)
{
    moe_status_t status = MOE_STATUS_OK;
    cuda_state_t *s = state;
    const int d = s->d, fs = s->fs, n = end - begin;
    if (fs == 0 || n <= 0) return MOE_STATUS_OK;
    const moe_bf16_t *h = s->h + (size_t)begin * d;
    MOE_CHECK(moe_gemm_cuda(s->gemm, h, s->shared_gate_up + (size_t)layer * 2 * fs * d, n, 2 * fs, d,
                            s->shared_gu, false), fail);
    MOE_CHECK(moe_swiglu_cuda(s->shared_gu, n, fs, s->shared_act, s->stream), fail);
    if (s->shared_gate) { /* Qwen2-MoE: out += sigmoid(h . w_gate) * y, h in fp32 as on the cpu */
        MOE_CHECK(moe_gemm_cuda(s->gemm, s->shared_act, s->shared_down + (size_t)layer * d * fs, n, d, fs,
                                s->shared_y, false), fail);
        MOE_CHECK(moe_gated_add_cuda(s->shared_y, s->h32 + (size_t)begin * d, s->shared_gate + (size_t)layer * d,
                                     n, d, s->out + (size_t)begin * d, s->stream), fail);
    } else { /* out += y, straight from the GEMM in fp32 */
        MOE_CHECK(moe_gemm_cuda(s->gemm, s->shared_act, s->shared_down + (size_t)layer * d * fs, n, d, fs,
                                s->out + (size_t)begin * d, true), fail);
    }
fail:
    return status;
}

static moe_status_t cuda_unpermute(void *state, int chunk, const int32_t *rows, int n_send)
{
    moe_status_t status = MOE_STATUS_OK;
    cuda_state_t *s = state;
    if (n_send == 0) return MOE_STATUS_OK;
    MOE_CHECK(upload_rows(s, chunk, true, rows, n_send), fail);
    MOE_CHECK(moe_scatter_add_cuda(s->chunk[chunk].back, s->rows_dev[chunk], NULL, n_send, s->d, s->out,
                                   s->stream), fail);
fail:
    return status;
}

static moe_status_t cuda_residual(void *state, int n)
{
    moe_status_t status = MOE_STATUS_OK;
    cuda_state_t *s = state;
    MOE_CHECK(moe_residual_cuda(s->x, s->out, (size_t)n * s->d, s->stream), fail);
    MOE_CHECK_CUDA(cudaStreamSynchronize(s->stream), fail);
fail:
    return status;
}

static moe_status_t cuda_store(void *state, float *x, int n)
{
    moe_status_t status = MOE_STATUS_OK;
    cuda_state_t *s = state;
    MOE_CHECK_CUDA(cudaMemcpyAsync(x, s->x, sizeof(float) * (size_t)n * s->d, cudaMemcpyDeviceToHost,
                                   s->stream), fail);
    MOE_CHECK_CUDA(cudaStreamSynchronize(s->stream), fail);
fail:
    return status;
}

void *moe_backend_cuda_stream(void *state) { return ((cuda_state_t *)state)->stream; }

const moe_backend_t moe_backend_cuda = {
    .name = "cuda",
    .elem_bytes = 2,
    .create = cuda_create,
    .destroy = cuda_destroy,
    .load = cuda_load,
    .route = cuda_route,
    .chunk_buffers = cuda_chunk_buffers,
    .permute = cuda_permute,
    .experts = cuda_experts,
    .shared = cuda_shared,
    .unpermute = cuda_unpermute,
    .residual = cuda_residual,
    .store = cuda_store,
};
