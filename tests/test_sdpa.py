"""flashattn_py.scaled_dot_product_attention against the float64 reference and against torch's own
function on the same inputs; route_sdpa sends torch's function to ours."""
import warnings

import pytest
import torch
import torch.nn.functional as F

import flashattn_py as fa

from tolerance import DEVICE, assert_within_naive_error, check_against_reference, random_qkv, seed_of

BACKENDS = ["triton", "torch"]


def _mask(kind, b, h, sq, sk, dtype, gen):
    if kind == "none":
        return None
    if kind == "key_padding":
        keep = torch.rand(b, 1, 1, sk, generator=gen) > 0.3
        keep[..., 0] = True
        return keep.to(DEVICE)
    if kind == "bool_2d":
        keep = torch.rand(sq, sk, generator=gen) > 0.3
        keep[:, 0] = True
        return keep.to(DEVICE)
    return (torch.randn(b, h, sq, sk, generator=gen) * 2).to(DEVICE, dtype)  # "float_full"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
# torch rejects attn_mask together with is_causal (tested below), so masks run without it.
@pytest.mark.parametrize("mask,is_causal", [("none", False), ("none", True), ("key_padding", False),
                                            ("bool_2d", False), ("float_full", False)])
@pytest.mark.parametrize("seqlens", [(23, 41), (41, 23), (32, 32)], ids=str)
def test_matches_reference_and_torch_sdpa(request, backend, dtype, mask, is_causal, seqlens):
    sq, sk = seqlens
    seed = seed_of(request)
    q, k, v, dout = random_qkv(2, sq, sk, 4, 2, 32, dtype, seed=seed)  # bshd; SDPA takes bhsd views
    attn_mask = _mask(mask, 2, 4, sq, sk, dtype, torch.Generator().manual_seed(seed))
    # Against the float64 reference: forward, lse and gradients (top-left causal, mask as bias).
    check_against_reference(backend, q, k, v, dout, causal=is_causal, attn_bias=attn_mask, alignment="top_left")
    # Against torch's function, on the same bhsd inputs: outputs and gradients.
    leaves = [t.transpose(1, 2).detach().requires_grad_() for t in (q, k, v)]
    torch_leaves = [t.detach().clone().requires_grad_() for t in leaves]
    ours = fa.scaled_dot_product_attention(*leaves, attn_mask=attn_mask, is_causal=is_causal, enable_gqa=True,
                                           backend=backend)
    theirs = F.scaled_dot_product_attention(*torch_leaves, attn_mask=attn_mask, is_causal=is_causal, enable_gqa=True)
    exact = F.scaled_dot_product_attention(*(t.double() for t in torch_leaves), attn_mask=None if attn_mask is None
                                           else attn_mask if attn_mask.dtype == torch.bool else attn_mask.double(),
                                           is_causal=is_causal, enable_gqa=True)
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    assert_within_naive_error("out vs torch sdpa", ours, exact, theirs, dtype)
    g = dout.transpose(1, 2)
    for name, a, b in zip("qkv", torch.autograd.grad(ours, leaves, g), torch.autograd.grad(theirs, torch_leaves, g)):
        scale = max(1.0, b.abs().max().item())
        assert (a.float() - b.float()).abs().max().item() <= 4 * {torch.float32: 1e-5}.get(dtype, 2e-2) * scale, name


def test_three_dim_inputs_and_scale():
    q, k, v = (torch.randn(3, 19, 16, device=DEVICE) for _ in range(3))
    ours = fa.scaled_dot_product_attention(q, k, v, scale=0.7, is_causal=True)
    theirs = F.scaled_dot_product_attention(q, k, v, scale=0.7, is_causal=True)
    assert ours.shape == (3, 19, 16) and torch.allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize("call,error,message", [
    (lambda q, k, v: fa.scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(8, 8, dtype=torch.bool,
                                                                                    device=DEVICE), is_causal=True),
     ValueError, "not both"),
    (lambda q, k, v: fa.scaled_dot_product_attention(q, k[:, :2], v[:, :2]), ValueError, "enable_gqa=True"),
    (lambda q, k, v: fa.scaled_dot_product_attention(q, k, v[..., :8]), NotImplementedError, "value head_dim"),
    (lambda q, k, v: fa.scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(3, 5, device=DEVICE)),
     ValueError, "attn_mask of shape \\(3, 5\\) does not broadcast"),
    (lambda q, k, v: fa.scaled_dot_product_attention(q[0, 0, 0], k, v), ValueError, "must be \\(batch, nheads"),
])
def test_bad_calls_raise_named_errors(call, error, message):
    q, k, v = (torch.randn(2, 4, 8, 16, device=DEVICE) for _ in range(3))
    with pytest.raises(error, match=message):
        call(q, k, v)


def test_route_sdpa_sends_torch_calls_to_ours_and_falls_back_with_a_warning(monkeypatch):
    calls = []
    real = fa.sdpa.api.run

    def counting(*args, **kwargs):
        calls.append(kwargs["alignment"])
        return real(*args, **kwargs)

    monkeypatch.setattr(fa.sdpa.api, "run", counting)
    q, k, v = (torch.randn(1, 2, 10, 16, device=DEVICE) for _ in range(3))
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    with fa.route_sdpa():
        got = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fallback = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double())
    assert calls[0] == "top_left" and torch.allclose(got, expected, atol=1e-5)
    assert fallback.dtype == torch.float64 and "torch's SDPA used for this call" in str(caught[0].message)
    assert torch.nn.functional.scaled_dot_product_attention is fa.sdpa._ORIGINAL_SDPA  # restored
