/* test_plan: the plan table (placement/plan.c): contiguous plans, local expert lists and slots,
 * validation, and replica picking that is deterministic and realises each replica's share. */
#include <stdlib.h>

#include "check.h"
#include "placement/placement.h"

int main(void)
{
    moe_log_init(0, MOE_LOG_SILENT);
    moe_plan_h plan = NULL;
    CHECK_STATUS(moe_plan_create_contiguous(2, 8, 3, 1, &plan), MOE_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(moe_plan_create_contiguous(2, 8, 4, 2, &plan), MOE_STATUS_OK);
    const int *experts;
    CHECK_EQ_INT(moe_plan_local_experts(plan, 1, 2, &experts), 2);
    CHECK_EQ_INT(experts[0], 4);
    CHECK_EQ_INT(experts[1], 5);
    CHECK_EQ_INT(moe_plan_local_slot(plan, 1, 2, 5), 1);
    CHECK_EQ_INT(moe_plan_local_slot(plan, 1, 2, 6), -1);
    CHECK_EQ_INT(moe_plan_pick_replica(plan, 0, 7, 12345), 3);
    CHECK_STATUS(moe_plan_check(plan, "contiguous"), MOE_STATUS_OK);
    CHECK_STATUS(moe_plan_check_fits(plan, 2, 8, 4, "contiguous"), MOE_STATUS_OK);
    CHECK_STATUS(moe_plan_check_fits(plan, 2, 8, 2, "contiguous"), MOE_STATUS_INVALID_ARGUMENT);
    moe_plan_destroy(plan);

    /* Expert 0 on ranks 3, 0, 2 with shares 0.2, 0.5, 0.3 (added out of rank order). */
    CHECK_STATUS(moe_plan_create_empty(1, 2, 4, 2, &plan), MOE_STATUS_OK);
    CHECK_STATUS(moe_plan_add_replica(plan, 0, 0, 3, 0.2f), MOE_STATUS_OK);
    CHECK_STATUS(moe_plan_add_replica(plan, 0, 0, 0, 0.5f), MOE_STATUS_OK);
    CHECK_STATUS(moe_plan_check(plan, "partial"), MOE_STATUS_INVALID_ARGUMENT); /* expert 1 unhosted */
    CHECK_STATUS(moe_plan_add_replica(plan, 0, 0, 2, 0.3f), MOE_STATUS_OK);
    CHECK_STATUS(moe_plan_add_replica(plan, 0, 0, 2, 0.3f), MOE_STATUS_INVALID_ARGUMENT); /* twice */
    CHECK_STATUS(moe_plan_add_replica(plan, 0, 1, 4, 1.0f), MOE_STATUS_INVALID_ARGUMENT); /* no rank 4 */
    CHECK_STATUS(moe_plan_add_replica(plan, 0, 1, 1, 1.0f), MOE_STATUS_OK);
    CHECK_STATUS(moe_plan_check(plan, "replicas"), MOE_STATUS_OK);
    const int *ranks;
    const float *shares;
    CHECK_EQ_INT(moe_plan_replicas(plan, 0, 0, &ranks, &shares), 3);
    CHECK_EQ_INT(ranks[0], 0);
    CHECK_EQ_INT(ranks[1], 2);
    CHECK_EQ_INT(ranks[2], 3);
    int count[4] = {0};
    const int n = 200000;
    for (int t = 0; t < n; t++) {
        int r = moe_plan_pick_replica(plan, 0, 0, t);
        count[r]++;
        CHECK_EQ_INT(moe_plan_pick_replica(plan, 0, 0, t), r); /* deterministic */
    }
    CHECK_NEAR(count[0] / (double)n, 0.5, 0.01);
    CHECK_NEAR(count[2] / (double)n, 0.3, 0.01);
    CHECK_NEAR(count[3] / (double)n, 0.2, 0.01);
    CHECK_EQ_INT(count[1], 0);
    CHECK_EQ_INT(moe_plan_local_experts(plan, 0, 2, &experts), 1);
    CHECK_EQ_INT(moe_plan_local_experts(plan, 0, 1, &experts), 1);
    CHECK_EQ_INT(experts[0], 1);

    /* Shares that do not sum to 1 are refused. */
    moe_plan_h bad;
    CHECK_STATUS(moe_plan_create_empty(1, 1, 2, 2, &bad), MOE_STATUS_OK);
    moe_plan_add_replica(bad, 0, 0, 0, 0.5f);
    moe_plan_add_replica(bad, 0, 0, 1, 0.6f);
    CHECK_STATUS(moe_plan_check(bad, "bad"), MOE_STATUS_INVALID_ARGUMENT);
    moe_plan_destroy(bad);

    /* Packed and unpacked (what a plan broadcast sends): the same replicas and shares; cut or
     * corrupted bytes are refused. */
    void *bytes = NULL;
    size_t n_bytes = 0;
    CHECK_STATUS(moe_plan_pack(plan, &bytes, &n_bytes), MOE_STATUS_OK);
    moe_plan_h back = NULL;
    CHECK_STATUS(moe_plan_unpack(bytes, n_bytes, "packed", &back), MOE_STATUS_OK);
    if (back) {
        CHECK_EQ_INT(moe_plan_layers(back), moe_plan_layers(plan));
        CHECK_EQ_INT(moe_plan_experts(back), moe_plan_experts(plan));
        CHECK_EQ_INT(moe_plan_ranks(back), moe_plan_ranks(plan));
        CHECK_EQ_INT(moe_plan_ranks_per_node(back), moe_plan_ranks_per_node(plan));
        for (int l = 0; l < moe_plan_layers(plan); l++)
            for (int e = 0; e < moe_plan_experts(plan); e++) {
                const int *r1, *r2;
                const float *s1, *s2;
                int n1 = moe_plan_replicas(plan, l, e, &r1, &s1), n2 = moe_plan_replicas(back, l, e, &r2, &s2);
                CHECK_EQ_INT(n1, n2);
                for (int i = 0; i < n1 && i < n2; i++) {
                    CHECK_EQ_INT(r1[i], r2[i]);
                    CHECK(s1[i] == s2[i]);
                }
            }
    }
    moe_plan_destroy(back);
    back = NULL;
    CHECK_STATUS(moe_plan_unpack(bytes, n_bytes - 4, "cut", &back), MOE_STATUS_FORMAT_ERROR);
    ((int32_t *)bytes)[6] = 1000; /* the first replica count, beyond what the bytes hold */
    CHECK_STATUS(moe_plan_unpack(bytes, n_bytes, "corrupt", &back), MOE_STATUS_FORMAT_ERROR);
    CHECK(back == NULL);
    free(bytes);
    moe_plan_destroy(plan);
    moe_plan_destroy(NULL);
    return moe_test_result("plan");
}
