/* loads_csv.c: the sources a plan is made from, turned into workloads.
 *
 * A workload holds per-layer statistics as doubles: loads [L][E], co-activation [L][E][E] and
 * transitions [L-1][E][E] (see placement.h for their meaning), and, when it comes from a trace, the
 * routes themselves so that plans can be replayed exactly. Three readers:
 *   - traces (.npy ids [L][T][k], any integer type), optionally a token range PATH@START:END;
 *   - statistics files (safetensors, via moe_stats_load);
 *   - CSVs of per-layer loads as published for Qwen3-30B-A3B: header "Layer,<label>,Expert_0,...",
 *     one row per (layer, label) holding the fraction of tokens that picked each expert (a row
 *     sums to top_k). Rows of one layer are added up unless PATH@LABEL picks one label. Such a
 *     workload has loads only: the traffic terms treat its co-activation as unknown (zero).
 * Errors name the file (and line and column for CSVs). */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "io/io.h"
#include "placement/place-impl.h"

moe_status_t moe_workload_alloc(const char *name, int layers, int experts, int top_k, bool pairs,
                                moe_workload_h *out)
{
    moe_status_t status = MOE_STATUS_OK;
    if (layers <= 0 || experts <= 0 || top_k <= 0 || top_k > experts) {
        moe_error("%s: bad shape: %d layers, %d experts, top-%d", name, layers, experts, top_k);
        return MOE_STATUS_INVALID_ARGUMENT;
    }
    moe_workload_h w = moe_calloc(1, sizeof(*w));
    MOE_CHECK_ALLOC(w, fail);
    snprintf(w->name, sizeof(w->name), "%s", name);
    w->layers = layers;
    w->experts = experts;
    w->top_k = top_k;
    w->loads = moe_calloc((size_t)layers * experts, sizeof(double));
    MOE_CHECK_ALLOC(w->loads, fail_w);
    if (pairs) {
        w->coact = moe_calloc((size_t)layers * experts * experts, sizeof(double));
        MOE_CHECK_ALLOC(w->coact, fail_w);
        if (layers > 1) {
            w->trans = moe_calloc((size_t)(layers - 1) * experts * experts, sizeof(double));
            MOE_CHECK_ALLOC(w->trans, fail_w);
        }
    }
    *out = w;
    return MOE_STATUS_OK;
fail_w:
    moe_workload_destroy(w);
fail:
    return status;
}

moe_status_t moe_workload_alloc_windows(moe_workload_h w, int windows)
{
    moe_free(w->window_loads);
    w->windows = 0;
    w->window_loads = moe_calloc((size_t)windows * w->layers * w->experts, sizeof(double));
    if (!w->window_loads) {
        moe_error("%s: out of memory for %d windows", w->name, windows);
        return MOE_STATUS_NO_MEMORY;
    }
    w->windows = windows;
    return MOE_STATUS_OK;
}

void moe_workload_destroy(moe_workload_h w)
{
    if (!w) return;
    moe_free(w->window_loads);
    moe_free(w->loads);
    moe_free(w->coact);
    moe_free(w->trans);
    moe_free(w->ids);
    moe_free(w);
}

const char *moe_workload_name(const moe_workload_h w)
{
    return w->name;
}
int moe_workload_layers(const moe_workload_h w)
{
    return w->layers;
}
int moe_workload_experts(const moe_workload_h w)
{
    return w->experts;
}
int moe_workload_top_k(const moe_workload_h w)
{
    return w->top_k;
}
double moe_workload_tokens(const moe_workload_h w)
{
    return w->tokens;
}
bool moe_workload_has_routes(const moe_workload_h w)
{
    return w->ids != NULL;
}
const double *moe_workload_loads(const moe_workload_h w)
{
    return w->loads;
}
const double *moe_workload_coactivation(const moe_workload_h w)
{
    return w->coact;
}

/* ---------------------------------------------------------------- routes */

/* Distinct valid experts of one token at one layer into set (k long); returns how many. */
static int token_set(const int32_t *row, int k, int experts, int *set)
{
    int n = 0;
    for (int j = 0; j < k; j++) {
        int e = row[j];
        if (e < 0 || e >= experts) continue;
        bool seen = false;
        for (int i = 0; i < n; i++) seen |= set[i] == e;
        if (!seen) set[n++] = e;
    }
    return n;
}

