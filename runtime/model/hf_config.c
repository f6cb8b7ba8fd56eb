/* hf_config: what moerun takes from a Hugging Face checkpoint's config.json, and the moerun model
 * settings it implies (`moerun config --from-hf`, and the checks of checkpoint.c).
 *
 * Families and their keys (names as the published config.json files spell them):
 *   Mixtral      num_local_experts, intermediate_size (expert width); softmax, top-k, renormalised.
 *   Qwen2-MoE    num_experts, moe_intermediate_size, shared_expert_intermediate_size (one shared
 *                expert with a sigmoid gate), norm_topk_prob; MoE layers: not in mlp_only_layers and
 *                (i + 1) % decoder_sparse_step == 0.
 *   Qwen3-MoE    as Qwen2-MoE without the shared expert.
 *   OLMoE        num_experts, intermediate_size; norm_topk_prob (false by default).
 *   DeepSeek-V2  n_routed_experts, moe_intermediate_size, n_shared_experts (one FFN of width
 *                n_shared x moe_intermediate_size), topk_method greedy | group_limited_greedy (n_group,
 *                topk_group: groups ranked by their best score), softmax; MoE layers from
 *                first_k_dense_replace on, every moe_layer_freq. The routed scaling factor applies
 *                when the weights are not renormalised (norm_topk_prob false), as in DeepSeek's code.
 *   DeepSeek-V3  as V2 with scoring_func sigmoid, e_score_correction_bias, groups ranked by the sum
 *                of their two best, norm_topk_prob, and routed_scaling_factor always applied.
 * Keys with a default in transformers may be absent (that default is used); the others are errors
 * naming the file and key. */
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/model/model-impl.h"

static const struct {
    moe_hf_family_t family;
    const char *architecture, *model_type, *name;
} families[] = {
    {MOE_HF_MIXTRAL, "MixtralForCausalLM", "mixtral", "Mixtral"},
    {MOE_HF_QWEN2_MOE, "Qwen2MoeForCausalLM", "qwen2_moe", "Qwen2-MoE"},
    {MOE_HF_QWEN3_MOE, "Qwen3MoeForCausalLM", "qwen3_moe", "Qwen3-MoE"},
    {MOE_HF_OLMOE, "OlmoeForCausalLM", "olmoe", "OLMoE"},
    {MOE_HF_DEEPSEEK_V2, "DeepseekV2ForCausalLM", "deepseek_v2", "DeepSeek-V2"},
    {MOE_HF_DEEPSEEK_V3, "DeepseekV3ForCausalLM", "deepseek_v3", "DeepSeek-V3"},
};
#define N_FAMILIES (int)(sizeof families / sizeof families[0])

const char *moe_hf_family_name(moe_hf_family_t family)
{
    for (int i = 0; i < N_FAMILIES; i++)
        if (families[i].family == family) return families[i].name;
    return "unknown";
}

/* A positive integer key; absent: def (or an error when def < 0). */
static int get_int(const char *path, json_t *root, const char *key, int def, int min, int *errors)
{
    json_t *v = json_object_get(root, key);
    if (v == NULL || json_is_null(v)) {
        if (def >= 0) return def;
        moe_error("%s: missing key \"%s\"", path, key);
        ++*errors;
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > INT_MAX) {
        moe_error("%s: \"%s\" must be an integer >= %d", path, key, min);
        ++*errors;
        return 0;
    }
    return (int)json_integer_value(v);
}

static double get_number(const char *path, json_t *root, const char *key, double def, bool required,
                         int *errors)
{
    json_t *v = json_object_get(root, key);
    if (v == NULL || json_is_null(v)) {
        if (!required) return def;
        moe_error("%s: missing key \"%s\"", path, key);
        ++*errors;
        return def;
    }
    if (!json_is_number(v)) {
        moe_error("%s: \"%s\" must be a number", path, key);
        ++*errors;
        return def;
    }
    return json_number_value(v);
}

static bool get_bool(const char *path, json_t *root, const char *key, bool def, int *errors)
{
    json_t *v = json_object_get(root, key);
    if (v == NULL || json_is_null(v)) return def;
    if (!json_is_boolean(v)) {
        moe_error("%s: \"%s\" must be true or false", path, key);
        ++*errors;
        return def;
    }
    return json_is_true(v);
}

