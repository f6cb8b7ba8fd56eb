/* io: the file formats moerun reads and writes, and crash-safe writing.
 *
 * - .npy (NumPy format 1.0/2.0/3.0, C order, little-endian): traces, inputs, outputs;
 * - safetensors (an 8-byte header length, a JSON header parsed with jansson, raw tensors): statistics
 *   and checkpoints; files are memory-mapped and every offset in the header is checked against the file;
 * - YAML documents loaded within bounds on size, depth and alias expansion, keys unique;
 * - atomic files: written to an unnamed file in PATH's folder (O_TMPFILE; where the file system has
 *   none, a random name created exclusively, removed on errors and on SIGINT, SIGTERM and SIGHUP) and
 *   renamed over PATH on commit, so a crash or an error never leaves a half-written file under the
 *   real name, nor a temporary, and a planted symlink cannot redirect the write.
 * Every error names the file (and the tensor or header field) and returns a status; nothing exits. */
#ifndef MOE_IO_H
#define MOE_IO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "common/common.h"

#define MOE_MAX_DIMS 8

typedef enum {
    MOE_DTYPE_F32 = 0,
    MOE_DTYPE_F64,
    MOE_DTYPE_F16,
    MOE_DTYPE_BF16,
    MOE_DTYPE_I8,
    MOE_DTYPE_I16,
    MOE_DTYPE_I32,
    MOE_DTYPE_I64,
    MOE_DTYPE_U8,
    MOE_DTYPE_U16,
    MOE_DTYPE_U32,
    MOE_DTYPE_U64,
    MOE_DTYPE_BOOL,
    MOE_DTYPE_F8_E4M3, /* float8 e4m3fn: no infinities, S.1111.111 is NaN (safetensors "F8_E4M3") */
} moe_dtype_t;

size_t moe_dtype_size(moe_dtype_t dtype);
const char *moe_dtype_name(moe_dtype_t dtype); /* safetensors spelling: "F32", "BF16", "I8", ... */
bool moe_dtype_is_integer(moe_dtype_t dtype);  /* BOOL counts as integer */
bool moe_dtype_is_float(moe_dtype_t dtype);

float moe_f16_to_f32(uint16_t h);
float moe_bf16_to_f32(uint16_t b);
float moe_f8e4m3_to_f32(uint8_t b);
uint16_t moe_f32_to_bf16(float f); /* round to nearest even */
uint16_t moe_f32_to_f16(float f);  /* round to nearest even */

/* An n-dimensional array in host memory. Owned by whoever filled it; release with moe_array_free. */
typedef struct {
    moe_dtype_t dtype;
    int ndim;
    int64_t shape[MOE_MAX_DIMS];
    void *data;    /* moe_calloc'd, nbytes long */
    size_t nbytes;
} moe_array_t;

int64_t moe_array_numel(const moe_array_t *array);
void moe_array_free(moe_array_t *array); /* frees data, zeroes the struct; NULL-safe */

/* Convert every element to float32 / int32 into out (numel long). Integers out of int32 range and
 * non-numeric dtypes are errors naming `what` (e.g. the file name). */
moe_status_t moe_array_to_f32(const moe_array_t *array, const char *what, float *out);
moe_status_t moe_array_to_i32(const moe_array_t *array, const char *what, int32_t *out);

/* ---------------------------------------------------------------- tables (table.c) */

/* A table for people: each column a title, a width and a kind: 's' a string (left-aligned; a longer
 * one keeps its end), 'i' a long long, 'f' a double with `precision` decimals (right-aligned; "-" when not finite: not known). */
typedef struct {
    const char *title;
    int width;
    char kind;
    int precision;
} moe_table_column_t;
typedef struct {
    FILE *out;
    const char *indent; /* before every line, or NULL */
    const moe_table_column_t *columns;
    int n;
} moe_table_t;
void moe_table_header(const moe_table_t *table);
/* One row: a value per column, of its kind (const char *, long long, double). */
void moe_table_row(const moe_table_t *table, ...);

