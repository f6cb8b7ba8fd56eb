/* fuzz_safetensors: the safetensors reader: header, offsets, every view and the metadata. */
#include <string.h>

#include "io/io.h"
#include "tests/fuzz/fuzz.h"

static volatile uint8_t sink; /* the views are read, not just checked */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    moe_safetensors_h f = NULL;
    if (moe_safetensors_open(fuzz_file(data, size), &f) != MOE_STATUS_OK) return 0;
    for (int i = 0; i < moe_safetensors_count(f); i++) {
        moe_tensor_view_t v;
        if (moe_safetensors_get(f, i, &v) != MOE_STATUS_OK) abort();
        if (v.nbytes) sink ^= ((const uint8_t *)v.data)[0] ^ ((const uint8_t *)v.data)[v.nbytes - 1];
        moe_tensor_view_t again;
        if (moe_safetensors_find(f, v.name, &again) != MOE_STATUS_OK || again.data != v.data) abort();
    }
    const char *m = moe_safetensors_metadata(f, "format");
    if (m) sink ^= (uint8_t)strlen(m);
    moe_safetensors_close(f);
    return 0;
}