static const char *get_string(const char *path, json_t *root, const char *key, const char *def,
                              int *errors)
{
    json_t *v = json_object_get(root, key);
    if (v == NULL || json_is_null(v)) return def;
    if (!json_is_string(v)) {
        moe_error("%s: \"%s\" must be a string", path, key);
        ++*errors;
        return def;
    }
    return json_string_value(v);
}

/* The routed expert count: the family's own key, or another spelling of it (transformers 5 writes
 * num_local_experts for some families whose published files say num_experts). */
static int get_experts(const char *path, json_t *root, const char *key, int *errors)
{
    static const char *const spellings[] = {"num_experts", "num_local_experts", "n_routed_experts"};
    if (json_object_get(root, key) == NULL)
        for (size_t i = 0; i < sizeof spellings / sizeof spellings[0]; i++)
            if (json_is_integer(json_object_get(root, spellings[i])))
                return get_int(path, root, spellings[i], -1, 1, errors);
    return get_int(path, root, key, -1, 1, errors);
}

moe_status_t moe_hf_config_read(const char *path, moe_hf_config_t *out)
{
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        if (jerr.line < 0 || jerr.position == 0)
            moe_error("%s: cannot read: %s", path, jerr.text);
        else
            moe_error("%s:%d: not valid JSON: %s", path, jerr.line, jerr.text);
        return MOE_STATUS_INVALID_ARGUMENT;
    }
    int errors = 0;
    moe_hf_config_t *hf = calloc(1, sizeof *hf);
    if (!hf) {
        json_decref(root);
        moe_error("%s: out of memory", path);
        return MOE_STATUS_NO_MEMORY;
    }
    if (!json_is_object(root)) {
        moe_error("%s: not a JSON object", path);
        errors++;
        goto done;
    }

    /* The family: architectures[0] first, model_type otherwise. */
    const char *arch = NULL, *model_type = get_string(path, root, "model_type", NULL, &errors);
    json_t *archs = json_object_get(root, "architectures");
    if (json_is_array(archs) && json_array_size(archs) > 0 && json_is_string(json_array_get(archs, 0)))
        arch = json_string_value(json_array_get(archs, 0));
    int fam = -1;
    for (int i = 0; i < N_FAMILIES && fam < 0; i++)
        if ((arch && strcmp(arch, families[i].architecture) == 0) ||
            (!arch && model_type && strcmp(model_type, families[i].model_type) == 0))
            fam = i;
    if (fam < 0) {
        if (!arch && !model_type)
            moe_error("%s: missing keys \"architectures\" and \"model_type\": cannot tell the model "
                      "family", path);
        else
            moe_error("%s: architecture '%s' (model_type '%s') is not supported; moerun reads "
                      "Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-V2 and DeepSeek-V3 checkpoints",
                      path, arch ? arch : "-", model_type ? model_type : "-");
        errors++;
        goto done;
    }
    hf->family = families[fam].family;
    snprintf(hf->architecture, sizeof hf->architecture, "%s", arch ? arch : model_type);

    moe_model_config_t *m = &hf->model;
    snprintf(m->name, sizeof m->name, "%s", model_type ? model_type : families[fam].model_type);
    hf->hidden_layers = get_int(path, root, "num_hidden_layers", -1, 1, &errors);
    m->d_model = get_int(path, root, "hidden_size", -1, 1, &errors);
    m->top_k = get_int(path, root, "num_experts_per_tok", -1, 1, &errors);
    m->norm_eps = (float)get_number(path, root, "rms_norm_eps", 1e-6, true, &errors);
    m->scoring = MOE_SCORING_SOFTMAX;
    m->renormalize = true;
    m->groups = m->groups_kept = 1;
    m->routed_scaling = 1.0f;
    const char *act = get_string(path, root, "hidden_act", "silu", &errors);
    if (act && strcmp(act, "silu") != 0) {
        moe_error("%s: \"hidden_act\" is '%s'; moerun's experts are SwiGLU (silu)", path, act);
        errors++;
    }
    json_t *quant = json_object_get(root, "quantization_config");
    hf->fp8_block = 0;
    if (quant && !json_is_null(quant)) { /* DeepSeek-V3's fp8 blocks with weight_scale_inv; nothing else */
        const char *method = get_string(path, quant, "quant_method", "?", &errors);
        const char *fmt = get_string(path, quant, "fmt", "e4m3", &errors);
        json_t *block = json_object_get(quant, "weight_block_size");
        const bool fp8 = method && strcmp(method, "fp8") == 0 && fmt && strcmp(fmt, "e4m3") == 0;
        const bool square = json_is_array(block) && json_array_size(block) == 2 &&
                            json_is_integer(json_array_get(block, 0)) &&
                            json_integer_value(json_array_get(block, 0)) ==
                                json_integer_value(json_array_get(block, 1)) &&
                            json_integer_value(json_array_get(block, 0)) > 0 &&
                            json_integer_value(json_array_get(block, 0)) <= 4096;
        if (fp8 && square) {
            hf->fp8_block = (int)json_integer_value(json_array_get(block, 0));
        } else {
            moe_error("%s: \"quantization_config\": quant_method '%s'%s%s%s is not supported: only fp8 e4m3 with "
                      "square \"weight_block_size\" blocks (DeepSeek-V3's); convert the weights to bf16, fp16 or "
                      "fp32 first", path, method ? method : "?", fp8 || (method && !strcmp(method, "fp8")) ? ", fmt '" : "",
                      fp8 || (method && !strcmp(method, "fp8")) ? (fmt ? fmt : "?") : "",
                      fp8 || (method && !strcmp(method, "fp8")) ? "'" : "");
            errors++;
        }
    }
    int first_dense = 0, freq = 1, sparse_step = 1;
    json_t *mlp_only = NULL;
    switch (hf->family) {
    case MOE_HF_MIXTRAL:
        m->experts = get_experts(path, root, "num_local_experts", &errors);
        m->d_ff = get_int(path, root, "intermediate_size", -1, 1, &errors);
        break;
    case MOE_HF_QWEN2_MOE:
    case MOE_HF_QWEN3_MOE:
        m->experts = get_experts(path, root, "num_experts", &errors);
        m->d_ff = get_int(path, root, "moe_intermediate_size", -1, 1, &errors);
        m->renormalize = get_bool(path, root, "norm_topk_prob", hf->family == MOE_HF_QWEN3_MOE, &errors);
        sparse_step = get_int(path, root, "decoder_sparse_step", 1, 1, &errors);
        mlp_only = json_object_get(root, "mlp_only_layers");
        if (mlp_only && !json_is_array(mlp_only) && !json_is_null(mlp_only)) {
            moe_error("%s: \"mlp_only_layers\" must be a list of layer indices", path);
            errors++;
        }
        if (hf->family == MOE_HF_QWEN2_MOE) {
            m->shared_d_ff = get_int(path, root, "shared_expert_intermediate_size", -1, 0, &errors);
            m->shared_experts = m->shared_d_ff > 0;
            m->shared_gate = m->shared_d_ff > 0;
        }
        break;
    case MOE_HF_OLMOE:
        m->experts = get_experts(path, root, "num_experts", &errors);
        m->d_ff = get_int(path, root, "intermediate_size", -1, 1, &errors);
        m->renormalize = get_bool(path, root, "norm_topk_prob", false, &errors);
        break;
    case MOE_HF_DEEPSEEK_V2:
    case MOE_HF_DEEPSEEK_V3: {
        const bool v3 = hf->family == MOE_HF_DEEPSEEK_V3;
        m->experts = get_experts(path, root, "n_routed_experts", &errors);
        m->d_ff = get_int(path, root, "moe_intermediate_size", -1, 1, &errors);
        m->shared_experts = get_int(path, root, "n_shared_experts", 0, 0, &errors);
        m->shared_d_ff = m->shared_experts ? m->d_ff : 0;
        first_dense = get_int(path, root, "first_k_dense_replace", 0, 0, &errors);
        freq = get_int(path, root, "moe_layer_freq", 1, 1, &errors);
        m->renormalize = get_bool(path, root, "norm_topk_prob", v3, &errors);
        float scaling = (float)get_number(path, root, "routed_scaling_factor", 1.0, false, &errors);
        const char *method = get_string(path, root, "topk_method", v3 ? "noaux_tc" : "greedy", &errors);
        const char *scoring = get_string(path, root, "scoring_func", v3 ? "sigmoid" : "softmax", &errors);
        if (scoring && strcmp(scoring, v3 ? "sigmoid" : "softmax") != 0) {
            moe_error("%s: \"scoring_func\" '%s' is not the %s one (%s)", path, scoring,
                      families[fam].name, v3 ? "sigmoid" : "softmax");
            errors++;
        }
        if (v3) {
            m->scoring = MOE_SCORING_SIGMOID;
            m->score_bias = true;
            m->routed_scaling = scaling;
            if (method && strcmp(method, "noaux_tc") != 0) {
                moe_error("%s: \"topk_method\" '%s' is not supported for %s (noaux_tc)", path, method,
                          families[fam].name);
                errors++;
            }
        } else {
            /* DeepSeek-V2: the factor scales unnormalised weights only. */
            m->routed_scaling = m->renormalize ? 1.0f : scaling;
            if (method && strcmp(method, "greedy") != 0 && strcmp(method, "group_limited_greedy") != 0) {
                moe_error("%s: \"topk_method\" '%s' is not supported (greedy, group_limited_greedy)",
                          path, method);
                errors++;
            }
        }
        if (v3 || (method && strcmp(method, "group_limited_greedy") == 0)) {
            m->groups = get_int(path, root, "n_group", 1, 1, &errors);
            m->groups_kept = get_int(path, root, "topk_group", 1, 1, &errors);
        }
        break;
    }
    }
    if (errors) goto done;
    if (m->routed_scaling <= 0) {
        moe_error("%s: \"routed_scaling_factor\" must be > 0", path);
        errors++;
    }
    if (m->top_k > m->experts) {
        moe_error("%s: \"num_experts_per_tok\" (%d) exceeds the number of experts (%d)", path, m->top_k,
                  m->experts);
        errors++;
    }
    if (m->experts % m->groups != 0 || m->groups_kept > m->groups) {
        moe_error("%s: \"n_group\" (%d) must divide the experts (%d) and be >= \"topk_group\" (%d)", path,
                  m->groups, m->experts, m->groups_kept);
        errors++;
    }
    if (hf->hidden_layers > MOE_HF_MAX_LAYERS) {
        moe_error("%s: \"num_hidden_layers\" %d: at most %d supported", path, hf->hidden_layers,
                  MOE_HF_MAX_LAYERS);
        errors++;
    }
    if (errors) goto done;

    for (int i = 0; i < hf->hidden_layers; i++) {
        bool moe = true;
        if (hf->family == MOE_HF_DEEPSEEK_V2 || hf->family == MOE_HF_DEEPSEEK_V3)
            moe = i >= first_dense && i % freq == 0;
        if (hf->family == MOE_HF_QWEN2_MOE || hf->family == MOE_HF_QWEN3_MOE) {
            moe = (i + 1) % sparse_step == 0;
            for (size_t j = 0; json_is_array(mlp_only) && j < json_array_size(mlp_only); j++) {
                json_t *v = json_array_get(mlp_only, j);
                if (json_is_integer(v) && json_integer_value(v) == i) moe = false;
            }
        }
        if (moe) hf->moe_layer[hf->moe_layers++] = i;
    }
    if (hf->moe_layers == 0) {
        moe_error("%s: no layer has an MoE block (num_hidden_layers %d)", path, hf->hidden_layers);
        errors++;
    }
    m->layers = hf->moe_layers;

