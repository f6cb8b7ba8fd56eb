/* backend_cuda: the stages on one GPU (see backend.h), bf16 storage with fp32 accumulation, and its
 * store: device memory.
 *
 * Store. Weights live on the device only: the dense part in one allocation (norms, routers, score
 * biases and the shared gate in fp32, so that expert choices match the cpu backend's; shared experts
 * bf16), each expert slot in one allocation of bf16. Seeded weights are computed on the device by the
 * host's rule (kernels.h); checkpoint tensors go from the mapped file through a pinned buffer to the
 * device as the bytes they are on disk (fp32, bf16, fp16, fp8 with scales) and are converted there,
 * in pieces, two pieces in flight; nothing of a model is kept on the host.
 *
 * Stages. The data path stays on the device: routing (the router, or routing given by the host,
 * copied up through pinned memory), the dispatch layout (counts, offsets, the packed send rows with
 * their metadata), the grouping of received rows by local expert, the grouped expert GEMMs
 * (kernels.h; the path chosen per chunk from the rows per slot, docs/cuda.md), the combine and the
 * un-permute are kernels on one compute stream. The host reads back only the counts (one copy per
 * layer, which it waits for while the shared experts run) and, after the batch, the router's
 * choices; at fixed capacity it reads nothing, and a layer can be a CUDA graph. With the NCCL
 * transport the wire buffers are device memory and the transport orders itself against the
 * compute stream (comm.h); with the MPI transport (several ranks may share a GPU) they are pinned,
 * mapped host memory that kernels read and write directly, and stages that hand rows to MPI
 * synchronise first.
 *
 * Timing. Stages are bracketed by CUDA events on the compute stream (and transfers by events on
 * the transport's stream), read after the batch: stage times are device times. */
#include <cuda_runtime.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/runtime-impl.h"

/* ---------------------------------------------------------------- device choice */

static size_t device_bytes_at_start; /* cudaMemGetInfo's used when the device was chosen */

moe_status_t moe_cuda_use_device(int device)
{
    moe_status_t status = MOE_STATUS_OK;
    MOE_CHECK_CUDA(cudaSetDevice(device), fail);
fail:
    return status;
}

size_t moe_cuda_device_bytes(void)
{
    size_t free_bytes = 0, total = 0;
    if (cudaMemGetInfo(&free_bytes, &total) != cudaSuccess) return 0;
    const size_t used = total - free_bytes;
    return used > device_bytes_at_start ? used - device_bytes_at_start : 0;
}

moe_status_t moe_cuda_pin(void *host, size_t bytes)
{
    moe_status_t status = MOE_STATUS_OK;
    MOE_CHECK_CUDA(cudaHostRegister(host, bytes, cudaHostRegisterDefault), fail);
fail:
    return status;
}

void moe_cuda_unpin(void *host) { cudaHostUnregister(host); }

int moe_cuda_device_count(void)
{
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return count;
}

moe_status_t moe_cuda_start_device(int device)
{
    moe_status_t status = MOE_STATUS_OK;
    MOE_CHECK_CUDA(cudaSetDevice(device), fail);
    MOE_CHECK_CUDA(cudaFree(NULL), fail); /* the context, so that what follows is ours */
    size_t free_bytes = 0, total = 0;
    if (cudaMemGetInfo(&free_bytes, &total) == cudaSuccess) device_bytes_at_start = total - free_bytes;
fail:
    return status;
}

/* ---------------------------------------------------------------- store: device memory */

#define STAGE_BYTES ((size_t)32 << 20) /* a piece of a tensor in flight to the device */

struct moe_store_s {
    cudaStream_t stream;
    void *pinned[2], *staged[2]; /* host and device halves of the two pieces in flight */
    cudaEvent_t done[2];         /* piece i's host buffer may be reused */
    int turn;
};

static void dev_store_destroy(moe_store_t *s)
{
    if (!s) return;
    if (s->stream) cudaStreamSynchronize(s->stream);
    for (int i = 0; i < 2; i++) {
        if (s->pinned[i]) cudaFreeHost(s->pinned[i]);
        if (s->staged[i]) cudaFree(s->staged[i]);
        if (s->done[i]) cudaEventDestroy(s->done[i]);
    }
    if (s->stream) cudaStreamDestroy(s->stream);
    free(s);
}

static moe_status_t dev_store_create(moe_store_t **out)
{
    moe_status_t status = MOE_STATUS_OK;
    moe_store_t *s = calloc(1, sizeof *s);
    MOE_CHECK_ALLOC(s, fail);
    MOE_CHECK_CUDA(cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking), fail_free);
    for (int i = 0; i < 2; i++) {
        MOE_CHECK_CUDA(cudaHostAlloc(&s->pinned[i], STAGE_BYTES, cudaHostAllocDefault), fail_free);
        MOE_CHECK_CUDA(cudaMalloc(&s->staged[i], STAGE_BYTES), fail_free);
        MOE_CHECK_CUDA(cudaEventCreateWithFlags(&s->done[i], cudaEventDisableTiming), fail_free);
    }
    *out = s;
    return MOE_STATUS_OK;
fail_free:
    dev_store_destroy(s);
fail:
    return status;
}

static moe_status_t dev_alloc(moe_store_t *s, size_t bytes, void **out)
{
    (void)s;
    moe_status_t status = MOE_STATUS_OK;
    MOE_CHECK_CUDA(cudaMalloc(out, bytes > 0 ? bytes : 16), fail);
fail:
    return status;
}

static void dev_release(moe_store_t *s, void *ptr)
{
    (void)s;
    if (ptr) cudaFree(ptr);
}

/* The next piece's buffers, once the piece that used them last has gone up. */
static moe_status_t piece(moe_store_t *s, void **host, void **dev)
{
    moe_status_t status = MOE_STATUS_OK;
    s->turn ^= 1;
    MOE_CHECK_CUDA(cudaEventSynchronize(s->done[s->turn]), fail);
    *host = s->pinned[s->turn];
    *dev = s->staged[s->turn];
fail:
    return status;
}

static moe_status_t dev_write(moe_store_t *s, void *dst, moe_elem_t elem, size_t first, const void *src,
                              moe_dtype_t dtype, size_t n)
{
    moe_status_t status = MOE_STATUS_OK;
    const moe_raw_t raw = dtype == MOE_DTYPE_F32 ? MOE_RAW_F32 : dtype == MOE_DTYPE_BF16 ? MOE_RAW_BF16 : MOE_RAW_F16;
    if (dtype != MOE_DTYPE_F32 && dtype != MOE_DTYPE_BF16 && dtype != MOE_DTYPE_F16)
        MOE_FAIL(MOE_STATUS_UNSUPPORTED, fail, "weights: cannot convert %s on the device", moe_dtype_name(dtype));
    const size_t esize = moe_dtype_size(dtype), per = STAGE_BYTES / esize;
    char *d = (char *)dst + first * moe_elem_size(elem);
    for (size_t at = 0; at < n; at += per) {
        const size_t m = n - at < per ? n - at : per;
        void *host, *dev;
        MOE_CHECK(piece(s, &host, &dev), fail);
        memcpy(host, (const char *)src + at * esize, m * esize);
        MOE_CHECK_CUDA(cudaMemcpyAsync(dev, host, m * esize, cudaMemcpyHostToDevice, s->stream), fail);
        MOE_CHECK_CUDA(cudaEventRecord(s->done[s->turn], s->stream), fail);
        MOE_CHECK(moe_convert_cuda(dev, raw, m, d + at * moe_elem_size(elem), elem == MOE_ELEM_BF16, s->stream), fail);
    }
fail:
    return status;
}

static moe_status_t dev_write_fp8(moe_store_t *s, void *dst, moe_elem_t elem, size_t first, const moe_fp8_matrix_t *m)
{
    moe_status_t status = MOE_STATUS_OK;
    const int64_t b = m->block, scale_rows = (m->rows + b - 1) / b, scale_cols = (m->cols + b - 1) / b;
    /* pieces of whole rows of blocks, each with its scales: [scales][rows of fp8] */
    int64_t rows_per = (int64_t)(STAGE_BYTES / 2) / (m->cols > 0 ? m->cols : 1) / b * b;
    if (rows_per < b || (size_t)(scale_rows * scale_cols) * sizeof(float) > STAGE_BYTES / 2)
        MOE_FAIL(MOE_STATUS_UNSUPPORTED, fail, "weights: an FP8 matrix of %lld columns in %lld-wide blocks is too wide",
                 (long long)m->cols, (long long)b);
    char *d = (char *)dst + first * moe_elem_size(elem);
    for (int64_t r0 = 0; r0 < m->rows; r0 += rows_per) {
        const int64_t rows = m->rows - r0 < rows_per ? m->rows - r0 : rows_per;
        const size_t scale_bytes = sizeof(float) * (size_t)(((rows + b - 1) / b) * scale_cols);
        const size_t data_offset = (scale_bytes + 255) / 256 * 256, data_bytes = (size_t)(rows * m->cols);
        void *host, *dev;
        MOE_CHECK(piece(s, &host, &dev), fail);
        memcpy(host, m->scale_inv + (r0 / b) * scale_cols, scale_bytes);
        memcpy((char *)host + data_offset, m->data + (size_t)r0 * m->cols, data_bytes);
        MOE_CHECK_CUDA(cudaMemcpyAsync(dev, host, data_offset + data_bytes, cudaMemcpyHostToDevice, s->stream), fail);
        MOE_CHECK_CUDA(cudaEventRecord(s->done[s->turn], s->stream), fail);
        MOE_CHECK(moe_dequant_fp8_cuda((const uint8_t *)dev + data_offset, rows, m->cols, dev, (int)b,
                                       d + (size_t)(r0 * m->cols) * moe_elem_size(elem), elem == MOE_ELEM_BF16,
                                       s->stream), fail);
    }
fail:
    return status;
}

