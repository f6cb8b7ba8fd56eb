/* config: the one table of settings, and the loader, overrides, checks and printer built on it.
 *
 * Every setting is one row of SETTINGS below: dotted name, kind, field of moe_config_t, allowed words
 * (enums), default as text, range and a one-line meaning. Defaults, YAML loading, `--set` overrides,
 * printing and the `--help` listing are all driven by that row, so adding a setting is adding a field and
 * a row. Nothing here reads the environment.
 *
 * Choices worth knowing:
 * - moe_config_load starts from the defaults, then applies the file; on any error the output is left
 *   untouched. It reports every error in the file (not just the first), each once, as
 *   `FILE:LINE: KEY: what is wrong`; `--set` errors read `--set KEY: what is wrong`.
 * - A relative path inside a YAML file is taken relative to the directory of that file and stored joined
 *   to it (lexically: `configs/../x`), so that the config means the same whatever the working directory;
 *   a relative path given with --set stays relative to the working directory. moe_config_print writes the
 *   stored paths, so a printed config reads back identically when it sits in the working directory (or
 *   when its paths are absolute).
 * - Plain (unquoted) `~`, `null` or nothing for a string or path setting means the empty string.
 * - Scalars are read as text whatever their YAML style, so `top_k: "4"` is 4.
 *
 * Invariant: a moe_config_t is zero-filled before its defaults are set and strings are stored zero-padded,
 * so two configurations with the same settings compare equal with memcmp (padding included). */
#include "runtime/model/model.h"

#include "io/io.h"

#include <ctype.h>
#include <errno.h>
#include <float.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "kernels/gemm_path.h"

/* ---------------------------------------------------------------- the table */

typedef enum { KIND_INT, KIND_UINT64, KIND_FLOAT, KIND_BOOL, KIND_STRING, KIND_PATH, KIND_ENUM } kind_t;
typedef enum { RANGE_GE, RANGE_GT } range_t; /* lower bound included (>=) or excluded (>) */

typedef struct {
    kind_t kind;
    size_t offset;             /* into moe_config_t */
    size_t size;               /* bytes of the field; the buffer size for strings and paths */
    const char *const *words;  /* enum: the allowed words, NULL-terminated; the value is the index */
    double min, max;           /* int and float: the allowed range */
    range_t range;             /* whether min itself is allowed */
} setting_t;

static const char *const scoring_words[] = {"softmax", "sigmoid", NULL};
static const char *const backend_words[] = {"cpu", "cuda", NULL};
static const char *const transport_words[] = {"mpi", "nccl", NULL};
static const char *const source_words[] = {"router", "trace", "synthetic", NULL};
static const char *const input_words[] = {"synthetic", "npy", NULL};
static const char *const weights_words[] = {"random", "checkpoint", NULL};
static const char *const buffers_words[] = {"auto", "counted", "fixed", NULL};
static const char *const dispatch_words[] = {"auto", "flat", "hierarchical", NULL};
static const char *const switch_words[] = {"auto", "on", "off", NULL};
static const char *const progress_words[] = {"off", "auto", "on", "false", "true", NULL};
/* kernels.h's moe_gemm_path_t, in its order (moe_gemm_path_name) */
static const char *const gemm_words[] = {"auto", "cutlass_128x128", "cutlass_128x256", "cutlass_128x256_c2",
                                         "cutlass_256x128", "cutlass_128x128_pingpong", "cutlass_swap_128x32",
                                         "cutlass_swap_128x64", "cuda_cores", "cublas_per_expert", NULL};
_Static_assert(sizeof gemm_words / sizeof gemm_words[0] == MOE_GEMM_PATH_COUNT + 1, "gemm_words follows moe_gemm_path_t");

/* Enum fields are read and written as int. */
_Static_assert(sizeof(moe_scoring_t) == sizeof(int), "enum size");
_Static_assert(sizeof(moe_backend_kind_t) == sizeof(int), "enum size");
_Static_assert(sizeof(moe_transport_kind_t) == sizeof(int), "enum size");
_Static_assert(sizeof(moe_routing_source_t) == sizeof(int), "enum size");
_Static_assert(sizeof(moe_input_kind_t) == sizeof(int), "enum size");
_Static_assert(sizeof(moe_weights_kind_t) == sizeof(int), "enum size");
_Static_assert(sizeof(moe_buffers_t) == sizeof(int), "enum size");
_Static_assert(sizeof(moe_dispatch_t) == sizeof(int), "enum size");
_Static_assert(sizeof(moe_switch_t) == sizeof(int), "enum size");

#define NOLIM 0, 0
#define ANY_INT (double)INT_MIN, (double)INT_MAX
#define AT_LEAST(n) (double)(n), (double)INT_MAX
#define FLOAT_MIN(n) (double)(n), (double)FLT_MAX
#define BETWEEN(a, b) (double)(a), (double)(b)
#define MOE_MAX_WIDTH (1 << 20) /* d_model, d_ff: a million, 50x today's widest */

/* X(kind, name, field, C type of the field, enum words, default, limits (min, max), range, meaning).
 * Rows of one section stay together: the printer writes a section header where the section changes. */
