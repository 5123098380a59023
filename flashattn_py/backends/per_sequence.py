"""Per-sequence lengths on a backend without variable-length kernels (the PyTorch and reference paths):
the `PerSequence` adapter runs packed (cu_seqlens) batches and dense batches with seqused_k as dense
batches, one per distinct length. The Triton and CUDA kernels read the lengths themselves
(triton_kernels/common.py sequence_bounds, csrc/sequence.h) and never go through it."""
from __future__ import annotations

import dataclasses
import functools

import torch

from ..params import AttentionParams
from .spans import Spans


class PerSequence:
    """Adapter giving a backend without variable-length kernels the same interface: the sequences of
    one length run as one dense batch through the wrapped backend (forward and backward), so a packed
    batch of many short sequences costs a call per distinct length, not per sequence. Packed batches
    (cu_seqlens) and dense batches with seqused_k (the keys past seqused_k[b] get zero gradients).
    The wrapped backend must keep no scratch between its forward and backward (the PyTorch and
    reference backends keep none; Triton and CUDA read the lengths themselves)."""

    def __init__(self, backend):
        self.backend = backend

    @staticmethod
    def _pieces(params: AttentionParams, spans: list):
        """(q rows, k rows, lse rows, params of the piece) per sequence; rows index bshd tensors."""
        enc = params.encoding
        for b, (qb, q0, q1, kb, k0, k1) in enumerate(spans):
            q_rows, k_rows = (slice(qb, qb + 1), slice(q0, q1)), (slice(kb, kb + 1), slice(k0, k1))
            lse_rows = (slice(None), slice(q0, q1)) if params.is_varlen else (slice(b, b + 1),)
            mods = params.mods
            if mods.alibi_slopes is not None:
                mods = dataclasses.replace(mods, alibi_slopes=mods.alibi_slopes[b:b + 1])
            if mods.bias is not None:
                mods = dataclasses.replace(mods, bias=mods.bias[b:b + 1, :, :, k0:k1],
                                           bias_source=_bias_rows(mods.bias_source, b, k0, k1))
            encoding = None if enc is None else dataclasses.replace(
                enc, q_positions=enc.q_positions[q_rows], k_positions=enc.k_positions[k_rows])
            piece = dataclasses.replace(params, batch=1, seqlen_q=q1 - q0, seqlen_k=k1 - k0, lengths=None, mods=mods,
                                        encoding=encoding, diagonal_offset=(k1 - k0) - (q1 - q0),
                                        dropout_seed=params.dropout_seed + b)
            yield q_rows, k_rows, lse_rows, piece

    @staticmethod
    def _groups(params: AttentionParams, spans: list):
        """Sequences of equal (query, key) lengths run as one dense batch: (params of the batch, its query
        rows, its key rows). Only positions and ALiBi rows differ between such sequences, and they stack;
        dropout (a seed per sequence) and a bias (sliced per sequence) keep one call per sequence (_pieces).
        A decoding batch has a length per sequence: nothing per group beyond the rows (index tensors only
        for scattered groups) and one params copy."""
        lengths = params.lengths
        members = {}
        for b, (_, q0, q1, _, k0, k1) in enumerate(spans):
            members.setdefault((q1 - q0, k1 - k0), []).append(b)
        enc, mods = params.encoding, params.mods
        device = (lengths.cu_seqlens_q if params.is_varlen else lengths.seqused_k).device
        base = dict(params.__dict__, lengths=None)
        for (len_q, len_k), batch in members.items():
            q_rows = _Rows([spans[b][0] for b in batch], [spans[b][1] for b in batch], len_q, device, params.is_varlen)
            k_rows = _Rows([spans[b][3] for b in batch], [spans[b][4] for b in batch], len_k, device, params.is_varlen)
            group = dict(base, batch=len(batch), seqlen_q=len_q, seqlen_k=len_k, diagonal_offset=len_k - len_q)
            if mods.alibi_slopes is not None:
                rows = slice(batch[0], batch[0] + 1) if len(batch) == 1 else torch.tensor(batch, device=device)
                group["mods"] = dataclasses.replace(mods, alibi_slopes=mods.alibi_slopes[rows])
            if enc is not None:
                group["encoding"] = dataclasses.replace(enc, q_positions=q_rows.gather(enc.q_positions),
                                                        k_positions=k_rows.gather(enc.k_positions))
            yield _params(group), q_rows, k_rows

    @staticmethod
    def _groupable(params: AttentionParams) -> bool:
        return not params.has_dropout and params.mods.bias is None

    def forward(self, q, k, v, params):
        spans = Spans(params)
        if self.backend.forward_sequences is not None:  # the backend's own way, when it has one for this call
            result = self.backend.forward_sequences(q, k, v, params, spans)
            if result is not None:
                return result
        spans = spans.rows
        out = torch.empty_like(q)
        lse = torch.empty(params.lse_shape, dtype=torch.float32, device=q.device)
        if self._groupable(params):
            for group, q_rows, k_rows in self._groups(params, spans):
                o, l, scratch = self.backend.forward(q_rows.gather(q), k_rows.gather(k), k_rows.gather(v), group)
                assert not scratch, f"{self.backend.name} keeps scratch; it needs variable-length kernels"
                q_rows.scatter(out, o)
                q_rows.scatter_lse(lse, l, params.is_varlen)
            return out, lse, ()
        for q_rows, k_rows, lse_rows, piece in self._pieces(params, spans):
            o, l, scratch = self.backend.forward(q[q_rows], k[k_rows], v[k_rows], piece)
            assert not scratch, f"{self.backend.name} keeps scratch; it needs variable-length kernels"
            out[q_rows] = o
            lse[lse_rows] = l[0] if params.is_varlen else l
        return out, lse, ()

    def backward(self, dout, q, k, v, out, lse, scratch, params, dbias=None):
        spans = Spans(params)
        if self.backend.backward_sequences is not None and dbias is None:
            grads = self.backend.backward_sequences(dout, q, k, v, out, lse, params, spans)
            if grads is not None:
                return grads
        spans = spans.rows
        # Packed sequences cover every key row; seqused_k leaves the keys past each length with zero gradients.
        new = torch.empty_like if params.is_varlen else torch.zeros_like
        dq, dk, dv = torch.empty_like(q), new(k), new(v)
        if self._groupable(params):
            for group, q_rows, k_rows in self._groups(params, spans):
                grads = self.backend.backward(q_rows.gather(dout), q_rows.gather(q), k_rows.gather(k), k_rows.gather(v),
                                              q_rows.gather(out), q_rows.gather_lse(lse, params.is_varlen), (), group)
                for rows, dst, grad in zip((q_rows, k_rows, k_rows), (dq, dk, dv), grads):
                    rows.scatter(dst, grad)
            return dq, dk, dv
        for b, (q_rows, k_rows, lse_rows, piece) in enumerate(self._pieces(params, spans)):
            piece_lse = lse[lse_rows][None] if params.is_varlen else lse[lse_rows]
            k0, k1 = k_rows[1].start, k_rows[1].stop
            dq[q_rows], dk[k_rows], dv[k_rows] = self.backend.backward(
                dout[q_rows], q[q_rows], k[k_rows], v[k_rows], out[q_rows], piece_lse, (), piece,
                dbias=None if dbias is None else _bias_rows(dbias, b, k0, k1))
        return dq, dk, dv


