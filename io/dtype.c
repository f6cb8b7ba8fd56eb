/* io/dtype.c: element types, half-precision conversions and host arrays (see io.h).
 *
 * Assumes a little-endian host with IEEE-754 floats, as every file format here is little-endian and is
 * read by copying bytes. Element loads go through memcpy so that arrays pointing into a file mapping
 * need not be aligned. */
#include "io/io.h"

#include <math.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "moerun's io module assumes a little-endian host"
#endif

/* ---------------------------------------------------------------- dtypes */

size_t moe_dtype_size(moe_dtype_t dtype)
{
    switch (dtype) {
    case MOE_DTYPE_F64:
    case MOE_DTYPE_I64:
    case MOE_DTYPE_U64: return 8;
    case MOE_DTYPE_F32:
    case MOE_DTYPE_I32:
    case MOE_DTYPE_U32: return 4;
    case MOE_DTYPE_F16:
    case MOE_DTYPE_BF16:
    case MOE_DTYPE_I16:
    case MOE_DTYPE_U16: return 2;
    case MOE_DTYPE_I8:
    case MOE_DTYPE_U8:
    case MOE_DTYPE_BOOL:
    case MOE_DTYPE_F8_E4M3: return 1;
    }
    return 0;
}

const char *moe_dtype_name(moe_dtype_t dtype)
{
    switch (dtype) {
    case MOE_DTYPE_F32: return "F32";
    case MOE_DTYPE_F64: return "F64";
    case MOE_DTYPE_F16: return "F16";
    case MOE_DTYPE_BF16: return "BF16";
    case MOE_DTYPE_I8: return "I8";
    case MOE_DTYPE_I16: return "I16";
    case MOE_DTYPE_I32: return "I32";
    case MOE_DTYPE_I64: return "I64";
    case MOE_DTYPE_U8: return "U8";
    case MOE_DTYPE_U16: return "U16";
    case MOE_DTYPE_U32: return "U32";
    case MOE_DTYPE_U64: return "U64";
    case MOE_DTYPE_BOOL: return "BOOL";
    case MOE_DTYPE_F8_E4M3: return "F8_E4M3";
    }
    return "UNKNOWN";
}

bool moe_dtype_is_integer(moe_dtype_t dtype)
{
    switch (dtype) {
    case MOE_DTYPE_I8:
    case MOE_DTYPE_I16:
    case MOE_DTYPE_I32:
    case MOE_DTYPE_I64:
    case MOE_DTYPE_U8:
    case MOE_DTYPE_U16:
    case MOE_DTYPE_U32:
    case MOE_DTYPE_U64:
    case MOE_DTYPE_BOOL: return true;
    default: return false;
    }
}

bool moe_dtype_is_float(moe_dtype_t dtype)
{
    switch (dtype) {
    case MOE_DTYPE_F32:
    case MOE_DTYPE_F64:
    case MOE_DTYPE_F16:
    case MOE_DTYPE_BF16: return true;
    default: return false;
    }
}

/* ---------------------------------------------------------------- half precision */

static inline float bits_to_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint32_t f32_to_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

float moe_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0x1f) return bits_to_f32(sign | 0x7f800000u | (mant << 13)); /* inf, nan */
    if (exp != 0) return bits_to_f32(sign | ((exp + 112) << 23) | (mant << 13));
    if (mant == 0) return bits_to_f32(sign);
    /* Subnormal: mant * 2^-24; normalise so that the leading one becomes the implicit bit. */
    uint32_t e = 113;
    while (!(mant & 0x400u)) {
        mant <<= 1;
        e--;
    }
    return bits_to_f32(sign | (e << 23) | ((mant & 0x3ffu) << 13));
}

float moe_bf16_to_f32(uint16_t b) { return bits_to_f32((uint32_t)b << 16); }

float moe_f8e4m3_to_f32(uint8_t b)
{
    const uint32_t sign = (uint32_t)(b & 0x80u) << 24, exp = (b >> 3) & 0xfu, mant = b & 0x7u;
    if (exp == 0xf && mant == 0x7) return bits_to_f32(sign | 0x7fc00000u); /* the only NaN */
    if (exp != 0) return bits_to_f32(sign | ((exp + 120) << 23) | (mant << 20)); /* bias 7 -> 127 */
    /* subnormal: mant * 2^-9, exact in float */
    const float v = (float)mant * (1.0f / 512.0f);
    return sign ? -v : v;
}

