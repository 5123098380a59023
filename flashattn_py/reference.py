"""The float64 naive reference, with the same arguments as `flashattn_py.attention`: what every backend
is tested against (its math: flashattn_py/semantics/naive_attention.py).

Running it in float16/bfloat16 (``compute_dtype``) gives the "naive implementation in low precision"
whose error sets the tolerance for the fused kernels. Differentiable with plain autograd.
"""
from __future__ import annotations

import torch

from .semantics.naive_attention import attention_from_params
from .validation.attention import attention_params, to_bshd


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    softmax_scale: float | None = None,
    window_size=(-1, -1),
    return_lse: bool = False,
    layout: str = "bshd",
    rotary=None,
    sinusoidal=None,
    q_positions=None,
    k_positions=None,
    dropout_p: float = 0.0,
    dropout_mask: torch.Tensor | None = None,
    compute_dtype: torch.dtype = torch.float64,
    softcap: float = 0.0,
    alibi_slopes: torch.Tensor | None = None,
    attn_bias: torch.Tensor | None = None,
    alignment: str = "bottom_right",
    sinks: torch.Tensor | None = None,
):
    """Naive attention with the same arguments as `flashattn_py.attention` (docs/attention.md), computed in
    compute_dtype (float64 by default): the reference every backend is tested against. Differentiable with
    plain autograd.

    Args:
        q: ``[B, Sq, Hq, D]`` (``[B, Hq, Sq, D]`` with ``layout="bhsd"``), float16 / bfloat16 / float32 / float64.
        k, v: ``[B, Sk, Hkv, D]``, q's dtype and device; Hq divisible by Hkv (GQA / MQA).
        causal: mask keys after the query, aligned bottom-right when Sq != Sk (see ``alignment``).
        softmax_scale: default ``1 / sqrt(D)``.
        window_size: ``(left, right)`` keys around the aligned diagonal; -1 = unbounded.
        return_lse: also return the log-sum-exp.
        layout: "bshd" or "bhsd", for q, k, v and the output.
        rotary: a ``Rotary`` encoding of q and k; None = none.
        sinusoidal: a ``Sinusoidal`` encoding of q and k; None = none.
        q_positions: None (0..Sq-1), an int or ``[B]`` int offset, or ``[B, Sq]`` int position ids.
        k_positions: as q_positions, for the keys.
        dropout_p: dropout probability, in [0, 1); > 0 needs ``dropout_mask`` (the reference draws none).
        dropout_mask: bool ``[B, Hq, Sq, Sk]``, True = keep; required when dropout_p > 0.
        compute_dtype: the dtype of the math and of the results; default float64. float16 / bfloat16 gives the
            "naive implementation in low precision" whose error sets the tolerance of the fused kernels.
        softcap: > 0 caps scores with ``softcap * tanh(s / softcap)``; 0 = off.
        alibi_slopes: float32 ``[Hq]`` or ``[B, Hq]``; None = off.
        attn_bias: broadcastable to ``[B, Hq, Sq, Sk]``: float (added to the scores) or bool (True = attend).
        alignment: "bottom_right" (FlashAttention) or "top_left" (SDPA's ``is_causal``).
        sinks: float ``[Hq]``: one learned logit per query head in every row's normalizer; None = none.

    Returns:
        out: q's shape and layout, compute_dtype. With ``return_lse``: ``(out, lse)``, lse ``[B, Hq, Sq]`` in
        compute_dtype (natural log).
    """
    q, k, v = (to_bshd(t, layout, name) for t, name in ((q, "q"), (k, "k"), (v, "v")))
    params = attention_params(
        q, k, v, causal=causal, softmax_scale=softmax_scale, window_size=window_size, rotary=rotary,
        sinusoidal=sinusoidal, q_positions=q_positions, k_positions=k_positions, dropout_p=dropout_p,
        softcap=softcap, alibi_slopes=alibi_slopes, attn_bias=attn_bias, alignment=alignment, sinks=sinks,
        allow_float64=True,
    )
    out, lse = attention_from_params(q, k, v, params, compute_dtype, dropout_mask)
    out = to_bshd(out, layout, "out")
    return (out, lse) if return_lse else out
