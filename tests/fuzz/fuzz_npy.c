/* fuzz_npy: the .npy reader, the conversions a run applies to what it reads, and the trace loader
 * of `moerun place` on top of them. */
#include "io/io.h"
#include "placement/placement.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_file(data, size);
    moe_array_t a = {0};
    if (moe_npy_read(path, &a) == MOE_STATUS_OK) {
        size_t n = (size_t)moe_array_numel(&a);
        void *out = malloc(4 * n + 4);
        if (out) {
            (void)moe_array_to_f32(&a, path, out);
            (void)moe_array_to_i32(&a, path, out);
        }
        free(out);
        moe_workload_h w = NULL;
        if (moe_workload_load_trace(path, 0, &w) == MOE_STATUS_OK) moe_workload_destroy(w);
    }
    moe_array_free(&a);
    return 0;
}
