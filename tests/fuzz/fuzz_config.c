/* fuzz_config: the configuration loader (YAML, the settings table) and its cross-field checks. */
#include "runtime/model/model.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static moe_config_t config;
    moe_config_defaults(&config);
    if (moe_config_load(fuzz_file(data, size), &config) == MOE_STATUS_OK) {
        (void)moe_config_validate(&config, 4);
        FILE *null = fopen("/dev/null", "w");
        if (null) {
            moe_config_print(&config, null);
            fclose(null);
        }
    }
    return 0;
}
