/* checkpoint: a rank's weights read from a Hugging Face checkpoint (weights.checkpoint).
 *
 * The directory holds config.json (read by hf_config.c) and model.safetensors, or shards listed by
 * model.safetensors.index.json ({"weight_map": {tensor: file}}). Each rank maps the files that hold
 * a tensor it needs (mapping reads nothing but the header pages) and copies only those tensors:
 * every MoE layer's post-attention RMSNorm, router, correction bias, shared experts and shared gate,
 * and the routed experts the plan gives it (replicas included), through the weights' store: bf16,
 * fp16 and fp32 on disk are converted where they land (float32 on the host, bf16 matrices on the GPU,
 * converted there), and FP8 (e4m3) matrices with 128x128 block scales, as DeepSeek-V3 publishes them
 * (`<name>_scale_inv`, quantization_config's weight_block_size), are dequantised the same way. What it
 * copied is counted in moe_weights_t.read_bytes.
 *
 * Tensor names, for checkpoint layer N (moerun layer l is the l-th layer with an MoE block):
 *   model.layers.N.post_attention_layernorm.weight          [d]
 *   model.layers.N.{mlp|block_sparse_moe}.gate.weight       [E, d]
 *   model.layers.N.mlp.gate.e_score_correction_bias         [E]        DeepSeek-V3
 *   routed experts, one tensor per expert and projection (as published):
 *     ...experts.J.{gate_proj,up_proj,down_proj}.weight     [f, d] [f, d] [d, f]
 *     ...experts.J.{w1,w3,w2}.weight                        (Mixtral's names for the same)
 *   or fused per layer (as transformers 5 saves them):
 *     ...experts.gate_up_proj [E, 2f, d] (gate rows first), ...experts.down_proj [E, d, f]
 *   model.layers.N.mlp.shared_expert{,s}.{gate,up,down}_proj.weight  [fs, d] [fs, d] [d, fs]
 *   model.layers.N.mlp.shared_expert_gate.weight            [1, d]     Qwen2-MoE
 * The MoE module is `block_sparse_moe` in Mixtral's published checkpoints and `mlp` elsewhere (and
 * in Mixtral checkpoints saved by transformers 5); the loader takes whichever the checkpoint has.
 *
 * Errors name the file and tensor: a missing tensor, a wrong shape or dtype; the safetensors reader
 * rejects truncated files and headers whose offsets or sizes lie (io/safetensors.c). */
#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/model/model-impl.h"

#define CKPT_MAX_FILES 256

typedef struct {
    const char *dir;
    json_t *weight_map;                 /* NULL for a single model.safetensors */
    char index_path[MOE_PATH_MAX + 64];
    char *file_name[CKPT_MAX_FILES];    /* shards opened so far */
    moe_safetensors_h file[CKPT_MAX_FILES];
    int n_files;
    int fp8_block;                      /* quantization_config's weight_block_size, 0 if none */
    int64_t read_bytes, read_expert_bytes;
} ckpt_t;

static void ckpt_close(ckpt_t *c)
{
    for (int i = 0; i < c->n_files; i++) {
        moe_safetensors_close(c->file[i]);
        free(c->file_name[i]);
    }
    json_decref(c->weight_map);
}

/* The open file that holds `name` per the index (or the single file). */
static moe_status_t ckpt_file_of(ckpt_t *c, const char *name, bool required, moe_safetensors_h *out)
{
    const char *file = "model.safetensors";
    if (c->weight_map) {
        json_t *v = json_object_get(c->weight_map, name);
        if (v == NULL) {
            *out = NULL;
            if (!required) return MOE_STATUS_OK;
            moe_error("%s: tensor '%s' is not in weight_map", c->index_path, name);
            return MOE_STATUS_FORMAT_ERROR;
        }
        if (!json_is_string(v) || strchr(json_string_value(v), '/') != NULL) {
            moe_error("%s: weight_map entry of tensor '%s' is not a file name in the folder",
                      c->index_path, name);
            return MOE_STATUS_FORMAT_ERROR;
        }
        file = json_string_value(v);
    }
    for (int i = 0; i < c->n_files; i++)
        if (strcmp(c->file_name[i], file) == 0) {
            *out = c->file[i];
            return MOE_STATUS_OK;
        }
    if (c->n_files == CKPT_MAX_FILES) {
        moe_error("%s: more than %d safetensors files", c->dir, CKPT_MAX_FILES);
        return MOE_STATUS_UNSUPPORTED;
    }
    char path[MOE_PATH_MAX + 256];
    snprintf(path, sizeof path, "%s/%s", c->dir, file);
    moe_safetensors_h f;
    moe_status_t status = moe_safetensors_open(path, &f);
    if (status != MOE_STATUS_OK) return status;
    c->file_name[c->n_files] = strdup(file);
    if (!c->file_name[c->n_files]) {
        moe_safetensors_close(f);
        moe_error("%s: out of memory", path);
        return MOE_STATUS_NO_MEMORY;
    }
    c->file[c->n_files++] = f;
    *out = f;
    return MOE_STATUS_OK;
}

