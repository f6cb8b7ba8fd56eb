/* plan_yaml.c: plans as YAML files that people can read and moerun infer loads.
 *
 * Format (version 1). Top-level mapping:
 *
 *   format: 1                     # required
 *   model: deepseek-v2-lite       # optional: the model the plan was made for
 *   layers: 26                    # required: MoE layers
 *   experts: 64                   # required: routed experts per layer
 *   ranks: 16                     # required: world size
 *   ranks_per_node: 8             # required
 *   solver: ilp                   # optional, informational
 *   sources: [intent.topk_ids.npy]  # optional, informational
 *   predicted: {...}              # optional, informational (any YAML): the solver's figures
 *   placement:                    # required: one entry per layer, each layer exactly once
 *     - layer: 0
 *       ranks:                    # ranks hosting something at this layer (others: nothing)
 *         - {rank: 0, experts: [3, 17, 42], shares: [1, 0.5, 1]}
 *         - {rank: 1, experts: [17, 20]}
 *
 * `shares` (optional, one per listed expert) is the share of the expert's tokens this replica
 * takes; without it every replica of an expert on that layer takes an equal share (1 / replicas),
 * so hand-written plans need not spell them out. Shares of one expert must sum to 1, every expert
 * of every layer must be hosted, a rank may list an expert once. Unknown keys are errors (a typo
 * must not silently change a plan). Every error names file:line and the key. Shares are written
 * with 6 significant digits (a plan reads back within 1e-6). Saving is atomic, the model name quoted
 * and escaped. Loading is bounded (io.h, moe_yaml_load: size, depth, aliases; a key given twice is an
 * error), and the tables are sized only once the document is known to be able to fill them. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "io/io.h"
#include "placement/place-impl.h"

#define PLAN_FORMAT 1
#define PLAN_TABLE_BYTES 2147483648.0 /* plan.c's tables: 16 bytes per (layer, expert, rank) */

typedef struct {
    const char *path;
    yaml_document_t *doc;
} ctx_t;

static int node_line(const yaml_node_t *n)
{
    return (int)n->start_mark.line + 1;
}

static yaml_node_t *map_get(ctx_t *c, yaml_node_t *map, const char *key)
{
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
         p++) {
        yaml_node_t *k = yaml_document_get_node(c->doc, p->key);
        if (k && k->type == YAML_SCALAR_NODE && strcmp((char *)k->data.scalar.value, key) == 0)
            return yaml_document_get_node(c->doc, p->value);
    }
    return NULL;
}

/* Every key of map must be one of allowed (NULL-terminated). */
static moe_status_t check_keys(ctx_t *c, yaml_node_t *map, const char *const *allowed,
                               const char *where)
{
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
         p++) {
        yaml_node_t *k = yaml_document_get_node(c->doc, p->key);
        if (!k || k->type != YAML_SCALAR_NODE) {
            moe_error("%s:%d: %s: keys must be plain names", c->path, k ? node_line(k) : 0, where);
            return MOE_STATUS_FORMAT_ERROR;
        }
        bool ok = false;
        for (int i = 0; allowed[i]; i++)
            ok |= strcmp((char *)k->data.scalar.value, allowed[i]) == 0;
        if (!ok) {
            moe_error("%s:%d: %s: unknown key '%s'", c->path, node_line(k), where,
                      (char *)k->data.scalar.value);
            return MOE_STATUS_FORMAT_ERROR;
        }
    }
    return MOE_STATUS_OK;
}

static moe_status_t get_int(ctx_t *c, yaml_node_t *map, const char *key, long lo, long hi,
                            long *out)
{
    yaml_node_t *n = map_get(c, map, key);
    if (!n) {
        moe_error("%s:%d: missing key '%s'", c->path, node_line(map), key);
        return MOE_STATUS_FORMAT_ERROR;
    }
    if (n->type != YAML_SCALAR_NODE) goto bad;
    char *end = NULL;
    errno = 0;
    long v = strtol((char *)n->data.scalar.value, &end, 10);
    if (end == (char *)n->data.scalar.value || *end || errno || v < lo || v > hi) goto bad;
    *out = v;
    return MOE_STATUS_OK;
bad:
    moe_error("%s:%d: %s: expected an integer in [%ld, %ld]%s%s", c->path, node_line(n), key, lo,
              hi, n->type == YAML_SCALAR_NODE ? ", got " : "",
              n->type == YAML_SCALAR_NODE ? (char *)n->data.scalar.value : "");
    return MOE_STATUS_FORMAT_ERROR;
}

