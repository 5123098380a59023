"""flash_attn_with_kvcache: the cache contents after the append and the output, against the float64
reference built by gathering each sequence's keys; and a greedy decoding loop against recomputing
full attention every step."""
import dataclasses

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flashattn_py as fa
from flashattn_py.decoding import flash_attn_with_kvcache
from flashattn_py.semantics import positional

from tolerance import DEVICE, assert_within_naive_error, seed_of

BACKENDS = ["triton", "cuda", "torch"]  # cuda: GPU only (skips with the reason elsewhere)
H, HK, D = 4, 2, 32


def _tables(rotary_dim, length=128):
    angles = torch.arange(length)[:, None] * (1e-2 * torch.arange(1, rotary_dim // 2 + 1))[None]
    return angles.cos().float().to(DEVICE), angles.sin().float().to(DEVICE)


def _rotate(x, cos, sin, positions, interleaved, dtype):
    """x rotated at positions (batch, seqlen) in `dtype` (the reference's own math)."""
    x = x.to(dtype)
    return positional.rotate(x, cos.to(dtype)[positions], sin.to(dtype)[positions], 2 * cos.shape[1], interleaved)


# name: (page_size or None, cache_batch_idx, new tokens, seqlen_q, rotary, causal, num_splits, cache_leftpad)
CASES = {
    "paged16_decode_rope_neox": (16, False, 1, 1, "neox", True, 1, False),
    "paged16_decode_split3": (16, False, 1, 1, "gptj", True, 3, False),
    "paged64_prefill_chunk": (64, False, 5, 5, "gptj", True, 1, False),
    "paged16_no_new_noncausal": (16, False, 0, 2, None, False, 2, False),
    "dense_decode_rope": (None, False, 1, 1, "neox", True, 1, False),
    "dense_batch_idx_new3": (None, True, 3, 3, "gptj", True, 1, False),
    "dense_noncausal_rope_one_position": (None, False, 2, 2, "neox", False, 1, False),
    "dense_leftpad_decode_rope": (None, False, 1, 1, "neox", True, 1, True),
    "dense_batch_idx_leftpad_chunk": (None, True, 3, 3, "gptj", True, 1, True),
    "paged16_leftpad_split3": (16, False, 1, 1, "gptj", True, 3, True),
    "paged16_leftpad_no_new_noncausal": (16, False, 0, 2, None, False, 2, True),
    "paged5_leftpad_split3_d59": (5, False, 2, 2, "neox", True, 3, True),
    "dense_batch_idx_new3_d12": (None, True, 3, 3, "gptj", True, 1, False),
}
# Head dims other than D (any in [1, 256]; odd ones: appended in place, RoPE on an even rotary_dim).
CASE_HEAD_DIMS = {"paged5_leftpad_split3_d59": 59, "dense_batch_idx_new3_d12": 12}
# Left padding of the sequences below (cache_seqlens 0, 1, 37): none; all of the one cached token (only
# the new ones are seen); 35 of 37, past the first key block of every tile config.
LEFTPAD = [0, 1, 35]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CASES)
def test_append_and_attend_match_reference(request, backend, dtype, case):
    page_size, use_batch_idx, new, seqlen_q, rope, causal, splits, use_leftpad = CASES[case]
    d = CASE_HEAD_DIMS.get(case, D)
    gen = torch.Generator().manual_seed(seed_of(request))
    rand = lambda *shape: torch.randn(*shape, generator=gen).to(DEVICE, dtype)  # noqa: E731
    batch, capacity = 3, 64
    seqlens = torch.tensor([0, 1, 37], dtype=torch.int32, device=DEVICE)  # empty, one token, longer
    if page_size is None:
        rows = 5 if use_batch_idx else batch
        k_cache, v_cache = rand(rows, capacity, HK, d), rand(rows, capacity, HK, d)
        batch_idx = torch.tensor([4, 0, 2], dtype=torch.int32, device=DEVICE) if use_batch_idx else None
        block_table = None
    else:
        pages_per_seq = -(-capacity // page_size)
        k_cache, v_cache = (rand(batch * pages_per_seq + 3, page_size, HK, d),
                            rand(batch * pages_per_seq + 3, page_size, HK, d))
        perm = torch.randperm(batch * pages_per_seq + 3, generator=gen)[:batch * pages_per_seq]
        block_table = perm.reshape(batch, pages_per_seq).to(DEVICE, torch.int32)
        batch_idx = None
    q = rand(batch, seqlen_q, H, d)
    k_new, v_new = (rand(batch, new, HK, d), rand(batch, new, HK, d)) if new else (None, None)
    cos, sin = _tables(min(16, d - d % 2)) if rope else (None, None)
    leftpad = torch.tensor(LEFTPAD if use_leftpad else [0] * batch, dtype=torch.int32, device=DEVICE)
    for b, first in enumerate(leftpad.tolist()):  # padding may hold anything: NaN must not reach the output
        slots = torch.arange(first, device=DEVICE)
        if page_size is None:
            rows = batch_idx[b].long() if batch_idx is not None else b
            k_cache[rows, slots], v_cache[rows, slots] = float("nan"), float("nan")
        else:
            pages = block_table[b].long()[slots // page_size]
            k_cache[pages, slots % page_size], v_cache[pages, slots % page_size] = float("nan"), float("nan")
    before_k, before_v = k_cache.clone(), v_cache.clone()

    with fa.poisoned_outputs():
        out, lse = flash_attn_with_kvcache(q, k_cache, v_cache, k_new, v_new, cos, sin, seqlens, batch_idx,
                                           cache_leftpad=leftpad if use_leftpad else None, block_table=block_table,
                                           causal=causal, rotary_interleaved=rope == "gptj",
                                           num_splits=splits, return_softmax_lse=True, backend=backend)

    def dense(cache):
        if block_table is not None:
            return cache[block_table.long()].reshape(batch, -1, HK, d)
        return cache[batch_idx.long()] if batch_idx is not None else cache

    k_after, v_after, k_before, v_before = dense(k_cache), dense(v_cache), dense(before_k), dense(before_v)
    positions_new = seqlens.long()[:, None] + torch.arange(new, device=DEVICE)
    for b in range(batch):
        n = int(seqlens[b])
        # Old tokens untouched; new ones appended (rotated at their absolute positions).
        unchanged = dict(rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(k_after[b, :n], k_before[b, :n], **unchanged)
        torch.testing.assert_close(v_after[b, :n], v_before[b, :n], **unchanged)
        torch.testing.assert_close(k_after[b, n + new:], k_before[b, n + new:], **unchanged,
                                   msg="the cache past the new tokens changed")
        if new:
            assert torch.equal(v_after[b, n:n + new], v_new[b])
            exact_k = _rotate(k_new, cos, sin, positions_new, rope == "gptj", torch.float64)[b] if rope else k_new[b]
            naive_k = _rotate(k_new, cos, sin, positions_new, rope == "gptj", dtype)[b] if rope else k_new[b]
            assert_within_naive_error("appended k", k_after[b, n:n + new], exact_k, naive_k, dtype)
    # The output: each sequence's keys (old cache + new, rotated; past the left padding) against q
    # rotated at its positions (counted from cache slot 0, padding included, as the new keys are).
    per_token = causal
    q_positions = seqlens.long()[:, None] + (torch.arange(seqlen_q, device=DEVICE) if per_token else 0)
    q_positions = q_positions.expand(batch, seqlen_q)
    for b in range(batch):
        n, first = int(seqlens[b]) + new, int(leftpad[b])

        def reference(dt):
            keys = k_before[b:b + 1, :n].to(dt).clone()
            if new:
                keys[:, n - new:] = (_rotate(k_new, cos, sin, positions_new, rope == "gptj", dt) if rope
                                     else k_new.to(dt))[b:b + 1]
            values = (torch.cat([v_before[b:b + 1, :n - new], v_new[b:b + 1]], dim=1).to(dt) if new
                      else v_before[b:b + 1, :n].to(dt))
            query = _rotate(q, cos, sin, q_positions, rope == "gptj", dt)[b:b + 1] if rope else q[b:b + 1].to(dt)
            return fa.reference.attention(query, keys[:, first:], values[:, first:], causal=causal, return_lse=True,
                                          compute_dtype=dt)

        (exact, exact_lse), (naive, naive_lse) = reference(torch.float64), reference(dtype)
        assert_within_naive_error(f"out[{b}]", out[b:b + 1], exact, naive, dtype)
        assert_within_naive_error(f"lse[{b}]", lse[b:b + 1], exact_lse, naive_lse, dtype)


@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("page_size", [None, 16])
@pytest.mark.parametrize("num_splits", [1, 2, 5])
def test_split_k_over_long_caches_matches_reference(request, backend, page_size, num_splits):
    """Caches long enough that every split gets several key blocks (and, at 5 splits, the shortest
    sequence leaves splits empty): the partials merged through their lse equal one pass."""
    dtype = torch.float16
    gen = torch.Generator().manual_seed(seed_of(request))
    rand = lambda *shape: torch.randn(*shape, generator=gen).to(DEVICE, dtype)  # noqa: E731
    batch, capacity = 3, 320
    seqlens = torch.tensor([320, 129, 1], dtype=torch.int32, device=DEVICE)
    if page_size is None:
        k_cache, v_cache, block_table = rand(batch, capacity, HK, D), rand(batch, capacity, HK, D), None
    else:
        pages = batch * capacity // page_size
        k_cache, v_cache = rand(pages, page_size, HK, D), rand(pages, page_size, HK, D)
        block_table = torch.randperm(pages, generator=gen).reshape(batch, -1).to(DEVICE, torch.int32)
    q = rand(batch, 1, H, D)
    with fa.poisoned_outputs():
        out, lse = flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqlens, block_table=block_table,
                                           num_splits=num_splits, return_softmax_lse=True, backend=backend)
    keys = k_cache if block_table is None else k_cache[block_table.long()].reshape(batch, capacity, HK, D)
    values = v_cache if block_table is None else v_cache[block_table.long()].reshape(batch, capacity, HK, D)
    for b, n in enumerate(seqlens.tolist()):
        def reference(dt):
            return fa.reference.attention(q[b:b + 1], keys[b:b + 1, :n], values[b:b + 1, :n], return_lse=True,
                                          compute_dtype=dt)

        (exact, exact_lse), (naive, naive_lse) = reference(torch.float64), reference(dtype)
        assert_within_naive_error(f"out[{b}]", out[b:b + 1], exact, naive, dtype)
        assert_within_naive_error(f"lse[{b}]", lse[b:b + 1], exact_lse, naive_lse, dtype)


@pytest.mark.parametrize("pack_gqa", [None, True, False])
@pytest.mark.parametrize("seqlen_q,group", [(1, 4), (3, 8), (7, 2)])
def test_pack_gqa_matches_reference(request, pack_gqa, seqlen_q, group):
    """The Triton forward with the query heads of each KV head packed into one tile's rows (and
    without): per-row heads reach the ALiBi slopes, the output / lse rows and the split-K partials."""
    dtype, batch, capacity, hk = torch.float16, 2, 100, 2
    gen = torch.Generator().manual_seed(seed_of(request))
    rand = lambda *shape: torch.randn(*shape, generator=gen).to(DEVICE, dtype)  # noqa: E731
    k_cache, v_cache = rand(batch, capacity, hk, D), rand(batch, capacity, hk, D)
    q = rand(batch, seqlen_q, hk * group, D)
    slopes = torch.rand(batch, hk * group, generator=gen).to(DEVICE)
    seqlens = torch.tensor([capacity, 45], dtype=torch.int32, device=DEVICE)
    options = dict(causal=True, window_size=(60, 0), softcap=5.0)
    with fa.poisoned_outputs():
        out, lse = flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqlens, alibi_slopes=slopes,
                                           num_splits=2, pack_gqa=pack_gqa, return_softmax_lse=True,
                                           backend="triton", **options)
    for b, n in enumerate(seqlens.tolist()):
        def reference(dt):
            return fa.reference.attention(q[b:b + 1], k_cache[b:b + 1, :n], v_cache[b:b + 1, :n], return_lse=True,
                                          alibi_slopes=slopes[b:b + 1], compute_dtype=dt, **options)

        (exact, exact_lse), (naive, naive_lse) = reference(torch.float64), reference(dtype)
        assert_within_naive_error(f"out[{b}]", out[b:b + 1], exact, naive, dtype)
        assert_within_naive_error(f"lse[{b}]", lse[b:b + 1], exact_lse, naive_lse, dtype)

FORCED_PACK_OPTIONS = {  # what the packed tile broadcasts per row, beyond a decoding step's options
    "dropout": dict(causal=True, dropout_p=0.3),
    "rope_in_kernel": dict(causal=True, rotary=fa.Rotary(), pe_k_strategy="in_kernel"),
    "sinusoidal": dict(sinusoidal=fa.Sinusoidal(), pe_k_strategy="in_kernel"),
    "bias_alibi_softcap": dict(softcap=4.0, window_size=(9, 2)),
}


@pytest.mark.parametrize("options", FORCED_PACK_OPTIONS)
def test_forced_pack_gqa_equals_the_unpacked_forward(request, options):
    """pack_gqa=True on calls the default leaves unpacked (in-kernel encodings, dropout, bias): per-row
    positions, dropout counters, bias rows and ALiBi slopes give the unpacked forward's result."""
    from flashattn_py.backends import triton_backend
    from flashattn_py.validation.attention import attention_params

    dtype, gen = torch.float16, torch.Generator().manual_seed(seed_of(request))
    q, k, v = (torch.randn(*shape, generator=gen).to(DEVICE, dtype) for shape in
               ((2, 5, 8, D), (2, 40, 2, D), (2, 40, 2, D)))
    options = dict(FORCED_PACK_OPTIONS[options])
    if "softcap" in options:
        options.update(alibi_slopes=torch.rand(2, 8, generator=gen).to(DEVICE),
                       attn_bias=torch.randn(2, 8, 5, 40, generator=gen).to(DEVICE, dtype))
    params = attention_params(q, k, v, **options)
    packed, unpacked = (triton_backend.BACKEND.forward(q, k, v, dataclasses.replace(params, pack_gqa=pack))[:2]
                        for pack in (True, False))
    torch.testing.assert_close(packed, unpacked)

@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_strided_index_tensors_are_read_by_value(request, backend):
    """cache_leftpad, cache_seqlens and block_table given as strided views (columns of larger tensors)
    mean what their values say: kernels that index them with unit stride get contiguous copies."""
    dtype, batch, page = torch.float16, 3, 16
    gen = torch.Generator().manual_seed(seed_of(request))
    k_cache, v_cache = (torch.randn(12, page, HK, D, generator=gen).to(DEVICE, dtype) for _ in range(2))
    table = torch.randperm(12, generator=gen).reshape(batch, 4).to(DEVICE, torch.int32)
    q = torch.randn(batch, 1, H, D, generator=gen).to(DEVICE, dtype)
    seqlens, leftpad = torch.tensor([60, 17, 33], dtype=torch.int32), torch.tensor([20, 0, 31], dtype=torch.int32)

    def strided(t):  # the same values, every other element of a larger tensor
        wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=DEVICE)
        wide[..., ::2] = t.to(DEVICE)
        return wide[..., ::2]

    def call(view):
        return flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=view(seqlens), cache_leftpad=view(leftpad),
                                       block_table=view(table), causal=True, backend=backend)

    assert not strided(table).is_contiguous()
    torch.testing.assert_close(call(strided), call(lambda t: t.to(DEVICE)), rtol=0, atol=0)

