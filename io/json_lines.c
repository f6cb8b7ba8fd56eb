/* json_lines: moerun's machine-readable output, one JSON object per line (jansson), each with a
 * "type" and a "time" (UTC, ISO 8601 with milliseconds), written whole and flushed, so that a reader
 * following the stream sees complete lines only.
 *
 * A JSON-lines log (outputs.metrics) is the one output not written atomically: it streams, a batch
 * at a time, so that a long run can be followed and a run that dies keeps the lines it wrote. It is
 * still opened safely: checked first like every output, and a symlink under its name not followed. */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

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

moe_status_t moe_json_line_write(FILE *fp, const char *path, bool compact, json_t *record)
{
    moe_status_t status = MOE_STATUS_OK;
    const size_t flags = JSON_ENSURE_ASCII | JSON_REAL_PRECISION(9) | (compact ? JSON_COMPACT : 0);
    char *text = record ? json_dumps(record, flags) : NULL;
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

moe_status_t moe_json_stream_open(const char *path, FILE **out)
{
    moe_status_t status = moe_atomic_file_check(path); /* not a folder, its folder there */
    if (status != MOE_STATUS_OK) return status;
    /* a planted symlink under the name is not followed: the open fails instead */
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        moe_error("%s: cannot write: %s", path, fd < 0 ? strerror(errno) : "not a regular file");
        if (fd >= 0) close(fd);
        return MOE_STATUS_IO_ERROR;
    }
    FILE *fp = fdopen(fd, "w");
    if (!fp) {
        moe_error("%s: cannot write: %s", path, strerror(errno));
        close(fd);
        return MOE_STATUS_IO_ERROR;
    }
    *out = fp;
    return MOE_STATUS_OK;
}