#define SETTINGS(X)                                                                                    \
    X(STRING, "model.name", model.name, char *, NULL, "tiny", NOLIM, RANGE_GE,                        \
      "shown in reports and statistics metadata")                                                      \
    X(INT, "model.layers", model.layers, int, NULL, "4", BETWEEN(1, MOE_MAX_LAYERS), RANGE_GE,        \
      "MoE blocks in the stack")                                                                       \
    X(INT, "model.d_model", model.d_model, int, NULL, "64", BETWEEN(1, MOE_MAX_WIDTH), RANGE_GE,      \
      "hidden size d")                                                                                 \
    X(INT, "model.d_ff", model.d_ff, int, NULL, "128", BETWEEN(1, MOE_MAX_WIDTH), RANGE_GE,           \
      "routed expert width f")                                                                         \
    X(INT, "model.experts", model.experts, int, NULL, "8", BETWEEN(1, MOE_MAX_EXPERTS), RANGE_GE,     \
      "routed experts E per layer")                                                                    \
    X(INT, "model.top_k", model.top_k, int, NULL, "2", BETWEEN(1, MOE_MAX_TOP_K), RANGE_GE,           \
      "experts each token is routed to")                                                               \
    X(INT, "model.shared_experts", model.shared_experts, int, NULL, "0", BETWEEN(0, 64), RANGE_GE,    \
      "shared experts applied to every token (0 = none)")                                              \
    X(INT, "model.shared_d_ff", model.shared_d_ff, int, NULL, "0", BETWEEN(0, MOE_MAX_WIDTH), RANGE_GE, \
      "width of each shared expert")                                                                   \
    X(ENUM, "model.scoring", model.scoring, moe_scoring_t, scoring_words, "softmax", NOLIM, RANGE_GE, \
      "router scores: softmax | sigmoid")                                                              \
    X(BOOL, "model.renormalize", model.renormalize, bool, NULL, "true", NOLIM, RANGE_GE,              \
      "rescale the k routing weights to sum 1")                                                        \
    X(INT, "model.groups", model.groups, int, NULL, "1", AT_LEAST(1), RANGE_GE,                       \
      "expert groups for group-limited top-k (1 = off)")                                               \
    X(INT, "model.groups_kept", model.groups_kept, int, NULL, "1", AT_LEAST(1), RANGE_GE,             \
      "groups a token may pick its experts from")                                                      \
    X(FLOAT, "model.routed_scaling", model.routed_scaling, float, NULL, "1.0", FLOAT_MIN(0), RANGE_GT, \
      "factor on the routed output weights")                                                           \
    X(BOOL, "model.score_bias", model.score_bias, bool, NULL, "false", NOLIM, RANGE_GE,               \
      "sigmoid correction bias, added for expert selection only")                                      \
    X(BOOL, "model.shared_gate", model.shared_gate, bool, NULL, "false", NOLIM, RANGE_GE,             \
      "scale the shared experts' output by sigmoid(h . w) (Qwen2-MoE)")                                \
    X(FLOAT, "model.norm_eps", model.norm_eps, float, NULL, "1e-6", FLOAT_MIN(0), RANGE_GT,           \
      "RMSNorm epsilon")                                                                               \
    X(ENUM, "run.backend", run.backend, moe_backend_kind_t, backend_words, "cpu", NOLIM, RANGE_GE,    \
      "compute backend: cpu | cuda")                                                                   \
    X(ENUM, "run.transport", run.transport, moe_transport_kind_t, transport_words, "mpi", NOLIM,      \
      RANGE_GE, "all-to-all transport: mpi | nccl (nccl needs the cuda backend)")                      \
    X(INT, "run.chunks", run.chunks, int, NULL, "1", AT_LEAST(1), RANGE_GE,                           \
      "pipeline chunks C per batch (1 = no overlap)")                                                  \
    X(INT, "run.tokens_per_rank", run.tokens_per_rank, int, NULL, "64", AT_LEAST(1), RANGE_GE,        \
      "tokens each rank owns per batch")                                                               \
    X(ENUM, "run.buffers", run.buffers, moe_buffers_t, buffers_words, "auto", NOLIM, RANGE_GE,         \
      "counted (rows sized by a counts exchange) | fixed (every peer's block full size: no host wait) "  \
      "| auto (fixed for cuda+nccl at <= 256 tokens per rank, one chunk)")                             \
    X(ENUM, "run.dispatch", run.dispatch, moe_dispatch_t, dispatch_words, "auto", NOLIM, RANGE_GE,     \
      "flat (a token goes once to each destination rank) | hierarchical (once to each remote node, "   \
      "to the rank of its own local index there, then forwarded inside the node) | auto "              \
      "(hierarchical when the ranks span more than one node; flat on the cuda backend for now)")      \
    X(INT, "run.ranks_per_node", run.ranks_per_node, int, NULL, "0", AT_LEAST(0), RANGE_GE,           \
      "simulate nodes of N consecutive ranks on one host (0: nodes as the launcher placed the ranks)") \
    X(ENUM, "run.graphs", run.graphs, moe_switch_t, switch_words, "auto", NOLIM, RANGE_GE,             \
      "CUDA graphs of whole layers (cuda+nccl, fixed buffers): on | off | auto (on when fixed)")       \
    X(ENUM, "run.gemm", run.gemm, int, gemm_words, "auto", NOLIM, RANGE_GE,                            \
      "cuda expert GEMMs: auto (timed on the first batches, per rows an expert gets) or one path of "   \
      "docs/cuda.md (cutlass_128x256_c2, cutlass_swap_128x32, cublas_per_expert, ...)")               \
    X(INT, "run.batches", run.batches, int, NULL, "4", AT_LEAST(0), RANGE_GE,                         \
      "batches to run (0 = as many as the trace or input holds)")                                      \
    X(UINT64, "run.seed", run.seed, uint64_t, NULL, "1", NOLIM, RANGE_GE,                             \
      "seed of weights, inputs and synthetic routing")                                                 \
    X(INT, "run.warmup_batches", run.warmup_batches, int, NULL, "0", AT_LEAST(0), RANGE_GE,           \
      "first batches left out of tokens/s")                                                            \
    X(FLOAT, "run.timeout", run.timeout, float, NULL, "300", FLOAT_MIN(0), RANGE_GE,                  \
      "seconds a rank may go unheard while others wait for it; then the job ends (0 = never)")       \
    X(ENUM, "routing.source", routing.source, moe_routing_source_t, source_words, "router", NOLIM,    \
      RANGE_GE, "where routing comes from: router | trace | synthetic")                                \
    X(PATH, "routing.trace_ids", routing.trace_ids, char *, NULL, "", NOLIM, RANGE_GE,                \
      "trace of expert ids, .npy [L, T, k] (routing.source: trace)")                                   \
    X(PATH, "routing.trace_weights", routing.trace_weights, char *, NULL, "", NOLIM, RANGE_GE,        \
      "trace of routing weights, .npy [L, T, k] (optional)")                                           \
    X(FLOAT, "routing.skew", routing.skew, float, NULL, "1.0", FLOAT_MIN(0), RANGE_GE,                \
      "Zipf exponent of synthetic expert popularity")                                                  \
    X(FLOAT, "routing.affinity", routing.affinity, float, NULL, "0.5", BETWEEN(0, 1), RANGE_GE,        \
      "chance a synthetic choice follows the previous layer's")                                        \
    X(ENUM, "input.kind", input.kind, moe_input_kind_t, input_words, "synthetic", NOLIM, RANGE_GE,    \
      "input hidden states: synthetic | npy")                                                          \
    X(PATH, "input.path", input.path, char *, NULL, "", NOLIM, RANGE_GE,                              \
      "input hidden states, .npy [T, d] float32/float16 (input.kind: npy)")                            \
    X(ENUM, "weights.kind", weights.kind, moe_weights_kind_t, weights_words, "random", NOLIM,         \
      RANGE_GE, "expert and router weights: random (seeded) | checkpoint")                             \
    X(FLOAT, "weights.scale", weights.scale, float, NULL, "1.0", FLOAT_MIN(0), RANGE_GT,              \
      "multiplies 1/sqrt(fan_in) of the random weights")                                               \
    X(PATH, "weights.checkpoint", weights.checkpoint, char *, NULL, "", NOLIM, RANGE_GE,              \
      "Hugging Face checkpoint directory; implies weights.kind: checkpoint")                          \
    X(PATH, "placement.plan", placement.plan, char *, NULL, "", NOLIM, RANGE_GE,                      \
      "placement plan YAML (empty = contiguous blocks of experts)")                                    \
    X(INT, "placement.ranks_per_node", placement.ranks_per_node, int, NULL, "8", AT_LEAST(1),         \
      RANGE_GE, "ranks on one node, for the default plan and reports")                                 \
    X(INT, "rebalance.every", rebalance.every, int, NULL, "0", AT_LEAST(0), RANGE_GE,                 \
      "re-place experts when the live routing drifts (checked N batches after the last re-placement "  \
      "and at every batch after), moving them while serving (0 = off)")                               \
    X(INT, "rebalance.window", rebalance.window, int, NULL, "8", AT_LEAST(1), RANGE_GE,               \
      "batches of routing a scale event plans from; a re-placement plans from those since the drift") \
    X(FLOAT, "rebalance.move_cost", rebalance.move_cost, float, NULL, "0.02", FLOAT_MIN(0), RANGE_GE, \
      "cost of moving one expert, in units of a layer's max/mean load")                               \
    X(INT, "rebalance.transfer_window", rebalance.transfer_window, int, NULL, "2", AT_LEAST(1),        \
      RANGE_GE, "experts a rank receives at once when experts move (bounds what moving takes)")      \
    X(PATH, "outputs.output", outputs.output, char *, NULL, "", NOLIM, RANGE_GE,                      \
      "final hidden states, .npy [T, d] float32 (empty = not written)")                                \
    X(PATH, "outputs.metrics", outputs.metrics, char *, NULL, "", NOLIM, RANGE_GE,                    \
      "metrics as JSON lines (empty = not written)")                                                   \
    X(PATH, "outputs.stats", outputs.stats, char *, NULL, "", NOLIM, RANGE_GE,                        \
      "routing statistics, .safetensors (empty = not written)")                                        \
    X(ENUM, "outputs.progress", outputs.progress, moe_progress_t, progress_words, "auto", NOLIM, RANGE_GE, \
      "rank 0's progress line: auto (when the output is a terminal; under mpirun, mpirun's) | on | off")