@pytest.mark.parametrize("backend", ["triton", "cuda", "torch"])
@pytest.mark.parametrize("entry", ["flash_attn_with_kvcache", "flash_attn_varlen_func"])
def test_block_table_columns_past_the_used_pages_may_hold_anything(request, backend, entry):
    """Serving engines pad block tables with -1 (FlashAttention never reads those columns): every backend
    gives the result of a table padded with valid pages, split-K and the append included, and an entry
    of a page in use is still checked."""
    dtype, page, batch = torch.float16, 16, 3
    gen = torch.Generator().manual_seed(seed_of(request))
    rand = lambda *shape: torch.randn(*shape, generator=gen).to(DEVICE, dtype)  # noqa: E731
    k_cache, v_cache = rand(10, page, HK, D), rand(10, page, HK, D)
    clean = torch.randperm(10, generator=gen)[:9].reshape(batch, 3).to(DEVICE, torch.int32)
    q, k_new, v_new = rand(batch, 1, H, D), rand(batch, 1, HK, D), rand(batch, 1, HK, D)
    seqlens = torch.tensor([40, 3, 0], dtype=torch.int32, device=DEVICE)
    if entry == "flash_attn_with_kvcache":  # 41, 4 and 1 keys with the new token: 3, 1 and 1 pages in use
        used_pages = [3, 1, 1]

        def call(table, caches):
            out = flash_attn_with_kvcache(q, *caches, k_new, v_new, cache_seqlens=seqlens, block_table=table,
                                          causal=True, num_splits=3, backend=backend)
            return out, *caches
    else:  # one query per sequence against 40, 3 and 0 keys: 3, 1 and 0 pages in use
        used_pages = [3, 1, 0]
        cu_q = torch.arange(batch + 1, dtype=torch.int32, device=DEVICE)

        def call(table, caches):
            cu_k = torch.cat([seqlens.new_zeros(1), seqlens.cumsum(0, dtype=torch.int32)])
            return (fa.flash_attn_varlen_func(q[:, 0], *caches, cu_q, cu_k, 1, 40, block_table=table, causal=True,
                                              num_splits=3, backend=backend),)

    padded = clean.clone()
    for b, used in enumerate(used_pages):
        padded[b, used:] = torch.tensor([-1, torch.iinfo(torch.int32).max, -7], dtype=torch.int32)[:3 - used]
    with fa.poisoned_outputs():
        expected = call(clean, (k_cache.clone(), v_cache.clone()))
        got = call(padded, (k_cache.clone(), v_cache.clone()))
    for name, g, e in zip(("out", "k_cache", "v_cache"), got, expected):
        assert torch.equal(g, e), f"{name} differs with padding entries in the unused columns"
    padded[1, 0] = -1  # a page in use
    with pytest.raises(ValueError, match="block_table entries must be page indices"):
        call(padded, (k_cache.clone(), v_cache.clone()))


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("interleaved", [False, True])
def test_a_rotary_spec_equals_its_tables(request, backend, interleaved):
    """rotary=Rotary(base=, rotary_dim=) (angles from the base) rotates the new keys and the queries
    as rotary_cos / rotary_sin tables of the same angles do."""
    dtype, gen = torch.float32, torch.Generator().manual_seed(seed_of(request))
    rand = lambda *shape: torch.randn(*shape, generator=gen).to(DEVICE, dtype)  # noqa: E731
    q, k_new, v_new = rand(2, 3, H, D), rand(2, 3, HK, D), rand(2, 3, HK, D)
    seqlens = torch.tensor([5, 40], dtype=torch.int32, device=DEVICE)
    angles = torch.arange(64, dtype=torch.float64)[:, None] * 500.0 ** (-torch.arange(0, 16, 2) / 16)[None]
    cos, sin = angles.cos().float().to(DEVICE), angles.sin().float().to(DEVICE)
    results = []
    for tables in (True, False):
        k_cache, v_cache = torch.zeros(2, 64, HK, D, device=DEVICE), torch.zeros(2, 64, HK, D, device=DEVICE)
        rope = dict(rotary_cos=cos, rotary_sin=sin, rotary_interleaved=interleaved) if tables else \
            dict(rotary=fa.Rotary(base=500.0, rotary_dim=16, interleaved=interleaved))
        out = flash_attn_with_kvcache(q, k_cache, v_cache, k_new, v_new, cache_seqlens=seqlens, causal=True,
                                      backend=backend, **rope)
        results.append((out, k_cache))
    for from_tables, from_spec in zip(*results):
        torch.testing.assert_close(from_spec, from_tables, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="not both"):
        flash_attn_with_kvcache(q, k_cache, v_cache, rotary_cos=cos, rotary_sin=sin, rotary=fa.Rotary())

