"""The Triton backward's two schedules (triton_kernels/attention_bwd.py, docs/design.md "Backward"):
the fused one-pass backward (the default, deterministic=False: dQ added up by atomics) and the
atomic-free one (deterministic=True: dK/dV, then dQ), and the interior / edge split of their loops.

Every other test of gradients runs the default, fused schedule; here both run on the same inputs.
"""
import dataclasses

import pytest
import torch
import triton
import triton.language as tl

import flashattn_py as fa
from flashattn_py.backends import triton_backend
from flashattn_py.semantics import masks
from flashattn_py.triton_kernels import attention_bwd
from flashattn_py.triton_kernels.common import (
    interior_key_blocks,
    interior_query_blocks,
    key_block_range,
    query_block_range,
)
from flashattn_py.triton_kernels.configs import TileConfig

from tolerance import DEVICE, check_against_reference, random_qkv, run_with_grads, seed_of

DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# (batch, seqlen_q, seqlen_k, nheads_q, nheads_kv, head_dim, options): lengths that are not multiples
# of the interpreter's tiles (16 x 32), so every loop has edge blocks; sq > sk under causal leaves
# rows without keys; a window has both edges; GQA sums a group's dK/dV.
CASES = {
    "gqa": (2, 37, 45, 4, 2, 32, dict()),
    "causal_rows_without_keys": (1, 70, 17, 2, 1, 64, dict(causal=True)),
    "causal_long": (1, 97, 131, 2, 2, 16, dict(causal=True)),
    "window_softcap_alibi": (2, 53, 61, 2, 2, 16, dict(window_size=(9, 4), softcap=3.0,
                                                        alibi_slopes=torch.tensor([0.3, 0.1]))),
    "rope_in_kernel": (1, 40, 40, 2, 1, 32, dict(causal=True, rotary=fa.Rotary(), pe_k_strategy="in_kernel")),
    "top_left": (1, 29, 77, 3, 1, 16, dict(causal=True, alignment="top_left")),
}


def _options(options):
    return {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in options.items()}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES)
def test_fused_and_deterministic_backward_match_reference_on_the_same_inputs(request, case, dtype):
    b, sq, sk, hq, hkv, d, options = CASES[case]
    q, k, v, dout = random_qkv(b, sq, sk, hq, hkv, d, dtype, seed=seed_of(request))
    got = {det: check_against_reference("triton", q, k, v, dout, deterministic=det, **_options(options))
           for det in (False, True)}
    # The same forward either way; the two backwards differ only in summation order.
    assert torch.equal(got[False][0], got[True][0])


def test_deterministic_backward_is_bit_identical_run_to_run(request):
    q, k, v, dout = random_qkv(2, 45, 51, 4, 2, 32, torch.float16, seed=seed_of(request))
    bias = torch.randn(2, 1, 45, 51, device=DEVICE, dtype=torch.float16)

    def run(q, k, v, bias):
        return fa.attention(q, k, v, causal=True, attn_bias=bias, deterministic=True, return_lse=True,
                            backend="triton")

    first, second = (run_with_grads(run, q, k, v, dout, bias) for _ in range(2))
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("deterministic", (False, True))
@pytest.mark.parametrize("case", ("causal_long", "window_softcap_alibi", "top_left"))
def test_single_masked_loop_matches_reference(request, monkeypatch, case, deterministic):
    """GPUs run the key-block kernel with split_mask=False (every block through the masked loop:
    configs.dkdv_config); the interpreter's default tiles split it. Both must be right."""
    one_loop = TileConfig(16, 32, 4, 1, split_mask=False)
    monkeypatch.setattr(attention_bwd, "fused_config", lambda block_d, bias=False, arch=None: one_loop)
    monkeypatch.setattr(attention_bwd, "dkdv_config", lambda block_d, bias=False: one_loop)
    b, sq, sk, hq, hkv, d, options = CASES[case]
    q, k, v, dout = random_qkv(b, sq, sk, hq, hkv, d, torch.float16, seed=seed_of(request))
    check_against_reference("triton", q, k, v, dout, deterministic=deterministic, **_options(options))


