/* test_io: the io module against known bytes and known-bad files.
 *
 * Fixtures are embedded as exact byte strings written by numpy 2.4 (np.save) and by the reference
 * safetensors implementation (safetensors.numpy.save 0.x), so the test needs neither at run time.
 * Conversion tables were computed with numpy (float16) and ml_dtypes (bfloat16). Every file lives in
 * a mkdtemp directory under /tmp that is removed at the end. */
#include "io/io.h"
#include "tests/check.h"

#include <dirent.h>
#include <math.h>
#include <signal.h>
#include <sys/wait.h>
#include <yaml.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---------------------------------------------------------------- helpers */

static char tmp_dir[64];

static const char *tmp_path(const char *name)
{
    static char buf[8][512];
    static int next = 0;
    char *p = buf[next++ % 8];
    snprintf(p, 512, "%s/%s", tmp_dir, name);
    return p;
}

static void write_bytes(const char *path, const void *bytes, size_t n)
{
    FILE *fp = fopen(path, "wb");
    CHECK(fp != NULL);
    if (fp == NULL) return;
    CHECK(fwrite(bytes, 1, n, fp) == n);
    fclose(fp);
}

/* The whole file into a malloc'd buffer; NULL if absent. */
static unsigned char *read_bytes(const char *path, size_t *n)
{
    FILE *fp = fopen(path, "rb");
    if (fp == NULL) return NULL;
    fseek(fp, 0, SEEK_END);
    long size = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    unsigned char *buf = malloc((size_t)size + 1);
    *n = fread(buf, 1, (size_t)size, fp);
    fclose(fp);
    return buf;
}

static bool file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* Files in tmp_dir whose name contains ".tmp." (leftover temporaries). */
static int count_temporaries(void)
{
    int n = 0;
    DIR *dir = opendir(tmp_dir);
    struct dirent *e;
    while (dir && (e = readdir(dir)) != NULL)
        if (strstr(e->d_name, ".tmp.")) n++;
    if (dir) closedir(dir);
    return n;
}