static moe_status_t dev_fill(moe_store_t *s, void *dst, moe_elem_t elem, size_t first, size_t n,
                             const moe_seed_rule_t *rule)
{
    return moe_seed_fill_cuda(rule, n, (char *)dst + first * moe_elem_size(elem), elem == MOE_ELEM_BF16, s->stream);
}

static moe_status_t dev_finish(moe_store_t *s)
{
    moe_status_t status = MOE_STATUS_OK;
    MOE_CHECK_CUDA(cudaStreamSynchronize(s->stream), fail);
fail:
    return status;
}

static moe_status_t dev_copy_out(moe_store_t *s, const void *src, size_t bytes, void *host)
{
    (void)s;
    moe_status_t status = MOE_STATUS_OK;
    MOE_CHECK_CUDA(cudaMemcpy(host, src, bytes, cudaMemcpyDeviceToHost), fail);
fail:
    return status;
}

static moe_status_t dev_copy_in(moe_store_t *s, void *dst, size_t bytes, const void *host)
{
    (void)s;
    moe_status_t status = MOE_STATUS_OK;
    MOE_CHECK_CUDA(cudaMemcpy(dst, host, bytes, cudaMemcpyHostToDevice), fail);
fail:
    return status;
}

static const moe_store_ops_t device_store = {
    .matrix_elem = MOE_ELEM_BF16,
    .host_memory = false,
    .create = dev_store_create,
    .destroy = dev_store_destroy,
    .alloc = dev_alloc,
    .release = dev_release,
    .write = dev_write,
    .write_fp8 = dev_write_fp8,
    .fill = dev_fill,
    .finish = dev_finish,
    .copy_out = dev_copy_out,
    .copy_in = dev_copy_in,
};

/* ---------------------------------------------------------------- state */

typedef struct {
    int stage, layer, chunk;
    bool transfer;         /* on the transport's stream */
    cudaEvent_t begin, end;
} span_t;

struct moe_backend_state_s {
    const moe_config_t *config;
    const moe_weights_t *w;
    int rank, P, d, k, f, fs, E, L, chunks, capacity, max_tokens, device;
    bool host_rows;        /* MPI transport: wire buffers in pinned, mapped host memory */
    bool router;           /* routing.source router */
    cudaStream_t stream;
    moe_gemm_h gemm;
    moe_ggemm_h gg;
    /* the plan on the device, and each layer's expert pointers (device and host arrays) */
    moe_dispatch_table_t *table; /* [L], device pointers */
    void *table_dev;
    moe_expert_weights_t *experts; /* [L] */
    void *expert_ptrs_dev;
    const moe_bf16_t **expert_ptrs_host;
    int max_slots, max_replicas;
    /* activations (one allocation) */
    void *ablock;
    float *x, *out, *h32, *logits;
    moe_bf16_t *h, *shared_gu, *shared_act, *shared_y;
    int32_t *ids, *rep, *token_row; /* ids [L][T][k]; rep, token_row [T][k] of the layer in flight */
    float *weights;                 /* [L][T][k] */
    int *rows, *entries, *offset, *fill; /* [C][P], [C][R], [C P + 1], [C P] */
    int64_t *g0;                    /* the batch's first global token (device; graphs read it) */
    int *fixed_counts;              /* [L][3] rows sent, rows received, entries (fixed capacity) */
    int *bad;                       /* a received row named an expert this rank lacks */
    /* pinned host mirrors */
    void *pblock;
    const float *x_registered;      /* the caller's x, pinned in place (cudaHostRegister) by load */
    bool x_ours;                    /* we registered it (and unregister it) */
    int32_t *ids_host;              /* [L][T][k] */
    float *weights_host;            /* [L][T][k] */
    int *counts_host;               /* rows [C][P], entries [C][R] */
    int *fixed_counts_host;         /* [L][3] */
    int *bad_host;
    int64_t *g0_host;
    cudaEvent_t counts_ready;
    /* wire rows */
    size_t row_bytes, meta_offset, back_bytes;
    int cap_send, cap_recv;
    void *send, *back, *recv, *partial;
    /* expert scratch of one chunk */
    int cap_rows, cap_entries;
    void *eblock;
    int32_t *entry_pos;  /* [rows][k] */
    int *group_offset;   /* [slots + 1] */
    int *group_fill;     /* [slots] */
    moe_bf16_t *x_e, *gate_up, *act, *y_e;
    int *host_offset;    /* [slots + 1] the cuBLAS path's */
    cudaEvent_t tune_a, tune_b; /* pick_path's timing */
    moe_comm_h comm;            /* borrowed: the transport whose watch the host waits go through */
    cudaEvent_t host_sync;      /* stream_wait's */
    bool local_waits;           /* warming up on a thread of its own: plain CUDA waits, no watch */
    /* CUDA graphs of whole layers (fixed capacity) */
    cudaGraphExec_t *graph; /* [L] */
    int *graph_n;           /* [L] tokens it was captured for */
    bool capturing;
    int batches;            /* batches begun: a layer is captured only once one has run whole */
    /* timing */
    cudaEvent_t batch_start;
    cudaEvent_t *events;
    int n_events, cap_events;
    span_t *spans;
    int n_spans, cap_spans;
    span_t open[MOE_STAGE_COUNT + 1];
    /* hierarchical dispatch (args.nodes; hier.c), else unused */
    const moe_comm_nodes_t *nodes;
    int *hop_dev;           /* [L][2][R]: first hop and code of each replica (the tables point into it) */
    int *node_rank_dev;     /* [per_node]: the ranks of this rank's node */
    int *final_rows_dev;    /* [C][P] */
    int *next_dev;          /* [P] relay_pack's cursors */
    int *final_rows_host;   /* [C][P] + [P] next, pinned */
    int cap_recv1, cap_send2;
    void *recv1, *partial1, *send2, *back2; /* wire rows (alloc_rows) */
    int32_t *relay_row;     /* [cap_recv1][k], device */
};

static void free_rows(moe_backend_state_t *s, void *p)
{
    if (!p) return;
    if (s->host_rows)
        cudaFreeHost(p);
    else
        cudaFree(p);
}

/* The host waits for the compute stream's work so far, which may wait on transfers: polled under the
 * transport's watch (comm.h), so that a stopped peer ends the job rather than hanging this rank in
 * CUDA, and NCCL's asynchronous errors are seen. */
static moe_status_t event_wait(moe_backend_state_t *s, cudaEvent_t event, const char *what)
{
    moe_status_t status = MOE_STATUS_OK;
    if (!s->local_waits) return moe_comm_wait_event(s->comm, event, what);
    MOE_CHECK_CUDA(cudaEventSynchronize(event), fail); /* local work only (cuda_warm_up) */
fail:
    return status;
}

static moe_status_t stream_wait(moe_backend_state_t *s, const char *what)
{
    moe_status_t status = MOE_STATUS_OK;
    MOE_CHECK_CUDA(cudaEventRecord(s->host_sync, s->stream), fail);
    status = event_wait(s, s->host_sync, what);
fail:
    return status;
}

static void cuda_destroy(moe_backend_state_t *s)
{
    if (!s) return;
    if (s->stream) cudaStreamSynchronize(s->stream);
    free_rows(s, s->send), free_rows(s, s->back), free_rows(s, s->recv), free_rows(s, s->partial);
    free_rows(s, s->recv1), free_rows(s, s->partial1), free_rows(s, s->send2), free_rows(s, s->back2);
    cudaFree(s->relay_row), cudaFree(s->hop_dev), cudaFree(s->node_rank_dev), cudaFree(s->final_rows_dev);
    cudaFree(s->next_dev);
    if (s->final_rows_host) cudaFreeHost(s->final_rows_host);
    cudaFree(s->eblock);
    cudaFree(s->ablock);
    cudaFree(s->table_dev);
    cudaFree(s->expert_ptrs_dev);
    if (s->pblock) cudaFreeHost(s->pblock);
    if (s->x_ours) cudaHostUnregister((void *)s->x_registered);
    free(s->table);
    free(s->experts);
    free(s->expert_ptrs_host);
    free(s->host_offset);
    for (int i = 0; i < s->n_events; i++) cudaEventDestroy(s->events[i]);
    free(s->events);
    free(s->spans);
    for (int l = 0; s->graph && l < s->L; l++)
        if (s->graph[l]) cudaGraphExecDestroy(s->graph[l]);
    free(s->graph);
    free(s->graph_n);
    if (s->batch_start) cudaEventDestroy(s->batch_start);
    if (s->counts_ready) cudaEventDestroy(s->counts_ready);
    if (s->tune_a) cudaEventDestroy(s->tune_a);
    if (s->tune_b) cudaEventDestroy(s->tune_b);
    if (s->host_sync) cudaEventDestroy(s->host_sync);
    moe_ggemm_destroy(s->gg);
    moe_gemm_destroy(s->gemm);
    if (s->stream) cudaStreamDestroy(s->stream);
    free(s);
}

