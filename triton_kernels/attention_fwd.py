"""Fused attention forward: one pass over K/V per query tile with an online softmax.

Each program owns BLOCK_M queries of one (batch, head): it keeps the running row max ``m_i``, the
running normalizer ``l_i`` and the unnormalized output ``acc`` in registers, streams the visible
K/V tiles once, and writes O and the log-sum-exp (fp32, natural log) for the backward.
Positional encodings are applied to q and K tiles as they are loaded, unless the launcher encoded q
and k beforehand (pe_strategy.py).
"""
import torch
import triton
import triton.language as tl

from flashattn_py import buffers
from flashattn_py.params import AttentionParams

from . import autotune
from .common import (
    INTERPRETED,
    LN2,
    LOG2E,
    bsh_strides,
    check_launch_limits,
    descriptor_ready,
    dot_flags,
    dropout_args,
    dropout_keep,
    ensure_scratch_allocator,
    head_dim_block,
    interior_key_blocks,
    keep_mask,
    key_block_range,
    kv_row_offsets,
    load_rows,
    load_tile,
    phase_range,
    sequence_args,
    sequence_bounds,
    tile_dot,
    tile_source,
)
from .configs import forward_candidates, forward_config, launch_arch, packs_gqa
from .pe_strategy import IN_KERNEL_MAX_HEAD_DIM, IN_KERNEL_MAX_HEAD_DIM_SM90_FORWARD, encoded_streams
from .positional import kernel_encoding, load_encoded_tile
from .score_mods import head_mods, modified_scores, score_mod_args, sink_args
from .split_merge import merge_splits


