/* io/npy.c: the NumPy .npy format (see io.h).
 *
 * Layout: "\x93NUMPY", major, minor, a little-endian header length (2 bytes in 1.0, 4 bytes in 2.0
 * and 3.0), then a Python dict literal such as
 *     {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
 * padded with spaces and ended by '\n', then the raw C-order data. The reader parses that literal
 * with a small tokenizer rather than pattern matching, so key order, quoting and spacing may vary as
 * they do between NumPy versions. The writer writes exactly what NumPy writes for version 1.0 (the
 * same spare spaces after the dict, the whole header padded to 64 bytes), so its files compare equal
 * byte for byte with np.save's. */
#include "io/io.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define NPY_MAGIC "\x93NUMPY"
#define NPY_MAGIC_LEN 6
#define NPY_ALIGN 64
#define NPY_MAX_HEADER (1u << 20)    /* NumPy itself refuses headers over 10000 bytes by default */
#define NPY_GROWTH_AXIS_DIGITS 21    /* NumPy leaves room for the first axis to grow to this */

/* ---------------------------------------------------------------- dtype descriptors */

static const struct {
    char kind;
    size_t size;
    moe_dtype_t dtype;
} npy_kinds[] = {
    {'f', 4, MOE_DTYPE_F32}, {'f', 8, MOE_DTYPE_F64}, {'f', 2, MOE_DTYPE_F16},
    {'i', 1, MOE_DTYPE_I8},  {'i', 2, MOE_DTYPE_I16}, {'i', 4, MOE_DTYPE_I32},
    {'i', 8, MOE_DTYPE_I64}, {'u', 1, MOE_DTYPE_U8},  {'u', 2, MOE_DTYPE_U16},
    {'u', 4, MOE_DTYPE_U32}, {'u', 8, MOE_DTYPE_U64}, {'b', 1, MOE_DTYPE_BOOL},
};

/* '<f4' -> F32. One-byte types take any byte-order mark ('|' is what NumPy writes); wider ones must be
 * little-endian ('<', or '=' which is native and this host is little-endian). */
static moe_status_t npy_parse_descr(const char *descr, const char *path, moe_dtype_t *out)
{
    size_t len = strlen(descr);
    char order = len > 0 ? descr[0] : '\0';
    char *end = NULL;
    long size = len >= 3 ? strtol(descr + 2, &end, 10) : 0;
    if (len < 3 || !strchr("<>|=", order) || end == NULL || *end != '\0' || size <= 0) {
        moe_error("%s: unsupported dtype '%s'", path, descr);
        return MOE_STATUS_FORMAT_ERROR;
    }
    for (size_t i = 0; i < sizeof npy_kinds / sizeof npy_kinds[0]; i++) {
        if (npy_kinds[i].kind != descr[1] || npy_kinds[i].size != (size_t)size) continue;
        if (size > 1 && order == '>') {
            moe_error("%s: big-endian data (dtype '%s') is not supported", path, descr);
            return MOE_STATUS_FORMAT_ERROR;
        }
        if (size > 1 && order == '|') {
            moe_error("%s: dtype '%s' needs a byte order", path, descr);
            return MOE_STATUS_FORMAT_ERROR;
        }
        *out = npy_kinds[i].dtype;
        return MOE_STATUS_OK;
    }
    moe_error("%s: unsupported dtype '%s'", path, descr);
    return MOE_STATUS_FORMAT_ERROR;
}

static const char *npy_descr(moe_dtype_t dtype)
{
    switch (dtype) {
    case MOE_DTYPE_F32: return "<f4";
    case MOE_DTYPE_F64: return "<f8";
    case MOE_DTYPE_F16: return "<f2";
    case MOE_DTYPE_I8: return "|i1";
    case MOE_DTYPE_I16: return "<i2";
    case MOE_DTYPE_I32: return "<i4";
    case MOE_DTYPE_I64: return "<i8";
    case MOE_DTYPE_U8: return "|u1";
    case MOE_DTYPE_U16: return "<u2";
    case MOE_DTYPE_U32: return "<u4";
    case MOE_DTYPE_U64: return "<u8";
    case MOE_DTYPE_BOOL: return "|b1";
    case MOE_DTYPE_BF16:    /* NumPy has no bfloat16 */
    case MOE_DTYPE_F8_E4M3: /* nor float8 */
        return NULL;
    }
    return NULL;
}

