"""Positional encodings: their math in plain torch, written once.

The reference and the PyTorch backend use the torch functions here; the Triton kernels
(`triton_kernels/positional.py`) and the CUDA ones (`csrc/positional.cuh`) implement the same
formulas; tests hold them equal. The specs users pass are `params.Rotary` / `params.Sinusoidal`,
validated by `validation/positional.py`.

RoPE rotates pairs of channels of q and k by ``angle = position * base^(-2i / rotary_dim)`` (pair i):
``(x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)``. Pairs are ``(x[i], x[i + rotary_dim/2])`` in the
GPT-NeoX / Llama convention (``interleaved=False``) and ``(x[2i], x[2i+1])`` in the GPT-J one.
Channels past rotary_dim pass through. ``cos``/``sin`` tables of shape (seqlen_ro, rotary_dim/2),
indexed by position, replace the computed angles (scaled RoPE variants: linear, NTK, Llama 3, YaRN).
Sinusoidal (Vaswani et al.): ``x * scale + PE`` with ``PE[p, 2i] = sin(p / base^(2i/d))`` and
``PE[p, 2i+1] = cos(p / base^(2i/d))``, d the channel count.
Positions: None = 0..seqlen-1; an int or a (batch,) integer tensor = that offset added to 0..seqlen-1
(decoding against a cache); a (batch, seqlen) integer tensor = explicit position ids.
"""
from __future__ import annotations

import torch

from ..params import Encoding


def _angles(positions: torch.Tensor, channels: int, base: float, dtype: torch.dtype) -> torch.Tensor:
    """(batch, seqlen, channels/2) angles position * base^(-2i/channels)."""
    inv_freq = base ** (-torch.arange(0, channels, 2, device=positions.device, dtype=dtype) / channels)
    return positions.to(dtype)[..., None] * inv_freq


def _angle_dtype(dtype: torch.dtype) -> torch.dtype:
    # Angles are computed in at least fp32, as every real implementation does (HF, FlashAttention):
    # in fp16, position * inv_freq would be off by ~0.1 rad at position 300.
    return torch.float64 if dtype == torch.float64 else torch.float32


def rotary_cos_sin(enc: Encoding, positions: torch.Tensor, dtype: torch.dtype):
    """cos, sin of shape (batch, seqlen, rotary_dim/2) for these positions, rounded to dtype."""
    spec = enc.spec
    if spec.cos is not None:
        return spec.cos.to(dtype)[positions], spec.sin.to(dtype)[positions]
    angles = _angles(positions, enc.rotary_dim, spec.base, _angle_dtype(dtype))
    return torch.cos(angles).to(dtype), torch.sin(angles).to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary_dim: int, interleaved: bool,
           inverse: bool = False) -> torch.Tensor:
    """Rotate bshd x by per-(batch, seq) angles; inverse=True rotates back (the transpose)."""
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]  # broadcast over heads
    if inverse:
        sin = -sin
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    if interleaved:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
        rotated = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
    else:
        x1, x2 = rot.chunk(2, dim=-1)
        rotated = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return torch.cat((rotated, rest), dim=-1)


def sinusoidal_table(positions: torch.Tensor, channels: int, base: float, dtype: torch.dtype) -> torch.Tensor:
    """(batch, seqlen, channels) PE with sin on even channels and cos on odd ones, rounded to dtype."""
    angles = _angles(positions, channels, base, _angle_dtype(dtype))
    return torch.stack((torch.sin(angles), torch.cos(angles)), dim=-1).flatten(-2)[..., :channels].to(dtype)


def encode(x: torch.Tensor, enc: Encoding, positions: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """The encoding applied to bshd x in x's dtype. inverse=True maps a gradient w.r.t. the encoded
    tensor back to the input (rotary: rotate back; sinusoidal: multiply by scale)."""
    if enc.is_rotary:
        cos, sin = rotary_cos_sin(enc, positions, x.dtype)
        return rotate(x, cos, sin, enc.rotary_dim, enc.spec.interleaved, inverse)
    if inverse:
        return x * enc.spec.scale
    return x * enc.spec.scale + sinusoidal_table(positions, x.shape[-1], enc.spec.base, x.dtype)[:, :, None, :]


def encode_qk(q: torch.Tensor, k: torch.Tensor, enc: Encoding | None, inverse: bool = False):
    """(q, k) bshd with the call's encoding applied at their positions (inverse=True: gradients w.r.t. the
    encoded q, k mapped back to the user's q, k); unchanged without an encoding."""
    if enc is None:
        return q, k
    return encode(q, enc, enc.q_positions, inverse), encode(k, enc, enc.k_positions, inverse)
