"""Attention sinks (GPT-OSS) and gradients of a learned float attention bias (T5), in every backend,
against the float64 reference: out, lse, dq, dk, dv, dsinks and dbias (flashattn_py/semantics/score_mods.py has
the math)."""
import pytest
import torch

import flashattn_py as fa
from flashattn_py.flash_attn_interface import flash_attn_varlen_func, flash_attn_with_kvcache

from tolerance import DEVICE, assert_within_naive_error, check_against_reference, random_qkv, run_with_grads, seed_of

BACKENDS = ["triton", "torch", "cuda"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _sinks(nheads, gen, scale=2.0):
    """fp32 (nheads,) logits around the scores' own size, so the sink takes a real share of each row."""
    return (torch.randn(nheads, generator=gen) * scale).to(DEVICE)


# (batch, seqlen_q, seqlen_k, nheads_q, nheads_kv, head_dim, options): GQA; sq > sk under causal leaves
# the first queries with no key (output 0, lse = the sink); decoding lengths (the Triton forward packs
# the GQA heads of a plain call, per-row sinks); a window.
SINK_CASES = {
    "gqa": (2, 37, 45, 4, 2, 32, dict()),
    "causal_rows_without_keys": (1, 70, 17, 2, 1, 64, dict(causal=True)),
    "decode_packed_gqa": (2, 4, 45, 6, 2, 32, dict(causal=True)),
    "window_softcap": (2, 33, 33, 2, 2, 16, dict(window_size=(5, 3), softcap=3.0)),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", SINK_CASES)
def test_sinks_match_reference_with_gradients(request, backend, dtype, case):
    b, sq, sk, hq, hkv, d, options = SINK_CASES[case]
    seed = seed_of(request)
    q, k, v, dout = random_qkv(b, sq, sk, hq, hkv, d, dtype, seed=seed)
    sinks = _sinks(hq, torch.Generator().manual_seed(seed))
    check_against_reference(backend, q, k, v, dout, sinks=sinks, differentiate=("sinks",), **options)


def test_sinks_rows_without_keys_return_zero_and_the_sink_as_lse():
    q, k, v, _ = random_qkv(1, 6, 2, 2, 2, 16, torch.float32)
    sinks = torch.tensor([0.5, -1.0], device=DEVICE)
    out, lse = fa.attention(q, k, v, causal=True, sinks=sinks, return_lse=True)
    # Bottom-right causal: queries 0..3 see no key; the sink alone fills their normalizer.
    assert torch.equal(out[:, :4], torch.zeros_like(out[:, :4]))
    torch.testing.assert_close(lse[0, :, :4], sinks[:, None].expand(2, 4))


def test_sinks_make_weights_sum_below_one():
    """Against an independent formula: softmax over [scores, sink], the sink's column dropped."""
    q, k, v, _ = random_qkv(2, 9, 11, 2, 1, 16, torch.float64)
    v = torch.ones_like(v)  # each output channel is then the row's total weight
    sinks = torch.tensor([1.0, -0.5], dtype=torch.float64, device=DEVICE)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k.expand(-1, -1, 2, -1)) / 4.0
    joint = torch.cat([scores, sinks[None, :, None, None].expand(2, 2, 9, 1)], dim=-1)
    total = torch.softmax(joint, dim=-1)[..., :-1].sum(-1)  # (b, h, q)
    for backend in ("reference", "torch"):
        out = fa.reference.attention(q, k, v, sinks=sinks) if backend == "reference" else \
            fa.attention(q.float(), k.float(), v.float(), sinks=sinks.float(), backend=backend).double()
        torch.testing.assert_close(out[..., 0].transpose(1, 2), total, atol=1e-6, rtol=1e-6)
    assert (total < 1).all()


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_sinks_with_split_k_match_reference(request, backend):
    """Split-K: the sink joins split 0 only, so the merge counts it once."""
    q, k, v, dout = random_qkv(2, 3, 150, 4, 2, 32, torch.float16, seed=seed_of(request))
    sinks = _sinks(4, torch.Generator().manual_seed(3))
    got = check_against_reference(backend, q, k, v, dout, sinks=sinks, differentiate=("sinks",), num_splits=3)
    unsplit = fa.attention(q, k, v, sinks=sinks, backend=backend, num_splits=1)
    assert_within_naive_error("split vs unsplit", got[0], unsplit.double(), unsplit.double(), torch.float16)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_sinks_with_packed_sequences_match_each_sequence(request, backend):
    lengths_q, lengths_k, hq, hkv, d = [5, 0, 17], [9, 4, 17], 4, 2, 32
    gen = torch.Generator().manual_seed(seed_of(request))
    q, k, v, dout = (torch.randn(sum(n), h, d, generator=gen).to(DEVICE)
                     for n, h in ((lengths_q, hq), (lengths_k, hkv), (lengths_k, hkv), (lengths_q, hq)))
    sinks = _sinks(hq, gen)
    cu_q, cu_k = (torch.tensor([0, *torch.tensor(n).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
                  for n in (lengths_q, lengths_k))

    def packed(q, k, v, sinks):
        out, lse, _ = flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lengths_q), max(lengths_k), causal=True,
                                             learnable_sink=sinks, return_attn_probs=True, backend=backend)
        return out, lse

    with fa.poisoned_outputs():
        out, lse, dq, dk, dv, dsinks = run_with_grads(packed, q, k, v, dout, sinks)
    exact_dsinks = torch.zeros(hq, dtype=torch.float64, device=DEVICE)
    for b in range(len(lengths_q)):
        rq, rk = slice(cu_q[b], cu_q[b + 1]), slice(cu_k[b], cu_k[b + 1])
        ref = run_with_grads(lambda q, k, v, s: fa.reference.attention(q, k, v, causal=True, sinks=s,
                                                                       return_lse=True),
                             q[rq][None].double(), k[rk][None].double(), v[rk][None].double(),
                             dout[rq][None].double(), sinks.double())
        for name, got, exact in (("out", out[rq], ref[0][0]), ("lse", lse[:, rq], ref[1][0]),
                                 ("dq", dq[rq], ref[2][0]), ("dk", dk[rk], ref[3][0]), ("dv", dv[rk], ref[4][0])):
            assert_within_naive_error(f"{name} of sequence {b}", got, exact, exact, torch.float32)
        exact_dsinks += ref[5]
    assert_within_naive_error("dsinks", dsinks, exact_dsinks, exact_dsinks, torch.float32)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("num_splits", [1, 4])
def test_decoding_decoding_with_sinks_matches_reference(request, backend, num_splits):
    batch, capacity, hq, hkv, d = 2, 64, 4, 2, 32
    gen = torch.Generator().manual_seed(seed_of(request))
    k_cache, v_cache = (torch.randn(batch, capacity, hkv, d, generator=gen).to(DEVICE) for _ in range(2))
    q = torch.randn(batch, 1, hq, d, generator=gen).to(DEVICE)
    seqlens = torch.tensor([40, 13], dtype=torch.int32, device=DEVICE)
    sinks = _sinks(hq, gen)
    with fa.poisoned_outputs():
        out, lse = flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqlens, causal=True,
                                           learnable_sink=sinks, num_splits=num_splits, return_softmax_lse=True,
                                           backend=backend)
    for b, n in enumerate(seqlens.tolist()):
        ref_out, ref_lse = fa.reference.attention(q[b:b + 1].double(), k_cache[b:b + 1, :n].double(),
                                                  v_cache[b:b + 1, :n].double(), causal=True, sinks=sinks,
                                                  return_lse=True)
        assert_within_naive_error("out", out[b:b + 1], ref_out, ref_out, torch.float32)
        assert_within_naive_error("lse", lse[b:b + 1], ref_lse, ref_lse, torch.float32)


