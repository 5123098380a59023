"""FlashAttention 2's entry points (flash_attn_func and its packed forms; the signatures of the
variable-length ones, whose values tests/test_varlen.py checks) on our kernels, against the float64
reference."""
import inspect

import numpy as np
import pytest
import torch

import flashattn_py as fa
from flashattn_py import flash_attn_interface as fai

from tolerance import DEVICE, assert_within_naive_error, check_against_reference, random_qkv, seed_of

# FlashAttention 2.x's signatures (argument names, order, defaults).
FA2_PARAMS = ["dropout_p", "softmax_scale", "causal", "window_size", "softcap", "alibi_slopes", "deterministic",
              "return_attn_probs"]
FA2_DEFAULTS = [0.0, None, False, (-1, -1), 0.0, None, False, False]


VARLEN = ["cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k"]


@pytest.mark.parametrize("fn,leading,trailing", [
    (fai.flash_attn_func, ["q", "k", "v"], []),
    (fai.flash_attn_qkvpacked_func, ["qkv"], []),
    (fai.flash_attn_kvpacked_func, ["q", "kv"], []),
    (fai.flash_attn_varlen_func, ["q", "k", "v"] + VARLEN, ["block_table"]),
    (fai.flash_attn_varlen_qkvpacked_func, ["qkv", "cu_seqlens", "max_seqlen"], []),
    (fai.flash_attn_varlen_kvpacked_func, ["q", "kv"] + VARLEN, []),
], ids=lambda x: getattr(x, "__name__", ""))
def test_signature_matches_flash_attention_2(fn, leading, trailing):
    params = list(inspect.signature(fn).parameters.values())
    positional = [p for p in params if p.kind == p.POSITIONAL_OR_KEYWORD]
    assert [p.name for p in positional] == leading + FA2_PARAMS + trailing
    assert [p.default for p in positional[len(leading):]] == FA2_DEFAULTS + [None] * len(trailing)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("options", [dict(causal=True), dict(window_size=(6, 2), softcap=2.0),
                                     dict(alibi_slopes="per_head", causal=True)], ids=str)
def test_packed_and_unpacked_calls_match_reference(request, backend, options):
    q, k, v, dout = random_qkv(2, 33, 33, 4, 4, 32, torch.float16, seed=seed_of(request))
    if options.get("alibi_slopes") == "per_head":
        options = {**options, "alibi_slopes": torch.rand(4, device=DEVICE)}
    check_against_reference(backend, q, k, v, dout, **options)  # the engine every entry point calls
    exact = fa.reference.attention(q, k, v, **options)
    naive = fa.reference.attention(q, k, v, compute_dtype=torch.float16, **options)
    out = fai.flash_attn_func(q, k, v, backend=backend, **options)
    assert_within_naive_error("flash_attn_func", out, exact, naive, torch.float16)
    packed = fai.flash_attn_qkvpacked_func(torch.stack((q, k, v), dim=2), backend=backend, **options)
    assert torch.equal(packed, out)
    kv_packed = fai.flash_attn_kvpacked_func(q, torch.stack((k, v), dim=2), backend=backend, **options)
    assert torch.equal(kv_packed, out)


def test_return_attn_probs_gives_lse_and_the_softmax_weights():
    q, k, v, _ = random_qkv(1, 9, 12, 2, 1, 16, torch.float32)
    out, lse, probs = fai.flash_attn_func(q, k, v, causal=True, return_attn_probs=True)
    exact_out, exact_lse = fa.reference.attention(q, k, v, causal=True, return_lse=True)
    assert probs.shape == (1, 2, 9, 12) and torch.allclose(probs.sum(-1), torch.ones(1, 2, 9, device=DEVICE))
    assert torch.allclose(lse.double(), exact_lse, atol=1e-5)
    assert torch.allclose((probs.double() @ v.transpose(1, 2).double()[:, [0, 0]]).transpose(1, 2),
                          exact_out, atol=1e-5)


def test_bad_packed_shapes_are_named():
    with pytest.raises(ValueError, match=r"qkv must have shape \(batch, seqlen, 3, nheads, head_dim\)"):
        fai.flash_attn_qkvpacked_func(torch.randn(1, 4, 2, 2, 16, device=DEVICE))
    with pytest.raises(ValueError, match=r"kv must have shape \(batch, seqlen, 2, nheads_k, head_dim\)"):
        fai.flash_attn_kvpacked_func(torch.randn(1, 4, 2, 16, device=DEVICE),
                                     torch.randn(1, 4, 3, 2, 16, device=DEVICE))
    cu = torch.tensor([0, 4], dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match=r"qkv must have shape \(total_tokens, 3, nheads, head_dim\)"):
        fai.flash_attn_varlen_qkvpacked_func(torch.randn(1, 4, 3, 2, 16, device=DEVICE), cu, 4)
    with pytest.raises(ValueError, match=r"kv must have shape \(total_tokens, 2, nheads_k, head_dim\)"):
        fai.flash_attn_varlen_kvpacked_func(torch.randn(4, 2, 16, device=DEVICE), torch.randn(4, 2, 16, device=DEVICE),
                                            cu, cu, 4, 4)
    with pytest.raises(TypeError, match="qkv must be a torch.Tensor"):
        fai.flash_attn_varlen_qkvpacked_func([1.0], cu, 4)


WINDOW_FORMS = {  # how FlashAttention 2 callers pass window_size: its own tests use torch.randint(0, seqlen_k, (2,))
    "tensor": lambda left, right: torch.tensor([left, right]),
    "int32_tensor": lambda left, right: torch.tensor([left, right], dtype=torch.int32),
    "numpy_ints": lambda left, right: (np.int64(left), np.int32(right)),
    "zero_dim_tensors": lambda left, right: [torch.tensor(left), torch.tensor(right)],
}
WINDOW_ENTRIES = {  # call(q, k, v, window_size) through each entry point that takes window_size
    "attention": lambda q, k, v, w: fa.attention(q, k, v, window_size=w, backend="triton"),
    "flash_attn_func": lambda q, k, v, w: fai.flash_attn_func(q, k, v, window_size=w, backend="triton"),
    "flash_attn_varlen_func": lambda q, k, v, w: fai.flash_attn_varlen_func(
        q[0], k[0], v[0], *(torch.tensor([0, n], dtype=torch.int32, device=DEVICE) for n in (q.shape[1], k.shape[1])),
        q.shape[1], k.shape[1], window_size=w, backend="triton")[None],
    "flash_attn_with_kvcache": lambda q, k, v, w: fa.flash_attn_with_kvcache(q, k, v, window_size=w, backend="triton"),
}


@pytest.mark.parametrize("form", WINDOW_FORMS)
@pytest.mark.parametrize("entry", WINDOW_ENTRIES)
def test_window_size_as_a_tensor_or_numpy_ints_means_the_pair(request, form, entry):
    """Every entry point taking window_size reads a tensor / numpy pair as the pair of ints, which
    itself is checked against the float64 reference (test_attention.py, test_masks.py)."""
    q, k, v, _ = random_qkv(1, 9, 23, 2, 1, 20, torch.float32, seed=seed_of(request))
    call = WINDOW_ENTRIES[entry]
    with fa.poisoned_outputs():
        got = call(q, k, v, WINDOW_FORMS[form](5, 2))
    exact = fa.reference.attention(q, k, v, window_size=(5, 2))
    naive = fa.reference.attention(q, k, v, window_size=(5, 2), compute_dtype=torch.float32)
    assert_within_naive_error("out", got, exact, naive, torch.float32)
    torch.testing.assert_close(got, call(q, k, v, (5, 2)), atol=0, rtol=0)
