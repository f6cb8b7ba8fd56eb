/* fuzz_plan: plan files (bounded YAML, then the placement table), and the lookups a run makes. */
#include "placement/placement.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    moe_plan_h plan = NULL;
    char model[256];
    if (moe_plan_load_annotated(fuzz_file(data, size), model, sizeof model, &plan) != MOE_STATUS_OK)
        return 0;
    if (moe_plan_check(plan, "fuzz") != MOE_STATUS_OK) abort(); /* the loader checked it */
    for (int l = 0; l < moe_plan_layers(plan); l++)
        for (int r = 0; r < moe_plan_ranks(plan) && r < 64; r++) {
            const int *experts;
            int n = moe_plan_local_experts(plan, l, r, &experts);
            for (int i = 0; i < n; i++)
                if (moe_plan_local_slot(plan, l, r, experts[i]) != i) abort();
        }
    moe_plan_destroy(plan);
    return 0;
}