/* Cut `bytes` from a block cursor, 256-byte aligned. */
static void *cut(char **cursor, size_t bytes)
{
    void *p = *cursor;
    *cursor += (bytes + 255) / 256 * 256;
    return p;
}

static moe_status_t alloc_rows(moe_backend_state_t *s, void **p, size_t bytes)
{
    moe_status_t status = MOE_STATUS_OK;
    if (s->host_rows)
        MOE_CHECK_CUDA(cudaHostAlloc(p, bytes + 16, cudaHostAllocMapped | cudaHostAllocPortable), fail);
    else
        MOE_CHECK_CUDA(cudaMalloc(p, bytes + 16), fail);
fail:
    return status;
}

/* The plan's tables on the device (one copy of the host block, pointers moved by the distance), and
 * each layer's expert slot pointers (device and host arrays). */
static moe_status_t upload_plan(moe_backend_state_t *s, moe_plan_h plan)
{
    moe_status_t status = MOE_STATUS_OK;
    moe_dispatch_table_t *host_tables = NULL;
    void *block = NULL;
    size_t bytes;
    MOE_CHECK(moe_dispatch_tables(plan, s->rank, &host_tables, &block, &bytes), fail);
    MOE_CHECK_CUDA(cudaMalloc(&s->table_dev, bytes), fail);
    MOE_CHECK_CUDA(cudaMemcpy(s->table_dev, block, bytes, cudaMemcpyHostToDevice), fail);
    s->table = host_tables;
    host_tables = NULL;
    const ptrdiff_t shift = (char *)s->table_dev - (char *)block;
    for (int l = 0; l < s->L; l++) {
        moe_dispatch_table_t *t = &s->table[l];
        t->first = (const int *)((const char *)t->first + shift);
        t->rank = (const int *)((const char *)t->rank + shift);
        t->share = (const float *)((const char *)t->share + shift);
        t->local_slot = (const int *)((const char *)t->local_slot + shift);
        s->max_replicas = t->replicas > s->max_replicas ? t->replicas : s->max_replicas;
    }
    /* expert pointers: gate_up of each slot and its down, per layer */
    const moe_weights_t *w = s->w;
    const size_t n = (size_t)w->slots;
    s->expert_ptrs_host = malloc(sizeof(void *) * (2 * n + 1));
    s->experts = calloc((size_t)s->L, sizeof(moe_expert_weights_t));
    MOE_CHECK_ALLOC(s->expert_ptrs_host, fail);
    MOE_CHECK_ALLOC(s->experts, fail);
    for (size_t i = 0; i < n; i++) {
        s->expert_ptrs_host[i] = (const moe_bf16_t *)w->expert[i];
        s->expert_ptrs_host[n + i] = (const moe_bf16_t *)w->expert[i] + (size_t)2 * w->f * w->d;
    }
    MOE_CHECK_CUDA(cudaMalloc(&s->expert_ptrs_dev, sizeof(void *) * (2 * n + 1)), fail);
    MOE_CHECK_CUDA(cudaMemcpy(s->expert_ptrs_dev, s->expert_ptrs_host, sizeof(void *) * 2 * n, cudaMemcpyHostToDevice),
                   fail);
    const moe_bf16_t **dev = s->expert_ptrs_dev;
    for (int l = 0; l < s->L; l++) {
        const int o = w->local_offset[l];
        s->experts[l] = (moe_expert_weights_t){.slots = w->local_count[l], .d = w->d, .f = w->f,
                                               .gate_up = dev + o, .down = dev + n + o,
                                               .host_gate_up = s->expert_ptrs_host + o,
                                               .host_down = s->expert_ptrs_host + n + o};
        s->max_slots = w->local_count[l] > s->max_slots ? w->local_count[l] : s->max_slots;
    }
fail:
    free(host_tables);
    free(block);
    return status;
}

/* Expert scratch for a chunk of `rows` received rows with up to `entries` (row, expert) pairs. */
static moe_status_t grow_experts(moe_backend_state_t *s, int rows, int entries)
{
    moe_status_t status = MOE_STATUS_OK;
    if (rows <= s->cap_rows && entries <= s->cap_entries && s->eblock) return MOE_STATUS_OK;
    int cr = s->cap_rows > 0 ? s->cap_rows : 64, ce = s->cap_entries > 0 ? s->cap_entries : 64;
    while (cr < rows) cr *= 2;
    while (ce < entries) ce *= 2;
    if (s->eblock) MOE_CHECK(stream_wait(s, "the GPU, before its expert scratch grows"), fail); /* the old may be in use */
    cudaFree(s->eblock);
    s->eblock = NULL;
    s->cap_rows = s->cap_entries = 0;
    const size_t R = (size_t)cr, E_ = (size_t)ce, d = (size_t)s->d, f = (size_t)s->f, S = (size_t)s->max_slots;
    const size_t bytes = 256 * 10 + 4 * R * s->k + 4 * 2 * (S + 1) + 2 * E_ * (d + 2 * f + f + d);
    MOE_CHECK_CUDA(cudaMalloc(&s->eblock, bytes), fail);
    char *cur = s->eblock;
    s->entry_pos = cut(&cur, 4 * R * s->k);
    s->group_offset = cut(&cur, 4 * (S + 1));
    s->group_fill = cut(&cur, 4 * (S + 1));
    s->x_e = cut(&cur, 2 * E_ * d);
    s->gate_up = cut(&cur, 2 * E_ * 2 * f);
    s->act = cut(&cur, 2 * E_ * f);
    s->y_e = cut(&cur, 2 * E_ * d);
    s->cap_rows = cr, s->cap_entries = ce;
fail:
    return status;
}

/* Hierarchical dispatch: each replica's first hop (the rank with this rank's local index on the
 * replica's node) and its local index there, on the device, into every layer's table; the ranks of
 * this node; the counts and cursors the relay needs. */
static moe_status_t upload_hops(moe_backend_state_t *s, moe_plan_h plan, const moe_comm_nodes_t *nodes)
{
    moe_status_t status = MOE_STATUS_OK;
    int *host = NULL;
    size_t total = 0;
    for (int l = 0; l < s->L; l++) total += 2 * (size_t)s->table[l].replicas;
    host = malloc(sizeof(int) * (total + 1));
    MOE_CHECK_ALLOC(host, fail);
    MOE_CHECK(moe_hier_hops(plan, nodes, s->rank, host), fail);
    const int G = nodes->per_node;
    MOE_CHECK_CUDA(cudaMalloc((void **)&s->hop_dev, sizeof(int) * (total + 1)), fail);
    MOE_CHECK_CUDA(cudaMemcpy(s->hop_dev, host, sizeof(int) * total, cudaMemcpyHostToDevice), fail);
    size_t at = 0;
    for (int l = 0; l < s->L; l++) {
        s->table[l].hop = s->hop_dev + at;
        s->table[l].code = s->hop_dev + at + s->table[l].replicas;
        at += 2 * (size_t)s->table[l].replicas;
    }
    const size_t CP = (size_t)s->chunks * s->P;
    MOE_CHECK_CUDA(cudaMalloc((void **)&s->node_rank_dev, sizeof(int) * (size_t)G), fail);
    MOE_CHECK_CUDA(cudaMemcpy(s->node_rank_dev, nodes->rank_at + (size_t)nodes->node[s->rank] * G, sizeof(int) * G,
                              cudaMemcpyHostToDevice), fail);
    MOE_CHECK_CUDA(cudaMalloc((void **)&s->final_rows_dev, sizeof(int) * CP), fail);
    MOE_CHECK_CUDA(cudaMalloc((void **)&s->next_dev, sizeof(int) * (size_t)s->P), fail);
    MOE_CHECK_CUDA(cudaHostAlloc((void **)&s->final_rows_host, sizeof(int) * (CP + (size_t)s->P), cudaHostAllocDefault),
                   fail);
    s->nodes = nodes;
fail:
    free(host);
    return status;
}

