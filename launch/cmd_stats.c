/* cmd_stats: `moerun stats`, routing statistics from a recorded trace, the same counts that
 * `moerun infer --stats` records (one accumulator serves both; see placement/stats.c). */
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
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

/* A whole decimal number in [1, max]. */
static bool parse_count(const char *s, long long max, long long *out)
{
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (end == s || *end || errno || v < 1 || v > max) return false;
    *out = v;
    return true;
}

int moe_cmd_stats(int argc, char **argv)
{
    const char *trace = NULL, *output = NULL, *model = NULL;
    long long experts = 0, tokens = -1;
    moe_log_init(0, MOE_LOG_WARN);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            stats_usage(stdout);
            return 0;
        } else if (!strcmp(a, "--trace") && v) trace = v, i++;
        else if (!strcmp(a, "-o") && v) output = v, i++;
        else if (!strcmp(a, "--model") && v) model = v, i++;
        else if (!strcmp(a, "--experts") && v) {
            if (!parse_count(v, MOE_MAX_EXPERTS, &experts)) {
                fprintf(stderr, "moerun stats: --experts '%s': expected a whole number in [1, %d]\n", v,
                        MOE_MAX_EXPERTS);
                return 2;
            }
            i++;
        } else if (!strcmp(a, "--tokens") && v) {
            if (!parse_count(v, LLONG_MAX, &tokens)) {
                fprintf(stderr, "moerun stats: --tokens '%s': expected a whole number >= 1\n", v);
                return 2;
            }
            i++;
        } else {
            fprintf(stderr, "moerun stats: unknown or incomplete option '%s'\n\n", a);
            stats_usage(stderr);
            return 2;
        }
    }
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
    printf("moerun stats: %lld tokens, %lld layers, %d experts, top_k %lld -> %s\n", (long long)n,
           (long long)L, moe_stats_experts(stats), (long long)k, output);
    rc = 0;
done:
    moe_stats_destroy(stats);
    free(ids);
    moe_array_free(&a);
    return rc;
}
