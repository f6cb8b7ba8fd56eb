/* grouped_gemm: the expert GEMMs of one layer as one grouped GEMM per projection, with the groups'
 * row counts read on the device (kernels.h, "Grouped expert GEMMs").
 *
 * Two implementations behind one handle:
 *   - CUTLASS's Hopper grouped GEMM (sm90a: TMA loads, wgmma, warp-specialised cooperative kernel,
 *     a persistent tile scheduler that walks the groups on the device). Each problem's pointers and
 *     sizes are written by a small kernel from the device offsets, so the host never learns the
 *     groups' sizes; the CUTLASS arguments are built once per (variant, n_out, k) and cached. Two
 *     tile variants: "wide" (128x128 tiles over rows x outputs) for groups of many rows, and "swap"
 *     for groups of few rows (decode), where the GEMM is computed transposed, y^T = w . x^T, so that
 *     the weights fill the 128-row side of the tensor-core tile and the few tokens the 32-wide side;
 *     the transposed output in column-major order is the row-major y, so nothing is copied.
 *     The SwiGLU epilogue computes silu(gate) * acc as the up projection's output is stored (a
 *     CUTLASS epilogue visitor tree over the gate tensor fetched as the source C), so the gate/up
 *     activations never make a separate pass through memory.
 *   - a plain tiled CUDA-core kernel with the same arguments, for shapes CUTLASS cannot take (widths
 *     not a multiple of 8, as TMA needs 16-byte rows) and for builds without sm90a.
 * Both accumulate in fp32 and round the output to bf16 once. */
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <stdlib.h>

#include "kernels/kernels.h"

#if defined(MOE_HAVE_CUTLASS) && MOE_HAVE_CUTLASS
#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp"
#include "cutlass/epilogue/thread/activation.h"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/group_array_problem_shape.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/util/packed_stride.hpp"
#define GG_CUTLASS 1
#else
#define GG_CUTLASS 0
#endif

typedef __nv_bfloat16 bf16;

static moe_status_t gg_cuda(cudaError_t err, const char *what)
{
    if (err == cudaSuccess) return MOE_STATUS_OK;
    moe_error("grouped gemm: %s: %s", what, cudaGetErrorString(err));
    return MOE_STATUS_CUDA_ERROR;
}

/* ---------------------------------------------------------------- CUDA-core fallback */

#define FB_TILE 32
#define FB_K 16

/* One block computes a 32x32 tile of one group's output; blockIdx.z walks the groups, blockIdx.y the
 * row tiles (grid sized for the largest group the caller allows: tiles past a group's rows exit). */
__global__ void k_grouped_gemm_fallback(const bf16 *x, const bf16 *const *w, size_t w_offset, const int *offset,
                                        int n_out, int k, const bf16 *gate, bf16 *y)
{
    const int e = blockIdx.z;
    const int begin = offset[e], rows = offset[e + 1] - begin;
    const int r0 = blockIdx.y * FB_TILE, c0 = blockIdx.x * FB_TILE;
    if (r0 >= rows) return;
    const bf16 *we = w[e] + w_offset;
    __shared__ float xs[FB_TILE][FB_K + 1], ws[FB_TILE][FB_K + 1];
    const int tx = threadIdx.x % FB_TILE, ty = threadIdx.x / FB_TILE; /* 32 x 8 threads */
    float acc[4] = {0, 0, 0, 0};
    for (int k0 = 0; k0 < k; k0 += FB_K) {
        for (int i = threadIdx.x; i < FB_TILE * FB_K; i += blockDim.x) {
            const int rr = i / FB_K, kk = i % FB_K;
            const int row = r0 + rr, col = c0 + rr, kx = k0 + kk;
            xs[rr][kk] = row < rows && kx < k ? __bfloat162float(x[(size_t)(begin + row) * k + kx]) : 0.0f;
            ws[rr][kk] = col < n_out && kx < k ? __bfloat162float(we[(size_t)col * k + kx]) : 0.0f;
        }
        __syncthreads();
        for (int kk = 0; kk < FB_K; kk++)
            for (int j = 0; j < 4; j++) acc[j] += xs[ty + 8 * j][kk] * ws[tx][kk];
        __syncthreads();
    }
    for (int j = 0; j < 4; j++) {
        const int row = r0 + ty + 8 * j, col = c0 + tx;
        if (row >= rows || col >= n_out) continue;
        const size_t at = (size_t)(begin + row) * n_out + col;
        float v = acc[j];
        if (gate) {
            const float g = __bfloat162float(gate[at]);
            v *= g / (1.0f + __expf(-g));
        }
        y[at] = __float2bfloat16(v);
    }
}

