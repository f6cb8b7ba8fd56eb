/* dispatch: the dispatch layout of one layer on the GPU (kernels.h, "the dispatch layout"; the CPU
 * references are in dispatch_cpu.c, the shared rules in dispatch_rules.h). Everything a layer needs
 * to route its rows is computed here from the routing on the device: the host only reads the counts
 * back (one small copy) to size the transfers, or nothing at fixed capacity.
 *
 * Order: rows inside a (chunk, peer) block and entries inside a slot are placed by atomics, so their
 * order varies from run to run; what each row holds, each count and each result does not (the
 * combine and un-permute sum in choice order, without atomics). */
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernels/dispatch_rules.h"
#include "kernels/kernels.h"

typedef __nv_bfloat16 bf16;

static moe_status_t launched(const char *what)
{
    cudaError_t err = cudaGetLastError();
    if (err == cudaSuccess) return MOE_STATUS_OK;
    moe_error("%s: %s", what, cudaGetErrorString(err));
    return MOE_STATUS_CUDA_ERROR;
}

#define HIST_SMEM_MAX 12288 /* ints of a block-local histogram (48 KB) */

/* ---------------------------------------------------------------- scan */

/* out[i] = sum of in[0 .. i-1] for i <= n (out has n + 1 entries), or i * capacity when capacity > 0
 * (out[n] is then still the sum); zero[0 .. n-1] = 0 when zero is set. One block of 1024 threads,
 * each scanning a contiguous segment. */
__global__ void k_exclusive_scan(const int *in, int n, int capacity, int *out, int *zero)
{
    __shared__ int part[1024];
    const int per = (n + blockDim.x - 1) / blockDim.x, begin = threadIdx.x * per;
    const int end = begin + per < n ? begin + per : n;
    int sum = 0;
    for (int i = begin; i < end; i++) sum += in[i];
    part[threadIdx.x] = sum;
    __syncthreads();
    for (int o = 1; o < (int)blockDim.x; o <<= 1) { /* inclusive Hillis-Steele over the segment sums */
        int v = threadIdx.x >= (unsigned)o ? part[threadIdx.x - o] : 0;
        __syncthreads();
        part[threadIdx.x] += v;
        __syncthreads();
    }
    int at = threadIdx.x > 0 ? part[threadIdx.x - 1] : 0;
    for (int i = begin; i < end; i++) {
        out[i] = capacity > 0 ? i * capacity : at;
        at += in[i];
        if (zero) zero[i] = 0;
    }
    if (threadIdx.x == blockDim.x - 1) out[n] = part[blockDim.x - 1];
}

static moe_status_t scan(const int *in, int n, int capacity, int *out, int *zero, cudaStream_t s)
{
    k_exclusive_scan<<<1, 1024, 0, s>>>(in, n, capacity, out, zero);
    return launched("exclusive scan");
}

/* ---------------------------------------------------------------- count */

/* One thread per token. With SMEM, the block first counts into shared memory ([C][P] rows, then
 * [C][R] entries) and adds its counts to the global ones at the end. */
