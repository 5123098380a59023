"""``python -m flashattn_py.bench``: check every backend against the reference, then time it.

On a GPU: forward and forward+backward TFLOP/s of our Triton kernels against PyTorch SDPA on the
same inputs (triton.testing.do_bench, median), after checking both against the float64 reference.
On a CPU: the correctness check only, at small sizes; the Triton interpreter's speed says nothing
about GPU speed and is never reported as a figure.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are imported

import flashattn_py as fa  # noqa: E402

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def attention_flops(batch, heads, seqlen_q, seqlen_k, head_dim, causal, mode) -> float:
    """4*B*H*Sq*Sk*D for the forward (two matmuls), halved for causal; backward is 2.5x forward."""
    fwd = 4 * batch * heads * seqlen_q * seqlen_k * head_dim * (0.5 if causal else 1.0)
    return fwd * {"fwd": 1.0, "fwd+bwd": 3.5}[mode]


def _inputs(batch, heads, kv_heads, seqlen, head_dim, dtype, device):
    gen = torch.Generator(device="cpu").manual_seed(0)
    make = lambda h: torch.randn(batch, seqlen, h, head_dim, generator=gen).to(device, dtype)  # noqa: E731
    return make(heads), make(kv_heads), make(kv_heads), make(heads)


def _sdpa(q, k, v, causal):
    # SDPA is bhsd with top-left causal; seqlen_q == seqlen_k here so alignment agrees.
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal,
        enable_gqa=q.shape[2] != k.shape[2])
    return out.transpose(1, 2)


def max_error_vs_reference(fn, q, k, v, causal) -> float:
    expected = fa.reference.attention(q, k, v, causal=causal)
    return (fn(q, k, v, causal).double() - expected).abs().max().item()


def correctness_table(args, device):
    rows = []
    backends = {"triton": None, "torch": None} if device.type == "cpu" else {"triton": None, "sdpa": _sdpa}
    for seqlen in (17, 130):
        for causal in (False, True):
            q, k, v, _ = _inputs(1, args.heads, args.kv_heads or args.heads, seqlen, args.head_dim,
                                 DTYPES[args.dtype], device)
            for name, fn in backends.items():
                fn = fn or (lambda q, k, v, c, name=name: fa.attention(q, k, v, causal=c, backend=name))
                rows.append((name, seqlen, causal, max_error_vs_reference(fn, q, k, v, causal)))
    print(f"max |out - float64 reference|, {args.dtype}, head_dim {args.head_dim}, {device.type}")
    for name, seqlen, causal, err in rows:
        print(f"  {name:8s} seqlen {seqlen:5d} causal {causal!s:5s}  {err:.2e}")


def timing_table(args, device):
    import triton.testing

    kv_heads = args.kv_heads or args.heads
    print(f"\n{torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}  {args.dtype}"
          f"  batch {args.batch}  heads {args.heads}/{kv_heads}  head_dim {args.head_dim}")
    print(f"{'seqlen':>7} {'causal':>6} {'mode':>8} {'ours TF/s':>10} {'sdpa TF/s':>10} {'ours/sdpa':>9}")
    for seqlen in args.seqlens:
        for causal in (False, True):
            q, k, v, dout = _inputs(args.batch, args.heads, kv_heads, seqlen, args.head_dim, DTYPES[args.dtype], device)
            for mode in ("fwd", "fwd+bwd"):
                times = {}
                for name, fn in (("ours", lambda: fa.attention(q, k, v, causal=causal, backend="triton")),
                                 ("sdpa", lambda: _sdpa(q, k, v, causal))):
                    if mode == "fwd+bwd":
                        for t in (q, k, v):
                            t.requires_grad_(True)
                        step = lambda fn=fn: torch.autograd.grad(fn(), (q, k, v), dout)  # noqa: E731
                    else:
                        step = fn
                    with torch.inference_mode(mode == "fwd"):
                        times[name] = triton.testing.do_bench(step, return_mode="median")
                flops = attention_flops(args.batch, args.heads, seqlen, seqlen, args.head_dim, causal, mode)
                ours, sdpa = (flops / times[n] / 1e9 for n in ("ours", "sdpa"))
                print(f"{seqlen:7d} {causal!s:>6} {mode:>8} {ours:10.1f} {sdpa:10.1f} {ours / sdpa:9.2f}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m flashattn_py.bench", description=__doc__)
    parser.add_argument("--dtype", choices=DTYPES, default="fp16")
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=None)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seqlens", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        args.heads, args.kv_heads = min(args.heads, 2), min(args.kv_heads or 2, 2)
    correctness_table(args, device)
    if device.type == "cpu":
        print("\nNo GPU: correctness only. Triton ran in its CPU interpreter, whose speed is not a performance figure.")
        return 0
    timing_table(args, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
