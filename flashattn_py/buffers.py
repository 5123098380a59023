"""Allocation of every tensor a backend writes (outputs, lse, gradients, scratch).

One place so tests can poison them: inside `poisoned_outputs()` each buffer starts NaN-filled,
so a kernel that skips writing an element is caught instead of passing on leftover memory.
"""
from __future__ import annotations

import contextlib

import torch

_poison_depth = 0


@contextlib.contextmanager
def poisoned_outputs():
    """Within this block, buffers handed to kernels are filled with NaN instead of left uninitialized."""
    global _poison_depth
    _poison_depth += 1
    try:
        yield
    finally:
        _poison_depth -= 1


def poisoning() -> bool:
    return _poison_depth > 0


def _fill(t: torch.Tensor) -> torch.Tensor:
    return t.fill_(float("nan")) if _poison_depth else t


def empty(shape, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return _fill(torch.empty(shape, dtype=dtype, device=device))


def empty_like(t: torch.Tensor) -> torch.Tensor:
    """Same shape and dtype; keeps t's strides when t is dense (a bhsd view stays bhsd in memory)."""
    return _fill(torch.empty_like(t))
