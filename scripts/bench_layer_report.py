#!/usr/bin/env python3
"""bench_layer_report.py OUT [G1_LOG]: the table of scripts/bench_layer.sh.

Per case: moerun's layer time (the metrics summary's `layers`, device time per batch, max over
ranks; the best chunk count and chunks 1), the PyTorch peer's (bench_peers_ep.py), and the floors,
each from the same machine run: the GEMM floor is the layer's FLOPs per GPU (balanced routing: every
GPU computes its tokens x top_k expert rows, plus the shared expert over its tokens) over the dense
bf16 rate bench_gemm_gpu measured (G1_LOG, default OUT/../g1.log); decode's floor is reading the
GPU's experts' weights at the measured copy bandwidth. The overlap case compares the best chunked
time with the communication and the computation of the chunks-1 run, measured apart on its trace
(transfer spans; the compute stream's time less its waits).
"""
import glob
import json
import os
import re
import sys

import yaml

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def summary(path):
    try:
        with open(path) as f:
            for line in f:
                if '"summary":true' in line:
                    return json.loads(line)
    except OSError:
        pass
    return None


def layer_ms(label, out):
    s = summary(os.path.join(out, label + ".jsonl"))
    return s["stage_ms_per_batch"]["layers"] if s else None


def peer_ms(label, out, tokens):
    try:
        with open(os.path.join(out, label + ".log")) as f:
            for line in f:
                m = re.search(r"peer_ep .* tokens (\d+) .* ms ([0-9.]+)", line)
                if m and int(m.group(1)) == tokens:
                    return float(m.group(2))
    except OSError:
        pass
    return None


def g1_rates(path):
    dense = copy = None
    try:
        with open(path) as f:
            for line in f:
                m = re.match(r"dense_tflops ([0-9.]+)", line)
                dense = float(m.group(1)) if m else dense
                m = re.match(r"copy_bw_tbs ([0-9.]+)", line)
                copy = float(m.group(1)) if m else copy
    except OSError:
        pass
    return dense, copy


def model(name):
    with open(os.path.join(ROOT, "configs", name + ".yaml")) as f:
        return yaml.safe_load(f)["model"]


def gemm_floor_ms(m, tokens, dense_tflops, d_ff=None, shared=True):
    f = d_ff or m["d_ff"]
    fs = (d_ff or m.get("shared_d_ff", 0)) * m.get("shared_experts", 0) if shared else 0
    flops = tokens * 6.0 * m["d_model"] * (m["top_k"] * f + fs)
    return flops / (dense_tflops * 1e12) * 1e3


def trace_split(path):
    """(communication ms, compute ms) of a chunks-1 trace: the transfer spans, and the layer's compute
    stream less its waits for them; the slowest rank's."""
    try:
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    except (OSError, ValueError, KeyError):
        return None, None
    ranks = {}
    for e in events:
        if e.get("ph") != "X":
            continue
        r = ranks.setdefault(e["pid"], {"comm": 0.0, "layer": 0.0, "wait": 0.0})
        if e["tid"] == "transport":
            r["comm"] += e["dur"] / 1e3
        elif e["name"] == "layer":
            r["layer"] += e["dur"] / 1e3
        elif e["name"] in ("dispatch", "combine"):
            r["wait"] += e["dur"] / 1e3
    if not ranks:
        return None, None
    comm = max(r["comm"] for r in ranks.values())
    compute = max(r["layer"] - r["wait"] for r in ranks.values())
    return comm, compute