/* ---------------------------------------------------------------- YAML out (yaml_out.c) */

/* A YAML document written through libyaml's emitter: open, then the events (maps and sequences with
 * their ends, keys and scalars), then close, which reports the first failure (logged, naming path). */
typedef struct moe_yaml_out_s *moe_yaml_out_h;
moe_status_t moe_yaml_out_open(FILE *fp, const char *path, moe_yaml_out_h *out);
moe_status_t moe_yaml_out_close(moe_yaml_out_h w);
/* "# text" on a line of its own, before the document (control characters replaced). */
void moe_yaml_out_comment(FILE *fp, const char *text);
void moe_yaml_out_map(moe_yaml_out_h w, bool flow);
void moe_yaml_out_seq(moe_yaml_out_h w, bool flow);
void moe_yaml_out_end_map(moe_yaml_out_h w);
void moe_yaml_out_end_seq(moe_yaml_out_h w);
void moe_yaml_out_key(moe_yaml_out_h w, const char *key);
/* A string that reads back as this string (quoted where plain would read as a number, a boolean,
 * null, or not at all). */
void moe_yaml_out_string(moe_yaml_out_h w, const char *text);
/* A plain scalar as given: numbers, booleans, enum words. */
void moe_yaml_out_raw(moe_yaml_out_h w, const char *text);
void moe_yaml_out_int(moe_yaml_out_h w, long long v);
void moe_yaml_out_number(moe_yaml_out_h w, double v, const char *format);

/* ---------------------------------------------------------------- JSON lines (json_lines.c) */

typedef struct json_t json_t; /* jansson's */

/* A new record {"type": type, "time": "2026-11-30T10:00:00.000Z"} to add fields to (jansson's
 * json_object_set_new); NULL when out of memory. */
json_t *moe_json_record(const char *type);
/* A number, or null when it is not finite (JSON has no NaN). */
json_t *moe_json_number(double v);
/* Writes the record as one line and flushes; takes the record (decref'd). path names fp in errors
 * (NULL: stdout). compact: no spaces ({"a":1,"b":2}, logs), else {"a": 1, "b": 2} (commands' reports). */
moe_status_t moe_json_line_write(FILE *fp, const char *path, bool compact, json_t *record);
/* A JSON-lines log to stream into (outputs.metrics): checked like an output (moe_atomic_file_check),
 * truncated, a symlink under the name refused; close with fclose. */
moe_status_t moe_json_stream_open(const char *path, FILE **out);

/* ---------------------------------------------------------------- atomic files */

typedef struct {
    FILE *fp;
    char path[4096];
    char tmp_path[4200]; /* the temporary's name, "" while it has none (an unnamed file) */
} moe_atomic_file_t;

/* A path that is a directory, or whose folder is missing, is an error naming it. */
moe_status_t moe_atomic_file_open(const char *path, moe_atomic_file_t *out);
/* Whether path can be written: open and abort, for outputs written only at the end of a run. */
moe_status_t moe_atomic_file_check(const char *path);
/* Flush, fsync, close and rename onto the real path. On failure the temporary is removed. */
moe_status_t moe_atomic_file_commit(moe_atomic_file_t *file);
/* Close and remove the temporary; the real path is untouched. Safe to call after commit. */
void moe_atomic_file_abort(moe_atomic_file_t *file);
/* Remove every temporary still open (before the job is aborted or exits on an error; async-signal-safe). */
void moe_atomic_file_remove_all(void);

/* ---------------------------------------------------------------- npy */

/* Read a whole .npy file. Truncated data, a bad magic or header, Fortran order, big-endian data and
 * unsupported dtypes are errors naming the file. */
moe_status_t moe_npy_read(const char *path, moe_array_t *out);

/* Write an array atomically. */
moe_status_t moe_npy_write(const char *path, const moe_array_t *array);

