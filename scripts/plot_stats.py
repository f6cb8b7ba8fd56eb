#!/usr/bin/env python3
"""plot_stats.py: a picture of routing statistics (`moerun stats -o S.safetensors`, or `moerun infer
--stats S.safetensors`; tensors loads [L][E], coactivation [L][E][E], transitions [L-1][E][E]).

  plot_stats.py S.safetensors -o OUT.png [--layer N] [--title T]

Left panel: each expert's load per layer as a heatmap, divided by the layer's mean (1 = its fair
share; the colour scale is logarithmic, so that both hot and idle experts show). Right panel: the
co-activation matrix of one layer (--layer, default the layer whose loads are most uneven): how
often a token picks experts a and b together, divided by what independent picks at those loads
would give (loads[a] loads[b] (k-1) / (k T)); above 1, tokens pick the pair together more than
chance, which placement can exploit by putting them on one rank.

numpy and matplotlib (Agg backend); the safetensors file is read with the standard library (its
header is JSON), its tensors checked against the header. The PNG is written to a temporary beside
OUT and renamed. Exit status: 0 written, 1 bad input or write error, 2 usage, 3 a module missing."""
import argparse
import json
import struct
import sys

from plotting import save_png  # scripts/plotting.py, beside this script


class InputError(Exception):
    pass


def read_stats(path, np):
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise InputError(f"{path}: {e.strerror}")
    if len(raw) < 8:
        raise InputError(f"{path}: too short for a safetensors file")
    n = struct.unpack("<Q", raw[:8])[0]
    if n > len(raw) - 8:
        raise InputError(f"{path}: header length {n} runs past the end")
    try:
        header = json.loads(raw[8:8 + n])
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: header is not JSON: {e}")
    meta = header.get("__metadata__", {})
    out = {}
    for name in ("loads", "coactivation"):
        t = header.get(name)
        if not t or t.get("dtype") != "I64":
            raise InputError(f"{path}: no I64 tensor '{name}' (a moerun statistics file?)")
        a, b = t["data_offsets"]
        count = 1
        for d in t["shape"]:
            count *= d
        if b - a != 8 * count or 8 + n + b > len(raw):
            raise InputError(f"{path}: tensor '{name}': offsets {a}..{b} do not hold shape {t['shape']}")
        out[name] = np.frombuffer(raw, dtype="<i8", count=count, offset=8 + n + a).reshape(t["shape"])
    L, E = out["loads"].shape
    if out["coactivation"].shape != (L, E, E):
        raise InputError(f"{path}: coactivation {out['coactivation'].shape}, loads {out['loads'].shape}")
    return out, meta


def plot(stats, meta, layer, out, title, np):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    loads = stats["loads"].astype(float)
    L, E = loads.shape
    k = int(meta.get("top_k", 0)) or max(1, int(round(loads[0].sum() / max(1, int(meta.get("tokens", 1))))))
    tokens = float(meta.get("tokens", 0)) or loads[0].sum() / k
    mean = loads.mean(axis=1, keepdims=True)
    rel = np.where(mean > 0, loads / np.where(mean > 0, mean, 1), 0)
    if layer is None:
        layer = int(np.argmax(rel.max(axis=1)))
    if not 0 <= layer < L:
        raise InputError(f"--layer {layer}: the file has layers 0..{L - 1}")

    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5.5), gridspec_kw={"width_ratios": [3, 2]})
    floor = 1e-2
    im = left.imshow(np.maximum(rel, floor), aspect="auto", cmap="magma", norm=LogNorm(vmin=floor, vmax=max(rel.max(), 2)),
                     interpolation="nearest")
    left.set_xlabel("expert")
    left.set_ylabel("layer")
    left.set_title(f"expert load / layer mean ({int(tokens)} tokens, top-{k}; black: idle)")
    fig.colorbar(im, ax=left, fraction=0.04)

    co = stats["coactivation"][layer].astype(float)
    l = loads[layer]
    expected = np.outer(l, l) * (k - 1) / (k * tokens) if tokens > 0 and k > 1 else np.ones_like(co)
    ratio = np.where(expected > 0, co / np.where(expected > 0, expected, 1), 0)
    np.fill_diagonal(ratio, np.nan)
    im2 = right.imshow(ratio, cmap="coolwarm", norm=LogNorm(vmin=0.1, vmax=10), interpolation="nearest")
    right.set_title(f"layer {layer}: co-activation / independent picks")
    right.set_xlabel("expert b")
    right.set_ylabel("expert a")
    fig.colorbar(im2, ax=right, fraction=0.046)
    fig.suptitle(title or meta.get("model", ""))
    fig.tight_layout()
    save_png(fig, out, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stats")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--layer", type=int, default=None)
    ap.add_argument("--title", default="")
    args = ap.parse_args()
    try:
        import numpy as np
        import matplotlib  # noqa: F401
    except ImportError as e:
        print(f"plot_stats: needs numpy and matplotlib ({e})", file=sys.stderr)
        return 3
    try:
        stats, meta = read_stats(args.stats, np)
        plot(stats, meta, args.layer, args.output, args.title, np)
    except InputError as e:
        print(f"plot_stats: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"plot_stats: {args.output}: {e.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
