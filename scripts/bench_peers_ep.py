#!/usr/bin/env python3
"""bench_peers_ep.py: the plain PyTorch expert-parallel MoE layer, the peer moerun's GPU layer is
measured against (scripts/device_run.sh runs both in one call and prints one table).

One MoE layer per GPU, as a PyTorch user would write it: RMSNorm, the router (softmax, or DeepSeek-V3's
sigmoid with correction bias and group-limited top-k), the (token, choice) pairs sorted by expert,
all_to_all_single of the per-expert counts and then of the rows (each pair travels: no dedup per
destination), the received rows sorted by local expert, torch._grouped_mm gate/up, SwiGLU,
torch._grouped_mm down, back the same way, the weighted sum into the token's row; optionally the
shared expert (a dense SwiGLU on every token). Shapes come from moerun's config (model section);
weights are seeded uniform with moerun's scale (1/sqrt(fan_in)), bf16, so the router's choices have
the same statistics as moerun's seeded router (not the same values: timing does not depend on them).
Times are CUDA-event medians over the measured iterations after warm-up, each iteration starting
at a barrier, the slowest rank's time reported.

    python3 -m torch.distributed.run --standalone --nproc-per-node=P scripts/bench_peers_ep.py \
        --config configs/deepseek-v3.yaml --tokens 4096 [--no-shared] [--iters 20] [--warmup 5]

Prints one line per case: `peer_ep model M gpus P tokens T shared S ms X a2a_gbs Y`.
"""
import argparse
import os
import statistics

import torch
import torch.distributed as dist
import yaml


def grouped_mm():
    f = getattr(torch.nn.functional, "grouped_mm", None)
    return f if f is not None else torch._grouped_mm


def uniform(gen, shape, fan_in, dev):
    bound = 1.0 / fan_in ** 0.5
    return ((torch.rand(shape, generator=gen, device=dev) * 2 - 1) * bound).to(torch.bfloat16)


