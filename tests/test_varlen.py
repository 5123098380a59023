"""Variable-length batches: flash_attn_varlen_func (packed) and attention(seqused_k=) against the
float64 reference run on each sequence separately, forward, lse and all gradients."""
import dataclasses

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flashattn_py as fa
from flashattn_py.flash_attn_interface import flash_attn_varlen_kvpacked_func, flash_attn_varlen_qkvpacked_func
from flashattn_py.varlen import flash_attn_varlen_func

from tolerance import CUDA_NO_SCORE_MODS, DEVICE, assert_within_naive_error, random_qkv, run_with_grads, seed_of

BACKENDS = ["triton", "cuda", "torch"]  # cuda: GPU only (skips with the reason elsewhere)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (seqlens_q, seqlens_k): ragged, with empty and length-1 sequences, sq <, =, > sk
LENGTHS = {
    "ragged": ([5, 0, 33, 1, 17], [7, 3, 30, 1, 17]),
    "one_long": ([70], [45]),
    "empty_k": ([4, 9], [0, 12]),
}
OPTIONS = {
    "causal": lambda b, h, gen: dict(causal=True),
    "window": lambda b, h, gen: dict(window_size=(4, 2)),
    "causal_rope": lambda b, h, gen: dict(causal=True, rotary=fa.Rotary(interleaved=True)),
    "sinusoidal": lambda b, h, gen: dict(sinusoidal=fa.Sinusoidal()),
    "softcap_alibi": lambda b, h, gen: dict(softcap=2.0, alibi_slopes=torch.rand(b, h, generator=gen).to(DEVICE)),
}


def _cu(lengths):
    return torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device=DEVICE)


def _per_sequence_reference(q, k, v, dout, cu_q, cu_k, options, dtype):
    """(out, lse (h, total_q), dq, dk, dv) of the naive reference in `dtype`, one sequence at a time."""
    outs = [torch.zeros_like(t, dtype=dtype) for t in (q, q, k, v)]
    lse = torch.zeros(q.shape[1], q.shape[0], dtype=dtype, device=DEVICE)
    for b in range(len(cu_q) - 1):
        qs, ks = slice(cu_q[b], cu_q[b + 1]), slice(cu_k[b], cu_k[b + 1])
        piece = dict(options)
        if "alibi_slopes" in piece:
            piece["alibi_slopes"] = piece["alibi_slopes"][b:b + 1]

        def ref(q_, k_, v_):
            return fa.reference.attention(q_, k_, v_, return_lse=True, compute_dtype=dtype, **piece)

        o, l, dq, dk, dv = run_with_grads(ref, q[None, qs], k[None, ks], v[None, ks], dout[None, qs])
        outs[0][qs], lse[:, qs], outs[1][qs], outs[2][ks], outs[3][ks] = o[0], l[0], dq[0], dk[0], dv[0]
    return outs[0], lse, outs[1], outs[2], outs[3]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("lengths", LENGTHS)
def test_packed_batches_match_reference_per_sequence(request, backend, dtype, options, lengths):
    if backend == "cuda" and options == "softcap_alibi":
        pytest.skip(CUDA_NO_SCORE_MODS)
    seed = seed_of(request)
    lens_q, lens_k = LENGTHS[lengths]
    opts = OPTIONS[options](len(lens_q), 4, torch.Generator().manual_seed(seed))
    _check_packed_call(flash_attn_varlen_func, lens_q, lens_k, 4, 2, dtype, seed, backend=backend, **opts)