template <bool SMEM>
__global__ void k_dispatch_count(const int32_t *ids, int n, int k, const int64_t *g0_at, moe_dispatch_table_t t,
                                 int chunks, int32_t *rep, int *rows, int *entries)
{
    const int64_t g0 = *g0_at;
    extern __shared__ int hist[];
    const int P = t.ranks, R = t.replicas, cells = chunks * (P + R);
    if (SMEM) {
        for (int i = threadIdx.x; i < cells; i += blockDim.x) hist[i] = 0;
        __syncthreads();
    }
    int *row_count = SMEM ? hist : rows, *entry_count = SMEM ? hist + chunks * P : entries;
    const int tok = blockIdx.x * blockDim.x + threadIdx.x;
    if (tok < n) {
        const int c = moe_rules_chunk(tok, n, chunks);
        int seen[MOE_DISPATCH_MAX_K];
        for (int j = 0; j < k; j++) {
            const int e = ids[(size_t)tok * k + j];
            int r = -1;
            if (e >= 0 && e < t.experts)
                r = moe_rules_pick(t.layer, e, g0 + tok, t.first[e], t.first[e + 1] - t.first[e], t.share);
            rep[(size_t)tok * k + j] = r;
            seen[j] = r >= 0 ? (t.hop ? t.hop[r] : t.rank[r]) : -1; /* the first hop (hierarchical: the rail) */
            if (r < 0) continue;
            atomicAdd(&entry_count[c * R + r], 1);
            bool first = true;
            for (int i = 0; i < j; i++) first &= seen[i] != seen[j];
            if (first) atomicAdd(&row_count[c * P + seen[j]], 1);
        }
    }
    if (SMEM) {
        __syncthreads();
        for (int i = threadIdx.x; i < cells; i += blockDim.x) {
            const int v = hist[i];
            if (v) atomicAdd(i < chunks * P ? &rows[i] : &entries[i - chunks * P], v);
        }
    }
}

extern "C" moe_status_t moe_dispatch_count_cuda(const int32_t *ids, int n, int k, const int64_t *g0,
                                                const moe_dispatch_table_t *t, int chunks, int32_t *rep, int *rows,
                                                int *entries, cudaStream_t s)
{
    if (k > MOE_DISPATCH_MAX_K) {
        moe_error("dispatch: top_k %d is above %d", k, MOE_DISPATCH_MAX_K);
        return MOE_STATUS_INVALID_ARGUMENT;
    }
    const size_t cells = (size_t)chunks * (t->ranks + t->replicas);
    if (cudaMemsetAsync(rows, 0, sizeof(int) * (size_t)chunks * t->ranks, s) != cudaSuccess ||
        cudaMemsetAsync(entries, 0, sizeof(int) * (size_t)chunks * t->replicas, s) != cudaSuccess)
        return launched("dispatch count: clearing the counts");
    if (n == 0) return MOE_STATUS_OK;
    const unsigned blocks = (unsigned)((n + 255) / 256);
    if (cells <= HIST_SMEM_MAX)
        k_dispatch_count<true><<<blocks, 256, cells * sizeof(int), s>>>(ids, n, k, g0, *t, chunks, rep, rows, entries);
    else
        k_dispatch_count<false><<<blocks, 256, 0, s>>>(ids, n, k, g0, *t, chunks, rep, rows, entries);
    return launched("dispatch count");
}

extern "C" moe_status_t moe_dispatch_offsets_cuda(const int *rows, int chunks, int ranks, int capacity, int *offset,
                                                  int *fill, cudaStream_t s)
{
    return scan(rows, chunks * ranks, capacity, offset, fill, s);
}

/* ---------------------------------------------------------------- pack */

/* Copy one row of d bf16: 16 bytes a thread when both ends allow it. */
__device__ static void copy_row(const bf16 *src, bf16 *dst, int d)
{
    if (d % 8 == 0 && (uintptr_t)src % 16 == 0 && (uintptr_t)dst % 16 == 0) {
        const uint4 *s4 = (const uint4 *)src;
        uint4 *d4 = (uint4 *)dst;
        for (int i = threadIdx.x; i < d / 8; i += blockDim.x) d4[i] = s4[i];
    } else {
        for (int i = threadIdx.x; i < d; i += blockDim.x) dst[i] = src[i];
    }
}

/* One block per token: thread 0 takes a send row for each distinct destination, then the block
 * copies the row and writes each copy's metadata. */
