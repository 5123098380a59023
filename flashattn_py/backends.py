"""Backend selection: name -> module implementing forward/backward (see autograd.py)."""
from __future__ import annotations

import os
import warnings

import torch

BACKENDS = ("auto", "triton", "cuda", "torch", "reference")


def _triton_backend(device: torch.device):
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            "backend='triton' got CPU tensors; Triton runs on CPU only through its interpreter: "
            "set TRITON_INTERPRET=1 in the environment before the first Triton call "
            "(e.g. `TRITON_INTERPRET=1 python script.py`), or use backend='auto' for the PyTorch CPU path"
        )
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"backend='triton' needs CUDA tensors (or CPU with TRITON_INTERPRET=1), got {device}")
    from . import triton_backend

    return triton_backend


def _cuda_backend(device: torch.device):
    from . import cuda_backend

    cuda_backend.extension()  # RuntimeError saying how to build it, when it is not built
    if not torch.cuda.is_available():
        raise RuntimeError(
            "backend='cuda' needs an NVIDIA GPU (sm_80+) and torch sees none (torch.cuda.is_available() is "
            "False); use backend='auto' (the PyTorch path on CPU) or backend='triton'"
        )
    if device.type != "cuda":
        raise ValueError(f"backend='cuda' needs CUDA tensors, got tensors on {device}; move them with .cuda()")
    return cuda_backend


def select(backend: str, device: torch.device, *, sinks: bool = False):
    """Resolve a backend name for tensors on `device`. sinks: the call has attention sinks, which the
    CUDA kernels lack; backend="cuda" then runs that call on the Triton kernels, with a warning (once)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":  # the CUDA kernels are opt-in until GPU benchmarks show them faster
        backend = "triton" if device.type == "cuda" else "torch"
    if backend == "cuda" and sinks:
        _cuda_backend(device)  # the same errors as without sinks when the CUDA backend cannot run at all
        warnings.warn("backend='cuda' has no attention sinks (csrc/params.h): calls with sinks run on the Triton "
                      "kernels", stacklevel=3)
        backend = "triton"
    if backend == "triton":
        return _triton_backend(device)
    if backend == "cuda":
        return _cuda_backend(device)
    if backend == "torch":
        from . import torch_backend

        return torch_backend
    from . import reference_backend

    return reference_backend