uint16_t moe_f32_to_bf16(float f)
{
    uint32_t u = f32_to_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* nan: keep sign and top payload bits, force quiet */
        return (uint16_t)((u >> 16) | 0x0040u);
    /* Adding 0x7fff plus the lowest kept bit rounds to nearest, ties to even; a carry out of the
     * mantissa bumps the exponent, and the largest finite values round up to inf, as they should. */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

uint16_t moe_f32_to_f16(float f)
{
    uint32_t u = f32_to_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) /* nan: keep top payload bits, force quiet */
        return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
    if (a >= 0x477ff000u) /* inf, and everything from 65520 (the tie above 65504) up */
        return (uint16_t)(sign | 0x7c00u);
    if (a >= 0x38800000u) { /* normal in f16: rebias the exponent, round away 13 mantissa bits */
        uint32_t h = (a >> 13) - (112u << 10);
        uint32_t rem = a & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
        return (uint16_t)(sign | h);
    }
    if (a < 0x33000000u) return sign; /* below 2^-25 (half the smallest subnormal): zero */
    /* Subnormal in f16: the value in units of 2^-24 is mant * 2^(exp - 126), exp in [102, 112]. */
    uint32_t exp = a >> 23;
    uint32_t mant = (a & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - exp; /* 14..24 */
    uint32_t h = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1u))) h++; /* may carry into the smallest normal: right */
    return (uint16_t)(sign | h);
}

/* ---------------------------------------------------------------- arrays */

int64_t moe_array_numel(const moe_array_t *array)
{
    int64_t n = 1;
    for (int d = 0; d < array->ndim; d++) n *= array->shape[d];
    return n;
}

void moe_array_free(moe_array_t *array)
{
    if (array == NULL) return;
    moe_free(array->data);
    memset(array, 0, sizeof *array);
}

/* The array must hold numel elements of a known dtype. */
static moe_status_t array_check(const moe_array_t *array, const char *what, size_t *numel_out)
{
    size_t itemsize = moe_dtype_size(array->dtype);
    if (itemsize == 0) {
        moe_error("%s: unknown dtype %d", what, (int)array->dtype);
        return MOE_STATUS_INVALID_ARGUMENT;
    }
    if (array->ndim < 0 || array->ndim > MOE_MAX_DIMS) {
        moe_error("%s: bad number of dimensions %d", what, array->ndim);
        return MOE_STATUS_INVALID_ARGUMENT;
    }
    size_t numel = 1, bytes;
    for (int d = 0; d < array->ndim; d++) {
        if (array->shape[d] < 0 || !moe_size_mul(numel, (size_t)array->shape[d], &numel)) {
            moe_error("%s: bad dimension %d of size %lld", what, d, (long long)array->shape[d]);
            return MOE_STATUS_INVALID_ARGUMENT;
        }
    }
    if (!moe_size_mul(numel, itemsize, &bytes) || bytes > array->nbytes ||
        (bytes > 0 && array->data == NULL)) {
        moe_error("%s: array holds %zu bytes, its shape needs %zu elements of %zu bytes", what,
                  array->data ? array->nbytes : 0, numel, itemsize);
        return MOE_STATUS_INVALID_ARGUMENT;
    }
    *numel_out = numel;
    return MOE_STATUS_OK;
}

/* out[i] = expr(v) for each element v of C type `type` (unaligned-safe). */
#define CONVERT_EACH(type, expr)                                                                  \
    for (size_t i = 0; i < n; i++) {                                                              \
        type v;                                                                                   \
        memcpy(&v, base + i * sizeof(type), sizeof v);                                            \
        out[i] = (expr);                                                                          \
    }

moe_status_t moe_array_to_f32(const moe_array_t *array, const char *what, float *out)
{
    size_t n;
    moe_status_t status = array_check(array, what, &n);
    if (status != MOE_STATUS_OK) return status;
    const unsigned char *base = array->data;
    switch (array->dtype) {
    case MOE_DTYPE_F32: CONVERT_EACH(float, v); break;
    case MOE_DTYPE_F64: CONVERT_EACH(double, (float)v); break;
    case MOE_DTYPE_F16: CONVERT_EACH(uint16_t, moe_f16_to_f32(v)); break;
    case MOE_DTYPE_BF16: CONVERT_EACH(uint16_t, moe_bf16_to_f32(v)); break;
    case MOE_DTYPE_I8: CONVERT_EACH(int8_t, (float)v); break;
    case MOE_DTYPE_I16: CONVERT_EACH(int16_t, (float)v); break;
    case MOE_DTYPE_I32: CONVERT_EACH(int32_t, (float)v); break;
    case MOE_DTYPE_I64: CONVERT_EACH(int64_t, (float)v); break;
    case MOE_DTYPE_U8: CONVERT_EACH(uint8_t, (float)v); break;
    case MOE_DTYPE_U16: CONVERT_EACH(uint16_t, (float)v); break;
    case MOE_DTYPE_U32: CONVERT_EACH(uint32_t, (float)v); break;
    case MOE_DTYPE_U64: CONVERT_EACH(uint64_t, (float)v); break;
    case MOE_DTYPE_BOOL: CONVERT_EACH(uint8_t, v ? 1.0f : 0.0f); break;
    case MOE_DTYPE_F8_E4M3: CONVERT_EACH(uint8_t, moe_f8e4m3_to_f32(v)); break;
    }
    return MOE_STATUS_OK;
}

