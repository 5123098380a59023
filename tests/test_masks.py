"""The kernels' block ranges agree with the shared mask rules in flashattn_py.masks."""
import itertools

import pytest
import torch
import triton
import triton.language as tl

from flashattn_py.semantics import masks
from flashattn_py.triton_kernels.common import key_block_range, query_block_range

BLOCK_M, BLOCK_N = 16, 8


@triton.jit
def _ranges_kernel(out_ptr, seqlen_q, seqlen_k, offset, window_left, window_right,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    klo, khi = key_block_range(pid * BLOCK_M, seqlen_k, offset, window_left, window_right, BLOCK_M, BLOCK_N, True)
    qlo, qhi = query_block_range(pid * BLOCK_N, seqlen_q, offset, window_left, window_right, BLOCK_M, BLOCK_N, True)
    tl.store(out_ptr + pid * 4 + 0, klo)
    tl.store(out_ptr + pid * 4 + 1, khi)
    tl.store(out_ptr + pid * 4 + 2, qlo)
    tl.store(out_ptr + pid * 4 + 3, qhi)


def _visible(sq, sk, window, offset=None):
    return masks.visible_keys(torch.arange(sq), torch.arange(sk), sq, sk, window, offset)


# Bottom-right alignment (offset None -> seqlen_k - seqlen_q) and SDPA's top-left (offset 0).
@pytest.mark.parametrize("top_left", [False, True], ids=["bottom_right", "top_left"])
@pytest.mark.parametrize("seqlen_q,seqlen_k", [(40, 40), (17, 50), (50, 17), (1, 33)])
@pytest.mark.parametrize("window", [(-1, 0), (3, 0), (5, 2), (-1, 4), (0, 0), (7, -1)])
def test_kernel_block_ranges_cover_every_visible_key_and_skip_whole_blocks(seqlen_q, seqlen_k, window, top_left):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    programs = max(triton.cdiv(seqlen_q, BLOCK_M), triton.cdiv(seqlen_k, BLOCK_N))
    out = torch.full((programs, 4), -99, dtype=torch.int32, device=device)
    offset = 0 if top_left else seqlen_k - seqlen_q
    _ranges_kernel[(programs,)](out, seqlen_q, seqlen_k, offset, window[0], window[1], BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N)
    out = out.cpu()
    visible = _visible(seqlen_q, seqlen_k, window, offset)
    for pid in range(programs):
        klo, khi, qlo, qhi = out[pid].tolist()
        q0, k0 = pid * BLOCK_M, pid * BLOCK_N
        rows = visible[q0 : q0 + BLOCK_M]
        if rows.numel():
            seen = rows.any(0).nonzero().flatten()
            if len(seen):  # every visible key is inside [klo, khi) ...
                assert klo <= seen.min() and seen.max() < khi
            # ... and the range is tight up to block alignment (no whole block is loaded for nothing)
            lo, hi = masks.key_range(q0, min(q0 + BLOCK_M, seqlen_q), seqlen_q, seqlen_k, window, offset)
            if hi > lo:
                assert klo == lo // BLOCK_N * BLOCK_N and khi <= hi + BLOCK_M
        cols = visible[:, k0 : k0 + BLOCK_N]
        if cols.numel():
            seen = cols.any(1).nonzero().flatten()
            if len(seen):
                assert qlo <= seen.min() and seen.max() < qhi
            lo, hi = masks.query_range(k0, min(k0 + BLOCK_N, seqlen_k), seqlen_q, seqlen_k, window, offset)
            if hi > lo:
                assert qlo == lo // BLOCK_M * BLOCK_M and qhi <= hi + BLOCK_N


@pytest.mark.parametrize("offset", [None, 0])
@pytest.mark.parametrize("seqlen_q,seqlen_k", [(9, 9), (5, 12), (12, 5)])
@pytest.mark.parametrize("window", [(-1, 0), (2, 1), (0, 0), (-1, -1), (4, -1)])
def test_python_ranges_are_exact(seqlen_q, seqlen_k, window, offset):
    visible = _visible(seqlen_q, seqlen_k, window, offset)
    for a, b in itertools.combinations(range(max(seqlen_q, seqlen_k) + 1), 2):
        if b <= seqlen_q:
            seen = visible[a:b].any(0).nonzero().flatten()
            lo, hi = masks.key_range(a, b, seqlen_q, seqlen_k, window, offset)
            assert (lo, hi) == ((seen.min().item(), seen.max().item() + 1) if len(seen) else (lo, lo))
        if b <= seqlen_k:
            seen = visible[:, a:b].any(1).nonzero().flatten()
            lo, hi = masks.query_range(a, b, seqlen_q, seqlen_k, window, offset)
            assert (lo, hi) == ((seen.min().item(), seen.max().item() + 1) if len(seen) else (lo, lo))


def test_causal_is_window_left_unbounded_right_zero():
    assert masks.normalize_window(True, (-1, -1)) == (-1, 0)
    assert masks.normalize_window(True, (8, 5)) == (8, 0)
    assert masks.normalize_window(False, (8, 5)) == (8, 5)
