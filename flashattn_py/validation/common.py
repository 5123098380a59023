"""One helper per kind of check (FlashAttention's CHECK_DEVICE / CHECK_SHAPE macros), so every message
reads the same: a tensor argument, its device, a bool, an int, a number, an int32 index tensor; and
whether a check may read tensor values on the host right now."""
from __future__ import annotations

import contextlib
import threading

import torch

_prechecked = threading.local()


def is_int(value) -> bool:
    """A Python int that is not a bool (True is an int to Python, never a count or a length here)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_tensor(name: str, value, what: str = "") -> None:
    """TypeError unless value is a torch.Tensor; what: the expected shape, said in the message."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor{what and ' ' + what}, got {type(value).__name__}")


def check_device(name: str, t: torch.Tensor, device: torch.device) -> None:
    """ValueError unless tensor t is on q's device."""
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but q is on {device}")


def check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


def check_int(name: str, value) -> None:
    if not is_int(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")


def check_number(name: str, value, what: str = "a float") -> None:
    if not is_number(value):
        raise TypeError(f"{name} must be {what}, got {type(value).__name__}")


def check_int32_tensor(t, name: str, shape: tuple, device, shape_name: str = "") -> None:
    """t is an int32 tensor of exactly `shape` on `device` (lengths, indices); shape_name: how the error
    spells the shape, e.g. "(batch,)"."""
    check_tensor(name, t)
    if t.dtype != torch.int32 or t.shape != shape:
        expected = f"{shape_name} = {shape}" if shape_name else f"{shape}"
        raise ValueError(f"{name} must be an int32 tensor of shape {expected}, got {t.dtype} of shape {tuple(t.shape)}")
    check_device(name, t, device)


@contextlib.contextmanager
def values_prechecked():
    """Within it, the checks that read tensor values on the host (lengths, positions: a device sync
    each) are skipped: for a caller that has checked the same values itself in one sync
    (flash_attn_with_kvcache: a decoding step would otherwise wait for the GPU several times)."""
    before = getattr(_prechecked, "on", False)
    _prechecked.on = True
    try:
        yield
    finally:
        _prechecked.on = before


def reads_values() -> bool:
    """Whether value checks run: not while torch.compile traces (a host read breaks the graph), not
    while a CUDA graph is being captured (a host read is illegal there), and not inside
    values_prechecked()."""
    if torch.compiler.is_compiling() or getattr(_prechecked, "on", False):
        return False
    return not (torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing())
