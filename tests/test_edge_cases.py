"""Rows that see nothing, tiny and empty sequences, and 64-bit addressing."""
import pytest
import torch

import flashattn_py as fa

from tolerance import DEVICE, check_against_reference, random_qkv, seed_of

BACKENDS = ["triton", "cuda", "torch"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("options", [dict(causal=True), dict(window_size=(0, 0))], ids=["causal", "window00"])
def test_rows_that_see_no_key_give_zero_output_neg_inf_lse_and_zero_grads(request, backend, options):
    # seqlen_q > seqlen_k, bottom-right causal: the first 40 queries sit above the first key.
    q, k, v, dout = random_qkv(1, 50, 10, 2, 2, 16, torch.float32, seed=seed_of(request))
    out, lse, dq, dk, dv = check_against_reference(backend, q, k, v, dout, **options)
    blind = slice(0, 40)
    assert torch.all(out[:, blind] == 0)
    assert torch.all(lse[:, :, blind] == float("-inf"))
    assert torch.all(dq[:, blind] == 0)
    assert torch.isfinite(dk).all() and torch.isfinite(dv).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seqlen_q,seqlen_k", [(1, 1), (1, 70), (70, 1), (0, 5), (5, 0)])
def test_tiny_and_empty_sequences(request, backend, seqlen_q, seqlen_k):
    q, k, v, dout = random_qkv(2, seqlen_q, seqlen_k, 2, 1, 16, torch.float16, seed=seed_of(request))
    out, lse, dq, dk, dv = check_against_reference(backend, q, k, v, dout, causal=True)
    if seqlen_k == 0:
        assert torch.all(out == 0) and torch.all(lse == float("-inf")) and torch.all(dq == 0)
    if seqlen_q == 0:
        assert torch.all(dk == 0) and torch.all(dv == 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_zero(backend):
    q, k, v, _ = random_qkv(0, 8, 8, 2, 2, 16, torch.float32)
    assert fa.attention(q, k, v, backend=backend).shape == (0, 8, 2, 16)


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_offsets_beyond_2_pow_31_elements(request, backend):
    """Head 2 of q, k and v starts past element 2^31: 32-bit offset arithmetic would wrap.

    The views' storage is allocated but never touched beyond the few rows used (the OS maps pages
    lazily), so this costs kilobytes of real memory.
    """
    # 32: a compiled CUDA head dim (no padding copy)
    seqlen, head_dim, head_stride = 24, 32, 2**30 + 64  # head * stride exceeds 2^31 for head 2
    storage_elements = 2 * head_stride + seqlen * head_dim
    gen = torch.Generator().manual_seed(seed_of(request))
    views = []
    for _ in range(3):
        base = torch.empty(storage_elements, dtype=torch.float16, device=DEVICE)
        view = base.as_strided((1, seqlen, 3, head_dim), (storage_elements, head_dim, head_stride, 1))
        for h in range(3):
            view[:, :, h] = torch.randn(1, seqlen, head_dim, generator=gen).to(view)
        views.append(view)
    q, k, v = views
    dout = torch.randn(1, seqlen, 3, head_dim, generator=gen).to(DEVICE, torch.float16)
    check_against_reference(backend, q, k, v, dout, causal=True)
