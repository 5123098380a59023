"""CPU: per-sequence lengths against the dense call on the same tokens (issue 22, item 3), one run.

``python bench/cpu_varlen.py [--threads N] [--rounds R] [--only NAME ...]``

Each scenario times our call with per-sequence lengths (flash_attn_with_kvcache with cache_seqlens, or
flash_attn_varlen_func) and the dense call on as many tokens in sequences of equal length (fa.attention,
and SDPA on CPU for reference), interleaved in rounds (runner.interleaved_cpu_timer), medians: the
machine is shared, so only ratios within one run are figures. fp32, causal, d64.

Causal attention's work grows with the square of a sequence's length, so varied lengths hold more
(query, key) pairs than equal ones with the same token count (lengths uniform in 1..m: ~1.3x). The last
column divides the ratio by that factor: ours against the dense call per (query, key) pair computed.
"""
from __future__ import annotations

import argparse
import sys

import torch

import flashattn_py as fa
from flashattn_py.tools.bench.runner import interleaved_cpu_timer

F = torch.nn.functional


def _sdpa(q, k, v, causal):
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal,
                                         enable_gqa=q.shape[2] != k.shape[2])
    return out.transpose(1, 2)


def decode(batch: int, capacity: int, heads: int, kv_heads: int, gen) -> dict:
    """One query token per sequence against caches of `capacity` slots, lengths uniform in [1, capacity]."""
    k_cache, v_cache = (torch.randn(batch, capacity, kv_heads, 64, generator=gen) for _ in range(2))
    q = torch.randn(batch, 1, heads, 64, generator=gen)
    seqlens = torch.randint(1, capacity + 1, (batch,), generator=gen, dtype=torch.int32)
    mean = int(seqlens.float().mean().round())
    kd, vd = k_cache[:, :mean].contiguous(), v_cache[:, :mean].contiguous()
    work = float(seqlens.sum()) / (batch * mean)  # (query, key) pairs: ours / the dense call's
    return work, {"ours": lambda: fa.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqlens),
            "dense": lambda: fa.attention(q, kd, vd),
            "sdpa_dense": lambda: _sdpa(q, kd, vd, False)}


def packed(count: int, max_len: int, heads: int, gen, backward: bool) -> dict:
    """`count` causal self-attention sequences of lengths uniform in [1, max_len], packed."""
    lengths = torch.randint(1, max_len + 1, (count,), generator=gen)
    total = int(lengths.sum())
    cu = torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
    q, k, v, do = (torch.randn(total, heads, 64, generator=gen) for _ in range(4))
    mean = max(1, round(total / count))
    work = float((lengths * (lengths + 1)).sum()) / (count * mean * (mean + 1))  # causal pairs: ours / dense
    qd, kd, vd, dod = (torch.randn(count, mean, heads, 64, generator=gen) for _ in range(4))

    def ours(q, k, v):
        return fa.flash_attn_varlen_func(q, k, v, cu, cu, max_len, max_len, causal=True)

    def dense(q, k, v):
        return fa.attention(q, k, v, causal=True)

    def sdpa(q, k, v):
        return _sdpa(q, k, v, True)

    if not backward:
        def step(fn, *inputs):
            def run():
                with torch.no_grad():
                    return fn(*inputs)
            return run
        return work, {"ours": step(ours, q, k, v), "dense": step(dense, qd, kd, vd),
                      "sdpa_dense": step(sdpa, qd, kd, vd)}

    def step(fn, *inputs):
        leaves = [t.clone().requires_grad_() for t in inputs[:3]]
        return lambda: torch.autograd.grad(fn(*leaves), leaves, inputs[3])
    return work, {"ours": step(ours, q, k, v, do), "dense": step(dense, qd, kd, vd, dod),
                  "sdpa_dense": step(sdpa, qd, kd, vd, dod)}


SCENARIOS = {
    "decode b32 cache2048 gqa16/4": lambda g: decode(32, 2048, 16, 4, g),
    "decode b32 cache64 gqa16/4": lambda g: decode(32, 64, 16, 4, g),
    "packed 4096 x 1..8 fwd": lambda g: packed(4096, 8, 8, g, False),
    "packed 2048 x 1..16 fwd": lambda g: packed(2048, 16, 8, g, False),
    "packed 2048 x 1..16 fwd+bwd": lambda g: packed(2048, 16, 8, g, True),
    "packed 256 x 1..64 fwd": lambda g: packed(256, 64, 8, g, False),
    "packed 256 x 1..64 fwd+bwd": lambda g: packed(256, 64, 8, g, True),
    "packed 128 x 1..128 fwd+bwd": lambda g: packed(128, 128, 8, g, True),
    "packed 64 x 1..512 fwd": lambda g: packed(64, 512, 8, g, False),
    "packed 64 x 1..512 fwd+bwd": lambda g: packed(64, 512, 8, g, True),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--rounds", type=int, default=9, help="interleaved rounds at least")
    p.add_argument("--only", nargs="+", help="scenarios whose name contains one of these")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, d64, causal; medians of >= "
          f"{args.rounds} interleaved rounds (ms); ratio = ours / dense on the same tokens; per pair = that ratio "
          "/ (ours' (query, key) pairs / the dense call's)")
    for name, make in SCENARIOS.items():
        if args.only and not any(o in name for o in args.only):
            continue
        work, steps = make(torch.Generator().manual_seed(0))
        ms = dict(zip(steps, interleaved_cpu_timer(list(steps.values()), reps=args.rounds, budget_s=0.5)))
        ratio = ms["ours"] / ms["dense"]
        print(f"{name:32s} " + "  ".join(f"{n} {t:8.2f}" for n, t in ms.items())
              + f"  ours/dense {ratio:.2f}  pairs x{work:.2f}  per pair {ratio / work:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