class Layer:
    def __init__(self, m, rank, world, dev, shared):
        self.d, self.f, self.E, self.k = m["d_model"], m["d_ff"], m["experts"], m["top_k"]
        self.E_local = self.E // world
        self.rank, self.world = rank, world
        self.sigmoid = m.get("scoring", "softmax") == "sigmoid"
        self.groups, self.groups_kept = m.get("groups", 1), m.get("groups_kept", 1)
        self.renorm, self.scaling = m.get("renormalize", True), float(m.get("routed_scaling", 1.0))
        fs = m.get("shared_experts", 0) * m.get("shared_d_ff", 0) if shared else 0
        gen = torch.Generator(device=dev).manual_seed(1234)
        d, f = self.d, self.f
        self.norm = torch.ones(d, device=dev, dtype=torch.float32)
        self.router = ((torch.rand((self.E, d), generator=gen, device=dev) * 2 - 1) / d ** 0.5).float()
        self.bias = ((torch.rand(self.E, generator=gen, device=dev) * 2 - 1) * 0.05).float()
        # _grouped_mm takes [E, in, out]: nn.Linear's [E, out, in] transposed (a view, as a model has it)
        self.w_gu = uniform(gen, (self.E_local, 2 * f, d), d, dev).transpose(1, 2)
        self.w_d = uniform(gen, (self.E_local, d, f), f, dev).transpose(1, 2)
        self.fs = fs
        if fs:
            self.s_gu = uniform(gen, (2 * fs, d), d, dev)
            self.s_d = uniform(gen, (d, fs), fs, dev)
        self.gmm = grouped_mm()

    def route(self, h32):
        logits = h32 @ self.router.t()
        if not self.sigmoid:
            scores = torch.softmax(logits, dim=-1)
            w, ids = torch.topk(scores, self.k, dim=-1)
        else:
            scores = torch.sigmoid(logits)
            choice = scores + self.bias
            if self.groups > 1:
                g = choice.view(-1, self.groups, self.E // self.groups)
                gscore = g.topk(2, dim=-1).values.sum(-1)
                keep = gscore.topk(self.groups_kept, dim=-1).indices
                mask = torch.zeros_like(gscore, dtype=torch.bool).scatter_(1, keep, True)
                choice = choice.masked_fill(~mask.repeat_interleave(self.E // self.groups, dim=1), float("-inf"))
            ids = torch.topk(choice, self.k, dim=-1).indices
            w = scores.gather(1, ids)
        if self.renorm:
            w = w / w.sum(-1, keepdim=True)
        return ids, (w * self.scaling).float()

    def forward(self, x):
        T, d, k = x.shape[0], self.d, self.k
        h32 = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.norm
        h = h32.to(torch.bfloat16)
        ids, w = self.route(h32)
        flat = ids.reshape(-1)
        order = torch.argsort(flat, stable=True)
        rows = h.index_select(0, order // k)
        counts = torch.bincount(flat, minlength=self.E).to(torch.int32)
        recv_counts = torch.empty_like(counts)
        dist.all_to_all_single(recv_counts, counts)  # [source][local expert]
        send_split = counts.view(self.world, self.E_local).sum(1).tolist()
        recv_split = recv_counts.view(self.world, self.E_local).sum(1).tolist()
        recv = torch.empty((sum(recv_split), d), device=x.device, dtype=torch.bfloat16)
        dist.all_to_all_single(recv, rows, recv_split, send_split)
        # received rows: by source, then by local expert; regroup by local expert
        local_ids = torch.repeat_interleave(
            torch.arange(self.E_local, device=x.device).repeat(self.world), recv_counts.long())
        regroup = torch.argsort(local_ids, stable=True)
        xe = recv.index_select(0, regroup)
        offs = torch.cumsum(recv_counts.view(self.world, self.E_local).sum(0), 0).to(torch.int32)
        gu = self.gmm(xe, self.w_gu, offs=offs)
        act = torch.nn.functional.silu(gu[:, :self.f]) * gu[:, self.f:]
        ye = self.gmm(act, self.w_d, offs=offs)
        y = torch.empty_like(ye)
        y[regroup] = ye
        back = torch.empty_like(rows)
        dist.all_to_all_single(back, y, send_split, recv_split)
        out = torch.zeros((T, d), device=x.device, dtype=torch.float32)
        contrib = back.float() * w.reshape(-1)[order].unsqueeze(1)
        out.index_add_(0, order // k, contrib)
        if self.fs:
            sg = h @ self.s_gu.t()
            out += (torch.nn.functional.silu(sg[:, :self.fs]) * sg[:, self.fs:]) @ self.s_d.t()
        return x + out, sum(send_split) - send_split[self.rank]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--tokens", type=int, nargs="+", default=[4096])
    ap.add_argument("--no-shared", action="store_true")
    ap.add_argument("--d-ff", type=int, help="expert width (and the shared expert's) instead of the config's")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    a = ap.parse_args()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    torch.cuda.set_device(local)
    dev = torch.device("cuda", local)
    dist.init_process_group("nccl", device_id=dev)
    with open(a.config) as fh:
        m = yaml.safe_load(fh)["model"]
    if a.d_ff:
        m["d_ff"] = a.d_ff
        if m.get("shared_d_ff"):
            m["shared_d_ff"] = a.d_ff
    layer = Layer(m, rank, world, dev, not a.no_shared)
    for T in a.tokens:
        gen = torch.Generator(device=dev).manual_seed(99 + rank)
        x = torch.randn((T, layer.d), generator=gen, device=dev, dtype=torch.float32)
        times, remote = [], 0
        for it in range(a.warmup + a.iters):
            dist.barrier()
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            _, remote = layer.forward(x)
            e.record()
            e.synchronize()
            if it >= a.warmup:
                times.append(s.elapsed_time(e))
        med = torch.tensor([statistics.median(times)], device=dev)
        dist.all_reduce(med, op=dist.ReduceOp.MAX)
        ms = med.item()
        row_bytes = layer.d * 2
        gbs = 2 * remote * row_bytes / (ms * 1e-3) / 1e9  # remote rows out and back, over the layer time
        if rank == 0:
            print(f"peer_ep model {m.get('name', '?')} d_ff {layer.f} gpus {world} tokens {T} shared {int(bool(layer.fs))} "
                  f"ms {ms:.3f} remote_rows {remote} a2a_gbs_over_layer {gbs:.1f}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