/* The offset of a field, and a compile error if the field does not have the type the row says. */
#define FIELD_OFFSET(field, ctype) _Generic((((moe_config_t *)0)->field), ctype: offsetof(moe_config_t, field))
#define FIELD_SIZE(field) sizeof(((moe_config_t *)0)->field)

#define INFO_ROW(kind, name, field, ctype, words, def, limits, range, meaning) {name, def, meaning},
#define SETTING_ROW(kind, name, field, ctype, words, def, limits, range, meaning)                      \
    {KIND_##kind, FIELD_OFFSET(field, ctype), FIELD_SIZE(field), words, limits, range},

static const moe_config_setting_info_t setting_info[] = {SETTINGS(INFO_ROW){NULL, NULL, NULL}};
static const setting_t settings[] = {SETTINGS(SETTING_ROW)};
#define N_SETTINGS (sizeof settings / sizeof settings[0])
_Static_assert(sizeof settings / sizeof settings[0] <= MOE_CONFIG_SETTINGS_MAX,
               "raise MOE_CONFIG_SETTINGS_MAX in runtime.h");

const moe_config_setting_info_t *moe_config_settings(void) { return setting_info; }

/* ---------------------------------------------------------------- small helpers */

static int find_setting(const char *name)
{
    for (size_t i = 0; i < N_SETTINGS; i++)
        if (strcmp(setting_info[i].name, name) == 0) return (int)i;
    return -1;
}

/* Length of the section part of a dotted name ("model" in "model.top_k"). */
static size_t section_length(const char *name)
{
    const char *dot = strchr(name, '.');
    return dot ? (size_t)(dot - name) : strlen(name);
}

/* Whether the table has a section of this name. */
static bool is_section(const char *section)
{
    size_t n = strlen(section);
    for (size_t i = 0; i < N_SETTINGS; i++)
        if (section_length(setting_info[i].name) == n && strncmp(setting_info[i].name, section, n) == 0)
            return true;
    return false;
}

/* The table's sections, comma-separated, for messages. */
static void list_sections(char *buf, size_t size)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < N_SETTINGS; i++) {
        const char *name = setting_info[i].name;
        size_t n = section_length(name);
        if (i > 0 && n == section_length(setting_info[i - 1].name) &&
            strncmp(name, setting_info[i - 1].name, n) == 0)
            continue;
        int w = snprintf(buf + used, size - used, "%s%.*s", used ? ", " : "", (int)n, name);
        if (w < 0 || (size_t)w >= size - used) break;
        used += (size_t)w;
    }
}