@pytest.mark.parametrize("api", ("flash_attn_func", "flash_attn_varlen_func"))
def test_deterministic_is_passed_through_flash_attn_entry_points(monkeypatch, api):
    seen = []
    backward = attention_bwd.attention_backward

    def spy(*args, **kwargs):
        seen.append(args[7].deterministic)
        return backward(*args, **kwargs)

    monkeypatch.setattr(triton_backend, "BACKEND", dataclasses.replace(triton_backend.BACKEND, backward=spy))
    q, k, v, dout = random_qkv(1, 8, 8, 2, 2, 16, torch.float16)
    for det in (True, False):
        qq, kk, vv = (t.detach().requires_grad_() for t in (q, k, v))
        if api == "flash_attn_func":
            out = fa.flash_attn_func(qq, kk, vv, deterministic=det, backend="triton")
        else:
            cu = torch.tensor([0, 8], dtype=torch.int32, device=DEVICE)
            out = fa.flash_attn_varlen_func(qq[0], kk[0], vv[0], cu, cu, 8, 8, deterministic=det, backend="triton")
        out.backward(dout if out.dim() == 4 else dout[0])
    assert seen == [True, False]


@triton.jit
def _interior_kernel(out_ptr, start, seqlen_q, seqlen_k, diag, window_left, window_right,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, STREAM_QUERIES: tl.constexpr):
    if STREAM_QUERIES:  # a key block [start, start + BLOCK_N) fixed, query blocks streamed
        lo, hi = query_block_range(start, seqlen_q, diag, window_left, window_right, BLOCK_M, BLOCK_N, True)
        full_lo, full_hi = interior_query_blocks(lo, hi, start, seqlen_q, seqlen_k, diag, window_left, window_right,
                                                 BLOCK_M, BLOCK_N, True)
    else:
        lo, hi = key_block_range(start, seqlen_k, diag, window_left, window_right, BLOCK_M, BLOCK_N, True)
        full_lo, full_hi = interior_key_blocks(lo, hi, start, seqlen_q, seqlen_k, diag, window_left, window_right,
                                               BLOCK_M, BLOCK_N, True)
    tl.store(out_ptr, lo)
    tl.store(out_ptr + 1, hi)
    tl.store(out_ptr + 2, full_lo)
    tl.store(out_ptr + 3, full_hi)


@pytest.mark.parametrize("stream_queries", (True, False), ids=("query_blocks", "key_blocks"))
def test_interior_blocks_see_everything_and_edges_cover_the_rest(stream_queries):
    """For random geometries: blocks in [full_lo, full_hi) are whole and fully visible (they run
    without the mask); [lo, full_lo) and [full_hi, hi) hold the rest of what is visible."""
    gen = torch.Generator().manual_seed(0)
    block_m, block_n = 16, 32
    out = torch.empty(4, dtype=torch.int32, device=DEVICE)
    for _ in range(300):
        sq, sk = (int(x) for x in torch.randint(1, 150, (2,), generator=gen))
        left, right = (int(x) if x >= 0 else -1 for x in torch.randint(-20, 60, (2,), generator=gen))
        if left < 0 and right < 0:
            right = 0
        diag = [sk - sq, 0][int(torch.randint(0, 2, (1,), generator=gen))]
        fixed, streamed = (block_n, block_m) if stream_queries else (block_m, block_n)
        fixed_len, streamed_len = (sk, sq) if stream_queries else (sq, sk)
        for start in range(0, fixed_len, fixed):
            _interior_kernel[(1,)](out, start, sq, sk, diag, left, right, block_m, block_n, stream_queries)
            lo, hi, full_lo, full_hi = out.tolist()
            assert lo <= full_lo <= full_hi <= max(hi, lo)
            fixed_idx = torch.arange(start, start + fixed)
            streamed_idx = torch.arange(streamed_len)
            q_idx, k_idx = (streamed_idx, fixed_idx) if stream_queries else (fixed_idx, streamed_idx)
            seen = masks.visible_keys(q_idx, k_idx, sq, sk, (left, right), offset=diag)
            seen = seen & (q_idx < sq)[:, None]
            seen = seen if not stream_queries else seen.T  # (fixed, streamed)
            visited = torch.zeros(streamed_len, dtype=torch.bool)
            for s in list(range(lo, full_lo, streamed)) + list(range(full_hi, hi, streamed)):
                visited[s:s + streamed] = True
            for s in range(full_lo, full_hi, streamed):
                assert s + streamed <= streamed_len and start + fixed <= fixed_len
                assert seen[:, s:s + streamed].all(), (sq, sk, left, right, diag, start, s)
                visited[s:s + streamed] = True
            assert not (seen.any(0) & ~visited).any(), (sq, sk, left, right, diag, start)
