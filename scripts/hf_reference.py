#!/usr/bin/env python3
"""hf_reference.py: tiny Hugging Face MoE checkpoints and transformers' outputs, the fixtures that
tests/runtime/checkpoint_vs_hf.sh checks moerun against (tests/data/hf/<case>/).

    python3 scripts/hf_reference.py [OUT_DIR [CASE]]   (default: tests/data/hf next to this script;
                                                        CASE: write that fixture only)

Needs torch, transformers (5.x; the families below) and safetensors; downloads nothing: each model
is built from a config in code with seeded random weights. For each case it writes
  config.json, model.safetensors (or shards + model.safetensors.index.json)  save_pretrained
  input.npy     [T, d] float32 hidden states
  expected.npy  [T, d] float32: x <- x + MoE_l(RMSNorm_l(x)) over the model's MoE layers, using the
                decoder layer's own post_attention_layernorm and mlp (the sparse MoE block), fp32
  fixture.txt   shell variables for the test: layers, experts, expert_bytes (one expert's three
                projections on disk, per layer), common_bytes (norms, routers, biases, shared experts
                and gates of the MoE layers on disk): what each rank must read.
Weights stored in bf16 or fp16 are what the fp32 reference runs with (upcast), so the numbers agree
exactly up to arithmetic order. Tokens whose routing is a near-tie (top-k or group choice decided by
less than 1e-3) are left out, so that summation order cannot flip a choice on another machine.
"""
import json
import math
import os
import shutil
import sys

import numpy as np
import torch
import transformers
from safetensors.torch import save_file

TOKENS = 64
MARGIN = 1e-3


def init_weights(model, seed, bias_name=None):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # norms
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.05 * torch.randn(b.shape, generator=g))


def moe_layers(model):
    """(decoder layer index, layer) of the layers whose mlp is the sparse MoE block."""
    out = []
    for i, layer in enumerate(model.model.layers):
        if hasattr(layer.mlp, "gate") and hasattr(layer.mlp, "experts"):
            out.append((i, layer))
    return out


def routing_margin(mlp, h, family):
    """Per token, the smallest gap that decides its routing (top-k and group choice)."""
    gate = mlp.gate
    logits = torch.nn.functional.linear(h.float(), gate.weight.float())
    if family == "deepseek_v3":
        scores = logits.sigmoid() + gate.e_score_correction_bias
    else:
        scores = logits.softmax(dim=-1)
    k = gate.top_k
    margins = torch.full((h.shape[0],), float("inf"))
    grouped = family == "deepseek_v3" or getattr(gate, "topk_method", "") == "group_limited_greedy"
    groups = gate.num_group if grouped else 1
    E = scores.shape[-1]
    if groups > 1:
        per = E // groups
        gs = scores.view(-1, groups, per)
        gscore = gs.topk(2, dim=-1)[0].sum(-1) if family == "deepseek_v3" else gs.max(-1).values
        kept = gate.topk_group
        srt = gscore.sort(dim=-1, descending=True).values
        margins = torch.minimum(margins, srt[:, kept - 1] - srt[:, kept])
        idx = gscore.topk(kept, dim=-1)[1]
        mask = torch.zeros_like(gscore).scatter_(1, idx, 1).bool()
        scores = scores.masked_fill(~mask.unsqueeze(-1).expand(-1, groups, per).reshape(-1, E), -1e9)
    srt = scores.sort(dim=-1, descending=True).values
    if k < E:
        margins = torch.minimum(margins, srt[:, k - 1] - srt[:, k])
    return margins


def reference(model, x, family):
    """x [T, d] -> (output, per-token routing margin) through the MoE layers."""
    margin = torch.full((x.shape[0],), float("inf"))
    with torch.no_grad():
        for _, layer in moe_layers(model):
            h = layer.post_attention_layernorm(x.unsqueeze(0))
            margin = torch.minimum(margin, routing_margin(layer.mlp, h[0], family))
            x = x + layer.mlp(h)[0]
    return x, margin


