#!/usr/bin/env python3
"""exact_vs_milp.py MOERUN: `moerun place --exact` against an independent MILP of the documented
model (docs/placement.md, "The exact model"), solved by HiGHS through scipy, on small random traces
with replicas. Exit 77 (skipped) where scipy is absent.

The model per layer: replica counts c_e >= 1 summing to experts + replicas (each <= ranks), hosts
y[e][r] (c_e of them, at most ceil(slots / ranks) per rank), every replica taking 1 / c_e of the
expert's tokens; cost = max over traces and ranks of the normalised rank load + copy_cost x mean
over traces of (inter_factor x inter + intra) / pairs, with copies counted per token from its home
rank (t // tokens_per_rank) % ranks: P(token touches rank r) = 1 - prod_e (1 - share(e, r)) (flat),
plus, with hierarchical dispatch, one inter-node copy per remote node touched and forwards inside.

Written apart from placement/solve_exact.c, and formulated differently: the counts are variables
here (one-hot per expert), v[e][r][c] = "e on r with c replicas", and each product of shares is a
product of v's over count combinations; moerun enumerates count vectors and solves one GLPK MILP per
vector. Checked: moerun's objective equals the HiGHS optimum, and this file's own evaluation of
moerun's plan equals both."""
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile

try:
    import numpy as np
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix
except ImportError:
    print("exact_vs_milp: scipy (HiGHS) is not installed: skipped")
    sys.exit(77)

COPY_COST, INTER = 1.0, 3.2
TPR = 16  # --tokens-per-rank


def weight(h, r, G, hier):
    """Objective weight of a copy from home h to rank r (the rank part under hierarchical)."""
    if r == h:
        return 0.0
    if r // G == h // G:
        return 1.0
    if hier:
        return 0.0 if r % G == h % G else 1.0
    return INTER


def token_sets(ids, layer):
    return [sorted(set(int(e) for e in row if e >= 0)) for row in ids[layer]]


