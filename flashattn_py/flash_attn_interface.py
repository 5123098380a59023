"""FlashAttention-2's Python entry points on our kernels: same names, argument order and defaults as
``flash_attn.flash_attn_interface``, so ``from flashattn_py.flash_attn_interface import flash_attn_func``
replaces ``from flash_attn import flash_attn_func``.

Tensors are (batch, seqlen, nheads, head_dim); causal is aligned bottom-right; window_size (left,
right), -1 unbounded; softcap > 0 caps scores with softcap * tanh(s / softcap); alibi_slopes fp32
(nheads,) or (batch, nheads) adds -slope * |i + seqlen_k - seqlen_q - j|. ``deterministic`` is
FlashAttention's: False lets the Triton backward add dQ up with atomics, True gives bit-identical
gradients. ``return_attn_probs=True`` returns (out, softmax_lse, attn_probs) where attn_probs are the softmax weights, materialized (batch, nheads,
seqlen_q, seqlen_k) in fp32, without dropout (FlashAttention documents its own as "for testing only").
"""
from __future__ import annotations

import torch

from . import api, checks, reference
from .kvcache import flash_attn_with_kvcache  # noqa: F401  (FlashAttention's module exports it too)
from .varlen import flash_attn_varlen_func


def _probabilities(q, k, **options) -> torch.Tensor:
    """The softmax weights of the call, materialized (see reference.probabilities)."""
    with torch.no_grad():
        params = checks.attention_params(q, k, k, **options)
        return reference.probabilities(q, k, params)


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                    alibi_slopes=None, deterministic=False, return_attn_probs=False, *, learnable_sink=None,
                    backend="auto"):
    """learnable_sink (FlashAttention 3's name): attention sinks, float (nheads,), see attention(sinks=)."""
    options = dict(causal=causal, softmax_scale=softmax_scale, window_size=window_size, softcap=softcap,
                   alibi_slopes=alibi_slopes, sinks=learnable_sink)
    if not isinstance(return_attn_probs, bool):
        raise TypeError(f"return_attn_probs must be a bool, got {type(return_attn_probs).__name__}")
    out, lse = api.attention(q, k, v, dropout_p=dropout_p, deterministic=deterministic, return_lse=True,
                             backend=backend, **options)
    if not return_attn_probs:
        return out
    return out, lse, _probabilities(q, k, **options)


# The packed tensors' layouts, by (name, ndim): the dense calls' and the variable-length calls'.
_PACKED_LAYOUTS = {
    ("qkv", 5): "(batch, seqlen, 3, nheads, head_dim)",
    ("kv", 5): "(batch, seqlen, 2, nheads_k, head_dim)",
    ("qkv", 4): "(total_tokens, 3, nheads, head_dim)",
    ("kv", 4): "(total_tokens, 2, nheads_k, head_dim)",
}


def _unpack(packed, name: str, ndim: int):
    """The views q, k, v (qkv) or k, v (kv) of a packed tensor: read in place (strided), not copied;
    autograd gathers their gradients back into the packed tensor's."""
    if not isinstance(packed, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(packed).__name__}")
    parts, dim = len(name), ndim - 3  # the parts' axis sits before (nheads, head_dim)
    if packed.dim() != ndim or packed.shape[dim] != parts:
        raise ValueError(f"{name} must have shape {_PACKED_LAYOUTS[name, ndim]}, got {tuple(packed.shape)}")
    return packed.unbind(dim)


def flash_attn_qkvpacked_func(qkv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                              softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False, *,
                              backend="auto"):
    """qkv: (batch, seqlen, 3, nheads, head_dim). The views are read in place (strided), not copied."""
    q, k, v = _unpack(qkv, "qkv", 5)
    return flash_attn_func(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
                           deterministic, return_attn_probs, backend=backend)


def flash_attn_kvpacked_func(q, kv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                             softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False, *,
                             backend="auto"):
    """kv: (batch, seqlen_k, 2, nheads_k, head_dim)."""
    k, v = _unpack(kv, "kv", 5)
    return flash_attn_func(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
                           deterministic, return_attn_probs, backend=backend)


def flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, dropout_p=0.0, softmax_scale=None, causal=False,
                                     window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False,
                                     return_attn_probs=False, *, backend="auto"):
    """qkv: packed sequences (total_tokens, 3, nheads, head_dim); queries and keys share cu_seqlens
    (varlen.py has the layout and the per-sequence rules)."""
    q, k, v = _unpack(qkv, "qkv", 4)
    return flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, dropout_p, softmax_scale,
                                  causal, window_size, softcap, alibi_slopes, deterministic, return_attn_probs,
                                  backend=backend)


def flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                                    softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                                    alibi_slopes=None, deterministic=False, return_attn_probs=False, *,
                                    backend="auto"):
    """kv: packed sequences (total_k, 2, nheads_k, head_dim)."""
    k, v = _unpack(kv, "kv", 4)
    return flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p,
                                  softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
                                  return_attn_probs, backend=backend)