@triton.jit
def _attend_key_tiles(acc, m_i, l_i, q, k_base, v_base, k_src, v_src, offs_m, offs_d, lo, hi,
                      stride_ks, stride_vs, seqlen_q, seqlen_k, head_dim, qk_scale_log2,
                      window_left, window_right, diag_offset, k_pos, pe, dropout_p, dropout_scale, dropout_seed,
                      drop_row_base, drop_row_length,
                      mods, paging, stride_kpage, stride_vpage, k_first,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_WINDOW: tl.constexpr,
                      HAS_DROPOUT: tl.constexpr,
                      FP32_OPERANDS: tl.constexpr, PRECISION: tl.constexpr,
                      K_PE_KIND: tl.constexpr, PE_PAIRS: tl.constexpr, PE_FROM_TABLE: tl.constexpr,
                      HAS_SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr, BIAS_KIND: tl.constexpr,
                      PAGED: tl.constexpr, HAS_LEFTPAD: tl.constexpr, MASKED: tl.constexpr,
                      STREAM_TMA: tl.constexpr):
    """Key blocks [lo, hi) into the running (acc, m_i, l_i). Not MASKED: the caller knows every query
    of the tile sees every key of these blocks (common.interior_key_blocks), so the causal / window /
    left-padding mask and its -inf guard are not computed. STREAM_TMA: K and V tiles come from the
    tensor descriptors k_src, v_src (TMA on sm_90), not through pointers."""
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        # Rows before k_first (cache_leftpad) are padding, which may hold anything: V reads them as 0,
        # since a NaN there would reach acc through 0 * NaN (their scores are masked below).
        if PAGED:  # a paged KV cache holds keys already encoded: plain gathered loads
            tile_mask = (offs_n[:, None] >= k_first) & (offs_n[:, None] < seqlen_k) & (offs_d[None, :] < head_dim)
            k_rows = kv_row_offsets(offs_n, k_first, seqlen_k, paging, stride_kpage, stride_ks, PAGED)
            v_rows = kv_row_offsets(offs_n, k_first, seqlen_k, paging, stride_vpage, stride_vs, PAGED)
            k_tile = tl.load(k_base + k_rows[:, None] + offs_d[None, :], mask=tile_mask, other=0.0)
            v_tile = tl.load(v_base + v_rows[:, None] + offs_d[None, :], mask=tile_mask, other=0.0)
        elif STREAM_TMA:  # no encoding, paging or left padding here (the launcher's condition)
            k_tile = load_rows(k_src, start_n, offs_n, offs_d, stride_ks, seqlen_k, head_dim, True)
            v_tile = load_rows(v_src, start_n, offs_n, offs_d, stride_vs, seqlen_k, head_dim, True)
        else:
            k_tile = load_encoded_tile(k_base, offs_n, offs_d, stride_ks, seqlen_k, k_pos, pe,
                                       K_PE_KIND, PE_PAIRS, PE_FROM_TABLE, False)
            if HAS_LEFTPAD:
                v_tile = tl.load(v_base + offs_n[:, None].to(tl.int64) * stride_vs + offs_d[None, :],
                                 mask=(offs_n[:, None] >= k_first) & (offs_n[:, None] < seqlen_k)
                                 & (offs_d[None, :] < head_dim), other=0.0)
            else:
                v_tile = load_tile(v_base, offs_n, offs_d, stride_vs, seqlen_k, head_dim)
        # Scores in base-2 units (scale * log2 e folded in) so the exponent is a single exp2.
        raw = tile_dot(q, tl.trans(k_tile), tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32), FP32_OPERANDS, PRECISION)
        s, _ = modified_scores(raw, offs_m[:, None], offs_n[None, :], seqlen_q, seqlen_k, diag_offset, qk_scale_log2,
                               mods, HAS_SOFTCAP, HAS_ALIBI, BIAS_KIND)
        if MASKED:
            keep = keep_mask(offs_m[:, None], offs_n[None, :], seqlen_q, seqlen_k, diag_offset, window_left,
                             window_right, HAS_WINDOW)
            if HAS_LEFTPAD:  # keys before k_first are padding
                keep = keep & (offs_n[None, :] >= k_first)
            s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = m_new
        if MASKED or BIAS_KIND != 0:  # (a boolean or -inf bias can hide a whole row of an interior block)
            # A row with nothing visible yet keeps max -inf; subtracting 0 there keeps exp2 at 0, not NaN.
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_safe[:, None])
        # Rescale what was accumulated under the old max to the new one.
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)  # the softmax normalizer counts dropped weights too
        if HAS_DROPOUT:
            keep = dropout_keep(dropout_seed, drop_row_base, offs_m[:, None], offs_n[None, :], drop_row_length,
                                dropout_p)
            p = tl.where(keep, p * dropout_scale, 0.0)
        acc = tile_dot(p.to(v_tile.dtype), v_tile, acc * alpha[:, None], FP32_OPERANDS, PRECISION)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def attention_fwd_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, lse_log2_ptr,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_ob, stride_os, stride_oh,
    seqlen_q, seqlen_k, nheads_q, head_dim, group_size,
    qk_scale_log2, window_left, window_right, diag_offset, dropout_p, dropout_scale, dropout_seed,
    pe_cos_ptr, pe_sin_ptr, pe_table_stride, qpos_ptr, qpos_stride_b, qpos_stride_s,
    kpos_ptr, kpos_stride_b, kpos_stride_s, pe_dim, pe_log2_base, pe_scale,
    softcap_scale, softcap_log2, alibi_ptr, alibi_stride_b, alibi_stride_h,
    bias_ptr, bias_stride_b, bias_stride_h, bias_stride_m, bias_stride_n,
    cu_q_ptr, cu_k_ptr, seqused_k_ptr, stride_lse_b, stride_lse_h, leftpad_k_ptr,
    block_table_ptr, stride_bt_b, page_size, num_splits, stride_o_split, stride_lse_split, sinks_ptr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_WINDOW: tl.constexpr, HAS_DROPOUT: tl.constexpr, FP32_OPERANDS: tl.constexpr, PRECISION: tl.constexpr,
    Q_PE_KIND: tl.constexpr, K_PE_KIND: tl.constexpr, PE_PAIRS: tl.constexpr, PE_FROM_TABLE: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr, BIAS_KIND: tl.constexpr,
    IS_VARLEN: tl.constexpr, HAS_SEQUSED_K: tl.constexpr, PAGED: tl.constexpr, HAS_LEFTPAD: tl.constexpr,
    PACK_GQA: tl.constexpr, SPLIT_K: tl.constexpr, HAS_SINKS: tl.constexpr, SPLIT_MASK: tl.constexpr,
    STREAM_TMA: tl.constexpr,
):
    # Split-K (flash-decoding): num_splits programs share a query tile, each over a slice of its key
    # blocks, writing a partial (out, lse) that attention_forward merges. num_splits = 1: no split.
    pid_m = tl.program_id(0) // num_splits
    split = tl.program_id(0) % num_splits
    if HAS_WINDOW:  # causal: the last query blocks see the most keys; start them first (no short last wave)
        pid_m = tl.num_programs(0) // num_splits - 1 - pid_m
    batch = tl.program_id(2).to(tl.int64)  # 64-bit offsets: tensors may exceed 2^31 elements
    seqlen_k_max = seqlen_k  # the dropout counter's row length: the same for every sequence
    q_start, k_start, seqlen_q, seqlen_k, k_rows, diag_offset = sequence_bounds(
        batch, seqlen_q, seqlen_k, diag_offset, cu_q_ptr, cu_k_ptr, seqused_k_ptr, IS_VARLEN, HAS_SEQUSED_K)
    if PACK_GQA:
        # Grid axis 1 is the KV head, and a tile's rows are (query, head) pairs of the group_size query
        # heads that share it, head fastest: one query per sequence still fills group_size rows, and
        # the group reads its K/V once. Row r is query r // group_size of head
        # kv_head * group_size + r % group_size; `head` is a column of per-row heads, which the
        # pointer and ALiBi / bias arithmetic below broadcasts like the scalar head of a plain tile.
        kv_head = tl.program_id(1).to(tl.int64)
        if pid_m * BLOCK_M >= seqlen_q * group_size:  # the grid covers the longest sequence
            return
        offs_r = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_m = offs_r // group_size
        row_head = kv_head * group_size + offs_r % group_size
        head = row_head[:, None]
        m_first = pid_m * BLOCK_M // group_size  # the tile's first query
    else:
        head = tl.program_id(1)
        kv_head = (head // group_size).to(tl.int64)
        head = head.to(tl.int64)
        if pid_m * BLOCK_M >= seqlen_q:  # the grid covers the longest sequence of a packed batch
            return
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        row_head = head
        m_first = pid_m * BLOCK_M
    row_base = batch * stride_lse_b + row_head * stride_lse_h + q_start  # the head's lse row of query 0
    drop_row_base = row_base  # dropout counters count lse rows too (common.dropout_keep)
    if PACK_GQA:
        drop_row_base = row_base[:, None]  # per row, broadcast against the tile's query column

    offs_d = tl.arange(0, BLOCK_D)
    pe = (pe_cos_ptr, pe_sin_ptr, pe_table_stride, pe_dim, pe_log2_base, pe_scale, head_dim)
    q = load_encoded_tile(q_ptr + batch * stride_qb + head * stride_qh + q_start * stride_qs, offs_m, offs_d,
                          stride_qs, seqlen_q,
                          (qpos_ptr + batch * qpos_stride_b, qpos_stride_s), pe,
                          Q_PE_KIND, PE_PAIRS, PE_FROM_TABLE, False)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    if HAS_SINKS:
        # The head's sink is a first "key" of score sink (base 2: * log2 e) and value 0: it starts the
        # running max and normalizer, so the loop below is unchanged. Split 0 alone takes it; the
        # split merge adds the splits' normalizers, so it is counted once.
        sink_log2 = tl.load(sinks_ptr + row_head) * 1.4426950408889634  # log2 e
        m_i = tl.where(split == 0, l_i + sink_log2, m_i)  # l_i + ...: a [BLOCK_M] vector, scalar sink or not
        l_i = tl.where(split == 0, l_i + 1.0, l_i)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    # Under PACK_GQA the tile spans fewer than BLOCK_M queries: a range for BLOCK_M is a superset.
    lo, hi = key_block_range(m_first, seqlen_k, diag_offset, window_left, window_right,
                             BLOCK_M, BLOCK_N, HAS_WINDOW)
    k_first = 0
    if HAS_LEFTPAD:  # the first visible key bounds the key blocks too, before they are split
        k_first = tl.load(leftpad_k_ptr + batch)
        lo = tl.maximum(lo, k_first // BLOCK_N * BLOCK_N)
    # Interior key blocks (no mask work), from the whole range: split-K slices keep block alignment.
    full_lo, full_hi = interior_key_blocks(lo, hi, m_first, seqlen_q, seqlen_k, diag_offset, window_left,
                                           window_right, BLOCK_M, BLOCK_N, HAS_WINDOW)
    if HAS_LEFTPAD:  # blocks holding padding keys are edges
        full_lo = tl.minimum(tl.maximum(full_lo, (k_first + BLOCK_N - 1) // BLOCK_N * BLOCK_N), hi)
        full_hi = tl.maximum(full_hi, full_lo)
    if PACK_GQA:  # rows past the last query's heads (offs_r >= seqlen_q * group_size) need the mask
        if (pid_m + 1) * BLOCK_M > seqlen_q * group_size:
            full_lo = hi
            full_hi = hi
    per_split = tl.cdiv(tl.cdiv(hi - lo, BLOCK_N), num_splits) * BLOCK_N
    lo = lo + split * per_split
    hi = tl.minimum(hi, lo + per_split)
    full_lo = tl.minimum(tl.maximum(full_lo, lo), hi)
    full_hi = tl.maximum(tl.minimum(full_hi, hi), full_lo)
    if not SPLIT_MASK:  # every block through the masked loop (one copy of the loop's code)
        full_lo = hi
        full_hi = hi
    if PAGED:  # stride_kb / stride_vb are the page strides; the block table says where rows live
        # (a packed batch's keys too: its cu_seqlens_k give lengths, not rows, of paged keys)
        k_base = k_ptr + kv_head * stride_kh
        v_base = v_ptr + kv_head * stride_vh
    else:
        k_base = k_ptr + batch * stride_kb + kv_head * stride_kh + k_start * stride_ks
        v_base = v_ptr + batch * stride_vb + kv_head * stride_vh + k_start * stride_vs
    mods = head_mods((softcap_scale, softcap_log2, alibi_ptr, alibi_stride_b, alibi_stride_h,
                     bias_ptr, bias_stride_b, bias_stride_h, bias_stride_m, bias_stride_n), batch, head, HAS_ALIBI)
    k_src = tile_source(k_base, seqlen_k, head_dim, stride_ks, BLOCK_N, BLOCK_D, STREAM_TMA)
    v_src = tile_source(v_base, seqlen_k, head_dim, stride_vs, BLOCK_N, BLOCK_D, STREAM_TMA)
    # Three phases, the mask compiled into the outer two only: the edge blocks before the interior
    # (window's left edge, left padding), the interior, the edge blocks after it (causal diagonal,
    # window's right edge, the last partial block).
    for phase in tl.static_range(3):
        start, end = phase_range(phase, lo, full_lo, full_hi, hi)
        acc, m_i, l_i = _attend_key_tiles(
            acc, m_i, l_i, q, k_base, v_base, k_src, v_src, offs_m, offs_d, start, end,
            stride_ks, stride_vs, seqlen_q, seqlen_k, head_dim, qk_scale_log2, window_left, window_right, diag_offset,
            (kpos_ptr + batch * kpos_stride_b, kpos_stride_s), pe,
            dropout_p, dropout_scale, dropout_seed, drop_row_base, seqlen_k_max, mods,
            (block_table_ptr + batch * stride_bt_b, page_size), stride_kb, stride_vb, k_first,
            BLOCK_M, BLOCK_N, HAS_WINDOW, HAS_DROPOUT, FP32_OPERANDS, PRECISION, K_PE_KIND, PE_PAIRS,
            PE_FROM_TABLE, HAS_SOFTCAP, HAS_ALIBI, BIAS_KIND, PAGED, HAS_LEFTPAD, phase != 1, STREAM_TMA)

    # Rows that saw no key: output 0 and lse -inf (l_i == 0 there).
    seen = l_i > 0.0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    # lse kept in the kernels' base-2 units: the backward subtracts it from scores computed the same
    # way, so at large logits (1e4) no rounding of a conversion (x ln 2, x log2 e) enters exp2.
    lse_log2 = tl.where(seen, m_i + tl.math.log2(tl.where(seen, l_i, 1.0)), float("-inf"))

    if SPLIT_K:  # this split's partial; 64-bit, as split * stride passes 2^31 elements at large batches
        out_ptr += split.to(tl.int64) * stride_o_split
        lse_log2_ptr += split.to(tl.int64) * stride_lse_split
    out_ptrs = (out_ptr + batch * stride_ob + head * stride_oh + q_start * stride_os
                + offs_m[:, None].to(tl.int64) * stride_os + offs_d[None, :])
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty),
             mask=(offs_m[:, None] < seqlen_q) & (offs_d[None, :] < head_dim))
    tl.store(lse_log2_ptr + row_base + offs_m, lse_log2, mask=offs_m < seqlen_q)


def paging_args(params: AttentionParams, dummy: torch.Tensor) -> dict:
    """Kernel arguments for a paged K/V (placeholders when K/V are contiguous rows)."""
    if params.paged is None:
        return dict(block_table_ptr=dummy, stride_bt_b=0, page_size=1, PAGED=False)
    table = params.paged.block_table.contiguous()  # rows indexed with unit stride
    return dict(block_table_ptr=table, stride_bt_b=table.stride(0), page_size=params.paged.page_size, PAGED=True)


def leftpad_args(params: AttentionParams, dummy: torch.Tensor) -> dict:
    """Kernel arguments for a first visible key per sequence (SequenceLengths.leftpad_k)."""
    leftpad = params.lengths.leftpad_k if params.lengths is not None else None
    return dict(leftpad_k_ptr=dummy if leftpad is None else leftpad.contiguous(), HAS_LEFTPAD=leftpad is not None)


def _query_layout(params: AttentionParams) -> tuple[bool, int, int]:
    """(pack_gqa, tile rows per (batch, grid head), grid heads): with pack_gqa the rows are the
    (query, head) pairs of a KV head's group and the grid runs over KV heads."""
    plain = params.encoding is None and not params.has_dropout and params.mods.bias is None
    if packs_gqa(params.pack_gqa, params.seqlen_q, params.group_size, plain):
        return True, params.seqlen_q * params.group_size, params.nheads_kv
    return False, params.seqlen_q, params.nheads_q


def forward_programs(params: AttentionParams) -> int:
    """Programs the forward launches per split: what flashattn_py/backends/split_k.py sizes split-K by."""
    _, rows, heads = _query_layout(params)
    cfg = forward_config(head_dim_block(params.head_dim), bias=params.mods.bias is not None, seqlen_q=params.seqlen_q)
    return triton.cdiv(rows, cfg.block_m) * heads * params.batch


def attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params: AttentionParams):
    """bshd q, k, v (head dim contiguous, any other strides) -> (out like q, lse fp32 (b, h, s), scratch).

    scratch = (lse in base 2, then K encoded by the pre-pass when that strategy was picked), for the
    backward to reuse; lse (natural log) is derived from the base-2 one for the caller.
    """
    check_launch_limits(params.batch, params.nheads_q)
    out = buffers.empty_like(q)
    lse_log2 = buffers.empty(params.lse_shape, dtype=torch.float32, device=q.device)
    if params.seqlen_q == 0 or params.batch == 0 or params.nheads_q == 0:
        return out, lse_log2, (lse_log2,)
    block_d = head_dim_block(params.head_dim)
    arch = launch_arch(q.device)
    cfg = forward_config(block_d, bias=params.mods.bias is not None, seqlen_q=params.seqlen_q, arch=arch)
    pack, rows, heads = _query_layout(params)
    # Each K tile is read once per query tile: that is how often in-kernel encoding would repeat.
    max_head_dim = IN_KERNEL_MAX_HEAD_DIM_SM90_FORWARD if arch is not None and arch >= 90 else IN_KERNEL_MAX_HEAD_DIM
    streams = encoded_streams(params, q=q, k=k, streamed_reads=triton.cdiv(rows, cfg.block_m),
                              max_head_dim=max_head_dim)
    if streams.k_in_kernel:  # the same query tiles (block_m), key tiles that fit with the encoding
        cfg = forward_config(block_d, bias=params.mods.bias is not None, seqlen_q=params.seqlen_q, arch=arch,
                             k_encoded=True)
    pe_args = kernel_encoding(params.encoding, q).attention_args(streams.q_in_kernel, streams.k_in_kernel)
    mods_args = score_mod_args(params, q)

    splits = params.num_splits
    # Split-K writes one fp32 partial (out, lse) per split, merged below.
    out_part = out if splits == 1 else buffers.empty((splits, *out.shape), dtype=torch.float32, device=q.device)
    lse_part = lse_log2 if splits == 1 else buffers.empty((splits, *params.lse_shape), dtype=torch.float32,
                                                          device=q.device)
    out_view = out_part if splits == 1 else out_part[0]
    paging = paging_args(params, q)
    paged = params.paged is not None
    leftpad = leftpad_args(params, q)
    # K / V tiles through tensor descriptors (TMA) on sm_90 where the layout allows it and K needs no
    # encoding in the kernel (and under the interpreter, so CI runs that path); paged or left-padded
    # caches keep their gathered / masked pointer loads.
    stream_tma = ((INTERPRETED or (arch is not None and arch >= 90)) and not paged and not leftpad["HAS_LEFTPAD"]
                  and pe_args["K_PE_KIND"] == 0 and descriptor_ready(streams.k, v))
    if stream_tma and (q.is_cuda or INTERPRETED):
        ensure_scratch_allocator()

    def launch(cfg):
        grid = (triton.cdiv(rows, cfg.block_m) * splits, heads, params.batch)
        attention_fwd_kernel[grid](
            streams.q, streams.k, v, out_part, lse_part,
            *bsh_strides(streams.q, params), *bsh_strides(streams.k, params, paged),
            *bsh_strides(v, params, paged),
            *bsh_strides(out_view, params),
            params.seqlen_q, params.seqlen_k, params.nheads_q, params.head_dim, params.group_size,
            params.softmax_scale * LOG2E, params.window[0], params.window[1], params.diagonal_offset,
            **dropout_args(params),
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=block_d, HAS_WINDOW=params.has_window,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages, **dot_flags(q.dtype),
            **pe_args, **mods_args, **sequence_args(params, q), **paging, **leftpad,
            **sink_args(params, q), SPLIT_MASK=cfg.split_mask, STREAM_TMA=stream_tma,
            PACK_GQA=pack, SPLIT_K=splits > 1, num_splits=splits,
            stride_o_split=out_part.stride(0) if splits > 1 else 0,
            stride_lse_split=lse_part.stride(0) if splits > 1 else 0,
        )

    launch(autotune.pick("attention_fwd", autotune.key_of(params, q.dtype, block_d, pe_args), cfg,
                         lambda arch: forward_candidates(block_d, arch, params.mods.bias is not None, params.seqlen_q),
                         launch, q.device))
    if splits > 1:
        if params.is_varlen:  # lse rows (nheads, total_q): the merge takes (batch = 1, nheads, total_q)
            merge_splits(out_part, lse_part[:, None], out, lse_log2[None])
        else:
            merge_splits(out_part, lse_part, out, lse_log2)
    return out, lse_log2 * LN2, (lse_log2, *streams.scratch)
