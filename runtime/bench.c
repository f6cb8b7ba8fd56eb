/* bench: `moerun bench a2a`, the dispatch and combine of an MoE layer alone over the real transport,
 * beside NCCL's own all-to-all at equal bytes, in the same run (runtime.h, moe_bench_a2a).
 *
 * Per size, every rank sends `rows` wire rows to every rank (itself included: a uniform all-to-all,
 * what a balanced layer sends) and gets as many back, through moe_comm_alltoallv (the transport the
 * scheduler uses, rows of a wire row's bytes out and a hidden state's bytes back), then the same bytes
 * through ncclAlltoAll. Times are medians of CUDA-event timings after warm-up, the slowest rank's.
 * Bandwidths as nccl-tests reports all-to-all: algbw = bytes a rank sends / time, busbw = algbw (P-1)/P.
 * Last, the point-to-point rate that expert moves see (runtime/elastic/migrate.c): rank 0 sends 16 slots of
 * 64 MiB to rank 1 as one NCCL group, the median wall time of 5 after a warm-up. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/runtime-impl.h"

#if MOE_HAVE_CUDA
#include <cuda_runtime_api.h>

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

/* Median ms over iters of dispatch + combine (ours = true) or of the two equal all-to-alls. */
static moe_status_t time_a2a(moe_comm_h comm, cudaStream_t stream, bool ours, void *send, void *recv, void *back,
                             const int *counts, size_t row_bytes, size_t back_bytes, int iters, float *ms)
{
    moe_status_t status = MOE_STATUS_OK;
    const int P = moe_comm_size(comm);
    float *t = calloc((size_t)iters, sizeof(float));
    cudaEvent_t a = NULL, b = NULL;
    MOE_CHECK_ALLOC(t, done);
    MOE_CHECK_CUDA(cudaEventCreate(&a), done);
    MOE_CHECK_CUDA(cudaEventCreate(&b), done);
    for (int i = -3; i < iters; i++) {
        MOE_CHECK(moe_comm_barrier(comm), done);
        MOE_CHECK_CUDA(cudaEventRecord(a, stream), done);
        if (ours) {
            moe_comm_op_h op;
            MOE_CHECK(moe_comm_alltoallv_start(comm, send, counts, recv, counts, row_bytes, &op), done);
            MOE_CHECK(moe_comm_op_wait(op), done);
            MOE_CHECK(moe_comm_alltoallv_start(comm, recv, counts, back, counts, back_bytes, &op), done);
            MOE_CHECK(moe_comm_op_wait(op), done);
        } else {
            MOE_CHECK(moe_comm_alltoall_nccl(comm, send, recv, (size_t)counts[0] * row_bytes), done);
            MOE_CHECK(moe_comm_alltoall_nccl(comm, recv, back, (size_t)counts[0] * back_bytes), done);
        }
        MOE_CHECK_CUDA(cudaEventRecord(b, stream), done);
        MOE_CHECK_CUDA(cudaEventSynchronize(b), done);
        if (i >= 0) MOE_CHECK_CUDA(cudaEventElapsedTime(&t[i], a, b), done);
    }
    qsort(t, (size_t)iters, sizeof(float), cmp_float);
    *ms = t[iters / 2];
    (void)P;
done:
    if (a) cudaEventDestroy(a);
    if (b) cudaEventDestroy(b);
    free(t);
    return status;
}

/* Rank 0 to rank 1: the GB/s of one group of SLOTS sends of SLOT_BYTES, as a migration posts them. */
#define P2P_SLOTS 16
#define P2P_SLOT_BYTES ((size_t)64 << 20)
static moe_status_t time_p2p(bool json, moe_ctl_h world, moe_comm_h comm, cudaStream_t stream, int rank, FILE *out)
{
    moe_status_t status = MOE_STATUS_OK;
    void *buf = NULL;
    float t[5];
    moe_comm_p2p_t list[P2P_SLOTS];
    if (rank <= 1) {
        MOE_CHECK_CUDA(cudaMalloc(&buf, P2P_SLOTS * P2P_SLOT_BYTES), done);
        for (int i = 0; i < P2P_SLOTS; i++)
            list[i] = (moe_comm_p2p_t){.buf = (char *)buf + i * P2P_SLOT_BYTES, .bytes = P2P_SLOT_BYTES,
                                       .peer = 1 - rank, .send = rank == 0};
    }
    for (int i = -1; i < 5; i++) {
        MOE_CHECK(moe_comm_barrier(comm), done);
        const double t0 = moe_now();
        if (rank <= 1) {
            moe_comm_op_h op;
            MOE_CHECK(moe_comm_p2p_start(comm, list, P2P_SLOTS, &op), done);
            MOE_CHECK(moe_comm_op_wait(op), done);
            MOE_CHECK_CUDA(cudaStreamSynchronize(stream), done);
        }
        double el = moe_now() - t0;
        MOE_CHECK(moe_ctl_reduce(world, -1, MOE_CTL_DOUBLE, MOE_CTL_MAX, &el, 1, "the point-to-point times"), done);
        if (i >= 0) t[i] = (float)el;
    }
    qsort(t, 5, sizeof(float), cmp_float);
    if (rank == 0 && json) {
        json_t *r = moe_json_record("bench_p2p");
        json_object_set_new(r, "slots", json_integer(P2P_SLOTS));
        json_object_set_new(r, "slot_bytes", json_integer((json_int_t)P2P_SLOT_BYTES));
        json_object_set_new(r, "ms", moe_json_number(1e3 * t[2]));
        json_object_set_new(r, "gb_per_s", moe_json_number(P2P_SLOTS * (double)P2P_SLOT_BYTES / t[2] / 1e9));
        MOE_CHECK(moe_json_line_write(out, NULL, false, r), done);
    } else if (rank == 0)
        fprintf(out, "# p2p rank 0 -> 1: %d slots of %zu bytes in one NCCL group: %.2f ms, %.1f GB/s\n", P2P_SLOTS,
                P2P_SLOT_BYTES, 1e3 * t[2], P2P_SLOTS * (double)P2P_SLOT_BYTES / t[2] / 1e9);
done:
    if (buf) cudaFree(buf);
    return status;
}

