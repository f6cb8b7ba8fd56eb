/* dispatch_rules: the few rules of the dispatch layout that the CPU reference (dispatch_cpu.c) and
 * the GPU kernels (dispatch.cu) must apply identically, written once for both compilers: which
 * chunk a token belongs to, and which replica of an expert a token takes. Private to kernels/.
 *
 * The replica rule is moe_plan_pick_replica's (placement/plan.c): a hash of (layer, expert, token)
 * against the replicas' cumulative shares, summed in double in replica order. The hash is
 * common.c's moe_hash; tests/kernels compares both with the originals. */
#ifndef MOE_KERNELS_DISPATCH_RULES_H
#define MOE_KERNELS_DISPATCH_RULES_H

#include <stdint.h>

#ifdef __CUDACC__
#define MOE_HD static inline __host__ __device__
#else
#define MOE_HD static inline
#endif

MOE_HD uint64_t moe_rules_splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* common.c's moe_hash(seed, a, b, c, d). */
MOE_HD uint64_t moe_rules_hash(uint64_t seed, uint64_t a, uint64_t b, uint64_t c, uint64_t d)
{
    uint64_t h = moe_rules_splitmix64(seed);
    h = moe_rules_splitmix64(h ^ a);
    h = moe_rules_splitmix64(h ^ b);
    h = moe_rules_splitmix64(h ^ c);
    return moe_rules_splitmix64(h ^ d);
}

/* Replica index (first .. first + count - 1) that global token `token` takes for (layer, expert). */
MOE_HD int moe_rules_pick(int layer, int expert, int64_t token, int first, int count, const float *share)
{
    if (count == 1) return first;
    const uint64_t h = moe_rules_hash(0x706c616eULL, (uint64_t)layer, (uint64_t)expert, (uint64_t)token, 0);
    const double u = (double)(h >> 11) * (1.0 / 9007199254740992.0);
    double acc = 0;
    for (int i = 0; i < count - 1; i++) {
        acc += share[first + i];
        if (u < acc) return first + i;
    }
    return first + count - 1;
}

/* Chunk c of `chunks` holds tokens [n c / C, n (c+1) / C): the chunk of token t < n. */
MOE_HD int moe_rules_chunk(int t, int n, int chunks)
{
    return (int)((((int64_t)t + 1) * chunks + n - 1) / n - 1);
}

#endif