/* ---------------------------------------------------------------- header parsing */

typedef struct {
    const char *p, *end;
    const char *path;
} npy_lexer_t;

typedef struct {
    char descr[32];
    bool fortran_order;
    int ndim;
    int64_t shape[MOE_MAX_DIMS];
} npy_header_t;

static void lex_skip_space(npy_lexer_t *lx)
{
    while (lx->p < lx->end && (*lx->p == ' ' || *lx->p == '\t' || *lx->p == '\n' || *lx->p == '\r'))
        lx->p++;
}

/* Consume `c` after optional spaces; false if the next character is something else. */
static bool lex_accept(npy_lexer_t *lx, char c)
{
    lex_skip_space(lx);
    if (lx->p < lx->end && *lx->p == c) {
        lx->p++;
        return true;
    }
    return false;
}

/* A quoted string without escapes (none of the keys or values NumPy writes needs one). */
static bool lex_string(npy_lexer_t *lx, char *buf, size_t cap)
{
    lex_skip_space(lx);
    if (lx->p >= lx->end || (*lx->p != '\'' && *lx->p != '"')) return false;
    char quote = *lx->p++;
    size_t n = 0;
    while (lx->p < lx->end && *lx->p != quote) {
        if (*lx->p == '\\' || *lx->p == '\n' || n + 1 >= cap) return false;
        buf[n++] = *lx->p++;
    }
    if (lx->p >= lx->end) return false;
    lx->p++;
    buf[n] = '\0';
    return true;
}

static bool lex_word(npy_lexer_t *lx, const char *word)
{
    lex_skip_space(lx);
    size_t n = strlen(word);
    if ((size_t)(lx->end - lx->p) < n || memcmp(lx->p, word, n) != 0) return false;
    lx->p += n;
    return true;
}

/* A non-negative decimal integer (with the 'L' suffix Python 2 wrote for longs). */
static bool lex_dim(npy_lexer_t *lx, int64_t *out)
{
    lex_skip_space(lx);
    int64_t v = 0;
    const char *start = lx->p;
    while (lx->p < lx->end && *lx->p >= '0' && *lx->p <= '9') {
        int digit = *lx->p++ - '0';
        if (v > (INT64_MAX - digit) / 10) return false;
        v = v * 10 + digit;
    }
    if (lx->p == start) return false;
    if (lx->p < lx->end && *lx->p == 'L') lx->p++;
    *out = v;
    return true;
}

/* (), (n,), (n, m), (n, m,) */
static bool lex_shape(npy_lexer_t *lx, npy_header_t *h)
{
    if (!lex_accept(lx, '(')) return false;
    h->ndim = 0;
    if (lex_accept(lx, ')')) return true;
    for (;;) {
        if (h->ndim == MOE_MAX_DIMS) return false;
        if (!lex_dim(lx, &h->shape[h->ndim])) return false;
        h->ndim++;
        bool comma = lex_accept(lx, ',');
        if (lex_accept(lx, ')')) return h->ndim > 1 || comma; /* "(3)" is an int, not a tuple */
        if (!comma) return false;
    }
}

