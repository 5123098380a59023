"""Positional encodings: the specs users pass, their validation, and their math in plain torch.

Written once: the reference and the PyTorch backend use the torch functions here; the Triton
kernels (`triton_kernels/positional.py`) implement the same formulas; tests hold them equal.

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

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)
class Rotary:
    """Rotary positional encoding (RoPE) of q and k."""

    base: float = 10000.0
    rotary_dim: int | None = None  # None: the whole head_dim
    interleaved: bool = False  # False: GPT-NeoX/Llama pairs (i, i + r/2); True: GPT-J pairs (2i, 2i+1)
    cos: torch.Tensor | None = None  # (seqlen_ro, rotary_dim / 2), replaces the computed angles
    sin: torch.Tensor | None = None


@dataclass(frozen=True)
class Sinusoidal:
    """Sinusoidal positional encoding added to q and k: ``x * scale + PE(position)``."""

    base: float = 10000.0
    scale: float = 1.0


@dataclass(frozen=True, eq=False)
class Encoding:
    """A validated encoding for one call: spec, resolved channel count, and per-tensor positions."""

    spec: Rotary | Sinusoidal
    rotary_dim: int  # rotated channels (rotary) / encoded channels = head_dim (sinusoidal)
    q_positions: torch.Tensor  # (batch, seqlen_q) int64, may be an expanded view
    k_positions: torch.Tensor  # (batch, seqlen_k)

    @property
    def is_rotary(self) -> bool:
        return isinstance(self.spec, Rotary)


def _check_number(name: str, value, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or (positive and value <= 0):
        raise ValueError(f"{name} must be {'a positive' if positive else 'a'} finite number, got {value}")
    return float(value)


def resolve_positions(positions, batch: int, seqlen: int, device: torch.device, name: str) -> torch.Tensor:
    """None | int offset | (batch,) offsets | (batch, seqlen) ids  ->  (batch, seqlen) int64 positions."""
    index = torch.arange(seqlen, device=device, dtype=torch.int64)
    if positions is None:
        return index.expand(batch, seqlen)
    if isinstance(positions, bool) or not isinstance(positions, (int, torch.Tensor)):
        raise TypeError(f"{name} must be None, an int offset or an integer tensor, got {type(positions).__name__}")
    if isinstance(positions, int):
        if positions < 0:
            raise ValueError(f"{name} offset must be >= 0, got {positions}")
        return (index + positions).expand(batch, seqlen)
    if positions.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name} must be an int32 or int64 tensor, got {positions.dtype}")
    if positions.device != device:
        raise ValueError(f"{name} is on {positions.device} but q is on {device}")
    if positions.shape == (batch,):
        return positions.to(torch.int64)[:, None] + index
    if positions.shape == (batch, seqlen):
        return positions.to(torch.int64)
    raise ValueError(
        f"{name} must have shape ({batch},) (per-batch offsets) or ({batch}, {seqlen}) (position ids), "
        f"got {tuple(positions.shape)}"
    )


def _check_tables(spec: Rotary, rotary_dim: int, device: torch.device) -> None:
    if (spec.cos is None) != (spec.sin is None):
        raise ValueError("rotary cos and sin tables must be given together")
    if spec.cos is None:
        return
    for name, table in (("cos", spec.cos), ("sin", spec.sin)):
        if not isinstance(table, torch.Tensor):
            raise TypeError(f"rotary {name} must be a torch.Tensor, got {type(table).__name__}")
        if table.dim() != 2 or table.shape[1] != rotary_dim // 2:
            raise ValueError(
                f"rotary {name} must have shape (seqlen_ro, rotary_dim / 2 = {rotary_dim // 2}), got {tuple(table.shape)}"
            )
        if not table.is_floating_point():
            raise TypeError(f"rotary {name} must be a floating-point tensor, got {table.dtype}")
        if table.device != device:
            raise ValueError(f"rotary {name} is on {table.device} but q is on {device}")
    if spec.cos.shape != spec.sin.shape:
        raise ValueError(f"rotary cos {tuple(spec.cos.shape)} and sin {tuple(spec.sin.shape)} differ in shape")


def _check_positions_fit(positions: torch.Tensor, limit: int | None, name: str) -> None:
    from .checks import reads_values  # checks imports this module

    if positions.numel() == 0 or not reads_values():  # tracing, or the caller checked them (checks.py)
        return
    # One device sync: positions are data, and an index past the table would read out of bounds.
    low, high = int(positions.min()), int(positions.max())
    if low < 0:
        raise ValueError(f"{name} must be >= 0, got a position {low}")
    if limit is not None and high >= limit:
        raise ValueError(f"{name} reach position {high} but the rotary cos/sin tables have {limit} rows")


def resolve(rotary, sinusoidal, *, batch, seqlen_q, seqlen_k, head_dim, device, q_positions=None,
            k_positions=None, position_names=("q_positions", "k_positions")) -> Encoding | None:
    """Validate the encoding options of a call; None when there is no encoding.

    position_names: how errors name the two positions arguments of the caller.
    """
    q_name, k_name = position_names
    if rotary is not None and sinusoidal is not None:
        raise ValueError("pass rotary or sinusoidal, not both")
    spec = rotary if rotary is not None else sinusoidal
    if spec is None:
        if q_positions is not None or k_positions is not None:
            raise ValueError(f"{q_name}/{k_name} need a positional encoding (rotary= or sinusoidal=)")
        return None
    if isinstance(spec, Rotary):
        _check_number("rotary base", spec.base, positive=True)
        rotary_dim = head_dim if spec.rotary_dim is None else spec.rotary_dim
        if isinstance(rotary_dim, bool) or not isinstance(rotary_dim, int):
            raise TypeError(f"rotary_dim must be an int or None, got {type(rotary_dim).__name__}")
        if rotary_dim <= 0 or rotary_dim % 2 or rotary_dim > head_dim:
            # Pairs of channels rotate together, so rotary_dim is even (FlashAttention requires it too).
            default = spec.rotary_dim is None and head_dim % 2
            raise ValueError(f"rotary_dim must be even and in [2, head_dim={head_dim}], got {rotary_dim}" + (
                " (rotary_dim defaults to head_dim, which is odd: pass an even rotary_dim)" if default else ""))
        if not isinstance(spec.interleaved, bool):
            raise TypeError(f"rotary interleaved must be a bool, got {type(spec.interleaved).__name__}")
        _check_tables(spec, rotary_dim, device)
        limit = None if spec.cos is None else spec.cos.shape[0]
    elif isinstance(spec, Sinusoidal):
        _check_number("sinusoidal base", spec.base, positive=True)
        _check_number("sinusoidal scale", spec.scale, positive=False)
        rotary_dim, limit = head_dim, None
    else:
        raise TypeError(f"rotary must be a Rotary and sinusoidal a Sinusoidal, got {type(spec).__name__}")
    qp = resolve_positions(q_positions, batch, seqlen_q, device, q_name)
    kp = resolve_positions(k_positions, batch, seqlen_k, device, k_name)
    if isinstance(q_positions, torch.Tensor) or limit is not None:
        _check_positions_fit(qp, limit, q_name)
    if isinstance(k_positions, torch.Tensor) or limit is not None:
        _check_positions_fit(kp, limit, k_name)
    return Encoding(spec=spec, rotary_dim=rotary_dim, q_positions=qp, k_positions=kp)


# ---- the math, in torch (reference and PyTorch backend) -------------------------------------------


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