def disk_bytes(ckpt_dir):
    """name -> bytes of each tensor in the checkpoint's safetensors files."""
    sizes = {}
    for f in sorted(os.listdir(ckpt_dir)):
        if not f.endswith(".safetensors"):
            continue
        with open(os.path.join(ckpt_dir, f), "rb") as fp:
            n = int.from_bytes(fp.read(8), "little")
            header = json.loads(fp.read(n))
        for name, e in header.items():
            if name != "__metadata__":
                sizes[name] = e["data_offsets"][1] - e["data_offsets"][0]
    return sizes


def write_case(out, name, model, family, dtype=torch.float32, shard=None, fused=False, seed=0):
    d = model.config.hidden_size
    path = os.path.join(out, name)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    model.eval()
    if dtype != torch.float32:  # store in dtype; the reference runs on the same values in fp32
        model = model.to(dtype)
    if fused:
        # The fused per-layer expert tensors of the in-memory model (mlp.experts.gate_up_proj
        # [E, 2f, d], mlp.experts.down_proj [E, d, f]), as transformers 5 holds them.
        model.config.save_pretrained(path)
        state = {k: v.contiguous() for k, v in model.state_dict().items() if "rotary" not in k and k != "lm_head.weight"}
        save_file(state, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    elif shard:
        model.save_pretrained(path, max_shard_size=shard)
    else:
        model.save_pretrained(path)
    model = model.to(torch.float32)

    g = torch.Generator().manual_seed(1000 + seed)
    cand = torch.randn((4 * TOKENS, d), generator=g)
    y, margin = reference(model, cand, family)
    keep = (margin > MARGIN).nonzero().flatten()[:TOKENS]
    if keep.numel() < TOKENS:
        raise SystemExit(f"{name}: only {keep.numel()} tokens with a routing margin > {MARGIN}")
    x, y = cand[keep].contiguous(), y[keep].contiguous()
    np.save(os.path.join(path, "input.npy"), x.numpy().astype(np.float32))
    np.save(os.path.join(path, "expected.npy"), y.numpy().astype(np.float32))

    sizes = disk_bytes(path)
    layers = moe_layers(model)
    E = model.config.num_local_experts if hasattr(model.config, "num_local_experts") else None
    E = E or getattr(model.config, "num_experts", None) or model.config.n_routed_experts
    expert_bytes, common = None, 0
    for i, _ in layers:
        per_layer = 0
        for tname, b in sizes.items():
            if not tname.startswith(f"model.layers.{i}."):
                continue
            rest = tname[len(f"model.layers.{i}."):]
            if ".experts." in rest:
                per_layer += b
            elif rest.startswith(("post_attention_layernorm.", "mlp.gate.", "block_sparse_moe.gate.",
                                  "mlp.shared_expert")):
                common += b
        assert per_layer % E == 0
        expert_bytes = per_layer // E
    with open(os.path.join(path, "fixture.txt"), "w") as fp:
        fp.write(f"# {name}: transformers {transformers.__version__}, torch {torch.__version__}\n")
        fp.write(f"family={family}\nlayers={len(layers)}\nexperts={E}\ntokens={TOKENS}\n")
        fp.write(f"expert_bytes={expert_bytes}\ncommon_bytes={common}\n")
    print(f"{name}: {len(layers)} MoE layers of {len(model.model.layers)}, {E} experts, "
          f"{sum(sizes.values())} bytes of tensors")


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "data", "hf")
    only = sys.argv[2] if len(sys.argv) > 2 else None  # a case name: build that one (and what it needs) only
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    T = transformers
    common = dict(vocab_size=16, hidden_size=32, num_attention_heads=2, num_key_value_heads=1,
                  max_position_embeddings=64, tie_word_embeddings=True)

    cfg = T.MixtralConfig(**common, intermediate_size=32, num_hidden_layers=3, num_local_experts=8,
                          num_experts_per_tok=2, rms_norm_eps=1e-5)
    model = T.MixtralForCausalLM(cfg)
    init_weights(model, 1)
    if only in (None, "mixtral"):
        write_case(out, "mixtral", model, "mixtral", seed=1)
    if only in (None, "mixtral_fused"):
        write_case(out, "mixtral_fused", model, "mixtral", fused=True, seed=1)

    cfg = T.Qwen2MoeConfig(**common, intermediate_size=48, moe_intermediate_size=24,
                           shared_expert_intermediate_size=40, num_hidden_layers=3, num_experts=8,
                           num_experts_per_tok=2, norm_topk_prob=False, rms_norm_eps=1e-6)
    model = T.Qwen2MoeForCausalLM(cfg)
    init_weights(model, 2)
    if only in (None, "qwen2_moe"):
        write_case(out, "qwen2_moe", model, "qwen2_moe", shard="60KB", seed=2)

    cfg = T.Qwen3MoeConfig(**common, head_dim=16, intermediate_size=48, moe_intermediate_size=24,
                           num_hidden_layers=2, num_experts=8, num_experts_per_tok=3,
                           norm_topk_prob=True, rms_norm_eps=1e-6)
    model = T.Qwen3MoeForCausalLM(cfg)
    init_weights(model, 3)
    if only in (None, "qwen3_moe_bf16"):
        write_case(out, "qwen3_moe_bf16", model, "qwen3_moe", dtype=torch.bfloat16, seed=3)

    cfg = T.OlmoeConfig(**common, intermediate_size=24, num_hidden_layers=2, num_experts=8,
                        num_experts_per_tok=2, norm_topk_prob=False, rms_norm_eps=1e-5)
    model = T.OlmoeForCausalLM(cfg)
    init_weights(model, 4)
    if only in (None, "olmoe_fp16"):
        write_case(out, "olmoe_fp16", model, "olmoe", dtype=torch.float16, seed=4)

    mla = dict(kv_lora_rank=8, q_lora_rank=None, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=4)
    cfg = T.DeepseekV2Config(**common, **mla, intermediate_size=48, moe_intermediate_size=16,
                             num_hidden_layers=3, first_k_dense_replace=1, n_routed_experts=8,
                             n_shared_experts=2, num_experts_per_tok=2, topk_method="group_limited_greedy",
                             n_group=4, topk_group=2, routed_scaling_factor=1.5, norm_topk_prob=False,
                             rms_norm_eps=1e-6)
    model = T.DeepseekV2ForCausalLM(cfg)
    init_weights(model, 5)
    if only in (None, "deepseek_v2"):
        write_case(out, "deepseek_v2", model, "deepseek_v2", seed=5)

    cfg = T.DeepseekV3Config(**common, **mla, intermediate_size=48, moe_intermediate_size=16,
                             num_hidden_layers=3, first_k_dense_replace=1, n_routed_experts=8,
                             n_shared_experts=1, num_experts_per_tok=3, n_group=4, topk_group=2,
                             routed_scaling_factor=2.5, norm_topk_prob=True, rms_norm_eps=1e-6)
    model = T.DeepseekV3ForCausalLM(cfg)
    init_weights(model, 6)
    if only in (None, "deepseek_v3"):
        write_case(out, "deepseek_v3", model, "deepseek_v3", seed=6)
    if only in (None, "deepseek_v3_fp8"):
        write_fp8_case(out, "deepseek_v3_fp8", model, "deepseek_v3", block=12, seed=7)