/* ---------------------------------------------------------------- CUTLASS */

#if GG_CUTLASS
using namespace cute;

namespace moe_gg {

using Element = cutlass::bfloat16_t;
using Accumulator = float;
using ProblemShape = cutlass::gemm::GroupProblemShape<Shape<int, int, int>>;
constexpr int kAlign = 8; /* 16 bytes of bf16: what TMA needs */

/* silu(C) * acc, rounded once to bf16: the SwiGLU of the up projection with the gate as the source. */
using SwigluEpilogue = cutlass::epilogue::fusion::Sm90EVT<
    cutlass::epilogue::fusion::Sm90Compute<cutlass::multiplies, Element, Accumulator,
                                           cutlass::FloatRoundStyle::round_to_nearest>,
    cutlass::epilogue::fusion::Sm90EVT<
        cutlass::epilogue::fusion::Sm90Compute<cutlass::epilogue::thread::SiLu, Accumulator, Accumulator,
                                               cutlass::FloatRoundStyle::round_to_nearest>,
        cutlass::epilogue::fusion::Sm90SrcFetch<Element>>,
    cutlass::epilogue::fusion::Sm90AccFetch>;
using PlainEpilogue = cutlass::epilogue::fusion::LinearCombination<Element, Accumulator>;

template <class TileShape, class ClusterShape, bool Swap, bool Swiglu, bool Pingpong = false>
struct Grouped {
    /* cooperative: both consumer warpgroups on one tile; ping-pong: one tile each, alternating, so
     * that one's epilogue hides under the other's main loop */
    using KernelSchedule = std::conditional_t<Pingpong, cutlass::gemm::KernelPtrArrayTmaWarpSpecializedPingpong,
                                              cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperative>;
    using EpilogueSchedule = std::conditional_t<Pingpong, cutlass::epilogue::PtrArrayTmaWarpSpecializedPingpong,
                                                cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative>;
    using LayoutA = cutlass::layout::RowMajor;    /* A: [M][K], K contiguous */
    using LayoutB = cutlass::layout::ColumnMajor; /* B: K x N stored as [N][K] */
    /* D = A . B: [M][N] row-major; swapped (A = w, B = x), D^T column-major, i.e. y row-major */
    using LayoutD = std::conditional_t<Swap, cutlass::layout::ColumnMajor, cutlass::layout::RowMajor>;
    using Fusion = std::conditional_t<Swiglu, SwigluEpilogue, PlainEpilogue>;
    using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
        cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
        cutlass::epilogue::collective::EpilogueTileAuto, Accumulator, Accumulator, Element, LayoutD *, kAlign,
        Element, LayoutD *, kAlign, EpilogueSchedule, Fusion>::CollectiveOp;
    using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
        cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Element, LayoutA *, kAlign, Element, LayoutB *,
        kAlign, Accumulator, TileShape, ClusterShape,
        cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
            sizeof(typename Epilogue::SharedStorage))>,
        KernelSchedule>::CollectiveOp;
    using Kernel = cutlass::gemm::kernel::GemmUniversal<ProblemShape, Mainloop, Epilogue>;
    using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
    using StrideA = typename Gemm::GemmKernel::InternalStrideA;
    using StrideB = typename Gemm::GemmKernel::InternalStrideB;
    using StrideD = typename Gemm::GemmKernel::InternalStrideD;
};


