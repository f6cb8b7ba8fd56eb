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
    moe_plan_destroy(plan);
    moe_plan_destroy(NULL);
    return moe_test_result("plan");
}
