#!/usr/bin/env python3
"""make_bad_checkpoints.py: the corrupt-checkpoint corpus of tests/runtime/bad_checkpoints.sh.

    python3 scripts/make_bad_checkpoints.py [OUT_DIR]   (default: tests/data/bad_checkpoints)

Standard library only. `good/` is a valid tiny OLMoE checkpoint (1 MoE layer, d 8, f 4, 4 experts,
top-2); every other folder is a copy with one defect, and its expect.txt lists the substrings that
moerun's error must contain (the file and the tensor or key), one per line.
"""
import json
import os
import random
import shutil
import struct
import sys

D, F, E = 8, 4, 4


def tensors():
    rnd = random.Random(7)
    t = {}
    def add(name, shape, value=None):
        n = 1
        for s in shape:
            n *= s
        t[name] = ("F32", list(shape), [value if value is not None else rnd.uniform(-0.5, 0.5) for _ in range(n)])
    add("model.layers.0.post_attention_layernorm.weight", [D], 1.0)
    add("model.layers.0.mlp.gate.weight", [E, D])
    for e in range(E):
        add(f"model.layers.0.mlp.experts.{e}.gate_proj.weight", [F, D])
        add(f"model.layers.0.mlp.experts.{e}.up_proj.weight", [F, D])
        add(f"model.layers.0.mlp.experts.{e}.down_proj.weight", [D, F])
    return t


def encode(t, fix=None):
    """safetensors bytes; fix(header) may edit the header before it is written."""
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name, (dtype, shape, values) in t.items():
        if dtype == "F32":
            data = struct.pack(f"<{len(values)}f", *values)
        elif dtype == "F8_E4M3":  # every value 1.0 (0x38): the defects here are not in the values
            data = bytes([0x38] * len(values))
        else:  # I32
            data = struct.pack(f"<{len(values)}i", *[int(v * 100) for v in values])
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    if fix:
        fix(header)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


CONFIG = {"architectures": ["OlmoeForCausalLM"], "model_type": "olmoe", "hidden_size": D,
          "intermediate_size": F, "num_experts": E, "num_experts_per_tok": 2, "num_hidden_layers": 1,
          "norm_topk_prob": False, "rms_norm_eps": 1e-5, "hidden_act": "silu"}


