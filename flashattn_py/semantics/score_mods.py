"""Score modifications between ``scale * q k^T`` and the softmax, written once: softcap, ALiBi and an
attention bias / boolean mask. The reference and the PyTorch path call ``modify``; the Triton kernels
implement the same formulas (triton_kernels/score_mods.py) and tests hold them equal.

Order (FlashAttention 2's): ``s = scale * q.k``; ``s = softcap * tanh(s / softcap)`` when softcap > 0
(Gemma 2); ``s += -slope[b, h] * |i + offset - j|`` with ALiBi slopes (offset = seqlen_k - seqlen_q,
bottom-right aligned as FlashAttention); ``s += bias[b, h, i, j]`` for a float bias, or ``s = -inf``
where a boolean mask is False (SDPA's ``attn_mask``); then the causal/window masks.

Attention sinks (GPT-OSS, FlashAttention 3's ``learnable_sink``): one learned logit ``sink[h]`` per
query head joins every row's softmax normalizer with no value vector:
``P[i, j] = exp(s[i, j]) / (exp(sink[h]) + sum_j' exp(s[i, j']))``, so a row's weights sum to less than
one, a row that sees no key gets output 0, and the log-sum-exp every backend returns includes the sink
(lse = log(exp(sink) + sum_j exp(s[i, j])) >= sink). With that lse the backward of q, k, v is unchanged
(the sink is a column whose value vector is 0), and the sink's own gradient needs only lse and
delta = rowsum(dO * O): ``dsink[h] = -sum_{b, i} exp(sink[h] - lse[b, h, i]) * delta[b, h, i]``
(`sink_grad`). A float bias that requires grad gets ``dbias = dS`` summed over the dimensions it was
broadcast along (`key_broadcast_bias_grad` for one constant per row, the kernels' job otherwise).
"""
from __future__ import annotations

import torch

from ..params import ScoreMods


def with_bias(mods: ScoreMods, bias_source: torch.Tensor | None, shape: tuple) -> ScoreMods:
    """mods with the 4-D bias_source (or None) as its bias, expanded to (batch, nheads_q, sq, sk) = shape."""
    bias = None if bias_source is None else bias_source.expand(shape)
    return ScoreMods(mods.softcap, mods.alibi_slopes, bias, mods.sinks, bias_source)


def bias_broadcast_along_keys(bias_source: torch.Tensor) -> bool:
    """A bias with one value per row (size 1 along the keys) shifts each row by a constant."""
    return bias_source.shape[3] == 1


def _sink_weight(sinks: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """exp(sink - lse): the sink's own weight in each row, for lse (batch, nheads_q, seqlen_q) or packed
    (nheads_q, total_q) (heads on dim -2 either way); rows with lse -inf (a sink of -inf) weigh 0."""
    weight = torch.exp(sinks.float()[:, None] - lse)
    return torch.where(torch.isfinite(weight), weight, 0.0)


def sink_grad(sinks: torch.Tensor, lse: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """dL/dsinks (nheads_q,) fp32 from lse and delta = rowsum(dO * O), both shaped like the lse (fp32,
    natural-log units)."""
    return -(_sink_weight(sinks, lse) * delta).sum(-1).reshape(-1, sinks.shape[0]).sum(0)


def key_broadcast_bias_grad(sinks: torch.Tensor | None, lse: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """dS summed over each row's keys, (batch, nheads_q, seqlen_q, 1) fp32: what a bias broadcast along
    the keys gets. sum_j P (dP - delta) = delta (1 - sum_j P) = delta * (the sink's weight), exactly 0
    without sinks (a constant added to a row does not change its softmax). lse, delta: (b, h, sq)."""
    if sinks is None:
        return torch.zeros((*delta.shape, 1), dtype=torch.float32, device=delta.device)
    return (_sink_weight(sinks, lse) * delta)[..., None]


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
