/* plan_diff: how many expert copies going from plan OLD to plan NEW must move. Prints one line
 * "new_hosts N": the (layer, expert, rank) hosts of NEW whose rank does not host that (layer, expert)
 * in OLD; a rank beyond OLD's ranks hosts nothing there (a scale-up). This is what the runtime's
 * migration must receive and what the solvers report as experts_moved, counted independently from
 * the plan files. The plans may have different rank counts but must agree in layers and experts.
 * Exit 0 on success, 1 when the shapes differ, 2 on usage or unreadable plans. */
#include <stdio.h>

#include "placement/placement.h"

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: plan_diff OLD.yaml NEW.yaml\n");
        return 2;
    }
    moe_plan_h old_plan = NULL, new_plan = NULL;
    int rc = 2;
    if (moe_plan_load(argv[1], &old_plan) != MOE_STATUS_OK ||
        moe_plan_load(argv[2], &new_plan) != MOE_STATUS_OK) {
        fprintf(stderr, "plan_diff: cannot load %s\n", old_plan ? argv[2] : argv[1]);
        goto done;
    }
    const int layers = moe_plan_layers(new_plan), experts = moe_plan_experts(new_plan);
    if (moe_plan_layers(old_plan) != layers || moe_plan_experts(old_plan) != experts) {
        fprintf(stderr, "plan_diff: %s has %d layers x %d experts, %s has %d x %d\n", argv[1],
                moe_plan_layers(old_plan), moe_plan_experts(old_plan), argv[2], layers, experts);
        rc = 1;
        goto done;
    }
    long long new_hosts = 0;
    for (int l = 0; l < layers; l++) {
        for (int e = 0; e < experts; e++) {
            const int *ranks;
            const float *shares;
            int n = moe_plan_replicas(new_plan, l, e, &ranks, &shares);
            for (int i = 0; i < n; i++) new_hosts += moe_plan_local_slot(old_plan, l, ranks[i], e) < 0;
        }
    }
    printf("new_hosts %lld\n", new_hosts);
    rc = 0;

done:
    moe_plan_destroy(new_plan);
    moe_plan_destroy(old_plan);
    return rc;
}
