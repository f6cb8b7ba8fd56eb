/* io/yaml.c: YAML documents loaded within bounds (see io.h), for the config and plan loaders.
 *
 * libyaml builds whatever a file describes: a deeply nested document takes the parser a long time,
 * and aliases let a small file stand for a huge one to any code that walks it. So a file is read
 * whole (its size bounded first), then parsed twice: a pass over the events checks the nesting depth
 * and counts nodes as a reader would visit them, each alias standing for its anchor's whole subtree,
 * and stops as soon as that count passes what the file's size allows; the second pass builds the
 * document, whose mappings are then checked for repeated keys. */
#include "io/io.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <yaml.h>

typedef struct {
    char *name;
    size_t size; /* nodes in the anchored subtree, aliases expanded */
} anchor_t;

typedef struct {
    char *anchor;     /* of an open collection, or NULL */
    size_t start;     /* the count before it */
} open_t;

static void log_parser_error(const char *path, const yaml_parser_t *p)
{
    if (p->error == YAML_MEMORY_ERROR)
        moe_error("%s: out of memory while parsing YAML", path);
    else if (p->error == YAML_READER_ERROR)
        moe_error("%s: YAML error: %s at byte %zu", path, p->problem ? p->problem : "unreadable",
                  p->problem_offset);
    else if (p->context)
        moe_error("%s:%zu: YAML syntax error: %s (%s on line %zu)", path, p->problem_mark.line + 1,
                  p->problem ? p->problem : "unknown problem", p->context, p->context_mark.line + 1);
    else
        moe_error("%s:%zu: YAML syntax error: %s", path, p->problem_mark.line + 1,
                  p->problem ? p->problem : "unknown problem");
}

/* The event pass: depth, documents, alias expansion. */
static moe_status_t check_events(const char *path, const unsigned char *text, size_t size,
                                 const moe_yaml_limits_t *lim)
{
    moe_status_t status = MOE_STATUS_OK;
    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser)) {
        moe_error("%s: out of memory while parsing YAML", path);
        return MOE_STATUS_NO_MEMORY;
    }
    yaml_parser_set_input_string(&parser, text, size);
    open_t *stack = calloc((size_t)lim->max_depth + 1, sizeof *stack);
    anchor_t *anchors = NULL;
    size_t n_anchors = 0, cap_anchors = 0, raw = 0, seen = 0;
    const size_t ceiling = 2 * size + 1024; /* what a file of this size may stand for */
    int depth = 0, documents = 0;
    MOE_CHECK_ALLOC(stack, done);
    for (bool end = false; !end;) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&parser, &ev)) {
            log_parser_error(path, &parser);
            status = MOE_STATUS_FORMAT_ERROR;
            goto done;
        }
        const int line = (int)ev.start_mark.line + 1;
        const char *anchor = NULL;
        switch (ev.type) {
        case YAML_STREAM_END_EVENT: end = true; break;
        case YAML_DOCUMENT_START_EVENT:
            if (++documents > 1) {
                moe_error("%s:%d: a second YAML document; the file must hold one", path, line);
                status = MOE_STATUS_FORMAT_ERROR;
            }
            break;
        case YAML_SCALAR_EVENT:
            raw++, seen++;
            anchor = (const char *)ev.data.scalar.anchor;
            break;
        case YAML_SEQUENCE_START_EVENT:
        case YAML_MAPPING_START_EVENT:
            raw++, seen++;
            if (depth == lim->max_depth) {
                moe_error("%s:%d: nested deeper than %d levels", path, line, lim->max_depth);
                status = MOE_STATUS_FORMAT_ERROR;
                break;
            }
            anchor = ev.type == YAML_SEQUENCE_START_EVENT ? (const char *)ev.data.sequence_start.anchor
                                                           : (const char *)ev.data.mapping_start.anchor;
            stack[depth].anchor = anchor ? strdup(anchor) : NULL;
            stack[depth++].start = seen - 1;
            anchor = NULL; /* recorded at the end, when its size is known */
            break;
        case YAML_SEQUENCE_END_EVENT:
        case YAML_MAPPING_END_EVENT:
            if (depth > 0) {
                open_t *o = &stack[--depth];
                if (o->anchor) {
                    anchor = o->anchor;
                    o->anchor = NULL;
                }
                if (anchor) { /* record the subtree's size under its name */
                    if (n_anchors == cap_anchors) {
                        size_t cap = cap_anchors ? 2 * cap_anchors : 16;
                        anchor_t *grown = realloc(anchors, cap * sizeof *anchors);
                        if (!grown) {
                            free((char *)anchor);
                            MOE_FAIL(MOE_STATUS_NO_MEMORY, done_event, "%s: out of memory", path);
                        }
                        anchors = grown;
                        cap_anchors = cap;
                    }
                    anchors[n_anchors++] = (anchor_t){(char *)anchor, seen - o->start};
                    anchor = NULL;
                }
            }
            break;
        case YAML_ALIAS_EVENT: {
            size_t stands_for = 1;
            for (size_t i = n_anchors; i-- > 0;)
                if (strcmp(anchors[i].name, (const char *)ev.data.alias.anchor) == 0) {
                    stands_for = anchors[i].size;
                    break;
                }
            seen += stands_for;
            if (seen > ceiling) {
                moe_error("%s:%d: aliases make the document stand for more than %zu nodes (the file "
                          "has %zu bytes)", path, line, ceiling, size);
                status = MOE_STATUS_FORMAT_ERROR;
            }
            break;
        }
        default: break;
        }
        if (anchor && status == MOE_STATUS_OK) { /* a scalar's anchor */
            if (n_anchors == cap_anchors) {
                size_t cap = cap_anchors ? 2 * cap_anchors : 16;
                anchor_t *grown = realloc(anchors, cap * sizeof *anchors);
                if (!grown) MOE_FAIL(MOE_STATUS_NO_MEMORY, done_event, "%s: out of memory", path);
                anchors = grown;
                cap_anchors = cap;
            }
            anchors[n_anchors].name = strdup(anchor);
            anchors[n_anchors++].size = 1;
        }
    done_event:
        yaml_event_delete(&ev);
        if (status != MOE_STATUS_OK) goto done;
    }
    if (seen > 2 * raw + 1024) {
        moe_error("%s: aliases make the document stand for %zu nodes, %zu are written: at most twice "
                  "as many", path, seen, raw);
        status = MOE_STATUS_FORMAT_ERROR;
    }
