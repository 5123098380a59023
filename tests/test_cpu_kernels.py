"""The CPU kernels (csrc/cpu/, backends/cpu_kernels.py) that run per-sequence calls on CPU tensors (packed
batches of short sequences, seqused_k, KV-cache decoding) in one call: built and attached to torch's OpenMP
team here, taken for the calls they serve (and not for the others), forward, lse and gradients against the
float64 reference per sequence with NaN-poisoned outputs, for fp32 / fp16 / bf16, GQA, masks, head dims
with and without a compiled loop length, both instruction-set copies, any thread count; their fp16 / bf16
conversions bit for bit against torch's."""
import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_varlen import _cu, _per_sequence_reference

import flashattn_py as fa
from flashattn_py.backends import cpu_kernels
from flashattn_py.semantics import masks
from flashattn_py.varlen import flash_attn_varlen_func

from tolerance import DEVICE, assert_within_naive_error, run_with_grads, seed_of

ROOT = Path(__file__).resolve().parents[1]
TURNED_OFF = os.environ.get("FLASHATTN_BUILD_CPU") == "0" or os.environ.get("FLASHATTN_CPU_KERNELS") == "0"
pytestmark = [pytest.mark.skipif(DEVICE.type != "cpu", reason="the CPU kernels serve CPU tensors"),
              pytest.mark.skipif(TURNED_OFF, reason="the CPU kernels are turned off (FLASHATTN_BUILD_CPU / "
                                                    "FLASHATTN_CPU_KERNELS = 0)")]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture
def kernel_calls(monkeypatch):
    """How many calls the CPU kernels ran (forward / backward)."""
    calls = {"forward": 0, "backward": 0}
    run = cpu_kernels._Call.run

    def counted(self, backward):
        calls["backward" if backward else "forward"] += 1
        return run(self, backward)
    monkeypatch.setattr(cpu_kernels._Call, "run", counted)
    return calls


def test_library_is_built_and_runs_on_torchs_openmp_team():
    """pip install builds the library (a failed build would only warn): here it must exist, match the
    package's struct layout (checked when loaded) and have found the OpenMP runtime torch loaded."""
    assert cpu_kernels.available(), ("flashattn_py/_cpu_kernels*.so is missing: pip install -e . builds it with the "
                                     "C++ compiler (see its warning)")
    assert cpu_kernels.ON_TORCH_TEAM, f"torch's OpenMP runtime was not attached (found: {cpu_kernels._OPENMP})"
    assert cpu_kernels.isa() in ("avx2+fma", "baseline")


def _convert(dtype_code: int, bits: torch.Tensor) -> torch.Tensor:
    out = torch.empty(bits.shape, dtype=torch.float32)
    cpu_kernels.LIBRARY.flashattn_cpu_convert_to_float(ctypes.c_int32(dtype_code), ctypes.c_void_p(bits.data_ptr()),
                                                       ctypes.c_void_p(out.data_ptr()), ctypes.c_int64(bits.numel()))
    return out


def _round(dtype_code: int, values: torch.Tensor) -> torch.Tensor:
    out = torch.empty(values.shape, dtype=torch.int16)
    lib = cpu_kernels.LIBRARY
    lib.flashattn_cpu_convert_from_float(ctypes.c_int32(dtype_code), ctypes.c_void_p(values.data_ptr()),
                                         ctypes.c_void_p(out.data_ptr()), ctypes.c_int64(values.numel()))
    return out


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_conversions_match_torch_bit_for_bit(dtype):
    """Every 16-bit pattern to fp32, and fp32 values around every rounding case (ties to even, subnormals,
    overflow, inf, NaN) to fp16 / bf16, as torch converts them (NaN: any NaN)."""
    code = cpu_kernels._DTYPES[dtype]
    every = torch.arange(-2 ** 15, 2 ** 15, dtype=torch.int32).to(torch.int16)
    widened, expected = _convert(code, every), every.view(dtype).float()
    assert torch.equal(widened.isnan(), expected.isnan())
    assert torch.equal(widened[~expected.isnan()].view(torch.int32), expected[~expected.isnan()].view(torch.int32))

    gen = torch.Generator().manual_seed(0)
    exact = every.view(dtype).float()
    exact = exact[exact.isfinite()]
    ties = (exact[:-1] + exact[1:]) / 2  # halfway between neighbours (sorted by bit pattern within a sign)
    values = torch.cat([exact, ties, ties.nextafter(torch.full_like(ties, float("inf"))),
                        torch.randn(100_000, generator=gen) * 10.0 ** torch.randint(-9, 6, (100_000,), generator=gen),
                        torch.tensor([0.0, -0.0, 1e-45, 6e-8, 3e-8, 65504.0, 65520.0, 1e38, 3.4e38, float("inf"),
                                      -float("inf"), float("nan")])])
    rounded, expected = _round(code, values).view(dtype).float(), values.to(dtype).float()
    assert torch.equal(rounded.isnan(), expected.isnan())
    keep = ~expected.isnan()
    assert torch.equal(rounded[keep].view(torch.int32), expected[keep].view(torch.int32))


