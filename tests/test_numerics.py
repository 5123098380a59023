"""Numerics at the edges, each against the float64 reference."""
import pytest
import torch

import flashattn_py as fa

import tolerance
from tolerance import (
    INTERPRETER_TRUNCATES_BF16,
    assert_within_naive_error,
    check_against_reference,
    random_qkv,
    seed_of,
)

BACKENDS = ["triton", "cuda", "torch"]


def check_forward(backend, q, k, v, **options):
    """out and lse against the reference, by the 2x-naive rule (fp32)."""
    got = fa.attention(q, k, v, return_lse=True, backend=backend, **options)
    exact = fa.reference.attention(q, k, v, return_lse=True, **options)
    naive = fa.reference.attention(q, k, v, return_lse=True, compute_dtype=torch.float32, **options)
    for name, g, e, n in zip(("out", "lse"), got, exact, naive):
        assert_within_naive_error(name, g, e, n, torch.float32)
    return got


@pytest.mark.parametrize("backend", BACKENDS)
def test_logits_of_magnitude_1e4_do_not_overflow(request, backend):
    """Scores of several thousand: exp would overflow without the running-max subtraction and the
    exact rescaling of what was accumulated.

    Forward and lse only. Known limit (docs/design.md): at logits >~ 100 in fp32, gradients computed
    the FlashAttention way (P recomputed from lse, delta = rowsum(dO * O)) exceed 2x the naive error
    (seen: dK 1.7e-4 vs naive 2.2e-5 at logits ~100, for the PyTorch path as well as the kernels).
    """
    q, k, v, _ = random_qkv(1, 45, 45, 2, 2, 16, torch.float32, seed=seed_of(request))
    out, lse = check_forward(backend, q * 25.0, k * 25.0, v, causal=True, softmax_scale=1.0)
    assert (lse.abs() > 1000).any() and torch.isfinite(out).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("softmax_scale", [1e-6, 1e3])
def test_extreme_softmax_scale(request, backend, softmax_scale):
    q, k, v, dout = random_qkv(1, 30, 40, 2, 1, 16, torch.float32, seed=seed_of(request))
    if softmax_scale < 1:  # nearly uniform attention: gradients too
        check_against_reference(backend, q, k, v, dout, causal=True, softmax_scale=softmax_scale)
    else:  # logits of ~1e3: forward only, see test_logits_of_magnitude_1e4_do_not_overflow
        check_forward(backend, q, k, v, causal=True, softmax_scale=softmax_scale)


def nan_rows(out: torch.Tensor) -> list:
    return out.isnan().any(-1).any(-1)[0].nonzero().flatten().tolist()


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_in_a_query_reaches_exactly_its_row(request, backend):
    q, k, v, _ = random_qkv(1, 40, 40, 2, 2, 16, torch.float32, seed=seed_of(request))
    q[0, 7, 1, 3] = float("nan")
    out = fa.attention(q, k, v, causal=True, backend=backend)
    expected = fa.reference.attention(q, k, v, causal=True)
    assert nan_rows(out) == nan_rows(expected) == [7]
    assert out[0, 7, 0].isfinite().all() and out[0, 7, 1].isnan().all()  # only the NaN's head
    keep = torch.ones(40, dtype=torch.bool)
    keep[7] = False
    torch.testing.assert_close(out[:, keep].double(), expected[:, keep], atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_in_a_key_reaches_exactly_the_queries_that_see_it(request, backend):
    q, k, v, _ = random_qkv(1, 40, 40, 1, 1, 16, torch.float32, seed=seed_of(request))
    k[0, 12, 0, 0] = float("nan")
    out = fa.attention(q, k, v, causal=True, window_size=(5, -1), backend=backend)
    assert nan_rows(out) == list(range(12, 18))  # queries 12..17 see key 12 (window 5 to the left)


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic_backward_is_bit_identical(request, backend):
    """No atomics in the backward: dK/dV of a GQA group are summed in a fixed order in one program."""
    q, k, v, dout = random_qkv(2, 70, 70, 4, 1, 32, torch.float16, seed=seed_of(request))

    def grads():
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = fa.attention(*leaves, causal=True, backend=backend, deterministic=True)
        return torch.autograd.grad(out, leaves, dout)

    first, second = grads(), grads()
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.skipif(not INTERPRETER_TRUNCATES_BF16, reason="Triton's interpreter only (TRITON_INTERPRET=1)")
def test_interpreter_truncates_fp32_to_bf16():
    """The second interpreter trap (README "Triton on CPU"; the first: bf16 tl.dot). triton 3.9's
    interpreter converts fp32 to bf16 by dropping the low 16 bits, where a GPU (and torch) round to
    nearest; tolerance.py allows interpreted bf16 results that one ulp. When this fails, the
    interpreter rounds: remove that allowance (tolerance.INTERPRETER_TRUNCATES_BF16)."""
    import triton
    import triton.language as tl

    @triton.jit
    def to_bf16(x_ptr, out_ptr, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        tl.store(out_ptr + offs, tl.load(x_ptr + offs).to(tl.bfloat16))

    ulp = 2.0 ** -7  # bf16 at 1
    x = torch.tensor([1 + 0.75 * ulp, -(1 + 0.75 * ulp), 1 + 0.25 * ulp, 3.0])
    out = torch.empty(4, dtype=torch.bfloat16)
    to_bf16[(1,)](x, out, BLOCK=4)
    truncated = (x.view(torch.int32) & ~0xFFFF).view(torch.float32)
    assert torch.equal(out.float(), truncated)
    assert not torch.equal(out, x.to(torch.bfloat16))  # torch rounds 1 + 0.75 ulp up to 1 + ulp
    assert torch.equal(tolerance.bf16_ulp(torch.tensor([1.0, 1.5, 0.75, -3.0])),
                       torch.tensor([ulp, ulp, ulp / 2, 2 * ulp]))