static moe_status_t npy_parse_header(const char *text, size_t len, const char *path, npy_header_t *out)
{
    npy_lexer_t lx = {text, text + len, path};
    npy_header_t h;
    memset(&h, 0, sizeof h);
    bool have_descr = false, have_order = false, have_shape = false;
    char key[32];

    if (!lex_accept(&lx, '{')) goto malformed;
    while (!lex_accept(&lx, '}')) {
        if (!lex_string(&lx, key, sizeof key) || !lex_accept(&lx, ':')) goto malformed;
        if (strcmp(key, "descr") == 0 && !have_descr) {
            if (!lex_string(&lx, h.descr, sizeof h.descr)) {
                lex_skip_space(&lx);
                if (lx.p < lx.end && *lx.p == '[') {
                    moe_error("%s: structured dtypes are not supported", path);
                    return MOE_STATUS_FORMAT_ERROR;
                }
                goto malformed;
            }
            have_descr = true;
        } else if (strcmp(key, "fortran_order") == 0 && !have_order) {
            if (lex_word(&lx, "True")) h.fortran_order = true;
            else if (lex_word(&lx, "False")) h.fortran_order = false;
            else goto malformed;
            have_order = true;
        } else if (strcmp(key, "shape") == 0 && !have_shape) {
            if (!lex_shape(&lx, &h)) {
                if (h.ndim == MOE_MAX_DIMS) {
                    moe_error("%s: more than %d dimensions", path, MOE_MAX_DIMS);
                    return MOE_STATUS_FORMAT_ERROR;
                }
                goto malformed;
            }
            have_shape = true;
        } else {
            moe_error("%s: malformed .npy header: unexpected or repeated key '%s'", path, key);
            return MOE_STATUS_FORMAT_ERROR;
        }
        if (!lex_accept(&lx, ',')) {
            if (!lex_accept(&lx, '}')) goto malformed;
            break;
        }
    }
    lex_skip_space(&lx);
    if (lx.p != lx.end) goto malformed;
    if (!have_descr || !have_order || !have_shape) {
        moe_error("%s: .npy header lacks '%s'", path,
                  !have_descr ? "descr" : !have_order ? "fortran_order" : "shape");
        return MOE_STATUS_FORMAT_ERROR;
    }
    *out = h;
    return MOE_STATUS_OK;

malformed:
    while (len > 0 && (text[len - 1] == ' ' || text[len - 1] == '\n')) len--; /* padding */
    moe_error("%s: malformed .npy header at byte %td: \"%.*s\"", path, lx.p - text, (int)len, text);
    return MOE_STATUS_FORMAT_ERROR;
}

/* ---------------------------------------------------------------- reading */