def _bias_rows(bias: torch.Tensor, b: int, k0: int, k1: int) -> torch.Tensor:
    """Sequence b's keys k0 .. k1 - 1 of a 4-D bias (or its gradient) that may be broadcast (size 1) along
    the batch or the keys: a view, so a gradient written into it lands in the whole one."""
    rows = slice(b, b + 1) if bias.shape[0] > 1 else slice(None)
    return bias[rows, :, :, k0:k1] if bias.shape[3] > 1 else bias[rows]


def _params(fields: dict) -> AttentionParams:
    """AttentionParams of these fields, as dataclasses.replace makes it (it has no __post_init__) at a
    fifth of the cost: a decoding batch of all-different lengths derives one per sequence."""
    params = object.__new__(AttentionParams)
    params.__dict__.update(fields)
    return params


class _Rows:
    """The rows of a group of equal-length sequences in a (batch, seqlen, ...) tensor: sequence i is
    rows first[i] .. first[i] + length - 1 of batch[i]. Gathered into / scattered from a (n, length, ...)
    batch as a view when they are one block (a single sequence, consecutive packed sequences, consecutive
    batches at one offset), else with index_select / index_copy_ (one kernel each, not one per sequence);
    the index tensors are built only then."""

    def __init__(self, batch: list[int], first: list[int], length: int, device, packed: bool):
        self.n, self.length, self.packed = len(batch), length, packed
        self.batch0, self.first0 = batch[0], first[0]
        self._batch, self._first, self._device = batch, first, device
        if self.n == 1:
            self.block = self.same_first = True
        elif self.packed:  # rows of one batch entry (a packed tensor): contiguous when each starts where the last ended
            self.block = all(f == first[0] + i * length for i, f in enumerate(first))
        else:  # one sequence per batch entry
            self.same_first = all(f == first[0] for f in first)
            self.block = self.same_first and all(b == batch[0] + i for i, b in enumerate(batch))

    @functools.cached_property
    def rows(self) -> torch.Tensor:
        return (torch.tensor(self._first, device=self._device)[:, None]
                + torch.arange(self.length, device=self._device)).flatten()

    @functools.cached_property
    def batch_index(self) -> torch.Tensor:
        return torch.tensor(self._batch, device=self._device)

    @functools.cached_property
    def _advanced(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, row) index tensors of scattered sequences at different offsets; built once, used by
        every gather and scatter of the group."""
        return (self.batch_index[:, None], torch.tensor(self._first, device=self._device)[:, None]
                + torch.arange(self.length, device=self._device))

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        if self.packed:
            rows = t[self.batch0]
            if self.block:
                return rows[self.first0:self.first0 + self.n * self.length].unflatten(0, (self.n, self.length))
            return rows.index_select(0, self.rows).unflatten(0, (self.n, self.length))
        if self.block:
            return t[self.batch0:self.batch0 + self.n, self.first0:self.first0 + self.length]
        if self.same_first:
            return t.index_select(0, self.batch_index)[:, self.first0:self.first0 + self.length]
        return t[self._advanced]

    def scatter(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        if self.packed:
            rows = dst[self.batch0]
            if self.block:  # one copy, whatever src's strides (flattening a strided src would copy it first)
                rows[self.first0:self.first0 + self.n * self.length].unflatten(0, (self.n, self.length)).copy_(src)
            else:
                rows.index_copy_(0, self.rows, src.flatten(0, 1).to(dst.dtype))
        elif self.block:
            dst[self.batch0:self.batch0 + self.n, self.first0:self.first0 + self.length].copy_(src)
        elif self.same_first:
            dst[:, self.first0:self.first0 + self.length].index_copy_(0, self.batch_index, src.to(dst.dtype))
        else:
            dst[self._advanced] = src

    def gather_lse(self, lse: torch.Tensor, packed: bool) -> torch.Tensor:
        """The group's (n, nheads, length) lse from the call's: packed (nheads, total_q), else (batch, nheads, sq)."""
        if packed:  # the queries' rows along lse's last dim
            return self.gather(lse.transpose(0, 1)[None]).transpose(1, 2).contiguous()
        return self.gather(lse.transpose(1, 2)).transpose(1, 2).contiguous()

    def scatter_lse(self, lse: torch.Tensor, src: torch.Tensor, packed: bool) -> None:
        if packed:
            self.scatter(lse.transpose(0, 1)[None], src.transpose(1, 2))
        elif self.block:
            lse[self.batch0:self.batch0 + self.n, :, self.first0:self.first0 + self.length].copy_(src)
        else:
            self.scatter(lse.transpose(1, 2), src.transpose(1, 2))
