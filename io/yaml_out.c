/* yaml_out: YAML written through libyaml's emitter (configs, plans), so that every scalar is quoted
 * and escaped by the library that reads it back; no value can end a line or add a key. Comments,
 * which the emitter does not write, go before the document (moe_yaml_out_comment). */
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yaml.h>

#include "io/io.h"

struct moe_yaml_out_s {
    yaml_emitter_t emitter;
    FILE *fp;
    const char *path;
    bool failed;
};

/* One event; the first failure is logged, the rest are skipped. */
static void emit(moe_yaml_out_h w, yaml_event_t *event, bool ok)
{
    if (w->failed) {
        if (ok) yaml_event_delete(event);
        return;
    }
    if (!ok || !yaml_emitter_emit(&w->emitter, event)) {
        moe_error("%s: cannot write YAML: %s", w->path, w->emitter.problem ? w->emitter.problem : "out of memory");
        w->failed = true;
    }
}

void moe_yaml_out_comment(FILE *fp, const char *text)
{
    fputs("# ", fp);
    for (const unsigned char *p = (const unsigned char *)text; *p; p++)
        fputc(*p < 0x20 || *p == 0x7f ? '?' : *p, fp); /* a comment stays one line */
    fputc('\n', fp);
}

moe_status_t moe_yaml_out_open(FILE *fp, const char *path, moe_yaml_out_h *out)
{
    moe_yaml_out_h w = calloc(1, sizeof *w);
    if (!w || !yaml_emitter_initialize(&w->emitter)) {
        free(w);
        moe_error("%s: out of memory for the YAML emitter", path);
        return MOE_STATUS_NO_MEMORY;
    }
    w->fp = fp;
    w->path = path;
    yaml_emitter_set_output_file(&w->emitter, fp);
    yaml_emitter_set_unicode(&w->emitter, 1);
    yaml_emitter_set_width(&w->emitter, 120);
    yaml_event_t e;
    emit(w, &e, yaml_stream_start_event_initialize(&e, YAML_UTF8_ENCODING));
    emit(w, &e, yaml_document_start_event_initialize(&e, NULL, NULL, NULL, 1));
    *out = w;
    return MOE_STATUS_OK;
}

void moe_yaml_out_map(moe_yaml_out_h w, bool flow)
{
    yaml_event_t e;
    emit(w, &e, yaml_mapping_start_event_initialize(&e, NULL, NULL, 1, flow ? YAML_FLOW_MAPPING_STYLE
                                                                             : YAML_BLOCK_MAPPING_STYLE));
}

void moe_yaml_out_seq(moe_yaml_out_h w, bool flow)
{
    yaml_event_t e;
    emit(w, &e, yaml_sequence_start_event_initialize(&e, NULL, NULL, 1, flow ? YAML_FLOW_SEQUENCE_STYLE
                                                                              : YAML_BLOCK_SEQUENCE_STYLE));
}

void moe_yaml_out_end_map(moe_yaml_out_h w)
{
    yaml_event_t e;
    emit(w, &e, yaml_mapping_end_event_initialize(&e));
}

void moe_yaml_out_end_seq(moe_yaml_out_h w)
{
    yaml_event_t e;
    emit(w, &e, yaml_sequence_end_event_initialize(&e));
}

static void scalar(moe_yaml_out_h w, const char *text, yaml_scalar_style_t style)
{
    yaml_event_t e;
    emit(w, &e, yaml_scalar_event_initialize(&e, NULL, NULL, (const yaml_char_t *)text, (int)strlen(text), 1, 1,
                                             style));
}

void moe_yaml_out_string(moe_yaml_out_h w, const char *text)
{
    /* plain where that reads back as the same string, quoted where it would not ("true", "4",
     * "a: b", "") */
    bool plain = text[0] != '\0';
    const char *special[] = {"true", "false", "yes", "no", "on", "off", "null", "~", "y", "n"};
    for (size_t i = 0; plain && i < sizeof special / sizeof special[0]; i++)
        if (strcasecmp(text, special[i]) == 0) plain = false;
    if (plain) {
        char *end;
        strtod(text, &end);
        if (*end == '\0') plain = false; /* a number */
    }
    scalar(w, text, plain ? YAML_ANY_SCALAR_STYLE : YAML_DOUBLE_QUOTED_SCALAR_STYLE);
}

void moe_yaml_out_raw(moe_yaml_out_h w, const char *text) { scalar(w, text, YAML_PLAIN_SCALAR_STYLE); }

void moe_yaml_out_int(moe_yaml_out_h w, long long v)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%lld", v);
    scalar(w, buf, YAML_PLAIN_SCALAR_STYLE);
}

void moe_yaml_out_number(moe_yaml_out_h w, double v, const char *format)
{
    char buf[64];
    snprintf(buf, sizeof buf, format, v);
    scalar(w, buf, YAML_PLAIN_SCALAR_STYLE);
}

void moe_yaml_out_key(moe_yaml_out_h w, const char *key) { scalar(w, key, YAML_PLAIN_SCALAR_STYLE); }

moe_status_t moe_yaml_out_close(moe_yaml_out_h w)
{
    if (!w) return MOE_STATUS_OK;
    yaml_event_t e;
    emit(w, &e, yaml_document_end_event_initialize(&e, 1));
    emit(w, &e, yaml_stream_end_event_initialize(&e));
    if (!w->failed && !yaml_emitter_flush(&w->emitter)) {
        moe_error("%s: cannot write YAML", w->path);
        w->failed = true;
    }
    const moe_status_t status = w->failed ? MOE_STATUS_IO_ERROR : MOE_STATUS_OK;
    yaml_emitter_delete(&w->emitter);
    free(w);
    return status;
}