static moe_status_t cuda_create(const moe_backend_args_t *a, moe_backend_state_t **out)
{
    moe_status_t status = MOE_STATUS_OK;
    const moe_config_t *c = a->config;
    moe_backend_state_t *s = calloc(1, sizeof *s);
    MOE_CHECK_ALLOC(s, fail);
    s->config = c;
    s->w = a->weights;
    s->rank = a->rank, s->P = a->ranks, s->device = a->device;
    s->d = c->model.d_model, s->k = c->model.top_k, s->f = c->model.d_ff, s->E = c->model.experts;
    s->fs = s->w->fs, s->L = c->model.layers;
    s->chunks = a->chunks, s->capacity = a->capacity, s->max_tokens = a->max_tokens;
    s->host_rows = c->run.transport == MOE_TRANSPORT_MPI;
    s->router = c->routing.source == MOE_ROUTING_ROUTER;
    MOE_CHECK_CUDA(cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking), fail_free);
    MOE_CHECK(moe_gemm_create(s->stream, &s->gemm), fail_free);
    MOE_CHECK(upload_plan(s, a->plan), fail_free);
    if (a->nodes) MOE_CHECK(upload_hops(s, a->plan, a->nodes), fail_free);
    MOE_CHECK(moe_ggemm_create(s->max_slots > 0 ? s->max_slots : 1, &s->gg), fail_free);
    MOE_CHECK_CUDA(cudaEventCreateWithFlags(&s->counts_ready, cudaEventDisableTiming), fail_free);
    MOE_CHECK_CUDA(cudaEventCreate(&s->batch_start), fail_free);
    MOE_CHECK_CUDA(cudaEventCreate(&s->tune_a), fail_free);
    MOE_CHECK_CUDA(cudaEventCreate(&s->tune_b), fail_free);
    MOE_CHECK_CUDA(cudaEventCreateWithFlags(&s->host_sync, cudaEventDisableTiming), fail_free);
    s->comm = a->comm;

    const size_t T = (size_t)a->max_tokens, d = (size_t)s->d, k = (size_t)s->k, E = (size_t)s->E, L = (size_t)s->L;
    const size_t C = (size_t)s->chunks, P = (size_t)s->P, R = (size_t)s->max_replicas, fs = (size_t)s->fs;
    /* activations */
    const size_t abytes = 256 * 24 + 4 * 3 * T * d + 4 * T * E + 2 * T * d + 2 * T * 3 * fs + 2 * T * d +
                          4 * 2 * L * T * k + 4 * 2 * T * k + 4 * (C * P * 3 + C * R + 1) + 8 + 4 * 3 * L + 4;
    MOE_CHECK_CUDA(cudaMalloc(&s->ablock, abytes), fail_free);
    char *cur = s->ablock;
    s->x = cut(&cur, 4 * T * d);
    s->out = cut(&cur, 4 * T * d);
    s->h32 = cut(&cur, 4 * T * d);
    s->logits = cut(&cur, 4 * T * E);
    s->h = cut(&cur, 2 * T * d);
    s->shared_gu = cut(&cur, 2 * T * 2 * fs);
    s->shared_act = cut(&cur, 2 * T * fs);
    s->shared_y = cut(&cur, 2 * T * d);
    s->ids = cut(&cur, 4 * L * T * k);
    s->weights = cut(&cur, 4 * L * T * k);
    s->rep = cut(&cur, 4 * T * k);
    s->token_row = cut(&cur, 4 * T * k);
    s->rows = cut(&cur, 4 * C * P);
    s->entries = cut(&cur, 4 * C * R + 4);
    s->offset = cut(&cur, 4 * (C * P + 1));
    s->fill = cut(&cur, 4 * C * P);
    s->g0 = cut(&cur, 8);
    s->fixed_counts = cut(&cur, 4 * 3 * L);
    s->bad = cut(&cur, 4);
    MOE_CHECK_CUDA(cudaMemset(s->out, 0, 4 * T * d), fail_free);
    MOE_CHECK_CUDA(cudaMemset(s->bad, 0, 4), fail_free);
    /* pinned mirrors */
    const size_t pbytes = 256 * 8 + 4 * 2 * L * T * k + 4 * (C * P + C * R + 1) + 4 * 3 * L + 4 + 8;
    MOE_CHECK_CUDA(cudaHostAlloc(&s->pblock, pbytes, cudaHostAllocDefault), fail_free);
    cur = s->pblock;
    s->ids_host = cut(&cur, 4 * L * T * k);
    s->weights_host = cut(&cur, 4 * L * T * k);
    s->counts_host = cut(&cur, 4 * (C * P + C * R + 1));
    s->fixed_counts_host = cut(&cur, 4 * 3 * L);
    s->bad_host = cut(&cur, 4);
    s->g0_host = cut(&cur, 8);
    /* wire: a token sends at most one row to each of min(k, P) ranks; received rows grow as needed */
    s->meta_offset = moe_wire_meta_offset(s->d, 2);
    s->row_bytes = moe_wire_row_bytes(s->d, s->k, 2);
    s->back_bytes = 2 * d;
    s->cap_send = a->capacity > 0 ? (int)(C * P * (size_t)a->capacity) : (int)(T * (k < P ? k : P));
    s->cap_recv = a->capacity > 0 ? s->cap_send : s->cap_send; /* symmetric traffic; grows under skew */
    MOE_CHECK(alloc_rows(s, &s->send, s->row_bytes * (size_t)s->cap_send), fail_free);
    MOE_CHECK(alloc_rows(s, &s->back, s->back_bytes * (size_t)s->cap_send), fail_free);
    MOE_CHECK(alloc_rows(s, &s->recv, s->row_bytes * (size_t)s->cap_recv), fail_free);
    MOE_CHECK(alloc_rows(s, &s->partial, s->back_bytes * (size_t)s->cap_recv), fail_free);
    /* expert scratch for a chunk: at fixed capacity its size is known now */
    const int chunk_rows = a->capacity > 0 ? (int)(P * (size_t)a->capacity) : (int)((T + C - 1) / C * (k < P ? k : P));
    const int fan = s->k < s->max_slots ? s->k : s->max_slots;
    MOE_CHECK(grow_experts(s, chunk_rows, chunk_rows * (fan > 0 ? fan : 1)), fail_free);
    s->host_offset = calloc((size_t)s->max_slots + 2, sizeof(int));
    s->graph = calloc(L, sizeof(cudaGraphExec_t));
    s->graph_n = calloc(L, sizeof(int));
    MOE_CHECK_ALLOC(s->host_offset, fail_free);
    MOE_CHECK_ALLOC(s->graph, fail_free);
    MOE_CHECK_ALLOC(s->graph_n, fail_free);
    /* CUTLASS arguments for this model's shapes, made now rather than in the first batch (or a graph
     * capture, where their uploads could not run) */
    for (int p = MOE_GEMM_PATH_CUTLASS_FIRST; p <= MOE_GEMM_PATH_CUTLASS_LAST && s->max_slots > 0; p++) { /* every CUTLASS path */
        MOE_CHECK(moe_ggemm_prepare(s->gg, (moe_gemm_path_t)p, s->max_slots, s->f, s->d), fail_free);
        MOE_CHECK(moe_ggemm_prepare(s->gg, (moe_gemm_path_t)p, s->max_slots, s->d, s->f), fail_free);
    }
    *out = s;
    return MOE_STATUS_OK;
fail_free:
    cuda_destroy(s);
fail:
    return status;
}

/* ---------------------------------------------------------------- timing */

static cudaEvent_t event_get(moe_backend_state_t *s)
{
    if (s->n_events == s->cap_events) {
        int cap = s->cap_events ? 2 * s->cap_events : 512;
        cudaEvent_t *e = realloc(s->events, sizeof *e * (size_t)cap);
        if (!e) return NULL;
        s->events = e;
        for (int i = s->cap_events; i < cap; i++)
            if (cudaEventCreate(&s->events[i]) != cudaSuccess) {
                s->cap_events = i;
                return NULL;
            }
        s->cap_events = cap;
    }
    return s->events[s->n_events++];
}

static void span_add(moe_backend_state_t *s, const span_t *sp)
{
    if (s->n_spans == s->cap_spans) {
        int cap = s->cap_spans ? 2 * s->cap_spans : 512;
        span_t *p = realloc(s->spans, sizeof *p * (size_t)cap);
        if (!p) return; /* timing only */
        s->spans = p;
        s->cap_spans = cap;
    }
    s->spans[s->n_spans++] = *sp;
}

static void cuda_mark(moe_backend_state_t *s, int stage, int layer, int chunk, bool begin)
{
    if (s->capturing) return; /* an event in a capture is a dependency, not a time */
    cudaEvent_t ev = event_get(s);
    if (!ev || cudaEventRecord(ev, s->stream) != cudaSuccess) return; /* timing only */
    if (begin) {
        s->open[stage] = (span_t){.stage = stage, .layer = layer, .chunk = chunk, .begin = ev};
        return;
    }
    span_t sp = s->open[stage];
    sp.end = ev;
    if (sp.begin) span_add(s, &sp);
    s->open[stage].begin = NULL;
}

