/* stats: routing statistics (see placement.h for what each tensor counts).
 * The same accumulation serves `moerun infer` (each rank adds its tokens, then the counts are summed
 * over ranks) and `moerun stats` (a whole trace at once), so the two agree by construction. */
#include "placement/placement.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/io.h"

struct moe_stats_s {
    int layers, experts, top_k;
    int64_t tokens;
    int64_t *loads;        /* [L][E] */
    int64_t *coactivation; /* [L][E][E] */
    int64_t *transitions;  /* [max(L-1,1)][E][E] */
};

static size_t transitions_layers(int layers) { return layers > 1 ? (size_t)layers - 1 : 0; }

moe_status_t moe_stats_create(int layers, int experts, int top_k, moe_stats_h *out)
{
    if (layers < 1 || experts < 1 || top_k < 1 || top_k > experts) {
        moe_error("statistics: bad shape (%d layers, %d experts, top_k %d)", layers, experts, top_k);
        return MOE_STATUS_INVALID_ARGUMENT;
    }
    struct moe_stats_s *s = calloc(1, sizeof *s);
    if (!s) return MOE_STATUS_NO_MEMORY;
    size_t ee = (size_t)experts * experts;
    s->layers = layers;
    s->experts = experts;
    s->top_k = top_k;
    s->loads = moe_calloc((size_t)layers * experts, sizeof(int64_t));
    s->coactivation = moe_calloc((size_t)layers * ee, sizeof(int64_t));
    s->transitions = moe_calloc(transitions_layers(layers) * ee, sizeof(int64_t));
    if (!s->loads || !s->coactivation || !s->transitions) {
        moe_stats_destroy(s);
        moe_error("statistics: out of memory for %d layers x %d experts", layers, experts);
        return MOE_STATUS_NO_MEMORY;
    }
    *out = s;
    return MOE_STATUS_OK;
}

void moe_stats_destroy(moe_stats_h stats)
{
    if (!stats) return;
    moe_free(stats->loads);
    moe_free(stats->coactivation);
    moe_free(stats->transitions);
    free(stats);
}

void moe_stats_add(moe_stats_h s, const int32_t *ids, int64_t n)
{
    const int E = s->experts, k = s->top_k;
    const size_t ee = (size_t)E * E;
    for (int l = 0; l < s->layers; l++) {
        const int32_t *cur = ids + (size_t)l * n * k;
        const int32_t *next = l + 1 < s->layers ? ids + (size_t)(l + 1) * n * k : NULL;
        int64_t *loads = s->loads + (size_t)l * E;
        int64_t *co = s->coactivation + (size_t)l * ee;
        int64_t *tr = next ? s->transitions + (size_t)l * ee : NULL;
        for (int64_t t = 0; t < n; t++) {
            const int32_t *a = cur + t * k;
            for (int i = 0; i < k; i++) {
                if (a[i] < 0 || a[i] >= E) continue;
                loads[a[i]]++;
                for (int j = 0; j < k; j++)
                    if (a[j] >= 0 && a[j] < E) co[(size_t)a[i] * E + a[j]]++;
                if (tr) {
                    const int32_t *b = next + t * k;
                    for (int j = 0; j < k; j++)
                        if (b[j] >= 0 && b[j] < E) tr[(size_t)a[i] * E + b[j]]++;
                }
            }
        }
    }
    s->tokens += n;
}

int moe_stats_layers(const moe_stats_h s) { return s->layers; }
int moe_stats_experts(const moe_stats_h s) { return s->experts; }
int moe_stats_top_k(const moe_stats_h s) { return s->top_k; }
int64_t moe_stats_tokens(const moe_stats_h s) { return s->tokens; }
int64_t *moe_stats_loads(moe_stats_h s) { return s->loads; }
int64_t *moe_stats_coactivation(moe_stats_h s) { return s->coactivation; }
int64_t *moe_stats_transitions(moe_stats_h s) { return s->transitions; }
void moe_stats_set_tokens(moe_stats_h s, int64_t tokens) { s->tokens = tokens; }

moe_status_t moe_stats_save(const moe_stats_h s, const char *model_name, const char *path)
{
    int64_t L = s->layers, E = s->experts;
    moe_tensor_t tensors[3] = {
        {.name = "loads", .dtype = MOE_DTYPE_I64, .ndim = 2, .shape = {L, E}, .data = s->loads},
        {.name = "coactivation", .dtype = MOE_DTYPE_I64, .ndim = 3, .shape = {L, E, E},
         .data = s->coactivation},
        {.name = "transitions", .dtype = MOE_DTYPE_I64, .ndim = 3,
         .shape = {(int64_t)transitions_layers(s->layers), E, E}, .data = s->transitions},
    };
    char layers[32], experts[32], top_k[32], tokens[32];
    snprintf(layers, sizeof layers, "%d", s->layers);
    snprintf(experts, sizeof experts, "%d", s->experts);
    snprintf(top_k, sizeof top_k, "%d", s->top_k);
    snprintf(tokens, sizeof tokens, "%lld", (long long)s->tokens);
    const char *keys[] = {"format", "model", "layers", "experts", "top_k", "tokens"};
    const char *values[] = {"moerun-stats-1", model_name ? model_name : "", layers, experts, top_k,
                            tokens};
    return moe_safetensors_write(path, tensors, 3, keys, values, 6);
}

