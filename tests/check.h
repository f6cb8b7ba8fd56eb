/* check.h: the few assertions moerun's C tests use. A failed check prints file:line and the values,
 * counts a failure, and the test's main returns moe_test_result() (non-zero on any failure). */
#ifndef MOE_TEST_CHECK_H
#define MOE_TEST_CHECK_H

#include <math.h>
#include <stdio.h>
#include <string.h>

static int moe_test_failures = 0;
static int moe_test_checks = 0;

#define CHECK(cond)                                                                               \
    do {                                                                                          \
        moe_test_checks++;                                                                        \
        if (!(cond)) {                                                                            \
            moe_test_failures++;                                                                  \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);             \
        }                                                                                         \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                                        \
    do {                                                                                          \
        long long check_a_ = (long long)(a), check_b_ = (long long)(b);                           \
        moe_test_checks++;                                                                        \
        if (check_a_ != check_b_) {                                                               \
            moe_test_failures++;                                                                  \
            fprintf(stderr, "%s:%d: %s == %s failed: %lld != %lld\n", __FILE__, __LINE__, #a, #b, \
                    check_a_, check_b_);                                                          \
        }                                                                                         \
    } while (0)

#define CHECK_NEAR(a, b, tol)                                                                     \
    do {                                                                                          \
        double check_a_ = (double)(a), check_b_ = (double)(b);                                    \
        moe_test_checks++;                                                                        \
        if (!(fabs(check_a_ - check_b_) <= (tol))) {                                              \
            moe_test_failures++;                                                                  \
            fprintf(stderr, "%s:%d: |%s - %s| <= %g failed: %.9g vs %.9g\n", __FILE__, __LINE__,  \
                    #a, #b, (double)(tol), check_a_, check_b_);                                   \
        }                                                                                         \
    } while (0)

#define CHECK_STATUS(call, expected)                                                              \
    do {                                                                                          \
        int check_s_ = (int)(call);                                                               \
        moe_test_checks++;                                                                        \
        if (check_s_ != (int)(expected)) {                                                        \
            moe_test_failures++;                                                                  \
            fprintf(stderr, "%s:%d: %s returned %d, expected %d\n", __FILE__, __LINE__, #call,    \
                    check_s_, (int)(expected));                                                   \
        }                                                                                         \
    } while (0)

/* ||a - b|| / ||b|| over n floats (0 when both are zero). */
static inline double moe_test_rel_error(const float *a, const float *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * (double)b[i];
    }
    if (den == 0) return num == 0 ? 0 : INFINITY;
    return sqrt(num / den);
}

static inline int moe_test_result(const char *name)
{
    if (moe_test_failures) {
        fprintf(stderr, "%s: %d of %d checks failed\n", name, moe_test_failures, moe_test_checks);
        return 1;
    }
    printf("%s: %d checks passed\n", name, moe_test_checks);
    return 0;
}

#endif