static void cuda_transfer_events(moe_backend_state_t *s, int stage, int layer, int chunk, void **start, void **done)
{
    *start = *done = NULL;
    if (s->host_rows || s->capturing) return; /* MPI: host clocks would be needed; captures: no times */
    cudaEvent_t b = event_get(s), e = event_get(s);
    if (!b || !e) return;
    span_add(s, &(span_t){.stage = stage, .layer = layer, .chunk = chunk, .transfer = true, .begin = b, .end = e});
    *start = b, *done = e;
}

static moe_status_t cuda_timeline(moe_backend_state_t *s, int n, moe_layer_metrics_t *m, moe_trace_h trace)
{
    (void)n;
    for (int i = 0; i < s->n_spans; i++) {
        const span_t *sp = &s->spans[i];
        float t0 = 0, t1 = 0;
        if (cudaEventElapsedTime(&t0, s->batch_start, sp->begin) != cudaSuccess ||
            cudaEventElapsedTime(&t1, s->batch_start, sp->end) != cudaSuccess)
            continue; /* an event not recorded (a failed record): timing only */
        const double secs = 1e-3 * (t1 - t0);
        if (sp->stage == MOE_STAGE_COUNT)
            m[sp->layer].layer_time += secs;
        else if (!sp->transfer)
            m[sp->layer].time[sp->stage] += secs;
        if (trace) {
            const char *name = sp->stage == MOE_STAGE_COUNT ? "layer" : moe_stage_name(sp->stage);
            char label[32];
            if (sp->transfer) snprintf(label, sizeof label, "%s transfer", name);
            moe_trace_span(trace, sp->transfer ? label : name, sp->layer, sp->chunk,
                           sp->transfer ? "transport" : "compute", 1e3 * t0, 1e3 * (t1 - t0));
        }
    }
    cudaGetLastError(); /* a failed elapsed-time query is not an error of the run */
    if (s->capacity > 0)
        for (int l = 0; l < s->L; l++) {
            m[l].rows_sent += s->fixed_counts_host[3 * l];
            m[l].rows_received += s->fixed_counts_host[3 * l + 1];
            m[l].load += s->fixed_counts_host[3 * l + 2];
        }
    return MOE_STATUS_OK;
}

/* ---------------------------------------------------------------- stages */

/* The caller's rows pinned where they are, so that they go up and come back without a host copy
 * (the engine passes the same buffer every batch; a buffer pinned already, by an earlier backend
 * state of the same engine, is used as it is). */
static moe_status_t pin_rows(moe_backend_state_t *s, const float *x)
{
    moe_status_t status = MOE_STATUS_OK;
    if (x == s->x_registered) return MOE_STATUS_OK;
    if (s->x_ours) cudaHostUnregister((void *)s->x_registered);
    s->x_registered = x;
    s->x_ours = false;
    cudaError_t err = cudaHostRegister((void *)x, sizeof(float) * (size_t)s->max_tokens * s->d, cudaHostRegisterDefault);
    if (err == cudaErrorHostMemoryAlreadyRegistered) {
        cudaGetLastError();
        return MOE_STATUS_OK;
    }
    MOE_CHECK_CUDA(err, fail);
    s->x_ours = true;
fail:
    return status;
}

static moe_status_t cuda_load(moe_backend_state_t *s, const float *x, int n)
{
    moe_status_t status = MOE_STATUS_OK;
    const size_t bytes = sizeof(float) * (size_t)n * s->d;
    s->n_events = s->n_spans = 0;
    s->batches++;
    MOE_CHECK(pin_rows(s, x), fail);
    MOE_CHECK_CUDA(cudaEventRecord(s->batch_start, s->stream), fail);
    MOE_CHECK_CUDA(cudaMemcpyAsync(s->x, x, bytes, cudaMemcpyHostToDevice, s->stream), fail);
    MOE_CHECK_CUDA(cudaMemsetAsync(s->out, 0, bytes, s->stream), fail);
    if (s->capacity > 0) MOE_CHECK_CUDA(cudaMemsetAsync(s->fixed_counts, 0, sizeof(int) * 3 * s->L, s->stream), fail);
fail:
    return status;
}

static moe_status_t cuda_route(moe_backend_state_t *s, int layer, int n, const int32_t *ids, const float *weights)
{
    moe_status_t status = MOE_STATUS_OK;
    const int d = s->d, k = s->k;
    const size_t at = (size_t)layer * s->max_tokens * k, nk = (size_t)n * k;
    MOE_CHECK(moe_rmsnorm_cuda(s->x, (const float *)s->w->norm + (size_t)layer * d, n, d, s->config->model.norm_eps,
                               !ids || s->w->shared_gate ? s->h32 : NULL, s->h, s->stream), fail);
    if (ids) { /* the host's routing, up through pinned memory */
        memcpy(s->ids_host + at, ids, sizeof(int32_t) * nk);
        memcpy(s->weights_host + at, weights, sizeof(float) * nk);
        MOE_CHECK_CUDA(cudaMemcpyAsync(s->ids + at, s->ids_host + at, sizeof(int32_t) * nk, cudaMemcpyHostToDevice,
                                       s->stream), fail);
        MOE_CHECK_CUDA(cudaMemcpyAsync(s->weights + at, s->weights_host + at, sizeof(float) * nk,
                                       cudaMemcpyHostToDevice, s->stream), fail);
    } else if (n > 0) {
        moe_router_params_t p = moe_model_router_params(s->config, s->w, layer);
        MOE_CHECK(moe_router_logits_cuda(moe_gemm_cublas(s->gemm), s->h32,
                                         (const float *)s->w->router + (size_t)layer * s->E * d, n, d, s->E,
                                         s->logits), fail);
        MOE_CHECK(moe_router_topk_cuda(s->logits, n, &p, s->ids + at, s->weights + at, s->stream), fail);
        /* the choices reach the host after the batch (routes) */
        MOE_CHECK_CUDA(cudaMemcpyAsync(s->ids_host + at, s->ids + at, sizeof(int32_t) * nk, cudaMemcpyDeviceToHost,
                                       s->stream), fail);
    }
fail:
    return status;
}

static moe_status_t cuda_plan(moe_backend_state_t *s, int layer, int64_t g0, int n)
{
    moe_status_t status = MOE_STATUS_OK;
    const moe_dispatch_table_t *t = &s->table[layer];
    const size_t at = (size_t)layer * s->max_tokens * s->k;
    const int C = s->chunks, P = s->P;
    cuda_mark(s, MOE_STAGE_PLAN, layer, 0, true);
    *s->g0_host = g0;
    MOE_CHECK_CUDA(cudaMemcpyAsync(s->g0, s->g0_host, sizeof(int64_t), cudaMemcpyHostToDevice, s->stream), fail);
    MOE_CHECK(moe_dispatch_count_cuda(s->ids + at, n, s->k, s->g0, t, C, s->rep, s->rows, s->entries, s->stream), fail);
    MOE_CHECK(moe_dispatch_offsets_cuda(s->rows, C, P, s->capacity, s->offset, s->fill, s->stream), fail);
    if (s->capacity == 0) { /* the counts to the host: it sizes the transfers from them */
        MOE_CHECK_CUDA(cudaMemcpyAsync(s->counts_host, s->rows, sizeof(int) * (size_t)C * P, cudaMemcpyDeviceToHost,
                                       s->stream), fail);
        MOE_CHECK_CUDA(cudaMemcpyAsync(s->counts_host + C * P, s->entries, sizeof(int) * (size_t)C * t->replicas,
                                       cudaMemcpyDeviceToHost, s->stream), fail);
        if (s->nodes) { /* hierarchical: the rows each final rank gets, too */
            MOE_CHECK(moe_dispatch_final_rows_cuda(s->rep, n, s->k, t, C, s->final_rows_dev, s->stream), fail);
            MOE_CHECK_CUDA(cudaMemcpyAsync(s->final_rows_host, s->final_rows_dev, sizeof(int) * (size_t)C * P,
                                           cudaMemcpyDeviceToHost, s->stream), fail);
        }
        MOE_CHECK_CUDA(cudaEventRecord(s->counts_ready, s->stream), fail);
    } else {
        MOE_CHECK(moe_count_add_cuda(s->rows, C * P, s->fixed_counts + 3 * layer, s->stream), fail);
    }
    cuda_mark(s, MOE_STAGE_PLAN, layer, 0, false);
    cuda_mark(s, MOE_STAGE_PERMUTE, layer, 0, true);
    if (s->capacity > 0)
        MOE_CHECK(moe_dispatch_clear_meta_cuda(s->send, s->cap_send, s->row_bytes, s->meta_offset, s->k, s->stream), fail);
    MOE_CHECK(moe_dispatch_pack_cuda(s->h, s->ids + at, s->weights + at, s->rep, n, s->k, s->d, t, C, s->offset, s->fill,
                                     s->send, s->row_bytes, s->meta_offset, s->token_row, s->stream), fail);
    cuda_mark(s, MOE_STAGE_PERMUTE, layer, 0, false);
    if (s->host_rows) MOE_CHECK(stream_wait(s, "the rows MPI sends"), fail); /* MPI sends from the host */
fail:
    return status;
}