/* Parse a positive integer metadata value, naming the file and key when it is absent or bad. */
static moe_status_t stats_meta_int(moe_safetensors_h f, const char *key, long long *out)
{
    const char *v = moe_safetensors_metadata(f, key);
    char *end = NULL;
    long long x = v ? strtoll(v, &end, 10) : -1;
    if (!v || *end != '\0' || x < 0) {
        moe_error("%s: metadata %s is %s%s%s, expected a non-negative integer",
                  moe_safetensors_path(f), key, v ? "\"" : "missing", v ? v : "", v ? "\"" : "");
        return MOE_STATUS_FORMAT_ERROR;
    }
    *out = x;
    return MOE_STATUS_OK;
}

/* Tensor `name`, checked to be I64 of the shape the metadata implies (before anything is
 * allocated from that metadata: the tensors' sizes are bounded by the file's). */
static moe_status_t stats_find_tensor(moe_safetensors_h f, const char *name, int ndim,
                                      const int64_t *shape, moe_tensor_view_t *out)
{
    moe_tensor_view_t v;
    moe_status_t status = moe_safetensors_find(f, name, &v);
    if (status != MOE_STATUS_OK) return status;
    bool ok = v.dtype == MOE_DTYPE_I64 && v.ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = v.shape[i] == shape[i];
    if (!ok) {
        char want[96], got[96];
        int n = 0, m = 0;
        for (int i = 0; i < ndim; i++)
            n += snprintf(want + n, sizeof want - (size_t)n, "%s%lld", i ? ", " : "", (long long)shape[i]);
        for (int i = 0; i < v.ndim && m < (int)sizeof got; i++)
            m += snprintf(got + m, sizeof got - (size_t)m, "%s%lld", i ? ", " : "", (long long)v.shape[i]);
        got[m < (int)sizeof got ? m : (int)sizeof got - 1] = '\0';
        moe_error("%s: tensor %s must be I64 of shape [%s], as the metadata says; it is %s [%s]",
                  moe_safetensors_path(f), name, want, moe_dtype_name(v.dtype), got);
        return MOE_STATUS_FORMAT_ERROR;
    }
    *out = v;
    return MOE_STATUS_OK;
}

moe_status_t moe_stats_load(const char *path, moe_stats_h *out)
{
    moe_status_t status = MOE_STATUS_OK;
    moe_safetensors_h f = NULL;
    moe_stats_h s = NULL;
    long long L, E, k, tokens;
    MOE_CHECK(moe_safetensors_open(path, &f), fail);
    MOE_CHECK(stats_meta_int(f, "layers", &L), fail);
    MOE_CHECK(stats_meta_int(f, "experts", &E), fail);
    MOE_CHECK(stats_meta_int(f, "top_k", &k), fail);
    MOE_CHECK(stats_meta_int(f, "tokens", &tokens), fail);
    if (L < 1 || E < 1 || k < 1 || k > E || L > MOE_MAX_LAYERS || E > MOE_MAX_EXPERTS)
        MOE_FAIL(MOE_STATUS_FORMAT_ERROR, fail, "%s: metadata gives an impossible shape (%lld "
                 "layers, %lld experts, top_k %lld; at most %d layers and %d experts)", path, L, E, k,
                 MOE_MAX_LAYERS, MOE_MAX_EXPERTS);
    int64_t shape_le[2] = {L, E}, shape_lee[3] = {L, E, E}, shape_tee[3] = {L - 1, E, E};
    moe_tensor_view_t loads, co, tr;
    MOE_CHECK(stats_find_tensor(f, "loads", 2, shape_le, &loads), fail);
    MOE_CHECK(stats_find_tensor(f, "coactivation", 3, shape_lee, &co), fail);
    MOE_CHECK(stats_find_tensor(f, "transitions", 3, shape_tee, &tr), fail);
    MOE_CHECK(moe_stats_create((int)L, (int)E, (int)k, &s), fail);
    memcpy(s->loads, loads.data, loads.nbytes);
    memcpy(s->coactivation, co.data, co.nbytes);
    memcpy(s->transitions, tr.data, tr.nbytes);
    s->tokens = tokens;
    moe_safetensors_close(f);
    *out = s;
    return MOE_STATUS_OK;
fail:
    moe_stats_destroy(s);
    moe_safetensors_close(f);
    return status;
}
