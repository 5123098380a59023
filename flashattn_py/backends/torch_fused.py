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

import dataclasses

import torch

from ..params import AttentionParams
from ..semantics import masks, positional
from . import packed_windows, sequence_pool

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
    return _slices(params.seqlen_q, params.seqlen_k, params.window[1], params.diagonal_offset)


def _slices(sq: int, sk: int, right: int, diagonal_offset: int) -> tuple[int, list[tuple[int, int, int, bool]]]:
    if right == masks.UNBOUNDED:
        return 0, [(0, 0, sk, False)]
    o = diagonal_offset + right  # query i sees keys j <= i + o
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


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t in dtype; without a dispatch when it already is (a per-sequence batch calls this per sequence)."""
    return t if t.dtype == dtype else t.to(dtype)


def _heads_first(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bshd -> (batch, heads, seqlen, head_dim) view (a copy only to change dtype)."""
    return _as(t, dtype).transpose(1, 2)


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
    q_enc, k_enc = positional.encode_qk(_as(q, dtype), _as(k, dtype), params.encoding)
    qh, kh, vh = _heads_first(q_enc, dtype), _heads_first(k_enc, dtype), _heads_first(v, dtype)
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
        return _as(merged_out, q.dtype).transpose(1, 2), merged_lse
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


def sequences_expressible(params: AttentionParams, device: torch.device) -> bool:
    """Whether a batch with per-sequence lengths (params.lengths) runs here sequence by sequence
    (forward_sequences / backward_sequences): every sequence an expressible call. Encodings are left to
    backends/per_sequence.py's groups, which slice each sequence's positions."""
    left, _ = params.window
    return (device.type == "cpu" and params.lengths is not None and not params.has_dropout
            and not params.mods.active and params.encoding is None and params.paged is None
            and left == masks.UNBOUNDED and params.nheads_q > 0)


def _runs(spans: list, packed: bool) -> list[tuple[int, int, int, int, int, int, int]]:
    """(n, q batch entry, first q row, q rows, k batch entry, first k row, k rows) per run: consecutive
    sequences of equal (query, key) lengths whose rows are one block of the tensors (consecutive packed
    sequences; consecutive batch entries at one offset) run as one call on views. spans: spans.Spans.rows."""
    runs = []
    for qb, q0, q1, kb, k0, k1 in spans:
        if runs:
            n, rqb, rq0, sq, rkb, rk0, sk = runs[-1]
            if q1 - q0 == sq and k1 - k0 == sk and (
                    (q0, k0) == (rq0 + n * sq, rk0 + n * sk) if packed
                    else (qb, kb, q0, k0) == (rqb + n, rkb + n, rq0, rk0)):
                runs[-1] = (n + 1, rqb, rq0, sq, rkb, rk0, sk)
                continue
        runs.append((1, qb, q0, q1 - q0, kb, k0, k1 - k0))
    return runs


def _run_rows(t: torch.Tensor, n: int, b: int, first: int, length: int, packed: bool, dim: int = 2) -> torch.Tensor:
    """A run's rows of a heads-first (batch, heads, ..., seqlen at `dim`, ...) tensor: a view with batch n
    and `length` rows (narrow: the cheapest view to make, a call per sequence makes several)."""
    if not packed:
        return t.narrow(0, b, n).narrow(dim, first, length)
    if n == 1:  # a packed tensor's batch is 1
        return t.narrow(dim, first, length)
    return t.narrow(dim, first, n * length).unflatten(dim, (n, length)).movedim(dim, 0).squeeze(1)


def _piece(params: AttentionParams, n: int, sq: int, sk: int) -> AttentionParams:
    return dataclasses.replace(params, batch=n, seqlen_q=sq, seqlen_k=sk, diagonal_offset=sk - sq, lengths=None)


def _run_cost(params: AttentionParams):
    """A run's kernel time in flops: its matmuls', plus a call's fixed cost (~17 us on one thread, measured:
    docs/design.md), so the pool's chunks take about equal time."""
    per_pair = 4 * params.nheads_q * params.head_dim

    def cost(run) -> int:
        n, _, _, sq, _, _, sk = run
        return n * sq * sk * per_pair + 200_000
    return cost