static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 127 || lb > 127) return SIZE_MAX;
    size_t prev[128], cur[128];
    for (size_t j = 0; j <= lb; j++) prev[j] = j;
    for (size_t i = 1; i <= la; i++) {
        cur[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t best = prev[j - 1] + (a[i - 1] != b[j - 1]);
            if (prev[j] + 1 < best) best = prev[j] + 1;
            if (cur[j - 1] + 1 < best) best = cur[j - 1] + 1;
            cur[j] = best;
        }
        memcpy(prev, cur, (lb + 1) * sizeof prev[0]);
    }
    return prev[lb];
}

/* " (did you mean model.top_k?)" for the closest known name, or "" when none is close. A key under the
 * wrong section counts as close. */
static void suggest(const char *name, char *buf, size_t size)
{
    const char *key = name + section_length(name) + (strchr(name, '.') ? 1 : 0);
    size_t best = SIZE_MAX;
    int best_i = -1;
    for (size_t i = 0; i < N_SETTINGS; i++) {
        const char *row = setting_info[i].name;
        const char *row_key = row + section_length(row) + 1;
        size_t d = edit_distance(name, row);
        size_t dk = edit_distance(key, row_key);
        if (dk != SIZE_MAX && dk + 1 < d) d = dk + 1;
        if (d < best) {
            best = d;
            best_i = (int)i;
        }
    }
    if (best_i >= 0 && best <= 2)
        snprintf(buf, size, " (did you mean %s?)", setting_info[best_i].name);
    else
        buf[0] = '\0';
}

static const char *node_type_name(const yaml_node_t *node)
{
    switch (node->type) {
    case YAML_SCALAR_NODE: return "a single value";
    case YAML_SEQUENCE_NODE: return "a list";
    case YAML_MAPPING_NODE: return "a mapping";
    default: return "nothing";
    }
}

static int node_line(const yaml_node_t *node) { return (int)node->start_mark.line + 1; }

/* A plain `~`, `null` or empty scalar: YAML's null. */
static bool is_plain_null(const yaml_node_t *node)
{
    if (node->type != YAML_SCALAR_NODE || node->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) return false;
    const char *s = (const char *)node->data.scalar.value;
    return s[0] == '\0' || strcmp(s, "~") == 0 || strcmp(s, "null") == 0 || strcmp(s, "Null") == 0 ||
           strcmp(s, "NULL") == 0;
}

/* ---------------------------------------------------------------- values */

/* Parses text as the value of row i and stores it in config. Relative paths are joined to base_dir
 * ("" to keep them as given). On failure writes what is wrong to why and stores nothing. */
