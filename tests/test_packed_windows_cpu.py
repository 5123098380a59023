"""Many short packed sequences on the CPU path (backends/packed_windows.py): one fused kernel call over masked
windows of rows (plus one per end) instead of one per sequence, exact per sequence against the float64
reference; a non-finite value in one sequence never reaches another (the per-sequence calls take over)."""
import pytest
import torch
from test_varlen import _per_sequence_reference

import flashattn_py as fa
from flashattn_py.backends import packed_windows
from flashattn_py.varlen import flash_attn_varlen_func

from tolerance import DEVICE, assert_within_naive_error, run_with_grads, seed_of

pytestmark = pytest.mark.skipif(DEVICE.type != "cpu", reason="the CPU path of packed batches")

OPTIONS = {
    "causal": dict(causal=True),
    "full": dict(),
    "right_window": dict(window_size=(-1, 3)),
}


def _packed(gen, count: int, longest: int, heads: tuple[int, int], dtype):
    """(q, k, v, dout, cu_seqlens) of `count` + 2 random sequences of 0..longest rows (both ends present)."""
    lengths = [0, longest] + torch.randint(0, longest + 1, (count,), generator=gen).tolist()
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    total, (hq, hk) = int(cu[-1]), heads
    q, dout = (torch.randn(total, hq, 16, generator=gen).to(dtype) for _ in range(2))
    k, v = (torch.randn(total, hk, 16, generator=gen).to(dtype) for _ in range(2))
    return q, k, v, dout, cu


def _call(cu, options):
    longest = int((cu[1:] - cu[:-1]).max())

    def call(q, k, v):
        out, lse, _ = flash_attn_varlen_func(q, k, v, cu, cu, longest, longest, return_attn_probs=True,
                                             backend="torch", **options)
        return out, lse
    return call


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("heads", [(4, 4), (4, 1)], ids=["mha", "gqa4"])
def test_short_sequences_match_reference_in_few_calls(request, fused_calls, dtype, options, heads):
    """Sequences of up to MAX_LENGTH rows: out and lse of the windowed call, and the gradients the
    per-sequence backward computes given them, within the naive error of the float64 reference; at most 3
    forward kernel calls for 60 sequences."""
    q, k, v, dout, cu = _packed(torch.Generator().manual_seed(seed_of(request)), 58, packed_windows.MAX_LENGTH,
                                heads, dtype)
    with fa.poisoned_outputs():
        got = run_with_grads(_call(cu, OPTIONS[options]), q, k, v, dout)
    assert 0 < fused_calls["forward"] <= 3, f"{fused_calls['forward']} forward calls: the windows were not used"
    exact = _per_sequence_reference(q, k, v, dout, cu.tolist(), cu.tolist(), OPTIONS[options], torch.float64)
    naive = _per_sequence_reference(q, k, v, dout, cu.tolist(), cu.tolist(), OPTIONS[options], dtype)
    for name, g, e, n in zip(("out", "lse", "dq", "dk", "dv"), got, exact, naive):
        assert g.shape == e.shape, name
        assert_within_naive_error(name, g, e, n, dtype)


@pytest.mark.parametrize("bad", ["q", "k", "v"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_value_stays_in_its_sequence(request, fused_calls, bad, value):
    """NaN / inf in one row of one sequence: the other sequences' outputs are exactly those of the
    per-sequence calls (the windowed call saw the NaN and handed over), finite and within the reference."""
    q, k, v, dout, cu = _packed(torch.Generator().manual_seed(seed_of(request)), 40, 8, (2, 2), torch.float32)
    inputs = dict(q=q, k=k, v=v)
    b = next(b for b in range(10, len(cu) - 1) if cu[b + 1] - cu[b] >= 2)  # a sequence of 2 rows or more
    inputs[bad] = inputs[bad].clone()
    inputs[bad][int(cu[b]) + 1, 0, 3] = value  # its second row
    with torch.no_grad(), fa.poisoned_outputs():
        out, lse = _call(cu, dict(causal=True))(*inputs.values())
    if bad != "q":  # a query row reaches only its own output; a key or value row reaches a whole window
        assert fused_calls["forward"] > 3, "the per-sequence calls did not take over"
    outside = torch.ones(out.shape[0], dtype=torch.bool)
    outside[int(cu[b]):int(cu[b + 1])] = False
    assert not out[outside].isnan().any() and not lse[:, outside].isnan().any()
    exact, naive = (_per_sequence_reference(*inputs.values(), dout, cu.tolist(), cu.tolist(), dict(causal=True), dt)
                    for dt in (torch.float64, torch.float32))
    assert_within_naive_error("out", out[outside], exact[0][outside], naive[0][outside], torch.float32)


def test_longer_or_few_sequences_keep_a_call_per_run(fused_calls):
    """Past MAX_LENGTH, or with fewer than MIN_RUNS runs, or cross-attention lengths: the per-sequence calls."""
    gen = torch.Generator().manual_seed(0)
    q, k, v, _, cu = _packed(gen, 40, packed_windows.MAX_LENGTH + 1, (2, 2), torch.float32)
    with torch.no_grad():
        _call(cu, dict(causal=True))(q, k, v)
    assert fused_calls["forward"] > 3
    fused_calls["forward"] = 0
    q, k, v, _, cu = _packed(gen, packed_windows.MIN_RUNS - 4, 8, (2, 2), torch.float32)
    with torch.no_grad():
        _call(cu, dict(causal=True))(q, k, v)
    assert fused_calls["forward"] > 3
    fused_calls["forward"] = 0
    q, k, v, _, cu = _packed(gen, 40, 8, (2, 2), torch.float32)
    cu_k = cu.clone()
    cu_k[1:] += 1  # one more key in the first sequence: its queries are not its keys
    k, v = (torch.cat([t, t[:1]]) for t in (k, v))
    with torch.no_grad():
        flash_attn_varlen_func(q, k, v, cu, cu_k, 10, 10, causal=True, backend="torch")
    assert fused_calls["forward"] > 3