def test_a_decoding_step_reads_device_values_once(monkeypatch):
    """Every value check of a step (lengths fit the cache, pages exist, rotary tables reach the last
    position) is one device-to-host copy: each extra one would make a decoding loop wait for the GPU."""
    reads = []
    for name in ("tolist", "item", "__int__", "__bool__", "__index__", "__float__"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _f=original, _n=name, **kw: (reads.append(_n),
                                                                                                 _f(self, *a, **kw))[1])
    gen = torch.Generator().manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, generator=gen).to(DEVICE, torch.float16)  # noqa: E731
    k_cache, v_cache = rand(8, 16, HK, D), rand(8, 16, HK, D)
    table = torch.arange(8, dtype=torch.int32, device=DEVICE).reshape(2, 4)
    cos, sin = _tables(16)
    reads.clear()
    flash_attn_with_kvcache(rand(2, 1, H, D), k_cache, v_cache, rand(2, 1, HK, D), rand(2, 1, HK, D), cos, sin,
                            torch.tensor([5, 9], dtype=torch.int32, device=DEVICE), block_table=table, causal=True,
                            num_splits=2, backend="triton")
    assert reads == ["tolist"], f"host reads of device values in one step: {reads}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("entry", ["flash_attn_with_kvcache", "flash_attn_varlen_func"])
