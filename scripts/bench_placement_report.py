#!/usr/bin/env python3
"""bench_placement_report.py OUTDIR: tables (markdown) from what bench_placement.sh wrote.

Figures on routing a plan was not built from are replays (the runtime's sends): per-layer max/mean
GPU load (mean and worst over layers), inter-node token copies (dispatch; combine mirrors them),
with hierarchical dispatch one per remote node. The targets of issue 16 are checked at the end."""
import csv
import json
import os
import sys

OUT = sys.argv[1]
checks = []


def load(name):
    path = os.path.join(OUT, name + ".json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def short(path):
    return os.path.basename(path).split(".")[0]


def baseline(run, solver):
    for b in run.get("baselines", []):
        if b["solver"] == solver:
            return b
    return None


def pct_below(a, b):
    return 100 * (1 - a / b) if b else float("nan")


print("# Placement benchmark (issue 16)\n")

# ---------------------------------------------------------------- cross-validation
print("## Cross-validation of the hedged solver's weights\n")
print("Build on one source, score on the other (held-out replay for ESFT, model of loads for the "
      "Qwen3 CSVs); greedy built from the same source is the reference. Mean of the two folds; "
      "`ok` = no worse than greedy's mean and worst max/mean in both folds.\n")
for kind in ("esft", "qwen"):
    for R in (16, 32):
        run = load(f"cv_{kind}_{R}")
        if not run or "cross_validation" not in run:
            continue
        cv = run["cross_validation"]
        g = cv["greedy"]
        gm = sum(f["max_mean_mean"] for f in g) / len(g)
        gw = max(f["max_mean_worst"] for f in g)
        gc = sum(f["copies"] for f in g) / len(g)
        src = " <-> ".join(short(s["name"]) for s in run["sources"]) if run.get("sources") else kind
        print(f"**{src}, {R} ranks** (greedy: max/mean {gm:.3f}, worst {gw:.3f}, copies {gc:.4f})\n")
        print("| hedge | traffic weight | max/mean | worst | copies (cost units) | held-out cost | ok |")
        print("|---|---|---|---|---|---|---|")
        for i, p in enumerate(cv["points"]):
            f = p["folds"]
            m = sum(x["max_mean_mean"] for x in f) / len(f)
            w = max(x["max_mean_worst"] for x in f)
            c = sum(x["copies"] for x in f) / len(f)
            mark = " **chosen**" if i == cv["chosen"] else ""
            print(f"| {p['hedge']:g} | {p['traffic_weight']:g} | {m:.3f} | {w:.3f} | {c:.4f} | "
                  f"{p['cost']:.4f} | {'yes' if p['feasible'] else 'no'}{mark} |")
        ch = cv["points"][cv["chosen"]]
        checks.append(f"cross-validation {src} at {R} ranks chose hedge {ch['hedge']:g}, traffic "
                      f"weight {ch['traffic_weight']:g} ({'no worse than greedy in every fold' if ch['feasible'] else 'no point was no worse than greedy in every fold'})")
        print()

# ---------------------------------------------------------------- cross-domain
print("## Plans from one ESFT domain, replayed on the other\n")
for R in (16, 32):
    print(f"### {R} ranks ({R // 8} nodes x 8, {R} redundant)\n")
    print("| plan from -> scored on | solver | max/mean (mean) | max/mean (worst) | inter-node copies "
          "| vs greedy | intra-node | solve s |")
    print("|---|---|---|---|---|---|---|---|")
    for a, b in (("intent", "law"), ("law", "intent")):
        run = load(f"cross_{a}_to_{b}_{R}")
        ilp = load(f"ilp_{a}_to_{b}_{R}")
        ind = load(f"indomain_{b}_{R}")
        if not run:
            continue
        g = baseline(run, "greedy")
        gf = g["scored"][0]["replayed"]
        rows = [("hedged", run["solve_seconds"], run["scored"][0]["replayed"]),
                ("greedy (EPLB)", g["solve_seconds"], gf)]
        if ilp:
            rows.append(("ilp", ilp["solve_seconds"], ilp["scored"][0]["replayed"]))
        for name, t, f in rows:
            print(f"| {a} -> {b} | {name} | {f['max_mean_mean']:.3f} | {f['max_mean_worst']:.3f} | "
                  f"{f['inter']:.0f} | {-pct_below(f['inter'], gf['inter']):+.1f}% | {f['intra']:.0f} | {t:.1f} |")
        if ind:
            f = ind["sources"][0]["replayed"]
            print(f"| {b} -> {b} | greedy in-domain | {f['max_mean_mean']:.3f} | {f['max_mean_worst']:.3f} | "
                  f"{f['inter']:.0f} | | {f['intra']:.0f} | |")
        h = run["scored"][0]["replayed"]
        checks.append(
            f"{R} ranks, {a} -> {b}: hedged max/mean {h['max_mean_mean']:.3f} vs greedy {gf['max_mean_mean']:.3f} "
            f"({'met' if h['max_mean_mean'] <= gf['max_mean_mean'] else 'MISSED'}); worst {h['max_mean_worst']:.3f} vs "
            f"{gf['max_mean_worst']:.3f} ({'met' if h['max_mean_worst'] <= gf['max_mean_worst'] else 'MISSED'}); "
            f"inter-node copies {-pct_below(h['inter'], gf['inter']):+.1f}% vs greedy (target -15%: "
            f"{'met' if pct_below(h['inter'], gf['inter']) >= 15 else 'MISSED'})")
        # model vs replay on the held-out domain is checked by the tests; shown once here
    print()
    print("with `--hierarchical` (one inter-node copy per remote node touched):\n")
    print("| plan from -> scored on | solver | max/mean (mean) | max/mean (worst) | inter-node copies (hierarchical) | vs greedy |")
    print("|---|---|---|---|---|---|")
    for a, b in (("intent", "law"), ("law", "intent")):
        run = load(f"hier_{a}_to_{b}_{R}")
        if not run:
            continue
        gf = baseline(run, "greedy")["scored"][0]["replayed"]
        h = run["scored"][0]["replayed"]
        for name, f in (("hedged --hierarchical", h), ("greedy (EPLB)", gf)):
            print(f"| {a} -> {b} | {name} | {f['max_mean_mean']:.3f} | {f['max_mean_worst']:.3f} | "
                  f"{f['inter_hier']:.0f} | {-pct_below(f['inter_hier'], gf['inter_hier']):+.1f}% |")
        src = run["sources"][0]["replayed"]
        gsrc = baseline(run, "greedy")["sources"][0]["replayed"]
        checks.append(
            f"{R} ranks, {a} -> {b}, hierarchical: inter-node copies {-pct_below(h['inter_hier'], gf['inter_hier']):+.1f}% "
            f"vs greedy on the held-out domain, {-pct_below(src['inter_hier'], gsrc['inter_hier']):+.1f}% on the source; "
            f"max/mean {h['max_mean_mean']:.3f} vs {gf['max_mean_mean']:.3f}")
    print()

# ---------------------------------------------------------------- stay residency
run = load("stay_intent_to_law_16")
if run:
    print("## Stay residency (modelled; ilp), 16 ranks, intent -> law\n")
    print("| solver | max/mean (mean) | inter-node copies from where tokens sit | (tokens home) |")
    print("|---|---|---|---|")
    g = baseline(run, "greedy")["scored"][0]["replayed"]
    f = run["scored"][0]["replayed"]
    for name, x in (("ilp --residency stay", f), ("greedy", g)):
        print(f"| {name} | {x['max_mean_mean']:.3f} | {x['inter_stay']:.0f} | {x['inter']:.0f} |")
    print()

# ---------------------------------------------------------------- v3 scale
print("## DeepSeek-V3 scale (synthetic: 58 layers x 256 experts, top-8, 64 ranks = 8 x 8, 32 redundant, 2 cores)\n")
print("| solver | solve s | whole command s | max/mean (replay) | inter-node copies | greedy inter-node |")
print("|---|---|---|---|---|---|")
for solver in ("hedged", "ilp"):
    v3 = load(f"v3_{solver}")
    if not v3:
        continue
    with open(os.path.join(OUT, f"v3_{solver}.wall")) as f:
        a, b = map(float, f.read().split())
    s = v3["sources"][0]["replayed"]
    g = baseline(v3, "greedy")["sources"][0]["replayed"]
    print(f"| {solver} | {v3['solve_seconds']:.1f} | {b - a:.1f} | {s['max_mean_mean']:.3f} | {s['inter']:.0f} | {g['inter']:.0f} |")
    checks.append(f"DeepSeek-V3 scale, {solver}: solve {v3['solve_seconds']:.1f} s on 2 cores (target 60 s: "
                  f"{'met' if v3['solve_seconds'] <= 60 else 'MISSED'})")
print()

# ---------------------------------------------------------------- re-balancing
rb = os.path.join(OUT, "rebalance")
if os.path.exists(os.path.join(rb, "rebalanced.csv")):
    np_, tpr, window = 8, 128, 2
    first_law = -(-8222 // (np_ * tpr))  # the first batch wholly of law tokens

    def series(name):
        with open(os.path.join(rb, name + ".csv")) as f:
            return {int(r["batch"]): float(r["load_max_mean"]) for r in csv.DictReader(f)}

    s, r, d = series("static"), series("rebalanced"), series("in-domain")
    law = sorted(b for b in s if b >= first_law)
    after = [b for b in law if b >= first_law + 2 * window]

    def mean(x, bs):
        return sum(x[b] for b in bs) / len(bs)

    print(f"## Online re-balancing: intent then law, {np_} ranks, {tpr} tokens per rank, window {window}\n")
    print("| batch | static intent plan | re-balanced | in-domain law plan |")
    print("|---|---|---|---|")
    for b in sorted(s):
        print(f"| {b}{' (law)' if b >= first_law else ''} | {s[b]:.3f} | {r.get(b, float('nan')):.3f} | {d[b]:.3f} |")
    for label, bs in (("the whole law half", law), (f"law batches from 2 windows after the switch ({first_law + 2 * window}..)", after)):
        ms, mr, md = mean(s, bs), mean(r, bs), mean(d, bs)
        closed = (ms - mr) / (ms - md) if ms > md else float("nan")
        print(f"\n{label}: static {ms:.3f}, re-balanced {mr:.3f}, in-domain {md:.3f}: "
              f"{100 * closed:.0f}% of the gap closed")
        if bs is after:
            checks.append(f"online re-balancing: {100 * closed:.0f}% of the static -> in-domain gap closed "
                          f"from 2 windows after the switch (target 75%: {'met' if closed >= 0.75 else 'MISSED'})")
    with open(os.path.join(rb, "events.csv")) as f:
        ev = list(csv.DictReader(f))
    print(f"\nevents: " + "; ".join(f"{e['kind']} decided at batch {e['decision_batch']}, switched at "
                                   f"{e['switch_batch']}, {e['experts_moved']} experts moved" for e in ev))
    print()

print("## Targets\n")
for c in checks:
    print("- " + c)
