"""The naive attention every backend is tested against: materialized scores, plain torch ops, float64 by default.

Tests compare every backend with it. Running it in float16/bfloat16 (``compute_dtype``) gives the
"naive implementation in low precision" whose error sets the tolerance for the fused kernels.
Differentiable with plain autograd; a query that sees no key yields output 0, lse -inf and zero
gradients (the row max is replaced by 0 and the normalizer by 1 so no 0/0 or inf-inf appears).
"""
from __future__ import annotations

import torch

from ..params import AttentionParams
from . import masks, positional, score_mods


def masked_scores(q: torch.Tensor, k: torch.Tensor, params: AttentionParams,
                  compute_dtype: torch.dtype) -> torch.Tensor:
    """Scores (batch, nheads_q, seqlen_q, seqlen_k) in compute_dtype: encoded q, k; scale; softcap /
    ALiBi / bias; -inf where the causal / window masks hide a key."""
    q, k = positional.encode_qk(q.to(compute_dtype), k.to(compute_dtype), params.encoding)
    # GQA/MQA: query head h reads key/value head h // group_size.
    k = k.repeat_interleave(params.group_size, dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * params.softmax_scale
    q_rows, k_cols = torch.arange(params.seqlen_q, device=q.device), torch.arange(params.seqlen_k, device=q.device)
    # autograd differentiates it
    scores, _ = score_mods.modify(scores, params.mods, q_rows, k_cols, params.diagonal_offset)
    visible = masks.visible_keys(q_rows, k_cols, params.seqlen_q, params.seqlen_k, params.window,
                                 params.diagonal_offset)
    return scores.masked_fill(~visible, float("-inf"))


def probabilities(q: torch.Tensor, k: torch.Tensor, params: AttentionParams,
                  compute_dtype=torch.float32) -> torch.Tensor:
    """The attention weights softmax(scores) (batch, nheads_q, seqlen_q, seqlen_k), materialized (for
    need_weights / return_attn_probs); rows that see no key are all 0. Dropout is not applied."""
    scores = masked_scores(q, k, params, compute_dtype)
    if params.mods.sinks is not None:  # the sink's column joins the softmax and is dropped (score_mods.py)
        sink = params.mods.sinks.to(scores.dtype)[None, :, None, None].expand(*scores.shape[:3], 1)
        return torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1].nan_to_num(0.0)
    seen = torch.isfinite(scores).any(dim=-1, keepdim=True)
    return torch.where(seen, torch.softmax(torch.where(seen, scores, 0.0), dim=-1), 0.0)


def attention_from_params(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params: AttentionParams, compute_dtype: torch.dtype,
    dropout_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """bshd q, k, v -> (out bshd in compute_dtype, lse (batch, nheads_q, seqlen_q) in compute_dtype).

    With dropout, dropout_mask (batch, nheads_q, seqlen_q, seqlen_k), True = keep, says which
    normalized weights survive; survivors are scaled by 1 / (1 - dropout_p). lse is unaffected.
    """
    v = v.to(compute_dtype).repeat_interleave(params.group_size, dim=2)
    scores = masked_scores(q, k, params, compute_dtype)
    if params.seqlen_k > 0:
        row_max = scores.amax(dim=-1, keepdim=True).detach()
    else:  # amax refuses an empty dim; with no keys every row sees nothing
        row_max = scores.new_full((*scores.shape[:-1], 1), float("-inf"))
    sinks = params.mods.sinks
    if sinks is not None:  # one more logit per head in every row's normalizer, with no value (score_mods.py)
        sink = sinks.to(compute_dtype)[None, :, None, None]
        row_max = torch.maximum(row_max, sink.detach())
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    weights = torch.exp(scores - row_max)
    normalizer = weights.sum(dim=-1, keepdim=True)
    if sinks is not None:
        normalizer = normalizer + torch.exp(sink - row_max)
    seen_any = normalizer > 0
    if params.has_dropout:
        if dropout_mask is None or dropout_mask.shape != weights.shape:
            raise ValueError(f"dropout_p > 0 needs dropout_mask of shape {tuple(weights.shape)} (True = keep)")
        weights = weights * dropout_mask.to(weights.dtype) / (1.0 - params.dropout_p)
    out = (weights @ v.transpose(1, 2)) / torch.where(seen_any, normalizer, torch.ones_like(normalizer))
    lse = torch.where(seen_any, row_max + torch.log(torch.where(seen_any, normalizer, 1.0)), float("-inf"))
    return out.transpose(1, 2), lse.squeeze(-1)