def test_a_decoding_step_replays_from_a_cuda_graph(backend, entry):
    """Serving loops capture the decoding step once and replay it: no host read may happen inside
    (value checks are skipped while capturing), and a replay with new inputs equals an eager call.
    Through the KV-cache call, and the packed call against the pages (one query per sequence)."""
    gen = torch.Generator().manual_seed(1)
    rand = lambda *shape: torch.randn(*shape, generator=gen).to(DEVICE, torch.float16)  # noqa: E731
    k_cache, v_cache = rand(16, 16, HK, D), rand(16, 16, HK, D)
    table = torch.randperm(16, generator=gen).reshape(2, 8).to(DEVICE, torch.int32)
    q, seqlens = rand(2, 1, H, D), torch.tensor([7, 100], dtype=torch.int32, device=DEVICE)

    cu_q = torch.tensor([0, 1, 2], dtype=torch.int32, device=DEVICE)

    def step():
        if entry == "flash_attn_with_kvcache":
            return flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqlens, block_table=table,
                                           causal=True, num_splits=2, backend=backend)
        cu_k = torch.cat([seqlens.new_zeros(1), seqlens.cumsum(0, dtype=torch.int32)])  # on the device, captured
        return fa.flash_attn_varlen_func(q[:, 0], k_cache, v_cache, cu_q, cu_k, 1, 128, block_table=table,
                                         causal=True, num_splits=2, backend=backend)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # compiles the kernels outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    q.copy_(rand(2, 1, H, D))
    seqlens.copy_(torch.tensor([90, 3], dtype=torch.int32))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, step())