def fmt(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "bench-layer"
    g1 = sys.argv[2] if len(sys.argv) > 2 else os.path.join(out, "..", "g1.log")
    dense, copy_bw = g1_rates(g1)
    print(f"\n## one MoE layer (device time per batch; dense bf16 {fmt(dense, '.0f')} TFLOP/s, copy "
          f"{fmt(copy_bw)} TB/s measured in the same run)\n")
    print("| case | GPUs | moerun best (chunks) | moerun chunks 1 | PyTorch peer | moerun / peer | GEMM floor | of floor |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    dsv3, mixtral = model("deepseek-v3"), model("mixtral-8x7b")
    cases = [("dsv3", "dsv3", dsv3, 4096, None, True), ("dsv3-noshared", "dsv3-noshared", dsv3, 4096, None, False),
             ("dsv3-narrow", "dsv3-narrow", dsv3, 4096, 128, False), ("mixtral", "mixtral", mixtral, 8192, None, False),
             ("dsv3-hier", "dsv3", dsv3, 4096, None, True)]
    for label, peer, m, tokens, d_ff, shared in cases:
        for np_ in (1, 2):
            runs = {}
            for path in glob.glob(os.path.join(out, f"{label}-np{np_}-c*.jsonl")):
                c = int(re.search(r"-c(\d+)\.jsonl$", path).group(1))
                t = layer_ms(f"{label}-np{np_}-c{c}", out)
                if t is not None:
                    runs[c] = t
            if not runs:
                continue
            best_c = min(runs, key=runs.get)
            p = peer_ms(f"peer-{peer}-np{np_}", out, tokens)
            floor = gemm_floor_ms(m, tokens, dense, d_ff, shared) if dense else None
            print(f"| {label} {tokens} tok/GPU | {np_} | {runs[best_c]:.2f} ms ({best_c}) | {fmt(runs.get(1))} ms | "
                  f"{fmt(p)} ms | {fmt(runs[best_c] / p if p else None, '.3f')} | {fmt(floor)} ms | "
                  f"{fmt(floor / runs[best_c] if floor else None, '.3f')} |")
    print("\n## decode: DeepSeek-V3, 128 tokens per GPU\n")
    print("| GPUs | moerun graphs | fixed, no graphs | its experts stage | beyond the expert GEMMs | PyTorch peer | "
          "weight-read floor | of floor |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for np_ in (1, 2):
        g = layer_ms(f"decode-np{np_}-graphs", out)
        s = summary(os.path.join(out, f"decode-np{np_}-nographs.jsonl"))
        if g is None and s is None:
            continue
        experts = s["stage_ms_per_batch"]["experts"] if s else None
        weights = dsv3["experts"] // np_ * 3.0 * dsv3["d_model"] * dsv3["d_ff"] * 2
        floor = weights / (copy_bw * 1e12) * 1e3 if copy_bw else None
        p = peer_ms(f"peer-dsv3-np{np_}", out, 128)
        print(f"| {np_} | {fmt(g)} ms | {fmt(s['stage_ms_per_batch']['layers'] if s else None)} ms | {fmt(experts)} ms | "
              f"{fmt((g - experts) * 1e3 if g is not None and experts is not None else None, '.0f')} us | {fmt(p)} ms | "
              f"{fmt(floor)} ms | {fmt(floor / g if floor and g else None, '.3f')} |")
    print("\n## overlap (two GPUs): best chunked layer against communication and computation measured apart "
          "(chunks-1 trace)\n")
    print("| case | chunks 1 | best (chunks) | communication | computation | best / max(comm, comp) | chunks 1 / best |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label in ("dsv3", "dsv3-narrow"):
        runs = {c: layer_ms(f"{label}-np2-c{c}", out) for c in (1, 2, 4)}
        runs = {c: t for c, t in runs.items() if t is not None}
        if 1 not in runs:
            continue
        best_c = min(runs, key=runs.get)
        comm, comp = trace_split(os.path.join(out, f"trace-{label}-np2-c1.json"))
        bound = max(comm, comp) if comm is not None else None
        print(f"| {label} | {runs[1]:.2f} ms | {runs[best_c]:.2f} ms ({best_c}) | {fmt(comm)} ms | {fmt(comp)} ms | "
              f"{fmt(runs[best_c] / bound if bound else None, '.3f')} | {runs[1] / runs[best_c]:.3f} |")
    a2a = os.path.join(out, "a2a.log")
    if os.path.exists(a2a):
        print("\n## dispatch + combine alone (`moerun bench a2a`, 2 GPUs) beside ncclAlltoAll at equal bytes\n")
        with open(a2a) as f:
            print(f.read())


if __name__ == "__main__":
    main()