static void remove_tmp_dir(void)
{
    DIR *dir = opendir(tmp_dir);
    struct dirent *e;
    while (dir && (e = readdir(dir)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        unlink(tmp_path(e->d_name));
    }
    if (dir) closedir(dir);
    rmdir(tmp_dir);
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* ---------------------------------------------------------------- dtypes and conversions */

static void test_dtypes(void)
{
    CHECK_EQ_INT(moe_dtype_size(MOE_DTYPE_F32), 4);
    CHECK_EQ_INT(moe_dtype_size(MOE_DTYPE_BF16), 2);
    CHECK_EQ_INT(moe_dtype_size(MOE_DTYPE_U64), 8);
    CHECK_EQ_INT(moe_dtype_size(MOE_DTYPE_BOOL), 1);
    CHECK(strcmp(moe_dtype_name(MOE_DTYPE_BF16), "BF16") == 0);
    CHECK(strcmp(moe_dtype_name(MOE_DTYPE_I8), "I8") == 0);
    CHECK(strcmp(moe_dtype_name(MOE_DTYPE_BOOL), "BOOL") == 0);
    CHECK(moe_dtype_is_integer(MOE_DTYPE_BOOL) && moe_dtype_is_integer(MOE_DTYPE_U16));
    CHECK(!moe_dtype_is_integer(MOE_DTYPE_F16) && moe_dtype_is_float(MOE_DTYPE_BF16));
    CHECK(!moe_dtype_is_float(MOE_DTYPE_I64));
}

static void test_f16(void)
{
    /* f32 bits -> f16 bits, from numpy's astype(float16): ties to even, subnormals, overflow. */
    static const uint32_t to_f16[][2] = {
        {0x00000000, 0x0000}, {0x80000000, 0x8000}, {0x3F800000, 0x3C00}, /* 0, -0, 1 */
        {0xC0000000, 0xC000}, {0x477FE000, 0x7BFF},                       /* -2, 65504 */
        {0x477FEFFF, 0x7BFF}, {0x477FF000, 0x7C00},                       /* below/at the tie to inf */
        {0x501502F9, 0x7C00}, {0x7F800000, 0x7C00}, {0xFF800000, 0xFC00}, /* 1e10, +-inf */
        {0x33800000, 0x0001}, {0x33000000, 0x0000},                       /* 2^-24, 2^-25 (tie to 0) */
        {0x33000001, 0x0001}, {0x33C00000, 0x0002},                       /* just above, 3*2^-25 tie */
        {0x38800000, 0x0400}, {0x387FC000, 0x03FF},                       /* least normal, most sub */
        {0x387FE000, 0x0400},                                             /* tie carries into normal */
        {0x3F801000, 0x3C00}, {0x3F803000, 0x3C02}, {0x3F801001, 0x3C01}, /* ties, just above a tie */
        {0x2F800000, 0x0000}, {0xB3800000, 0x8001}, {0x3EAAAAAB, 0x3555}, /* tiny, -2^-24, 1/3 */
    };
    for (size_t i = 0; i < sizeof to_f16 / sizeof to_f16[0]; i++) {
        uint16_t h = moe_f32_to_f16(bits_f32(to_f16[i][0]));
        if (h != to_f16[i][1])
            fprintf(stderr, "f32 0x%08X -> f16 0x%04X, expected 0x%04X\n", (unsigned)to_f16[i][0], h,
                    (unsigned)to_f16[i][1]);
        CHECK_EQ_INT(h, to_f16[i][1]);
    }
    static const uint32_t from_f16[][2] = {
        {0x0001, 0x33800000}, {0x03FF, 0x387FC000}, {0x0400, 0x38800000}, {0x3C00, 0x3F800000},
        {0x7BFF, 0x477FE000}, {0xFBFF, 0xC77FE000}, {0x7C00, 0x7F800000}, {0x8001, 0xB3800000},
        {0x3555, 0x3EAAA000}, {0x8000, 0x80000000},
    };
    for (size_t i = 0; i < sizeof from_f16 / sizeof from_f16[0]; i++)
        CHECK_EQ_INT(f32_bits(moe_f16_to_f32((uint16_t)from_f16[i][0])), from_f16[i][1]);

    /* Every f16 survives a round trip through f32; every nan stays a nan. */
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = moe_f16_to_f32((uint16_t)h);
        bool nan = (h & 0x7C00) == 0x7C00 && (h & 0x3FF);
        if (nan ? !isnan(f) || !isnan(moe_f16_to_f32(moe_f32_to_f16(f))) : moe_f32_to_f16(f) != h)
            bad++;
    }
    CHECK_EQ_INT(bad, 0);
    CHECK(isnan(moe_f16_to_f32(moe_f32_to_f16(NAN))));

    /* Nearest with ties to even, against a brute-force look at the neighbours, on hashed floats
     * spread over the f16 range (normal and subnormal). */
    bad = 0;
    for (uint64_t i = 0; i < 200000; i++) {
        uint64_t r = moe_hash(7, i, 0, 0, 0);
        float x = ldexpf(moe_hash_to_symmetric(r), (int)((r >> 8) % 44) - 28);
        uint16_t h = moe_f32_to_f16(x);
        double err = fabs((double)moe_f16_to_f32(h) - x);
        for (int dh = -1; dh <= 1; dh += 2) {
            uint16_t n = (uint16_t)(h + dh);
            if (((n ^ h) & 0x8000) || (n & 0x7C00) == 0x7C00) continue; /* crossed sign or to inf */
            double nerr = fabs((double)moe_f16_to_f32(n) - x);
            if (nerr < err || (nerr == err && (h & 1))) bad++;
        }
    }
    CHECK_EQ_INT(bad, 0);
}

static void test_bf16(void)
{
    /* f32 bits -> bf16 bits, from ml_dtypes' astype(bfloat16). */
    static const uint32_t to_bf16[][2] = {
        {0x3F800000, 0x3F80}, {0x3F808000, 0x3F80}, {0x3F818000, 0x3F82}, /* 1, ties to even */
        {0x3F808001, 0x3F81}, {0x7F7FFFFF, 0x7F80}, {0x7F7F8000, 0x7F80}, /* above tie, to inf */
        {0x7F7F7FFF, 0x7F7F}, {0x00000001, 0x0000}, {0x00008000, 0x0000}, /* subnormals */
        {0x00018000, 0x0002}, {0x80000000, 0x8000}, {0xFF800000, 0xFF80},
        {0x3EAAAAAB, 0x3EAB}, {0xC0490FDB, 0xC049},                       /* 1/3, -pi */
    };
    for (size_t i = 0; i < sizeof to_bf16 / sizeof to_bf16[0]; i++)
        CHECK_EQ_INT(moe_f32_to_bf16(bits_f32(to_bf16[i][0])), to_bf16[i][1]);
    CHECK_EQ_INT(f32_bits(moe_bf16_to_f32(0x3F80)), 0x3F800000);
    CHECK_EQ_INT(f32_bits(moe_bf16_to_f32(0x0001)), 0x00010000); /* subnormal */
    CHECK(isnan(moe_bf16_to_f32(moe_f32_to_bf16(NAN))));
    CHECK(isnan(moe_bf16_to_f32(moe_f32_to_bf16(bits_f32(0x7F800001))))); /* low-payload nan */
    int bad = 0;
    for (uint32_t b = 0; b < 65536; b++) {
        bool nan = (b & 0x7F80) == 0x7F80 && (b & 0x7F);
        if (!nan && moe_f32_to_bf16(moe_bf16_to_f32((uint16_t)b)) != b) bad++;
    }
    CHECK_EQ_INT(bad, 0);
}

static void test_array_convert(void)
{
    int64_t i64[] = {-3, 7, INT32_MAX, INT32_MIN};
    moe_array_t a = {.dtype = MOE_DTYPE_I64, .ndim = 1, .shape = {4}, .data = i64, .nbytes = sizeof i64};
    float f[4];
    int32_t i[4] = {0};
    CHECK_STATUS(moe_array_to_f32(&a, "i64", f), MOE_STATUS_OK);
    CHECK(f[0] == -3.0f && f[1] == 7.0f);
    CHECK_STATUS(moe_array_to_i32(&a, "i64", i), MOE_STATUS_OK);
    CHECK(i[0] == -3 && i[2] == INT32_MAX && i[3] == INT32_MIN);
    i64[1] = (int64_t)INT32_MAX + 1;
    i[1] = 42;
    CHECK_STATUS(moe_array_to_i32(&a, "i64", i), MOE_STATUS_INVALID_ARGUMENT);
    CHECK_EQ_INT(i[1], 42); /* untouched on error */

    uint32_t u32[] = {1, 0x80000000u};
    moe_array_t u = {.dtype = MOE_DTYPE_U32, .ndim = 1, .shape = {2}, .data = u32, .nbytes = sizeof u32};
    CHECK_STATUS(moe_array_to_i32(&u, "u32", i), MOE_STATUS_INVALID_ARGUMENT);
    u.shape[0] = 1;
    CHECK_STATUS(moe_array_to_i32(&u, "u32", i), MOE_STATUS_OK);
    CHECK_EQ_INT(i[0], 1);

    uint16_t h[] = {0x3C00, 0xC000, 0x3800};
    moe_array_t ha = {.dtype = MOE_DTYPE_F16, .ndim = 1, .shape = {3}, .data = h, .nbytes = sizeof h};
    CHECK_STATUS(moe_array_to_f32(&ha, "f16", f), MOE_STATUS_OK);
    CHECK(f[0] == 1.0f && f[1] == -2.0f && f[2] == 0.5f);
    CHECK_STATUS(moe_array_to_i32(&ha, "f16", i), MOE_STATUS_INVALID_ARGUMENT); /* 0.5 */
    ha.shape[0] = 2;
    CHECK_STATUS(moe_array_to_i32(&ha, "f16", i), MOE_STATUS_OK);
    CHECK(i[0] == 1 && i[1] == -2);

    uint16_t b[] = {0x3F80, 0x4040};
    moe_array_t ba = {.dtype = MOE_DTYPE_BF16, .ndim = 1, .shape = {2}, .data = b, .nbytes = sizeof b};
    CHECK_STATUS(moe_array_to_f32(&ba, "bf16", f), MOE_STATUS_OK);
    CHECK(f[0] == 1.0f && f[1] == 3.0f);

    uint8_t bools[] = {0, 1, 2};
    moe_array_t bo = {.dtype = MOE_DTYPE_BOOL, .ndim = 1, .shape = {3}, .data = bools, .nbytes = 3};
    CHECK_STATUS(moe_array_to_f32(&bo, "bool", f), MOE_STATUS_OK);
    CHECK(f[0] == 0.0f && f[1] == 1.0f && f[2] == 1.0f);

    double d[] = {2.0, NAN};
    moe_array_t da = {.dtype = MOE_DTYPE_F64, .ndim = 1, .shape = {2}, .data = d, .nbytes = sizeof d};
    CHECK_STATUS(moe_array_to_i32(&da, "f64", i), MOE_STATUS_INVALID_ARGUMENT);
    da.shape[0] = 3; /* more elements than bytes */
    CHECK_STATUS(moe_array_to_f32(&da, "f64", f), MOE_STATUS_INVALID_ARGUMENT);
}

/* ---------------------------------------------------------------- npy */

/* np.save of np.arange(12, dtype=np.int8).reshape(2, 3, 2) - 5, format versions 1.0 and 2.0. */
static const char npy_i8_v1[] =
    "\x93NUMPY\x01\x00v\x00{'descr': '|i1', 'fortran_order': False, 'shape': (2, 3, 2), }"
    "                                                       \n"
    "\xfb\xfc\xfd\xfe\xff\x00\x01\x02\x03\x04\x05\x06";
static const char npy_i8_v2[] =
    "\x93NUMPY\x02\x00t\x00\x00\x00{'descr': '|i1', 'fortran_order': False, 'shape': (2, 3, 2), }"
    "                                                     \n"
    "\xfb\xfc\xfd\xfe\xff\x00\x01\x02\x03\x04\x05\x06";
/* np.array([1.5, -2.0], dtype='<f2') */
static const char npy_f2[] =
    "\x93NUMPY\x01\x00v\x00{'descr': '<f2', 'fortran_order': False, 'shape': (2,), }"
    "                                                            \n"
    "\x00>\x00\xc0";
/* np.array(3.25) (0-d) */
static const char npy_f8_scalar[] =
    "\x93NUMPY\x01\x00v\x00{'descr': '<f8', 'fortran_order': False, 'shape': (), }"
    "                                                              \n"
    "\x00\x00\x00\x00\x00\x00\n@";
/* np.zeros((0, 4), dtype='<f4') */
static const char npy_f4_empty[] =
    "\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (0, 4), }"
    "                                                          \n";
/* np.array([True, False, True]) */
static const char npy_b1[] =
    "\x93NUMPY\x01\x00v\x00{'descr': '|b1', 'fortran_order': False, 'shape': (3,), }"
    "                                                            \n"
    "\x01\x00\x01";
/* np.array([1, 2], dtype='<u2'), format version 3.0 */
static const char npy_u2_v3[] =
    "\x93NUMPY\x03\x00t\x00\x00\x00{'descr': '<u2', 'fortran_order': False, 'shape': (2,), }"
    "                                                          \n"
    "\x01\x00\x02\x00";

#define FIXTURE(name, bytes) write_bytes(tmp_path(name), bytes, sizeof(bytes) - 1)

static void test_npy_numpy_files(void)
{
    moe_array_t a;
    FIXTURE("i8_v1.npy", npy_i8_v1);
    FIXTURE("i8_v2.npy", npy_i8_v2);
    CHECK_EQ_INT(sizeof npy_i8_v1 - 1, 140); /* 128-byte header + 12 bytes */
    for (int v = 0; v < 2; v++) {
        CHECK_STATUS(moe_npy_read(tmp_path(v ? "i8_v2.npy" : "i8_v1.npy"), &a), MOE_STATUS_OK);
        CHECK_EQ_INT(a.dtype, MOE_DTYPE_I8);
        CHECK_EQ_INT(a.ndim, 3);
        CHECK(a.shape[0] == 2 && a.shape[1] == 3 && a.shape[2] == 2);
        CHECK_EQ_INT(a.nbytes, 12);
        for (int i = 0; i < 12 && a.data; i++) CHECK_EQ_INT(((int8_t *)a.data)[i], i - 5);
        moe_array_free(&a);
        CHECK(a.data == NULL && a.ndim == 0);
    }

    /* Our writer produces numpy's bytes exactly. */
    int8_t vals[12];
    for (int i = 0; i < 12; i++) vals[i] = (int8_t)(i - 5);
    moe_array_t w = {.dtype = MOE_DTYPE_I8, .ndim = 3, .shape = {2, 3, 2}, .data = vals, .nbytes = 12};
    CHECK_STATUS(moe_npy_write(tmp_path("ours_i8.npy"), &w), MOE_STATUS_OK);
    size_t n = 0;
    unsigned char *bytes = read_bytes(tmp_path("ours_i8.npy"), &n);
    CHECK(bytes != NULL && n == sizeof npy_i8_v1 - 1 && memcmp(bytes, npy_i8_v1, n) == 0);
    free(bytes);
    uint16_t hv[] = {0x3E00, 0xC000};
    moe_array_t hw = {.dtype = MOE_DTYPE_F16, .ndim = 1, .shape = {2}, .data = hv, .nbytes = 4};
    CHECK_STATUS(moe_npy_write(tmp_path("ours_f2.npy"), &hw), MOE_STATUS_OK);
    bytes = read_bytes(tmp_path("ours_f2.npy"), &n);
    CHECK(bytes != NULL && n == sizeof npy_f2 - 1 && memcmp(bytes, npy_f2, n) == 0);
    free(bytes);

    FIXTURE("f2.npy", npy_f2);
    CHECK_STATUS(moe_npy_read(tmp_path("f2.npy"), &a), MOE_STATUS_OK);
    float f[3];
    CHECK(a.dtype == MOE_DTYPE_F16 && a.ndim == 1 && a.shape[0] == 2);
    CHECK_STATUS(moe_array_to_f32(&a, "f2", f), MOE_STATUS_OK);
    CHECK(f[0] == 1.5f && f[1] == -2.0f);
    moe_array_free(&a);

    FIXTURE("f8.npy", npy_f8_scalar);
    CHECK_STATUS(moe_npy_read(tmp_path("f8.npy"), &a), MOE_STATUS_OK);
    CHECK(a.dtype == MOE_DTYPE_F64 && a.ndim == 0 && moe_array_numel(&a) == 1 && a.nbytes == 8);
    CHECK(a.data && *(double *)a.data == 3.25);
    moe_array_free(&a);

    FIXTURE("f4_empty.npy", npy_f4_empty);
    CHECK_STATUS(moe_npy_read(tmp_path("f4_empty.npy"), &a), MOE_STATUS_OK);
    CHECK(a.dtype == MOE_DTYPE_F32 && a.ndim == 2 && a.shape[0] == 0 && a.shape[1] == 4);
    CHECK(a.nbytes == 0 && moe_array_numel(&a) == 0);
    moe_array_free(&a);

    FIXTURE("b1.npy", npy_b1);
    CHECK_STATUS(moe_npy_read(tmp_path("b1.npy"), &a), MOE_STATUS_OK);
    CHECK(a.dtype == MOE_DTYPE_BOOL && a.shape[0] == 3);
    CHECK(a.data && memcmp(a.data, "\x01\x00\x01", 3) == 0);
    moe_array_free(&a);

    FIXTURE("u2_v3.npy", npy_u2_v3);
    CHECK_STATUS(moe_npy_read(tmp_path("u2_v3.npy"), &a), MOE_STATUS_OK);
    CHECK(a.dtype == MOE_DTYPE_U16 && a.shape[0] == 2);
    CHECK(a.data && ((uint16_t *)a.data)[0] == 1 && ((uint16_t *)a.data)[1] == 2);
    moe_array_free(&a);

    /* Hand-written headers NumPy would accept: other key order, double quotes, '<i1', no padding. */
    static const char odd[] = "\x93NUMPY\x01\x00\x36\x00{\"shape\":(3,),\"fortran_order\":False,"
                              "\"descr\":\"<i1\"}   \n\x01\x02\x03";
    CHECK_EQ_INT(sizeof odd - 1 - 10 - 3, 0x36);
    FIXTURE("odd.npy", odd);
    CHECK_STATUS(moe_npy_read(tmp_path("odd.npy"), &a), MOE_STATUS_OK);
    CHECK(a.dtype == MOE_DTYPE_I8 && a.ndim == 1 && a.shape[0] == 3);
    moe_array_free(&a);
}

/* A round trip of dtype x shape with hashed contents. */
static void npy_round_trip(moe_dtype_t dtype, int ndim, const int64_t *shape, uint64_t seed)
{
    moe_array_t a = {.dtype = dtype, .ndim = ndim};
    for (int d = 0; d < ndim; d++) a.shape[d] = shape[d];
    size_t numel = (size_t)moe_array_numel(&a);
    a.nbytes = numel * moe_dtype_size(dtype);
    a.data = moe_calloc(a.nbytes, 1);
    unsigned char *p = a.data;
    for (size_t i = 0; i < a.nbytes; i++) p[i] = (unsigned char)moe_hash(seed, i, 0, 0, 0);
    if (dtype == MOE_DTYPE_BOOL)
        for (size_t i = 0; i < a.nbytes; i++) p[i] &= 1;

    char name[64];
    snprintf(name, sizeof name, "rt_%s_%d_%llu.npy", moe_dtype_name(dtype), ndim,
             (unsigned long long)seed);
    const char *path = tmp_path(name);
    moe_array_t b;
    CHECK_STATUS(moe_npy_write(path, &a), MOE_STATUS_OK);
    CHECK_STATUS(moe_npy_read(path, &b), MOE_STATUS_OK);
    CHECK_EQ_INT(b.dtype, dtype);
    CHECK_EQ_INT(b.ndim, ndim);
    for (int d = 0; d < ndim; d++) CHECK_EQ_INT(b.shape[d], shape[d]);
    CHECK_EQ_INT(b.nbytes, a.nbytes);
    CHECK(b.data != NULL && memcmp(a.data, b.data, a.nbytes) == 0);
    /* Header padded to 64 bytes, as numpy does. */
    size_t n = 0;
    unsigned char *bytes = read_bytes(path, &n);
    CHECK(bytes != NULL && n >= 10 && (10 + (bytes[8] | bytes[9] << 8)) % 64 == 0);
    CHECK(bytes != NULL && n == (size_t)(10 + (bytes[8] | bytes[9] << 8)) + a.nbytes);
    free(bytes);
    moe_array_free(&a);
    moe_array_free(&b);
    CHECK_EQ_INT(count_temporaries(), 0);
}

static void test_npy_round_trips(void)
{
    static const int64_t s34[] = {3, 4}, s232[] = {2, 3, 2}, s7[] = {7}, s0[] = {0, 4},
                         s302[] = {3, 0, 2}, s_big[] = {1000, 17}, s8d[] = {2, 1, 2, 1, 2, 1, 2, 3};
    npy_round_trip(MOE_DTYPE_F32, 2, s34, 1);
    npy_round_trip(MOE_DTYPE_F64, 3, s232, 2);
    npy_round_trip(MOE_DTYPE_F16, 1, s7, 3);
    npy_round_trip(MOE_DTYPE_I8, 3, s232, 4);
    npy_round_trip(MOE_DTYPE_I16, 2, s34, 5);
    npy_round_trip(MOE_DTYPE_I32, 1, s7, 6);
    npy_round_trip(MOE_DTYPE_I64, 2, s34, 7);
    npy_round_trip(MOE_DTYPE_U8, 2, s_big, 8);
    npy_round_trip(MOE_DTYPE_U16, 1, s7, 9);
    npy_round_trip(MOE_DTYPE_U32, 3, s232, 10);
    npy_round_trip(MOE_DTYPE_U64, 1, s7, 11);
    npy_round_trip(MOE_DTYPE_BOOL, 2, s34, 12);
    npy_round_trip(MOE_DTYPE_F32, 2, s0, 13);
    npy_round_trip(MOE_DTYPE_I32, 3, s302, 14);
    npy_round_trip(MOE_DTYPE_F32, 0, NULL, 15);
    npy_round_trip(MOE_DTYPE_I16, 8, s8d, 16);

    /* bf16 has no npy spelling; a shape that disagrees with nbytes is refused. */
    uint16_t x[2] = {0};
    moe_array_t bf = {.dtype = MOE_DTYPE_BF16, .ndim = 1, .shape = {2}, .data = x, .nbytes = 4};
    CHECK_STATUS(moe_npy_write(tmp_path("bf16.npy"), &bf), MOE_STATUS_INVALID_ARGUMENT);
    moe_array_t bad = {.dtype = MOE_DTYPE_U16, .ndim = 1, .shape = {3}, .data = x, .nbytes = 4};
    CHECK_STATUS(moe_npy_write(tmp_path("bad.npy"), &bad), MOE_STATUS_INVALID_ARGUMENT);
    CHECK(!file_exists(tmp_path("bf16.npy")) && !file_exists(tmp_path("bad.npy")));
    CHECK_EQ_INT(count_temporaries(), 0);
}

static void expect_npy_format_error(const char *name, const void *bytes, size_t n)
{
    moe_array_t a = {0};
    write_bytes(tmp_path(name), bytes, n);
    moe_status_t s = moe_npy_read(tmp_path(name), &a);
    if (s != MOE_STATUS_FORMAT_ERROR) fprintf(stderr, "%s: expected a format error\n", name);
    CHECK_STATUS(s, MOE_STATUS_FORMAT_ERROR);
    CHECK(a.data == NULL);
}

/* npy_f2 with its header dict replaced (same length, so the padding still lines up). */
static void expect_npy_header_error(const char *name, const char *dict)
{
    char bytes[sizeof npy_f2];
    memcpy(bytes, npy_f2, sizeof npy_f2);
    size_t n = strlen(dict);
    CHECK(n <= 117); /* header bytes 10..126, then the '\n' */
    memset(bytes + 10, ' ', 117);
    memcpy(bytes + 10, dict, n);
    expect_npy_format_error(name, bytes, sizeof npy_f2 - 1);
}

static void test_npy_bad_files(void)
{
    size_t n = sizeof npy_i8_v1 - 1;
    char buf[256];

    expect_npy_format_error("trunc_data.npy", npy_i8_v1, n - 1);
    expect_npy_format_error("trunc_header.npy", npy_i8_v1, 60);
    expect_npy_format_error("trunc_magic.npy", npy_i8_v1, 5);
    expect_npy_format_error("empty.npy", "", 0);
    memcpy(buf, npy_i8_v1, n);
    buf[1] = 'M';
    expect_npy_format_error("magic.npy", buf, n);
    memcpy(buf, npy_i8_v1, n);
    buf[6] = 4;
    expect_npy_format_error("version.npy", buf, n);
    memcpy(buf, npy_i8_v1, n);
    buf[8] = (char)0xff; /* header length past the end */
    expect_npy_format_error("hlen.npy", buf, n);

    expect_npy_header_error("fortran.npy", "{'descr': '<f2', 'fortran_order': True, 'shape': (2,), }");
    expect_npy_header_error("big_endian.npy",
                            "{'descr': '>f2', 'fortran_order': False, 'shape': (2,), }");
    expect_npy_header_error("complex.npy", "{'descr': '<c8', 'fortran_order': False, 'shape': (2,), }");
    expect_npy_header_error("object.npy", "{'descr': '|O', 'fortran_order': False, 'shape': (2,), }");
    expect_npy_header_error("no_order.npy", "{'descr': '<f2', 'shape': (2,), }");
    expect_npy_header_error("no_shape.npy", "{'descr': '<f2', 'fortran_order': False, }");
    expect_npy_header_error("extra_key.npy",
                            "{'descr': '<f2', 'fortran_order': False, 'shape': (2,), 'x': 1, }");
    expect_npy_header_error("dup_key.npy",
                            "{'descr': '<f2', 'descr': '<f2', 'fortran_order': False, 'shape': (2,)}");
    expect_npy_header_error("neg_dim.npy", "{'descr': '<f2', 'fortran_order': False, 'shape': (-2,), }");
    expect_npy_header_error("not_tuple.npy", "{'descr': '<f2', 'fortran_order': False, 'shape': (2), }");
    expect_npy_header_error("unclosed.npy", "{'descr': '<f2', 'fortran_order': False, 'shape': (2,), ");
    expect_npy_header_error("garbage.npy", "{'descr': '<f2', 'fortran_order': False, 'shape': (2,)} x");
    expect_npy_header_error("no_brace.npy", "'descr': '<f2', 'fortran_order': False, 'shape': (2,)");
    expect_npy_header_error("structured.npy",
                            "{'descr': [('a', '<f2')], 'fortran_order': False, 'shape': (2,), }");
    expect_npy_header_error("nine_dims.npy",
                            "{'descr': '<f2', 'fortran_order': False, 'shape': (1,1,1,1,1,1,1,1,2), }");
    expect_npy_header_error("huge_dim.npy", /* overflows int64 */
                            "{'descr': '<f2', 'fortran_order': False, "
                            "'shape': (99999999999999999999,)}");
    /* Same header, accepted: a sanity check of the helper itself. */
    char ok[sizeof npy_f2];
    memcpy(ok, npy_f2, sizeof ok);
    write_bytes(tmp_path("ok.npy"), ok, sizeof ok - 1);
    moe_array_t a;
    CHECK_STATUS(moe_npy_read(tmp_path("ok.npy"), &a), MOE_STATUS_OK);
    moe_array_free(&a);

    CHECK_STATUS(moe_npy_read(tmp_path("does_not_exist.npy"), &a), MOE_STATUS_IO_ERROR);
}

static void test_npy_writer(void)
{
    const int64_t shape[] = {4, 3};
    float rows[12];
    for (int i = 0; i < 12; i++) rows[i] = (float)i * 0.5f;
    moe_npy_writer_t w;

    /* Short: commit fails and leaves nothing under the path. */
    const char *path = tmp_path("stream_short.npy");
    CHECK_STATUS(moe_npy_writer_open(path, MOE_DTYPE_F32, 2, shape, &w), MOE_STATUS_OK);
    CHECK_EQ_INT(w.row_bytes, 12);
    CHECK_EQ_INT(count_temporaries(), w.file.tmp_path[0] ? 1 : 0); /* an unnamed file shows nothing */
    CHECK_STATUS(moe_npy_writer_append(&w, rows, 2), MOE_STATUS_OK);
    CHECK_STATUS(moe_npy_writer_append(&w, rows + 6, 1), MOE_STATUS_OK);
    CHECK_STATUS(moe_npy_writer_commit(&w), MOE_STATUS_INVALID_ARGUMENT);
    moe_npy_writer_abort(&w); /* harmless after a failed commit */
    CHECK(!file_exists(path));
    CHECK_EQ_INT(count_temporaries(), 0);

    /* Too many rows: append refuses; abort leaves nothing. */
    path = tmp_path("stream_long.npy");
    CHECK_STATUS(moe_npy_writer_open(path, MOE_DTYPE_F32, 2, shape, &w), MOE_STATUS_OK);
    CHECK_STATUS(moe_npy_writer_append(&w, rows, 3), MOE_STATUS_OK);
    CHECK_STATUS(moe_npy_writer_append(&w, rows, 2), MOE_STATUS_INVALID_ARGUMENT);
    CHECK_EQ_INT(w.rows_written, 3);
    moe_npy_writer_abort(&w);
    CHECK(!file_exists(path));
    CHECK_EQ_INT(count_temporaries(), 0);

    /* Full: commit creates the file; it reads back as written. */
    path = tmp_path("stream_full.npy");
    CHECK_STATUS(moe_npy_writer_open(path, MOE_DTYPE_F32, 2, shape, &w), MOE_STATUS_OK);
    CHECK(!file_exists(path));
    CHECK_STATUS(moe_npy_writer_append(&w, rows, 1), MOE_STATUS_OK);
    CHECK_STATUS(moe_npy_writer_append(&w, rows + 3, 0), MOE_STATUS_OK);
    CHECK_STATUS(moe_npy_writer_append(&w, rows + 3, 3), MOE_STATUS_OK);
    CHECK_STATUS(moe_npy_writer_commit(&w), MOE_STATUS_OK);
    moe_npy_writer_abort(&w); /* harmless after commit */
    CHECK(file_exists(path));
    CHECK_EQ_INT(count_temporaries(), 0);
    moe_array_t a;
    CHECK_STATUS(moe_npy_read(path, &a), MOE_STATUS_OK);
    CHECK(a.dtype == MOE_DTYPE_F32 && a.ndim == 2 && a.shape[0] == 4 && a.shape[1] == 3);
    CHECK(a.data && memcmp(a.data, rows, sizeof rows) == 0);
    moe_array_free(&a);
    /* The streamed file is byte-identical to the one-shot writer's. */
    moe_array_t whole = {.dtype = MOE_DTYPE_F32, .ndim = 2, .shape = {4, 3}, .data = rows,
                         .nbytes = sizeof rows};
    CHECK_STATUS(moe_npy_write(tmp_path("whole.npy"), &whole), MOE_STATUS_OK);
    size_t n1 = 0, n2 = 0;
    unsigned char *b1 = read_bytes(path, &n1), *b2 = read_bytes(tmp_path("whole.npy"), &n2);
    CHECK(b1 && b2 && n1 == n2 && memcmp(b1, b2, n1) == 0);
    free(b1);
    free(b2);

    /* Rows not known up front (shape[0] = -1): commit declares what arrived, and the file is again
     * byte-identical to the one-shot writer's. */
    const int64_t grow[] = {-1, 3};
    path = tmp_path("stream_grow.npy");
    CHECK_STATUS(moe_npy_writer_open(path, MOE_DTYPE_F32, 2, grow, &w), MOE_STATUS_OK);
    CHECK_STATUS(moe_npy_writer_append(&w, rows, 3), MOE_STATUS_OK);
    CHECK_STATUS(moe_npy_writer_append(&w, rows + 9, 1), MOE_STATUS_OK);
    CHECK_STATUS(moe_npy_writer_commit(&w), MOE_STATUS_OK);
    b1 = read_bytes(path, &n1), b2 = read_bytes(tmp_path("whole.npy"), &n2);
    CHECK(b1 && b2 && n1 == n2 && memcmp(b1, b2, n1) == 0);
    free(b1);
    free(b2);

    /* Zero rows declared: an empty commit is complete. */
    const int64_t empty[] = {0, 5};
    path = tmp_path("stream_empty.npy");
    CHECK_STATUS(moe_npy_writer_open(path, MOE_DTYPE_I32, 2, empty, &w), MOE_STATUS_OK);
    CHECK_STATUS(moe_npy_writer_commit(&w), MOE_STATUS_OK);
    CHECK_STATUS(moe_npy_read(path, &a), MOE_STATUS_OK);
    CHECK(a.shape[0] == 0 && a.shape[1] == 5 && a.nbytes == 0);
    moe_array_free(&a);

    CHECK_STATUS(moe_npy_writer_open(tmp_path("s0.npy"), MOE_DTYPE_F32, 0, shape, &w),
                 MOE_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(moe_npy_writer_open(tmp_path("sbf.npy"), MOE_DTYPE_BF16, 2, shape, &w),
                 MOE_STATUS_INVALID_ARGUMENT);
    CHECK_EQ_INT(count_temporaries(), 0);
}

/* ---------------------------------------------------------------- atomic files */

static void test_atomic(void)
{
    const char *path = tmp_path("atomic.txt");
    write_bytes(path, "old", 3);
    moe_atomic_file_t f;
    CHECK_STATUS(moe_atomic_file_open(path, &f), MOE_STATUS_OK);
    /* an unnamed file where the file system has them; else a named temporary beside the path */
    const bool unnamed = f.tmp_path[0] == '\0';
    CHECK(unnamed ? count_temporaries() == 0 : strstr(f.tmp_path, ".tmp.") && file_exists(f.tmp_path));
    fputs("new contents", f.fp);
    moe_atomic_file_abort(&f);
    moe_atomic_file_abort(&f); /* twice is fine */
    size_t n = 0;
    unsigned char *b = read_bytes(path, &n);
    CHECK(b && n == 3 && memcmp(b, "old", 3) == 0);
    free(b);
    CHECK_EQ_INT(count_temporaries(), 0);

    CHECK_STATUS(moe_atomic_file_open(path, &f), MOE_STATUS_OK);
    fputs("new contents", f.fp);
    b = read_bytes(path, &n); /* not visible before commit */
    CHECK(b && n == 3);
    free(b);
    CHECK_STATUS(moe_atomic_file_commit(&f), MOE_STATUS_OK);
    moe_atomic_file_abort(&f); /* safe after commit, removes nothing */
    b = read_bytes(path, &n);
    CHECK(b && n == 12 && memcmp(b, "new contents", 12) == 0);
    free(b);
    CHECK_STATUS(moe_atomic_file_commit(&f), MOE_STATUS_INVALID_ARGUMENT); /* twice */
    CHECK_EQ_INT(count_temporaries(), 0);

    CHECK_STATUS(moe_atomic_file_open(tmp_path("no_such_dir/x"), &f), MOE_STATUS_IO_ERROR);
    CHECK_STATUS(moe_atomic_file_check(tmp_path("no_such_dir/x")), MOE_STATUS_IO_ERROR);
    CHECK_STATUS(moe_atomic_file_open(tmp_path(""), &f), MOE_STATUS_IO_ERROR); /* the folder itself */
    CHECK_STATUS(moe_atomic_file_check(path), MOE_STATUS_OK);
    CHECK_EQ_INT(count_temporaries(), 0);

    /* a temporary is never named after the pid, and gets a plain file's mode (0666 less umask) */
    char pid_name[4200];
    snprintf(pid_name, sizeof pid_name, "%s.tmp.%ld", path, (long)getpid());
    mode_t mask = umask(022);
    CHECK_STATUS(moe_atomic_file_open(path, &f), MOE_STATUS_OK);
    CHECK(strcmp(f.tmp_path, pid_name) != 0 && !file_exists(pid_name));
    struct stat st;
    CHECK(fstat(fileno(f.fp), &st) == 0 && (st.st_mode & 0777) == 0644);
    umask(mask);
    /* remove_all (the abort and signal path) removes what is open */
    char open_tmp[4200];
    snprintf(open_tmp, sizeof open_tmp, "%s", f.tmp_path);
    moe_atomic_file_remove_all();
    CHECK(open_tmp[0] == '\0' || !file_exists(open_tmp));
    moe_atomic_file_abort(&f);
    CHECK_EQ_INT(count_temporaries(), 0);
    /* committed, the file has that mode too */
    umask(022);
    CHECK_STATUS(moe_atomic_file_open(path, &f), MOE_STATUS_OK);
    fputs("x", f.fp);
    CHECK_STATUS(moe_atomic_file_commit(&f), MOE_STATUS_OK);
    umask(mask);
    CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0644);

    /* a writer killed (SIGKILL: no handler runs) leaves no temporary where files can be unnamed */
    pid_t child = fork();
    if (child == 0) {
        moe_atomic_file_t g;
        if (moe_atomic_file_open(path, &g) != MOE_STATUS_OK) _exit(3);
        fputs("half written", g.fp);
        fflush(g.fp);
        raise(SIGKILL);
        _exit(4);
    }
    int wstatus = 0;
    CHECK(child > 0 && waitpid(child, &wstatus, 0) == child);
    CHECK(WIFSIGNALED(wstatus) && WTERMSIG(wstatus) == SIGKILL);
    if (unnamed) CHECK_EQ_INT(count_temporaries(), 0);
    b = read_bytes(path, &n);
    CHECK(b && n == 1 && b[0] == 'x'); /* untouched */
    free(b);
    if (!unnamed) /* the named fallback: SIGTERM removes it */
        printf("test_io: this file system has no O_TMPFILE; the SIGKILL case is not checked\n");
}

/* ---------------------------------------------------------------- safetensors */

/* safetensors.numpy.save({"ids": int64 [7, -1, 5], "w": float32 [[1, 2], [3, 4]],
 * "h": float16 [1.5, -2]}, metadata={"format": "np", "k": "v"}). */
static const char st_reference[] =
    "\xd0\x00\x00\x00\x00\x00\x00\x00"
    "{\"__metadata__\":{\"k\":\"v\",\"format\":\"np\"},"
    "\"ids\":{\"dtype\":\"I64\",\"shape\":[3],\"data_offsets\":[0,24]},"
    "\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[24,40]},"
    "\"h\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[40,44]}}"
    "\x07\x00\x00\x00\x00\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff\x05\x00\x00\x00\x00\x00\x00\x00"
    "\x00\x00\x80?\x00\x00\x00@\x00\x00@@\x00\x00\x80@\x00>\x00\xc0";

static void test_safetensors_reference(void)
{
    FIXTURE("ref.safetensors", st_reference);
    moe_safetensors_h f = NULL;
    CHECK_STATUS(moe_safetensors_open(tmp_path("ref.safetensors"), &f), MOE_STATUS_OK);
    if (f == NULL) return;
    CHECK_EQ_INT(moe_safetensors_count(f), 3);
    CHECK(strcmp(moe_safetensors_metadata(f, "format"), "np") == 0);
    CHECK(strcmp(moe_safetensors_metadata(f, "k"), "v") == 0);
    CHECK(moe_safetensors_metadata(f, "missing") == NULL);
    CHECK(strcmp(moe_safetensors_path(f), tmp_path("ref.safetensors")) == 0);
    moe_tensor_view_t v;
    CHECK_STATUS(moe_safetensors_get(f, 0, &v), MOE_STATUS_OK);
    CHECK(strcmp(v.name, "ids") == 0 && v.dtype == MOE_DTYPE_I64 && v.ndim == 1 && v.shape[0] == 3);
    int64_t ids[3];
    memcpy(ids, v.data, sizeof ids);
    CHECK(ids[0] == 7 && ids[1] == -1 && ids[2] == 5);
    CHECK_STATUS(moe_safetensors_get(f, 2, &v), MOE_STATUS_OK);
    CHECK(strcmp(v.name, "h") == 0 && v.dtype == MOE_DTYPE_F16 && v.nbytes == 4);
    CHECK_STATUS(moe_safetensors_find(f, "w", &v), MOE_STATUS_OK);
    CHECK(v.dtype == MOE_DTYPE_F32 && v.ndim == 2 && v.shape[0] == 2 && v.shape[1] == 2);
    float w[4];
    memcpy(w, v.data, sizeof w);
    CHECK(w[0] == 1 && w[1] == 2 && w[2] == 3 && w[3] == 4);
    CHECK_STATUS(moe_safetensors_get(f, 3, &v), MOE_STATUS_INVALID_ARGUMENT);
    moe_safetensors_close(f);

    /* Our writer, given the same tensors in the same order, writes the same bytes. */
    int64_t ids_w[] = {7, -1, 5};
    float w_w[] = {1, 2, 3, 4};
    uint16_t h_w[] = {0x3E00, 0xC000};
    moe_tensor_t t[] = {
        {.name = "ids", .dtype = MOE_DTYPE_I64, .ndim = 1, .shape = {3}, .data = ids_w},
        {.name = "w", .dtype = MOE_DTYPE_F32, .ndim = 2, .shape = {2, 2}, .data = w_w},
        {.name = "h", .dtype = MOE_DTYPE_F16, .ndim = 1, .shape = {2}, .data = h_w},
    };
    const char *keys[] = {"k", "format"}, *values[] = {"v", "np"};
    CHECK_STATUS(moe_safetensors_write(tmp_path("ours.safetensors"), t, 3, keys, values, 2),
                 MOE_STATUS_OK);
    size_t n = 0;
    unsigned char *bytes = read_bytes(tmp_path("ours.safetensors"), &n);
    CHECK(bytes && n == sizeof st_reference - 1 && memcmp(bytes, st_reference, n) == 0);
    free(bytes);
}

static void test_safetensors_round_trip(void)
{
    float a[6] = {1.5f, -2, 3, 4, 5, 6};
    uint16_t bf[5] = {0x3F80, 0x4000, 0xBF80, 0x7F80, 0x0001};
    int64_t ids[2] = {INT64_MIN, INT64_MAX};
    uint8_t flags[3] = {1, 0, 1};
    double scalar = 2.75;
    int32_t i32[3] = {-1, 0, 1}; /* after a 3-byte tensor: unaligned in the file */
    moe_tensor_t t[] = {
        {.name = "a", .dtype = MOE_DTYPE_F32, .ndim = 2, .shape = {2, 3}, .data = a},
        {.name = "bf", .dtype = MOE_DTYPE_BF16, .ndim = 1, .shape = {5}, .data = bf},
        {.name = "layer.0/ids", .dtype = MOE_DTYPE_I64, .ndim = 1, .shape = {2}, .data = ids},
        {.name = "flags", .dtype = MOE_DTYPE_BOOL, .ndim = 1, .shape = {3}, .data = flags},
        {.name = "i32", .dtype = MOE_DTYPE_I32, .ndim = 1, .shape = {3}, .data = i32},
        {.name = "empty", .dtype = MOE_DTYPE_U8, .ndim = 2, .shape = {0, 7}, .data = NULL},
        {.name = "scalar", .dtype = MOE_DTYPE_F64, .ndim = 0, .data = &scalar},
    };
    const int nt = (int)(sizeof t / sizeof t[0]);
    const char *keys[] = {"model", "note"};
    const char *values[] = {"moe-tiny", "quotes \" and \\ and unicode \xc3\xa9"};
    const char *path = tmp_path("rt.safetensors");
    CHECK_STATUS(moe_safetensors_write(path, t, nt, keys, values, 2), MOE_STATUS_OK);
    CHECK_EQ_INT(count_temporaries(), 0);

    size_t n = 0;
    unsigned char *bytes = read_bytes(path, &n);
    uint64_t hlen = 0;
    for (int i = 7; bytes && i >= 0; i--) hlen = hlen << 8 | bytes[i];
    CHECK((8 + hlen) % 8 == 0);
    CHECK(bytes && bytes[8] == '{' && (bytes[8 + hlen - 1] == ' ' || bytes[8 + hlen - 1] == '}'));
    free(bytes);

    moe_safetensors_h f = NULL;
    CHECK_STATUS(moe_safetensors_open(path, &f), MOE_STATUS_OK);
    if (f == NULL) return;
    CHECK_EQ_INT(moe_safetensors_count(f), nt);
    for (int i = 0; i < nt && i < moe_safetensors_count(f); i++) {
        moe_tensor_view_t v;
        CHECK_STATUS(moe_safetensors_get(f, i, &v), MOE_STATUS_OK);
        CHECK(strcmp(v.name, t[i].name) == 0);
        CHECK_EQ_INT(v.dtype, t[i].dtype);
        CHECK_EQ_INT(v.ndim, t[i].ndim);
        size_t bytes_expected = moe_dtype_size(t[i].dtype);
        for (int d = 0; d < t[i].ndim; d++) {
            CHECK_EQ_INT(v.shape[d], t[i].shape[d]);
            bytes_expected *= (size_t)t[i].shape[d];
        }
        CHECK_EQ_INT(v.nbytes, bytes_expected);
        CHECK(bytes_expected == 0 || memcmp(v.data, t[i].data, bytes_expected) == 0);
        CHECK(moe_safetensors_has(f, t[i].name));
    }
    CHECK(!moe_safetensors_has(f, "nope"));
    moe_tensor_view_t v;
    CHECK_STATUS(moe_safetensors_find(f, "nope", &v), MOE_STATUS_FORMAT_ERROR);
    CHECK_STATUS(moe_safetensors_find(f, "layer.0/ids", &v), MOE_STATUS_OK);
    CHECK(v.dtype == MOE_DTYPE_I64 && v.shape[0] == 2);
    CHECK(strcmp(moe_safetensors_metadata(f, "model"), "moe-tiny") == 0);
    CHECK(strcmp(moe_safetensors_metadata(f, "note"), values[1]) == 0);
    CHECK(moe_safetensors_metadata(f, "a") == NULL);
    moe_safetensors_close(f);
    moe_safetensors_close(NULL);

    /* No tensors, no metadata: still a valid file. */
    CHECK_STATUS(moe_safetensors_write(tmp_path("none.safetensors"), NULL, 0, NULL, NULL, 0),
                 MOE_STATUS_OK);
    CHECK_STATUS(moe_safetensors_open(tmp_path("none.safetensors"), &f), MOE_STATUS_OK);
    if (f) CHECK_EQ_INT(moe_safetensors_count(f), 0);
    if (f) CHECK(moe_safetensors_metadata(f, "model") == NULL);
    moe_safetensors_close(f);

    /* Refused inputs leave no file. */
    moe_tensor_t dup[] = {t[0], t[0]};
    CHECK_STATUS(moe_safetensors_write(tmp_path("dup.safetensors"), dup, 2, NULL, NULL, 0),
                 MOE_STATUS_INVALID_ARGUMENT);
    moe_tensor_t neg = t[0];
    neg.shape[1] = -3;
    CHECK_STATUS(moe_safetensors_write(tmp_path("neg.safetensors"), &neg, 1, NULL, NULL, 0),
                 MOE_STATUS_INVALID_ARGUMENT);
    moe_tensor_t meta_name = t[0];
    meta_name.name = "__metadata__";
    CHECK_STATUS(moe_safetensors_write(tmp_path("meta.safetensors"), &meta_name, 1, NULL, NULL, 0),
                 MOE_STATUS_INVALID_ARGUMENT);
    CHECK(!file_exists(tmp_path("dup.safetensors")) && !file_exists(tmp_path("neg.safetensors")));
    CHECK_EQ_INT(count_temporaries(), 0);
}

/* A file of the 8-byte length of `json` (or `hlen` if non-zero), the JSON with ' read as ", then
 * n_data zero bytes; opening it must fail as malformed. */
static void expect_st_format_error(const char *name, const char *json, uint64_t hlen, size_t n_data)
{
    size_t jlen = strlen(json);
    unsigned char *buf = calloc(8 + jlen + n_data + 1, 1);
    uint64_t len = hlen ? hlen : jlen;
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(len >> (8 * i));
    for (size_t i = 0; i < jlen; i++) buf[8 + i] = json[i] == '\'' ? '"' : (unsigned char)json[i];
    write_bytes(tmp_path(name), buf, 8 + jlen + n_data);
    free(buf);
    moe_safetensors_h f = NULL;
    moe_status_t s = moe_safetensors_open(tmp_path(name), &f);
    if (s != MOE_STATUS_FORMAT_ERROR) fprintf(stderr, "%s: expected a format error\n", name);
    CHECK_STATUS(s, MOE_STATUS_FORMAT_ERROR);
    CHECK(f == NULL);
    moe_safetensors_close(f);
}

static void test_safetensors_corrupt(void)
{
    /* The good file the corrupt ones are variations of. */
    const char *good = "{\"x\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}";
    moe_safetensors_h f = NULL;
    {
        size_t jlen = strlen(good);
        unsigned char buf[256] = {0};
        buf[0] = (unsigned char)jlen;
        memcpy(buf + 8, good, jlen);
        write_bytes(tmp_path("good.safetensors"), buf, 8 + jlen + 16);
        CHECK_STATUS(moe_safetensors_open(tmp_path("good.safetensors"), &f), MOE_STATUS_OK);
        moe_safetensors_close(f);
    }
    write_bytes(tmp_path("tiny.safetensors"), "\x02\x00\x00", 3);
    CHECK_STATUS(moe_safetensors_open(tmp_path("tiny.safetensors"), &f), MOE_STATUS_FORMAT_ERROR);
    CHECK_STATUS(moe_safetensors_open(tmp_path("missing.safetensors"), &f), MOE_STATUS_IO_ERROR);

    expect_st_format_error("hlen_big.st", good, 1000, 16);
    expect_st_format_error("hlen_huge.st", good, UINT64_MAX, 16);
    expect_st_format_error("short.st", "", 0, 0); /* 8 zero bytes: "" is not JSON */
    expect_st_format_error("past_end.st", good, 0, 12);
    expect_st_format_error("offsets_past.st",
                           "{'x':{'dtype':'F32','shape':[2,2],'data_offsets':[8,24]}}", 0, 16);
    expect_st_format_error("size_mismatch.st",
                           "{'x':{'dtype':'F32','shape':[2,3],'data_offsets':[0,16]}}", 0, 24);
    expect_st_format_error("invalid_json.st",
                           "{'x':{'dtype':'F32','shape':[2,2],'data_offsets':[0,16]}", 0, 16);
    expect_st_format_error("trailing_json.st",
                           "{'x':{'dtype':'F32','shape':[2,2],'data_offsets':[0,16]}}x", 0, 16);
    expect_st_format_error("unknown_dtype.st",
                           "{'x':{'dtype':'F8_E5M2','shape':[2,2],'data_offsets':[0,4]}}", 0, 16);
    expect_st_format_error("neg_shape.st",
                           "{'x':{'dtype':'F32','shape':[-2,2],'data_offsets':[0,16]}}", 0, 16);
    expect_st_format_error("float_shape.st",
                           "{'x':{'dtype':'F32','shape':[2.0,2],'data_offsets':[0,16]}}", 0, 16);
    expect_st_format_error("reversed.st",
                           "{'x':{'dtype':'F32','shape':[0],'data_offsets':[16,0]}}", 0, 16);
    expect_st_format_error("neg_offset.st",
                           "{'x':{'dtype':'F32','shape':[1],'data_offsets':[-4,0]}}", 0, 16);
    expect_st_format_error("three_offsets.st",
                           "{'x':{'dtype':'F32','shape':[1],'data_offsets':[0,4,8]}}", 0, 16);
    expect_st_format_error("no_dtype.st", "{'x':{'shape':[1],'data_offsets':[0,4]}}", 0, 16);
    expect_st_format_error("not_object.st", "[1,2]", 0, 16);
    expect_st_format_error("entry_not_object.st", "{'x':3}", 0, 16);
    expect_st_format_error("overlap.st",
                           "{'x':{'dtype':'F32','shape':[2],'data_offsets':[0,8]},"
                           "'y':{'dtype':'F32','shape':[2],'data_offsets':[4,12]}}", 0, 16);
    expect_st_format_error("dup_name.st",
                           "{'x':{'dtype':'U8','shape':[1],'data_offsets':[0,1]},"
                           "'x':{'dtype':'U8','shape':[1],'data_offsets':[1,2]}}", 0, 16);
    expect_st_format_error("meta_not_string.st", "{'__metadata__':{'a':1}}", 0, 0);
    expect_st_format_error("meta_not_object.st", "{'__metadata__':[]}", 0, 0);
    expect_st_format_error("nine_dims.st",
                           "{'x':{'dtype':'U8','shape':[1,1,1,1,1,1,1,1,1],'data_offsets':[0,1]}}", 0,
                           16);
}

/* ---------------------------------------------------------------- YAML */

static moe_status_t yaml_text(const char *name, const char *text, const moe_yaml_limits_t *lim,
                              int *nodes)
{
    const char *path = tmp_path(name);
    write_bytes(path, text, strlen(text));
    yaml_document_t doc;
    moe_status_t s = moe_yaml_load(path, lim, &doc);
    if (s == MOE_STATUS_OK) {
        *nodes = (int)(doc.nodes.top - doc.nodes.start);
        yaml_document_delete(&doc);
    }
    return s;
}

static void test_yaml(void)
{
    moe_yaml_limits_t lim = MOE_YAML_LIMITS_INIT;
    int nodes = -1;
    CHECK_STATUS(yaml_text("ok.yaml", "a: 1\nb: [1, 2, {c: 3}]\n", &lim, &nodes), MOE_STATUS_OK);
    CHECK_EQ_INT(nodes, 10); /* the root, 3 keys, 3 scalars, the list and its mapping */
    CHECK_STATUS(yaml_text("empty.yaml", "", &lim, &nodes), MOE_STATUS_OK);
    CHECK_EQ_INT(nodes, 0);
    CHECK_STATUS(yaml_text("empty_map.yaml", "{ }", &lim, &nodes), MOE_STATUS_OK); /* found by fuzz_plan */
    CHECK_EQ_INT(nodes, 1);
    /* an alias or two is fine; what they stand for is bounded */
    CHECK_STATUS(yaml_text("alias.yaml", "a: &x [1, 2]\nb: *x\nc: *x\n", &lim, &nodes), MOE_STATUS_OK);
    CHECK_STATUS(yaml_text("laughs.yaml",
                           "a: &a [1, 1, 1, 1, 1, 1, 1, 1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n"
                           "c: &c [*b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c]\n",
                           &lim, &nodes), MOE_STATUS_FORMAT_ERROR);
    CHECK_STATUS(yaml_text("dup.yaml", "a: 1\nb: 2\na: 3\n", &lim, &nodes), MOE_STATUS_FORMAT_ERROR);
    CHECK_STATUS(yaml_text("dup_inner.yaml", "a: {x: 1, y: 2, x: 3}\n", &lim, &nodes), MOE_STATUS_FORMAT_ERROR);
    moe_yaml_limits_t lax = lim;
    lax.unique_keys = false;
    CHECK_STATUS(yaml_text("dup2.yaml", "a: 1\na: 3\n", &lax, &nodes), MOE_STATUS_OK);
    CHECK_STATUS(yaml_text("two.yaml", "a: 1\n---\nb: 2\n", &lim, &nodes), MOE_STATUS_FORMAT_ERROR);
    CHECK_STATUS(yaml_text("syntax.yaml", "a: [1, 2\n", &lim, &nodes), MOE_STATUS_FORMAT_ERROR);
    lim.max_depth = 3;
    CHECK_STATUS(yaml_text("depth3.yaml", "a: [[1]]\n", &lim, &nodes), MOE_STATUS_OK);
    CHECK_STATUS(yaml_text("depth4.yaml", "a: [[[1]]]\n", &lim, &nodes), MOE_STATUS_FORMAT_ERROR);
    lim.max_bytes = 8;
    CHECK_STATUS(yaml_text("big.yaml", "a: 123456789\n", &lim, &nodes), MOE_STATUS_FORMAT_ERROR);
    yaml_document_t doc;
    CHECK_STATUS(moe_yaml_load(tmp_path("absent.yaml"), &lim, &doc), MOE_STATUS_IO_ERROR);
    CHECK_STATUS(moe_yaml_load(tmp_dir, &lim, &doc), MOE_STATUS_IO_ERROR); /* a directory */
}

/* The table printer: widths, alignment, a long string's end kept, a figure not known as "-". */
static void test_table(void)
{
    char *text = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&text, &size);
    CHECK(f != NULL);
    if (!f) return;
    const moe_table_column_t cols[] = {{"name", 6, 's', 0}, {"n", 4, 'i', 0}, {"x", 7, 'f', 2}};
    moe_table_t t = {.columns = cols, .n = 3, .out = f};
    moe_table_header(&t);
    moe_table_row(&t, "ab", 12LL, 3.14159);
    moe_table_row(&t, "abcdefgh", -1LL, NAN);
    moe_table_row(&t, "x", 0LL, INFINITY);
    fclose(f);
    const char *want = "name      n       x\n"
                       "ab       12    3.14\n"
                       "cdefgh   -1       -\n"
                       "x         0       -\n";
    CHECK(text && strcmp(text, want) == 0);
    if (text && strcmp(text, want) != 0) fprintf(stderr, "table: got\n%swant\n%s", text, want);
    free(text);
}

int main(void)
{
    snprintf(tmp_dir, sizeof tmp_dir, "/tmp/moe_test_io_XXXXXX");
    if (mkdtemp(tmp_dir) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    /* The error paths log by design; keep them visible (meson shows them with -v). */
    test_dtypes();
    test_table();
    test_yaml();
    test_f16();
    test_bf16();
    test_array_convert();
    test_npy_numpy_files();
    test_npy_round_trips();
    test_npy_bad_files();
    test_npy_writer();
    test_atomic();
    test_safetensors_reference();
    test_safetensors_round_trip();
    test_safetensors_corrupt();
    remove_tmp_dir();
    return moe_test_result("test_io");
}
