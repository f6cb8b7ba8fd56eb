/* common: status strings, logging, aligned allocation, hashing, clock (see common.h). */
#include "common/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

const char *moe_status_string(moe_status_t status)
{
    switch (status) {
    case MOE_STATUS_OK: return "ok";
    case MOE_STATUS_INVALID_ARGUMENT: return "invalid argument";
    case MOE_STATUS_IO_ERROR: return "i/o error";
    case MOE_STATUS_FORMAT_ERROR: return "malformed file";
    case MOE_STATUS_NO_MEMORY: return "out of memory";
    case MOE_STATUS_MPI_ERROR: return "MPI error";
    case MOE_STATUS_CUDA_ERROR: return "CUDA error";
    case MOE_STATUS_NCCL_ERROR: return "NCCL error";
    case MOE_STATUS_CUBLAS_ERROR: return "cuBLAS error";
    case MOE_STATUS_SOLVER_ERROR: return "solver error";
    case MOE_STATUS_UNSUPPORTED: return "unsupported";
    case MOE_STATUS_INTERNAL: return "internal error";
    case MOE_STATUS_REMOTE_ERROR: return "another rank failed";
    case MOE_STATUS_TIMEOUT: return "a rank stopped answering (run.timeout)";
    }
    return "unknown status";
}

/* ---------------------------------------------------------------- logging */

static int log_rank = 0;
static moe_log_level_t log_level = MOE_LOG_WARN;

void moe_log_init(int rank, moe_log_level_t level)
{
    log_rank = rank;
    log_level = level;
}

moe_log_level_t moe_log_level(void) { return log_level; }

static bool log_holding = false;
static char *log_held = NULL;
static size_t log_held_len = 0;

char *moe_log_hold(bool hold)
{
    char *held = NULL;
    if (!hold) {
        held = log_held;
        log_held = NULL;
        log_held_len = 0;
    }
    log_holding = hold;
    return held;
}

/* One line, to stderr or into the held text (a line that does not fit is written at once). */
static void log_emit(const char *text)
{
    if (log_holding) {
        size_t n = strlen(text);
        char *grown = realloc(log_held, log_held_len + n + 1);
        if (grown) {
            memcpy(grown + log_held_len, text, n + 1);
            log_held = grown;
            log_held_len += n;
            return;
        }
    }
    fputs(text, stderr);
}

void moe_log_write(moe_log_level_t level, const char *file, int line, const char *fmt, ...)
{
    static const char *names[] = {"error", "warn", "info", "debug"};
    if (level > log_level) return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    const char *base = strrchr(file, '/');
    /* One write per line so that lines of different ranks do not interleave mid-line. */
    char text[2200];
    if (level <= MOE_LOG_WARN && log_level < MOE_LOG_DEBUG)
        snprintf(text, sizeof text, "moerun[%d] %s: %s\n", log_rank, names[level], msg);
    else
        snprintf(text, sizeof text, "moerun[%d] %s %s:%d: %s\n", log_rank, names[level], base ? base + 1 : file,
                 line, msg);
    log_emit(text);
}

/* ---------------------------------------------------------------- allocation */

bool moe_size_mul(size_t a, size_t b, size_t *out)
{
    if (a != 0 && b > SIZE_MAX / a) return false;
    *out = a * b;
    return true;
}

void *moe_malloc(size_t count, size_t size)
{
    size_t bytes;
    if (!moe_size_mul(count, size, &bytes)) return NULL;
    if (bytes == 0) bytes = 64;
    bytes = (bytes + 63) & ~(size_t)63;
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes) != 0) return NULL;
    return p;
}

void *moe_calloc(size_t count, size_t size)
{
    size_t bytes;
    if (!moe_size_mul(count, size, &bytes)) return NULL;
    void *p = moe_malloc(count, size);
    if (p) memset(p, 0, bytes);
    return p;
}

void moe_free(void *ptr) { free(ptr); }

/* ---------------------------------------------------------------- random numbers */

static inline uint64_t splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

uint64_t moe_hash(uint64_t seed, uint64_t a, uint64_t b, uint64_t c, uint64_t d)
{
    uint64_t h = splitmix64(seed);
    h = splitmix64(h ^ a);
    h = splitmix64(h ^ b);
    h = splitmix64(h ^ c);
    return splitmix64(h ^ d);
}

/* ---------------------------------------------------------------- time */

double moe_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* A "Key: N kB" line of /proc/self/status, in bytes; 0 where the system does not say. */
static int64_t proc_status_bytes(const char *format)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return 0;
    char line[256];
    long long kb = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, format, &kb) == 1) break;
    fclose(f);
    return (int64_t)kb * 1024;
}

int64_t moe_host_rss_peak(void) { return proc_status_bytes("VmHWM: %lld kB"); }
int64_t moe_host_rss_now(void) { return proc_status_bytes("VmRSS: %lld kB"); }
