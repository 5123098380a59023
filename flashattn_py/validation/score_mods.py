"""Validation of the score modifications: softcap, ALiBi slopes, an attention bias / boolean mask and
attention sinks -> params.ScoreMods (their math: semantics/score_mods.py)."""
from __future__ import annotations

import math

import torch

from ..params import ScoreMods
from ..semantics.score_mods import with_bias
from .common import check_device, check_number, check_tensor


def check_score_mods(softcap, alibi_slopes, attn_bias, *, batch: int, nheads_q: int, seqlen_q: int,
                     seqlen_k: int, device: torch.device, bias_name: str = "attn_bias", sinks=None) -> ScoreMods:
    """Validate softcap / alibi_slopes / an attention bias or boolean mask / attention sinks; broadcast
    views, no copies. A float bias may require grad (the backward returns dbias of its own shape)."""
    check_number("softcap", softcap)
    if not (math.isfinite(softcap) and softcap >= 0):
        raise ValueError(f"softcap must be >= 0 (0 disables it), got {softcap}")
    slopes = None
    if alibi_slopes is not None:
        check_tensor("alibi_slopes", alibi_slopes)
        if alibi_slopes.dtype != torch.float32:
            raise TypeError(f"alibi_slopes must be float32, got {alibi_slopes.dtype}")
        if alibi_slopes.shape not in ((nheads_q,), (batch, nheads_q)):
            raise ValueError(f"alibi_slopes must have shape (nheads,) = ({nheads_q},) or (batch, nheads) = "
                             f"({batch}, {nheads_q}), got {tuple(alibi_slopes.shape)}")
        check_device("alibi_slopes", alibi_slopes, device)
        slopes = alibi_slopes.expand(batch, nheads_q)
    bias = None
    if attn_bias is not None:
        check_tensor(bias_name, attn_bias)
        if attn_bias.dtype != torch.bool and not attn_bias.is_floating_point():
            raise TypeError(f"{bias_name} must be bool (True = attend) or floating point (added to the scores), "
                            f"got {attn_bias.dtype}")
        check_device(bias_name, attn_bias, device)
        target = (batch, nheads_q, seqlen_q, seqlen_k)
        try:
            bias = attn_bias.expand(target) if attn_bias.dim() <= 4 else None
        except RuntimeError:
            bias = None
        if bias is None:
            raise ValueError(f"{bias_name} of shape {tuple(attn_bias.shape)} does not broadcast to "
                             f"(batch, nheads, seqlen_q, seqlen_k) = {target}")
        bias_source = attn_bias[(None,) * (4 - attn_bias.dim())]  # a view with leading dims of size 1
    mods = ScoreMods(float(softcap), slopes, None, check_sinks(sinks, nheads_q, device))
    return with_bias(mods, None if attn_bias is None else bias_source, (batch, nheads_q, seqlen_q, seqlen_k))


def check_sinks(sinks, nheads_q: int, device) -> torch.Tensor | None:
    """Attention sinks: a floating-point (nheads_q,) tensor, one logit per query head (semantics/score_mods.py)."""
    if sinks is None:
        return None
    check_tensor("sinks", sinks, "of shape (nheads_q,)")
    if not sinks.is_floating_point():
        raise TypeError(f"sinks must be a floating-point tensor (one logit per query head), got {sinks.dtype}")
    if sinks.shape != (nheads_q,):
        raise ValueError(f"sinks must have shape (nheads_q,) = ({nheads_q},), one logit per query head, got "
                         f"{tuple(sinks.shape)}")
    check_device("sinks", sinks, device)
    return sinks