def test_rotary_tables_must_reach_the_step_positions():
    k_cache = torch.zeros(2, 64, HK, D, dtype=torch.float16, device=DEVICE)
    cos, sin = _tables(16, length=40)
    with pytest.raises(ValueError, match="reach position 40 but the rotary cos/sin tables have 40 rows"):
        flash_attn_with_kvcache(torch.zeros(2, 1, H, D, dtype=torch.float16, device=DEVICE), k_cache, k_cache,
                                rotary_cos=cos, rotary_sin=sin, cache_seqlens=torch.tensor([3, 40], dtype=torch.int32,
                                                                                           device=DEVICE), causal=True)


@pytest.mark.parametrize("call,error,message", [
    (lambda q, kc, vc, s: flash_attn_with_kvcache(q, kc, vc, cache_seqlens=s + 60, k=q[:, :, :2], v=q[:, :, :2]),
     ValueError, "must fit the cache"),
    (lambda q, kc, vc, s: flash_attn_with_kvcache(q, kc, vc, cache_seqlens=s.long()), ValueError, "int32"),
    (lambda q, kc, vc, s: flash_attn_with_kvcache(q, kc[:1], vc[:1], cache_seqlens=s), ValueError, "cache_batch_idx"),
    (lambda q, kc, vc, s: flash_attn_with_kvcache(q, kc, vc, k=q[:, :, :2]), ValueError, "together"),
    (lambda q, kc, vc, s: flash_attn_with_kvcache(q, kc, vc, cache_seqlens=s, cache_leftpad=s + 1), ValueError,
     r"cache_leftpad must be in \[0, cache_seqlens \+ seqlen_new\]"),
    (lambda q, kc, vc, s: flash_attn_with_kvcache(q, kc, vc, cache_seqlens=s, cache_leftpad=s - 4), ValueError,
     "cache_leftpad must be in"),
    (lambda q, kc, vc, s: flash_attn_with_kvcache(q, kc, vc, cache_leftpad=s[:1]), ValueError, "cache_leftpad"),
    (lambda q, kc, vc, s: flash_attn_with_kvcache(q, kc, vc, pack_gqa=1), TypeError, "pack_gqa must be None or a bool"),
    (lambda q, kc, vc, s: flash_attn_with_kvcache(q, kc, vc.float()), ValueError, "must have one shape and dtype"),
    (lambda q, kc, vc, s: flash_attn_with_kvcache(q, kc, vc, block_table=(s * 3 - 9).reshape(2, 1)),
     ValueError, "block_table entries must be page indices"),
    (lambda q, kc, vc, s: flash_attn_with_kvcache(q, kc, vc.transpose(1, 3).contiguous().transpose(1, 3),
                                                  cache_seqlens=s), ValueError, "v_cache must have a contiguous last"),
    (lambda q, kc, vc, s: flash_attn_with_kvcache(q, kc, vc, k=q, v=q), ValueError,
     "cache_seqlens is required when new k, v are appended"),
])
def test_bad_cache_arguments_are_named(call, error, message):
    q = torch.randn(2, 1, 2, 16, dtype=torch.float16)
    kc, vc = torch.randn(2, 64, 2, 16, dtype=torch.float16), torch.randn(2, 64, 2, 16, dtype=torch.float16)
    with pytest.raises(error, match=message):
        call(q.to(DEVICE), kc.to(DEVICE), vc.to(DEVICE), torch.tensor([3, 5], dtype=torch.int32, device=DEVICE))