# Bias shapes users pass, as (shape given the batch b, heads h, sq, sk): T5's learned relative position
# bias (1, H, Sq, Sk), a per-sequence one (B, 1, Sq, Sk), a full one, one per key (1, 1, 1, Sk), a 2-D
# (Sq, Sk) one, and one constant per row (B, H, Sq, 1), whose gradient is exact zero without sinks.
BIAS_SHAPES = {
    "t5_1hqk": lambda b, h, sq, sk: (1, h, sq, sk),
    "b1qk": lambda b, h, sq, sk: (b, 1, sq, sk),
    "full_bhqk": lambda b, h, sq, sk: (b, h, sq, sk),
    "per_key_111k": lambda b, h, sq, sk: (1, 1, 1, sk),
    "2d_qk": lambda b, h, sq, sk: (sq, sk),
    "per_row_bhq1": lambda b, h, sq, sk: (b, h, sq, 1),
}
BIAS_CASES = [  # (shape, dtype, options)
    *[(shape, torch.float32, dict()) for shape in BIAS_SHAPES],
    ("t5_1hqk", torch.float16, dict(causal=True)),
    ("t5_1hqk", torch.bfloat16, dict(softcap=5.0)),
    ("b1qk", torch.float16, dict(window_size=(6, 2))),
    ("per_key_111k", torch.bfloat16, dict(causal=True)),
    ("full_bhqk", torch.bfloat16, dict(with_sinks=True)),
    ("per_row_bhq1", torch.float32, dict(with_sinks=True)),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape,dtype,options", BIAS_CASES, ids=lambda x: str(x) if not isinstance(x, dict) else
                         "-".join(x) or "plain")
