/* estimate: what a run would take on this rank, without taking it (`moerun infer --dry-run`).
 *
 * The weights go through the real layout and the real loaders (seeded or checkpoint) on a counting
 * store: allocations hand out addresses nothing reads, writes land nowhere, so the weight bytes and
 * the checkpoint bytes each rank would read are the run's own figures, exactly, from the plan the
 * run would use. The buffers are counted from the sizes the engine and the backends give them (the
 * pages a batch touches); host memory adds what the process already holds (libraries, MPI, the
 * routing source), read from /proc, and the mapped checkpoint pages while they load. What it cannot
 * see is what the libraries touch on first use (MPI's shared-memory segments, OpenBLAS's buffers):
 * a few hundred KB to a few MB, within 5% once the weights are ~100 MB, more for tiny models. Device
 * figures are estimates of the same kind, not yet measured against a GPU run. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/runtime-impl.h"

/* ---------------------------------------------------------------- the counting store */

struct moe_store_s {
    uintptr_t next; /* the next address handed out: never dereferenced */
};

static moe_status_t count_create(moe_store_t **out)
{
    *out = calloc(1, sizeof **out);
    if (!*out) return MOE_STATUS_NO_MEMORY;
    (*out)->next = 1 << 20;
    return MOE_STATUS_OK;
}
static void count_destroy(moe_store_t *store) { free(store); }
static moe_status_t count_alloc(moe_store_t *store, size_t bytes, void **out)
{
    *out = (void *)store->next;
    store->next += (bytes + 4095) / 4096 * 4096 + 4096;
    return MOE_STATUS_OK;
}
static void count_release(moe_store_t *store, void *ptr) { (void)store, (void)ptr; }
static moe_status_t count_write(moe_store_t *store, void *dst, moe_elem_t elem, size_t first, const void *src,
                                moe_dtype_t dtype, size_t n)
{
    return MOE_STATUS_OK;
}
static moe_status_t count_write_fp8(moe_store_t *store, void *dst, moe_elem_t elem, size_t first,
                                    const moe_fp8_matrix_t *m)
{
    return MOE_STATUS_OK;
}
static moe_status_t count_fill(moe_store_t *store, void *dst, moe_elem_t elem, size_t first, size_t n,
                               const moe_seed_rule_t *rule)
{
    return MOE_STATUS_OK;
}
static moe_status_t count_finish(moe_store_t *store) { return MOE_STATUS_OK; }

static size_t min_size(size_t a, size_t b) { return a < b ? a : b; }

moe_status_t moe_estimate_run(const moe_config_t *c, const moe_plan_h plan, int rank, int serving, int world,
                              const moe_store_ops_t *store_ops, moe_watch_h watch, moe_estimate_t *out)
{
    moe_status_t status = MOE_STATUS_OK;
    const moe_store_ops_t ops = {.matrix_elem = store_ops->matrix_elem, .host_memory = store_ops->host_memory,
                                 .create = count_create, .destroy = count_destroy, .alloc = count_alloc,
                                 .release = count_release, .write = count_write, .write_fp8 = count_write_fp8,
                                 .fill = count_fill, .finish = count_finish};
    const int64_t host_now = moe_host_rss_now();
    moe_store_t *store = NULL;
    moe_weights_t w;
    memset(&w, 0, sizeof w);
    MOE_CHECK(ops.create(&store), fail);
    MOE_CHECK(moe_weights_create(c, plan, rank, &ops, store, watch, &w), fail_store);

    moe_estimate_t e = {.experts = w.slots, .weight_bytes = (int64_t)moe_weights_bytes(&w),
                        .checkpoint_bytes = w.read_bytes, .checkpoint_expert_bytes = w.read_expert_bytes};
    const size_t T = (size_t)c->run.tokens_per_rank, d = (size_t)c->model.d_model, k = (size_t)c->model.top_k,
                 E = (size_t)c->model.experts, L = (size_t)c->model.layers, f = (size_t)c->model.d_ff,
                 fs = (size_t)c->model.shared_experts * (size_t)c->model.shared_d_ff, P = (size_t)serving;
    /* the engine: this rank's tokens and routes; rank 0 gathers the output; statistics */
    size_t engine = T * d * 4 + L * T * k * 4 + T * k * 4;
    if (rank == 0 && c->outputs.output[0]) engine += (size_t)world * T * d * 4;
    if (c->outputs.stats[0]) engine += (L * E + (2 * L - 1) * E * E) * 8;
    /* the backend (backend_cpu.c's sizes; the cuda backend's are alike in its element type): hidden
     * states, logits, routes, the send rows and their way back; received rows with their partial
     * sums; the experts' rows in and out; shared-expert scratch */
    const size_t elem = rank < serving ? moe_elem_size(store_ops->matrix_elem) : 0;
    const size_t row = moe_wire_row_bytes((int)d, (int)k, elem ? elem : 4);
    const size_t rows = T * min_size(k, P), entries = T * k;
    size_t backend = 0;
    if (rank < serving)
        backend = 3 * T * d * elem + T * E * 4 + 2 * L * T * k * 4 + 2 * T * k * 4 + rows * row + rows * d * 4 +
                  rows * row + rows * d * 4 + 2 * entries * d * 4 + min_size(entries, 512) * 3 * f * 4 +
                  (fs ? T * d * 4 + T * 3 * fs * 4 : 0);
    /* a checkpoint's tensors are read from a mapping: its pages are resident while the weights load
     * (then unmapped, before the buffers are made) */
    const int64_t mapped = e.checkpoint_bytes;
    if (store_ops->host_memory) {
        const int64_t later = (int64_t)(engine + backend);
        e.host_bytes = host_now + e.weight_bytes + (mapped > later ? mapped : later);
    } else {
        e.host_bytes = host_now + ((int64_t)engine > mapped ? (int64_t)engine : mapped);
        e.device_bytes = e.weight_bytes + (int64_t)backend;
    }
    *out = e;
    moe_weights_destroy(&w);
fail_store:
    ops.destroy(store);
fail:
    return status;
}
