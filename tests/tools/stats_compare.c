/* stats_compare: exit 0 when two routing-statistics files hold the same shape, token count and
 * counts, element for element. */
#include <stdio.h>
#include <string.h>

#include "placement/placement.h"

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: stats_compare A.safetensors B.safetensors\n");
        return 2;
    }
    moe_stats_h a = NULL, b = NULL;
    if (moe_stats_load(argv[1], &a) != MOE_STATUS_OK || moe_stats_load(argv[2], &b) != MOE_STATUS_OK)
        return 2;
    int rc = 1;
    const size_t L = (size_t)moe_stats_layers(a), E = (size_t)moe_stats_experts(a);
    if (moe_stats_layers(b) != (int)L || moe_stats_experts(b) != (int)E ||
        moe_stats_top_k(a) != moe_stats_top_k(b)) {
        fprintf(stderr, "stats_compare: shapes differ\n");
    } else if (moe_stats_tokens(a) != moe_stats_tokens(b)) {
        fprintf(stderr, "stats_compare: %lld vs %lld tokens\n", (long long)moe_stats_tokens(a),
                (long long)moe_stats_tokens(b));
    } else if (memcmp(moe_stats_loads(a), moe_stats_loads(b), sizeof(int64_t) * L * E) ||
               memcmp(moe_stats_coactivation(a), moe_stats_coactivation(b), sizeof(int64_t) * L * E * E) ||
               memcmp(moe_stats_transitions(a), moe_stats_transitions(b), sizeof(int64_t) * (L - 1) * E * E)) {
        fprintf(stderr, "stats_compare: counts differ\n");
    } else {
        int64_t total = 0;
        for (size_t i = 0; i < L * E; i++) total += moe_stats_loads(a)[i];
        printf("stats_compare: equal (%lld tokens, %zu layers, %zu experts, %lld routed pairs)\n",
               (long long)moe_stats_tokens(a), L, E, (long long)total);
        rc = total == moe_stats_tokens(a) * moe_stats_top_k(a) * (int64_t)L ? 0 : 1;
        if (rc) fprintf(stderr, "stats_compare: loads do not add up to tokens x top_k x layers\n");
    }
    moe_stats_destroy(a);
    moe_stats_destroy(b);
    return rc;
}