def test_row_key_ranges_are_key_range_of_each_row():
    """masks.row_key_ranges (the ranges the kernels read) is masks.key_range of every single row."""
    for window in [(-1, -1), (-1, 0), (4, 2), (3, -1), (0, 0), (-1, 5), (2, -3)]:
        for sq in range(0, 7):
            for sk in range(0, 7):
                rows = torch.arange(sq)
                lo, hi = masks.row_key_ranges(rows, torch.full_like(rows, sq), torch.full_like(rows, sk), window)
                expected = [masks.key_range(i, i + 1, sq, sk, window) for i in range(sq)]
                assert list(zip(lo.tolist(), hi.tolist())) == expected, (window, sq, sk)


OPTIONS = {
    "causal": dict(causal=True),
    "none": dict(),
    "window": dict(window_size=(4, 2)),
    "left_window": dict(window_size=(3, -1)),
}
# (seqlens_q, seqlens_k): ragged with empty sequences, sq <, =, > sk, a key-less sequence, a long key run
LENGTHS = {
    "ragged": ([5, 0, 17, 1, 9], [7, 3, 30, 1, 9]),
    "keyless": ([4, 6], [0, 70]),
    "decode_like": ([1, 1, 2, 1], [130, 5, 64, 1]),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("lengths", LENGTHS)
@pytest.mark.parametrize("heads,head_dim", [((4, 2), 64), ((3, 3), 40), ((8, 1), 128)])
def test_packed_calls_match_reference_per_sequence(request, kernel_calls, dtype, options, lengths, heads, head_dim):
    """flash_attn_varlen_func on the kernels: out, lse, dq, dk, dv of each sequence within the naive error of
    the float64 reference (outputs poisoned), one kernel call per pass. head_dim 40 runs the loops of
    runtime length, 64 / 128 the compiled ones."""
    lens_q, lens_k = LENGTHS[lengths]
    gen = torch.Generator().manual_seed(seed_of(request))
    q, dout = (torch.randn(sum(lens_q), heads[0], head_dim, generator=gen).to(dtype) for _ in range(2))
    k, v = (torch.randn(sum(lens_k), heads[1], head_dim, generator=gen).to(dtype) for _ in range(2))
    cu_q, cu_k = _cu(lens_q), _cu(lens_k)

    def ours(q, k, v):
        return flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), return_attn_probs=True,
                                      backend="torch", **OPTIONS[options])[:2]

    with fa.poisoned_outputs():
        got = run_with_grads(ours, q, k, v, dout)
    assert kernel_calls == {"forward": 1, "backward": 1}
    exact = _per_sequence_reference(q, k, v, dout, cu_q, cu_k, OPTIONS[options], torch.float64)
    naive = _per_sequence_reference(q, k, v, dout, cu_q, cu_k, OPTIONS[options], dtype)
    for name, g, e, n in zip(("out", "lse", "dq", "dk", "dv"), got, exact, naive):
        assert_within_naive_error(name, g, e, n, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("leftpad", [False, True])
def test_decoding_with_nan_in_unused_cache_slots(request, kernel_calls, dtype, leftpad):
    """flash_attn_with_kvcache, one query per sequence, all-different cache lengths: the kernels read only
    each sequence's slots (NaN elsewhere changes nothing) and match the reference on them."""
    gen = torch.Generator().manual_seed(seed_of(request))
    used = [0, 1, 5, 17, 31, 64, 40, 2, 130]
    first = [0, 0, 2, 9, 0, 30, 1, 1, 64] if leftpad else [0] * len(used)
    batch, capacity = len(used), 130
    q = torch.randn(batch, 1, 8, 64, generator=gen).to(dtype)
    k_cache, v_cache = (torch.randn(batch, capacity, 2, 64, generator=gen).to(dtype) for _ in range(2))
    options = dict(cache_seqlens=torch.tensor(used, dtype=torch.int32), return_softmax_lse=True, backend="torch",
                   cache_leftpad=torch.tensor(first, dtype=torch.int32) if leftpad else None)
    results = []
    for value in (float("nan"), 1e4):
        kc, vc = k_cache.clone(), v_cache.clone()
        for b, (lo, hi) in enumerate(zip(first, used)):
            kc[b, :lo] = vc[b, :lo] = kc[b, hi:] = vc[b, hi:] = value
        with fa.poisoned_outputs():
            results.append(fa.flash_attn_with_kvcache(q, kc, vc, **options))
    assert kernel_calls["forward"] == 2
    (out, lse), (out_finite, lse_finite) = results
    assert torch.equal(out, out_finite) and torch.equal(lse, lse_finite)
    for b, (lo, hi) in enumerate(zip(first, used)):
        if hi == lo:
            assert torch.all(out[b] == 0) and torch.all(lse[b] == float("-inf"))
            continue

        def reference(dt):
            return fa.reference.attention(q[b:b + 1], k_cache[b:b + 1, lo:hi], v_cache[b:b + 1, lo:hi],
                                          return_lse=True, compute_dtype=dt)
        (exact, exact_lse), (naive, naive_lse) = reference(torch.float64), reference(dtype)
        assert_within_naive_error(f"out {b}", out[b:b + 1], exact, naive, dtype)
        assert_within_naive_error(f"lse {b}", lse[b:b + 1], exact_lse, naive_lse, dtype)


def test_seqused_k_gradients_past_the_used_keys_are_zero(request, kernel_calls):
    """attention(seqused_k=) on a dense batch: gradients of each sequence's keys as the reference on its used
    keys, exactly 0 past them; out and dq too."""
    gen = torch.Generator().manual_seed(seed_of(request))
    used = [3, 11, 0, 16]
    q, dout = (torch.randn(4, 5, 4, 32, generator=gen) for _ in range(2))
    k, v = (torch.randn(4, 16, 2, 32, generator=gen) for _ in range(2))
    seqused = torch.tensor(used, dtype=torch.int32)
    with fa.poisoned_outputs():
        out, lse, dq, dk, dv = run_with_grads(
            lambda q, k, v: fa.attention(q, k, v, causal=True, seqused_k=seqused, return_lse=True, backend="torch"),
            q, k, v, dout)
    assert kernel_calls == {"forward": 1, "backward": 1}
    for b, n in enumerate(used):
        assert torch.all(dk[b, n:] == 0) and torch.all(dv[b, n:] == 0)

        def reference(dt):
            return run_with_grads(lambda q_, k_, v_: fa.reference.attention(q_, k_, v_, causal=True, return_lse=True,
                                                                          compute_dtype=dt),
                                  q[b:b + 1], k[b:b + 1, :n], v[b:b + 1, :n], dout[b:b + 1])
        exact, naive = reference(torch.float64), reference(torch.float32)
        for name, g, e, m in zip(("out", "lse", "dq", "dk", "dv"),
                                 (out[b:b + 1], lse[b:b + 1], dq[b:b + 1], dk[b:b + 1, :n], dv[b:b + 1, :n]),
                                 exact, naive):
            assert_within_naive_error(f"{name} {b}", g, e, m, torch.float32)


def _packed_case(gen, count=64, longest=12, heads=(4, 2)):
    """(call, (q, k, v, dout), cu): a packed causal batch of `count` sequences of 0 .. longest tokens."""
    lengths = torch.randint(0, longest + 1, (count,), generator=gen)
    cu = torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
    total = int(lengths.sum())
    q, dout = (torch.randn(total, heads[0], 64, generator=gen) for _ in range(2))
    k, v = (torch.randn(total, heads[1], 64, generator=gen) for _ in range(2))

    def call(q, k, v):
        return flash_attn_varlen_func(q, k, v, cu, cu, longest, longest, causal=True, return_attn_probs=True,
                                      backend="torch")[:2]
    return call, (q, k, v, dout), cu


def check_packed_case(seed: int) -> str:
    """_packed_case's results against the float64 reference per sequence; the instruction set that ran."""
    call, (q, k, v, dout), cu = _packed_case(torch.Generator().manual_seed(seed))
    with fa.poisoned_outputs():
        got = run_with_grads(call, q, k, v, dout)
    exact = _per_sequence_reference(q, k, v, dout, cu, cu, dict(causal=True), torch.float64)
    naive = _per_sequence_reference(q, k, v, dout, cu, cu, dict(causal=True), torch.float32)
    for name, g, e, n in zip(("out", "lse", "dq", "dk", "dv"), got, exact, naive):
        assert_within_naive_error(name, g, e, n, torch.float32)
    return cpu_kernels.isa()


def test_results_do_not_depend_on_threads_or_team(request, monkeypatch, kernel_calls):
    """Each work item is computed by one thread from the same inputs: 1 or 2 torch threads, torch's OpenMP
    team or the fallback pool (no runtime found) give bit-identical results."""
    call, inputs, _ = _packed_case(torch.Generator().manual_seed(seed_of(request)))
    before = torch.get_num_threads()
    results = []
    try:
        for threads, team in [(1, True), (2, True), (2, False)]:
            torch.set_num_threads(threads)
            monkeypatch.setattr(cpu_kernels, "ON_TORCH_TEAM", team)
            results.append(run_with_grads(call, *inputs))
    finally:
        torch.set_num_threads(before)
    assert kernel_calls == {"forward": 3, "backward": 3}
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


def test_baseline_instruction_set_copy_matches_reference(request, kernel_calls):
    """FLASHATTN_CPU_ISA=baseline runs the SSE2 copy of the kernels (the one a CPU without AVX2 runs): in a
    fresh process it says so and matches the reference; this process's copy does too."""
    seed = seed_of(request)
    script = (f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r}); import test_cpu_kernels as t; "
              f"print('isa', t.check_packed_case({seed}))")
    done = subprocess.run([sys.executable, "-c", script], env=dict(os.environ, FLASHATTN_CPU_ISA="baseline"),
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "isa baseline" in done.stdout, done.stdout
    assert check_packed_case(seed) == cpu_kernels.isa()
    assert kernel_calls == {"forward": 1, "backward": 1}


def test_longer_sequences_and_other_options_keep_the_torch_paths(kernel_calls):
    """A sequence with more than MAX_DECODE_QUERIES queries and MAX_PAIRS pairs, dropout, an encoding or a
    score modification leave the call to the torch paths (which the suites above this one check); decoding
    on a cache longer than MAX_PAIRS keys stays here."""
    gen = torch.Generator().manual_seed(0)
    long = cpu_kernels.MAX_PAIRS // (cpu_kernels.MAX_DECODE_QUERIES + 1) + 1
    for lens_q, lens_k, options in [([cpu_kernels.MAX_DECODE_QUERIES + 1, 2], [long, 2], {}),
                                    ([3, 2], [3, 2], dict(softcap=5.0)), ([3, 2], [3, 2], dict(rotary=fa.Rotary())),
                                    ([3, 2], [3, 2], dict(dropout_p=0.5))]:
        q = torch.randn(sum(lens_q), 2, 16, generator=gen)
        k, v = (torch.randn(sum(lens_k), 2, 16, generator=gen) for _ in range(2))
        flash_attn_varlen_func(q, k, v, _cu(lens_q), _cu(lens_k), max(lens_q), max(lens_k), backend="torch",
                               **options)
    assert kernel_calls["forward"] == 0
    q = torch.randn(2, cpu_kernels.MAX_DECODE_QUERIES, 2, 16, generator=gen)
    cache = torch.randn(2, 2 * cpu_kernels.MAX_PAIRS, 2, 16, generator=gen)
    fa.flash_attn_with_kvcache(q, cache, cache, cache_seqlens=torch.tensor([5, cache.shape[1]], dtype=torch.int32),
                               backend="torch")
    assert kernel_calls["forward"] == 1


def test_cpu_varlen_bench_runs(capsys):
    """bench/cpu_varlen.py (the measurement in docs/design.md and bench/results) still runs: one scenario,
    one round, its line printed with the ratios."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import cpu_varlen
    finally:
        sys.path.remove(str(ROOT / "bench"))
    assert cpu_varlen.main(["--only", "cache64", "--rounds", "1"]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    assert line.startswith("decode b32 cache64") and "ours/dense" in line and "per pair" in line, line