static uint32_t read_le(const unsigned char *p, int n)
{
    uint32_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

moe_status_t moe_npy_read(const char *path, moe_array_t *out)
{
    moe_status_t status = MOE_STATUS_OK;
    unsigned char prefix[12];
    char *header = NULL;
    void *data = NULL;
    npy_header_t h;
    moe_dtype_t dtype;
    struct stat st;

    FILE *fp = fopen(path, "rb");
    if (fp == NULL) {
        moe_error("%s: cannot open: %s", path, strerror(errno));
        return MOE_STATUS_IO_ERROR;
    }
    if (fstat(fileno(fp), &st) != 0)
        MOE_FAIL(MOE_STATUS_IO_ERROR, close_fp, "%s: cannot stat: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode))
        MOE_FAIL(MOE_STATUS_IO_ERROR, close_fp, "%s: is a directory, not a .npy file", path);
    if (st.st_size == 0) MOE_FAIL(MOE_STATUS_FORMAT_ERROR, close_fp, "%s: empty file, not a .npy file", path);

    if (fread(prefix, 1, 8, fp) != 8 || memcmp(prefix, NPY_MAGIC, NPY_MAGIC_LEN) != 0)
        MOE_FAIL(MOE_STATUS_FORMAT_ERROR, close_fp, "%s: not a .npy file (bad magic)", path);
    int major = prefix[6], minor = prefix[7];
    if (major < 1 || major > 3 || minor != 0)
        MOE_FAIL(MOE_STATUS_FORMAT_ERROR, close_fp, "%s: unsupported .npy version %d.%d", path, major,
                 minor);
    int len_bytes = major == 1 ? 2 : 4;
    if (fread(prefix + 8, 1, (size_t)len_bytes, fp) != (size_t)len_bytes)
        MOE_FAIL(MOE_STATUS_FORMAT_ERROR, close_fp, "%s: truncated .npy header", path);
    uint32_t header_len = read_le(prefix + 8, len_bytes);
    size_t data_offset = 8 + (size_t)len_bytes + header_len;
    if (header_len > NPY_MAX_HEADER)
        MOE_FAIL(MOE_STATUS_FORMAT_ERROR, close_fp, "%s: .npy header of %u bytes is implausibly long",
                 path, header_len);
    if ((uint64_t)st.st_size < data_offset)
        MOE_FAIL(MOE_STATUS_FORMAT_ERROR, close_fp,
                 "%s: truncated .npy header (%u bytes announced, file is %lld bytes)", path, header_len,
                 (long long)st.st_size);

    header = malloc(header_len + 1u);
    MOE_CHECK_ALLOC(header, close_fp);
    if (fread(header, 1, header_len, fp) != header_len)
        MOE_FAIL(MOE_STATUS_FORMAT_ERROR, free_header, "%s: truncated .npy header", path);
    header[header_len] = '\0';
    MOE_CHECK(npy_parse_header(header, header_len, path, &h), free_header);
    if (h.fortran_order)
        MOE_FAIL(MOE_STATUS_FORMAT_ERROR, free_header,
                 "%s: Fortran-order arrays are not supported (save with C order)", path);
    MOE_CHECK(npy_parse_descr(h.descr, path, &dtype), free_header);

    size_t numel = 1, nbytes;
    for (int d = 0; d < h.ndim; d++)
        if (!moe_size_mul(numel, (size_t)h.shape[d], &numel))
            MOE_FAIL(MOE_STATUS_FORMAT_ERROR, free_header, "%s: shape overflows", path);
    if (!moe_size_mul(numel, moe_dtype_size(dtype), &nbytes) || nbytes > SIZE_MAX - data_offset)
        MOE_FAIL(MOE_STATUS_FORMAT_ERROR, free_header, "%s: shape overflows", path);
    if ((uint64_t)st.st_size < data_offset + nbytes)
        MOE_FAIL(MOE_STATUS_FORMAT_ERROR, free_header,
                 "%s: truncated .npy data: %zu elements of %s need %zu bytes, file has %lld", path,
                 numel, h.descr, nbytes, (long long)st.st_size - (long long)data_offset);

    data = moe_calloc(nbytes, 1);
    MOE_CHECK_ALLOC(data, free_header);
    if (fread(data, 1, nbytes, fp) != nbytes)
        MOE_FAIL(MOE_STATUS_FORMAT_ERROR, free_data, "%s: truncated .npy data", path);

    free(header);
    fclose(fp);
    memset(out, 0, sizeof *out);
    out->dtype = dtype;
    out->ndim = h.ndim;
    memcpy(out->shape, h.shape, sizeof h.shape);
    out->data = data;
    out->nbytes = nbytes;
    return MOE_STATUS_OK;

free_data:
    moe_free(data);
free_header:
    free(header);
close_fp:
    fclose(fp);
    return status;
}

/* ---------------------------------------------------------------- writing */

/* Write the version 1.0 header for dtype x shape, as np.save would. */
static moe_status_t npy_write_header(FILE *fp, const char *path, moe_dtype_t dtype, int ndim,
                                     const int64_t *shape)
{
    const char *descr = npy_descr(dtype);
    if (descr == NULL) {
        moe_error("%s: dtype %s cannot be stored in .npy", path, moe_dtype_name(dtype));
        return MOE_STATUS_INVALID_ARGUMENT;
    }
    char dict[512];
    int n = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (", descr);
    for (int d = 0; d < ndim; d++)
        n += snprintf(dict + n, sizeof dict - (size_t)n, "%s%lld", d ? ", " : "", (long long)shape[d]);
    n += snprintf(dict + n, sizeof dict - (size_t)n, "%s), }", ndim == 1 ? "," : "");
    /* NumPy leaves GROWTH_AXIS_MAX_DIGITS - len(repr(shape[0])) spaces of room for the first axis to
     * grow in place, then pads with spaces and '\n' up to the next multiple of 64 (a whole 64 more if
     * already aligned). */
    int pad = 0;
    if (ndim > 0) pad = NPY_GROWTH_AXIS_DIGITS - snprintf(NULL, 0, "%lld", (long long)shape[0]);
    if (pad < 0) pad = 0;
    size_t body = (size_t)n + (size_t)pad + 1; /* + '\n' */
    size_t align_pad = NPY_ALIGN - ((NPY_MAGIC_LEN + 2 + 2 + body) % NPY_ALIGN);
    size_t header_len = body + align_pad;

    unsigned char prefix[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(header_len & 0xff),
                                (unsigned char)(header_len >> 8)};
    if (fwrite(prefix, 1, sizeof prefix, fp) != sizeof prefix ||
        fwrite(dict, 1, (size_t)n, fp) != (size_t)n)
        goto write_failed;
    for (size_t i = 0; i < (size_t)pad + align_pad; i++)
        if (fputc(' ', fp) == EOF) goto write_failed;
    if (fputc('\n', fp) == EOF) goto write_failed;
    return MOE_STATUS_OK;

write_failed:
    moe_error("%s: write failed: %s", path, strerror(errno));
    return MOE_STATUS_IO_ERROR;
}

/* Dimensions within bounds and non-negative; *numel_out the element count. */
static moe_status_t npy_check_shape(const char *path, int ndim, const int64_t *shape, size_t *numel_out)
{
    if (ndim < 0 || ndim > MOE_MAX_DIMS) {
        moe_error("%s: cannot write %d dimensions (at most %d)", path, ndim, MOE_MAX_DIMS);
        return MOE_STATUS_INVALID_ARGUMENT;
    }
    size_t numel = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0 || !moe_size_mul(numel, (size_t)shape[d], &numel)) {
            moe_error("%s: bad dimension %d of size %lld", path, d, (long long)shape[d]);
            return MOE_STATUS_INVALID_ARGUMENT;
        }
    }
    *numel_out = numel;
    return MOE_STATUS_OK;
}

moe_status_t moe_npy_write(const char *path, const moe_array_t *array)
{
    moe_status_t status = MOE_STATUS_OK;
    moe_atomic_file_t file;
    size_t numel, nbytes;

    MOE_CHECK(npy_check_shape(path, array->ndim, array->shape, &numel), out);
    if (!moe_size_mul(numel, moe_dtype_size(array->dtype), &nbytes) || nbytes != array->nbytes ||
        (nbytes > 0 && array->data == NULL))
        MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, out,
                 "%s: array of %zu bytes does not match its shape (%zu elements of %s)", path,
                 array->nbytes, numel, moe_dtype_name(array->dtype));
    MOE_CHECK(moe_atomic_file_open(path, &file), out);
    MOE_CHECK(npy_write_header(file.fp, path, array->dtype, array->ndim, array->shape), abort_file);
    if (nbytes > 0 && fwrite(array->data, 1, nbytes, file.fp) != nbytes)
        MOE_FAIL(MOE_STATUS_IO_ERROR, abort_file, "%s: write failed: %s", path, strerror(errno));
    return moe_atomic_file_commit(&file);

abort_file:
    moe_atomic_file_abort(&file);
out:
    return status;
}