__global__ void k_dispatch_pack(const bf16 *h, const int32_t *ids, const float *weights, const int32_t *rep, int n,
                                int k, int d, moe_dispatch_table_t t, int chunks, const int *offset, int *fill,
                                char *send, size_t row_bytes, size_t meta_offset, int32_t *token_row)
{
    __shared__ int row_of[MOE_DISPATCH_MAX_K], rank_of[MOE_DISPATCH_MAX_K];
    const int tok = blockIdx.x, P = t.ranks;
    if (threadIdx.x == 0) {
        const int c = moe_rules_chunk(tok, n, chunks);
        for (int j = 0; j < k; j++) {
            const int32_t r = rep[(size_t)tok * k + j];
            const int p = r >= 0 ? (t.hop ? t.hop[r] : t.rank[r]) : -1;
            bool first = p >= 0;
            for (int i = 0; i < j; i++) first &= rank_of[i] != p;
            rank_of[j] = p;
            const int row = first ? offset[c * P + p] + atomicAdd(&fill[c * P + p], 1) : -1;
            row_of[j] = row;
            token_row[(size_t)tok * k + j] = row;
        }
    }
    __syncthreads();
    for (int j = 0; j < k; j++) {
        const int row = row_of[j];
        if (row < 0) continue;
        char *dst = send + (size_t)row * row_bytes;
        copy_row(h + (size_t)tok * d, (bf16 *)dst, d);
        for (int i = threadIdx.x; i < k; i += blockDim.x) {
            const bool here = rank_of[i] == rank_of[j];
            const int32_t code = here && t.code ? t.experts * t.code[rep[(size_t)tok * k + i]] : 0;
            ((int32_t *)(dst + meta_offset))[i] = here ? ids[(size_t)tok * k + i] + code : -1;
            ((float *)(dst + meta_offset))[k + i] = here ? weights[(size_t)tok * k + i] : 0.0f;
        }
    }
}

extern "C" moe_status_t moe_dispatch_pack_cuda(const moe_bf16_t *h, const int32_t *ids, const float *weights,
                                               const int32_t *rep, int n, int k, int d, const moe_dispatch_table_t *t,
                                               int chunks, const int *offset, int *fill, void *send, size_t row_bytes,
                                               size_t meta_offset, int32_t *token_row, cudaStream_t s)
{
    if (n == 0) return MOE_STATUS_OK;
    k_dispatch_pack<<<n, 128, 0, s>>>((const bf16 *)h, ids, weights, rep, n, k, d, *t, chunks, offset, fill,
                                      (char *)send, row_bytes, meta_offset, token_row);
    return launched("dispatch pack");
}

/* ---------------------------------------------------------------- hierarchical dispatch (hier.c) */

/* One thread per token: rows [C][P] that each final rank gets (moe_dispatch_final_rows_cpu). */
__global__ void k_final_rows(const int32_t *rep, int n, int k, moe_dispatch_table_t t, int chunks, int *rows)
{
    const int tok = blockIdx.x * blockDim.x + threadIdx.x;
    if (tok >= n) return;
    const int c = moe_rules_chunk(tok, n, chunks);
    int seen[MOE_DISPATCH_MAX_K];
    for (int j = 0; j < k; j++) {
        const int32_t r = rep[(size_t)tok * k + j];
        seen[j] = r >= 0 ? t.rank[r] : -1;
        if (r < 0) continue;
        bool first = true;
        for (int i = 0; i < j; i++) first &= seen[i] != seen[j];
        if (first) atomicAdd(&rows[c * t.ranks + seen[j]], 1);
    }
}

extern "C" moe_status_t moe_dispatch_final_rows_cuda(const int32_t *rep, int n, int k, const moe_dispatch_table_t *t,
                                                     int chunks, int *rows, cudaStream_t s)
{
    if (cudaMemsetAsync(rows, 0, sizeof(int) * (size_t)chunks * t->ranks, s) != cudaSuccess)
        return launched("final rows: clearing the counts");
    if (n == 0) return MOE_STATUS_OK;
    k_final_rows<<<(n + 255) / 256, 256, 0, s>>>(rep, n, k, *t, chunks, rows);
    return launched("final rows");
}

