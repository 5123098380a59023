"""FlashAttention-2's Python entry points on our kernels: same names, argument order and defaults as
``flash_attn.flash_attn_interface``, so ``from flashattn_py.flash_attn_interface import flash_attn_func``
replaces ``from flash_attn import flash_attn_func``.

Tensors are (batch, seqlen, nheads, head_dim); causal is aligned bottom-right; window_size (left,
right), -1 unbounded; softcap > 0 caps scores with softcap * tanh(s / softcap); alibi_slopes fp32
(nheads,) or (batch, nheads) adds -slope * |i + seqlen_k - seqlen_q - j|. ``deterministic`` is
FlashAttention's: False lets the Triton backward add dQ up with atomics, True gives bit-identical
gradients. ``return_attn_probs=True`` returns (out, softmax_lse, attn_probs) where attn_probs are the softmax
weights, materialized (batch, nheads, seqlen_q, seqlen_k) in fp32, without dropout (FlashAttention documents its
own as "for testing only").
"""
from __future__ import annotations

import torch

from . import api
from .decoding import flash_attn_with_kvcache  # noqa: F401  (FlashAttention's module exports it too)
from .semantics.naive_attention import probabilities
from .validation.attention import attention_params
from .validation.common import check_bool, check_tensor
from .varlen import flash_attn_varlen_func


def _probabilities(q, k, **options) -> torch.Tensor:
    """The softmax weights of the call, materialized (semantics/naive_attention.py probabilities)."""
    with torch.no_grad():
        return probabilities(q, k, attention_params(q, k, k, **options))


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                    alibi_slopes=None, deterministic=False, return_attn_probs=False, *, learnable_sink=None,
                    backend="auto"):
    """Mirrors FlashAttention 2's ``flash_attn_func`` (same name, argument order and defaults) on our kernels.
    Every option in detail: docs/attention.md; FlashAttention's semantics here: docs/entry-points.md.

    Args:
        q: ``[B, Sq, Hq, D]`` float16 / bfloat16 / float32; any strides, D in [1, 256].
        k, v: ``[B, Sk, Hkv, D]``, q's dtype and device; Hq divisible by Hkv (GQA / MQA).
        dropout_p: attention dropout probability, in [0, 1); pass 0.0 for evaluation.
        softmax_scale: default ``1 / sqrt(D)``.
        causal: mask keys after the query, aligned bottom-right when Sq != Sk.
        window_size: ``(left, right)`` keys around the aligned diagonal; -1 = unbounded.
        softcap: > 0 caps scores with ``softcap * tanh(s / softcap)``; 0 = off.
        alibi_slopes: float32 ``[Hq]`` or ``[B, Hq]``: adds ``-slope * |i + Sk - Sq - j|`` to the scores; None = off.
        deterministic: False lets the Triton backward add dQ up with atomics; True gives bit-identical gradients.
        return_attn_probs: also return the lse and the materialized softmax weights (see Returns; for testing).
        learnable_sink: float ``[Hq]`` attention sinks (FlashAttention 3's name; ``attention(sinks=)``): one logit
            per query head in every row's normalizer. Keyword-only; None = none.
        backend: ours, keyword-only: "auto" (Triton on CUDA, PyTorch on CPU), "triton", "cuda", "torch" or
            "reference".

    Returns:
        out: ``[B, Sq, Hq, D]``, q's dtype. With ``return_attn_probs``: ``(out, softmax_lse, attn_probs)``,
        softmax_lse float32 ``[B, Hq, Sq]`` (natural log; -inf for a row that sees no key, whose output is 0),
        attn_probs float32 ``[B, Hq, Sq, Sk]``: the softmax weights, materialized, without dropout
        (FlashAttention documents its own as "for testing only").
    """
    options = dict(causal=causal, softmax_scale=softmax_scale, window_size=window_size, softcap=softcap,
                   alibi_slopes=alibi_slopes, sinks=learnable_sink)
    check_bool("return_attn_probs", return_attn_probs)
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
    check_tensor(name, packed)
    parts, dim = len(name), ndim - 3  # the parts' axis sits before (nheads, head_dim)
    if packed.dim() != ndim or packed.shape[dim] != parts:
        raise ValueError(f"{name} must have shape {_PACKED_LAYOUTS[name, ndim]}, got {tuple(packed.shape)}")
    return packed.unbind(dim)


def flash_attn_qkvpacked_func(qkv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                              softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False, *,
                              backend="auto"):
    """Mirrors FlashAttention 2's ``flash_attn_qkvpacked_func``: ``flash_attn_func`` on a packed qkv (self-attention).

    Args:
        qkv: ``[B, S, 3, H, D]`` float16 / bfloat16 / float32. q, k, v are strided views read in place, not
            copied; autograd returns one gradient for qkv.
        dropout_p: attention dropout probability, in [0, 1).
        softmax_scale: default ``1 / sqrt(D)``.
        causal: mask keys after the query.
        window_size: ``(left, right)`` keys around the diagonal; -1 = unbounded.
        softcap: > 0 caps scores with ``softcap * tanh(s / softcap)``; 0 = off.
        alibi_slopes: float32 ``[H]`` or ``[B, H]``; None = off.
        deterministic: bit-identical gradients (False: the Triton backward adds dQ up with atomics).
        return_attn_probs: also return the lse and the softmax weights, as ``flash_attn_func``.
        backend: ours, keyword-only, as in ``flash_attn_func``.

    Returns:
        out: ``[B, S, H, D]``, qkv's dtype. With ``return_attn_probs``: ``(out, softmax_lse, attn_probs)``,
        softmax_lse float32 ``[B, H, S]``, attn_probs float32 ``[B, H, S, S]`` (without dropout).
    """
    q, k, v = _unpack(qkv, "qkv", 5)
    return flash_attn_func(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
                           deterministic, return_attn_probs, backend=backend)


