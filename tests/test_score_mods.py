"""Softcap, ALiBi and attention bias / boolean masks (flashattn_py.score_mods) in every backend,
against the float64 reference, forward and all gradients."""
import pytest
import torch

import flashattn_py as fa
from flashattn_py.validation import attention as checks

from tolerance import DEVICE, check_against_reference, random_qkv, seed_of

BACKENDS = ["triton", "torch"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _bias(kind, b, h, sq, sk, dtype, gen):
    if kind == "key_padding_bool":  # (batch, 1, 1, seqlen_k): True = a real token
        keep = torch.rand(b, 1, 1, sk, generator=gen) > 0.3
        keep[..., 0] = True
        return keep.to(DEVICE)
    if kind == "key_padding_float":  # (batch, 1, 1, seqlen_k) additive: 0 or -inf per key, and a small bias
        bias = torch.randn(b, 1, 1, sk, generator=gen) * 0.5
        bias[torch.rand(b, 1, 1, sk, generator=gen) > 0.7] = float("-inf")
        bias[..., 0] = 0.0
        return bias.to(DEVICE, dtype)
    if kind == "full_bool":
        return (torch.rand(b, h, sq, sk, generator=gen) > 0.4).to(DEVICE)
    if kind == "float_2d":  # (seqlen_q, seqlen_k) shared by batch and heads
        return torch.randn(sq, sk, generator=gen).to(DEVICE, dtype)
    if kind == "float_per_head_with_-inf":
        bias = torch.randn(1, h, sq, sk, generator=gen)
        bias[torch.rand(1, h, sq, sk, generator=gen) > 0.7] = float("-inf")
        return bias.to(DEVICE, dtype)
    raise ValueError(kind)


# GQA, sq < sk and sq > sk; decoding lengths (the Triton forward packs the GQA heads without a bias: per-row slopes)
SHAPES = [(2, 37, 45, 4, 2, 32), (1, 70, 17, 2, 1, 64), (2, 4, 45, 6, 2, 32)]
MODS = {
    "softcap": lambda b, h, gen: dict(softcap=1.5),
    "softcap_large_logits": lambda b, h, gen: dict(softcap=30.0, softmax_scale=2.0),
    "alibi_per_head": lambda b, h, gen: dict(alibi_slopes=torch.rand(h, generator=gen).to(DEVICE)),
    "alibi_per_batch_causal": lambda b, h, gen: dict(alibi_slopes=torch.rand(b, h, generator=gen).to(DEVICE),
                                                     causal=True),
    "everything": lambda b, h, gen: dict(softcap=4.0, alibi_slopes=torch.rand(h, generator=gen).to(DEVICE),
                                         window_size=(9, 4)),
}


# The CUDA kernels apply softcap and ALiBi too (csrc/score_mods.h); their cases run where a GPU is.
@pytest.mark.parametrize("backend", BACKENDS + ["cuda"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mods", MODS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_softcap_and_alibi_match_reference(request, backend, dtype, mods, shape):
    b, sq, sk, hq, hkv, d = shape
    seed = seed_of(request)
    q, k, v, dout = random_qkv(b, sq, sk, hq, hkv, d, dtype, seed=seed)
    check_against_reference(backend, q, k, v, dout, **MODS[mods](b, hq, torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["key_padding_bool", "key_padding_float", "full_bool", "float_2d",
                                  "float_per_head_with_-inf"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_attention_bias_and_masks_match_reference(request, backend, dtype, kind, shape):
    b, sq, sk, hq, hkv, d = shape
    seed = seed_of(request)
    q, k, v, dout = random_qkv(b, sq, sk, hq, hkv, d, dtype, seed=seed)
    bias = _bias(kind, b, hq, sq, sk, dtype, torch.Generator().manual_seed(seed))
    check_against_reference(backend, q, k, v, dout, attn_bias=bias, softcap=3.0 if "float" in kind else 0.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_row_whose_keys_are_all_masked_gives_zero_and_no_nan(backend):
    q, k, v, dout = random_qkv(1, 20, 30, 2, 2, 16, torch.float16, seed=5)
    keep = torch.ones(1, 2, 20, 30, dtype=torch.bool, device=DEVICE)
    keep[:, :, 3] = False  # query 3 sees nothing
    out, lse, *_ = check_against_reference(backend, q, k, v, dout, attn_bias=keep)
    assert torch.all(out[:, 3] == 0) and torch.all(lse[:, :, 3] == float("-inf"))


def test_key_padding_mask_is_read_through_strides_not_materialized():
    q, k, v, _ = random_qkv(3, 500, 600, 4, 4, 16, torch.float16)
    padding = torch.rand(3, 1, 1, 600, device=DEVICE) > 0.5
    params = checks.attention_params(q, k, v, attn_bias=padding)
    bias = params.mods.bias
    assert bias.shape == (3, 4, 500, 600) and bias.stride()[1:3] == (0, 0)
    assert bias.untyped_storage().nbytes() == padding.numel()  # no (S x S) tensor anywhere


BAD = [
    (dict(softcap=-1.0), ValueError, "softcap must be >= 0"),
    (dict(softcap="1"), TypeError, "softcap must be a float"),
    (dict(alibi_slopes=torch.ones(4, dtype=torch.float16)), TypeError, "alibi_slopes must be float32"),
    (dict(alibi_slopes=torch.ones(3)), ValueError, r"alibi_slopes must have shape \(nheads,\)"),
    (dict(alibi_slopes=[1.0]), TypeError, "alibi_slopes must be a torch.Tensor"),
    (dict(attn_bias=torch.ones(5, 7)), ValueError, "attn_bias of shape \\(5, 7\\) does not broadcast"),
    (dict(attn_bias=torch.ones(2, 4, dtype=torch.int32)), TypeError, "attn_bias must be bool"),
]


@pytest.mark.parametrize("options,error,message", BAD)
def test_bad_score_mod_arguments_are_named(options, error, message):
    q, k, v, _ = random_qkv(2, 8, 9, 4, 2, 16, torch.float16)
    options = {name: value.to(DEVICE) if isinstance(value, torch.Tensor) else value for name, value in options.items()}
    with pytest.raises(error, match=message):
        fa.attention(q, k, v, **options)