FP8_MAX = 448.0  # the largest float8 e4m3fn value
FP8_PATTERNS = (".mlp.experts.", ".mlp.shared_experts.")


def quantize_fp8(w, block):
    """w [r, c] -> (q float8_e4m3fn [r, c], scale_inv f32 [ceil(r/b), ceil(c/b)]): per b x b block,
    scale = amax / 448 and q = w / scale, as DeepSeek-V3's checkpoints are made."""
    r, c = w.shape
    br, bc = -(-r // block), -(-c // block)
    padded = torch.zeros(br * block, bc * block)
    padded[:r, :c] = w
    blocks = padded.view(br, block, bc, block)
    scale = blocks.abs().amax(dim=(1, 3)).clamp(min=1e-12) / FP8_MAX
    q = (blocks / scale[:, None, :, None]).view(br * block, bc * block)[:r, :c].to(torch.float8_e4m3fn)
    return q.contiguous(), scale.float().contiguous()


def dequantize_fp8(q, scale, block):
    r, c = q.shape
    s = scale.repeat_interleave(block, 0)[:r].repeat_interleave(block, 1)[:, :c]
    return q.float() * s


def write_fp8_case(out, name, model, family, block, seed):
    """DeepSeek-V3's published form: the routed and shared experts' projections stored as float8
    e4m3 with a float32 `<name>_scale_inv` per block x block tile (quantization_config fp8,
    weight_block_size), the rest as it was. The expected output runs on the dequantized weights
    (q x scale_inv, exactly what a loader must compute), so a loader that dequantizes right matches
    it to arithmetic order. block 12 leaves partial blocks at the matrices' edges on purpose. The
    tensors are quantized as saved (one per expert and projection), whatever form the in-memory
    model keeps its experts in."""
    from safetensors.torch import load_file
    path = os.path.join(out, name)
    st = os.path.join(path, "model.safetensors")
    write_case(out, name, model.to(torch.float32), family, seed=seed)  # per-expert fp32 tensors on disk
    tensors = load_file(st)
    quant, scales = {}, {}
    for tname, t in tensors.items():
        if t.dim() == 2 and tname.endswith(".weight") and any(p in tname for p in FP8_PATTERNS):
            q, s = quantize_fp8(t.float(), block)
            quant[tname], scales[tname + "_scale_inv"] = q, s
            tensors[tname] = dequantize_fp8(q, s, block)
    if not any(".mlp.experts." in t for t in quant):
        raise SystemExit(f"{name}: no routed expert tensor was quantized")
    save_file(tensors, st, metadata={"format": "pt"})
    try:
        dequantized = type(model).from_pretrained(path, dtype=torch.float32)
    except TypeError:
        dequantized = type(model).from_pretrained(path, torch_dtype=torch.float32)
    write_case(out, name, dequantized, family, seed=seed)  # the reference on the dequantized weights
    tensors = load_file(st)
    tensors.update(quant)
    tensors.update(scales)
    save_file(tensors, st, metadata={"format": "pt"})
    with open(os.path.join(path, "config.json")) as fp:
        cfg = json.load(fp)
    cfg["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                  "weight_block_size": [block, block]}
    with open(os.path.join(path, "config.json"), "w") as fp:
        json.dump(cfg, fp, indent=2)
    # what each rank reads changed with the dtypes: recount from the rewritten file
    sizes = disk_bytes(path)
    layers = [i for i, _ in moe_layers(model)]
    E = model.config.n_routed_experts
    expert_bytes = sum(b for t, b in sizes.items() if f"model.layers.{layers[-1]}.mlp.experts." in t) // E
    common = sum(b for t, b in sizes.items() for i in layers
                 if t.startswith((f"model.layers.{i}.post_attention_layernorm.", f"model.layers.{i}.mlp.gate.",
                                  f"model.layers.{i}.mlp.shared_expert")))
    with open(os.path.join(path, "fixture.txt"), "w") as fp:
        fp.write(f"# {name}: transformers {transformers.__version__}, torch {torch.__version__}; "
                 f"fp8 e4m3 experts in {block}x{block} blocks\n")
        fp.write(f"family={family}\nlayers={len(layers)}\nexperts={E}\ntokens={TOKENS}\n")
        fp.write(f"expert_bytes={expert_bytes}\ncommon_bytes={common}\n")
    print(f"{name}: {len(quant)} fp8 tensors, {sum(sizes.values())} bytes of tensors")


if __name__ == "__main__":
    main()
