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