/* One block per first-hop row: thread 0 takes a send row for each distinct local index among its
 * choices (next[rank] by atomics: the order varies, the rows do not), then the block copies the row
 * and writes each copy's metadata with plain expert ids. */
__global__ void k_relay_pack(const char *recv, size_t row_bytes, size_t meta_offset, int k, int d, int experts,
                             const int *node_rank, int *next, char *send, int32_t *relay_row)
{
    __shared__ int row_of[MOE_DISPATCH_MAX_K], g_of[MOE_DISPATCH_MAX_K];
    const int r = blockIdx.x;
    const char *row = recv + (size_t)r * row_bytes;
    const int32_t *id = (const int32_t *)(row + meta_offset);
    if (threadIdx.x == 0)
        for (int j = 0; j < k; j++) {
            const int g = id[j] >= 0 ? id[j] / experts : -1;
            bool first = g >= 0;
            for (int i = 0; i < j; i++) first &= g_of[i] != g;
            g_of[j] = g;
            row_of[j] = first ? atomicAdd(&next[node_rank[g]], 1) : -1;
            relay_row[(size_t)r * k + j] = row_of[j];
        }
    __syncthreads();
    const float *w = (const float *)(row + meta_offset) + k;
    for (int j = 0; j < k; j++) {
        if (row_of[j] < 0) continue;
        char *dst = send + (size_t)row_of[j] * row_bytes;
        copy_row((const bf16 *)row, (bf16 *)dst, d);
        for (int i = threadIdx.x; i < k; i += blockDim.x) {
            const bool here = g_of[i] == g_of[j];
            ((int32_t *)(dst + meta_offset))[i] = here ? id[i] % experts : -1;
            ((float *)(dst + meta_offset))[k + i] = here ? w[i] : 0.0f;
        }
    }
}

extern "C" moe_status_t moe_relay_pack_cuda(const void *recv, int n_rows, size_t row_bytes, size_t meta_offset, int k,
                                            int d, int experts, const int *node_rank, int *next, void *send,
                                            int32_t *relay_row, cudaStream_t s)
{
    if (n_rows == 0) return MOE_STATUS_OK;
    k_relay_pack<<<n_rows, 128, 0, s>>>((const char *)recv, row_bytes, meta_offset, k, d, experts, node_rank, next,
                                        (char *)send, relay_row);
    return launched("relay pack");
}

/* One block per first-hop row: partial[r] = the sum of its second-hop rows in back, in fp32, in choice
 * order, rounded to bf16 once. */
__global__ void k_relay_sum(const bf16 *back, const int32_t *relay_row, int k, int d, bf16 *partial)
{
    __shared__ int row_of[MOE_DISPATCH_MAX_K];
    const int r = blockIdx.x;
    for (int j = threadIdx.x; j < k; j += blockDim.x) row_of[j] = relay_row[(size_t)r * k + j];
    __syncthreads();
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        float acc = 0.0f;
        for (int j = 0; j < k; j++)
            if (row_of[j] >= 0) acc += __bfloat162float(back[(size_t)row_of[j] * d + c]);
        partial[(size_t)r * d + c] = __float2bfloat16(acc);
    }
}

extern "C" moe_status_t moe_relay_sum_cuda(const moe_bf16_t *back, const int32_t *relay_row, int n_rows, int k, int d,
                                           moe_bf16_t *partial, cudaStream_t s)
{
    if (n_rows == 0) return MOE_STATUS_OK;
    k_relay_sum<<<n_rows, 128, 0, s>>>((const bf16 *)back, relay_row, k, d, (bf16 *)partial);
    return launched("relay sum");
}

__global__ void k_clear_meta(char *rows, int n_rows, size_t row_bytes, size_t meta_offset, int k)
{
    const size_t total = (size_t)n_rows * k;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x)
        ((int32_t *)(rows + (i / k) * row_bytes + meta_offset))[i % k] = -1;
}

