/* io/safetensors.c: the safetensors format (see io.h).
 *
 * Layout: N as a little-endian uint64, N bytes of JSON, then the data. The JSON maps each tensor name
 * to {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, offsets counted from the first
 * byte after the header; an optional "__metadata__" maps strings to strings.
 *
 * Reading maps the file read-only and checks every entry against the mapping before handing out a
 * view, so a corrupt file fails at open with a message, never later with a fault. Tensor order is the
 * order of the header: jansson keeps object keys in insertion order.
 *
 * Writing follows the reference implementation where it matters to other readers: compact JSON,
 * "__metadata__" first, the header padded with spaces so that data starts 8-byte aligned, and tensor
 * data contiguous with no gaps (the reference reader rejects gaps). Tensors keep the caller's order,
 * so a tensor after one whose size is not a multiple of 8 may be unaligned: views are byte pointers
 * and readers of mixed-dtype files should copy (moe_array_to_f32 and friends do). */
#include "io/io.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define ST_MAX_HEADER (100u << 20) /* the reference implementation's limit */
#define ST_METADATA_KEY "__metadata__"

struct moe_safetensors_s {
    char *path;
    const unsigned char *map;
    size_t map_size;
    json_t *root;   /* owns the names the views point to */
    json_t *meta;   /* borrowed from root; NULL when absent */
    json_t *index;  /* name -> position in views */
    int n_tensors;
    moe_tensor_view_t *views;
};

static bool st_parse_dtype(const char *name, moe_dtype_t *out)
{
    static const moe_dtype_t all[] = {
        MOE_DTYPE_F32, MOE_DTYPE_F64, MOE_DTYPE_F16, MOE_DTYPE_BF16, MOE_DTYPE_I8,
        MOE_DTYPE_I16, MOE_DTYPE_I32, MOE_DTYPE_I64, MOE_DTYPE_U8,   MOE_DTYPE_U16,
        MOE_DTYPE_U32, MOE_DTYPE_U64, MOE_DTYPE_BOOL, MOE_DTYPE_F8_E4M3,
    };
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        if (strcmp(name, moe_dtype_name(all[i])) == 0) {
            *out = all[i];
            return true;
        }
    }
    return false;
}

/* ---------------------------------------------------------------- reading */

