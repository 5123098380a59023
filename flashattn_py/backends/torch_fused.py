"""The PyTorch path's fast lane on CPU: torch's own fused flash attention for CPU
(``aten._scaled_dot_product_flash_attention_for_cpu`` and its backward, what SDPA runs on CPU), for
every call it can compute exactly.

That kernel is blocked, vectorized, skips the blocks its causal mask hides and returns the
log-sum-exp, but it only knows SDPA's top-left causal mask. Our masks (masks.py) are expressed with
at most two calls on slices of the keys, merged through their lse (the split-K rule):

- no mask, or a causal diagonal (window (-1, right)) that every query passes the last key of: one
  call without a mask;
- a diagonal at key ``o = diagonal_offset + right`` of query 0 (query i sees keys j <= i + o):
  o >= 0: keys [0, o) are seen by every query (a call without a mask) and keys [o, sk) form SDPA's
  top-left causal pattern (a causal call), merged; o < 0: queries [0, -o) see no key (output 0, lse
  -inf, zero gradients, as everywhere here) and queries [-o, sq) against all keys are top-left causal.

The backward of a slice is the kernel's backward given the *whole* call's out and lse: it computes
P = exp(S - lse) and delta = rowsum(dO * O) from them, which are then the whole call's, so each slice's
gradients are exactly its share (summed over slices). GQA: without a causal mask the query heads of a
group are folded into the query rows (K and V are read once, never repeated); with one, K and V are
repeated per query head (a copy the size of q's, as SDPA's enable_gqa makes on CPU).
Calls with dropout, score modifications, sinks, windows bounded on the left or per-sequence lengths
are not expressible (see `expressible`); torch_backend.py runs them chunk by chunk.
"""
from __future__ import annotations

import torch

from ..params import AttentionParams
from ..semantics import masks, positional

FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default
FLASH_BACKWARD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward.default


def expressible(params: AttentionParams, device: torch.device) -> bool:
    """Whether torch's fused CPU attention computes this call exactly (with `slices`)."""
    left, _ = params.window
    return (device.type == "cpu" and not params.has_dropout and not params.mods.active and params.lengths is None
            and params.paged is None and left == masks.UNBOUNDED and params.seqlen_q > 0 and params.seqlen_k > 0
            and params.batch > 0 and params.nheads_q > 0)


def slices(params: AttentionParams) -> tuple[int, list[tuple[int, int, int, bool]]]:
    """(first query that sees a key, [(q_start, k_start, k_end, causal)]): the kernel calls of the call,
    each over queries q_start .. seqlen_q - 1 and keys k_start .. k_end - 1 (see the module docstring)."""
    sq, sk = params.seqlen_q, params.seqlen_k
    right = params.window[1]
    if right == masks.UNBOUNDED:
        return 0, [(0, 0, sk, False)]
    o = params.diagonal_offset + right  # query i sees keys j <= i + o
    if o >= sk - 1:  # even query 0 sees the last key
        return 0, [(0, 0, sk, False)]
    if o >= 0:
        return 0, ([(0, 0, o, False)] if o > 0 else []) + [(0, o, sk, True)]
    first = min(-o, sq)
    return first, ([(first, 0, sk, True)] if first < sq else [])


def _compute_dtype(q: torch.Tensor, params: AttentionParams, pieces: int) -> torch.dtype:
    """The inputs' dtype for one call on unencoded inputs; else fp32, so partial results and encoded q, k
    are not rounded to fp16 / bf16 before they are merged / used (one rounding at the end, as elsewhere)."""
    return q.dtype if pieces == 1 and params.encoding is None else torch.float32