static moe_status_t seq_number(ctx_t *c, yaml_node_t *item, const char *key, bool integer,
                               double *out)
{
    if (!item || item->type != YAML_SCALAR_NODE) {
        moe_error("%s:%d: %s: expected a list of numbers", c->path, item ? node_line(item) : 0,
                  key);
        return MOE_STATUS_FORMAT_ERROR;
    }
    const char *s = (const char *)item->data.scalar.value;
    char *end = NULL;
    errno = 0;
    double v = integer ? (double)strtol(s, &end, 10) : strtod(s, &end);
    if (end == s || *end || errno || !isfinite(v)) {
        moe_error("%s:%d: %s: '%s' is not %s", c->path, node_line(item), key, s,
                  integer ? "an integer" : "a number");
        return MOE_STATUS_FORMAT_ERROR;
    }
    *out = v;
    return MOE_STATUS_OK;
}

static moe_status_t parse_plan(ctx_t *c, char *model, size_t model_size, moe_plan_h *out)
{
    moe_status_t status = MOE_STATUS_OK;
    moe_plan_h plan = NULL;
    int *layer_seen = NULL;
    int *count = NULL; /* replicas listed per expert of the current layer */
    yaml_node_t *root = yaml_document_get_root_node(c->doc);
    if (!root || root->type != YAML_MAPPING_NODE)
        MOE_FAIL(MOE_STATUS_FORMAT_ERROR, done, "%s:%d: a plan is a mapping (format, layers, ...)",
                 c->path, root ? node_line(root) : 1);
    static const char *const top_keys[] = {"format",    "model",          "layers", "experts",
                                           "ranks",     "ranks_per_node", "solver", "sources",
                                           "predicted", "placement",      NULL};
    MOE_CHECK(check_keys(c, root, top_keys, "plan"), done);
    long format, L, E, R, G;
    MOE_CHECK(get_int(c, root, "format", 0, 1000, &format), done);
    if (format != PLAN_FORMAT)
        MOE_FAIL(MOE_STATUS_FORMAT_ERROR, done,
                 "%s:%d: format: %ld is not supported (this moerun "
                 "reads format %d)",
                 c->path, node_line(map_get(c, root, "format")), format, PLAN_FORMAT);
    MOE_CHECK(get_int(c, root, "layers", 1, MOE_MAX_LAYERS, &L), done);
    MOE_CHECK(get_int(c, root, "experts", 1, MOE_MAX_EXPERTS, &E), done);
    MOE_CHECK(get_int(c, root, "ranks", 1, MOE_MAX_RANKS, &R), done);
    MOE_CHECK(get_int(c, root, "ranks_per_node", 1, MOE_MAX_RANKS, &G), done);
    if (R % G != 0)
        MOE_FAIL(MOE_STATUS_FORMAT_ERROR, done,
                 "%s:%d: ranks (%ld) is not a multiple of "
                 "ranks_per_node (%ld)",
                 c->path, node_line(map_get(c, root, "ranks")), R, G);
    if (model && model_size) {
        model[0] = '\0';
        yaml_node_t *m = map_get(c, root, "model");
        if (m && m->type == YAML_SCALAR_NODE)
            snprintf(model, model_size, "%s", (char *)m->data.scalar.value);
    }
    yaml_node_t *pl = map_get(c, root, "placement");
    if (!pl)
        MOE_FAIL(MOE_STATUS_FORMAT_ERROR, done, "%s:%d: missing key 'placement'", c->path,
                 node_line(root));
    if (pl->type != YAML_SEQUENCE_NODE)
        MOE_FAIL(MOE_STATUS_FORMAT_ERROR, done, "%s:%d: placement: expected a list of layers",
                 c->path, node_line(pl));
    /* Before the tables are allocated: every expert of every layer must be listed, so the document
     * holds at least layers x experts values; and the tables (four of layers x experts x ranks) stay
     * within PLAN_TABLE_BYTES. */
    long values = (long)(c->doc->nodes.top - c->doc->nodes.start);
    if (L * E > values)
        MOE_FAIL(MOE_STATUS_FORMAT_ERROR, done,
                 "%s:%d: layers x experts (%ld x %ld) cannot all be placed by the %ld values the file holds",
                 c->path, node_line(map_get(c, root, "experts")), L, E, values);
    if ((double)L * E * R * 16 > PLAN_TABLE_BYTES)
        MOE_FAIL(MOE_STATUS_FORMAT_ERROR, done,
                 "%s:%d: a plan of %ld layers x %ld experts on %ld ranks needs %.1f GB of tables, more "
                 "than the %.1f GB moerun allows", c->path, node_line(map_get(c, root, "ranks")), L, E,
                 R, (double)L * E * R * 16 / 1e9, PLAN_TABLE_BYTES / 1e9);
    MOE_CHECK(moe_plan_create_empty((int)L, (int)E, (int)R, (int)G, &plan), done);
    layer_seen = calloc((size_t)L, sizeof(int));
    count = calloc((size_t)E, sizeof(int));
    MOE_CHECK_ALLOC(layer_seen, done);
    MOE_CHECK_ALLOC(count, done);
    static const char *const layer_keys[] = {"layer", "ranks", NULL};
    static const char *const rank_keys[] = {"rank", "experts", "shares", NULL};
    for (yaml_node_item_t *it = pl->data.sequence.items.start; it < pl->data.sequence.items.top;
         it++) {
        yaml_node_t *ln = yaml_document_get_node(c->doc, *it);
        if (!ln || ln->type != YAML_MAPPING_NODE)
            MOE_FAIL(MOE_STATUS_FORMAT_ERROR, done,
                     "%s:%d: placement: each entry is a mapping "
                     "{layer, ranks}",
                     c->path, ln ? node_line(ln) : 0);
        MOE_CHECK(check_keys(c, ln, layer_keys, "placement entry"), done);
        long l;
        MOE_CHECK(get_int(c, ln, "layer", 0, L - 1, &l), done);
        if (layer_seen[l]++)
            MOE_FAIL(MOE_STATUS_FORMAT_ERROR, done, "%s:%d: layer: %ld appears twice", c->path,
                     node_line(ln), l);
        yaml_node_t *rs = map_get(c, ln, "ranks");
        if (!rs || rs->type != YAML_SEQUENCE_NODE)
            MOE_FAIL(MOE_STATUS_FORMAT_ERROR, done,
                     "%s:%d: ranks: layer %ld needs a list of "
                     "{rank, experts[, shares]}",
                     c->path, node_line(rs ? rs : ln), l);
        /* Two passes: count replicas per expert (for default shares), then add. */
        memset(count, 0, sizeof(int) * E);
        for (int pass = 0; pass < 2; pass++) {
            for (yaml_node_item_t *ri = rs->data.sequence.items.start;
                 ri < rs->data.sequence.items.top; ri++) {
                yaml_node_t *rn = yaml_document_get_node(c->doc, *ri);
                if (!rn || rn->type != YAML_MAPPING_NODE)
                    MOE_FAIL(MOE_STATUS_FORMAT_ERROR, done,
                             "%s:%d: ranks: each entry is a mapping "
                             "{rank, experts[, shares]}",
                             c->path, rn ? node_line(rn) : 0);
                if (pass == 0) MOE_CHECK(check_keys(c, rn, rank_keys, "rank entry"), done);
                long r;
                MOE_CHECK(get_int(c, rn, "rank", 0, R - 1, &r), done);
                yaml_node_t *ex = map_get(c, rn, "experts"), *sh = map_get(c, rn, "shares");
                if (!ex || ex->type != YAML_SEQUENCE_NODE)
                    MOE_FAIL(MOE_STATUS_FORMAT_ERROR, done,
                             "%s:%d: experts: expected a list of "
                             "expert ids for rank %ld",
                             c->path, node_line(ex ? ex : rn), r);
                long ne = ex->data.sequence.items.top - ex->data.sequence.items.start;
                if (sh && (sh->type != YAML_SEQUENCE_NODE ||
                           sh->data.sequence.items.top - sh->data.sequence.items.start != ne))
                    MOE_FAIL(MOE_STATUS_FORMAT_ERROR, done,
                             "%s:%d: shares: expected %ld numbers, "
                             "one per expert",
                             c->path, node_line(sh), ne);
                for (long i = 0; i < ne; i++) {
                    yaml_node_t *en =
                        yaml_document_get_node(c->doc, ex->data.sequence.items.start[i]);
                    double ev;
                    MOE_CHECK(seq_number(c, en, "experts", true, &ev), done);
                    if (ev < 0 || ev >= E)
                        MOE_FAIL(MOE_STATUS_FORMAT_ERROR, done,
                                 "%s:%d: experts: %g is out of range "
                                 "(%ld experts)",
                                 c->path, node_line(en), ev, E);
                    int e = (int)ev;
                    if (pass == 0) {
                        count[e]++;
                        continue;
                    }
                    double s = 1.0 / count[e];
                    if (sh) {
                        yaml_node_t *sn =
                            yaml_document_get_node(c->doc, sh->data.sequence.items.start[i]);
                        MOE_CHECK(seq_number(c, sn, "shares", false, &s), done);
                        if (!(s > 0 && s <= 1))
                            MOE_FAIL(MOE_STATUS_FORMAT_ERROR, done,
                                     "%s:%d: shares: %g is not in "
                                     "(0, 1]",
                                     c->path, node_line(sn), s);
                    }
                    if (moe_plan_add_replica(plan, (int)l, e, (int)r, (float)s) != MOE_STATUS_OK)
                        MOE_FAIL(MOE_STATUS_FORMAT_ERROR, done,
                                 "%s:%d: experts: layer %ld: rank "
                                 "%ld lists expert %d twice",
                                 c->path, node_line(en), l, r, e);
                }
            }
        }
    }
    for (long l = 0; l < L; l++)
        if (!layer_seen[l])
            MOE_FAIL(MOE_STATUS_FORMAT_ERROR, done, "%s:%d: placement: layer %ld is missing",
                     c->path, node_line(pl), l);
    MOE_CHECK(moe_plan_check(plan, c->path), done);
    *out = plan;
    plan = NULL;
done:
    free(count);
    free(layer_seen);
    moe_plan_destroy(plan);
    return status;
}