def forward_sequences(q, k, v, params: AttentionParams, spans: list):
    """(out, lse) of a batch with per-sequence lengths (sequences_expressible): one kernel call per run of
    equal-length sequences that are one block of rows (_runs; a decoding batch of all-different lengths:
    one per sequence), on views of q, k, v (keys outside a sequence's span are never read, whatever they
    hold), the results written into out / lse. spans: spans.Spans.rows."""
    packed, g, hkv = params.is_varlen, params.group_size, params.nheads_kv
    runs = _runs(spans, packed)
    windowed = packed_windows.forward(q, k, v, params, spans, len(runs), FLASH)  # many short sequences
    if windowed is not None:
        return windowed
    out = torch.empty_like(q)
    lse = torch.empty(params.lse_shape, dtype=torch.float32, device=q.device)
    qh, kh, vh, outh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), out.transpose(1, 2)
    lseh = lse[None] if packed else lse
    # GQA folds a group's query heads into the query rows of its KV head (as _call): the kernel's
    # (n, hkv, g * sq, ...) results are written through (batch, hkv, g, seqlen, ...) views of out and lse.
    out_groups, lse_groups = outh.unflatten(1, (hkv, g)), lseh.unflatten(1, (hkv, g))
    # Dense batches: every sequence has all seqlen_q queries; each batch entry's views are made once
    # (split), so a sequence's call costs a few views (a decoding batch makes one call per sequence).
    entries = None if packed else [t.split(1) for t in (qh, kh, vh, outh, lseh, out_groups, lse_groups)]
    q_folded = None if packed or g == 1 else qh.reshape(q.shape[0], hkv, g * params.seqlen_q, -1).split(1)

    def rows(i: int, t: torch.Tensor, n: int, b: int, first: int, length: int, dim: int = 2) -> torch.Tensor:
        if entries is None or n > 1:
            return _run_rows(t, n, b, first, length, packed, dim)
        entry = entries[i][b]
        return entry if length == entry.shape[dim] else entry.narrow(dim, first, length)

    right, scale = params.window[1], params.softmax_scale

    def one(run) -> None:
        n, qb, q0, sq, kb, k0, sk = run
        if sq == 0:
            return
        first, pieces = _slices(sq, sk, right, sk - sq) if sk else (sq, [])
        if first == 0 and len(pieces) == 1:  # one kernel call, its results written in place
            causal = pieces[0][3]
            k_rows, v_rows = rows(1, kh, n, kb, k0, sk), rows(2, vh, n, kb, k0, sk)
            if g > 1 and not causal:
                q_rows = (q_folded[qb] if q_folded is not None and n == 1
                          else rows(0, qh, n, qb, q0, sq).reshape(n, hkv, g * sq, -1))
                o, lse_part = FLASH(q_rows, k_rows, v_rows, 0.0, False, scale=scale)
                rows(5, out_groups, n, qb, q0, sq, 3).copy_(o.view(n, hkv, g, sq, -1))
                rows(6, lse_groups, n, qb, q0, sq, 3).copy_(lse_part.view(n, hkv, g, sq))
            else:
                o, lse_part = FLASH(rows(0, qh, n, qb, q0, sq), _repeat_kv(k_rows, params),
                                    _repeat_kv(v_rows, params), 0.0, causal, scale=scale)
                rows(3, outh, n, qb, q0, sq).copy_(o)
                rows(4, lseh, n, qb, q0, sq).copy_(lse_part)
            return
        out_rows, lse_rows = _run_rows(outh, n, qb, q0, sq, packed), _run_rows(lseh, n, qb, q0, sq, packed)
        if pieces:  # several slices merged, or queries that see no key: the whole rule (forward)
            o, lse_part = forward(_run_rows(qh, n, qb, q0, sq, packed).transpose(1, 2),
                                  _run_rows(kh, n, kb, k0, sk, packed).transpose(1, 2),
                                  _run_rows(vh, n, kb, k0, sk, packed).transpose(1, 2), _piece(params, n, sq, sk))
            out_rows.copy_(o.transpose(1, 2))
            lse_rows.copy_(lse_part)
        else:  # no key: output 0, lse -inf
            out_rows.zero_()
            lse_rows.fill_(float("-inf"))

    sequence_pool.run(runs, one, _run_cost(params))
    return out, lse


def backward_sequences(dout, q, k, v, out, lse, params: AttentionParams, spans: list):
    """(dq, dk, dv) of forward_sequences' call: each run's backward (the rule of `backward`) on views,
    written into the gradients; keys outside every span (past seqused_k) get zero gradients."""
    packed = params.is_varlen
    runs = _runs(spans, packed)
    dq = torch.empty_like(q)
    new = torch.empty_like if packed else torch.zeros_like  # packed sequences cover every key row
    dk, dv = new(k), new(v)
    heads = [t.transpose(1, 2) for t in (dout, q, k, v, out, dq, dk, dv)]
    lseh = lse[None] if packed else lse

    def one(run) -> None:
        n, qb, q0, sq, kb, k0, sk = run
        q_side = [_run_rows(t, n, qb, q0, sq, packed) for t in (heads[0], heads[1], heads[4], heads[5])]
        k_side = [_run_rows(t, n, kb, k0, sk, packed) for t in (heads[2], heads[3], heads[6], heads[7])]
        if sq == 0 or sk == 0:  # no query or no key: zero gradients
            for grad in (q_side[3], k_side[2], k_side[3]):
                grad.zero_()
            return
        lse_rows = _run_rows(lseh, n, qb, q0, sq, packed)
        first, pieces = _slices(sq, sk, params.window[1], sk - sq)
        if first == 0 and len(pieces) == 1:  # one kernel call: its gradients are the run's
            grads = _call_backward(q_side[0], q_side[1], k_side[0], k_side[1], q_side[2], lse_rows, pieces[0][3],
                                   params)
            for dst, grad in zip((q_side[3], k_side[2], k_side[3]), grads):
                dst.copy_(grad)
            return
        grads = backward(*(t.transpose(1, 2) for t in (q_side[0], q_side[1], k_side[0], k_side[1], q_side[2])),
                         lse_rows, _piece(params, n, sq, sk))
        for dst, grad in zip((q_side[3], k_side[2], k_side[3]), grads):
            dst.copy_(grad.transpose(1, 2))

    sequence_pool.run(runs, one, _run_cost(params))
    return dq, dk, dv
