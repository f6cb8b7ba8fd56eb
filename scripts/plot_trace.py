#!/usr/bin/env python3
"""plot_trace.py: one batch's stages on every rank as a picture, from the Chrome trace that
`moerun infer --trace-events T.json` writes (complete events: name, ts, dur in us, pid = rank,
tid = stream: compute or transfer). One row per (rank, stream), a bar per stage, labelled where wide;
the whole layer as a line under its row.

    python3 scripts/plot_trace.py T.json -o T.png [--title TEXT]
Needs matplotlib. The PNG is written whole or not at all (scripts/plotting.py)."""
import argparse
import json
import sys

from plotting import save_png  # scripts/plotting.py, beside this script


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--title", default="")
    a = ap.parse_args()
    try:
        with open(a.trace) as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        sys.exit(f"plot_trace.py: {a.trace}: {e}")
    events = doc["traceEvents"] if isinstance(doc, dict) else doc
    bars = [e for e in events if e.get("ph") == "X"]
    if not bars:
        sys.exit(f"plot_trace.py: {a.trace}: no stage events")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = min(e["ts"] for e in bars)
    rows = sorted({(e["pid"], str(e["tid"])) for e in bars})
    names = sorted({e["name"] for e in bars if e["name"] != "layer"})
    colours = {n: plt.cm.tab20(i % 20) for i, n in enumerate(names)}
    fig, ax = plt.subplots(figsize=(12, 1.0 + 0.6 * len(rows)))
    span = max(e["ts"] + e["dur"] for e in bars) - t0
    for y, (pid, tid) in enumerate(rows):
        for e in (e for e in bars if (e["pid"], str(e["tid"])) == (pid, tid)):
            x = (e["ts"] - t0) / 1e3
            w = e["dur"] / 1e3
            if e["name"] == "layer":  # the whole layer: a thin line under its stages
                ax.barh(y + 0.42, w, left=x, height=0.08, color="black")
                continue
            ax.barh(y, w, left=x, height=0.7, color=colours[e["name"]], edgecolor="black", linewidth=0.3)
            if e["dur"] > 0.04 * span:
                ax.text(x + w / 2, y, e["name"], ha="center", va="center", fontsize=8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"rank {p} {t}" for p, t in rows])
    ax.invert_yaxis()
    ax.set_xlabel("ms since the batch started")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[n]) for n in names]
    ax.legend(handles, names, ncol=min(len(names), 8), fontsize=8, loc="upper center",
              bbox_to_anchor=(0.5, -0.25 if len(rows) > 2 else -0.4))
    if a.title:
        ax.set_title(a.title)
    fig.tight_layout()
    save_png(fig, a.output, dpi=110)
    print(f"plot_trace.py: wrote {a.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