moe_status_t moe_bench_a2a(moe_ctl_h world, int device, int d, int k, const int *rows, int n_sizes, int iters,
                           bool json, FILE *out)
{
    moe_status_t status = MOE_STATUS_OK;
    const int rank = moe_ctl_rank(world), P = moe_ctl_size(world);
    moe_comm_h comm = NULL;
    cudaStream_t stream = NULL;
    void *send = NULL, *recv = NULL, *back = NULL;
    int *counts = NULL;
    MOE_CHECK(moe_cuda_start_device(device), done);
    MOE_CHECK(moe_comm_create_nccl(world, device, &comm), done);
    MOE_CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), done);
    moe_comm_set_stream(comm, stream);
    const size_t row_bytes = moe_wire_row_bytes(d, k, 2), back_bytes = 2 * (size_t)d;
    int most = 0;
    for (int i = 0; i < n_sizes; i++) most = rows[i] > most ? rows[i] : most;
    counts = calloc((size_t)P, sizeof(int));
    MOE_CHECK_ALLOC(counts, done);
    MOE_CHECK_CUDA(cudaMalloc(&send, row_bytes * (size_t)P * most + 16), done);
    MOE_CHECK_CUDA(cudaMalloc(&recv, row_bytes * (size_t)P * most + 16), done);
    MOE_CHECK_CUDA(cudaMalloc(&back, row_bytes * (size_t)P * most + 16), done);
    MOE_CHECK_CUDA(cudaMemset(send, 0x3c, row_bytes * (size_t)P * most), done);
    if (rank == 0 && !json)
        fprintf(out, "# moerun bench a2a: %d ranks, d %d, top_k %d: a wire row %zu bytes out, %zu back\n"
                     "#  rows/peer   bytes/rank    moerun(us)  algbw(GB/s)  busbw(GB/s)   nccl(us)  algbw(GB/s)  "
                     "busbw(GB/s)  moerun/nccl\n", P, d, k, row_bytes, back_bytes);
    for (int i = 0; i < n_sizes; i++) {
        for (int p = 0; p < P; p++) counts[p] = rows[i];
        float ours = 0, nccl = 0;
        MOE_CHECK(time_a2a(comm, stream, true, send, recv, back, counts, row_bytes, back_bytes, iters, &ours), done);
        MOE_CHECK(time_a2a(comm, stream, false, send, recv, back, counts, row_bytes, back_bytes, iters, &nccl), done);
        double worst[2] = {ours, nccl}; /* the slowest rank's, on rank 0 */
        MOE_CHECK(moe_ctl_reduce(world, 0, MOE_CTL_DOUBLE, MOE_CTL_MAX, worst, 2, "the times"), done);
        const double bytes = (double)P * rows[i] * (double)(row_bytes + back_bytes); /* a rank sends, both ways */
        if (rank == 0 && json) {
            json_t *r = moe_json_record("bench_a2a");
            json_object_set_new(r, "ranks", json_integer(P));
            json_object_set_new(r, "d_model", json_integer(d));
            json_object_set_new(r, "top_k", json_integer(k));
            json_object_set_new(r, "rows_per_peer", json_integer(rows[i]));
            json_object_set_new(r, "bytes_per_rank", moe_json_number(bytes));
            json_object_set_new(r, "moerun_us", moe_json_number(1e3 * worst[0]));
            json_object_set_new(r, "nccl_us", moe_json_number(1e3 * worst[1]));
            json_object_set_new(r, "moerun_algbw_gb_per_s", moe_json_number(bytes / (worst[0] * 1e-3) / 1e9));
            json_object_set_new(r, "nccl_algbw_gb_per_s", moe_json_number(bytes / (worst[1] * 1e-3) / 1e9));
            MOE_CHECK(moe_json_line_write(out, NULL, false, r), done);
        } else if (rank == 0) {
            const double a1 = bytes / (worst[0] * 1e-3) / 1e9, a2 = bytes / (worst[1] * 1e-3) / 1e9;
            fprintf(out, "%12d %12.0f %12.1f %12.2f %12.2f %10.1f %12.2f %12.2f %12.3f\n", rows[i], bytes,
                    1e3 * worst[0], a1, a1 * (P - 1) / P, 1e3 * worst[1], a2, a2 * (P - 1) / P, worst[1] / worst[0]);
            fflush(out);
        }
    }
    if (P >= 2) MOE_CHECK(time_p2p(json, world, comm, stream, rank, out), done);
done:
    if (send) cudaFree(send);
    if (recv) cudaFree(recv);
    if (back) cudaFree(back);
    free(counts);
    moe_comm_destroy(comm);
    if (stream) cudaStreamDestroy(stream);
    return status;
}
#else
moe_status_t moe_bench_a2a(moe_ctl_h world, int device, int d, int k, const int *rows, int n_sizes, int iters,
                           bool json, FILE *out)
{
    (void)world, (void)device, (void)d, (void)k, (void)rows, (void)n_sizes, (void)iters, (void)json, (void)out;
    moe_error("bench a2a: needs the cuda backend (this build has no CUDA)");
    return MOE_STATUS_UNSUPPORTED;
}
#endif
