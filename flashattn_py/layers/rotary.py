"""FlashAttention 2's rotary ops (``flash_attn.layers.rotary``) under the same names and signatures.

``apply_rotary_emb(x, cos, sin, interleaved=False, inplace=False, seqlen_offsets=0, cu_seqlens=None,
max_seqlen=None)`` (alias ``apply_rotary_emb_func``), ``apply_rotary_emb_qkv_`` and
``apply_rotary_emb_kv_``, on our standalone rotary op (pe_ops.apply_rotary; the math is written once
in flashattn_py.positional):

- x: (batch, seqlen, nheads, headdim), or (total_seqlen, nheads, headdim) packed with ``cu_seqlens``
  (int32 (batch + 1,) prefix sums, ``max_seqlen`` the longest sequence; positions restart at 0 in
  every sequence).
- cos, sin: (seqlen_rotary, rotary_dim / 2) tables, FlashAttention's convention and ours
  (params.Rotary); rotary_dim = 2 * cos.shape[1] <= headdim, the other channels pass through.
  ``interleaved`` False: GPT-NeoX pairs (i, i + rotary_dim / 2); True: GPT-J pairs (2i, 2i + 1).
- seqlen_offsets: an int or a (batch,) int32 / int64 tensor added to every position of a sequence
  (decoding against a KV cache); seqlen_rotary must cover the last position (checked).
- Returns a new tensor, or x itself (rotated in place) with ``inplace=True``. Both are differentiable:
  in place on a non-leaf tensor autograd marks it modified and the gradient is rotated back; a leaf
  that requires grad (or a view of one) is refused, as torch refuses in-place ops on it.

The ``*_`` variants rotate slices of a packed tensor in place and return it. ``backend`` (ours,
keyword-only) picks the implementation as in flashattn_py.apply_rotary ("auto": Triton on CUDA
tensors, PyTorch on CPU).
"""
from __future__ import annotations

import torch

from .. import pe_ops
from ..params import Rotary
from ..validation.common import check_bool, check_int, check_tensor
from ..validation.positional import resolve_positions
from ..validation.sequences import check_cu_seqlens  # the packed calls' one rule

OFFSETS = "seqlen_offsets"


def _rotary(cos, sin, interleaved) -> Rotary:
    """Our Rotary spec for FlashAttention's tables (the tables themselves are checked by positional)."""
    for name, table in (("cos", cos), ("sin", sin)):
        check_tensor(name, table, "(seqlen_rotary, rotary_dim / 2)")
        if table.dim() != 2:
            raise ValueError(f"{name} must be (seqlen_rotary, rotary_dim / 2), got shape {tuple(table.shape)}")
    check_bool("interleaved", interleaved)
    return Rotary(rotary_dim=2 * cos.shape[1], interleaved=interleaved, cos=cos, sin=sin)


def _packed_positions(cu_seqlens, max_seqlen, seqlen_offsets, total: int, device) -> torch.Tensor:
    """(1, total) int64: each packed row's position in its sequence, plus that sequence's offset."""
    check_cu_seqlens(cu_seqlens, "cu_seqlens", total, max_seqlen, device)
    batch = cu_seqlens.numel() - 1
    offsets = resolve_positions(seqlen_offsets, batch, 1, device, OFFSETS)[:, 0]  # (batch,)
    rows = torch.arange(total, device=device)
    sequence = torch.searchsorted(cu_seqlens[1:].to(torch.int64), rows, right=True)
    return (rows - cu_seqlens.to(torch.int64)[sequence] + offsets[sequence])[None]


def apply_rotary_emb(x, cos, sin, interleaved=False, inplace=False, seqlen_offsets=0, cu_seqlens=None,
                     max_seqlen=None, *, backend="auto"):
    """Mirrors FlashAttention 2's ``apply_rotary_emb`` (alias ``apply_rotary_emb_func``): x rotated by the cos / sin
    tables at positions 0.. (+ seqlen_offsets) of each sequence; the first rotary_dim = 2 * cos.shape[1] channels
    rotate, the others pass through. See the module docstring.

    Args:
        x: ``[B, S, H, D]``, or packed ``[total_seqlen, H, D]`` with cu_seqlens; float16 / bfloat16 / float32.
        cos, sin: float ``[S_ro, rotary_dim / 2]`` tables, rotary_dim <= D; S_ro must cover the last position
            (checked).
        interleaved: False (default): GPT-NeoX pairs (i, i + rotary_dim / 2); True: GPT-J pairs (2i, 2i + 1).
        inplace: rotate x in place and return it (differentiable on a non-leaf; a leaf that requires grad, or a
            view of one, is refused). Default False.
        seqlen_offsets: an int or int32 / int64 ``[B]`` tensor added to every position of a sequence (decoding
            against a KV cache); default 0.
        cu_seqlens: int32 ``[B + 1]`` prefix sums of the packed sequences' lengths (positions restart at 0 in
            each sequence); None for a batched ``[B, S, H, D]`` x.
        max_seqlen: int: the longest packed sequence (with cu_seqlens).
        backend: ours, keyword-only: "auto" (Triton on CUDA tensors, PyTorch on CPU), as in
            ``flashattn_py.apply_rotary``.

    Returns:
        x's shape and dtype (``[B, S, H, D]`` or ``[total_seqlen, H, D]``): a new tensor, or x itself with
        ``inplace``.
    """
    spec = _rotary(cos, sin, interleaved)
    check_tensor("x", x)
    if cu_seqlens is None:
        if x.dim() != 4:
            raise ValueError(f"x must be (batch, seqlen, nheads, headdim) (or packed (total_seqlen, nheads, "
                             f"headdim) with cu_seqlens), got shape {tuple(x.shape)}")
        return pe_ops._run(x, spec, seqlen_offsets, backend, inplace, positions_name=OFFSETS)
    if x.dim() != 3:
        raise ValueError(f"x must be packed (total_seqlen, nheads, headdim) with cu_seqlens, got shape "
                         f"{tuple(x.shape)}")
    positions = _packed_positions(cu_seqlens, max_seqlen, seqlen_offsets, x.shape[0], x.device)
    out = pe_ops._run(x[None], spec, positions, backend, inplace, positions_name=OFFSETS)
    return x if inplace else out[0]