extern "C" moe_status_t moe_dispatch_clear_meta_cuda(void *rows, int n_rows, size_t row_bytes, size_t meta_offset,
                                                     int k, cudaStream_t s)
{
    if (n_rows == 0) return MOE_STATUS_OK;
    const size_t total = (size_t)n_rows * k;
    const unsigned blocks = (unsigned)((total + 255) / 256 < 4096 ? (total + 255) / 256 : 4096);
    k_clear_meta<<<blocks, 256, 0, s>>>((char *)rows, n_rows, row_bytes, meta_offset, k);
    return launched("dispatch clear meta");
}

/* ---------------------------------------------------------------- group, combine */

/* One thread per (row, choice): entries per local slot; *bad = 1 for an expert this rank lacks. */
template <bool SMEM>
__global__ void k_group_count(const char *recv, int n_rows, size_t row_bytes, size_t meta_offset, int k,
                              const int *local_slot, int experts, int slots, int *count, int *bad)
{
    extern __shared__ int hist[];
    if (SMEM) {
        for (int i = threadIdx.x; i < slots; i += blockDim.x) hist[i] = 0;
        __syncthreads();
    }
    const size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i < (size_t)n_rows * k) {
        const int32_t e = ((const int32_t *)(recv + (i / k) * row_bytes + meta_offset))[i % k];
        if (e >= 0) {
            const int slot = e < experts ? local_slot[e] : -1;
            if (slot < 0)
                *bad = 1;
            else
                atomicAdd(SMEM ? &hist[slot] : &count[slot], 1);
        }
    }
    if (SMEM) {
        __syncthreads();
        for (int s = threadIdx.x; s < slots; s += blockDim.x)
            if (hist[s]) atomicAdd(&count[s], hist[s]);
    }
}

/* One block per received row: thread 0 takes an expert-major row for each local choice, the block
 * copies the row there. */
__global__ void k_group_fill(const char *recv, size_t row_bytes, size_t meta_offset, int k, const int *local_slot,
                             int experts, int d, const int *offset, int *fill, int32_t *entry_pos, bf16 *x_e)
{
    __shared__ int pos_of[MOE_DISPATCH_MAX_K];
    const int r = blockIdx.x;
    const char *row = recv + (size_t)r * row_bytes;
    if (threadIdx.x == 0)
        for (int j = 0; j < k; j++) {
            const int32_t e = ((const int32_t *)(row + meta_offset))[j];
            const int slot = e >= 0 && e < experts ? local_slot[e] : -1;
            const int pos = slot >= 0 ? offset[slot] + atomicAdd(&fill[slot], 1) : -1;
            pos_of[j] = pos;
            entry_pos[(size_t)r * k + j] = pos;
        }
    __syncthreads();
    for (int j = 0; j < k; j++)
        if (pos_of[j] >= 0) copy_row((const bf16 *)row, x_e + (size_t)pos_of[j] * d, d);
}