/* One header entry -> a view, checked against the data segment of data_size bytes. */
static moe_status_t st_parse_entry(const char *path, const char *name, json_t *entry,
                                   const unsigned char *data, size_t data_size, size_t *begin_out,
                                   moe_tensor_view_t *out)
{
    moe_tensor_view_t v;
    memset(&v, 0, sizeof v);
    v.name = name;
    if (!json_is_object(entry)) {
        moe_error("%s: tensor '%s': header entry is not an object", path, name);
        return MOE_STATUS_FORMAT_ERROR;
    }
    json_t *jdtype = json_object_get(entry, "dtype");
    json_t *jshape = json_object_get(entry, "shape");
    json_t *joffsets = json_object_get(entry, "data_offsets");
    if (!json_is_string(jdtype) || !json_is_array(jshape) || !json_is_array(joffsets)) {
        moe_error("%s: tensor '%s': needs \"dtype\" (string), \"shape\" and \"data_offsets\" (arrays)",
                  path, name);
        return MOE_STATUS_FORMAT_ERROR;
    }
    if (!st_parse_dtype(json_string_value(jdtype), &v.dtype)) {
        moe_error("%s: tensor '%s': unknown dtype '%s'", path, name, json_string_value(jdtype));
        return MOE_STATUS_FORMAT_ERROR;
    }
    if (json_array_size(jshape) > MOE_MAX_DIMS) {
        moe_error("%s: tensor '%s': %zu dimensions, at most %d supported", path, name,
                  json_array_size(jshape), MOE_MAX_DIMS);
        return MOE_STATUS_FORMAT_ERROR;
    }
    v.ndim = (int)json_array_size(jshape);
    size_t numel = 1, nbytes;
    for (int d = 0; d < v.ndim; d++) {
        json_t *jd = json_array_get(jshape, (size_t)d);
        if (!json_is_integer(jd) || json_integer_value(jd) < 0) {
            moe_error("%s: tensor '%s': dimension %d is not a non-negative integer", path, name, d);
            return MOE_STATUS_FORMAT_ERROR;
        }
        v.shape[d] = json_integer_value(jd);
        if (!moe_size_mul(numel, (size_t)v.shape[d], &numel)) {
            moe_error("%s: tensor '%s': shape overflows", path, name);
            return MOE_STATUS_FORMAT_ERROR;
        }
    }
    if (!moe_size_mul(numel, moe_dtype_size(v.dtype), &nbytes)) {
        moe_error("%s: tensor '%s': shape overflows", path, name);
        return MOE_STATUS_FORMAT_ERROR;
    }
    json_t *jb = json_array_get(joffsets, 0), *je = json_array_get(joffsets, 1);
    if (json_array_size(joffsets) != 2 || !json_is_integer(jb) || !json_is_integer(je) ||
        json_integer_value(jb) < 0 || json_integer_value(je) < json_integer_value(jb)) {
        moe_error("%s: tensor '%s': data_offsets must be [begin, end] with 0 <= begin <= end", path,
                  name);
        return MOE_STATUS_FORMAT_ERROR;
    }
    uint64_t begin = (uint64_t)json_integer_value(jb), end = (uint64_t)json_integer_value(je);
    if (end > data_size) {
        moe_error("%s: tensor '%s': data_offsets [%llu, %llu] run past the end of the file "
                  "(%zu data bytes)", path, name, (unsigned long long)begin, (unsigned long long)end,
                  data_size);
        return MOE_STATUS_FORMAT_ERROR;
    }
    if (end - begin != nbytes) {
        moe_error("%s: tensor '%s': data_offsets span %llu bytes, %s x %zu elements need %zu", path,
                  name, (unsigned long long)(end - begin), moe_dtype_name(v.dtype), numel, nbytes);
        return MOE_STATUS_FORMAT_ERROR;
    }
    v.data = data + begin;
    v.nbytes = nbytes;
    *begin_out = (size_t)begin;
    *out = v;
    return MOE_STATUS_OK;
}

typedef struct {
    size_t begin;
    int index;
} st_span_t;

static int st_cmp_span(const void *a, const void *b)
{
    const st_span_t *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin;
}

/* No two non-empty tensors may share a byte. */
static moe_status_t st_check_overlap(moe_safetensors_h f, const size_t *begins)
{
    moe_status_t status = MOE_STATUS_OK;
    st_span_t *order = malloc(sizeof *order * (size_t)(f->n_tensors ? f->n_tensors : 1));
    if (order == NULL) {
        moe_error("%s: out of memory", f->path);
        return MOE_STATUS_NO_MEMORY;
    }
    for (int i = 0; i < f->n_tensors; i++) order[i] = (st_span_t){begins[i], i};
    qsort(order, (size_t)f->n_tensors, sizeof *order, st_cmp_span);
    size_t reach = 0;
    int last = -1;
    for (int k = 0; k < f->n_tensors; k++) {
        int i = order[k].index;
        if (f->views[i].nbytes == 0) continue;
        if (last >= 0 && begins[i] < reach) {
            moe_error("%s: tensors '%s' and '%s' overlap in the file", f->path, f->views[last].name,
                      f->views[i].name);
            status = MOE_STATUS_FORMAT_ERROR;
            break;
        }
        reach = begins[i] + f->views[i].nbytes;
        last = i;
    }
    free(order);
    return status;
}

