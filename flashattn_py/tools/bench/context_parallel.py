"""``torchrun --nproc-per-node N -m flashattn_py.tools.bench cp``: context-parallel attention on N processes
(one GPU each with NCCL; CPU processes with gloo) against one device's attention on the same total
tokens, per method (ring, zigzag, allgather), forward and forward+backward.

Times are wall-clock medians over --iters calls, each call's time being the slowest rank's (ranks
synchronize before a call; the CP call ends when its last rank does). The single-device baseline runs
on rank 0 alone over the whole sequence. For the ring methods the forward's communication and
computation are also timed apart (the K/V block exchanges alone; the same block attentions with no
exchange), and ``overlap`` = (communication + computation - together) / communication: 1 when the
transfers hide completely behind the attention, 0 when they add up.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.distributed as dist

import flashattn_py as fa
from flashattn_py import backends
from flashattn_py import distributed as cp


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="torchrun --nproc-per-node N -m flashattn_py.tools.bench cp", description=__doc__)
    p.add_argument("--methods", nargs="+", choices=cp.METHODS, default=list(cp.METHODS))
    p.add_argument("--seqlen", type=int, default=4096, help="tokens per rank (default 4096; 512 on CPU)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--causal", choices=["yes", "no"], default="yes")
    p.add_argument("--modes", nargs="+", choices=["fwd", "fwd+bwd"], default=["fwd", "fwd+bwd"])
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--json", metavar="PATH", help="rank 0 also writes the rows as JSON to PATH")
    return p


def _timed(fn, device, iters: int, group=None) -> float:
    """Median ms of fn() over iters calls, each the slowest rank's (group None: this rank alone)."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    fn()
    times = []
    for _ in range(iters):
        if group is not None:
            dist.barrier(group)
        sync()
        start = time.perf_counter()
        fn()
        sync()
        elapsed = torch.tensor([(time.perf_counter() - start) * 1e3], device=device)
        if group is not None:
            dist.all_reduce(elapsed, op=dist.ReduceOp.MAX, group=group)
        times.append(float(elapsed))
    return statistics.median(times)


def _step(fn, inputs, backward: bool):
    def run():
        leaves = [t.detach().requires_grad_(backward) for t in inputs]
        out = fn(*leaves)
        if backward:
            out.sum().backward()
    return run


def _communication_only(k, v, group, rank, world):
    def run():
        block = (k, v)
        for _ in range(world - 1):
            received, requests = cp._ring_exchange(block, group, rank, world)
            for r in requests:
                r.wait()
            block = tuple(received)
    return run


def _computation_only(q, k, v, rank, world, causal, method):
    """The block attentions of a ring forward, with this rank's own K / V standing in for the others'."""
    window = (-1, 0) if causal else (-1, -1)
    options = dict(softmax_scale=None, rotary=None, sinusoidal=None, backend=backends.select("auto", q.device))
    return lambda: cp.ring_forward(q, k, v, None, rank, world, window, method, options, communicate=False)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    cuda = torch.cuda.is_available()
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("nccl" if cuda else "gloo")
    group, rank, world = dist.group.WORLD, dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    seqlen = args.seqlen if cuda or args.seqlen != 4096 else 512
    causal = args.causal == "yes"
    options = dict(causal=causal)
    gen = torch.Generator().manual_seed(0)
    shape = lambda heads: (args.batch, seqlen * world, heads, args.head_dim)  # noqa: E731
    q_all, k_all, v_all = (torch.randn(shape(h), generator=gen).to(device, dtype)
                           for h in (args.heads, args.kv_heads, args.kv_heads))
    rows = []
    for mode in args.modes:
        backward = mode == "fwd+bwd"
        baseline = None
        if rank == 0:
            baseline = _timed(_step(lambda q, k, v: fa.attention(q, k, v, **options), (q_all, k_all, v_all), backward),
                              device, args.iters)
        for method in args.methods:
            shards = [cp.shard_sequence(t, rank, world, method) for t in (q_all, k_all, v_all)]
            call = _step(lambda q, k, v, m=method: cp.context_parallel_attention(q, k, v, method=m, **options),
                         shards, backward)
            ms = _timed(call, device, args.iters, group)
            row = dict(method=method, mode=mode, ranks=world, tokens=seqlen * world, ms=ms, single_device_ms=baseline,
                       speedup=None if baseline is None else baseline / ms, overlap=None)
            if method != "allgather" and not backward and world > 1:
                comm = _timed(_communication_only(shards[1], shards[2], group, rank, world), device, args.iters, group)
                compute = _timed(_computation_only(*shards, rank, world, causal, method), device, args.iters, group)
                row.update(communication_ms=comm, computation_ms=compute,
                           overlap=max(0.0, min(1.0, (comm + compute - ms) / comm)) if comm > 0 else None)
            rows.append(row)
    if rank == 0:
        print(f"context parallelism on {world} ranks ({device.type}, {dtype}): batch {args.batch}, "
              f"{seqlen} tokens per rank, heads {args.heads}/{args.kv_heads}, head_dim {args.head_dim}, "
              f"causal {causal}")
        print(f"{'method':10} {'mode':8} {'ms':>9} {'1 device ms':>12} {'speedup':>8} {'comm ms':>8} "
              f"{'compute ms':>10} {'overlap':>8}")
        for r in rows:
            fmt = lambda x, spec: format("-", ">" + spec.split(".")[0]) if x is None else format(x, spec)  # noqa: E731
            print(f"{r['method']:10} {r['mode']:8} {r['ms']:9.2f} {fmt(r['single_device_ms'], '12.2f')} "
                  f"{fmt(r['speedup'], '8.2f')} {fmt(r.get('communication_ms'), '8.2f')} "
                  f"{fmt(r.get('computation_ms'), '10.2f')} {fmt(r['overlap'], '8.2f')}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
    if owned:
        dist.destroy_process_group()
    return 0
