"""The attention implementations the harness compares, as callables on bshd q, k, v.

Each entry builds ``fn(q, k, v) -> out`` for one configuration. Peers that apply RoPE do so the way a
model would without our fused kernels: a separate rotary op, then attention.
"""
from __future__ import annotations

import torch

import flashattn_py as fa
from flashattn_py.positional import Rotary


def sdpa(q, k, v, causal):
    # SDPA is bhsd with top-left is_causal; the harness uses seqlen_q == seqlen_k, where both agree.
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal,
        enable_gqa=q.shape[2] != k.shape[2])
    return out.transpose(1, 2)


def torch_rope(x, base=10000.0):
    """RoPE in eager torch ops (GPT-NeoX convention), as a model without fused kernels computes it."""
    seqlen, dim = x.shape[1], x.shape[-1]
    inv_freq = base ** (-torch.arange(0, dim, 2, device=x.device, dtype=torch.float32) / dim)
    angles = torch.arange(seqlen, device=x.device, dtype=torch.float32)[:, None] * inv_freq
    cos, sin = angles.cos()[None, :, None, :].to(x.dtype), angles.sin()[None, :, None, :].to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def attention_peers(backend: str, causal: bool, rotary: bool) -> dict:
    """name -> fn(q, k, v). Without rotary: ours vs SDPA. With rotary: our fused kernels (each K
    strategy), our apply_rotary + our attention, eager RoPE + SDPA."""
    if not rotary:
        return {"ours": lambda q, k, v: fa.attention(q, k, v, causal=causal, backend=backend),
                "sdpa": lambda q, k, v: sdpa(q, k, v, causal)}
    rope = Rotary()
    peers = {
        f"ours_rope_{strategy}": (lambda q, k, v, s=strategy: fa.attention(
            q, k, v, causal=causal, rotary=rope, pe_k_strategy=s, backend=backend))
        for strategy in ("auto", "in_kernel", "prepass")
    }
    peers["apply_rotary+ours"] = lambda q, k, v: fa.attention(
        fa.apply_rotary(q, rope, backend=backend), fa.apply_rotary(k, rope, backend=backend), v,
        causal=causal, backend=backend)
    peers["torch_rope+sdpa"] = lambda q, k, v: sdpa(torch_rope(q), torch_rope(k), v, causal)
    return peers


def reference_for(rotary: bool, causal: bool):
    """The float64 reference for what every peer in attention_peers(...) computes."""
    options = dict(causal=causal, rotary=Rotary() if rotary else None)
    return lambda q, k, v: fa.reference.attention(q, k, v, **options)
