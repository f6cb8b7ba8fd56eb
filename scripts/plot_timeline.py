#!/usr/bin/env python3
"""plot_timeline.py: a picture of an elastic or re-balancing run from the timeline (and events) CSV
that `moerun elastic` / `moerun infer` write with --timeline / --events (columns in docs/elastic.md).

  plot_timeline.py TIMELINE.csv [--events EVENTS.csv] -o OUT.png [--title T]

Top panel: tokens/s of each batch (a step over the interval the batch took) and the serving ranks
(a step on the right axis). Bottom panel: expert bytes in flight (MB) and the mean per-layer max/mean
load. Each event is a shaded span from its decision to its switch: from the events CSV when given
(decision_s to decision_s + latency_s, or + plan_s for a re-balance that moved nothing and has no
latency; to the end of the run for an event that never switched), else from the timeline's phase
column (from the end of the batch before the event's first `plan`/`move` row to the end of its
`switch` batch, which holds the stall). Scale events are orange, re-balances green, re-balances that
moved nothing grey.

Only the standard library besides matplotlib (Agg backend). A malformed CSV is an error naming
file:line; the PNG is written to a temporary beside OUT and renamed, so OUT is whole or absent.
Exit status: 0 written, 1 bad input or write error, 2 usage, 3 matplotlib missing."""
import argparse
import csv
import math
import sys

from plotting import save_png  # scripts/plotting.py, beside this script

TIMELINE_COLUMNS = ["time_s", "batch", "tokens", "tokens_per_s", "serving", "bytes_in_flight",
                    "load_max_mean", "phase", "event"]
EVENT_COLUMNS = ["event", "kind", "from_ranks", "to_ranks", "decision_batch", "switch_batch",
                 "decision_s", "plan_s", "transfer_s", "switch_s", "latency_s", "longest_gap_s",
                 "batch_time_s", "experts_moved", "bytes_moved", "bytes_min", "transfer_gbps"]
PHASES = ("serve", "plan", "move", "prepare", "switch")
KIND_COLOURS = {"scale": "tab:orange", "rebalance": "tab:green", "rebalance-kept": "tab:gray"}


class InputError(Exception):
    pass


def read_csv(path, columns, numeric, optional=()):
    """Rows of a CSV as dicts: the header must hold `columns`; `numeric` columns become floats (an
    empty field in an `optional` column becomes NaN). Errors name path:line."""
    try:
        f = open(path, newline="")
    except OSError as e:
        raise InputError(f"{path}: cannot open: {e.strerror}")
    rows = []
    with f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
            if header is None:
                raise InputError(f"{path}:1: empty file (expected the header {','.join(columns)})")
            header = [h.strip() for h in header]
            missing = [c for c in columns if c not in header]
            if missing:
                raise InputError(f"{path}:1: header lacks {', '.join(missing)} "
                                 f"(expected {','.join(columns)})")
            for fields in reader:
                line = reader.line_num
                if not fields or all(not x.strip() for x in fields):
                    continue
                if len(fields) != len(header):
                    raise InputError(f"{path}:{line}: {len(fields)} fields, the header has "
                                     f"{len(header)}")
                row = {h: x.strip() for h, x in zip(header, fields)}
                for c in numeric:
                    v = row[c]
                    if v == "" and c in optional:
                        row[c] = math.nan
                        continue
                    try:
                        row[c] = float(v)
                    except ValueError:
                        raise InputError(f"{path}:{line}: {c} is {v!r}, not a number") from None
                    if math.isinf(row[c]) or (math.isnan(row[c]) and c not in optional):
                        raise InputError(f"{path}:{line}: {c} is {v!r}")
                row["_line"] = line
                rows.append(row)
        except csv.Error as e:
            raise InputError(f"{path}:{reader.line_num}: {e}") from None
        except UnicodeDecodeError:
            raise InputError(f"{path}: not a text file") from None
    return rows


def read_timeline(path):
    rows = read_csv(path, TIMELINE_COLUMNS, TIMELINE_COLUMNS[:7])
    if not rows:
        raise InputError(f"{path}: no batches")
    prev = -math.inf
    for r in rows:
        where = f"{path}:{r['_line']}"
        if r["phase"] not in PHASES:
            raise InputError(f"{where}: phase is {r['phase']!r}, not one of {', '.join(PHASES)}")
        if r["event"] and not r["event"].isdigit():
            raise InputError(f"{where}: event is {r['event']!r}, not an event id or empty")
        if r["time_s"] < prev:
            raise InputError(f"{where}: time_s {r['time_s']:g} goes back from {prev:g}")
        prev = r["time_s"]
    return rows


def read_events(path):
    numeric = EVENT_COLUMNS[2:]
    # An event that never switched, or moved nothing, may leave its timings empty.
    rows = read_csv(path, EVENT_COLUMNS, numeric, optional=numeric)
    for r in rows:
        if math.isnan(r["decision_s"]):
            raise InputError(f"{path}:{r['_line']}: decision_s has no value")
    return rows


