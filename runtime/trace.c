/* trace: one batch's timeline as Chrome trace JSON (`moerun infer --trace-events FILE`).
 *
 * Each rank's backend adds the spans of the traced batch (moe_trace_span, from its timeline: CUDA
 * events on the compute and transfer streams, or host clocks); commit gathers them to rank 0, which
 * writes one file with a process per rank and a thread per stream, openable in chrome://tracing or
 * Perfetto. Times are microseconds from the rank's batch start. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/runtime-impl.h"

typedef struct {
    char name[24], stream[16];
    int layer, chunk;
    double start_us, length_us;
} trace_span_t;

struct moe_trace_s {
    char path[MOE_PATH_MAX];
    int batch;
    trace_span_t *spans;
    int n, cap;
    bool oom;
};

moe_status_t moe_trace_create(const char *path, int batch, moe_trace_h *out)
{
    struct moe_trace_s *t = calloc(1, sizeof *t);
    if (!t) return MOE_STATUS_NO_MEMORY;
    snprintf(t->path, sizeof t->path, "%s", path);
    t->batch = batch;
    *out = t;
    return MOE_STATUS_OK;
}

void moe_trace_destroy(moe_trace_h t)
{
    if (!t) return;
    free(t->spans);
    free(t);
}

int moe_trace_batch(const moe_trace_h t) { return t->batch; }

void moe_trace_span(moe_trace_h t, const char *name, int layer, int chunk, const char *stream, double start_us,
                    double length_us)
{
    if (t->n == t->cap) {
        int cap = t->cap ? 2 * t->cap : 1024;
        trace_span_t *p = realloc(t->spans, sizeof *p * (size_t)cap);
        if (!p) {
            t->oom = true;
            return;
        }
        t->spans = p;
        t->cap = cap;
    }
    trace_span_t *s = &t->spans[t->n++];
    snprintf(s->name, sizeof s->name, "%s", name);
    snprintf(s->stream, sizeof s->stream, "%s", stream);
    s->layer = layer, s->chunk = chunk, s->start_us = start_us, s->length_us = length_us;
}

static moe_status_t write_json(const moe_trace_h t, const trace_span_t *all, const int *counts, int ranks)
{
    moe_status_t status = MOE_STATUS_OK;
    json_t *events = json_array(), *root = json_object();
    MOE_CHECK_ALLOC(events, done);
    MOE_CHECK_ALLOC(root, done);
    for (int p = 0, at = 0; p < ranks; p++) {
        json_array_append_new(events, json_pack("{s:s, s:s, s:i, s:{s:s}}", "name", "process_name", "ph", "M",
                                                "pid", p, "args", "name", "rank"));
        for (int i = 0; i < counts[p]; i++, at++) {
            const trace_span_t *s = &all[at];
            json_t *e = json_pack("{s:s, s:s, s:f, s:f, s:i, s:s, s:{s:i, s:i}}", "name", s->name, "ph", "X", "ts",
                                  s->start_us, "dur", s->length_us, "pid", p, "tid", s->stream, "args", "layer",
                                  s->layer, "chunk", s->chunk);
            if (!e || json_array_append_new(events, e) != 0)
                MOE_FAIL(MOE_STATUS_NO_MEMORY, done, "trace: out of memory");
        }
    }
    json_object_set_new(root, "traceEvents", events);
    events = NULL;
    json_object_set_new(root, "displayTimeUnit", json_string("ms"));
    moe_atomic_file_t f;
    MOE_CHECK(moe_atomic_file_open(t->path, &f), done);
    if (json_dumpf(root, f.fp, JSON_COMPACT) != 0) {
        moe_atomic_file_abort(&f);
        MOE_FAIL(MOE_STATUS_IO_ERROR, done, "%s: could not write the trace", t->path);
    }
    MOE_CHECK(moe_atomic_file_commit(&f), done);
done:
    json_decref(events);
    json_decref(root);
    return status;
}

moe_status_t moe_trace_commit(moe_trace_h t, moe_ctl_h ctl)
{
    moe_status_t status = MOE_STATUS_OK;
    const int rank = moe_ctl_rank(ctl), size = moe_ctl_size(ctl);
    void *all = NULL;
    size_t *sizes = rank == 0 ? calloc((size_t)size, sizeof(size_t)) : NULL;
    int *counts = rank == 0 ? calloc((size_t)size, sizeof(int)) : NULL;
    if (rank == 0 && (!sizes || !counts)) MOE_FAIL(MOE_STATUS_NO_MEMORY, done, "trace: out of memory on rank 0");
    MOE_CHECK(moe_ctl_gather_alloc(ctl, 0, t->spans, sizeof(trace_span_t) * (size_t)t->n, &all, sizes,
                                   "the trace's spans"), done);
    if (rank == 0) {
        for (int p = 0; p < size; p++) counts[p] = (int)(sizes[p] / sizeof(trace_span_t));
        status = write_json(t, all, counts, size);
    }
    if (t->oom) moe_warn("trace: spans were lost (out of memory)");
done:
    free(sizes);
    free(counts);
    free(all);
    return status;
}
