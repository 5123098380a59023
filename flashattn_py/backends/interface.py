"""What a backend is: one small declared interface, so callers read a backend's abilities instead of
probing its module.

A backend computes attention on bshd tensors described by a `params.AttentionParams`:
``forward(q, k, v, params) -> (out, lse, scratch)`` and
``backward(dout, q, k, v, out, lse, scratch, params, dbias=None) -> (dq, dk, dv)``; lse is
(batch, nheads_q, seqlen_q) fp32 (packed batches: (nheads_q, total_q)). ``scratch`` is a tuple of
tensors the forward made for the backward, never shown to the user; lse is an output, not
differentiable (as in FlashAttention). The autograd wiring is backend-agnostic and lives with the
custom ops that torch.compile traces (flashattn_py/ops.py), which also says how scratch crosses the
op boundary (`keeps_lse_log2`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Backend:
    name: str  # what users pass as backend=, and what the custom ops carry
    forward: Callable
    backward: Callable
    # The standalone positional encoding (apply_rotary / add_sinusoidal): (x, enc, positions, *, inverse,
    # out) -> x encoded.
    encode: Callable
    # The kernels read cu_seqlens / seqused_k / left padding / block tables themselves; a backend without
    # this runs per-sequence lengths through backends/per_sequence.py and is given dense K/V copies of
    # caches.
    reads_sequence_lengths: bool = False
    # Attention sinks (params.ScoreMods.sinks); `select` runs a call with sinks on the Triton kernels, with a
    # warning, when the requested backend lacks them (the CUDA kernels: csrc/params.h has no field for them).
    attention_sinks: bool = True
    # The forward's scratch is exactly (lse in base 2,), which the backward reads: the custom op keeps it
    # as its third output. Any other backend keeps no scratch.
    keeps_lse_log2: bool = False
    # params -> programs one forward split launches, which sizes automatic split-K (backends/split_k.py);
    # None: one program per (batch, query head).
    forward_programs: Callable | None = None
    # Per-sequence lengths without the per-group adapter (backends/per_sequence.py asks first):
    # (q, k, v, params, spans) -> (out, lse, scratch) and (dout, q, k, v, out, lse, params, spans) ->
    # (dq, dk, dv), spans being a spans.Spans; None when the backend has no faster way for that call.
    forward_sequences: Callable | None = None
    backward_sequences: Callable | None = None
    # (params, device) -> the keep-mask (batch, nheads_q, seqlen_q, seqlen_k) this backend's dropout draws
    # for a call, regenerated from its seed (tests compare it with the reference); None: no dropout.
    dropout_mask: Callable | None = None