/* Check and index the header of an open, mapped file. */
static moe_status_t st_parse_header(moe_safetensors_h f, size_t header_len)
{
    moe_status_t status = MOE_STATUS_OK;
    json_error_t err;
    size_t *begins = NULL;
    const char *path = f->path;
    const unsigned char *data = f->map + 8 + header_len;
    size_t data_size = f->map_size - 8 - header_len;

    f->root = json_loadb((const char *)f->map + 8, header_len, JSON_REJECT_DUPLICATES, &err);
    if (f->root == NULL)
        MOE_FAIL(MOE_STATUS_FORMAT_ERROR, out, "%s: header is not valid JSON (byte %d): %s", path,
                 err.position, err.text);
    if (!json_is_object(f->root))
        MOE_FAIL(MOE_STATUS_FORMAT_ERROR, out, "%s: header is not a JSON object", path);

    f->meta = json_object_get(f->root, ST_METADATA_KEY);
    if (json_is_null(f->meta)) f->meta = NULL;
    if (f->meta != NULL) {
        if (!json_is_object(f->meta))
            MOE_FAIL(MOE_STATUS_FORMAT_ERROR, out, "%s: \"" ST_METADATA_KEY "\" is not an object", path);
        const char *key;
        json_t *value;
        json_object_foreach(f->meta, key, value) {
            if (!json_is_string(value))
                MOE_FAIL(MOE_STATUS_FORMAT_ERROR, out, "%s: metadata '%s' is not a string", path, key);
        }
    }

    size_t n = json_object_size(f->root) - (json_object_get(f->root, ST_METADATA_KEY) != NULL);
    f->views = calloc(n ? n : 1, sizeof *f->views);
    begins = calloc(n ? n : 1, sizeof *begins);
    f->index = json_object();
    MOE_CHECK_ALLOC(f->views, out);
    MOE_CHECK_ALLOC(begins, out);
    MOE_CHECK_ALLOC(f->index, out);
    const char *name;
    json_t *entry;
    json_object_foreach(f->root, name, entry) {
        if (strcmp(name, ST_METADATA_KEY) == 0) continue;
        int i = f->n_tensors;
        MOE_CHECK(st_parse_entry(path, name, entry, data, data_size, &begins[i], &f->views[i]), out);
        if (json_object_set_new(f->index, name, json_integer(i)) != 0)
            MOE_FAIL(MOE_STATUS_NO_MEMORY, out, "%s: out of memory indexing tensor '%s'", path, name);
        f->n_tensors++;
    }
    MOE_CHECK(st_check_overlap(f, begins), out);

out:
    free(begins);
    return status;
}

static void st_free(moe_safetensors_h f)
{
    if (f->map != NULL) munmap((void *)f->map, f->map_size);
    json_decref(f->index);
    json_decref(f->root);
    free(f->views);
    free(f->path);
    free(f);
}

moe_status_t moe_safetensors_open(const char *path, moe_safetensors_h *out)
{
    moe_status_t status = MOE_STATUS_OK;
    struct stat st;
    moe_safetensors_h f = calloc(1, sizeof *f);
    if (f == NULL || (f->path = strdup(path)) == NULL) {
        free(f);
        moe_error("%s: out of memory", path);
        return MOE_STATUS_NO_MEMORY;
    }

    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) MOE_FAIL(MOE_STATUS_IO_ERROR, free_file, "%s: cannot open: %s", path, strerror(errno));
    if (fstat(fd, &st) != 0)
        MOE_FAIL(MOE_STATUS_IO_ERROR, close_fd, "%s: cannot stat: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode))
        MOE_FAIL(MOE_STATUS_IO_ERROR, close_fd, "%s: is a directory, not a safetensors file", path);
    if (st.st_size < 8)
        MOE_FAIL(MOE_STATUS_FORMAT_ERROR, close_fd,
                 "%s: %lld bytes, shorter than the 8-byte safetensors header length", path,
                 (long long)st.st_size);
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED)
        MOE_FAIL(MOE_STATUS_IO_ERROR, close_fd, "%s: cannot map: %s", path, strerror(errno));
    f->map = map;
    f->map_size = (size_t)st.st_size;
    close(fd);
    fd = -1;

    uint64_t header_len = 0;
    for (int i = 7; i >= 0; i--) header_len = (header_len << 8) | f->map[i];
    if (header_len > f->map_size - 8)
        MOE_FAIL(MOE_STATUS_FORMAT_ERROR, free_file,
                 "%s: header length %llu runs past the end of the file (%zu bytes)", path,
                 (unsigned long long)header_len, f->map_size);
    if (header_len > ST_MAX_HEADER)
        MOE_FAIL(MOE_STATUS_FORMAT_ERROR, free_file, "%s: header of %llu bytes is implausibly long",
                 path, (unsigned long long)header_len);
    MOE_CHECK(st_parse_header(f, (size_t)header_len), free_file);
    *out = f;
    return MOE_STATUS_OK;