static moe_status_t cuda_counts(moe_backend_state_t *s, const int **rows, const int **entries)
{
    moe_status_t status = MOE_STATUS_OK;
    MOE_CHECK(event_wait(s, s->counts_ready, "the layer's counts on the GPU"), fail);
    *rows = s->counts_host;
    *entries = s->counts_host + s->chunks * s->P;
fail:
    return status;
}

static moe_status_t cuda_buffers(moe_backend_state_t *s, int n_recv, moe_wire_t *out)
{
    moe_status_t status = MOE_STATUS_OK;
    if (n_recv > s->cap_recv) {
        int cap = s->cap_recv > 0 ? s->cap_recv : 64;
        while (cap < n_recv) cap *= 2;
        /* the old buffers may still be read by the previous layer's kernels, or its transfers, which
         * the compute stream has waited for */
        MOE_CHECK(stream_wait(s, "the GPU, before its buffers grow"), fail);
        free_rows(s, s->recv), free_rows(s, s->partial);
        s->recv = s->partial = NULL;
        s->cap_recv = 0;
        MOE_CHECK(alloc_rows(s, &s->recv, s->row_bytes * (size_t)cap), fail);
        MOE_CHECK(alloc_rows(s, &s->partial, s->back_bytes * (size_t)cap), fail);
        s->cap_recv = cap;
    }
    *out = (moe_wire_t){.send = s->send, .recv = s->recv, .partial = s->partial, .back = s->back,
                        .row_bytes = s->row_bytes, .meta_offset = s->meta_offset, .back_bytes = s->back_bytes};
fail:
    return status;
}

/* ---------------------------------------------------------------- hierarchical dispatch: the relay */

static moe_status_t cuda_final_rows(moe_backend_state_t *s, const int **rows)
{
    moe_status_t status = MOE_STATUS_OK;
    if (!s->nodes) MOE_FAIL(MOE_STATUS_INTERNAL, fail, "cuda backend: final_rows without hierarchical dispatch");
    MOE_CHECK(event_wait(s, s->counts_ready, "the relay's counts on the GPU"), fail);
    *rows = s->final_rows_host;
fail:
    return status;
}

static moe_status_t cuda_relay_buffers(moe_backend_state_t *s, int n_recv1, int n_send2, moe_wire_t *out)
{
    moe_status_t status = MOE_STATUS_OK;
    if (n_recv1 > s->cap_recv1 || !s->recv1 || n_send2 > s->cap_send2 || !s->send2)
        /* the old buffers may still be read by the previous layer's kernels, or its transfers, which
         * the compute stream has waited for */
        MOE_CHECK(stream_wait(s, "the GPU, before the relay's buffers grow"), fail);
    if (n_recv1 > s->cap_recv1 || !s->recv1) {
        int cap = s->cap_recv1 > 0 ? s->cap_recv1 : 64;
        while (cap < n_recv1) cap *= 2;
        free_rows(s, s->recv1), free_rows(s, s->partial1);
        cudaFree(s->relay_row);
        s->recv1 = s->partial1 = NULL;
        s->relay_row = NULL;
        s->cap_recv1 = 0;
        MOE_CHECK(alloc_rows(s, &s->recv1, s->row_bytes * (size_t)cap), fail);
        MOE_CHECK(alloc_rows(s, &s->partial1, s->back_bytes * (size_t)cap), fail);
        MOE_CHECK_CUDA(cudaMalloc((void **)&s->relay_row, sizeof(int32_t) * (size_t)cap * s->k), fail);
        s->cap_recv1 = cap;
    }
    if (n_send2 > s->cap_send2 || !s->send2) {
        int cap = s->cap_send2 > 0 ? s->cap_send2 : 64;
        while (cap < n_send2) cap *= 2;
        free_rows(s, s->send2), free_rows(s, s->back2);
        s->send2 = s->back2 = NULL;
        s->cap_send2 = 0;
        MOE_CHECK(alloc_rows(s, &s->send2, s->row_bytes * (size_t)cap), fail);
        MOE_CHECK(alloc_rows(s, &s->back2, s->back_bytes * (size_t)cap), fail);
        s->cap_send2 = cap;
    }
    *out = (moe_wire_t){.send = s->send2, .recv = s->recv1, .partial = s->partial1, .back = s->back2,
                        .row_bytes = s->row_bytes, .meta_offset = s->meta_offset, .back_bytes = s->back_bytes};
fail:
    return status;
}

/* The cursors go to the device and come back advanced: the host checks them against the counts
 * (hier.c), so this waits for the kernel (with the MPI transport it would anyway: MPI sends from the
 * host). */
static moe_status_t cuda_relay_pack(moe_backend_state_t *s, int layer, int recv1_first, int n1, int *next)
{
    moe_status_t status = MOE_STATUS_OK;
    (void)layer;
    const size_t P = (size_t)s->P;
    int *next_host = s->final_rows_host + (size_t)s->chunks * P;
    memcpy(next_host, next, sizeof(int) * P);
    MOE_CHECK_CUDA(cudaMemcpyAsync(s->next_dev, next_host, sizeof(int) * P, cudaMemcpyHostToDevice, s->stream), fail);
    MOE_CHECK(moe_relay_pack_cuda((const char *)s->recv1 + (size_t)recv1_first * s->row_bytes, n1, s->row_bytes,
                                  s->meta_offset, s->k, s->d, s->E, s->node_rank_dev, s->next_dev, s->send2,
                                  s->relay_row + (size_t)recv1_first * s->k, s->stream), fail);
    MOE_CHECK_CUDA(cudaMemcpyAsync(next_host, s->next_dev, sizeof(int) * P, cudaMemcpyDeviceToHost, s->stream), fail);
    MOE_CHECK(stream_wait(s, "the relay's packing on the GPU"), fail);
    memcpy(next, next_host, sizeof(int) * P);
fail:
    return status;
}

static moe_status_t cuda_relay_sum(moe_backend_state_t *s, int recv1_first, int n1)
{
    moe_status_t status = MOE_STATUS_OK;
    MOE_CHECK(moe_relay_sum_cuda(s->back2, s->relay_row + (size_t)recv1_first * s->k, n1, s->k, s->d,
                                 (moe_bf16_t *)((char *)s->partial1 + (size_t)recv1_first * s->back_bytes), s->stream),
              fail);
    if (s->host_rows) MOE_CHECK(stream_wait(s, "the rows MPI sends"), fail); /* MPI sends from the host */
fail:
    return status;
}

/* The expert GEMM path per log2 bucket of the rows a slot gets (and whether the host knew them), timed
 * on the first chunks that fall in the bucket (run.gemm auto). Process-wide: a run has one model's
 * widths, and a backend state made again (an elastic switch) does not time them again. Buckets are
 * centred on the powers of two (rounded log2): the typical means of the configs are powers of two
 * (4096 x 8 / 256 x 2 = 256 rows per expert for DeepSeek-V3 at EP2), and with buckets bounded there
 * a batch's few percent of load spread crossed the bound and timed every path again in a measured
 * batch (Mixtral at 2 GPUs: 281 ms once among 9 ms batches, run 13). */
static moe_gemm_path_t tuned_paths[2][32];

/* The expert GEMM path for slots of `mean` rows: run.gemm when set; else the fastest measured here
 * for rows of this size (every candidate timed once on this chunk's real rows, the second of two
 * runs, then the winner run last, so that the chunk's result is the winner's); while a graph is
 * captured, or without tensor cores, a fixed rule. */
