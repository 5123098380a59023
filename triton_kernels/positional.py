"""Positional encodings in Triton: the tile load-and-encode the attention kernels use for q/k tiles,
plus the standalone fused ops ``apply_rotary`` (RoPE) and ``add_sinusoidal`` built on the same
transform, which the attention backward also uses to map fp32 gradients of the encoded q/k back to
the user's q/k.

The formulas are those of ``flashattn_py.positional`` (its docstring states them); tests hold the two
equal. Angles are computed in fp32 in-kernel as ``position * exp2(-(2i / dim) * log2(base))``, or read
from the user's cos/sin tables.
"""
import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from flashattn_py import buffers
from flashattn_py.params import Encoding

from .common import head_dim_block

PE_NONE, PE_ROTARY, PE_SINUSOIDAL = 0, 1, 2
# How a rotary tile's channels pair up (the PE_PAIRS constexpr): NeoX / Llama pairs (i, i + rotary_dim / 2)
# narrower than the tile (per channel, with a second load of the partner channels); GPT-J pairs (2i, 2i + 1);
# NeoX pairs that are exactly the tile's two halves (rotary_dim == the tile's width). The last two run
# half-width: each pair's two channels as two (rows, BLOCK_D / 2) tiles with one angle per pair, so sin and
# cos are computed once per pair and no partner tile is loaded (forward, head_dim 128, sm_90: 4968 -> 416
# bytes spilled, non-MMA instructions per score 187 -> 109; bench/results/static-2026-12-07/rope-half.txt).
PAIRS_NEOX, PAIRS_GPTJ, PAIRS_NEOX_HALVES = 0, 1, 2


@triton.jit
def _pair_layout(offs_d, pe_dim):
    """(pair index, partner channel, is-first-of-pair, is-rotated) for each channel of the tile, NeoX pairs
    (i, i + pe_dim / 2) narrower than the tile."""
    half = pe_dim // 2
    pair = tl.where(offs_d < half, offs_d, offs_d - half)
    partner = tl.where(offs_d < half, offs_d + half, offs_d - half)
    first = offs_d < half
    return pair, partner, first, offs_d < pe_dim


@triton.jit
def _rotated_halves(row_ptrs, rows_valid, offs_s, offs_d, pos, pe, PAIRS: tl.constexpr, FROM_TABLE: tl.constexpr,
                    INVERSE: tl.constexpr):
    """The tile's rows rotated pair by pair, half-width (PAIRS_GPTJ or PAIRS_NEOX_HALVES): the first and the
    second channel of every pair as two (rows, BLOCK_D / 2) tiles, one angle per pair, then interleaved back
    into (rows, BLOCK_D) in the tile's channel order. fp32."""
    cos_ptr, sin_ptr, table_stride, pe_dim, log2_base, pe_scale, head_dim = pe
    HALF: tl.constexpr = offs_d.shape[0] // 2
    j = tl.arange(0, HALF)
    if PAIRS == 1:
        first, second = 2 * j, 2 * j + 1
    else:
        first, second = j, j + HALF
    rotated = j < pe_dim // 2  # GPT-J pairs past rotary_dim pass through (cos 1, sin 0)
    x1 = tl.load(row_ptrs + first[None, :], mask=rows_valid[:, None] & (first[None, :] < head_dim),
                 other=0.0).to(tl.float32)
    x2 = tl.load(row_ptrs + second[None, :], mask=rows_valid[:, None] & (second[None, :] < head_dim),
                 other=0.0).to(tl.float32)
    rot_mask = rows_valid[:, None] & rotated[None, :]
    if FROM_TABLE:
        table_offs = pos[:, None].to(tl.int64) * table_stride + j[None, :]
        cos = tl.load(cos_ptr + table_offs, mask=rot_mask, other=1.0).to(tl.float32)
        sin = tl.load(sin_ptr + table_offs, mask=rot_mask, other=0.0).to(tl.float32)
    else:
        inv_freq = tl.math.exp2(-(2.0 * j.to(tl.float32) / pe_dim) * log2_base)
        angle = pos[:, None].to(tl.float32) * inv_freq[None, :]
        cos = tl.where(rotated[None, :], tl.cos(angle), 1.0)
        sin = tl.where(rotated[None, :], tl.sin(angle), 0.0)
    if INVERSE:
        sin = -sin
    r1 = x1 * cos - x2 * sin
    r2 = x2 * cos + x1 * sin
    pairs = tl.join(r1, r2)  # (rows, HALF, 2): channel first[j], then second[j]
    if PAIRS == 2:  # the tile's halves: all the first channels, then all the second ones
        pairs = tl.permute(pairs, (0, 2, 1))
    return tl.reshape(pairs, (offs_s.shape[0], offs_d.shape[0]))