done:
    json_decref(root);
    if (errors == 0) *out = *hf;
    free(hf);
    return errors ? MOE_STATUS_INVALID_ARGUMENT : MOE_STATUS_OK;
}

moe_status_t moe_config_from_hf(const char *config_json, moe_config_t *config)
{
    moe_hf_config_t *hf = malloc(sizeof *hf);
    if (!hf) {
        moe_error("%s: out of memory", config_json);
        return MOE_STATUS_NO_MEMORY;
    }
    moe_status_t status = moe_hf_config_read(config_json, hf);
    if (status != MOE_STATUS_OK) {
        free(hf);
        return status;
    }
    /* The checkpoint directory: the folder of config.json, absolute. */
    char dir[MOE_PATH_MAX], abs_dir[PATH_MAX];
    const char *slash = strrchr(config_json, '/');
    snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - config_json) : 1,
             slash ? config_json : ".");
    if (dir[0] == '\0') snprintf(dir, sizeof dir, "/");
    if (realpath(dir, abs_dir) == NULL) {
        moe_error("%s: cannot resolve the folder: %s", dir, strerror(errno));
        free(hf);
        return MOE_STATUS_IO_ERROR;
    }
    moe_config_defaults(config);
    config->model = hf->model;
    config->weights.kind = MOE_WEIGHTS_CHECKPOINT;
    snprintf(config->weights.checkpoint, sizeof config->weights.checkpoint, "%s", abs_dir);
    if (hf->moe_layers < hf->hidden_layers)
        moe_info("%s: %d of %d layers have an MoE block (the others are dense and skipped)",
                 config_json, hf->moe_layers, hf->hidden_layers);
    free(hf);
    return MOE_STATUS_OK;
}
