"""Standalone fused positional-encoding ops with autograd: ``apply_rotary`` and ``add_sinusoidal``.

Same specs, conventions and positions as the encodings fused into attention (semantics/positional.py);
on CUDA tensors they run the Triton kernel ``triton_kernels/positional.py`` (one read, one write).
"""
from __future__ import annotations

import torch

from . import backends
from .params import SUPPORTED_DTYPES, Rotary, Sinusoidal
from .validation.common import check_tensor
from .validation.positional import resolve


class _EncodeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, enc, positions, impl, inplace):
        ctx.enc, ctx.impl = enc, impl
        ctx.save_for_backward(positions)
        if inplace:
            ctx.mark_dirty(x)
        return impl.encode(x, enc, positions, out=x if inplace else None)

    @staticmethod
    def backward(ctx, grad):
        (positions,) = ctx.saved_tensors
        if grad.stride(-1) != 1:
            grad = grad.contiguous()
        return ctx.impl.encode(grad, ctx.enc, positions, inverse=True), None, None, None, None


def _as_bshd(x: torch.Tensor, name: str) -> torch.Tensor:
    check_tensor(name, x)
    if x.dim() == 3:
        return x.unsqueeze(2)  # (batch, seqlen, dim): one "head"
    if x.dim() != 4:
        raise ValueError(f"{name} must be (batch, seqlen, nheads, dim) or (batch, seqlen, dim), got {tuple(x.shape)}")
    return x


def _run(x, spec, positions, backend, inplace, positions_name="positions"):
    """x encoded (a new tensor, or x itself with inplace). positions_name: how errors name the positions
    argument of the caller (flashattn_py.layers.rotary calls them seqlen_offsets)."""
    bshd = _as_bshd(x, "x")
    if bshd.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"x has dtype {bshd.dtype}; expected one of float16, bfloat16, float32")
    batch, seqlen, _, dim = bshd.shape
    rotary, sinusoidal = (spec, None) if isinstance(spec, Rotary) else (None, spec)
    enc = resolve(rotary, sinusoidal, batch=batch, seqlen_q=seqlen, seqlen_k=seqlen, head_dim=dim,
                             device=bshd.device, q_positions=positions, position_names=(positions_name, positions_name))
    impl = backends.select(backend, bshd.device)
    if bshd.stride(-1) != 1:
        if inplace:
            raise ValueError("inplace=True needs x with a contiguous last dim")
        bshd = bshd.contiguous()
    # torch refuses in-place ops on a leaf that requires grad, or on a view of one (a slice of a packed
    # qkv parameter); a non-leaf is fine: autograd marks it dirty and the backward rotates back.
    root = x if x._base is None else x._base
    if inplace and x.requires_grad and root.is_leaf:
        raise ValueError("inplace=True on a leaf that requires grad (or a view of one); use inplace=False")
    out = _EncodeFunction.apply(bshd, enc, enc.q_positions, impl, inplace)
    return x if inplace else out.view(x.shape)


def apply_rotary(x: torch.Tensor, rotary: Rotary | None = None, *, positions=None, inplace: bool = False,
                 backend: str = "auto") -> torch.Tensor:
    """Rotate x with RoPE (rotary positional encoding), differentiably: the encoding ``attention(rotary=)``
    fuses into its kernels, run standalone (one read, one write).

    Args:
        x: ``[B, S, H, D]`` or ``[B, S, D]``, float16 / bfloat16 / float32.
        rotary: a ``Rotary`` spec; default ``Rotary()``: base 10000, all D channels, GPT-NeoX pairs (i, i + D / 2).
        positions: None (0..S-1), an int or int32 / int64 ``[B]`` offset, or int32 / int64 ``[B, S]`` position ids.
        inplace: write the result into x and return it (x's last dim must be contiguous; differentiable when x
            is not a leaf; a leaf that requires grad, or a view of one, is refused). Default False.
        backend: "auto" (Triton on CUDA tensors, PyTorch on CPU), or a backend name as in
            ``flashattn_py.attention``.

    Returns:
        x's shape and dtype: a new tensor, or x itself with ``inplace``.
    """
    return _run(x, Rotary() if rotary is None else rotary, positions, backend, inplace)


def add_sinusoidal(x: torch.Tensor, positions=None, scale: float = 1.0, base: float = 10000.0, *,
                   backend: str = "auto") -> torch.Tensor:
    """``x * scale + PE(positions)``: the sinusoidal encoding of Vaswani et al. added to embeddings, with
    ``PE[p, 2i] = sin(p / base^(2i/dim))``, ``PE[p, 2i+1] = cos(p / base^(2i/dim))``. Differentiable.

    Args:
        x: ``[B, S, dim]`` token embeddings, or ``[B, S, H, dim]``; float16 / bfloat16 / float32.
        positions: None (0..S-1), an int or int32 / int64 ``[B]`` offset, or int32 / int64 ``[B, S]`` position ids.
        scale: multiplies x before PE is added; default 1.0.
        base: the wavelength base; default 10000.0.
        backend: "auto" (Triton on CUDA tensors, PyTorch on CPU), or a backend name as in
            ``flashattn_py.attention``.

    Returns:
        A new tensor of x's shape and dtype.
    """
    return _run(x, Sinusoidal(base=base, scale=scale), positions, backend, inplace=False)
