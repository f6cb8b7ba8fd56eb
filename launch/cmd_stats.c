/* cmd_stats: `moerun stats`, routing statistics from a recorded trace, the same counts that
 * `moerun infer --stats` records (one accumulator serves both; see placement/stats.c). */
#include <jansson.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/io.h"
#include "launch/cli.h"
#include "launch/commands.h"
#include "placement/placement.h"

static void stats_usage(FILE *out)
{
    fprintf(out,
            "usage: moerun stats --trace IDS.npy -o S.safetensors [--experts E] [--model NAME]\n"
            "                    [--tokens N] [--json]\n"
            "\n"
            "  --trace IDS.npy   expert ids [layers, tokens, top_k], any integer dtype\n"
            "  -o FILE           statistics (safetensors: loads, coactivation, transitions)\n"
            "  --experts E       experts per layer (default: the largest id + 1)\n"
            "  --model NAME      model name stored in the metadata (default: the trace's file name)\n"
            "  --tokens N        use the first N tokens only (default: all)\n"
            "  --json            one JSON line on stdout instead of the sentence\n"
            "  --version         moerun's version and git commit\n");
}

typedef struct {
    const char *trace, *output, *model;
    long long experts, tokens;
} stats_args_t;

static int stats_option(void *ctx, int id, const char *arg)
{
    stats_args_t *a = ctx;
    switch (id) {
    case 't': a->trace = arg; return 0;
    case 'o': a->output = arg; return 0;
    case 'm': a->model = arg; return 0;
    case 'e':
        if (moe_cli_int(arg, 1, MOE_MAX_EXPERTS, &a->experts)) return 0;
        fprintf(stderr, "moerun stats: --experts '%s': expected a whole number in [1, %d]\n", arg, MOE_MAX_EXPERTS);
        return 2;
    case 'n':
        if (moe_cli_int(arg, 1, LLONG_MAX, &a->tokens)) return 0;
        fprintf(stderr, "moerun stats: --tokens '%s': expected a whole number >= 1\n", arg);
        return 2;
    default: return -1;
    }
}