class TinyDecoder(torch.nn.Module):
    """One Llama-like attention layer between an embedding and an LM head (enough to test caching)."""

    def __init__(self, vocab=50, hidden=64, heads=4, kv_heads=2):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, hidden // heads
        self.embed = torch.nn.Embedding(vocab, hidden)
        self.q = torch.nn.Linear(hidden, hidden, bias=False)
        self.k = torch.nn.Linear(hidden, kv_heads * self.head_dim, bias=False)
        self.v = torch.nn.Linear(hidden, kv_heads * self.head_dim, bias=False)
        self.o = torch.nn.Linear(hidden, hidden, bias=False)
        self.head = torch.nn.Linear(hidden, vocab, bias=False)
        angles = torch.arange(256)[:, None] * (10000.0 ** (-torch.arange(0, self.head_dim, 2) / self.head_dim))[None]
        self.cos, self.sin = angles.cos().float(), angles.sin().float()

    def project(self, tokens):
        x = self.embed(tokens)
        b, s, _ = x.shape
        return (x, self.q(x).view(b, s, self.heads, -1), self.k(x).view(b, s, self.kv_heads, -1),
                self.v(x).view(b, s, self.kv_heads, -1))

    def logits(self, x, attn):
        return self.head(x + self.o(attn.reshape(*attn.shape[:2], -1)))


