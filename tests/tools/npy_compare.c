/* npy_compare: exit 0 when two .npy float arrays agree: same shape, no NaN, and
 * ||a - b|| / ||b|| <= TOL (default 1e-5). Prints the relative error. Used by the tests that
 * compare distributed runs with the dense reference. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "io/io.h"

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: npy_compare A.npy B.npy [TOL]\n");
        return 2;
    }
    double tol = argc > 3 ? atof(argv[3]) : 1e-5;
    moe_array_t a = {0}, b = {0};
    if (moe_npy_read(argv[1], &a) != MOE_STATUS_OK || moe_npy_read(argv[2], &b) != MOE_STATUS_OK)
        return 2;
    int rc = 1;
    int64_t n = moe_array_numel(&a);
    bool same = a.ndim == b.ndim && n == moe_array_numel(&b);
    for (int i = 0; same && i < a.ndim; i++) same = a.shape[i] == b.shape[i];
    float *fa = malloc(sizeof(float) * (size_t)n + 1), *fb = malloc(sizeof(float) * (size_t)n + 1);
    if (!same) {
        fprintf(stderr, "npy_compare: shapes differ (%lld vs %lld elements)\n", (long long)n,
                (long long)moe_array_numel(&b));
    } else if (fa && fb && moe_array_to_f32(&a, argv[1], fa) == MOE_STATUS_OK &&
               moe_array_to_f32(&b, argv[2], fb) == MOE_STATUS_OK) {
        double num = 0, den = 0;
        bool nan = false;
        for (int64_t i = 0; i < n; i++) {
            nan |= isnan(fa[i]) || isnan(fb[i]);
            num += ((double)fa[i] - fb[i]) * ((double)fa[i] - fb[i]);
            den += (double)fb[i] * fb[i];
        }
        double rel = den > 0 ? sqrt(num / den) : sqrt(num);
        printf("npy_compare: %lld elements, relative error %.3e (tolerance %.1e)%s\n", (long long)n,
               rel, tol, nan ? ", NaN found" : "");
        rc = !nan && rel <= tol ? 0 : 1;
    }
    free(fa);
    free(fb);
    moe_array_free(&a);
    moe_array_free(&b);
    return rc;
}
