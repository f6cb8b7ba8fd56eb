#!/usr/bin/env python3
"""make_synthetic_trace.py: a seeded synthetic routing trace (.npy, uint8 or int16 ids [L, T, k]) for
placement benchmarks at scales where no real trace is at hand (DeepSeek-V3: 58 MoE layers, 256
experts, top-8).

Routing model: each layer has its own Zipf-like expert popularity (exponent --skew, a per-layer random
permutation of the ranks) and experts fall into groups of --group experts that tokens tend to pick
together (with probability --affinity a choice is drawn from the group of the token's first expert):
skewed loads and co-activation, as in real models. Pure Python, no NumPy; deterministic for a seed.

usage: make_synthetic_trace.py OUT.npy [--layers 58] [--experts 256] [--top-k 8] [--tokens 4096]
                               [--skew 0.8] [--group 8] [--affinity 0.5] [--seed 1]
"""
import argparse
import bisect
import random
import struct


def write_npy(path, data, shape, dtype):
    descr = {"u1": "|u1", "i2": "<i2"}[dtype]
    header = "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }" % (
        descr, ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else ""))
    pad = 64 - (10 + len(header) + 1) % 64
    header = header + " " * pad + "\n"
    with open(path + ".tmp", "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin1"))
        if dtype == "u1":
            f.write(bytes(data))
        else:
            f.write(struct.pack("<%dh" % len(data), *data))
    import os
    os.replace(path + ".tmp", path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=58)
    ap.add_argument("--experts", type=int, default=256)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--skew", type=float, default=0.8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--affinity", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    E, K = a.experts, a.top_k
    data = []
    for layer in range(a.layers):
        perm = list(range(E))
        rng.shuffle(perm)
        weight = [0.0] * E
        for rank, e in enumerate(perm):
            weight[e] = 1.0 / (rank + 1) ** a.skew
        cum = []
        s = 0.0
        for e in range(E):
            s += weight[e]
            cum.append(s)
        groups = list(range(E))
        rng.shuffle(groups)
        group_of = [0] * E
        members = [groups[i:i + a.group] for i in range(0, E, a.group)]
        for g, m in enumerate(members):
            for e in m:
                group_of[e] = g
        for _ in range(a.tokens):
            chosen = []
            while len(chosen) < K:
                if chosen and rng.random() < a.affinity:
                    m = members[group_of[chosen[0]]]
                    e = m[rng.randrange(len(m))]
                else:
                    e = bisect.bisect_left(cum, rng.random() * s)
                    e = min(e, E - 1)
                if e not in chosen:
                    chosen.append(e)
            data.extend(chosen)
    write_npy(a.out, data, (a.layers, a.tokens, K), "u1" if E <= 256 else "i2")


if __name__ == "__main__":
    main()
