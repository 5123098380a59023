"""Pieces shared by the attention kernels: the mask rules, block ranges and the tile matmul.

The mask rules are those of ``flashattn_py.masks`` (bottom-right aligned window; causal = window
(left, 0)), implemented here in Triton; tests check the two against each other.
"""
import os

import torch
import triton
import triton.language as tl

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


@triton.jit
def load_tile(base, offs_s, offs_d, stride_s, seqlen, head_dim):
    """A (len(offs_s), BLOCK_D) tile of rows offs_s; rows past seqlen and padded head-dim columns read 0."""
    ptrs = base + offs_s[:, None].to(tl.int64) * stride_s + offs_d[None, :]
    return tl.load(ptrs, mask=(offs_s[:, None] < seqlen) & (offs_d[None, :] < head_dim), other=0.0)


@triton.jit
def tile_source(base, seqlen, head_dim, stride_s, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
                USE_DESCRIPTOR: tl.constexpr):
    """What load_rows reads (BLOCK_S, BLOCK_D) tiles of a (seqlen, head_dim) slab from: a tensor
    descriptor (TMA loads on sm_90: no per-element address registers, the copy lands in shared
    memory; the launcher checks its 16-byte alignment rules) or the slab's base pointer."""
    source = base  # (one return: Triton checks that every return has one type)
    if USE_DESCRIPTOR:
        source = tl.make_tensor_descriptor(base, shape=[seqlen, head_dim], strides=[stride_s, 1],
                                           block_shape=[BLOCK_S, BLOCK_D])
    return source


@triton.jit
def load_rows(source, start, offs_s, offs_d, stride_s, seqlen, head_dim, USE_DESCRIPTOR: tl.constexpr):
    """Rows [start, start + BLOCK_S) of a tile_source, as load_tile: rows past seqlen and columns past
    head_dim read 0 (the descriptor's bounds zero-fill them)."""
    if USE_DESCRIPTOR:  # if / else: code after a constexpr-if's return is still compiled
        tile = source.load([start, 0])
    else:
        tile = load_tile(source, offs_s, offs_d, stride_s, seqlen, head_dim)
    return tile


def descriptor_ready(*tensors: torch.Tensor) -> bool:
    """Whether tensor descriptors (TMA) may address these tensors' tiles: every stride but the last (1)
    and the base address are multiples of 16 bytes."""
    return all(t.stride(-1) == 1 and t.data_ptr() % 16 == 0
               and all(s * t.element_size() % 16 == 0 for s in t.stride()[:-1]) for t in tensors)


@triton.jit
def keep_mask(q_idx, k_idx, seqlen_q, seqlen_k, diag_offset, window_left, window_right, HAS_WINDOW: tl.constexpr):
    """True where query q_idx may see key k_idx (both already broadcast to the tile's shape).
    diag_offset: key position of query 0 (seqlen_k - seqlen_q bottom-right, 0 top-left)."""
    keep = (q_idx < seqlen_q) & (k_idx < seqlen_k)
    if HAS_WINDOW:
        aligned = q_idx + diag_offset
        keep = keep & ((window_right < 0) | (k_idx <= aligned + window_right))
        keep = keep & ((window_left < 0) | (k_idx >= aligned - window_left))
    return keep


