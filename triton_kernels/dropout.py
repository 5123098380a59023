"""The attention kernels' dropout mask, materialized: for tests and debugging only.

The kernels never store their mask; they regenerate it from (seed, position) with `dropout_keep`.
This kernel calls the same function over the whole (batch, nheads_q, seqlen_q, seqlen_k) grid, so a
test can feed the exact mask to the reference and check outputs and gradients element by element.
"""
import torch
import triton
import triton.language as tl

from flashattn_py.params import AttentionParams

from .common import dropout_keep


@triton.jit
def dropout_mask_kernel(out_ptr, seqlen_q, seqlen_k, dropout_p, dropout_seed,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    row_base = tl.program_id(2).to(tl.int64) * seqlen_q  # (batch * nheads_q + head) * seqlen_q
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    keep = dropout_keep(dropout_seed, row_base, offs_m[:, None], offs_n[None, :], seqlen_k, dropout_p)
    ptrs = out_ptr + (row_base + offs_m[:, None].to(tl.int64)) * seqlen_k + offs_n[None, :]
    tl.store(ptrs, keep.to(tl.int8), mask=(offs_m[:, None] < seqlen_q) & (offs_n[None, :] < seqlen_k))


def dropout_mask(params: AttentionParams, device) -> torch.Tensor | None:
    """Keep-mask (batch, nheads_q, seqlen_q, seqlen_k), True = keep, exactly as the kernels draw it."""
    if not params.has_dropout:
        return None
    out = torch.zeros((params.batch, params.nheads_q, params.seqlen_q, params.seqlen_k), dtype=torch.int8,
                      device=device)
    if out.numel():
        grid = (triton.cdiv(params.seqlen_q, 32), triton.cdiv(params.seqlen_k, 32), params.batch * params.nheads_q)
        dropout_mask_kernel[grid](out, params.seqlen_q, params.seqlen_k, params.dropout_p, params.dropout_seed,
                                  BLOCK_M=32, BLOCK_N=32)
    return out.bool()
