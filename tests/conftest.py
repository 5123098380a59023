"""Test setup: kernels run on the GPU when there is one, else on the CPU through Triton's interpreter.

TRITON_INTERPRET must be set before flashattn_py.triton_kernels is imported (triton.jit reads it at
decoration time), so it is set here, before any test module imports the kernels.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # silences triton 3.9's warning; fusion stays on


@pytest.fixture(autouse=True)
def _backend_cases(request):
    """Skips, with the reason, the cases of a backend that cannot run here (tolerance.enter_backend)."""
    callspec = getattr(request.node, "callspec", None)
    params = callspec.params if callspec else {}
    if "backend" not in params:
        yield
        return
    import tolerance

    tolerance.enter_backend(params["backend"], params.get("dtype"))
    try:
        yield
    finally:
        tolerance._backend_under_test = None
