/* common: what every moerun module shares and nothing more.
 *
 * - moe_status_t, the one status type that library code returns (it never calls exit());
 * - logging with levels, the rank in every line, rank 0 alone printing banners;
 * - the check macros that turn a foreign error (MPI, CUDA, cuBLAS, NCCL, our own) into a status, log
 *   file:line once and jump to a cleanup label (the foreign types appear only inside the macro bodies,
 *   so CPU-only code includes this header without the CUDA headers);
 * - counter-based random numbers: a value is a pure function of its (seed, indices), so that weights and
 *   inputs are the same whatever the world size, placement or order of generation;
 * - a monotonic clock.
 * The only global state in the project is the logging settings below. */
#ifndef MOE_COMMON_H
#define MOE_COMMON_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" { /* the CUDA sources are C++ */
#endif

/* ---------------------------------------------------------------- status */

typedef enum {
    MOE_STATUS_OK = 0,
    MOE_STATUS_INVALID_ARGUMENT, /* bad input from the user: config, file, flag */
    MOE_STATUS_IO_ERROR,         /* a file could not be opened, read or written */
    MOE_STATUS_FORMAT_ERROR,     /* a file is malformed (truncated .npy, bad header) */
    MOE_STATUS_NO_MEMORY,
    MOE_STATUS_MPI_ERROR,
    MOE_STATUS_CUDA_ERROR,
    MOE_STATUS_NCCL_ERROR,
    MOE_STATUS_CUBLAS_ERROR,
    MOE_STATUS_SOLVER_ERROR,     /* GLPK failed or the problem is infeasible */
    MOE_STATUS_UNSUPPORTED,      /* not built in (e.g. cuda backend without CUDA) */
    MOE_STATUS_INTERNAL,         /* a broken invariant: a bug */
    MOE_STATUS_REMOTE_ERROR,     /* another rank failed; this one stops cleanly */
    MOE_STATUS_TIMEOUT,          /* a rank stopped answering (comm.h, liveness): end the job */
} moe_status_t;

const char *moe_status_string(moe_status_t status);

/* ---------------------------------------------------------------- logging */

typedef enum {
    MOE_LOG_SILENT = -1, /* nothing, not even errors (ranks other than 0 while reading config) */
    MOE_LOG_ERROR = 0,
    MOE_LOG_WARN,
    MOE_LOG_INFO,
    MOE_LOG_DEBUG,
} moe_log_level_t;

/* Set once at start-up by launch/ (rank, level from the config or MOE_LOG_LEVEL). */
void moe_log_init(int rank, moe_log_level_t level);
moe_log_level_t moe_log_level(void);

/* Hold (true) this process's log lines instead of writing them, until moe_log_hold(false), which
 * returns what was held (malloc'd, NULL if nothing): so that ranks can compare their messages and
 * print one copy of those every rank wrote alike (launch/cmd_infer.c). */
char *moe_log_hold(bool hold);

