"""The attention autograd Function: backend-agnostic, one for every backend.

A backend is a module with ``forward(q, k, v, params) -> (out, lse, scratch)`` and
``backward(dout, q, k, v, out, lse, scratch, params) -> (dq, dk, dv)``; all tensors bshd (lse is
(batch, nheads_q, seqlen_q) fp32). ``scratch`` is a tuple of tensors the forward made for the
backward (e.g. K encoded once by a pre-pass), kept here and never shown to the user.
lse is an output, not differentiable (as in FlashAttention).
"""
from __future__ import annotations

import torch

from .checks import AttentionParams


class AttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, params: AttentionParams, backend):
        out, lse, scratch = backend.forward(q, k, v, params)
        ctx.save_for_backward(q, k, v, out, lse, *scratch)
        ctx.params = params
        ctx.backend = backend
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse, *scratch = ctx.saved_tensors
        dq, dk, dv = ctx.backend.backward(dout, q, k, v, out, lse, tuple(scratch), ctx.params)
        return dq, dk, dv, None, None