/* ---------------------------------------------------------------- streaming writer */

moe_status_t moe_npy_writer_open(const char *path, moe_dtype_t dtype, int ndim, const int64_t *shape,
                                 moe_npy_writer_t *out)
{
    moe_status_t status = MOE_STATUS_OK;
    moe_npy_writer_t w;
    size_t numel, row_bytes;
    memset(&w, 0, sizeof w);

    if (ndim < 1)
        MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, out, "%s: a streamed .npy needs at least one dimension",
                 path);
    if (ndim > MOE_MAX_DIMS)
        MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, out, "%s: cannot write %d dimensions (at most %d)", path,
                 ndim, MOE_MAX_DIMS);
    memcpy(w.shape, shape, sizeof(int64_t) * (size_t)ndim);
    w.ndim = ndim;
    const bool grow = shape[0] == -1;
    if (grow) w.shape[0] = 0;
    MOE_CHECK(npy_check_shape(path, ndim, w.shape, &numel), out);
    size_t row_elems = 1;
    for (int d = 1; d < ndim; d++) row_elems *= (size_t)shape[d]; /* no overflow: numel did not */
    if (!moe_size_mul(row_elems, moe_dtype_size(dtype), &row_bytes) || moe_dtype_size(dtype) == 0)
        MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, out, "%s: bad dtype or row size", path);

    MOE_CHECK(moe_atomic_file_open(path, &w.file), out);
    MOE_CHECK(npy_write_header(w.file.fp, path, dtype, ndim, w.shape), abort_file);
    w.dtype = dtype;
    w.rows_expected = grow ? -1 : shape[0];
    w.rows_written = 0;
    w.row_bytes = row_bytes;
    *out = w;
    return MOE_STATUS_OK;