/* Element i as a signed, unsigned or floating value, whichever the dtype is. */
typedef enum { ELEM_SIGNED, ELEM_UNSIGNED, ELEM_FLOAT } elem_kind_t;

static elem_kind_t load_element(moe_dtype_t dtype, const unsigned char *base, size_t i, int64_t *s,
                                uint64_t *u, double *f)
{
    size_t size = moe_dtype_size(dtype);
    const unsigned char *p = base + i * size;
    union {
        int8_t i8; int16_t i16; int32_t i32; int64_t i64;
        uint8_t u8; uint16_t u16; uint32_t u32; uint64_t u64;
        float f32; double f64;
    } v;
    memcpy(&v, p, size);
    switch (dtype) {
    case MOE_DTYPE_I8: *s = v.i8; return ELEM_SIGNED;
    case MOE_DTYPE_I16: *s = v.i16; return ELEM_SIGNED;
    case MOE_DTYPE_I32: *s = v.i32; return ELEM_SIGNED;
    case MOE_DTYPE_I64: *s = v.i64; return ELEM_SIGNED;
    case MOE_DTYPE_U8: *u = v.u8; return ELEM_UNSIGNED;
    case MOE_DTYPE_U16: *u = v.u16; return ELEM_UNSIGNED;
    case MOE_DTYPE_U32: *u = v.u32; return ELEM_UNSIGNED;
    case MOE_DTYPE_U64: *u = v.u64; return ELEM_UNSIGNED;
    case MOE_DTYPE_BOOL: *u = v.u8 ? 1 : 0; return ELEM_UNSIGNED;
    case MOE_DTYPE_F32: *f = v.f32; return ELEM_FLOAT;
    case MOE_DTYPE_F64: *f = v.f64; return ELEM_FLOAT;
    case MOE_DTYPE_F16: *f = moe_f16_to_f32(v.u16); return ELEM_FLOAT;
    case MOE_DTYPE_BF16: *f = moe_bf16_to_f32(v.u16); return ELEM_FLOAT;
    case MOE_DTYPE_F8_E4M3: *f = moe_f8e4m3_to_f32(v.u8); return ELEM_FLOAT;
    }
    *f = NAN;
    return ELEM_FLOAT;
}

/* Element i as an int32, or an error naming `what`. Floats convert only where they hold an exact
 * integer in range: indices stored as floats are accepted, a fraction or a nan is a corrupt index and
 * is never silently truncated. */
static moe_status_t element_to_i32(const moe_array_t *array, size_t i, const char *what, int32_t *out)
{
    int64_t s = 0;
    uint64_t u = 0;
    double f = 0;
    switch (load_element(array->dtype, array->data, i, &s, &u, &f)) {
    case ELEM_SIGNED:
        if (s < INT32_MIN || s > INT32_MAX) {
            moe_error("%s: element %zu (%s) is %lld, outside the int32 range", what, i,
                      moe_dtype_name(array->dtype), (long long)s);
            return MOE_STATUS_INVALID_ARGUMENT;
        }
        *out = (int32_t)s;
        return MOE_STATUS_OK;
    case ELEM_UNSIGNED:
        if (u > INT32_MAX) {
            moe_error("%s: element %zu (%s) is %llu, outside the int32 range", what, i,
                      moe_dtype_name(array->dtype), (unsigned long long)u);
            return MOE_STATUS_INVALID_ARGUMENT;
        }
        *out = (int32_t)u;
        return MOE_STATUS_OK;
    case ELEM_FLOAT:
        if (!(f >= INT32_MIN && f <= INT32_MAX) || f != trunc(f)) {
            moe_error("%s: element %zu (%s) is %g, not an integer in the int32 range", what, i,
                      moe_dtype_name(array->dtype), f);
            return MOE_STATUS_INVALID_ARGUMENT;
        }
        *out = (int32_t)f;
        return MOE_STATUS_OK;
    }
    return MOE_STATUS_INTERNAL;
}

moe_status_t moe_array_to_i32(const moe_array_t *array, const char *what, int32_t *out)
{
    size_t n;
    moe_status_t status = array_check(array, what, &n);
    if (status != MOE_STATUS_OK) return status;
    /* Check every element before writing any, so that out is untouched on error. */
    for (size_t i = 0; i < n; i++) {
        int32_t v;
        status = element_to_i32(array, i, what, &v);
        if (status != MOE_STATUS_OK) return status;
    }
    for (size_t i = 0; i < n; i++) element_to_i32(array, i, what, &out[i]);
    return MOE_STATUS_OK;
}
