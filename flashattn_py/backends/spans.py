"""Where each sequence of a batch with per-sequence lengths lives (packed cu_seqlens batches, dense batches
with seqused_k / leftpad_k): one table, read once from the lengths, used by the per-sequence adapter
(per_sequence.py), torch's fused kernel called per run (torch_fused.py) and the CPU kernels (cpu_kernels.py)."""
from __future__ import annotations

import functools

import torch

from ..params import AttentionParams


class Spans:
    """table: (sequences, 6) int64 on the lengths' device, per sequence (q batch entry, first q row, end q row,
    k batch entry, first k row, end k row) indexing the bshd tensors (packed: rows of batch entry 0; dense:
    keys from leftpad_k (0 without) to seqused_k). rows: the same as a list of tuples, read from the device
    once, when first asked for."""

    def __init__(self, params: AttentionParams):
        lengths = params.lengths
        if params.is_varlen:
            cu_q, cu_k = lengths.cu_seqlens_q.long(), lengths.cu_seqlens_k.long()
            zero = torch.zeros_like(cu_q[:-1])
            self.table = torch.stack([zero, cu_q[:-1], cu_q[1:], zero, cu_k[:-1], cu_k[1:]], 1)
        else:
            used = lengths.seqused_k.long()
            batch = torch.arange(params.batch, device=used.device)
            zero = torch.zeros_like(used)
            first = zero if lengths.leftpad_k is None else lengths.leftpad_k.long()
            self.table = torch.stack([batch, zero, zero + params.seqlen_q, batch, first, used], 1)

    def __len__(self) -> int:
        return self.table.shape[0]

    @functools.cached_property
    def lengths(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(queries, keys) of each sequence, int64 tensors."""
        return self.table[:, 2] - self.table[:, 1], self.table[:, 5] - self.table[:, 4]

    @functools.cached_property
    def rows(self) -> list[tuple[int, int, int, int, int, int]]:
        return [tuple(span) for span in self.table.tolist()]
