"""The backend interface, and where attention's autograd lives.

A backend is a module with ``forward(q, k, v, params) -> (out, lse, scratch)`` and
``backward(dout, q, k, v, out, lse, scratch, params) -> (dq, dk, dv)``; all tensors bshd (lse is
(batch, nheads_q, seqlen_q) fp32). ``scratch`` is a tuple of tensors the forward made for the
backward (the Triton backend: its base-2 lse), kept between the two and never shown to the user.
lse is an output, not differentiable (as in FlashAttention).

The autograd wiring is backend-agnostic and lives with the custom ops that torch.compile traces
(ops.py: ``flashattn_py::attention_forward`` with ``register_autograd`` calling
``flashattn_py::attention_backward``); that file also says how a backend's scratch crosses the op
boundary.
"""
from __future__ import annotations

import torch


class _InferenceOnly(torch.autograd.Function):
    """Passes an inference-only call's output through; its backward says why there is none."""

    @staticmethod
    def forward(ctx, why, out, *inputs):
        ctx.why = why
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError(ctx.why)


def inference_only(out: torch.Tensor, inputs, why: str) -> torch.Tensor:
    """out, joined to the graph of `inputs` (when grad mode is on and one of them requires grad) through
    a backward raising NotImplementedError(why): a training step through a call without a backward
    (the KV-cache and paged calls) then fails loudly, instead of leaving the inputs without gradients."""
    inputs = [t for t in inputs if isinstance(t, torch.Tensor)]
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        return _InferenceOnly.apply(why, out, *inputs)
    return out