/* Device arrays of one grouped call, written by k_setup before each run (calls are ordered on one
 * stream, so every variant shares them). */
struct Arrays {
    ProblemShape::UnderlyingProblemShape *problem;
    const Element **a, **b, **c;
    Element **d;
};

/* Per group e: its rows from the offsets, pointers into x, the weights, gate and y. Swapped, A is the
 * weights and B the rows, and the problem is (n_out, rows, k). The problem count is the handle's
 * max_groups, so that one set of arguments serves every layer: groups past `groups` are empty. */
__global__ void k_setup(const int *offset, int groups, int max_groups, int n_out, int k, bool swap, const Element *x,
                        const Element *const *w, size_t w_offset, const Element *gate, Element *y,
                        ProblemShape::UnderlyingProblemShape *problem, const Element **a, const Element **b,
                        const Element **c, Element **d)
{
    const int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= max_groups) return;
    if (e >= groups) {
        problem[e] = make_shape(0, 0, k);
        a[e] = b[e] = c[e] = x;
        d[e] = y;
        return;
    }
    const int begin = offset[e], rows = offset[e + 1] - begin;
    const Element *xe = x + (size_t)begin * k;
    problem[e] = swap ? make_shape(n_out, rows, k) : make_shape(rows, n_out, k);
    a[e] = swap ? w[e] + w_offset : xe;
    b[e] = swap ? xe : w[e] + w_offset;
    c[e] = gate ? gate + (size_t)begin * n_out : y + (size_t)begin * n_out; /* read only with Swiglu */
    d[e] = y + (size_t)begin * n_out;
}

/* A variant ready to run for one (n_out, k): its arguments, initialised once. */
template <class G>
struct Plan {
    typename G::Gemm gemm;
    bool ready = false;
    int n_out = 0, k = 0, groups = 0;
    void *workspace = nullptr;
    void *strides = nullptr; /* [groups] StrideA, then StrideB, then StrideD: fixed by (n_out, k) */
};

} /* namespace moe_gg */
using namespace moe_gg;

struct gg_cutlass_s;
template <class G>
static moe_status_t plan_get(gg_cutlass_s *h, Plan<G> *slots, int groups, int n_out, int k, Plan<G> **out);
template <class G>
static moe_status_t run_plan(gg_cutlass_s *h, Plan<G> *slots, const moe_bf16_t *x, const moe_bf16_t *const *w,
                             size_t w_offset, const int *offset, int groups, int n_out, int k,
                             const moe_bf16_t *gate, moe_bf16_t *y, cudaStream_t stream);
template <class G>
static void plan_release(Plan<G> *p);

/* One tile configuration: its plain and SwiGLU kernels, each with plans for two shapes. */
template <class Tile, class Cluster, bool Swap, bool Pingpong = false>
struct Variant {
    using Plain = Grouped<Tile, Cluster, Swap, false, Pingpong>;
    using Swiglu = Grouped<Tile, Cluster, Swap, true, Pingpong>;
    Plan<Plain> plain[2];
    Plan<Swiglu> swiglu[2];
    moe_status_t run(gg_cutlass_s *h, const moe_bf16_t *x, const moe_bf16_t *const *w, size_t w_offset,
                     const int *offset, int groups, int n_out, int k, const moe_bf16_t *gate, moe_bf16_t *y,
                     cudaStream_t stream)
    {
        return gate ? run_plan<Swiglu>(h, swiglu, x, w, w_offset, offset, groups, n_out, k, gate, y, stream)
                    : run_plan<Plain>(h, plain, x, w, w_offset, offset, groups, n_out, k, gate, y, stream);
    }
    void release()
    {
        for (int i = 0; i < 2; i++) plan_release(&plain[i]), plan_release(&swiglu[i]);
    }
    moe_status_t prepare(gg_cutlass_s *h, int groups, int n_out, int k)
    {
        Plan<Plain> *p;
        Plan<Swiglu> *q;
        moe_status_t status = plan_get<Plain>(h, plain, groups, n_out, k, &p);
        return status == MOE_STATUS_OK ? plan_get<Swiglu>(h, swiglu, groups, n_out, k, &q) : status;
    }
};

