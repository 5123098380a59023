"""Validation of packed variable-length calls (FlashAttention 2's layout): q (total_q, nheads, head_dim),
k/v (total_k, nheads_k, head_dim), sequence b being rows cu_seqlens[b] .. cu_seqlens[b+1] - 1 ->
params.AttentionParams with SequenceLengths. Every per-sequence rule restarts: RoPE / sinusoidal
positions start at 0 in each sequence (`token_positions`)."""
from __future__ import annotations

import dataclasses

import torch

from ..params import AttentionParams, SequenceLengths
from .attention import attention_params
from .common import check_device, check_int, check_tensor, reads_values
from .score_mods import check_score_mods


def check_cu_seqlens(cu: torch.Tensor, name: str, total: int, max_seqlen: int, device) -> None:
    check_tensor(name, cu)
    if cu.dtype != torch.int32 or cu.dim() != 1 or cu.numel() < 1:
        raise ValueError(f"{name} must be a 1-D int32 tensor of batch + 1 prefix sums, got {cu.dtype} "
                         f"of shape {tuple(cu.shape)}")
    check_device(name, cu, device)
    check_int(f"max_seqlen for {name}", max_seqlen)
    if not reads_values():
        return  # they read the tensor on the host: a graph break while torch.compile traces, illegal while
        # a CUDA graph is captured (validate eagerly once); see docs/entry-points.md
    # One small device-to-host copy: bad offsets would make the kernels read out of bounds.
    values = cu.tolist()
    lengths = [b - a for a, b in zip(values, values[1:])]
    if values[0] != 0 or values[-1] != total or any(n < 0 for n in lengths):
        raise ValueError(f"{name} must start at 0, never decrease and end at the packed length {total}; got {values}")
    if lengths and max(lengths) > max_seqlen:
        raise ValueError(f"{name} has a sequence of length {max(lengths)} > max_seqlen {max_seqlen}")


def token_positions(cu: torch.Tensor, total: int) -> torch.Tensor:
    """(1, total) int64: each packed row's position within its own sequence (0, 1, ... per sequence)."""
    rows = torch.arange(total, device=cu.device)
    sequence = torch.searchsorted(cu[1:].to(torch.int64), rows, right=True)
    return (rows - cu.to(torch.int64)[sequence])[None]


def varlen_params(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, alibi_slopes=None,
                  rotary=None, sinusoidal=None, pe_k_strategy="auto", **options) -> AttentionParams:
    """AttentionParams of a packed call; q, k, v are the packed (total, nheads, head_dim) tensors."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t)
        if t.dim() != 3:
            raise ValueError(f"{name} must be packed (total_tokens, nheads, head_dim), got shape {tuple(t.shape)}")
    q4, k4, v4 = q[None], k[None], v[None]
    if isinstance(cu_seqlens_q, torch.Tensor) and isinstance(cu_seqlens_k, torch.Tensor) \
            and cu_seqlens_q.shape != cu_seqlens_k.shape:  # first: their values would be judged by a wrong max_seqlen
        raise ValueError(f"cu_seqlens_q describes {cu_seqlens_q.shape[0] - 1} sequences but cu_seqlens_k "
                         f"{cu_seqlens_k.shape[0] - 1}")
    check_cu_seqlens(cu_seqlens_q, "cu_seqlens_q", q.shape[0], max_seqlen_q, q.device)
    check_cu_seqlens(cu_seqlens_k, "cu_seqlens_k", k.shape[0], max_seqlen_k, q.device)
    if pe_k_strategy == "in_kernel":
        raise ValueError("pe_k_strategy='in_kernel' is not available for packed sequences (positions restart per "
                         "sequence; the encoding runs as a pre-pass): use 'auto' or 'prepass'")
    encoded = rotary is not None or sinusoidal is not None
    positions = dict(q_positions=token_positions(cu_seqlens_q, q.shape[0]),
                     k_positions=token_positions(cu_seqlens_k, k.shape[0])) if encoded else {}
    params = attention_params(q4, k4, v4, rotary=rotary, sinusoidal=sinusoidal, pe_k_strategy=pe_k_strategy,
                                     **positions, **options)
    batch = cu_seqlens_q.shape[0] - 1
    mods = check_score_mods(params.mods.softcap, alibi_slopes, None, batch=batch, nheads_q=params.nheads_q,
                                   seqlen_q=max_seqlen_q, seqlen_k=max_seqlen_k, device=q.device,
                                   sinks=params.mods.sinks)
    lengths = SequenceLengths(cu_seqlens_q, cu_seqlens_k, total_q=q.shape[0], total_k=k.shape[0])
    return dataclasses.replace(params, batch=batch, seqlen_q=max_seqlen_q, seqlen_k=max_seqlen_k, lengths=lengths,
                               mods=mods if mods.active else params.mods)
