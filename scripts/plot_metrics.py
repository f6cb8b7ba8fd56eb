#!/usr/bin/env python3
"""plot_metrics.py: a picture of a run from its metrics log (`moerun infer --metrics M.jsonl`, JSON
lines: a "run" header, a "layer" line per batch and layer, a "summary"; docs/benchmarks.md).

  plot_metrics.py M.jsonl -o OUT.png [--title T]

Left panel: each stage's time per layer (ms, the slowest rank's, averaged over the measured batches),
stacked, with the layer's own time as a line: stages overlap when chunks > 1 (a chunk's experts run
while the next is dispatched), so the stack can rise above the line. Right panel: the load max/mean
over ranks per batch, the mean and the worst over layers.

Only the standard library besides matplotlib (Agg backend). A malformed line is an error naming
file:line; the PNG is written to a temporary beside OUT and renamed, so OUT is whole or absent.
Exit status: 0 written, 1 bad input or write error, 2 usage, 3 matplotlib missing."""
import argparse
import json
import sys

from plotting import save_png  # scripts/plotting.py, beside this script

STAGES = ["route", "plan", "permute", "dispatch", "experts", "shared", "combine", "unpermute"]


class InputError(Exception):
    pass


def read_metrics(path):
    """The per-layer lines of a metrics log, as dicts; errors name path:line."""
    layers = []
    try:
        with open(path) as f:
            for n, line in enumerate(f, 1):
                try:
                    r = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(f"{path}:{n}: not JSON: {e}")
                kind = r.get("type", "summary" if r.get("summary") else "layer")
                if kind != "layer":
                    continue
                try:
                    layers.append({"batch": int(r["batch"]), "layer": int(r["layer"]), "warmup": bool(r["warmup"]),
                                   "time": {s: float(r["time_s"][s] or 0) for s in STAGES + ["layer"]},
                                   "load_max_mean": float(r["load_max_mean"])})
                except (KeyError, TypeError, ValueError) as e:
                    raise InputError(f"{path}:{n}: a layer line without {e}")
    except OSError as e:
        raise InputError(f"{path}: {e.strerror}")
    if not layers:
        raise InputError(f"{path}: no per-layer lines (was the run given --metrics?)")
    return layers


def plot(layers, out, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for r in layers if not r["warmup"]] or layers
    L = max(r["layer"] for r in layers) + 1
    batches = sorted({r["batch"] for r in layers})
    per_layer = {s: [0.0] * L for s in STAGES + ["layer"]}
    count = [0] * L
    for r in measured:
        count[r["layer"]] += 1
        for s in per_layer:
            per_layer[s][r["layer"]] += 1e3 * r["time"][s]
    for s in per_layer:
        per_layer[s] = [v / c if c else 0.0 for v, c in zip(per_layer[s], count)]

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    xs = list(range(L))
    bottom = [0.0] * L
    colours = plt.get_cmap("tab10")
    for i, s in enumerate(STAGES):
        left.bar(xs, per_layer[s], bottom=bottom, color=colours(i), label=s, width=0.8)
        bottom = [b + v for b, v in zip(bottom, per_layer[s])]
    left.plot(xs, per_layer["layer"], color="black", marker=".", linewidth=1.2, label="layer time")
    left.set_xlabel("layer")
    left.set_ylabel("ms per batch (slowest rank)")
    left.set_title("stage times per layer (stages overlap: the stack may exceed the layer)")
    left.legend(fontsize=8, ncol=3)

    mean, worst = [], []
    for b in batches:
        v = [r["load_max_mean"] for r in layers if r["batch"] == b]
        mean.append(sum(v) / len(v))
        worst.append(max(v))
    right.plot(batches, mean, marker="o", label="mean over layers")
    right.plot(batches, worst, marker="^", label="worst layer")
    right.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
    warm = [b for b in batches if any(r["warmup"] for r in layers if r["batch"] == b)]
    if warm:
        right.axvspan(min(warm) - 0.5, max(warm) + 0.5, color="grey", alpha=0.15, label="warm-up")
    right.set_xlabel("batch")
    right.set_ylabel("load max/mean over ranks")
    right.set_title("load balance over batches")
    right.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_png(fig, out, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("metrics")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--title", default="")
    args = ap.parse_args()
    try:
        layers = read_metrics(args.metrics)
    except InputError as e:
        print(f"plot_metrics: {e}", file=sys.stderr)
        return 1
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("plot_metrics: needs matplotlib (pip install matplotlib)", file=sys.stderr)
        return 3
    try:
        plot(layers, args.output, args.title)
    except OSError as e:
        print(f"plot_metrics: {args.output}: {e.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
