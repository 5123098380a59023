"""The backends behind one declared interface (interface.Backend), chosen once per call by `select`.

"triton": the fused Triton kernels (flashattn_py.triton_kernels); "cuda": the CUDA C++ kernels of csrc/
(the compiled flashattn_py._cuda); "torch": the memory-efficient PyTorch path (CPU default);
"reference": the float64 naive reference. "auto" is Triton on CUDA tensors, PyTorch on CPU ones.
"""
from __future__ import annotations

import os
import warnings

import torch

from .interface import Backend
from .per_sequence import PerSequence

NAMES = ("auto", "triton", "cuda", "torch", "reference")


def registered(name: str) -> Backend:
    """The backend called `name` ("triton" | "cuda" | "torch" | "reference"), as `select` chose it. Its
    module is imported on first use: importing Triton reads TRITON_INTERPRET, and the CUDA backend loads
    its extension only when asked for."""
    # Plain import statements, which torch.compile traces (importlib.import_module it refuses).
    if name == "triton":
        from . import triton_backend as module
    elif name == "cuda":
        from . import cuda_backend as module
    elif name == "torch":
        from . import torch_backend as module
    else:
        from . import reference_backend as module
    return module.BACKEND


def _check_triton(device: torch.device) -> None:
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            "backend='triton' got CPU tensors; Triton runs on CPU only through its interpreter: "
            "set TRITON_INTERPRET=1 in the environment before the first Triton call "
            "(e.g. `TRITON_INTERPRET=1 python script.py`), or use backend='auto' for the PyTorch CPU path"
        )
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"backend='triton' needs CUDA tensors (or CPU with TRITON_INTERPRET=1), got {device}")


def _check_cuda(device: torch.device) -> None:
    from .cuda_backend import extension

    extension()  # RuntimeError saying how to build it, when it is not built
    if not torch.cuda.is_available():
        raise RuntimeError(
            "backend='cuda' needs an NVIDIA GPU (sm_80+) and torch sees none (torch.cuda.is_available() is "
            "False); use backend='auto' (the PyTorch path on CPU) or backend='triton'"
        )
    if device.type != "cuda":
        raise ValueError(f"backend='cuda' needs CUDA tensors, got tensors on {device}; move them with .cuda()")


def select(name: str, device: torch.device, *, sinks: bool = False) -> Backend:
    """The backend that runs `name` for tensors on `device`, or a clear error why it cannot. sinks: the
    call has attention sinks; a backend without them (Backend.attention_sinks: the CUDA kernels) runs
    that call on the Triton kernels, with a warning (once)."""
    if name not in NAMES:
        raise ValueError(f"backend must be one of {NAMES}, got {name!r}")
    if name == "auto":  # the CUDA kernels are opt-in until GPU benchmarks show them faster
        name = "triton" if device.type == "cuda" else "torch"
    if name == "cuda":
        _check_cuda(device)
    chosen = registered(name)
    if sinks and not chosen.attention_sinks:
        warnings.warn(f"backend={name!r} has no attention sinks: calls with sinks run on the Triton kernels",
                      stacklevel=3)
        chosen = registered("triton")
    if chosen.name == "triton":
        _check_triton(device)
    return chosen


def for_lengths(backend: Backend, params) -> Backend | PerSequence:
    """What runs a call with per-sequence lengths (params.lengths) on `backend`: the backend itself when
    its kernels read the lengths, else the adapter running it sequence group by sequence group."""
    if params.lengths is not None and not backend.reads_sequence_lengths:
        return PerSequence(backend)
    return backend
