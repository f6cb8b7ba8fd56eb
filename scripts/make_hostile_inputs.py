#!/usr/bin/env python3
"""make_hostile_inputs.py: the small files of tests/cli/limits.sh, each one a hole issue 17 found.

    python3 scripts/make_hostile_inputs.py [OUT_DIR]   (default: tests/data/hostile)

Standard library only. Small files that ask for huge allocations (amplifiers), and files that are
wrong in ways that used to be accepted (NaN weights, repeated keys).
"""
import json
import os
import struct
import sys


def npy(path, descr, shape, values, fmt):
    """A version 1.0 .npy file, as np.save writes it."""
    dims = ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "")
    header = "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }" % (descr, dims)
    pad = 64 - (10 + len(header) + 1) % 64
    header = header + " " * pad + "\n"
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode())
        f.write(struct.pack("<%d%s" % (len(values), fmt), *values))


def safetensors(path, tensors, metadata):
    header, blob = {"__metadata__": metadata}, b""
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(blob), len(blob) + len(data)]}
        blob += data
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + blob)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/data/hostile"
    os.makedirs(out, exist_ok=True)
    p = lambda name: os.path.join(out, name)

    # a trace [1, 1, 2] whose largest id is 10000: E x E statistics of 10001 experts
    npy(p("trace_id_10000.npy"), "<i8", (1, 1, 2), [3, 10000], "q")
    # ids of 2^31 - 1: id + 1 overflowed an int
    npy(p("trace_id_int_max.npy"), "<i4", (2, 2, 2), [0, 1, 2, 3, 4, 5, 6, 2**31 - 1], "i")
    # tiny's shape [4 layers, 64 tokens, top-2]: ids fine, weights with a NaN, an inf, a negative
    ids = []
    for l in range(4):
        for t in range(64):
            e0 = (t * 3 + l) % 8
            ids += [e0, (e0 + 1 + t % 3) % 8]  # two different experts per token
    npy(p("trace_tiny_ids.npy"), "<i4", (4, 64, 2), ids, "i")
    weights = [0.5] * (4 * 64 * 2)
    for name, bad, at in (("nan", float("nan"), 2 * 64 * 2 + 17 * 2 + 1), ("inf", float("inf"), 5),
                          ("negative", -0.25, 3 * 64 * 2 + 63 * 2)):
        w = list(weights)
        w[at] = bad
        npy(p("weights_%s.npy" % name), "<f4", (4, 64, 2), w, "f")
    # inputs [128, 64] with an inf at token 100, element 7
    x = [0.01 * ((i * 7) % 13) for i in range(128 * 64)]
    x[100 * 64 + 7] = float("inf")
    npy(p("input_inf.npy"), "<f4", (128, 64), x, "f")

    # statistics whose metadata says 20000 experts, with tensors of 2
    small = lambda *shape: ("I64", list(shape), b"\0" * (8 * eval("*".join(str(s) for s in shape))))
    safetensors(p("stats_20000_experts.safetensors"),
                {"loads": small(1, 2), "coactivation": small(1, 2, 2), "transitions": small(0, 2, 2)},
                {"format": "moerun-stats-1", "model": "x", "layers": "1", "experts": "20000", "top_k": "1",
                 "tokens": "1"})
    # statistics of [4, 8] with loads of the wrong shape [4, 80]
    safetensors(p("stats_wrong_loads.safetensors"),
                {"loads": small(4, 80), "coactivation": small(4, 8, 8), "transitions": small(3, 8, 8)},
                {"format": "moerun-stats-1", "model": "x", "layers": "4", "experts": "8", "top_k": "2",
                 "tokens": "1"})

    # plans: tables of layers x experts x ranks that the file cannot fill
    with open(p("plan_huge_table.yaml"), "w") as f:
        f.write("format: 1\nlayers: 4096\nexperts: 65536\nranks: 1\nranks_per_node: 1\nplacement: []\n")
    # aliases: each level repeats the one below ten times (10^6 nodes from a few hundred bytes)
    with open(p("plan_aliases.yaml"), "w") as f:
        f.write("format: 1\nlayers: 1\nexperts: 2\nranks: 1\nranks_per_node: 1\npredicted:\n")
        f.write("  a0: &a0 [0, 1, 0, 1, 0, 1, 0, 1, 0, 1]\n")
        for i in range(1, 7):
            f.write("  a%d: &a%d [%s]\n" % (i, i, ", ".join(["*a%d" % (i - 1)] * 10)))
        f.write("placement:\n  - layer: 0\n    ranks:\n      - {rank: 0, experts: [0, 1]}\n")
    # repeated keys: the first used to win
    with open(p("plan_duplicate_key.yaml"), "w") as f:
        f.write("format: 1\nlayers: 1\nexperts: 2\nranks: 1\nranks_per_node: 1\nexperts: 4\n"
                "placement:\n  - layer: 0\n    ranks:\n      - {rank: 0, experts: [0, 1]}\n")
    with open(p("plan_duplicate_inner_key.yaml"), "w") as f:
        f.write("format: 1\nlayers: 1\nexperts: 2\nranks: 2\nranks_per_node: 1\n"
                "placement:\n  - layer: 0\n    ranks:\n      - {rank: 0, experts: [0, 1], rank: 1}\n")
    # (the large text amplifiers, a 400 KB deep YAML and wide CSVs, are made by limits.sh itself)

if __name__ == "__main__":
    main()