static bool setting_parse(int i, const char *text, bool is_null, const char *base_dir, moe_config_t *config,
                          char *why, size_t why_size)
{
    const setting_t *s = &settings[i];
    char *field = (char *)config + s->offset;
    char *end = NULL;
    switch (s->kind) {
    case KIND_INT: {
        if (!(isdigit((unsigned char)text[0]) || ((text[0] == '-' || text[0] == '+') &&
                                                   isdigit((unsigned char)text[1])))) {
            snprintf(why, why_size, "expected an integer, got \"%s\"", text);
            return false;
        }
        errno = 0;
        long long v = strtoll(text, &end, 10);
        if (*end != '\0') {
            snprintf(why, why_size, "expected an integer, got \"%s\"", text);
            return false;
        }
        if (errno == ERANGE || v > INT_MAX || v < INT_MIN) {
            snprintf(why, why_size, "integer overflow: %s does not fit in 32 bits", text);
            return false;
        }
        if ((double)v < s->min) {
            snprintf(why, why_size, "must be >= %.0f, got %lld", s->min, v);
            return false;
        }
        if ((double)v > s->max) {
            snprintf(why, why_size, "must be <= %.0f, got %lld", s->max, v);
            return false;
        }
        int iv = (int)v;
        memcpy(field, &iv, sizeof iv);
        return true;
    }
    case KIND_UINT64: {
        if (!isdigit((unsigned char)text[0])) {
            snprintf(why, why_size, "expected an integer >= 0, got \"%s\"", text);
            return false;
        }
        errno = 0;
        unsigned long long v = strtoull(text, &end, 10);
        if (*end != '\0') {
            snprintf(why, why_size, "expected an integer >= 0, got \"%s\"", text);
            return false;
        }
        if (errno == ERANGE) {
            snprintf(why, why_size, "integer overflow: %s does not fit in 64 bits", text);
            return false;
        }
        uint64_t uv = (uint64_t)v;
        memcpy(field, &uv, sizeof uv);
        return true;
    }
    case KIND_FLOAT: {
        errno = 0;
        double v = text[0] && !isspace((unsigned char)text[0]) ? strtod(text, &end) : 0.0;
        if (end == NULL || end == text || *end != '\0' || isnan(v)) {
            snprintf(why, why_size, "expected a number, got \"%s\"", text);
            return false;
        }
        if (isinf(v) || fabs(v) > FLT_MAX) {
            snprintf(why, why_size, "%s is out of range for a float", text);
            return false;
        }
        bool low = s->range == RANGE_GT ? !(v > s->min) : !(v >= s->min);
        if (low || v > s->max) {
            if (s->max == (double)FLT_MAX)
                snprintf(why, why_size, "must be %s %g, got %s", s->range == RANGE_GT ? ">" : ">=", s->min,
                         text);
            else
                snprintf(why, why_size, "must be between %g and %g, got %s", s->min, s->max, text);
            return false;
        }
        float fv = (float)v;
        memcpy(field, &fv, sizeof fv);
        return true;
    }
    case KIND_BOOL: {
        static const char *const yes[] = {"true", "yes", "on", NULL};
        static const char *const no[] = {"false", "no", "off", NULL};
        for (int w = 0; yes[w]; w++) {
            if (strcasecmp(text, yes[w]) == 0 || strcasecmp(text, no[w]) == 0) {
                bool bv = strcasecmp(text, yes[w]) == 0;
                memcpy(field, &bv, sizeof bv);
                return true;
            }
        }
        snprintf(why, why_size, "expected true or false, got \"%s\"", text);
        return false;
    }
    case KIND_ENUM: {
        for (int w = 0; s->words[w]; w++) {
            if (strcmp(text, s->words[w]) == 0) {
                memcpy(field, &w, sizeof w);
                return true;
            }
        }
        size_t used = (size_t)snprintf(why, why_size, "expected one of ");
        for (int w = 0; s->words[w] && used < why_size; w++)
            used += (size_t)snprintf(why + used, why_size - used, "%s%s", w ? ", " : "", s->words[w]);
        if (used < why_size) snprintf(why + used, why_size - used, "; got \"%s\"", text);
        return false;
    }
    case KIND_STRING:
    case KIND_PATH: {
        if (is_null) text = "";
        const char *prefix = s->kind == KIND_PATH && text[0] != '\0' && text[0] != '/' ? base_dir : "";
        size_t np = strlen(prefix), nt = strlen(text);
        if (np + nt >= s->size) {
            snprintf(why, why_size, "longer than %zu characters", s->size - 1);
            return false;
        }
        memset(field, 0, s->size);
        memcpy(field, prefix, np);
        memcpy(field + np, text, nt);
        return true;
    }
    }
    snprintf(why, why_size, "internal error: unknown kind of setting");
    return false;
}

/* Writes the value of row i as text (strings unquoted). */
static void setting_format(int i, const moe_config_t *config, char *buf, size_t size)
{
    const setting_t *s = &settings[i];
    const char *field = (const char *)config + s->offset;
    switch (s->kind) {
    case KIND_INT: {
        int v;
        memcpy(&v, field, sizeof v);
        snprintf(buf, size, "%d", v);
        return;
    }
    case KIND_UINT64: {
        uint64_t v;
        memcpy(&v, field, sizeof v);
        snprintf(buf, size, "%" PRIu64, v);
        return;
    }
    case KIND_FLOAT: {
        /* The shortest text that reads back as the same float. */
        float v;
        memcpy(&v, field, sizeof v);
        for (int digits = 1; digits <= 9; digits++) {
            snprintf(buf, size, "%.*g", digits, (double)v);
            if (strtof(buf, NULL) == v) break;
        }
        return;
    }
    case KIND_BOOL: {
        bool v;
        memcpy(&v, field, sizeof v);
        snprintf(buf, size, "%s", v ? "true" : "false");
        return;
    }
    case KIND_ENUM: {
        int v, n = 0;
        memcpy(&v, field, sizeof v);
        while (s->words[n]) n++;
        if (v >= 0 && v < n)
            snprintf(buf, size, "%s", s->words[v]);
        else
            snprintf(buf, size, "%d", v);
        return;
    }
    case KIND_STRING:
    case KIND_PATH: snprintf(buf, size, "%.*s", (int)strnlen(field, s->size), field); return;
    }
}

/* ---------------------------------------------------------------- defaults */

void moe_config_defaults(moe_config_t *config)
{
    memset(config, 0, sizeof *config);
    for (size_t i = 0; i < N_SETTINGS; i++) {
        char why[256];
        if (!setting_parse((int)i, setting_info[i].default_value, false, "", config, why, sizeof why))
            moe_error("internal: default of %s: %s", setting_info[i].name, why); /* a bug in the table */
    }
}

/* ---------------------------------------------------------------- YAML */

typedef struct {
    const char *path;     /* the file, as given */
    char base_dir[MOE_PATH_MAX]; /* its directory with a trailing '/', or "" */
    yaml_document_t *doc;
    moe_config_t *config;
    int errors;
} loader_t;