moe_status_t moe_plan_load_annotated(const char *path, char *model, size_t model_size,
                                     moe_plan_h *out)
{
    yaml_document_t doc;
    /* a plan of DeepSeek-V3 on 1024 ranks is about 200 KB, six levels deep */
    moe_yaml_limits_t limits = {.max_bytes = 64u << 20, .max_depth = 16, .unique_keys = true};
    moe_status_t status = moe_yaml_load(path, &limits, &doc);
    if (status != MOE_STATUS_OK) return status;
    ctx_t c = {.path = path, .doc = &doc};
    status = parse_plan(&c, model, model_size, out);
    yaml_document_delete(&doc);
    return status;
}

moe_status_t moe_plan_load(const char *path, moe_plan_h *out)
{
    return moe_plan_load_annotated(path, NULL, 0, out);
}

/* 6 significant digits: readable, and within 1e-6 of the float (a replica pick changes only for the
 * hash values in that sliver). */
static void format_share(float s, char *buf, size_t size)
{
    snprintf(buf, size, "%.6g", (double)s);
}

/* Whether s is valid UTF-8 (YAML text must be). */
static bool utf8_valid(const unsigned char *s)
{
    while (*s) {
        int n = *s < 0x80 ? 0 : (*s & 0xe0) == 0xc0 ? 1 : (*s & 0xf0) == 0xe0 ? 2 : (*s & 0xf8) == 0xf0 ? 3 : -1;
        if (n < 0 || (n == 1 && *s < 0xc2)) return false;
        s++;
        for (int i = 0; i < n; i++, s++)
            if ((*s & 0xc0) != 0x80) return false;
    }
    return true;
}