close_fd:
    close(fd);
free_file:
    st_free(f);
    return status;
}

void moe_safetensors_close(moe_safetensors_h file)
{
    if (file == NULL) return;
    st_free(file);
}

int moe_safetensors_count(moe_safetensors_h file) { return file->n_tensors; }

moe_status_t moe_safetensors_get(moe_safetensors_h file, int index, moe_tensor_view_t *out)
{
    if (index < 0 || index >= file->n_tensors) {
        moe_error("%s: tensor index %d out of range (%d tensors)", file->path, index, file->n_tensors);
        return MOE_STATUS_INVALID_ARGUMENT;
    }
    *out = file->views[index];
    return MOE_STATUS_OK;
}

moe_status_t moe_safetensors_find(moe_safetensors_h file, const char *name, moe_tensor_view_t *out)
{
    json_t *i = json_object_get(file->index, name);
    if (i == NULL) {
        moe_error("%s: no tensor '%s'", file->path, name);
        return MOE_STATUS_FORMAT_ERROR;
    }
    *out = file->views[json_integer_value(i)];
    return MOE_STATUS_OK;
}

bool moe_safetensors_has(moe_safetensors_h file, const char *name)
{
    return json_object_get(file->index, name) != NULL;
}

const char *moe_safetensors_metadata(moe_safetensors_h file, const char *key)
{
    return file->meta ? json_string_value(json_object_get(file->meta, key)) : NULL;
}

const char *moe_safetensors_path(moe_safetensors_h file) { return file->path; }

/* ---------------------------------------------------------------- writing */

/* The JSON header for the tensors, laid out back to back; *data_bytes their total size. */
static moe_status_t st_build_header(const char *path, const moe_tensor_t *tensors, int n_tensors,
                                    const char *const *meta_keys, const char *const *meta_values,
                                    int n_meta, json_t **out, size_t *data_bytes)
{
    moe_status_t status = MOE_STATUS_OK;
    json_t *root = json_object();
    MOE_CHECK_ALLOC(root, out);

    if (n_meta > 0) {
        json_t *meta = json_object();
        MOE_CHECK_ALLOC(meta, free_root);
        if (json_object_set_new(root, ST_METADATA_KEY, meta) != 0)
            MOE_FAIL(MOE_STATUS_NO_MEMORY, free_root, "%s: out of memory", path);
        for (int i = 0; i < n_meta; i++) {
            if (meta_keys[i] == NULL || meta_values[i] == NULL)
                MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, free_root, "%s: metadata entry %d is NULL", path,
                         i);
            json_t *value = json_string(meta_values[i]);
            if (value == NULL || json_object_set_new(meta, meta_keys[i], value) != 0)
                MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, free_root,
                         "%s: metadata '%s' is not valid UTF-8", path, meta_keys[i]);
        }
    }

    size_t offset = 0;
    for (int t = 0; t < n_tensors; t++) {
        const moe_tensor_t *tensor = &tensors[t];
        const char *name = tensor->name;
        if (name == NULL || name[0] == '\0' || strcmp(name, ST_METADATA_KEY) == 0)
            MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, free_root, "%s: tensor %d: name is empty or reserved",
                     path, t);
        if (json_object_get(root, name) != NULL)
            MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, free_root, "%s: tensor '%s' given twice", path, name);
        size_t itemsize = moe_dtype_size(tensor->dtype);
        if (itemsize == 0)
            MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, free_root, "%s: tensor '%s': unknown dtype %d", path,
                     name, (int)tensor->dtype);
        if (tensor->ndim < 0 || tensor->ndim > MOE_MAX_DIMS)
            MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, free_root, "%s: tensor '%s': %d dimensions", path,
                     name, tensor->ndim);
        json_t *shape = json_array();
        MOE_CHECK_ALLOC(shape, free_root);
        size_t nbytes = itemsize;
        for (int d = 0; d < tensor->ndim; d++) {
            if (tensor->shape[d] < 0 || !moe_size_mul(nbytes, (size_t)tensor->shape[d], &nbytes)) {
                json_decref(shape);
                MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, free_root,
                         "%s: tensor '%s': bad dimension %d of size %lld", path, name, d,
                         (long long)tensor->shape[d]);
            }
            if (json_array_append_new(shape, json_integer(tensor->shape[d])) != 0) {
                json_decref(shape);
                MOE_FAIL(MOE_STATUS_NO_MEMORY, free_root, "%s: out of memory", path);
            }
        }
        if (nbytes > 0 && tensor->data == NULL) {
            json_decref(shape);
            MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, free_root, "%s: tensor '%s': no data", path, name);
        }
        /* json_pack and json_object_set_new take over shape and entry, also when they fail. */
        json_t *entry = json_pack("{s:s, s:o, s:[I, I]}", "dtype", moe_dtype_name(tensor->dtype),
                                  "shape", shape, "data_offsets", (json_int_t)offset,
                                  (json_int_t)(offset + nbytes));
        MOE_CHECK_ALLOC(entry, free_root);
        if (json_object_set_new(root, name, entry) != 0)
            MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, free_root, "%s: tensor name '%s' is not valid UTF-8",
                     path, name);
        offset += nbytes;
    }
    *out = root;
    *data_bytes = offset;
    return MOE_STATUS_OK;