int moe_cmd_stats(int argc, char **argv)
{
    static const struct option options[] = {
        {"trace", required_argument, NULL, 't'}, {"output", required_argument, NULL, 'o'},
        {"model", required_argument, NULL, 'm'}, {"experts", required_argument, NULL, 'e'},
        {"tokens", required_argument, NULL, 'n'}, {0}};
    stats_args_t args = {.tokens = -1};
    moe_cli_t cli = MOE_CLI_INIT("stats");
    int prc = moe_cli_parse(&cli, argc, argv, "o:", options, stats_option, &args);
    if (prc != 0) return prc;
    if (cli.help || cli.version) {
        if (cli.version) moe_cli_print_version(stdout);
        else stats_usage(stdout);
        return 0;
    }
    moe_log_init(0, cli.level);
    const char *trace = args.trace, *output = args.output, *model = args.model;
    const long long experts = args.experts, tokens = args.tokens;
    if (!trace || !output) {
        fprintf(stderr, "moerun stats: needs --trace and -o\n\n");
        stats_usage(stderr);
        return 2;
    }
    moe_array_t a = {0};
    int32_t *ids = NULL;
    moe_stats_h stats = NULL;
    int rc = 1;
    if (moe_atomic_file_check(output) != MOE_STATUS_OK) goto done; /* before the work, not after */
    if (moe_npy_read(trace, &a) != MOE_STATUS_OK) goto done;
    if (a.ndim != 3 || !moe_dtype_is_integer(a.dtype) || a.shape[0] < 1 || a.shape[2] < 1) {
        fprintf(stderr, "moerun stats: %s: expected integer ids [layers, tokens, top_k]\n", trace);
        goto done;
    }
    const int64_t L = a.shape[0], T = a.shape[1], k = a.shape[2];
    if (L > MOE_MAX_LAYERS || k > MOE_MAX_TOP_K) {
        fprintf(stderr, "moerun stats: %s: %lld layers and top_k %lld; moerun handles at most %d and %d\n",
                trace, (long long)L, (long long)k, MOE_MAX_LAYERS, MOE_MAX_TOP_K);
        goto done;
    }
    ids = malloc(sizeof(int32_t) * (size_t)moe_array_numel(&a) + 1);
    if (!ids) {
        fprintf(stderr, "moerun stats: %s: out of memory for %lld ids\n", trace, (long long)moe_array_numel(&a));
        goto done;
    }
    if (moe_array_to_i32(&a, trace, ids) != MOE_STATUS_OK) goto done;
    const int32_t id_limit = experts > 0 ? (int32_t)experts : MOE_MAX_EXPERTS;
    int64_t max_at = -1;
    for (int64_t i = 0; i < L * T * k; i++) {
        if (ids[i] < 0 || ids[i] >= id_limit) {
            fprintf(stderr, "moerun stats: %s: layer %lld, token %lld: expert id %d out of range [0, %d)%s\n",
                    trace, (long long)(i / (T * k)), (long long)(i / k % T), ids[i], id_limit,
                    experts > 0 ? " (--experts)" : " (the most experts moerun handles)");
            goto done;
        }
        if (max_at < 0 || ids[i] > ids[max_at]) max_at = i;
    }
    /* E inferred from the largest id: the counts are L x E x E, so a few bytes of trace must not
     * stand for gigabytes of statistics unless --experts says the model really is that large. */
    const int64_t E = experts > 0 ? experts : max_at >= 0 ? ids[max_at] + 1 : 1;
    const double stats_bytes = 16.0 * (double)L * (double)E * (double)E;
    if (experts == 0 && stats_bytes > moe_inferred_budget((double)a.nbytes)) {
        fprintf(stderr, "moerun stats: %s: its largest expert id, %d (layer %lld, token %lld), implies "
                "%lld experts, whose statistics would take %.1f GB from %zu bytes of ids; give --experts "
                "if the model has that many\n", trace, ids[max_at], (long long)(max_at / (T * k)),
                (long long)(max_at / k % T), (long long)E, stats_bytes / 1e9, a.nbytes);
        goto done;
    }
    int64_t n = tokens > 0 && tokens < T ? tokens : T;
    if (n < T) /* keep the first n tokens of every layer, layer-major */
        for (int64_t l = 1; l < L; l++)
            memmove(ids + l * n * k, ids + l * T * k, sizeof(int32_t) * (size_t)(n * k));
    if (moe_stats_create((int)L, (int)E, (int)k, &stats) != MOE_STATUS_OK) goto done;
    moe_stats_add(stats, ids, n);
    char name[256];
    if (!model) {
        const char *base = strrchr(trace, '/');
        snprintf(name, sizeof name, "%s", base ? base + 1 : trace);
        model = name;
    }
    if (moe_stats_save(stats, model, output) != MOE_STATUS_OK) goto done;
    if (cli.json) {
        json_t *r = moe_json_record("stats");
        json_object_set_new(r, "trace", json_string(trace));
        json_object_set_new(r, "output", json_string(output));
        json_object_set_new(r, "model", json_string(model));
        json_object_set_new(r, "tokens", json_integer(n));
        json_object_set_new(r, "layers", json_integer(L));
        json_object_set_new(r, "experts", json_integer(moe_stats_experts(stats)));
        json_object_set_new(r, "top_k", json_integer(k));
        if (moe_json_line_write(stdout, NULL, false, r) != MOE_STATUS_OK) goto done;
    } else {
        printf("moerun stats: %lld tokens, %lld layers, %d experts, top_k %lld -> %s\n", (long long)n,
               (long long)L, moe_stats_experts(stats), (long long)k, output);
    }
    rc = 0;
done:
    moe_stats_destroy(stats);
    free(ids);
    moe_array_free(&a);
    return rc;
}