/* Streaming writer for outputs too large to hold: rows are appended, and commit checks that exactly
 * shape[0] rows arrived before renaming. shape[0] = -1 when the row count is not known up front
 * (an elastic run): commit then writes the count into the header, which keeps its length because
 * the header leaves room for the first axis to grow, as NumPy's does. */
typedef struct {
    moe_atomic_file_t file;
    moe_dtype_t dtype;
    int ndim;
    int64_t shape[MOE_MAX_DIMS];
    int64_t rows_expected; /* -1: as many as are appended */
    int64_t rows_written;
    size_t row_bytes;
} moe_npy_writer_t;

moe_status_t moe_npy_writer_open(const char *path, moe_dtype_t dtype, int ndim, const int64_t *shape,
                                 moe_npy_writer_t *out);
moe_status_t moe_npy_writer_append(moe_npy_writer_t *writer, const void *rows, int64_t n_rows);
moe_status_t moe_npy_writer_commit(moe_npy_writer_t *writer);
void moe_npy_writer_abort(moe_npy_writer_t *writer);

/* ---------------------------------------------------------------- YAML (yaml.c) */

struct yaml_document_s; /* libyaml's yaml_document_t */

typedef struct {
    size_t max_bytes; /* the file's size */
    int max_depth;    /* nesting of sequences and mappings */
    bool unique_keys; /* a mapping that repeats a key is an error (else the caller checks) */
} moe_yaml_limits_t;
#define MOE_YAML_LIMITS_INIT {.max_bytes = 1u << 20, .max_depth = 32, .unique_keys = true}

/* Load the one document of a YAML file within limits: its size, its depth, and aliases, which may
 * make the document stand for at most twice the nodes it writes (a reader walking it visits each
 * alias's whole subtree). A directory, a second document, a syntax error or a repeated key are errors
 * naming file:line. An empty file gives a document without a root. Delete it with
 * yaml_document_delete. */
moe_status_t moe_yaml_load(const char *path, const moe_yaml_limits_t *limits,
                           struct yaml_document_s *out);

/* ---------------------------------------------------------------- safetensors */

typedef struct moe_safetensors_s *moe_safetensors_h;

/* A tensor inside an open file: `data` points into the mapping and stays valid until close. */
typedef struct {
    const char *name;
    moe_dtype_t dtype;
    int ndim;
    int64_t shape[MOE_MAX_DIMS];
    const void *data;
    size_t nbytes;
} moe_tensor_view_t;

/* Map the file and parse its header. Errors (naming the file and, where it applies, the tensor):
 * file shorter than its header, header not JSON, unknown dtype, offsets out of order, overlapping or
 * past the end, a size that disagrees with dtype x shape. */
moe_status_t moe_safetensors_open(const char *path, moe_safetensors_h *out);
void moe_safetensors_close(moe_safetensors_h file); /* NULL-safe */

int moe_safetensors_count(moe_safetensors_h file);
/* Tensor i in header order. */
moe_status_t moe_safetensors_get(moe_safetensors_h file, int index, moe_tensor_view_t *out);
/* By name; MOE_STATUS_FORMAT_ERROR (logged, naming file and tensor) if absent. */
moe_status_t moe_safetensors_find(moe_safetensors_h file, const char *name, moe_tensor_view_t *out);
bool moe_safetensors_has(moe_safetensors_h file, const char *name);
/* A value of the "__metadata__" map, or NULL. Valid until close. */
const char *moe_safetensors_metadata(moe_safetensors_h file, const char *key);
const char *moe_safetensors_path(moe_safetensors_h file);

/* A tensor to write: data is borrowed. */
typedef struct {
    const char *name;
    moe_dtype_t dtype;
    int ndim;
    int64_t shape[MOE_MAX_DIMS];
    const void *data;
} moe_tensor_t;

/* Write tensors (in the given order, 8-byte aligned data) and string metadata, atomically. */
moe_status_t moe_safetensors_write(const char *path, const moe_tensor_t *tensors, int n_tensors,
                                   const char *const *meta_keys, const char *const *meta_values,
                                   int n_meta);

#endif
