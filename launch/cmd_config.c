/* cmd_config: `moerun config --from-hf DIR [-o OUT.yaml]`, the moerun configuration for a Hugging
 * Face checkpoint (DIR, or DIR/config.json): the model settings its config.json implies and
 * weights.checkpoint set to its folder (absolute), over the defaults of everything else. `moerun
 * infer -c OUT.yaml` runs it. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "io/io.h"
#include "launch/cli.h"
#include "launch/commands.h"
#include "runtime/runtime.h"

static void config_usage(FILE *out)
{
    fprintf(out,
            "usage: moerun config --from-hf DIR [-o OUT.yaml] [--json]\n"
            "\n"
            "  --from-hf DIR    a Hugging Face checkpoint's folder, or its config.json (Mixtral, Qwen2-MoE,\n"
            "                   Qwen3-MoE, OLMoE, DeepSeek-V2, DeepSeek-V3); the folder holds the safetensors\n"
            "  -o OUT.yaml      where to write the configuration (default: standard output)\n"
            "  --json           one JSON line on stdout: the model's shape and where the YAML went\n"
            "  --log-level L    error | warn | info | debug (info reports dense layers skipped)\n"
            "  --version        moerun's version and git commit\n");
}

typedef struct {
    const char *from, *output;
} config_args_t;

static int config_option(void *ctx, int id, const char *arg)
{
    config_args_t *a = ctx;
    if (id == 'f') a->from = arg;
    else if (id == 'o') a->output = arg;
    else return -1;
    return 0;
}

int moe_cmd_config(int argc, char **argv)
{
    static const struct option options[] = {{"from-hf", required_argument, NULL, 'f'},
                                            {"output", required_argument, NULL, 'o'}, {0}};
    config_args_t a = {0};
    moe_cli_t cli = MOE_CLI_INIT("config");
    int rc = moe_cli_parse(&cli, argc, argv, "o:", options, config_option, &a);
    if (rc != 0) return rc;
    if (cli.help || cli.version) {
        if (cli.version) moe_cli_print_version(stdout);
        else config_usage(stdout);
        return 0;
    }
    if (!a.from) {
        fprintf(stderr, "moerun config: needs --from-hf DIR\n\n");
        config_usage(stderr);
        return 2;
    }
    moe_log_init(0, cli.level);
    /* a folder stands for its config.json */
    char json_path[MOE_PATH_MAX];
    struct stat st;
    if (stat(a.from, &st) == 0 && S_ISDIR(st.st_mode)) {
        size_t n = strlen(a.from);
        while (n > 1 && a.from[n - 1] == '/') n--;
        if (snprintf(json_path, sizeof json_path, "%.*s/config.json", (int)n, a.from) >= (int)sizeof json_path) {
            fprintf(stderr, "moerun config: --from-hf %s: the path is too long\n", a.from);
            return 2;
        }
    } else if (snprintf(json_path, sizeof json_path, "%s", a.from) >= (int)sizeof json_path) {
        fprintf(stderr, "moerun config: --from-hf %s: the path is too long\n", a.from);
        return 2;
    }
    moe_config_t config;
    if (moe_config_from_hf(json_path, &config) != MOE_STATUS_OK) return 1;
    snprintf(config.source_path, sizeof config.source_path, "%s", json_path);
    if (!a.output && !cli.json) {
        moe_config_print(&config, stdout);
        return 0;
    }
    if (a.output) {
        moe_atomic_file_t file;
        if (moe_atomic_file_open(a.output, &file) != MOE_STATUS_OK) return 1;
        moe_config_print(&config, file.fp);
        if (moe_atomic_file_commit(&file) != MOE_STATUS_OK) return 1;
    }
    if (cli.json) {
        json_t *r = moe_json_record("config");
        json_object_set_new(r, "from", json_string(json_path));
        json_object_set_new(r, "output", a.output ? json_string(a.output) : json_null());
        json_object_set_new(r, "model", json_string(config.model.name));
        json_object_set_new(r, "layers", json_integer(config.model.layers));
        json_object_set_new(r, "experts", json_integer(config.model.experts));
        json_object_set_new(r, "top_k", json_integer(config.model.top_k));
        json_object_set_new(r, "d_model", json_integer(config.model.d_model));
        json_object_set_new(r, "d_ff", json_integer(config.model.d_ff));
        json_object_set_new(r, "checkpoint", json_string(config.weights.checkpoint));
        if (!a.output) { /* the YAML itself, as text */
            char *text = NULL;
            size_t len = 0;
            FILE *mem = open_memstream(&text, &len);
            if (!mem) return 1;
            moe_config_print(&config, mem);
            fclose(mem);
            json_object_set_new(r, "yaml", json_string(text));
            free(text);
        }
        return moe_json_line_write(stdout, NULL, false, r) == MOE_STATUS_OK ? 0 : 1;
    }
    fprintf(stderr, "moerun config: %s (%d MoE layers, %d experts, top_k %d) -> %s\n", config.model.name,
            config.model.layers, config.model.experts, config.model.top_k, a.output);
    return 0;
}