moe_status_t moe_workload_from_ids(const int32_t *ids, int layers, int64_t tokens, int top_k,
                                   int experts, const char *name, moe_workload_h *out)
{
    moe_status_t status = MOE_STATUS_OK;
    moe_workload_h w = NULL;
    if (tokens <= 0) {
        moe_error("%s: no tokens", name);
        return MOE_STATUS_INVALID_ARGUMENT;
    }
    size_t n_ids = (size_t)layers * (size_t)tokens * (size_t)top_k;
    for (size_t i = 0; i < n_ids; i++) {
        if (ids[i] >= experts) {
            size_t l = i / ((size_t)tokens * top_k), t = (i / top_k) % (size_t)tokens;
            moe_error("%s: expert id %d at layer %zu, token %zu is out of range (%d experts)", name,
                      ids[i], l, t, experts);
            return MOE_STATUS_FORMAT_ERROR;
        }
    }
    MOE_CHECK(moe_workload_alloc(name, layers, experts, top_k, true, &w), fail);
    w->ids = moe_calloc(n_ids, sizeof(int32_t));
    MOE_CHECK_ALLOC(w->ids, fail_w);
    memcpy(w->ids, ids, n_ids * sizeof(int32_t));
    w->route_tokens = tokens;
    w->tokens = (double)tokens;
    int set[64], next[64];
    if (top_k > 64) MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, fail_w, "%s: top-%d > 64", name, top_k);
    /* contiguous blocks of tokens are the scenarios of the hedged objective */
    int64_t nw = tokens / MOE_WORKLOAD_WINDOW_MIN_TOKENS;
    nw = nw < 1 ? 1 : nw > MOE_WORKLOAD_WINDOWS ? MOE_WORKLOAD_WINDOWS : nw;
    MOE_CHECK(moe_workload_alloc_windows(w, (int)nw), fail_w);
    size_t EE = (size_t)experts * experts, LE = (size_t)layers * experts;
    for (int l = 0; l < layers; l++) {
        double *loads = w->loads + (size_t)l * experts;
        double *co = w->coact + (size_t)l * EE;
        for (int64_t t = 0; t < tokens; t++) {
            int n = token_set(ids + ((size_t)l * tokens + t) * top_k, top_k, experts, set);
            double *win = w->window_loads + (size_t)(t * nw / tokens) * LE + (size_t)l * experts;
            for (int i = 0; i < n; i++) {
                win[set[i]] += 1;
                loads[set[i]] += 1;
                for (int j = 0; j < n; j++) co[(size_t)set[i] * experts + set[j]] += 1;
            }
            if (l + 1 < layers) {
                double *tr = w->trans + (size_t)l * EE;
                int m =
                    token_set(ids + ((size_t)(l + 1) * tokens + t) * top_k, top_k, experts, next);
                for (int i = 0; i < n; i++)
                    for (int j = 0; j < m; j++) tr[(size_t)set[i] * experts + next[j]] += 1;
            }
        }
    }
    *out = w;
    return MOE_STATUS_OK;
fail_w:
    moe_workload_destroy(w);
fail:
    return status;
}

/* PATH[@START:END]: split off the range. */
static moe_status_t parse_range(const char *spec, char *path, size_t path_size, int64_t *start,
                                int64_t *end)
{
    *start = 0;
    *end = -1;
    const char *at = strrchr(spec, '@');
    size_t len = at ? (size_t)(at - spec) : strlen(spec);
    if (len + 1 > path_size) {
        moe_error("%s: path too long", spec);
        return MOE_STATUS_INVALID_ARGUMENT;
    }
    memcpy(path, spec, len);
    path[len] = '\0';
    if (!at) return MOE_STATUS_OK;
    char *colon = NULL;
    errno = 0;
    long long a = strtoll(at + 1, &colon, 10);
    if (colon == at + 1 || *colon != ':' || errno || a < 0) goto bad;
    if (colon[1] == '\0') return *start = a, MOE_STATUS_OK;
    char *stop = NULL;
    long long b = strtoll(colon + 1, &stop, 10);
    if (*stop != '\0' || errno || b <= a) goto bad;
    *start = a;
    *end = b;
    return MOE_STATUS_OK;
bad:
    moe_error("%s: bad token range after '@' (expected START:END with START < END)", spec);
    return MOE_STATUS_INVALID_ARGUMENT;
}