extern "C" moe_status_t moe_expert_group_cuda(const void *recv, int n_rows, size_t row_bytes, size_t meta_offset,
                                              int k, const int *local_slot, int experts, int slots, int d, int *offset,
                                              int32_t *entry_pos, moe_bf16_t *x_e, int *fill, int *bad,
                                              cudaStream_t s)
{
    moe_status_t status;
    if (k > MOE_DISPATCH_MAX_K) {
        moe_error("expert grouping: top_k %d is above %d", k, MOE_DISPATCH_MAX_K);
        return MOE_STATUS_INVALID_ARGUMENT;
    }
    /* counts into fill (zeroed), offsets from them, fill zeroed again by the scan for the placing */
    if (cudaMemsetAsync(fill, 0, sizeof(int) * (size_t)(slots > 0 ? slots : 1), s) != cudaSuccess)
        return launched("expert grouping: clearing the counts");
    if (n_rows > 0) {
        const size_t pairs = (size_t)n_rows * k;
        const unsigned blocks = (unsigned)((pairs + 255) / 256);
        if (slots <= HIST_SMEM_MAX)
            k_group_count<true><<<blocks, 256, sizeof(int) * (size_t)slots, s>>>(
                (const char *)recv, n_rows, row_bytes, meta_offset, k, local_slot, experts, slots, fill, bad);
        else
            k_group_count<false><<<blocks, 256, 0, s>>>((const char *)recv, n_rows, row_bytes, meta_offset, k,
                                                        local_slot, experts, slots, fill, bad);
        if ((status = launched("expert grouping: count")) != MOE_STATUS_OK) return status;
    }
    if ((status = scan(fill, slots, 0, offset, fill, s)) != MOE_STATUS_OK) return status;
    if (n_rows == 0) return MOE_STATUS_OK;
    k_group_fill<<<n_rows, 128, 0, s>>>((const char *)recv, row_bytes, meta_offset, k, local_slot, experts, d, offset,
                                        fill, entry_pos, (bf16 *)x_e);
    return launched("expert grouping: fill");
}

/* One block per received row: the weighted sum of its local experts' outputs, fp32, rounded once. */
__global__ void k_expert_combine(const bf16 *y_e, const int32_t *entry_pos, const char *recv, size_t row_bytes,
                                 size_t meta_offset, int k, int d, bf16 *partial)
{
    __shared__ int pos_of[MOE_DISPATCH_MAX_K];
    __shared__ float w_of[MOE_DISPATCH_MAX_K];
    const int r = blockIdx.x;
    for (int j = threadIdx.x; j < k; j += blockDim.x) {
        pos_of[j] = entry_pos[(size_t)r * k + j];
        w_of[j] = ((const float *)(recv + (size_t)r * row_bytes + meta_offset))[k + j];
    }
    __syncthreads();
    bf16 *o = partial + (size_t)r * d;
    if (d % 8 == 0 && (uintptr_t)y_e % 16 == 0 && (uintptr_t)partial % 16 == 0) {
        for (int c = threadIdx.x; c < d / 8; c += blockDim.x) {
            float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (int j = 0; j < k; j++) {
                if (pos_of[j] < 0) continue;
                const uint4 v = ((const uint4 *)(y_e + (size_t)pos_of[j] * d))[c];
                const __nv_bfloat162 *v2 = (const __nv_bfloat162 *)&v;
#pragma unroll
                for (int q = 0; q < 4; q++) {
                    const float2 f = __bfloat1622float2(v2[q]);
                    acc[2 * q] += w_of[j] * f.x;
                    acc[2 * q + 1] += w_of[j] * f.y;
                }
            }
            uint4 out;
            __nv_bfloat162 *o2 = (__nv_bfloat162 *)&out;
#pragma unroll
            for (int q = 0; q < 4; q++) o2[q] = __float22bfloat162_rn(make_float2(acc[2 * q], acc[2 * q + 1]));
            ((uint4 *)o)[c] = out;
        }
        return;
    }
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        float acc = 0.0f;
        for (int j = 0; j < k; j++)
            if (pos_of[j] >= 0) acc += w_of[j] * __bfloat162float(y_e[(size_t)pos_of[j] * d + c]);
        o[c] = __float2bfloat16(acc);
    }
}

extern "C" moe_status_t moe_expert_combine_cuda(const moe_bf16_t *y_e, const int32_t *entry_pos, const void *recv,
                                                int n_rows, size_t row_bytes, size_t meta_offset, int k, int d,
                                                moe_bf16_t *partial, cudaStream_t s)
{
    if (n_rows == 0) return MOE_STATUS_OK;
    k_expert_combine<<<n_rows, 128, 0, s>>>((const bf16 *)y_e, entry_pos, (const char *)recv, row_bytes, meta_offset,
                                            k, d, (bf16 *)partial);
    return launched("expert combine");
}