/* A node of a parsed document, emitted again (scalars in their own style). */
static void emit_node(moe_yaml_out_h w, yaml_document_t *doc, yaml_node_t *n, int depth)
{
    if (!n || depth > 16) return;
    switch (n->type) {
    case YAML_SCALAR_NODE:
        if (n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE)
            moe_yaml_out_raw(w, (const char *)n->data.scalar.value);
        else
            moe_yaml_out_string(w, (const char *)n->data.scalar.value);
        break;
    case YAML_SEQUENCE_NODE:
        moe_yaml_out_seq(w, n->data.sequence.style == YAML_FLOW_SEQUENCE_STYLE);
        for (yaml_node_item_t *it = n->data.sequence.items.start; it < n->data.sequence.items.top; it++)
            emit_node(w, doc, yaml_document_get_node(doc, *it), depth + 1);
        moe_yaml_out_end_seq(w);
        break;
    case YAML_MAPPING_NODE:
        moe_yaml_out_map(w, n->data.mapping.style == YAML_FLOW_MAPPING_STYLE);
        for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
            emit_node(w, doc, yaml_document_get_node(doc, p->key), depth + 1);
            emit_node(w, doc, yaml_document_get_node(doc, p->value), depth + 1);
        }
        moe_yaml_out_end_map(w);
        break;
    default: break;
    }
}

