"""The accuracy rule every test applies (README.md, "Tests"; docs/design.md, "Tolerances"):

a backend's error against the float64 reference must be at most 2x the error of the naive
implementation run in the same precision, plus a small absolute slack.
"""
import os
import zlib

import pytest
import torch

import flashattn_py as fa
from flashattn_py.tools.accuracy import ATOL, error_bound, max_error  # noqa: F401  (ATOL: tests scale by it)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# backend="cuda" in the shared suites: why its cases skip. conftest.py calls `enter_backend` for every
# test parametrized by backend; `random_qkv` / `check_against_reference` then skip what the CUDA
# kernels do not do by design (fp32, dropout), so no test file lists exceptions of its own.
CUDA_NO_GPU = "backend='cuda' needs an NVIDIA GPU; CUDA kernels are only compiled in CI"
CUDA_NOT_BUILT = "backend='cuda': the extension flashattn_py._cuda is not built (FLASHATTN_BUILD_CUDA=1 pip install .)"
CUDA_NO_FP32 = "backend='cuda' supports fp16/bf16 only (by design); fp32 runs on backend='triton'"
CUDA_NO_DROPOUT = "backend='cuda' has no attention dropout (by design); dropout runs on backend='triton'"
CUDA_NO_SCORE_MODS = "backend='cuda' has no softcap / ALiBi / bias kernels; they run on backend='triton'"
_backend_under_test = None


def enter_backend(backend, dtype=None):
    """Called before each test parametrized by `backend`: skip the cases that backend cannot run here."""
    global _backend_under_test
    _backend_under_test = backend
    if backend != "cuda":
        return
    if not torch.cuda.is_available():
        pytest.skip(CUDA_NO_GPU)
    from flashattn_py.backends import cuda_backend

    if not cuda_backend.is_built():
        pytest.skip(CUDA_NOT_BUILT)
    skip_unsupported(dtype=dtype)


def skip_unsupported(dtype=None, dropout_p=0.0):
    if _backend_under_test != "cuda":
        return
    if dtype == torch.float32:
        pytest.skip(CUDA_NO_FP32)
    if dropout_p:
        pytest.skip(CUDA_NO_DROPOUT)

# Triton's interpreter (triton 3.9) converts fp32 to bf16 by truncation, not round-to-nearest as a GPU
# does (README "Triton on CPU"; tests/test_numerics.py::test_interpreter_truncates_fp32_to_bf16 holds
# it): an interpreted kernel's bf16 result may lie a whole ulp toward zero from the fp32 value it
# computed, where round-to-nearest lies within half an ulp. That is the interpreter's conversion, not
# the kernel's math, so there, and only for bf16 results of backends that may run Triton kernels, an
# element is allowed one bf16 ulp of its own magnitude beyond the rule (not a blanket atol: an error
# of more than an ulp per element still counts in full). On a GPU the rule is unchanged.
INTERPRETER_TRUNCATES_BF16 = os.environ.get("TRITON_INTERPRET") == "1"


def bf16_ulp(t: torch.Tensor) -> torch.Tensor:
    """One bf16 ulp at each |t| (8 significant bits: 2^(e - 8) for |t| = m 2^e, m in [0.5, 1))."""
    _, exponent = torch.frexp(t.abs())
    return torch.ldexp(torch.ones_like(t), exponent - 8)


def _interpreter_rounding(actual, exact, dtype) -> bool:
    return (INTERPRETER_TRUNCATES_BF16 and dtype == torch.bfloat16 and actual.dtype == torch.bfloat16
            and _backend_under_test not in ("torch", "reference"))


def assert_within_naive_error(name: str, actual, exact, naive, dtype):
    """The accuracy rule of flashattn_py.accuracy: err <= 2 x naive err + a couple of ulps of the
    tensor's largest entries (plus, for interpreted bf16 results, each element's own truncation ulp)."""
    err, bound = max_error(actual, exact), error_bound(exact, naive, dtype)
    if err > bound and _interpreter_rounding(actual, exact, dtype):
        exact64 = exact.detach().double()
        finite = torch.isfinite(exact64)  # max_error above checked NaN and the infinite entries
        beyond_one_ulp = (actual.detach().double() - exact64).abs() - bf16_ulp(exact64)
        err = beyond_one_ulp[finite].clamp(min=0).max().item()
        assert err <= bound, (f"{name}: error beyond one bf16 ulp (the interpreter truncates) {err:.3e} > bound "
                              f"{bound:.3e} (2 x naive {dtype} error + atol)")
        return
    assert err <= bound, f"{name}: error {err:.3e} > bound {bound:.3e} (2 x naive {dtype} error + atol)"


def run_with_grads(fn, q, k, v, dout, *extras):
    """(out, lse, dq, dk, dv, d(extras)...) of fn(q, k, v, *extras) -> (out, lse); inputs are fresh leaves."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v, *extras)]
    out, lse = fn(*leaves)
    grads = torch.autograd.grad(out, leaves, dout)
    return (out, lse, *grads)


OUTPUT_NAMES = ("out", "lse", "dq", "dk", "dv")


def check_against_reference(backend: str, q, k, v, dout, *, differentiate=(), **options):
    """Run `backend` with NaN-poisoned buffers; compare out, lse and all grads with the float64 reference.
    differentiate: names of tensor options (``sinks``, ``attn_bias``) whose gradients are compared too."""

    skip_unsupported(dtype=q.dtype, dropout_p=options.get("dropout_p", 0.0))
    extras = [options.pop(name) for name in differentiate]

    def ours(q, k, v, *extras):
        return fa.attention(q, k, v, return_lse=True, backend=backend, **options, **dict(zip(differentiate, extras)))

    # How a backend schedules the work (the encoding, split-K) is not part of the math the reference computes.
    math_options = {name: value for name, value in options.items()
                    if name not in ("pe_k_strategy", "num_splits", "deterministic")}

    def naive(dtype):
        return lambda q, k, v, *extras: fa.reference.attention(q, k, v, return_lse=True, compute_dtype=dtype,
                                                              **math_options, **dict(zip(differentiate, extras)))

    with fa.poisoned_outputs():
        got = run_with_grads(ours, q, k, v, dout, *extras)
    exact = run_with_grads(naive(torch.float64), q, k, v, dout, *extras)
    low = run_with_grads(naive(q.dtype), q, k, v, dout, *extras)
    names = OUTPUT_NAMES + tuple(f"d{name}" for name in differentiate)
    dtypes = (q.dtype, torch.float32, q.dtype, q.dtype, q.dtype, *(t.dtype for t in extras))
    for name, g, e, n, dtype in zip(names, got, exact, low, dtypes):
        assert g.shape == e.shape, f"{name}: shape {tuple(g.shape)} != {tuple(e.shape)}"
        assert g.dtype == dtype, f"{name}: dtype {g.dtype}"
        assert_within_naive_error(name, g, e, n, q.dtype)
    return got


def random_qkv(batch, seqlen_q, seqlen_k, nheads_q, nheads_kv, head_dim, dtype, seed=0):
    """Fresh random q, k, v and output gradient (bshd) on the test device."""
    skip_unsupported(dtype=dtype)
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(device=DEVICE, dtype=dtype)

    return (rand(batch, seqlen_q, nheads_q, head_dim), rand(batch, seqlen_k, nheads_kv, head_dim),
            rand(batch, seqlen_k, nheads_kv, head_dim), rand(batch, seqlen_q, nheads_q, head_dim))


def seed_of(request) -> int:
    """A seed of its own for each test case: fresh inputs per case, reproducible across runs."""
    return zlib.crc32(request.node.nodeid.encode())
