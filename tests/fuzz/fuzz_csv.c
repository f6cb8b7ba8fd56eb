/* fuzz_csv: CSVs of per-layer expert loads (`moerun place --loads-csv`), with and without a label. */
#include "placement/placement.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_file(data, size);
    char labelled[96];
    snprintf(labelled, sizeof labelled, "%s@x", path);
    const char *specs[] = {path, labelled};
    for (int i = 0; i < 2; i++) {
        moe_workload_h w = NULL;
        if (moe_workload_load_csv(specs[i], 100, &w) == MOE_STATUS_OK) moe_workload_destroy(w);
    }
    return 0;
}