/* Logs `FILE:LINE: what` and counts the error. */
static void loader_error(loader_t *ld, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void loader_error(loader_t *ld, int line, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    moe_error("%s:%d: %s", ld->path, line, msg);
    ld->errors++;
}

static void load_section(loader_t *ld, const char *section, const yaml_node_t *node)
{
    for (yaml_node_pair_t *pair = node->data.mapping.pairs.start; pair < node->data.mapping.pairs.top; pair++) {
        yaml_node_t *key = yaml_document_get_node(ld->doc, pair->key);
        yaml_node_t *value = yaml_document_get_node(ld->doc, pair->value);
        if (key == NULL || value == NULL) continue;
        if (key->type != YAML_SCALAR_NODE) {
            loader_error(ld, node_line(key), "%s: expected a setting name, got %s", section,
                         node_type_name(key));
            continue;
        }
        char name[256];
        snprintf(name, sizeof name, "%s.%s", section, (const char *)key->data.scalar.value);
        int i = find_setting(name);
        if (i < 0) {
            char hint[128];
            suggest(name, hint, sizeof hint);
            loader_error(ld, node_line(key), "%s: unknown key%s", name, hint);
            continue;
        }
        if (ld->config->line[i] > 0) {
            loader_error(ld, node_line(key), "%s: duplicate key (first set on line %d)", name,
                         ld->config->line[i]);
            continue;
        }
        if (value->type != YAML_SCALAR_NODE) {
            loader_error(ld, node_line(value), "%s: expected a single value, got %s", name,
                         node_type_name(value));
            continue;
        }
        char why[1024];
        if (!setting_parse(i, (const char *)value->data.scalar.value, is_plain_null(value), ld->base_dir,
                           ld->config, why, sizeof why)) {
            loader_error(ld, node_line(value), "%s: %s", name, why);
            continue;
        }
        ld->config->line[i] = node_line(key);
    }
}

static void load_root(loader_t *ld, const yaml_node_t *root)
{
    char sections[256];
    list_sections(sections, sizeof sections);
    if (root->type != YAML_MAPPING_NODE) {
        loader_error(ld, node_line(root), "expected a mapping of sections (%s), got %s", sections,
                     node_type_name(root));
        return;
    }
    /* Lines where each section was seen, to catch a section given twice. */
    struct {
        char name[64];
        int line;
    } seen[16];
    int n_seen = 0;
    for (yaml_node_pair_t *pair = root->data.mapping.pairs.start; pair < root->data.mapping.pairs.top; pair++) {
        yaml_node_t *key = yaml_document_get_node(ld->doc, pair->key);
        yaml_node_t *value = yaml_document_get_node(ld->doc, pair->value);
        if (key == NULL || value == NULL) continue;
        if (key->type != YAML_SCALAR_NODE) {
            loader_error(ld, node_line(key), "expected a section name (%s), got %s", sections,
                         node_type_name(key));
            continue;
        }
        const char *section = (const char *)key->data.scalar.value;
        if (!is_section(section)) {
            loader_error(ld, node_line(key), "%s: unknown section (expected one of %s)", section, sections);
            continue;
        }
        int first = 0;
        for (int s = 0; s < n_seen; s++)
            if (strcmp(seen[s].name, section) == 0) first = seen[s].line;
        if (first) {
            loader_error(ld, node_line(key), "%s: duplicate section (first on line %d)", section, first);
            continue;
        }
        if (n_seen < (int)(sizeof seen / sizeof seen[0]) && strlen(section) < sizeof seen[0].name) {
            snprintf(seen[n_seen].name, sizeof seen[n_seen].name, "%s", section);
            seen[n_seen++].line = node_line(key);
        }
        if (is_plain_null(value)) continue; /* `outputs:` with nothing under it */
        if (value->type != YAML_MAPPING_NODE) {
            loader_error(ld, node_line(value), "%s: expected a mapping of settings, got %s", section,
                         node_type_name(value));
            continue;
        }
        load_section(ld, section, value);
    }
}

/* weights.checkpoint given and weights.kind left at its default: the checkpoint is the weights. */
static void apply_implied(moe_config_t *config)
{
    int kind = find_setting("weights.kind");
    if (config->weights.checkpoint[0] && kind >= 0 && config->line[kind] == 0)
        config->weights.kind = MOE_WEIGHTS_CHECKPOINT;
}

moe_status_t moe_config_load(const char *path, moe_config_t *config)
{
    moe_status_t status = MOE_STATUS_OK;
    loader_t ld = {.path = path};
    yaml_document_t doc;
    moe_config_t *tmp = NULL;

    if (strlen(path) >= MOE_PATH_MAX) MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, out, "%s: path too long", path);
    const char *slash = strrchr(path, '/');
    if (slash) snprintf(ld.base_dir, sizeof ld.base_dir, "%.*s", (int)(slash - path + 1), path);

    tmp = malloc(sizeof *tmp);
    MOE_CHECK_ALLOC(tmp, out);
    moe_config_defaults(tmp);
    snprintf(tmp->source_path, sizeof tmp->source_path, "%s", path);
    ld.config = tmp;

    /* A config is two levels deep and small; the loader names repeated keys itself (with the
     * dotted key and the line of the first). */
    moe_yaml_limits_t limits = {.max_bytes = 1u << 20, .max_depth = 8, .unique_keys = false};
    status = moe_yaml_load(path, &limits, &doc);
    if (status != MOE_STATUS_OK) {
        if (status != MOE_STATUS_IO_ERROR && status != MOE_STATUS_NO_MEMORY) status = MOE_STATUS_INVALID_ARGUMENT;
        goto free_tmp;
    }
    ld.doc = &doc;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (root != NULL) { /* an empty file: the defaults */
        load_root(&ld, root);
        apply_implied(tmp);
    }
    yaml_document_delete(&doc);
    if (ld.errors) status = MOE_STATUS_INVALID_ARGUMENT;
    if (status == MOE_STATUS_OK) memcpy(config, tmp, sizeof *config);
free_tmp:
    free(tmp);
out:
    return status;
}

/* ---------------------------------------------------------------- --set */

