"""The accuracy rule every test applies (DEVELOPERS.md / DESIGN.md):

a backend's error against the float64 reference must be at most 2x the error of the naive
implementation run in the same precision, plus a small absolute slack.
"""
import zlib

import pytest
import torch

import flashattn_py as fa

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# backend="cuda" in the shared suites: why its cases skip. conftest.py calls `enter_backend` for every
# test parametrized by backend; `random_qkv` / `check_against_reference` then skip what the CUDA
# kernels do not do by design (fp32, dropout), so no test file lists exceptions of its own.
CUDA_NO_GPU = "backend='cuda' needs an NVIDIA GPU; CUDA kernels are only compiled in CI"
CUDA_NOT_BUILT = "backend='cuda': the extension flashattn_py._cuda is not built (FLASHATTN_BUILD_CUDA=1 pip install .)"
CUDA_NO_FP32 = "backend='cuda' supports fp16/bf16 only (by design); fp32 runs on backend='triton'"
CUDA_NO_DROPOUT = "backend='cuda' has no attention dropout (by design); dropout runs on backend='triton'"
_backend_under_test = None


def enter_backend(backend, dtype=None):
    """Called before each test parametrized by `backend`: skip the cases that backend cannot run here."""
    global _backend_under_test
    _backend_under_test = backend
    if backend != "cuda":
        return
    if not torch.cuda.is_available():
        pytest.skip(CUDA_NO_GPU)
    from flashattn_py import cuda_backend

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

# Absolute slack: about two units in the last place of a value of magnitude 1 (bf16: 2 x 2^-7,
# fp16: 2 x 2^-10), scaled by the tensor's largest magnitude (see assert_within_naive_error).
ATOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def max_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest |actual - expected|; infinities must match exactly (lse of rows that see no key)."""
    actual, expected = actual.detach().double(), expected.detach().double()
    assert not torch.isnan(actual).any(), "NaN in output (poisoned element never written, or a 0/0)"
    infinite = torch.isinf(expected)
    assert torch.equal(actual[infinite], expected[infinite]), "infinite entries differ from the reference"
    finite = ~infinite
    if not finite.any():
        return 0.0
    return (actual[finite] - expected[finite]).abs().max().item()


def assert_within_naive_error(name: str, actual, exact, naive, dtype):
    """err <= 2 x naive err + atol, atol = ATOL[dtype] x max(1, max |exact|): a couple of ulps of the
    tensor's largest entries, since the final rounding to dtype alone costs up to half an ulp there
    and the naive error can be luckily small on a given input (e.g. bf16 dv of magnitude 10: 1 ulp
    is 0.0625)."""
    err, naive_err = max_error(actual, exact), max_error(naive, exact)
    finite = exact[torch.isfinite(exact)]
    magnitude = max(1.0, finite.abs().max().item()) if finite.numel() else 1.0
    atol = ATOL[dtype] * magnitude
    assert err <= 2 * naive_err + atol, (
        f"{name}: error {err:.3e} > 2 x naive {dtype} error {naive_err:.3e} + atol {atol:.1e}")


def run_with_grads(fn, q, k, v, dout):
    """(out, lse, dq, dk, dv) of fn(q, k, v) -> (out, lse); inputs are fresh leaves."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out, lse = fn(*leaves)
    grads = torch.autograd.grad(out, leaves, dout)
    return (out, lse, *grads)


OUTPUT_NAMES = ("out", "lse", "dq", "dk", "dv")


def check_against_reference(backend: str, q, k, v, dout, **options):
    """Run `backend` with NaN-poisoned buffers; compare out, lse and all grads with the float64 reference."""

    skip_unsupported(dtype=q.dtype, dropout_p=options.get("dropout_p", 0.0))

    def ours(q, k, v):
        return fa.attention(q, k, v, return_lse=True, backend=backend, **options)

    # How a backend schedules the encoding is not part of the math the reference computes.
    math_options = {name: value for name, value in options.items() if name != "pe_k_strategy"}

    def naive(dtype):
        return lambda q, k, v: fa.reference.attention(q, k, v, return_lse=True, compute_dtype=dtype, **math_options)

    with fa.poisoned_outputs():
        got = run_with_grads(ours, q, k, v, dout)
    exact = run_with_grads(naive(torch.float64), q, k, v, dout)
    low = run_with_grads(naive(q.dtype), q, k, v, dout)
    for name, g, e, n in zip(OUTPUT_NAMES, got, exact, low):
        assert g.shape == e.shape, f"{name}: shape {tuple(g.shape)} != {tuple(e.shape)}"
        assert g.dtype == (torch.float32 if name == "lse" else q.dtype), f"{name}: dtype {g.dtype}"
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