@triton.jit
def load_encoded_tile(base, offs_s, offs_d, stride_s, seqlen, positions, pe,
                      PE_KIND: tl.constexpr, PAIRS: tl.constexpr, FROM_TABLE: tl.constexpr,
                      INVERSE: tl.constexpr):
    """Load rows offs_s of a (seqlen, head_dim) slab and encode them at their positions.

    positions = (pointer to this batch's row of positions, stride along seqlen);
    pe = (cos table, sin table, table row stride, encoded channels, log2(base), scale, head_dim).
    Rotary: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin) on channel pairs; GPT-J pairs and NeoX pairs
    as wide as the tile run half-width (`_rotated_halves`). NeoX pairs narrower than the tile run per
    channel: the partner channel is loaded a second time from memory (an L1/L2 hit) rather than
    shuffled between threads in registers (a register gather made the kernels spill). INVERSE rotates
    by -angle.
    Sinusoidal: x * scale + PE (INVERSE: x * scale). Math in fp32; result in the slab's dtype.
    Rows past seqlen and channels past head_dim read 0 (as load_tile).
    """
    cos_ptr, sin_ptr, table_stride, pe_dim, log2_base, pe_scale, head_dim = pe
    rows_valid = offs_s < seqlen
    row_ptrs = base + offs_s[:, None].to(tl.int64) * stride_s
    tile_mask = rows_valid[:, None] & (offs_d[None, :] < head_dim)
    x = tl.load(row_ptrs + offs_d[None, :], mask=tile_mask, other=0.0)
    if PE_KIND == 0:
        return x
    pos_base, pos_stride_s = positions
    pos = tl.load(pos_base + offs_s.to(tl.int64) * pos_stride_s, mask=rows_valid, other=0)
    xf = x.to(tl.float32)
    if PE_KIND == 1 and PAIRS != 0:
        out = _rotated_halves(row_ptrs, rows_valid, offs_s, offs_d, pos, pe, PAIRS, FROM_TABLE, INVERSE)
    elif PE_KIND == 1:
        pair, partner, first, in_rot = _pair_layout(offs_d, pe_dim)
        rot_mask = rows_valid[:, None] & in_rot[None, :]
        x_partner = tl.load(row_ptrs + partner[None, :], mask=rot_mask, other=0.0).to(tl.float32)
        if FROM_TABLE:
            table_offs = pos[:, None].to(tl.int64) * table_stride + pair[None, :]
            cos = tl.load(cos_ptr + table_offs, mask=rot_mask, other=1.0).to(tl.float32)
            sin = tl.load(sin_ptr + table_offs, mask=rot_mask, other=0.0).to(tl.float32)
        else:
            inv_freq = tl.math.exp2(-(2.0 * pair.to(tl.float32) / pe_dim) * log2_base)
            angle = pos[:, None].to(tl.float32) * inv_freq[None, :]
            cos = tl.where(in_rot[None, :], tl.cos(angle), 1.0)
            sin = tl.where(in_rot[None, :], tl.sin(angle), 0.0)
        # First channel of a pair takes -x2 sin, the second +x1 sin; the inverse flips both.
        sign = tl.where(first, -1.0, 1.0)
        if INVERSE:
            sign = -sign
        out = xf * cos + x_partner * (sin * sign[None, :])
    else:
        out = xf * pe_scale
        if not INVERSE:
            inv_freq = tl.math.exp2(-(2.0 * (offs_d // 2).to(tl.float32) / pe_dim) * log2_base)
            angle = pos[:, None].to(tl.float32) * inv_freq[None, :]
            pe_tile = tl.where((offs_d % 2 == 0)[None, :], tl.sin(angle), tl.cos(angle))
            out += tl.where((offs_d < head_dim)[None, :], pe_tile, 0.0)
    return out.to(x.dtype)


@dataclass(frozen=True)
class KernelEncoding:
    """Everything a kernel needs to encode q/k tiles: runtime args and constexprs, built once per call."""

    runtime: dict
    constexprs: dict
    kind: int  # PE_NONE / PE_ROTARY / PE_SINUSOIDAL

    def attention_args(self, q_in_kernel: bool, k_in_kernel: bool) -> dict:
        """Kernel arguments; Q_PE_KIND / K_PE_KIND are PE_NONE for operands encoded beforehand."""
        return {**self.runtime, **self.constexprs, "Q_PE_KIND": self.kind if q_in_kernel else PE_NONE,
                "K_PE_KIND": self.kind if k_in_kernel else PE_NONE}


def kernel_encoding(enc: Encoding | None, dummy: torch.Tensor) -> KernelEncoding:
    """Kernel arguments for `enc` (None: encoding disabled, pointers are placeholders never read)."""
    if enc is None:
        runtime = dict(pe_cos_ptr=dummy, pe_sin_ptr=dummy, pe_table_stride=0,
                       qpos_ptr=dummy, qpos_stride_b=0, qpos_stride_s=0,
                       kpos_ptr=dummy, kpos_stride_b=0, kpos_stride_s=0,
                       pe_dim=0, pe_log2_base=0.0, pe_scale=1.0)
        return KernelEncoding(runtime, dict(PE_PAIRS=PAIRS_NEOX, PE_FROM_TABLE=False), PE_NONE)
    spec = enc.spec
    from_table = enc.is_rotary and spec.cos is not None
    cos, sin = (spec.cos.contiguous(), spec.sin.contiguous()) if from_table else (dummy, dummy)
    runtime = dict(
        pe_cos_ptr=cos, pe_sin_ptr=sin, pe_table_stride=cos.stride(0) if from_table else 0,
        qpos_ptr=enc.q_positions, qpos_stride_b=enc.q_positions.stride(0), qpos_stride_s=enc.q_positions.stride(1),
        kpos_ptr=enc.k_positions, kpos_stride_b=enc.k_positions.stride(0), kpos_stride_s=enc.k_positions.stride(1),
        pe_dim=enc.rotary_dim, pe_log2_base=math.log2(spec.base),
        pe_scale=1.0 if enc.is_rotary else float(spec.scale),
    )
    pairs = PAIRS_NEOX
    if enc.is_rotary and spec.interleaved:
        pairs = PAIRS_GPTJ
    elif enc.is_rotary and enc.rotary_dim == head_dim_block(dummy.shape[-1]):
        pairs = PAIRS_NEOX_HALVES
    constexprs = dict(PE_PAIRS=pairs, PE_FROM_TABLE=from_table)
    return KernelEncoding(runtime, constexprs, PE_ROTARY if enc.is_rotary else PE_SINUSOIDAL)


@triton.jit
def encode_kernel(x_ptr, out_ptr,
                  stride_xb, stride_xs, stride_xh, stride_ob, stride_os, stride_oh,
                  seqlen, head_dim,
                  pe_cos_ptr, pe_sin_ptr, pe_table_stride, qpos_ptr, qpos_stride_b, qpos_stride_s,
                  kpos_ptr, kpos_stride_b, kpos_stride_s, pe_dim, pe_log2_base, pe_scale,
                  BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
                  PE_KIND: tl.constexpr, PE_PAIRS: tl.constexpr, PE_FROM_TABLE: tl.constexpr,
                  INVERSE: tl.constexpr):
    """out = encode(x) for one (BLOCK_S rows, one head, one batch) tile. Positions come from qpos.
    out may alias x (in place): a program reads its rows (and their partner channels, which lie in
    the same rows) before it writes them, and programs own disjoint rows."""
    pid_s = tl.program_id(0)
    head = tl.program_id(1).to(tl.int64)
    batch = tl.program_id(2).to(tl.int64)
    offs_s = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    pe = (pe_cos_ptr, pe_sin_ptr, pe_table_stride, pe_dim, pe_log2_base, pe_scale, head_dim)
    out = load_encoded_tile(x_ptr + batch * stride_xb + head * stride_xh, offs_s, offs_d, stride_xs, seqlen,
                            (qpos_ptr + batch * qpos_stride_b, qpos_stride_s), pe,
                            PE_KIND, PE_PAIRS, PE_FROM_TABLE, INVERSE)
    o_ptrs = out_ptr + batch * stride_ob + head * stride_oh + offs_s[:, None].to(tl.int64) * stride_os + offs_d[None, :]
    tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=(offs_s[:, None] < seqlen) & (offs_d[None, :] < head_dim))


def encode(x: torch.Tensor, enc: Encoding, positions: torch.Tensor, *, inverse: bool = False,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """Encode bshd x (head dim contiguous) at `positions` (batch, seqlen) into `out` (new if None; may be x,
    may have another dtype: the backward decodes fp32 gradients into the inputs' dtype)."""
    if out is None:
        out = buffers.empty_like(x)
    batch, seqlen, nheads, head_dim = x.shape
    if x.numel() == 0:
        return out
    block_d = head_dim_block(head_dim)
    block_s = max(1, min(64, 2048 // block_d))  # 2K elements a tile: 16 a thread, no spills
    kernel_enc = kernel_encoding(enc, x)
    args = dict(kernel_enc.runtime, qpos_ptr=positions, qpos_stride_b=positions.stride(0),
                qpos_stride_s=positions.stride(1), pe_dim=enc.rotary_dim if enc.is_rotary else head_dim)
    constexprs = dict(kernel_enc.constexprs, PE_KIND=kernel_enc.kind)
    encode_kernel[(triton.cdiv(seqlen, block_s), nheads, batch)](
        x, out, x.stride(0), x.stride(1), x.stride(2), out.stride(0), out.stride(1), out.stride(2),
        seqlen, head_dim, **args, BLOCK_S=block_s, BLOCK_D=block_d, INVERSE=inverse, **constexprs,
    )
    return out