void moe_log_write(moe_log_level_t level, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define moe_error(...) moe_log_write(MOE_LOG_ERROR, __FILE__, __LINE__, __VA_ARGS__)
#define moe_warn(...)  moe_log_write(MOE_LOG_WARN, __FILE__, __LINE__, __VA_ARGS__)
#define moe_info(...)  moe_log_write(MOE_LOG_INFO, __FILE__, __LINE__, __VA_ARGS__)
#define moe_debug(...) moe_log_write(MOE_LOG_DEBUG, __FILE__, __LINE__, __VA_ARGS__)

/* ---------------------------------------------------------------- checks
 * Each macro needs a `moe_status_t status` variable and the label it is given. It logs once,
 * where the error is first seen, sets `status` and jumps. */

#define MOE_CHECK(call, label)                                                                    \
    do {                                                                                          \
        moe_status_t moe_check_s_ = (call);                                                       \
        if (moe_check_s_ != MOE_STATUS_OK) {                                                      \
            status = moe_check_s_;                                                                \
            goto label;                                                                           \
        }                                                                                         \
    } while (0)

/* Our own error: log the message and jump. */
#define MOE_FAIL(st, label, ...)                                                                  \
    do {                                                                                          \
        moe_error(__VA_ARGS__);                                                                   \
        status = (st);                                                                            \
        goto label;                                                                               \
    } while (0)

/* For internal buffers; where the size comes from an input, say which (file, key) instead. */
#define MOE_CHECK_ALLOC(ptr, label)                                                               \
    do {                                                                                          \
        if ((ptr) == NULL)                                                                        \
            MOE_FAIL(MOE_STATUS_NO_MEMORY, label, "out of memory (at %s:%d)", __FILE__, __LINE__); \
    } while (0)

/* MPI calls: translated via MPI_Error_string (needs <mpi.h> where used). */
#define MOE_CHECK_MPI(call, label)                                                                \
    do {                                                                                          \
        int moe_check_rc_ = (call);                                                               \
        if (moe_check_rc_ != MPI_SUCCESS) {                                                       \
            char moe_check_msg_[MPI_MAX_ERROR_STRING];                                            \
            int moe_check_len_ = 0;                                                               \
            MPI_Error_string(moe_check_rc_, moe_check_msg_, &moe_check_len_);                     \
            MOE_FAIL(MOE_STATUS_MPI_ERROR, label, "%s failed: %s", #call, moe_check_msg_);        \
        }                                                                                         \
    } while (0)

/* CUDA runtime, cuBLAS and NCCL calls (need their headers where used). */
#define MOE_CHECK_CUDA(call, label)                                                               \
    do {                                                                                          \
        cudaError_t moe_check_ce_ = (call);                                                       \
        if (moe_check_ce_ != cudaSuccess) {                                                       \
            (void)cudaGetLastError(); /* reset the last error (a fault stays: sticky) */        \
            MOE_FAIL(MOE_STATUS_CUDA_ERROR, label, "%s failed: %s", #call,                        \
                     cudaGetErrorString(moe_check_ce_));                                          \
        }                                                                                         \
    } while (0)
#define MOE_CHECK_CUBLAS(call, label)                                                             \
    do {                                                                                          \
        cublasStatus_t moe_check_cb_ = (call);                                                    \
        if (moe_check_cb_ != CUBLAS_STATUS_SUCCESS)                                               \
            MOE_FAIL(MOE_STATUS_CUBLAS_ERROR, label, "%s failed: %s", #call,                      \
                     cublasGetStatusString(moe_check_cb_));                                       \
    } while (0)

#define MOE_CHECK_NCCL(call, label)                                                               \
    do {                                                                                          \
        ncclResult_t moe_check_nr_ = (call);                                                      \
        if (moe_check_nr_ != ncclSuccess)                                                         \
            MOE_FAIL(MOE_STATUS_NCCL_ERROR, label, "%s failed: %s", #call,                        \
                     ncclGetErrorString(moe_check_nr_));                                          \
    } while (0)

/* ---------------------------------------------------------------- limits
 * The largest shapes moerun accepts from any input (configs, plans, traces, statistics, CSVs),
 * checked before anything is allocated from them: far beyond today's models (DeepSeek-V3: 61 layers,
 * 256 experts, top-8), small enough that ids, indices and counts stay well inside int. */
#define MOE_MAX_LAYERS 4096
#define MOE_MAX_EXPERTS 65536
#define MOE_MAX_TOP_K 64
#define MOE_MAX_RANKS 65536

/* What moerun may allocate from a shape it infers from an input of input_bytes (the largest id of
 * a trace, say) rather than one it is given: 256 MiB, or 64 times the input. */
static inline double moe_inferred_budget(double input_bytes)
{
    return input_bytes * 64 > 268435456.0 ? input_bytes * 64 : 268435456.0;
}

/* ---------------------------------------------------------------- allocation */

/* Checked size arithmetic: returns false on overflow. */
bool moe_size_mul(size_t a, size_t b, size_t *out);

/* 64-byte aligned, zero-filled host allocation; NULL on failure or overflow. Free with moe_free. */
void *moe_calloc(size_t count, size_t size);
/* The same, not zero-filled: for memory about to be written whole (the pages are touched then). */
void *moe_malloc(size_t count, size_t size);
void moe_free(void *ptr);

/* ---------------------------------------------------------------- random numbers */

/* A 64-bit mix of a seed and up to four indices (splitmix64 rounds): pure, so any rank computes the
 * same value for the same indices. */
uint64_t moe_hash(uint64_t seed, uint64_t a, uint64_t b, uint64_t c, uint64_t d);

/* Uniform in [-1, 1) from a hash. */
static inline float moe_hash_to_symmetric(uint64_t h)
{
    return (float)((double)(h >> 11) * (1.0 / 9007199254740992.0) * 2.0 - 1.0);
}

/* Uniform in [0, 1) from a hash. */
static inline double moe_hash_to_unit(uint64_t h)
{
    return (double)(h >> 11) * (1.0 / 9007199254740992.0);
}

/* ---------------------------------------------------------------- version */

/* The release (meson's project version) and the git commit built ("unknown" outside a clone). */
const char *moe_version(void);
const char *moe_git_commit(void);

/* ---------------------------------------------------------------- time */

/* Seconds from a monotonic clock. */
double moe_now(void);

/* The process's peak resident set in bytes (VmHWM), 0 where the system does not say. */
int64_t moe_host_rss_peak(void);
/* The process's resident set now in bytes (VmRSS), 0 where the system does not say. */
int64_t moe_host_rss_now(void);

#ifdef __cplusplus
}
#endif

#endif
