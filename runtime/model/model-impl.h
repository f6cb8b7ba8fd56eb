/* model-impl.h: declarations private to runtime/model/ (no other module includes this). */
#ifndef MOE_RUNTIME_MODEL_IMPL_H
#define MOE_RUNTIME_MODEL_IMPL_H

#include "comm/comm.h"
#include "runtime/model/model.h"

/* ---------------------------------------------------------------- model (model.c) */

/* Tensor ids of the seeded rule (moe_seed_rule_t.tensor). */
enum {
    MOE_TENSOR_NORM = 1,
    MOE_TENSOR_ROUTER,
    MOE_TENSOR_BIAS,
    MOE_TENSOR_SHARED_GATE_UP,
    MOE_TENSOR_SHARED_DOWN,
    MOE_TENSOR_GATE_UP,
    MOE_TENSOR_DOWN,
    MOE_TENSOR_INPUT,
    MOE_TENSOR_SYNTH_ORDER,
    MOE_TENSOR_SYNTH_NEXT,
    MOE_TENSOR_SYNTH_PICK,
    MOE_TENSOR_SYNTH_WEIGHT,
    MOE_TENSOR_SHARED_GATE,
};

/* ---------------------------------------------------------------- checkpoints (checkpoint.c, hf_config.c) */

typedef enum {
    MOE_HF_MIXTRAL = 0,
    MOE_HF_QWEN2_MOE,
    MOE_HF_QWEN3_MOE,
    MOE_HF_OLMOE,
    MOE_HF_DEEPSEEK_V2,
    MOE_HF_DEEPSEEK_V3,
} moe_hf_family_t;

#define MOE_HF_MAX_LAYERS 1024

/* What moerun takes from a checkpoint's config.json. */
typedef struct {
    moe_hf_family_t family;
    char architecture[MOE_NAME_MAX]; /* architectures[0], or model_type */
    moe_model_config_t model;        /* the model settings it implies (name: the model_type) */
    int hidden_layers;               /* num_hidden_layers */
    int moe_layers;                  /* layers with an MoE block ... */
    int fp8_block;                   /* quantization_config fp8 weight_block_size (0: not quantised) */
    int moe_layer[MOE_HF_MAX_LAYERS]; /* ... and their indices in the checkpoint */
} moe_hf_config_t;

/* Parse DIR/config.json. Errors name the file and the key. */
moe_status_t moe_hf_config_read(const char *config_json, moe_hf_config_t *out);
const char *moe_hf_family_name(moe_hf_family_t family);

/* Fill w (laid out for this rank: norms, routers, biases, shared experts, shared gates, and the
 * experts the plan gives this rank) from weights.checkpoint, reading only those tensors (an expert's
 * slice of a fused per-layer tensor) and writing them through w's store, converted where they land.
 * Checks the model settings against config.json and every tensor's name, shape and dtype (F32, BF16,
 * F16, and FP8 e4m3 with block scales as DeepSeek-V3 publishes); errors name the file and tensor. */
moe_status_t moe_checkpoint_load(const moe_config_t *config, const moe_plan_h plan, int rank,
                                 moe_watch_h watch, moe_weights_t *w);

#endif