static moe_status_t pick_path(moe_backend_state_t *s, const moe_expert_weights_t *w, int entries, double mean,
                              bool host_knows, moe_gemm_path_t *out)
{
    moe_status_t status = MOE_STATUS_OK;
    const moe_gemm_path_t forced = (moe_gemm_path_t)s->config->run.gemm;
    if (!moe_ggemm_tensor_cores(s->gg, s->f, s->d) || !moe_ggemm_tensor_cores(s->gg, s->d, s->f)) {
        *out = host_knows ? MOE_GEMM_PATH_CUBLAS : MOE_GEMM_PATH_CUDA_CORES;
        return MOE_STATUS_OK;
    }
    if (forced != MOE_GEMM_PATH_AUTO && (forced != MOE_GEMM_PATH_CUBLAS || host_knows)) {
        *out = forced;
        return MOE_STATUS_OK;
    }
    int bucket = 0;
    while (bucket < 31 && (double)(1 << bucket) * 1.41421356 < mean) bucket++;
    moe_gemm_path_t *tuned = &tuned_paths[host_knows][bucket];
    if (*tuned != MOE_GEMM_PATH_AUTO) {
        *out = *tuned;
        return MOE_STATUS_OK;
    }
    *out = moe_gemm_path_choose(mean, host_knows);
    if (s->capturing || entries == 0) return MOE_STATUS_OK;
    float best_ms = 0;
    for (int p = MOE_GEMM_PATH_128x128; p <= MOE_GEMM_PATH_CUBLAS; p++) {
        if (p == MOE_GEMM_PATH_CUDA_CORES || (p == MOE_GEMM_PATH_CUBLAS && !host_knows)) continue;
        /* the swapped tiles re-read the weights per 32 or 64 rows: 1.6x to 4x the best from 256 rows
         * per expert up (G1), and the slowest to time */
        if ((p == MOE_GEMM_PATH_SWAP32 || p == MOE_GEMM_PATH_SWAP64) && mean > 256) continue;
        float ms = 0;
        for (int rep = 0; rep < 2; rep++) {
            MOE_CHECK_CUDA(cudaEventRecord(s->tune_a, s->stream), fail);
            MOE_CHECK(moe_expert_ffn_cuda(s->gemm, s->gg, (moe_gemm_path_t)p, w, s->x_e, s->group_offset, s->host_offset,
                                          entries, s->gate_up, s->act, s->y_e), fail);
            MOE_CHECK_CUDA(cudaEventRecord(s->tune_b, s->stream), fail);
        }
        MOE_CHECK(event_wait(s, s->tune_b, "the GEMM paths' timing"), fail);
        MOE_CHECK_CUDA(cudaEventElapsedTime(&ms, s->tune_a, s->tune_b), fail);
        if (*tuned == MOE_GEMM_PATH_AUTO || ms < best_ms) *tuned = (moe_gemm_path_t)p, best_ms = ms;
    }
    *out = *tuned;
    moe_info("cuda backend: expert GEMMs for about %.0f rows per expert (%s): %s, %.3f ms", mean,
             host_knows ? "counted" : "expected", moe_gemm_path_name(*out), best_ms);
fail:
    return status;
}

static moe_status_t cuda_experts(moe_backend_state_t *s, int layer, int chunk, int first, int n_recv,
                                 const int *slot_rows)
{
    moe_status_t status = MOE_STATUS_OK;
    (void)chunk;
    const moe_expert_weights_t *w = &s->experts[layer];
    const int slots = w->slots, fan = s->k < slots ? s->k : slots;
    if (n_recv == 0) return MOE_STATUS_OK;
    /* entries: exact when the host knows each slot's rows, else every local choice of every row */
    int entries = n_recv * (fan > 0 ? fan : 1), active = 0;
    if (slot_rows) {
        entries = 0;
        for (int e = 0; e < slots; e++) {
            s->host_offset[e] = entries;
            entries += slot_rows[e];
            active += slot_rows[e] > 0;
        }
        s->host_offset[slots] = entries;
    }
    MOE_CHECK(grow_experts(s, n_recv, entries), fail);
    const char *recv = (const char *)s->recv + (size_t)first * s->row_bytes;
    MOE_CHECK(moe_expert_group_cuda(recv, n_recv, s->row_bytes, s->meta_offset, s->k, s->table[layer].local_slot, s->E,
                                    slots, s->d, s->group_offset, s->entry_pos, s->x_e, s->group_fill, s->bad,
                                    s->stream), fail);
    if (s->capacity > 0)
        MOE_CHECK(moe_count_group_cuda(s->entry_pos, n_recv, s->k, s->group_offset + slots, s->fixed_counts + 3 * layer,
                                       s->stream), fail);
    /* the GEMM path from the rows a slot gets: known, or expected (every choice spread evenly) */
    const double mean = slot_rows ? (double)entries / (active > 0 ? active : 1)
                                  : (double)n_recv * s->k / (s->E > 0 ? s->E : 1);
    moe_gemm_path_t path;
    MOE_CHECK(pick_path(s, w, entries, mean, slot_rows != NULL, &path), fail);
    if (entries > 0)
        MOE_CHECK(moe_expert_ffn_cuda(s->gemm, s->gg, path, w, s->x_e, s->group_offset, s->host_offset, entries, s->gate_up,
                                      s->act, s->y_e), fail);
    MOE_CHECK(moe_expert_combine_cuda(s->y_e, s->entry_pos, recv, n_recv, s->row_bytes, s->meta_offset, s->k, s->d,
                                      (moe_bf16_t *)((char *)s->partial + (size_t)first * s->back_bytes), s->stream), fail);
    if (s->host_rows) MOE_CHECK(stream_wait(s, "the rows MPI sends"), fail); /* MPI sends from the host */
fail:
    return status;
}

static moe_status_t cuda_shared(moe_backend_state_t *s, int layer, int n)
{
    moe_status_t status = MOE_STATUS_OK;
    const int d = s->d, fs = s->fs;
    if (fs == 0 || n <= 0) return MOE_STATUS_OK;
    const moe_bf16_t *gu = (const moe_bf16_t *)s->w->shared_gate_up + (size_t)layer * 2 * fs * d;
    const moe_bf16_t *down = (const moe_bf16_t *)s->w->shared_down + (size_t)layer * d * fs;
    MOE_CHECK(moe_gemm_cuda(s->gemm, s->h, gu, n, 2 * fs, d, s->shared_gu, false), fail);
    MOE_CHECK(moe_swiglu_cuda(s->shared_gu, n, fs, s->shared_act, s->stream), fail);
    if (s->w->shared_gate) { /* Qwen2-MoE: out += sigmoid(h . w_gate) * y, h in fp32 as on the cpu */
        MOE_CHECK(moe_gemm_cuda(s->gemm, s->shared_act, down, n, d, fs, s->shared_y, false), fail);
        MOE_CHECK(moe_gated_add_cuda(s->shared_y, s->h32, (const float *)s->w->shared_gate + (size_t)layer * d, n, d,
                                     s->out, s->stream), fail);
    } else { /* out += y, straight from the GEMM in fp32 */
        MOE_CHECK(moe_gemm_cuda(s->gemm, s->shared_act, down, n, d, fs, s->out, true), fail);
    }
fail:
    return status;
}

static moe_status_t cuda_unpermute(moe_backend_state_t *s, int chunk, int n)
{
    const int begin = (int)((int64_t)n * chunk / s->chunks), end = (int)((int64_t)n * (chunk + 1) / s->chunks);
    return moe_unpermute_tokens_cuda(s->back, s->token_row, begin, end, s->k, s->d, s->out, s->stream);
}

static moe_status_t cuda_residual(moe_backend_state_t *s, int n)
{
    return moe_residual_cuda(s->x, s->out, (size_t)n * s->d, s->stream);
}

static moe_status_t cuda_store(moe_backend_state_t *s, float *x, int n)
{
    moe_status_t status = MOE_STATUS_OK;
    const size_t bytes = sizeof(float) * (size_t)n * s->d;
    MOE_CHECK(pin_rows(s, x), fail);
    MOE_CHECK_CUDA(cudaMemcpyAsync(x, s->x, bytes, cudaMemcpyDeviceToHost, s->stream), fail);
    MOE_CHECK_CUDA(cudaMemcpyAsync(s->bad_host, s->bad, sizeof(int), cudaMemcpyDeviceToHost, s->stream), fail);
    if (s->capacity > 0)
        MOE_CHECK_CUDA(cudaMemcpyAsync(s->fixed_counts_host, s->fixed_counts, sizeof(int) * 3 * s->L,
                                       cudaMemcpyDeviceToHost, s->stream), fail);
    MOE_CHECK(stream_wait(s, "the batch on the GPU"), fail);
    if (*s->bad_host)
        MOE_FAIL(MOE_STATUS_INTERNAL, fail, "cuda backend: a received row named an expert this rank does not host");
fail:
    return status;
}

static moe_status_t cuda_routes(moe_backend_state_t *s, int n, int32_t *ids)
{
    for (int l = 0; l < s->L; l++)
        memcpy(ids + (size_t)l * n * s->k, s->ids_host + (size_t)l * s->max_tokens * s->k,
               sizeof(int32_t) * (size_t)n * s->k);
    return MOE_STATUS_OK;
}

/* The host's part of route and plan, for a layer that runs as a graph: the pinned inputs it reads. */
static moe_status_t cuda_stage(moe_backend_state_t *s, int layer, int64_t g0, int n, const int32_t *ids,
                               const float *weights)
{
    const size_t at = (size_t)layer * s->max_tokens * s->k, nk = (size_t)n * s->k;
    *s->g0_host = g0;
    if (ids) {
        memcpy(s->ids_host + at, ids, sizeof(int32_t) * nk);
        memcpy(s->weights_host + at, weights, sizeof(float) * nk);
    }
    return MOE_STATUS_OK;
}