def flash_attn_kvpacked_func(q, kv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                             softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False, *,
                             backend="auto"):
    """Mirrors FlashAttention 2's ``flash_attn_kvpacked_func``: ``flash_attn_func`` with k, v packed in one tensor.

    Args:
        q: ``[B, Sq, Hq, D]`` float16 / bfloat16 / float32.
        kv: ``[B, Sk, 2, Hkv, D]``, q's dtype; Hq divisible by Hkv. k, v are strided views read in place, not
            copied; autograd returns one gradient for kv.
        dropout_p: attention dropout probability, in [0, 1).
        softmax_scale: default ``1 / sqrt(D)``.
        causal: mask keys after the query, aligned bottom-right when Sq != Sk.
        window_size: ``(left, right)`` keys around the aligned diagonal; -1 = unbounded.
        softcap: > 0 caps scores with ``softcap * tanh(s / softcap)``; 0 = off.
        alibi_slopes: float32 ``[Hq]`` or ``[B, Hq]``; None = off.
        deterministic: bit-identical gradients (False: the Triton backward adds dQ up with atomics).
        return_attn_probs: also return the lse and the softmax weights, as ``flash_attn_func``.
        backend: ours, keyword-only, as in ``flash_attn_func``.

    Returns:
        out: ``[B, Sq, Hq, D]``, q's dtype. With ``return_attn_probs``: ``(out, softmax_lse, attn_probs)``,
        softmax_lse float32 ``[B, Hq, Sq]``, attn_probs float32 ``[B, Hq, Sq, Sk]`` (without dropout).
    """
    k, v = _unpack(kv, "kv", 5)
    return flash_attn_func(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
                           deterministic, return_attn_probs, backend=backend)


def flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, dropout_p=0.0, softmax_scale=None, causal=False,
                                     window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False,
                                     return_attn_probs=False, *, backend="auto"):
    """Mirrors FlashAttention 2's ``flash_attn_varlen_qkvpacked_func``: ``flash_attn_varlen_func`` on packed
    sequences whose queries and keys share cu_seqlens (varlen.py has the layout and the per-sequence rules).

    Args:
        qkv: ``[total, 3, H, D]`` float16 / bfloat16 / float32: the sequences concatenated along dim 0. q, k, v
            are strided views read in place, not copied; autograd returns one gradient for qkv.
        cu_seqlens: int32 ``[B + 1]``: prefix sums of the sequence lengths, starting at 0.
        max_seqlen: int: the longest sequence.
        dropout_p: attention dropout probability, in [0, 1).
        softmax_scale: default ``1 / sqrt(D)``.
        causal: mask keys after the query, within each sequence.
        window_size: ``(left, right)`` keys around each sequence's diagonal; -1 = unbounded.
        softcap: > 0 caps scores with ``softcap * tanh(s / softcap)``; 0 = off.
        alibi_slopes: float32 ``[H]`` or ``[B, H]``; distances within each sequence; None = off.
        deterministic: bit-identical gradients (False: the Triton backward adds dQ up with atomics).
        return_attn_probs: also return the lse (and None in place of the probabilities).
        backend: ours, keyword-only, as in ``flash_attn_func``.

    Returns:
        out: ``[total, H, D]``, qkv's dtype. With ``return_attn_probs``: ``(out, softmax_lse, None)``, softmax_lse
        float32 ``[H, total]`` (natural log).
    """
    q, k, v = _unpack(qkv, "qkv", 4)
    return flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, dropout_p, softmax_scale,
                                  causal, window_size, softcap, alibi_slopes, deterministic, return_attn_probs,
                                  backend=backend)


def flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                                    softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                                    alibi_slopes=None, deterministic=False, return_attn_probs=False, *,
                                    backend="auto"):
    """Mirrors FlashAttention 2's ``flash_attn_varlen_kvpacked_func``: ``flash_attn_varlen_func`` with k, v packed
    in one tensor (varlen.py has the layout and the per-sequence rules).

    Args:
        q: ``[total_q, Hq, D]`` float16 / bfloat16 / float32: the sequences' queries concatenated along dim 0.
        kv: ``[total_k, 2, Hkv, D]``, q's dtype; Hq divisible by Hkv. k, v are strided views read in place, not
            copied; autograd returns one gradient for kv.
        cu_seqlens_q: int32 ``[B + 1]``: prefix sums of the query lengths, starting at 0.
        cu_seqlens_k: int32 ``[B + 1]``: prefix sums of the key lengths, starting at 0.
        max_seqlen_q: int: the longest query sequence.
        max_seqlen_k: int: the longest key sequence.
        dropout_p: attention dropout probability, in [0, 1).
        softmax_scale: default ``1 / sqrt(D)``.
        causal: mask keys after the query, aligned bottom-right within each sequence.
        window_size: ``(left, right)`` keys around each sequence's aligned diagonal; -1 = unbounded.
        softcap: > 0 caps scores with ``softcap * tanh(s / softcap)``; 0 = off.
        alibi_slopes: float32 ``[Hq]`` or ``[B, Hq]``; distances within each sequence; None = off.
        deterministic: bit-identical gradients (False: the Triton backward adds dQ up with atomics).
        return_attn_probs: also return the lse (and None in place of the probabilities).
        backend: ours, keyword-only, as in ``flash_attn_func``.

    Returns:
        out: ``[total_q, Hq, D]``, q's dtype. With ``return_attn_probs``: ``(out, softmax_lse, None)``,
        softmax_lse float32 ``[Hq, total_q]`` (natural log).
    """
    k, v = _unpack(kv, "kv", 4)
    return flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p,
                                  softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
                                  return_attn_probs, backend=backend)
