"""Which keys a query may see: causal alignment and sliding windows, written once.

Every backend implements exactly these rules (the Triton kernels' block ranges and element masks in
`triton_kernels/common.py`, the CUDA kernels' in `csrc/`, the PyTorch paths through `visible_keys`);
tests check the kernels' block ranges against the functions here.

Queries and keys are aligned at the bottom-right corner (FlashAttention >= 2.1): query ``i`` sits
at key position ``i + seqlen_k - seqlen_q``. A window ``(left, right)`` lets that query see key
``j`` when ``aligned - left <= j <= aligned + right``; ``-1`` leaves a side unbounded. ``causal``
is the window ``(left, 0)``. The SDPA-compatible entry point keeps SDPA's top-left alignment
(query ``i`` at key position ``i``): every function takes that as ``offset=0``.
"""
from __future__ import annotations

import torch

from ..params import UNBOUNDED


def normalize_window(causal: bool, window_size: tuple[int, int]) -> tuple[int, int]:
    """(left, right) with causal folded in, as FlashAttention does: causal forces right = 0."""
    left, right = window_size
    if causal:
        right = 0
    return left, right


def diagonal_offset(seqlen_q: int, seqlen_k: int) -> int:
    """Key position of query 0 (bottom-right alignment)."""
    return seqlen_k - seqlen_q


def visible_keys(
    query_positions: torch.Tensor,
    key_positions: torch.Tensor,
    seqlen_q: int,
    seqlen_k: int,
    window: tuple[int, int],
    offset: int | None = None,
) -> torch.Tensor:
    """Boolean (len(query_positions), len(key_positions)) matrix: True where the query sees the key.
    offset: key position of query 0 (default bottom-right, seqlen_k - seqlen_q; 0 = SDPA's top-left)."""
    left, right = window
    offset = diagonal_offset(seqlen_q, seqlen_k) if offset is None else offset
    aligned = (query_positions + offset)[:, None]
    keys = key_positions[None, :]
    keep = ((keys >= 0) & (keys < seqlen_k)).expand(len(query_positions), len(key_positions))
    if right != UNBOUNDED:
        keep = keep & (keys <= aligned + right)
    if left != UNBOUNDED:
        keep = keep & (keys >= aligned - left)
    return keep


def key_range(q_start: int, q_end: int, seqlen_q: int, seqlen_k: int, window: tuple[int, int],
              offset: int | None = None) -> tuple[int, int]:
    """Half-open range of keys that queries [q_start, q_end) can see; kernels skip blocks outside it."""
    left, right = window
    offset = diagonal_offset(seqlen_q, seqlen_k) if offset is None else offset
    lo, hi = 0, seqlen_k
    if left != UNBOUNDED:
        lo = max(0, q_start + offset - left)
    if right != UNBOUNDED:
        hi = min(seqlen_k, q_end - 1 + offset + right + 1)
    return lo, max(lo, hi)


def row_key_ranges(rows: torch.Tensor, seqlen_q: torch.Tensor, seqlen_k: torch.Tensor,
                   window: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """key_range of each single query row, for many rows at once (the CPU kernels' per-row ranges):
    query rows[n] of a sequence of seqlen_q[n] queries and seqlen_k[n] keys (bottom-right aligned) sees keys
    [lo[n], hi[n]); lo == hi when it sees none. Integer tensors of one shape; int64 results."""
    left, right = window
    offset = seqlen_k - seqlen_q
    lo = torch.zeros_like(rows) if left == UNBOUNDED else (rows + offset - left).clamp_min(0)
    hi = seqlen_k if right == UNBOUNDED else torch.minimum(seqlen_k, rows + offset + right + 1)
    return lo, torch.maximum(lo, hi)


def query_range(k_start: int, k_end: int, seqlen_q: int, seqlen_k: int, window: tuple[int, int],
                offset: int | None = None) -> tuple[int, int]:
    """Half-open range of queries that can see some key in [k_start, k_end) (backward block skipping)."""
    left, right = window
    offset = diagonal_offset(seqlen_q, seqlen_k) if offset is None else offset
    lo, hi = 0, seqlen_q
    if right != UNBOUNDED:
        lo = max(0, k_start - offset - right)
    if left != UNBOUNDED:
        hi = min(seqlen_q, k_end - 1 - offset + left + 1)
    return lo, max(lo, hi)
