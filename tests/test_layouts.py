"""bshd and bhsd layouts and non-contiguous views go through strides, with the same results."""
import pytest
import torch

import flashattn_py as fa

from tolerance import DEVICE, check_against_reference, random_qkv, seed_of

BACKENDS = ["triton", "cuda", "torch"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_bhsd_layout_takes_and_returns_bhsd(request, backend):
    q, k, v, dout = random_qkv(2, 37, 45, 4, 2, 32, torch.float16, seed=seed_of(request))
    to_bhsd = lambda t: t.transpose(1, 2).contiguous()  # noqa: E731
    got = check_against_reference(backend, *(to_bhsd(t) for t in (q, k, v, dout)), causal=True, layout="bhsd")
    out = got[0]
    assert out.shape == (2, 4, 37, 32) and out.is_contiguous(), "bhsd in, contiguous bhsd out"
    expected = fa.reference.attention(q, k, v, causal=True)
    torch.testing.assert_close(out.transpose(1, 2).double(), expected, atol=2e-3, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_views(request, backend):
    """q/k/v sliced out of a packed qkv projection and a padded batch: strided views, no copies needed."""
    gen = torch.Generator().manual_seed(seed_of(request))
    packed = torch.randn(3, 40, 3, 4, 48, generator=gen).to(DEVICE)  # (batch, seq, qkv, heads, head_dim+pad)
    q, k, v = (packed[::2, :, i, :, :32] for i in range(3))  # every other batch row, first 32 channels
    assert not q.is_contiguous()
    dout = torch.randn(q.shape, generator=gen).to(DEVICE)
    check_against_reference(backend, q, k, v, dout, causal=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_last_dim_not_contiguous_is_copied_and_correct(request, backend):
    q, k, v, dout = random_qkv(1, 20, 20, 2, 2, 16, torch.float32, seed=seed_of(request))
    q = q.transpose(-1, -2).contiguous().transpose(-1, -2)  # head_dim stride != 1
    assert q.stride(-1) != 1
    check_against_reference(backend, q, k, v, dout)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_keep_input_layout(request, backend):
    q, k, v, _ = random_qkv(1, 16, 16, 2, 2, 16, torch.float32, seed=seed_of(request))
    q = q.transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()  # bhsd memory seen as bshd
    out = fa.attention(q, k, v, backend=backend)
    out.sum().backward()
    assert q.grad.shape == q.shape