def spans_from_events(events, end):
    """(start, stop, kind, label) per event."""
    spans = []
    for e in events:
        kept = e["kind"] == "rebalance-kept"  # only the solver ran
        if (e["switch_batch"] >= 0 or kept) and not math.isnan(e["latency_s"]):
            stop = e["decision_s"] + e["latency_s"]
        elif kept and not math.isnan(e["plan_s"]):
            stop = e["decision_s"] + e["plan_s"]
        else:
            stop = end  # still in flight when the run ended
        spans.append((e["decision_s"], stop, e["kind"], e["event"]))
    return spans


def spans_from_phases(rows):
    """From the phase and event columns: an event spans from the end of the batch before its first
    plan/move/switch row to the end of its last such row."""
    spans, first, last = [], {}, {}
    for i, r in enumerate(rows):
        if r["phase"] != "serve" and r["event"]:
            first.setdefault(r["event"], i)
            last[r["event"]] = i
    for ev, i in first.items():
        start = rows[i - 1]["time_s"] if i > 0 else 0.0
        j = last[ev]
        kind = "scale" if any(rows[k]["serving"] != rows[i]["serving"] for k in range(i, j + 1)) \
            else "rebalance"
        spans.append((start, rows[j]["time_s"], kind, ev))
    return spans


def step_series(rows, key, scale=1.0):
    """x, y for a step line where each batch's value holds over [previous end, its end]."""
    xs, ys = [0.0], [rows[0][key] * scale]
    for r in rows:
        xs.append(r["time_s"])
        ys.append(r[key] * scale)
    return xs, ys


def plot(rows, spans, out, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 2]})
    end = rows[-1]["time_s"]
    for ax in (top, bottom):
        for start, stop, kind, _ in spans:
            ax.axvspan(start, max(stop, start + end * 1e-3), color=KIND_COLOURS.get(kind, "tab:purple"),
                       alpha=0.18, linewidth=0)
    for start, _, _, label in spans:
        top.annotate(f"{label}", (start, 1.0), xycoords=("data", "axes fraction"),
                     xytext=(2, -10), textcoords="offset points", fontsize=8, color="0.3")

    xs, ys = step_series(rows, "tokens_per_s")
    top.step(xs, ys, where="pre", color="tab:blue", linewidth=1.2, label="tokens/s")
    top.set_ylabel("tokens/s")
    top.set_ylim(bottom=0)
    top.grid(True, alpha=0.3)
    ranks = top.twinx()
    xs, ys = step_series(rows, "serving")
    ranks.step(xs, ys, where="pre", color="black", linewidth=1.5, label="serving ranks")
    ranks.set_ylabel("serving ranks")
    ranks.set_ylim(0, max(ys) + 1)
    ranks.yaxis.set_major_locator(MaxNLocator(integer=True))
    handles = top.get_legend_handles_labels()[0] + ranks.get_legend_handles_labels()[0]
    kinds = sorted({s[2] for s in spans})
    handles += [Patch(color=KIND_COLOURS.get(k, "tab:purple"), alpha=0.3,
                      label=f"{k}: solver only" if k == "rebalance-kept" else f"{k}: decision to switch")
                for k in kinds]
    top.legend(handles=handles, loc="lower left", fontsize=8, framealpha=0.9)

    xs, ys = step_series(rows, "bytes_in_flight", 1e-6)
    bottom.step(xs, ys, where="pre", color="tab:red", linewidth=1.2, label="bytes in flight (MB)")
    bottom.fill_between(xs, ys, step="pre", color="tab:red", alpha=0.15)
    bottom.set_ylabel("in flight (MB)")
    bottom.set_ylim(bottom=0)
    bottom.set_xlabel("time since start (s)")
    bottom.grid(True, alpha=0.3)
    load = bottom.twinx()
    xs, ys = step_series(rows, "load_max_mean")
    load.step(xs, ys, where="pre", color="tab:purple", linewidth=1.2, label="load max/mean")
    load.set_ylabel("load max/mean")
    load.set_ylim(bottom=min(1.0, min(ys)), top=max(ys) * 1.1 + 0.01)
    bottom.legend(handles=bottom.get_legend_handles_labels()[0] + load.get_legend_handles_labels()[0],
                  loc="upper right", fontsize=8, framealpha=0.9)
    bottom.set_xlim(0, end)
    if title:
        fig.suptitle(title)
    fig.tight_layout()

    try:
        save_png(fig, out, dpi=120)
    except OSError as e:
        raise InputError(f"{out}: cannot write: {e.strerror or e}")
    finally:
        plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("timeline", help="timeline CSV (--timeline)")
    ap.add_argument("--events", help="events CSV (--events): event spans from it")
    ap.add_argument("-o", "--output", required=True, help="PNG to write")
    ap.add_argument("--title", default="")
    args = ap.parse_args()
    try:
        rows = read_timeline(args.timeline)
        if args.events:
            spans = spans_from_events(read_events(args.events), rows[-1]["time_s"])
        else:
            spans = spans_from_phases(rows)
    except InputError as e:
        print(f"plot_timeline.py: {e}", file=sys.stderr)
        return 1
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("plot_timeline.py: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
        return 3
    try:
        plot(rows, spans, args.output, args.title)
    except InputError as e:
        print(f"plot_timeline.py: {e}", file=sys.stderr)
        return 1
    print(f"plot_timeline.py: wrote {args.output} ({len(rows)} batches, {len(spans)} events)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
