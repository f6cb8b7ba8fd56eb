/* cmd_stats: `moerun stats`, routing statistics from a recorded trace, the same counts that
 * `moerun infer --stats` records (one accumulator serves both; see placement/stats.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/io.h"
#include "launch/commands.h"
#include "placement/placement.h"

static void stats_usage(FILE *out)
{
    fprintf(out,
            "usage: moerun stats --trace IDS.npy -o S.safetensors [--experts E] [--model NAME]\n"
            "                    [--tokens N]\n"
            "\n"
            "  --trace IDS.npy   expert ids [layers, tokens, top_k], any integer dtype\n"
            "  -o FILE           statistics (safetensors: loads, coactivation, transitions)\n"
            "  --experts E       experts per layer (default: the largest id + 1)\n"
            "  --model NAME      model name stored in the metadata (default: the trace's file name)\n"
            "  --tokens N        use the first N tokens only (default: all)\n");
}

int moe_cmd_stats(int argc, char **argv)
{
    const char *trace = NULL, *output = NULL, *model = NULL;
    long experts = 0, tokens = -1;
    moe_log_init(0, MOE_LOG_WARN);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            stats_usage(stdout);
            return 0;
        } else if (!strcmp(a, "--trace") && v) trace = v, i++;
        else if (!strcmp(a, "-o") && v) output = v, i++;
        else if (!strcmp(a, "--model") && v) model = v, i++;
        else if (!strcmp(a, "--experts") && v) experts = strtol(v, NULL, 10), i++;
        else if (!strcmp(a, "--tokens") && v) tokens = strtol(v, NULL, 10), i++;
        else {
            fprintf(stderr, "moerun stats: unknown or incomplete option '%s'\n\n", a);
            stats_usage(stderr);
            return 2;
        }
    }
    if (!trace || !output || experts < 0 || tokens == 0 || tokens < -1) {
        fprintf(stderr, "moerun stats: needs --trace and -o (and positive --experts, --tokens)\n\n");
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
    ids = malloc(sizeof(int32_t) * (size_t)moe_array_numel(&a) + 1);
    if (!ids || moe_array_to_i32(&a, trace, ids) != MOE_STATUS_OK) goto done;
    int32_t max_id = -1;
    for (int64_t i = 0; i < L * T * k; i++) {
        if (ids[i] < 0 || (experts > 0 && ids[i] >= experts)) {
            fprintf(stderr, "moerun stats: %s: layer %lld, token %lld: expert id %d out of range\n",
                    trace, (long long)(i / (T * k)), (long long)(i / k % T), ids[i]);
            goto done;
        }
        if (ids[i] > max_id) max_id = ids[i];
    }
    int64_t n = tokens > 0 && tokens < T ? tokens : T;
    if (n < T) /* keep the first n tokens of every layer, layer-major */
        for (int64_t l = 1; l < L; l++)
            memmove(ids + l * n * k, ids + l * T * k, sizeof(int32_t) * (size_t)(n * k));
    if (moe_stats_create((int)L, experts > 0 ? (int)experts : max_id + 1, (int)k, &stats) !=
        MOE_STATUS_OK)
        goto done;
    moe_stats_add(stats, ids, n);
    char name[256];
    if (!model) {
        const char *base = strrchr(trace, '/');
        snprintf(name, sizeof name, "%s", base ? base + 1 : trace);
        model = name;
    }
    if (moe_stats_save(stats, model, output) != MOE_STATUS_OK) goto done;
    printf("moerun stats: %lld tokens, %lld layers, %d experts, top_k %lld -> %s\n", (long long)n,
           (long long)L, moe_stats_experts(stats), (long long)k, output);
    rc = 0;
done:
    moe_stats_destroy(stats);
    free(ids);
    moe_array_free(&a);
    return rc;
}