free_root:
    json_decref(root);
out:
    return status;
}

moe_status_t moe_safetensors_write(const char *path, const moe_tensor_t *tensors, int n_tensors,
                                   const char *const *meta_keys, const char *const *meta_values,
                                   int n_meta)
{
    moe_status_t status = MOE_STATUS_OK;
    moe_atomic_file_t file;
    json_t *root = NULL;
    char *json = NULL;
    size_t data_bytes;

    if (n_tensors < 0 || n_meta < 0)
        MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, out, "%s: negative tensor or metadata count", path);
    MOE_CHECK(st_build_header(path, tensors, n_tensors, meta_keys, meta_values, n_meta, &root,
                              &data_bytes), out);
    json = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    MOE_CHECK_ALLOC(json, free_root);
    size_t json_len = strlen(json);
    size_t header_len = (json_len + 7) & ~(size_t)7; /* 8 + header_len is then a multiple of 8 too */

    unsigned char len_bytes[8];
    for (int i = 0; i < 8; i++) len_bytes[i] = (unsigned char)((uint64_t)header_len >> (8 * i));
    MOE_CHECK(moe_atomic_file_open(path, &file), free_json);
    if (fwrite(len_bytes, 1, 8, file.fp) != 8 || fwrite(json, 1, json_len, file.fp) != json_len)
        goto write_failed;
    for (size_t i = json_len; i < header_len; i++)
        if (fputc(' ', file.fp) == EOF) goto write_failed;
    for (int t = 0; t < n_tensors; t++) {
        size_t nbytes = moe_dtype_size(tensors[t].dtype);
        for (int d = 0; d < tensors[t].ndim; d++) nbytes *= (size_t)tensors[t].shape[d];
        if (nbytes > 0 && fwrite(tensors[t].data, 1, nbytes, file.fp) != nbytes) goto write_failed;
    }
    MOE_CHECK(moe_atomic_file_commit(&file), free_json);
    free(json);
    json_decref(root);
    return MOE_STATUS_OK;

write_failed:
    moe_error("%s: write failed: %s", path, strerror(errno));
    status = MOE_STATUS_IO_ERROR;
    moe_atomic_file_abort(&file);
free_json:
    free(json);
free_root:
    json_decref(root);
out:
    return status;
}
