/* npy_concat: concatenate .npy arrays of one dtype along an axis, like numpy.concatenate, e.g. two
 * routing traces [L][T][k] along axis 1 (the first file's tokens first). Every input is read whole
 * (the traces and weights the tests use are small); the output is written atomically by the io
 * module. Inputs must agree in dtype, rank and every dimension but AXIS (a negative AXIS counts from
 * the end, as in NumPy). Exit 0 on success, 1 on mismatched inputs, 2 on usage or I/O errors. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/io.h"

/* "I8 [26, 8222, 6]" into buf. */
static const char *describe(const moe_array_t *a, char *buf, size_t cap)
{
    size_t n = (size_t)snprintf(buf, cap, "%s [", moe_dtype_name(a->dtype));
    for (int d = 0; d < a->ndim && n < cap; d++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%lld", d ? ", " : "", (long long)a->shape[d]);
    if (n < cap) snprintf(buf + n, cap - n, "]");
    return buf;
}

static int usage(void)
{
    fprintf(stderr, "usage: npy_concat AXIS OUT.npy A.npy [B.npy...]\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc < 4) return usage();
    char *end;
    long axis_arg = strtol(argv[1], &end, 10);
    if (*argv[1] == '\0' || *end != '\0') return usage();
    const char *out_path = argv[2];
    const int n = argc - 3;
    char **paths = argv + 3;

    int rc = 2;
    moe_array_t out = {0};
    moe_array_t *in = calloc((size_t)n, sizeof *in);
    if (in == NULL) {
        fprintf(stderr, "npy_concat: out of memory\n");
        return 2;
    }
    for (int i = 0; i < n; i++)
        if (moe_npy_read(paths[i], &in[i]) != MOE_STATUS_OK) goto free_inputs;

    /* ---- check dtype and shapes, size the output */
    const int ndim = in[0].ndim;
    int axis = (int)(axis_arg < 0 ? axis_arg + ndim : axis_arg);
    if (ndim == 0 || axis < 0 || axis >= ndim) {
        fprintf(stderr, "npy_concat: axis %ld out of range for %s (%d dimensions)\n", axis_arg,
                paths[0], ndim);
        rc = 1;
        goto free_inputs;
    }
    out.dtype = in[0].dtype;
    out.ndim = ndim;
    memcpy(out.shape, in[0].shape, sizeof out.shape);
    out.shape[axis] = 0;
    for (int i = 0; i < n; i++) {
        bool same = in[i].dtype == in[0].dtype && in[i].ndim == ndim;
        for (int d = 0; same && d < ndim; d++) same = d == axis || in[i].shape[d] == in[0].shape[d];
        if (!same) {
            char a[160], b[160];
            fprintf(stderr, "npy_concat: %s is %s, %s is %s: dtypes and dimensions other than axis %d "
                    "must agree\n", paths[i], describe(&in[i], a, sizeof a), paths[0],
                    describe(&in[0], b, sizeof b), axis);
            rc = 1;
            goto free_inputs;
        }
        out.shape[axis] += in[i].shape[axis];
    }

    /* ---- copy: for every index before the axis, each input's block in turn */
    size_t outer = 1, inner = moe_dtype_size(out.dtype);
    for (int d = 0; d < axis; d++) outer *= (size_t)out.shape[d];
    for (int d = axis + 1; d < ndim; d++) inner *= (size_t)out.shape[d];
    out.nbytes = outer * (size_t)out.shape[axis] * inner;
    out.data = moe_malloc(out.nbytes + 1, 1);
    if (out.data == NULL) {
        fprintf(stderr, "npy_concat: cannot allocate %zu bytes\n", out.nbytes);
        goto free_inputs;
    }
    char *dst = out.data;
    for (size_t o = 0; o < outer; o++) {
        for (int i = 0; i < n; i++) {
            size_t block = (size_t)in[i].shape[axis] * inner;
            memcpy(dst, (const char *)in[i].data + o * block, block);
            dst += block;
        }
    }
    if (moe_npy_write(out_path, &out) != MOE_STATUS_OK) goto free_output;
    char desc[160];
    printf("npy_concat: %s %s\n", out_path, describe(&out, desc, sizeof desc));
    rc = 0;

free_output:
    moe_array_free(&out);
free_inputs:
    for (int i = 0; i < n; i++) moe_array_free(&in[i]);
    free(in);
    return rc;
}