static bool ckpt_has(ckpt_t *c, const char *name)
{
    moe_safetensors_h f = NULL;
    if (c->weight_map) return json_object_get(c->weight_map, name) != NULL;
    if (ckpt_file_of(c, name, false, &f) != MOE_STATUS_OK || f == NULL) return false;
    return moe_safetensors_has(f, name);
}

static void shape_text(const int64_t *shape, int ndim, char *buf, size_t size)
{
    size_t used = (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < ndim && used < size; i++)
        used += (size_t)snprintf(buf + used, size - used, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (used < size) snprintf(buf + used, size - used, "]");
}

/* Where a tensor lands: element `first` of dst, in the weights' store, of element type elem. */
typedef struct {
    const moe_weights_t *w;
    void *dst;
    moe_elem_t elem;
    size_t first;
} sink_t;

/* The FP8 tensor `name`'s block scales ("<name>_scale_inv", DeepSeek-V3's naming), checked against
 * the matrix [rows][cols] (slice `index` of its first dimension when index >= 0). */
static moe_status_t ckpt_scales(ckpt_t *c, const char *name, int64_t index, int64_t rows, int64_t cols,
                                bool expert, const float **out)
{
    char scale_name[600];
    snprintf(scale_name, sizeof scale_name, "%s_scale_inv", name);
    moe_safetensors_h f;
    moe_status_t status = ckpt_file_of(c, scale_name, true, &f);
    if (status != MOE_STATUS_OK) return status;
    moe_tensor_view_t v;
    if ((status = moe_safetensors_find(f, scale_name, &v)) != MOE_STATUS_OK) return status;
    const int64_t b = c->fp8_block, sr = (rows + b - 1) / b, sc = (cols + b - 1) / b;
    const bool sliced = index >= 0;
    bool ok = v.dtype == MOE_DTYPE_F32 && v.ndim == (sliced ? 3 : 2) && v.shape[v.ndim - 2] == sr &&
              v.shape[v.ndim - 1] == sc && (!sliced || index < v.shape[0]);
    if (!ok) {
        char want[128];
        snprintf(want, sizeof want, sliced ? "[.., %lld, %lld]" : "[%lld, %lld]", (long long)sr, (long long)sc);
        moe_error("%s: tensor '%s': expected F32 %s (the %lldx%lld blocks of quantization_config's "
                  "weight_block_size)", moe_safetensors_path(f), scale_name, want, (long long)b, (long long)b);
        return MOE_STATUS_FORMAT_ERROR;
    }
    *out = (const float *)v.data + (sliced ? (size_t)index * (size_t)(sr * sc) : 0);
    c->read_bytes += (int64_t)(sizeof(float) * (size_t)(sr * sc));
    if (expert) c->read_expert_bytes += (int64_t)(sizeof(float) * (size_t)(sr * sc));
    return MOE_STATUS_OK;
}

/* Reads tensor `name` of the given shape (ndim dims; what: the settings that give it) into the sink,
 * or with `index` >= 0 only slice `index` of its first dimension (a fused expert tensor: shape then
 * includes that first dimension). F32, BF16 and F16 are converted where they land; FP8 (e4m3) is
 * dequantised with its block scales. */
static moe_status_t ckpt_read(ckpt_t *c, const char *name, int ndim, const int64_t *shape,
                              const char *what, int64_t index, bool expert, const sink_t *sink)
{
    moe_safetensors_h f;
    moe_status_t status = ckpt_file_of(c, name, true, &f);
    if (status != MOE_STATUS_OK) return status;
    moe_tensor_view_t v;
    status = moe_safetensors_find(f, name, &v);
    if (status != MOE_STATUS_OK) return status;
    const char *path = moe_safetensors_path(f);
    bool same = v.ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = v.shape[i] == shape[i];
    if (!same) {
        char got[256], want[256];
        shape_text(v.shape, v.ndim, got, sizeof got);
        shape_text(shape, ndim, want, sizeof want);
        moe_error("%s: tensor '%s': shape %s, expected %s (%s)", path, name, got, want, what);
        return MOE_STATUS_FORMAT_ERROR;
    }
    const bool fp8 = v.dtype == MOE_DTYPE_F8_E4M3;
    if (v.dtype != MOE_DTYPE_F32 && v.dtype != MOE_DTYPE_BF16 && v.dtype != MOE_DTYPE_F16 && !fp8) {
        moe_error("%s: tensor '%s': dtype %s, expected F32, BF16, F16 or F8_E4M3", path, name,
                  moe_dtype_name(v.dtype));
        return MOE_STATUS_FORMAT_ERROR;
    }
    if (fp8 && (c->fp8_block <= 0 || ndim - (index >= 0) != 2)) {
        moe_error("%s: tensor '%s' is F8_E4M3, but %s", path, name,
                  c->fp8_block <= 0 ? "config.json has no fp8 quantization_config with weight_block_size"
                                    : "only matrices may be FP8");
        return MOE_STATUS_FORMAT_ERROR;
    }
    size_t numel = 1;
    for (int i = index >= 0 ? 1 : 0; i < ndim; i++) numel *= (size_t)shape[i];
    const size_t esize = moe_dtype_size(v.dtype);
    const unsigned char *src = (const unsigned char *)v.data + (index >= 0 ? (size_t)index * numel * esize : 0);
    const moe_weights_t *w = sink->w;
    if (fp8) {
        const int64_t rows = shape[ndim - 2], cols = shape[ndim - 1];
        const float *scales;
        if ((status = ckpt_scales(c, name, index, rows, cols, expert, &scales)) != MOE_STATUS_OK) return status;
        const moe_fp8_matrix_t m = {.data = src, .rows = rows, .cols = cols, .scale_inv = scales,
                                    .block = c->fp8_block};
        status = w->ops->write_fp8(w->store, sink->dst, sink->elem, sink->first, &m);
    } else {
        status = w->ops->write(w->store, sink->dst, sink->elem, sink->first, src, v.dtype, numel);
    }
    if (status != MOE_STATUS_OK) return status;
    int64_t bytes = (int64_t)(numel * esize);
    c->read_bytes += bytes;
    if (expert) c->read_expert_bytes += bytes;
    return MOE_STATUS_OK;
}

/* ---------------------------------------------------------------- settings against config.json */

/* Structural settings must match the checkpoint (they give the tensor shapes); routing behaviour may
 * differ on purpose (an experiment) and is only reported. */
static moe_status_t check_settings(const moe_config_t *config, const moe_hf_config_t *hf,
                                   const char *json_path, int rank)
{
    const moe_model_config_t *m = &config->model, *h = &hf->model;
    int errors = 0;
#define MUST(field, key, fmt, cast)                                                                \
    if (m->field != h->field) {                                                                    \
        moe_error("model." #field ": " fmt ", but %s says " fmt " (%s)", (cast)m->field, json_path, \
                  (cast)h->field, key);                                                            \
        errors++;                                                                                  \
    }
#define SHOULD(field, key, fmt, cast)                                                              \
    if (m->field != h->field && rank == 0)                                                         \
        moe_warn("model." #field ": " fmt ", while %s implies " fmt " (%s); running with " fmt,    \
                 (cast)m->field, json_path, (cast)h->field, key, (cast)m->field);
    MUST(d_model, "hidden_size", "%d", int)
    MUST(d_ff, "expert intermediate size", "%d", int)
    MUST(experts, "routed experts", "%d", int)
    MUST(score_bias, "e_score_correction_bias", "%d", int)
    MUST(shared_gate, "shared_expert_gate", "%d", int)
    if (m->shared_experts * m->shared_d_ff != h->shared_experts * h->shared_d_ff) {
        moe_error("model.shared_experts x model.shared_d_ff: %d x %d, but %s implies %d x %d",
                  m->shared_experts, m->shared_d_ff, json_path, h->shared_experts, h->shared_d_ff);
        errors++;
    }
    if (m->layers > hf->moe_layers) {
        moe_error("model.layers: %d, but %s has %d layers with an MoE block", m->layers, json_path,
                  hf->moe_layers);
        errors++;
    }
    if (errors) return MOE_STATUS_INVALID_ARGUMENT;
    SHOULD(top_k, "num_experts_per_tok", "%d", int)
    SHOULD(scoring, "scoring", "%d", int)
    SHOULD(renormalize, "norm_topk_prob", "%d", int)
    SHOULD(groups, "n_group", "%d", int)
    SHOULD(groups_kept, "topk_group", "%d", int)
    SHOULD(routed_scaling, "routed_scaling_factor", "%g", double)
    SHOULD(norm_eps, "rms_norm_eps", "%g", double)
#undef MUST
#undef SHOULD
    return MOE_STATUS_OK;
}

/* ---------------------------------------------------------------- loading */

static moe_status_t open_index(ckpt_t *c)
{
    snprintf(c->index_path, sizeof c->index_path, "%s/model.safetensors.index.json", c->dir);
    FILE *probe = fopen(c->index_path, "rb");
    if (probe == NULL) return MOE_STATUS_OK; /* a single model.safetensors */
    fclose(probe);
    json_error_t jerr;
    json_t *root = json_load_file(c->index_path, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        moe_error("%s:%d: not valid JSON: %s", c->index_path, jerr.line, jerr.text);
        return MOE_STATUS_FORMAT_ERROR;
    }
    json_t *map = json_object_get(root, "weight_map");
    if (!json_is_object(map)) {
        json_decref(root);
        moe_error("%s: missing \"weight_map\" (an object of tensor -> file)", c->index_path);
        return MOE_STATUS_FORMAT_ERROR;
    }
    c->weight_map = json_incref(map);
    json_decref(root);
    return MOE_STATUS_OK;
}

moe_status_t moe_checkpoint_load(const moe_config_t *config, const moe_plan_h plan, int rank,
                                 moe_watch_h watch, moe_weights_t *w)
{
    moe_status_t status = MOE_STATUS_OK;
    const moe_model_config_t *m = &config->model;
    const int64_t d = w->d, f = w->f, fs = w->fs, E = w->experts;
    char dir[MOE_PATH_MAX], json_path[MOE_PATH_MAX + 32], name[512], base[256], what[128];
    snprintf(dir, sizeof dir, "%s", config->weights.checkpoint);
    for (size_t n = strlen(dir); n > 1 && dir[n - 1] == '/'; n--) dir[n - 1] = '\0';
    ckpt_t c = {.dir = dir};
    moe_hf_config_t *hf = malloc(sizeof *hf);
    MOE_CHECK_ALLOC(hf, out);
    snprintf(json_path, sizeof json_path, "%s/config.json", c.dir);
    MOE_CHECK(moe_hf_config_read(json_path, hf), free_hf);
    c.fp8_block = hf->fp8_block;
    const moe_elem_t F32 = MOE_ELEM_F32, M = w->ops->matrix_elem;
#define SINK(ptr, elem, at) (&(sink_t){w, (ptr), (elem), (size_t)(at)})
    MOE_CHECK(check_settings(config, hf, json_path, rank), free_hf);
    MOE_CHECK(open_index(&c), close);

    for (int l = 0; l < m->layers; l++) {
        const int N = hf->moe_layer[l];
        /* The MoE module's name: Mixtral's published checkpoints say block_sparse_moe. */
        snprintf(base, sizeof base, "model.layers.%d.block_sparse_moe", N);
        snprintf(name, sizeof name, "%s.gate.weight", base);
        if (hf->family != MOE_HF_MIXTRAL || !ckpt_has(&c, name))
            snprintf(base, sizeof base, "model.layers.%d.mlp", N);

        snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", N);
        MOE_CHECK(ckpt_read(&c, name, 1, (int64_t[]){d}, "model.d_model", -1, false, SINK(w->norm, F32, l * d)),
                  close);
        snprintf(name, sizeof name, "%s.gate.weight", base);
        MOE_CHECK(ckpt_read(&c, name, 2, (int64_t[]){E, d}, "model.experts, model.d_model", -1, false,
                            SINK(w->router, F32, l * E * d)), close);
        if (w->score_bias) {
            snprintf(name, sizeof name, "%s.gate.e_score_correction_bias", base);
            MOE_CHECK(ckpt_read(&c, name, 1, (int64_t[]){E}, "model.experts", -1, false,
                                SINK(w->score_bias, F32, l * E)), close);
        }
        if (fs) {
            const char *shared = hf->family == MOE_HF_QWEN2_MOE ? "shared_expert" : "shared_experts";
            const int64_t gu = l * 2 * fs * d;
            snprintf(what, sizeof what, "model.shared_experts x model.shared_d_ff = %lld", (long long)fs);
            snprintf(name, sizeof name, "%s.%s.gate_proj.weight", base, shared);
            MOE_CHECK(ckpt_read(&c, name, 2, (int64_t[]){fs, d}, what, -1, false, SINK(w->shared_gate_up, M, gu)),
                      close);
            snprintf(name, sizeof name, "%s.%s.up_proj.weight", base, shared);
            MOE_CHECK(ckpt_read(&c, name, 2, (int64_t[]){fs, d}, what, -1, false,
                                SINK(w->shared_gate_up, M, gu + fs * d)), close);
            snprintf(name, sizeof name, "%s.%s.down_proj.weight", base, shared);
            MOE_CHECK(ckpt_read(&c, name, 2, (int64_t[]){d, fs}, what, -1, false,
                                SINK(w->shared_down, M, l * d * fs)), close);
        }
        if (w->shared_gate) {
            snprintf(name, sizeof name, "%s.shared_expert_gate.weight", base);
            MOE_CHECK(ckpt_read(&c, name, 2, (int64_t[]){1, d}, "model.d_model", -1, false,
                                SINK(w->shared_gate, F32, l * d)), close);
        }

        /* Routed experts: fused per layer, or one tensor per expert and projection. */
        const int *experts;
        int n = moe_plan_local_experts(plan, l, rank, &experts);
        char fused_gu[300], fused_down[300];
        snprintf(fused_gu, sizeof fused_gu, "%s.experts.gate_up_proj", base);
        snprintf(fused_down, sizeof fused_down, "%s.experts.down_proj", base);
        bool fused = ckpt_has(&c, fused_gu);
        const bool mixtral_names = hf->family == MOE_HF_MIXTRAL && strstr(base, "block_sparse_moe");
        for (int s = 0; s < n; s++) {
            moe_watch_poll(watch); /* reading a shard takes a while: answer ranks that wait */
            const int e = experts[s];
            void *slot = moe_weights_slot(w, l, s);
            if (fused) {
                MOE_CHECK(ckpt_read(&c, fused_gu, 3, (int64_t[]){E, 2 * f, d},
                                    "model.experts, 2 x model.d_ff, model.d_model", e, true, SINK(slot, M, 0)), close);
                MOE_CHECK(ckpt_read(&c, fused_down, 3, (int64_t[]){E, d, f},
                                    "model.experts, model.d_model, model.d_ff", e, true, SINK(slot, M, 2 * f * d)),
                          close);
                continue;
            }
            static const char *const names_std[3] = {"gate_proj", "up_proj", "down_proj"};
            static const char *const names_mixtral[3] = {"w1", "w3", "w2"};
            const char *const *p = mixtral_names ? names_mixtral : names_std;
            snprintf(name, sizeof name, "%s.experts.%d.%s.weight", base, e, p[0]);
            MOE_CHECK(ckpt_read(&c, name, 2, (int64_t[]){f, d}, "model.d_ff, model.d_model", -1, true,
                                SINK(slot, M, 0)), close);
            snprintf(name, sizeof name, "%s.experts.%d.%s.weight", base, e, p[1]);
            MOE_CHECK(ckpt_read(&c, name, 2, (int64_t[]){f, d}, "model.d_ff, model.d_model", -1, true,
                                SINK(slot, M, f * d)), close);
            snprintf(name, sizeof name, "%s.experts.%d.%s.weight", base, e, p[2]);
            MOE_CHECK(ckpt_read(&c, name, 2, (int64_t[]){d, f}, "model.d_model, model.d_ff", -1, true,
                                SINK(slot, M, 2 * f * d)), close);
        }
    }
    w->read_bytes = c.read_bytes;
    w->read_expert_bytes = c.read_expert_bytes;
    w->read_files = c.n_files;
    if (rank == 0 && hf->moe_layers < hf->hidden_layers)
        moe_info("checkpoint %s: %d of %d layers are dense and skipped (MoE blocks from layer %d)", c.dir,
                 hf->hidden_layers - hf->moe_layers, hf->hidden_layers, hf->moe_layer[0]);
    if (rank == 0 && m->layers < hf->moe_layers)
        moe_info("checkpoint %s: running the first %d of its %d MoE blocks (model.layers)", c.dir,
                 m->layers, hf->moe_layers);
    moe_info("rank %d: read %lld bytes of %s checkpoint tensors from %d files (%lld of routed experts)",
             rank, (long long)c.read_bytes, moe_hf_family_name(hf->family), c.n_files,
             (long long)c.read_expert_bytes);
#undef SINK
close:
    ckpt_close(&c);
free_hf:
    free(hf);
out:
    return status;
}