moe_status_t moe_config_set(moe_config_t *config, const char *assignment)
{
    char name[256], why[1024];
    const char *eq = strchr(assignment, '=');
    const char *key_end = eq ? eq : assignment + strlen(assignment);
    while (*assignment == ' ') assignment++;
    while (key_end > assignment && key_end[-1] == ' ') key_end--;
    snprintf(name, sizeof name, "%.*s", (int)(key_end - assignment), assignment);
    if (eq == NULL) {
        moe_error("--set %s: expected KEY=VALUE (e.g. model.top_k=4)", name);
        return MOE_STATUS_INVALID_ARGUMENT;
    }
    int i = find_setting(name);
    if (i < 0) {
        char hint[128];
        suggest(name, hint, sizeof hint);
        moe_error("--set %s: unknown key%s", name, hint);
        return MOE_STATUS_INVALID_ARGUMENT;
    }
    const char *value = eq + 1;
    while (*value == ' ') value++;
    char text[MOE_PATH_MAX + 1];
    size_t n = strlen(value);
    while (n > 0 && value[n - 1] == ' ') n--;
    if (n >= sizeof text) {
        moe_error("--set %s: value longer than %zu characters", name, sizeof text - 1);
        return MOE_STATUS_INVALID_ARGUMENT;
    }
    memcpy(text, value, n);
    text[n] = '\0';
    if (!setting_parse(i, text, false, "", config, why, sizeof why)) {
        moe_error("--set %s: %s", name, why);
        return MOE_STATUS_INVALID_ARGUMENT;
    }
    config->line[i] = -1;
    apply_implied(config);
    return MOE_STATUS_OK;
}

/* ---------------------------------------------------------------- validate */

/* Logs `FILE:LINE: KEY: what`, `--set KEY: what` or `KEY (default): what`, by where KEY's value came
 * from. Returns 1 (an error to count). */
