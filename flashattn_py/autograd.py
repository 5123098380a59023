"""The attention autograd Function: backend-agnostic, one for every backend.

A backend is a module with ``forward(q, k, v, params) -> (out, lse)`` and
``backward(dout, q, k, v, out, lse, params) -> (dq, dk, dv)``; all tensors bshd (lse is
(batch, nheads_q, seqlen_q) fp32). lse is an output, not differentiable (as in FlashAttention).
"""
from __future__ import annotations

import torch

from .checks import AttentionParams


class AttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, params: AttentionParams, backend):
        out, lse = backend.forward(q, k, v, params)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.params = params
        ctx.backend = backend
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = ctx.backend.backward(dout, q, k, v, out, lse, ctx.params)
        return dq, dk, dv, None, None
