/* fuzz_stats: routing statistics files (safetensors with moerun's metadata) and the workload the
 * placement solvers build from them. */
#include "placement/placement.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    moe_workload_h w = NULL;
    if (moe_workload_load_stats(fuzz_file(data, size), &w) == MOE_STATUS_OK) moe_workload_destroy(w);
    return 0;
}
