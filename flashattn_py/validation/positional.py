"""Validation of positional-encoding options: a Rotary / Sinusoidal spec and positions -> params.Encoding."""
from __future__ import annotations

import math

import torch

from ..params import Encoding, Rotary, Sinusoidal
from .common import check_bool, check_device, check_number, check_tensor, is_int, reads_values


def _finite_number(name: str, value, positive: bool) -> float:
    check_number(name, value, "a number")
    if not math.isfinite(value) or (positive and value <= 0):
        raise ValueError(f"{name} must be {'a positive' if positive else 'a'} finite number, got {value}")
    return float(value)


def resolve_positions(positions, batch: int, seqlen: int, device: torch.device, name: str) -> torch.Tensor:
    """None | int offset | (batch,) offsets | (batch, seqlen) ids  ->  (batch, seqlen) int64 positions."""
    index = torch.arange(seqlen, device=device, dtype=torch.int64)
    if positions is None:
        return index.expand(batch, seqlen)
    if not (is_int(positions) or isinstance(positions, torch.Tensor)):
        raise TypeError(f"{name} must be None, an int offset or an integer tensor, got {type(positions).__name__}")
    if isinstance(positions, int):
        if positions < 0:
            raise ValueError(f"{name} offset must be >= 0, got {positions}")
        return (index + positions).expand(batch, seqlen)
    if positions.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name} must be an int32 or int64 tensor, got {positions.dtype}")
    check_device(name, positions, device)
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
        check_tensor(f"rotary {name}", table)
        if table.dim() != 2 or table.shape[1] != rotary_dim // 2:
            raise ValueError(
                f"rotary {name} must have shape (seqlen_ro, rotary_dim / 2 = {rotary_dim // 2}), "
                f"got {tuple(table.shape)}"
            )
        if not table.is_floating_point():
            raise TypeError(f"rotary {name} must be a floating-point tensor, got {table.dtype}")
        check_device(f"rotary {name}", table, device)
    if spec.cos.shape != spec.sin.shape:
        raise ValueError(f"rotary cos {tuple(spec.cos.shape)} and sin {tuple(spec.sin.shape)} differ in shape")


def _check_positions_fit(positions: torch.Tensor, limit: int | None, name: str) -> None:
    if positions.numel() == 0 or not reads_values():  # tracing, or the caller checked them (validation/common.py)
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
        _finite_number("rotary base", spec.base, positive=True)
        rotary_dim = head_dim if spec.rotary_dim is None else spec.rotary_dim
        if not is_int(rotary_dim):
            raise TypeError(f"rotary_dim must be an int or None, got {type(rotary_dim).__name__}")
        if rotary_dim <= 0 or rotary_dim % 2 or rotary_dim > head_dim:
            # Pairs of channels rotate together, so rotary_dim is even (FlashAttention requires it too).
            default = spec.rotary_dim is None and head_dim % 2
            raise ValueError(f"rotary_dim must be even and in [2, head_dim={head_dim}], got {rotary_dim}" + (
                " (rotary_dim defaults to head_dim, which is odd: pass an even rotary_dim)" if default else ""))
        check_bool("rotary interleaved", spec.interleaved)
        _check_tables(spec, rotary_dim, device)
        limit = None if spec.cos is None else spec.cos.shape[0]
    elif isinstance(spec, Sinusoidal):
        _finite_number("sinusoidal base", spec.base, positive=True)
        _finite_number("sinusoidal scale", spec.scale, positive=False)
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