apply_rotary_emb_func = apply_rotary_emb  # FlashAttention's alias


def apply_rotary_emb_qkv_(qkv, cos, sin, cos_k=None, sin_k=None, interleaved=False, seqlen_offsets=0,
                          num_heads_q=None, *, backend="auto"):
    """Mirrors FlashAttention 2's ``apply_rotary_emb_qkv_``: rotate q and k of a packed qkv in place (v untouched).

    Args:
        qkv: ``[B, S, 3, H, D]``, or ``[B, S, Hq + 2 * Hk, D]`` with num_heads_q (GQA / MQA: q heads, then k heads,
            then v heads); float16 / bfloat16 / float32.
        cos, sin: float ``[S_ro, rotary_dim / 2]`` tables for q (and for k without cos_k / sin_k).
        cos_k, sin_k: k's tables, both or neither; default cos, sin.
        interleaved: False (default): GPT-NeoX pairs (i, i + rotary_dim / 2); True: GPT-J pairs (2i, 2i + 1).
        seqlen_offsets: an int or int32 / int64 ``[B]`` tensor added to every position of a sequence; default 0.
        num_heads_q: int Hq, for the 4-D qkv only.
        backend: ours, keyword-only, as in ``apply_rotary_emb``.

    Returns:
        qkv itself, q and k rotated in place.
    """
    check_tensor("qkv", qkv)
    if qkv.dim() == 5 and qkv.shape[2] == 3:
        q, k = qkv[:, :, 0], qkv[:, :, 1]
    elif qkv.dim() == 4:
        check_int("num_heads_q", num_heads_q)  # of a (batch, seqlen, num_heads_q + 2 * num_heads_k, headdim) qkv
        num_heads_k, rest = divmod(qkv.shape[2] - num_heads_q, 2)
        if num_heads_q <= 0 or num_heads_k <= 0 or rest:
            raise ValueError(f"num_heads_q={num_heads_q} does not split qkv's {qkv.shape[2]} heads into "
                             f"num_heads_q + 2 * num_heads_k")
        q, k = qkv[:, :, :num_heads_q], qkv[:, :, num_heads_q:num_heads_q + num_heads_k]
    else:
        raise ValueError(f"qkv must be (batch, seqlen, 3, nheads, headdim) or (batch, seqlen, num_heads_q + "
                         f"2 * num_heads_k, headdim) with num_heads_q, got shape {tuple(qkv.shape)}")
    if (cos_k is None) != (sin_k is None):
        raise ValueError("cos_k and sin_k must be given together (or neither: k then uses cos, sin)")
    cos_k, sin_k = (cos, sin) if cos_k is None else (cos_k, sin_k)
    apply_rotary_emb(q, cos, sin, interleaved, True, seqlen_offsets, backend=backend)
    apply_rotary_emb(k, cos_k, sin_k, interleaved, True, seqlen_offsets, backend=backend)
    return qkv


def apply_rotary_emb_kv_(kv, cos, sin, interleaved=False, seqlen_offsets=0, *, backend="auto"):
    """Mirrors FlashAttention 2's ``apply_rotary_emb_kv_``: rotate k of a packed kv in place (v untouched).

    Args:
        kv: ``[B, S, 2, Hk, D]``, float16 / bfloat16 / float32.
        cos, sin: float ``[S_ro, rotary_dim / 2]`` tables.
        interleaved: False (default): GPT-NeoX pairs (i, i + rotary_dim / 2); True: GPT-J pairs (2i, 2i + 1).
        seqlen_offsets: an int or int32 / int64 ``[B]`` tensor added to every position of a sequence; default 0.
        backend: ours, keyword-only, as in ``apply_rotary_emb``.

    Returns:
        kv itself, k rotated in place.
    """
    check_tensor("kv", kv)
    if kv.dim() != 5 or kv.shape[2] != 2:
        raise ValueError(f"kv must be (batch, seqlen, 2, nheads, headdim), got shape {tuple(kv.shape)}")
    apply_rotary_emb(kv[:, :, 0], cos, sin, interleaved, True, seqlen_offsets, backend=backend)
    return kv
