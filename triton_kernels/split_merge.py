"""Merging split-K partials (flash-decoding): the forward's programs that shared a query tile each
wrote a normalized partial output and its lse over a slice of the keys; the exact result is the
lse-weighted mean of the partials:

    m = max_s lse_s,  w_s = 2^(lse_s - m),  out = sum_s w_s out_s / sum_s w_s,  lse = m + log2(sum_s w_s)

(lse in base 2, as the kernels store it). A split that saw no key has lse -inf and weighs 0; a row no
split saw gets out 0 and lse -inf.
"""
import torch
import triton
import triton.language as tl

from .common import head_dim_block


@triton.jit
def merge_splits_kernel(out_part_ptr, lse_part_ptr, out_ptr, lse_ptr,
                        stride_ps, stride_pb, stride_pseq, stride_ph,
                        stride_ob, stride_os, stride_oh,
                        stride_ls, stride_lb, stride_lh,
                        stride_lob, stride_loh,
                        seqlen, head_dim, num_splits,
                        BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_m = tl.program_id(0)
    head = tl.program_id(1).to(tl.int64)
    batch = tl.program_id(2).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    rows = offs_m < seqlen
    lse_base = lse_part_ptr + batch * stride_lb + head * stride_lh + offs_m
    m = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    # The splits are walked by advancing pointers, never by split * stride, which would pass 2^31
    # elements (32-bit) at large (packed) batches.
    lse_split = lse_base
    for split in range(0, num_splits):
        m = tl.maximum(m, tl.load(lse_split, mask=rows, other=float("-inf")))
        lse_split += stride_ls
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    total = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    tile_mask = rows[:, None] & (offs_d[None, :] < head_dim)
    part_base = (out_part_ptr + batch * stride_pb + head * stride_ph + offs_m[:, None].to(tl.int64) * stride_pseq
                 + offs_d[None, :])
    lse_split, part_split = lse_base, part_base
    for split in range(0, num_splits):
        w = tl.math.exp2(tl.load(lse_split, mask=rows, other=float("-inf")) - m_safe)
        total += w
        acc += w[:, None] * tl.load(part_split, mask=tile_mask, other=0.0)
        lse_split += stride_ls
        part_split += stride_ps
    seen = total > 0.0
    out = acc / tl.where(seen, total, 1.0)[:, None]
    out_ptrs = (out_ptr + batch * stride_ob + head * stride_oh + offs_m[:, None].to(tl.int64) * stride_os
                + offs_d[None, :])
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=tile_mask)
    lse = tl.where(seen, m_safe + tl.math.log2(tl.where(seen, total, 1.0)), float("-inf"))
    tl.store(lse_ptr + batch * stride_lob + head * stride_loh + offs_m, lse, mask=rows)


def merge_splits(out_part: torch.Tensor, lse_part: torch.Tensor, out: torch.Tensor, lse_log2: torch.Tensor) -> None:
    """out (b, s, h, d), lse_log2 (b, h, s) from out_part (splits, b, s, h, d) fp32 and lse_part
    (splits, b, h, s); head dim contiguous everywhere."""
    splits, batch, seqlen, heads, head_dim = out_part.shape
    if out.numel() == 0:
        return
    block_m = 16
    merge_splits_kernel[(triton.cdiv(seqlen, block_m), heads, batch)](
        out_part, lse_part, out, lse_log2,
        out_part.stride(0), out_part.stride(1), out_part.stride(2), out_part.stride(3),
        out.stride(0), out.stride(1), out.stride(2),
        lse_part.stride(0), lse_part.stride(1), lse_part.stride(2),
        lse_log2.stride(0), lse_log2.stride(1),
        seqlen, head_dim, splits,
        BLOCK_M=block_m, BLOCK_D=head_dim_block(head_dim),
    )