def _check_packed_call(call, lens_q, lens_k, h, hk, dtype, seed, head_dim=32, **options):
    """call(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, return_attn_probs=True, **options)
    -> (out, lse, _) on fresh packed (total, heads, head_dim) inputs, NaN-poisoned: out, lse and all gradients
    against the float64 reference run one sequence at a time, within the naive error bound."""
    total = max(sum(lens_q), sum(lens_k))
    q, k, v, dout = random_qkv(1, total, total, h, hk, head_dim, dtype, seed=seed)
    q, dout, k, v = q[0, :sum(lens_q)], dout[0, :sum(lens_q)], k[0, :sum(lens_k)], v[0, :sum(lens_k)]
    cu_q, cu_k = _cu(lens_q), _cu(lens_k)

    def ours(q_, k_, v_):
        out, lse, _ = call(q_, k_, v_, cu_q, cu_k, max(lens_q), max(lens_k), return_attn_probs=True, **options)
        return out, lse

    with fa.poisoned_outputs():
        got = run_with_grads(ours, q, k, v, dout)
    math = {name: value for name, value in options.items() if name != "backend"}
    exact = _per_sequence_reference(q, k, v, dout, cu_q.tolist(), cu_k.tolist(), math, torch.float64)
    naive = _per_sequence_reference(q, k, v, dout, cu_q.tolist(), cu_k.tolist(), math, dtype)
    for name, g, e, n in zip(("out", "lse", "dq", "dk", "dv"), got, exact, naive):
        assert g.shape == e.shape, f"{name}: {tuple(g.shape)} != {tuple(e.shape)}"
        assert_within_naive_error(name, g, e, n, dtype)


ODD_HEAD_DIMS = {  # head dims that are not multiples of 8 (any in [1, 256] runs), with a per-sequence rule each
    "d12_causal_rope_gptj": (12, dict(causal=True, rotary=fa.Rotary(interleaved=True))),
    "d20_causal_partial_rope": (20, dict(causal=True, rotary=fa.Rotary(rotary_dim=8))),
    "d59_window_sinusoidal": (59, dict(window_size=(4, 2), sinusoidal=fa.Sinusoidal())),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ODD_HEAD_DIMS)
def test_packed_batches_at_odd_head_dims(request, backend, case):
    head_dim, options = ODD_HEAD_DIMS[case]
    _check_packed_call(flash_attn_varlen_func, *LENGTHS["ragged"], 4, 2, torch.bfloat16, seed_of(request),
                       head_dim=head_dim, backend=backend, **options)