using C1 = Shape<_1, _1, _1>;
using C2 = Shape<_2, _1, _1>; /* two CTAs on neighbouring row tiles share (multicast) the weight tile */

struct gg_cutlass_s {
    int max_groups;
    int device, sms;
    Arrays arrays;
    void *block;
    Variant<Shape<_128, _128, _64>, C1, false> t128x128;
    Variant<Shape<_128, _256, _64>, C1, false> t128x256;
    Variant<Shape<_128, _256, _64>, C2, false> t128x256c2;
    Variant<Shape<_256, _128, _64>, C1, false> t256x128;
    Variant<Shape<_128, _128, _64>, C1, false, true> t128x128pp;
    Variant<Shape<_128, _32, _128>, C1, true> swap32; /* 128 outputs x 32 rows */
    Variant<Shape<_128, _64, _128>, C1, true> swap64;
};

template <class G>
static void plan_release(Plan<G> *p)
{
    if (p->workspace) cudaFree(p->workspace);
    if (p->strides) cudaFree(p->strides);
    p->workspace = p->strides = nullptr;
    p->ready = false;
}

/* Arguments of variant G over the handle's arrays for (n_out, k), initialised on first use; plans
 * are kept per (n_out, k) in two slots (a layer has two shapes: d -> f and f -> d). */
template <class G>
static moe_status_t plan_get(gg_cutlass_s *h, Plan<G> *slots, int groups_unused, int n_out, int k, Plan<G> **out)
{
    (void)groups_unused;
    const int groups = h->max_groups;
    for (int i = 0; i < 2; i++)
        if (slots[i].ready && slots[i].n_out == n_out && slots[i].k == k) {
            *out = &slots[i];
            return MOE_STATUS_OK;
        }
    Plan<G> *p = !slots[0].ready ? &slots[0] : !slots[1].ready ? &slots[1] : &slots[0];
    plan_release(p);
    constexpr bool swap = std::is_same_v<typename G::LayoutD, cutlass::layout::ColumnMajor>;
    /* Strides depend only on (n_out, k): the same for every group. */
    typename G::StrideA sa = cutlass::make_cute_packed_stride(typename G::StrideA{}, make_shape(swap ? n_out : 1, k, 1));
    typename G::StrideB sb = cutlass::make_cute_packed_stride(typename G::StrideB{}, make_shape(swap ? 1 : n_out, k, 1));
    typename G::StrideD sd = cutlass::make_cute_packed_stride(typename G::StrideD{},
                                                              make_shape(swap ? n_out : 1, swap ? 1 : n_out, 1));
    const size_t bytes_a = sizeof sa * groups, bytes_b = sizeof sb * groups, bytes_d = sizeof sd * groups;
    char *host = (char *)malloc(bytes_a + bytes_b + bytes_d);
    if (!host) return MOE_STATUS_NO_MEMORY;
    for (int i = 0; i < groups; i++) {
        ((typename G::StrideA *)host)[i] = sa;
        ((typename G::StrideB *)(host + bytes_a))[i] = sb;
        ((typename G::StrideD *)(host + bytes_a + bytes_b))[i] = sd;
    }
    moe_status_t status = gg_cuda(cudaMalloc(&p->strides, bytes_a + bytes_b + bytes_d), "stride allocation");
    if (status == MOE_STATUS_OK)
        status = gg_cuda(cudaMemcpy(p->strides, host, bytes_a + bytes_b + bytes_d, cudaMemcpyHostToDevice),
                         "stride upload");
    free(host);
    if (status != MOE_STATUS_OK) {
        plan_release(p);
        return status;
    }
    char *strides = (char *)p->strides;
    cutlass::KernelHardwareInfo hw;
    hw.device_id = h->device;
    hw.sm_count = h->sms;
    typename G::Gemm::Arguments args;
    args.mode = cutlass::gemm::GemmUniversalMode::kGrouped;
    args.problem_shape = {groups, h->arrays.problem, nullptr}; /* sizes on the device only */
    args.mainloop = {h->arrays.a, (typename G::StrideA *)strides, h->arrays.b,
                     (typename G::StrideB *)(strides + bytes_a)};
    args.epilogue.ptr_C = h->arrays.c;
    args.epilogue.dC = (typename G::StrideD *)(strides + bytes_a + bytes_b);
    args.epilogue.ptr_D = h->arrays.d;
    args.epilogue.dD = (typename G::StrideD *)(strides + bytes_a + bytes_b);
    if constexpr (std::is_same_v<typename G::Fusion, PlainEpilogue>) {
        args.epilogue.thread.alpha = 1.0f;
        args.epilogue.thread.beta = 0.0f;
    }
    args.hw_info = hw;
    if (G::Gemm::can_implement(args) != cutlass::Status::kSuccess) {
        moe_error("grouped gemm: CUTLASS cannot run n_out %d k %d", n_out, k);
        return MOE_STATUS_UNSUPPORTED;
    }
    size_t ws = G::Gemm::get_workspace_size(args);
    if (ws && (status = gg_cuda(cudaMalloc(&p->workspace, ws), "workspace")) != MOE_STATUS_OK) {
        plan_release(p);
        return status;
    }
    if (p->gemm.initialize(args, p->workspace) != cutlass::Status::kSuccess) {
        plan_release(p);
        moe_error("grouped gemm: CUTLASS initialize failed (n_out %d k %d)", n_out, k);
        return MOE_STATUS_CUDA_ERROR;
    }
    p->n_out = n_out, p->k = k, p->groups = groups, p->ready = true;
    *out = p;
    return MOE_STATUS_OK;
}