moe_status_t moe_workload_load_trace(const char *spec, int experts, moe_workload_h *out)
{
    moe_status_t status = MOE_STATUS_OK;
    char path[4096];
    int64_t start, end;
    moe_array_t arr = {0};
    int32_t *ids = NULL, *slice = NULL;
    MOE_CHECK(parse_range(spec, path, sizeof(path), &start, &end), done);
    MOE_CHECK(moe_npy_read(path, &arr), done);
    if (arr.ndim != 3 || !moe_dtype_is_integer(arr.dtype))
        MOE_FAIL(MOE_STATUS_FORMAT_ERROR, done,
                 "%s: a trace holds integer ids [layers, tokens, top_k]; this array has %d dims, "
                 "dtype %s",
                 path, arr.ndim, moe_dtype_name(arr.dtype));
    int64_t L = arr.shape[0], T = arr.shape[1], K = arr.shape[2];
    if (L < 1 || L > MOE_MAX_LAYERS || K < 1 || K > MOE_MAX_TOP_K)
        MOE_FAIL(MOE_STATUS_FORMAT_ERROR, done, "%s: %lld layers and top_k %lld; moerun handles 1 to %d "
                 "and 1 to %d", path, (long long)L, (long long)K, MOE_MAX_LAYERS, MOE_MAX_TOP_K);
    if (end < 0) end = T;
    if (start >= T || end > T)
        MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, done, "%s: token range %lld:%lld outside 0:%lld",
                 path, (long long)start, (long long)end, (long long)T);
    ids = moe_calloc((size_t)moe_array_numel(&arr), sizeof(int32_t));
    MOE_CHECK_ALLOC(ids, done);
    MOE_CHECK(moe_array_to_i32(&arr, path, ids), done);
    int64_t n = end - start;
    slice = moe_calloc((size_t)(L * n * K), sizeof(int32_t));
    MOE_CHECK_ALLOC(slice, done);
    int32_t max_id = -1;
    for (int64_t l = 0; l < L; l++) {
        memcpy(slice + l * n * K, ids + (l * T + start) * K, (size_t)(n * K) * sizeof(int32_t));
        for (int64_t i = 0; i < n * K; i++)
            if (slice[l * n * K + i] > max_id) max_id = slice[l * n * K + i];
    }
    if (max_id < 0) MOE_FAIL(MOE_STATUS_FORMAT_ERROR, done, "%s: no valid expert id", path);
    if (max_id >= (experts > 0 ? experts : MOE_MAX_EXPERTS))
        MOE_FAIL(MOE_STATUS_FORMAT_ERROR, done, "%s: expert id %d, but the model has %d experts%s", path,
                 max_id, experts > 0 ? experts : MOE_MAX_EXPERTS,
                 experts > 0 ? "" : " at most (the most moerun handles)");
    /* The trace does not say how many experts the model has: unless told, the largest id + 1
     * rounded up to a multiple of 8 (real models have 8, 64, 128, 256 ...). */
    if (experts <= 0) {
        experts = (max_id + 8) / 8 * 8;
        /* the pair counts are L x E x E doubles, twice: not from a few bytes of ids */
        double bytes = 16.0 * (double)L * experts * experts;
        if (bytes > moe_inferred_budget((double)arr.nbytes))
            MOE_FAIL(MOE_STATUS_FORMAT_ERROR, done, "%s: its largest expert id, %d, implies %d experts, "
                     "whose statistics would take %.1f GB from %zu bytes of ids; give --experts if the "
                     "model has that many", path, max_id, experts, bytes / 1e9, arr.nbytes);
    }
    MOE_CHECK(moe_workload_from_ids(slice, (int)L, n, (int)K, experts, spec, out), done);
done:
    moe_free(slice);
    moe_free(ids);
    moe_array_free(&arr);
    return status;
}

/* ---------------------------------------------------------------- statistics files */

moe_status_t moe_workload_from_stats(const moe_stats_h stats, const char *name, moe_workload_h *out)
{
    moe_status_t status = MOE_STATUS_OK;
    moe_stats_h s = (moe_stats_h)stats;
    int L = moe_stats_layers(s), E = moe_stats_experts(s);
    moe_workload_h w = NULL;
    MOE_CHECK(moe_workload_alloc(name, L, E, moe_stats_top_k(s), true, &w), fail);
    w->tokens = (double)moe_stats_tokens(s);
    const int64_t *loads = moe_stats_loads(s), *co = moe_stats_coactivation(s);
    const int64_t *tr = moe_stats_transitions(s);
    for (size_t i = 0; i < (size_t)L * E; i++) {
        if (loads[i] < 0) MOE_FAIL(MOE_STATUS_FORMAT_ERROR, fail_w, "%s: negative load", name);
        w->loads[i] = (double)loads[i];
    }
    for (size_t i = 0; i < (size_t)L * E * E; i++) w->coact[i] = co ? (double)co[i] : 0;
    if (w->trans)
        for (size_t i = 0; i < (size_t)(L - 1) * E * E; i++) w->trans[i] = tr ? (double)tr[i] : 0;
    if (w->tokens <= 0) MOE_FAIL(MOE_STATUS_FORMAT_ERROR, fail_w, "%s: no tokens", name);
    MOE_CHECK(moe_workload_alloc_windows(w, 1), fail_w);
    memcpy(w->window_loads, w->loads, sizeof(double) * L * E);
    *out = w;
    return MOE_STATUS_OK;
fail_w:
    moe_workload_destroy(w);
fail:
    return status;
}