static int report(const moe_config_t *config, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int report(const moe_config_t *config, const char *key, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    int i = find_setting(key);
    int line = i >= 0 ? config->line[i] : 0;
    if (line > 0)
        moe_error("%s:%d: %s: %s", config->source_path, line, key, msg);
    else if (line < 0)
        moe_error("--set %s: %s", key, msg);
    else
        moe_error("%s (default): %s", key, msg);
    return 1;
}

moe_status_t moe_config_validate(const moe_config_t *config, int world_size)
{
    int errors = 0;

    /* Each setting on its own: the loader checks these already, but code may fill the struct directly. */
    for (size_t i = 0; i < N_SETTINGS; i++) {
        const setting_t *s = &settings[i];
        const char *field = (const char *)config + s->offset;
        const char *name = setting_info[i].name;
        if (s->kind == KIND_INT) {
            int v;
            memcpy(&v, field, sizeof v);
            if ((double)v < s->min)
                errors += report(config, name, "must be >= %.0f, got %d", s->min, v);
            else if ((double)v > s->max)
                errors += report(config, name, "must be <= %.0f, got %d", s->max, v);
        } else if (s->kind == KIND_FLOAT) {
            float v;
            memcpy(&v, field, sizeof v);
            bool low = s->range == RANGE_GT ? !((double)v > s->min) : !((double)v >= s->min);
            if (!isfinite(v) || low || (double)v > s->max)
                errors += report(config, name, "%g is out of range", (double)v);
        } else if (s->kind == KIND_ENUM) {
            int v, n = 0;
            memcpy(&v, field, sizeof v);
            while (s->words[n]) n++;
            if (v < 0 || v >= n) errors += report(config, name, "%d is not one of its words", v);
        } else if (s->kind == KIND_STRING || s->kind == KIND_PATH) {
            if (strnlen(field, s->size) == s->size) errors += report(config, name, "not terminated");
        }
    }
    if (errors) return MOE_STATUS_INVALID_ARGUMENT;

    const moe_model_config_t *m = &config->model;
    if (m->top_k > m->experts)
        errors += report(config, "model.top_k", "%d is larger than model.experts (%d)", m->top_k, m->experts);
    bool groups_ok = m->experts % m->groups == 0;
    if (!groups_ok)
        errors += report(config, "model.groups", "%d groups do not divide model.experts (%d)", m->groups,
                         m->experts);
    if (m->groups_kept > m->groups)
        errors += report(config, "model.groups_kept", "%d is larger than model.groups (%d)", m->groups_kept,
                         m->groups);
    else if (groups_ok && m->top_k <= m->experts &&
             (long long)m->top_k > (long long)m->groups_kept * (m->experts / m->groups))
        errors += report(config, "model.top_k",
                         "%d is more than the %d experts in the %d kept groups (model.groups_kept) of %d",
                         m->top_k, m->groups_kept * (m->experts / m->groups), m->groups_kept,
                         m->experts / m->groups);
    if (m->shared_experts > 0 && m->shared_d_ff == 0)
        errors += report(config, "model.shared_d_ff", "must be > 0 when model.shared_experts is %d",
                         m->shared_experts);
    if (m->score_bias && m->scoring != MOE_SCORING_SIGMOID)
        errors += report(config, "model.score_bias", "needs model.scoring: sigmoid");

    if (m->top_k > MOE_DISPATCH_TOP_K_MAX)
        errors += report(config, "model.top_k", "%d is above the %d a token may choose", m->top_k,
                         MOE_DISPATCH_TOP_K_MAX);
    /* Products that become one allocation or one 32-bit count (MPI counts, kernel indices). */
    const int64_t d = m->d_model, tpr = config->run.tokens_per_rank;
    if (2 * (int64_t)m->d_ff * d > INT_MAX)
        errors += report(config, "model.d_ff", "%d x model.d_model (%d) x 2: an expert's gate and up "
                         "projections exceed 2^31 values", m->d_ff, m->d_model);
    if (2 * (int64_t)m->shared_experts * m->shared_d_ff * d > INT_MAX)
        errors += report(config, "model.shared_d_ff", "%d x model.shared_experts (%d) x model.d_model "
                         "(%d) x 2 exceeds 2^31 values", m->shared_d_ff, m->shared_experts, m->d_model);
    if (tpr * d > INT_MAX || tpr * m->top_k > INT_MAX)
        errors += report(config, "run.tokens_per_rank", "%lld x model.d_model (%d) or x model.top_k "
                         "(%d) exceeds 2^31 values", (long long)tpr, m->d_model, m->top_k);
    if (world_size > 0 && config->outputs.output[0] && (int64_t)world_size * tpr * d > INT_MAX)
        errors += report(config, "outputs.output", "a batch of %d ranks x run.tokens_per_rank (%lld) x "
                         "model.d_model (%d) exceeds 2^31 values, gathered at once on rank 0",
                         world_size, (long long)tpr, m->d_model);

    const moe_run_config_t *r = &config->run;
    if (r->transport == MOE_TRANSPORT_NCCL && r->backend != MOE_BACKEND_CUDA)
        errors += report(config, "run.transport", "nccl needs run.backend: cuda");
    if (r->graphs == MOE_SWITCH_ON &&
        (r->backend != MOE_BACKEND_CUDA || r->transport != MOE_TRANSPORT_NCCL || r->buffers == MOE_BUFFERS_COUNTED))
        errors += report(config, "run.graphs", "on needs run.backend: cuda, run.transport: nccl and fixed buffers "
                         "(run.buffers: fixed or auto)");
    if (r->dispatch == MOE_DISPATCH_HIERARCHICAL && r->graphs == MOE_SWITCH_ON)
        errors += report(config, "run.dispatch", "hierarchical has no CUDA graphs (run.graphs: off or auto)");
    if (r->dispatch == MOE_DISPATCH_HIERARCHICAL && r->buffers == MOE_BUFFERS_FIXED)
        errors += report(config, "run.dispatch", "hierarchical needs counted buffers (run.buffers: counted or auto)");
    if (world_size > 0 && r->ranks_per_node > world_size)
        errors += report(config, "run.ranks_per_node", "%d exceeds the %d ranks of the run", r->ranks_per_node,
                         world_size);
    if (world_size > 0 && r->ranks_per_node > 0 && world_size % r->ranks_per_node)
        errors += report(config, "run.ranks_per_node", "%d does not divide the %d ranks of the run (simulated "
                         "nodes are of equal size)", r->ranks_per_node, world_size);
    if (r->batches > 0 && r->warmup_batches >= r->batches)
        errors += report(config, "run.warmup_batches", "%d leaves no measured batch of run.batches (%d)",
                         r->warmup_batches, r->batches);
    if (r->batches == 0 && config->routing.source != MOE_ROUTING_TRACE && config->input.kind != MOE_INPUT_NPY)
        errors += report(config, "run.batches",
                         "0 (as many as the trace or input holds) needs routing.source: trace or "
                         "input.kind: npy");

    if (config->routing.source == MOE_ROUTING_TRACE && config->routing.trace_ids[0] == '\0')
        errors += report(config, "routing.source", "trace needs routing.trace_ids");
    if (config->weights.kind == MOE_WEIGHTS_CHECKPOINT && config->weights.checkpoint[0] == '\0')
        errors += report(config, "weights.kind", "checkpoint needs weights.checkpoint (a directory)");
    if (config->weights.kind == MOE_WEIGHTS_RANDOM && config->weights.checkpoint[0])
        errors += report(config, "weights.checkpoint", "given, but weights.kind is random");
    if (m->shared_gate && m->shared_experts == 0)
        errors += report(config, "model.shared_gate", "needs shared experts (model.shared_experts)");
    if (config->input.kind == MOE_INPUT_NPY && config->input.path[0] == '\0')
        errors += report(config, "input.kind", "npy needs input.path");

    if (world_size > 0 && config->placement.plan[0] == '\0' && m->experts % world_size != 0)
        errors += report(config, "model.experts",
                         "experts (%d) cannot be split evenly over %d ranks; give a plan (placement.plan)",
                         m->experts, world_size);

    return errors ? MOE_STATUS_INVALID_ARGUMENT : MOE_STATUS_OK;
}

/* ---------------------------------------------------------------- print */

/* Through libyaml's emitter (io/yaml_out.c), which quotes and escapes what must be. */
void moe_config_print(const moe_config_t *config, FILE *out)
{
    char comment[MOE_PATH_MAX + 64];
    snprintf(comment, sizeof comment, "moerun configuration%s%s", config->source_path[0] ? " from " : "",
             config->source_path);
    moe_yaml_out_comment(out, comment);
    moe_yaml_out_h w;
    if (moe_yaml_out_open(out, "the configuration", &w) != MOE_STATUS_OK) return;
    moe_yaml_out_map(w, false);
    for (size_t i = 0; i < N_SETTINGS; i++) {
        const char *name = setting_info[i].name;
        size_t n = section_length(name);
        const bool first = i == 0 || n != section_length(setting_info[i - 1].name) ||
                           strncmp(name, setting_info[i - 1].name, n) != 0;
        if (first) {
            if (i > 0) moe_yaml_out_end_map(w);
            char section[64];
            snprintf(section, sizeof section, "%.*s", (int)n, name);
            moe_yaml_out_key(w, section);
            moe_yaml_out_map(w, false);
        }
        char value[MOE_PATH_MAX + 64];
        setting_format((int)i, config, value, sizeof value);
        moe_yaml_out_key(w, name + n + 1);
        if (settings[i].kind == KIND_STRING || settings[i].kind == KIND_PATH)
            moe_yaml_out_string(w, value);
        else
            moe_yaml_out_raw(w, value);
    }
    if (N_SETTINGS > 0) moe_yaml_out_end_map(w);
    moe_yaml_out_end_map(w);
    moe_yaml_out_close(w);
}