/* The extra keys (YAML text of a mapping whose keys the loader accepts and ignores), parsed and
 * emitted into the plan's top-level mapping. */
static moe_status_t emit_extra(moe_yaml_out_h w, const char *path, const char *extra_yaml)
{
    yaml_parser_t parser;
    yaml_document_t doc;
    moe_status_t status = MOE_STATUS_OK;
    if (!yaml_parser_initialize(&parser)) return MOE_STATUS_NO_MEMORY;
    yaml_parser_set_input_string(&parser, (const unsigned char *)extra_yaml, strlen(extra_yaml));
    if (!yaml_parser_load(&parser, &doc)) {
        yaml_parser_delete(&parser);
        moe_error("%s: the plan's annotations are not YAML: %s", path, parser.problem ? parser.problem : "?");
        return MOE_STATUS_INVALID_ARGUMENT;
    }
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (root && root->type != YAML_MAPPING_NODE) {
        moe_error("%s: the plan's annotations are not a mapping", path);
        status = MOE_STATUS_INVALID_ARGUMENT;
    }
    for (yaml_node_pair_t *p = root && !status ? root->data.mapping.pairs.start : NULL;
         p && p < root->data.mapping.pairs.top; p++) {
        yaml_node_t *key = yaml_document_get_node(&doc, p->key);
        const char *k = key && key->type == YAML_SCALAR_NODE ? (const char *)key->data.scalar.value : "";
        if (strcmp(k, "solver") != 0 && strcmp(k, "sources") != 0 && strcmp(k, "predicted") != 0) {
            moe_error("%s: '%s' is not a plan annotation (solver, sources, predicted)", path, k);
            status = MOE_STATUS_INVALID_ARGUMENT;
            break;
        }
        moe_yaml_out_key(w, k);
        emit_node(w, &doc, yaml_document_get_node(&doc, p->value), 0);
    }
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    return status;
}