@triton.jit
def key_block_range(q_start, seqlen_k, diag_offset, window_left, window_right,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """[lo, hi) of keys that queries [q_start, q_start + BLOCK_M) can see; lo is block aligned.

    Blocks outside it (above the causal diagonal, outside the window) are never loaded.
    """
    lo = 0
    hi = seqlen_k
    if HAS_WINDOW:
        aligned = q_start + diag_offset
        if window_left >= 0:
            lo = tl.maximum(aligned - window_left, 0) // BLOCK_N * BLOCK_N
        if window_right >= 0:
            hi = tl.minimum(aligned + BLOCK_M + window_right, seqlen_k)
    return lo, hi


@triton.jit
def query_block_range(k_start, seqlen_q, diag_offset, window_left, window_right,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """[lo, hi) of queries that see some key in [k_start, k_start + BLOCK_N); lo is block aligned."""
    lo = 0
    hi = seqlen_q
    if HAS_WINDOW:
        shift = diag_offset
        if window_right >= 0:
            lo = tl.maximum(k_start - shift - window_right, 0) // BLOCK_M * BLOCK_M
        if window_left >= 0:
            hi = tl.minimum(k_start + BLOCK_N - shift + window_left, seqlen_q)
    return lo, hi


@triton.jit
def _ceil_to(x, BLOCK: tl.constexpr):
    return (x + BLOCK - 1) // BLOCK * BLOCK


@triton.jit
def interior_query_blocks(lo, hi, k_start, seqlen_q, seqlen_k, diag_offset, window_left, window_right,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """[full_lo, full_hi): the query blocks of [lo, hi) (lo block aligned) in which every query sees
    every key of [k_start, k_start + BLOCK_N), so the backward runs them without mask work. The
    blocks of [lo, full_lo) and [full_hi, hi) need the mask: the causal diagonal / window edges, the
    last partial query block, and all of them when the key block itself is partial.
    lo <= full_lo <= full_hi <= hi; full_lo and full_hi are block starts unless they equal hi."""
    # Whole query blocks only: starts below seqlen_q rounded down to a block.
    full_hi = lo + tl.maximum(seqlen_q - lo, 0) // BLOCK_M * BLOCK_M
    full_lo = lo
    if HAS_WINDOW:
        if window_right >= 0:  # the block's last key within reach of its first query
            full_lo = _ceil_to(tl.maximum(k_start + BLOCK_N - 1 - diag_offset - window_right, lo), BLOCK_M)
        if window_left >= 0:  # its first key within reach of its last query
            last = k_start + window_left - diag_offset - BLOCK_M + 1  # latest start of a whole block
            full_hi = tl.minimum(full_hi, tl.where(last >= lo, lo + (last - lo) // BLOCK_M * BLOCK_M + BLOCK_M, lo))
    if k_start + BLOCK_N > seqlen_k:  # a partial key block: keys past seqlen_k are masked everywhere
        full_lo = hi
    # full_hi <= hi always (an interior block is a visible one); full_lo may pass hi when none is.
    # (When hi < lo, no block at all: both come out lo.)
    full_lo = tl.maximum(tl.minimum(full_lo, hi), lo)
    return full_lo, tl.maximum(full_hi, full_lo)


@triton.jit
def interior_key_blocks(lo, hi, q_start, seqlen_q, seqlen_k, diag_offset, window_left, window_right,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """[full_lo, full_hi): the key blocks of [lo, hi) (lo block aligned) that every query of
    [q_start, q_start + BLOCK_M) sees whole (interior_query_blocks with the roles swapped)."""
    full_hi = lo + tl.maximum(seqlen_k - lo, 0) // BLOCK_N * BLOCK_N
    full_lo = lo
    if HAS_WINDOW:
        if window_left >= 0:  # the block's first key within reach of the last query
            full_lo = _ceil_to(tl.maximum(q_start + BLOCK_M - 1 + diag_offset - window_left, lo), BLOCK_N)
        if window_right >= 0:  # its last key within reach of the first query
            last = q_start + diag_offset + window_right - BLOCK_N + 1  # latest start of a whole block
            full_hi = tl.minimum(full_hi, tl.where(last >= lo, lo + (last - lo) // BLOCK_N * BLOCK_N + BLOCK_N, lo))
    if q_start + BLOCK_M > seqlen_q:  # a partial query block
        full_lo = hi
    # full_hi <= hi always (an interior block is a visible one); full_lo may pass hi when none is.
    # (When hi < lo, no block at all: both come out lo.)
    full_lo = tl.maximum(tl.minimum(full_lo, hi), lo)
    return full_lo, tl.maximum(full_hi, full_lo)


@triton.jit
def phase_range(phase: tl.constexpr, lo, full_lo, full_hi, hi):
    """[start, end) of loop phase 0 (edge blocks before the interior), 1 (the interior, no mask) or
    2 (edge blocks after it), from interior_*_blocks' bounds."""
    if phase == 0:
        start, end = lo, full_lo
    elif phase == 1:
        start, end = full_lo, full_hi
    else:
        start, end = full_hi, hi
    return start, end


@triton.jit
def dropout_keep(seed, row_base, q_idx, k_idx, seqlen_k, dropout_p):
    """Dropout keep-mask for queries q_idx x keys k_idx (broadcast), True = keep.

    Philox counter = (row_base + q) * seqlen_k + k with row_base = (batch * nheads + head) * seqlen_q:
    one 64-bit counter per attention weight, so forward and backward regenerate the same mask from
    (seed, position) alone, whatever their tiling.
    """
    offsets = (row_base + q_idx.to(tl.int64)) * seqlen_k + k_idx
    return tl.rand(seed, offsets) >= dropout_p


@triton.jit
def tile_dot(a, b, acc, FP32_OPERANDS: tl.constexpr, PRECISION: tl.constexpr):
    """acc + a @ b on tensor cores.

    FP32_OPERANDS is set only under the interpreter for bf16: triton 3.9's interpreter returns
    garbage for tl.dot on bf16 operands. Upcasting is exact (bf16 x bf16 products fit in fp32's
    mantissa) and the GPU's bf16 MMA accumulates in fp32 too, so the result matches the GPU path up
    to summation order. Never set on a GPU.
    """
    if FP32_OPERANDS:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION)


def _torch_scratch(size: int, alignment: int, stream):
    return torch.empty(size, dtype=torch.int8, device="cpu" if INTERPRETED else "cuda")


def ensure_scratch_allocator() -> None:
    """Kernels that build tensor descriptors on the device (TMA) get a small global-memory workspace
    from Triton's allocator at launch; Triton has none by default. Install one that takes it from
    torch's caching allocator, unless the application installed its own."""
    from triton.runtime import _allocation

    if isinstance(_allocation._allocator.get(), _allocation.NullAllocator):
        triton.set_allocator(_torch_scratch)


def dropout_args(params) -> dict:
    """Kernel arguments for attention dropout (placeholders when there is none)."""
    p = params.dropout_p
    return dict(dropout_p=p, dropout_scale=1.0 / (1.0 - p), dropout_seed=params.dropout_seed,
                HAS_DROPOUT=params.has_dropout)


def dot_flags(dtype: torch.dtype) -> dict:
    """Constexprs for tile_dot: fp32 inputs use exact IEEE products (not TF32), to honour fp32 accuracy."""
    return {
        "FP32_OPERANDS": INTERPRETED and dtype == torch.bfloat16,
        "PRECISION": "ieee" if dtype == torch.float32 else "tf32",
    }


def head_dim_block(head_dim: int) -> int:
    """Head dims that are not powers of two (40, 80, 96...) run in the next power-of-two tile, masked.

    16 is the smallest K dimension tl.dot accepts.
    """
    return max(16, triton.next_power_of_2(head_dim))


def check_launch_limits(batch: int, nheads: int) -> None:
    # Grid axes 1 and 2 (heads, batch) are limited to 65535 by CUDA.
    if batch > 65535:
        raise ValueError(f"batch must be <= 65535 for the Triton backend, got {batch}")
    if nheads > 65535:
        raise ValueError(f"nheads must be <= 65535 for the Triton backend, got {nheads}")


@triton.jit
def sequence_bounds(batch, seqlen_q, seqlen_k, diag_offset, cu_q_ptr, cu_k_ptr, seqused_k_ptr,
                    IS_VARLEN: tl.constexpr, HAS_SEQUSED_K: tl.constexpr):
    """(first query row, first key row, seqlen_q, seqlen_k, key rows, diagonal offset) of sequence `batch`.

    Dense batches: rows start at 0 and the lengths and offset are the call's. Packed variable-length
    batches (IS_VARLEN): sequence b holds rows cu[b] .. cu[b + 1] - 1 of the packed tensors. With
    seqused_k (dense batches), sequence b attends to only its first seqused_k[b] keys; `key rows` stays
    the tensor's row count, so the backward still writes zero gradients for the unused keys. Either
    way the causal diagonal sits bottom-right of each sequence's own (seqlen_q, seqlen_k).
    """
    q_start = 0
    k_start = 0
    if IS_VARLEN:
        q_start = tl.load(cu_q_ptr + batch).to(tl.int64)
        k_start = tl.load(cu_k_ptr + batch).to(tl.int64)
        seqlen_q = (tl.load(cu_q_ptr + batch + 1) - q_start).to(tl.int32)
        seqlen_k = (tl.load(cu_k_ptr + batch + 1) - k_start).to(tl.int32)
    k_rows = seqlen_k
    if HAS_SEQUSED_K:
        seqlen_k = tl.load(seqused_k_ptr + batch).to(tl.int32)
    if IS_VARLEN or HAS_SEQUSED_K:
        diag_offset = seqlen_k - seqlen_q
    return q_start, k_start, seqlen_q, seqlen_k, k_rows, diag_offset


def sequence_args(params, dummy: torch.Tensor) -> dict:
    """Kernel arguments for the sequence layout (sequence_bounds) and the lse / delta row layout."""
    lengths = params.lengths
    args = dict(IS_VARLEN=lengths is not None and lengths.cu_seqlens_q is not None,
                HAS_SEQUSED_K=lengths is not None and lengths.seqused_k is not None)
    # The kernels index them with unit stride: a strided view (a column of a larger tensor) is copied.
    args.update(cu_q_ptr=lengths.cu_seqlens_q.contiguous() if args["IS_VARLEN"] else dummy,
                cu_k_ptr=lengths.cu_seqlens_k.contiguous() if args["IS_VARLEN"] else dummy,
                seqused_k_ptr=lengths.seqused_k.contiguous() if args["HAS_SEQUSED_K"] else dummy)
    args.update(zip(("stride_lse_b", "stride_lse_h"), params.lse_strides))
    return args


def bsh_strides(t: torch.Tensor, params, paged: bool = False) -> tuple[int, int, int]:
    """(batch, seq, head) element strides of a bshd tensor as the kernels address it: a packed
    variable-length batch is one (1, total, h, d) tensor whose sequences start at cu_seqlens rows, so
    its batch stride is 0 (sequence_bounds adds the start row). paged: t is a paged K/V, whose first
    stride is the page stride, packed batch or not (kv_row_offsets)."""
    return (0 if params.is_varlen and not paged else t.stride(0)), t.stride(1), t.stride(2)


@triton.jit
def kv_row_offsets(offs_n, k_first, seqlen_k, paging, stride_page, stride_s, PAGED: tl.constexpr):
    """Element offsets of key/value rows offs_n: contiguous rows, or (PAGED) rows of the pages a
    sequence's block-table row lists: row j lives in page table[j // page_size] at j % page_size.
    paging = (this sequence's block-table row, page size); rows outside [k_first, seqlen_k) read no
    table entry (page 0, masked): a serving engine may leave the entries of padding pages unset."""
    if PAGED:
        table, page_size = paging
        page = tl.load(table + offs_n // page_size, mask=(offs_n >= k_first) & (offs_n < seqlen_k), other=0)
        return page.to(tl.int64) * stride_page + (offs_n % page_size).to(tl.int64) * stride_s
    return offs_n.to(tl.int64) * stride_s