done:
    for (int i = 0; stack && i < lim->max_depth; i++) free(stack[i].anchor);
    for (size_t i = 0; i < n_anchors; i++) free(anchors[i].name);
    free(anchors);
    free(stack);
    yaml_parser_delete(&parser);
    return status;
}

typedef struct {
    const char *key;
    int line;
} key_t_;

static int cmp_key(const void *a, const void *b)
{
    const key_t_ *x = a, *y = b;
    int c = strcmp(x->key, y->key);
    return c ? c : (x->line > y->line) - (x->line < y->line);
}

/* No mapping of the document repeats a scalar key. */
static moe_status_t check_keys(const char *path, yaml_document_t *doc)
{
    moe_status_t status = MOE_STATUS_OK;
    key_t_ *keys = NULL;
    size_t cap = 0;
    for (yaml_node_t *n = doc->nodes.start; n < doc->nodes.top && status == MOE_STATUS_OK; n++) {
        if (n->type != YAML_MAPPING_NODE) continue;
        size_t count = (size_t)(n->data.mapping.pairs.top - n->data.mapping.pairs.start), k = 0;
        if (count > cap) {
            free(keys);
            cap = count;
            keys = malloc(cap * sizeof *keys);
            MOE_CHECK_ALLOC(keys, done);
        }
        for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
            yaml_node_t *key = yaml_document_get_node(doc, p->key);
            if (key && key->type == YAML_SCALAR_NODE)
                keys[k++] = (key_t_){(const char *)key->data.scalar.value, (int)key->start_mark.line + 1};
        }
        if (k < 2) continue; /* nothing to repeat (and keys may be NULL: an empty mapping) */
        qsort(keys, k, sizeof *keys, cmp_key);
        for (size_t i = 1; i < k; i++)
            if (strcmp(keys[i].key, keys[i - 1].key) == 0)
                MOE_FAIL(MOE_STATUS_FORMAT_ERROR, done, "%s:%d: key '%s' given twice (first on line %d)",
                         path, keys[i].line, keys[i].key, keys[i - 1].line);
    }
done:
    free(keys);
    return status;
}

moe_status_t moe_yaml_load(const char *path, const moe_yaml_limits_t *limits, yaml_document_t *out)
{
    moe_status_t status = MOE_STATUS_OK;
    unsigned char *text = NULL;
    struct stat st;
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        moe_error("%s: cannot open: %s", path, strerror(errno));
        return MOE_STATUS_IO_ERROR;
    }
    if (fstat(fileno(fp), &st) != 0)
        MOE_FAIL(MOE_STATUS_IO_ERROR, done, "%s: cannot stat: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode)) MOE_FAIL(MOE_STATUS_IO_ERROR, done, "%s: is a directory, not a YAML file", path);
    if ((uint64_t)st.st_size > limits->max_bytes)
        MOE_FAIL(MOE_STATUS_FORMAT_ERROR, done, "%s: %lld bytes, more than the %zu a YAML file may have here",
                 path, (long long)st.st_size, limits->max_bytes);
    size_t size = (size_t)st.st_size;
    text = malloc(size + 1);
    MOE_CHECK_ALLOC(text, done);
    if (fread(text, 1, size, fp) != size)
        MOE_FAIL(MOE_STATUS_IO_ERROR, done, "%s: cannot read: %s", path, strerror(errno));
    MOE_CHECK(check_events(path, text, size, limits), done);
    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser)) MOE_FAIL(MOE_STATUS_NO_MEMORY, done, "%s: out of memory", path);
    yaml_parser_set_input_string(&parser, text, size);
    if (!yaml_parser_load(&parser, out)) {
        log_parser_error(path, &parser);
        status = MOE_STATUS_FORMAT_ERROR;
    }
    yaml_parser_delete(&parser);
    if (status == MOE_STATUS_OK && limits->unique_keys) {
        status = check_keys(path, out);
        if (status != MOE_STATUS_OK) yaml_document_delete(out);
    }
done:
    free(text);
    fclose(fp);
    return status;
}