moe_status_t moe_plan_save_annotated(const moe_plan_h plan, const char *path, const char *model,
                                     const char *extra_yaml)
{
    moe_status_t status = MOE_STATUS_OK;
    moe_atomic_file_t f;
    moe_yaml_out_h w = NULL;
    MOE_CHECK(moe_plan_check(plan, path), fail);
    if (model && !utf8_valid((const unsigned char *)model))
        MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, fail, "%s: the model name is not valid UTF-8", path);
    MOE_CHECK(moe_atomic_file_open(path, &f), fail);
    int L = moe_plan_layers(plan), R = moe_plan_ranks(plan);
    FILE *fp = f.fp;
    moe_yaml_out_comment(fp, "moerun placement plan: per layer, the experts each rank hosts and the share of");
    moe_yaml_out_comment(fp, "each expert's tokens that replica takes (format in placement/plan_yaml.c).");
    MOE_CHECK(moe_yaml_out_open(fp, path, &w), fail_file);
    moe_yaml_out_map(w, false);
    moe_yaml_out_key(w, "format");
    moe_yaml_out_int(w, PLAN_FORMAT);
    if (model && model[0]) {
        moe_yaml_out_key(w, "model");
        moe_yaml_out_string(w, model);
    }
    const char *keys[4] = {"layers", "experts", "ranks", "ranks_per_node"};
    const int values[4] = {L, moe_plan_experts(plan), R, moe_plan_ranks_per_node(plan)};
    for (int i = 0; i < 4; i++) {
        moe_yaml_out_key(w, keys[i]);
        moe_yaml_out_int(w, values[i]);
    }
    if (extra_yaml && extra_yaml[0]) MOE_CHECK(emit_extra(w, path, extra_yaml), fail_emitter);
    moe_yaml_out_key(w, "placement");
    moe_yaml_out_seq(w, false);
    for (int l = 0; l < L; l++) {
        moe_yaml_out_map(w, false);
        moe_yaml_out_key(w, "layer");
        moe_yaml_out_int(w, l);
        moe_yaml_out_key(w, "ranks");
        moe_yaml_out_seq(w, false);
        for (int r = 0; r < R; r++) {
            const int *ex;
            int n = moe_plan_local_experts(plan, l, r, &ex);
            if (n == 0) continue;
            bool all_one = true;
            moe_yaml_out_map(w, true);
            moe_yaml_out_key(w, "rank");
            moe_yaml_out_int(w, r);
            moe_yaml_out_key(w, "experts");
            moe_yaml_out_seq(w, true);
            for (int i = 0; i < n; i++) {
                moe_yaml_out_int(w, ex[i]);
                const int *rk;
                const float *sh;
                int nr = moe_plan_replicas(plan, l, ex[i], &rk, &sh);
                for (int j = 0; j < nr; j++)
                    if (rk[j] == r && sh[j] != 1.0f) all_one = false;
            }
            moe_yaml_out_end_seq(w);
            if (!all_one) {
                moe_yaml_out_key(w, "shares");
                moe_yaml_out_seq(w, true);
                for (int i = 0; i < n; i++) {
                    const int *rk;
                    const float *sh;
                    int nr = moe_plan_replicas(plan, l, ex[i], &rk, &sh);
                    for (int j = 0; j < nr; j++) {
                        if (rk[j] != r) continue;
                        char buf[32];
                        format_share(sh[j], buf, sizeof(buf));
                        moe_yaml_out_raw(w, buf);
                    }
                }
                moe_yaml_out_end_seq(w);
            }
            moe_yaml_out_end_map(w);
        }
        moe_yaml_out_end_seq(w);
        moe_yaml_out_end_map(w);
    }
    moe_yaml_out_end_seq(w);
    moe_yaml_out_end_map(w);
    status = moe_yaml_out_close(w);
    w = NULL;
    if (status != MOE_STATUS_OK) goto fail_file;
    if (ferror(fp)) {
        moe_atomic_file_abort(&f);
        MOE_FAIL(MOE_STATUS_IO_ERROR, fail, "%s: write failed", path);
    }
    MOE_CHECK(moe_atomic_file_commit(&f), fail);
    return MOE_STATUS_OK;
fail_emitter:
    moe_yaml_out_close(w);
fail_file:
    moe_atomic_file_abort(&f);
fail:
    return status;
}

moe_status_t moe_plan_save(const moe_plan_h plan, const char *path)
{
    return moe_plan_save_annotated(plan, path, NULL, NULL);
}