abort_file:
    moe_atomic_file_abort(&w.file);
out:
    return status;
}

moe_status_t moe_npy_writer_append(moe_npy_writer_t *writer, const void *rows, int64_t n_rows)
{
    const char *path = writer->file.path;
    if (writer->file.fp == NULL) {
        moe_error("%s: append to a writer that is closed", path);
        return MOE_STATUS_INVALID_ARGUMENT;
    }
    if (n_rows < 0 ||
        (writer->rows_expected >= 0 && n_rows > writer->rows_expected - writer->rows_written)) {
        moe_error("%s: appending %lld rows to %lld of %lld overruns the declared shape", path,
                  (long long)n_rows, (long long)writer->rows_written, (long long)writer->rows_expected);
        return MOE_STATUS_INVALID_ARGUMENT;
    }
    size_t bytes = (size_t)n_rows * writer->row_bytes; /* within the declared shape: no overflow */
    if (bytes > 0 && fwrite(rows, 1, bytes, writer->file.fp) != bytes) {
        moe_error("%s: write failed: %s", path, strerror(errno));
        return MOE_STATUS_IO_ERROR;
    }
    writer->rows_written += n_rows;
    return MOE_STATUS_OK;
}

moe_status_t moe_npy_writer_commit(moe_npy_writer_t *writer)
{
    if (writer->file.fp != NULL && writer->rows_expected < 0) {
        /* the header now declares the rows that arrived; its length does not change */
        writer->shape[0] = writer->rows_written;
        moe_status_t status = MOE_STATUS_OK;
        if (fseek(writer->file.fp, 0, SEEK_SET) != 0)
            status = MOE_STATUS_IO_ERROR;
        else
            status = npy_write_header(writer->file.fp, writer->file.path, writer->dtype, writer->ndim,
                                      writer->shape);
        if (status == MOE_STATUS_OK && fseek(writer->file.fp, 0, SEEK_END) != 0)
            status = MOE_STATUS_IO_ERROR;
        if (status != MOE_STATUS_OK) {
            moe_error("%s: could not rewrite the header; file discarded", writer->file.path);
            moe_atomic_file_abort(&writer->file);
            return status;
        }
    } else if (writer->file.fp != NULL && writer->rows_written != writer->rows_expected) {
        moe_error("%s: %lld rows written, the header declares %lld; file discarded", writer->file.path,
                  (long long)writer->rows_written, (long long)writer->rows_expected);
        moe_atomic_file_abort(&writer->file);
        return MOE_STATUS_INVALID_ARGUMENT;
    }
    return moe_atomic_file_commit(&writer->file);
}

void moe_npy_writer_abort(moe_npy_writer_t *writer)
{
    if (writer == NULL) return;
    moe_atomic_file_abort(&writer->file);
}