def test_learned_bias_gradient_matches_reference(request, backend, shape, dtype, options):
    b, sq, sk, hq, hkv, d = 2, 21, 26, 4, 2, 16
    seed = seed_of(request)
    q, k, v, dout = random_qkv(b, sq, sk, hq, hkv, d, dtype, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    bias = torch.randn(BIAS_SHAPES[shape](b, hq, sq, sk), generator=gen).to(DEVICE, dtype)
    options = dict(options)
    differentiate = ("attn_bias",)
    if options.pop("with_sinks", False):
        options["sinks"], differentiate = _sinks(hq, gen), ("attn_bias", "sinks")
    if backend == "cuda":
        pytest.skip("backend='cuda' has no attention bias kernels (by design); they run on backend='triton'")
    got = check_against_reference(backend, q, k, v, dout, attn_bias=bias, differentiate=differentiate, **options)
    assert got[5].shape == bias.shape  # the gradient has the bias's own (broadcast) shape


def test_bias_gradient_is_bit_identical_run_to_run(request):
    """A bias broadcast along the batch and heads gets fp32 atomic adds, ordered by separate launches."""
    q, k, v, dout = random_qkv(3, 19, 23, 4, 2, 16, torch.float16, seed=seed_of(request))
    bias = torch.randn(1, 1, 19, 23, device=DEVICE, dtype=torch.float16)
    grads = [run_with_grads(lambda q, k, v, bias: (fa.attention(q, k, v, attn_bias=bias, backend="triton"), None),
                            q, k, v, dout, bias)[-1] for _ in range(2)]
    assert torch.equal(grads[0], grads[1])


def test_bias_gradient_needs_no_full_size_buffer():
    """The gradient of a (1, 1, 1, sk) bias is (1, 1, 1, sk), whatever batch, heads and seqlen_q are."""
    q, k, v, dout = random_qkv(4, 300, 7, 8, 8, 8, torch.float32)
    bias = torch.zeros(7, device=DEVICE, requires_grad=True)
    fa.attention(q, k, v, attn_bias=bias).backward(dout)
    assert bias.grad.shape == (7,) and torch.isfinite(bias.grad).all()


BAD_SINKS = [
    (torch.zeros(3), ValueError, r"sinks must have shape \(nheads_q,\) = \(4,\)"),
    (torch.zeros(4, dtype=torch.int64), TypeError, "sinks must be a floating-point tensor"),
    ([0.0] * 4, TypeError, "sinks must be a torch.Tensor"),
    (torch.zeros(1, 4), ValueError, "sinks must have shape"),
]


@pytest.mark.parametrize("sinks,error,message", BAD_SINKS)
def test_bad_sinks_are_named(sinks, error, message):
    q, k, v, _ = random_qkv(2, 8, 9, 4, 2, 16, torch.float32)
    sinks = sinks.to(DEVICE) if isinstance(sinks, torch.Tensor) else sinks
    with pytest.raises(error, match=message):
        fa.attention(q, k, v, sinks=sinks)