def _greedy_full_recompute(model, rotary, tokens, steps, backend):
    """tokens followed by `steps` greedy tokens, recomputing full causal attention at every step."""
    for _ in range(steps):
        x, q, k, v = model.project(tokens)
        attn = fa.attention(q, k, v, causal=True, rotary=rotary, backend=backend)
        tokens = torch.cat([tokens, model.logits(x, attn)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return tokens


def _greedy_with_cache(model, prompt, steps, page_size, backend, cache_leftpad=None):
    """(batch, steps) greedy tokens: the prompt prefilled into an empty cache (contiguous, or scattered
    pages of page_size), then one token per step through flash_attn_with_kvcache."""
    batch, capacity = prompt.shape[0], 32
    if page_size is None:
        k_cache, block_table = torch.zeros(batch, capacity, model.kv_heads, model.head_dim, device=DEVICE), None
    else:
        pages = batch * capacity // page_size + 1
        k_cache = torch.zeros(pages, page_size, model.kv_heads, model.head_dim, device=DEVICE)
        block_table = torch.randperm(pages)[:pages - 1].reshape(batch, -1).to(DEVICE, torch.int32)
    v_cache = torch.zeros_like(k_cache)
    seqlens = torch.zeros(batch, dtype=torch.int32, device=DEVICE)
    step_input, generated = prompt, []
    for _ in range(steps):
        x, q, k, v = model.project(step_input)
        attn = flash_attn_with_kvcache(q, k_cache, v_cache, k, v, model.cos.to(DEVICE), model.sin.to(DEVICE), seqlens,
                                       cache_leftpad=cache_leftpad, block_table=block_table, causal=True,
                                       rotary_interleaved=True, backend=backend)
        seqlens = seqlens + step_input.shape[1]
        step_input = model.logits(x, attn)[:, -1].argmax(-1, keepdim=True)
        generated.append(step_input)
    return torch.cat(generated, dim=1)


@pytest.mark.parametrize("backend", ["triton", "torch"])  # an fp32 model: the cuda backend is fp16/bf16 only
@pytest.mark.parametrize("page_size", [None, 16])
def test_greedy_decoding_with_the_cache_equals_full_recompute(backend, page_size):
    torch.manual_seed(0)
    model = TinyDecoder().to(DEVICE)
    rotary = fa.Rotary(interleaved=True, cos=model.cos.to(DEVICE), sin=model.sin.to(DEVICE))
    prompt = torch.tensor([[3, 14, 15, 9, 2, 6], [5, 35, 8, 9, 7, 9]], device=DEVICE)
    with torch.no_grad():
        full = _greedy_full_recompute(model, rotary, prompt, 8, backend)[:, prompt.shape[1]:]
        cached = _greedy_with_cache(model, prompt, 8, page_size, backend)
    assert torch.equal(cached, full), f"cached decoding {cached.tolist()} != full recompute {full.tolist()}"


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("page_size", [None, 16])
def test_left_padded_batch_decodes_like_each_prompt_alone(backend, page_size):
    """Batched generation from prompts of different lengths, left-padded to one length (as a
    tokenizer with padding_side="left" gives them): with cache_leftpad the padding is never attended
    and the greedy tokens equal decoding each prompt alone. Rotary positions count from slot 0 of the
    cache, padding included, for keys and queries alike: RoPE sees only their differences."""
    torch.manual_seed(0)
    model = TinyDecoder().to(DEVICE)
    rotary = fa.Rotary(interleaved=True, cos=model.cos.to(DEVICE), sin=model.sin.to(DEVICE))
    prompts, steps, pad = [[3, 14, 15, 9, 2, 6], [5, 35, 8], [7]], 6, 49
    with torch.no_grad():
        model.embed.weight[pad] *= 30  # loud padding: attending it would change the tokens
    width = max(map(len, prompts))
    padded = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=DEVICE)
    leftpad = torch.tensor([width - len(p) for p in prompts], dtype=torch.int32, device=DEVICE)
    with torch.no_grad():
        alone = [_greedy_full_recompute(model, rotary, torch.tensor([p], device=DEVICE), steps, backend)[0, len(p):]
                 .tolist() for p in prompts]
        batched = _greedy_with_cache(model, padded, steps, page_size, backend, cache_leftpad=leftpad).tolist()
    assert batched == alone, f"left-padded batch {batched} != each prompt alone {alone}"


@st.composite
def decoding_steps(draw):
    """A random cache step: contiguous / batch-indexed / paged (any page size), lengths including 0,
    new tokens or none, 1-20 queries (decode and prefill-chunk tiles), GQA, causal / window, split-K,
    left padding or none."""
    batch, group = draw(st.integers(1, 3)), draw(st.sampled_from([1, 2, 4]))
    layout = draw(st.sampled_from(["dense", "batch_idx", "paged"]))
    page_size = draw(st.sampled_from([1, 5, 16, 32])) if layout == "paged" else None
    capacity = draw(st.integers(1, 90))
    new = draw(st.integers(0, min(capacity, 4)))
    seqlens = [draw(st.integers(0, capacity - new)) for _ in range(batch)]
    leftpad = [draw(st.integers(0, n + new)) for n in seqlens] if draw(st.booleans()) else None
    return dict(batch=batch, group=group, layout=layout, page_size=page_size, capacity=capacity, new=new,
                seqlens=seqlens, leftpad=leftpad, seqlen_q=draw(st.integers(1, 20)), causal=draw(st.booleans()),
                window=draw(st.sampled_from([(-1, -1), (8, 0), (3, 5)])), num_splits=draw(st.integers(1, 4)),
                seed=draw(st.integers(0, 2**16)))


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(decoding_steps())
def test_random_cache_steps_match_reference(step):
    """The Triton path (decode tiles, paging, split-K) on random steps against the float64 reference
    of each sequence's gathered keys; the cache holds the appended tokens afterwards."""
    dtype, b = torch.float16, step["batch"]
    gen = torch.Generator().manual_seed(step["seed"])
    rand = lambda *shape: torch.randn(*shape, generator=gen).to(DEVICE, dtype)  # noqa: E731
    capacity, new, page_size = step["capacity"], step["new"], step["page_size"]
    if step["layout"] == "paged":
        pages = -(-capacity // page_size)
        k_cache, v_cache = rand(b * pages + 1, page_size, HK, D), rand(b * pages + 1, page_size, HK, D)
        table = torch.randperm(b * pages + 1, generator=gen)[:b * pages].reshape(b, pages).to(DEVICE, torch.int32)
        batch_idx, rows = None, lambda c: c[table.long()].reshape(b, -1, HK, D)
    else:
        count = b + 2 if step["layout"] == "batch_idx" else b
        k_cache, v_cache = rand(count, capacity, HK, D), rand(count, capacity, HK, D)
        batch_idx = torch.randperm(count, generator=gen)[:b].to(DEVICE, torch.int32) if count > b else None
        table = None
        rows = (lambda c: c[batch_idx.long()]) if batch_idx is not None else (lambda c: c)
    q = rand(b, step["seqlen_q"], HK * step["group"], D)
    k_new, v_new = (rand(b, new, HK, D), rand(b, new, HK, D)) if new else (None, None)
    seqlens = torch.tensor(step["seqlens"], dtype=torch.int32, device=DEVICE)
    leftpad = step["leftpad"]
    with fa.poisoned_outputs():
        out = flash_attn_with_kvcache(q, k_cache, v_cache, k_new, v_new, cache_seqlens=seqlens,
                                      cache_batch_idx=batch_idx,
                                      cache_leftpad=None if leftpad is None else torch.tensor(
                                          leftpad, dtype=torch.int32, device=DEVICE),
                                      block_table=table, causal=step["causal"], window_size=step["window"],
                                      num_splits=step["num_splits"], backend="triton")
    keys, values = rows(k_cache), rows(v_cache)
    for i, n in enumerate(step["seqlens"]):
        if new:
            assert torch.equal(keys[i, n:n + new], k_new[i]) and torch.equal(values[i, n:n + new], v_new[i])

        first = 0 if leftpad is None else leftpad[i]

        def reference(dt):
            return fa.reference.attention(q[i:i + 1], keys[i:i + 1, first:n + new], values[i:i + 1, first:n + new],
                                          causal=step["causal"], window_size=step["window"], compute_dtype=dt)

        assert_within_naive_error(f"out[{i}]", out[i:i + 1], reference(torch.float64), reference(dtype), dtype)
