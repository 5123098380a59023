"""Per-sequence lengths on the CPU path (backends/per_sequence.py over backends/torch_fused.py): cache slots
a sequence does not use may hold anything, NaN included, and never reach its result; a batch of
all-different lengths makes at most one fused kernel call per sequence (no fallback to a slower path)."""
import dataclasses

import pytest
import torch

import flashattn_py as fa
from flashattn_py.backends import torch_backend
from flashattn_py.varlen import flash_attn_varlen_func

from tolerance import DEVICE, assert_within_naive_error, seed_of

pytestmark = pytest.mark.skipif(DEVICE.type != "cpu", reason="the CPU path of per-sequence lengths")

H, HK, D = 4, 2, 16


def _poisoned(cache: torch.Tensor, first: list[int], used: list[int], value: float) -> torch.Tensor:
    """A copy of cache with `value` in the slots sequence b does not use (before first[b], from used[b] on)."""
    cache = cache.clone()
    for b, (lo, hi) in enumerate(zip(first, used)):
        cache[b, :lo] = value
        cache[b, hi:] = value
    return cache


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("seqlen_q,causal", [(1, True), (1, False), (3, True)])
@pytest.mark.parametrize("leftpad", [False, True])
def test_nan_in_unused_cache_slots_changes_nothing(request, fused_calls, dtype, seqlen_q, causal, leftpad):
    """flash_attn_with_kvcache: NaN past cache_seqlens and in the left padding leaves out and lse exactly
    as finite garbage there gives them, and each sequence matches the reference on its own keys."""
    gen = torch.Generator().manual_seed(seed_of(request))
    used = [0, 1, 5, 17, 31, 64, 40, 2]  # all different but two-of-a-kind free: one call per sequence
    first = [0, 0, 2, 9, 0, 30, 1, 1] if leftpad else [0] * len(used)
    batch, capacity = len(used), 64
    q = torch.randn(batch, seqlen_q, H, D, generator=gen).to(dtype)
    k_cache, v_cache = (torch.randn(batch, capacity, HK, D, generator=gen).to(dtype) for _ in range(2))
    seqlens = torch.tensor(used, dtype=torch.int32)
    options = dict(cache_seqlens=seqlens, causal=causal, return_softmax_lse=True, backend="torch",
                   cache_leftpad=torch.tensor(first, dtype=torch.int32) if leftpad else None)
    results = []
    for value in (float("nan"), 1e4):  # NaN, and finite values far from the real ones
        kc, vc = _poisoned(k_cache, first, used, value), _poisoned(v_cache, first, used, value)
        before = kc.clone(), vc.clone()
        results.append(fa.flash_attn_with_kvcache(q, kc, vc, **options))
        assert torch.equal(kc.isnan(), before[0].isnan()) and torch.equal(vc.isnan(), before[1].isnan())
        assert torch.equal(kc.nan_to_num(), before[0].nan_to_num()), "the cache was written"
    (out, lse), (out_finite, lse_finite) = results
    assert not out.isnan().any() and not lse.isnan().any()
    assert torch.equal(out, out_finite) and torch.equal(lse, lse_finite)
    assert fused_calls["forward"] > 0, "the fused kernel was not used"
    for b, (lo, hi) in enumerate(zip(first, used)):
        def reference(dt):
            return fa.reference.attention(q[b:b + 1], k_cache[b:b + 1, lo:hi], v_cache[b:b + 1, lo:hi],
                                          causal=causal, return_lse=True, compute_dtype=dt)
        if hi - lo == 0:  # no key: output 0, lse -inf
            assert torch.all(out[b] == 0) and torch.all(lse[b] == float("-inf"))
            continue
        (exact, exact_lse), (naive, naive_lse) = reference(torch.float64), reference(dtype)
        assert_within_naive_error(f"out[{b}]", out[b:b + 1], exact, naive, dtype)
        assert_within_naive_error(f"lse[{b}]", lse[b:b + 1], exact_lse, naive_lse, dtype)


def test_nan_past_seqused_k_changes_nothing_forward_or_backward(request, fused_calls):
    """attention(seqused_k=): NaN in the keys / values past each length reaches neither the outputs nor
    the gradients (those keys get zero gradients)."""
    gen = torch.Generator().manual_seed(seed_of(request))
    used = [3, 40, 0, 17, 1]
    q, dout = (torch.randn(len(used), 6, H, D, generator=gen) for _ in range(2))
    k, v = (torch.randn(len(used), 40, HK, D, generator=gen) for _ in range(2))
    seqused = torch.tensor(used, dtype=torch.int32)
    results = []
    for value in (float("nan"), 1e4):
        leaves = [t.clone().requires_grad_() for t in (q, _poisoned(k, [0] * 5, used, value),
                                                       _poisoned(v, [0] * 5, used, value))]
        out, lse = fa.attention(*leaves, causal=True, seqused_k=seqused, return_lse=True, backend="torch")
        out.backward(dout)
        results.append((out, lse, *(t.grad for t in leaves)))
    for name, with_nan, finite in zip(("out", "lse", "dq", "dk", "dv"), *results):
        assert torch.equal(with_nan, finite), name
        assert not with_nan.isnan().any(), name
    assert fused_calls["forward"] > 0 and fused_calls["backward"] > 0


def test_all_different_lengths_make_at_most_one_kernel_call_per_sequence(fused_calls, monkeypatch):
    """A decoding batch whose cache lengths all differ, and a packed causal batch whose lengths all differ:
    at most one fused forward (and backward) call per sequence, straight from the lengths (not through
    the per-group adapter's dense calls); equal lengths next to each other share one call."""
    group_calls = []
    forward, backward = torch_backend.BACKEND.forward, torch_backend.BACKEND.backward
    monkeypatch.setattr(torch_backend, "BACKEND", dataclasses.replace(
        torch_backend.BACKEND, forward=lambda *a: group_calls.append("forward") or forward(*a),
        backward=lambda *a, **kw: group_calls.append("backward") or backward(*a, **kw)))
    gen = torch.Generator().manual_seed(0)
    used = [5, 1, 64, 33, 2, 17, 48, 9, 63, 30, 12, 40]
    q = torch.randn(len(used), 1, H, D, generator=gen)
    k_cache, v_cache = (torch.randn(len(used), 64, HK, D, generator=gen) for _ in range(2))
    with torch.no_grad():
        for causal in (False, True):
            fa.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=torch.tensor(used, dtype=torch.int32),
                                       causal=causal, backend="torch")
    assert 0 < fused_calls["forward"] <= 2 * len(used)
    fused_calls["forward"] = 0
    with torch.no_grad():  # one length for all: one call
        fa.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=17, backend="torch")
    assert fused_calls["forward"] == 1
    fused_calls["forward"] = 0

    lens = [7, 1, 12, 3, 20, 5, 9, 2, 16, 4]
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
    q, k, v, dout = (torch.randn(int(cu[-1]), H if i in (0, 3) else HK, D, generator=gen) for i in range(4))
    leaves = [t.requires_grad_() for t in (q, k, v)]
    flash_attn_varlen_func(*leaves, cu, cu, max(lens), max(lens), causal=True, backend="torch").backward(dout)
    assert 0 < fused_calls["forward"] <= len(lens) and 0 < fused_calls["backward"] <= len(lens)
    assert not group_calls, "the per-group adapter ran calls the fused kernel takes per sequence"
