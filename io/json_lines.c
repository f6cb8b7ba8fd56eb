/* json_lines: moerun's machine-readable output, one JSON object per line (jansson), each with a
 * "type" and a "time" (UTC, ISO 8601 with milliseconds), written whole and flushed, so that a reader
 * following the stream sees complete lines only. */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "io/io.h"

json_t *moe_json_record(const char *type)
{
    json_t *o = json_object();
    if (!o) return NULL;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char when[40];
    size_t n = strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(when + n, sizeof when - n, ".%03ldZ", ts.tv_nsec / 1000000);
    json_object_set_new(o, "type", json_string(type));
    json_object_set_new(o, "time", json_string(when));
    return o;
}

json_t *moe_json_number(double v) { return isfinite(v) ? json_real(v) : json_null(); }

moe_status_t moe_json_line_write(FILE *fp, const char *path, json_t *record)
{
    moe_status_t status = MOE_STATUS_OK;
    char *text = record ? json_dumps(record, JSON_ENSURE_ASCII | JSON_REAL_PRECISION(9)) : NULL;
    if (!text) {
        moe_error("%s: out of memory for a JSON line", path ? path : "stdout");
        status = MOE_STATUS_NO_MEMORY;
    } else if (fputs(text, fp) == EOF || fputc('\n', fp) == EOF || fflush(fp) != 0) {
        moe_error("%s: cannot write: %s", path ? path : "stdout", strerror(ferror(fp) ? errno : EIO));
        status = MOE_STATUS_IO_ERROR;
    }
    free(text);
    json_decref(record);
    return status;
}
