"""FlashAttention 2's rotary ops (``flash_attn.layers.rotary``) under the same names and signatures.

``apply_rotary_emb(x, cos, sin, interleaved=False, inplace=False, seqlen_offsets=0, cu_seqlens=None,
max_seqlen=None)`` (alias ``apply_rotary_emb_func``), ``apply_rotary_emb_qkv_`` and
``apply_rotary_emb_kv_``, on our standalone rotary op (pe_ops.apply_rotary; the math is written once
in flashattn_py.positional):

- x: (batch, seqlen, nheads, headdim), or (total_seqlen, nheads, headdim) packed with ``cu_seqlens``
  (int32 (batch + 1,) prefix sums, ``max_seqlen`` the longest sequence; positions restart at 0 in
  every sequence).
- cos, sin: (seqlen_rotary, rotary_dim / 2) tables, FlashAttention's convention and ours
  (positional.Rotary); rotary_dim = 2 * cos.shape[1] <= headdim, the other channels pass through.
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

from .. import pe_ops, positional
from ..positional import Rotary
from ..varlen import _check_cu_seqlens as check_cu_seqlens  # the packed calls' one rule

OFFSETS = "seqlen_offsets"


def _rotary(cos, sin, interleaved) -> Rotary:
    """Our Rotary spec for FlashAttention's tables (the tables themselves are checked by positional)."""
    for name, table in (("cos", cos), ("sin", sin)):
        if not isinstance(table, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor (seqlen_rotary, rotary_dim / 2), got {type(table).__name__}")
        if table.dim() != 2:
            raise ValueError(f"{name} must be (seqlen_rotary, rotary_dim / 2), got shape {tuple(table.shape)}")
    if not isinstance(interleaved, bool):
        raise TypeError(f"interleaved must be a bool, got {type(interleaved).__name__}")
    return Rotary(rotary_dim=2 * cos.shape[1], interleaved=interleaved, cos=cos, sin=sin)


def _packed_positions(cu_seqlens, max_seqlen, seqlen_offsets, total: int, device) -> torch.Tensor:
    """(1, total) int64: each packed row's position in its sequence, plus that sequence's offset."""
    check_cu_seqlens(cu_seqlens, "cu_seqlens", total, max_seqlen, device)
    batch = cu_seqlens.numel() - 1
    offsets = positional.resolve_positions(seqlen_offsets, batch, 1, device, OFFSETS)[:, 0]  # (batch,)
    rows = torch.arange(total, device=device)
    sequence = torch.searchsorted(cu_seqlens[1:].to(torch.int64), rows, right=True)
    return (rows - cu_seqlens.to(torch.int64)[sequence] + offsets[sequence])[None]


def apply_rotary_emb(x, cos, sin, interleaved=False, inplace=False, seqlen_offsets=0, cu_seqlens=None,
                     max_seqlen=None, *, backend="auto"):
    """x rotated by the cos / sin tables at positions 0.. (+ seqlen_offsets) of each sequence; see the
    module docstring. Returns (batch, seqlen, nheads, headdim), or (total_seqlen, nheads, headdim)."""
    spec = _rotary(cos, sin, interleaved)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
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
    """Rotate q and k of a packed qkv in place (v untouched); returns qkv.

    qkv: (batch, seqlen, 3, nheads, headdim), or (batch, seqlen, num_heads_q + 2 * num_heads_k, headdim)
    with num_heads_q (GQA / MQA: q heads, then k heads, then v heads). k uses cos_k / sin_k when given
    (both or neither), else cos / sin."""
    if not isinstance(qkv, torch.Tensor):
        raise TypeError(f"qkv must be a torch.Tensor, got {type(qkv).__name__}")
    if qkv.dim() == 5 and qkv.shape[2] == 3:
        q, k = qkv[:, :, 0], qkv[:, :, 1]
    elif qkv.dim() == 4:
        if isinstance(num_heads_q, bool) or not isinstance(num_heads_q, int):
            raise TypeError(f"num_heads_q must be an int for a (batch, seqlen, num_heads_q + 2 * num_heads_k, "
                            f"headdim) qkv, got {type(num_heads_q).__name__}")
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
    """Rotate k of a packed kv (batch, seqlen, 2, nheads, headdim) in place (v untouched); returns kv."""
    if not isinstance(kv, torch.Tensor):
        raise TypeError(f"kv must be a torch.Tensor, got {type(kv).__name__}")
    if kv.dim() != 5 or kv.shape[2] != 2:
        raise ValueError(f"kv must be (batch, seqlen, 2, nheads, headdim), got shape {tuple(kv.shape)}")
    apply_rotary_emb(kv[:, :, 0], cos, sin, interleaved, True, seqlen_offsets, backend=backend)
    return kv
