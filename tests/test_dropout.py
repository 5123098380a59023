"""Attention dropout: each backend's mask, recovered, makes its output and gradients equal the
reference's with that mask; the keep rate matches dropout_p; torch.manual_seed reproduces it."""
import math

import pytest
import torch

import flashattn_py as fa
from flashattn_py import backends
from flashattn_py.validation.attention import attention_params

from tolerance import OUTPUT_NAMES, assert_within_naive_error, random_qkv, run_with_grads, seed_of

BACKENDS = ["triton", "torch", "reference"]


def call_with_mask(backend, q, k, v, dout, seed, **options):
    """Run the backend under torch.manual_seed(seed) and recover the mask that call used."""
    torch.manual_seed(seed)
    with fa.poisoned_outputs():
        got = run_with_grads(lambda *t: fa.attention(*t, return_lse=True, backend=backend, **options), q, k, v, dout)
    torch.manual_seed(seed)  # the same draw gives the same params.dropout_seed
    params = attention_params(q, k, v, **{n: o for n, o in options.items() if n != "pe_k_strategy"})
    return got, backends.select(backend, q.device).dropout_mask(params, q.device)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("options", [dict(causal=True), dict(window_size=(8, 3))], ids=["causal", "window"])
@pytest.mark.parametrize("seqlen_q", [50, 3])  # 3: decoding lengths (the Triton forward's decode tiles)
def test_dropout_matches_reference_with_the_same_mask(request, backend, dtype, options, seqlen_q):
    q, k, v, dout = random_qkv(2, seqlen_q, 37, 4, 2, 32, dtype, seed=seed_of(request))
    options = dict(options, dropout_p=0.3)
    got, mask = call_with_mask(backend, q, k, v, dout, seed_of(request), **options)
    assert mask.shape == (2, 4, seqlen_q, 37)

    def reference(compute_dtype):
        return run_with_grads(lambda *t: fa.reference.attention(
            *t, return_lse=True, dropout_mask=mask, compute_dtype=compute_dtype, **options), q, k, v, dout)

    exact, naive = reference(torch.float64), reference(dtype)
    for name, g, e, n in zip(OUTPUT_NAMES, got, exact, naive):
        assert_within_naive_error(name, g, e, n, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_keep_rate_matches_dropout_p(request, backend):
    q, k, v, _ = random_qkv(2, 64, 64, 2, 2, 16, torch.float32, seed=seed_of(request))
    torch.manual_seed(seed_of(request))
    params = attention_params(q, k, v, dropout_p=0.2)
    mask = backends.select(backend, q.device).dropout_mask(params, q.device)
    n = mask.numel()
    sigma = math.sqrt(0.2 * 0.8 / n)
    assert abs(mask.float().mean().item() - 0.8) < 5 * sigma
    # Masks of different heads and rows are not copies of one another.
    assert not torch.equal(mask[0, 0], mask[0, 1]) and not torch.equal(mask[0, 0, 0], mask[0, 0, 1])


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_manual_seed_reproduces_and_seeds_differ(request, backend):
    q, k, v, _ = random_qkv(1, 40, 40, 2, 2, 16, torch.float32, seed=seed_of(request))

    def run(seed):
        torch.manual_seed(seed)
        return fa.attention(q, k, v, dropout_p=0.5, backend=backend)

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_dropout_p_validation():
    q, k, v, _ = random_qkv(1, 8, 8, 1, 1, 16, torch.float32)
    with pytest.raises(ValueError, match=r"dropout_p must be in \[0, 1\)"):
        fa.attention(q, k, v, dropout_p=1.0)
    with pytest.raises(TypeError, match="dropout_p must be a float"):
        fa.attention(q, k, v, dropout_p="0.1")
