"""backend="reference": the float64 naive reference behind the same custom ops (flashattn_py/ops.py) as the kernels.

Materializes the (seqlen_q, seqlen_k) scores: for checking and tiny inputs, not for real sizes.
"""
from __future__ import annotations

import contextlib
import dataclasses

import torch

from ..params import AttentionParams
from ..semantics import naive_attention, score_mods
from . import torch_backend
from .interface import Backend


def dropout_mask(params: AttentionParams, device) -> torch.Tensor | None:
    """This backend's keep-mask (batch, nheads_q, seqlen_q, seqlen_k), regenerated from the call's seed."""
    if not params.has_dropout:
        return None
    gen = torch.Generator(device=device).manual_seed(params.dropout_seed)
    shape = (params.batch, params.nheads_q, params.seqlen_q, params.seqlen_k)
    return torch.rand(shape, generator=gen, device=device) >= params.dropout_p


@contextlib.contextmanager
def _autograd_inside_op():
    """Autograd usable inside an op's implementation (this backward differentiates the float64
    reference): the dispatcher runs custom-op implementations with the autograd dispatch keys
    excluded, which torch.enable_grad() alone does not undo."""
    exclude = torch._C._dispatch_tls_local_exclude_set()
    for key in ("AutogradFunctionality", "AutogradOther", "AutogradNestedTensor", "ADInplaceOrView"):
        if hasattr(torch._C.DispatchKey, key):
            exclude = exclude.remove(getattr(torch._C.DispatchKey, key))
    with torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), exclude), torch.enable_grad():
        yield


def forward(q, k, v, params: AttentionParams):
    out, lse = naive_attention.attention_from_params(q, k, v, params, torch.float64, dropout_mask(params, q.device))
    return out.to(q.dtype), lse.to(torch.float32), ()


def backward(dout, q, k, v, out, lse, scratch, params: AttentionParams, dbias=None):
    """(dq, dk, dv) by autograd through the float64 reference; with dbias (fp32, the bias's own 4-D
    shape), the bias's gradient is added to it."""
    with _autograd_inside_op():  # this backward runs inside the attention_backward custom op
        leaves = [t.detach().to(torch.float64).requires_grad_() for t in (q, k, v)]
        mods = params.mods
        if dbias is not None:  # differentiate w.r.t. the bias as given; expand's backward sums the broadcast
            leaves.append(mods.bias_source.detach().to(torch.float64).requires_grad_())
            shape = (params.batch, params.nheads_q, params.seqlen_q, params.seqlen_k)
            params = dataclasses.replace(params, mods=score_mods.with_bias(mods, leaves[-1], shape))
        ref_out, _ = naive_attention.attention_from_params(*leaves[:3], params, torch.float64,
                                                     dropout_mask(params, q.device))
        grads = torch.autograd.grad(ref_out, leaves, dout.to(torch.float64))
    if dbias is not None:
        dbias += grads[3].to(dbias.dtype)
    return tuple(g.to(t.dtype) for g, t in zip(grads, (q, k, v)))


def encode(x, enc, positions, *, inverse=False, out=None):
    return torch_backend.encode(x, enc, positions, inverse=inverse, out=out, compute_dtype=torch.float64)


BACKEND = Backend(name="reference", forward=forward, backward=backward, encode=encode, dropout_mask=dropout_mask)