moe_status_t moe_workload_load_stats(const char *path, moe_workload_h *out)
{
    moe_status_t status = MOE_STATUS_OK;
    moe_stats_h s = NULL;
    MOE_CHECK(moe_stats_load(path, &s), done);
    MOE_CHECK(moe_workload_from_stats(s, path, out), done);
done:
    moe_stats_destroy(s);
    return status;
}

/* ---------------------------------------------------------------- CSV loads */

/* Split a CSV line in place into at most max fields; returns the count. */
static int split_csv(char *line, char **fields, int max)
{
    int n = 0;
    char *p = line;
    while (n < max) {
        fields[n++] = p;
        char *c = strchr(p, ',');
        if (!c) break;
        *c = '\0';
        p = c + 1;
    }
    char *end = fields[n - 1] + strlen(fields[n - 1]);
    while (end > fields[n - 1] && isspace((unsigned char)end[-1])) *--end = '\0';
    return n;
}

moe_status_t moe_workload_load_csv(const char *spec, double tokens, moe_workload_h *out)
{
    moe_status_t status = MOE_STATUS_OK;
    char path[4096];
    const char *at = strrchr(spec, '@');
    const char *label = at ? at + 1 : NULL;
    size_t len = at ? (size_t)(at - spec) : strlen(spec);
    FILE *fp = NULL;
    char *line = NULL;
    size_t cap = 0;
    char **fields = NULL;
    double *rows = NULL; /* [max_layers][E] */
    double *each = NULL; /* every row read, in order: [nrows][E] (the scenarios) */
    int *each_slot = NULL; /* [nrows]: where the row goes in the windows, (occurrence, layer) */
    size_t each_cap = 0;
    int *seen = NULL;
    moe_workload_h w = NULL;
    if (len >= sizeof(path) || !(tokens > 0)) {
        moe_error("%s: %s", spec, len >= sizeof(path) ? "path too long" : "--tokens must be > 0");
        return MOE_STATUS_INVALID_ARGUMENT;
    }
    memcpy(path, spec, len);
    path[len] = '\0';
    fp = fopen(path, "r");
    if (!fp) MOE_FAIL(MOE_STATUS_IO_ERROR, done, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(fp), &st) == 0 && S_ISDIR(st.st_mode))
        MOE_FAIL(MOE_STATUS_IO_ERROR, done, "%s: is a directory, not a CSV file", path);
    if (getline(&line, &cap, fp) < 0)
        MOE_FAIL(MOE_STATUS_FORMAT_ERROR, done, "%s:1: empty file (expected a header)", path);
    int max_fields = 2;
    for (char *p = line; *p; p++) max_fields += *p == ',';
    fields = calloc((size_t)max_fields, sizeof(char *));
    MOE_CHECK_ALLOC(fields, done);
    int nh = split_csv(line, fields, max_fields);
    int E = nh - 2;
    if (E < 1 || strcmp(fields[0], "Layer") != 0)
        MOE_FAIL(MOE_STATUS_FORMAT_ERROR, done,
                 "%s:1: header must be Layer,<label>,Expert_0,...,Expert_{E-1}", path);
    if (E > MOE_MAX_EXPERTS)
        MOE_FAIL(MOE_STATUS_FORMAT_ERROR, done, "%s:1: %d expert columns; moerun handles at most %d",
                 path, E, MOE_MAX_EXPERTS);
    for (int e = 0; e < E; e++) {
        char want[32];
        snprintf(want, sizeof(want), "Expert_%d", e);
        if (strcmp(fields[2 + e], want) != 0)
            MOE_FAIL(MOE_STATUS_FORMAT_ERROR, done, "%s:1: column %d is '%s', expected '%s'", path,
                     3 + e, fields[2 + e], want);
    }
    /* Rows per layer are kept as read: as many layers as the file has rows at most, so the table
     * stays within a few times the file's size. */
    long data_at = ftell(fp), data_lines = 0;
    for (int c; (c = fgetc(fp)) != EOF;) data_lines += c == '\n';
    data_lines++; /* a last line without its newline */
    if (data_at < 0 || fseek(fp, data_at, SEEK_SET) != 0)
        MOE_FAIL(MOE_STATUS_IO_ERROR, done, "%s: cannot read it twice: %s", path, strerror(errno));
    int max_layers = data_lines < MOE_MAX_LAYERS ? (int)data_lines : MOE_MAX_LAYERS;
    rows = calloc((size_t)max_layers * E, sizeof(double));
    seen = calloc((size_t)max_layers, sizeof(int));
    MOE_CHECK_ALLOC(rows, done);
    MOE_CHECK_ALLOC(seen, done);
    int layers = 0, lineno = 1;
    double ksum = 0;
    int nrows = 0;
    while (getline(&line, &cap, fp) >= 0) {
        lineno++;
        if (line[0] == '\n' || line[0] == '\0') continue;
        int nf = split_csv(line, fields, max_fields);
        if (nf != nh)
            MOE_FAIL(MOE_STATUS_FORMAT_ERROR, done, "%s:%d: %d fields, the header has %d", path,
                     lineno, nf, nh);
        char *end = NULL;
        long layer = strtol(fields[0], &end, 10);
        if (end == fields[0] || *end || layer < 0 || layer >= max_layers)
            MOE_FAIL(MOE_STATUS_FORMAT_ERROR, done, "%s:%d: column Layer: '%s' is not a layer (0 to %d: "
                     "no more layers than the file has rows)", path, lineno, fields[0], max_layers - 1);
        if (label && strcmp(fields[1], label) != 0) continue;
        if ((size_t)nrows == each_cap) {
            size_t nc = each_cap ? 2 * each_cap : 64;
            double *ne = realloc(each, sizeof(double) * nc * E);
            MOE_CHECK_ALLOC(ne, done);
            each = ne;
            int *ns = realloc(each_slot, sizeof(int) * nc * 2);
            MOE_CHECK_ALLOC(ns, done);
            each_slot = ns;
            each_cap = nc;
        }
        each_slot[2 * nrows] = seen[layer];
        each_slot[2 * nrows + 1] = (int)layer;
        double sum = 0;
        for (int e = 0; e < E; e++) {
            double v = strtod(fields[2 + e], &end);
            if (end == fields[2 + e] || *end || !(v >= 0) || v > 1)
                MOE_FAIL(MOE_STATUS_FORMAT_ERROR, done,
                         "%s:%d: column Expert_%d: '%s' is not a fraction in [0, 1]", path, lineno,
                         e, fields[2 + e]);
            rows[(size_t)layer * E + e] += v * tokens;
            each[(size_t)nrows * E + e] = v * tokens;
            sum += v;
        }
        ksum += sum;
        nrows++;
        seen[layer]++;
        if (layer + 1 > layers) layers = (int)layer + 1;
    }
    if (nrows == 0)
        MOE_FAIL(MOE_STATUS_FORMAT_ERROR, done, "%s: no rows%s%s", path, label ? " labelled " : "",
                 label ? label : "");
    for (int l = 0; l < layers; l++)
        if (seen[l] != seen[0])
            MOE_FAIL(MOE_STATUS_FORMAT_ERROR, done, "%s: layer %d has %d rows, layer 0 has %d",
                     path, l, seen[l], seen[0]);
    int top_k = (int)(ksum / nrows + 0.5);
    if (top_k < 1) top_k = 1;
    MOE_CHECK(moe_workload_alloc(spec, layers, E, top_k, false, &w), done);
    memcpy(w->loads, rows, (size_t)layers * E * sizeof(double));
    w->tokens = tokens * seen[0];
    /* each label (the k-th row of every layer) is one scenario of the hedged objective */
    MOE_CHECK(moe_workload_alloc_windows(w, seen[0]), done);
    for (int i = 0; i < nrows; i++)
        memcpy(w->window_loads + ((size_t)each_slot[2 * i] * layers + each_slot[2 * i + 1]) * E,
               each + (size_t)i * E, sizeof(double) * E);
    *out = w;
    w = NULL;
done:
    moe_workload_destroy(w);
    free(seen);
    free(each_slot);
    free(each);
    free(rows);
    free(fields);
    free(line);
    if (fp) fclose(fp);
    return status;
}
