"""Score modifications between ``scale * q k^T`` and the softmax, written once: softcap, ALiBi and an
attention bias / boolean mask. The reference and the PyTorch path call ``modify``; the Triton kernels
implement the same formulas (triton_kernels/score_mods.py) and tests hold them equal.

Order (FlashAttention 2's): ``s = scale * q.k``; ``s = softcap * tanh(s / softcap)`` when softcap > 0
(Gemma 2); ``s += -slope[b, h] * |i + offset - j|`` with ALiBi slopes (offset = seqlen_k - seqlen_q,
bottom-right aligned as FlashAttention); ``s += bias[b, h, i, j]`` for a float bias, or ``s = -inf``
where a boolean mask is False (SDPA's ``attn_mask``); then the causal/window masks.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)
class ScoreMods:
    softcap: float = 0.0  # 0: off
    alibi_slopes: torch.Tensor | None = None  # fp32 (batch, nheads_q), may be an expanded view
    bias: torch.Tensor | None = None  # (batch, nheads_q, seqlen_q, seqlen_k) expanded view; bool = keep-mask

    @property
    def active(self) -> bool:
        return self.softcap > 0 or self.alibi_slopes is not None or self.bias is not None

    @property
    def bias_is_mask(self) -> bool:
        return self.bias is not None and self.bias.dtype == torch.bool


NONE = ScoreMods()


def modify(scores: torch.Tensor, mods: ScoreMods, q_rows: torch.Tensor, k_cols: torch.Tensor, diagonal_offset: int):
    """Modified scores and d(modified)/d(scores) (None when it is 1) for scaled scores of shape
    (batch, nheads_q, len(q_rows), len(k_cols)) of query rows q_rows and key columns k_cols;
    diagonal_offset: key position of query 0 (AttentionParams.diagonal_offset)."""
    grad = None
    if mods.softcap > 0:
        capped = torch.tanh(scores / mods.softcap)
        grad = 1 - capped * capped
        scores = capped * mods.softcap
    if mods.alibi_slopes is not None:
        distance = (q_rows[:, None] + diagonal_offset - k_cols[None, :]).abs().to(scores.dtype)
        scores = scores - mods.alibi_slopes.to(scores.dtype)[:, :, None, None] * distance
    if mods.bias is not None:
        bias = mods.bias[:, :, q_rows][:, :, :, k_cols]
        if mods.bias_is_mask:
            scores = scores.masked_fill(~bias, float("-inf"))
        else:
            scores = scores + bias.to(scores.dtype)
    return scores, grad