def evaluate(plan_share, traces, layer, R, G, hier):
    """The documented cost of one layer for shares [E][R], straight from the definition."""
    E = plan_share.shape[0]
    worst, traffic = 0.0, 0.0
    for ids in traces:
        loads = np.zeros(E)
        sets = token_sets(ids, layer)
        for s in sets:
            loads[s] += 1
        pairs = loads.sum()
        u = loads * R / pairs
        worst = max(worst, float((u @ plan_share).max()))
        copies = 0.0
        for t, s in enumerate(sets):
            h = (t // TPR) % R
            for r in range(R):
                p = 1 - np.prod([1 - plan_share[e, r] for e in s])
                copies += weight(h, r, G, hier) * p
            if hier:
                for n in range(R // G):
                    if n == h // G:
                        continue
                    f = [plan_share[e, n * G:(n + 1) * G].sum() for e in s]
                    copies += INTER * (1 - np.prod([1 - x for x in f]))
        traffic += COPY_COST * copies / pairs
    return worst + traffic / len(traces)


def highs_layer(traces, layer, E, R, G, X, hier):
    """The optimum of the layer by one MILP with the counts as variables."""
    slots, cap, cmax = E + X, -(-(E + X) // R), min(R, 1 + X)
    cols = {}

    def col(key):
        if key not in cols:
            cols[key] = len(cols)
        return cols[key]

    for e in range(E):
        for c in range(1, cmax + 1):
            col(("w", e, c))
            for r in range(R):
                col(("v", e, r, c))
    z = col(("z",))
    obj = {}
    rows, lo, hi = [], [], []

    def row(coefs, a, b):
        rows.append(coefs)
        lo.append(a)
        hi.append(b)

    for e in range(E):
        row({col(("w", e, c)): 1 for c in range(1, cmax + 1)}, 1, 1)
        for c in range(1, cmax + 1):
            d = {col(("v", e, r, c)): 1 for r in range(R)}
            d[col(("w", e, c))] = -c
            row(d, 0, 0)
        for r in range(R):
            row({col(("v", e, r, c)): 1 for c in range(1, cmax + 1)}, 0, 1)
    row({col(("w", e, c)): c for e in range(E) for c in range(1, cmax + 1)}, slots, slots)
    for r in range(R):
        row({col(("v", e, r, c)): 1 for e in range(E) for c in range(1, cmax + 1)}, 0, cap)
    products = {}  # frozenset of (e, r, c) -> coefficient

    def add(cells, coef):
        if len(cells) == 1:
            k = col(("v",) + cells[0])
            obj[k] = obj.get(k, 0) + coef
        else:
            key = frozenset(cells)
            products[key] = products.get(key, 0) + coef

    for ids in traces:
        loads = np.zeros(E)
        sets = token_sets(ids, layer)
        for s in sets:
            loads[s] += 1
        pairs = loads.sum()
        u = loads * R / pairs
        for r in range(R):
            d = {col(("v", e, r, c)): u[e] / c for e in range(E) for c in range(1, cmax + 1)}
            d[z] = -1
            row(d, -np.inf, 0)
        scale = COPY_COST / pairs / len(traces)
        groups = {}
        for t, s in enumerate(sets):
            key = (tuple(s), (t // TPR) % R)
            groups[key] = groups.get(key, 0) + 1
        for (s, h), m in groups.items():
            # rank terms: 1 - prod (1 - x_er) = sum_T (-1)^{|T|+1} prod_{e in T} x_er
            units = [(weight(h, r, G, hier), [r]) for r in range(R)]
            if hier:
                units += [(INTER, list(range(n * G, n * G + G))) for n in range(R // G) if n != h // G]
            for wgt, ranks in units:
                if wgt == 0:
                    continue
                for size in range(1, len(s) + 1):
                    sign = 1 if size % 2 else -1
                    for T in itertools.combinations(s, size):
                        for rs in itertools.product(ranks, repeat=size):
                            for cs in itertools.product(range(1, cmax + 1), repeat=size):
                                coef = sign * wgt * m * scale / np.prod(cs)
                                add([(e, rr, c) for e, rr, c in zip(T, rs, cs)], coef)
    obj[z] = 1
    for cells, coef in products.items():
        p = col(("p", cells))
        obj[p] = coef
        vs = [col(("v",) + cell) for cell in cells]
        if coef < 0:  # pushed up: p <= each factor
            for v in vs:
                row({p: 1, v: -1}, -np.inf, 0)
        else:  # pushed down: p >= sum - (n - 1)
            d = {p: 1}
            for v in vs:
                d[v] = -1
            row(d, -(len(vs) - 1), np.inf)
    n = len(cols)
    c = np.zeros(n)
    for k, v in obj.items():
        c[k] = v
    ri, ci, vals = [], [], []
    for i, d in enumerate(rows):
        for k, v in d.items():
            ri.append(i)
            ci.append(k)
            vals.append(v)
    A = coo_matrix((vals, (ri, ci)), shape=(len(rows), n)).tocsr()
    integrality = np.array([0 if k[0] in ("z", "p") else 1 for k in cols])
    lb = np.zeros(n)
    ub = np.array([np.inf if k[0] == "z" else 1 for k in cols])
    res = milp(c, constraints=LinearConstraint(A, lo, hi), integrality=integrality,
               bounds=Bounds(lb, ub), options={"mip_rel_gap": 0, "time_limit": 600})
    if res.status != 0:
        raise RuntimeError(f"HiGHS: {res.message}")
    return res.fun


def read_plan(path, L, E, R):
    share = np.zeros((L, E, R))
    layer = -1
    for line in open(path):
        m = re.match(r"\s*- layer: (\d+)", line)
        if m:
            layer = int(m.group(1))
            continue
        m = re.match(r"\s*- \{rank: (\d+), experts: \[([^\]]*)\](?:, shares: \[([^\]]*)\])?\}", line)
        if m and layer >= 0:
            r = int(m.group(1))
            es = [int(x) for x in m.group(2).split(",")]
            sh = [float(x) for x in m.group(3).split(",")] if m.group(3) else [None] * len(es)
            for e, s in zip(es, sh):
                share[layer, e, r] = -1 if s is None else s
    for l in range(L):
        for e in range(E):
            eq = share[l, e] < 0
            if eq.any():
                share[l, e, eq] = 1.0 / eq.sum()
    return share


def case(moerun, tmp, name, seed, n_traces, L, T, K, E, R, G, X, hier):
    rng = np.random.default_rng(seed)
    paths, traces = [], []
    for i in range(n_traces):
        p = rng.dirichlet(np.ones(E) * 0.7)
        ids = np.array([[rng.choice(E, size=K, replace=False, p=p) for _ in range(T)]
                        for _ in range(L)], dtype=np.int8)
        path = os.path.join(tmp, f"{name}-{i}.npy")
        np.save(path, ids)
        paths.append(path)
        traces.append(ids)
    plan = os.path.join(tmp, f"{name}.yaml")
    cmd = [moerun, "place", "--exact", "--experts", str(E), "--ranks", str(R), "--ranks-per-node",
           str(G), "--replicas", str(X), "--tokens-per-rank", str(TPR), "--no-baselines", "--json",
           "-o", plan]
    for p in paths:
        cmd += ["--trace", p]
    if hier:
        cmd.append("--hierarchical")
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        print(f"FAILED {name}: moerun exited {out.returncode}: {out.stderr}")
        return False
    report = json.loads(out.stdout)
    share = read_plan(plan, L, E, R)
    ok = report["subproblems_proven"] == L
    optimum, ours = [], []
    for l in range(L):
        optimum.append(highs_layer(traces, l, E, R, G, X, hier))
        ours.append(evaluate(share[l], traces, l, R, G, hier))
    mean_opt, mean_ours = float(np.mean(optimum)), float(np.mean(ours))
    # shares are written with 6 significant digits: 1e-5
    ok &= abs(report["objective"] - mean_opt) < 1e-5 and abs(mean_ours - mean_opt) < 1e-5
    for l in range(L):
        ok &= abs(ours[l] - optimum[l]) < 1e-5
    print(f"{name}: moerun --exact {report['objective']:.6f}, its plan by this file's model "
          f"{mean_ours:.6f}, HiGHS optimum {mean_opt:.6f} ({'ok' if ok else 'MISMATCH'})")
    return ok


def main():
    moerun = sys.argv[1]
    with tempfile.TemporaryDirectory() as tmp:
        results = [
            case(moerun, tmp, "flat-top2", 1, 1, 2, 200, 2, 5, 4, 2, 3, False),
            case(moerun, tmp, "flat-top3-two-traces", 2, 2, 2, 160, 3, 5, 4, 2, 2, False),
            case(moerun, tmp, "hierarchical-top2", 3, 1, 2, 160, 2, 4, 4, 2, 2, True),
        ]
    if not all(results):
        sys.exit(1)
    print("exact_vs_milp: passed")


if __name__ == "__main__":
    main()