template <class G>
static moe_status_t run_plan(gg_cutlass_s *h, Plan<G> *slots, const moe_bf16_t *x, const moe_bf16_t *const *w,
                                size_t w_offset, const int *offset, int groups, int n_out, int k,
                                const moe_bf16_t *gate, moe_bf16_t *y, cudaStream_t stream)
{
    constexpr bool swap = std::is_same_v<typename G::LayoutD, cutlass::layout::ColumnMajor>;
    Plan<G> *p;
    moe_status_t status = plan_get<G>(h, slots, groups, n_out, k, &p);
    if (status != MOE_STATUS_OK) return status;
    k_setup<<<(h->max_groups + 127) / 128, 128, 0, stream>>>(offset, groups, h->max_groups, n_out, k, swap,
                                                             (const Element *)x,
                                                      (const Element *const *)w, w_offset, (const Element *)gate,
                                                      (Element *)y, h->arrays.problem, h->arrays.a,
                                                      h->arrays.b, h->arrays.c, h->arrays.d);
    if ((status = gg_cuda(cudaGetLastError(), "setup launch")) != MOE_STATUS_OK) return status;
    if (p->gemm.run(stream) != cutlass::Status::kSuccess) {
        moe_error("grouped gemm: CUTLASS launch failed: %s", cudaGetErrorString(cudaGetLastError()));
        return MOE_STATUS_CUDA_ERROR;
    }
    return MOE_STATUS_OK;
}

static void gg_cutlass_destroy(gg_cutlass_s *h)
{
    if (!h) return;
    h->t128x128.release(), h->t128x256.release(), h->t128x256c2.release(), h->t256x128.release();
    h->t128x128pp.release();
    h->swap32.release(), h->swap64.release();
    if (h->block) cudaFree(h->block);
    delete h;
}