/* ---------------------------------------------------------------- un-permute */

/* One block per token: its returned rows added into its fp32 output row, in choice order. */
__global__ void k_unpermute_tokens(const bf16 *back, const int32_t *token_row, int t_begin, int k, int d, float *out)
{
    __shared__ int row_of[MOE_DISPATCH_MAX_K];
    const int t = t_begin + blockIdx.x;
    for (int j = threadIdx.x; j < k; j += blockDim.x) row_of[j] = token_row[(size_t)t * k + j];
    __syncthreads();
    float *o = out + (size_t)t * d;
    if (d % 8 == 0 && (uintptr_t)back % 16 == 0 && (uintptr_t)out % 16 == 0) {
        for (int c = threadIdx.x; c < d / 8; c += blockDim.x) {
            float4 a = ((float4 *)o)[2 * c], b = ((float4 *)o)[2 * c + 1];
            for (int j = 0; j < k; j++) {
                if (row_of[j] < 0) continue;
                const uint4 v = ((const uint4 *)(back + (size_t)row_of[j] * d))[c];
                const __nv_bfloat162 *v2 = (const __nv_bfloat162 *)&v;
                const float2 f0 = __bfloat1622float2(v2[0]), f1 = __bfloat1622float2(v2[1]);
                const float2 f2 = __bfloat1622float2(v2[2]), f3 = __bfloat1622float2(v2[3]);
                a.x += f0.x, a.y += f0.y, a.z += f1.x, a.w += f1.y;
                b.x += f2.x, b.y += f2.y, b.z += f3.x, b.w += f3.y;
            }
            ((float4 *)o)[2 * c] = a;
            ((float4 *)o)[2 * c + 1] = b;
        }
        return;
    }
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        float acc = o[c];
        for (int j = 0; j < k; j++)
            if (row_of[j] >= 0) acc += __bfloat162float(back[(size_t)row_of[j] * d + c]);
        o[c] = acc;
    }
}

extern "C" moe_status_t moe_unpermute_tokens_cuda(const moe_bf16_t *back, const int32_t *token_row, int t_begin,
                                                  int t_end, int k, int d, float *out, cudaStream_t s)
{
    if (t_end <= t_begin) return MOE_STATUS_OK;
    k_unpermute_tokens<<<t_end - t_begin, 128, 0, s>>>((const bf16 *)back, token_row, t_begin, k, d, out);
    return launched("unpermute");
}

/* ---------------------------------------------------------------- counts kept on the device */

__global__ void k_count_add(const int *v, int n, int *dst)
{
    int sum = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) sum += v[i];
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if (threadIdx.x % 32 == 0 && sum) atomicAdd(dst, sum);
}

extern "C" moe_status_t moe_count_add_cuda(const int *values, int n, int *dst, cudaStream_t s)
{
    if (n == 0) return MOE_STATUS_OK;
    k_count_add<<<1, 256, 0, s>>>(values, n, dst);
    return launched("count add");
}

/* dst[1] += rows with a local entry, dst[2] += *entries (grouping's total). */
__global__ void k_count_group(const int32_t *entry_pos, int n_rows, int k, const int *entries, int *dst)
{
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r == 0) atomicAdd(&dst[2], *entries);
    if (r >= n_rows) return;
    bool any = false;
    for (int j = 0; j < k; j++) any |= entry_pos[(size_t)r * k + j] >= 0;
    if (any) atomicAdd(&dst[1], 1);
}

extern "C" moe_status_t moe_count_group_cuda(const int32_t *entry_pos, int n_rows, int k, const int *entries,
                                             int *dst, cudaStream_t s)
{
    k_count_group<<<(n_rows + 255) / 256 + (n_rows == 0), 256, 0, s>>>(entry_pos, n_rows, k, entries, dst);
    return launched("count group");
}