PACKED_CALLS = {
    # (lengths q, lengths k, heads q, heads k, call(q, k, v, cu_q, cu_k, max_q, max_k, **options)): the parts
    # are stacked into one tensor inside the call, so gradients flow back through the packed tensor.
    "qkvpacked": ([5, 0, 33, 1, 17], [5, 0, 33, 1, 17], 4, 4,
                  lambda q, k, v, cu_q, cu_k, max_q, max_k, **o: flash_attn_varlen_qkvpacked_func(
                      torch.stack((q, k, v), dim=1), cu_q, max_q, **o)),
    "kvpacked": ([5, 0, 33, 1, 17], [7, 3, 30, 1, 17], 4, 2,
                 lambda q, k, v, cu_q, cu_k, max_q, max_k, **o: flash_attn_varlen_kvpacked_func(
                     q, torch.stack((k, v), dim=1), cu_q, cu_k, max_q, max_k, **o)),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("call", PACKED_CALLS)
@pytest.mark.parametrize("options", [dict(causal=True), dict(window_size=(4, 2), softcap=2.0)], ids=str)
def test_packed_tensor_calls_match_reference_per_sequence(request, backend, call, options):
    """FlashAttention 2's flash_attn_varlen_{qkv,kv}packed_func: the strided views of one packed
    tensor, forward and gradients."""
    if backend == "cuda" and "softcap" in options:
        pytest.skip(CUDA_NO_SCORE_MODS)
    lens_q, lens_k, h, hk, fn = PACKED_CALLS[call]
    _check_packed_call(fn, lens_q, lens_k, h, hk, torch.float16, seed_of(request), backend=backend, **options)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("causal", [False, True])
def test_seqused_k_equals_attending_to_each_prefix(request, backend, dtype, causal):
    seed = seed_of(request)
    q, k, v, dout = random_qkv(3, 21, 40, 4, 4, 16, dtype, seed=seed)
    used = torch.tensor([40, 0, 13], dtype=torch.int32, device=DEVICE)

    def ours(q_, k_, v_):
        return fa.attention(q_, k_, v_, causal=causal, seqused_k=used, return_lse=True, backend=backend)

    with fa.poisoned_outputs():
        got = run_with_grads(ours, q, k, v, dout)
    for b, n in enumerate(used.tolist()):
        def ref(dt):
            return lambda q_, k_, v_: fa.reference.attention(q_, k_, v_, causal=causal, return_lse=True,
                                                             compute_dtype=dt)
        exact = run_with_grads(ref(torch.float64), q[b:b + 1], k[b:b + 1, :n], v[b:b + 1, :n], dout[b:b + 1])
        naive = run_with_grads(ref(dtype), q[b:b + 1], k[b:b + 1, :n], v[b:b + 1, :n], dout[b:b + 1])
        mine = (got[0][b:b + 1], got[1][b:b + 1], got[2][b:b + 1], got[3][b:b + 1, :n], got[4][b:b + 1, :n])
        for name, g, e, m in zip(("out", "lse", "dq", "dk", "dv"), mine, exact, naive):
            assert_within_naive_error(f"{name}[{b}]", g, e, m, dtype)
        assert torch.all(got[3][b, n:] == 0) and torch.all(got[4][b, n:] == 0), "unused keys need zero gradients"


@pytest.mark.parametrize("call,error,message", [
    (lambda q, k, v, cu: flash_attn_varlen_func(q, k, v, cu.long(), cu, 8, 8), ValueError, "1-D int32"),
    (lambda q, k, v, cu: flash_attn_varlen_func(q, k, v, cu, cu, 4, 8), ValueError, "length 8 > max_seqlen 4"),
    (lambda q, k, v, cu: flash_attn_varlen_func(q, k, v, cu[:2], cu[:2], 8, 8), ValueError, "end at the packed length"),
    (lambda q, k, v, cu: flash_attn_varlen_func(q, k[:8], v[:8], cu, cu[:2], 8, 4), ValueError,
     "cu_seqlens_q describes 2 sequences but cu_seqlens_k 1"),
    (lambda q, k, v, cu: flash_attn_varlen_func(q[None], k, v, cu, cu, 8, 8), ValueError, "packed"),
    (lambda q, k, v, cu: flash_attn_varlen_func(q, k, v, cu, cu, 8, 8, block_table=cu), ValueError,
     r"k must be a 4-D cache \(num_pages, page_size"),
    (lambda q, k, v, cu: flash_attn_varlen_func(q, k, v, cu, cu, 8, 8, rotary=fa.Rotary(), pe_k_strategy="in_kernel"),
     ValueError, "in_kernel"),
    (lambda q, k, v, cu: fa.attention(q[None], k[None], v[None], seqused_k=torch.tensor([99], dtype=torch.int32,
                                                                                      device=DEVICE)),
     ValueError, "seqused_k values must be in"),
    (lambda q, k, v, cu: fa.attention(q[None], k[None], v[None], seqused_k=cu), ValueError,
     "seqused_k must be an int32 tensor of shape \\(batch,\\)"),
])
def test_bad_lengths_are_named(call, error, message):
    q, k, v = (torch.randn(12, 2, 16, device=DEVICE, dtype=torch.float16) for _ in range(3))
    cu = torch.tensor([0, 8, 12], dtype=torch.int32, device=DEVICE)
    with pytest.raises(error, match=message):
        call(q, k, v, cu)


PAGED_OPTIONS = {
    "causal": dict(causal=True),
    "window": dict(window_size=(6, 0)),
    "noncausal_softcap_alibi": dict(softcap=3.0),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("page_size", [1, 5, 16])
@pytest.mark.parametrize("options", PAGED_OPTIONS)
@pytest.mark.parametrize("num_splits", [1, 3])
def test_packed_queries_against_a_paged_cache_match_reference(request, backend, dtype, page_size, options, num_splits):
    """flash_attn_varlen_func(block_table=): packed queries (chunked prefill and one-token decode rows in
    one batch, sq <, =, > sk, an empty sequence) against keys in scattered pages of any size, split-K
    or not; the reference runs each sequence on its keys gathered from the pages."""
    options = dict(PAGED_OPTIONS[options])
    if options.get("softcap"):
        if backend == "cuda":
            pytest.skip(CUDA_NO_SCORE_MODS)
        options["alibi_slopes"] = torch.rand(4, 4, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    gen = torch.Generator().manual_seed(seed_of(request))
    rand = lambda *shape: torch.randn(*shape, generator=gen).to(DEVICE, dtype)  # noqa: E731
    lens_q, lens_k = [6, 1, 0, 9], [40, 23, 7, 4]
    h, hk, d, max_pages = 4, 2, 32, -(-40 // page_size)
    pages = 4 * max_pages + 3
    k_cache, v_cache = rand(pages, page_size, hk, d), rand(pages, page_size, hk, d)
    block_table = torch.randperm(pages, generator=gen)[:4 * max_pages].reshape(4, max_pages).to(DEVICE, torch.int32)
    q = rand(sum(lens_q), h, d)
    cu_q, cu_k = _cu(lens_q), _cu(lens_k)
    with fa.poisoned_outputs():
        out, lse, _ = flash_attn_varlen_func(q, k_cache, v_cache, cu_q, cu_k, max(lens_q), max(lens_k),
                                             block_table=block_table, num_splits=num_splits,
                                             return_attn_probs=True, backend=backend, **options)
    keys = k_cache[block_table.long()].reshape(4, -1, hk, d)
    values = v_cache[block_table.long()].reshape(4, -1, hk, d)
    for b, (nq, nk) in enumerate(zip(lens_q, lens_k)):
        rows = slice(int(cu_q[b]), int(cu_q[b + 1]))
        piece = dict(options)
        if "alibi_slopes" in piece:
            piece["alibi_slopes"] = piece["alibi_slopes"][b:b + 1]

        def reference(dt):
            return fa.reference.attention(q[None, rows], keys[b:b + 1, :nk], values[b:b + 1, :nk], return_lse=True,
                                          compute_dtype=dt, **piece)

        (exact, exact_lse), (naive, naive_lse) = reference(torch.float64), reference(dtype)
        assert_within_naive_error(f"out of sequence {b}", out[None, rows], exact, naive, dtype)
        assert_within_naive_error(f"lse of sequence {b}", lse[None, :, rows], exact_lse, naive_lse, dtype)


def test_a_paged_varlen_call_has_no_backward():
    """Inference only: the forward runs on inputs that require grad (a model in eval mode without
    no_grad), and backward says why it cannot run instead of returning wrong gradients."""
    q = torch.randn(5, 2, 16, device=DEVICE, dtype=torch.float16, requires_grad=True)
    k_cache = torch.randn(4, 16, 2, 16, device=DEVICE, dtype=torch.float16)
    cu = torch.tensor([0, 5], dtype=torch.int32, device=DEVICE)
    table = torch.tensor([[2, 0]], dtype=torch.int32, device=DEVICE)
    out = flash_attn_varlen_func(q, k_cache, k_cache, cu, torch.tensor([0, 20], dtype=torch.int32, device=DEVICE),
                                 5, 20, block_table=table, causal=True)
    with pytest.raises(NotImplementedError, match="block_table .* has no backward"):
        out.sum().backward()


@pytest.mark.parametrize("call,message", [
    (lambda q, kc, cu, cuk, t: flash_attn_varlen_func(q, kc, kc, cu, cuk * 6, 5, 120, block_table=t),
     r"key counts \(cu_seqlens_k differences or seqused_k\) must fit the cache: each in \[0, 32\] \(the rows "
     r"block_table lists per sequence: 2 pages of 16\), got 120 to 120"),
    (lambda q, kc, cu, cuk, t: flash_attn_varlen_func(q, kc, kc, cu, cuk, 5, 20, block_table=t + 3),
     r"block_table entries must be page indices in \[0, 4\)"),
    (lambda q, kc, cu, cuk, t: flash_attn_varlen_func(q, kc, kc, cu, cuk, 5, 20, block_table=t.long()),
     "block_table must be an int32 tensor"),
    (lambda q, kc, cu, cuk, t: flash_attn_varlen_func(q, kc[0], kc[0], cu, cuk, 5, 20, block_table=t),
     r"k must be a 4-D cache \(num_pages, page_size, nheads_k, head_dim\)"),
    (lambda q, kc, cu, cuk, t: flash_attn_varlen_func(q, kc, kc.float(), cu, cuk, 5, 20, block_table=t),
     "must have one shape and dtype"),
    (lambda q, kc, cu, cuk, t: flash_attn_varlen_func(q, kc.transpose(1, 3).contiguous().transpose(1, 3), kc, cu, cuk,
                                                      5, 20, block_table=t), "k must have a contiguous last dimension"),
    (lambda q, kc, cu, cuk, t: flash_attn_varlen_func(q, kc[:, :0], kc[:, :0], cu, cuk * 0, 5, 20, block_table=t),
     "page_size >= 1"),
    (lambda q, kc, cu, cuk, t: flash_attn_varlen_func(q, kc, kc, cu, cuk, 5, 20, block_table=t,
                                                      rotary=fa.Rotary()), "keys already encoded"),
    (lambda q, kc, cu, cuk, t: flash_attn_varlen_func(q, kc, kc, cu, cuk, 5, 20, block_table=t, dropout_p=0.1),
     "dropout_p must be 0 with block_table"),
    (lambda q, kc, cu, cuk, t: flash_attn_varlen_func(q, kc[0], kc[0], cu, cuk, 5, 20, num_splits=2),
     "pass them with block_table only"),
    (lambda q, kc, cu, cuk, t: flash_attn_varlen_func(q, kc, kc, cu, cuk, 5, 20, block_table=t, num_splits=-1),
     "num_splits must be an int >= 0"),
    (lambda q, kc, cu, cuk, t: flash_attn_varlen_func(q, kc, kc, cu, cuk, 5, 20, block_table=t, seqused_k=cuk[1:]),
     "cu_seqlens_k or seqused_k with block_table, not both"),
    (lambda q, kc, cu, cuk, t: flash_attn_varlen_func(q, kc, kc, cu, None, 5, 20, block_table=t,
                                                      seqused_k=cuk[1:] - 30),
     r"key counts .* must fit the cache: each in \[0, 32\] .* got -10 to -10"),
])
def test_bad_paged_varlen_arguments_are_named(call, message):
    q = torch.randn(5, 2, 16, device=DEVICE, dtype=torch.float16)
    k_cache = torch.randn(4, 16, 2, 16, device=DEVICE, dtype=torch.float16)
    cu = torch.tensor([0, 5], dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match=message):
        call(q, k_cache, cu, torch.tensor([0, 20], dtype=torch.int32, device=DEVICE),
             torch.tensor([[2, 0]], dtype=torch.int32, device=DEVICE))


@st.composite
def paged_batches(draw):
    """A random packed batch against a paged cache: 1-4 sequences of 0-20 queries and 0-70 keys (a
    sequence may have more queries than keys), page sizes 1-32, GQA, causal / window, split-K, GQA
    packing on or off, key counts as cu_seqlens_k or seqused_k."""
    batch, page_size = draw(st.integers(1, 4)), draw(st.sampled_from([1, 3, 16, 32]))
    lens_k = [draw(st.integers(0, 70)) for _ in range(batch)]
    lens_q = [draw(st.integers(0, 20)) for _ in range(batch)]
    return dict(lens_q=lens_q, lens_k=lens_k, page_size=page_size, group=draw(st.sampled_from([1, 2, 4])),
                causal=draw(st.booleans()), window=draw(st.sampled_from([(-1, -1), (7, 0), (3, 5)])),
                num_splits=draw(st.integers(1, 4)), pack_gqa=draw(st.sampled_from([None, False, True])),
                seqused_k=draw(st.booleans()), seed=draw(st.integers(0, 2**16)))


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(paged_batches())
def test_random_paged_batches_match_reference(case):
    """The Triton kernels on random packed batches against scattered pages, per sequence against the
    float64 reference on its keys gathered from the pages."""
    dtype, hk, d = torch.float16, 2, 32
    gen = torch.Generator().manual_seed(case["seed"])
    rand = lambda *shape: torch.randn(*shape, generator=gen).to(DEVICE, dtype)  # noqa: E731
    lens_q, lens_k, page_size = case["lens_q"], case["lens_k"], case["page_size"]
    batch, max_pages = len(lens_q), max(1, -(-max(lens_k) // page_size))
    pages = batch * max_pages + 1
    k_cache, v_cache = rand(pages, page_size, hk, d), rand(pages, page_size, hk, d)
    table = torch.randperm(pages, generator=gen)[:batch * max_pages].reshape(batch, max_pages).to(DEVICE, torch.int32)
    q = rand(sum(lens_q), hk * case["group"], d)
    cu_q = _cu(lens_q)
    # The key counts as cu_seqlens_k, or as seqused_k (FlashAttention 3's alternative with a cache).
    lengths_k = dict(seqused_k=torch.tensor(lens_k, dtype=torch.int32, device=DEVICE)) if case["seqused_k"] else {}
    with fa.poisoned_outputs():
        out = flash_attn_varlen_func(q, k_cache, v_cache, cu_q, None if lengths_k else _cu(lens_k), max(lens_q),
                                     max(lens_k), block_table=table, causal=case["causal"], window_size=case["window"],
                                     **lengths_k,
                                     num_splits=case["num_splits"], pack_gqa=case["pack_gqa"], backend="triton")
    keys = k_cache[table.long()].reshape(batch, -1, hk, d)
    values = v_cache[table.long()].reshape(batch, -1, hk, d)
    for b, nk in enumerate(lens_k):
        rows = slice(int(cu_q[b]), int(cu_q[b + 1]))

        def reference(dt):
            return fa.reference.attention(q[None, rows], keys[b:b + 1, :nk], values[b:b + 1, :nk],
                                          causal=case["causal"], window_size=case["window"], compute_dtype=dt)

        assert_within_naive_error(f"out of sequence {b}", out[None, rows], reference(torch.float64),
                                  reference(dtype), dtype)


@pytest.mark.parametrize("options", ["causal_rope", "softcap_alibi", "window"])
def test_per_sequence_backends_batch_equal_lengths(request, monkeypatch, without_cpu_kernels, options):
    """Backends without variable-length kernels (PerSequence) run the sequences of one (query, key) length
    as one dense batch: interleaved repeats of three lengths (one group scattered, one a block, one of a
    single sequence) give each sequence's reference results, in as many calls as distinct lengths."""
    from flashattn_py.backends import torch_backend

    calls = []
    forward = torch_backend.BACKEND.forward
    counting = dataclasses.replace(torch_backend.BACKEND,
                                   forward=lambda q, *a: calls.append(q.shape[0]) or forward(q, *a))
    monkeypatch.setattr(torch_backend, "BACKEND", counting)
    lens_q, lens_k = [5, 9, 9, 5, 0, 5, 12], [7, 9, 9, 7, 3, 7, 2]
    seed = seed_of(request)
    opts = OPTIONS[options](len(lens_q), 4, torch.Generator().manual_seed(seed))
    _check_packed_call(flash_attn_varlen_func, lens_q, lens_k, 4, 2, torch.float32, seed, backend="torch", **opts)
    assert sorted(calls) == [1, 1, 2, 3]  # (5, 7) x3, (9, 9) x2, (0, 3), (12, 2)