static moe_status_t gg_cutlass_create(int max_groups, gg_cutlass_s **out)
{
    gg_cutlass_s *h = new (std::nothrow) gg_cutlass_s();
    if (!h) return MOE_STATUS_NO_MEMORY;
    h->max_groups = max_groups;
    moe_status_t status = gg_cuda(cudaGetDevice(&h->device), "cudaGetDevice");
    if (status == MOE_STATUS_OK)
        status = gg_cuda(cudaDeviceGetAttribute(&h->sms, cudaDevAttrMultiProcessorCount, h->device), "SM count");
    /* One block: the problems and four pointer arrays per group. */
    const size_t n = (size_t)max_groups;
    const size_t bytes = n * sizeof(ProblemShape::UnderlyingProblemShape) + 4 * n * sizeof(void *) + 5 * 256;
    if (status == MOE_STATUS_OK) status = gg_cuda(cudaMalloc(&h->block, bytes), "array allocation");
    if (status != MOE_STATUS_OK) {
        gg_cutlass_destroy(h);
        return status;
    }
    char *cur = (char *)h->block;
    auto cut = [&](size_t b) {
        void *p = cur;
        cur += (b + 255) / 256 * 256;
        return p;
    };
    h->arrays.problem = (ProblemShape::UnderlyingProblemShape *)cut(n * sizeof(ProblemShape::UnderlyingProblemShape));
    h->arrays.a = (const Element **)cut(n * sizeof(void *));
    h->arrays.b = (const Element **)cut(n * sizeof(void *));
    h->arrays.c = (const Element **)cut(n * sizeof(void *));
    h->arrays.d = (Element **)cut(n * sizeof(void *));
    *out = h;
    return MOE_STATUS_OK;
}
#endif /* GG_CUTLASS */

/* ---------------------------------------------------------------- the handle */

struct moe_ggemm_s {
    int max_groups;
    bool cutlass_ok; /* the device is sm_90 and this build has CUTLASS */
#if GG_CUTLASS
    gg_cutlass_s *cutlass;
#endif
};

extern "C" moe_status_t moe_ggemm_create(int max_groups, moe_ggemm_h *out)
{
    moe_ggemm_h g = (moe_ggemm_h)calloc(1, sizeof *g);
    if (!g) return MOE_STATUS_NO_MEMORY;
    g->max_groups = max_groups > 0 ? max_groups : 1;
#if GG_CUTLASS
    int device = 0, major = 0, minor = 0;
    if (cudaGetDevice(&device) == cudaSuccess &&
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) == cudaSuccess &&
        major == 9 && minor == 0) {
        moe_status_t status = gg_cutlass_create(g->max_groups, &g->cutlass);
        if (status != MOE_STATUS_OK) {
            free(g);
            return status;
        }
        g->cutlass_ok = true;
    }
#endif
    *out = g;
    return MOE_STATUS_OK;
}

extern "C" void moe_ggemm_destroy(moe_ggemm_h g)
{
    if (!g) return;
#if GG_CUTLASS
    gg_cutlass_destroy(g->cutlass);
#endif
    free(g);
}

extern "C" bool moe_ggemm_tensor_cores(const moe_ggemm_h g, int n_out, int k)
{
    return g->cutlass_ok && n_out % 8 == 0 && k % 8 == 0;
}

extern "C" const char *moe_gemm_path_name(moe_gemm_path_t path)
{
    switch (path) {
    case MOE_GEMM_PATH_AUTO: return "auto";
    case MOE_GEMM_PATH_128x128: return "cutlass_128x128";
    case MOE_GEMM_PATH_128x256: return "cutlass_128x256";
    case MOE_GEMM_PATH_128x256_C2: return "cutlass_128x256_c2";
    case MOE_GEMM_PATH_256x128: return "cutlass_256x128";
    case MOE_GEMM_PATH_128x128_PINGPONG: return "cutlass_128x128_pingpong";
    case MOE_GEMM_PATH_SWAP32: return "cutlass_swap_128x32";
    case MOE_GEMM_PATH_SWAP64: return "cutlass_swap_128x64";
    case MOE_GEMM_PATH_CUDA_CORES: return "cuda_cores";
    case MOE_GEMM_PATH_CUBLAS: return "cublas_per_expert";
    case MOE_GEMM_PATH_COUNT: break;
    }
    return "?";
}

