"""Many short packed self-attention sequences in one fused CPU kernel call (torch_fused.forward_sequences asks
here first): torch's kernel costs ~10-20 us per call, so a call per sequence makes thousands of short
sequences cost twice the dense call on the same tokens. Where the CPU kernels are built (cpu_kernels.py)
they take these calls before the torch paths, so this path serves installs without them.

The packed rows are cut into windows of W = m query rows (m: the longest sequence). A query row sees keys of
its own sequence only, which lie at most m - 1 rows before it and (without a causal mask) m - 1 rows after
it, so window w's keys are one block of rows around its queries: the windows are one overlapping strided
view of k and v (no copy) and the batch of one kernel call, with an additive mask (0 / -inf) that keeps each
query to its own sequence's keys and to the diagonal rule (bottom-right aligned per sequence: queries and
keys of a sequence are the same rows). The rows too near either end for a whole window are one more call
each. Exact: a masked score is -inf, its weight exactly 0.

What a window could add to a row is only its neighbours' non-finite values (NaN, inf: 0 * inf is NaN): the
output then holds a NaN, and the call returns None so that the per-sequence calls, which never read another
sequence's rows, compute it instead (a finite row never becomes NaN through a neighbour otherwise).

Pays only for short sequences (a window computes up to 3m - 2 keys per query where a sequence needs its
own); measured (docs/design.md, the CPU path; 1 thread, causal, 8 heads, d64): lengths 1..8 / 1..16:
1.6x / 1.2-1.5x faster than a call per sequence; 1..32: 1.2x slower. Forward only: the backward's
per-sequence calls read out and lse, not how they were computed.
"""
from __future__ import annotations

import torch

from ..params import UNBOUNDED, AttentionParams

MAX_LENGTH = 16  # the longest sequence this path takes (at 32 the windows' extra keys cost more)
MIN_RUNS = 16  # below this many calls on the per-sequence path, their own cost is small enough


def _plan(params: AttentionParams, spans: list, runs: int) -> int | None:
    """m (the longest sequence) when this path takes the call: a packed batch of self-attention sequences
    (each sequence's query rows are its key rows), all at most MAX_LENGTH, in at least MIN_RUNS calls
    otherwise, and every query sees its own key (a diagonal at or right of it: no row without keys)."""
    right = params.window[1]
    if not params.is_varlen or runs < MIN_RUNS or (right != UNBOUNDED and right < 0):
        return None
    m = 0
    for _, q0, q1, _, k0, k1 in spans:
        if q0 != k0 or q1 != k1:
            return None
        m = max(m, q1 - q0)
    return m if 0 < m <= MAX_LENGTH else None


def forward(q, k, v, params: AttentionParams, spans: list, runs: int, kernel):
    """(out, lse) of a packed batch (q (1, total, nheads_q, d), k, v (1, total, nheads_kv, d)) in windows, or
    None when this path does not take it (_plan) or a non-finite input reached another sequence's rows.
    kernel: torch_fused.FLASH (looked up by the caller at call time)."""
    m = _plan(params, spans, runs)
    if m is None:
        return None
    total, right = q.shape[1], params.window[1]
    after = m - 1 if right == UNBOUNDED else min(right, m - 1)  # keys past the query a row may see
    before, width = m - 1, m
    lengths = torch.tensor([q1 - q0 for _, q0, q1, _, _, _ in spans])
    seq = torch.repeat_interleave(torch.arange(len(spans)), lengths)  # each row's sequence
    out = torch.empty_like(q)
    lse = torch.empty(params.lse_shape, dtype=torch.float32, device=q.device)
    keys = width + before + after
    windows = max(0, (total - before - after) // width)  # windows whose keys stay within the rows
    # (first query row, windows, rows per window, window stride, first key row, keys per window)
    calls = [(before, windows, width, width, 0, keys)] if windows else []
    ends = [(0, before), (before + windows * width, total)] if windows else [(0, total)]
    for a, b in ends:  # the rows too near either end for a whole window: one call each
        if b > a:
            key0 = max(0, a - before)
            calls.append((a, 1, b - a, 0, key0, min(total, b + after) - key0))
    for first, n, rows, stride, key0, span in calls:
        q_idx = first + stride * torch.arange(n)[:, None] + torch.arange(rows)
        k_idx = key0 + stride * torch.arange(n)[:, None] + torch.arange(span)
        o, l = _call(q, k, v, params, kernel, q_idx, k_idx, seq, stride, first, key0)
        if o is None:
            return None
        out[0, first:first + n * rows] = o
        lse[:, first:first + n * rows] = l
    return out, lse


def _windows(t: torch.Tensor, first: int, n: int, rows: int, stride: int) -> torch.Tensor:
    """(n, heads, rows, d) view of bshd (1, total, heads, d) t: window w is rows first + w * stride + i."""
    s = t.stride()
    return t.as_strided((n, t.shape[2], rows, t.shape[3]), (stride * s[1], s[2], s[1], s[3]),
                        t.storage_offset() + first * s[1])


def _call(q, k, v, params: AttentionParams, kernel, q_idx, k_idx, seq, stride: int, first: int, key0: int):
    """(out (n * rows, nheads_q, d), lse (nheads_q, n * rows)) of one kernel call over windows q_idx (n, rows)
    x k_idx (n, keys), starting at rows first and key0; (None, None) when a NaN shows that a non-finite
    input reached another sequence."""
    n, rows = q_idx.shape
    hkv, g, right = params.nheads_kv, params.group_size, params.window[1]
    seen = seq[q_idx][:, :, None] == seq[k_idx][:, None, :]
    if right != UNBOUNDED:  # bottom-right diagonal per sequence: its queries and keys are the same rows
        seen &= k_idx[:, None, :] <= q_idx[:, :, None] + right
    mask = torch.zeros(seen.shape, dtype=q.dtype).masked_fill_(~seen, float("-inf"))
    # GQA: a KV head's query heads folded into its rows (K, V read once), the mask tiled to match.
    qw = _windows(q, first, n, rows, stride).reshape(n, hkv, g * rows, -1)
    kw, vw = (_windows(t, key0, n, k_idx.shape[1], stride) for t in (k, v))
    o, lse = kernel(qw, kw, vw, 0.0, False, attn_mask=mask.repeat(1, g, 1)[:, None], scale=params.softmax_scale)
    if o.sum().isnan():  # a NaN anywhere makes the sum NaN (inf - inf too: then only a needless fallback)
        return None, None
    # (n, hkv, g * rows) -> rows in order, heads (hkv, g) as q's
    o = o.unflatten(2, (g, rows)).permute(0, 3, 1, 2, 4).reshape(n * rows, hkv * g, -1)
    lse = lse.unflatten(2, (g, rows)).permute(1, 2, 0, 3).reshape(hkv * g, n * rows)
    return o, lse