static moe_status_t cuda_graph(moe_backend_state_t *s, moe_graph_op_t op, int layer, int n, bool *yes)
{
    moe_status_t status = MOE_STATUS_OK;
    switch (op) {
    case MOE_GRAPH_READY:
        *yes = s->graph[layer] && s->graph_n[layer] == n;
        break;
    case MOE_GRAPH_BEGIN:
        /* not before a whole batch ran eagerly: first launches and lazy set-ups stay out of graphs */
        *yes = false;
        if (s->batches < 2 || s->host_rows) break;
        if (s->graph[layer]) {
            cudaGraphExecDestroy(s->graph[layer]);
            s->graph[layer] = NULL;
        }
        MOE_CHECK_CUDA(cudaStreamBeginCapture(s->stream, cudaStreamCaptureModeThreadLocal), fail);
        s->capturing = *yes = true;
        break;
    case MOE_GRAPH_END: {
        cudaGraph_t graph = NULL;
        s->capturing = false;
        MOE_CHECK_CUDA(cudaStreamEndCapture(s->stream, &graph), fail);
        if (yes) { /* a failed capture: dropped */
            cudaGraphDestroy(graph);
            break;
        }
        cudaError_t err = cudaGraphInstantiate(&s->graph[layer], graph, 0);
        cudaGraphDestroy(graph);
        MOE_CHECK_CUDA(err, fail);
        s->graph_n[layer] = n;
        break;
    }
    case MOE_GRAPH_LAUNCH:
        MOE_CHECK_CUDA(cudaGraphLaunch(s->graph[layer], s->stream), fail);
        break;
    }
fail:
    return status;
}

/* ---------------------------------------------------------------- warm-up */

/* The GEMM paths for slots of `per` rows each, timed now (pick_path) on zero rows. */
static moe_status_t warm_tune(moe_backend_state_t *s, const moe_expert_weights_t *w, int per, bool host_knows)
{
    moe_status_t status = MOE_STATUS_OK;
    const int slots = w->slots;
    if (slots == 0 || per < 1) return MOE_STATUS_OK;
    if ((int64_t)per * slots > s->cap_entries) per = s->cap_entries / slots; /* no larger scratch for it */
    if (per < 1) return MOE_STATUS_OK;
    const int entries = per * slots;
    for (int e = 0; e <= slots; e++) s->host_offset[e] = e * per;
    MOE_CHECK_CUDA(cudaMemcpyAsync(s->group_offset, s->host_offset, sizeof(int) * (size_t)(slots + 1),
                                   cudaMemcpyHostToDevice, s->stream), fail);
    MOE_CHECK_CUDA(cudaMemsetAsync(s->x_e, 0, sizeof(moe_bf16_t) * (size_t)entries * s->d, s->stream), fail);
    moe_gemm_path_t path;
    MOE_CHECK(pick_path(s, w, entries, per, host_knows, &path), fail);
    MOE_CHECK(moe_expert_ffn_cuda(s->gemm, s->gg, path, w, s->x_e, s->group_offset, s->host_offset, entries, s->gate_up,
                                  s->act, s->y_e), fail);
    MOE_CHECK(stream_wait(s, "the warm-up"), fail); /* host_offset is read by the copy above */
fail:
    return status;
}

/* One layer's stages on made-up routing, locally: the rows this rank would send itself stand in for
 * the received ones; nothing is transferred. Then the GEMM paths for the row counts a batch will bring
 * (about the mean per slot, and twice and half of it, for skew). */
static moe_status_t cuda_warm_up(moe_backend_state_t *s, const float *x)
{
    moe_status_t status = MOE_STATUS_OK;
    const int n = s->max_tokens, k = s->k, C = s->chunks, P = s->P, batches = s->batches;
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)n * k);
    float *weights = malloc(sizeof(float) * (size_t)n * k);
    MOE_CHECK_ALLOC(ids, fail);
    MOE_CHECK_ALLOC(weights, fail);
    for (int t = 0; t < n; t++) /* k different experts per token, spread over all of them */
        for (int j = 0; j < k; j++) {
            ids[(size_t)t * k + j] = (int32_t)(((int64_t)t * k + j) % s->E);
            weights[(size_t)t * k + j] = 1.0f / (float)k;
        }
    s->local_waits = true;
    MOE_CHECK(cuda_load(s, x, n), fail);
    if (s->router) MOE_CHECK(cuda_route(s, 0, n, NULL, NULL), fail); /* the router's own kernels */
    MOE_CHECK(cuda_route(s, 0, n, ids, weights), fail);
    MOE_CHECK(cuda_plan(s, 0, 0, n), fail);
    const int *rows = NULL, *entries = NULL;
    if (s->capacity == 0) MOE_CHECK(cuda_counts(s, &rows, &entries), fail);
    MOE_CHECK(cuda_shared(s, 0, n), fail);
    int at = 0;
    for (int c = 0; c < C; c++) {
        int first = 0, count = s->capacity;
        if (s->capacity > 0) {
            first = (c * P + s->rank) * s->capacity;
        } else {
            for (int i = 0; i < c * P + s->rank; i++) first += rows[i];
            count = rows[c * P + s->rank];
        }
        moe_wire_t wire;
        MOE_CHECK(cuda_buffers(s, at + count, &wire), fail);
        MOE_CHECK_CUDA(cudaMemcpyAsync((char *)s->recv + (size_t)at * s->row_bytes,
                                       (const char *)s->send + (size_t)first * s->row_bytes,
                                       (size_t)count * s->row_bytes, cudaMemcpyDefault, s->stream), fail);
        MOE_CHECK(cuda_experts(s, 0, c, at, count, NULL), fail);
        at += count;
    }
    for (int c = 0; c < C; c++) MOE_CHECK(cuda_unpermute(s, c, n), fail);
    MOE_CHECK(cuda_residual(s, n), fail);
    MOE_CHECK(stream_wait(s, "the warm-up"), fail);
    /* the row counts of real batches: each slot gets about its share of every rank's tokens */
    const double mean = s->capacity > 0 ? (double)P * s->capacity * k / s->E : (double)n / C * P * k / s->E;
    int most = 0; /* paths are kept per row count, not per layer: the layer with the most slots */
    for (int l = 1; l < s->L; l++) most = s->experts[l].slots > s->experts[most].slots ? l : most;
    for (double f = 0.5; f <= 2.0; f *= 2)
        MOE_CHECK(warm_tune(s, &s->experts[most], (int)(mean * f + 0.5), s->capacity == 0), fail);
fail:
    s->local_waits = false;
    s->batches = batches; /* not a batch: CUDA graphs still wait for a real one */
    free(ids);
    free(weights);
    return status;
}

moe_status_t moe_backend_cuda_warm_up(moe_backend_state_t *state, const float *x)
{
    moe_status_t status = MOE_STATUS_OK;
    const double t0 = moe_now();
    MOE_CHECK(cuda_warm_up(state, x), fail);
    moe_info("cuda backend: warmed up in %.3f s (rank %d of %d)", moe_now() - t0, state->rank, state->P);
fail:
    return status;
}

void *moe_backend_cuda_stream(moe_backend_state_t *state) { return state->stream; }

moe_status_t moe_backend_cuda_share_tuning(moe_ctl_h ctl)
{
    moe_status_t status = MOE_STATUS_OK;
    const int P = moe_ctl_size(ctl);
    const int n = (int)(sizeof tuned_paths / sizeof tuned_paths[0][0]);
    int mine[sizeof tuned_paths / sizeof tuned_paths[0][0]];
    int *all = malloc(sizeof(int) * (size_t)n * (size_t)P);
    MOE_CHECK_ALLOC(all, fail);
    for (int i = 0; i < n; i++) mine[i] = (int)(&tuned_paths[0][0])[i];
    MOE_CHECK(moe_ctl_gather(ctl, -1, mine, sizeof mine, all, "the GEMM paths' tuning"), fail);
    for (int i = 0; i < n; i++) /* a bucket this rank has not timed: the lowest rank's pick that has */
        for (int p = 0; p < P && (&tuned_paths[0][0])[i] == MOE_GEMM_PATH_AUTO; p++)
            (&tuned_paths[0][0])[i] = (moe_gemm_path_t)all[(size_t)p * n + i];
fail:
    free(all);
    return status;
}

const moe_backend_t moe_backend_cuda = {
    .name = "cuda",
    .memory = &device_store,
    .create = cuda_create,
    .destroy = cuda_destroy,
    .load = cuda_load,
    .route = cuda_route,
    .plan = cuda_plan,
    .counts = cuda_counts,
    .buffers = cuda_buffers,
    .experts = cuda_experts,
    .shared = cuda_shared,
    .unpermute = cuda_unpermute,
    .residual = cuda_residual,
    .store = cuda_store,
    .routes = cuda_routes,
    .mark = cuda_mark,
    .timeline = cuda_timeline,
    .transfer_events = cuda_transfer_events,
    .final_rows = cuda_final_rows,
    .relay_buffers = cuda_relay_buffers,
    .relay_pack = cuda_relay_pack,
    .relay_sum = cuda_relay_sum,
    .graph = cuda_graph,
    .stage = cuda_stage,
};