def case(out, name, expect, config=CONFIG, files=None):
    path = os.path.join(out, name)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    if config is not None:
        with open(os.path.join(path, "config.json"), "w") as fp:
            json.dump(config, fp, indent=2)
    for fname, data in (files if files is not None else {"model.safetensors": encode(tensors())}).items():
        with open(os.path.join(path, fname), "wb" if isinstance(data, bytes) else "w") as fp:
            fp.write(data)
    with open(os.path.join(path, "expect.txt"), "w") as fp:
        fp.write("\n".join(expect) + "\n")


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "data", "bad_checkpoints")
    os.makedirs(out, exist_ok=True)
    case(out, "good", [])
    up1 = "model.layers.0.mlp.experts.1.up_proj.weight"
    router = "model.layers.0.mlp.gate.weight"

    t = tensors(); del t[up1]
    case(out, "missing_tensor", ["model.safetensors", up1], files={"model.safetensors": encode(t)})

    t = tensors(); t[router] = ("F32", [E, D + 1], t[router][2] + [0.0] * E)
    case(out, "wrong_shape", ["model.safetensors", router, "[4, 9]"], files={"model.safetensors": encode(t)})

    t = tensors(); t[router] = ("I32",) + t[router][1:]
    case(out, "wrong_dtype", ["model.safetensors", router, "I32"], files={"model.safetensors": encode(t)})

    data = encode(tensors())
    case(out, "truncated", ["model.safetensors", "model.layers.0.mlp.experts.3.down_proj.weight", "past the end"],
         files={"model.safetensors": data[: len(data) - 64]})

    def lie_size(h):  # the entry claims more bytes than dtype x shape
        b, e = h[router]["data_offsets"]; h[router]["data_offsets"] = [b, e + 4]
    case(out, "header_wrong_size", ["model.safetensors", router, "data_offsets"],
         files={"model.safetensors": encode(tensors(), lie_size)})

    def lie_overlap(h):  # the router's bytes moved onto the norm's
        n = (E * D) * 4; h[router]["data_offsets"] = [0, n]
    case(out, "header_overlap", ["model.safetensors", router, "overlap"],
         files={"model.safetensors": encode(tensors(), lie_overlap)})

    def lie_past_end(h):
        h[up1]["data_offsets"] = [10 ** 7, 10 ** 7 + F * D * 4]
    case(out, "header_past_end", ["model.safetensors", up1, "past the end"],
         files={"model.safetensors": encode(tensors(), lie_past_end)})

    data = bytearray(encode(tensors())); data[0:8] = struct.pack("<Q", 1 << 40)
    case(out, "header_length_lies", ["model.safetensors", "header length"], files={"model.safetensors": bytes(data)})

    case(out, "unsupported_architecture", ["config.json", "LlamaForCausalLM", "not supported"],
         config=dict(CONFIG, architectures=["LlamaForCausalLM"], model_type="llama"))

    case(out, "config_missing_key", ["config.json", "hidden_size"],
         config={k: v for k, v in CONFIG.items() if k != "hidden_size"})

    case(out, "no_config", ["config.json"], config=None)

    t = tensors()
    index = {"metadata": {}, "weight_map": {n: "model-00001-of-00001.safetensors" for n in t if n != up1}}
    case(out, "index_missing_tensor", ["model.safetensors.index.json", up1],
         files={"model-00001-of-00001.safetensors": encode(t), "model.safetensors.index.json": json.dumps(index)})

    index = {"metadata": {}, "weight_map": {n: "model-00001-of-00001.safetensors" for n in t}}
    index["weight_map"][up1] = "model-00002-of-00002.safetensors"
    case(out, "index_missing_shard", ["model-00002-of-00002.safetensors"],
         files={"model-00001-of-00001.safetensors": encode(t), "model.safetensors.index.json": json.dumps(index)})

    case(out, "quantized", ["config.json", "quantization_config", "gptq"],
         config=dict(CONFIG, quantization_config={"quant_method": "gptq", "bits": 4}))

    fp8_config = dict(CONFIG, quantization_config={"quant_method": "fp8", "fmt": "e4m3",
                                                   "weight_block_size": [128, 128]})
    case(out, "fp8_e5m2", ["config.json", "quantization_config", "e5m2"],
         config=dict(CONFIG, quantization_config={"quant_method": "fp8", "fmt": "e5m2",
                                                  "weight_block_size": [128, 128]}))

    t = tensors(); t[up1] = ("F8_E4M3",) + t[up1][1:]
    case(out, "fp8_missing_scale", ["model.safetensors", up1 + "_scale_inv"], config=fp8_config,
         files={"model.safetensors": encode(t)})

    t = tensors(); t[up1] = ("F8_E4M3",) + t[up1][1:]; t[up1 + "_scale_inv"] = ("F32", [2, 2], [1.0] * 4)
    case(out, "fp8_bad_scale", ["model.safetensors", up1 + "_scale_inv", "[1, 1]"], config=fp8_config,
         files={"model.safetensors": encode(t)})

    t = tensors(); t[up1] = ("F8_E4M3",) + t[up1][1:]; t[up1 + "_scale_inv"] = ("F32", [1, 1], [1.0])
    case(out, "fp8_without_quantization_config", ["model.safetensors", up1, "quantization_config"],
         files={"model.safetensors": encode(t)})

    case(out, "wrong_expert_width", ["config.json", "model.d_ff"], config=dict(CONFIG, intermediate_size=F + 1))


if __name__ == "__main__":
    main()
