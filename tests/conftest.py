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
# One intra-op thread per process: `pytest -n 2` already runs one worker per core, and torch's default
# (a thread per core in each worker) oversubscribes the cores. Measured on the 2-core CPU machine (shared
# with other jobs, so CPU time is the steadier figure), `-n 2` on test_attention + test_positional +
# test_rotary_layers -k "float16 or every_head_dim or standalone" (337 passed, 110 skipped), two runs
# each, alternating order: default threads 173 s / 204 s wall, 246 s / 255 s user+sys; one thread
# 202 s / 161 s wall, 208 s / 212 s user+sys: ~16% less CPU, wall within the noise of the shared machine.
torch.set_num_threads(1)


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


@pytest.fixture
def without_cpu_kernels(monkeypatch) -> None:
    """Turns off the CPU kernels (backends/cpu_kernels.py), which take short per-sequence CPU calls before
    torch's fused lane and the per-sequence adapter, for tests about those paths."""
    from flashattn_py.backends import cpu_kernels

    monkeypatch.setattr(cpu_kernels, "takes", lambda *args: False)


@pytest.fixture
def fused_calls(monkeypatch, without_cpu_kernels):
    """Counts the calls into torch's fused CPU kernels (backends/torch_fused.py FLASH / FLASH_BACKWARD), so a
    test can show a call took the fast lane (or at most so many calls). The CPU kernels are turned off
    (without_cpu_kernels): these tests are about the lane."""
    from flashattn_py.backends import torch_fused

    calls = {"forward": 0, "backward": 0}
    forward, backward = torch_fused.FLASH, torch_fused.FLASH_BACKWARD

    def counted(name, fn):
        def call(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return call

    monkeypatch.setattr(torch_fused, "FLASH", counted("forward", forward))
    monkeypatch.setattr(torch_fused, "FLASH_BACKWARD", counted("backward", backward))
    return calls
