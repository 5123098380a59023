"""``python -m flashattn_py.bench``: check every implementation against the reference, then time it.

On a GPU: forward and forward+backward TFLOP/s of our Triton kernels against PyTorch SDPA on the
same inputs (triton.testing.do_bench, median), each implementation first checked against the float64
reference; ``--rotary`` compares fused RoPE (each K strategy) with apply_rotary + attention and with
eager RoPE + SDPA. On a CPU: the correctness check only, at small sizes; the Triton interpreter's
speed says nothing about GPU speed and is never reported as a figure.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are imported

from flashattn_py.bench.peers import attention_peers, reference_for  # noqa: E402

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
MODES = ("fwd", "fwd+bwd")


def attention_flops(batch, heads, seqlen_q, seqlen_k, head_dim, causal, mode) -> float:
    """4*B*H*Sq*Sk*D for the forward (two matmuls), halved for causal; backward is 2.5x forward."""
    fwd = 4 * batch * heads * seqlen_q * seqlen_k * head_dim * (0.5 if causal else 1.0)
    return fwd * {"fwd": 1.0, "fwd+bwd": 3.5}[mode]


def make_inputs(batch, heads, kv_heads, seqlen, head_dim, dtype, device):
    gen = torch.Generator(device="cpu").manual_seed(0)
    make = lambda h: torch.randn(batch, seqlen, h, head_dim, generator=gen).to(device, dtype)  # noqa: E731
    return make(heads), make(kv_heads), make(kv_heads), make(heads)


def correctness_rows(args, device, seqlens):
    """(name, seqlen, causal, max |out - float64 reference|) for every peer."""
    rows = []
    for seqlen in seqlens:
        for causal in (False, True):
            q, k, v, _ = make_inputs(1, args.heads, args.kv_heads, seqlen, args.head_dim, DTYPES[args.dtype], device)
            expected = reference_for(args.rotary, causal)(q, k, v)
            for name, fn in attention_peers(args.backend, causal, args.rotary).items():
                rows.append((name, seqlen, causal, (fn(q, k, v).double() - expected).abs().max().item()))
    return rows


def timing_rows(args, device, timer):
    """(seqlen, causal, mode, name, ms, TFLOP/s) for every peer; timer(fn) -> milliseconds."""
    rows = []
    for seqlen in args.seqlens:
        for causal in (False, True):
            q, k, v, dout = make_inputs(args.batch, args.heads, args.kv_heads, seqlen, args.head_dim,
                                        DTYPES[args.dtype], device)
            leaves = [t.detach().requires_grad_() for t in (q, k, v)]
            for mode in MODES:
                for name, fn in attention_peers(args.backend, causal, args.rotary).items():
                    if mode == "fwd":
                        def step(fn=fn):
                            with torch.no_grad():
                                return fn(q, k, v)
                    else:
                        def step(fn=fn):
                            return torch.autograd.grad(fn(*leaves), leaves, dout)
                    ms = timer(step)
                    flops = attention_flops(args.batch, args.heads, seqlen, seqlen, args.head_dim, causal, mode)
                    rows.append((seqlen, causal, mode, name, ms, flops / ms / 1e9))
    return rows


def print_timing(rows):
    baseline = {}
    for seqlen, causal, mode, name, ms, tflops in rows:
        baseline.setdefault((seqlen, causal, mode), tflops)  # the first peer listed is ours
    print(f"{'seqlen':>7} {'causal':>6} {'mode':>8} {'implementation':>22} {'ms':>9} {'TFLOP/s':>8} {'vs first':>8}")
    for seqlen, causal, mode, name, ms, tflops in rows:
        ratio = tflops / baseline[(seqlen, causal, mode)]
        print(f"{seqlen:7d} {causal!s:>6} {mode:>8} {name:>22} {ms:9.3f} {tflops:8.1f} {ratio:8.2f}")


def environment(device) -> dict:
    """What a result needs to be reproduced: machine, versions, date, the command."""
    import triton

    return {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})",
        "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m flashattn_py.bench " + " ".join(sys.argv[1:]),
    }


def write_results(out_dir: Path, name: str, env: dict, correctness, timing) -> None:
    """<name>.json (everything) and <name>.csv (the timing table) under out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    keys_c = ("implementation", "seqlen", "causal", "max_abs_error")
    keys_t = ("seqlen", "causal", "mode", "implementation", "ms", "tflops")
    data = {"environment": env, "correctness": [dict(zip(keys_c, r)) for r in correctness],
            "timing": [dict(zip(keys_t, r)) for r in timing]}
    (out_dir / f"{name}.json").write_text(json.dumps(data, indent=1))
    lines = [",".join(keys_t)] + [",".join(str(x) for x in r) for r in timing]
    (out_dir / f"{name}.csv").write_text("\n".join(lines) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m flashattn_py.bench", description=__doc__)
    parser.add_argument("--dtype", choices=DTYPES, default="bf16" if torch.cuda.is_available() else "fp16")
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=None)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seqlens", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--rotary", action="store_true", help="compare fused RoPE with unfused RoPE + attention")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--out", type=Path, help="also write <name>.json and <name>.csv into this folder")
    parser.add_argument("--name", default=None, help="file name stem for --out (default: from the options)")
    args = parser.parse_args(argv)
    args.kv_heads = args.kv_heads or args.heads
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        args.heads, args.kv_heads, args.head_dim, args.backend = 2, 2, min(args.head_dim, 64), "triton"
    env = environment(device)
    name = args.name or f"{'rope' if args.rotary else 'attention'}-{args.dtype}-d{args.head_dim}"
    print(f"max |out - float64 reference|, {args.dtype}, head_dim {args.head_dim}, on {device.type}")
    correctness = correctness_rows(args, device, seqlens=(17, 130))
    for impl, seqlen, causal, err in correctness:
        print(f"  {impl:22s} seqlen {seqlen:5d} causal {causal!s:5s}  {err:.2e}")
    if device.type == "cpu":
        print("\nNo GPU: correctness only. Triton ran in its CPU interpreter, whose speed is not a performance figure.")
        if args.out:
            write_results(args.out, name, env, correctness, [])
        return 0
    import triton.testing

    print(f"\n{env['device']}  torch {env['torch']}  triton {env['triton']}  {args.dtype}  "
          f"batch {args.batch}  heads {args.heads}/{args.kv_heads}  head_dim {args.head_dim}")
    timing = timing_rows(args, device, timer=lambda fn: triton.testing.do_bench(fn, return_mode="median"))
    print_timing(timing)
    if args.out:
        write_results(args.out, name, env, correctness, timing)
    return 0


if __name__ == "__main__":
    sys.exit(main())