def _heads_first(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bshd -> (batch, heads, seqlen, head_dim) view (a copy only to change dtype)."""
    return t.to(dtype).transpose(1, 2)


def _fold_groups(t: torch.Tensor, params: AttentionParams) -> torch.Tensor:
    """(b, hq, s, ...) -> (b, hkv, group * s, ...): a group's query heads become rows of one KV head."""
    return t.reshape(t.shape[0], params.nheads_kv, params.group_size * t.shape[2], *t.shape[3:])


def _unfold_groups(t: torch.Tensor, params: AttentionParams, seqlen: int) -> torch.Tensor:
    return t.reshape(t.shape[0], params.nheads_q, seqlen, *t.shape[3:])


def _repeat_kv(t: torch.Tensor, params: AttentionParams) -> torch.Tensor:
    return t if params.group_size == 1 else t.repeat_interleave(params.group_size, dim=1)


def _call(q, k, v, causal: bool, params: AttentionParams):
    """(out, lse) of bhsd q against k, v (nheads_kv heads) on torch's fused CPU kernel."""
    seqlen = q.shape[2]
    if params.group_size > 1 and not causal:
        out, lse = FLASH(_fold_groups(q, params), k, v, 0.0, False, scale=params.softmax_scale)
        return _unfold_groups(out, params, seqlen), _unfold_groups(lse, params, seqlen)
    return FLASH(q, _repeat_kv(k, params), _repeat_kv(v, params), 0.0, causal, scale=params.softmax_scale)


def _call_backward(dout, q, k, v, out, lse, causal: bool, params: AttentionParams):
    """(dq, dk, dv) bhsd of one kernel call given the whole call's out and lse."""
    seqlen = q.shape[2]
    if params.group_size > 1 and not causal:
        fold = [_fold_groups(t, params) for t in (dout, q, out, lse)]
        dq, dk, dv = FLASH_BACKWARD(fold[0], fold[1], k, v, fold[2], fold[3], 0.0, False, scale=params.softmax_scale)
        return _unfold_groups(dq, params, seqlen), dk, dv
    dq, dk, dv = FLASH_BACKWARD(dout, q, _repeat_kv(k, params), _repeat_kv(v, params), out, lse, 0.0, causal,
                                scale=params.softmax_scale)
    if params.group_size > 1:  # the repeated heads' gradients summed back onto their KV head
        dk, dv = (t.unflatten(1, (params.nheads_kv, params.group_size)).sum(2) for t in (dk, dv))
    return dq, dk, dv


def forward(q, k, v, params: AttentionParams) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (batch, seqlen_q, nheads_q, head_dim) like q, lse (batch, nheads_q, seqlen_q) fp32) of an
    expressible call. out is a view of the kernel's (batch, heads, seqlen, head_dim) result when one
    call computes it all (no copy)."""
    first, pieces = slices(params)
    dtype = _compute_dtype(q, params, len(pieces))
    q_enc, k_enc = positional.encode_qk(q.to(dtype), k.to(dtype), params.encoding)
    qh, kh, vh = (_heads_first(t, dtype) for t in (q_enc, k_enc, v))
    merged_out, merged_lse = None, None
    for q_start, k_start, k_end, causal in pieces:
        part_out, part_lse = _call(qh[:, :, q_start:], kh[:, :, k_start:k_end], vh[:, :, k_start:k_end], causal, params)
        if merged_out is None:
            merged_out, merged_lse = part_out, part_lse
        else:  # the split-K merge (split_merge.py's rule, natural log): rows see keys in both slices
            total = torch.logaddexp(merged_lse, part_lse)
            merged_out = (merged_out * torch.exp(merged_lse - total)[..., None]
                          + part_out * torch.exp(part_lse - total)[..., None])
            merged_lse = total
    if first == 0:
        return merged_out.to(q.dtype).transpose(1, 2), merged_lse
    # Queries [0, first) see no key: output 0, lse -inf.
    out = torch.zeros(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.full((params.batch, params.nheads_q, params.seqlen_q), float("-inf"), device=q.device)
    if merged_out is not None:
        out[:, first:] = merged_out.transpose(1, 2)
        lse[:, :, first:] = merged_lse
    return out, lse


def backward(dout, q, k, v, out, lse, params: AttentionParams) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv), shaped and typed like q, k, v (w.r.t. the unencoded q, k), of an expressible call;
    views of the kernel's results when one call covers every query and key (no copy)."""
    _, pieces = slices(params)
    dtype = _compute_dtype(q, params, len(pieces))
    q_enc, k_enc = positional.encode_qk(q.to(dtype), k.to(dtype), params.encoding)
    qh, kh, vh, douth, outh = (_heads_first(t, dtype) for t in (q_enc, k_enc, v, dout, out))
    grads = [None, None, None]  # dq, dk, dv (batch, heads, seqlen, head_dim), summed over the calls
    for q_start, k_start, k_end, causal in pieces:
        rows, cols = slice(q_start, None), slice(k_start, k_end)
        parts = _call_backward(douth[:, :, rows], qh[:, :, rows], kh[:, :, cols], vh[:, :, cols],
                               outh[:, :, rows], lse[:, :, rows], causal, params)
        for i, (part, like, span) in enumerate(zip(parts, (qh, kh, vh), (rows, cols, cols))):
            if grads[i] is None and part.shape == like.shape:  # the whole tensor: taken as it is
                grads[i] = part
                continue
            if grads[i] is None:  # rows / keys outside every call get zero gradients
                grads[i] = torch.zeros_like(like)
            grads[i][:, :, span] += part
    dq, dk, dv = (torch.zeros_like(t) if g is None else g for g, t in zip(grads, (qh, kh, vh)))
    dq, dk, dv = (g.transpose(1, 2) for g in (dq, dk, dv))
    dq, dk = positional.encode_qk(dq, dk, params.encoding, inverse=True)  # w.r.t. the user's q, k
    return tuple(g.to(t.dtype) for g, t in zip((dq, dk, dv), (q, k, v)))