extern "C" moe_status_t moe_ggemm_prepare(moe_ggemm_h g, moe_gemm_path_t path, int groups, int n_out, int k)
{
    if (groups <= 0 || groups > g->max_groups) return MOE_STATUS_OK;
#if GG_CUTLASS
    if (moe_ggemm_tensor_cores(g, n_out, k)) {
        gg_cutlass_s *h = g->cutlass;
        switch (path) {
        case MOE_GEMM_PATH_128x128: return h->t128x128.prepare(h, groups, n_out, k);
        case MOE_GEMM_PATH_128x256: return h->t128x256.prepare(h, groups, n_out, k);
        case MOE_GEMM_PATH_128x256_C2: return h->t128x256c2.prepare(h, groups, n_out, k);
        case MOE_GEMM_PATH_256x128: return h->t256x128.prepare(h, groups, n_out, k);
        case MOE_GEMM_PATH_128x128_PINGPONG: return h->t128x128pp.prepare(h, groups, n_out, k);
        case MOE_GEMM_PATH_SWAP32: return h->swap32.prepare(h, groups, n_out, k);
        case MOE_GEMM_PATH_SWAP64: return h->swap64.prepare(h, groups, n_out, k);
        default: break;
        }
    }
#else
    (void)path, (void)n_out, (void)k;
#endif
    return MOE_STATUS_OK;
}

extern "C" moe_status_t moe_ggemm_run(moe_ggemm_h g, moe_gemm_path_t path, const moe_bf16_t *x,
                                      const moe_bf16_t *const *w, size_t w_offset, const int *offset, int groups,
                                      int max_rows, int n_out, int k, const moe_bf16_t *gate, moe_bf16_t *y,
                                      cudaStream_t stream)
{
    if (groups <= 0 || n_out <= 0 || k <= 0 || max_rows <= 0) return MOE_STATUS_OK;
    if (groups > g->max_groups) {
        moe_error("grouped gemm: %d groups, the handle was made for %d", groups, g->max_groups);
        return MOE_STATUS_INTERNAL;
    }
    if (path == MOE_GEMM_PATH_AUTO) path = MOE_GEMM_PATH_128x128;
#if GG_CUTLASS
    if (path != MOE_GEMM_PATH_CUDA_CORES && moe_ggemm_tensor_cores(g, n_out, k)) {
        gg_cutlass_s *h = g->cutlass;
        switch (path) {
        case MOE_GEMM_PATH_128x256: return h->t128x256.run(h, x, w, w_offset, offset, groups, n_out, k, gate, y, stream);
        case MOE_GEMM_PATH_128x256_C2:
            return h->t128x256c2.run(h, x, w, w_offset, offset, groups, n_out, k, gate, y, stream);
        case MOE_GEMM_PATH_256x128: return h->t256x128.run(h, x, w, w_offset, offset, groups, n_out, k, gate, y, stream);
        case MOE_GEMM_PATH_128x128_PINGPONG:
            return h->t128x128pp.run(h, x, w, w_offset, offset, groups, n_out, k, gate, y, stream);
        case MOE_GEMM_PATH_SWAP32: return h->swap32.run(h, x, w, w_offset, offset, groups, n_out, k, gate, y, stream);
        case MOE_GEMM_PATH_SWAP64: return h->swap64.run(h, x, w, w_offset, offset, groups, n_out, k, gate, y, stream);
        case MOE_GEMM_PATH_128x128: return h->t128x128.run(h, x, w, w_offset, offset, groups, n_out, k, gate, y, stream);
        default:
            moe_error("grouped gemm: path %s is not a grouped GEMM", moe_gemm_path_name(path));
            return MOE_STATUS_INTERNAL;
        }
    }
#endif
    dim3 grid((unsigned)((n_out + FB_TILE - 1) / FB_TILE), (unsigned)((max_rows + FB_TILE - 1) / FB_TILE),
              (unsigned)groups);
    k_grouped_gemm_fallback<<<grid, FB_TILE * 8, 0, stream>>>((const bf16 *)x, (const bf16 *const *)w, w_offset,
                                                              offset, n_out, k, (const bf16 *)gate, (bf16 *)y);
    return gg_cuda(cudaGetLastError(), "fallback launch");
}
