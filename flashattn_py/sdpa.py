"""``scaled_dot_product_attention``: torch.nn.functional.scaled_dot_product_attention's signature and
semantics on our kernels, and ``route_sdpa()``, which sends torch's function to ours for a block of code.

Semantics as torch's: (batch, nheads, seqlen, head_dim) tensors (3-D (batch, seqlen, head_dim) too);
``is_causal`` aligned top-left (query i sees keys j <= i); a boolean ``attn_mask`` keeps the True
positions, a float one is added to the scores; masks broadcast to (batch, nheads, seqlen_q, seqlen_k)
and are read through their strides by the kernels (a (batch, 1, 1, seqlen_k) key-padding mask costs
no S x S tensor); ``enable_gqa`` lets query heads share key/value heads. One difference, deliberate:
a query whose every key is masked gets output 0 (torch's math backend gives NaN).
"""
from __future__ import annotations

import contextlib
import warnings

import torch

from . import api
from .validation.common import check_tensor


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                                 enable_gqa=False, *, backend="auto"):
    """Mirrors ``torch.nn.functional.scaled_dot_product_attention`` (signature and semantics) on our kernels.
    One deliberate difference: a query whose every key is masked gets output 0 (torch's math backend gives NaN).
    Details: docs/entry-points.md.

    Args:
        query: ``[B, Hq, Sq, D]`` (or ``[B, Sq, D]``) float16 / bfloat16 / float32, D <= 256.
        key: ``[B, Hkv, Sk, D]`` (or ``[B, Sk, D]``), query's dtype and number of dims.
        value: ``[B, Hkv, Sk, D]`` (or ``[B, Sk, D]``); its head dim must equal query's.
        attn_mask: broadcastable to ``[B, Hq, Sq, Sk]`` (``[B, Sq, Sk]`` for 3-D inputs): bool (True = attend)
            or float (added to the scores, differentiable); read through its strides, so a ``[B, 1, 1, Sk]``
            key-padding mask costs no Sq x Sk tensor. None = no mask; not with is_causal.
        dropout_p: attention dropout probability, in [0, 1).
        is_causal: query i sees keys j <= i (aligned top-left, as torch's).
        scale: default ``1 / sqrt(D)``.
        enable_gqa: let Hq be a multiple of Hkv (query heads share key / value heads); False needs Hq == Hkv.
        backend: ours, keyword-only: "auto" (Triton on CUDA, PyTorch on CPU), "triton", "cuda", "torch" or
            "reference".

    Returns:
        ``[B, Hq, Sq, D]`` (``[B, Sq, D]`` for 3-D inputs), query's dtype.
    """
    for name, t in (("query", query), ("key", key), ("value", value)):
        check_tensor(name, t)
        if t.dim() not in (3, 4):
            raise ValueError(f"{name} must be (batch, nheads, seqlen, head_dim) or (batch, seqlen, head_dim), "
                             f"got shape {tuple(t.shape)}")
    if not query.dim() == key.dim() == value.dim():
        raise ValueError(f"query, key and value must have the same number of dims, got {query.dim()}, {key.dim()}, "
                         f"{value.dim()}")
    if value.shape[-1] != query.shape[-1]:
        raise NotImplementedError(f"value head_dim {value.shape[-1]} != query head_dim {query.shape[-1]} is not "
                                  "supported")
    if is_causal and attn_mask is not None:
        raise ValueError("pass attn_mask or is_causal=True, not both (as torch's scaled_dot_product_attention)")
    if query.dim() == 4 and query.shape[1] != key.shape[1] and not enable_gqa:
        raise ValueError(f"query has {query.shape[1]} heads and key {key.shape[1]}: set enable_gqa=True for "
                         "grouped-query attention")
    squeeze = query.dim() == 3
    if squeeze:
        query, key, value = query[:, None], key[:, None], value[:, None]
        if attn_mask is not None and attn_mask.dim() == 3:
            attn_mask = attn_mask[:, None]
    out = api.run(query, key, value, layout="bhsd", backend=backend, return_lse=False, causal=bool(is_causal),
                  softmax_scale=scale, dropout_p=dropout_p, attn_bias=attn_mask, bias_name="attn_mask",
                  alignment="top_left")
    return out[:, 0] if squeeze else out


_ORIGINAL_SDPA = torch.nn.functional.scaled_dot_product_attention


@contextlib.contextmanager
def route_sdpa(backend: str = "auto", fallback: str = "warn"):
    """Within the block, ``torch.nn.functional.scaled_dot_product_attention`` runs ours
    (``scaled_dot_product_attention``). Code that imported the function object before the block keeps torch's.

    Args:
        backend: ours, for every routed call: "auto" (Triton on CUDA, PyTorch on CPU), "triton", "cuda",
            "torch" or "reference".
        fallback: what happens to calls ours cannot take (e.g. float64, value head_dim != query head_dim,
            head_dim > 256): "warn" (default: torch's own function runs, with a warning naming the reason),
            "silent" (torch's, no warning) or "error" (they raise).

    Yields:
        None; torch's function is restored when the block exits.
    """
    if fallback not in ("warn", "silent", "error"):
        raise ValueError(f"fallback must be 'warn', 'silent' or 'error', got {fallback!r}")

    def routed(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        try:
            return scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal, scale,
                                                enable_gqa, backend=backend)
        except (TypeError, ValueError, NotImplementedError) as err:
            if fallback == "error":
                raise
            if fallback == "warn":
                warnings.warn(f"flashattn_py.route_sdpa: torch's SDPA used for this call: {err}", stacklevel=2)
            return _ORIGINAL_SDPA(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                                  scale=scale, enable_gqa=enable_gqa)

    previous = torch.nn.functional.scaled_dot_product_attention
    torch.nn.functional.scaled_dot_product_attention = routed
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = previous
