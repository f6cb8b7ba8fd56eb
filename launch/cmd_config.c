/* cmd_config: `moerun config --from-hf DIR/config.json [-o OUT.yaml]`, the moerun configuration for
 * a Hugging Face checkpoint: the model settings its config.json implies and weights.checkpoint set to
 * its folder (absolute), over the defaults of everything else. `moerun infer -c OUT.yaml` runs it. */
#include <stdio.h>
#include <string.h>

#include "io/io.h"
#include "launch/commands.h"
#include "runtime/runtime.h"

static void config_usage(FILE *out)
{
    fprintf(out,
            "usage: moerun config --from-hf DIR/config.json [-o OUT.yaml]\n"
            "\n"
            "  --from-hf FILE   a Hugging Face checkpoint's config.json (Mixtral, Qwen2-MoE, Qwen3-MoE,\n"
            "                   OLMoE, DeepSeek-V2, DeepSeek-V3); its folder holds the safetensors\n"
            "  -o OUT.yaml      where to write the configuration (default: standard output)\n"
            "  --log-level L    error | warn | info | debug (info reports dense layers skipped)\n");
}

int moe_cmd_config(int argc, char **argv)
{
    const char *from = NULL, *output = NULL;
    moe_log_level_t level = MOE_LOG_WARN;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            config_usage(stdout);
            return 0;
        } else if (!strcmp(a, "--from-hf") && v) from = v, i++;
        else if (!strcmp(a, "-o") && v) output = v, i++;
        else if (!strcmp(a, "--log-level") && v) {
            static const char *names[] = {"error", "warn", "info", "debug"};
            int found = -1;
            for (int j = 0; j < 4; j++)
                if (!strcmp(v, names[j])) found = j;
            if (found < 0) {
                fprintf(stderr, "moerun config: --log-level: unknown level '%s'\n", v);
                return 2;
            }
            level = (moe_log_level_t)found;
            i++;
        } else {
            fprintf(stderr, "moerun config: unknown or incomplete option '%s'\n\n", a);
            config_usage(stderr);
            return 2;
        }
    }
    if (!from) {
        fprintf(stderr, "moerun config: needs --from-hf DIR/config.json\n\n");
        config_usage(stderr);
        return 2;
    }
    moe_log_init(0, level);
    moe_config_t config;
    if (moe_config_from_hf(from, &config) != MOE_STATUS_OK) return 1;
    snprintf(config.source_path, sizeof config.source_path, "%s", from);
    if (!output) {
        moe_config_print(&config, stdout);
        return 0;
    }
    moe_atomic_file_t file;
    if (moe_atomic_file_open(output, &file) != MOE_STATUS_OK) return 1;
    moe_config_print(&config, file.fp);
    if (moe_atomic_file_commit(&file) != MOE_STATUS_OK) return 1;
    fprintf(stderr, "moerun config: %s (%d MoE layers, %d experts, top_k %d) -> %s\n", config.model.name,
            config.model.layers, config.model.experts, config.model.top_k, output);
    return 0;
}
